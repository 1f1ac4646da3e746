//! Hybrid latent-static B, the hydrostatic baseline and the background check (issue 12): adjoint tests of every B
//! square root, the hybrid analysis against the closed-form Kalman solution, the hydrostatic operator against its
//! formula, the variance verb against brute-force diagonals, and the background check with and without a baseline.

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use latentda::bmat::hydrostatic::{integration_matrix, Hydrostatic, EPS_VIRTUAL, R_DRY};
use latentda::bmat::static_b::StaticB;
use latentda::bmat::BOperator;
use latentda::bundle::grid::{Grid, GridKind, Layout, Vertical, VerticalKind};
use latentda::bundle::BaselineStats;
use latentda::diag::checks::Rng;
use latentda::obs::operator::ObsOperator;
use latentda::obs::{Observation, QcFlag};
use latentda::var::options::BKind;
use latentda::{Analyser, Method, Options};

fn open(name: &str, toml: &str) -> Analyser {
    Analyser::open(fixture(name), Options::from_toml(toml).unwrap()).unwrap()
}

fn sample(a: &Analyser, dir: &std::path::Path) -> (Vec<f64>, Vec<Observation>) {
    let s = dir.join("sample");
    let lay = &a.bundle.layout;
    let xb = latentda::bundle::ncio::read_state(&s.join("background.nc"), lay).unwrap();
    let (obs, _) = latentda::obs::read_csv(&s.join("obs.csv"), lay).unwrap();
    (xb, obs)
}

/// A T-something layout with t, q, z (geopotential) on 5 sigma levels and ps, and statistics for it.
fn balanced_layout(kind: VerticalKind, with_q: bool) -> (Layout, Vec<String>, Vec<f64>, BaselineStats) {
    let lat: Vec<f64> = (0..12).map(|j| 82.5 - 15.0 * j as f64).collect();
    let lon: Vec<f64> = (0..24).map(|i| 15.0 * i as f64).collect();
    let levels = match kind {
        VerticalKind::Sigma => vec![0.1, 0.3, 0.5, 0.7, 0.9],
        VerticalKind::Pressure => vec![20000.0, 40000.0, 60000.0, 80000.0, 95000.0],
    };
    let vert = Vertical::new(kind, levels).unwrap();
    let mut vars = vec![("t".to_string(), "K".to_string(), 5)];
    if with_q {
        vars.push(("q".into(), "kg kg-1".into(), 5));
    }
    vars.push(("z".into(), "m2 s-2".into(), 5));
    vars.push(("ps".into(), "Pa".into(), 0));
    let units: Vec<String> = vars.iter().map(|v| v.1.clone()).collect();
    let lay = Layout::new(Grid::new(GridKind::Regular, lat, lon).unwrap(), vert, vars).unwrap();
    let np = lay.grid.npoints();
    let mut mean = vec![0.0; lay.nchan];
    for k in 0..5 {
        mean[k] = 220.0 + 12.0 * k as f64;
        if with_q {
            mean[5 + k] = 1e-3 * k as f64;
        }
    }
    mean[lay.nchan - 1] = 98000.0;
    let nvar = lay.variables.len();
    let corr = |l: f64| (0..25).map(|i| (-((i / 5) as f64 - (i % 5) as f64).abs() / l).exp()).collect::<Vec<f64>>();
    let stats = BaselineStats {
        sd: (0..lay.state_len()).map(|i| 1.0 + 0.1 * ((i / np) as f64) + 0.05 * ((i % 7) as f64)).collect(),
        length_scale: (0..lay.nchan).map(|c| 900.0 + 150.0 * (c % 4) as f64).collect(),
        vertical_correlation: (0..nvar)
            .map(|v| if lay.variables[v].is_surface() { None } else { Some(corr(1.5 + v as f64)) })
            .collect(),
    };
    (lay, units, mean, stats)
}

