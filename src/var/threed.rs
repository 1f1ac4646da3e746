//! The 3D formulations (methods l3dvar, 3dvar and hybrid): one time slot, the B in force linearised at the
//! background, every observation valid at the analysis time.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::bmat::hybrid::Hybrid;
use crate::error::{Error, Result};
use crate::obs::{Observation, QcFlag};
use crate::var::analysis::Analyser;
use crate::var::control::LatentControl;
use crate::var::ensemble::{EnsemblePart, LatentEnvar};
use crate::var::formulation::{jb, Formulation, Minimised, Rows, Variance, VarianceFor};
use crate::var::guards;
use crate::var::options::{BKind, LatentForm, Method, OutputMode, SigmaB};
use crate::var::report::{Report, StepClock};
use crate::var::solver::{minimise, Problem, SolverParams};

/// A 3D analysis by `method` (not l4dvar).
pub struct ThreeD {
    method: Method,
    full_state: bool,
    z_b: Option<Vec<f32>>,
    /// The report's ensemble section (members set), made in `minimise`, finished with the rows in `finish`.
    ensemble: Option<crate::var::ensemble::EnsembleRows>,
}

impl ThreeD {
    /// The formulation of `method` with output mode `mode` (full-state output exists only for l3dvar).
    pub fn new(method: Method, mode: OutputMode) -> Result<ThreeD> {
        if method == Method::L4dvar {
            return Err(Error::arg("method l4dvar is a 4D formulation"));
        }
        let full_state = mode == OutputMode::FullState;
        if full_state && method != Method::L3dvar {
            return Err(Error::arg(format!(
                "output 'full_state' exists only for method l3dvar, not {}",
                method.name()
            )));
        }
        Ok(ThreeD { method, full_state, z_b: None, ensemble: None })
    }

    fn kind(&self) -> BKind {
        BKind::of_method(self.method)
    }
}

impl Formulation for ThreeD {
    fn method(&self) -> Method {
        self.method
    }

    /// Encodes the background (latent and hybrid B) and linearises the B in force there.
    fn background(&mut self, an: &mut Analyser, x_b: &[f64]) -> Result<Vec<f64>> {
        let kind = self.kind();
        self.z_b = if kind == BKind::Static { None } else { Some(an.encode_background(x_b)?) };
        an.prepare_b(kind, self.z_b.as_deref())?;
        // with ensemble members: the latent (hybrid) or model-space (3dvar) ensemble part (crate::var::ensemble)
        an.prepare_ensemble(kind, self.z_b.as_deref())?;
        Ok(x_b.to_vec())
    }

    fn slots(&self, _obs: &[Observation]) -> (Vec<std::result::Result<usize, QcFlag>>, usize) {
        (Vec::new(), 1)
    }

    fn sigma(&self, obs: &Observation, _slot: usize) -> f64 {
        obs.sigma
    }

    fn variance(&mut self, an: &mut Analyser, _x_b: &[f64], what: VarianceFor) -> Result<Variance> {
        let kind = self.kind();
        let before = an.ae.timings.clone();
        // the calibrated variance (no model run) when it is in force: computed once here
        let calibrated = if what == VarianceFor::BackgroundCheck { an.calibrated_variance(kind)? } else { None };
        let out = match (what, calibrated) {
            (VarianceFor::BackgroundCheck, Some((mut var, mut how))) => {
                // an ensemble part is flow-dependent by nature: its own diagonal (decoder TL runs for a latent one)
                let t_v = Instant::now();
                if let Some((ev, ehow)) = an.ensemble_variance(kind)? {
                    var.iter_mut().zip(&ev).for_each(|(v, e)| *v += e);
                    how = format!("{how} + ({ehow})");
                }
                let n_tl = an.ae.timings.n_tl - before.n_tl;
                Variance { var, how, seconds: if n_tl > 0 { t_v.elapsed().as_secs_f64() } else { 0.0 }, n_tl }
            }
            // The cached variance of the B in force: its TL runs (none when cached) are reported apart from the
            // solver's, as decoder TL time.
            (VarianceFor::BackgroundCheck, None) => {
                let (var, mut how) =
                    an.with_b_in_force(kind, |b, ae| Ok((b.variance(ae)?.to_vec(), b.variance_method())))?;
                if kind == BKind::Hybrid {
                    // the operator's latent weight is 1: alpha_ref is folded into the latent variances
                    let alpha_ref = an.hybrid_settings()?.alpha_ref();
                    how = how.replacen(
                        "hybrid: 1.0000 x",
                        &format!("hybrid: {alpha_ref:.4} (folded into the latent variances) x"),
                        1,
                    );
                }
                if kind != BKind::Static && an.options.bg_check_sigma_b == SigmaB::Calibrated {
                    how.push_str(" [bg_check_sigma_b = calibrated, but the bundle has no latent_b_variance: flow-dependent estimate]");
                }
                Variance { var, how, seconds: an.ae.timings.tl_s - before.tl_s, n_tl: an.ae.timings.n_tl - before.n_tl }
            }
            (VarianceFor::Guards, _) => {
                let t_v = Instant::now();
                let var = an.with_b_in_force(kind, |b, ae| {
                    let (n, m) = (b.control_size(), b.state_len());
                    Ok(crate::bmat::diag_of_sqrt(n, m, guards::VARIANCE_DRAWS, |v, x| b.sqrt(ae, v, x))?.0)
                })?;
                let n_tl = an.ae.timings.n_tl - before.n_tl;
                Variance { var, how: String::new(), seconds: t_v.elapsed().as_secs_f64(), n_tl }
            }
        };
        an.ae.timings = before;
        Ok(out)
    }

