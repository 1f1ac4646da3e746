//! Benchmark suite (`cargo bench --bench analysis [-- SECTION ...]`): prints figures, asserts nothing about speed.
//!
//! Sections (all by default):
//! * `obsop`    H build, H and H^T for 10^2 .. 10^6 observations on the T31 Gaussian grid (one core).
//! * `backend`  one analysis per backend (tract; ONNX Runtime when ORT_DYLIB_PATH or the `onnxruntime` Python wheel
//!   is found) and method (l3dvar, 3dvar, hybrid) on the bundle's sample case with the default options:
//!   per-phase breakdown, latentda's own share (everything outside ONNX runs), peak memory.
//! * `threads`  ONNX Runtime intra-op threads 1, 2, ... up to the core count (the solver itself is sequential).
//! * `nobs`     analysis cost against the observation count (10^2 .. 10^6 synthetic observations drawn from the
//!   sample's truth), at a fixed budget of 10 TL/AD pairs so that every row does the same model work.
//! * `window`   latent 4D-Var on the bundle's 4D sample (`sample4d/`): L3DVar with the 0 h observations, L4DVar over
//!   6 h and 12 h windows (tract, and ONNX Runtime when found): per-phase breakdown (decoder TL/AD, step model
//!   TL/AD, the background check's propagated variance, H, latentda's own code) and the trajectory held.
//!   LATENTDA_BENCH_BACKENDS (e.g. `ort`) restricts the backends.
//! * `bgcheck`  the background check's sigma_b: `calibrated` (the bundle's precomputed latent B variance, no decoder
//!   run) against `flow` (randomised at each background, option bg_check_samples TL runs), L3DVar and hybrid with
//!   ONNX Runtime (one thread) on LATENTDA_BENCH_CASE (a folder with background.nc and LATENTDA_BENCH_OBS, default
//!   obs.csv; default case: the bundle's sample); per-phase row with the diag B seconds.
//! * `grid`     analysis cost against the grid size: synthetic ViT bundles at 32 x 64, 64 x 128 and 128 x 256 made by
//!   `scripts/synthetic_bundle.py` (generated into target/bench-bundles on first use), 10 pairs.
//!
//! Every analysis runs in a child process of this binary, so that its peak memory (VmHWM) is its own and each
//! process holds one backend. Medians over LATENTDA_BENCH_REPS (default 3) analyses; the first analysis of a
//! process is not timed (lazy initialisation). Environment: LATENTDA_BENCH_BUNDLE (bundle dir, default
//! models/speedy-t31), LATENTDA_BENCH_REPS, ORT_DYLIB_PATH. This machine is noisy: read the medians, and compare
//! rows of one run only.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;
use latentda::bundle::grid::{Grid, GridKind, Layout, Vertical, VerticalKind};
use latentda::diag::checks::Rng;
use latentda::obs::operator::ObsOperator;
use latentda::obs::{Observation, QcFlag};
use latentda::{Analyser, Method, Options};

fn t31_layout() -> Layout {
    let lat: Vec<f64> = (0..48).map(|j| 88.125 - 3.75 * j as f64).collect();
    let lon: Vec<f64> = (0..96).map(|i| 3.75 * i as f64).collect();
    let grid = Grid::new(GridKind::Gaussian, lat, lon).unwrap();
    let vert = Vertical::new(VerticalKind::Sigma, vec![0.025, 0.095, 0.2, 0.34, 0.51, 0.685, 0.835, 0.95]).unwrap();
    let vars = ["u", "v", "t", "q", "z"]
        .iter()
        .map(|n| (n.to_string(), "1".to_string(), 8))
        .chain(std::iter::once(("ps".to_string(), "Pa".to_string(), 0)))
        .collect();
    Layout::new(grid, vert, vars).unwrap()
}

/// n observations at random positions, variables and levels (values 0, sigma 1).
fn random_obs(lay: &Layout, n: usize, rng: &mut Rng) -> Vec<Observation> {
    let (lv, nv) = (&lay.vertical.levels, lay.variables.len());
    let (top, bottom) = (lv[0], lv[lv.len() - 1]);
    let (lat0, lat1) = (lay.grid.lat[0], lay.grid.lat[lay.grid.nlat() - 1]);
    (0..n)
        .map(|i| {
            let v = i % nv;
            Observation {
                var: Some(v),
                var_name: lay.variables[v].name.clone(),
                lat: lat1 + (lat0 - lat1) * rng.uniform(),
                lon: 360.0 * rng.uniform(),
                level: (!lay.variables[v].is_surface()).then(|| top * (bottom / top).powf(rng.uniform())),
                value: 0.0,
                sigma: 1.0,
                line: None,
                time: 0.0,
                malformed: None,
            }
        })
        .collect()
}

