//! Model-space 3D-Var baseline: a static B = U_s U_s^T with U_s = P M_h S V^1/2 K.
//!
//! * K: horizontal square-root correlation per channel, an isotropic Gaussian kernel on the sphere,
//!   K = N G A^1/2 with G_pq = exp(-d_pq^2 / L^2) (d great-circle distance, L the channel's length scale),
//!   A the cell areas and N the row normalisation that makes diag(K K^T) = 1. K K^T is then (up to the grid) the
//!   Gaussian correlation exp(-d^2 / (2 L^2)), with e-folding distance sqrt(2) L, and unit variance at every point.
//! * V^1/2: symmetric square root of each upper-air variable's vertical correlation matrix (faer's self-adjoint
//!   eigen-decomposition, negative eigenvalues clipped to 0).
//! * S: grid-point background-error standard deviations (bundle `baseline_b.nc`, `sd`), times sqrt of the
//!   variance factor (manifest `[statistics] baseline_variance_factor`, option `baseline_variance_factor`).
//! * M_h: the hydrostatic balance ([`crate::bmat::hydrostatic`]): when the bundle has `t` and `z`, the z increment is
//!   computed from the t (q, ps) increments and z has no control variable and no independent variance.
//! * P: keeps the selected variables (all for 3D-Var; the `[hybrid]` variables for the static part of the hybrid B)
//!   and zeroes the others. Control channels that only feed unselected variables are dropped from the control vector.
//!
//! Because the grid has uniformly spaced longitudes, G_pq depends only on the two latitude rows and the longitude
//! difference: each (row, row) block is a symmetric circulant matrix, diagonal in Fourier space along longitude. U_s
//! applies it exactly with real FFTs (`realfft`) and a product with the nlat x nlat block of each wavenumber:
//! O(nchan nlat^2 nlon) per application. Memory: nchan nlat^2 (nlon/2+1) doubles (37 MB for T31, 41 channels).
//! No truncation. The variances diag(U_s U_s^T) are exact: each level has its own control field, so the level
//! covariance at a point is S V S (K K^T has unit diagonal) and the variances of the controlled channels are S^2;
//! those of a balanced z are the diagonal of M_h (S V S) M_h^T at each point.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use crate::bmat::hydrostatic::Hydrostatic;
use crate::bmat::BOperator;
use crate::bundle::grid::Layout;
use crate::bundle::{BaselineStats, Bundle};
use crate::error::{Error, Result};
use crate::model::autoencoder::Autoencoder;

const EARTH_RADIUS_KM: f64 = 6371.0;

/// The static-B square root U_s (control vector -> state increment, physical units).
pub struct StaticB {
    nchan: usize,
    nlat: usize,
    nlon: usize,
    nm: usize,
    /// ghat[c][(j * nlat + j2) * nm + m]: Fourier transform (real: the kernel is symmetric) of block G_c(j, j2).
    ghat: Vec<Vec<f64>>,
    /// Row normalisation N per channel and latitude row.
    norm: Vec<Vec<f64>>,
    /// sqrt of the cell area (relative) per row.
    sqrt_area: Vec<f64>,
    sd: Vec<f64>,
    /// (first channel, nlev, V^1/2 row-major) of each upper-air variable with a control variable.
    vsqrt: Vec<(usize, usize, Vec<f64>)>,
    hydro: Option<Hydrostatic>,
    /// Variable of each channel.
    chan_var: Vec<usize>,
    /// Output channels kept by P.
    keep: Vec<bool>,
    /// Control channels in use under P (a subset of `ctl`, increasing).
    active: Vec<usize>,
    /// Exact diag(U_s U_s^T) without P, and with P.
    variance_full: Vec<f64>,
    variance: Vec<f64>,
    fwd: Arc<dyn RealToComplex<f64>>,
    inv: Arc<dyn ComplexToReal<f64>>,
    row: Vec<f64>,
    spec: Vec<Complex<f64>>,
    out_spec: Vec<Complex<f64>>,
    fft_scratch: Vec<Complex<f64>>,
    full: Vec<f64>,
    chan_in: Vec<f64>,
}

