//! Run-time options: one TOML table shared by the CLI, the C ABI (`lda_open`'s options string), Fortran and C++.
//!
//! ```toml
//! backend = "tract"            # "tract" (pure Rust, default), "ort" (ONNX Runtime shared library) or "auto" (ort when
//!                              # a library is found and loads, else tract; the report says which and why)
//! ort_library = "/path/libonnxruntime.so.1.24.1"   # or environment variable ORT_DYLIB_PATH
//! device = "cpu"               # or "cuda:0" (backend "ort" only; fails if CUDA cannot be used)
//! threads = 1                  # ONNX Runtime intra-op threads (1 = bit-reproducible on one machine)
//! cuda_tf32 = false            # allow TF32 on CUDA
//! method = "l3dvar"            # default method of lda_analyse: "l3dvar", "3dvar", "hybrid" or "l4dvar"
//! output = "analysis"          # "analysis" (x_b + decoded increment), "increment", "full_state" (N^-1(D(z_a)))
//! solver = "gauss_newton"      # or "adam" (the published reference algorithm, for comparison)
//! gradient_reduction = 1e-3    # target: |grad J| reduced by this factor from its value at the background
//! max_pairs = 80               # TL/AD pairs (CG iterations) in all outer loops together (default: max(80, max_inner))
//! outer_loops = 3              # most Gauss-Newton outer loops (each: one decoder and one adjoint run)
//! max_inner = 80               # most CG iterations in one outer loop
//! preconditioner = "ritz"      # outer loops 2, 3, ... preconditioned with earlier Ritz pairs, or "none"
//! adam_steps = 100             # solver "adam": steps (one decoder and one adjoint run each)
//! adam_lr = 0.1                # solver "adam": initial learning rate, halved on plateaus
//! bg_check = 5.0               # background check k (0 disables)
//! bg_check_samples = 32        # draws of the randomised latent variance (exact when the latent size is <= this)
//! bg_check_sigma_b = "calibrated"  # 3D methods' background-check sigma_b: the bundle's precomputed latent B variance
//!                              #   ([statistics] latent_b_variance; "flow" when it has none) or "flow" (randomised
//!                              #   variance of the B at this background, bg_check_samples decoder TL runs)
//! hybrid_alpha = 1.0           # hybrid weights and variables: override the bundle's [hybrid] table
//! hybrid_beta = 1.0
//! hybrid_variables = ["q", "ps"]
//! hybrid_alpha_tropics = 0.5   # hybrid weights in the tropics (hybrid_alpha/_beta are then the extratropical ones;
//! hybrid_beta_tropics = 1.0    #   default: the bundle's [hybrid] alpha_tropics/beta_tropics, else no band weights)
//! hybrid_alpha_sh = 0.5       # hybrid weights in the southern extratropics (hybrid_alpha/_beta are then the northern
//! hybrid_beta_sh = 1.0        #   ones; default: the bundle's [hybrid] alpha_sh/beta_sh, else hybrid_alpha/_beta)
//! hybrid_band_lat = [10.0, 30.0]   # cosine ramp from the tropical weights at |lat| <= 10 to the extratropical at >= 30
//! hybrid_variable_weights = { q = { alpha = 0.1, beta = 0.4 }, wind = { alpha_tropics = 0.2 } }
//!                              # weights per variable or group (wind, mass); missing ones: the global weights
//! baseline_variance_factor = 1.0   # multiplies the static B's variances (overrides [statistics] of the bundle)
//! baseline_length_scale_factor = 1.0   # multiplies the static B's horizontal correlation lengths
//! latent_variance_factor = 1.0     # multiplies the latent B's variances (e.g. < 1 when cycling with 6 h forecasts)
//! latent_increment = "linear"      # latent part: "linear" sd D'(z_b)(s w) (default, except with output "full_state")
//!                                  # or "nonlinear" sd (D(z_b + s w) - D(z_b)) (outer loops relinearise the decoder)
//! b_operator = "latent"        # B operator served to hosts (lda_bsqrt, ...): "latent", "hybrid" or "static"
//! window_hours = 12.0          # l4dvar: window [0, window_hours] (default: the bundle's [forecast] value, else 12)
//! slot_hours = 6.0             # l4dvar: observation slot width (default: the step model's time step)
//! error_growth_per_hour = 0.2  # l4dvar: observation error variance x (1 + g t) at slot time t (step-model error;
//!                              #   default: the bundle's [forecast] value, else 0)
//! verbosity = 0                # 0 quiet, 1 iteration lines on stderr
//! self_test = true             # run every graph on the bundle's probes at open (known-answer test; false skips it)
//! ensemble_gamma = 0.5         # with ensemble members set (Analyser::set_ensemble, --ensemble): weight gamma of the
//!                              #   ensemble part (hybrid: + gamma latent ensemble B; 3dvar: + gamma model-space one;
//!                              #   default: the bundle's [hybrid] gamma, else 0.5)
//! ensemble_localisation_km = 2500.0        # Gaspari-Cohn half-width c (km, zero beyond 2c) on the latent grid
//! ensemble_localisation_model_km = 2500.0  # the same on the model grid (3DEnVar; default: ensemble_localisation_km)
//! ensemble_space = "latent"    # method hybrid with members: the ensemble part's space, "latent" (the latent ensemble
//!                              #   B, localised on the latent grid) or "model" (3DEnVar's model-space ensemble B:
//!                              #   latent + static + model-space ensemble, the latent B added to a hybrid 3DEnVar)
//! adaptive_state = "cycle/adaptive_b.json"  # online B sizing while cycling (crate::var::adaptive): read before each
//!                              #   analysis (missing: multipliers 1), rewritten after each successful one; unset: off
//! adaptive_window = 8          # cycles of Desroziers sums behind each update
//! adaptive_bounds = [0.05, 4.0]    # bounds of every multiplier, relative to the B of these options
//! adaptive_rule = "innovation" # H B H^T estimate: "innovation" (E[d_b^2] - R) or "desroziers" (E[(Hx_a - Hx_b) d_b])
//! adaptive_per_variable = false    # hybrid: one multiplier per variable and band class (extratropics, tropics)
//! mix_candidates = [0.7, 0.9, 0.4, 0.0]  # hybrid: choose each variable's latent share per band class while cycling
//!                              #   (crate::var::mix) among these; the first is used until there is evidence
//! mix_state = "cycle/mix.json" # its state file (and mix.json.fields beside it), needed with mix_candidates
//! mix_window = 12              # scored cycles of evidence behind each choice
//! mix_every = 1                # run and score the candidates every this many analyses (cost / mix_every)
//! mix_hemispheres = false      # true: choose the southern extratropics' share apart from the northern (classes nh,
//!                              #   tropics, sh instead of extratropics, tropics)
//! mix_score = "model"          # candidates forecast by the host's step model (lda_set_step_model), or "persistence"
//! mix_lead_hours = 6.0         # "model": hours each candidate is forecast (the cycle length)
//! ```

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::backend::{BackendKind, Device, ExecOptions};
use crate::var::desroziers::Estimate;
use crate::var::solver::{SolverKind, SolverParams, DEFAULT_MAX_PAIRS};

