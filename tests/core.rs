//! Runtime core: observation operator, decoder TL/AD, L3DVar against the closed-form Kalman solution, determinism,
//! write-back modes, and bad input (in-process, pure-Rust tract backend).

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use latentda::bmat::BOperator;
use latentda::bundle::grid::{Grid, GridKind, Layout, Vertical, VerticalKind};
use latentda::diag::checks::{self, Rng};
use latentda::obs::operator::ObsOperator;
use latentda::obs::{parse_csv, Observation, QcFlag};
use latentda::{Analyser, Method, Options, OutputMode, Status};

fn opts(toml: &str) -> Options {
    Options::from_toml(toml).unwrap()
}

fn open(name: &str, toml: &str) -> Analyser {
    Analyser::open(fixture(name), opts(toml)).unwrap()
}

fn sample(a: &Analyser, name: &str) -> (Vec<f64>, Vec<f64>, Vec<Observation>) {
    let s = fixture(name).join("sample");
    let lay = &a.bundle.layout;
    let xb = latentda::bundle::ncio::read_state(&s.join("background.nc"), lay).unwrap();
    let xt = latentda::bundle::ncio::read_state(&s.join("truth.nc"), lay).unwrap();
    let (obs, problems) = latentda::obs::read_csv(&s.join("obs.csv"), lay).unwrap();
    assert!(problems.is_empty());
    (xb, xt, obs)
}

fn t31_like_layout() -> Layout {
    let lat: Vec<f64> = (0..48).map(|j| 88.125 - 3.75 * j as f64).collect();
    let lon: Vec<f64> = (0..96).map(|i| 3.75 * i as f64).collect();
    let grid = Grid::new(GridKind::Gaussian, lat, lon).unwrap();
    let vert = Vertical::new(VerticalKind::Sigma, vec![0.1, 0.3, 0.5, 0.7, 0.9]).unwrap();
    Layout::new(grid, vert, vec![("t".into(), "K".into(), 5), ("ps".into(), "Pa".into(), 0)]).unwrap()
}

#[test]
fn obs_operator_adjoint_is_exact_transpose() {
    let lay = t31_like_layout();
    let mut rng = Rng::new(7);
    let obs: Vec<Observation> = (0..5000)
        .map(|i| Observation {
            var: Some(i % 2),
            var_name: String::new(),
            lat: -90.0 + 180.0 * rng.uniform(),   // includes the polar caps
            lon: -360.0 + 1080.0 * rng.uniform(), // any longitude, wraps
            level: Some(0.1 + 0.8 * rng.uniform()),
            value: 0.0,
            sigma: 1.0,
            line: None,
            time: 0.0,
            malformed: None,
        })
        .collect();
    let mut flags = vec![QcFlag::Used; obs.len()];
    let h = ObsOperator::build(&lay, &obs, &mut flags);
    assert_eq!(
        h.nrows(),
        obs.len(),
        "every observation is inside a global grid: {:?}",
        flags.iter().find(|f| **f != QcFlag::Used)
    );
    let x = rng.normals(lay.state_len());
    let y = rng.normals(h.nrows());
    let mut hx = vec![0.0; h.nrows()];
    h.apply(&x, &mut hx);
    let mut hty = vec![0.0; lay.state_len()];
    h.adjoint(&y, &mut hty);
    let lhs: f64 = hx.iter().zip(&y).map(|(a, b)| a * b).sum();
    let rhs: f64 = x.iter().zip(&hty).map(|(a, b)| a * b).sum();
    let rel = (lhs - rhs).abs() / lhs.abs().max(rhs.abs());
    assert!(rel < 1e-12, "<Hx,y> = {lhs}, <x,H^T y> = {rhs}, rel {rel:e}");
}

