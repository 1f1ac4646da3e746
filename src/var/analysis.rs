//! The analysis driver: quality control, minimisation, diagnostics.
//!
//! [`Analyser`] owns an opened bundle and its ONNX sessions; [`Analyser::analyse`] takes a background state (the
//! channel-major layout of [`crate::bundle::grid`]) and observations and returns the analysis, the per-observation QC flags
//! and the report. It never modifies its inputs; callers write results back only on success.
//!
//! The B operators are kept between calls: the latent B at the last background (with its variance, used by the
//! background check and by a host's `lda_bvariance`, so a host pays it once per background), and the static B
//! (built once per variance factor). [`Analyser::with_b`] lends any of the three B operators to a caller.

use std::path::Path;
use std::time::Instant;

use crate::bmat::hybrid::Hybrid;
use crate::bmat::latent::LatentB;
use crate::bmat::static_b::StaticB;
use crate::bmat::BOperator;
use crate::bundle::{BandWeights, Bundle};
use crate::error::{Error, Result, Status};
use crate::model::autoencoder::{encode_state, Autoencoder};
use crate::model::forecast::OnnxStep;
use crate::obs::operator::ObsOperator;
use crate::obs::{Observation, QcFlag};
use crate::var::options::{BKind, Method, Options, OutputMode, SigmaB};
use crate::var::report::{Report, Timings, VarStats};
use crate::var::solver::ControlSpace;

/// An opened bundle with its ONNX sessions and options: the object a host keeps for the life of its run.
///
/// ```
/// use latentda::{Analyser, Method, Options};
///
/// let mut a = Analyser::open("tests/fixtures/tanh", Options::default())?;
/// let layout = a.bundle.layout.clone();
/// let x_b = latentda::bundle::ncio::read_state("tests/fixtures/tanh/sample/background.nc".as_ref(), &layout)?;
/// let (obs, _bad_rows) = latentda::obs::read_csv("tests/fixtures/tanh/sample/obs.csv".as_ref(), &layout)?;
/// let result = a.analyse(&x_b, &obs, Method::L3dvar)?;
/// let solver = result.report.solver.as_ref().unwrap();
/// assert!(solver.j_final < solver.j_initial);
/// assert_eq!(result.qc.len(), obs.len());
/// # Ok::<(), latentda::Error>(())
/// ```
#[derive(Debug)]
pub struct Analyser {
    /// The validated bundle.
    pub bundle: Bundle,
    /// ONNX sessions.
    pub ae: Autoencoder,
    /// Options in force, validated ([`Analyser::options`], [`Analyser::set_options`]).
    pub(crate) options: Options,
    /// The bundle's step model (`[forecast]`), for method l4dvar.
    pub forecast: Option<OnnxStep>,
    /// The known-answer self-test run at open (`crate::model::selftest`; option `self_test`).
    pub self_test: crate::model::selftest::SelfTest,
    cache: BCache,
    /// Ensemble members and the ensemble B parts built from them ([`Analyser::set_ensemble`]).
    pub(crate) ensemble: Option<crate::var::members::Ensemble>,
    /// Online B sizing (option `adaptive_state`): whether the state file's rewrite waits for
    /// [`Analyser::commit_adaptive_state`] ([`Analyser::defer_adaptive_commit`]), and the file and text waiting.
    pub(crate) adaptive_deferred: bool,
    pub(crate) adaptive_pending: Option<(std::path::PathBuf, String)>,
    /// Online mix (option `mix_candidates`): the state file, its text and the pending fields of the last successful
    /// analysis, written with the adaptive state ([`Analyser::commit_adaptive_state`] when deferred).
    pub(crate) mix_write: Option<(std::path::PathBuf, String, Option<Vec<u8>>)>,
    /// The host's analysis time in hours from an epoch of its choosing ([`Analyser::set_analysis_time`]), so that
    /// the online mix scores the last cycle's candidate forecasts only at the time they are valid.
    pub(crate) analysis_time: Option<f64>,
}

/// B operators kept between calls (see the module documentation).
#[derive(Default)]
struct BCache {
    /// Latent B operators at the last background, each with the multiplier of the bundle's latent variances it
    /// was built with (`latent_variance_factor`, times alpha_ref for the hybrid's latent part): at most one per
    /// multiplier, all at the same linearisation point.
    latent: Vec<(f64, LatentB)>,
    statics: Option<((f64, f64), StaticB)>,
}