#[test]
fn hydrostatic_operator_has_an_exact_adjoint() {
    for (kind, q) in [(VerticalKind::Sigma, false), (VerticalKind::Sigma, true), (VerticalKind::Pressure, true)] {
        let (lay, units, mean, _) = balanced_layout(kind, q);
        let h = Hydrostatic::for_layout(&lay, &units, &mean).unwrap().expect("t and z present");
        let mut rng = Rng::new(5);
        let x = rng.normals(lay.state_len());
        let y = rng.normals(lay.state_len());
        let mut hx = x.clone();
        h.apply(&mut hx);
        let mut hty = y.clone();
        h.adjoint(&mut hty);
        let (lhs, rhs) = (latentda::numeric::dot(&hx, &y), latentda::numeric::dot(&x, &hty));
        let rel = (lhs - rhs).abs() / lhs.abs().max(rhs.abs());
        eprintln!("{kind:?} q={q}: <M x, y> = {lhs:.12e}, <x, M^T y> = {rhs:.12e}, rel {rel:.2e}");
        assert!(rel < 1e-12, "hydrostatic adjoint rel {rel:e}");
    }
}

#[test]
fn single_temperature_increment_gives_the_closed_form_geopotential() {
    // dT = 1 K at level j of one column: dz_k = R A_kj (trapezoid in ln sigma, surface sigma = 1), written out here
    // independently of the library's matrix.
    let (lay, units, mean, _) = balanced_layout(VerticalKind::Sigma, false);
    let h = Hydrostatic::for_layout(&lay, &units, &mean).unwrap().unwrap();
    let s = &lay.vertical.levels;
    let np = lay.grid.npoints();
    let (it, iz) = (lay.var_index("t").unwrap(), lay.var_index("z").unwrap());
    let p = 3 * lay.grid.nlon() + 7;
    for j in 0..5 {
        let mut x = vec![0.0; lay.state_len()];
        x[(lay.variables[it].first_channel + j) * np + p] = 1.0;
        h.apply(&mut x);
        for k in 0..5 {
            let expected = R_DRY
                * if k > j {
                    0.0
                } else if j == 4 {
                    (1.0 / s[4]).ln() + if k < 4 { 0.5 * (s[4] / s[3]).ln() } else { 0.0 }
                } else if k == j {
                    0.5 * (s[j + 1] / s[j]).ln()
                } else {
                    0.5 * (s[j + 1] / s[j - 1]).ln()
                };
            let got = x[(lay.variables[iz].first_channel + k) * np + p];
            assert!((got - expected).abs() < 1e-10 * R_DRY, "dT at level {j}: dz_{k} = {got}, closed form {expected}");
        }
        // Nothing leaks to other columns.
        let zr = lay.var_range(iz);
        assert_eq!(x[zr].iter().filter(|v| **v != 0.0).count(), j + 1);
    }
    // Virtual temperature: with q the coefficient of dT is (1 + eps q_ref), and dq enters with eps T_ref.
    let (lay, units, mean, _) = balanced_layout(VerticalKind::Sigma, true);
    let h = Hydrostatic::for_layout(&lay, &units, &mean).unwrap().unwrap();
    let a = integration_matrix(s, 1.0);
    let (ct, cq, _) = h.coefficients();
    for k in 0..5 {
        for j in 0..5 {
            let (tr, qr) = (mean[j], mean[5 + j]);
            assert!((ct[k * 5 + j] - R_DRY * a[k * 5 + j] * (1.0 + EPS_VIRTUAL * qr)).abs() < 1e-9);
            assert!((cq[k * 5 + j] - R_DRY * a[k * 5 + j] * EPS_VIRTUAL * tr).abs() < 1e-6);
        }
    }
    // Pressure levels: a surface-pressure increment raises every level by R Tv_bottom / ps_ref dps.
    let (lay, units, mean, _) = balanced_layout(VerticalKind::Pressure, false);
    let h = Hydrostatic::for_layout(&lay, &units, &mean).unwrap().unwrap();
    let ips = lay.var_index("ps").unwrap();
    let mut x = vec![0.0; lay.state_len()];
    x[lay.variables[ips].first_channel * np + p] = 100.0;
    h.apply(&mut x);
    let want = R_DRY * mean[4] / 98000.0 * 100.0;
    for k in 0..5 {
        let got = x[(lay.variables[iz].first_channel + k) * np + p];
        assert!((got - want).abs() < 1e-9 * want, "dps: dz_{k} = {got}, expected {want}");
    }
}