#[test]
fn obs_operator_is_exact_for_fields_linear_in_lat_lon_and_log_level() {
    // Bilinear in (lat, lon) and linear in ln(sigma) reproduce such fields exactly inside a cell.
    let lay = t31_like_layout();
    let (nlat, nlon, np) = (lay.grid.nlat(), lay.grid.nlon(), lay.grid.npoints());
    let f = |lat: f64, lon: f64, s: f64| 3.0 + 0.5 * lat + 0.25 * lon + 7.0 * s.ln() + 0.01 * lat * lon;
    let mut x = vec![0.0; lay.state_len()];
    for k in 0..5 {
        for j in 0..nlat {
            for i in 0..nlon {
                x[k * np + j * nlon + i] = f(lay.grid.lat[j], lay.grid.lon[i], lay.vertical.levels[k]);
            }
        }
    }
    let pts = [(10.3, 100.1, 0.42), (-47.0, 3.0, 0.15), (60.0, 354.0, 0.88), (0.0, 0.0, 0.5)];
    let obs: Vec<Observation> = pts
        .iter()
        .map(|&(lat, lon, s)| Observation {
            var: Some(0),
            var_name: "t".into(),
            lat,
            lon,
            level: Some(s),
            value: 0.0,
            sigma: 1.0,
            line: None,
            time: 0.0,
            malformed: None,
        })
        .collect();
    let mut flags = vec![QcFlag::Used; obs.len()];
    let h = ObsOperator::build(&lay, &obs, &mut flags);
    let mut y = vec![0.0; obs.len()];
    h.apply(&x, &mut y);
    for (r, &i) in h.rows.iter().enumerate() {
        let (lat, lon, s) = pts[i];
        assert!((y[r] - f(lat, lon, s)).abs() < 1e-9, "point {i}: H x = {}, exact {}", y[r], f(lat, lon, s));
    }
    assert_eq!(h.nrows(), pts.len());
}

#[test]
fn obs_operator_matches_independent_python_interpolation() {
    // tests/fixtures/*/sample/obs_expected.csv holds H(truth) computed by the fixture generator (numpy).
    for name in ["linear", "tanh"] {
        let a = open(name, "");
        let (_, xt, obs) = sample(&a, name);
        let text = std::fs::read_to_string(fixture(name).join("sample/obs_expected.csv")).unwrap();
        let mut flags = vec![QcFlag::Used; obs.len()];
        let h = ObsOperator::build(&a.bundle.layout, &obs, &mut flags);
        let mut y = vec![0.0; h.nrows()];
        h.apply(&xt, &mut y);
        let mut checked = 0;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let lineno: usize = f[0].parse().unwrap();
            let expected_qc: i32 = match f[7] {
                "unknown_variable" => 4,
                "invalid_sigma" => 1,
                "outside_vertical_range" => 3,
                q => q.parse().unwrap(),
            };
            let i = obs.iter().position(|o| o.line == Some(lineno)).unwrap();
            assert_eq!(flags[i] as i32, expected_qc, "{name} line {lineno}: QC flag");
            if expected_qc == 0 {
                let r = h.rows.iter().position(|&o| o == i).unwrap();
                let want: f64 = f[5].parse().unwrap();
                assert!(
                    (y[r] - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{name} line {lineno}: H(truth) = {}, python {want}",
                    y[r]
                );
                checked += 1;
            }
        }
        assert!(checked >= 50, "{name}: only {checked} rows checked");
    }
}

#[test]
fn decoder_tl_ad_dot_and_taylor_tests() {
    let mut a = open("tanh", "");
    let (xb, _, _) = sample(&a, "tanh");
    let z = checks::check_latent_point(&a.bundle, &mut a.ae, Some(&xb)).unwrap();
    let dt = checks::decoder_dot_test(&mut a.ae, &z, 5, 11).unwrap();
    assert!(dt.rel < 1e-5, "dot test rel {:e}", dt.rel);
    let eps: Vec<f64> = (0..5).map(|k| 10f64.powi(-k)).collect();
    let rows = checks::decoder_taylor_test(&a.bundle, &mut a.ae, &z, &eps, 12).unwrap();
    // First order: the remainder falls by ~10x per decade from eps = 1 to 1e-3 (three decades).
    for w in rows.windows(2).take(3) {
        let f = w[0].remainder / w[1].remainder;
        assert!(f > 5.0 && f < 20.0, "remainder {:e} -> {:e}: factor {f}", w[0].remainder, w[1].remainder);
    }
    assert!((rows[3].ratio - 1.0).abs() < 1e-3, "ratio at eps=1e-3: {}", rows[3].ratio);
    let lt = checks::latent_bsqrt_dot_test(&a.bundle, &mut a.ae, &xb, 13).unwrap();
    assert!(lt.rel < 1e-5, "latent B^1/2 adjoint rel {:e}", lt.rel);
}

