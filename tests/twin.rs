//! The perfect-B twin (`Analyser::perfect_b_twin`, `latentda twin`): background errors drawn from the method's own B,
//! observations at a network's points with its error sds, analysed with that B. On the reference bundle and its
//! sample network the analysis must beat its background in every draw, deterministically, without touching the
//! options or an adaptive state file.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use latentda::obs::Observation;
use latentda::{Analyser, Method, Options};

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/speedy-t31")
}

fn sample(a: &Analyser) -> (Vec<f64>, Vec<Observation>) {
    let s = reference().join("sample");
    let lay = &a.bundle.layout;
    let xb = latentda::bundle::ncio::read_state(&s.join("background.nc"), lay).unwrap();
    let (obs, _) = latentda::obs::read_csv(&s.join("obs.csv"), lay).unwrap();
    (xb, obs)
}

#[test]
fn a_perfect_b_analysis_beats_its_background_in_every_draw() {
    let state = scratch("twin").join("adaptive_b.json");
    let toml = format!(
        "self_test = false\nbaseline_variance_factor = 0.2\nlatent_variance_factor = 0.2\n\
         latent_increment = \"nonlinear\"\nadaptive_state = \"{}\"",
        state.display()
    );
    let mut a = Analyser::open(reference(), Options::from_toml(&toml).unwrap()).unwrap();
    let before = format!("{:?}", a.options());
    let (xb, obs) = sample(&a);
    for method in [Method::Var3d, Method::Hybrid] {
        let r = a.perfect_b_twin(&xb, &obs, method, 3, 7).unwrap();
        assert_eq!((r.method, r.samples, r.observations_used), (method, 3, obs.len()));
        assert_eq!(r.variables.len(), a.bundle.layout.variables.len());
        for v in &r.variables {
            assert!(v.background_rmse > 0.0, "{method:?} {}: no background error drawn", v.name);
            if v.name != "q" {
                // q's error is tiny where the sondes observe it; every other variable gains clearly
                assert!(v.ratio_mean < 0.97 && v.worse_share == 0.0, "{method:?} {}: {v:?}", v.name);
            }
        }
        // deterministic for a seed, different for another
        assert_eq!(a.perfect_b_twin(&xb, &obs, method, 3, 7).unwrap(), r);
        assert_ne!(a.perfect_b_twin(&xb, &obs, method, 3, 8).unwrap(), r);
    }
    // the options are as they were (nonlinear increments, the state file), and no state file was written
    assert_eq!(format!("{:?}", a.options()), before);
    assert!(!state.exists(), "the twin wrote the adaptive state file");
    // refusals name what is wrong, and leave the options as they were
    let e = a.perfect_b_twin(&xb, &obs, Method::L4dvar, 3, 7).unwrap_err();
    assert!(e.message.contains("l4dvar"), "{}", e.message);
    let e = a.perfect_b_twin(&xb, &obs, Method::Var3d, 0, 7).unwrap_err();
    assert!(e.message.contains("samples"), "{}", e.message);
    let e = a.perfect_b_twin(&xb[1..], &obs, Method::Var3d, 1, 7).unwrap_err();
    assert!(e.message.contains("twin background"), "{}", e.message);
    assert_eq!(format!("{:?}", a.options()), before);
}

#[test]
fn cli_twin_prints_the_table_and_refuses_bad_counts() {
    let b = reference();
    let s = b.join("sample");
    let (bg, obs) = (s.join("background.nc"), s.join("obs.csv"));
    let args = |extra: &[&str]| {
        let mut v = vec![
            "twin".to_string(),
            b.display().to_string(),
            "--background".into(),
            bg.display().to_string(),
            "--obs".into(),
            obs.display().to_string(),
            "--method".into(),
            "3dvar".into(),
            "--baseline-variance-factor".into(),
            "0.2".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        cli(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (code, out, err) = run(&["--samples", "2"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("perfect-B twin: 3dvar with its own B, 2 draws"), "{out}");
    let u = out.lines().find(|l| l.starts_with("u ")).unwrap_or_else(|| panic!("no u row: {out}"));
    let cols: Vec<&str> = u.split_whitespace().collect();
    let ratio: f64 = cols[2].parse().unwrap();
    assert!(ratio > 0.5 && ratio < 0.97 && cols[4] == "0%", "{u}");
    let (code, _, err) = run(&["--samples", "two"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--samples"), "{err}");
    let (code, _, err) = run(&["--output", "x.nc"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--output is not an option of 'twin'"), "{err}");
}
