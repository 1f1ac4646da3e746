//! Desroziers diagnostics (src/var/desroziers.rs) and the `latentda tune` verb: the report's sums against an
//! independent recomputation, the Desroziers estimates against the B and R that generated the innovations (linear
//! fixture, where L3DVar is the exact Kalman analysis), one fixed-point step towards the right B size, and the verb
//! on report files.

mod common;

use common::*;
use latentda::bmat::BOperator;
use latentda::numeric::Rng;
use latentda::obs::operator::ObsOperator;
use latentda::obs::{Observation, QcFlag};
use latentda::var::desroziers::{tune, Desroziers};
use latentda::{Analyser, Method, Options};

/// Draws a truth x_t = x_b + U xi (xi ~ N(0, I): an error drawn from the latent B in force at `true_factor`) and
/// observations y = H x_t + sigma eps; returns the observations with their values set.
fn draw_case(a: &mut Analyser, xb: &[f64], obs: &[Observation], true_factor: f64, rng: &mut Rng) -> Vec<Observation> {
    let lay = a.bundle.layout.clone();
    let mut op = a.latent_b(xb).unwrap();
    let xi = rng.normals(op.control_size());
    let mut dx = vec![0.0; lay.state_len()];
    op.sqrt(&mut a.ae, &xi, &mut dx).unwrap();
    // latent_b applies the latent_variance_factor in force f (issue 23, item 3): scale the draw to the true factor
    let f = a.options().latent_variance_factor.unwrap_or(1.0);
    let xt: Vec<f64> = xb.iter().zip(&dx).map(|(b, d)| b + (true_factor / f).sqrt() * d).collect();
    let mut flags = vec![QcFlag::Used; obs.len()];
    let h = ObsOperator::build(&lay, obs, &mut flags);
    assert_eq!(h.nrows(), obs.len(), "every grid-point observation is located");
    let mut hxt = vec![0.0; h.nrows()];
    h.apply(&xt, &mut hxt);
    let mut out = obs.to_vec();
    for (r, &i) in h.rows.iter().enumerate() {
        out[i].value = hxt[r] + obs[i].sigma * rng.normal();
    }
    out
}

/// Options of an exact linear L3DVar (one outer loop solved to round-off); the background check runs (so the B's
/// variance is computed, exactly: the latent size 24 is below the 32 samples) but rejects nothing (k = 1e6).
fn exact_options(factor: f64) -> Options {
    Options::from_toml(&format!(
        "outer_loops = 1\nmax_inner = 200\ngradient_reduction = 1e-10\nbg_check = 1e6\nlatent_variance_factor = {factor}"
    ))
    .unwrap()
}

