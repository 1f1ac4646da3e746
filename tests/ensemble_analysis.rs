//! Ensemble members in the analysis (issue 24): method hybrid with members is latent hybrid EnVar (latent + static +
//! latent ensemble B, control [w, v, a]), method 3dvar with members is hybrid 3DEnVar (static + model-space ensemble
//! B, control [v, a]). Without members nothing changes; with a linear decoder the analyses are the Kalman solutions
//! of the three-part and two-part B, built from the host operator (`with_b_in_force`) and independently from the
//! parts; K < 2 is a clear error; the CLI's `--ensemble` runs end to end.

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use faer::linalg::solvers::Solve;
use latentda::bmat::ensemble::{LatentEnsembleB, ModelEnsembleB};
use latentda::bmat::localisation::Localisation;
use latentda::bmat::BOperator;
use latentda::numeric::Rng;
use latentda::obs::operator::ObsOperator;
use latentda::obs::{Observation, QcFlag};
use latentda::var::options::BKind;
use latentda::{Analyser, Method, Options};

/// Exact solve: one outer loop (the linear latent form is quadratic), converged far below the default target.
const EXACT: &str = "outer_loops = 1\nmax_inner = 400\ngradient_reduction = 1e-13\nbg_check = 0.0\nlatent_increment = \"linear\"\n";

fn open(name: &str, toml: &str) -> Analyser {
    Analyser::open(fixture(name), Options::from_toml(toml).unwrap()).unwrap()
}

fn sample(a: &Analyser, name: &str) -> (Vec<f64>, Vec<Observation>) {
    let s = fixture(name).join("sample");
    let lay = &a.bundle.layout;
    let xb = latentda::bundle::ncio::read_state(&s.join("background.nc"), lay).unwrap();
    let (obs, _) = latentda::obs::read_csv(&s.join("obs.csv"), lay).unwrap();
    (xb, obs)
}

