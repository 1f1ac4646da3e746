//! Benchmarks (`cargo bench --bench analysis`): prints figures, asserts nothing about speed.
//!
//! 1. H and H^T for 10^6 observations on the T31 Gaussian grid (one core).
//! 2. Time breakdown of analyses per backend (tract in this process; ONNX Runtime in a child process, each backend
//!    in a clean process), on the reference bundle `models/speedy-t31` and its sample case if present,
//!    else on the fixture `tests/fixtures/tanh`. Medians over repeated runs.
//!
//! Environment: LATENTDA_BENCH_BUNDLE (bundle dir), LATENTDA_BENCH_REPS (default 5), ORT_DYLIB_PATH (ONNX Runtime
//! library; found through the Python wheel if unset).

use std::path::{Path, PathBuf};
use std::time::Instant;

use latentda::diag::checks::Rng;
use latentda::bundle::grid::{Grid, GridKind, Layout, Vertical, VerticalKind};
use latentda::obs::{Observation, QcFlag};
use latentda::obs::operator::ObsOperator;
use latentda::{Analyser, Method, Options};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn bench_obsop() {
    let lat: Vec<f64> = (0..48).map(|j| 88.125 - 3.75 * j as f64).collect();
    let lon: Vec<f64> = (0..96).map(|i| 3.75 * i as f64).collect();
    let grid = Grid::new(GridKind::Gaussian, lat, lon).unwrap();
    let vert = Vertical::new(VerticalKind::Sigma, vec![0.0375, 0.1, 0.2, 0.34, 0.51, 0.685, 0.835, 0.95]).unwrap();
    let vars = ["u", "v", "t", "q", "z"].iter().map(|n| (n.to_string(), "1".to_string(), 8)).chain(std::iter::once(("ps".to_string(), "Pa".to_string(), 0))).collect();
    let lay = Layout::new(grid, vert, vars).unwrap();
    let n = 1_000_000;
    let mut rng = Rng::new(1);
    let obs: Vec<Observation> = (0..n)
        .map(|i| Observation {
            var: Some(i % 6),
            var_name: String::new(),
            lat: -90.0 + 180.0 * rng.uniform(),
            lon: 360.0 * rng.uniform(),
            level: Some(0.0375 + (0.95 - 0.0375) * rng.uniform()),
            value: 0.0,
            sigma: 1.0,
            line: None,
            time: 0.0,
            malformed: None,
        })
        .collect();
    let mut flags = vec![QcFlag::Used; n];
    let t = Instant::now();
    let h = ObsOperator::build(&lay, &obs, &mut flags);
    let build = t.elapsed().as_secs_f64();
    let x = rng.normals(lay.state_len());
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
    println!("obsop: {} observations on T31 (48x96x41): build {:.4} s, H median {:.4} s, H^T median {:.4} s (one core)", h.nrows(), build, median(ta), median(tt));
}

fn bundle_and_case() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Ok(b) = std::env::var("LATENTDA_BENCH_BUNDLE") {
        let b = PathBuf::from(b);
        return (b.clone(), b.join("sample"));
    }
    let r = root.join("models/speedy-t31");
    if r.join("bundle.toml").exists() && r.join("sample/obs.csv").exists() {
        return (r.clone(), r.join("sample"));
    }
    let f = root.join("tests/fixtures/tanh");
    (f.clone(), f.join("sample"))
}

fn bench_analysis(backend: &str) {
    let (bundle, case) = bundle_and_case();
    let reps: usize = std::env::var("LATENTDA_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut o = Options { backend: backend.into(), ..Options::default() };
    if backend == "ort" {
        o.ort_library = std::env::var("ORT_DYLIB_PATH").ok();
    }
    let t = Instant::now();
    let mut a = match Analyser::open(&bundle, o) {
        Ok(a) => a,
        Err(e) => {
            println!("analysis[{backend}]: cannot open {}: {e}", bundle.display());
            return;
        }
    };
    let open_s = t.elapsed().as_secs_f64();
    let lay = a.bundle.layout.clone();
    let xb = latentda::bundle::ncio::read_state(&case.join("background.nc"), &lay).unwrap();
    let (obs, _) = latentda::obs::read_csv(&case.join("obs.csv"), &lay).unwrap();
    for method in [Method::L3dvar, Method::Var3d, Method::Hybrid] {
        if method != Method::L3dvar && (a.bundle.baseline.is_none() || backend != "tract") {
            continue;
        }
        let mut rows = Vec::new();
        for _ in 0..reps {
            let r = a.analyse(&xb, &obs, method).unwrap();
            rows.push(r.report);
        }
        let m = |f: &dyn Fn(&latentda::var::report::Report) -> f64| median(rows.iter().map(f).collect());
        let r0 = &rows[0];
        let s = r0.solver.as_ref().unwrap();
        let total = m(&|r| r.timings.total_s);
        let overhead = m(&|r| r.timings.overhead_s);
        println!(
            "analysis[{backend}] {} on {} ({} obs used, control size {}): open {:.2} s; median of {reps}: total {:.4} s = encode {:.4} + decode {:.4} ({}x) + TL {:.4} ({}x) + AD {:.4} ({}x) + own code {:.4} ({:.1}% of total; H {:.4}); |g| reduced {:.2e}-fold in {} TL/AD pairs",
            method.name(),
            a.bundle.name,
            r0.n_used,
            r0.control_size,
            open_s,
            total,
            m(&|r| r.timings.encode_s),
            m(&|r| r.timings.decode_s),
            r0.timings.n_decode,
            m(&|r| r.timings.tl_s),
            r0.timings.n_tl,
            m(&|r| r.timings.ad_s),
            r0.timings.n_ad,
            overhead,
            100.0 * overhead / total,
            m(&|r| r.timings.h_s),
            1.0 / s.grad_reduction,
            s.inner_total
        );
    }
}

fn find_ort() -> Option<String> {
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        return Some(p);
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, os, glob; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.1*'))[0])"])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    if let Ok(b) = std::env::var("LATENTDA_BENCH_CHILD_BACKEND") {
        bench_analysis(&b);
        return;
    }
    bench_obsop();
    bench_analysis("tract");
    match find_ort() {
        Some(lib) => {
            let st = std::process::Command::new(std::env::current_exe().unwrap())
                .env("LATENTDA_BENCH_CHILD_BACKEND", "ort")
                .env("ORT_DYLIB_PATH", lib)
                .status()
                .unwrap();
            assert!(st.success());
        }
        None => println!("analysis[ort]: ONNX Runtime library not found (set ORT_DYLIB_PATH)"),
    }
}
