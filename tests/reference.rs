//! The shipped reference bundle `models/speedy-t31` (v2) on its sample case (a validation-period case, never used in
//! training or calibration): self-checks; with the radiosonde-like network the hybrid beats the background on every
//! variable and the fair 3D-Var on most, with balanced increments; from mass observations alone the latent B moves
//! the wind (the univariate baseline cannot); draws of the latent B are balanced; a single temperature observation
//! gives a geostrophically consistent wind response whose sense flips between the hemispheres. The validation suite
//! (`latentda-suite`, 12 cases, model card) judges the bundle on many cases; these tests pin one of them.

mod common;

use std::path::PathBuf;

use latentda::bmat::BOperator;
use latentda::obs::Observation;
use latentda::{Analyser, Method, Options};

fn bundle() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/speedy-t31")
}

fn sample(a: &Analyser, obs_file: &str) -> (Vec<f64>, Vec<f64>, Vec<Observation>) {
    let s = bundle().join("sample");
    let lay = &a.bundle.layout;
    let xb = latentda::bundle::ncio::read_state(&s.join("background.nc"), lay).unwrap();
    let xt = latentda::bundle::ncio::read_state(&s.join("truth.nc"), lay).unwrap();
    let (obs, bad) = latentda::obs::read_csv(&s.join(obs_file), lay).unwrap();
    assert!(bad.is_empty());
    (xb, xt, obs)
}

#[test]
fn reference_bundle_passes_its_self_checks() {
    let b = bundle();
    let state = b.join("sample/background.nc");
    let (code, out, err) = common::cli(&["check", b.to_str().unwrap(), "--state", state.to_str().unwrap()]);
    println!("{out}");
    assert_eq!(code, 0, "{out}\n{err}");
}

#[test]
fn hybrid_beats_the_background_everywhere_and_3dvar_on_most_with_balanced_increments() {
    let mut a = Analyser::open(bundle(), Options::default()).unwrap();
    let lay = a.bundle.layout.clone();
    let (xb, xt, obs) = sample(&a, "obs.csv");
    let h = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
    let v = a.analyse(&xb, &obs, Method::Var3d).unwrap();
    let (rb, rh, rv) =
        (lay.rms_diff_by_var(&xb, &xt), lay.rms_diff_by_var(&h.analysis, &xt), lay.rms_diff_by_var(&v.analysis, &xt));
    let names: Vec<&str> = lay.variables.iter().map(|v| v.name.as_str()).collect();
    println!("{:<4} {:>12} {:>12} {:>12}", "var", "background", "3dvar", "hybrid");
    for i in 0..rb.len() {
        println!("{:<4} {:>12.4e} {:>12.4e} {:>12.4e}", names[i], rb[i], rv[i], rh[i]);
        assert!(rh[i] < rb[i], "{}: hybrid RMSE {} is not below the background's {}", names[i], rh[i], rb[i]);
    }
    let s = h.report.solver.as_ref().unwrap();
    println!("hybrid: |grad J| reduced {:.2e}-fold in {} TL/AD pairs", 1.0 / s.grad_reduction, s.inner_total);
    assert!(
        s.converged && s.grad_reduction <= 1e-3,
        "hybrid did not converge with the default options: {:e}",
        s.grad_reduction
    );
    // On this case the hybrid wins u, v, t and z (suite: at least 5 of 6 on 11 of 12 cases, all 6 on average)
    let wins: Vec<&str> = (0..rb.len()).filter(|&i| rh[i] < rv[i]).map(|i| names[i]).collect();
    println!("hybrid beats 3D-Var on {wins:?}");
    assert!(wins.len() >= 4, "hybrid beats 3D-Var only on {wins:?}");
    // Balance of the increments (|lat| > 20): the hybrid's beats the univariate baseline's
    let (bh, bv) = (h.report.balance.as_ref().unwrap().correlation, v.report.balance.as_ref().unwrap().correlation);
    println!("balance of the increments: hybrid {bh:.3}, 3D-Var {bv:.3}");
    assert!(bh >= 0.6 && bh > bv, "hybrid increment balance {bh} (3D-Var {bv})");
    // The fair baseline: z follows hydrostatically from t and q, so the unobserved z improves under 3D-Var too
    let iz = lay.var_index("z").unwrap();
    assert!(rv[iz] < 0.8 * rb[iz], "3D-Var with hydrostatic z: z RMSE {} vs background {}", rv[iz], rb[iz]);
}

#[test]
fn mass_observations_alone_move_the_wind_through_the_latent_b_only() {
    let mut a = Analyser::open(bundle(), Options::default()).unwrap();
    let lay = a.bundle.layout.clone();
    let (xb, xt, obs) = sample(&a, "obs_mass.csv");
    assert!(obs.iter().all(|o| o.var_name == "t" || o.var_name == "ps"));
    let rb = lay.rms_diff_by_var(&xb, &xt);
    for m in [Method::L3dvar, Method::Hybrid, Method::Var3d] {
        let r = a.analyse(&xb, &obs, m).unwrap();
        let ra = lay.rms_diff_by_var(&r.analysis, &xt);
        for name in ["u", "v"] {
            let i = lay.var_index(name).unwrap();
            println!(
                "{:<7} {name}: RMSE {:.4} -> {:.4} ({:+.1} %)",
                m.name(),
                rb[i],
                ra[i],
                100.0 * (ra[i] / rb[i] - 1.0)
            );
            if m == Method::Var3d {
                assert_eq!(ra[i], rb[i], "the univariate baseline changed the wind");
            } else {
                assert!(
                    ra[i] <= 0.9 * rb[i],
                    "{}: {name} RMSE down only {:.1} %",
                    m.name(),
                    100.0 * (1.0 - ra[i] / rb[i])
                );
            }
        }
    }
}