impl std::fmt::Debug for BCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BCache")
            .field("latent_variance_multipliers", &self.latent.iter().map(|l| l.0).collect::<Vec<_>>())
            .field("static_factors", &self.statics.as_ref().map(|s| s.0))
            .finish()
    }
}

/// The hybrid B's weights and the variables of its static part, resolved from the options and the bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct HybridSettings {
    /// Weight of the latent B (the extratropics; the northern ones when `alpha_sh` differs).
    pub alpha: f64,
    /// Weight of the static B.
    pub beta: f64,
    /// Per bundle variable: whether the static part acts on it (P).
    pub keep: Vec<bool>,
    /// Weight of the latent B in the tropics (|lat| <= `band_lat[0]`); `alpha` is the extratropical value.
    pub alpha_tropics: f64,
    /// Weight of the static B in the tropics; `beta` is the extratropical value.
    pub beta_tropics: f64,
    /// Weight of the latent B in the southern extratropics (lat <= -`band_lat[1]`).
    pub alpha_sh: f64,
    /// Weight of the static B in the southern extratropics.
    pub beta_sh: f64,
    /// Latitudes (degrees) where the cosine ramp from the tropical to the extratropical weights starts and ends.
    pub band_lat: [f64; 2],
    /// Per bundle variable: its weights [alpha, beta, alpha_tropics, beta_tropics, alpha_sh, beta_sh] (the global
    /// ones unless `hybrid_variable_weights` or the bundle's `[hybrid.variable_weights]` name the variable or its
    /// group).
    pub per_variable: Vec<BandWeights>,
}

impl HybridSettings {
    /// The global weights ([`BandWeights`] order).
    pub fn global(&self) -> BandWeights {
        [self.alpha, self.beta, self.alpha_tropics, self.beta_tropics, self.alpha_sh, self.beta_sh]
    }

    /// Whether the weights vary over the state (with latitude, or from one variable to another). When they do
    /// not, the hybrid is the scalar-weight operator, bit for bit.
    pub fn banded(&self) -> bool {
        let scalar = [self.alpha, self.beta, self.alpha, self.beta, self.alpha, self.beta];
        self.per_variable.iter().any(|w| *w != scalar)
    }

    /// Whether some variable's weights differ from the global ones.
    pub fn per_variable_weights(&self) -> bool {
        let g = self.global();
        self.per_variable.iter().any(|w| *w != g)
    }

    /// The grid-point weight fields sqrt(alpha(v, phi)), sqrt(beta(v, phi)) over the state of `lay`
    /// ([`crate::bmat::hybrid::variable_band_weight_fields`]); `None` when the weights do not vary.
    pub fn weight_fields(&self, lay: &crate::bundle::grid::Layout) -> Option<(Vec<f64>, Vec<f64>)> {
        if !self.banded() {
            return None;
        }
        let per_channel: Vec<BandWeights> = (0..lay.nchan).map(|c| self.per_variable[lay.channel_owner(c).0]).collect();
        Some(crate::bmat::hybrid::variable_band_weight_fields(
            &lay.grid.lat,
            lay.grid.nlon(),
            &per_channel,
            self.band_lat,
        ))
    }

    /// The latent weight folded into the latent variances for the minimisation: alpha without varying weights
    /// (today's scalar hybrid), else the largest alpha of any variable and band, the rest applied as the grid-point
    /// factor sqrt(alpha(v, phi) / alpha_ref) on the decoded increment.
    pub fn alpha_ref(&self) -> f64 {
        if self.banded() {
            self.per_variable.iter().map(|w| w[0].max(w[2]).max(w[4])).fold(0.0, f64::max)
        } else {
            self.alpha
        }
    }
}

