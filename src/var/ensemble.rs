//! Ensemble members in the analysis (issue 24): the flow-dependent part of the B in force.
//!
//! With K >= 2 member states set ([`Analyser::set_ensemble`]: ensemble forecasts, or a time-lagged set of earlier
//! cycles' forecasts valid at the analysis time; state layout, physical units):
//!
//! * method `hybrid` becomes **latent hybrid EnVar**, a three-part B with control [w, v, a]:
//!   `dx = sqrt(alpha) sd D'(z_b)(s w) + sqrt(beta) P U_s v + sqrt(gamma) sd D'(z_b)(sum_k dz_k o (L^1/2 a_k))`,
//!   the last part the [`LatentEnsembleB`] of the members encoded like the background and localised on the latent
//!   grid (option `ensemble_localisation_km`);
//! * method `3dvar` becomes **hybrid 3DEnVar**, control [v, a]: `dx = U_s v + sqrt(gamma) sum_k dx_k o (L^1/2 a_k)`,
//!   the [`ModelEnsembleB`] of the same members localised on the model grid (`ensemble_localisation_model_km`).
//!
//! J_b = 1/2 (|w|^2 + |v|^2 + |a|^2); the report's `jb_parts` gives "latent", "static" and "ensemble", and its
//! `ensemble` section K, gamma (`ensemble_gamma`), the localisation and the spread against the innovations. The
//! background check's sigma_b is the diagonal of the whole B in force (the sum of the parts' diagonals), through
//! [`Analyser::with_b_in_force`], which lends the same operator to a host. Methods l3dvar and l4dvar ignore the
//! members; without members every method is unchanged.
//!
//! The ensemble part enters the minimisation as a linear term (its square root at the background) in both latent
//! increment forms: with `latent_increment = "linear"` the control transform is exactly the B in force; with
//! "nonlinear" the latent part is the decoded increment and the ensemble part is added to it. In the linear form
//! with scalar weights both latent increments go through one decoder TL and AD per application (the fused form of
//! docs/ensemble-b.md, `LatentEnvar`), so the members add no decoder runs to the minimisation.
//!
//! A latent without a horizontal grid (a flat latent vector, such as the linear test fixture's `[24]`) has nothing
//! to localise across: its latent ensemble B is the raw ensemble covariance (one latent "point"), and the report
//! says so.

use crate::bmat::ensemble::{latent_localisation, LatentEnsembleB, ModelEnsembleB};
use crate::bmat::hybrid::Hybrid;
use crate::bmat::localisation::Localisation;
use crate::bmat::static_b::StaticB;
use crate::bmat::BOperator;
use crate::bundle::Bundle;
use crate::error::{Error, Result, Status};
use crate::model::autoencoder::{encode_state, Autoencoder};
use crate::obs::operator::ObsOperator;
use crate::var::analysis::Analyser;
use crate::var::control::LatentControl;
use crate::var::formulation::Rows;
use crate::var::options::{BKind, EnsembleSpace};
use crate::var::report::{EnsembleInfo, EnsembleSpreadSkill, Report};
use crate::var::solver::ControlSpace;

pub use crate::var::members::Ensemble;

/// Which ensemble part a B kind gets with members set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsemblePart {
    /// The latent ensemble B (method hybrid).
    Latent,
    /// The model-space ensemble B (method 3dvar: hybrid 3DEnVar).
    Model,
}

impl EnsemblePart {
    /// The part for a B kind: hybrid -> latent (or model with option `ensemble_space = "model"`), static -> model,
    /// latent -> none.
    pub fn of_kind(kind: BKind, space: EnsembleSpace) -> Option<EnsemblePart> {
        match kind {
            BKind::Hybrid if space == EnsembleSpace::Model => Some(EnsemblePart::Model),
            BKind::Hybrid => Some(EnsemblePart::Latent),
            BKind::Static => Some(EnsemblePart::Model),
            BKind::Latent => None,
        }
    }

    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            EnsemblePart::Latent => "latent",
            EnsemblePart::Model => "model",
        }
    }
}