/// Default weight gamma of an ensemble part (option `ensemble_gamma`, else the bundle's `[hybrid] gamma`, else this).
pub const DEFAULT_ENSEMBLE_GAMMA: f64 = 0.5;

/// Default cycles in the window of the online B sizing (`adaptive_window`): two days of 6 h cycles, which beat one
/// day in the dense-network cycling runs (README, "Cycling experiment").
pub const DEFAULT_ADAPTIVE_WINDOW: usize = 8;

/// Default cycles of evidence behind each choice of the online mix (`mix_window`): three days of 6 h cycles.
pub const DEFAULT_MIX_WINDOW: usize = 12;

/// Default bounds of every multiplier of the online B sizing (`adaptive_bounds`), relative to the options' B.
pub const DEFAULT_ADAPTIVE_BOUNDS: [f64; 2] = [0.05, 4.0];

/// Default latitudes (degrees) of the ramp between the hybrid's tropical and extratropical weights: tropical
/// weights at |lat| <= 10, extratropical ones at |lat| >= 30 (the robustness matrix's tropics band is 20S-20N, the
/// ramp's midpoint).
pub const DEFAULT_HYBRID_BAND_LAT: [f64; 2] = [10.0, 30.0];

/// Analysis method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Latent 3D-Var.
    L3dvar,
    /// Model-space 3D-Var with the static baseline B.
    Var3d,
    /// Hybrid latent-static B: control [w, v], dx = sd (D(z_b + sqrt(alpha) s w) - D(z_b)) + sqrt(beta) P U_s v.
    Hybrid,
    /// Latent 4D-Var: the latent control of L3DVar, observations at their own times through a step model
    /// (strong constraint, `crate::var::fourd`).
    L4dvar,
}

impl Method {
    /// Parses `l3dvar`, `3dvar`, `hybrid` or `l4dvar`.
    pub fn parse(s: &str) -> Result<Method> {
        match s {
            "l3dvar" => Ok(Method::L3dvar),
            "3dvar" => Ok(Method::Var3d),
            "hybrid" => Ok(Method::Hybrid),
            "l4dvar" => Ok(Method::L4dvar),
            _ => Err(Error::arg(format!("method '{s}' is not known (use 'l3dvar', '3dvar', 'hybrid' or 'l4dvar')"))),
        }
    }
    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::L3dvar => "l3dvar",
            Method::Var3d => "3dvar",
            Method::Hybrid => "hybrid",
            Method::L4dvar => "l4dvar",
        }
    }
}

/// Which B a host's B operator (`lda_bsqrt`, `lda_bsqrt_ad`, `lda_bvariance`, `lda_brandomize`) applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BKind {
    /// The latent B, U = sd D'(z_b) s (control size: the latent size).
    Latent,
    /// The hybrid B, U = [sqrt(alpha) U_l, sqrt(beta) P U_s] (control size: latent size + static control size).
    Hybrid,
    /// The static (baseline) B U_s with its hydrostatic balance.
    Static,
}

