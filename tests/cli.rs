//! The `latentda` command line, end to end, and the ONNX Runtime backend through the binary (each run in a fresh
//! process with exactly the backend it asks for).

mod common;

use common::*;

fn read(path: &std::path::Path, bundle: &std::path::Path) -> Vec<f64> {
    let b = latentda::bundle::Bundle::open(bundle).unwrap();
    latentda::bundle::ncio::read_state(path, &b.layout).unwrap()
}

fn analyse_args<'a>(bundle: &'a str, sample: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "analyse",
        "--bundle",
        bundle,
        "--background",
        &format!("{sample}/background.nc"),
        "--obs",
        &format!("{sample}/obs.csv"),
        "--output",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run(args: &[String]) -> (i32, String, String) {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    cli(&a)
}

#[test]
fn info_and_check_on_a_fixture_bundle() {
    let b = fixture("tanh");
    let (code, out, err) = cli(&["info", b.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let fc = "forecast    latent space, time step 6 h: step, step_tl, step_ad signatures OK";
    for s in [
        "Gaussian 8 x 16",
        "u ",
        "ps",
        "latent      shape [4, 2, 4] = 32",
        "signatures OK",
        "11 files verified",
        fc,
        "self-test   passed: 7 graphs",
    ] {
        assert!(out.contains(s), "info output lacks '{s}':\n{out}");
    }
    let state = b.join("sample/background.nc");
    let (code, out, err) = cli(&["check", b.to_str().unwrap(), "--state", state.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("all checks passed") && out.contains("reconstruction RMSE"), "{out}");
}

#[test]
fn analyse_end_to_end_writes_analysis_and_report() {
    let dir = scratch("cli_e2e");
    let b = fixture("tanh");
    let s = b.join("sample");
    let out = dir.join("an.nc");
    let rep = dir.join("report.json");
    let mut args = analyse_args(
        b.to_str().unwrap(),
        s.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--report", rep.to_str().unwrap(), "--truth"],
    );
    args.push(s.join("truth.nc").to_str().unwrap().to_string());
    args.push("-v".into());
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("iter 1 0 J= ")), "iteration lines on stderr:\n{stderr}");
    assert!(stdout.contains("RMSE against truth"), "{stdout}");
    let xa = read(&out, &b);
    let xb = read(&s.join("background.nc"), &b);
    let xt = read(&s.join("truth.nc"), &b);
    let err = |x: &[f64]| x.iter().zip(&xt).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
    assert!(err(&xa) < 0.5 * err(&xb));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert_eq!(json["n_obs"], 63);
    assert_eq!(json["qc_counts"]["unknown_variable"], 1);
    assert_eq!(json["output"], "analysis");
    assert!(json["timings"]["total_s"].as_f64().unwrap() > 0.0);
    assert_eq!(json["variables"].as_array().unwrap().len(), 3);
}

#[test]
fn malformed_rows_are_reported_by_line_and_the_analysis_still_runs() {
    let dir = scratch("cli_rows");
    let b = fixture("tanh");
    let s = b.join("sample");
    let obs = dir.join("obs.csv");
    let mut text = std::fs::read_to_string(s.join("obs.csv")).unwrap();
    text.push_str("t,12,oops,0.5,250,1\n");
    std::fs::write(&obs, &text).unwrap();
    let out = dir.join("an.nc");
    let (code, _, err) = cli(&[
        "analyse",
        "--bundle",
        b.to_str().unwrap(),
        "--background",
        s.join("background.nc").to_str().unwrap(),
        "--obs",
        obs.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let line = text.lines().count();
    assert_eq!(code, 3, "exit status 3 signals malformed rows: {err}");
    assert!(err.contains(&format!("line {line}")) && err.contains("'lon'"), "{err}");
    assert!(out.exists());
}

#[test]
fn failures_write_nothing() {
    let dir = scratch("cli_nothing");
    let b = fixture("tanh");
    let s = b.join("sample");
    let out = dir.join("an.nc");
    // Missing bundle, unknown backend, CUDA with tract, background with the wrong grid.
    let cases: Vec<(Vec<String>, &str)> = vec![
        (analyse_args("/nonexistent/bundle", s.to_str().unwrap(), out.to_str().unwrap(), &[]), "does not exist"),
        (
            analyse_args(b.to_str().unwrap(), s.to_str().unwrap(), out.to_str().unwrap(), &["--backend", "gpu"]),
            "backend 'gpu'",
        ),
        (
            analyse_args(b.to_str().unwrap(), s.to_str().unwrap(), out.to_str().unwrap(), &["--device", "cuda:0"]),
            "cuda:0",
        ),
        (analyse_args(fixture("linear").to_str().unwrap(), s.to_str().unwrap(), out.to_str().unwrap(), &[]), "lat"),
    ];
    for (args, msg) in cases {
        let (code, _, err) = run(&args);
        assert_ne!(code, 0);
        assert!(err.contains(msg), "expected '{msg}' in: {err}");
        assert!(!out.exists(), "a failed run must not write {}", out.display());
    }
}

#[test]
fn withheld_observations_are_compared_not_assimilated() {
    let dir = scratch("cli_withheld");
    let b = fixture("tanh");
    let s = b.join("sample");
    let text = std::fs::read_to_string(s.join("obs.csv")).unwrap();
    let (head, rows) = text.split_once('\n').unwrap();
    let pick = |odd: usize| {
        let kept: Vec<&str> = rows.lines().enumerate().filter(|(i, _)| i % 2 == odd).map(|(_, l)| l).collect();
        format!("{head}\n{}\n", kept.join("\n"))
    };
    let (used, held) = (dir.join("used.csv"), dir.join("held.csv"));
    std::fs::write(&used, pick(0)).unwrap();
    std::fs::write(&held, pick(1)).unwrap();
    let n_held = pick(1).lines().count() - 1;
    let analyse = |extra: &[&str], out: &std::path::Path| {
        let mut a: Vec<String> =
            ["analyse", "--bundle", b.to_str().unwrap(), "--background"].iter().map(|x| x.to_string()).collect();
        a.push(s.join("background.nc").to_str().unwrap().into());
        a.extend(["--obs".into(), used.to_str().unwrap().into(), "--output".into(), out.to_str().unwrap().into()]);
        a.extend(extra.iter().map(|x| x.to_string()));
        run(&a)
    };
    let (plain, with) = (dir.join("plain.nc"), dir.join("with.nc"));
    let rep = dir.join("report.json");
    let (code, _, err) = analyse(&[], &plain);
    assert_eq!(code, 0, "{err}");
    let (code, stdout, err) =
        analyse(&["--withheld", held.to_str().unwrap(), "--report", rep.to_str().unwrap()], &with);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("withheld observations:"), "{stdout}");
    // withheld observations never enter the analysis
    assert_eq!(read(&plain, &b), read(&with, &b));
    // the report's section is what the library computes from the written fields
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    let w: latentda::var::withheld::Withheld = serde_json::from_value(json["withheld"].clone()).unwrap();
    assert_eq!(w.n_obs, n_held);
    assert_eq!(json["n_obs"].as_u64().unwrap() as usize, rows.lines().count() - n_held);
    let bundle = latentda::bundle::Bundle::open(&b).unwrap();
    let (obs, _) = latentda::obs::read_csv(&held, &bundle.layout).unwrap();
    let again = latentda::var::withheld::Withheld::evaluate(
        &bundle.layout,
        &obs,
        &read(&s.join("background.nc"), &b),
        &read(&with, &b),
        &latentda::obs::sigma_floors(&bundle.layout, &bundle.std),
    )
    .unwrap();
    let (x, y) = (w.cell("all", "global").unwrap(), again.cell("all", "global").unwrap());
    assert!(x.n > 0 && x.n == y.n, "{x:?}");
    assert!((x.mean_d - y.mean_d).abs() <= 1e-6 * y.mean_d.abs().max(1e-3), "{} {}", x.mean_d, y.mean_d);
    // tune sums the sections and prints them
    let (code, out, err) = cli(&["tune", rep.to_str().unwrap(), rep.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 of the reports compared with withheld observations"), "{out}");
    // a malformed withheld row is named with its file and line, and the analysis still runs (exit status 3)
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, format!("{}t,12,oops,0.5,250,1\n", pick(1))).unwrap();
    let (code, _, err) = analyse(&["--withheld", bad.to_str().unwrap()], &dir.join("bad.nc"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("bad.csv (withheld)") && err.contains(&format!("line {}", n_held + 2)), "{err}");
    // a missing withheld file fails before anything is written
    let missing = dir.join("missing.nc");
    let (code, _, err) = analyse(&["--withheld", "/nonexistent/held.csv"], &missing);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/held.csv"), "{err}");
    assert!(!missing.exists());
}

fn ort() -> String {
    onnxruntime_library().to_str().unwrap().to_string()
}

#[test]
fn onnx_runtime_backend_passes_the_adjoint_and_taylor_checks() {
    let b = fixture("tanh");
    let state = b.join("sample/background.nc");
    let lib = ort();
    let (code, out, err) = cli(&[
        "check",
        b.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--backend",
        "ort",
        "--ort-library",
        &lib,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("ONNX Runtime 1.") && out.contains("all checks passed"), "{out}");
}

#[test]
fn tract_and_onnx_runtime_analyses_agree() {
    let dir = scratch("cli_backends");
    let b = fixture("tanh");
    let s = b.join("sample");
    let (t, o) = (dir.join("tract.nc"), dir.join("ort.nc"));
    let lib = ort();
    let (c1, _, e1) =
        run(&analyse_args(b.to_str().unwrap(), s.to_str().unwrap(), t.to_str().unwrap(), &["--backend", "tract"]));
    let (c2, _, e2) = run(&analyse_args(
        b.to_str().unwrap(),
        s.to_str().unwrap(),
        o.to_str().unwrap(),
        &["--backend", "ort", "--ort-library", &lib],
    ));
    assert_eq!((c1, c2), (0, 0), "{e1}\n{e2}");
    let xb = read(&s.join("background.nc"), &b);
    let (xt, xo) = (read(&t, &b), read(&o, &b));
    let dt: Vec<f64> = xt.iter().zip(&xb).map(|(a, b)| a - b).collect();
    let dorr: Vec<f64> = xo.iter().zip(&xb).map(|(a, b)| a - b).collect();
    let num: f64 = dt.iter().zip(&dorr).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let den: f64 = dt.iter().map(|a| a * a).sum::<f64>().sqrt();
    eprintln!("tract vs ONNX Runtime: relative difference of the increments {:e}", num / den);
    assert!(num / den < 1e-5, "backends disagree: {:e}", num / den);
}

#[test]
fn cuda_requested_where_unavailable_fails_loudly_with_onnx_runtime() {
    let dir = scratch("cli_cuda");
    let b = fixture("tanh");
    let s = b.join("sample");
    let out = dir.join("an.nc");
    let lib = ort();
    let (code, _, err) = run(&analyse_args(
        b.to_str().unwrap(),
        s.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--backend", "ort", "--ort-library", &lib, "--device", "cuda:0"],
    ));
    assert_eq!(code, 1);
    assert!(err.contains("cuda:0") && err.contains("CUDA execution provider"), "{err}");
    assert!(!out.exists());
}

#[test]
fn two_cli_runs_write_identical_files() {
    let dir = scratch("cli_det");
    let b = fixture("tanh");
    let s = b.join("sample");
    let (o1, o2) = (dir.join("a.nc"), dir.join("b.nc"));
    for o in [&o1, &o2] {
        let (c, _, e) = run(&analyse_args(b.to_str().unwrap(), s.to_str().unwrap(), o.to_str().unwrap(), &[]));
        assert_eq!(c, 0, "{e}");
    }
    let (a, c) = (read(&o1, &b), read(&o2, &b));
    assert!(a.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()));
}
