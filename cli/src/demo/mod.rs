//! The demonstration behind `latentda demo`: what the latent B buys on one case, against the model-space baseline.
//!
//! On a case folder (`background.nc`, `truth.nc`, `obs.csv`) it runs the model-space 3D-Var baseline, L3DVar and
//! the hybrid with the same options, observations and solver; scores each analysis against the truth
//! (area-weighted RMSE per variable), compares the balance of each increment with that of the true background
//! error, repeats a single-observation experiment per method ([`single_obs`]), and writes the analyses, their JSON
//! reports, one comparison table ([`table`]) and map figures ([`figures`]) into an output folder.
//!
//! When the bundle has a step model (`[forecast]`) and the case a 4D observation file (`obs4d.csv`: observations
//! with a `time` column over a window starting at the analysis time), it adds latent 4D-Var with all of them next
//! to the 3D methods, which use the analysis-time observations (`obs.csv`) alone.

pub mod figures;
pub mod single_obs;
pub mod table;

use std::path::{Path, PathBuf};
use std::time::Instant;

use latentda::bundle::grid::Layout;
use latentda::bundle::ncio;
use latentda::diag::{balance, verify};
use latentda::error::{Error, Result};
use latentda::obs::{self, Observation, RowProblem};
use latentda::var::analysis::{Analyser, Analysis};
use latentda::var::options::{Method, Options, OutputMode};
use latentda::var::report::BalanceStats;

/// Methods in the order the demo runs and prints them: the baseline first.
pub const METHODS: [Method; 3] = [Method::Var3d, Method::L3dvar, Method::Hybrid];

/// Longitude of the single-observation experiment (degrees east): mid-Pacific, where 45N and 45S are both over the
/// ocean and inside one 30-degree patch of the reference bundle's latent grid.
pub const SINGLE_OBS_LON: f64 = 200.0;

/// What to run and where to write.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Case folder with `background.nc` and `truth.nc`.
    pub case: PathBuf,
    /// Observation file (default: `obs.csv` in the case folder).
    pub obs: Option<PathBuf>,
    /// Output folder (created if needed).
    pub out: PathBuf,
    /// Options shared by every analysis.
    pub options: Options,
    /// Observations over a window for latent 4D-Var (default: `obs4d.csv` in the case folder, when it exists).
    pub obs4d: Option<PathBuf>,
    /// Draw the PNG figures.
    pub figures: bool,
}

impl DemoConfig {
    /// The bundle's `sample` case, default options, figures on.
    pub fn new(bundle: impl Into<PathBuf>, out: impl Into<PathBuf>) -> DemoConfig {
        let bundle = bundle.into();
        DemoConfig {
            case: bundle.join("sample"),
            bundle,
            obs: None,
            out: out.into(),
            options: Options::default(),
            obs4d: None,
            figures: true,
        }
    }

    /// The observation file in use.
    pub fn obs_path(&self) -> PathBuf {
        self.obs.clone().unwrap_or_else(|| self.case.join("obs.csv"))
    }

    /// The 4D observation file in use.
    pub fn obs4d_path(&self) -> PathBuf {
        self.obs4d.clone().unwrap_or_else(|| self.case.join("obs4d.csv"))
    }
}

/// One method's analysis of the case.
#[derive(Debug, Clone)]
pub struct MethodRun {
    /// Method.
    pub method: Method,
    /// The analysis with its QC flags and report.
    pub analysis: Analysis,
    /// Area-weighted RMSE of the analysis against the truth, per variable.
    pub rmse: Vec<f64>,
}

/// Everything the demo computed.
#[derive(Debug, Clone)]
pub struct Demo {
    /// Bundle name.
    pub bundle: String,
    /// Case folder.
    pub case: PathBuf,
    /// Observation file.
    pub obs_path: PathBuf,
    /// Output folder.
    pub out: PathBuf,
    /// State layout.
    pub layout: Layout,
    /// Units per variable.
    pub units: Vec<String>,
    /// Options used.
    pub options: Options,
    /// Background.
    pub x_b: Vec<f64>,
    /// Truth.
    pub truth: Vec<f64>,
    /// Observations as read.
    pub obs: Vec<Observation>,
    /// The 4D observation file, its rows and its latest time in hours, when latent 4D-Var ran.
    pub obs4d: Option<(PathBuf, usize, f64)>,
    /// The observations latent 4D-Var used (empty when it did not run).
    pub obs4d_rows: Vec<Observation>,
    /// Malformed observation rows.
    pub input_problems: Vec<RowProblem>,
    /// Area-weighted RMSE of the background against the truth, per variable.
    pub rmse_background: Vec<f64>,
    /// Balance of the true background error, truth - background (same diagnostic as the increments').
    pub truth_balance: Option<BalanceStats>,
    /// The analyses, in [`METHODS`] order (methods the bundle cannot run are in `skipped`).
    pub runs: Vec<MethodRun>,
    /// Methods not run, with the reason.
    pub skipped: Vec<(Method, String)>,
    /// Single-observation experiments, one per method run.
    pub single: Vec<single_obs::Experiment>,
    /// Figures written.
    pub figures: Vec<PathBuf>,
    /// Other files written (analyses, reports, table).
    pub files: Vec<PathBuf>,
    /// Backend and device reported by the analyses.
    pub backend: String,
    /// Device.
    pub device: String,
    /// Seconds to open the bundle (validation, checksums, ONNX sessions).
    pub open_s: f64,
    /// Seconds for the single-observation experiments.
    pub single_s: f64,
    /// Seconds to draw the figures.
    pub figures_s: f64,
    /// Whole demo.
    pub total_s: f64,
}