/// The float32 Taylor gate (central difference, `checks::taylor_verdict`) on a real ONNX decoder: the graph's own TL
/// passes; the same TL wrong by 1 % overall, or with one latent channel's contribution dropped, fails.
#[test]
fn the_float32_taylor_gate_passes_the_decoder_tl_and_fails_a_wrong_one() {
    let mut a = open("tanh", "");
    let (xb, _, _) = sample(&a, "tanh");
    let z = checks::check_latent_point(&a.bundle, &mut a.ae, Some(&xb)).unwrap();
    let eps: Vec<f64> = (-2..6).map(|k| 10f64.powi(-k)).collect();
    let rows = checks::decoder_taylor_test(&a.bundle, &mut a.ae, &z, &eps, 12).unwrap();
    let v = checks::taylor_verdict(&rows);
    assert!(v.pass, "{v:?} {rows:?}");
    let (nz, nx) = (a.ae.latent_len, a.ae.state_len);
    let mut rng = Rng::new(5);
    let dz: Vec<f64> = rng.normals(nz).iter().zip(&a.bundle.latent_variance).map(|(r, v)| r * v.sqrt()).collect();
    let tl_of = |a: &mut Analyser, dz: &[f64]| {
        let dz32: Vec<f32> = dz.iter().map(|v| *v as f32).collect();
        let mut out = vec![0f32; nx];
        a.ae.tl(&z, &dz32, &mut out).unwrap();
        out.iter().map(|v| *v as f64).collect::<Vec<f64>>()
    };
    let tl = tl_of(&mut a, &dz);
    // one latent element's share of TL dz left out (the largest one, so the error is well above round-off)
    let k = (0..nz).max_by(|&i, &j| dz[i].abs().total_cmp(&dz[j].abs())).unwrap();
    let mut dz_k = vec![0.0; nz];
    dz_k[k] = dz[k];
    let share = tl_of(&mut a, &dz_k);
    let wrong: [(&str, Vec<f64>); 2] = [
        ("TL x 1.01", tl.iter().map(|t| 1.01 * t).collect()),
        ("TL without one latent element", tl.iter().zip(&share).map(|(t, s)| t - s).collect()),
    ];
    for (what, tlw) in wrong {
        let mut d = vec![0f32; nx];
        let rows = checks::taylor_rows(&eps, &tlw, |e| {
            let zp: Vec<f32> = z.iter().zip(&dz).map(|(z, d)| (*z as f64 + e * d) as f32).collect();
            a.ae.decode(&zp, &mut d)?;
            Ok(d.iter().map(|v| *v as f64).collect())
        })
        .unwrap();
        let v = checks::taylor_verdict(&rows);
        assert!(!v.pass, "{what} passed the gate: {v:?} {rows:?}");
    }
}

