//! Flow-dependent ensemble B parts (issue 24): a localised ensemble covariance in latent space
//! ([`LatentEnsembleB`]) and, for the fair model-space baseline (hybrid 3DEnVar), the same members localised on the
//! model grid ([`ModelEnsembleB`]). Both are square roots U with control a = [a_1, ..., a_K] and J_b = 1/2 |a|^2
//! (the "alpha control variable" form of Lorenc 2003 and Buehner 2005), so they add to the hybrid like any other
//! [`BOperator`].
//!
//! # Latent ensemble B
//!
//! ```text
//! z_k = E(N(x_k))                                    (members encoded like x_b in LatentB::at_background)
//! dz_k = (z_k - mean_k z_k) / sqrt(K - 1)            (latent layout [channels, lat, lon])
//! U a = sqrt(gamma) * sd * D'(z_b)( sum_k dz_k o (L^1/2 a_k) )
//! U^T x = [ L^1/2^T ( sum_c dz_k[c] o g[c] ) ]_k,    g = sqrt(gamma) D'(z_b)^T (sd * x)
//! B = gamma * sd D'(z_b) [ (sum_k dz_k dz_k^T) o (L (x) 1 1^T) ] D'(z_b)^T sd
//! ```
//!
//! a_k is one field on the latent horizontal grid (npoints of the [`Localisation`], 288 for 12 x 24) and
//! L^1/2 a_k multiplies every latent channel of dz_k alike: the localisation is horizontal only. The model-space
//! increment is formed exactly as [`crate::bmat::latent::LatentB`] forms its own (the decoder TL at z_b in float32,
//! then the per-channel normalisation sd), so the two can be summed in a hybrid with separate controls.
//!
//! *Why no localisation across latent channels.* The channels of a latent cell are the coefficients of one local
//! multivariate pattern of the decoder; their covariance across members is the flow-dependent multivariate
//! structure (winds with mass, temperature with geopotential), i.e. where balance lives. Localising between
//! channels would damp exactly those cross-covariances, while the sampling noise the localisation removes is
//! at long horizontal distances. The channel count is also small (40 per cell on the reference bundle), far below
//! the point count, so the ensemble estimates their covariance much better than far-field correlations.
//!
//! # Model-space ensemble B
//!
//! ```text
//! dx_k = (x_k - mean_k x_k) / sqrt(K - 1)
//! U a = sqrt(gamma) * sum_k dx_k o (L^1/2 a_k),      B = gamma * (sum_k dx_k dx_k^T) o (L (x) 1 1^T)
//! ```
//!
//! with a_k a field on the model grid (the [`Localisation`] in its exact zonal-FFT form for 48 x 96, see
//! [`crate::bmat::localisation`]), the same GC and half-width, applied to every level of every variable alike: no
//! vertical and no cross-variable localisation, for the same reason as above (the members' multivariate, vertically
//! coherent covariances are the balance the ensemble carries; cutting them would make the baseline unfairly weak
//! and unbalanced), and so that the comparison with the latent part differs only in where the localisation acts.
//!
//! Variance: the model-space part's diag B = gamma sum_k dx_k^2 diag(L) is exact and cheap. The latent part's needs
//! the decoder: exact from the n columns U e_j when the control size n = K x npoints is at most the sample count,
//! else randomised like [`crate::bmat::latent::LatentB`] (N draws, seeds 1..=N, relative standard error sqrt(2/N)).
//!
//! Memory and cost: the perturbations (K x state, or K x latent size, float64) and the localisation's square root
//! (0.6 MB dense for 288 points, 0.9 MB zonal for 48 x 96); one application costs K localisations plus
//! K x state multiply-adds (plus one decoder TL or AD for the latent part). No n x n matrix of the state.
//!
//! K = 0 or 1 is an error naming the argument (an ensemble part needs K >= 2 for a spread); a member of the wrong
//! length or with non-finite values is an error naming its (0-based) index.

use crate::bmat::latent::DEFAULT_VARIANCE_SAMPLES;
use crate::bmat::localisation::Localisation;
use crate::bmat::{check_len, diag_of_sqrt, BOperator};
use crate::bundle::grid::{Grid, Layout};
use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::model::autoencoder::{encode_state, Autoencoder};