#[test]
fn draws_of_the_latent_b_are_balanced() {
    let mut a = Analyser::open(bundle(), Options::default()).unwrap();
    let lay = a.bundle.layout.clone();
    let (xb, _, _) = sample(&a, "obs.csv");
    let mut u = a.latent_b(&xb).unwrap();
    let mut x = vec![0.0; lay.state_len()];
    for seed in 1..=4u64 {
        u.randomize(&mut a.ae, seed, &mut x).unwrap();
        let draw: Vec<f64> = xb.iter().zip(&x).map(|(b, d)| b + d).collect();
        let bal = latentda::diag::balance::diagnose(&lay, &xb, &draw).unwrap();
        println!("draw {seed}: balance {:.3} (wind rms {:.3} m/s)", bal.correlation, bal.wind_rms);
        assert!(bal.correlation >= 0.6, "draw {seed}: balance {}", bal.correlation);
    }
}

/// Circulation of the wind increment (u, v on one level) around a ring of radius ~600 km centred at grid point (j, i),
/// counterclockwise positive (the sign of the relative vorticity inside).
fn circulation(lay: &latentda::grid::Layout, du: &[f64], dv: &[f64], j: usize, i: usize) -> f64 {
    let g = &lay.grid;
    let (nlat, nlon) = (g.nlat(), g.nlon());
    let (lat0, lon0) = (g.lat[j], g.lon[i]);
    let r_deg = 600.0 / 111.2;
    let mut c = 0.0;
    for k in 0..36 {
        let th = k as f64 * 10f64.to_radians();
        let (lat, lon) = (lat0 + r_deg * th.sin(), lon0 + r_deg * th.cos() / lat0.to_radians().cos());
        // nearest grid point on the ring
        let jj =
            (0..nlat).min_by(|&x, &y| (g.lat[x] - lat).abs().partial_cmp(&(g.lat[y] - lat).abs()).unwrap()).unwrap();
        let ii = ((lon.rem_euclid(360.0) / (360.0 / nlon as f64)).round() as usize) % nlon;
        let p = jj * nlon + ii;
        // tangential direction of a counterclockwise ring: (-sin th, cos th) in (east, north)
        c += -th.sin() * du[p] + th.cos() * dv[p];
    }
    c
}

#[test]
fn single_temperature_observations_give_opposite_circulations_in_the_two_hemispheres() {
    let mut a = Analyser::open(bundle(), Options::from_toml("bg_check = 0.0").unwrap()).unwrap();
    let lay = a.bundle.layout.clone();
    let (xb, _, _) = sample(&a, "obs.csv");
    let np = lay.grid.npoints();
    let nlon = lay.grid.nlon();
    let (it, iu, iv) = (lay.var_index("t").unwrap(), lay.var_index("u").unwrap(), lay.var_index("v").unwrap());
    let k = 4usize; // sigma 0.51
    let k_up = 2usize; // sigma 0.2: a warm column raises the heights above it: anticyclonic flow aloft
    let i = 53usize; // ~200E
    let mut signs = Vec::new();
    for j in [12usize, 35] {
        // ~45N and ~45S
        let p = (lay.variables[it].first_channel + k) * np + j * nlon + i;
        let obs = vec![Observation {
            var: Some(it),
            var_name: "t".into(),
            lat: lay.grid.lat[j],
            lon: lay.grid.lon[i],
            level: Some(lay.vertical.levels[k]),
            value: xb[p] + 1.0,
            sigma: 0.5,
            line: None,
            time: 0.0,
            malformed: None,
        }];
        for m in [Method::L3dvar, Method::Var3d] {
            let r = a.analyse(&xb, &obs, m).unwrap();
            let off = |v: usize| (lay.variables[v].first_channel + k_up) * np;
            let du: Vec<f64> = (0..np).map(|q| r.analysis[off(iu) + q] - xb[off(iu) + q]).collect();
            let dv: Vec<f64> = (0..np).map(|q| r.analysis[off(iv) + q] - xb[off(iv) + q]).collect();
            let c = circulation(&lay, &du, &dv, j, i);
            let maxw = du.iter().zip(&dv).map(|(a, b)| (a * a + b * b).sqrt()).fold(0.0f64, f64::max);
            println!(
                "{} at {:.1} lat: circulation aloft {c:+.3e}, largest wind increment {maxw:.3} m/s",
                m.name(),
                lay.grid.lat[j]
            );
            if m == Method::Var3d {
                assert_eq!(maxw, 0.0, "the univariate baseline changed the wind");
            } else {
                assert!(maxw > 0.2, "latent wind increment too small: {maxw} m/s");
                // anticyclonic: clockwise (negative) in the north, counterclockwise (positive) in the south
                assert!(
                    c * lay.grid.lat[j].signum() < 0.0,
                    "circulation {c} at {} is not anticyclonic",
                    lay.grid.lat[j]
                );
                signs.push(c.signum());
            }
        }
        if let Some(b) = &a.analyse(&xb, &obs, Method::L3dvar).unwrap().report.balance {
            println!("balance of the L3DVar increment: {:.3}", b.correlation);
        }
    }
    assert_eq!(signs.len(), 2);
    assert!(signs[0] != signs[1], "the circulation has the same sense in both hemispheres");
}