impl BKind {
    /// Parses `latent`, `hybrid` or `static`.
    pub fn parse(s: &str) -> Result<BKind> {
        match s {
            "latent" => Ok(BKind::Latent),
            "hybrid" => Ok(BKind::Hybrid),
            "static" => Ok(BKind::Static),
            _ => Err(Error::arg(format!("b_operator '{s}' is not known (use 'latent', 'hybrid' or 'static')"))),
        }
    }
    /// The B in force for an analysis method.
    pub fn of_method(m: Method) -> BKind {
        match m {
            Method::L3dvar => BKind::Latent,
            Method::Var3d => BKind::Static,
            Method::Hybrid => BKind::Hybrid,
            Method::L4dvar => BKind::Latent,
        }
    }
    /// Name used in reports and options.
    pub fn name(self) -> &'static str {
        match self {
            BKind::Latent => "latent",
            BKind::Hybrid => "hybrid",
            BKind::Static => "static",
        }
    }
}

/// What the analysis returns (and what the C ABI writes into bound host arrays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// x_b + decoded latent increment (default): the AE reconstruction error never enters.
    Analysis,
    /// The increment x_a - x_b only (for incremental analysis update).
    Increment,
    /// The full decoded state N^-1(D(z_a)) (full-state formulation, as in the published reference).
    FullState,
}

impl OutputMode {
    /// Parses `analysis`, `increment` or `full_state`.
    pub fn parse(s: &str) -> Result<OutputMode> {
        match s {
            "analysis" => Ok(OutputMode::Analysis),
            "increment" => Ok(OutputMode::Increment),
            "full_state" => Ok(OutputMode::FullState),
            _ => Err(Error::arg(format!("output '{s}' is not known (use 'analysis', 'increment' or 'full_state')"))),
        }
    }
    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            OutputMode::Analysis => "analysis",
            OutputMode::Increment => "increment",
            OutputMode::FullState => "full_state",
        }
    }
}

/// The minimiser's preconditioner across outer loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preconditioner {
    /// Limited-memory spectral preconditioner from earlier outer loops' Ritz pairs (default).
    Ritz,
    /// None.
    None,
}

impl Preconditioner {
    /// Parses `ritz` or `none`.
    pub fn parse(s: &str) -> Result<Preconditioner> {
        match s {
            "ritz" => Ok(Preconditioner::Ritz),
            "none" => Ok(Preconditioner::None),
            _ => Err(Error::arg(format!("preconditioner '{s}' is not known (use 'ritz' or 'none')"))),
        }
    }
    /// Name used in options.
    pub fn name(self) -> &'static str {
        match self {
            Preconditioner::Ritz => "ritz",
            Preconditioner::None => "none",
        }
    }
}

/// The latent part's increment form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentForm {
    /// sd D'(z_b)(s w): linear in w (default).
    Linear,
    /// sd (D(z_b + s w) - D(z_b)): outer loops relinearise the decoder.
    Nonlinear,
}

impl LatentForm {
    /// Parses `linear` or `nonlinear`.
    pub fn parse(s: &str) -> Result<LatentForm> {
        match s {
            "linear" => Ok(LatentForm::Linear),
            "nonlinear" => Ok(LatentForm::Nonlinear),
            _ => Err(Error::arg(format!("latent_increment = '{s}' is not known (use 'linear' or 'nonlinear')"))),
        }
    }
    /// Name used in options and reports.
    pub fn name(self) -> &'static str {
        match self {
            LatentForm::Linear => "linear",
            LatentForm::Nonlinear => "nonlinear",
        }
    }
}

/// Where the 3D methods' background check takes sigma_b from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigmaB {
    /// The bundle's calibrated latent B variance (`[statistics] latent_b_variance`) times the factors and weights in
    /// force (default; the flow estimate when the bundle has none).
    Calibrated,
    /// The randomised variance of the B linearised at this background.
    Flow,
}

impl SigmaB {
    /// Parses `calibrated` or `flow`.
    pub fn parse(s: &str) -> Result<SigmaB> {
        match s {
            "calibrated" => Ok(SigmaB::Calibrated),
            "flow" => Ok(SigmaB::Flow),
            _ => Err(Error::arg(format!("bg_check_sigma_b '{s}' is not known (use 'calibrated' or 'flow')"))),
        }
    }
    /// Name used in options.
    pub fn name(self) -> &'static str {
        match self {
            SigmaB::Calibrated => "calibrated",
            SigmaB::Flow => "flow",
        }
    }
}

/// The space of the hybrid's ensemble part (option `ensemble_space`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsembleSpace {
    /// The latent ensemble B: members encoded, localised on the latent grid, through the decoder TL (default).
    Latent,
    /// The model-space ensemble B of hybrid 3DEnVar (localised on the model grid, `ensemble_localisation_model_km`).
    Model,
}

