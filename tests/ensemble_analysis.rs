//! Ensemble members in the analysis (issue 24): method hybrid with members is latent hybrid EnVar (latent + static +
//! latent ensemble B, control [w, v, a]), method 3dvar with members is hybrid 3DEnVar (static + model-space ensemble
//! B, control [v, a]). Without members nothing changes; with a linear decoder the analyses are the Kalman solutions
//! of the three-part and two-part B, built from the host operator (`with_b_in_force`) and independently from the
//! parts; K < 2 is a clear error; the CLI's `--ensemble` runs end to end.

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use latentda::bmat::ensemble::{LatentEnsembleB, ModelEnsembleB};
use latentda::bmat::localisation::Localisation;
use latentda::bmat::BOperator;
use latentda::numeric::Rng;
use latentda::obs::operator::ObsOperator;
use latentda::obs::{Observation, QcFlag};
use latentda::var::options::BKind;
use latentda::{Analyser, Method, Options};

/// Exact solve: one outer loop (the linear latent form is quadratic), converged far below the default target.
const EXACT: &str =
    "outer_loops = 1\nmax_inner = 400\ngradient_reduction = 1e-13\nbg_check = 0.0\nlatent_increment = \"linear\"\n";

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
                    let f = a5[0]
                        + a5[1] * lon.cos()
                        + a5[2] * lon.sin()
                        + a5[3] * (2.0 * lat).sin()
                        + a5[4] * lat.cos() * (2.0 * lon).sin();
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

/// A hybrid analysis with K members on a fixture, and the B in force prepared at its background: the
/// hybrid part's control size n2 and the ensemble part's ne.
struct HybridCase {
    a: Analyser,
    xb: Vec<f64>,
    obs: Vec<Observation>,
    mem: Vec<Vec<f64>>,
    res: latentda::Analysis,
    dx: Vec<f64>,
    h: ObsOperator,
    n2: usize,
    ne: usize,
}

fn hybrid_case(fixture: &str, opt: &str, k: usize, seed: u64) -> HybridCase {
    let mut a = open(fixture, opt);
    let (xb, obs) = sample(&a, fixture);
    let mem = members(&a, &xb, k, seed);
    a.set_ensemble(mem.clone()).unwrap();
    let res = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
    let dx: Vec<f64> = res.analysis.iter().zip(&xb).map(|(x, b)| x - b).collect();
    let h = used_h(&a, &obs);
    let z = a.encode_background(&xb).unwrap();
    let n2 = a.prepare_b(BKind::Hybrid, Some(&z)).unwrap();
    let ne = a.prepare_ensemble(BKind::Hybrid, Some(&z)).unwrap();
    HybridCase { a, xb, obs, mem, res, dx, h, n2, ne }
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
            assert!(
                with.report.background_check.sigma_b.contains("ensemble B (K = 5"),
                "{}",
                with.report.background_check.sigma_b
            );
        }
    }
}