/// How the hybrid B = alpha(phi) B_l + beta(phi) P B_s P^T is applied, in the analysis' minimisation, its
/// background check and the host's B operator alike: alpha_ref ([`HybridSettings::alpha_ref`]) folded into the
/// latent variances, then scalar weights (1, sqrt(beta)), or the band-weight fields sqrt(alpha(phi) / alpha_ref),
/// sqrt(beta(phi)) on the two increments.
#[derive(Debug, Clone, PartialEq)]
pub struct HybridWeights {
    /// Weight of the static increment without band weights, sqrt(beta).
    pub static_weight: f64,
    /// Band-weight fields (latent, static) over the state, when the weights vary with latitude.
    pub fields: Option<(Vec<f64>, Vec<f64>)>,
}

impl HybridWeights {
    /// The hybrid operator over the latent part `a` (built with the variances times alpha_ref) and the static part
    /// `b`.
    pub fn operator<A, B>(self, a: A, b: B, state_len: usize) -> Hybrid<A, B> {
        match self.fields {
            None => Hybrid::new(a, b, 1.0, self.static_weight, state_len),
            Some((fa, fb)) => Hybrid::new(a, b, 1.0, 1.0, state_len).with_fields(fa, fb),
        }
    }
}

impl HybridSettings {
    /// The weights as applied (see [`HybridWeights`]).
    pub fn weights(&self, lay: &crate::bundle::grid::Layout) -> HybridWeights {
        let alpha_ref = self.alpha_ref();
        let fields = self.weight_fields(lay).map(|(fa, fb)| {
            let r = if alpha_ref > 0.0 { 1.0 / alpha_ref.sqrt() } else { 1.0 };
            (fa.iter().map(|a| a * r).collect(), fb)
        });
        HybridWeights { static_weight: self.beta.sqrt(), fields }
    }
}

/// The result of one analysis.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The field selected by the output mode (analysis, increment or full decoded state), state layout.
    pub output: Vec<f64>,
    /// The analysis state x_a.
    pub analysis: Vec<f64>,
    /// QC flag of every observation, input order.
    pub qc: Vec<QcFlag>,
    /// Report.
    pub report: Report,
}

impl Analyser {
    /// Opens and validates the bundle, initialises the backend and loads the four ONNX graphs (and the three
    /// step-model graphs of a `[forecast]` table), then runs each graph once on the bundle's probe and compares the
    /// output with the recorded one (the known-answer self-test; option `self_test = false` skips it).
    pub fn open(bundle_dir: impl AsRef<Path>, options: Options) -> Result<Analyser> {
        options.validate()?;
        let bundle = Bundle::open(bundle_dir)?;
        let exec = options.exec()?;
        let mut ae = Autoencoder::load(&bundle, &exec)?;
        let mut forecast = OnnxStep::load(&bundle, &exec)?;
        let self_test =
            crate::model::selftest::self_test(&bundle, &mut ae, forecast.as_mut(), options.self_test, &exec)?;
        ae.timings = Default::default();
        Ok(Analyser {
            bundle,
            ae,
            options,
            forecast,
            self_test,
            cache: BCache::default(),
            ensemble: None,
            adaptive_deferred: false,
            adaptive_pending: None,
            mix_write: None,
            analysis_time: None,
        })
    }

    /// Sets the time of the next analyses, in hours from any fixed epoch the host chooses (kept until set again).
    /// The online mix (option `mix_candidates`) records when its candidate forecasts are valid (this time plus
    /// `mix_lead_hours`) and scores them at a later analysis only if its time is that one: after a skipped cycle
    /// (no observations, a failed analysis) or a restart at another time the stale forecasts are noted and left
    /// unscored instead of being compared with observations of another time. Without a time the mix cannot check
    /// and scores whatever the state holds. A non-finite time is an error naming it.
    pub fn set_analysis_time(&mut self, hours: f64) -> Result<()> {
        if !hours.is_finite() {
            return Err(Error::arg(format!("analysis time: {hours} hours is not finite")));
        }
        self.analysis_time = Some(hours);
        Ok(())
    }