/// The latent localisation of a bundle: GC on the latent grid, or one point (no localisation) for a latent without
/// a horizontal grid (see the module documentation).
fn latent_loc(b: &Bundle, km: f64) -> Result<Localisation> {
    if b.latent_shape.len() == 1 {
        return Localisation::dense(&[0.0], &[0.0], km);
    }
    latent_localisation(b, km)
}

fn describe_latent_loc(b: &Bundle, loc: &Localisation) -> String {
    if b.latent_shape.len() == 1 {
        format!(
            "none: latent shape {:?} has no horizontal grid (one latent point; the ensemble covariance is not localised)",
            b.latent_shape
        )
    } else {
        format!("on the latent grid: {}", loc.describe())
    }
}

fn not_ready(what: &str) -> Error {
    Error::new(Status::NotReady, format!("the {what} ensemble B part is not prepared (Analyser::prepare_ensemble)"))
}

impl Analyser {
    /// Sets the ensemble members (K >= 2 states valid at the analysis time, state layout, physical units), replacing
    /// any set before. From now on method `hybrid` has a third, latent ensemble part and method `3dvar` becomes
    /// hybrid 3DEnVar (see [`crate::var::ensemble`]); `ensemble_gamma` and the localisation options apply. K < 2 is an
    /// `InvalidArgument` error; a member of the wrong length (`InvalidArgument`) or with a non-finite value
    /// (`InvalidData`) is named by its 0-based index. On error the previous members are kept.
    pub fn set_ensemble(&mut self, members: Vec<Vec<f64>>) -> Result<()> {
        let k = members.len();
        if k < 2 {
            return Err(Error::arg(format!(
                "members: got K = {k} ensemble member{}; an ensemble B part needs K >= 2 (the perturbations \
                 (x_k - mean) / sqrt(K - 1) of {k} member{} carry no spread)",
                if k == 1 { "" } else { "s" },
                if k == 1 { "" } else { "s" }
            )));
        }
        let lay = &self.bundle.layout;
        let n = lay.state_len();
        for (i, m) in members.iter().enumerate() {
            if m.len() != n {
                return Err(Error::arg(format!("member {i} (0-based) has length {}, expected {n}", m.len())));
            }
            if let Some(p) = m.iter().position(|v| !v.is_finite()) {
                return Err(Error::data(format!(
                    "member {i} (0-based) has a non-finite value {} at index {p} ({})",
                    m[p],
                    lay.describe_index(p)
                )));
            }
        }
        self.ensemble = Some(Ensemble { members, latents: None, latent: None, model: None });
        Ok(())
    }

    /// Removes the ensemble members: every method is the one without an ensemble part again.
    pub fn clear_ensemble(&mut self) {
        self.ensemble = None;
    }

    /// Number of ensemble members set (0: none).
    pub fn ensemble_size(&self) -> usize {
        self.ensemble.as_ref().map_or(0, Ensemble::len)
    }

    /// The members set, if any.
    pub fn ensemble(&self) -> Option<&Ensemble> {
        self.ensemble.as_ref()
    }

    /// The ensemble part the B of kind `kind` has now: none without members or for the latent B.
    pub fn ensemble_part(&self, kind: BKind) -> Option<EnsemblePart> {
        if self.ensemble_size() == 0 {
            return None;
        }
        EnsemblePart::of_kind(kind, self.options.ensemble_space)
    }

    /// The weight gamma of an ensemble part in force: option `ensemble_gamma`, else the bundle's `[hybrid] gamma`,
    /// else [`crate::var::options::DEFAULT_ENSEMBLE_GAMMA`].
    pub fn ensemble_gamma(&self) -> f64 {
        self.options.ensemble_gamma.or(self.bundle.hybrid.gamma).unwrap_or(crate::var::options::DEFAULT_ENSEMBLE_GAMMA)
    }