#[test]
fn l3dvar_with_linear_decoder_equals_closed_form_kalman_solution() {
    use faer::linalg::solvers::Solve;
    let opt = "outer_loops = 1\nmax_inner = 200\ngradient_reduction = 1e-12\nbg_check = 0.0";
    let mut a = open("linear", opt);
    let (xb, _, obs) = sample(&a, "linear");
    let res = a.analyse(&xb, &obs, Method::L3dvar).unwrap();
    // Independent solution: U = sd * W * diag(s) from TL columns, G = H U, dx = U G^T (G G^T + R)^-1 d.
    let lay = a.bundle.layout.clone();
    let mut flags = vec![QcFlag::Used; obs.len()];
    let h = ObsOperator::build(&lay, &obs, &mut flags);
    let (m, n, ns) = (h.nrows(), a.bundle.latent_size(), lay.state_len());
    let mut op = a.latent_b(&xb).unwrap();
    let mut u = vec![vec![0.0; ns]; n];
    for (k, col) in u.iter_mut().enumerate() {
        let mut e = vec![0.0; n];
        e[k] = 1.0;
        op.sqrt(&mut a.ae, &e, col).unwrap();
    }
    let g: Vec<Vec<f64>> = u
        .iter()
        .map(|col| {
            let mut y = vec![0.0; m];
            h.apply(col, &mut y);
            y
        })
        .collect(); // g[k][i] = G_ik
    let mut hxb = vec![0.0; m];
    h.apply(&xb, &mut hxb);
    let sig: Vec<f64> = h.rows.iter().map(|&i| obs[i].sigma).collect();
    let d: Vec<f64> = h.rows.iter().zip(&hxb).map(|(&i, hb)| obs[i].value - hb).collect();
    let amat = faer::Mat::<f64>::from_fn(m, m, |i, j| {
        (0..n).map(|k| g[k][i] * g[k][j]).sum::<f64>() + if i == j { sig[i] * sig[i] } else { 0.0 }
    });
    let llt = amat.llt(faer::Side::Lower).unwrap();
    let mut rhs = faer::Mat::<f64>::from_fn(m, 1, |i, _| d[i]);
    llt.solve_in_place(&mut rhs);
    let w: Vec<f64> = (0..n).map(|k| (0..m).map(|i| g[k][i] * rhs[(i, 0)]).sum()).collect();
    let mut dx_kalman = vec![0.0; ns];
    for k in 0..n {
        for p in 0..ns {
            dx_kalman[p] += u[k][p] * w[k];
        }
    }
    let dx: Vec<f64> = res.analysis.iter().zip(&xb).map(|(a, b)| a - b).collect();
    let num: f64 = dx.iter().zip(&dx_kalman).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let den: f64 = dx_kalman.iter().map(|b| b * b).sum::<f64>().sqrt();
    eprintln!("L3DVar vs Kalman: relative difference {:e}", num / den);
    assert!(
        num / den < 1e-6,
        "L3DVar increment differs from the Kalman solution by {:e} (relative, 2-norm)",
        num / den
    );
}

#[test]
fn analyses_are_bit_identical_across_runs_and_contexts() {
    let mut a = open("tanh", "");
    let (xb, _, obs) = sample(&a, "tanh");
    let r1 = a.analyse(&xb, &obs, Method::L3dvar).unwrap();
    let r2 = a.analyse(&xb, &obs, Method::L3dvar).unwrap();
    let mut b = open("tanh", "");
    let r3 = b.analyse(&xb, &obs, Method::L3dvar).unwrap();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>();
    assert_eq!(bits(&r1.analysis), bits(&r2.analysis));
    assert_eq!(bits(&r1.analysis), bits(&r3.analysis));
    let j = |r: &latentda::Analysis| {
        r.report.solver.as_ref().unwrap().iterations.iter().map(|i| i.line()).collect::<Vec<_>>()
    };
    assert_eq!(j(&r1), j(&r3), "cost-function lines must be identical");
}

#[test]
fn analysis_lowers_error_against_truth_and_reports_diagnostics() {
    let mut a = open("tanh", "");
    let (xb, xt, obs) = sample(&a, "tanh");
    let r = a.analyse(&xb, &obs, Method::L3dvar).unwrap();
    let lay = &a.bundle.layout;
    for (iv, v) in lay.variables.iter().enumerate() {
        let rg = lay.var_range(iv);
        let e = |x: &[f64]| rg.clone().map(|i| (x[i] - xt[i]).powi(2)).sum::<f64>().sqrt();
        assert!(
            e(&r.analysis) < 0.8 * e(&xb),
            "{}: analysis error {} vs background {}",
            v.name,
            e(&r.analysis),
            e(&xb)
        );
    }
    let rep = &r.report;
    let s = rep.solver.as_ref().unwrap();
    assert!(s.j_final < 0.2 * s.j_initial);
    assert_eq!(rep.n_obs, 63);
    assert_eq!(rep.n_used, 60);
    assert_eq!(rep.qc_counts["unknown_variable"], 1);
    assert_eq!(rep.qc_counts["invalid"], 1);
    assert_eq!(rep.qc_counts["outside_vertical"], 1);
    for v in &rep.variables {
        assert!(v.oma_rms < v.omb_rms, "{}: O-A rms {} >= O-B rms {}", v.name, v.oma_rms, v.omb_rms);
    }
    // The default linear form costs one TL/AD pair per inner iteration and nothing else; the nonlinear form adds an
    // adjoint (the gradient at each outer loop's start) to the pairs.
    assert_eq!(rep.latent_increment, "linear");
    assert!(rep.timings.n_tl > 0 && rep.timings.n_ad == rep.timings.n_tl, "{:?}", rep.timings);
    let mut nl = open("tanh", "latent_increment = \"nonlinear\"");
    let rn = nl.analyse(&xb, &obs, Method::L3dvar).unwrap();
    assert_eq!(rn.report.latent_increment, "nonlinear");
    assert!(rn.report.timings.n_tl > 0 && rn.report.timings.n_ad > rn.report.timings.n_tl, "{:?}", rn.report.timings);
    let json: serde_json::Value = serde_json::from_str(&rep.to_json()).unwrap();
    assert_eq!(json["method"], "l3dvar");
    assert_eq!(json["backend"], "tract");
    assert!(json["solver"]["iterations"].as_array().unwrap().len() > 3);
}