fn check_count(k: usize, what: &str) -> Result<()> {
    if k < 2 {
        return Err(Error::arg(format!(
            "{what}: got K = {k} ensemble member{}; an ensemble B part needs K >= 2 (the perturbations \
             (x_k - mean) / sqrt(K - 1) of {k} member{} carry no spread)",
            if k == 1 { "" } else { "s" },
            if k == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

fn check_gamma(gamma: f64) -> Result<()> {
    if !(gamma.is_finite() && gamma >= 0.0) {
        return Err(Error::arg(format!("ensemble weight gamma = {gamma} must be finite and >= 0")));
    }
    Ok(())
}

/// Checks one member's length and values, naming it.
fn check_member<T: Copy + Into<f64>>(what: &str, k: usize, m: &[T], len: usize) -> Result<()> {
    if m.len() != len {
        return Err(Error::arg(format!("{what} {k} (0-based) has length {}, expected {len}", m.len())));
    }
    if let Some((i, v)) = m.iter().enumerate().map(|(i, v)| (i, (*v).into())).find(|(_, v)| !v.is_finite()) {
        return Err(Error::data(format!("{what} {k} (0-based) has a non-finite value {v} at index {i}")));
    }
    Ok(())
}

/// K perturbations d_k = (m_k - mean) / sqrt(K - 1), each channel-major [nchan, np], stored member after member,
/// with the localised forward and adjoint products shared by both ensemble parts.
#[derive(Debug, Clone)]
struct Perturbations {
    k: usize,
    nchan: usize,
    np: usize,
    d: Vec<f64>,
}

impl Perturbations {
    fn new<M: AsRef<[T]>, T: Copy + Into<f64>>(members: &[M], nchan: usize, np: usize, what: &str) -> Result<Self> {
        let k = members.len();
        check_count(k, &format!("{what}s"))?;
        let n = nchan * np;
        for (i, m) in members.iter().enumerate() {
            check_member(what, i, m.as_ref(), n)?;
        }
        let mut mean = vec![0.0; n];
        for m in members {
            mean.iter_mut().zip(m.as_ref()).for_each(|(s, v)| *s += (*v).into());
        }
        mean.iter_mut().for_each(|s| *s /= k as f64);
        let f = 1.0 / ((k - 1) as f64).sqrt();
        let mut d = Vec::with_capacity(k * n);
        for m in members {
            d.extend(m.as_ref().iter().zip(&mean).map(|(v, mu)| ((*v).into() - mu) * f));
        }
        Ok(Perturbations { k, nchan, np, d })
    }

    fn member(&self, k: usize) -> &[f64] {
        let n = self.nchan * self.np;
        &self.d[k * n..(k + 1) * n]
    }

    /// out = sum_k d_k o (scale L^1/2 a_k) broadcast over channels; `la` scratch of np.
    fn forward(&self, loc: &mut Localisation, scale: f64, v: &[f64], out: &mut [f64], la: &mut [f64]) {
        let np = self.np;
        out.iter_mut().for_each(|o| *o = 0.0);
        for k in 0..self.k {
            loc.sqrt_apply(&v[k * np..(k + 1) * np], la);
            la.iter_mut().for_each(|l| *l *= scale);
            for (oc, dc) in out.chunks_exact_mut(np).zip(self.member(k).chunks_exact(np)) {
                for ((o, d), l) in oc.iter_mut().zip(dc).zip(la.iter()) {
                    *o += d * l;
                }
            }
        }
    }

    /// v_k = L^1/2^T (scale sum_c d_k[c] o x[c]) for every k, the adjoint of `forward`; `t` scratch of np.
    fn backward(&self, loc: &mut Localisation, scale: f64, x: &[f64], v: &mut [f64], t: &mut [f64]) {
        let np = self.np;
        for k in 0..self.k {
            t.iter_mut().for_each(|t| *t = 0.0);
            for (xc, dc) in x.chunks_exact(np).zip(self.member(k).chunks_exact(np)) {
                for ((t, d), x) in t.iter_mut().zip(dc).zip(xc) {
                    *t += d * x;
                }
            }
            t.iter_mut().for_each(|t| *t *= scale);
            loc.sqrt_adjoint(t, &mut v[k * np..(k + 1) * np]);
        }
    }

    /// diag of gamma (sum_k d_k d_k^T) o (L (x) 1 1^T): gamma sum_k d_k^2 ldiag.
    fn variance(&self, ldiag: &[f64], gamma: f64) -> Vec<f64> {
        let np = self.np;
        let mut v = vec![0.0; self.nchan * np];
        for k in 0..self.k {
            for (vc, dc) in v.chunks_exact_mut(np).zip(self.member(k).chunks_exact(np)) {
                for ((v, d), l) in vc.iter_mut().zip(dc).zip(ldiag) {
                    *v += d * d * l;
                }
            }
        }
        v.iter_mut().for_each(|v| *v *= gamma);
        v
    }
}

/// The horizontal geometry of a `[channels, lat, lon]` latent on the model grid `grid`: (channels, latitude of each
/// latent row, longitude of each latent column). A latent cell is taken to cover the block of model points the
/// encoder folds into it (stride nlat / lat_latent by nlon / lon_latent, which must be integers), and sits at the
/// mean latitude and longitude of that block (12 x 24 on the T31 grid: rows of 4 Gaussian latitudes, 15-degree
/// columns centred at 5.625 + 15 i degrees east). An error for other latent shapes (a latent without a horizontal
/// grid, such as a flat vector, has no geometry to localise in).
pub fn latent_grid(grid: &Grid, latent_shape: &[usize]) -> Result<(usize, Vec<f64>, Vec<f64>)> {
    let bad = || {
        Error::arg(format!(
            "the latent ensemble B needs a latent shape [channels, lat, lon] whose lat and lon divide the model grid's \
             {} x {}; this latent has shape {latent_shape:?}",
            grid.nlat(),
            grid.nlon()
        ))
    };
    let &[nc, h, w] = latent_shape else { return Err(bad()) };
    if nc == 0 || h == 0 || w == 0 || !grid.nlat().is_multiple_of(h) || !grid.nlon().is_multiple_of(w) {
        return Err(bad());
    }
    let (sj, si) = (grid.nlat() / h, grid.nlon() / w);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let lat = grid.lat.chunks_exact(sj).map(mean).collect();
    let lon = grid.lon.chunks_exact(si).map(mean).collect();
    Ok((nc, lat, lon))
}

/// The GC localisation of a bundle's latent grid ([`latent_grid`]) with half-width `half_width_km` (dense form).
pub fn latent_localisation(b: &Bundle, half_width_km: f64) -> Result<Localisation> {
    let (_, lat, lon) = latent_grid(&b.layout.grid, &b.latent_shape)?;
    Localisation::on_grid(&lat, &lon, half_width_km)
}

/// The latent ensemble square root; see the module documentation. Holds z_b, the latent perturbations, the latent
/// localisation, the per-channel sd and scratch buffers; the ONNX sessions are passed to each call.
#[derive(Debug, Clone)]
pub struct LatentEnsembleB {
    z: Vec<f32>,
    pert: Perturbations,
    loc: Localisation,
    chan_sd: Vec<f64>,
    npoints: usize,
    gamma: f64,
    dz: Vec<f64>,
    la: Vec<f64>,
    bz: Vec<f32>,
    bx: Vec<f32>,
    variance_samples: usize,
    variance: Option<Vec<f64>>,
}

impl LatentEnsembleB {
    /// From already-encoded member latents `members` (each of the latent length, float32 or float64, in the
    /// autoencoder's latent layout, `[channels, lat, lon]` with lat x lon = `loc.npoints()`), the linearisation point
    /// `z_b`, the per-channel normalisation sd over `npoints` model grid points, the weight `gamma` (>= 0) and the
    /// latent localisation `loc`.
    pub fn new<M: AsRef<[T]>, T: Copy + Into<f64>>(
        members: &[M],
        z_b: Vec<f32>,
        chan_sd: &[f64],
        npoints: usize,
        gamma: f64,
        loc: Localisation,
    ) -> Result<LatentEnsembleB> {
        check_gamma(gamma)?;
        let (nz, nl) = (z_b.len(), loc.npoints());
        if nz == 0 || !nz.is_multiple_of(nl) {
            return Err(Error::arg(format!(
                "latent point z_b has {nz} elements, not a multiple of the localisation's {nl} latent grid points"
            )));
        }
        if let Some((i, v)) = z_b.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::data(format!("latent point z_b has a non-finite value {v} at index {i}")));
        }
        if npoints == 0 || chan_sd.is_empty() {
            return Err(Error::arg("latent ensemble B: the model grid has no points or no channels"));
        }
        let pert = Perturbations::new(members, nz / nl, nl, "latent member")?;
        Ok(LatentEnsembleB {
            z: z_b,
            pert,
            loc,
            chan_sd: chan_sd.to_vec(),
            npoints,
            gamma,
            dz: vec![0.0; nz],
            la: vec![0.0; nl],
            bz: vec![0f32; nz],
            bx: vec![0f32; chan_sd.len() * npoints],
            variance_samples: DEFAULT_VARIANCE_SAMPLES,
            variance: None,
        })
    }

    /// From member states `members` (physical units, state layout) and the background `x_b`: encodes each
    /// z_k = E(N(x_k)) and z_b = E(N(x_b)) exactly as [`crate::bmat::latent::LatentB::at_background`] encodes x_b,
    /// with the bundle's normalisation sd as the output sd. `loc` is the latent localisation
    /// ([`latent_localisation`]).
    pub fn from_states<M: AsRef<[f64]>>(
        b: &Bundle,
        ae: &mut Autoencoder,
        members: &[M],
        x_b: &[f64],
        gamma: f64,
        loc: Localisation,
    ) -> Result<LatentEnsembleB> {
        check_count(members.len(), "members")?;
        check_gamma(gamma)?;
        let n = b.layout.state_len();
        check_len("background x_b", x_b.len(), n)?;
        if let Some((i, v)) = x_b.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::data(format!("background x_b has a non-finite value {v} at index {i}")));
        }
        for (k, m) in members.iter().enumerate() {
            check_member("member", k, m.as_ref(), n)?;
        }
        let np = b.layout.grid.npoints();
        let mut zs = Vec::with_capacity(members.len());
        for (k, m) in members.iter().enumerate() {
            zs.push(
                encode_state(ae, m.as_ref(), &b.mean, &b.std, np)
                    .map_err(|e| e.context(format!("encoding member {k}")))?,
            );
        }
        let z_b = encode_state(ae, x_b, &b.mean, &b.std, np).map_err(|e| e.context("encoding the background"))?;
        for (k, z) in zs.iter().enumerate() {
            if let Some((i, v)) = z.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::data(format!(
                    "member {k} (0-based) encodes to a non-finite latent value {v} at index {i}"
                )));
            }
        }
        Self::new(&zs, z_b, &b.std, np, gamma, loc)
    }

    /// Number of members K.
    pub fn members(&self) -> usize {
        self.pert.k
    }

    /// Latent perturbation dz_k = (z_k - mean) / sqrt(K - 1) of member `k` (latent layout).
    pub fn perturbation(&self, k: usize) -> &[f64] {
        self.pert.member(k)
    }

    /// The weight gamma.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    /// Sets gamma (finite, >= 0) and forgets the cached variance.
    pub fn set_gamma(&mut self, gamma: f64) -> Result<()> {
        check_gamma(gamma)?;
        self.gamma = gamma;
        self.variance = None;
        Ok(())
    }

    /// The latent localisation.
    pub fn localisation(&self) -> &Localisation {
        &self.loc
    }

    /// Moves the linearisation point of D' to `z` (latent length; forgets the cached variance).
    pub fn set_point(&mut self, z: Vec<f32>) -> Result<()> {
        check_len("latent point z", z.len(), self.z.len())?;
        self.z = z;
        self.variance = None;
        Ok(())
    }

    /// The linearisation point z_b.
    pub fn point(&self) -> &[f32] {
        &self.z
    }

    /// Per-channel normalisation sd of the output.
    pub fn chan_sd(&self) -> &[f64] {
        &self.chan_sd
    }

    /// Number of draws of the randomised variance estimate (>= 1); forgets a cached variance computed otherwise.
    pub fn set_variance_samples(&mut self, n: usize) {
        let n = n.max(1);
        if n != self.variance_samples {
            self.variance_samples = n;
            self.variance = None;
        }
    }

    /// Whether [`BOperator::variance`] is exact (control size <= sample count).
    pub fn variance_is_exact(&self) -> bool {
        self.control_size() <= self.variance_samples
    }

    /// The latent increment before decoding, dz = sqrt(gamma) sum_k dz_k o (L^1/2 a_k) (float64; `v` of the control
    /// size, `dz` of the latent length).
    pub fn latent_increment(&mut self, v: &[f64], dz: &mut [f64]) -> Result<()> {
        check_len("control vector a", v.len(), self.control_size())?;
        check_len("latent increment dz", dz.len(), self.z.len())?;
        self.pert.forward(&mut self.loc, self.gamma.sqrt(), v, dz, &mut self.la);
        Ok(())
    }

    /// The exact adjoint of [`latent_increment`](LatentEnsembleB::latent_increment).
    pub fn latent_increment_ad(&mut self, dz: &[f64], v: &mut [f64]) -> Result<()> {
        check_len("control vector a", v.len(), self.control_size())?;
        check_len("latent increment dz", dz.len(), self.z.len())?;
        self.pert.backward(&mut self.loc, self.gamma.sqrt(), dz, v, &mut self.la);
        Ok(())
    }

    /// diag of the latent-space ensemble covariance gamma (sum_k dz_k dz_k^T) o (L (x) 1 1^T) (exact, latent layout).
    pub fn latent_variance(&self) -> Vec<f64> {
        self.pert.variance(self.loc.diag(), self.gamma)
    }
}

