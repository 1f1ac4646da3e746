//! Bundle: the manifest `bundle.toml`, checksum verification and the statistics files.
//!
//! The format is specified in `docs/bundle-format.md`. Opening a bundle validates everything except the ONNX graphs'
//! input/output signatures, which need an execution backend and are checked by [`crate::model::autoencoder`].

pub mod grid;
pub mod ncio;
pub mod probe;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use grid::{Grid, GridKind, Layout, Vertical, VerticalKind};

/// Bundle format version this library reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    // Both checked on the untyped table before this struct is parsed (Bundle::open); kept so the fields are known.
    #[allow(dead_code)]
    format: String,
    #[allow(dead_code)]
    format_version: u32,
    name: String,
    #[serde(default)]
    description: String,
    grid: GridSection,
    vertical: VerticalSection,
    variables: Vec<VariableSection>,
    latent: LatentSection,
    #[serde(default)]
    models: ModelsSection,
    #[serde(default)]
    statistics: StatisticsSection,
    #[serde(default)]
    hybrid: Option<HybridSection>,
    #[serde(default)]
    forecast: Option<ForecastSection>,
    /// `[probes]`: the known-answer probes of the graphs (optional; `probe`).
    #[serde(default)]
    probes: Option<ProbesSection>,
    /// `[bounds]`: variable name -> [min, max] (optional; checked by the divergence guards).
    #[serde(default)]
    bounds: BTreeMap<String, Vec<f64>>,
    checksums: BTreeMap<String, String>,
    #[serde(default)]
    provenance: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GridSection {
    kind: String,
    lat: Vec<f64>,
    lon: Vec<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerticalSection {
    coordinate: String,
    levels: Vec<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VariableSection {
    name: String,
    units: String,
    levels: usize,
    #[serde(default)]
    long_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatentSection {
    shape: Vec<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ModelsSection {
    encoder: String,
    decoder: String,
    decoder_tl: String,
    decoder_ad: String,
}

impl Default for ModelsSection {
    fn default() -> Self {
        ModelsSection {
            encoder: "encoder.onnx".into(),
            decoder: "decoder.onnx".into(),
            decoder_tl: "decoder_tl.onnx".into(),
            decoder_ad: "decoder_ad.onnx".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StatisticsSection {
    normalisation: String,
    latent_variance: String,
    baseline: Option<String>,
    baseline_variance_factor: Option<f64>,
    latent_b_variance: Option<String>,
}

/// `[hybrid]`: weights and variables of the hybrid latent-static B (all optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HybridSection {
    alpha: Option<f64>,
    beta: Option<f64>,
    variables: Option<Vec<String>>,
    alpha_tropics: Option<f64>,
    beta_tropics: Option<f64>,
    alpha_sh: Option<f64>,
    beta_sh: Option<f64>,
    band_lat: Option<[f64; 2]>,
    gamma: Option<f64>,
    variable_weights: Option<BTreeMap<String, VariableWeights>>,
}

/// `[forecast]`: the step model of latent 4D-Var (optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForecastSection {
    space: String,
    time_step_hours: f64,
    #[serde(default = "default_step")]
    step: String,
    #[serde(default = "default_step_tl")]
    step_tl: String,
    #[serde(default = "default_step_ad")]
    step_ad: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    error_growth_per_hour: Option<f64>,
    #[serde(default)]
    window_hours: Option<f64>,
}

/// `[probes]`: file and tolerance of the known-answer self-test.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbesSection {
    #[serde(default = "default_probes_file")]
    file: String,
    #[serde(default = "default_probes_tolerance")]
    tolerance: f64,
}

fn default_probes_file() -> String {
    probe::DEFAULT_FILE.into()
}
fn default_probes_tolerance() -> f64 {
    probe::DEFAULT_TOLERANCE
}

fn default_step() -> String {
    "step.onnx".into()
}
fn default_step_tl() -> String {
    "step_tl.onnx".into()
}
fn default_step_ad() -> String {
    "step_ad.onnx".into()
}

impl Default for StatisticsSection {
    fn default() -> Self {
        // `baseline` absent means: use DEFAULT_BASELINE if the bundle has it. Named explicitly, it is required.
        StatisticsSection {
            normalisation: "normalisation.nc".into(),
            latent_variance: "latent_variance.nc".into(),
            baseline: None,
            baseline_variance_factor: None,
            latent_b_variance: None,
        }
    }
}

/// Smallest normalisation std relative to |mean|: below 1e-6 (about 8 float32 steps of the mean per standard
/// deviation) a host's float32 field cannot resolve one normalised unit, and the encoder sees rounding noise.
pub const MIN_STD_OVER_MEAN: f64 = 1e-6;
/// Largest baseline (static B) standard deviation relative to the channel's normalisation std (its climatological
/// spread): a background error a thousand times the climate's variability is not one.
pub const MAX_BASELINE_SD_RATIO: f64 = 1e3;

/// Why a channel's normalisation is absurd, if it is. The graphs run in float32: |mean| must be a float32 number, std
/// a normal float32 number (neither subnormal, whose reciprocal overflows, nor beyond float32's range), and at least
/// [`MIN_STD_OVER_MEAN`] times |mean|.
fn check_normalisation(mu: f64, sd: f64) -> std::result::Result<(), String> {
    let f32max = f32::MAX as f64;
    let f32min = f32::MIN_POSITIVE as f64;
    if !mu.is_finite() || !sd.is_finite() || sd <= 0.0 {
        return Err(format!("mean {mu:e}, std {sd:e}: both must be finite and std > 0"));
    }
    if mu.abs() > f32max {
        return Err(format!(
            "mean {mu:e} is beyond the float32 range (|mean| <= {f32max:e}) of the graphs and host fields"
        ));
    }
    if !(f32min..=f32max).contains(&sd) {
        return Err(format!(
            "std {sd:e} is not a normal float32 number ({f32min:e} to {f32max:e}): normalised values (x - mean) / std \
             would overflow or lose all precision"
        ));
    }
    if sd < MIN_STD_OVER_MEAN * mu.abs() {
        return Err(format!(
            "std {sd:e} is below {MIN_STD_OVER_MEAN:e} times |mean| = {:e}: float32 fields cannot resolve one normalised unit",
            mu.abs()
        ));
    }
    Ok(())
}

/// A latent variance must be finite, > 0 and a normal float32 number (its square root scales float32 latents).
fn valid_latent_variance(v: f64) -> bool {
    v.is_finite() && (f32::MIN_POSITIVE as f64..=f32::MAX as f64).contains(&v)
}

/// The baseline statistics file a manifest that names none may still have.
const DEFAULT_BASELINE: &str = "baseline_b.nc";
/// Largest manifest read (a manifest lists the grid's latitudes and longitudes; 64 MiB is thousands of times that).
const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// Largest bundle file read into memory (the ONNX graphs): protobuf's 2 GiB limit.
const MAX_READ_BYTES: u64 = 2 << 30;

/// Which of the four ONNX graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelRole {
    /// x -> z
    Encoder,
    /// z -> x
    Decoder,
    /// (z, dz) -> dx
    DecoderTl,
    /// (z, dx) -> dz
    DecoderAd,
}

impl ModelRole {
    /// All roles in manifest order.
    pub const ALL: [ModelRole; 4] =
        [ModelRole::Encoder, ModelRole::Decoder, ModelRole::DecoderTl, ModelRole::DecoderAd];
    /// Manifest key of the role.
    pub fn key(self) -> &'static str {
        match self {
            ModelRole::Encoder => "encoder",
            ModelRole::Decoder => "decoder",
            ModelRole::DecoderTl => "decoder_tl",
            ModelRole::DecoderAd => "decoder_ad",
        }
    }
}

/// The space a bundle's step model works in (`[forecast] space`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForecastSpace {
    /// z_t -> z_{t+dt} on the latent tensor (graphs `z -> z_next`, `(z, dz) -> dz_next`, `(z, dz_next) -> dz`).
    Latent,
    /// Normalised model state xn_t -> xn_{t+dt} (graphs `x -> x_next`, `(x, dx) -> dx_next`, `(x, dx_next) -> dx`).
    Model,
}

impl ForecastSpace {
    /// Name used in the manifest and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ForecastSpace::Latent => "latent",
            ForecastSpace::Model => "model",
        }
    }
}