    /// The analysis time set by [`Analyser::set_analysis_time`], if any.
    pub fn analysis_time(&self) -> Option<f64> {
        self.analysis_time
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Replaces the options in force after validating them (an invalid set leaves the old one in force). The
    /// backend and its sessions stay those of `open`: changing `backend`, `device`, `threads` or `ort_library` needs
    /// a new [`Analyser::open`]. Cached B operators are rebuilt when their factors or weights change.
    pub fn set_options(&mut self, options: Options) -> Result<()> {
        options.validate()?;
        let o = &self.options;
        if (&options.backend, &options.device, options.threads, &options.ort_library)
            != (&o.backend, &o.device, o.threads, &o.ort_library)
        {
            return Err(Error::arg(
                "backend, device, threads and ort_library are fixed at open: open a new Analyser to change them",
            ));
        }
        self.options = options;
        Ok(())
    }

    /// Checks a background state: length and finiteness (the error names variable and index).
    pub fn check_state(&self, x: &[f64], what: &str) -> Result<()> {
        let lay = &self.bundle.layout;
        if x.len() != lay.state_len() {
            return Err(Error::arg(format!("{what} has {} values, the bundle state has {}", x.len(), lay.state_len())));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::data(format!("{what}: non-finite value {} in {}", x[i], lay.describe_index(i))));
        }
        Ok(())
    }

    /// The latent B operator U at z_b = E(N(x_b)) with the latent variances in force (the bundle's times
    /// `latent_variance_factor`), for hosts with their own minimiser (a new, uncached operator): the same operator as
    /// [`Analyser::with_b`]'s latent B.
    pub fn latent_b(&mut self, x_b: &[f64]) -> Result<LatentB> {
        let z = self.encode_background(x_b)?;
        let b = &self.bundle;
        Ok(LatentB::new(z, &self.latent_variance(1.0), &b.std, b.layout.grid.npoints()))
    }

    /// z_b = E(N(x_b)) (one encoder run).
    pub fn encode_background(&mut self, x_b: &[f64]) -> Result<Vec<f32>> {
        self.check_state(x_b, "background")?;
        let b = &self.bundle;
        encode_state(&mut self.ae, x_b, &b.mean, &b.std, b.layout.grid.npoints())
    }

    /// The hybrid weights and variables in force (options over the bundle's `[hybrid]` table).
    pub fn hybrid_settings(&self) -> Result<HybridSettings> {
        let (o, h) = (&self.options, &self.bundle.hybrid);
        let (alpha, beta) = (o.hybrid_alpha.unwrap_or(h.alpha), o.hybrid_beta.unwrap_or(h.beta));
        // alpha = beta = 0 leaves the ensemble part alone (latent EnVar): allowed with members only
        let ensemble = self.ensemble_size() > 0;
        if alpha == 0.0 && beta == 0.0 && !ensemble {
            return Err(Error::arg(
                "hybrid_alpha and hybrid_beta are both 0 and no ensemble members are set: the hybrid B would be zero",
            ));
        }
        // Tropical weights: the options', else the bundle's, else the extratropical ones (no band weights).
        let alpha_tropics = o.hybrid_alpha_tropics.or(h.alpha_tropics).unwrap_or(alpha);
        let beta_tropics = o.hybrid_beta_tropics.or(h.beta_tropics).unwrap_or(beta);
        // Southern extratropical weights: the options', else the bundle's, else the (northern) extratropical ones.
        let alpha_sh = o.hybrid_alpha_sh.or(h.alpha_sh).unwrap_or(alpha);
        let beta_sh = o.hybrid_beta_sh.or(h.beta_sh).unwrap_or(beta);
        let band_lat = o.hybrid_band_lat.or(h.band_lat).unwrap_or(crate::var::options::DEFAULT_HYBRID_BAND_LAT);
        let lay = &self.bundle.layout;
        let keep = match o.hybrid_variables.as_ref().or(h.variables.as_ref()) {
            None => vec![true; lay.variables.len()],
            Some(names) => {
                let mut keep = vec![false; lay.variables.len()];
                for n in names {
                    let v = lay.var_index(n).ok_or_else(|| {
                        Error::arg(format!(
                            "hybrid_variables names '{n}', which is not a variable of bundle '{}'",
                            self.bundle.name
                        ))
                    })?;
                    keep[v] = true;
                }
                keep
            }
        };
        let global = [alpha, beta, alpha_tropics, beta_tropics, alpha_sh, beta_sh];
        let mut per_variable = vec![global; lay.variables.len()];
        let table = o.hybrid_variable_weights.as_ref().or(h.variable_weights.as_ref());
        let source =
            if o.hybrid_variable_weights.is_some() { "hybrid_variable_weights" } else { "hybrid.variable_weights" };
        if let Some(table) = table {
            // groups first, so that a variable's own entry wins over its group's
            let mut named = Vec::new();
            for (name, w) in table {
                let members: Vec<usize> = match crate::var::desroziers::GROUPS.iter().find(|(g, _)| g == name) {
                    Some((_, vs)) => vs.iter().filter_map(|v| lay.var_index(v)).collect(),
                    None => vec![lay.var_index(name).ok_or_else(|| {
                        Error::arg(format!(
                            "{source} names '{name}', which is neither a variable of bundle '{}' nor a group (wind, mass)",
                            self.bundle.name
                        ))
                    })?],
                };
                named.push((lay.var_index(name).is_some(), members, *w));
            }
            named.sort_by_key(|(own, _, _)| *own);
            for (_, members, w) in named {
                for v in members {
                    per_variable[v] = w.resolve(global);
                }
            }
        }
        if !ensemble {
            // each (alpha, beta) pair of BandWeights, by its alpha's index, and where it applies
            let pairs = [
                (0, "in the extratropics"),
                (4, "in the southern extratropics (hybrid_alpha_sh and hybrid_beta_sh, or its own)"),
                (2, "in the tropics (hybrid_alpha_tropics and hybrid_beta_tropics, or its own)"),
            ];
            for (v, w) in per_variable.iter().enumerate() {
                if let Some((_, where_)) = pairs.iter().find(|(i, _)| w[*i] == 0.0 && w[i + 1] == 0.0) {
                    return Err(Error::arg(format!(
                        "the hybrid weights of '{}' are both 0 {where_}: the hybrid B would be zero there",
                        lay.variables[v].name
                    )));
                }
            }
        }
        Ok(HybridSettings { alpha, beta, keep, alpha_tropics, beta_tropics, alpha_sh, beta_sh, band_lat, per_variable })
    }