/// (b) Latent hybrid EnVar with a linear decoder: the analysis equals the Kalman solution of the three-part B, built
/// from the columns of the host operator `with_b_in_force(hybrid)` and, independently, from the parts (the two-part
/// hybrid of `with_b` with alpha folded, and a latent ensemble B built from the members by its own constructor).
#[test]
fn latent_hybrid_envar_is_the_kalman_solution_of_the_three_part_b() {
    let opt = format!("{EXACT}hybrid_alpha = 0.7\nhybrid_beta = 0.4\nensemble_gamma = 0.8\n");
    let HybridCase { mut a, xb, obs, mem, res, dx, h, n2, ne } = hybrid_case("linear", &opt, 5, 11);
    let ns = xb.len();
    // From the host operator.
    assert_eq!(ne, 5, "a flat latent is one latent point: K controls");
    assert_eq!(res.report.control_size, n2 + ne);
    let cols = a
        .with_b_in_force(BKind::Hybrid, |b, ae| {
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
    let opt = format!(
        "{EXACT}ensemble_gamma = 1.3\nensemble_localisation_km = 9000.0\nensemble_localisation_model_km = 4000.0\n"
    );
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
    let cols = a
        .with_b_in_force(BKind::Static, |b, ae| Ok(columns(ns_ctrl + ne, ns, |e, c| b.sqrt(ae, e, c).unwrap())))
        .unwrap();
    let r_host = rel(&dx, &kalman(&cols, &h, &obs, &xb));
    let mut parts =
        a.with_b(BKind::Static, |b, ae| Ok(columns(ns_ctrl, ns, |e, c| b.sqrt(ae, e, c).unwrap()))).unwrap();
    let mut mb = ModelEnsembleB::for_layout(&a.bundle.layout, &mem, 1.3, 4000.0).unwrap();
    parts.extend(columns(ne, ns, |e, c| mb.apply_sqrt(e, c).unwrap()));
    let r_parts = rel(&dx, &kalman(&parts, &h, &obs, &xb));
    let r_static = rel(&dx, &kalman(&parts[..ns_ctrl], &h, &obs, &xb));
    let e = res.report.ensemble.as_ref().unwrap();
    eprintln!(
        "hybrid 3DEnVar (K = 6, {} controls) vs Kalman: host operator {r_host:.2e}, from the parts {r_parts:.2e}; vs \
         static-only Kalman {r_static:.2e}; jb_parts {:?}; localisation {}",
        res.report.control_size, res.report.jb_parts, e.localisation
    );
    assert!(r_host < 1e-5 && r_parts < 1e-5, "{r_host:e} {r_parts:e}");
    assert!(r_static > 1e-3, "the ensemble part changed nothing: {r_static:e}");
    assert!(
        e.localisation.contains("half-width 4000 km") && e.localisation.contains("model grid"),
        "{}",
        e.localisation
    );
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
        eprintln!(
            "  {}: spread {:.4e}, innovation skill {:.4e}, ratio {:?}",
            ss.name, ss.spread, ss.innovation_skill, ss.ratio
        );
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
            "analyse",
            "--bundle",
            bs,
            "--background",
            bg.to_str().unwrap(),
            "--obs",
            ob.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--report",
            rep.to_str().unwrap(),
            "--method",
            method,
            "--ensemble",
            spec,
            "--ensemble-gamma",
            "0.6",
            "--ensemble-localisation-km",
            "8000",
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

/// The C ABI: `lda_set_ensemble` gives the same hybrid analysis as `Analyser::set_ensemble`; k = 1, a wrong n, a
/// NULL array, a bad order and a non-finite value are errors that keep the members; k = 0 removes them.
#[test]
fn c_abi_set_ensemble() {
    use latentda::coupling::ffi::{self, LdaContext};
    use std::ffi::CString;
    let dir = CString::new(fixture("tanh").to_str().unwrap()).unwrap();
    let mut ctx: *mut LdaContext = std::ptr::null_mut();
    assert_eq!(ffi::lda_open(dir.as_ptr(), std::ptr::null(), &mut ctx), ffi::LDA_OK);
    let mut a = open("tanh", "");
    let (xb, obs) = sample(&a, "tanh");
    let lay = a.bundle.layout.clone();
    let mut fields = bind_state_c(ctx, &lay, &xb);
    let col = |f: fn(&Observation) -> f64| obs.iter().map(f).collect::<Vec<f64>>();
    let var: Vec<i32> = obs.iter().map(|o| o.var.map_or(-1, |v| v as i32)).collect();
    let (la, lo, le, va, si) =
        (col(|o| o.lat), col(|o| o.lon), col(|o| o.level.unwrap_or(f64::NAN)), col(|o| o.value), col(|o| o.sigma));
    assert_eq!(
        ffi::lda_set_obs(ctx, obs.len(), var.as_ptr(), la.as_ptr(), lo.as_ptr(), le.as_ptr(), va.as_ptr(), si.as_ptr()),
        ffi::LDA_OK
    );
    let mem = members(&a, &xb, 4, 31);
    let flat: Vec<f64> = mem.iter().flatten().copied().collect();
    let n = xb.len();
    // SAFETY: lda_last_error never returns NULL.
    let msg = |ctx| unsafe { std::ffi::CStr::from_ptr(ffi::lda_last_error(ctx)) }.to_string_lossy().into_owned();
    assert_eq!(ffi::lda_set_ensemble(ctx, 1, n, flat.as_ptr(), ffi::LDA_ORDER_C), ffi::LDA_ERR_INVALID_ARGUMENT);
    assert!(msg(ctx).contains("K = 1") && msg(ctx).contains("K >= 2"), "{}", msg(ctx));
    assert_eq!(ffi::lda_set_ensemble(ctx, 4, n - 1, flat.as_ptr(), ffi::LDA_ORDER_C), ffi::LDA_ERR_INVALID_ARGUMENT);
    assert!(msg(ctx).contains("state size is 896"), "{}", msg(ctx));
    assert_eq!(ffi::lda_set_ensemble(ctx, 4, n, std::ptr::null(), ffi::LDA_ORDER_C), ffi::LDA_ERR_NULL_POINTER);
    assert_eq!(ffi::lda_set_ensemble(ctx, 4, n, flat.as_ptr(), 7), ffi::LDA_ERR_INVALID_ARGUMENT);
    let mut bad = flat.clone();
    bad[2 * n + 5] = f64::INFINITY;
    assert_eq!(ffi::lda_set_ensemble(ctx, 4, n, bad.as_ptr(), ffi::LDA_ORDER_FORTRAN), ffi::LDA_ERR_INVALID_DATA);
    assert!(msg(ctx).contains("member 2 (0-based)"), "{}", msg(ctx));
    assert_eq!(ffi::lda_set_ensemble(ctx, 4, n, flat.as_ptr(), ffi::LDA_ORDER_FORTRAN), ffi::LDA_OK);
    let method = CString::new("hybrid").unwrap();
    assert_eq!(ffi::lda_analyse(ctx, method.as_ptr()), ffi::LDA_OK, "{}", msg(ctx));
    let mut k = f64::NAN;
    let path = CString::new("ensemble.members").unwrap();
    assert_eq!(ffi::lda_report_number(ctx, path.as_ptr(), &mut k), ffi::LDA_OK, "{}", msg(ctx));
    assert_eq!(k, 4.0);
    let (mut spread, mut jbe) = (f64::NAN, f64::NAN);
    let p2 = CString::new("ensemble.spread_skill.t.spread").unwrap();
    assert_eq!(ffi::lda_report_number(ctx, p2.as_ptr(), &mut spread), ffi::LDA_OK, "{}", msg(ctx));
    let p3 = CString::new("jb_parts.ensemble").unwrap();
    assert_eq!(ffi::lda_report_number(ctx, p3.as_ptr(), &mut jbe), ffi::LDA_OK, "{}", msg(ctx));
    a.set_ensemble(mem).unwrap();
    let direct = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
    let e = direct.report.ensemble.as_ref().unwrap();
    assert_eq!(spread, e.spread_skill[1].spread);
    assert_eq!(jbe, direct.report.jb_parts["ensemble"]);
    let analysed: Vec<f64> = fields.iter().flatten().copied().collect();
    assert!(analysed == direct.analysis, "C ABI and Rust API give the same hybrid EnVar analysis");
    // k = 0 removes the members: the plain hybrid again (from the background)
    for (v, f) in fields.iter_mut().enumerate() {
        f.copy_from_slice(&xb[lay.var_range(v)]);
    }
    assert_eq!(ffi::lda_set_ensemble(ctx, 0, 0, std::ptr::null(), ffi::LDA_ORDER_C), ffi::LDA_OK);
    assert_eq!(ffi::lda_analyse(ctx, method.as_ptr()), ffi::LDA_OK, "{}", msg(ctx));
    a.clear_ensemble();
    let plain = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
    let analysed: Vec<f64> = fields.iter().flatten().copied().collect();
    assert!(analysed == plain.analysis);
    assert_eq!(
        ffi::lda_report_number(ctx, path.as_ptr(), &mut k),
        ffi::LDA_ERR_INVALID_ARGUMENT,
        "no ensemble section"
    );
    assert_eq!(ffi::lda_close(ctx), ffi::LDA_OK);
}

/// The host's B operator (`b_operator = "hybrid"` / `"static"`, `lda_bsqrt` family) includes the ensemble part when
/// members are set: the control grows by K x the localisation points, U and U^T stay adjoint, and diag B is the
/// analysis' (`Analyser::with_b_in_force`) one; without members it is the operator it was.
#[test]
fn host_b_operator_includes_the_ensemble_part() {
    use latentda::coupling::ffi::{self, LdaContext};
    use std::ffi::CString;
    for (kind, extra_per_member) in [("hybrid", 8usize), ("static", 128)] {
        let dir = CString::new(fixture("tanh").to_str().unwrap()).unwrap();
        let opts = CString::new(format!("b_operator = \"{kind}\"\nensemble_localisation_km = 8000.0")).unwrap();
        let mut ctx: *mut LdaContext = std::ptr::null_mut();
        assert_eq!(ffi::lda_open(dir.as_ptr(), opts.as_ptr(), &mut ctx), ffi::LDA_OK);
        let mut a = open("tanh", "ensemble_localisation_km = 8000.0");
        let (xb, _) = sample(&a, "tanh");
        let lay = a.bundle.layout.clone();
        let fields = bind_state_c(ctx, &lay, &xb);
        let (mut n0, mut n1) = (0usize, 0usize);
        assert_eq!(ffi::lda_control_size(ctx, &mut n0), ffi::LDA_OK);
        let ns = xb.len();
        let mut var0 = vec![0.0; ns];
        assert_eq!(ffi::lda_bvariance(ctx, var0.as_mut_ptr(), ns), ffi::LDA_OK);
        let mem = members(&a, &xb, 4, 51);
        let flat: Vec<f64> = mem.iter().flatten().copied().collect();
        assert_eq!(ffi::lda_set_ensemble(ctx, 4, ns, flat.as_ptr(), ffi::LDA_ORDER_C), ffi::LDA_OK);
        assert_eq!(ffi::lda_control_size(ctx, &mut n1), ffi::LDA_OK);
        assert_eq!(n1, n0 + 4 * extra_per_member, "{kind}");
        // adjoint test through the C ABI
        let v = Rng::new(3).normals(n1);
        let y = Rng::new(4).normals(ns);
        let (mut uv, mut uty) = (vec![0.0; ns], vec![0.0; n1]);
        assert_eq!(ffi::lda_bsqrt(ctx, v.as_ptr(), n1, uv.as_mut_ptr(), ns), ffi::LDA_OK);
        assert_eq!(ffi::lda_bsqrt_ad(ctx, y.as_ptr(), ns, uty.as_mut_ptr(), n1), ffi::LDA_OK);
        let (l, r): (f64, f64) =
            (uv.iter().zip(&y).map(|(a, b)| a * b).sum(), v.iter().zip(&uty).map(|(a, b)| a * b).sum());
        let rel_ad = (l - r).abs() / l.abs().max(r.abs());
        // diag B against the analysis' operator
        let mut var1 = vec![0.0; ns];
        assert_eq!(ffi::lda_bvariance(ctx, var1.as_mut_ptr(), ns), ffi::LDA_OK);
        let bk = BKind::parse(kind).unwrap();
        a.set_ensemble(mem).unwrap();
        let z = a.encode_background(&xb).unwrap();
        a.prepare_b(bk, Some(&z)).unwrap();
        a.prepare_ensemble(bk, Some(&z)).unwrap();
        let want = a.with_b_in_force(bk, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
        let r = max_rel_diff(&var1, &want);
        eprintln!("host B '{kind}' with K = 4: control {n0} -> {n1}, adjoint rel {rel_ad:.2e}, diag B vs with_b_in_force {r:.2e}");
        // float32 decoder TL and AD for the latent parts (observed 7.4e-6 for the hybrid, 1.9e-15 for the static B)
        assert!(rel_ad < 1e-4, "{rel_ad:e}");
        assert!(r < 1e-12, "{r:e}");
        assert!(var1.iter().zip(&var0).all(|(a, b)| a >= b) && var1 != var0);
        // k = 0: the operator without the ensemble part again
        assert_eq!(ffi::lda_set_ensemble(ctx, 0, 0, std::ptr::null(), ffi::LDA_ORDER_C), ffi::LDA_OK);
        assert_eq!(ffi::lda_control_size(ctx, &mut n1), ffi::LDA_OK);
        assert_eq!(n1, n0);
        let mut var2 = vec![0.0; ns];
        assert_eq!(ffi::lda_bvariance(ctx, var2.as_mut_ptr(), ns), ffi::LDA_OK);
        assert!(var2 == var0, "{kind}: variance after clearing the members");
        drop(fields);
        assert_eq!(ffi::lda_close(ctx), ffi::LDA_OK);
    }
}

/// Latent hybrid EnVar with localisation on the latent grid (tanh fixture, latent [4, 2, 4], linear latent form: the
/// control transform is the three-part B's square root at the background, through the float32 decoder TL): the
/// analysis equals the Kalman solution built from the host operator's columns.
#[test]
fn localised_latent_hybrid_envar_on_the_tanh_fixture_is_the_kalman_solution() {
    let opt = format!("{EXACT}ensemble_gamma = 0.9\nensemble_localisation_km = 6000.0\n");
    let HybridCase { mut a, xb, obs, res, dx, h, n2, ne, .. } = hybrid_case("tanh", &opt, 5, 61);
    assert_eq!(ne, 5 * 8);
    let ns = xb.len();
    let cols =
        a.with_b_in_force(BKind::Hybrid, |b, ae| Ok(columns(n2 + ne, ns, |e, c| b.sqrt(ae, e, c).unwrap()))).unwrap();
    let r = rel(&dx, &kalman(&cols, &h, &obs, &xb));
    let r_two = rel(&dx, &kalman(&cols[..n2], &h, &obs, &xb));
    let e = res.report.ensemble.as_ref().unwrap();
    eprintln!(
        "localised latent hybrid EnVar (tanh, K = 5, {} obs): vs Kalman {r:.2e} (vs two-part {r_two:.2e}); {}; solver {} pairs",
        h.nrows(),
        e.localisation,
        res.report.solver.as_ref().unwrap().inner_total
    );
    assert!(e.localisation.contains("latent grid") && e.localisation.contains("8 points"), "{}", e.localisation);
    // float32 TL and AD of the tanh decoder (their mismatch limits the solver): observed 9.5e-6
    assert!(r < 5e-5, "{r:e}");
    assert!(r_two > 1e-3, "{r_two:e}");
}

/// The Fortran module's `lda_set_ensemble` and C++ `Context::set_ensemble` (programs in tests/coupling/), compiled
/// with gfortran -std=f2008 -Wall -Werror and g++ -std=c++17 -Wall -Werror against target/release/liblatentda.a.
#[test]
fn fortran_and_cpp_bindings_set_ensemble() {
    use std::process::Command;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = scratch("ensemble_bindings");
    let lib = latentda_exe().parent().unwrap().join("liblatentda.a");
    assert!(lib.is_file(), "{} missing: run `cargo build --release` first", lib.display());
    let nc = Command::new("nc-config").arg("--libs").output().unwrap();
    let mut link: Vec<String> = String::from_utf8_lossy(&nc.stdout).split_whitespace().map(String::from).collect();
    link.extend(["-lhdf5", "-lz", "-lpthread", "-ldl", "-lm", "-lstdc++", "-Wl,-z,noexecstack"].map(String::from));
    let bundle = fixture("tanh");
    let run = |cmd: &mut Command| {
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", show(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let modobj = dir.join("latentda.o");
    run(Command::new("gfortran")
        .args(["-std=f2008", "-Wall", "-Werror", "-c"])
        .arg(format!("-J{}", dir.display()))
        .arg(root.join("fortran/latentda.f90"))
        .arg("-o")
        .arg(&modobj));
    let fexe = dir.join("ensemble_f");
    run(Command::new("gfortran")
        .args(["-std=f2008", "-Wall", "-Werror"])
        .arg(format!("-I{}", dir.display()))
        .arg(root.join("tests/coupling/ensemble_bindings.f90"))
        .arg(&modobj)
        .arg(&lib)
        .args(&link)
        .arg("-o")
        .arg(&fexe));
    let out = run(Command::new(&fexe).arg(&bundle));
    eprint!("Fortran: {out}");
    assert!(out.contains("ensemble bindings OK"), "{out}");
    let cexe = dir.join("ensemble_cpp");
    run(Command::new("g++")
        .args(["-std=c++17", "-O1", "-Wall", "-Werror"])
        .arg(format!("-I{}", root.join("include").display()))
        .arg(root.join("tests/coupling/ensemble_bindings.cpp"))
        .arg(&lib)
        .args(&link)
        .arg("-o")
        .arg(&cexe));
    let out = run(Command::new(&cexe).arg(&bundle));
    eprint!("C++: {out}");
    assert!(out.contains("ensemble bindings OK"), "{out}");
}

/// The nonlinear latent increment form with members: the ensemble part is added to the decoded latent increment;
/// the analysis converges and stays close to the linear form's (the decoder's curvature is small at these
/// increments).
#[test]
fn nonlinear_latent_form_with_members() {
    let run = |form: &str| {
        let mut a = open("tanh", &format!("latent_increment = \"{form}\"\nensemble_localisation_km = 6000.0"));
        let (xb, obs) = sample(&a, "tanh");
        a.set_ensemble(members(&a, &xb, 5, 8)).unwrap();
        (a.analyse(&xb, &obs, Method::Hybrid).unwrap(), xb)
    };
    let ((nl, xb), (li, _)) = (run("nonlinear"), run("linear"));
    let s = nl.report.solver.as_ref().unwrap();
    let dn: Vec<f64> = nl.analysis.iter().zip(xb.iter()).map(|(a, b)| a - b).collect();
    let dl: Vec<f64> = li.analysis.iter().zip(xb.iter()).map(|(a, b)| a - b).collect();
    let r = rel(&dn, &dl);
    eprintln!(
        "hybrid EnVar, nonlinear latent form: converged {}, {} outer loops, {} pairs, jb_parts {:?}; vs linear form {r:.2e}",
        s.converged, s.outer_total, s.inner_total, nl.report.jb_parts
    );
    assert!(s.converged && nl.report.jb_parts["ensemble"] > 0.0);
    assert!(r < 0.1, "{r:e}");
}

/// The fused latent hybrid EnVar (linear latent form, scalar weights): the latent and latent ensemble increments go
/// through one decoder TL and one AD per control-transform application, so the members cost no extra decoder runs
/// per TL/AD pair; with latitude-band weights the parts run apart (two of each).
#[test]
fn fused_latent_envar_runs_one_decoder_tl_per_application() {
    let per_pair = |toml: &str, k: usize| {
        let mut a = open("tanh", toml);
        let (xb, obs) = sample(&a, "tanh");
        if k > 0 {
            a.set_ensemble(members(&a, &xb, k, 8)).unwrap();
        }
        let r = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
        let (t, s) = (&r.report.timings, r.report.solver.as_ref().unwrap());
        (t.n_tl, t.n_ad, s.passes)
    };
    let plain = per_pair("", 0);
    let fused = per_pair("", 5);
    let banded_opts = "hybrid_alpha_tropics = 0.5\nhybrid_beta_tropics = 1.5";
    let banded_plain = per_pair(banded_opts, 0);
    let banded = per_pair(banded_opts, 5);
    eprintln!(
        "(TL, AD, control-transform runs): hybrid {plain:?}, with K = 5 (fused) {fused:?}; banded {banded_plain:?}, \
         with K = 5 (apart) {banded:?}"
    );
    let ratio = |(tl, ad, p): (usize, usize, usize)| ((tl as f64) / p as f64, (ad as f64) / p as f64);
    assert_eq!(ratio(fused), ratio(plain), "fused: as many decoder runs per application as without members");
    let (rb, rp) = (ratio(banded), ratio(banded_plain));
    assert!(rb.0 > 1.5 * rp.0 && rb.1 > 1.5 * rp.1, "with band weights the parts run apart: {rb:?} vs {rp:?}");
}

/// gamma in force: option `ensemble_gamma`, else the bundle's `[hybrid] gamma`, else 0.5; a bad bundle value is a
/// bundle error naming the key.
#[test]
fn ensemble_gamma_comes_from_the_option_then_the_bundle_then_the_default() {
    let dir = copy_fixture("tanh", "ensemble_gamma_bundle");
    let manifest = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
    assert!(!manifest.contains("[hybrid]") && manifest.contains("[checksums]\n"), "a [hybrid] table can be added");
    let with = |g: &str| manifest.replacen("[checksums]\n", &format!("[hybrid]\ngamma = {g}\n\n[checksums]\n"), 1);
    std::fs::write(dir.join("bundle.toml"), with("0.8")).unwrap();
    let gamma_of = |toml: &str, d: &std::path::Path| {
        let mut a = Analyser::open(d, Options::from_toml(toml).unwrap()).unwrap();
        let (xb, obs) = sample(&a, "tanh");
        a.set_ensemble(members(&a, &xb, 4, 9)).unwrap();
        let r = a.analyse(&xb, &obs, Method::Hybrid).unwrap().report;
        (a.ensemble_gamma(), r.ensemble.expect("an ensemble section").gamma)
    };
    assert_eq!(gamma_of("", &dir), (0.8, 0.8));
    assert_eq!(gamma_of("ensemble_gamma = 0.3", &dir), (0.3, 0.3));
    assert_eq!(gamma_of("", &fixture("tanh")), (0.5, 0.5));
    let bad = copy_fixture("tanh", "ensemble_gamma_bad");
    std::fs::write(bad.join("bundle.toml"), with("-1.0")).unwrap();
    let e = Analyser::open(&bad, Options::default()).unwrap_err().to_string();
    assert!(e.contains("hybrid.gamma"), "{e}");
}

/// Observations at every third grid point (no interpolation, so that the parts of sigma_b^2 add up exactly), every
/// variable and level, sigma_o 0.5 sd of the variable's first channel, values H x_b + sigma_o N(0, 1).
fn grid_obs(a: &Analyser, xb: &[f64]) -> Vec<Observation> {
    let lay = &a.bundle.layout;
    let g = &lay.grid;
    let mut obs = Vec::new();
    let mut chan = 0;
    for (v, var) in lay.variables.iter().enumerate() {
        let levels: Vec<Option<f64>> =
            if var.nlev == 0 { vec![None] } else { lay.vertical.levels.iter().map(|l| Some(*l)).collect() };
        let sigma = 0.5 * a.bundle.std[chan];
        chan += var.nlev.max(1);
        for (j, &lat) in g.lat.iter().enumerate() {
            for (i, &lon) in g.lon.iter().enumerate() {
                if (i + j) % 3 != 0 {
                    continue;
                }
                for &level in &levels {
                    obs.push(Observation {
                        var: Some(v),
                        var_name: var.name.clone(),
                        lat,
                        lon,
                        level,
                        value: 0.0,
                        sigma,
                        time: 0.0,
                        line: None,
                        malformed: None,
                    });
                }
            }
        }
    }
    let h = used_h(a, &obs);
    let mut hx = vec![0.0; h.nrows()];
    h.apply(xb, &mut hx);
    let mut rng = Rng::new(17);
    for (r, &i) in h.rows.iter().enumerate() {
        obs[i].value = hx[r] + obs[i].sigma * rng.normal();
    }
    obs
}

/// (g) The Desroziers section with members: the ensemble weight is in `b_in_force`, and at grid-point observations
/// the parts of sigma_b^2 (latent + static + ensemble for latent hybrid EnVar, static + ensemble for hybrid 3DEnVar)
/// add up to the H B H^T in force in every cell; without members there is no ensemble part. The ensemble part alone
/// (alpha = beta = 0) runs with members, and is refused without them.
#[test]
fn desroziers_parts_include_the_ensemble_and_the_ensemble_alone_runs() {
    let toml = "ensemble_localisation_km = 8000.0\nbg_check_samples = 64\nbg_check = 10.0\n";
    let mut a = open("tanh", toml);
    let (xb, _) = sample(&a, "tanh");
    let obs = grid_obs(&a, &xb);
    a.set_ensemble(members(&a, &xb, 4, 7)).unwrap();
    for method in [Method::Hybrid, Method::Var3d] {
        let d = a.analyse(&xb, &obs, method).unwrap().report.desroziers.unwrap();
        assert_eq!(d.b_in_force.ensemble_gamma, Some(0.5), "{}", method.name());
        let mut checked = 0;
        for c in d.cells.iter().filter(|c| c.n > 0) {
            let m = &c.normalised;
            let (h, e, s) = (m.sum_hbh.unwrap(), m.sum_hbh_ensemble.unwrap(), m.sum_hbh_static.unwrap());
            let l = m.sum_hbh_latent;
            assert_eq!(l.is_some(), method == Method::Hybrid, "{} {} {}", method.name(), c.group, c.band);
            let sum = l.unwrap_or(0.0) + s + e;
            assert!((sum - h).abs() <= 1e-9 * h, "{} {} {}: {sum} != {h}", method.name(), c.group, c.band);
            assert!(e > 0.0 && s > 0.0);
            checked += 1;
        }
        assert!(checked >= 4, "{checked} cells");
        eprintln!("{}: parts add up in {checked} cells", method.name());
    }
    a.clear_ensemble();
    let d = a.analyse(&xb, &obs, Method::Hybrid).unwrap().report.desroziers.unwrap();
    assert_eq!(d.b_in_force.ensemble_gamma, None);
    assert!(d.cells.iter().all(|c| c.normalised.sum_hbh_ensemble.is_none()));
    // the ensemble part alone: refused without members, a nonzero increment with only Jb ensemble nonzero with them
    let mut alone = open("tanh", &format!("{toml}hybrid_alpha = 0.0\nhybrid_beta = 0.0\n"));
    let err = alone.analyse(&xb, &obs, Method::Hybrid).unwrap_err().to_string();
    assert!(err.contains("hybrid_alpha and hybrid_beta are both 0") && err.contains("ensemble"), "{err}");
    alone.set_ensemble(members(&alone, &xb, 4, 7)).unwrap();
    let r = alone.analyse(&xb, &obs, Method::Hybrid).unwrap();
    eprintln!("ensemble alone: jb_parts {:?}", r.report.jb_parts);
    assert!(rel(&r.analysis, &xb) > 0.0);
    assert!(r.report.jb_parts["ensemble"] > 0.0, "{:?}", r.report.jb_parts);
    for (k, v) in r.report.jb_parts.iter().filter(|(k, _)| k.as_str() != "ensemble") {
        assert!(*v == 0.0, "Jb {k} = {v} with a zero weight");
    }
}

/// (h) Method hybrid with `ensemble_space = "model"`: latent + static + the model-space ensemble B of 3DEnVar. With a
/// linear decoder the analysis is the Kalman solution of that three-part B, from the host operator and from the
/// parts (the two-part hybrid of `with_b` and a model-space ensemble B built by its own constructor); the report
/// names the model-space part and its localisation.
#[test]
fn hybrid_with_a_model_space_ensemble_is_the_kalman_solution() {
    let opt = format!(
        "{EXACT}hybrid_alpha = 0.7\nhybrid_beta = 0.4\nensemble_gamma = 0.8\nensemble_space = \"model\"\n\
         ensemble_localisation_model_km = 4000.0\n"
    );
    let HybridCase { mut a, xb, obs, mem, res, dx, h, n2, ne } = hybrid_case("linear", &opt, 5, 13);
    let ns = xb.len();
    assert_eq!(ne, 5 * a.bundle.layout.grid.npoints(), "model-grid localisation: K x grid points");
    assert_eq!(res.report.control_size, n2 + ne);
    let cols =
        a.with_b_in_force(BKind::Hybrid, |b, ae| Ok(columns(n2 + ne, ns, |e, c| b.sqrt(ae, e, c).unwrap()))).unwrap();
    let r_host = rel(&dx, &kalman(&cols, &h, &obs, &xb));
    let mut parts = a.with_b(BKind::Hybrid, |b, ae| Ok(columns(n2, ns, |e, c| b.sqrt(ae, e, c).unwrap()))).unwrap();
    let mut mb = ModelEnsembleB::for_layout(&a.bundle.layout, &mem, 0.8, 4000.0).unwrap();
    parts.extend(columns(ne, ns, |e, c| mb.apply_sqrt(e, c).unwrap()));
    let r_parts = rel(&dx, &kalman(&parts, &h, &obs, &xb));
    let r_two = rel(&dx, &kalman(&parts[..n2], &h, &obs, &xb));
    let e = res.report.ensemble.as_ref().unwrap();
    eprintln!(
        "hybrid + model-space ensemble (K = 5) vs Kalman: host operator {r_host:.2e}, from the parts {r_parts:.2e}; \
         vs the two-part hybrid {r_two:.2e}; jb_parts {:?}; {}",
        res.report.jb_parts, e.localisation
    );
    assert!(r_host < 1e-5 && r_parts < 1e-5, "{r_host:e} {r_parts:e}");
    assert!(r_two > 1e-3, "the ensemble part changed nothing: {r_two:e}");
    assert_eq!((e.part.as_str(), e.members, e.gamma), ("model", 5, 0.8));
    assert!(e.localisation.contains("half-width 4000 km"), "{}", e.localisation);
    let jb = &res.report.jb_parts;
    assert!(jb.contains_key("latent") && jb.contains_key("static") && jb["ensemble"] > 0.0, "{jb:?}");
    // the latent-space default on the same analyser gives another analysis
    a.set_options(Options { ensemble_space: latentda::var::options::EnsembleSpace::Latent, ..a.options().clone() })
        .unwrap();
    let latent = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
    assert_eq!(latent.report.ensemble.as_ref().unwrap().part, "latent");
    assert!(rel(&latent.analysis, &res.analysis) > 1e-6);
}