/// Which of the three step-model graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepRole {
    /// The step model itself.
    Step,
    /// Its tangent-linear.
    StepTl,
    /// Its adjoint.
    StepAd,
}

/// The bundle's step model (`[forecast]`), for latent 4D-Var.
#[derive(Debug, Clone)]
pub struct ForecastInfo {
    /// Latent or (normalised) model space.
    pub space: ForecastSpace,
    /// Time step of one application, hours.
    pub time_step_hours: f64,
    /// Free text (what was trained on what).
    pub description: String,
    /// Default of option `error_growth_per_hour` for this step model (0 when the table has none).
    pub error_growth_per_hour: f64,
    /// Default of option `window_hours` (method l4dvar, with this or a host's step model), if the table has one.
    pub window_hours: Option<f64>,
    files: [String; 3],
}

impl ForecastInfo {
    /// File name of one of the three graphs.
    pub fn file(&self, role: StepRole) -> &str {
        &self.files[role as usize]
    }
}

fn forecast_info(f: &ForecastSection) -> Result<ForecastInfo> {
    let space = match f.space.as_str() {
        "latent" => ForecastSpace::Latent,
        "model" => ForecastSpace::Model,
        s => return Err(Error::bundle(format!("forecast.space = '{s}', expected 'latent' or 'model'"))),
    };
    let dt = f.time_step_hours;
    if !(dt.is_finite() && dt > 0.0) {
        return Err(Error::bundle(format!("forecast.time_step_hours = {dt} must be finite and > 0")));
    }
    for (k, v) in [("step", &f.step), ("step_tl", &f.step_tl), ("step_ad", &f.step_ad)] {
        check_relative(v, &format!("forecast.{k}"))?;
    }
    let g = f.error_growth_per_hour.unwrap_or(0.0);
    if !(g.is_finite() && g >= 0.0) {
        return Err(Error::bundle(format!("forecast.error_growth_per_hour = {g} must be finite and >= 0")));
    }
    if let Some(w) = f.window_hours {
        // the slot width (a multiple of the step) is an option: multiples are checked when the window is made
        if !(w.is_finite() && w >= 0.0) {
            return Err(Error::bundle(format!("forecast.window_hours = {w} must be finite and >= 0")));
        }
    }
    Ok(ForecastInfo {
        space,
        time_step_hours: dt,
        description: f.description.clone(),
        error_growth_per_hour: g,
        window_hours: f.window_hours,
        files: [f.step.clone(), f.step_tl.clone(), f.step_ad.clone()],
    })
}