fn bench_obsop() {
    println!("== obsop: observation operator on the T31 grid (48 x 96, 41 channels), one core, median of 7");
    println!("  {:>9} {:>10} {:>10} {:>10}", "obs", "build s", "H s", "H^T s");
    let lay = t31_layout();
    let mut rng = Rng::new(1);
    let x = rng.normals(lay.state_len());
    for n in [100usize, 1_000, 10_000, 100_000, 1_000_000] {
        let obs = random_obs(&lay, n, &mut rng);
        let mut flags = vec![QcFlag::Used; n];
        let t = Instant::now();
        let h = ObsOperator::build(&lay, &obs, &mut flags);
        let build = t.elapsed().as_secs_f64();
        let mut y = vec![0.0; h.nrows()];
        let mut xt = vec![0.0; lay.state_len()];
        let (mut ta, mut tt) = (vec![], vec![]);
        for _ in 0..7 {
            let t = Instant::now();
            h.apply(&x, &mut y);
            ta.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            h.adjoint(&y, &mut xt);
            tt.push(t.elapsed().as_secs_f64());
        }
        println!("  {:>9} {:>10.3e} {:>10.3e} {:>10.3e}", h.nrows(), build, median(ta), median(tt));
    }
}

/// One measurement, run in a child process: `key=value` pairs separated by `;`.
#[derive(Debug, Clone, Default)]
struct Task {
    label: String,
    bundle: PathBuf,
    backend: String,
    /// "l3dvar", "3dvar" or "hybrid" (empty: l3dvar).
    method: String,
    threads: usize,
    /// Synthetic observations drawn from the sample truth (None: the sample's obs.csv).
    nobs: Option<usize>,
    /// TL/AD-pair budget with an unreachable target (None: the default options).
    pairs: Option<usize>,
    /// 4D window in hours (method l4dvar; case `sample4d`, observations `obs4d.csv`); None: the 3D case.
    window: Option<f64>,
    /// The 4D sample's 0 h observations (`sample4d/obs.csv`) instead of the sample's.
    case4d: bool,
    /// Option bg_check_sigma_b ("" : the default).
    sigma_b: String,
    /// Case folder and observation file (LATENTDA_BENCH_CASE / _OBS); "" : the bundle's sample.
    case: String,
}

impl Task {
    fn encode(&self) -> String {
        format!(
            "label={};bundle={};backend={};method={};threads={};nobs={};pairs={};window={};case4d={};sigma_b={};case={}",
            self.label,
            self.bundle.display(),
            self.backend,
            self.method,
            self.threads,
            self.nobs.map_or("-".into(), |n| n.to_string()),
            self.pairs.map_or("-".into(), |n| n.to_string()),
            self.window.map_or("-".into(), |n| n.to_string()),
            self.case4d,
            self.sigma_b,
            self.case
        )
    }

    fn decode(s: &str) -> Task {
        let mut t = Task::default();
        for kv in s.split(';') {
            let (k, v) = kv.split_once('=').unwrap();
            match k {
                "label" => t.label = v.into(),
                "bundle" => t.bundle = v.into(),
                "backend" => t.backend = v.into(),
                "method" => t.method = v.into(),
                "threads" => t.threads = v.parse().unwrap(),
                "nobs" => t.nobs = v.parse().ok(),
                "pairs" => t.pairs = v.parse().ok(),
                "window" => t.window = v.parse().ok(),
                "case4d" => t.case4d = v == "true",
                "sigma_b" => t.sigma_b = v.into(),
                "case" => t.case = v.into(),
                _ => panic!("unknown task key {k}"),
            }
        }
        t
    }
}

const ROW_HEADER: &str = "  label                        obs used  pairs   total s  encode  decode      TL      AD  diag B  own s  own %  s/pair   peak MiB";