    /// The latent variances s^2 in force: the bundle's times the option `latent_variance_factor` times `weight` (the
    /// hybrid's alpha, or 1).
    pub(crate) fn latent_variance(&self, weight: f64) -> Vec<f64> {
        let f = weight * self.options.latent_variance_factor.unwrap_or(1.0);
        self.bundle.latent_variance.iter().map(|v| f * v).collect()
    }

    /// The weight folded into the latent variances of the B of kind `kind`: the hybrid's alpha_ref
    /// ([`HybridSettings::alpha_ref`]), else 1.
    pub(crate) fn latent_weight(&self, kind: BKind) -> Result<f64> {
        Ok(if kind == BKind::Hybrid { self.hybrid_settings()?.alpha_ref() } else { 1.0 })
    }

    /// Linearises the B operator of kind `kind` at the latent point `z` (for the latent and hybrid B; ignored for the
    /// static B), reusing the cached operator (and its variance) when it is already there, and builds the static B
    /// when needed. Returns the control size.
    pub fn prepare_b(&mut self, kind: BKind, z: Option<&[f32]>) -> Result<usize> {
        let mut n = 0;
        if kind != BKind::Static {
            let z = z.ok_or_else(|| Error::arg("the latent and hybrid B operators need a linearisation point"))?;
            let weight = self.latent_weight(kind)?;
            let mult = weight * self.options.latent_variance_factor.unwrap_or(1.0);
            let same_point = |l: &LatentB| {
                l.point().len() == z.len() && l.point().iter().zip(z).all(|(a, b)| a.to_bits() == b.to_bits())
            };
            self.cache.latent.retain(|(_, l)| same_point(l));
            if !self.cache.latent.iter().any(|(m, _)| *m == mult) {
                let b = &self.bundle;
                let lv = self.latent_variance(weight);
                self.cache.latent.push((mult, LatentB::new(z.to_vec(), &lv, &b.std, b.layout.grid.npoints())));
            }
            let l = &mut self.cache.latent.iter_mut().find(|(m, _)| *m == mult).expect("set above").1;
            l.set_variance_samples(self.options.bg_check_samples);
            n += l.control_size();
        }
        if kind != BKind::Latent {
            let factor = self.options.baseline_variance_factor.unwrap_or(self.bundle.baseline_variance_factor);
            let factors = (factor, self.options.baseline_length_scale_factor.unwrap_or(1.0));
            if self.cache.statics.as_ref().is_none_or(|(f, _)| *f != factors) {
                if self.bundle.baseline.is_none() {
                    return Err(Error::new(
                        Status::NotReady,
                        format!(
                            "the {} B needs baseline statistics, but bundle '{}' has none",
                            kind.name(),
                            self.bundle.name
                        ),
                    ));
                }
                self.cache.statics =
                    Some((factors, StaticB::for_bundle_with_lengths(&self.bundle, factor, factors.1)?));
            }
            let keep = if kind == BKind::Hybrid {
                self.hybrid_settings()?.keep
            } else {
                vec![true; self.bundle.layout.variables.len()]
            };
            let st = &mut self.cache.statics.as_mut().expect("set above").1;
            st.set_selection(&self.bundle.layout, &keep);
            n += st.size();
        }
        Ok(n)
    }