#[test]
fn write_back_modes_are_consistent() {
    let mut a = open("tanh", "");
    let (xb, _, obs) = sample(&a, "tanh");
    let an = a.analyse_with(&xb, &obs, Method::L3dvar, OutputMode::Analysis).unwrap();
    let inc = a.analyse_with(&xb, &obs, Method::L3dvar, OutputMode::Increment).unwrap();
    for i in 0..xb.len() {
        // Same increment: x_a = x_b + dx up to one rounding of the addition.
        assert!((an.output[i] - xb[i] - inc.output[i]).abs() <= 1e-15 * an.output[i].abs().max(1.0) * 4.0);
    }
    assert!(inc.output.iter().any(|v| *v != 0.0));
    // Full-state mode: the analysis is the decoded state N^-1(D(z_a)), so it carries the AE reconstruction error.
    let fs = a.analyse_with(&xb, &obs, Method::L3dvar, OutputMode::FullState).unwrap();
    assert_eq!(fs.report.formulation, "full_state");
    let d: f64 = fs.output.iter().zip(&an.output).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(d > 0.0, "full-state and increment formulations should differ (reconstruction error)");
}

#[test]
fn baseline_3dvar_single_observation_increment_is_a_column_of_b() {
    let mut a = open("tanh", "bg_check = 0.0");
    let (xb, _, _) = sample(&a, "tanh");
    let lay = a.bundle.layout.clone();
    // One temperature observation exactly at a grid point and model level.
    let (j, i, k) = (3usize, 5usize, 1usize);
    let it = lay.var_index("t").unwrap();
    let (np, nlon) = (lay.grid.npoints(), lay.grid.nlon());
    let p = (lay.variables[it].first_channel + k) * np + j * nlon + i;
    let innov = 1.5;
    let sigma_o = 0.7;
    let obs = vec![Observation {
        var: Some(it),
        var_name: "t".into(),
        lat: lay.grid.lat[j],
        lon: lay.grid.lon[i],
        level: Some(lay.vertical.levels[k]),
        value: xb[p] + innov,
        sigma: sigma_o,
        line: None,
        time: 0.0,
        malformed: None,
    }];
    let r = a.analyse(&xb, &obs, Method::Var3d).unwrap();
    let dx: Vec<f64> = r.analysis.iter().zip(&xb).map(|(a, b)| a - b).collect();
    let mut b = latentda::bmat::static_b::StaticB::new(&lay, a.bundle.baseline.as_ref().unwrap()).unwrap();
    let mut e = vec![0.0; lay.state_len()];
    e[p] = 1.0;
    let mut ute = vec![0.0; lay.state_len()];
    b.sqrt_adjoint(&e, &mut ute);
    let mut col = vec![0.0; lay.state_len()];
    b.sqrt_apply(&ute, &mut col); // B e_p
    let sd = a.bundle.baseline.as_ref().unwrap().sd[p];
    assert!((col[p] - sd * sd).abs() < 1e-9 * sd * sd, "B_pp = {} but sd^2 = {}", col[p], sd * sd);
    let gain = innov / (sigma_o * sigma_o + col[p]);
    let expected: Vec<f64> = col.iter().map(|c| c * gain).collect();
    let rel = max_rel_diff(&dx, &expected);
    assert!(rel < 1e-8, "increment differs from B column by {rel:e}");
    // Univariate: no wind or surface-pressure increment from a temperature observation.
    let iu = lay.var_index("u").unwrap();
    let urange = lay.var_range(iu);
    assert!(dx[urange].iter().all(|v| *v == 0.0));
}