/// K members x_b + smooth perturbations: per member and channel 0.3 sd_c (a0 + a1 cos(lon) + a2 sin(lon) + a3
/// sin(2 lat) + a4 cos(lat) sin(2 lon)) with a_i ~ N(0, 1), deterministic.
fn members(a: &Analyser, xb: &[f64], k: usize, seed: u64) -> Vec<Vec<f64>> {
    let g = &a.bundle.layout.grid;
    let (np, nlon) = (g.npoints(), g.nlon());
    let nchan = xb.len() / np;
    (0..k)
        .map(|m| {
            let c = Rng::new(seed + m as u64).normals(5 * nchan);
            (0..xb.len())
                .map(|i| {
                    let (ch, p) = (i / np, i % np);
                    let (lat, lon) = (g.lat[p / nlon].to_radians(), g.lon[p % nlon].to_radians());
                    let a5 = &c[5 * ch..5 * ch + 5];
                    let f = a5[0] + a5[1] * lon.cos() + a5[2] * lon.sin() + a5[3] * (2.0 * lat).sin() + a5[4] * lat.cos() * (2.0 * lon).sin();
                    xb[i] + 0.3 * a.bundle.std[ch] * f
                })
                .collect()
        })
        .collect()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    num / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

/// The Kalman increment B H^T (H B H^T + R)^-1 d with B = sum_j c_j c_j^T over the columns `cols`.
fn kalman(cols: &[Vec<f64>], h: &ObsOperator, obs: &[Observation], xb: &[f64]) -> Vec<f64> {
    let (m, ns) = (h.nrows(), xb.len());
    let g: Vec<Vec<f64>> = cols
        .iter()
        .map(|c| {
            let mut y = vec![0.0; m];
            h.apply(c, &mut y);
            y
        })
        .collect();
    let mut hxb = vec![0.0; m];
    h.apply(xb, &mut hxb);
    let sig: Vec<f64> = h.rows.iter().map(|&i| obs[i].sigma).collect();
    let d: Vec<f64> = h.rows.iter().zip(&hxb).map(|(&i, hb)| obs[i].value - hb).collect();
    let s = faer::Mat::<f64>::from_fn(m, m, |i, j| g.iter().map(|gk| gk[i] * gk[j]).sum::<f64>() + if i == j { sig[i] * sig[i] } else { 0.0 });
    let mut y = faer::Mat::<f64>::from_fn(m, 1, |i, _| d[i]);
    s.llt(faer::Side::Lower).unwrap().solve_in_place(&mut y);
    let mut dx = vec![0.0; ns];
    for (c, gk) in cols.iter().zip(&g) {
        let coef = (0..m).map(|i| gk[i] * y[(i, 0)]).sum::<f64>();
        dx.iter_mut().zip(c).for_each(|(d, c)| *d += coef * c);
    }
    dx
}

/// Columns U e_j of a square root.
fn columns(n: usize, ns: usize, mut sqrt: impl FnMut(&[f64], &mut [f64])) -> Vec<Vec<f64>> {
    (0..n)
        .map(|j| {
            let mut e = vec![0.0; n];
            e[j] = 1.0;
            let mut c = vec![0.0; ns];
            sqrt(&e, &mut c);
            c
        })
        .collect()
}

fn used_h(a: &Analyser, obs: &[Observation]) -> ObsOperator {
    let mut flags = vec![QcFlag::Used; obs.len()];
    ObsOperator::build(&a.bundle.layout, obs, &mut flags)
}

/// (a) Without members every method gives what it gave before: an analyser whose members were set, used and
/// cleared returns bit-identical analyses and the same report sections as one that never had members.
#[test]
fn without_members_nothing_changes() {
    for method in [Method::Hybrid, Method::Var3d, Method::L3dvar] {
        let mut plain = open("tanh", "");
        let (xb, obs) = sample(&plain, "tanh");
        let r0 = plain.analyse(&xb, &obs, method).unwrap();
        let mut used = open("tanh", "");
        used.set_ensemble(members(&used, &xb, 5, 3)).unwrap();
        assert_eq!(used.ensemble_size(), 5);
        let with = used.analyse(&xb, &obs, method).unwrap();
        used.clear_ensemble();
        assert_eq!(used.ensemble_size(), 0);
        let r1 = used.analyse(&xb, &obs, method).unwrap();
        assert!(r0.analysis == r1.analysis, "{}: analysis changed after set + clear", method.name());
        assert_eq!(r0.qc, r1.qc);
        assert_eq!(r0.report.jb_parts, r1.report.jb_parts);
        assert_eq!(r0.report.control_size, r1.report.control_size);
        assert_eq!(r0.report.background_check.sigma_b, r1.report.background_check.sigma_b);
        assert!(r1.report.ensemble.is_none() && !r1.report.to_json().contains("\"ensemble\""));
        // with members: l3dvar ignores them; hybrid and 3dvar gain the ensemble part
        if method == Method::L3dvar {
            assert!(with.analysis == r0.analysis && with.report.ensemble.is_none());
        } else {
            assert!(with.report.jb_parts.contains_key("ensemble"), "{:?}", with.report.jb_parts);
            assert!(rel(&with.analysis, &r0.analysis) > 0.0);
            let e = with.report.ensemble.as_ref().unwrap();
            assert_eq!(e.members, 5);
            assert_eq!(e.part, if method == Method::Hybrid { "latent" } else { "model" });
            assert_eq!(with.report.control_size, r0.report.control_size + e.control_size);
            eprintln!(
                "{} with K = 5: control {} (+{}), jb_parts {:?}; sigma_b from {}",
                method.name(),
                with.report.control_size,
                e.control_size,
                with.report.jb_parts,
                with.report.background_check.sigma_b
            );
            assert!(with.report.background_check.sigma_b.contains("ensemble B (K = 5"), "{}", with.report.background_check.sigma_b);
        }
    }
}

/// (b) Latent hybrid EnVar with a linear decoder: the analysis equals the Kalman solution of the three-part B, built
/// from the columns of the host operator `with_b_in_force(hybrid)` and, independently, from the parts (the two-part
/// hybrid of `with_b` with alpha folded, and a latent ensemble B built from the members by its own constructor).
#[test]
fn latent_hybrid_envar_is_the_kalman_solution_of_the_three_part_b() {
    let opt = format!("{EXACT}hybrid_alpha = 0.7\nhybrid_beta = 0.4\nensemble_gamma = 0.8\n");
    let mut a = open("linear", &opt);
    let (xb, obs) = sample(&a, "linear");
    let mem = members(&a, &xb, 5, 11);
    a.set_ensemble(mem.clone()).unwrap();
    let res = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
    let dx: Vec<f64> = res.analysis.iter().zip(&xb).map(|(x, b)| x - b).collect();
    let h = used_h(&a, &obs);
    let ns = xb.len();
    // From the host operator.
    let z = a.encode_background(&xb).unwrap();
    let n2 = a.prepare_b(BKind::Hybrid, Some(&z)).unwrap();
    let ne = a.prepare_ensemble(BKind::Hybrid, Some(&z)).unwrap();
    assert_eq!(ne, 5, "a flat latent is one latent point: K controls");
    assert_eq!(res.report.control_size, n2 + ne);
    let cols = a.with_b_in_force(BKind::Hybrid, |b, ae| {
        assert_eq!(b.control_size(), n2 + ne);
        Ok(columns(n2 + ne, ns, |e, c| b.sqrt(ae, e, c).unwrap()))
    })
    .unwrap();
    let r_host = rel(&dx, &kalman(&cols, &h, &obs, &xb));
    // From the parts.
    let mut parts = a.with_b(BKind::Hybrid, |b, ae| Ok(columns(n2, ns, |e, c| b.sqrt(ae, e, c).unwrap()))).unwrap();
    let one_point = Localisation::dense(&[0.0], &[0.0], 2500.0).unwrap();
    let mut eb = LatentEnsembleB::from_states(&a.bundle, &mut a.ae, &mem, &xb, 0.8, one_point).unwrap();
    parts.extend(columns(eb.control_size(), ns, |e, c| eb.sqrt(&mut a.ae, e, c).unwrap()));
    let r_parts = rel(&dx, &kalman(&parts, &h, &obs, &xb));
    // Without the ensemble part the Kalman solution differs: the third part matters.
    let r_two = rel(&dx, &kalman(&parts[..n2], &h, &obs, &xb));
    eprintln!(
        "latent hybrid EnVar (linear decoder, K = 5, {} obs) vs Kalman: host operator {r_host:.2e}, from the parts \
         {r_parts:.2e}; vs the two-part hybrid's Kalman solution {r_two:.2e}; jb_parts {:?}; {}",
        h.nrows(),
        res.report.jb_parts,
        res.report.ensemble.as_ref().unwrap().localisation
    );
    assert!(r_host < 1e-5 && r_parts < 1e-5, "{r_host:e} {r_parts:e}");
    assert!(r_two > 1e-3, "the ensemble part changed nothing: {r_two:e}");
    let jb = &res.report.jb_parts;
    assert!(jb.contains_key("latent") && jb.contains_key("static") && jb["ensemble"] > 0.0, "{jb:?}");
    let sum: f64 = jb.values().sum();
    let jb_final = res.report.solver.as_ref().unwrap().jb_final;
    assert!((sum - jb_final).abs() <= 1e-6 * jb_final, "J_b parts {sum} vs J_b {jb_final}");
}

/// (c) Hybrid 3DEnVar: the 3dvar analysis with members equals the Kalman solution of static + gamma model-space
/// ensemble B (localised on the model grid), from the host operator and from the parts.
#[test]
fn hybrid_3denvar_is_the_kalman_solution_of_static_plus_model_ensemble_b() {
    let opt = format!("{EXACT}ensemble_gamma = 1.3\nensemble_localisation_km = 9000.0\nensemble_localisation_model_km = 4000.0\n");
    let mut a = open("linear", &opt);
    let (xb, obs) = sample(&a, "linear");
    let mem = members(&a, &xb, 6, 21);
    a.set_ensemble(mem.clone()).unwrap();
    let res = a.analyse(&xb, &obs, Method::Var3d).unwrap();
    let dx: Vec<f64> = res.analysis.iter().zip(&xb).map(|(x, b)| x - b).collect();
    let h = used_h(&a, &obs);
    let ns = xb.len();
    let ns_ctrl = a.prepare_b(BKind::Static, None).unwrap();
    let ne = a.prepare_ensemble(BKind::Static, None).unwrap();
    assert_eq!(ne, 6 * a.bundle.layout.grid.npoints());
    let cols = a.with_b_in_force(BKind::Static, |b, ae| Ok(columns(ns_ctrl + ne, ns, |e, c| b.sqrt(ae, e, c).unwrap()))).unwrap();
    let r_host = rel(&dx, &kalman(&cols, &h, &obs, &xb));
    let mut parts = a.with_b(BKind::Static, |b, ae| Ok(columns(ns_ctrl, ns, |e, c| b.sqrt(ae, e, c).unwrap()))).unwrap();
    let mut mb = ModelEnsembleB::for_layout(&a.bundle.layout, &mem, 1.3, 4000.0).unwrap();
    parts.extend(columns(ne, ns, |e, c| mb.apply_sqrt(e, c).unwrap()));
    let r_parts = rel(&dx, &kalman(&parts, &h, &obs, &xb));
    let r_static = rel(&dx, &kalman(&parts[..ns_ctrl], &h, &obs, &xb));
    let e = res.report.ensemble.as_ref().unwrap();
    eprintln!(
        "hybrid 3DEnVar (K = 6, {} controls) vs Kalman: host operator {r_host:.2e}, from the parts {r_parts:.2e}; vs \
         static-only Kalman {r_static:.2e}; jb_parts {:?}; localisation {}",
        res.report.control_size,
        res.report.jb_parts,
        e.localisation
    );
    assert!(r_host < 1e-5 && r_parts < 1e-5, "{r_host:e} {r_parts:e}");
    assert!(r_static > 1e-3, "the ensemble part changed nothing: {r_static:e}");
    assert!(e.localisation.contains("half-width 4000 km") && e.localisation.contains("model grid"), "{}", e.localisation);
    assert_eq!((e.part.as_str(), e.members, e.gamma), ("model", 6, 1.3));
    // Spread/skill against an independent computation: sd over members of H x_k, innovations minus sigma_o^2.
    let lay = &a.bundle.layout;
    let hx: Vec<Vec<f64>> = mem
        .iter()
        .map(|x| {
            let mut y = vec![0.0; h.nrows()];
            h.apply(x, &mut y);
            y
        })
        .collect();
    let mut hxb = vec![0.0; h.nrows()];
    h.apply(&xb, &mut hxb);
    for (v, ss) in e.spread_skill.iter().enumerate() {
        assert_eq!(ss.name, lay.variables[v].name);
        let rows: Vec<usize> = (0..h.nrows()).filter(|&r| obs[h.rows[r]].var == Some(v)).collect();
        assert_eq!(ss.n_used, rows.len());
        if rows.is_empty() {
            continue;
        }
        let n = rows.len() as f64;
        let s2: f64 = rows
            .iter()
            .map(|&r| {
                let mu = hx.iter().map(|y| y[r]).sum::<f64>() / 6.0;
                hx.iter().map(|y| (y[r] - mu).powi(2)).sum::<f64>() / 5.0
            })
            .sum::<f64>()
            / n;
        let d2: f64 = rows.iter().map(|&r| (obs[h.rows[r]].value - hxb[r]).powi(2)).sum::<f64>() / n;
        let o2: f64 = rows.iter().map(|&r| obs[h.rows[r]].sigma.powi(2)).sum::<f64>() / n;
        eprintln!("  {}: spread {:.4e}, innovation skill {:.4e}, ratio {:?}", ss.name, ss.spread, ss.innovation_skill, ss.ratio);
        assert!((ss.spread - s2.sqrt()).abs() <= 1e-12 * s2.sqrt().max(1e-300));
        assert!((ss.innovation_skill - (d2 - o2).max(0.0).sqrt()).abs() <= 1e-12 * d2.sqrt());
    }
}

/// The background check's sigma_b with members is the diagonal of the whole B in force: the hybrid's (or static B's)
/// plus the ensemble part's, term by term.
#[test]
fn background_check_variance_includes_the_ensemble_part() {
    let mut a = open("tanh", "ensemble_localisation_km = 8000.0\nbg_check_samples = 64");
    let (xb, _) = sample(&a, "tanh");
    let mem = members(&a, &xb, 4, 5);
    a.set_ensemble(mem.clone()).unwrap();
    let z = a.encode_background(&xb).unwrap();
    for kind in [BKind::Hybrid, BKind::Static] {
        a.prepare_b(kind, Some(&z)).unwrap();
        a.prepare_ensemble(kind, Some(&z)).unwrap();
        let (all, how) = a.with_b_in_force(kind, |b, ae| Ok((b.variance(ae)?.to_vec(), b.variance_method()))).unwrap();
        let base = a.with_b(kind, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
        let ens: Vec<f64> = if kind == BKind::Hybrid {
            let loc = latentda::bmat::ensemble::latent_localisation(&a.bundle, 8000.0).unwrap();
            let mut eb = LatentEnsembleB::from_states(&a.bundle, &mut a.ae, &mem, &xb, 0.5, loc).unwrap();
            eb.set_variance_samples(64);
            eb.variance(&mut a.ae).unwrap().to_vec()
        } else {
            let mut mb = ModelEnsembleB::for_layout(&a.bundle.layout, &mem, 0.5, 8000.0).unwrap();
            mb.variance(&mut a.ae).unwrap().to_vec()
        };
        let sum: Vec<f64> = base.iter().zip(&ens).map(|(b, e)| b + e).collect();
        let r = max_rel_diff(&all, &sum);
        eprintln!("{}: diag B in force vs base + ensemble: {r:.2e}; {how}", kind.name());
        assert!(r < 1e-12, "{r:e}");
        assert!(ens.iter().all(|e| *e > 0.0) && how.contains("ensemble B (K = 4"), "{how}");
    }
}

/// (d) K = 0 and K = 1 are clear errors, as are members of the wrong length or with non-finite values; the previous
/// members stay set.
#[test]
fn too_few_or_bad_members_are_clear_errors() {
    let mut a = open("tanh", "");
    let (xb, _) = sample(&a, "tanh");
    for k in [0, 1] {
        let e = a.set_ensemble(members(&a, &xb, k, 1)).unwrap_err();
        eprintln!("K = {k}: {e}");
        assert_eq!(e.status, latentda::Status::InvalidArgument);
        assert!(e.message.contains(&format!("K = {k}")) && e.message.contains("K >= 2"), "{e}");
    }
    assert_eq!(a.ensemble_size(), 0);
    a.set_ensemble(members(&a, &xb, 3, 1)).unwrap();
    let mut bad = members(&a, &xb, 4, 1);
    bad[2].pop();
    let e = a.set_ensemble(bad).unwrap_err();
    assert!(e.message.contains("member 2 (0-based) has length 895, expected 896"), "{e}");
    let mut bad = members(&a, &xb, 4, 1);
    bad[3][200] = f64::NAN;
    let e = a.set_ensemble(bad).unwrap_err();
    eprintln!("{e}");
    assert_eq!(e.status, latentda::Status::InvalidData);
    assert!(e.message.contains("member 3 (0-based) has a non-finite value NaN at index 200"), "{e}");
    assert_eq!(a.ensemble_size(), 3, "the previous members stay set");
    // options
    for bad in ["ensemble_gamma = -1.0", "ensemble_localisation_km = 0.0", "ensemble_localisation_model_km = -5.0"] {
        let e = Options::from_toml(bad).unwrap_err();
        assert!(e.message.contains(bad.split(' ').next().unwrap()), "{e}");
    }
}

/// (e) `latentda analyse --ensemble 'dir/member_*.nc'`: hybrid and 3dvar reports carry the ensemble section and
/// jb_parts.ensemble; a comma-separated list works too; l3dvar with --ensemble is a usage error.
#[test]
fn cli_ensemble_end_to_end() {
    let dir = scratch("cli_ensemble");
    let b = fixture("tanh");
    let a = open("tanh", "");
    let (xb, _) = sample(&a, "tanh");
    let lay = a.bundle.layout.clone();
    let units = |v: usize| a.bundle.units(v).to_string();
    let mem = members(&a, &xb, 4, 77);
    let mdir = dir.join("members");
    std::fs::create_dir_all(&mdir).unwrap();
    let mut files = Vec::new();
    for (k, m) in mem.iter().enumerate() {
        let f = mdir.join(format!("member_{k:02}.nc"));
        latentda::bundle::ncio::write_state(&f, &lay, &units, m, "member").unwrap();
        files.push(f.to_str().unwrap().to_string());
    }
    std::fs::write(mdir.join("notes.txt"), "not a member").unwrap();
    let s = b.join("sample");
    let (bs, bg, ob) = (b.to_str().unwrap(), s.join("background.nc"), s.join("obs.csv"));
    let run = |method: &str, spec: &str, name: &str| {
        let (out, rep) = (dir.join(format!("{name}.nc")), dir.join(format!("{name}.json")));
        let args = [
            "analyse", "--bundle", bs, "--background", bg.to_str().unwrap(), "--obs", ob.to_str().unwrap(), "--output",
            out.to_str().unwrap(), "--report", rep.to_str().unwrap(), "--method", method, "--ensemble", spec,
            "--ensemble-gamma", "0.6", "--ensemble-localisation-km", "8000",
        ];
        let (code, stdout, stderr) = cli(&args);
        (code, stdout, stderr, rep)
    };
    let glob = format!("{}/member_*.nc", mdir.display());
    for (method, spec, part) in [("hybrid", glob.clone(), "latent"), ("3dvar", files.join(","), "model")] {
        let (code, stdout, stderr, rep) = run(method, &spec, method);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        assert!(stdout.contains("ensemble part") && stdout.contains("K = 4"), "{stdout}");
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
        let e = &j["ensemble"];
        assert_eq!(e["members"], 4, "{e}");
        assert_eq!(e["gamma"], 0.6);
        assert_eq!(e["part"], part);
        assert!(e["localisation"].as_str().unwrap().contains("Gaspari-Cohn"), "{e}");
        assert_eq!(e["spread_skill"].as_array().unwrap().len(), 3);
        assert!(j["jb_parts"]["ensemble"].as_f64().unwrap() > 0.0, "{}", j["jb_parts"]);
        assert!(j["background_check"]["sigma_b"].as_str().unwrap().contains("ensemble B (K = 4"));
        eprintln!("{method}: jb_parts {}; spread/skill {}", j["jb_parts"], e["spread_skill"]);
    }
    let (code, _, stderr, _) = run("l3dvar", &glob, "l3dvar");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--ensemble is for methods hybrid and 3dvar"), "{stderr}");
    let (code, _, stderr, _) = run("hybrid", &format!("{}/nothing_*.nc", mdir.display()), "none");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("matches no file"), "{stderr}");
    let (code, _, stderr, _) = run("hybrid", &files[0], "one");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("K = 1") && stderr.contains("K >= 2"), "{stderr}");
}