#[test]
fn static_b_is_balanced_and_z_has_no_control() {
    let (lay, units, mean, stats) = balanced_layout(VerticalKind::Sigma, true);
    let h = Hydrostatic::for_layout(&lay, &units, &mean).unwrap().unwrap();
    let mut b = StaticB::with_balance(&lay, &stats, Some(h.clone()), 1.0).unwrap();
    let np = lay.grid.npoints();
    assert_eq!(b.size(), (lay.nchan - 5) * np, "z has no control variable");
    let mut rng = Rng::new(9);
    let v = rng.normals(b.size());
    let mut x = vec![0.0; lay.state_len()];
    b.sqrt_apply(&v, &mut x);
    // Every draw satisfies the balance exactly: z equals the hydrostatic z of its own t and q.
    let mut xb = x.clone();
    h.apply(&mut xb);
    assert_eq!(max_rel_diff(&x, &xb), 0.0, "z of U_s v is not the balanced z");
    // Adjoint of the balanced U_s.
    let u = rng.normals(lay.state_len());
    let mut utu = vec![0.0; b.size()];
    b.sqrt_adjoint(&u, &mut utu);
    let (lhs, rhs) = (latentda::numeric::dot(&x, &u), latentda::numeric::dot(&v, &utu));
    assert!((lhs - rhs).abs() < 1e-12 * lhs.abs().max(rhs.abs()), "<U v, u> = {lhs}, <v, U^T u> = {rhs}");
    // A z "observation" (unit vector on z) reaches the t and q controls, not its own.
    let iz = lay.var_index("z").unwrap();
    let mut e = vec![0.0; lay.state_len()];
    e[(lay.variables[iz].first_channel + 2) * np + 40] = 1.0;
    b.sqrt_adjoint(&e, &mut utu);
    assert!(utu.iter().any(|g| g.abs() > 0.0));
}

#[test]
fn static_variance_verb_equals_brute_force_diagonal() {
    // diag(U_s U_s^T)_p = |U_s^T e_p|^2, for the balanced B (z from t, q) with a selection and a variance factor.
    let (lay, units, mean, stats) = balanced_layout(VerticalKind::Sigma, true);
    let h = Hydrostatic::for_layout(&lay, &units, &mean).unwrap();
    let mut b = StaticB::with_balance(&lay, &stats, h, 2.5).unwrap();
    let keep: Vec<bool> = lay.variables.iter().map(|v| v.name != "t").collect(); // q, z, ps: z still from t and q
    b.set_selection(&lay, &keep);
    let n = b.size();
    let mut worst: f64 = 0.0;
    let var = b.variance().to_vec();
    let mut col = vec![0.0; n];
    for p in (0..lay.state_len()).step_by(7) {
        let mut e = vec![0.0; lay.state_len()];
        e[p] = 1.0;
        b.sqrt_adjoint(&e, &mut col);
        let brute: f64 = col.iter().map(|c| c * c).sum();
        worst = worst.max((var[p] - brute).abs() / brute.max(1e-300));
        if !keep[lay.channel_owner(p / lay.grid.npoints()).0] {
            assert_eq!(var[p], 0.0);
        }
    }
    eprintln!("static variance verb vs brute force: worst relative difference {worst:.2e}");
    assert!(worst < 1e-10, "static variance differs from diag(U U^T) by {worst:e}");
}

#[test]
fn latent_variance_verb_matches_brute_force_exact_and_randomised() {
    let mut a = open("tanh", "");
    let (xb, _) = sample(&a, &fixture("tanh"));
    let mut lb = a.latent_b(&xb).unwrap();
    let (n, m) = (lb.control_size(), lb.state_len());
    // Brute force through the adjoint: diag(U U^T)_p = |U^T e_p|^2 (a code path the verb does not use).
    let mut brute = vec![0.0; m];
    let mut col = vec![0.0; n];
    for p in 0..m {
        let mut e = vec![0.0; m];
        e[p] = 1.0;
        lb.sqrt_ad(&mut a.ae, &e, &mut col).unwrap();
        brute[p] = col.iter().map(|c| c * c).sum();
    }
    assert!(lb.variance_is_exact(), "32 latent elements <= 32 samples: exact");
    let exact = lb.variance(&mut a.ae).unwrap().to_vec();
    let rel = max_rel_diff(&exact, &brute);
    eprintln!("latent variance (exact, {n} TL columns) vs brute force via AD: max rel diff {rel:.2e}");
    assert!(rel < 1e-5, "exact latent variance differs from brute force by {rel:e}");
    // Randomised with N < n draws: relative error of each element ~ sqrt(2/N).
    let samples = 24;
    lb.set_variance_samples(samples);
    assert!(!lb.variance_is_exact());
    let est = lb.variance(&mut a.ae).unwrap().to_vec();
    let errs: Vec<f64> = est.iter().zip(&brute).map(|(e, b)| e / b - 1.0).collect();
    let rms = (errs.iter().map(|e| e * e).sum::<f64>() / m as f64).sqrt();
    let bias = errs.iter().sum::<f64>() / m as f64;
    let theory = (2.0 / samples as f64).sqrt();
    eprintln!("randomised latent variance ({samples} draws): rms relative error {rms:.3} (theory {theory:.3}), mean {bias:+.3}");
    assert!(rms > 0.3 * theory && rms < 2.0 * theory, "rms relative error {rms} vs sqrt(2/N) = {theory}");
    assert!(lb.variance(&mut a.ae).unwrap() == est.as_slice(), "cached, deterministic");
}