#[test]
fn baseline_correlation_is_gaussian_with_the_bundle_length_scale() {
    let lay = t31_like_layout();
    let np = lay.grid.npoints();
    let l_km = 800.0;
    let stats = latentda::bundle::BaselineStats {
        sd: vec![1.0; lay.state_len()],
        length_scale: vec![l_km; lay.nchan],
        vertical_correlation: vec![Some(latentda_identity(5)), None],
    };
    let mut b = latentda::bmat::static_b::StaticB::new(&lay, &stats).unwrap();
    // Correlation between a point at 45N and points east of it along the same latitude circle.
    let nlon = lay.grid.nlon();
    let j = lay.grid.lat.iter().position(|l| (l - 45.0).abs() < 2.0).unwrap();
    let c = 5 * np; // the surface channel
    let p = c + j * nlon + 10;
    let mut e = vec![0.0; lay.state_len()];
    e[p] = 1.0;
    let mut v = vec![0.0; lay.state_len()];
    b.sqrt_adjoint(&e, &mut v);
    let mut col = vec![0.0; lay.state_len()];
    b.sqrt_apply(&v, &mut col);
    assert!((col[p] - 1.0).abs() < 1e-12, "unit variance, got {}", col[p]);
    let lat = lay.grid.lat[j].to_radians();
    let mut efold = None;
    for d in 1..8 {
        let dist = 6371.0 * 2.0 * (lat.cos() * (3.75f64.to_radians() * d as f64 / 2.0).sin()).asin();
        let corr = col[p + d];
        let fitted = dist / (-2.0 * corr.ln()).sqrt();
        eprintln!("d = {dist:7.1} km  corr = {corr:.4}  implied L = {fitted:.1} km");
        if corr > 0.05 {
            assert!(
                (fitted / l_km - 1.0).abs() < 0.05,
                "implied length scale {fitted} km at {dist} km, bundle says {l_km}"
            );
        }
        if efold.is_none() && corr < (-1.0f64).exp() {
            efold = Some(dist);
        }
    }
    let efold = efold.unwrap();
    // e-folding distance sqrt(2) L, within the grid spacing at this latitude.
    let dx = 6371.0 * 3.75f64.to_radians() * lat.cos();
    assert!(
        (efold - 2f64.sqrt() * l_km).abs() < dx,
        "e-folding distance {efold} km vs sqrt(2) L = {}",
        2f64.sqrt() * l_km
    );
}

fn latentda_identity(n: usize) -> Vec<f64> {
    (0..n * n).map(|k| if k / n == k % n { 1.0 } else { 0.0 }).collect()
}

#[test]
fn latent_b_spreads_a_temperature_observation_to_the_wind() {
    let mut a = open("tanh", "bg_check = 0.0");
    let (xb, _, _) = sample(&a, "tanh");
    let lay = a.bundle.layout.clone();
    let it = lay.var_index("t").unwrap();
    let np = lay.grid.npoints();
    let p = (lay.variables[it].first_channel + 1) * np + 3 * lay.grid.nlon() + 5;
    let obs = vec![Observation {
        var: Some(it),
        var_name: "t".into(),
        lat: lay.grid.lat[3],
        lon: lay.grid.lon[5],
        level: Some(lay.vertical.levels[1]),
        value: xb[p] + 1.0,
        sigma: 0.5,
        line: None,
        time: 0.0,
        malformed: None,
    }];
    let l = a.analyse(&xb, &obs, Method::L3dvar).unwrap();
    let s = a.analyse(&xb, &obs, Method::Var3d).unwrap();
    let iu = lay.var_index("u").unwrap();
    let ur = lay.var_range(iu);
    let rms = |x: &[f64]| (ur.clone().map(|i| (x[i] - xb[i]).powi(2)).sum::<f64>() / ur.len() as f64).sqrt();
    eprintln!("u increment rms from one t observation: latent {:e}, baseline {:e}", rms(&l.analysis), rms(&s.analysis));
    assert!(rms(&l.analysis) > 1e-3, "latent B gives no wind increment");
    assert_eq!(rms(&s.analysis), 0.0, "the univariate baseline must not change the wind");
}

