//! The one analysis pipeline, over a window of slots ([`crate::var::formulation`]): QC and H on the background
//! trajectory, the background check with the B in force, minimisation, the divergence guards, and the report with
//! its observation-space and Desroziers diagnostics. 3D methods are the one-slot window
//! ([`crate::var::threed::ThreeD`]), latent 4D-Var the many-slot one ([`crate::var::fourd::FourDFormulation`]).

use std::time::Instant;

use crate::error::Result;
use crate::obs::operator::ObsOperator;
use crate::obs::{qc, Observation, QcFlag};
use crate::var::analysis::{Analyser, Analysis};
use crate::var::desroziers::{cells, innovations, BInForce, Desroziers, HbhParts};
use crate::var::formulation::{Formulation, Rows, VarianceFor};
use crate::var::fourd::{FourD, FourDFormulation};
use crate::var::guards;
use crate::var::options::{BKind, Method, OutputMode};
use crate::var::report::BackgroundCheckInfo;
use crate::var::solver::Problem;
use crate::var::threed::ThreeD;
use crate::var::withheld::Withheld;

impl Analyser {
    /// Runs one analysis with the options' output mode.
    pub fn analyse(&mut self, x_b: &[f64], obs: &[Observation], method: Method) -> Result<Analysis> {
        let mode = self.options.output;
        self.analyse_with(x_b, obs, method, mode)
    }

    /// Compares withheld observations with the background `x_b` and an analysis `x_a` of it
    /// ([`Withheld::evaluate`], with the bundle's error-sd floors, as the analysis applies them): the report
    /// section `withheld` of the CLI's `--withheld` and the C ABI's `lda_set_withheld`.
    pub fn verify_withheld(&self, obs: &[Observation], x_b: &[f64], x_a: &[f64]) -> Result<Withheld> {
        let lay = &self.bundle.layout;
        Withheld::evaluate(lay, obs, x_b, x_a, &crate::obs::sigma_floors(lay, &self.bundle.std))
    }

    /// Runs one analysis with an explicit output mode.
    pub fn analyse_with(
        &mut self,
        x_b: &[f64],
        obs: &[Observation],
        method: Method,
        mode: OutputMode,
    ) -> Result<Analysis> {
        if method == Method::L4dvar {
            return self.analyse_4d(x_b, obs, mode, FourD::default());
        }
        self.run(x_b, obs, mode, &mut ThreeD::new(method, mode)?, None)
    }

    /// [`Analyser::analyse`] for a host that cycles with its own forecast model: `model` is what option
    /// `mix_score = "model"` forecasts the online mix's candidates with ([`crate::var::mix`]), and method l4dvar's
    /// step model (as `FourD::model`); a 3D method without `mix_candidates` does not use it.
    pub fn analyse_cycling(
        &mut self,
        x_b: &[f64],
        obs: &[Observation],
        method: Method,
        model: Option<&mut dyn crate::model::forecast::StepModel>,
    ) -> Result<Analysis> {
        let mode = self.options.output;
        if method == Method::L4dvar {
            return self.analyse_4d(x_b, obs, mode, FourD { backgrounds: Vec::new(), model });
        }
        self.run(x_b, obs, mode, &mut ThreeD::new(method, mode)?, model)
    }

    /// Latent 4D-Var (method `l4dvar`): observations at their own times (`Observation::time`, hours from the
    /// analysis time `x_b` is valid at) through the bundle's step model or a host's (`fourd.model`). See
    /// [`crate::var::fourd`]. Output modes `analysis` and `increment` (at the analysis time).
    pub fn analyse_4d(&mut self, x_b: &[f64], obs: &[Observation], mode: OutputMode, fourd: FourD) -> Result<Analysis> {
        self.run(x_b, obs, mode, &mut FourDFormulation::new(mode, fourd)?, None)
    }

    /// The pipeline with the B sized by option `adaptive_state` when it is set ([`crate::var::adaptive`]).
    /// and with the hybrid's mix chosen online when `mix_candidates` is set ([`crate::var::mix`]); the mix state is
    /// written after the adaptive one (or with it, when deferred).
    fn run(
        &mut self,
        x_b: &[f64],
        obs: &[Observation],
        mode: OutputMode,
        f: &mut dyn Formulation,
        model: Option<&mut dyn crate::model::forecast::StepModel>,
    ) -> Result<Analysis> {
        let method = f.method();
        // with the mix, the adaptive state waits for it: both are written together once both are ready
        let caller_defers = self.adaptive_deferred;
        let mix = self.options.mix_candidates.is_some();
        self.adaptive_deferred = caller_defers || mix;
        let res = self.with_adaptive_b(method, |a| a.with_mix(x_b, obs, mode, f, model));
        self.adaptive_deferred = caller_defers;
        match res {
            Err(e) => {
                self.mix_write = None;
                if mix && !caller_defers {
                    self.adaptive_pending = None;
                }
                Err(e)
            }
            Ok(an) => {
                if mix && !caller_defers {
                    self.commit_adaptive_state()?;
                }
                Ok(an)
            }
        }
    }