    /// Builds (or reuses) the ensemble part of the B of kind `kind` at the latent point `z` = E(N(x_b)) (needed for
    /// the latent part), with the options' gamma and localisation. Returns its control size (0: no ensemble part).
    /// Call after [`Analyser::prepare_b`]; the analysis does both.
    pub fn prepare_ensemble(&mut self, kind: BKind, z: Option<&[f32]>) -> Result<usize> {
        let Some(part) = self.ensemble_part(kind) else { return Ok(0) };
        let gamma = self.ensemble_gamma();
        let Analyser { bundle, ae, options, ensemble, .. } = self;
        let e = ensemble.as_mut().expect("ensemble_part checked the members");
        match part {
            EnsemblePart::Latent => {
                let z = z.ok_or_else(|| Error::arg("the latent ensemble B needs a linearisation point z_b"))?;
                let km = options.ensemble_localisation_km;
                let same = |l: &LatentEnsembleB| {
                    l.gamma() == gamma
                        && l.localisation().half_width_km() == km
                        && l.point().len() == z.len()
                        && l.point().iter().zip(z).all(|(a, b)| a.to_bits() == b.to_bits())
                };
                if !e.latent.as_ref().is_some_and(same) {
                    e.latent = None;
                    if e.latents.is_none() {
                        let np = bundle.layout.grid.npoints();
                        let mut zs = Vec::with_capacity(e.members.len());
                        for (k, m) in e.members.iter().enumerate() {
                            let zk = encode_state(ae, m, &bundle.mean, &bundle.std, np)
                                .map_err(|err| err.context(format!("encoding ensemble member {k}")))?;
                            if let Some((i, v)) = zk.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                                return Err(Error::data(format!(
                                    "member {k} (0-based) encodes to a non-finite latent value {v} at index {i}"
                                )));
                            }
                            zs.push(zk);
                        }
                        e.latents = Some(zs);
                    }
                    let loc = latent_loc(bundle, km)?;
                    let zs = e.latents.as_ref().expect("encoded above");
                    let np = bundle.layout.grid.npoints();
                    e.latent = Some(LatentEnsembleB::new(zs, z.to_vec(), &bundle.std, np, gamma, loc)?);
                }
                let l = e.latent.as_mut().expect("set above");
                l.set_variance_samples(options.bg_check_samples);
                Ok(l.control_size())
            }
            EnsemblePart::Model => {
                let km = options.ensemble_localisation_model();
                let same = |m: &ModelEnsembleB| m.gamma() == gamma && m.localisation().half_width_km() == km;
                if !e.model.as_ref().is_some_and(same) {
                    e.model = None;
                    e.model = Some(ModelEnsembleB::for_layout(&bundle.layout, &e.members, gamma, km)?);
                }
                Ok(e.model.as_ref().expect("set above").control_size())
            }
        }
    }

    /// Control size of the ensemble part of the B of kind `kind` from the shapes alone, without building it: K times
    /// the localisation points (the latent grid's, 1 for a latent without one, or the model grid's); 0 without
    /// members or for the latent B.
    pub fn ensemble_controls(&self, kind: BKind) -> usize {
        let k = self.ensemble_size();
        match self.ensemble_part(kind) {
            None => 0,
            Some(EnsemblePart::Latent) => match self.bundle.latent_shape[..] {
                [_, h, w] => k * h * w,
                _ => k,
            },
            Some(EnsemblePart::Model) => k * self.bundle.layout.grid.npoints(),
        }
    }

    /// Control size of the prepared ensemble part of the B of kind `kind` (0: none, or not prepared).
    pub fn ensemble_control_size(&self, kind: BKind) -> usize {
        let Some(e) = self.ensemble.as_ref() else { return 0 };
        match self.ensemble_part(kind) {
            Some(EnsemblePart::Latent) => e.latent.as_ref().map_or(0, |l| l.control_size()),
            Some(EnsemblePart::Model) => e.model.as_ref().map_or(0, |m| m.control_size()),
            None => 0,
        }
    }

    /// Lends the whole B in force of kind `kind`, prepared by [`Analyser::prepare_b`] and
    /// [`Analyser::prepare_ensemble`]: [`Analyser::with_b`]'s operator, plus (members set, kind hybrid or static) the
    /// ensemble part over the control [w, v, a] (hybrid) or [v, a] (static), with diag B the sum of the parts'.
    pub fn with_b_in_force<R>(
        &mut self,
        kind: BKind,
        f: impl FnOnce(&mut dyn BOperator, &mut Autoencoder) -> Result<R>,
    ) -> Result<R> {
        let n = self.bundle.layout.state_len();
        match self.ensemble_part(kind) {
            None => self.with_b(kind, f),
            Some(EnsemblePart::Latent) => {
                let mut e = self.take_latent_ensemble()?.ok_or_else(|| not_ready("latent"))?;
                let r = self.with_b(kind, |b, ae| f(&mut PlusEnsemble::new(b, &mut e, n), ae));
                self.put_latent_ensemble(e);
                r
            }
            Some(EnsemblePart::Model) => {
                let mut e = self.take_model_ensemble()?.ok_or_else(|| not_ready("model-space"))?;
                let r = self.with_b(kind, |b, ae| f(&mut PlusEnsemble::new(b, &mut e, n), ae));
                self.put_model_ensemble(e);
                r
            }
        }
    }

    /// diag B of the prepared ensemble part of the B of kind `kind` alone (state layout) and how it was obtained;
    /// `None` without an ensemble part. For a background check whose sigma_b of the other parts comes from elsewhere
    /// (e.g. a calibrated latent variance): the variance of the whole B in force is that plus this.
    pub fn ensemble_variance(&mut self, kind: BKind) -> Result<Option<(Vec<f64>, String)>> {
        let Some(part) = self.ensemble_part(kind) else { return Ok(None) };
        let Analyser { ae, ensemble, .. } = self;
        let e = ensemble.as_mut().expect("ensemble_part checked the members");
        Ok(Some(match part {
            EnsemblePart::Latent => {
                let l = e.latent.as_mut().ok_or_else(|| not_ready("latent"))?;
                (l.variance(ae)?.to_vec(), l.variance_method())
            }
            EnsemblePart::Model => {
                let m = e.model.as_mut().ok_or_else(|| not_ready("model-space"))?;
                (m.variance(ae)?.to_vec(), m.variance_method())
            }
        }))
    }

    /// Moves the prepared latent ensemble part out (to be borrowed beside the other parts); `None` without members.
    pub(crate) fn take_latent_ensemble(&mut self) -> Result<Option<LatentEnsembleB>> {
        match self.ensemble.as_mut() {
            None => Ok(None),
            Some(e) => e.latent.take().map(Some).ok_or_else(|| not_ready("latent")),
        }
    }

    /// Puts back what [`Analyser::take_latent_ensemble`] took.
    pub(crate) fn put_latent_ensemble(&mut self, l: LatentEnsembleB) {
        if let Some(e) = self.ensemble.as_mut() {
            e.latent = Some(l);
        }
    }

    /// Moves the prepared model-space ensemble part out; `None` without members.
    pub(crate) fn take_model_ensemble(&mut self) -> Result<Option<ModelEnsembleB>> {
        match self.ensemble.as_mut() {
            None => Ok(None),
            Some(e) => e.model.take().map(Some).ok_or_else(|| not_ready("model-space")),
        }
    }

    /// Puts back what [`Analyser::take_model_ensemble`] took.
    pub(crate) fn put_model_ensemble(&mut self, m: ModelEnsembleB) {
        if let Some(e) = self.ensemble.as_mut() {
            e.model = Some(m);
        }
    }

    /// The report's ensemble section for the B of kind `kind` (prepared), less the per-variable statistics, and the
    /// ensemble's own spread at every row of `h` (the sample sd of H x_k over the members); `None` without an ensemble
    /// part.
    pub(crate) fn ensemble_rows(&self, kind: BKind, h: &ObsOperator) -> Option<EnsembleRows> {
        let part = self.ensemble_part(kind)?;
        let e = self.ensemble.as_ref()?;
        let (localisation, control_size) = match part {
            EnsemblePart::Latent => {
                let l = e.latent.as_ref()?;
                (describe_latent_loc(&self.bundle, l.localisation()), l.control_size())
            }
            EnsemblePart::Model => {
                let m = e.model.as_ref()?;
                (format!("on the model grid: {}", m.localisation().describe()), m.control_size())
            }
        };
        let (k, m) = (e.members.len(), h.nrows());
        let mut hx = vec![vec![0.0; m]; k];
        for (y, x) in hx.iter_mut().zip(&e.members) {
            h.apply(x, y);
        }
        let spread = (0..m)
            .map(|r| {
                let mean = hx.iter().map(|y| y[r]).sum::<f64>() / k as f64;
                (hx.iter().map(|y| (y[r] - mean).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt()
            })
            .collect();
        let info = EnsembleInfo {
            members: k,
            gamma: self.ensemble_gamma(),
            part: part.name().into(),
            localisation,
            control_size,
            spread_skill: Vec::new(),
        };
        Some(EnsembleRows { info, spread })
    }
}

/// The ensemble section of a report waiting for the per-variable spread/skill (made when the rows are known).
#[derive(Debug, Clone)]
pub struct EnsembleRows {
    info: EnsembleInfo,
    spread: Vec<f64>,
}

impl EnsembleRows {
    /// Fills the per-variable spread against the innovations over the used rows and sets the report's section.
    pub(crate) fn finish(mut self, report: &mut Report, rows: &Rows) {
        let nv = report.variables.len();
        // n, sum s^2, sum d^2, sum sigma^2 per variable
        let mut acc = vec![[0.0f64; 4]; nv];
        if self.spread.len() == rows.rows.len() {
            for (r, &i) in rows.rows.iter().enumerate() {
                let o = &rows.obs[i];
                let Some(v) = o.var.filter(|v| *v < nv) else { continue };
                let d = o.value - rows.hxb[r];
                let a = &mut acc[v];
                a[0] += 1.0;
                a[1] += self.spread[r] * self.spread[r];
                a[2] += d * d;
                a[3] += rows.sigma[r] * rows.sigma[r];
            }
        }
        self.info.spread_skill = report
            .variables
            .iter()
            .zip(&acc)
            .map(|(v, a)| {
                let n = a[0];
                let (spread, skill) =
                    if n > 0.0 { ((a[1] / n).sqrt(), ((a[2] - a[3]) / n).max(0.0).sqrt()) } else { (0.0, 0.0) };
                EnsembleSpreadSkill {
                    name: v.name.clone(),
                    units: v.units.clone(),
                    n_used: n as usize,
                    spread,
                    innovation_skill: skill,
                    ratio: (skill > 0.0).then(|| spread / skill),
                }
            })
            .collect();
        report.ensemble = Some(self.info);
    }
}

/// A B operator plus an ensemble part over the concatenated control [c, a] with weight 1 (the ensemble part carries
/// sqrt(gamma) itself): U [c, a] = U_b c + U_e a, diag B = diag B_b + diag B_e.
pub struct PlusEnsemble<A, E> {
    inner: Hybrid<A, E>,
}

impl<A, E> PlusEnsemble<A, E> {
    /// `b` then the ensemble part `e`, over states of length `state_len`.
    pub fn new(b: A, e: E, state_len: usize) -> Self {
        PlusEnsemble { inner: Hybrid::new(b, e, 1.0, 1.0, state_len) }
    }
}

impl<A: BOperator, E: BOperator> BOperator for PlusEnsemble<A, E> {
    fn control_size(&self) -> usize {
        self.inner.control_size()
    }
    fn state_len(&self) -> usize {
        self.inner.state_len()
    }
    fn sqrt(&mut self, ae: &mut Autoencoder, v: &[f64], x: &mut [f64]) -> Result<()> {
        self.inner.sqrt(ae, v, x)
    }
    fn sqrt_ad(&mut self, ae: &mut Autoencoder, x: &[f64], v: &mut [f64]) -> Result<()> {
        self.inner.sqrt_ad(ae, x, v)
    }
    fn variance(&mut self, ae: &mut Autoencoder) -> Result<&[f64]> {
        self.inner.variance(ae)
    }
    fn variance_method(&self) -> String {
        format!("{} + {}", self.inner.a.variance_method(), self.inner.b.variance_method())
    }
}

/// The model-space ensemble B as a (linear) control transform: dx = U_e a.
impl ControlSpace for ModelEnsembleB {
    fn size(&self) -> usize {
        BOperator::control_size(self)
    }
    fn increment(&mut self, w: &[f64], dx: &mut [f64]) -> Result<()> {
        self.apply_sqrt(w, dx)
    }
    fn linearize(&mut self, _w: &[f64]) -> Result<()> {
        Ok(())
    }
    fn tl(&mut self, dw: &[f64], dx: &mut [f64]) -> Result<()> {
        self.apply_sqrt(dw, dx)
    }
    fn ad(&mut self, dx: &[f64], dw: &mut [f64]) -> Result<()> {
        self.apply_sqrt_ad(dx, dw)
    }
    fn is_linear(&self) -> bool {
        true
    }
}

/// The hybrid's control transform (latent and static parts) plus the latent ensemble part, which runs the decoder's
/// TL and AD through the latent part's ONNX sessions: control [w, v, a], dx = hybrid(w, v) + U_e a.
///
/// Fused form (linear latent increment, scalar latent weight 1, the same linearisation point): both latent
/// increments go through one decoder TL (and one AD) per application, as docs/ensemble-b.md describes:
/// dx = sd D'(z_b)(s w + dz_e(a)) + wb U_s v, [w, a] = [s g, dz_e^T(g)] with g = D'(z_b)^T (sd x). Otherwise (band
/// weights, nonlinear latent form) the parts are applied one after the other.
pub(crate) struct LatentEnvar<'a, 's, 'e> {
    base: Hybrid<LatentControl<'a>, &'s mut StaticB>,
    ens: &'e mut LatentEnsembleB,
    buf: Vec<f64>,
    fused: Option<Fused>,
}