// ---------------------------------------------------------------------------------------------------------------
// Bad input: each gives a clear error naming what is wrong.

fn open_err(dir: &std::path::Path, toml: &str) -> latentda::Error {
    match Analyser::open(dir, opts(toml)) {
        Ok(_) => panic!("open of {} must fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_bundle_file_is_named() {
    let b = copy_fixture("tanh", "missing_file");
    std::fs::remove_file(b.join("decoder_ad.onnx")).unwrap();
    let e = open_err(&b, "");
    assert_eq!(e.status, Status::Bundle);
    assert!(e.message.contains("decoder_ad.onnx"), "{}", e.message);
    let e = open_err(&b.join("nonexistent"), "");
    assert!(e.message.contains("does not exist"), "{}", e.message);
}

#[test]
fn checksum_mismatch_is_detected() {
    let b = copy_fixture("tanh", "checksum");
    let mut bytes = std::fs::read(b.join("decoder.onnx")).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x01;
    std::fs::write(b.join("decoder.onnx"), bytes).unwrap();
    let e = open_err(&b, "");
    assert_eq!(e.status, Status::Bundle);
    assert!(e.message.contains("checksum mismatch") && e.message.contains("decoder.onnx"), "{}", e.message);
}

#[test]
fn corrupt_onnx_with_matching_checksum_is_rejected() {
    let b = copy_fixture("tanh", "corrupt");
    std::fs::write(b.join("decoder_tl.onnx"), b"this is not an ONNX protobuf").unwrap();
    refresh_checksum(&b, "decoder_tl.onnx");
    let e = open_err(&b, "");
    assert_eq!(e.status, Status::Bundle);
    assert!(e.message.contains("decoder_tl.onnx") && e.message.contains("cannot load ONNX graph"), "{}", e.message);
}

#[test]
fn onnx_shapes_contradicting_the_manifest_are_rejected() {
    let b = copy_fixture("tanh", "shapes");
    let m = std::fs::read_to_string(b.join("bundle.toml")).unwrap();
    std::fs::write(b.join("bundle.toml"), m.replace("shape = [4, 2, 4]", "shape = [2, 4, 4]")).unwrap();
    let e = open_err(&b, "");
    assert_eq!(e.status, Status::Bundle);
    assert!(e.message.contains("encoder.onnx") && e.message.contains("shape"), "{}", e.message);
    // A variable with a level count that disagrees with the ONNX channel count: ps declared with 3 levels makes 9
    // channels where the graphs have 7. The normalisation is rewritten for 9 channels (and the baseline dropped) so
    // that the ONNX signature check is what must catch it.
    let b = copy_fixture("tanh", "shapes2");
    let m = std::fs::read_to_string(b.join("bundle.toml")).unwrap();
    let m = m.replace("levels = 0\nlong_name = \"surface pressure\"", "levels = 3\nlong_name = \"surface pressure\"");
    let m: String = m.lines().filter(|l| !l.contains("baseline_b.nc")).map(|l| format!("{l}\n")).collect();
    std::fs::write(b.join("bundle.toml"), m).unwrap();
    std::fs::remove_file(b.join("baseline_b.nc")).unwrap();
    let (mean, sd) =
        ([6.0, 5.0, 4.0, 245.0, 250.0, 256.0, 1e5, 1e5, 1e5], [9.0, 8.0, 7.0, 14.0, 15.0, 16.0, 1e3, 1e3, 1e3]);
    std::fs::remove_file(b.join("normalisation.nc")).unwrap();
    let vars = vec![NcVar::f64("mean", &["channel"], mean.to_vec()), NcVar::f64("std", &["channel"], sd.to_vec())];
    write_nc(&b.join("normalisation.nc"), false, &[("channel".into(), 9)], &vars).unwrap();
    refresh_checksum(&b, "normalisation.nc");
    let e = open_err(&b, "");
    assert_eq!(e.status, Status::Bundle);
    assert!(
        e.message.contains("encoder.onnx")
            && e.message.contains("input 'x'")
            && e.message.contains("[1 or batch, 9, 8, 16]"),
        "{}",
        e.message
    );
}

#[test]
fn nan_in_background_names_variable_and_index() {
    let mut a = open("tanh", "");
    let (mut xb, _, obs) = sample(&a, "tanh");
    let lay = a.bundle.layout.clone();
    let np = lay.grid.npoints();
    let it = lay.var_index("t").unwrap();
    let idx = (lay.variables[it].first_channel + 2) * np + 4 * lay.grid.nlon() + 7;
    xb[idx] = f64::NAN;
    let e = a.analyse(&xb, &obs, Method::L3dvar).unwrap_err();
    assert_eq!(e.status, Status::InvalidData);
    assert!(
        e.message.contains("'t'")
            && e.message.contains("lev index 2")
            && e.message.contains("lat index 4")
            && e.message.contains("lon index 7"),
        "{}",
        e.message
    );
}

#[test]
fn malformed_observation_rows_are_flagged_with_line_numbers_not_fatal() {
    let mut a = open("tanh", "");
    let (xb, _, _) = sample(&a, "tanh");
    let text = "var,lat,lon,level,value,sigma\n\
                t,10,20,0.5,250,1\n\
                t,abc,20,0.5,250,1\n\
                u,10,20\n\
                ps,10,20,,100000,100\n\
                q,10,20,0.5,0.001,0.0001\n";
    let (obs, problems) = parse_csv(text, &a.bundle.layout).unwrap();
    assert_eq!(obs.len(), 5);
    assert_eq!(problems.len(), 2);
    assert_eq!(problems[0].line, 3);
    assert!(problems[0].message.contains("line 3") && problems[0].message.contains("lat"), "{}", problems[0].message);
    assert_eq!(problems[1].line, 4);
    let r = a.analyse(&xb, &obs, Method::L3dvar).unwrap();
    assert_eq!(r.qc[1], QcFlag::Invalid);
    assert_eq!(r.qc[2], QcFlag::Invalid);
    assert_eq!(r.qc[4], QcFlag::UnknownVariable);
    assert_eq!(r.report.n_used, 2 - r.qc.iter().filter(|q| **q == QcFlag::BackgroundCheck).count());
    // A bad header is an error naming the line.
    let e = parse_csv("variable,lat\nt,1", &a.bundle.layout).unwrap_err();
    assert!(e.message.contains("line 1"), "{}", e.message);
}

#[test]
fn background_check_rejects_gross_errors_without_aborting() {
    let mut a = open("tanh", "bg_check = 4.0");
    let (xb, _, mut obs) = sample(&a, "tanh");
    obs[0].value += 1000.0;
    let r = a.analyse(&xb, &obs, Method::L3dvar).unwrap();
    assert_eq!(r.qc[0], QcFlag::BackgroundCheck);
    assert_eq!(r.report.qc_counts["background_check"], 1);
}

#[test]
fn cuda_without_onnx_runtime_is_an_error_not_a_fallback() {
    let e = open_err(&fixture("tanh"), "device = \"cuda:0\"");
    assert_eq!(e.status, Status::Backend);
    assert!(e.message.contains("cuda:0"), "{}", e.message);
}

#[test]
fn invalid_options_are_rejected_with_the_key() {
    for (t, key) in [
        ("outer_loops = 0", "outer_loops"),
        ("backend = \"gpu\"", "gpu"),
        ("bogus = 1", "bogus"),
        ("output = \"x\"", "output"),
    ] {
        let e = Options::from_toml(t).unwrap_err();
        assert!(e.message.contains(key), "{t}: {}", e.message);
    }
}