impl EnsembleSpace {
    /// Parses `latent` or `model`.
    pub fn parse(s: &str) -> Result<EnsembleSpace> {
        match s {
            "latent" => Ok(EnsembleSpace::Latent),
            "model" => Ok(EnsembleSpace::Model),
            _ => Err(Error::arg(format!("ensemble_space '{s}' is not known (use 'latent' or 'model')"))),
        }
    }
    /// Name used in options.
    pub fn name(self) -> &'static str {
        match self {
            EnsembleSpace::Latent => "latent",
            EnsembleSpace::Model => "model",
        }
    }
}

/// How the online mix carries each candidate's analysis to the next cycle (option `mix_score`,
/// [`crate::var::mix`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixScore {
    /// The host's step model (`lda_set_step_model`) forecasts each candidate's analysis `mix_lead_hours` ahead
    /// (default).
    Model,
    /// No forecast: the candidate's analysis minus the one used is taken to persist, F_k = x_b + (A_k - A).
    Persistence,
}

impl MixScore {
    /// Parses `model` or `persistence`.
    pub fn parse(s: &str) -> Result<MixScore> {
        match s {
            "model" => Ok(MixScore::Model),
            "persistence" => Ok(MixScore::Persistence),
            _ => Err(Error::arg(format!("mix_score '{s}' is not known (use 'model' or 'persistence')"))),
        }
    }
    /// Name used in options.
    pub fn name(self) -> &'static str {
        match self {
            MixScore::Model => "model",
            MixScore::Persistence => "persistence",
        }
    }
}

/// Option enums deserialise from their option string through their own `parse`, so a bad value gets the same
/// message from a TOML file, the C ABI's options string and the CLI.
macro_rules! option_enum_from_string {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                <$t>::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
            }
        }
    )*};
}
option_enum_from_string!(
    Method,
    OutputMode,
    BKind,
    SolverKind,
    Preconditioner,
    LatentForm,
    SigmaB,
    EnsembleSpace,
    Estimate,
    MixScore
);