/// Model-space background-error statistics for the 3D-Var baseline.
#[derive(Debug, Clone)]
pub struct BaselineStats {
    /// Grid-point standard deviation, state layout (physical units).
    pub sd: Vec<f64>,
    /// Horizontal correlation length per channel, km.
    pub length_scale: Vec<f64>,
    /// Vertical correlation matrix (nlev x nlev, row-major) per variable; `None` for surface variables.
    pub vertical_correlation: Vec<Option<Vec<f64>>>,
}

/// The bundle's defaults for the hybrid B (`[hybrid]`; alpha 1, beta 1, all variables when absent).
#[derive(Debug, Clone, PartialEq)]
pub struct HybridDefaults {
    /// Weight of the latent B.
    pub alpha: f64,
    /// Weight of the static B.
    pub beta: f64,
    /// Variables the static part acts on; `None` = all.
    pub variables: Option<Vec<String>>,
    /// Weight of the latent B in the tropics (`alpha` is then the extratropical one); `None`: `alpha`.
    pub alpha_tropics: Option<f64>,
    /// Weight of the static B in the tropics; `None`: `beta`.
    pub beta_tropics: Option<f64>,
    /// Weight of the latent B in the southern extratropics (`alpha` is then the northern one); `None`: `alpha`.
    pub alpha_sh: Option<f64>,
    /// Weight of the static B in the southern extratropics; `None`: `beta`.
    pub beta_sh: Option<f64>,
    /// Latitudes of the ramp between tropical and extratropical weights; `None`: the options' default.
    pub band_lat: Option<[f64; 2]>,
    /// Weight gamma of an ensemble part when the host sets members (`None`: the options' default).
    pub gamma: Option<f64>,
    /// Hybrid weights per variable or variable group (`[hybrid.variable_weights]`); `None`: the same for all.
    pub variable_weights: Option<BTreeMap<String, VariableWeights>>,
}

/// The hybrid weights of one variable or variable group (`[hybrid.variable_weights.NAME]` in the bundle,
/// `hybrid_variable_weights.NAME` in the options). Each is optional: a missing `alpha` is the global (extratropical)
/// alpha; a missing `alpha_tropics` or `alpha_sh` is this entry's `alpha` when it gives one, else the global
/// tropical or southern alpha (so `q = { alpha = 0.2 }` means 0.2 at every latitude); likewise beta.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct VariableWeights {
    /// Weight of the latent B (extratropics, |lat| >= band_lat[1]; the northern ones when `alpha_sh` is given).
    pub alpha: Option<f64>,
    /// Weight of the static B (extratropics).
    pub beta: Option<f64>,
    /// Weight of the latent B in the tropics (|lat| <= band_lat[0]).
    pub alpha_tropics: Option<f64>,
    /// Weight of the static B in the tropics.
    pub beta_tropics: Option<f64>,
    /// Weight of the latent B in the southern extratropics (lat <= -band_lat[1]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha_sh: Option<f64>,
    /// Weight of the static B in the southern extratropics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_sh: Option<f64>,
}

/// The hybrid weights of one variable at each latitude class: [alpha, beta, alpha_tropics, beta_tropics, alpha_sh,
/// beta_sh] (alpha and beta: the northern extratropics, and the southern ones when no `_sh` weight differs).
pub type BandWeights = [f64; 6];

impl VariableWeights {
    /// Checks that every weight given is finite and >= 0; the message names the entry `what` and the weight.
    pub fn check(&self, what: &str) -> std::result::Result<(), String> {
        for (k, v) in [
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("alpha_tropics", self.alpha_tropics),
            ("beta_tropics", self.beta_tropics),
            ("alpha_sh", self.alpha_sh),
            ("beta_sh", self.beta_sh),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(format!("{what}.{k} = {v} must be finite and >= 0"));
                }
            }
        }
        Ok(())
    }

    /// The weights in force ([`BandWeights`]) over the global ones `global` (same order).
    pub fn resolve(&self, global: BandWeights) -> BandWeights {
        let alpha = self.alpha.unwrap_or(global[0]);
        let beta = self.beta.unwrap_or(global[1]);
        let alpha_tropics = self.alpha_tropics.or(self.alpha).unwrap_or(global[2]);
        let beta_tropics = self.beta_tropics.or(self.beta).unwrap_or(global[3]);
        let alpha_sh = self.alpha_sh.or(self.alpha).unwrap_or(global[4]);
        let beta_sh = self.beta_sh.or(self.beta).unwrap_or(global[5]);
        [alpha, beta, alpha_tropics, beta_tropics, alpha_sh, beta_sh]
    }

    /// All six weights of `w` given ([`BandWeights`] order).
    pub fn of(w: BandWeights) -> VariableWeights {
        VariableWeights {
            alpha: Some(w[0]),
            beta: Some(w[1]),
            alpha_tropics: Some(w[2]),
            beta_tropics: Some(w[3]),
            alpha_sh: Some(w[4]),
            beta_sh: Some(w[5]),
        }
    }
}