    /// Control size of the B operator of kind `kind`, without building it.
    pub fn control_size(&self, kind: BKind) -> Result<usize> {
        let b = &self.bundle;
        let latent = if kind == BKind::Static { 0 } else { b.latent_size() };
        if kind == BKind::Latent {
            return Ok(latent);
        }
        let hydro = crate::bmat::hydrostatic::Hydrostatic::for_bundle(b)?;
        let keep =
            if kind == BKind::Hybrid { self.hybrid_settings()?.keep } else { vec![true; b.layout.variables.len()] };
        Ok(latent + StaticB::active_channels(&b.layout, hydro.as_ref(), &keep).len() * b.layout.grid.npoints())
    }

    /// Lends the B operator of kind `kind`, prepared by [`Analyser::prepare_b`], and the ONNX sessions to `f`.
    pub fn with_b<R>(
        &mut self,
        kind: BKind,
        f: impl FnOnce(&mut dyn BOperator, &mut Autoencoder) -> Result<R>,
    ) -> Result<R> {
        let not_ready = || Error::new(Status::NotReady, format!("the {} B operator is not linearised", kind.name()));
        let weights =
            if kind == BKind::Hybrid { Some(self.hybrid_settings()?.weights(&self.bundle.layout)) } else { None };
        // the cached latent B must carry this kind's variances (the hybrid folds alpha_ref into them)
        let mult = if kind == BKind::Static {
            0.0
        } else {
            self.latent_weight(kind)? * self.options.latent_variance_factor.unwrap_or(1.0)
        };
        let n = self.bundle.layout.state_len();
        let BCache { latent, statics } = &mut self.cache;
        let latent = latent.iter_mut().find(|(m, _)| *m == mult).map(|(_, l)| l);
        match kind {
            BKind::Latent => f(latent.ok_or_else(not_ready)?, &mut self.ae),
            BKind::Static => f(&mut statics.as_mut().ok_or_else(not_ready)?.1, &mut self.ae),
            BKind::Hybrid => {
                let (l, s) = (latent.ok_or_else(not_ready)?, &mut statics.as_mut().ok_or_else(not_ready)?.1);
                let mut hy = weights.expect("resolved above").operator(l, s, n);
                f(&mut hy, &mut self.ae)
            }
        }
    }

    /// The sd of the hybrid B's two parts as in force, latent then static (weights and band fields applied), from
    /// the operators prepared by [`Analyser::prepare_b`] (their cached variances).
    pub(crate) fn hybrid_part_sd(&mut self) -> Result<(Vec<f64>, Vec<f64>)> {
        let w = self.hybrid_settings()?.weights(&self.bundle.layout);
        let mult = self.latent_weight(BKind::Hybrid)? * self.options.latent_variance_factor.unwrap_or(1.0);
        let not_ready = || Error::new(Status::NotReady, "the hybrid B operator is not linearised");
        let BCache { latent, statics } = &mut self.cache;
        let l = latent.iter_mut().find(|(m, _)| *m == mult).map(|(_, l)| l).ok_or_else(not_ready)?;
        let sd = |v: &[f64]| v.iter().map(|v| v.max(0.0).sqrt()).collect::<Vec<f64>>();
        let calibrated = if self.options.bg_check_sigma_b == SigmaB::Calibrated {
            self.bundle.latent_b_variance.as_ref()
        } else {
            None
        };
        let mut sl = match calibrated {
            Some(v) => v.iter().map(|v| (mult * v).max(0.0).sqrt()).collect(),
            None => sd(l.variance(&mut self.ae)?),
        };
        let mut ss = sd(statics.as_ref().ok_or_else(not_ready)?.1.variance());
        match &w.fields {
            Some((fa, fb)) => {
                sl.iter_mut().zip(fa).for_each(|(s, f)| *s *= f);
                ss.iter_mut().zip(fb).for_each(|(s, f)| *s *= f);
            }
            None => ss.iter_mut().for_each(|s| *s *= w.static_weight),
        }
        Ok((sl, ss))
    }