impl BOperator for LatentEnsembleB {
    fn control_size(&self) -> usize {
        self.pert.k * self.loc.npoints()
    }

    fn state_len(&self) -> usize {
        self.bx.len()
    }

    fn sqrt(&mut self, ae: &mut Autoencoder, v: &[f64], x: &mut [f64]) -> Result<()> {
        check_len("control vector a", v.len(), self.control_size())?;
        check_len("state increment x", x.len(), self.state_len())?;
        self.pert.forward(&mut self.loc, self.gamma.sqrt(), v, &mut self.dz, &mut self.la);
        self.bz.iter_mut().zip(&self.dz).for_each(|(b, d)| *b = *d as f32);
        ae.tl(&self.z, &self.bz, &mut self.bx)?;
        let np = self.npoints;
        for ((xc, bc), sd) in x.chunks_exact_mut(np).zip(self.bx.chunks_exact(np)).zip(&self.chan_sd) {
            xc.iter_mut().zip(bc).for_each(|(x, b)| *x = sd * *b as f64);
        }
        Ok(())
    }

    fn sqrt_ad(&mut self, ae: &mut Autoencoder, x: &[f64], v: &mut [f64]) -> Result<()> {
        check_len("control vector a", v.len(), self.control_size())?;
        check_len("state x", x.len(), self.state_len())?;
        let np = self.npoints;
        for ((bc, xc), sd) in self.bx.chunks_exact_mut(np).zip(x.chunks_exact(np)).zip(&self.chan_sd) {
            bc.iter_mut().zip(xc).for_each(|(b, x)| *b = (sd * x) as f32);
        }
        ae.ad(&self.z, &self.bx, &mut self.bz)?;
        self.dz.iter_mut().zip(&self.bz).for_each(|(d, b)| *d = *b as f64);
        self.pert.backward(&mut self.loc, self.gamma.sqrt(), &self.dz, v, &mut self.la);
        Ok(())
    }

