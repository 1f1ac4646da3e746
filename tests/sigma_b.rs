//! The background check's calibrated sigma_b (issue 23, item 9): `latentda sigma-b` writes the latent B's
//! climatological variance into a bundle, the 3D methods' background check uses it (times the factors and weights in
//! force) without any decoder TL run, and option `bg_check_sigma_b = "flow"` gives the flow-dependent estimate of
//! before, bit for bit.

mod common;

use common::*;
use latentda::obs::Observation;
use latentda::var::options::BKind;
use latentda::{Analyser, Method, Options};

fn sample(a: &Analyser, dir: &std::path::Path) -> (Vec<f64>, Vec<Observation>) {
    let s = dir.join("sample");
    let lay = &a.bundle.layout;
    let xb = latentda::bundle::ncio::read_state(&s.join("background.nc"), lay).unwrap();
    let (obs, _) = latentda::obs::read_csv(&s.join("obs.csv"), lay).unwrap();
    (xb, obs)
}

/// A copy of the tanh fixture with a calibrated latent B variance made by the CLI from its sample background.
fn calibrated_bundle(test: &str) -> std::path::PathBuf {
    let dir = copy_fixture("tanh", test);
    let bg = dir.join("sample/background.nc");
    let (code, out, err) = cli(&[
        "sigma-b",
        dir.to_str().unwrap(),
        "--state",
        &format!("{},{}", bg.display(), bg.display()),
        "--draws",
        "400",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("wrote") && out.contains("latent_b_variance"), "{out}");
    let manifest = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
    let manifest = manifest
        .replacen("[statistics]\n", "[statistics]\nlatent_b_variance = \"latent_b_variance.nc\"\n", 1)
        .replacen("[checksums]\n", "[checksums]\n\"latent_b_variance.nc\" = \"0\"\n", 1);
    std::fs::write(dir.join("bundle.toml"), manifest).unwrap();
    refresh_checksum(&dir, "latent_b_variance.nc");
    dir
}

#[test]
fn calibrated_sigma_b_replaces_the_randomised_variance_and_flow_keeps_it() {
    let dir = calibrated_bundle("sigma_b_calibrated");
    let opts = "latent_variance_factor = 0.6\nhybrid_alpha = 2.0\nhybrid_beta = 0.5";
    let mut a = Analyser::open(&dir, Options::from_toml(opts).unwrap()).unwrap();
    let v = a.bundle.latent_b_variance.clone().expect("the manifest names it");
    let (xb, obs) = sample(&a, &dir);

    // The stored variance is diag(U U^T) of the latent B (factor 1) at the state: 2 x 400 draws at one state,
    // relative standard error sqrt(2 / 800) = 0.05 per element; the mean over elements is far tighter.
    let mut unit = Analyser::open(fixture("tanh"), Options::default()).unwrap();
    let z = unit.encode_background(&xb).unwrap();
    unit.prepare_b(BKind::Latent, Some(&z)).unwrap();
    let exact = unit.with_b(BKind::Latent, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
    let worst = v.iter().zip(&exact).map(|(c, e)| (c - e).abs() / e).fold(0.0f64, f64::max);
    let mean_ratio = v.iter().sum::<f64>() / exact.iter().sum::<f64>();
    eprintln!("calibrated vs exact variance at the state: worst element {worst:.3}, ratio of sums {mean_ratio:.4}");
    assert!(worst < 0.3 && (mean_ratio - 1.0).abs() < 0.03, "worst {worst}, ratio {mean_ratio}");

    // In force: factor x V for the latent B; alpha f V + beta diag(static) for the hybrid.
    let (lv, how) = a.calibrated_variance(BKind::Latent).unwrap().unwrap();
    assert!(how.contains("calibrated"), "{how}");
    for i in 0..v.len() {
        assert!((lv[i] - 0.6 * v[i]).abs() <= 1e-12 * lv[i].max(1e-300), "latent at {i}");
    }
    let z = a.encode_background(&xb).unwrap();
    a.prepare_b(BKind::Hybrid, Some(&z)).unwrap();
    let (hv, _) = a.calibrated_variance(BKind::Hybrid).unwrap().unwrap();
    a.prepare_b(BKind::Static, None).unwrap();
    let sv = a.with_b(BKind::Static, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
    for i in 0..v.len() {
        let want = 2.0 * 0.6 * v[i] + 0.5 * sv[i];
        assert!((hv[i] - want).abs() <= 1e-9 * want, "hybrid at {i}: {} vs {want}", hv[i]);
    }

    // The analyses: no decoder TL run for diag B, and the report says where sigma_b came from.
    for method in [Method::L3dvar, Method::Hybrid] {
        let r = a.analyse(&xb, &obs, method).unwrap().report;
        assert_eq!(r.timings.n_variance, 0, "{method:?}");
        assert!(r.background_check.sigma_b.contains("calibrated"), "{}", r.background_check.sigma_b);
    }

    // "flow": the randomised estimate at this background, bit for bit the bundle without the file.
    let flow = format!("{opts}\nbg_check_sigma_b = \"flow\"");
    let mut f = Analyser::open(&dir, Options::from_toml(&flow).unwrap()).unwrap();
    let mut plain = Analyser::open(fixture("tanh"), Options::from_toml(opts).unwrap()).unwrap();
    for method in [Method::L3dvar, Method::Hybrid] {
        let (rf, rp) = (f.analyse(&xb, &obs, method).unwrap(), plain.analyse(&xb, &obs, method).unwrap());
        assert!(rf.report.timings.n_variance > 0);
        assert_eq!(rf.analysis, rp.analysis, "{method:?}");
        assert_eq!(rf.qc, rp.qc, "{method:?}");
        assert!(!rf.report.background_check.sigma_b.contains("calibrated"));
    }
    // with ensemble members the flow-dependent ensemble part is added to the calibrated latent and static parts
    let mem: Vec<Vec<f64>> = (0..4)
        .map(|k| {
            let d = latentda::diag::checks::Rng::new(40 + k).normals(xb.len());
            let np = a.bundle.layout.grid.npoints();
            xb.iter().zip(&d).enumerate().map(|(i, (x, e))| x + 0.2 * a.bundle.std[i / np] * e).collect()
        })
        .collect();
    a.set_ensemble(mem).unwrap();
    let r = a.analyse(&xb, &obs, Method::Hybrid).unwrap().report;
    let how = &r.background_check.sigma_b;
    assert!(how.contains("calibrated") && how.contains("ensemble"), "{how}");
    assert!(r.timings.n_variance > 0, "the latent ensemble part's diagonal needs decoder TL runs");
    a.clear_ensemble();
    // without the file, "calibrated" (the default) says it fell back
    let r = plain.analyse(&xb, &obs, Method::L3dvar).unwrap().report;
    assert!(r.background_check.sigma_b.contains("no latent_b_variance"), "{}", r.background_check.sigma_b);
}

#[test]
fn bad_calibrated_variance_and_option_are_clear_errors() {
    let e = Options::from_toml("bg_check_sigma_b = \"static\"").unwrap_err();
    assert!(e.to_string().contains("bg_check_sigma_b"), "{e}");
    // a negative variance in the file is refused at open, naming the file and the element
    let dir = calibrated_bundle("sigma_b_bad");
    let path = dir.join("latent_b_variance.nc");
    {
        let mut f = netcdf::append(&path).unwrap();
        let mut var = f.variable_mut("t").unwrap();
        var.put_values(&[-1.0f64], (0, 1, 2)).unwrap();
    }
    refresh_checksum(&dir, "latent_b_variance.nc");
    let e = Analyser::open(&dir, Options::default()).unwrap_err().to_string();
    assert!(e.contains("latent_b_variance.nc") && e.contains("finite and >= 0"), "{e}");
}