/// Runs the analyses of one task in this process and prints its row.
fn run_task(t: &Task) {
    let reps: usize = std::env::var("LATENTDA_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let mut toml = format!("backend = \"{}\"\nthreads = {}\n", t.backend, t.threads);
    if let Some(p) = t.pairs {
        toml += &format!("max_pairs = {p}\ngradient_reduction = 1e-12\n");
    }
    if let Some(w) = t.window {
        toml += &format!("window_hours = {w}\n");
    }
    if !t.sigma_b.is_empty() {
        toml += &format!("bg_check_sigma_b = \"{}\"\n", t.sigma_b);
    }
    let mut o = Options::from_toml(&toml).unwrap();
    if t.backend == "ort" {
        o.ort_library = std::env::var("ORT_DYLIB_PATH").ok();
    }
    let mut a = match Analyser::open(&t.bundle, o) {
        Ok(a) => a,
        Err(e) => {
            println!("  {:<28} cannot open {}: {e}", t.label, t.bundle.display());
            return;
        }
    };
    let lay = a.bundle.layout.clone();
    let four_d = t.window.is_some() || t.case4d;
    let (case, obs_file) = match t.case.split_once('|') {
        Some((dir, file)) => (PathBuf::from(dir), file.to_string()),
        None => (t.bundle.join(if four_d { "sample4d" } else { "sample" }), String::new()),
    };
    let xb = latentda::ncio::read_state(&case.join("background.nc"), &lay).unwrap();
    let obs = match t.nobs {
        None if !obs_file.is_empty() => latentda::obs::read_csv(&case.join(&obs_file), &lay).unwrap().0,
        None => {
            latentda::obs::read_csv(&case.join(if t.window.is_some() { "obs4d.csv" } else { "obs.csv" }), &lay)
                .unwrap()
                .0
        }
        Some(n) => {
            // values: H(truth) + N(0, sigma^2), sigma = 0.3 channel sd of the normalisation
            let xt = latentda::ncio::read_state(&case.join("truth.nc"), &lay).unwrap();
            let mut rng = Rng::new(7);
            let mut obs = random_obs(&lay, n, &mut rng);
            let mut flags = vec![QcFlag::Used; n];
            let h = ObsOperator::build(&lay, &obs, &mut flags);
            let mut y = vec![0.0; h.nrows()];
            h.apply(&xt, &mut y);
            for (r, &i) in h.rows.iter().enumerate() {
                let o = &mut obs[i];
                let v = &lay.variables[o.var.unwrap()];
                let c = v.first_channel + if v.is_surface() { 0 } else { v.nlev / 2 };
                o.sigma = 0.3 * a.bundle.std[c];
                o.value = y[r] + o.sigma * rng.normal();
            }
            obs
        }
    };
    let method = Method::parse(if t.method.is_empty() { "l3dvar" } else { &t.method }).unwrap();
    if method != Method::L3dvar && a.bundle.baseline.is_none() {
        println!("  {:<28} skipped: the bundle has no baseline B", t.label);
        return;
    }
    let _ = a.analyse(&xb, &obs, method).unwrap(); // warm-up, not timed
                                                   // bgcheck: every analysis a new background (x_b (1 + 1e-6 k)), as in cycling, so no cached diag B is reused
    let xb_of = |k: usize| -> Vec<f64> {
        if t.sigma_b.is_empty() {
            xb.clone()
        } else {
            xb.iter().map(|v| v * (1.0 + 1e-6 * (k + 1) as f64)).collect()
        }
    };
    let rows: Vec<_> = (0..reps).map(|k| a.analyse(&xb_of(k), &obs, method).unwrap().report).collect();
    let m = |f: &dyn Fn(&latentda::var::report::Report) -> f64| median(rows.iter().map(f).collect());
    if four_d {
        let r0 = &rows[0];
        let (s, tm) = (r0.solver.as_ref().unwrap(), &r0.timings);
        let own = m(&|r| r.timings.overhead_s);
        let total = m(&|r| r.timings.total_s);
        println!(
            "  {:<22} {:>6} {:>5} {:>8.2} {:>6.2} ({:>3}) {:>6.2} ({:>3}) {:>6.2} ({:>3}) {:>6.2} ({:>3}) {:>6.2} ({:>3}) {:>6.3} {:>6.3} {:>5.1}% {:>7.1} {:>8.0}",
            t.label,
            r0.n_used,
            s.inner_total,
            total,
            m(&|r| r.timings.tl_s),
            tm.n_tl,
            m(&|r| r.timings.ad_s),
            tm.n_ad,
            m(&|r| r.timings.step_tl_s),
            tm.n_step_tl,
            m(&|r| r.timings.step_ad_s),
            tm.n_step_ad,
            m(&|r| r.timings.variance_s),
            tm.n_variance,
            m(&|r| r.timings.h_s),
            own,
            100.0 * own / total,
            r0.window.as_ref().map_or(0.0, |w| w.trajectory_bytes as f64 / 1048576.0),
            peak_rss_mib().unwrap_or(f64::NAN)
        );
        return;
    }
    let r0 = &rows[0];
    let s = r0.solver.as_ref().unwrap();
    let total = m(&|r| r.timings.total_s);
    let own = m(&|r| r.timings.overhead_s);
    let per_pair = m(&|r| (r.timings.tl_s + r.timings.ad_s) / r.timings.n_tl.max(1) as f64);
    println!(
        "  {:<28} {:>8} {:>6} {:>9.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>6.3} {:>5.1}% {:>7.4} {:>10.0}",
        t.label,
        r0.n_used,
        s.inner_total,
        total,
        m(&|r| r.timings.encode_s),
        m(&|r| r.timings.decode_s),
        m(&|r| r.timings.tl_s),
        m(&|r| r.timings.ad_s),
        m(&|r| r.timings.variance_s),
        own,
        100.0 * own / total,
        per_pair,
        peak_rss_mib().unwrap_or(f64::NAN)
    );
}