    fn variance(&mut self, ae: &mut Autoencoder) -> Result<&[f64]> {
        if self.variance.is_none() {
            let (n, m, samples) = (self.control_size(), self.state_len(), self.variance_samples);
            let (acc, _) = diag_of_sqrt(n, m, samples, |v, x| self.sqrt(ae, v, x))?;
            self.variance = Some(acc);
        }
        Ok(self.variance.as_deref().expect("computed above"))
    }

    fn variance_method(&self) -> String {
        let head = format!("latent ensemble B (K = {}, gamma = {}, {})", self.pert.k, self.gamma, self.loc.describe());
        if self.variance_is_exact() {
            format!("{head}: exact ({} columns)", self.control_size())
        } else {
            let n = self.variance_samples;
            format!(
                "{head}: randomised, {n} draws (relative standard error of the variance sqrt(2/{n}) = {:.3})",
                (2.0 / n as f64).sqrt()
            )
        }
    }
}

/// The model-space ensemble square root of the baseline (hybrid 3DEnVar); see the module documentation.
#[derive(Debug, Clone)]
pub struct ModelEnsembleB {
    pert: Perturbations,
    loc: Localisation,
    gamma: f64,
    la: Vec<f64>,
    variance: Vec<f64>,
}

impl ModelEnsembleB {
    /// From member states `members` (each of length nchan x `loc.npoints()`, channel-major state layout, float32 or
    /// float64), the weight `gamma` (>= 0) and the horizontal localisation `loc` on the model grid.
    pub fn new<M: AsRef<[T]>, T: Copy + Into<f64>>(
        members: &[M],
        nchan: usize,
        gamma: f64,
        loc: Localisation,
    ) -> Result<ModelEnsembleB> {
        check_gamma(gamma)?;
        if nchan == 0 {
            return Err(Error::arg("model-space ensemble B: the state has no channels"));
        }
        let np = loc.npoints();
        let pert = Perturbations::new(members, nchan, np, "member")?;
        let variance = pert.variance(loc.diag(), gamma);
        Ok(ModelEnsembleB { pert, loc, gamma, la: vec![0.0; np], variance })
    }