/// All options, with defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// "tract", "ort" or "auto".
    pub backend: String,
    /// ONNX Runtime shared library path.
    pub ort_library: Option<String>,
    /// "cpu" or "cuda:N".
    pub device: String,
    /// Intra-op threads.
    pub threads: usize,
    /// TF32 on CUDA.
    pub cuda_tf32: bool,
    /// Default method ("l3dvar", "3dvar", "hybrid", "l4dvar").
    pub method: Method,
    /// Output mode ("analysis", "increment", "full_state").
    pub output: OutputMode,
    /// Minimisation algorithm: "gauss_newton" or "adam".
    pub solver: SolverKind,
    /// Most outer loops.
    pub outer_loops: usize,
    /// Most CG iterations per outer loop.
    pub max_inner: usize,
    /// Most TL/AD pairs in all outer loops together (None: the larger of 80 and `max_inner`).
    pub max_pairs: Option<usize>,
    /// Target reduction of |grad J| relative to its value at the background.
    pub gradient_reduction: f64,
    /// "ritz" (limited-memory spectral preconditioner across outer loops) or "none".
    pub preconditioner: Preconditioner,
    /// Adam steps.
    pub adam_steps: usize,
    /// Adam initial learning rate.
    pub adam_lr: f64,
    /// Background-check threshold k (0 disables).
    pub bg_check: f64,
    /// Draws of the randomised latent variance for the background check (exact when the latent size is smaller).
    pub bg_check_samples: usize,
    /// sigma_b of the background check (3D methods): "calibrated" (default: the bundle's precomputed latent B
    /// variance `[statistics] latent_b_variance` times the factors and weights in force, no model run; falls back to
    /// "flow" when the bundle has none) or "flow" (the randomised variance of the B linearised at this background).
    pub bg_check_sigma_b: SigmaB,
    /// Hybrid weight alpha of the latent B (default: the bundle's `[hybrid]`, else 1).
    pub hybrid_alpha: Option<f64>,
    /// Hybrid weight beta of the static B (default: the bundle's `[hybrid]`, else 1).
    pub hybrid_beta: Option<f64>,
    /// Variables the static part of the hybrid acts on (default: the bundle's `[hybrid]`, else all).
    pub hybrid_variables: Option<Vec<String>>,
    /// Hybrid weight alpha in the tropics (|lat| <= `hybrid_band_lat[0]`); `hybrid_alpha` is then the extratropical
    /// weight (|lat| >= `hybrid_band_lat[1]`), with a cosine ramp between (default: the bundle's `[hybrid]
    /// alpha_tropics`, else `hybrid_alpha`: no band weights).
    pub hybrid_alpha_tropics: Option<f64>,
    /// Hybrid weight beta in the tropics (default: the bundle's `[hybrid] beta_tropics`, else `hybrid_beta`).
    pub hybrid_beta_tropics: Option<f64>,
    /// Hybrid weight alpha in the southern extratropics (lat <= -`hybrid_band_lat[1]`, with the cosine ramp from the
    /// tropics); `hybrid_alpha` is then the northern weight (default: the bundle's `[hybrid] alpha_sh`, else
    /// `hybrid_alpha`: the same in both hemispheres).
    pub hybrid_alpha_sh: Option<f64>,
    /// Hybrid weight beta in the southern extratropics (default: the bundle's `[hybrid] beta_sh`, else
    /// `hybrid_beta`).
    pub hybrid_beta_sh: Option<f64>,
    /// Latitudes [lat0, lat1] (degrees, 0 <= lat0 < lat1 <= 90) of the ramp between tropical and extratropical
    /// hybrid weights (default: the bundle's `[hybrid] band_lat`, else [`DEFAULT_HYBRID_BAND_LAT`]).
    pub hybrid_band_lat: Option<[f64; 2]>,
    /// Hybrid weights per variable or group (`wind` = u, v; `mass` = t, z, ps; a variable's own entry wins over its
    /// group's), as an inline table: `hybrid_variable_weights = { q = { alpha = 0.2, beta = 0.5 }, wind = {
    /// alpha_tropics = 0.1 } }` ([`crate::bundle::VariableWeights`]: missing weights fall back to the global ones).
    /// Replaces the bundle's `[hybrid.variable_weights]` table when given (default: the bundle's, else none).
    pub hybrid_variable_weights: Option<std::collections::BTreeMap<String, crate::bundle::VariableWeights>>,
    /// Factor on the static B's variances (default: the bundle's `[statistics]`, else 1).
    pub baseline_variance_factor: Option<f64>,
    /// Factor on every horizontal correlation length of the static B (default 1: the bundle's `baseline_b.nc`
    /// lengths; with the reference bundle they beat x 0.7, x 1.4 and x 2.0 in 30-day cycles, docs/b-operator.md).
    pub baseline_length_scale_factor: Option<f64>,
    /// Factor on the latent B's variances s^2 (default 1: the bundle's calibration, which is for its own
    /// background errors; a host cycling with shorter forecasts than the bundle was calibrated on scales it down).
    pub latent_variance_factor: Option<f64>,
    /// B operator served to hosts: "latent", "hybrid" or "static".
    pub b_operator: BKind,
    /// Latent part of l3dvar and hybrid: "linear" (the latent B's square root at z_b: a quadratic cost that one outer
    /// loop solves exactly) or "nonlinear" (the decoded increment sd (D(z_b + s w) - D(z_b)), relinearised by the
    /// outer loops). Unset: "linear", except with output "full_state", which decodes z_a itself ("nonlinear"). On the
    /// reference bundle's 12 validation cases x 2 networks the two forms' mean RMSE ratios agree to 0.003 (single
    /// cases to 0.016 of the background RMSE), and the linear form converges 1000-fold in 27-40 TL/AD pairs where the
    /// nonlinear one needs 43 to over 80 (model card).
    pub latent_increment: Option<LatentForm>,
    /// l4dvar: length of the assimilation window [0, window_hours], a multiple of `slot_hours` (default: the
    /// bundle's `[forecast] window_hours`, else 12 h rounded up to a multiple of `slot_hours`; never the observation
    /// times, so an observation outside the window is flagged instead of stretching it).
    pub window_hours: Option<f64>,
    /// l4dvar: width of the observation time slots, a multiple of the step model's time step (default: the step).
    pub slot_hours: Option<f64>,
    /// l4dvar: the observation error variance of slot time t (hours) is sigma^2 (1 + g t): a simple account of the
    /// error of the step model's TL in carrying increments to later slots (default: the bundle's `[forecast]`
    /// value for its own step model, else 0).
    pub error_growth_per_hour: Option<f64>,
    /// 0 quiet, 1 iteration lines on stderr.
    pub verbosity: u32,
    /// Run the known-answer self-test at open (each graph once on the bundle's probes, `crate::model::selftest`); off
    /// for hosts that verified the bundle otherwise.
    pub self_test: bool,
    /// Weight gamma (>= 0) of the ensemble part of the B when ensemble members are set
    /// ([`crate::Analyser::set_ensemble`]): method hybrid adds gamma times the latent ensemble B (localised on the
    /// latent grid), method 3dvar becomes hybrid 3DEnVar, static B plus gamma times the model-space ensemble B.
    /// Without members it has no effect. Default: the bundle's `[hybrid] gamma`, else 0.5.
    pub ensemble_gamma: Option<f64>,
    /// Gaspari-Cohn half-width c (km, > 0; the localisation is zero beyond 2c) of the latent ensemble B on the latent
    /// grid (docs/ensemble-b.md). Default 2500 km (about 1.5 latent cells of the reference bundle).
    pub ensemble_localisation_km: f64,
    /// Gaspari-Cohn half-width (km, > 0) of the model-space ensemble B on the model grid (method 3dvar with
    /// members). Default: `ensemble_localisation_km`.
    pub ensemble_localisation_model_km: Option<f64>,
    /// Method hybrid with members: the ensemble part is the latent ensemble B (`Latent`, default) or the model-space
    /// ensemble B of hybrid 3DEnVar (`Model`: latent + static + model-space ensemble). Method 3dvar always uses the
    /// model-space one.
    pub ensemble_space: EnsembleSpace,
    /// Online B sizing while cycling ([`crate::var::adaptive`]): the JSON state file read before each analysis (a
    /// missing file starts at the B of these options) and rewritten after each successful one, before the host's
    /// arrays are written. Unset (default): the B of these options, unchanged.
    pub adaptive_state: Option<String>,
    /// Cycles of Desroziers sums behind each update of the sizing (>= 1; default [`DEFAULT_ADAPTIVE_WINDOW`]).
    pub adaptive_window: usize,
    /// Bounds [lo, hi] (0 < lo <= 1 <= hi) of every multiplier of the sizing, relative to the B of these options.
    pub adaptive_bounds: [f64; 2],
    /// H B H^T estimate of the sizing: "innovation" (E[d_b^2] - R, default) or "desroziers" (E[(H x_a - H x_b) d_b]).
    pub adaptive_rule: Estimate,
    /// Hybrid: one multiplier per bundle variable and band class (extratropics, tropics) instead of one scalar.
    pub adaptive_per_variable: bool,
    /// Method hybrid while cycling ([`crate::var::mix`]): candidate latent shares L in [0, 1] (alpha = L S, beta =
    /// (1 - L) S per variable and band class, S = alpha + beta in force), one chosen per variable and class from
    /// how each candidate's analysis fitted the next cycle's observations. The first is the choice until there is
    /// evidence. Unset (default): the weights of the options.
    pub mix_candidates: Option<Vec<f64>>,
    /// The online mix's state file (JSON, with the candidates' pending fields in `<file>.fields`), read before and
    /// rewritten after each successful analysis; required with `mix_candidates`.
    pub mix_state: Option<String>,
    /// Cycles of evidence pooled behind each choice of the online mix (>= 1; default [`DEFAULT_MIX_WINDOW`]): the
    /// last `mix_window` cycles that were scored.
    pub mix_window: usize,
    /// The online mix runs its candidates (K analyses and, with `mix_score = "model"`, K forecasts) at every
    /// `mix_every`-th analysis of its state, and the analysis after scores them (an analysis that could not score
    /// them, or whose candidates failed, runs them again at once); the others reuse the choice in force. 1 (default): every cycle. A host for which K more analyses per cycle are too many sets 4 (once a day
    /// with 6 h cycles) and keeps `mix_window` = 12 scored cycles: in the reference dense-network cycle that chose as
    /// well as every cycle in one period and 0-3 % worse in another, while 3 (the same three days) lost about 2 %;
    /// on land it lost 1-9 %, in one period to below the fixed mix (docs/robustness-matrix.md).
    pub mix_every: usize,
    /// The online mix's latitude classes: `false` (default) one extratropical share per variable for both
    /// hemispheres and one tropical share; `true` the northern and southern extratropics chosen apart, each from its
    /// own observations (a network whose observations sit mostly in one hemisphere otherwise gives the other its
    /// choice). The B then has hemispheric weights (`hybrid_alpha_sh`, ...). A state written with the other setting
    /// keeps its evidence and chooses again with these classes.
    pub mix_hemispheres: bool,
    /// How the online mix carries each candidate to the next cycle: the host's step model (`Model`, default) or
    /// persistence of the difference between the analyses (`Persistence`, no forecast).
    pub mix_score: MixScore,
    /// `mix_score = "model"`: hours each candidate is forecast, the host's cycle length (a multiple of the step
    /// model's time step; default 6). With analysis times ([`crate::Analyser::set_analysis_time`]) the candidates
    /// are scored by the analysis this many hours later, with either score.
    pub mix_lead_hours: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: "tract".into(),
            ort_library: None,
            device: "cpu".into(),
            threads: 1,
            cuda_tf32: false,
            method: Method::L3dvar,
            output: OutputMode::Analysis,
            solver: SolverKind::GaussNewton,
            outer_loops: 3,
            max_inner: DEFAULT_MAX_PAIRS,
            max_pairs: None,
            gradient_reduction: 1e-3,
            preconditioner: Preconditioner::Ritz,
            adam_steps: 100,
            adam_lr: 0.1,
            bg_check: 5.0,
            bg_check_samples: crate::bmat::latent::DEFAULT_VARIANCE_SAMPLES,
            bg_check_sigma_b: SigmaB::Calibrated,
            hybrid_alpha: None,
            hybrid_beta: None,
            hybrid_variables: None,
            hybrid_alpha_tropics: None,
            hybrid_beta_tropics: None,
            hybrid_alpha_sh: None,
            hybrid_beta_sh: None,
            hybrid_band_lat: None,
            hybrid_variable_weights: None,
            baseline_variance_factor: None,
            baseline_length_scale_factor: None,
            latent_variance_factor: None,
            b_operator: BKind::Latent,
            latent_increment: None,
            window_hours: None,
            slot_hours: None,
            error_growth_per_hour: None,
            verbosity: 0,
            self_test: true,
            ensemble_gamma: None,
            ensemble_localisation_km: 2500.0,
            ensemble_localisation_model_km: None,
            ensemble_space: EnsembleSpace::Latent,
            adaptive_state: None,
            adaptive_window: DEFAULT_ADAPTIVE_WINDOW,
            adaptive_bounds: DEFAULT_ADAPTIVE_BOUNDS,
            adaptive_rule: Estimate::Innovation,
            adaptive_per_variable: false,
            mix_candidates: None,
            mix_state: None,
            mix_window: DEFAULT_MIX_WINDOW,
            mix_every: 1,
            mix_hemispheres: false,
            mix_score: MixScore::Model,
            mix_lead_hours: 6.0,
        }
    }
}