    /// The pipeline (module documentation). Nothing is returned, and no input is changed, unless every step and
    /// every guard passed.
    pub(crate) fn run_once(
        &mut self,
        x_b: &[f64],
        obs: &[Observation],
        mode: OutputMode,
        f: &mut dyn Formulation,
    ) -> Result<Analysis> {
        let t_start = Instant::now();
        self.check_state(x_b, "background")?;
        self.ae.timings = Default::default();
        let method = f.method();
        let lay = self.bundle.layout.clone();
        let nx = lay.state_len();
        let x_bg = f.background(self, x_b)?;
        // Observations: slot, geometric QC, H on the background trajectory.
        let mut qc = vec![QcFlag::Used; obs.len()];
        let (slots, nslots) = f.slots(obs);
        let t_h = Instant::now();
        let floors = crate::obs::sigma_floors(&lay, &self.bundle.std);
        let mut h = ObsOperator::try_build_in_window(&lay, obs, &slots, nslots, &mut qc, &floors)?;
        let mut hxb = vec![0.0; h.nrows()];
        h.apply(&x_bg, &mut hxb);
        let mut h_s = t_h.elapsed().as_secs_f64();
        // Background check with sigma_b of the B in force at every slot.
        let k = self.options.bg_check;
        let mut bg_info = BackgroundCheckInfo { k, ..Default::default() };
        let mut sd_b = None;
        let variance =
            f.variance(self, x_b, if k > 0.0 { VarianceFor::BackgroundCheck } else { VarianceFor::Guards })?;
        let (variance_s, n_variance) = (variance.seconds, variance.n_tl);
        if k > 0.0 {
            let sd: Vec<f64> = variance.var.iter().map(|v| v.max(0.0).sqrt()).collect();
            let t_q = Instant::now();
            bg_info.rejected = qc::background_check(&mut h, &mut hxb, obs, &sd, k, &mut qc);
            h_s += t_q.elapsed().as_secs_f64();
            bg_info.sigma_b = variance.how;
            sd_b = Some(sd); // for the Desroziers diagnostics
        }
        let slot = |i: usize| if slots.is_empty() { 0 } else { slots[i].expect("a row of H has a slot") };
        let y: Vec<f64> = h.rows.iter().map(|&i| obs[i].value).collect();
        let sigma: Vec<f64> = h.rows.iter().map(|&i| f.sigma(&obs[i], slot(i))).collect();
        let problem = Problem { h: &h, y: &y, sigma: &sigma, hxb: &hxb };
        let params = self.options.solver();
        let m = f.minimise(self, x_b, &problem, &params)?;
        let analysis: Vec<f64> = x_b.iter().zip(&m.dx).map(|(b, d)| b + d).collect();
        // Divergence guards, before anything is returned. Full-state output: the solver's part of the increment.
        let solver_dx: Option<Vec<f64>> =
            m.reconstruction.as_ref().map(|d0| m.dx.iter().zip(d0).map(|(d, d0)| d - d0).collect());
        guards::check(
            &lay,
            &guards::Guarded {
                info: &m.info,
                x_b,
                analysis: &analysis,
                increment: solver_dx.as_deref().unwrap_or(&m.dx),
                b_variance: &variance.var,
                bounds: &self.bundle.bounds,
                slot_hours: f.slot_hours(),
            },
        )?;
        // Observation-space diagnostics (H x_a for used rows; O-B for all located observations).
        let t_h2 = Instant::now();
        let x_an: Vec<f64> = x_bg.iter().zip(&m.dx).map(|(b, d)| b + d).collect();
        let mut hxa = vec![0.0; h.nrows()];
        h.apply(&x_an, &mut hxa);
        h_s += t_h2.elapsed().as_secs_f64();
        let mut report = self.report_base(method, mode, m.w.len(), obs, &qc, h.nrows())?;
        report.jb_parts = f.jb_parts(self, &m.w);
        report.background_check = bg_info;
        report.variables = self.variable_stats(obs, &qc, &h, &hxb, &hxa, &m.dx[..nx]);
        report.desroziers = Some(self.desroziers(method, obs, &h, &hxb, &hxa, &sigma, sd_b.as_deref()));
        report.balance = crate::diag::balance::diagnose(&lay, x_b, &analysis);
        f.finish(&mut report, &Rows { obs, rows: &h.rows, slots: &slots, hxb: &hxb, hxa: &hxa, sigma: &sigma });
        let output = match mode {
            OutputMode::Increment => m.dx[..nx].to_vec(),
            OutputMode::Analysis | OutputMode::FullState => analysis.clone(),
        };
        report.timings = self.timings(t_start, h_s, variance_s, n_variance, f.step_clock().as_ref());
        report.solver = Some(m.info);
        Ok(Analysis { output, analysis, qc, report })
    }
}