#[test]
fn report_sums_match_an_independent_recomputation() {
    let mut a = Analyser::open(fixture("linear"), exact_options(1.0)).unwrap();
    let xb = linear_background(&a);
    let obs0 = linear_grid_obs(&a, 1.0);
    let obs = draw_case(&mut a, &xb, &obs0, 1.0, &mut Rng::new(5));
    let res = a.analyse(&xb, &obs, Method::L3dvar).unwrap();
    let d = res.report.desroziers.as_ref().expect("every analysis report has a desroziers section");
    assert_eq!(d.method, "l3dvar");
    assert_eq!(d.b_in_force.latent_variance_factor, Some(1.0));
    // independent: H x_b, H x_a, sigma_b = H sqrt(diag B) with diag B from the latent B's exact variance
    let lay = a.bundle.layout.clone();
    let mut flags = vec![QcFlag::Used; obs.len()];
    let h = ObsOperator::build(&lay, &obs, &mut flags);
    let (mut hxb, mut hxa, mut sb) = (vec![0.0; h.nrows()], vec![0.0; h.nrows()], vec![0.0; h.nrows()]);
    h.apply(&xb, &mut hxb);
    h.apply(&res.analysis, &mut hxa);
    let mut op = a.latent_b(&xb).unwrap();
    let sd: Vec<f64> = op.variance(&mut a.ae).unwrap().iter().map(|v| v.sqrt()).collect();
    h.apply(&sd, &mut sb);
    for (v, var) in lay.variables.iter().enumerate() {
        let (mut n, mut dadb, mut dhdb, mut hbh, mut r) = (0usize, 0.0, 0.0, 0.0, 0.0);
        for (k, &i) in h.rows.iter().enumerate() {
            if obs[i].var != Some(v) || obs[i].lat <= 20.0 {
                continue;
            }
            let (db, da) = (obs[i].value - hxb[k], obs[i].value - hxa[k]);
            n += 1;
            dadb += da * db;
            dhdb += (hxa[k] - hxb[k]) * db;
            hbh += sb[k] * sb[k];
            r += obs[i].sigma * obs[i].sigma;
        }
        let c = d.cell(&var.name, "nh").unwrap();
        let s = c.sums.as_ref().unwrap();
        assert_eq!(c.n, n, "{}", var.name);
        assert!(n > 0);
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * y.abs().max(1e-300);
        assert!(close(s.sum_da_db, dadb), "{}: {} vs {}", var.name, s.sum_da_db, dadb);
        assert!(close(s.sum_dhx_db, dhdb), "{}: {} vs {}", var.name, s.sum_dhx_db, dhdb);
        assert!(close(s.sum_hbh.unwrap(), hbh), "{}: {:?} vs {}", var.name, s.sum_hbh, hbh);
        assert!(close(s.sum_r, r));
        // any gain: E[d_b d_b] = E[d_a d_b] + E[(H x_a - H x_b) d_b]
        assert!((s.sum_db_db - s.sum_da_db - s.sum_dhx_db).abs() <= 1e-9 * s.sum_db_db);
    }
    // groups and bands partition the observations
    let n = |g: &str, b: &str| d.cell(g, b).unwrap().n;
    assert_eq!(n("all", "global"), obs.len());
    assert_eq!(n("all", "nh") + n("all", "tropics") + n("all", "sh"), obs.len());
    assert_eq!(n("mass", "global"), n("t", "global") + n("ps", "global"));
    assert_eq!(n("wind", "global"), n("u", "global"));
    // without a background check there is no B variance: null, said so
    let mut a0 = Analyser::open(fixture("linear"), Options::from_toml("bg_check = 0.0").unwrap()).unwrap();
    let r0 = a0.analyse(&xb, &obs, Method::L3dvar).unwrap();
    let d0 = r0.report.desroziers.clone().unwrap();
    let c0 = d0.cell("all", "global").unwrap();
    assert!(c0.hbh_in_force.is_none() && c0.hbh_ratio.is_none() && c0.r_ratio.is_some());
    assert!(d0.sigma_b.starts_with("null"), "{}", d0.sigma_b);
    let json = r0.report.to_json();
    assert!(json.contains("\"desroziers\"") && json.contains("\"sum_hbh\": null"), "the JSON report says null");
}

/// Runs `ncases` exact analyses whose innovations are drawn from the latent B at `true_factor` and R, with the
/// B in force at `factor`, observation errors `sigma_scale` x those of `linear_grid_obs`; returns the reports'
/// desroziers sections.
fn cases(factor: f64, true_factor: f64, sigma_scale: f64, ncases: usize, seed: u64) -> Vec<Desroziers> {
    let mut a = Analyser::open(fixture("linear"), exact_options(factor)).unwrap();
    let xb = linear_background(&a);
    let obs0 = linear_grid_obs(&a, sigma_scale);
    let mut rng = Rng::new(seed);
    (0..ncases)
        .map(|_| {
            let obs = draw_case(&mut a, &xb, &obs0, true_factor, &mut rng);
            let res = a.analyse(&xb, &obs, Method::L3dvar).unwrap();
            assert_eq!(res.report.n_used, obs.len());
            res.report.desroziers.unwrap()
        })
        .collect()
}