impl Options {
    /// Parses a TOML options string (empty = defaults) and validates it.
    pub fn from_toml(text: &str) -> Result<Options> {
        let o: Options = toml::from_str(text).map_err(|e| Error::arg(format!("invalid options: {e}")))?;
        o.validate()?;
        Ok(o)
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<()> {
        // names only: resolving backend "auto" loads ONNX Runtime, which is the open's work, not validation's
        if self.backend != "auto" {
            BackendKind::parse(&self.backend)?;
        }
        self.device()?;
        if self.outer_loops == 0 || self.outer_loops > 20 {
            return Err(Error::arg(format!("outer_loops = {} must be in 1..=20", self.outer_loops)));
        }
        if self.max_inner == 0 {
            return Err(Error::arg("max_inner must be >= 1"));
        }
        if self.max_pairs == Some(0) {
            return Err(Error::arg("max_pairs must be >= 1"));
        }
        if self.adam_steps == 0 || self.adam_steps > 100_000 {
            return Err(Error::arg(format!("adam_steps = {} must be in 1..=100000", self.adam_steps)));
        }
        if !(self.adam_lr > 0.0 && self.adam_lr.is_finite()) {
            return Err(Error::arg(format!("adam_lr = {} must be > 0", self.adam_lr)));
        }
        if !(self.gradient_reduction > 0.0 && self.gradient_reduction < 1.0) {
            return Err(Error::arg(format!("gradient_reduction = {} must be in (0, 1)", self.gradient_reduction)));
        }
        if !(self.bg_check >= 0.0) {
            return Err(Error::arg(format!("bg_check = {} must be >= 0", self.bg_check)));
        }
        if self.bg_check_samples == 0 {
            return Err(Error::arg("bg_check_samples must be >= 1"));
        }
        if let Some(b) = self.hybrid_band_lat {
            crate::bundle::check_band_lat(b).map_err(|m| Error::arg(format!("hybrid_band_lat: {m}")))?;
        }
        for (name, v) in [
            ("hybrid_alpha", self.hybrid_alpha),
            ("hybrid_beta", self.hybrid_beta),
            ("hybrid_alpha_tropics", self.hybrid_alpha_tropics),
            ("hybrid_beta_tropics", self.hybrid_beta_tropics),
            ("hybrid_alpha_sh", self.hybrid_alpha_sh),
            ("hybrid_beta_sh", self.hybrid_beta_sh),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(Error::arg(format!("{name} = {v} must be finite and >= 0")));
                }
            }
        }
        for (name, w) in self.hybrid_variable_weights.iter().flatten() {
            w.check(&format!("hybrid_variable_weights.{name}")).map_err(Error::arg)?;
        }
        for (name, factor) in [
            ("baseline_variance_factor", self.baseline_variance_factor),
            ("baseline_length_scale_factor", self.baseline_length_scale_factor),
            ("latent_variance_factor", self.latent_variance_factor),
        ] {
            if let Some(f) = factor {
                if !(f.is_finite() && f > 0.0) {
                    return Err(Error::arg(format!("{name} = {f} must be finite and > 0")));
                }
            }
        }
        if self.adaptive_window == 0 {
            return Err(Error::arg("adaptive_window must be >= 1 (cycles)"));
        }
        let [lo, hi] = self.adaptive_bounds;
        if !(lo > 0.0 && lo <= 1.0 && hi >= 1.0 && hi.is_finite()) {
            return Err(Error::arg(format!("adaptive_bounds = [{lo}, {hi}] must satisfy 0 < lo <= 1 <= hi < inf")));
        }
        if let Some(p) = &self.adaptive_state {
            if p.is_empty() {
                return Err(Error::arg("adaptive_state is empty (name the state file, or omit the key)"));
            }
            if self.bg_check == 0.0 {
                return Err(Error::arg(
                    "adaptive_state needs bg_check > 0: the sizing divides by the H B H^T in force, which the background check computes",
                ));
            }
        }
        check_mix_options(self)?;
        if self.hybrid_variables.as_ref().is_some_and(|v| v.is_empty()) {
            return Err(Error::arg("hybrid_variables is empty (name at least one variable, or omit the key)"));
        }
        if self.latent_increment == Some(LatentForm::Linear) && self.output == OutputMode::FullState {
            return Err(Error::arg("output 'full_state' needs latent_increment = 'nonlinear' (it decodes z_a itself)"));
        }
        for (name, v) in [("window_hours", self.window_hours), ("slot_hours", self.slot_hours)] {
            if let Some(v) = v {
                if !(v.is_finite() && (v > 0.0 || (v == 0.0 && name == "window_hours"))) {
                    return Err(Error::arg(format!("{name} = {v} must be finite and > 0 (window_hours may be 0)")));
                }
            }
        }
        if let Some(g) = self.error_growth_per_hour {
            if !(g.is_finite() && g >= 0.0) {
                return Err(Error::arg(format!("error_growth_per_hour = {g} must be finite and >= 0")));
            }
        }
        if self.threads == 0 {
            return Err(Error::arg("threads must be >= 1"));
        }
        if let Some(g) = self.ensemble_gamma {
            if !(g.is_finite() && g >= 0.0) {
                return Err(Error::arg(format!("ensemble_gamma = {g} must be finite and >= 0")));
            }
        }
        for (name, v) in [
            ("ensemble_localisation_km", Some(self.ensemble_localisation_km)),
            ("ensemble_localisation_model_km", self.ensemble_localisation_model_km),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return Err(Error::arg(format!("{name} = {v} must be finite and > 0 (a half-width in km)")));
                }
            }
        }
        Ok(())
    }

    /// The latent increment form in force: the option if given, else "linear" ("nonlinear" for output "full_state").
    pub fn latent_form(&self) -> LatentForm {
        match self.latent_increment {
            Some(f) => f,
            None if self.output == OutputMode::FullState => LatentForm::Nonlinear,
            None => LatentForm::Linear,
        }
    }

    /// The model-space ensemble localisation half-width in force (km): `ensemble_localisation_model_km`, else
    /// `ensemble_localisation_km`.
    pub fn ensemble_localisation_model(&self) -> f64 {
        self.ensemble_localisation_model_km.unwrap_or(self.ensemble_localisation_km)
    }

    /// The execution device, parsed (no backend resolution).
    pub fn device(&self) -> Result<Device> {
        Device::parse(&self.device)
    }

    /// Backend options (backend "auto" resolved: this may load ONNX Runtime; call it once, at open).
    pub fn exec(&self) -> Result<ExecOptions> {
        let device = self.device()?;
        let library = self.ort_library.as_ref().map(Into::into);
        let (backend, ort_library, choice) = if self.backend == "auto" {
            let (b, l, why) = crate::model::backend::resolve_auto(library, device)?;
            (b, l, Some(why))
        } else {
            (BackendKind::parse(&self.backend)?, library, None)
        };
        Ok(ExecOptions { backend, ort_library, device, threads: self.threads, cuda_tf32: self.cuda_tf32, choice })
    }

    /// The solver parameters.
    pub fn solver(&self) -> SolverParams {
        SolverParams {
            kind: self.solver,
            outer_loops: self.outer_loops,
            max_inner: self.max_inner,
            max_pairs: self.max_pairs.unwrap_or(DEFAULT_MAX_PAIRS.max(self.max_inner)),
            gradient_reduction: self.gradient_reduction,
            precondition: self.preconditioner == Preconditioner::Ritz,
            adam_steps: self.adam_steps,
            adam_lr: self.adam_lr,
            verbose: self.verbosity >= 1,
        }
    }
}