/// An opened, validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Bundle directory.
    pub dir: PathBuf,
    /// Bundle name.
    pub name: String,
    /// Free-text description.
    pub description: String,
    /// State layout.
    pub layout: Layout,
    /// Latent tensor shape (without batch).
    pub latent_shape: Vec<usize>,
    /// Normalisation mean per channel.
    pub mean: Vec<f64>,
    /// Normalisation standard deviation per channel.
    pub std: Vec<f64>,
    /// Latent background-error variance s^2, one per latent element.
    pub latent_variance: Vec<f64>,
    /// Baseline statistics, if the bundle has them.
    pub baseline: Option<BaselineStats>,
    /// The latent B's calibrated variance diag(U U^T) in model space (`[statistics] latent_b_variance`, a state file
    /// in physical units squared, for `latent_variance_factor = 1`), if the bundle has it: the background check's
    /// default sigma_b (`bg_check_sigma_b = "calibrated"`; written by `latentda sigma-b`).
    pub latent_b_variance: Option<Vec<f64>>,
    /// Factor on the baseline variances (`[statistics] baseline_variance_factor`, default 1).
    pub baseline_variance_factor: f64,
    /// Hybrid B defaults (`[hybrid]`).
    pub hybrid: HybridDefaults,
    /// The step model of latent 4D-Var (`[forecast]`), if the bundle has one.
    pub forecast: Option<ForecastInfo>,
    /// Physical bounds [min, max] per variable (`[bounds]`), checked by [`crate::var::guards`].
    pub bounds: Vec<Option<[f64; 2]>>,
    /// Provenance entries as strings.
    pub provenance: BTreeMap<String, String>,
    /// Checksums as declared (file -> hex).
    pub checksums: BTreeMap<String, String>,
    /// The known-answer probes of the graphs (`[probes]`), if the bundle has them; run by
    /// `crate::model::selftest::self_test`.
    pub probes: Option<probe::Probes>,
    /// `[probes]` file and tolerance as declared in the manifest.
    pub(crate) probes_declared: Option<(String, f64)>,
    /// File names of the statistics (normalisation, latent variance, baseline if any).
    statistics_files: Vec<String>,
    model_files: [String; 4],
    units: Vec<String>,
    long_names: Vec<Option<String>>,
    /// `dir` with symbolic links resolved: every bundle file must resolve to a regular file inside it.
    root: PathBuf,
}

/// SHA-256 of `bytes` as lowercase hex (the manifest's checksum format).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `[bounds]`: per layout variable, [min, max] with min < max (either may be infinite: a one-sided bound).
fn physical_bounds(b: &BTreeMap<String, Vec<f64>>, layout: &Layout) -> Result<Vec<Option<[f64; 2]>>> {
    let mut out = vec![None; layout.variables.len()];
    for (name, r) in b {
        let v = layout
            .var_index(name)
            .ok_or_else(|| Error::bundle(format!("bounds.{name}: '{name}' is not a bundle variable")))?;
        match r.as_slice() {
            &[lo, hi] if lo < hi => out[v] = Some([lo, hi]),
            _ => return Err(Error::bundle(format!("bounds.{name} = {r:?} must be [min, max] with min < max"))),
        }
    }
    Ok(out)
}

/// Checks a band-latitude pair [lat0, lat1]: finite, 0 <= lat0 < lat1 <= 90. Returns the reason otherwise.
pub fn check_band_lat(b: [f64; 2]) -> std::result::Result<(), String> {
    let [lat0, lat1] = b;
    if !(lat0.is_finite()
        && lat1.is_finite()
        && (0.0..=90.0).contains(&lat0)
        && (0.0..=90.0).contains(&lat1)
        && lat0 < lat1)
    {
        return Err(format!("[{lat0}, {lat1}] must satisfy 0 <= lat0 < lat1 <= 90 (degrees)"));
    }
    Ok(())
}