/// Scratch of the fused form: latent increment (float64, float32) and decoded increment (float32).
struct Fused {
    dz: Vec<f64>,
    bz: Vec<f32>,
    bx: Vec<f32>,
}

impl<'a, 's, 'e> LatentEnvar<'a, 's, 'e> {
    /// The hybrid transform `base` and the ensemble part `ens` over states of length `state_len`.
    pub(crate) fn new(
        mut base: Hybrid<LatentControl<'a>, &'s mut StaticB>,
        ens: &'e mut LatentEnsembleB,
        state_len: usize,
    ) -> Self {
        let fusable = base.fields.is_none() && base.wa == 1.0 && base.a.is_linear() && {
            let (_, lb) = base.a.ae_and_latent_b();
            let same =
                |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            same(lb.point(), ens.point()) && lb.chan_sd() == ens.chan_sd()
        };
        let nz = ens.point().len();
        let fused = fusable.then(|| Fused { dz: vec![0.0; nz], bz: vec![0f32; nz], bx: vec![0f32; state_len] });
        LatentEnvar { base, ens, buf: vec![0.0; state_len], fused }
    }

    /// Fused forward: dx = sd D'(z_b)(s w + dz_e(a)) + wb U_s v.
    fn fused_forward(&mut self, c: &[f64], dx: &mut [f64]) -> Result<()> {
        let f = self.fused.as_mut().expect("called when fused");
        let (nw, nv) = (self.base.a.size(), self.base.b.size());
        let (w, rest) = c.split_at(nw);
        let (v, a) = rest.split_at(nv);
        self.ens.latent_increment(a, &mut f.dz)?;
        let (ae, lb) = self.base.a.ae_and_latent_b();
        for (((b, s), w), d) in f.bz.iter_mut().zip(lb.s()).zip(w).zip(&f.dz) {
            *b = (s * w + d) as f32;
        }
        ae.tl(lb.point(), &f.bz, &mut f.bx)?;
        let np = dx.len() / lb.chan_sd().len();
        for ((xc, bc), sd) in dx.chunks_exact_mut(np).zip(f.bx.chunks_exact(np)).zip(lb.chan_sd()) {
            xc.iter_mut().zip(bc).for_each(|(x, b)| *x = sd * *b as f64);
        }
        self.base.b.tl(v, &mut self.buf)?;
        let wb = self.base.wb;
        dx.iter_mut().zip(&self.buf).for_each(|(x, b)| *x += wb * b);
        Ok(())
    }