#[test]
fn b_operators_pass_their_adjoint_tests() {
    let mut a = open("tanh", "hybrid_alpha = 2.0\nhybrid_beta = 0.5\nhybrid_variables = [\"t\", \"ps\"]");
    let (xb, _) = sample(&a, &fixture("tanh"));
    let z = a.encode_background(&xb).unwrap();
    for (kind, gate) in [(BKind::Latent, 1e-5), (BKind::Static, 1e-12), (BKind::Hybrid, 1e-5)] {
        let n = a.prepare_b(kind, Some(&z)).unwrap();
        assert_eq!(n, a.control_size(kind).unwrap());
        let t = a.with_b(kind, |b, ae| b.sqrt_test(ae, 17)).unwrap();
        eprintln!("{kind:?}: control size {n}, adjoint test rel {:.2e}", t.rel);
        assert!(t.rel < gate, "{kind:?} adjoint test rel {:e}", t.rel);
    }
    assert_eq!(a.control_size(BKind::Hybrid).unwrap(), 32 + 4 * 128, "latent + static t (3 levels) and ps");
    // diag of the hybrid = alpha diag(latent) + beta P diag(static) P.
    let vl = a.with_b(BKind::Latent, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
    a.prepare_b(BKind::Static, None).unwrap();
    let vs = a.with_b(BKind::Static, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
    a.prepare_b(BKind::Hybrid, Some(&z)).unwrap();
    let vh = a.with_b(BKind::Hybrid, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
    let iu = a.bundle.layout.var_index("u").unwrap();
    let ur = a.bundle.layout.var_range(iu);
    // alpha is folded into the latent variances (issue 23, item 3: the minimisation's operator), so the latent part
    // is exactly the latent B built with variances x 2 (latent_variance_factor = 2), and 2 diag(latent) up to the
    // float32 decoder TL's round-off
    let mut a2 = open("tanh", "latent_variance_factor = 2.0");
    a2.prepare_b(BKind::Latent, Some(&z)).unwrap();
    let vl2 = a2.with_b(BKind::Latent, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
    for i in 0..vh.len() {
        let want = vl2[i] + if ur.contains(&i) { 0.0 } else { 0.5 * vs[i] };
        assert!((vh[i] - want).abs() <= 1e-12 * want, "hybrid variance at {i}: {} vs {want}", vh[i]);
        assert!(
            (vl2[i] - 2.0 * vl[i]).abs() <= 1e-6 * vl2[i],
            "latent variance x 2 at {i}: {} vs {}",
            vl2[i],
            2.0 * vl[i]
        );
    }
}

#[test]
fn hybrid_with_linear_decoder_equals_closed_form_kalman_solution() {
    use faer::linalg::solvers::Solve;
    let (alpha, beta) = (2.0, 0.5);
    let opt = "outer_loops = 1\nmax_inner = 400\ngradient_reduction = 1e-13\nbg_check = 0.0\n\
               hybrid_alpha = 2.0\nhybrid_beta = 0.5\nhybrid_variables = [\"t\", \"ps\"]";
    let mut a = open("linear", opt);
    let (xb, obs) = sample(&a, &fixture("linear"));
    let res = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
    // Independent: columns of U_l (TL of unit vectors) and of the full, unselected U_s; P applied here.
    let lay = a.bundle.layout.clone();
    let mut flags = vec![QcFlag::Used; obs.len()];
    let h = ObsOperator::build(&lay, &obs, &mut flags);
    let (m, ns) = (h.nrows(), lay.state_len());
    let mut lb = a.latent_b(&xb).unwrap();
    let mut sb = StaticB::new(&lay, a.bundle.baseline.as_ref().unwrap()).unwrap();
    let keep: Vec<bool> = (0..ns).map(|i| lay.channel_owner(i / lay.grid.npoints()).0 != 0).collect(); // not u
    let mut cols: Vec<(f64, Vec<f64>)> = Vec::new(); // (weight^2, column of U)
    for k in 0..lb.control_size() {
        let mut e = vec![0.0; lb.control_size()];
        e[k] = 1.0;
        let mut c = vec![0.0; ns];
        lb.sqrt(&mut a.ae, &e, &mut c).unwrap();
        cols.push((alpha, c));
    }
    for k in 0..sb.size() {
        let mut e = vec![0.0; sb.size()];
        e[k] = 1.0;
        let mut c = vec![0.0; ns];
        sb.sqrt_apply(&e, &mut c);
        c.iter_mut().zip(&keep).for_each(|(v, k)| {
            if !k {
                *v = 0.0
            }
        });
        cols.push((beta, c));
    }
    let g: Vec<Vec<f64>> = cols
        .iter()
        .map(|(_, c)| {
            let mut y = vec![0.0; m];
            h.apply(c, &mut y);
            y
        })
        .collect();
    let mut hxb = vec![0.0; m];
    h.apply(&xb, &mut hxb);
    let sig: Vec<f64> = h.rows.iter().map(|&i| obs[i].sigma).collect();
    let d: Vec<f64> = h.rows.iter().zip(&hxb).map(|(&i, hb)| obs[i].value - hb).collect();
    // (H B H^T + R) y = d, dx = B H^T y with B = sum_k w_k c_k c_k^T.
    let amat = faer::Mat::<f64>::from_fn(m, m, |i, j| {
        cols.iter().zip(&g).map(|((w, _), gk)| w * gk[i] * gk[j]).sum::<f64>()
            + if i == j { sig[i] * sig[i] } else { 0.0 }
    });
    let llt = amat.llt(faer::Side::Lower).unwrap();
    let mut rhs = faer::Mat::<f64>::from_fn(m, 1, |i, _| d[i]);
    llt.solve_in_place(&mut rhs);
    let mut dx_kalman = vec![0.0; ns];
    for ((w, c), gk) in cols.iter().zip(&g) {
        let coef = w * (0..m).map(|i| gk[i] * rhs[(i, 0)]).sum::<f64>();
        for p in 0..ns {
            dx_kalman[p] += coef * c[p];
        }
    }
    let dx: Vec<f64> = res.analysis.iter().zip(&xb).map(|(a, b)| a - b).collect();
    let num: f64 = dx.iter().zip(&dx_kalman).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let den: f64 = dx_kalman.iter().map(|b| b * b).sum::<f64>().sqrt();
    let s = res.report.solver.as_ref().unwrap();
    eprintln!(
        "hybrid vs Kalman: relative difference {:.2e} ({} CG iterations, Jb latent {:.4e}, Jb static {:.4e})",
        num / den,
        s.inner_total,
        res.report.jb_parts["latent"],
        res.report.jb_parts["static"]
    );
    assert!(
        num / den < 1e-6,
        "hybrid increment differs from the Kalman solution by {:e} (relative, 2-norm)",
        num / den
    );
    let jb = res.report.jb_parts["latent"] + res.report.jb_parts["static"];
    assert!((jb - s.jb_final).abs() <= 1e-9 * jb, "Jb parts {jb} vs Jb {}", s.jb_final);
    assert_eq!(res.report.method, "hybrid");
    assert_eq!(res.report.control_size, 24 + 4 * 128);
}

/// Observations placed at given multiples of the check threshold k sqrt(sigma_o^2 + sigma_b^2), with sigma_b from
/// the variance verb of the B in force; returns the flags of an analysis.
fn check_flags(a: &mut Analyser, xb: &[f64], method: Method, factors: &[f64]) -> (Vec<QcFlag>, String) {
    let lay = a.bundle.layout.clone();
    let it = lay.var_index("t").unwrap();
    let kind = BKind::of_method(method);
    let z = a.encode_background(xb).unwrap();
    a.prepare_b(kind, Some(&z)).unwrap();
    let sd: Vec<f64> = a.with_b(kind, |b, ae| Ok(b.variance(ae)?.iter().map(|v| v.sqrt()).collect())).unwrap();
    let mut obs = Vec::new();
    for (i, f) in factors.iter().enumerate() {
        let mut o = Observation {
            var: Some(it),
            var_name: "t".into(),
            lat: 40.0 - 20.0 * i as f64,
            lon: 30.0 + 40.0 * i as f64,
            level: Some(0.5),
            value: 0.0,
            sigma: 0.3,
            line: None,
            time: 0.0,
            malformed: None,
        };
        let mut fl = vec![QcFlag::Used];
        let h = ObsOperator::build(&lay, std::slice::from_ref(&o), &mut fl);
        let (mut hx, mut sb) = (vec![0.0], vec![0.0]);
        h.apply(xb, &mut hx);
        h.apply(&sd, &mut sb);
        o.value = hx[0] + f * 5.0 * (o.sigma * o.sigma + sb[0] * sb[0]).sqrt();
        obs.push(o);
    }
    let r = a.analyse(xb, &obs, method).unwrap();
    (r.qc, r.report.background_check.sigma_b)
}

#[test]
fn background_check_uses_the_b_in_force_with_and_without_a_baseline() {
    // Without a baseline file: the latent B's sigma_b (before: 0, so every innovation beyond 5 sigma_o failed).
    let dir = copy_fixture("tanh", "bgcheck_no_baseline");
    std::fs::remove_file(dir.join("baseline_b.nc")).unwrap();
    let m = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
    // Neither the file, its checksum nor the `baseline` key (a baseline named in the manifest must exist).
    let m: String = m
        .lines()
        .filter(|l| !l.starts_with("\"baseline_b.nc\"") && !l.starts_with("baseline = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.join("bundle.toml"), m).unwrap();
    let mut a = Analyser::open(&dir, Options::default()).unwrap();
    assert!(a.bundle.baseline.is_none());
    let (xb, _) = sample(&a, &dir);
    let (flags, how) = check_flags(&mut a, &xb, Method::L3dvar, &[0.9, 1.1, -0.95, -1.2]);
    eprintln!("no baseline, l3dvar: {flags:?} ({how})");
    assert_eq!(flags, [QcFlag::Used, QcFlag::BackgroundCheck, QcFlag::Used, QcFlag::BackgroundCheck]);
    assert!(how.starts_with("latent B: exact"), "{how}");
    // 0.9 x 5 sqrt(sigma_o^2 + sigma_b^2) is far beyond 5 sigma_o here: the old sigma_b = 0 would have rejected it.
    let e = a.analyse(&xb, &[], Method::Var3d).unwrap_err();
    assert!(e.message.contains("baseline"), "{}", e.message);
    // With the baseline: each method checks with its own B (latent, static exact, hybrid sum).
    let mut a = open("tanh", "");
    let (xb, _) = sample(&a, &fixture("tanh"));
    for (method, prefix) in
        [(Method::L3dvar, "latent B"), (Method::Var3d, "static B: exact"), (Method::Hybrid, "hybrid")]
    {
        let (flags, how) = check_flags(&mut a, &xb, method, &[0.9, 1.1, -0.95, -1.2]);
        eprintln!("{method:?}: {flags:?} ({how})");
        assert_eq!(flags, [QcFlag::Used, QcFlag::BackgroundCheck, QcFlag::Used, QcFlag::BackgroundCheck], "{method:?}");
        assert!(how.starts_with(prefix), "{how}");
    }
}

#[test]
fn hybrid_settings_come_from_the_manifest_and_options_override_them() {
    let dir = copy_fixture("tanh", "hybrid_manifest");
    let m = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
    let m = m.replace("[checksums]", "[hybrid]\nalpha = 3.0\nbeta = 0.25\nvariables = [\"ps\"]\n\n[checksums]");
    let m = m.replace("baseline = \"baseline_b.nc\"", "baseline = \"baseline_b.nc\"\nbaseline_variance_factor = 0.5");
    std::fs::write(dir.join("bundle.toml"), &m).unwrap();
    let a = Analyser::open(&dir, Options::default()).unwrap();
    let hs = a.hybrid_settings().unwrap();
    assert_eq!((hs.alpha, hs.beta, hs.keep.clone()), (3.0, 0.25, vec![false, false, true]));
    assert_eq!(a.bundle.baseline_variance_factor, 0.5);
    let a = Analyser::open(&dir, Options::from_toml("hybrid_beta = 1.5\nhybrid_variables = [\"u\", \"t\"]").unwrap())
        .unwrap();
    let hs = a.hybrid_settings().unwrap();
    assert_eq!((hs.alpha, hs.beta, hs.keep), (3.0, 1.5, vec![true, true, false]));
    // Defaults without a [hybrid] table: alpha 1, beta 1, all variables.
    let a = open("tanh", "");
    assert_eq!(a.hybrid_settings().unwrap().keep, vec![true; 3]);
    assert_eq!((a.bundle.hybrid.alpha, a.bundle.hybrid.beta), (1.0, 1.0));
    // Bad values name the key.
    std::fs::write(dir.join("bundle.toml"), m.replace("variables = [\"ps\"]", "variables = [\"w\"]")).unwrap();
    let e = Analyser::open(&dir, Options::default()).unwrap_err();
    assert!(e.message.contains("hybrid.variables") && e.message.contains("'w'"), "{}", e.message);
    let e = Options::from_toml("hybrid_alpha = -1.0").unwrap_err();
    assert!(e.message.contains("hybrid_alpha"), "{}", e.message);
    let a = Analyser::open(fixture("tanh"), Options::from_toml("hybrid_variables = [\"x\"]").unwrap()).unwrap();
    assert!(a.hybrid_settings().unwrap_err().message.contains("'x'"));
}

#[test]
fn baseline_variance_factor_scales_the_static_b() {
    let mut a = open("tanh", "");
    a.prepare_b(BKind::Static, None).unwrap();
    let v1 = a.with_b(BKind::Static, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
    let mut o = a.options().clone();
    o.baseline_variance_factor = Some(3.0);
    a.set_options(o).unwrap();
    a.prepare_b(BKind::Static, None).unwrap();
    let v3 = a.with_b(BKind::Static, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
    for (x, y) in v1.iter().zip(&v3) {
        assert!((3.0 * x - y).abs() <= 1e-12 * y.abs(), "{x} x 3 != {y}");
    }
}

/// `latent_variance_factor` multiplies the latent B's variances (a host cycling with shorter forecasts than the
/// bundle was calibrated on scales it down), in the latent B served to hosts, in the hybrid's latent part and in
/// the analyses; changing the option relinearises nothing but the variances.
#[test]
fn latent_variance_factor_scales_the_latent_b() {
    let mut a = open("tanh", "hybrid_alpha = 2.0\nhybrid_beta = 0.5");
    let (xb, obs) = sample(&a, &fixture("tanh"));
    let z = a.encode_background(&xb).unwrap();
    let variances = |a: &mut latentda::Analyser, kind: BKind| {
        a.prepare_b(kind, Some(&z)).unwrap();
        a.with_b(kind, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap()
    };
    let (l1, h1) = (variances(&mut a, BKind::Latent), variances(&mut a, BKind::Hybrid));
    a.prepare_b(BKind::Static, None).unwrap();
    let s1 = a.with_b(BKind::Static, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
    // (increment norm, sum over variables of (O-A rms / O-B rms)^2)
    let inc = |a: &mut latentda::Analyser| {
        let r = a.analyse(&xb, &obs, Method::L3dvar).unwrap();
        let fit: f64 = r.report.variables.iter().map(|v| (v.oma_rms / v.omb_rms).powi(2)).sum();
        (r.analysis.iter().zip(&xb).map(|(x, b)| (x - b).powi(2)).sum::<f64>().sqrt(), fit)
    };
    let d1 = inc(&mut a);
    let mut o = a.options().clone();
    o.latent_variance_factor = Some(0.25);
    a.set_options(o).unwrap();
    let (l4, h4) = (variances(&mut a, BKind::Latent), variances(&mut a, BKind::Hybrid));
    // hybrid = alpha f diag(latent) + beta diag(static), alpha f folded into the latent variances: exactly the latent
    // B with factor alpha f = 0.5, and alpha f diag(latent) up to the float32 decoder TL's round-off
    let mut a5 = open("tanh", "latent_variance_factor = 0.5");
    a5.prepare_b(BKind::Latent, Some(&z)).unwrap();
    let l5 = a5.with_b(BKind::Latent, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
    for i in 0..l1.len() {
        assert!((0.25 * l1[i] - l4[i]).abs() <= 1e-12 * l1[i], "latent variance at {i}: {} x 0.25 != {}", l1[i], l4[i]);
        let want = l5[i] + 0.5 * s1[i];
        assert!((h4[i] - want).abs() <= 1e-9 * want, "hybrid variance at {i}: {} vs {want} (before: {})", h4[i], h1[i]);
        assert!(
            (l5[i] - 2.0 * 0.25 * l1[i]).abs() <= 1e-6 * l5[i],
            "latent variance x 0.5 at {i}: {} vs {}",
            l5[i],
            0.5 * l1[i]
        );
    }
    let d4 = inc(&mut a);
    eprintln!("L3DVar (increment norm, O-A fit): factor 1 {d1:?}, factor 0.25 {d4:?}");
    // a smaller latent B pulls less toward the observations: a smaller increment that fits them less closely
    assert!(d4.0 < d1.0 && d4.1 > d1.1, "factor 0.25 {d4:?} vs factor 1 {d1:?}");
    assert!(latentda::Options::from_toml("latent_variance_factor = 0.0")
        .unwrap_err()
        .to_string()
        .contains("latent_variance_factor"));
}

/// `baseline_length_scale_factor` shortens every horizontal correlation of the static B and leaves its variances:
/// the kernel is Gaussian in distance, so the log-correlation between two points scales by 1 / factor^2.
#[test]
fn baseline_length_scale_factor_shortens_the_static_correlations() {
    let mut a = open("tanh", "");
    let n = a.bundle.layout.state_len();
    let grid = &a.bundle.layout.grid;
    let (nlat, nlon) = (grid.nlat(), grid.nlon());
    let (j, i) = (nlat / 3, nlon / 2);
    let p = j * nlon + i; // first channel, a mid-latitude point; q its eastern neighbour
    let q = p + 1;
    let column = |a: &mut Analyser, factor: Option<f64>| {
        let mut o = a.options().clone();
        o.baseline_length_scale_factor = factor;
        a.set_options(o).unwrap();
        a.prepare_b(BKind::Static, None).unwrap();
        a.with_b(BKind::Static, |b, ae| {
            let mut e = vec![0.0; n];
            e[p] = 1.0;
            let mut v = vec![0.0; b.control_size()];
            b.sqrt_ad(ae, &e, &mut v)?;
            let mut x = vec![0.0; n];
            b.sqrt(ae, &v, &mut x)?;
            Ok((x, b.variance(ae)?.to_vec()))
        })
        .unwrap()
    };
    let corr = |(x, var): &(Vec<f64>, Vec<f64>)| x[q] / (var[p] * var[q]).sqrt();
    let (b1, b07) = (column(&mut a, None), column(&mut a, Some(0.7)));
    let (c1, c07) = (corr(&b1), corr(&b07));
    // Gaussian in the continuum: ln c scales by 1 / 0.49; on this coarse grid (c1 about a grid step) more
    assert!(c1 > 0.05 && c1 < 0.99 && c07 > 0.0, "correlations {c1} (factor 1), {c07} (factor 0.7)");
    let ratio = c07.ln() / c1.ln();
    assert!(ratio > 1.0 / 0.49 * 0.9, "log-correlation ratio {ratio}, at least about 1 / 0.7^2 ({c1}, {c07})");
    // the option's B is the one built from statistics with every length scaled
    let mut stats = a.bundle.baseline.clone().unwrap();
    stats.length_scale.iter_mut().for_each(|l| *l *= 0.7);
    let hydro = Hydrostatic::for_bundle(&a.bundle).unwrap();
    let mut manual = StaticB::with_balance(&a.bundle.layout, &stats, hydro, a.bundle.baseline_variance_factor).unwrap();
    let mut e = vec![0.0; n];
    e[p] = 1.0;
    let mut v = vec![0.0; manual.size()];
    manual.sqrt_adjoint(&e, &mut v);
    let mut x = vec![0.0; n];
    manual.sqrt_apply(&v, &mut x);
    assert_eq!(x, b07.0, "B e_p of the option differs from the B of scaled statistics");
    for (x, y) in b1.1.iter().zip(&b07.1) {
        assert!((x - y).abs() <= 1e-12 * x.abs().max(1e-300), "variance {x} changed to {y}");
    }
    let e = Options::from_toml("baseline_length_scale_factor = 0.0").unwrap_err();
    assert!(e.message.contains("baseline_length_scale_factor"), "{}", e.message);
}