fn spawn(t: &Task, ort: Option<&str>) {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.env("LATENTDA_BENCH_TASK", t.encode());
    if let Some(l) = ort {
        c.env("ORT_DYLIB_PATH", l);
    }
    let st = c.status().unwrap();
    if !st.success() {
        println!("  {:<28} FAILED ({st})", t.label);
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// A synthetic bundle of scripts/synthetic_bundle.py, generated on first use.
fn synthetic(nlat: usize, nlon: usize) -> Option<PathBuf> {
    let dir = root().join(format!("target/bench-bundles/vit-{nlat}x{nlon}"));
    if !dir.join("bundle.toml").exists() {
        let st = std::process::Command::new("python3")
            .arg(root().join("scripts/synthetic_bundle.py"))
            .arg(&dir)
            .args([
                "--nlat",
                &nlat.to_string(),
                "--nlon",
                &nlon.to_string(),
                "--dim",
                "64",
                "--depth",
                "2",
                "--heads",
                "4",
            ])
            .args(["--latent-channels", "16", "--obs", "5000"])
            .status()
            .ok()?;
        if !st.success() {
            return None;
        }
    }
    Some(dir)
}

fn main() {
    if let Ok(t) = std::env::var("LATENTDA_BENCH_TASK") {
        run_task(&Task::decode(&t));
        return;
    }
    let sections = bench_args();
    let want = |s: &str| sections.is_empty() || sections.iter().any(|x| x == s);
    let bundle = default_bundle();
    let ort = find_ort();
    let desc = |b: &Path| {
        let text = std::fs::read_to_string(b.join("bundle.toml")).unwrap_or_default();
        text.lines().find(|l| l.starts_with("description")).map(|l| l.to_string()).unwrap_or_default()
    };
    println!("machine: {} cores; bundle {} ({})", cores(), bundle.display(), desc(&bundle));
    println!("ONNX Runtime: {}", ort.as_deref().unwrap_or("not found (set ORT_DYLIB_PATH)"));
    if want("obsop") {
        bench_obsop();
    }
    let task = |label: &str, b: &Path, backend: &str| Task {
        label: label.into(),
        bundle: b.to_path_buf(),
        backend: backend.into(),
        threads: 1,
        ..Task::default()
    };
    if want("backend") {
        println!("\n== backend: one analysis of the sample case per method with the default options (threads 1)");
        println!("{ROW_HEADER}");
        for method in ["l3dvar", "3dvar", "hybrid"] {
            spawn(&Task { method: method.into(), ..task(&format!("tract {method}"), &bundle, "tract") }, None);
            if let Some(l) = ort.as_deref() {
                spawn(&Task { method: method.into(), ..task(&format!("ort {method}"), &bundle, "ort") }, Some(l));
            }
        }
    }
    if want("threads") {
        if let Some(l) = ort.as_deref() {
            println!(
                "\n== threads: ONNX Runtime intra-op threads (the solver and H are sequential; 1 = bit-reproducible)"
            );
            println!("{ROW_HEADER}");
            let mut n = 1;
            while n <= cores() {
                spawn(&Task { threads: n, ..task(&format!("ort threads={n}"), &bundle, "ort") }, Some(l));
                n *= 2;
            }
        }
    }
    if want("nobs") {
        println!("\n== nobs: analysis cost against the observation count (synthetic obs from the sample truth, 10 TL/AD pairs, tract)");
        println!("{ROW_HEADER}");
        for n in [100usize, 1_000, 10_000, 100_000, 1_000_000] {
            spawn(&Task { nobs: Some(n), pairs: Some(10), ..task(&format!("obs={n}"), &bundle, "tract") }, None);
        }
    }
    if want("window") {
        println!("\n== window: the 4D sample (sample4d/), L3DVar with the 0 h observations, L4DVar over 6 h and 12 h (threads 1)");
        println!("  seconds (model runs): decoder TL, AD; step model TL, AD; diag B of the background check (TL runs)");
        println!(
            "  {:<22} {:>6} {:>5} {:>8} {:>12} {:>12} {:>12} {:>12} {:>12} {:>6} {:>6} {:>6} {:>7} {:>8}",
            "label",
            "used",
            "pairs",
            "total s",
            "dec TL",
            "dec AD",
            "step TL",
            "step AD",
            "diag B",
            "H s",
            "own s",
            "own",
            "traj MB",
            "peak MiB"
        );
        // LATENTDA_BENCH_BACKENDS=ort skips tract (a 12 h window takes minutes with it on 2 cores)
        let only = std::env::var("LATENTDA_BENCH_BACKENDS").unwrap_or_default();
        let backends: Vec<(&str, Option<&str>)> = std::iter::once(("tract", None))
            .chain(ort.as_deref().map(|l| ("ort", Some(l))))
            .filter(|(b, _)| only.is_empty() || only.split(',').any(|o| o == *b))
            .collect();
        for (backend, lib) in backends {
            spawn(&Task { case4d: true, ..task(&format!("{backend} l3dvar 0 h obs"), &bundle, backend) }, lib);
            for w in [6.0, 12.0] {
                let label = format!("{backend} l4dvar {w} h");
                spawn(&Task { method: "l4dvar".into(), window: Some(w), ..task(&label, &bundle, backend) }, lib);
            }
        }
    }
    if want("bgcheck") {
        if let Some(l) = ort.as_deref() {
            let dir =
                std::env::var("LATENTDA_BENCH_CASE").unwrap_or_else(|_| bundle.join("sample").display().to_string());
            let file = std::env::var("LATENTDA_BENCH_OBS").unwrap_or_else(|_| "obs.csv".into());
            println!("\n== bgcheck: sigma_b of the background check, calibrated against flow, on {dir}/{file} (ONNX Runtime, threads 1)");
            println!("  (the flow rows' TL column includes none of the diag B runs: see 'diag B' in the report, timings.variance_s)");
            println!("{ROW_HEADER}");
            for method in ["l3dvar", "hybrid"] {
                for sb in ["calibrated", "flow"] {
                    let label = format!("ort {method} {sb}");
                    spawn(
                        &Task {
                            method: method.into(),
                            sigma_b: sb.into(),
                            case: format!("{dir}|{file}"),
                            ..task(&label, &bundle, "ort")
                        },
                        Some(l),
                    );
                }
            }
        }
    }
    if want("grid") {
        println!("\n== grid: synthetic ViT bundles (width 64, depth 2, 69 channels, 5000 obs), 10 TL/AD pairs");
        println!("{ROW_HEADER}");
        for (nlat, nlon) in [(32, 64), (64, 128), (128, 256)] {
            match synthetic(nlat, nlon) {
                Some(b) => {
                    spawn(&Task { pairs: Some(10), ..task(&format!("tract {nlat}x{nlon}"), &b, "tract") }, None);
                    if let Some(l) = ort.as_deref() {
                        spawn(&Task { pairs: Some(10), ..task(&format!("ort {nlat}x{nlon}"), &b, "ort") }, Some(l));
                    }
                }
                None => println!(
                    "  {nlat}x{nlon}: scripts/synthetic_bundle.py failed (needs numpy, onnx, netCDF4, onnxruntime)"
                ),
            }
        }
    }
}