fn hybrid_defaults(h: Option<&HybridSection>, layout: &Layout) -> Result<HybridDefaults> {
    let (alpha, beta) = (h.and_then(|h| h.alpha).unwrap_or(1.0), h.and_then(|h| h.beta).unwrap_or(1.0));
    let (alpha_tropics, beta_tropics) = (h.and_then(|h| h.alpha_tropics), h.and_then(|h| h.beta_tropics));
    let (alpha_sh, beta_sh) = (h.and_then(|h| h.alpha_sh), h.and_then(|h| h.beta_sh));
    for (k, v) in [
        ("alpha", alpha),
        ("beta", beta),
        ("alpha_tropics", alpha_tropics.unwrap_or(0.0)),
        ("beta_tropics", beta_tropics.unwrap_or(0.0)),
        ("alpha_sh", alpha_sh.unwrap_or(0.0)),
        ("beta_sh", beta_sh.unwrap_or(0.0)),
        ("gamma", h.and_then(|h| h.gamma).unwrap_or(0.0)),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::bundle(format!("hybrid.{k} = {v} must be finite and >= 0")));
        }
    }
    let band_lat = h.and_then(|h| h.band_lat);
    if let Some(b) = band_lat {
        check_band_lat(b).map_err(|m| Error::bundle(format!("hybrid.band_lat: {m}")))?;
    }
    let variables = h.and_then(|h| h.variables.clone());
    if let Some(vs) = &variables {
        if vs.is_empty() {
            return Err(Error::bundle("hybrid.variables is empty (omit it for all variables)"));
        }
        if let Some(v) = vs.iter().find(|v| layout.var_index(v).is_none()) {
            return Err(Error::bundle(format!("hybrid.variables names '{v}', which is not a bundle variable")));
        }
    }
    let gamma = h.and_then(|h| h.gamma);
    // names are checked against the layout (variables and groups) when the settings are resolved
    let variable_weights = h.and_then(|h| h.variable_weights.clone());
    for (name, w) in variable_weights.iter().flatten() {
        w.check(&format!("hybrid.variable_weights.{name}")).map_err(Error::bundle)?;
    }
    Ok(HybridDefaults {
        alpha,
        beta,
        variables,
        alpha_tropics,
        beta_tropics,
        alpha_sh,
        beta_sh,
        band_lat,
        gamma,
        variable_weights,
    })
}

/// Opens `path` for reading only if it is a regular file: a FIFO would block the open, a device (a link to
/// /dev/zero) would read forever. Opened non-blocking and checked again on the handle, so a file swapped for a
/// FIFO between the check and the open cannot block either. Returns the file and its length.
fn open_regular(path: &Path, max: u64) -> Result<(std::fs::File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let pd = path.display();
    let meta = std::fs::metadata(path).map_err(|e| Error::bundle(format!("bundle file '{pd}' cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(Error::bundle(format!("bundle file '{pd}' is not a regular file ({:?})", meta.file_type())));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::bundle(format!("bundle file '{pd}' cannot be read: {e}")))?;
    let meta = f.metadata().map_err(|e| Error::bundle(format!("bundle file '{pd}' cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(Error::bundle(format!("bundle file '{pd}' is not a regular file")));
    }
    if meta.len() > max {
        return Err(Error::bundle(format!(
            "bundle file '{pd}' has {} bytes, more than the {max} latentda reads",
            meta.len()
        )));
    }
    Ok((f, meta.len()))
}

/// Reads a whole regular file of at most `max` bytes.
fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let (f, len) = open_regular(path, max)?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(len as usize)
        .map_err(|_| Error::bundle(format!("bundle file '{}': cannot allocate {len} bytes", path.display())))?;
    f.take(max)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::bundle(format!("bundle file '{}' cannot be read: {e}", path.display())))?;
    Ok(bytes)
}

fn check_relative(file: &str, what: &str) -> Result<()> {
    let p = Path::new(file);
    let ok = !file.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_))) && !p.is_absolute();
    if ok {
        Ok(())
    } else {
        Err(Error::bundle(format!("{what} = '{file}' must be a plain relative path inside the bundle")))
    }
}

impl Bundle {
    /// Opens and validates the bundle in `dir`: manifest, checksums of every file, statistics, and the probes'
    /// sizes (running them needs the graphs loaded: `crate::model::selftest::self_test`).
    pub fn open(dir: impl AsRef<Path>) -> Result<Bundle> {
        Self::open_inner(dir.as_ref(), true)
    }

    /// [`Bundle::open`] without reading the probes file (`[probes]` is still parsed): for the writer of the probes,
    /// which replaces them.
    pub(crate) fn open_without_probes(dir: &Path) -> Result<Bundle> {
        Self::open_inner(dir, false)
    }

