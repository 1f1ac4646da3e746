//! Helpers shared by the benchmarks: medians, peak memory, the ONNX Runtime library, case folders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Median of a non-empty sample.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Peak resident memory of this process in MiB (VmHWM from /proc/self/status; None where unavailable).
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The ONNX Runtime shared library: ORT_DYLIB_PATH, else the `onnxruntime` Python wheel's `capi/libonnxruntime.so.1*`.
pub fn find_ort() -> Option<String> {
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        return Some(p);
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, os, glob; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.1*'))[0])"])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The bundle to benchmark: LATENTDA_BENCH_BUNDLE, else the reference bundle when it has a sample case, else the
/// tanh fixture.
pub fn default_bundle() -> PathBuf {
    if let Ok(b) = std::env::var("LATENTDA_BENCH_BUNDLE") {
        return PathBuf::from(b);
    }
    let r = root().join("models/speedy-t31");
    if r.join("bundle.toml").exists() && r.join("sample/obs.csv").exists() {
        return r;
    }
    root().join("tests/fixtures/tanh")
}

/// One analysis case: a background, a truth (optional) and one observation file.
#[derive(Debug, Clone)]
pub struct Case {
    /// Label: folder/obs file.
    pub name: String,
    /// background.nc
    pub background: PathBuf,
    /// truth.nc, if present.
    pub truth: Option<PathBuf>,
    /// An observation CSV.
    pub obs: PathBuf,
}

/// The cases of a folder: one per `obs*.csv` file, sharing background.nc and truth.nc.
pub fn cases_in(dir: &Path) -> Vec<Case> {
    let mut obs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    n.starts_with("obs") && n.ends_with(".csv") && !n.contains("expected")
                })
                .collect()
        })
        .unwrap_or_default();
    obs.sort();
    let truth = dir.join("truth.nc");
    let label = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    obs.into_iter()
        .map(|o| Case {
            name: format!("{label}/{}", o.file_name().unwrap().to_string_lossy()),
            background: dir.join("background.nc"),
            truth: truth.exists().then(|| truth.clone()),
            obs: o,
        })
        .collect()
}

/// Command-line arguments of a `harness = false` bench, without the flags cargo adds (`--bench`).
pub fn bench_args() -> Vec<String> {
    std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect()
}