/// Checks the online-mix options ([`crate::var::mix`]).
fn check_mix_options(o: &Options) -> Result<()> {
    if o.mix_window == 0 {
        return Err(Error::arg("mix_window must be >= 1 (cycles)"));
    }
    if o.mix_every == 0 {
        return Err(Error::arg("mix_every must be >= 1 (analyses)"));
    }
    if !(o.mix_lead_hours.is_finite() && o.mix_lead_hours > 0.0) {
        return Err(Error::arg(format!("mix_lead_hours = {} must be finite and > 0", o.mix_lead_hours)));
    }
    match (&o.mix_candidates, &o.mix_state) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(Error::arg("mix_state is set without mix_candidates: give the candidate latent shares")),
        (Some(_), None) => Err(Error::arg(
            "mix_candidates needs mix_state: the file that keeps the candidates' evidence from one cycle to the next",
        )),
        (Some(c), Some(p)) => {
            if p.is_empty() {
                return Err(Error::arg("mix_state is empty (name the state file, or omit the key)"));
            }
            if o.adaptive_state.as_ref().is_some_and(|a| *a == *p || *a == format!("{p}.fields")) {
                return Err(Error::arg(format!(
                    "mix_state '{p}' and adaptive_state are the same file (or its '.fields'): give each its own"
                )));
            }
            if c.is_empty() {
                return Err(Error::arg("mix_candidates is empty (give at least one latent share in [0, 1])"));
            }
            if let Some(x) = c.iter().find(|x| !(0.0..=1.0).contains(*x)) {
                return Err(Error::arg(format!("mix_candidates: {x} is not a latent share in [0, 1]")));
            }
            for (i, x) in c.iter().enumerate() {
                if c[..i].contains(x) {
                    return Err(Error::arg(format!("mix_candidates: {x} is given twice")));
                }
            }
            Ok(())
        }
    }
}