    /// For a bundle layout: the GC localisation of its grid with half-width `half_width_km`
    /// ([`Localisation::on_grid`]: zonal FFT for the 48 x 96 model grid).
    pub fn for_layout<M: AsRef<[T]>, T: Copy + Into<f64>>(
        layout: &Layout,
        members: &[M],
        gamma: f64,
        half_width_km: f64,
    ) -> Result<ModelEnsembleB> {
        check_count(members.len(), "members")?;
        let loc = Localisation::on_grid(&layout.grid.lat, &layout.grid.lon, half_width_km)?;
        Self::new(members, layout.nchan, gamma, loc)
    }

    /// Number of members K.
    pub fn members(&self) -> usize {
        self.pert.k
    }

    /// Perturbation dx_k = (x_k - mean) / sqrt(K - 1) of member `k` (state layout).
    pub fn perturbation(&self, k: usize) -> &[f64] {
        self.pert.member(k)
    }

    /// The weight gamma.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    /// Sets gamma (finite, >= 0).
    pub fn set_gamma(&mut self, gamma: f64) -> Result<()> {
        check_gamma(gamma)?;
        self.gamma = gamma;
        self.variance = self.pert.variance(self.loc.diag(), gamma);
        Ok(())
    }

    /// The model-grid localisation.
    pub fn localisation(&self) -> &Localisation {
        &self.loc
    }

    /// The raw ensemble variance sum_k dx_k^2 per state element (no gamma, no localisation: the spread for
    /// spread/skill diagnostics).
    pub fn ensemble_variance(&self) -> Vec<f64> {
        self.pert.variance(&vec![1.0; self.pert.np], 1.0)
    }

    /// x = U a (no autoencoder needed).
    pub fn apply_sqrt(&mut self, v: &[f64], x: &mut [f64]) -> Result<()> {
        check_len("control vector a", v.len(), BOperator::control_size(self))?;
        check_len("state increment x", x.len(), BOperator::state_len(self))?;
        self.pert.forward(&mut self.loc, self.gamma.sqrt(), v, x, &mut self.la);
        Ok(())
    }

    /// a = U^T x, the exact adjoint of [`apply_sqrt`](ModelEnsembleB::apply_sqrt).
    pub fn apply_sqrt_ad(&mut self, x: &[f64], v: &mut [f64]) -> Result<()> {
        check_len("control vector a", v.len(), BOperator::control_size(self))?;
        check_len("state x", x.len(), BOperator::state_len(self))?;
        self.pert.backward(&mut self.loc, self.gamma.sqrt(), x, v, &mut self.la);
        Ok(())
    }
}

impl BOperator for ModelEnsembleB {
    fn control_size(&self) -> usize {
        self.pert.k * self.loc.npoints()
    }

    fn state_len(&self) -> usize {
        self.pert.nchan * self.pert.np
    }

    fn sqrt(&mut self, _ae: &mut Autoencoder, v: &[f64], x: &mut [f64]) -> Result<()> {
        self.apply_sqrt(v, x)
    }

    fn sqrt_ad(&mut self, _ae: &mut Autoencoder, x: &[f64], v: &mut [f64]) -> Result<()> {
        self.apply_sqrt_ad(x, v)
    }

    fn variance(&mut self, _ae: &mut Autoencoder) -> Result<&[f64]> {
        Ok(&self.variance)
    }