    /// The background check's calibrated diag B of kind `kind` (option `bg_check_sigma_b = "calibrated"`): the
    /// bundle's precomputed latent B variance (`[statistics] latent_b_variance`) times the latent variance factor
    /// (and, for the hybrid, its weights and band fields) plus the static B's exact variance, with how it was
    /// obtained. `None` for the static B (its variance is exact and cached anyway), for option "flow", and when the
    /// bundle has no calibrated variance. Needs [`Analyser::prepare_b`] for the hybrid.
    pub fn calibrated_variance(&mut self, kind: BKind) -> Result<Option<(Vec<f64>, String)>> {
        if kind == BKind::Static || self.options.bg_check_sigma_b != SigmaB::Calibrated {
            return Ok(None);
        }
        let Some(v) = self.bundle.latent_b_variance.as_ref() else { return Ok(None) };
        let f = self.options.latent_variance_factor.unwrap_or(1.0);
        if kind == BKind::Latent {
            let how = format!("latent B: calibrated (the bundle's latent_b_variance x latent_variance_factor {f})");
            return Ok(Some((v.iter().map(|v| f * v).collect(), how)));
        }
        let (sl, ss) = self.hybrid_part_sd()?;
        let hs = self.hybrid_settings()?;
        let how = format!(
            "hybrid: {:.4} x (latent B: calibrated, the bundle's latent_b_variance x latent_variance_factor {f}) + {:.4} x (static B: exact){}",
            hs.alpha,
            hs.beta,
            if hs.per_variable_weights() {
                ", per-variable weights"
            } else if hs.banded() {
                ", latitude-band weights"
            } else {
                ""
            }
        );
        Ok(Some((sl.iter().zip(&ss).map(|(l, s)| l * l + s * s).collect(), how)))
    }

    /// The static B prepared by [`Analyser::prepare_b`].
    pub(crate) fn static_b(&mut self) -> Result<&mut StaticB> {
        let not_ready = || Error::new(Status::NotReady, "the static B operator is not prepared");
        Ok(&mut self.cache.statics.as_mut().ok_or_else(not_ready)?.1)
    }

    /// The ONNX sessions, the bundle and the prepared static B at once (the hybrid's control space borrows all
    /// three).
    pub(crate) fn parts_for_hybrid(&mut self) -> Result<(&mut Autoencoder, &Bundle, &mut StaticB)> {
        let not_ready = || Error::new(Status::NotReady, "the static B operator is not prepared");
        let st = &mut self.cache.statics.as_mut().ok_or_else(not_ready)?.1;
        Ok((&mut self.ae, &self.bundle, st))
    }

    /// The report's common part: versions, method, output mode, backend, control size and QC counts.
    pub(crate) fn report_base(
        &self,
        method: Method,
        mode: OutputMode,
        control_size: usize,
        obs: &[Observation],
        qc: &[QcFlag],
        n_used: usize,
    ) -> Result<Report> {
        let mut report = Report {
            self_test: self.self_test.clone(),
            latentda_version: env!("CARGO_PKG_VERSION").into(),
            bundle: self.bundle.name.clone(),
            method: method.name().into(),
            output: mode.name().into(),
            formulation: "increment".into(),
            latent_increment: match method {
                Method::L3dvar | Method::Hybrid | Method::L4dvar => self.options.latent_form().name().into(),
                _ => String::new(),
            },
            backend: self.ae.info.backend.clone(),
            backend_detail: self.ae.info.detail.clone(),
            device: self.options.device()?.name(),
            threads: self.options.threads,
            control_size,
            n_obs: obs.len(),
            n_used,
            ..Default::default()
        };
        for f in QcFlag::ALL {
            report.qc_counts.insert(f.name().into(), qc.iter().filter(|q| **q == f).count());
        }
        Ok(report)
    }

