//! `latentda demo`: the three-method comparison, its table and figures (on a fixture bundle, through the binary),
//! and the single-observation experiment's geostrophic response on the reference bundle.

/// The helpers of the workspace's tests/common that these tests use, on the workspace root (this crate is cli/).
mod common {
    use std::path::{Path, PathBuf};

    /// The workspace root (models/, tests/fixtures/, target/).
    pub fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
    }

    /// Path of a committed test fixture bundle.
    pub fn fixture(name: &str) -> PathBuf {
        root().join("tests/fixtures").join(name)
    }

    /// A fresh, empty scratch directory under target/ (removed at the start of each run of the same test).
    pub fn scratch(test: &str) -> PathBuf {
        let d = root().join("target/test-scratch").join(test);
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

    /// Runs the latentda CLI (this crate's binary); returns (exit code, stdout, stderr).
    pub fn cli(args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_latentda")).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

use common::*;
use latentda::diag::verify::weighted_rmse_by_var;
use latentda::{Analyser, Method, Options};
use latentda_cli::demo::single_obs;

/// Decodes a PNG figure: its size, and how many of the coloured (not white) steps of the filled fields cover more
/// than 50 pixels of the map panels (the colour bar, in the right-hand 130 pixels, holds all of them and is left
/// out).
fn png_steps(path: &std::path::Path) -> ((u32, u32), usize) {
    use latentda_cli::plot::colour::{DEFAULT_LEVELS, WHITE_BIN};
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    let scale = latentda_cli::plot::ColourScale { vmax: 1.0, levels: DEFAULT_LEVELS, label: String::new() };
    let maps_width = img.width() - 130;
    let steps = (0..DEFAULT_LEVELS)
        .filter(|&k| scale.bin_colour(k) != WHITE_BIN)
        .filter(|&k| {
            let c = scale.bin_colour(k);
            img.enumerate_pixels().filter(|(x, _, p)| *x < maps_width && p.0 == [c.0, c.1, c.2]).count() > 50
        })
        .count();
    (img.dimensions(), steps)
}

#[test]
fn demo_prints_one_table_and_writes_analyses_reports_and_figures() {
    let b = fixture("tanh");
    let out = scratch("demo_fixture");
    let (code, stdout, stderr) = cli(&["demo", b.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // One table, printed and saved.
    let table = std::fs::read_to_string(out.join("table.txt")).unwrap();
    assert!(stdout.starts_with(&table), "the printed table is table.txt:\n{stdout}");
    for s in [
        "background",
        "3dvar",
        "l3dvar",
        "hybrid",
        "RMSE against truth",
        "used / rejected",
        "O-B rms -> O-A rms",
        "geostrophic balance",
        "single t observations",
        "|grad J| reduction",
        "analysis total",
        "backend tract",
        "device cpu",
    ] {
        assert!(table.contains(s), "table lacks '{s}':\n{table}");
    }
    assert!(stdout.contains("output folder:") && stdout.contains("figures:"), "{stdout}");
    // The RMSE column of each method is the area-weighted RMSE of the analysis it wrote.
    let a = Analyser::open(&b, Options::default()).unwrap();
    let lay = a.bundle.layout.clone();
    let read = |p: &std::path::Path| latentda::bundle::ncio::read_state(p, &lay).unwrap();
    let (xb, xt) = (read(&b.join("sample/background.nc")), read(&b.join("sample/truth.nc")));
    let rb = weighted_rmse_by_var(&lay, &xb, &xt);
    for m in ["3dvar", "l3dvar", "hybrid"] {
        let xa = read(&out.join(format!("analysis_{m}.nc")));
        let ra = weighted_rmse_by_var(&lay, &xa, &xt);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(format!("report_{m}.json"))).unwrap()).unwrap();
        assert_eq!(report["method"], m);
        for (v, var) in lay.variables.iter().enumerate() {
            let line = table.lines().find(|l| l.starts_with(&format!("  {} (", var.name))).unwrap();
            let cell = format!("{} {:+6.1}%", latentda_cli::demo::table::sig(ra[v], 4), 100.0 * (ra[v] / rb[v] - 1.0));
            assert!(line.contains(&cell), "{m} {}: expected '{cell}' in\n{line}", var.name);
        }
        // The fixture case is easy: every method improves every variable.
        assert!(ra.iter().zip(&rb).all(|(a, b)| a < b), "{m}: {ra:?} vs background {rb:?}");
    }
    // Figures: the mid level (sigma 0.5 in the fixture), the surface, the single-observation responses.
    // Fields are drawn: the background error spans most of the 8 coloured steps, the local single-observation
    // responses (positive: 4 red steps) some. The fixture has no geopotential: no single_obs_z.png.
    for (f, w, h, min_steps) in [
        ("level_0.5.png", 2 * 780 + 130, 2 * 450 + 70, 6),
        ("surface.png", 2 * 780 + 130, 2 * 450 + 70, 6),
        ("single_obs.png", 3 * 560 + 130, 760 + 70, 2),
    ] {
        let (size, steps) = png_steps(&out.join(f));
        assert_eq!(size, (w, h), "{f}");
        assert!(steps >= min_steps, "{f}: only {steps} of the 8 coloured steps cover more than 50 pixels");
    }
    assert!(!out.join("single_obs_z.png").exists());
}

#[test]
fn demo_adds_latent_4dvar_with_a_window_of_observations_when_the_bundle_has_a_step_model() {
    let b = fixture("tanh");
    let obs4d = b.join("sample/obs_4d.csv");
    let out = scratch("demo_fixture_4d");
    let (code, stdout, stderr) =
        cli(&["demo", b.to_str().unwrap(), "--obs4d", obs4d.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let table = std::fs::read_to_string(out.join("table.txt")).unwrap();
    let head = table.lines().find(|l| l.trim_start().starts_with("background")).unwrap();
    assert!(head.contains("l3dvar") && head.trim_end().ends_with("l4dvar"), "{head}");
    assert!(table.contains("l4dvar: the ") && table.contains("obs_4d.csv"), "{table}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report_l4dvar.json")).unwrap()).unwrap();
    assert_eq!(report["method"], "l4dvar");
    assert!(report["window"]["nslots"].as_u64().unwrap() >= 2, "{}", report["window"]);
    // its RMSE cells are the RMSE of the analysis it wrote
    let a = Analyser::open(&b, Options::default()).unwrap();
    let lay = a.bundle.layout.clone();
    let read = |p: &std::path::Path| latentda::bundle::ncio::read_state(p, &lay).unwrap();
    let (xb, xt, xa) = (
        read(&b.join("sample/background.nc")),
        read(&b.join("sample/truth.nc")),
        read(&out.join("analysis_l4dvar.nc")),
    );
    let (rb, ra) = (weighted_rmse_by_var(&lay, &xb, &xt), weighted_rmse_by_var(&lay, &xa, &xt));
    for (v, var) in lay.variables.iter().enumerate() {
        let line = table.lines().find(|l| l.starts_with(&format!("  {} (", var.name))).unwrap();
        let cell = format!("{} {:+6.1}%", latentda_cli::demo::table::sig(ra[v], 4), 100.0 * (ra[v] / rb[v] - 1.0));
        assert!(
            line.trim_end().ends_with(&cell) || line.trim_end().ends_with(&format!("{cell}*")),
            "l4dvar {}: '{cell}' in\n{line}",
            var.name
        );
    }
    // without a 4D observation file the demo says why it has no L4DVar column
    let out3 = scratch("demo_fixture_3d_only");
    let (code, stdout, _) = cli(&["demo", b.to_str().unwrap(), "--output", out3.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("not run: L4DVar") && stdout.contains("no 4D observation file"), "{stdout}");
}

#[test]
fn demo_errors_name_the_missing_file() {
    let b = copy_fixture("tanh", "demo_missing_truth");
    std::fs::remove_file(b.join("sample/truth.nc")).unwrap();
    let out = scratch("demo_missing_truth_out");
    let (code, stdout, stderr) = cli(&["demo", b.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("truth") && stderr.contains("truth.nc"), "{stderr}");
}

#[test]
fn single_warm_observations_give_anticyclonic_wind_in_both_hemispheres_with_the_latent_b_only() {
    let bundle = root().join("models/speedy-t31");
    let mut a = Analyser::open(&bundle, Options::default()).unwrap();
    let xb =
        latentda::bundle::ncio::read_state(&bundle.join("sample/background.nc"), &a.bundle.layout.clone()).unwrap();
    let latent = single_obs::run(&mut a, &xb, Method::L3dvar, latentda_cli::demo::SINGLE_OBS_LON).unwrap().unwrap();
    let baseline = single_obs::run(&mut a, &xb, Method::Var3d, latentda_cli::demo::SINGLE_OBS_LON).unwrap().unwrap();
    for (l, s) in latent.responses.iter().zip(&baseline.responses) {
        println!(
            "lat {:+.0}: L3DVar t {:+.3} K, max wind {:.3} m/s, vorticity {:.3e} s-1 ({}), balance {:?}; 3D-Var t {:+.3} K, {}",
            l.lat,
            l.at_obs,
            l.wind_max,
            l.vorticity,
            l.circulation(),
            l.balance.as_ref().map(|b| b.correlation),
            s.at_obs,
            s.circulation()
        );
        // Both pull toward the observation, by less than the innovation.
        for r in [l, s] {
            assert!(
                r.at_obs > 0.05 && r.at_obs < single_obs::INNOVATION,
                "t increment at the observation {}",
                r.at_obs
            );
        }
        assert_eq!(l.circulation(), "anticyclonic", "latent B at lat {}: vorticity {}", l.lat, l.vorticity);
        assert_eq!(s.circulation(), "no wind", "the univariate static B moved the wind at lat {}", s.lat);
    }
    // The sign of the vorticity flips between the hemispheres (f changes sign; the response stays anticyclonic).
    let (n, s) = (&latent.responses[0], &latent.responses[1]);
    assert!(n.lat > 0.0 && s.lat < 0.0 && n.vorticity < 0.0 && s.vorticity > 0.0);
}