    /// Fused adjoint: g = D'(z_b)^T (sd x), [w, v, a] = [s g, wb U_s^T x, dz_e^T(g)].
    fn fused_backward(&mut self, dx: &[f64], c: &mut [f64]) -> Result<()> {
        let f = self.fused.as_mut().expect("called when fused");
        let (nw, nv) = (self.base.a.size(), self.base.b.size());
        let (w, rest) = c.split_at_mut(nw);
        let (v, a) = rest.split_at_mut(nv);
        let (ae, lb) = self.base.a.ae_and_latent_b();
        let np = dx.len() / lb.chan_sd().len();
        for ((bc, xc), sd) in f.bx.chunks_exact_mut(np).zip(dx.chunks_exact(np)).zip(lb.chan_sd()) {
            bc.iter_mut().zip(xc).for_each(|(b, x)| *b = (sd * x) as f32);
        }
        ae.ad(lb.point(), &f.bx, &mut f.bz)?;
        for (((w, g), s), d) in w.iter_mut().zip(&f.bz).zip(lb.s()).zip(f.dz.iter_mut()) {
            *d = *g as f64;
            *w = s * *d;
        }
        self.ens.latent_increment_ad(&f.dz, a)?;
        self.base.b.ad(dx, v)?;
        let wb = self.base.wb;
        v.iter_mut().for_each(|x| *x *= wb);
        Ok(())
    }