    fn variance_method(&self) -> String {
        format!("model-space ensemble B (K = {}, gamma = {}, {}): exact", self.pert.k, self.gamma, self.loc.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numeric::{dot, Rng};
    use faer::linalg::solvers::Solve;

    fn grid_points(nlat: usize, nlon: usize) -> (Vec<f64>, Vec<f64>) {
        let lat = (0..nlat).map(|j| 90.0 - 180.0 * (j as f64 + 0.5) / nlat as f64).collect();
        let lon = (0..nlon).map(|i| 360.0 * i as f64 / nlon as f64).collect();
        (lat, lon)
    }

    /// K members with a common part and smooth-ish random perturbations, nchan x np.
    fn members(k: usize, n: usize, seed: u64) -> Vec<Vec<f64>> {
        let base = Rng::new(seed).normals(n);
        (0..k)
            .map(|i| {
                let r = Rng::new(seed + 100 + i as u64).normals(n);
                base.iter().zip(&r).map(|(b, r)| 10.0 * b + r).collect()
            })
            .collect()
    }

    fn rel(l: f64, r: f64) -> f64 {
        (l - r).abs() / l.abs().max(r.abs())
    }

    #[test]
    fn too_few_or_bad_members_are_clear_errors() {
        let (lat, lon) = grid_points(4, 8);
        let loc = Localisation::on_grid(&lat, &lon, 2000.0).unwrap();
        for k in [0, 1] {
            let m = members(k, 64, 1);
            let e = ModelEnsembleB::new(&m, 2, 1.0, loc.clone()).unwrap_err();
            eprintln!("K = {k}: {}", e.message);
            assert!(
                e.message.contains("members")
                    && e.message.contains(&format!("K = {k}"))
                    && e.message.contains("K >= 2"),
                "{}",
                e.message
            );
            assert_eq!(e.status, crate::error::Status::InvalidArgument);
            let z: Vec<Vec<f32>> = (0..k).map(|_| vec![0f32; 64]).collect();
            let e = LatentEnsembleB::new(&z, vec![0f32; 64], &[1.0], 10, 1.0, loc.clone()).unwrap_err();
            assert!(e.message.contains("latent members") && e.message.contains("K >= 2"), "{}", e.message);
        }
        let mut m = members(3, 64, 1);
        m[2].pop();
        let e = ModelEnsembleB::new(&m, 2, 1.0, loc.clone()).unwrap_err();
        assert!(e.message.contains("member 2 (0-based) has length 63, expected 64"), "{}", e.message);
        let mut m = members(3, 64, 1);
        m[1][17] = f64::NAN;
        let e = ModelEnsembleB::new(&m, 2, 1.0, loc.clone()).unwrap_err();
        assert!(e.message.contains("member 1 (0-based) has a non-finite value NaN at index 17"), "{}", e.message);
        assert_eq!(e.status, crate::error::Status::InvalidData);
        let m = members(3, 64, 1);
        assert!(ModelEnsembleB::new(&m, 2, -1.0, loc.clone()).unwrap_err().message.contains("gamma"));
        assert!(ModelEnsembleB::new(&m, 3, 1.0, loc.clone()).is_err(), "64 is not 3 x 32");
        // A latent point whose length is no multiple of the latent grid.
        let z: Vec<Vec<f32>> = (0..3).map(|_| vec![0f32; 65]).collect();
        assert!(LatentEnsembleB::new(&z, vec![0f32; 65], &[1.0], 10, 1.0, loc)
            .unwrap_err()
            .message
            .contains("multiple"));
    }

    #[test]
    fn model_ensemble_square_root_has_an_exact_adjoint() {
        // Dense localisation (8 x 16) and the zonal form (48 x 96, the model grid).
        for (nlat, nlon, nchan, k) in [(8, 16, 7, 5), (48, 96, 3, 4)] {
            let (lat, lon) = grid_points(nlat, nlon);
            let loc = Localisation::on_grid(&lat, &lon, 2500.0).unwrap();
            let np = nlat * nlon;
            let mut b = ModelEnsembleB::new(&members(k, nchan * np, 7), nchan, 0.7, loc).unwrap();
            let (n, m) = (b.control_size(), b.state_len());
            assert_eq!((n, m), (k * np, nchan * np));
            let mut rng = Rng::new(5);
            let (v, x) = (rng.normals(n), rng.normals(m));
            let (mut uv, mut utx) = (vec![0.0; m], vec![0.0; n]);
            b.apply_sqrt(&v, &mut uv).unwrap();
            b.apply_sqrt_ad(&x, &mut utx).unwrap();
            let r = rel(dot(&uv, &x), dot(&v, &utx));
            eprintln!(
                "model ensemble B {nlat}x{nlon}, {nchan} channels, K = {k} ({}): adjoint rel {r:.2e}",
                if b.localisation().is_zonal() { "zonal" } else { "dense" }
            );
            assert!(r < 1e-12, "adjoint rel {r:e}");
        }
    }

    #[test]
    fn latent_ensemble_increment_has_an_exact_adjoint() {
        // A 40-channel latent on the 12 x 24 latent grid, K = 10.
        let (lat, lon) = grid_points(12, 24);
        let loc = Localisation::on_grid(&lat, &lon, 2500.0).unwrap();
        let nz = 40 * 288;
        let zs: Vec<Vec<f32>> = members(10, nz, 3).iter().map(|m| m.iter().map(|v| *v as f32).collect()).collect();
        let mut b = LatentEnsembleB::new(&zs, vec![0f32; nz], &[1.0; 41], 4608, 0.5, loc).unwrap();
        assert_eq!(b.control_size(), 10 * 288);
        let mut rng = Rng::new(9);
        let (v, dz) = (rng.normals(b.control_size()), rng.normals(nz));
        let (mut uv, mut utz) = (vec![0.0; nz], vec![0.0; b.control_size()]);
        b.latent_increment(&v, &mut uv).unwrap();
        b.latent_increment_ad(&dz, &mut utz).unwrap();
        let r = rel(dot(&uv, &dz), dot(&v, &utz));
        eprintln!("latent ensemble increment (40 x 288, K = 10): adjoint rel {r:.2e}");
        assert!(r < 1e-12, "adjoint rel {r:e}");
    }

    /// B = U U^T equals gamma (P_e o L) built independently, and the variational analysis (normal equations in the
    /// control a) equals the Kalman solution with that B.
    #[test]
    fn model_ensemble_b_is_the_localised_ensemble_covariance_and_gives_the_kalman_analysis() {
        let (nlat, nlon, nchan, k, gamma, c) = (6, 12, 3, 4, 0.8, 3000.0);
        let (lat, lon) = grid_points(nlat, nlon);
        let loc = Localisation::on_grid(&lat, &lon, c).unwrap();
        let (np, ns) = (nlat * nlon, nchan * nlat * nlon);
        let mem = members(k, ns, 21);
        let mut b = ModelEnsembleB::new(&mem, nchan, gamma, loc.clone()).unwrap();
        let nc = b.control_size();
        // Columns of U.
        let mut u = vec![vec![0.0; ns]; nc];
        for (j, col) in u.iter_mut().enumerate() {
            let mut e = vec![0.0; nc];
            e[j] = 1.0;
            b.apply_sqrt(&e, col).unwrap();
        }
        // Explicit P_e o L (independent: own mean, own perturbations, GC of the point distance).
        let mean: Vec<f64> = (0..ns).map(|i| mem.iter().map(|m| m[i]).sum::<f64>() / k as f64).collect();
        let d: Vec<Vec<f64>> = mem
            .iter()
            .map(|m| m.iter().zip(&mean).map(|(v, mu)| (v - mu) / ((k - 1) as f64).sqrt()).collect())
            .collect();
        let bex = |i: usize, j: usize| -> f64 {
            let pe: f64 = d.iter().map(|dk| dk[i] * dk[j]).sum();
            gamma * pe * loc.correlation(i % np, j % np)
        };
        let (mut worst, mut big): (f64, f64) = (0.0, 0.0);
        for i in 0..ns {
            for j in 0..ns {
                let uu: f64 = u.iter().map(|col| col[i] * col[j]).sum();
                worst = worst.max((uu - bex(i, j)).abs());
                big = big.max(bex(i, j).abs());
            }
        }
        eprintln!("|U U^T - gamma P_e o L| max {worst:.2e} (max |B| {big:.2e}); {}", loc.describe());
        assert!(worst < 1e-12 * big, "U U^T differs from the localised ensemble covariance by {worst:e}");
        let var = BOperator::variance_method(&b);
        assert!(var.contains("exact"));
        for i in 0..ns {
            assert!((b.variance[i] - bex(i, i)).abs() < 1e-12 * big, "variance {i}");
        }
        // Observations: 10 linear functionals of two elements each, sigma 0.5..1.4.
        let mut rng = Rng::new(33);
        let m = 10;
        let hrows: Vec<[(usize, f64); 2]> = (0..m)
            .map(|_| {
                let (a, bb) = ((rng.uniform() * ns as f64) as usize, (rng.uniform() * ns as f64) as usize);
                [(a.min(ns - 1), 0.7), (bb.min(ns - 1), 0.3)]
            })
            .collect();
        let sig: Vec<f64> = (0..m).map(|i| 0.5 + 0.1 * i as f64).collect();
        let dvec = rng.normals(m);
        let h = |x: &[f64]| -> Vec<f64> { hrows.iter().map(|r| r.iter().map(|(i, w)| w * x[*i]).sum()).collect() };
        // Variational: (I + G^T R^-1 G) a = G^T R^-1 d, dx = U a.
        let g: Vec<Vec<f64>> = u.iter().map(|col| h(col)).collect(); // g[j] = H U e_j
        let amat = faer::Mat::<f64>::from_fn(nc, nc, |i, j| {
            (0..m).map(|o| g[i][o] * g[j][o] / (sig[o] * sig[o])).sum::<f64>() + if i == j { 1.0 } else { 0.0 }
        });
        let mut rhs =
            faer::Mat::<f64>::from_fn(nc, 1, |i, _| (0..m).map(|o| g[i][o] * dvec[o] / (sig[o] * sig[o])).sum());
        amat.llt(faer::Side::Lower).unwrap().solve_in_place(&mut rhs);
        let a: Vec<f64> = (0..nc).map(|i| rhs[(i, 0)]).collect();
        let mut dx_var = vec![0.0; ns];
        b.apply_sqrt(&a, &mut dx_var).unwrap();
        // Kalman with the explicit B: dx = B H^T (H B H^T + R)^-1 d.
        let bht: Vec<Vec<f64>> =
            (0..m).map(|o| (0..ns).map(|i| hrows[o].iter().map(|(j, w)| w * bex(i, *j)).sum()).collect()).collect(); // bht[o] = B H^T e_o
        let s =
            faer::Mat::<f64>::from_fn(m, m, |o1, o2| h(&bht[o2])[o1] + if o1 == o2 { sig[o1] * sig[o1] } else { 0.0 });
        let mut y = faer::Mat::<f64>::from_fn(m, 1, |o, _| dvec[o]);
        s.llt(faer::Side::Lower).unwrap().solve_in_place(&mut y);
        let dx_kal: Vec<f64> = (0..ns).map(|i| (0..m).map(|o| bht[o][i] * y[(o, 0)]).sum()).collect();
        let num = dx_var.iter().zip(&dx_kal).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
        let den = dx_kal.iter().map(|b| b * b).sum::<f64>().sqrt();
        eprintln!(
            "model ensemble B: variational vs Kalman analysis increment, relative 2-norm difference {:.2e}",
            num / den
        );
        assert!(num / den < 1e-10, "variational and Kalman increments differ by {:e}", num / den);
    }

    #[test]
    fn ensemble_b_is_deterministic() {
        let (lat, lon) = grid_points(48, 96);
        let mem = members(5, 2 * 4608, 4);
        let run = || {
            let loc = Localisation::on_grid(&lat, &lon, 2500.0).unwrap();
            let mut b = ModelEnsembleB::new(&mem, 2, 1.0, loc).unwrap();
            let v = Rng::new(2).normals(b.control_size());
            let mut x = vec![0.0; b.state_len()];
            b.apply_sqrt(&v, &mut x).unwrap();
            let mut w = vec![0.0; v.len()];
            b.apply_sqrt_ad(&x, &mut w).unwrap();
            (x, w)
        };
        let (x1, w1) = run();
        let (x2, w2) = run();
        assert!(x1 == x2 && w1 == w2, "two runs differ");
    }

    /// Cost of one U and one U^T at the reference sizes (41 channels on 48 x 96; latent 40 x 12 x 24, the decoder
    /// excluded), K = 5, 10, 20: printed, with a loose bound.
    #[test]
    fn cost_at_reference_size() {
        let (lat, lon) = grid_points(48, 96);
        let (llat, llon) = grid_points(12, 24);
        for k in [5, 10, 20] {
            let mem: Vec<Vec<f32>> =
                (0..k).map(|i| Rng::new(i as u64).normals(41 * 4608).iter().map(|v| *v as f32).collect()).collect();
            let t = std::time::Instant::now();
            let loc = Localisation::on_grid(&lat, &lon, 2500.0).unwrap();
            let mut b = ModelEnsembleB::new(&mem, 41, 1.0, loc).unwrap();
            let build = t.elapsed().as_secs_f64();
            let v = Rng::new(1).normals(b.control_size());
            let mut x = vec![0.0; b.state_len()];
            let mut w = vec![0.0; v.len()];
            let t = std::time::Instant::now();
            b.apply_sqrt(&v, &mut x).unwrap();
            b.apply_sqrt_ad(&x, &mut w).unwrap();
            let model = t.elapsed().as_secs_f64();
            let zs: Vec<Vec<f32>> =
                (0..k).map(|i| Rng::new(50 + i as u64).normals(40 * 288).iter().map(|v| *v as f32).collect()).collect();
            let t = std::time::Instant::now();
            let loc = Localisation::on_grid(&llat, &llon, 2500.0).unwrap();
            let mut lb = LatentEnsembleB::new(&zs, vec![0f32; 40 * 288], &[1.0; 41], 4608, 1.0, loc).unwrap();
            let lbuild = t.elapsed().as_secs_f64();
            let v = Rng::new(1).normals(lb.control_size());
            let mut dz = vec![0.0; 40 * 288];
            let mut w = vec![0.0; v.len()];
            let t = std::time::Instant::now();
            lb.latent_increment(&v, &mut dz).unwrap();
            lb.latent_increment_ad(&dz, &mut w).unwrap();
            let latent = t.elapsed().as_secs_f64();
            eprintln!(
                "K = {k:2}: model-space U + U^T {:.1} ms (build {:.2} s, perturbations {:.0} MB, {} controls); \
                 latent (before the decoder) {:.2} ms (build {:.2} s, {:.1} MB, {} controls)",
                model * 1e3,
                build,
                (k * 41 * 4608 * 8) as f64 / 1e6,
                b.control_size(),
                latent * 1e3,
                lbuild,
                (k * 40 * 288 * 8) as f64 / 1e6,
                lb.control_size()
            );
            assert!(model < 5.0 && latent < 5.0);
        }
    }

    #[test]
    fn latent_grid_of_the_reference_shapes() {
        use crate::bundle::grid::GridKind;
        let lat: Vec<f64> = (0..48).map(|j| 88.0 - 176.0 * j as f64 / 47.0).collect();
        let lon: Vec<f64> = (0..96).map(|i| 3.75 * i as f64).collect();
        let g = Grid::new(GridKind::Gaussian, lat.clone(), lon).unwrap();
        let (nc, la, lo) = latent_grid(&g, &[40, 12, 24]).unwrap();
        assert_eq!((nc, la.len(), lo.len()), (40, 12, 24));
        assert!((lo[0] - 5.625).abs() < 1e-12 && (lo[1] - 20.625).abs() < 1e-12);
        assert!((la[0] - lat[..4].iter().sum::<f64>() / 4.0).abs() < 1e-12);
        for bad in [&[24usize][..], &[40, 5, 24], &[40, 12, 25]] {
            let e = latent_grid(&g, bad).unwrap_err();
            assert!(e.message.contains("[channels, lat, lon]"), "{}", e.message);
        }
    }
}