#[test]
fn estimates_equal_the_generating_b_and_r_for_the_optimal_analysis() {
    // B and R in force are those that drew the innovations: the analysis is the exact Kalman analysis, so
    // E[d_a d_b] = R and E[(H x_a - H x_b) d_b] = H B H^T (Desroziers et al. 2005, eqs. 1-2).
    let sections = cases(1.0, 1.0, 1.0, 150, 11);
    let t = tune(&sections, "l3dvar", "all", "global").unwrap();
    eprintln!("{}", t.table());
    let c = t.cells.iter().find(|c| c.group == "all" && c.band == "global").unwrap();
    eprintln!(
        "r_ratio {:?} hbh_ratio {:?} chi2 {:?} g_new {:?}",
        c.r_ratio, c.hbh_ratio, c.innovation_ratio, t.scale_new
    );
    // 150 cases x 24 latent directions: sampling error of the B ratio ~ sqrt(2 / 3600) ~ 0.024
    assert!((c.r_ratio.unwrap() - 1.0).abs() < 0.05, "E[da db]/R = {:?}", c.r_ratio);
    assert!((c.hbh_ratio.unwrap() - 1.0).abs() < 0.08, "E[dHx db]/HBH^T = {:?}", c.hbh_ratio);
    assert!((c.innovation_ratio.unwrap() - 1.0).abs() < 0.05);
    assert!((t.scale_new.unwrap() - 1.0).abs() < 0.08);
    // per variable in physical units too (u: R = 1 m2/s2; t: 0.25 K2)
    for (g, r) in [("u", 1.0), ("t", 0.25)] {
        let c = t.cells.iter().find(|c| c.group == g && c.band == "global").unwrap();
        assert_eq!(c.r_in_force, Some(r));
        assert!((c.r_estimate.unwrap() / r - 1.0).abs() < 0.1, "{g}: E[da db] {:?} vs R {r}", c.r_estimate);
        let (est, inf) = (c.hbh_estimate.unwrap(), c.hbh_in_force.unwrap());
        assert!((est / inf - 1.0).abs() < 0.15, "{g}: E[dHx db] {est} vs HBH^T {inf}");
    }
}

#[test]
fn a_too_large_b_is_detected_and_one_tuning_step_moves_towards_the_truth() {
    // The true errors have 0.25 x the bundle's latent variance; the B in force is 1 x (4x too large). Scalar theory
    // with s = true H B H^T, g = factor in force relative to the truth: ratio = (s + r) / (g s + r) in (1/g, 1), so
    // one step g_new = g x ratio lies between the truth and g; repeated steps converge to the truth. What counts is
    // s / r per eigenmode of R^-1/2 H B H^T R^-1/2: the latent B has 24 modes seen by some 900 observations, so with
    // the errors of the other tests (s / r about 20 per mode) one step lands on the truth. Observation errors 20x
    // larger make s / r about 1 per mode: a real fixed-point iteration.
    let sections = cases(1.0, 0.25, 20.0, 200, 21);
    let t = tune(&sections, "l3dvar", "all", "global").unwrap();
    let g1 = t.scale_new.unwrap();
    eprintln!("step 1: hbh_ratio {:?}, r_ratio {:?} -> latent_variance_factor {g1}", t.hbh_ratio, t.r_ratio);
    assert!(t.hbh_ratio.unwrap() < 0.8, "a 4x too large B must show: ratio {:?}", t.hbh_ratio);
    assert!(g1 > 0.27 && g1 < 0.9, "one step lands strictly between the truth 0.25 and 1: {g1}");
    assert_eq!(t.options[0].0, "latent_variance_factor");
    // a B too large gives too large a gain: E[d_a d_b] falls below R
    assert!(t.r_ratio.unwrap() < 1.0);
    // iterate: each step with the new factor, fresh cases
    let (mut g, mut late) = (g1, Vec::new());
    for step in 2..=6 {
        let s = cases(g, 0.25, 20.0, 200, 21 + step);
        let t = tune(&s, "l3dvar", "all", "global").unwrap();
        let next = t.scale_new.unwrap();
        eprintln!("step {step}: hbh_ratio {:?} -> {next}", t.hbh_ratio);
        // no step goes back towards the 4x too large start, nor far below the truth
        assert!(next < g1 * 1.05 && next > 0.2, "step {step}: {g} -> {next}");
        if step >= 4 {
            late.push(next);
        }
        g = next;
    }
    let mean = late.iter().sum::<f64>() / late.len() as f64;
    assert!((mean / 0.25 - 1.0).abs() < 0.1, "the fixed-point iteration converges to the true factor 0.25: {late:?}");
}