    fn open_inner(dir: &Path, with_probes: bool) -> Result<Bundle> {
        let dir = dir.to_path_buf();
        let manifest_path = dir.join("bundle.toml");
        if !dir.is_dir() {
            return Err(Error::bundle(format!("bundle directory '{}' does not exist", dir.display())));
        }
        let root = dir
            .canonicalize()
            .map_err(|e| Error::bundle(format!("bundle directory '{}' cannot be resolved: {e}", dir.display())))?;
        let bytes = read_regular(&manifest_path, MAX_MANIFEST_BYTES)?;
        let text = String::from_utf8(bytes)
            .map_err(|e| Error::bundle(format!("cannot read '{}': not UTF-8 ({e})", manifest_path.display())))?;
        let invalid =
            |e: toml::de::Error| Error::bundle(format!("invalid manifest '{}': {e}", manifest_path.display()));
        let mp = manifest_path.display();
        // Format and version first, from the untyped table: a bundle of another format version need not parse as
        // this version's manifest, and "unknown field" would hide the real problem.
        let table: toml::Table = toml::from_str(&text).map_err(invalid)?;
        match table.get("format").and_then(|v| v.as_str()) {
            Some("latentda-bundle") => {}
            Some(other) => return Err(Error::bundle(format!("{mp}: format = '{other}', expected 'latentda-bundle'"))),
            None => return Err(Error::bundle(format!("{mp}: no format = 'latentda-bundle' (not a latentda bundle)"))),
        }
        match table.get("format_version").and_then(|v| v.as_integer()) {
            Some(v) if v == i64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(Error::bundle(format!(
                    "{mp}: format_version = {v} is not supported (this latentda reads version {FORMAT_VERSION})"
                )))
            }
            None => {
                return Err(Error::bundle(format!(
                    "{mp}: no integer format_version (this latentda reads bundle format version {FORMAT_VERSION})"
                )))
            }
        }
        let m: Manifest = toml::from_str(&text).map_err(invalid)?;
        let kind = match m.grid.kind.as_str() {
            "regular" => GridKind::Regular,
            "gaussian" => GridKind::Gaussian,
            k => return Err(Error::bundle(format!("{mp}: grid.kind = '{k}', expected 'regular' or 'gaussian'"))),
        };
        let grid = Grid::new(kind, m.grid.lat.clone(), m.grid.lon.clone()).map_err(|e| e.context(&mp))?;
        let vkind = match m.vertical.coordinate.as_str() {
            "sigma" => VerticalKind::Sigma,
            "pressure" => VerticalKind::Pressure,
            k => {
                return Err(Error::bundle(format!("{mp}: vertical.coordinate = '{k}', expected 'sigma' or 'pressure'")))
            }
        };
        let vertical = Vertical::new(vkind, m.vertical.levels.clone()).map_err(|e| e.context(&mp))?;
        let vars = m.variables.iter().map(|v| (v.name.clone(), v.units.clone(), v.levels)).collect();
        let layout = Layout::new(grid, vertical, vars).map_err(|e| e.context(&mp))?;
        if m.latent.shape.is_empty() || m.latent.shape.contains(&0) {
            return Err(Error::bundle(format!(
                "{mp}: latent.shape {:?} must be non-empty and positive",
                m.latent.shape
            )));
        }
        if m.latent.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none_or(|n| n > i32::MAX as usize) {
            return Err(Error::bundle(format!("{mp}: latent.shape {:?} has more than 2^31 elements", m.latent.shape)));
        }
        let models = [
            m.models.encoder.clone(),
            m.models.decoder.clone(),
            m.models.decoder_tl.clone(),
            m.models.decoder_ad.clone(),
        ];
        for (role, f) in ModelRole::ALL.iter().zip(models.iter()) {
            check_relative(f, &format!("models.{}", role.key()))?;
        }
        check_relative(&m.statistics.normalisation, "statistics.normalisation")?;
        check_relative(&m.statistics.latent_variance, "statistics.latent_variance")?;
        if let Some(f) = &m.statistics.latent_b_variance {
            check_relative(f, "statistics.latent_b_variance")?;
        }
        // A baseline named in the manifest must be there; the default one is optional.
        let baseline_file = match &m.statistics.baseline {
            Some(f) => {
                check_relative(f, "statistics.baseline")?;
                Some(f.clone())
            }
            None if dir.join(DEFAULT_BASELINE).exists() || m.checksums.contains_key(DEFAULT_BASELINE) => {
                Some(DEFAULT_BASELINE.to_string())
            }
            None => None,
        };
        for (file, hex) in &m.checksums {
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(Error::bundle(format!("{mp}: checksums.\"{file}\" is not a SHA-256 hex digest")));
            }
        }
        let hybrid = hybrid_defaults(m.hybrid.as_ref(), &layout).map_err(|e| e.context(&mp))?;
        let forecast = m.forecast.as_ref().map(forecast_info).transpose().map_err(|e| e.context(&mp))?;
        let bounds = physical_bounds(&m.bounds, &layout).map_err(|e| e.context(&mp))?;
        let probes_declared = match &m.probes {
            Some(p) => {
                check_relative(&p.file, "probes.file")?;
                let t = p.tolerance;
                if !(t.is_finite() && t > 0.0 && t <= probe::MAX_TOLERANCE) {
                    return Err(Error::bundle(format!(
                        "{mp}: probes.tolerance = {t} must be > 0 and <= {} (relative difference of a graph's output)",
                        probe::MAX_TOLERANCE
                    )));
                }
                Some((p.file.clone(), t))
            }
            None => None,
        };
        let baseline_variance_factor = m.statistics.baseline_variance_factor.unwrap_or(1.0);
        if !(baseline_variance_factor.is_finite() && baseline_variance_factor > 0.0) {
            return Err(Error::bundle(format!(
                "{mp}: statistics.baseline_variance_factor = {baseline_variance_factor} must be finite and > 0"
            )));
        }
        let mut bundle = Bundle {
            dir: dir.clone(),
            name: m.name.clone(),
            description: m.description.clone(),
            latent_shape: m.latent.shape.clone(),
            mean: vec![],
            std: vec![],
            latent_variance: vec![],
            baseline: None,
            latent_b_variance: None,
            baseline_variance_factor,
            hybrid,
            forecast,
            bounds,
            provenance: m
                .provenance
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
                .collect(),
            checksums: m.checksums.clone(),
            probes: None,
            probes_declared,
            statistics_files: [&m.statistics.normalisation, &m.statistics.latent_variance]
                .into_iter()
                .chain(baseline_file.as_ref())
                .chain(m.statistics.latent_b_variance.as_ref())
                .cloned()
                .collect(),
            model_files: models.clone(),
            units: m.variables.iter().map(|v| v.units.clone()).collect(),
            long_names: m.variables.iter().map(|v| v.long_name.clone()).collect(),
            layout,
            root,
        };
        // Every file the bundle uses must be present and match its checksum.
        for f in models.iter() {
            bundle.read_verified(f)?;
        }
        for f in bundle.forecast.iter().flat_map(|f| f.files.iter()) {
            bundle.read_verified(f)?;
        }
        let norm = bundle.verified_path(&m.statistics.normalisation)?;
        let lvar = bundle.verified_path(&m.statistics.latent_variance)?;
        let nchan = bundle.layout.nchan;
        bundle.mean = ncio::read_var_len(&norm, "mean", nchan)?;
        bundle.std = ncio::read_var_len(&norm, "std", nchan)?;
        for c in 0..nchan {
            check_normalisation(bundle.mean[c], bundle.std[c]).map_err(|why| {
                Error::bundle(format!("{}: channel {c} ({}): {why}", norm.display(), bundle.layout.channel_name(c)))
            })?;
        }
        if let Some(f) = &m.statistics.latent_b_variance {
            let path = bundle.verified_path(f)?;
            let v = ncio::read_state(&path, &bundle.layout)?;
            if let Some(i) = v.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(Error::bundle(format!(
                    "{}: latent B variance {} at {} must be finite and >= 0",
                    path.display(),
                    v[i],
                    bundle.layout.describe_index(i)
                )));
            }
            bundle.latent_b_variance = Some(v);
        }
        let nlat = bundle.latent_size();
        bundle.latent_variance = ncio::read_var_len(&lvar, "variance", nlat)?;
        if let Some((i, v)) = bundle.latent_variance.iter().enumerate().find(|(_, v)| !valid_latent_variance(**v)) {
            return Err(Error::bundle(format!(
                "{}: variance[{i}] = {v:e} must be finite and > 0, a normal float32 number (between {:e} and {:e})",
                lvar.display(),
                f32::MIN_POSITIVE,
                f32::MAX
            )));
        }
        if let Some(f) = baseline_file {
            let p = bundle.verified_path(&f)?;
            bundle.baseline = Some(bundle.read_baseline(&p)?);
        }
        if let (true, Some((file, tol))) = (with_probes, bundle.probes_declared.clone()) {
            let p = bundle.verified_path(&file)?;
            bundle.probes = Some(probe::read(&bundle, &p, &file, tol)?);
        }
        Ok(bundle)
    }

    /// The path of bundle file `file` (a plain relative path from the manifest), once it is known to have a
    /// checksum and to resolve, symbolic links followed, to a regular file inside the bundle directory. Every path
    /// key of the manifest goes through here.
    fn resolve(&self, file: &str) -> Result<PathBuf> {
        check_relative(file, "bundle file")?;
        let path = self.dir.join(file);
        let expected = self.checksums.get(file);
        if expected.is_none() {
            return Err(Error::bundle(format!(
                "bundle file '{}' has no entry in [checksums] of {}",
                file,
                self.dir.join("bundle.toml").display()
            )));
        }
        let real = path
            .canonicalize()
            .map_err(|e| Error::bundle(format!("bundle file '{}' cannot be read: {e}", path.display())))?;
        if !real.starts_with(&self.root) {
            return Err(Error::bundle(format!(
                "bundle file '{}' resolves to '{}', outside the bundle directory (files may not leave it)",
                path.display(),
                real.display()
            )));
        }
        Ok(path)
    }

    fn check_digest(&self, file: &str, path: &Path, got: String) -> Result<()> {
        let expected = &self.checksums[file];
        if !got.eq_ignore_ascii_case(expected) {
            return Err(Error::bundle(format!(
                "checksum mismatch for '{}': manifest says {expected}, file has {got} (corrupt or modified file)",
                path.display()
            )));
        }
        Ok(())
    }

    /// Reads a bundle file and checks its SHA-256 against the manifest.
    pub fn read_verified(&self, file: &str) -> Result<Vec<u8>> {
        let path = self.resolve(file)?;
        let bytes = read_regular(&path, MAX_READ_BYTES)?;
        self.check_digest(file, &path, sha256_hex(&bytes))?;
        Ok(bytes)
    }

    /// Checks a bundle file's SHA-256 (streamed, not read whole) and returns its path.
    fn verified_path(&self, file: &str) -> Result<PathBuf> {
        let path = self.resolve(file)?;
        let (f, _) = open_regular(&path, u64::MAX)?;
        let mut h = Sha256::new();
        std::io::copy(&mut std::io::BufReader::new(f), &mut h)
            .map_err(|e| Error::bundle(format!("bundle file '{}' cannot be read: {e}", path.display())))?;
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        self.check_digest(file, &path, got)?;
        Ok(path)
    }

    /// File names of every graph and statistics file the manifest names (not the probes).
    pub(crate) fn data_files(&self) -> Vec<String> {
        self.model_files
            .iter()
            .chain(self.forecast.iter().flat_map(|f| f.files.iter()))
            .chain(self.statistics_files.iter())
            .cloned()
            .collect()
    }

    /// Verified bytes of one ONNX graph.
    pub fn model_bytes(&self, role: ModelRole) -> Result<Vec<u8>> {
        self.read_verified(self.model_file(role))
    }

    /// Verified bytes of one step-model graph (`None` without a `[forecast]` table).
    pub fn step_bytes(&self, role: StepRole) -> Option<Result<Vec<u8>>> {
        self.forecast.as_ref().map(|f| self.read_verified(f.file(role)))
    }

    /// File name of one ONNX graph.
    pub fn model_file(&self, role: ModelRole) -> &str {
        &self.model_files[role as usize]
    }

    /// Number of latent elements.
    pub fn latent_size(&self) -> usize {
        self.latent_shape.iter().product()
    }

    /// The climatological mean state (each channel at its normalisation mean), state layout.
    pub fn mean_state(&self) -> Vec<f64> {
        let np = self.layout.grid.npoints();
        self.mean.iter().flat_map(|&m| std::iter::repeat_n(m, np)).collect()
    }

    /// Units of variable `v`.
    pub fn units(&self, v: usize) -> &str {
        &self.units[v]
    }

    /// Long name of variable `v`, if declared.
    pub fn long_name(&self, v: usize) -> Option<&str> {
        self.long_names[v].as_deref()
    }

    fn read_baseline(&self, p: &Path) -> Result<BaselineStats> {
        let lay = &self.layout;
        let (nchan, nlat, nlon) = (lay.nchan, lay.grid.nlat(), lay.grid.nlon());
        let sd = ncio::read_var_len(p, "sd", nchan * nlat * nlon)?;
        if let Some((i, v)) = sd.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
            return Err(Error::bundle(format!(
                "{}: sd has invalid value {v} at {}",
                p.display(),
                lay.describe_index(i)
            )));
        }
        let np = lay.grid.npoints();
        if let Some((i, v)) = sd.iter().enumerate().find(|(i, v)| **v > MAX_BASELINE_SD_RATIO * self.std[i / np]) {
            return Err(Error::bundle(format!(
                "{}: sd = {v:e} at {} is more than {MAX_BASELINE_SD_RATIO:e} times the channel's normalisation std \
                 {:e}: not a background-error standard deviation",
                p.display(),
                lay.describe_index(i),
                self.std[i / np]
            )));
        }
        let length_scale = ncio::read_var_len(p, "length_scale", nchan)?;
        if let Some((c, v)) = length_scale.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v > 0.0)) {
            return Err(Error::bundle(format!("{}: length_scale[{c}] = {v} must be > 0 km", p.display())));
        }
        let upper: Vec<usize> = (0..lay.variables.len()).filter(|&v| !lay.variables[v].is_surface()).collect();
        let nlev = lay.vertical.levels.len();
        let vc = if upper.is_empty() {
            vec![]
        } else {
            ncio::read_var_len(p, "vertical_correlation", upper.len() * nlev * nlev)?
        };
        let mut vertical_correlation = vec![None; lay.variables.len()];
        for (u, &v) in upper.iter().enumerate() {
            let m = vc[u * nlev * nlev..(u + 1) * nlev * nlev].to_vec();
            for a in 0..nlev {
                for b in 0..nlev {
                    let (x, y) = (m[a * nlev + b], m[b * nlev + a]);
                    let diag_bad = a == b && (x - 1.0).abs() > 1e-6;
                    if !x.is_finite() || (x - y).abs() > 1e-6 || diag_bad || x.abs() > 1.0 + 1e-6 {
                        return Err(Error::bundle(format!(
                            "{}: vertical_correlation of '{}' is not a correlation matrix at ({a}, {b}): {x}",
                            p.display(),
                            lay.variables[v].name
                        )));
                    }
                }
            }
            vertical_correlation[v] = Some(m);
        }
        Ok(BaselineStats { sd, length_scale, vertical_correlation })
    }
}