impl Analyser {
    /// The report's `desroziers` section of an analysis by `method`: see the module documentation. `sd` is the
    /// background check's background-error sd (state or trajectory layout, as `h`), `None` when it did not run.
    /// For the hybrid it also splits sigma_b^2 into its latent and static parts, from the variances of the two
    /// cached B operators (the background check computed both: no model run here).
    #[allow(clippy::too_many_arguments)]
    pub fn desroziers(
        &mut self,
        method: Method,
        obs: &[Observation],
        h: &ObsOperator,
        hxb: &[f64],
        hxa: &[f64],
        sigma: &[f64],
        sd: Option<&[f64]>,
    ) -> Desroziers {
        let lay = &self.bundle.layout;
        let vars: Vec<(String, String)> = lay
            .variables
            .iter()
            .enumerate()
            .map(|(v, var)| (var.name.clone(), self.bundle.units(v).to_string()))
            .collect();
        let o = &self.options;
        let lvf = o.latent_variance_factor.unwrap_or(1.0);
        let bvf = o.baseline_variance_factor.unwrap_or(self.bundle.baseline_variance_factor);
        let mut b_in_force = match method {
            Method::L3dvar | Method::L4dvar => BInForce { latent_variance_factor: Some(lvf), ..Default::default() },
            Method::Var3d => BInForce { baseline_variance_factor: Some(bvf), ..Default::default() },
            Method::Hybrid => {
                let hs = self.hybrid_settings().ok();
                BInForce {
                    latent_variance_factor: Some(lvf),
                    baseline_variance_factor: Some(bvf),
                    hybrid_alpha: hs.as_ref().map(|h| h.alpha),
                    hybrid_beta: hs.as_ref().map(|h| h.beta),
                    ensemble_gamma: None,
                    hybrid_weights: hs.as_ref().filter(|h| h.banded()).map(|h| {
                        lay.variables.iter().zip(&h.per_variable).map(|(v, w)| (v.name.clone(), w.to_vec())).collect()
                    }),
                }
            }
        };
        let sigma_b = if sd.is_some() {
            "H sqrt(diag B) of the B in force, as in the background check (sigma_b^2 approximates diag(H B H^T))"
                .to_string()
        } else {
            "null: no background check ran (bg_check = 0), so diag B was not computed".to_string()
        };
        let mut rows = innovations(obs, h, hxb, hxa, sigma, sd);
        let kind = match method {
            Method::Hybrid => Some(BKind::Hybrid),
            Method::Var3d => Some(BKind::Static),
            _ => None,
        };
        let ensemble = kind.and_then(|k| self.ensemble_part(k)).is_some();
        if ensemble {
            b_in_force.ensemble_gamma = Some(self.ensemble_gamma());
        }
        if let (Some(kind), Some(_)) = (kind, sd) {
            // The parts' sd as in force (weights and band fields applied), from the cached operators (the
            // background check computed every variance: no model run here). 3dvar has parts only as hybrid 3DEnVar.
            let at = |sd: &[f64]| {
                let mut at = vec![0.0; h.nrows()];
                h.apply(sd, &mut at);
                at.iter().map(|x| x * x).collect::<Vec<f64>>()
            };
            let sqrt = |v: &[f64]| v.iter().map(|v| v.max(0.0).sqrt()).collect::<Vec<f64>>();
            let (latent, statics) = match kind {
                BKind::Hybrid => match self.hybrid_part_sd() {
                    Ok((l, st)) => (Some(at(&l)), Some(at(&st))),
                    Err(_) => (None, None),
                },
                _ if ensemble => (None, self.static_b().ok().map(|b| at(&sqrt(b.variance())))),
                _ => (None, None),
            };
            let ens =
                if ensemble { self.ensemble_variance(kind).ok().flatten().map(|(v, _)| at(&sqrt(&v))) } else { None };
            if latent.is_some() || statics.is_some() {
                rows.iter_mut().enumerate().for_each(|(r, row)| {
                    row.sigma_b_parts = Some(HbhParts {
                        latent: latent.as_ref().map(|v| v[r]),
                        statics: statics.as_ref().map(|v| v[r]),
                        ensemble: ens.as_ref().map(|v| v[r]),
                    })
                });
            }
        }
        Desroziers { method: method.name().into(), b_in_force, sigma_b, cells: cells(&vars, &rows) }
    }
}