#[test]
fn tune_verb_accumulates_reports_and_writes_options() {
    let dir = scratch("desroziers_tune_verb");
    let s = fixture("linear").join("sample");
    let b = fixture("linear");
    let run = |method: &str, extra: &[&str], name: &str| {
        let rep = dir.join(format!("{name}.json"));
        let an = dir.join(format!("{name}.nc"));
        let mut args = vec![
            "analyse",
            "--bundle",
            b.to_str().unwrap(),
            "--background",
            s.join("background.nc").to_str().unwrap().to_owned().leak(),
            "--obs",
            s.join("obs.csv").to_str().unwrap().to_owned().leak(),
            "--output",
            an.to_str().unwrap().to_owned().leak(),
            "--report",
            rep.to_str().unwrap().to_owned().leak(),
            "--method",
            method,
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = cli(&args);
        assert_eq!(code, 0, "{out}\n{err}");
        rep
    };
    let r1 = run("3dvar", &["--baseline-variance-factor", "1.0"], "a");
    let r2 = run("3dvar", &["--baseline-variance-factor", "2.0"], "b");
    let r3 = run("l3dvar", &[], "c");
    let opts = dir.join("tuned.toml");
    let (code, out, err) =
        cli(&["tune", r1.to_str().unwrap(), r2.to_str().unwrap(), "--output", opts.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("group") && out.contains("global") && out.contains("B rat"), "{out}");
    // the file is an options file, and its factor is the library's accumulation of the two reports
    let text = std::fs::read_to_string(&opts).unwrap();
    let o = Options::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let read = |p: &std::path::Path| -> Desroziers {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        serde_json::from_value(v["desroziers"].clone()).unwrap()
    };
    let (d1, d2) = (read(&r1), read(&r2));
    assert_eq!(d2.b_in_force.baseline_variance_factor, Some(2.0));
    let t = tune(&[d1.clone(), d2.clone()], "3dvar", "all", "global").unwrap();
    let g = o.baseline_variance_factor.expect("3dvar reports tune baseline_variance_factor");
    assert!((g - t.scale_new.unwrap()).abs() <= 1e-6 * g, "{g} vs {:?}", t.scale_new);
    // exact accumulation: the accumulated sums are the sums of the reports' sums
    let c = |d: &Desroziers| d.cell("all", "global").unwrap().normalised.clone();
    let acc = &t.cells.iter().find(|c| c.group == "all" && c.band == "global").unwrap().normalised;
    assert_eq!(acc.n, c(&d1).n + c(&d2).n);
    assert!((acc.sum_dhx_db - c(&d1).sum_dhx_db - c(&d2).sum_dhx_db).abs() < 1e-9 * acc.sum_dhx_db.abs());
    // g_new = sum est / sum (in / g)
    let want =
        (c(&d1).sum_dhx_db + c(&d2).sum_dhx_db) / (c(&d1).sum_hbh.unwrap() / 1.0 + c(&d2).sum_hbh.unwrap() / 2.0);
    assert!((g - want).abs() <= 1e-6 * want, "{g} vs {want}");
    // mixed methods: printing is fine, writing needs --method
    let (code, out, _) = cli(&["tune", r1.to_str().unwrap(), r3.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("method 3dvar") && out.contains("method l3dvar"), "{out}");
    let (code, _, err) = cli(&["tune", r1.to_str().unwrap(), r3.to_str().unwrap(), "--output", opts.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--method"), "{err}");
    let (code, out, err) = cli(&[
        "tune",
        r1.to_str().unwrap(),
        r3.to_str().unwrap(),
        "--method",
        "l3dvar",
        "--output",
        opts.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let o = Options::from_toml(&std::fs::read_to_string(&opts).unwrap()).unwrap();
    assert!(o.latent_variance_factor.is_some() && o.baseline_variance_factor.is_none());
    // a file without a desroziers section is an error that names it
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"method\": \"3dvar\"}").unwrap();
    let (code, _, err) = cli(&["tune", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.json") && err.contains("desroziers"), "{err}");
    let (code, _, _) = cli(&["tune"]);
    assert_eq!(code, 2);
    // per-variable weights on the command line, into the report, and back out of `tune --per-variable`
    let r4 = run("hybrid", &["--hybrid-variable-weights", "t=0.2,0.1;wind=0.5,0.4,0.3,0.2"], "d");
    let d4 = read(&r4);
    let w = d4.b_in_force.hybrid_weights.clone().expect("per-variable weights are recorded in force");
    assert_eq!(
        (w["t"].as_slice(), w["u"].as_slice()),
        ([0.2, 0.1, 0.2, 0.1, 0.2, 0.1].as_slice(), [0.5, 0.4, 0.3, 0.2, 0.5, 0.4].as_slice())
    );
    assert_eq!(d4.b_in_force.hybrid_weights_of("u"), Some([0.5, 0.4, 0.3, 0.2, 0.5, 0.4]));
    let (code, out, err) = cli(&["tune", r4.to_str().unwrap(), "--per-variable", "--output", opts.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    let o = Options::from_toml(&std::fs::read_to_string(&opts).unwrap()).unwrap();
    let table = o.hybrid_variable_weights.expect("--per-variable writes hybrid_variable_weights");
    let mut t = tune(&[d4], "hybrid", "all", "global").unwrap();
    t.use_variable_weights().unwrap();
    let want = t.variable_weights.unwrap();
    for (v, x) in &want {
        let got = table[v];
        let got = [got.alpha.unwrap(), got.beta.unwrap(), got.alpha_tropics.unwrap(), got.beta_tropics.unwrap()];
        assert!(got.iter().zip(x).all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1e-9)), "{v}: {got:?} vs {x:?}");
    }
    for (bad, want) in [
        ("t=0.2", "2, 4 or 6 weights"),
        ("t=1,2,3,4,5", "2, 4 or 6 weights"),
        ("t0.2,0.1", "NAME=ALPHA"),
        ("t=x,0.1", "needs a number, got 'x'"),
    ] {
        let (code, _, err) = cli(&[
            "analyse",
            "--bundle",
            b.to_str().unwrap(),
            "--background",
            "x.nc",
            "--obs",
            "x.csv",
            "--output",
            "x.nc",
            "--hybrid-variable-weights",
            bad,
        ]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains(want), "{bad}: {err}");
    }
    let (code, _, err) = cli(&["tune", r1.to_str().unwrap(), "--per-variable"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--per-variable") && err.contains("3dvar"), "{err}");
}

/// Hybrid analyses with weights (alpha, beta) in force of innovations drawn from alpha_t B_latent + beta_t B_static
/// and R (sigma x `sigma_scale`); returns the reports' desroziers sections.
fn hybrid_cases(w: (f64, f64), w_true: (f64, f64), sigma_scale: f64, ncases: usize, seed: u64) -> Vec<Desroziers> {
    use latentda::var::options::BKind;
    let opts = format!(
        "outer_loops = 1\nmax_inner = 400\ngradient_reduction = 1e-10\nbg_check = 1e6\nhybrid_alpha = {}\nhybrid_beta = {}",
        w.0, w.1
    );
    let mut a = Analyser::open(fixture("linear"), Options::from_toml(&opts).unwrap()).unwrap();
    let xb = linear_background(&a);
    let obs0 = linear_grid_obs(&a, sigma_scale);
    let lay = a.bundle.layout.clone();
    let mut rng = Rng::new(seed);
    let mut flags = vec![QcFlag::Used; obs0.len()];
    let h = ObsOperator::build(&lay, &obs0, &mut flags);
    (0..ncases)
        .map(|_| {
            // truth: x_b + sqrt(alpha_t) U_l xi + sqrt(beta_t) U_s eta
            let z = a.encode_background(&xb).unwrap();
            a.prepare_b(BKind::Latent, Some(&z)).unwrap();
            a.prepare_b(BKind::Static, None).unwrap();
            let mut xt = xb.clone();
            for (kind, wt) in [(BKind::Latent, w_true.0), (BKind::Static, w_true.1)] {
                let mut dx = vec![0.0; lay.state_len()];
                a.with_b(kind, |op, ae| {
                    let v = rng.normals(op.control_size());
                    op.sqrt(ae, &v, &mut dx)
                })
                .unwrap();
                xt.iter_mut().zip(&dx).for_each(|(x, d)| *x += wt.sqrt() * d);
            }
            let mut hxt = vec![0.0; h.nrows()];
            h.apply(&xt, &mut hxt);
            let mut obs = obs0.clone();
            for (r, &i) in h.rows.iter().enumerate() {
                obs[i].value = hxt[r] + obs0[i].sigma * rng.normal();
            }
            let res = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
            res.report.desroziers.unwrap()
        })
        .collect()
}

#[test]
fn hybrid_parts_add_up_and_the_split_moves_each_weight_towards_the_truth() {
    // Innovations from 0.25 B_latent + 1.0 B_static, analysed with alpha = beta = 1: the latent part is 4x too
    // large, the static part right. The joint scaling can only shrink both; the split fit must shrink alpha and
    // keep beta, and iterated converge to (0.25, 1). In this fixture the static part is the smaller share of
    // H B H^T (printed) and full rank (few observations per mode), so its weight is the noisier of the two: it is
    // judged on its mean over steps 2-4.
    let s0 = hybrid_cases((1.0, 1.0), (0.25, 1.0), 1.0, 100, 31);
    // at grid points the two parts add up to the total sigma_b^2 in force (diag B = alpha diag B_l + beta diag B_s)
    for c in s0[0].cells.iter().filter(|c| c.n > 0) {
        let m = &c.normalised;
        let (h, l, s) = (m.sum_hbh.unwrap(), m.sum_hbh_latent.unwrap(), m.sum_hbh_static.unwrap());
        assert!((l + s - h).abs() <= 1e-9 * h, "{} {}: {l} + {s} != {h}", c.group, c.band);
        assert!(l > 0.0 && s > 0.0);
    }
    let g = tune(&s0, "hybrid", "all", "global").unwrap();
    let all = &g.cells.iter().find(|c| c.group == "all" && c.band == "global").unwrap().normalised;
    eprintln!(
        "in force, all observations: latent {:.4e}, static {:.4e}",
        all.sum_hbh_latent.unwrap(),
        all.sum_hbh_static.unwrap()
    );
    let t = g;
    let sp = t.hybrid_split.expect("the linear fixture's cells tell the latent and static parts apart");
    eprintln!("step 1: joint scale {:?}, split {sp:?}", t.scale_new);
    assert!(sp.alpha < 0.5 && sp.beta > 0.5, "alpha must shrink (to about 0.25), beta stay: {sp:?}");
    // the joint scaling lands between: it cannot fix the mix
    assert!(t.scale_new.unwrap() > 0.3 && t.scale_new.unwrap() < 0.9);
    let (mut w, mut betas) = ((sp.alpha, sp.beta), Vec::new());
    for step in 2..=4 {
        let s = hybrid_cases(w, (0.25, 1.0), 1.0, 100, 31 + step);
        let sp = tune(&s, "hybrid", "all", "global").unwrap().hybrid_split.unwrap();
        eprintln!("step {step}: {sp:?}");
        assert!((sp.alpha / 0.25 - 1.0).abs() < 0.2, "alpha stays at the truth 0.25: {sp:?}");
        w = (sp.alpha, sp.beta);
        betas.push(sp.beta);
    }
    let mb = betas.iter().sum::<f64>() / betas.len() as f64;
    assert!((mb - 1.0).abs() < 0.25, "beta about 1 on average over steps 2-4: {betas:?}");
    // the verb writes them with --hybrid-split
    let mut t = tune(&s0, "hybrid", "all", "global").unwrap();
    t.use_split().unwrap();
    let o = Options::from_toml(&t.options_toml()).unwrap();
    assert_eq!((o.hybrid_alpha, o.hybrid_beta), (Some(sp.alpha), Some(sp.beta)).map_none_rounding());
}

/// Options values are written with 6 decimals: compare the rounded weights.
trait RoundPair {
    fn map_none_rounding(self) -> Self;
}
impl RoundPair for (Option<f64>, Option<f64>) {
    fn map_none_rounding(self) -> Self {
        let r = |x: Option<f64>| x.map(|x| (x * 1e6).round() / 1e6);
        (r(self.0), r(self.1))
    }
}

/// Hybrid analyses with the options `in_force` of innovations drawn from the hybrid B of the options `truth` (its
/// host B operator: the weight fields per variable and band applied) and R; returns the reports' desroziers sections.
fn drawn_from_hybrid(in_force: &str, truth: &str, ncases: usize, seed: u64) -> Vec<Desroziers> {
    use latentda::var::options::BKind;
    let base = "outer_loops = 1\nmax_inner = 400\ngradient_reduction = 1e-10\nbg_check = 1e6\n";
    let mut a = Analyser::open(fixture("linear"), Options::from_toml(&format!("{base}{in_force}")).unwrap()).unwrap();
    let mut t = Analyser::open(fixture("linear"), Options::from_toml(&format!("{base}{truth}")).unwrap()).unwrap();
    let xb = linear_background(&a);
    let obs0 = linear_grid_obs(&a, 1.0);
    let lay = a.bundle.layout.clone();
    let mut rng = Rng::new(seed);
    let mut flags = vec![QcFlag::Used; obs0.len()];
    let h = ObsOperator::build(&lay, &obs0, &mut flags);
    let z = t.encode_background(&xb).unwrap();
    t.prepare_b(BKind::Hybrid, Some(&z)).unwrap();
    (0..ncases)
        .map(|_| {
            let mut dx = vec![0.0; lay.state_len()];
            t.with_b(BKind::Hybrid, |op, ae| {
                let v = rng.normals(op.control_size());
                op.sqrt(ae, &v, &mut dx)
            })
            .unwrap();
            let mut hxt = vec![0.0; h.nrows()];
            let xt: Vec<f64> = xb.iter().zip(&dx).map(|(b, d)| b + d).collect();
            h.apply(&xt, &mut hxt);
            let mut obs = obs0.clone();
            for (r, &i) in h.rows.iter().enumerate() {
                obs[i].value = hxt[r] + obs0[i].sigma * rng.normal();
            }
            a.analyse(&xb, &obs, Method::Hybrid).unwrap().report.desroziers.unwrap()
        })
        .collect()
}

#[test]
fn per_variable_tuning_finds_the_variable_whose_b_is_wrong() {
    // Innovations from the hybrid B (alpha 0.7, beta 0.3) whose t part is 4x smaller at every latitude (weights
    // 0.175, 0.075), analysed with the plain hybrid: per-variable tuning must shrink t's weights and keep u's and
    // ps's; iterated, t's scale comes to about 1/4 of the others'. The joint scaling only shrinks everything a bit.
    let truth =
        "hybrid_alpha = 0.7\nhybrid_beta = 0.3\nhybrid_variable_weights = { t = { alpha = 0.175, beta = 0.075 } }";
    let mut opts = "hybrid_alpha = 0.7\nhybrid_beta = 0.3\n".to_string();
    let scale = |w: &[f64; 6]| (w[0] + w[1], w[2] + w[3]);
    let mut history = Vec::new();
    for step in 1..=3 {
        let s = drawn_from_hybrid(&opts, truth, 60, 70 + step);
        let mut t = tune(&s, "hybrid", "all", "global").unwrap();
        t.use_variable_weights().unwrap();
        let w = t.variable_weights.clone().unwrap();
        let (tx, tt) = scale(&w["t"]);
        let (ux, ut) = scale(&w["u"]);
        let (px, _) = scale(&w["ps"]);
        eprintln!(
            "step {step}: scale (alpha + beta) u {ux:.3} / {ut:.3}, t {tx:.3} / {tt:.3}, ps {px:.3}; joint {:?}",
            t.scale_new
        );
        // the mix alpha : beta = 0.7 : 0.3 is kept in every variable and band (up to the options file's 6 decimals)
        for (v, w) in &w {
            assert!(
                (w[0] / (w[0] + w[1]) - 0.7).abs() < 1e-4 && (w[2] / (w[2] + w[3]) - 0.7).abs() < 1e-4,
                "{v}: {w:?}"
            );
        }
        history.push((tx, tt, ux, ut, px));
        // the options file carries the table, and it opens
        let o = Options::from_toml(&t.options_toml()).unwrap();
        assert_eq!(o.hybrid_variable_weights.as_ref().map(|m| m.len()), Some(3));
        opts = t.options_toml();
    }
    let (tx1, _, ux1, _, px1) = history[0];
    assert!(tx1 < 0.75 * ux1.min(px1), "step 1: t must shrink against u and ps: {history:?}");
    let (tx, tt, ux, ut, px) = history[2];
    for (name, r) in [("t extratropics", tx / ux), ("t tropics", tt / ut), ("t / ps", tx / px)] {
        assert!((r / 0.25 - 1.0).abs() < 0.3, "step 3: {name} ratio {r:.3} not about 1/4: {history:?}");
    }
    for (name, r) in [("u", ux), ("ps", px)] {
        assert!((r - 1.0).abs() < 0.3, "step 3: {name} scale {r:.3} not about 1: {history:?}");
    }
}
