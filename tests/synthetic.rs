//! The paper-scale bundle generator (`scripts/synthetic_bundle.py`) at a small scale: the bundle opens, passes the
//! runtime's own dot-product and Taylor tests, and analyses its sample case, on the same code path as the
//! 156 M-parameter version meant for a GPU.

mod common;

use common::*;

#[test]
fn small_scale_paper_bundle_opens_passes_its_checks_and_analyses() {
    let dir = scratch("synthetic_paper_small").join("bundle");
    let out = std::process::Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/synthetic_bundle.py"))
        .arg(&dir)
        .args(["--preset", "paper", "--scale", "0.0625", "--obs", "1000"])
        .output()
        .expect("python3 must be available");
    let log = String::from_utf8_lossy(&out.stdout);
    println!("{log}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "generator failed");
    assert!(log.contains("69 x 16 x 16") && log.contains("depth 12"), "the paper preset's shape at scale 1/16: {log}");
    let d = dir.to_str().unwrap();
    let state = dir.join("sample/background.nc");
    let (code, stdout, stderr) = cli(&["check", d, "--state", state.to_str().unwrap()]);
    println!("{stdout}{stderr}");
    assert_eq!(code, 0, "latentda check failed");
    assert!(stdout.contains("dot test") && stdout.contains("all checks passed"));
    let s = dir.join("sample");
    let an = dir.join("analysis.nc");
    let (code, stdout, stderr) = cli(&[
        "analyse",
        "--bundle",
        d,
        "--background",
        s.join("background.nc").to_str().unwrap(),
        "--obs",
        s.join("obs.csv").to_str().unwrap(),
        "--truth",
        s.join("truth.nc").to_str().unwrap(),
        "--output",
        an.to_str().unwrap(),
    ]);
    println!("{stdout}{stderr}");
    assert_eq!(code, 0);
    // J falls, and every variable's RMSE against the truth falls
    let j: Vec<f64> = stdout
        .lines()
        .find(|l| l.starts_with("J "))
        .unwrap()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(j[1] < 0.8 * j[0], "J {} -> {}", j[0], j[1]);
    let rmse_rows: Vec<&str> =
        stdout.lines().skip_while(|l| !l.starts_with("RMSE against truth")).skip(2).take(9).collect();
    assert_eq!(rmse_rows.len(), 9);
    for row in rmse_rows {
        // columns: variable, background RMSE, analysis RMSE, change in %; every number is checked, not a '-' sign
        // somewhere in the row (an RMSE printed as 3.5e-1 has one too)
        let f: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(f.len(), 4, "{row}");
        let (rb, ra): (f64, f64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        let change: f64 = f[3].trim_end_matches('%').parse().unwrap();
        assert!(ra < rb && change < 0.0, "RMSE not lowered: {row}");
        assert!((change - 100.0 * (ra / rb - 1.0)).abs() < 0.06, "change column {change} vs {ra} / {rb}: {row}");
    }
}