fn read_case(path: &Path, layout: &Layout, what: &str) -> Result<Vec<f64>> {
    if !path.is_file() {
        return Err(Error::io(format!("demo case: {what} file '{}' does not exist", path.display())));
    }
    ncio::read_state(path, layout)
}

/// Runs the demo and writes its files; the caller prints [`Demo::table`].
pub fn run(cfg: &DemoConfig) -> Result<Demo> {
    let t0 = Instant::now();
    let mut a = Analyser::open(&cfg.bundle, cfg.options.clone())?;
    let open_s = t0.elapsed().as_secs_f64();
    let layout = a.bundle.layout.clone();
    let x_b = read_case(&cfg.case.join("background.nc"), &layout, "background")?;
    let truth = read_case(&cfg.case.join("truth.nc"), &layout, "truth")?;
    let obs_path = cfg.obs_path();
    let (obs, input_problems) = obs::read_csv(&obs_path, &layout)?;
    std::fs::create_dir_all(&cfg.out)
        .map_err(|e| Error::io(format!("cannot create output folder '{}': {e}", cfg.out.display())))?;
    let units: Vec<String> = (0..layout.variables.len()).map(|v| a.bundle.units(v).to_string()).collect();
    let mut demo = Demo {
        bundle: a.bundle.name.clone(),
        case: cfg.case.clone(),
        obs_path,
        out: cfg.out.clone(),
        rmse_background: verify::weighted_rmse_by_var(&layout, &x_b, &truth),
        truth_balance: balance::diagnose(&layout, &x_b, &truth),
        layout,
        units,
        options: cfg.options.clone(),
        x_b,
        truth,
        obs,
        obs4d: None,
        obs4d_rows: Vec::new(),
        input_problems,
        runs: Vec::new(),
        skipped: Vec::new(),
        single: Vec::new(),
        figures: Vec::new(),
        files: Vec::new(),
        backend: format!("{} ({})", a.ae.info.backend, a.ae.info.detail),
        device: cfg.options.device()?.name(),
        open_s,
        single_s: 0.0,
        figures_s: 0.0,
        total_s: 0.0,
    };
    for method in METHODS {
        if method != Method::L3dvar && a.bundle.baseline.is_none() {
            demo.skipped.push((method, format!("bundle '{}' has no baseline B statistics", demo.bundle)));
            continue;
        }
        let mut analysis = a.analyse_with(&demo.x_b, &demo.obs, method, OutputMode::Analysis)?;
        analysis.report.input_problems = demo.input_problems.clone();
        save_run(cfg, &mut demo, method, analysis)?;
    }
    let obs4d_path = cfg.obs4d_path();
    if a.bundle.forecast.is_none() {
        demo.skipped.push((Method::L4dvar, format!("bundle '{}' has no step model ([forecast])", demo.bundle)));
    } else if !obs4d_path.is_file() {
        demo.skipped.push((Method::L4dvar, format!("no 4D observation file '{}'", obs4d_path.display())));
    } else {
        let (obs4d, problems) = obs::read_csv(&obs4d_path, &demo.layout)?;
        let latest = obs4d.iter().map(|o| o.time).filter(|t| t.is_finite()).fold(0.0, f64::max);
        let mut analysis = a.analyse_with(&demo.x_b, &obs4d, Method::L4dvar, OutputMode::Analysis)?;
        analysis.report.input_problems = problems;
        save_run(cfg, &mut demo, Method::L4dvar, analysis)?;
        demo.obs4d = Some((obs4d_path, obs4d.len(), latest));
        demo.obs4d_rows = obs4d;
    }
    let t_single = Instant::now();
    for r in demo.runs.iter().filter(|r| r.method != Method::L4dvar) {
        if let Some(e) = single_obs::run(&mut a, &demo.x_b, r.method, SINGLE_OBS_LON)? {
            demo.single.push(e);
        }
    }
    demo.single_s = t_single.elapsed().as_secs_f64();
    if cfg.figures {
        let t_fig = Instant::now();
        demo.figures = figures::draw_all(&demo)?;
        demo.figures_s = t_fig.elapsed().as_secs_f64();
    }
    demo.total_s = t0.elapsed().as_secs_f64();
    let table_path = cfg.out.join("table.txt");
    std::fs::write(&table_path, demo.table())
        .map_err(|e| Error::io(format!("cannot write '{}': {e}", table_path.display())))?;
    demo.files.push(table_path);
    Ok(demo)
}

/// Writes one method's analysis and report into the output folder and scores it against the truth.
fn save_run(cfg: &DemoConfig, demo: &mut Demo, method: Method, analysis: Analysis) -> Result<()> {
    let nc = cfg.out.join(format!("analysis_{}.nc", method.name()));
    let title = format!("latentda demo: {} analysis of {}", method.name(), cfg.case.join("background.nc").display());
    let units = |v: usize| demo.units[v].clone();
    ncio::write_state(&nc, &demo.layout, &units, &analysis.analysis, &title)?;
    let json = cfg.out.join(format!("report_{}.json", method.name()));
    std::fs::write(&json, analysis.report.to_json())
        .map_err(|e| Error::io(format!("cannot write report '{}': {e}", json.display())))?;
    demo.files.extend([nc, json]);
    demo.backend = format!("{} ({})", analysis.report.backend, analysis.report.backend_detail);
    demo.device = analysis.report.device.clone();
    let rmse = verify::weighted_rmse_by_var(&demo.layout, &analysis.analysis, &demo.truth);
    demo.runs.push(MethodRun { method, analysis, rmse });
    Ok(())
}