    fn minimise(
        &mut self,
        an: &mut Analyser,
        x_b: &[f64],
        problem: &Problem,
        params: &SolverParams,
    ) -> Result<Minimised> {
        let lay = an.bundle.layout.clone();
        let np = lay.grid.npoints();
        let linear = an.options.latent_form() == LatentForm::Linear;
        let mut reconstruction = None;
        self.ensemble = an.ensemble_rows(self.kind(), problem.h);
        let (w, dx, info) = match self.method {
            Method::L3dvar => {
                let z_b = self.z_b.clone().expect("encoded in background()");
                let lv = an.latent_variance(1.0);
                let b = &an.bundle;
                let mut ctrl =
                    LatentControl::new(&mut an.ae, x_b, z_b, &lv, &b.mean, &b.std, np, self.full_state)?.linear(linear);
                if self.full_state {
                    reconstruction = Some(
                        (0..x_b.len())
                            .map(|i| b.mean[i / np] + b.std[i / np] * ctrl.xn_zb[i] as f64 - x_b[i])
                            .collect(),
                    );
                }
                minimise(&mut ctrl, problem, params)?
            }
            Method::Var3d => match an.take_model_ensemble()? {
                None => minimise(an.static_b()?, problem, params)?,
                // hybrid 3DEnVar: control [v, a], dx = U_s v + U_e a (U_e carries sqrt(gamma))
                Some(mut e) => {
                    let n = lay.state_len();
                    let r = an
                        .static_b()
                        .and_then(|st| minimise(&mut Hybrid::new(st, &mut e, 1.0, 1.0, n), problem, params));
                    an.put_model_ensemble(e);
                    r?
                }
            },
            Method::Hybrid => {
                let hs = an.hybrid_settings()?;
                let z_b = self.z_b.clone().expect("encoded in background()");
                // One operator with the background check's and the host's (`Analyser::with_b`, `HybridWeights`):
                // alpha_ref folded into the latent variances (alpha itself without band weights), band weights as
                // sqrt(alpha(phi) / alpha_ref) and sqrt(beta(phi)) on the two increments. In the linear form this is
                // exactly that operator; in the nonlinear form its linearisation at w = 0 is.
                let lv = an.latent_variance(hs.alpha_ref());
                let weights = hs.weights(&lay);
                // with members: latent hybrid EnVar, control [w, v, a] (crate::var::ensemble); with ensemble_space
                // "model", the model-space ensemble part of 3DEnVar instead (dx = hybrid(w, v) + U_e a)
                let part = an.ensemble_part(BKind::Hybrid);
                let mut ens = if part == Some(EnsemblePart::Latent) { an.take_latent_ensemble()? } else { None };
                let mut model_ens = if part == Some(EnsemblePart::Model) { an.take_model_ensemble()? } else { None };
                let r = (|| {
                    let (ae, b, st) = an.parts_for_hybrid()?;
                    let latent = LatentControl::new(ae, x_b, z_b, &lv, &b.mean, &b.std, np, false)?.linear(linear);
                    let mut ctrl = weights.operator(latent, st, lay.state_len());
                    match (ens.as_mut(), model_ens.as_mut()) {
                        (Some(e), _) => minimise(&mut LatentEnvar::new(ctrl, e, lay.state_len()), problem, params),
                        (None, Some(e)) => {
                            minimise(&mut Hybrid::new(&mut ctrl, e, 1.0, 1.0, lay.state_len()), problem, params)
                        }
                        (None, None) => minimise(&mut ctrl, problem, params),
                    }
                })();
                if let Some(e) = ens {
                    an.put_latent_ensemble(e);
                }
                if let Some(e) = model_ens {
                    an.put_model_ensemble(e);
                }
                r?
            }
            Method::L4dvar => unreachable!("ThreeD::new refuses l4dvar"),
        };
        Ok(Minimised { w, dx, info, reconstruction })
    }

    /// `[w]` for l3dvar, `[v]` for 3dvar, `[w, v]` for the hybrid; with ensemble members `[v, a]` and `[w, v, a]`.
    fn jb_parts(&self, an: &Analyser, w: &[f64]) -> BTreeMap<String, f64> {
        let mut parts = BTreeMap::new();
        let ne = an.ensemble_control_size(self.kind()).min(w.len());
        let (w, a) = w.split_at(w.len() - ne);
        if ne > 0 {
            parts.insert("ensemble".to_string(), jb(a));
        }
        match self.method {
            Method::Var3d => {
                parts.insert("static".to_string(), jb(w));
            }
            Method::Hybrid => {
                let nl = an.bundle.latent_size();
                parts.insert("latent".to_string(), jb(&w[..nl]));
                parts.insert("static".to_string(), jb(&w[nl..]));
            }
            _ => {
                parts.insert("latent".to_string(), jb(w));
            }
        }
        parts
    }

    fn slot_hours(&self) -> Option<f64> {
        None
    }

    fn finish(&mut self, report: &mut Report, rows: &Rows) {
        report.formulation = if self.full_state { "full_state".into() } else { "increment".into() };
        if let Some(e) = self.ensemble.take() {
            e.finish(report, rows);
        }
    }

    fn step_clock(&self) -> Option<StepClock> {
        None
    }
}