    fn add_ensemble(&mut self, a: &[f64], dx: &mut [f64]) -> Result<()> {
        self.ens.sqrt(self.base.a.ae(), a, &mut self.buf)?;
        dx.iter_mut().zip(&self.buf).for_each(|(d, e)| *d += e);
        Ok(())
    }
}

impl ControlSpace for LatentEnvar<'_, '_, '_> {
    fn size(&self) -> usize {
        self.base.size() + self.ens.control_size()
    }
    fn increment(&mut self, c: &[f64], dx: &mut [f64]) -> Result<()> {
        if self.fused.is_some() {
            return self.fused_forward(c, dx);
        }
        let n = self.base.size();
        self.base.increment(&c[..n], dx)?;
        self.add_ensemble(&c[n..], dx)
    }
    fn linearize(&mut self, c: &[f64]) -> Result<()> {
        let n = self.base.size();
        self.base.linearize(&c[..n])
    }
    fn tl(&mut self, dc: &[f64], dx: &mut [f64]) -> Result<()> {
        if self.fused.is_some() {
            return self.fused_forward(dc, dx);
        }
        let n = self.base.size();
        self.base.tl(&dc[..n], dx)?;
        self.add_ensemble(&dc[n..], dx)
    }
    fn ad(&mut self, dx: &[f64], dc: &mut [f64]) -> Result<()> {
        if self.fused.is_some() {
            return self.fused_backward(dx, dc);
        }
        let n = self.base.size();
        let (c, a) = dc.split_at_mut(n);
        self.base.ad(dx, c)?;
        self.ens.sqrt_ad(self.base.a.ae(), dx, a)
    }
    fn is_linear(&self) -> bool {
        self.base.is_linear()
    }
}
