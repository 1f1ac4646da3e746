//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Path of a committed test fixture bundle.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A fresh, empty scratch directory under target/ (removed at the start of each run of the same test).
pub fn scratch(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-scratch").join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Copies a fixture bundle (with its sample/) into a scratch directory and returns the copy's path.
pub fn copy_fixture(name: &str, test: &str) -> PathBuf {
    let dst = scratch(test).join(name);
    copy_dir(&fixture(name), &dst);
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &dst.join(e.file_name()));
        } else {
            std::fs::copy(&p, dst.join(e.file_name())).unwrap();
        }
    }
}

/// Replaces the checksum of `file` in the manifest of `bundle` by the SHA-256 of its current content.
pub fn refresh_checksum(bundle: &Path, file: &str) {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(bundle.join(file)).unwrap();
    let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let manifest = std::fs::read_to_string(bundle.join("bundle.toml")).unwrap();
    let out: Vec<String> = manifest
        .lines()
        .map(|l| if l.starts_with(&format!("\"{file}\"")) { format!("\"{file}\" = \"{hex}\"") } else { l.to_string() })
        .collect();
    std::fs::write(bundle.join("bundle.toml"), out.join("\n") + "\n").unwrap();
}

/// The ONNX Runtime shared library of the Python `onnxruntime` wheel (installed by scripts/setup.sh).
pub fn onnxruntime_library() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, os, glob; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.1*'))[0])"])
        .output()
        .expect("python3 must be available");
    assert!(out.status.success(), "the onnxruntime Python wheel is needed for the ort backend tests (scripts/setup.sh installs it): {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Runs the latentda CLI; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_latentda")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A finished process's status, stdout and stderr, for assertion messages.
pub fn show(o: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Maximum of |a - b| / max(|b|_inf, tiny).
pub fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}