    /// Per-variable observation statistics (counts, O-B and O-A, J_o/n) over the rows of `h` (H x_b and H x_a per
    /// row), and the RMS of the increment `dx` (state layout) per variable.
    pub(crate) fn variable_stats(
        &self,
        obs: &[Observation],
        qc: &[QcFlag],
        h: &ObsOperator,
        hxb: &[f64],
        hxa: &[f64],
        dx: &[f64],
    ) -> Vec<VarStats> {
        let lay = &self.bundle.layout;
        let mut stats: Vec<VarStats> = lay
            .variables
            .iter()
            .enumerate()
            .map(|(v, var)| VarStats {
                name: var.name.clone(),
                units: self.bundle.units(v).into(),
                ..Default::default()
            })
            .collect();
        for (o, q) in obs.iter().zip(qc) {
            if let Some(v) = o.var {
                stats[v].n_total += 1;
                if *q != QcFlag::Used {
                    stats[v].n_rejected += 1;
                }
            }
        }
        // Per variable: n, sum O-B, sum (O-B)^2, sum O-A, sum (O-A)^2, sum ((O-B)/sigma)^2, sum ((O-A)/sigma)^2.
        let mut acc = vec![[0.0f64; 7]; lay.variables.len()];
        for r in 0..h.nrows() {
            let o = &obs[h.rows[r]];
            let v = o.var.unwrap_or(0);
            let (ob, oa) = (o.value - hxb[r], o.value - hxa[r]);
            let a = &mut acc[v];
            a[0] += 1.0;
            a[1] += ob;
            a[2] += ob * ob;
            a[3] += oa;
            a[4] += oa * oa;
            a[5] += (ob / o.sigma).powi(2);
            a[6] += (oa / o.sigma).powi(2);
        }
        for (v, s) in stats.iter_mut().enumerate() {
            let a = acc[v];
            let n = a[0];
            s.n_used = n as usize;
            if n > 0.0 {
                s.omb_mean = a[1] / n;
                s.omb_rms = (a[2] / n).sqrt();
                s.oma_mean = a[3] / n;
                s.oma_rms = (a[4] / n).sqrt();
                s.jo_over_n_b = 0.5 * a[5] / n;
                s.jo_over_n_a = 0.5 * a[6] / n;
            }
            let range = lay.var_range(v);
            s.increment_rms = (dx[range.clone()].iter().map(|d| d * d).sum::<f64>() / range.len() as f64).sqrt();
        }
        stats
    }

    /// The report's timings since `t_start`: model runs (and step-model runs, method l4dvar), H, diag B, and the rest.
    pub(crate) fn timings(
        &self,
        t_start: Instant,
        h_s: f64,
        variance_s: f64,
        n_variance: usize,
        step: Option<&crate::var::report::StepClock>,
    ) -> Timings {
        let mt = &self.ae.timings;
        let total_s = t_start.elapsed().as_secs_f64();
        let st = step.cloned().unwrap_or_default();
        // H and H^T inside the solver are not timed per call; they are part of `overhead_s` (the benchmark measures
        // them separately).
        Timings {
            encode_s: mt.encode_s,
            decode_s: mt.decode_s,
            tl_s: mt.tl_s,
            ad_s: mt.ad_s,
            h_s,
            total_s,
            overhead_s: (total_s - mt.total_s() - variance_s - st.total_s()).max(0.0),
            variance_s,
            n_variance,
            n_encode: mt.n_encode,
            n_decode: mt.n_decode,
            n_tl: mt.n_tl,
            n_ad: mt.n_ad,
            step_s: st.step_s,
            step_tl_s: st.tl_s,
            step_ad_s: st.ad_s,
            n_step: st.n_step,
            n_step_tl: st.n_tl,
            n_step_ad: st.n_ad,
        }
    }
}