#[cfg(test)]
mod statistics_tests {
    use super::*;

    #[test]
    fn absurd_normalisation_is_refused() {
        for (mu, sd) in [(6.0, 9.0), (1e5, 1e3), (5e-8, 4e-7), (0.0, 1e-30), (-3.0e38, 1e33)] {
            assert!(check_normalisation(mu, sd).is_ok(), "{mu} {sd}");
        }
        for (mu, sd, needle) in [
            (1e308, 5e-324, "float32 range"),
            (1e308, 1.0, "float32 range"),
            (0.0, 5e-324, "normal float32"),
            (0.0, 1e-39, "normal float32"),
            (1.0, 1e39, "normal float32"),
            (1e5, 0.05, "below 1e-6 times |mean|"),
            (1.0, 0.0, "std > 0"),
            (1.0, -2.0, "std > 0"),
            (f64::NAN, 1.0, "finite"),
            (1.0, f64::INFINITY, "finite"),
        ] {
            let e = check_normalisation(mu, sd).unwrap_err();
            assert!(e.contains(needle), "{mu} {sd}: {e}");
        }
    }

    #[test]
    fn latent_variance_must_be_a_normal_float32() {
        for v in [1e-30, 0.03, 3.2, 1e30] {
            assert!(valid_latent_variance(v), "{v}");
        }
        for v in [0.0, -1.0, 1e-39, 1e39, f64::NAN, f64::INFINITY] {
            assert!(!valid_latent_variance(v), "{v}");
        }
    }
}