/// Symmetric square root of a small symmetric PSD matrix (row-major n x n) by faer's self-adjoint eigen-decomposition
/// (negative eigenvalues, from rounding, clipped to 0).
pub fn sym_sqrt(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let m = faer::Mat::<f64>::from_fn(n, n, |i, j| a[i * n + j]);
    let evd = m
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| Error::bundle(format!("eigen-decomposition of a vertical correlation matrix failed: {e:?}")))?;
    let (u, s) = (evd.U(), evd.S().column_vector());
    let lam: Vec<f64> = (0..n).map(|k| s[k].max(0.0).sqrt()).collect();
    let mut r = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            r[i * n + j] = (0..n).map(|k| u[(i, k)] * lam[k] * u[(j, k)]).sum();
        }
    }
    Ok(r)
}

fn great_circle_km(lat1: f64, lat2: f64, dlon: f64) -> f64 {
    let (p1, p2, dl) = (lat1.to_radians(), lat2.to_radians(), dlon.to_radians());
    let h = ((p2 - p1) / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

impl StaticB {
    /// U_s from baseline statistics, univariate for every variable (no balance), variance factor 1, all variables.
    pub fn new(layout: &Layout, stats: &BaselineStats) -> Result<StaticB> {
        Self::with_balance(layout, stats, None, 1.0)
    }

    /// The baseline of a bundle: hydrostatic z when the bundle has `t` and `z` (reference values: the normalisation
    /// means), every variance multiplied by `variance_factor`.
    pub fn for_bundle(bundle: &Bundle, variance_factor: f64) -> Result<StaticB> {
        let stats = bundle.baseline.as_ref().ok_or_else(|| {
            Error::new(
                crate::error::Status::NotReady,
                format!("the static B needs baseline statistics, but bundle '{}' has none", bundle.name),
            )
        })?;
        let hydro = Hydrostatic::for_bundle(bundle)?;
        Self::with_balance(&bundle.layout, stats, hydro, variance_factor)
    }

    /// U_s with an optional hydrostatic balance operator and a variance factor (> 0).
    pub fn with_balance(layout: &Layout, stats: &BaselineStats, hydro: Option<Hydrostatic>, variance_factor: f64) -> Result<StaticB> {
        let g = &layout.grid;
        let (nlat, nlon, nchan) = (g.nlat(), g.nlon(), layout.nchan);
        let dlon = 360.0 / nlon as f64;
        let uniform = g.lon.iter().enumerate().all(|(i, l)| (l - g.lon[0] - i as f64 * dlon).abs() < 1e-6 * 360.0);
        if !g.periodic || !uniform {
            return Err(Error::arg(
                "the static B needs a global grid with uniformly spaced longitudes (the horizontal correlation is applied spectrally along longitude)",
            ));
        }
        if !(variance_factor.is_finite() && variance_factor > 0.0) {
            return Err(Error::arg(format!("baseline_variance_factor = {variance_factor} must be finite and > 0")));
        }
        let nm = nlon / 2 + 1;
        let mut planner = RealFftPlanner::<f64>::new();
        let fwd = planner.plan_fft_forward(nlon);
        let inv = planner.plan_fft_inverse(nlon);
        let scratch_len = fwd.get_scratch_len().max(inv.get_scratch_len());
        // Relative cell areas: cos(lat) times the latitude band width.
        let edges: Vec<f64> = (0..=nlat)
            .map(|j| if j == 0 { 90.0 } else if j == nlat { -90.0 } else { 0.5 * (g.lat[j - 1] + g.lat[j]) })
            .collect();
        let sqrt_area: Vec<f64> =
            (0..nlat).map(|j| (edges[j].to_radians().sin() - edges[j + 1].to_radians().sin()).abs().sqrt()).collect();
        let mut dist2 = vec![0.0; nlat * nlat * nlon];
        for j in 0..nlat {
            for j2 in 0..nlat {
                for d in 0..nlon {
                    let dd = great_circle_km(g.lat[j], g.lat[j2], d as f64 * dlon);
                    dist2[(j * nlat + j2) * nlon + d] = dd * dd;
                }
            }
        }
        let mut ghat = Vec::with_capacity(nchan);
        let mut norm = Vec::with_capacity(nchan);
        let (mut gk, mut sp, mut scratch) = (vec![0.0; nlon], vec![Complex::default(); nm], vec![Complex::default(); scratch_len]);
        for c in 0..nchan {
            let l2 = stats.length_scale[c].powi(2);
            let mut gh = vec![0.0; nlat * nlat * nm];
            let mut rowsum = vec![0.0; nlat];
            for j in 0..nlat {
                for j2 in 0..nlat {
                    let base = (j * nlat + j2) * nlon;
                    for d in 0..nlon {
                        gk[d] = (-dist2[base + d] / l2).exp();
                    }
                    rowsum[j] += sqrt_area[j2].powi(2) * gk.iter().map(|v| v * v).sum::<f64>();
                    fwd.process_with_scratch(&mut gk, &mut sp, &mut scratch).map_err(|e| Error::new(crate::error::Status::Internal, format!("FFT: {e}")))?;
                    for m in 0..nm {
                        gh[(j * nlat + j2) * nm + m] = sp[m].re;
                    }
                }
            }
            ghat.push(gh);
            norm.push(rowsum.iter().map(|s| 1.0 / s.sqrt()).collect());
        }
        let z_chans = hydro.as_ref().map(|h| h.z_channels());
        let is_z = |c: usize| z_chans.as_ref().is_some_and(|r| r.contains(&c));
        let mut vsqrt = Vec::new();
        for (v, var) in layout.variables.iter().enumerate() {
            if let Some(cv) = &stats.vertical_correlation[v] {
                if !is_z(var.first_channel) {
                    vsqrt.push((var.first_channel, var.nlev, sym_sqrt(cv, var.nlev)?));
                }
            }
        }
        let chan_var: Vec<usize> = (0..nchan).map(|c| layout.channel_owner(c).0).collect();
        let ctl = Self::active_channels(layout, hydro.as_ref(), &vec![true; layout.variables.len()]);
        let np = nlat * nlon;
        let f = variance_factor.sqrt();
        let mut b = StaticB {
            nchan,
            nlat,
            nlon,
            nm,
            ghat,
            norm,
            sqrt_area,
            sd: stats.sd.iter().map(|s| s * f).collect(),
            vsqrt,
            hydro,
            chan_var,
            active: ctl,
            keep: vec![true; nchan],
            variance_full: vec![],
            variance: vec![],
            fwd,
            inv,
            row: vec![0.0; nlon],
            spec: vec![Complex::default(); nlat * nm],
            out_spec: vec![Complex::default(); nlat * nm],
            fft_scratch: vec![Complex::default(); scratch_len],
            full: vec![0.0; nchan * np],
            chan_in: vec![0.0; np],
        };
        b.variance_full = b.exact_variance();
        b.variance = b.variance_full.clone();
        Ok(b)
    }

    /// The control channels of a static B on `layout` restricted to the variables with `keep_var[v]`: those of the
    /// kept variables, and the sources of a kept balanced z (z itself has none).
    pub fn active_channels(layout: &Layout, hydro: Option<&Hydrostatic>, keep_var: &[bool]) -> Vec<usize> {
        let var_of = |c: usize| layout.channel_owner(c).0;
        let z = hydro.map(|h| h.z_channels());
        let z_kept = z.as_ref().is_some_and(|z| keep_var[var_of(z.start)]);
        (0..layout.nchan)
            .filter(|c| !z.as_ref().is_some_and(|z| z.contains(c)))
            .filter(|&c| keep_var[var_of(c)] || (z_kept && hydro.is_some_and(|h| h.is_source(c))))
            .collect()
    }

    /// Restricts the operator to the variables with `keep[v]` (the P of the hybrid B): other variables get no
    /// increment, and control channels feeding only them leave the control vector ([`StaticB::active_channels`]).
    pub fn set_selection(&mut self, layout: &Layout, keep_var: &[bool]) {
        self.keep = self.chan_var.iter().map(|&v| keep_var[v]).collect();
        self.active = Self::active_channels(layout, self.hydro.as_ref(), keep_var);
        let np = self.nlat * self.nlon;
        self.variance = self.variance_full.iter().enumerate().map(|(i, v)| if self.keep[i / np] { *v } else { 0.0 }).collect();
    }

    /// The hydrostatic balance operator in use, if any.
    pub fn hydrostatic(&self) -> Option<&Hydrostatic> {
        self.hydro.as_ref()
    }

    /// diag(U_s U_s^T) without P, exactly: S^2 for the controlled channels (their level covariance at a point is
    /// S V S, with V = V^1/2 V^1/2), and the diagonal of M_h (S V S) M_h^T for a balanced z.
    fn exact_variance(&self) -> Vec<f64> {
        let np = self.nlat * self.nlon;
        let mut var = vec![0.0; self.nchan * np];
        for &c in &self.active {
            for p in 0..np {
                var[c * np + p] = self.sd[c * np + p].powi(2);
            }
        }
        if let Some(h) = &self.hydro {
            let (t0, q0, ps) = h.sources();
            let n = h.z_channels().len();
            // V = V^1/2 V^1/2 of a source variable (identity if it has no vertical correlation).
            let v_of = |c0: usize| -> Vec<f64> {
                match self.vsqrt.iter().find(|(c, _, _)| *c == c0) {
                    Some((_, _, vs)) => (0..n * n).map(|k| (0..n).map(|l| vs[(k / n) * n + l] * vs[l * n + k % n]).sum()).collect(),
                    None => (0..n * n).map(|k| if k / n == k % n { 1.0 } else { 0.0 }).collect(),
                }
            };
            let (vt, vq) = (v_of(t0), q0.map(v_of));
            let cov = |c0: usize, v: &[f64], p: usize| -> Vec<f64> {
                (0..n * n).map(|k| self.sd[(c0 + k / n) * np + p] * v[k] * self.sd[(c0 + k % n) * np + p]).collect()
            };
            for p in 0..np {
                let ct = cov(t0, &vt, p);
                let cq = q0.zip(vq.as_ref()).map(|(q, v)| cov(q, v, p));
                let vps = ps.map_or(0.0, |c| var[c * np + p]);
                for (k, zc) in h.z_channels().enumerate() {
                    var[zc * np + p] = h.z_variance(k, &ct, cq.as_deref(), vps);
                }
            }
        }
        var
    }

    /// out = G_c v (one channel, nlat x nlon, symmetric circulant blocks), by real FFTs along longitude.
    fn apply_g(&mut self, c: usize, v: &[f64], out: &mut [f64]) {
        let (nlat, nlon, nm) = (self.nlat, self.nlon, self.nm);
        for j in 0..nlat {
            self.row.copy_from_slice(&v[j * nlon..(j + 1) * nlon]);
            let sp = &mut self.spec[j * nm..(j + 1) * nm];
            // Lengths are fixed at construction, so the transform cannot fail.
            self.fwd.process_with_scratch(&mut self.row, sp, &mut self.fft_scratch).expect("FFT lengths");
        }
        let gh = &self.ghat[c];
        for j in 0..nlat {
            let o = &mut self.out_spec[j * nm..(j + 1) * nm];
            o.iter_mut().for_each(|z| *z = Complex::default());
            for j2 in 0..nlat {
                let k = &gh[(j * nlat + j2) * nm..(j * nlat + j2 + 1) * nm];
                let s = &self.spec[j2 * nm..(j2 + 1) * nm];
                for m in 0..nm {
                    o[m] += s[m] * k[m];
                }
            }
        }
        let inv = 1.0 / nlon as f64;
        for j in 0..nlat {
            let o = &mut self.out_spec[j * nm..(j + 1) * nm];
            // The spectrum of a real sequence has real first (and, for even nlon, last) coefficients.
            o[0].im = 0.0;
            if nlon % 2 == 0 {
                o[nm - 1].im = 0.0;
            }
            self.inv.process_with_scratch(o, &mut self.row, &mut self.fft_scratch).expect("FFT lengths");
            for i in 0..nlon {
                out[j * nlon + i] = self.row[i] * inv;
            }
        }
    }

    fn vertical(&self, x: &mut [f64]) {
        let np = self.nlat * self.nlon;
        let mut col = Vec::new();
        for (c0, nlev, vs) in &self.vsqrt {
            for p in 0..np {
                col.clear();
                col.extend((0..*nlev).map(|k| x[(c0 + k) * np + p]));
                for l in 0..*nlev {
                    x[(c0 + l) * np + p] = (0..*nlev).map(|k| vs[l * nlev + k] * col[k]).sum();
                }
            }
        }
    }

    /// Control vector length: one value per grid point of each control channel in use.
    pub fn size(&self) -> usize {
        self.active.len() * self.nlat * self.nlon
    }

    /// Model state length.
    pub fn state_len(&self) -> usize {
        self.nchan * self.nlat * self.nlon
    }

    /// Exact diag(U_s U_s^T) (with P), state layout.
    pub fn variance(&self) -> &[f64] {
        &self.variance
    }

    /// x = U_s v.
    pub fn sqrt_apply(&mut self, v: &[f64], x: &mut [f64]) {
        let np = self.nlat * self.nlon;
        let nlon = self.nlon;
        x.iter_mut().for_each(|e| *e = 0.0);
        let active = std::mem::take(&mut self.active);
        let mut out = std::mem::take(&mut self.full);
        for (a, &c) in active.iter().enumerate() {
            for p in 0..np {
                self.chan_in[p] = v[a * np + p] * self.sqrt_area[p / nlon];
            }
            let tmp = std::mem::take(&mut self.chan_in);
            self.apply_g(c, &tmp, &mut out[..np]);
            self.chan_in = tmp;
            for p in 0..np {
                x[c * np + p] = out[p] * self.norm[c][p / nlon];
            }
        }
        self.active = active;
        self.full = out;
        self.vertical(x);
        for (xi, s) in x.iter_mut().zip(&self.sd) {
            *xi *= s;
        }
        if let Some(h) = &self.hydro {
            h.apply(x);
        }
        for (c, keep) in self.keep.iter().enumerate() {
            if !keep {
                x[c * np..(c + 1) * np].iter_mut().for_each(|e| *e = 0.0);
            }
        }
    }

    /// v = U_s^T x.
    pub fn sqrt_adjoint(&mut self, x: &[f64], v: &mut [f64]) {
        let np = self.nlat * self.nlon;
        let nlon = self.nlon;
        let mut y = std::mem::take(&mut self.full);
        for (i, (yi, xi)) in y.iter_mut().zip(x).enumerate() {
            *yi = if self.keep[i / np] { *xi } else { 0.0 };
        }
        if let Some(h) = &self.hydro {
            h.adjoint(&mut y);
        }
        for (yi, s) in y.iter_mut().zip(&self.sd) {
            *yi *= s;
        }
        self.vertical(&mut y);
        let active = std::mem::take(&mut self.active);
        let mut out = vec![0.0; np];
        for (a, &c) in active.iter().enumerate() {
            for p in 0..np {
                self.chan_in[p] = y[c * np + p] * self.norm[c][p / nlon];
            }
            let tmp = std::mem::take(&mut self.chan_in);
            self.apply_g(c, &tmp, &mut out);
            self.chan_in = tmp;
            for p in 0..np {
                v[a * np + p] = out[p] * self.sqrt_area[p / nlon];
            }
        }
        self.active = active;
        self.full = y;
    }
}

impl BOperator for StaticB {
    fn control_size(&self) -> usize {
        self.size()
    }
    fn state_len(&self) -> usize {
        StaticB::state_len(self)
    }
    fn sqrt(&mut self, _ae: &mut Autoencoder, v: &[f64], x: &mut [f64]) -> Result<()> {
        crate::bmat::check_len("control vector v", v.len(), self.size())?;
        crate::bmat::check_len("state increment x", x.len(), StaticB::state_len(self))?;
        self.sqrt_apply(v, x);
        Ok(())
    }
    fn sqrt_ad(&mut self, _ae: &mut Autoencoder, x: &[f64], v: &mut [f64]) -> Result<()> {
        crate::bmat::check_len("control vector v", v.len(), self.size())?;
        crate::bmat::check_len("state x", x.len(), StaticB::state_len(self))?;
        self.sqrt_adjoint(x, v);
        Ok(())
    }
    fn variance(&mut self, _ae: &mut Autoencoder) -> Result<&[f64]> {
        Ok(&self.variance)
    }
    fn variance_method(&self) -> String {
        "static B: exact".into()
    }
}
