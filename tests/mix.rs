//! The hybrid's mix chosen online while cycling (options `mix_candidates`, `mix_state`, src/var/mix.rs) on the
//! linear fixture, in a cycle whose model is persistence (the next background is the analysis), so that the scheme's
//! forecast F_k = x_b + (A_k - A) is each candidate's exact forecast: the scores are the closed form, the analysis
//! runs with the chosen shares, errors drawn from the static B make the cycle choose the static part, one context
//! per cycle chooses as one context for the run, and failures change neither the state nor the options.

mod common;

use std::path::Path;

use common::*;
use latentda::model::forecast::StepModel;
use latentda::numeric::Rng;
use latentda::obs::operator::ObsOperator;
use latentda::obs::{Observation, QcFlag};
use latentda::var::mix::{fields_path, MixState};
use latentda::var::options::BKind;
use latentda::var::withheld::Withheld;
use latentda::{Analyser, Method, Options};

const EXACT: &str = "outer_loops = 1\nmax_inner = 400\ngradient_reduction = 1e-10\nbg_check = 1e6\n";
const WEIGHTS: &str = "hybrid_alpha = 0.7\nhybrid_beta = 0.3\n";

fn open(options: &str) -> Analyser {
    Analyser::open(fixture("linear"), Options::from_toml(&format!("{EXACT}{options}")).unwrap()).unwrap()
}

/// Options of the online mix scored by persistence (the cycle's model here).
fn mix_options(dir: &Path, candidates: &str, extra: &str) -> String {
    format!(
        "{WEIGHTS}mix_candidates = {candidates}\nmix_state = \"{}\"\nmix_score = \"persistence\"\n{extra}",
        dir.join("mix.json").display()
    )
}

/// A step model of `dt` hours: x_next = c + r (x - c) (r = 1: the identity, the cycle's own model here).
struct Relax {
    c: Vec<f64>,
    r: f64,
    dt: f64,
    calls: usize,
}

impl StepModel for Relax {
    fn state_len(&self) -> usize {
        self.c.len()
    }
    fn time_step_hours(&self) -> f64 {
        self.dt
    }
    fn describe(&self) -> String {
        "test relaxation".into()
    }
    fn step(&mut self, x: &[f64], x_next: &mut [f64]) -> latentda::Result<()> {
        self.calls += 1;
        x_next.iter_mut().zip(x.iter().zip(&self.c)).for_each(|(o, (x, c))| *o = c + self.r * (x - c));
        Ok(())
    }
    fn tl(&mut self, _: &[f64], dx: &[f64], dx_next: &mut [f64]) -> latentda::Result<()> {
        dx_next.iter_mut().zip(dx).for_each(|(o, d)| *o = self.r * d);
        Ok(())
    }
    fn ad(&mut self, _: &[f64], dx_next: &[f64], dx: &mut [f64]) -> latentda::Result<()> {
        dx.iter_mut().zip(dx_next).for_each(|(o, d)| *o = self.r * d);
        Ok(())
    }
}

/// A fixed truth: the fixture's background plus one draw of the B of `truth`, and observations of it with fresh
/// noise every cycle.
struct Truth {
    xb0: Vec<f64>,
    xt: Vec<f64>,
    obs0: Vec<Observation>,
    h: ObsOperator,
    rng: Rng,
}

impl Truth {
    fn new(truth: &str, kind: BKind, seed: u64) -> Truth {
        let mut t = open(truth);
        let xb0 = linear_background(&t);
        let obs0 = linear_grid_obs(&t, 1.0);
        let mut flags = vec![QcFlag::Used; obs0.len()];
        let h = ObsOperator::build(&t.bundle.layout, &obs0, &mut flags);
        let z = t.encode_background(&xb0).unwrap();
        t.prepare_b(kind, Some(&z)).unwrap();
        let mut rng = Rng::new(seed);
        let mut dx = vec![0.0; xb0.len()];
        t.with_b(kind, |op, ae| {
            let v = rng.normals(op.control_size());
            op.sqrt(ae, &v, &mut dx)
        })
        .unwrap();
        let xt = xb0.iter().zip(&dx).map(|(b, d)| b + d).collect();
        Truth { xb0, xt, obs0, h, rng }
    }

    fn obs(&mut self) -> Vec<Observation> {
        let mut hxt = vec![0.0; self.h.nrows()];
        self.h.apply(&self.xt, &mut hxt);
        let mut obs = self.obs0.clone();
        for (r, &i) in self.h.rows.iter().enumerate() {
            obs[i].value = hxt[r] + self.obs0[i].sigma * self.rng.normal();
        }
        obs
    }
}

fn rms_error(x: &[f64], t: &[f64]) -> f64 {
    (x.iter().zip(t).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

#[test]
fn first_cycle_is_the_options_hybrid_and_the_next_scores_each_candidate_in_closed_form() {
    let dir = scratch("mix_closed_form");
    let mut truth = Truth::new(WEIGHTS, BKind::Hybrid, 71);
    let mut a = open(&mix_options(&dir, "[0.7, 1.0, 0.0]", ""));
    let mut plain = open(WEIGHTS);
    let obs1 = truth.obs();
    let xb = truth.xb0.clone();
    let an1 = a.analyse(&xb, &obs1, Method::Hybrid).unwrap();
    // the first candidate is the options' share (0.7 of alpha + beta = 1): the plain hybrid, to the rounding of
    // beta = (1 - 0.7) x 1
    let ref1 = plain.analyse(&xb, &obs1, Method::Hybrid).unwrap();
    let d = max_rel_diff(&an1.analysis, &ref1.analysis);
    assert!(d < 1e-12, "first cycle differs from the plain hybrid by {d:e}");
    let info = an1.report.mix.clone().unwrap();
    assert!(info.scored.is_empty() && info.window_filled == 0 && info.cycles == 1);
    assert_eq!(info.choice["u"], [0.7, 0.7]);
    // the state and its fields: A_k - A per candidate, the first exactly 0
    let path = dir.join("mix.json");
    let state: MixState = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(state.pending, Some(1));
    let n = xb.len();
    assert_eq!(std::fs::metadata(fields_path(&path)).unwrap().len() as usize, 32 + 8 * 3 * n);
    // the candidates' own analyses, for the closed form
    let cand: Vec<Vec<f64>> = [(1.0, 0.0), (0.0, 1.0)]
        .iter()
        .map(|(al, be)| {
            let mut c = open(&format!("hybrid_alpha = {al}\nhybrid_beta = {be}\n"));
            c.analyse(&xb, &obs1, Method::Hybrid).unwrap().analysis
        })
        .collect();
    // cycle 2, persistence: x_b = A; F_k = A_k, scored against new observations as withheld ones
    let obs2 = truth.obs();
    let an2 = a.analyse(&an1.analysis, &obs2, Method::Hybrid).unwrap();
    let info = an2.report.mix.clone().unwrap();
    assert_eq!(info.window_filled, 1);
    for (k, (name, f)) in [("L0.7", &an1.analysis), ("L1", &cand[0]), ("L0", &cand[1])].into_iter().enumerate() {
        let w = Withheld::evaluate(&a.bundle.layout, &obs2, &an1.analysis, f, &[]).unwrap();
        for v in ["u", "t", "ps"] {
            let (nn, s) = ["nh", "sh"]
                .iter()
                .filter_map(|b| w.cell(v, b))
                .fold((0usize, 0.0), |(nn, s), c| (nn + c.n, s + c.sum_d));
            let got = info.scored[k][&format!("{v}/extratropics")];
            let want = s / nn as f64;
            assert!((got - want).abs() <= 1e-9 * want.abs().max(1e-12), "{name} {v}: {got} vs {want}");
            if name == "L0.7" {
                assert_eq!(got, 0.0, "the candidate that is the analysis used scores 0");
            }
        }
    }
    // the choice is the lowest mean d, and this analysis (cycle 2) already ran with it: alpha = L S, beta = (1 - L) S
    let best = |key: &str| {
        let k = (0..3).min_by(|x, y| info.scored[*x][key].total_cmp(&info.scored[*y][key])).unwrap();
        info.candidates[k]
    };
    let b_in_force = &an2.report.desroziers.as_ref().unwrap().b_in_force;
    for (v, class) in [("u", 0), ("t", 0), ("u", 1), ("ps", 1)] {
        let key = format!("{v}/{}", ["extratropics", "tropics"][class]);
        if !info.scored[0].contains_key(&key) {
            continue;
        }
        let l = info.choice[v][class];
        assert_eq!(l, best(&key), "{key}");
        let w = b_in_force.hybrid_weights_of(v).unwrap();
        let (al, be) = (w[2 * class], w[2 * class + 1]);
        assert!((al - l).abs() < 1e-12 && (be - (1.0 - l)).abs() < 1e-12, "{key}: weights {w:?}, share {l}");
    }
}

#[test]
fn errors_of_the_static_b_make_the_cycle_choose_the_static_part_and_it_beats_the_fixed_mix() {
    // A truth drawn from the static B alone; a persistence cycle of 8 analyses with candidates latent only (first,
    // so in force until there is evidence) and static only: the observed variables must move to the static part,
    // and the cycle must end closer to the truth than one that keeps the latent part.
    let dir = scratch("mix_static_truth");
    let mut truth = Truth::new("hybrid_alpha = 0.0\nhybrid_beta = 1.0\n", BKind::Hybrid, 73);
    let mut a = open(&mix_options(&dir, "[1.0, 0.0]", ""));
    let mut fixed = open("hybrid_alpha = 1.0\nhybrid_beta = 0.0\n");
    let (mut x, mut xf) = (truth.xb0.clone(), truth.xb0.clone());
    let mut last = None;
    for _ in 0..8 {
        let obs = truth.obs();
        let an = a.analyse(&x, &obs, Method::Hybrid).unwrap();
        x = an.analysis;
        xf = fixed.analyse(&xf, &obs, Method::Hybrid).unwrap().analysis;
        last = an.report.mix;
    }
    let info = last.unwrap();
    eprintln!("choice {:?}, sources {:?}", info.choice, info.sources);
    for v in ["u", "t", "ps"] {
        assert_eq!(info.choice[v][0], 0.0, "{v}: {:?}", info.choice);
    }
    let (e_mix, e_fixed) = (rms_error(&x, &truth.xt), rms_error(&xf, &truth.xt));
    eprintln!("final error: mix {e_mix:.4}, latent only {e_fixed:.4}");
    assert!(e_mix < e_fixed, "mix {e_mix} vs latent only {e_fixed}");
}

#[test]
fn a_context_per_cycle_chooses_as_one_context_for_the_run() {
    let (d1, d2) = (scratch("mix_one_context"), scratch("mix_context_per_cycle"));
    let mut truth = Truth::new(WEIGHTS, BKind::Hybrid, 79);
    let obs: Vec<Vec<Observation>> = (0..4).map(|_| truth.obs()).collect();
    let mut one = open(&mix_options(&d1, "[0.7, 0.0]", ""));
    let (mut x1, mut x2) = (truth.xb0.clone(), truth.xb0.clone());
    for o in &obs {
        x1 = one.analyse(&x1, o, Method::Hybrid).unwrap().analysis;
        let mut per = open(&mix_options(&d2, "[0.7, 0.0]", ""));
        x2 = per.analyse(&x2, o, Method::Hybrid).unwrap().analysis;
    }
    assert_eq!(x1, x2);
    let s = |d: &Path| std::fs::read_to_string(d.join("mix.json")).unwrap().replace(&d.display().to_string(), "");
    assert_eq!(s(&d1), s(&d2));
}

#[test]
fn failures_change_neither_the_state_nor_the_options_and_wrong_files_are_named() {
    let dir = scratch("mix_failures");
    let path = dir.join("mix.json");
    let mut truth = Truth::new(WEIGHTS, BKind::Hybrid, 83);
    let mut a = open(&mix_options(&dir, "[0.7, 0.0]", ""));
    let xb = truth.xb0.clone();
    let obs = truth.obs();
    a.analyse(&xb, &obs, Method::Hybrid).unwrap();
    let (before, fields) = (std::fs::read(&path).unwrap(), std::fs::read(fields_path(&path)).unwrap());
    let opts = format!("{:?}", a.options());
    // a failing analysis: neither file changes, the options are the host's
    let mut bad = xb.clone();
    bad[3] = f64::NAN;
    assert!(a.analyse(&bad, &obs, Method::Hybrid).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(std::fs::read(fields_path(&path)).unwrap(), fields);
    assert_eq!(format!("{:?}", a.options()), opts);
    // another method has no mix
    let e = a.analyse(&xb, &obs, Method::L3dvar).unwrap_err().to_string();
    assert!(e.contains("mix_candidates") && e.contains("'l3dvar'"), "{e}");
    // a state of other candidates is named, not overwritten
    let mut other = open(&mix_options(&dir, "[0.7, 0.4]", ""));
    let e = other.analyse(&xb, &obs, Method::Hybrid).unwrap_err().to_string();
    assert!(e.contains("mix.json") && e.contains("mix_candidates"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // ensemble members: refused
    let mut en = open(&mix_options(&dir, "[0.7, 0.0]", ""));
    let members = (0..2).map(|k| xb.iter().map(|x| x * (1.0 + 1e-3 * (k as f64 + 1.0))).collect()).collect();
    en.set_ensemble(members).unwrap();
    let e = en.analyse(&xb, &obs, Method::Hybrid).unwrap_err().to_string();
    assert!(e.contains("ensemble members"), "{e}");
    // fields of another cycle (a crash between the two writes): noted, nothing scored, the analysis stands
    let mut f = fields.clone();
    f[8] ^= 1;
    std::fs::write(fields_path(&path), &f).unwrap();
    let an = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
    let info = an.report.mix.unwrap();
    assert!(info.scored.is_empty() && info.notes.iter().any(|n| n.contains("cycle")), "{:?}", info.notes);
    // a damaged state is named, not overwritten
    std::fs::write(&path, "{ not json").unwrap();
    let e = a.analyse(&xb, &obs, Method::Hybrid).unwrap_err().to_string();
    assert!(e.contains("mix.json") && e.contains("not a latentda mix state file"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");
}

#[test]
fn the_cli_writes_the_state_with_its_outputs() {
    let dir = scratch("mix_cli");
    let sample = fixture("linear").join("sample");
    let state = dir.join("m.json");
    let out = dir.join("an.nc");
    let (bundle, bg, obs) = (fixture("linear"), sample.join("background.nc"), sample.join("obs.csv"));
    let (bundle, bg, obs, st) =
        (bundle.to_str().unwrap(), bg.to_str().unwrap(), obs.to_str().unwrap(), state.to_str().unwrap());
    let analyse = |extra: &[&str]| {
        let mut args = vec!["analyse", "--bundle", bundle, "--background", bg, "--obs", obs, "--mix-state", st];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let o = out.to_str().unwrap();
    let mix = ["--method", "hybrid", "--mix-candidates", "0.7,0.2", "--mix-score", "persistence", "--output", o];
    let (rc, stdout, stderr) = analyse(&mix);
    assert_eq!(rc, 0, "{stdout}\n{stderr}");
    assert!(out.exists() && state.exists() && fields_path(&state).exists());
    assert!(stdout.contains("mix (") || stderr.contains("mix ("), "{stdout}\n{stderr}");
    // with analysis times: a second run 12 h after the first (a 6 h cycle skipped) scores nothing and says why
    let timed = |t: &str| analyse(&[&mix[..], &["--analysis-time", t]].concat());
    std::fs::remove_file(&state).unwrap();
    assert_eq!(timed("0").0, 0);
    let (rc, stdout, stderr) = timed("12");
    assert_eq!(rc, 0, "{stdout}\n{stderr}");
    assert!(format!("{stdout}{stderr}").contains("nothing scored"), "{stdout}\n{stderr}");
    for bad in ["noon", "nan"] {
        let (rc, _, stderr) = timed(bad);
        assert_eq!(rc, 2, "{stderr}");
        assert!(stderr.contains(&format!("--analysis-time '{bad}'")), "{stderr}");
    }
    let (rc, _, stderr) = analyse(&["--mix-candidates", "0.7,2"]);
    assert_eq!(rc, 2, "{stderr}");
    assert!(stderr.contains("mix_candidates") && stderr.contains('2'), "{stderr}");
}

#[test]
fn scored_by_the_host_model_each_candidate_is_its_forecast_and_persistence_is_the_identity_model() {
    // 1. With the identity as the host's model (two 3 h steps per 6 h cycle) and a cycle whose next background is the
    //    analysis, mix_score = "model" forecasts F_k = A_k, which is what persistence gives: same analyses, same
    //    state but for its score name.
    let (dp, dm) = (scratch("mix_score_persistence"), scratch("mix_score_model"));
    let mut truth = Truth::new(WEIGHTS, BKind::Hybrid, 89);
    let obs: Vec<Vec<Observation>> = (0..4).map(|_| truth.obs()).collect();
    let mut pers = open(&mix_options(&dp, "[0.7, 1.0, 0.0]", ""));
    let mut with_model = open(&mix_options(&dm, "[0.7, 1.0, 0.0]", "").replace("persistence", "model"));
    let mut id = Relax { c: vec![0.0; truth.xb0.len()], r: 1.0, dt: 3.0, calls: 0 };
    let (mut xp, mut xm) = (truth.xb0.clone(), truth.xb0.clone());
    for o in &obs {
        xp = pers.analyse(&xp, o, Method::Hybrid).unwrap().analysis;
        xm = with_model.analyse_cycling(&xm, o, Method::Hybrid, Some(&mut id)).unwrap().analysis;
        let d = max_rel_diff(&xp, &xm);
        assert!(d < 1e-12, "model (identity) vs persistence: {d:e}");
    }
    assert_eq!(id.calls, 4 * 3 * 2, "3 candidates x 2 steps per cycle");
    let st =
        |d: &Path| serde_json::from_str::<MixState>(&std::fs::read_to_string(d.join("mix.json")).unwrap()).unwrap();
    let (sp, sm) = (st(&dp), st(&dm));
    assert_eq!((sp.score.as_str(), sm.score.as_str()), ("persistence", "model"));
    assert_eq!(sp.choice, sm.choice);
    // 2. A model that is not the identity: the scores are those of its forecasts of the candidates' analyses.
    let dr = scratch("mix_score_relax");
    let mut a = open(&mix_options(&dr, "[0.7, 0.0]", "mix_lead_hours = 12.0").replace("persistence", "model"));
    let mut relax = Relax { c: truth.xb0.clone(), r: 0.8, dt: 6.0, calls: 0 };
    let x0 = truth.xb0.clone();
    let an1 = a.analyse_cycling(&x0, &obs[0], Method::Hybrid, Some(&mut relax)).unwrap();
    let mut c0 = open("hybrid_alpha = 0.0\nhybrid_beta = 1.0\n");
    let a0 = c0.analyse(&x0, &obs[0], Method::Hybrid).unwrap().analysis;
    let fc = |x: &[f64]| x.iter().zip(&x0).map(|(x, c)| c + 0.64 * (x - c)).collect::<Vec<f64>>();
    let x_b2 = fc(&an1.analysis);
    let info = a.analyse_cycling(&x_b2, &obs[1], Method::Hybrid, Some(&mut relax)).unwrap().report.mix.unwrap();
    for (k, (name, f)) in [("L0.7", fc(&an1.analysis)), ("L0", fc(&a0))].into_iter().enumerate() {
        let w = Withheld::evaluate(&a.bundle.layout, &obs[1], &x_b2, &f, &[]).unwrap();
        let (n, s) =
            ["nh", "sh"].iter().filter_map(|b| w.cell("t", b)).fold((0, 0.0), |(n, s), c| (n + c.n, s + c.sum_d));
        let (got, want) = (info.scored[k]["t/extratropics"], s / n as f64);
        // d is normalised by sigma_o^2: 1e-9 absolute is far below any difference between candidates
        assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "{name}: {got} vs {want}");
    }
    // 3. no model, or a lead that is not a whole number of its steps: errors that say so, the state unchanged
    let before = std::fs::read(dr.join("mix.json")).unwrap();
    let e = a.analyse(&x_b2, &obs[2], Method::Hybrid).unwrap_err().to_string();
    assert!(e.contains("mix_score") && e.contains("lda_set_step_model"), "{e}");
    let mut odd = Relax { c: x0.clone(), r: 0.8, dt: 5.0, calls: 0 };
    let e = a.analyse_cycling(&x_b2, &obs[2], Method::Hybrid, Some(&mut odd)).unwrap_err().to_string();
    assert!(e.contains("mix_lead_hours = 12") && e.contains("5 h"), "{e}");
    assert_eq!(std::fs::read(dr.join("mix.json")).unwrap(), before);
    // a state of the other score is named
    let mut p2 = open(&mix_options(&dr, "[0.7, 0.0]", ""));
    let e = p2.analyse(&x_b2, &obs[2], Method::Hybrid).unwrap_err().to_string();
    assert!(e.contains("mix.json") && e.contains("mix_score 'model'"), "{e}");
}

unsafe extern "C" fn halve_to_zero(user: *mut std::ffi::c_void, n: usize, x: *const f64, x_next: *mut f64) -> i32 {
    // SAFETY: latentda passes n values at x and x_next (lda_set_step_model's contract); user is the test's counter.
    unsafe {
        *(user as *mut usize) += 1;
        for i in 0..n {
            *x_next.add(i) = 0.5 * *x.add(i);
        }
    }
    0
}

#[test]
fn a_nonlinear_only_host_model_serves_the_mix_through_the_c_abi_and_l4dvar_says_what_is_missing() {
    use latentda::coupling::ffi;
    use std::ffi::CString;
    let dir = scratch("mix_c_abi");
    let opts = CString::new(mix_options(&dir, "[0.7, 0.0]", "").replace("persistence", "model")).unwrap();
    let bundle = CString::new(fixture("linear").to_str().unwrap()).unwrap();
    let mut ctx: *mut ffi::LdaContext = std::ptr::null_mut();
    assert_eq!(ffi::lda_open(bundle.as_ptr(), opts.as_ptr(), &mut ctx), ffi::LDA_OK);
    let mut truth = Truth::new(WEIGHTS, BKind::Hybrid, 97);
    let a = open("");
    let fields = bind_state_c(ctx, &a.bundle.layout, &truth.xb0);
    let obs = truth.obs();
    let col = |f: fn(&Observation) -> f64| obs.iter().map(f).collect::<Vec<f64>>();
    let var: Vec<i32> = obs.iter().map(|o| o.var.unwrap() as i32).collect();
    let (la, lo, le, va, si) =
        (col(|o| o.lat), col(|o| o.lon), col(|o| o.level.unwrap_or(f64::NAN)), col(|o| o.value), col(|o| o.sigma));
    let set_obs = || {
        let rc = ffi::lda_set_obs(
            ctx,
            obs.len(),
            var.as_ptr(),
            la.as_ptr(),
            lo.as_ptr(),
            le.as_ptr(),
            va.as_ptr(),
            si.as_ptr(),
        );
        assert_eq!(rc, ffi::LDA_OK);
    };
    set_obs();
    let hybrid = CString::new("hybrid").unwrap();
    // no model yet: mix_score = "model" refuses, the arrays untouched
    assert_eq!(ffi::lda_analyse(ctx, hybrid.as_ptr()), ffi::LDA_ERR_INVALID_ARGUMENT);
    // SAFETY: lda_last_error never returns NULL.
    let msg = unsafe { std::ffi::CStr::from_ptr(ffi::lda_last_error(ctx)) }.to_string_lossy().into_owned();
    assert!(msg.contains("lda_set_step_model"), "{msg}");
    assert!(!dir.join("mix.json").exists());
    // step alone: a nonlinear-only model; step with one of TL / AD is still refused
    let mut calls = 0usize;
    let user = &mut calls as *mut usize as *mut std::ffi::c_void;
    assert_eq!(ffi::lda_set_step_model(ctx, Some(halve_to_zero), None, None, user, 3.0), ffi::LDA_OK);
    assert_eq!(ffi::lda_analyse(ctx, hybrid.as_ptr()), ffi::LDA_OK);
    assert_eq!(calls, 2 * 2, "two candidates, two 3 h steps each");
    assert!(dir.join("mix.json").exists());
    ffi::lda_close(ctx);
    drop(fields);
    // latent 4D-Var with such a model (a context without the mix) fails, naming the missing callback
    let mut c4: *mut ffi::LdaContext = std::ptr::null_mut();
    assert_eq!(ffi::lda_open(bundle.as_ptr(), std::ptr::null(), &mut c4), ffi::LDA_OK);
    let fields = bind_state_c(c4, &a.bundle.layout, &truth.xb0);
    let rc =
        ffi::lda_set_obs(c4, obs.len(), var.as_ptr(), la.as_ptr(), lo.as_ptr(), le.as_ptr(), va.as_ptr(), si.as_ptr());
    assert_eq!(rc, ffi::LDA_OK);
    assert_eq!(ffi::lda_set_step_model(c4, Some(halve_to_zero), None, None, user, 6.0), ffi::LDA_OK);
    let before = fields.clone();
    let l4 = CString::new("l4dvar").unwrap();
    assert_eq!(ffi::lda_analyse(c4, l4.as_ptr()), ffi::LDA_ERR_INVALID_ARGUMENT);
    // SAFETY: as above.
    let msg = unsafe { std::ffi::CStr::from_ptr(ffi::lda_last_error(c4)) }.to_string_lossy().into_owned();
    assert!(msg.contains("'step' alone") && (msg.contains("'tl'") || msg.contains("'ad'")), "{msg}");
    assert_eq!(fields, before, "host arrays untouched");
    ffi::lda_close(c4);
}

#[test]
fn with_the_adaptive_state_both_files_are_written_together_or_not_at_all_and_a_blown_up_forecast_is_dropped() {
    let dir = scratch("mix_with_adaptive");
    let adaptive = dir.join("ad.json");
    let extra = format!("adaptive_state = \"{}\"\n", adaptive.display());
    let mut truth = Truth::new(WEIGHTS, BKind::Hybrid, 101);
    let xb = truth.xb0.clone();
    // the mix's folder does not exist: the analysis fails and the adaptive state is not written either
    let missing = dir.join("no_such_folder");
    let mut a = open(&mix_options(&missing, "[0.7, 0.0]", &extra));
    let e = a.analyse(&xb, &truth.obs(), Method::Hybrid).unwrap_err().to_string();
    assert!(e.contains("mix.json") && e.contains("cannot write"), "{e}");
    assert!(!adaptive.exists(), "the adaptive state must not run ahead of the mix state");
    // both in a folder that exists: both written
    let mut a = open(&mix_options(&dir, "[0.7, 0.0]", &extra));
    a.analyse(&xb, &truth.obs(), Method::Hybrid).unwrap();
    assert!(adaptive.exists() && dir.join("mix.json").exists() && fields_path(&dir.join("mix.json")).exists());
    // one file for both: refused at open
    let same = format!("adaptive_state = \"{}\"\n", dir.join("mix.json").display());
    let e = Options::from_toml(&format!("{EXACT}{}", mix_options(&dir, "[0.7, 0.0]", &same))).unwrap_err();
    assert!(e.message.contains("same file"), "{}", e.message);
    // a host model whose forecasts are finite but huge: the scores overflow; that cycle's evidence is dropped with a
    // note, and the state stays readable
    let dm = scratch("mix_blow_up");
    let mut b = open(&mix_options(&dm, "[0.7, 0.0]", "").replace("persistence", "model"));
    let mut huge = Relax { c: vec![0.0; xb.len()], r: 1e150, dt: 6.0, calls: 0 };
    let an = b.analyse_cycling(&xb, &truth.obs(), Method::Hybrid, Some(&mut huge)).unwrap();
    let info =
        b.analyse_cycling(&an.analysis, &truth.obs(), Method::Hybrid, Some(&mut huge)).unwrap().report.mix.unwrap();
    assert!(info.scored.is_empty() && info.window_filled == 0, "{info:?}");
    assert!(info.notes.iter().any(|n| n.contains("non-finite")), "{:?}", info.notes);
    b.analyse_cycling(&an.analysis, &truth.obs(), Method::Hybrid, Some(&mut huge)).unwrap();
}

#[test]
fn with_analysis_times_a_skipped_cycle_leaves_the_stale_forecasts_unscored() {
    let dir = scratch("mix_times");
    let path = dir.join("mix.json");
    let mut truth = Truth::new(WEIGHTS, BKind::Hybrid, 103);
    let mut a = open(&mix_options(&dir, "[0.7, 0.0]", ""));
    let mut x = truth.xb0.clone();
    let mut cycle = |a: &mut Analyser, x: &mut Vec<f64>, t: f64| {
        a.set_analysis_time(t).unwrap();
        let an = a.analyse(x, &truth.obs(), Method::Hybrid).unwrap();
        *x = an.analysis;
        an.report.mix.unwrap()
    };
    let i0 = cycle(&mut a, &mut x, 0.0);
    assert_eq!((i0.analysis_time_hours, i0.valid_next_hours), (Some(0.0), Some(6.0)));
    let i6 = cycle(&mut a, &mut x, 6.0);
    assert!(!i6.scored.is_empty() && i6.window_filled == 1 && i6.notes.is_empty(), "{i6:?}");
    // the 12 h cycle skipped: the forecasts valid at 12 h are not scored against the 18 h observations
    let i18 = cycle(&mut a, &mut x, 18.0);
    assert!(i18.scored.is_empty() && i18.window_filled == 1, "{i18:?}");
    assert!(i18.notes.iter().any(|n| n.contains("valid at 12 h") && n.contains("18 h")), "{:?}", i18.notes);
    let state: MixState = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(state.pending_valid_hours, Some(24.0));
    // on time again: scored
    let i24 = cycle(&mut a, &mut x, 24.0);
    assert!(!i24.scored.is_empty() && i24.window_filled == 2 && i24.notes.is_empty(), "{i24:?}");
    // a non-finite time is refused and leaves the time as it was
    let e = a.set_analysis_time(f64::NAN).unwrap_err();
    assert!(e.message.contains("not finite"), "{}", e.message);
    assert_eq!(a.analysis_time(), Some(24.0));
    // a context that sets no time cannot check the pending forecasts' time: noted, nothing scored; its own
    // forecasts carry no time, so the next analysis scores them
    let mut b = open(&mix_options(&dir, "[0.7, 0.0]", ""));
    let info = b.analyse(&x, &truth.obs(), Method::Hybrid).unwrap().report.mix.unwrap();
    assert!(info.scored.is_empty() && info.notes.iter().any(|n| n.contains("no time")), "{info:?}");
    assert_eq!(info.valid_next_hours, None);
    let info = b.analyse(&x, &truth.obs(), Method::Hybrid).unwrap().report.mix.unwrap();
    assert!(!info.scored.is_empty(), "{info:?}");
    // a state written before analysis times and mix_every existed (neither key), with candidates pending: it reads,
    // and a host that now sets a time scores them unchecked (the state says nothing of their time)
    let text = std::fs::read_to_string(&path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["pending"].is_u64(), "{v}");
    v.as_object_mut().unwrap().remove("pending_valid_hours");
    v.as_object_mut().unwrap().remove("next_run");
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
    b.set_analysis_time(30.0).unwrap();
    let info = b.analyse(&x, &truth.obs(), Method::Hybrid).unwrap().report.mix.unwrap();
    assert!(!info.scored.is_empty() && info.notes.is_empty(), "{info:?}");
    assert_eq!(info.valid_next_hours, Some(36.0));
    // through the C ABI: a non-finite time and a NULL context are refused
    use latentda::coupling::ffi;
    let bundle = std::ffi::CString::new(fixture("linear").to_str().unwrap()).unwrap();
    let mut ctx: *mut ffi::LdaContext = std::ptr::null_mut();
    assert_eq!(ffi::lda_open(bundle.as_ptr(), std::ptr::null(), &mut ctx), ffi::LDA_OK);
    assert_eq!(ffi::lda_set_analysis_time(ctx, 6.0), ffi::LDA_OK);
    assert_eq!(ffi::lda_set_analysis_time(ctx, f64::INFINITY), ffi::LDA_ERR_INVALID_ARGUMENT);
    // SAFETY: lda_last_error never returns NULL.
    let msg = unsafe { std::ffi::CStr::from_ptr(ffi::lda_last_error(ctx)) }.to_string_lossy().into_owned();
    assert!(msg.contains("lda_set_analysis_time") && msg.contains("inf"), "{msg}");
    assert_eq!(ffi::lda_set_analysis_time(std::ptr::null_mut(), 6.0), ffi::LDA_ERR_NULL_POINTER);
    ffi::lda_close(ctx);
}

#[test]
fn with_mix_every_the_candidates_run_every_nth_analysis_and_the_choice_is_kept_between() {
    // mix_every = 2: the candidates run at analyses 1, 3, 5 and are scored at 2, 4, 6; analyses 2 and 4 run with
    // the choice made from the scores at hand, and analysis 3 keeps it.
    let dir = scratch("mix_every");
    let mut truth = Truth::new(WEIGHTS, BKind::Hybrid, 107);
    let mut a = open(&mix_options(&dir, "[0.7, 0.0]", "mix_every = 2"));
    let mut every1 = open(&mix_options(&scratch("mix_every_1"), "[0.7, 0.0]", ""));
    let mut x = truth.xb0.clone();
    let mut infos = Vec::new();
    for c in 0..6 {
        let obs = truth.obs();
        let an = a.analyse(&x, &obs, Method::Hybrid).unwrap();
        if c == 0 {
            // the first analysis is the same whatever mix_every
            let an1 = every1.analyse(&x, &obs, Method::Hybrid).unwrap();
            assert_eq!(an.analysis, an1.analysis);
        }
        x = an.analysis;
        infos.push(an.report.mix.unwrap());
    }
    let ran: Vec<bool> = infos.iter().map(|i| i.candidates_run).collect();
    assert_eq!(ran, [true, false, true, false, true, false]);
    let scored: Vec<bool> = infos.iter().map(|i| !i.scored.is_empty()).collect();
    assert_eq!(scored, [false, true, false, true, false, true]);
    let filled: Vec<usize> = infos.iter().map(|i| i.window_filled).collect();
    assert_eq!(filled, [0, 1, 1, 2, 2, 3]);
    // between two scored analyses the choice is unchanged, and nothing is pending after a cycle without candidates
    assert_eq!(infos[2].choice, infos[1].choice);
    assert_eq!(infos[4].choice, infos[3].choice);
    let state: MixState = serde_json::from_str(&std::fs::read_to_string(dir.join("mix.json")).unwrap()).unwrap();
    assert_eq!(state.pending, None);
    // with times: a scoring analysis that finds the forecasts stale (the 12 h cycle skipped) runs the candidates at
    // once rather than a whole period later, and the next analysis scores them
    let dt = scratch("mix_every_times");
    let mut b = open(&mix_options(&dt, "[0.7, 0.0]", "mix_every = 4"));
    let x0 = truth.xb0.clone();
    let mut run = |t: f64| {
        b.set_analysis_time(t).unwrap();
        b.analyse(&x0, &truth.obs(), Method::Hybrid).unwrap().report.mix.unwrap()
    };
    let i: Vec<_> = [0.0, 12.0, 18.0, 24.0].iter().map(|&t| run(t)).collect();
    let ran: Vec<bool> = i.iter().map(|i| i.candidates_run).collect();
    assert_eq!(ran, [true, true, false, false], "{:?}", i.iter().map(|i| &i.notes).collect::<Vec<_>>());
    assert!(i[1].scored.is_empty() && i[1].notes.iter().any(|n| n.contains("valid at 6 h")), "{:?}", i[1]);
    assert!(!i[2].scored.is_empty() && i[2].notes.is_empty(), "{:?}", i[2]);
    assert!(i[3].scored.is_empty());
    // mix_every = 0 is refused, naming the option
    let e = Options::from_toml(&mix_options(&dir, "[0.7, 0.0]", "mix_every = 0")).unwrap_err();
    assert!(e.message.contains("mix_every"), "{}", e.message);
}

#[test]
fn with_hemispheric_classes_each_hemisphere_is_scored_and_weighted_on_its_own() {
    // mix_hemispheres = true: the scores of cycle 2 are per nh, tropics and sh (closed form from each band's
    // observations alone), and the analysis runs with each class's share in its own pair of the B's weights.
    let dir = scratch("mix_hemispheres");
    let mut truth = Truth::new(WEIGHTS, BKind::Hybrid, 83);
    let mut a = open(&mix_options(&dir, "[0.7, 1.0, 0.0]", "mix_hemispheres = true"));
    let xb = truth.xb0.clone();
    let obs1 = truth.obs();
    let an1 = a.analyse(&xb, &obs1, Method::Hybrid).unwrap();
    let info = an1.report.mix.clone().unwrap();
    assert_eq!(info.classes, ["nh", "tropics", "sh"]);
    assert_eq!(info.choice["u"], [0.7, 0.7, 0.7]);
    // the first cycle is the pooled mix's first cycle (the first candidate everywhere), bit for bit
    let mut pooled = open(&mix_options(&scratch("mix_hemispheres_pooled"), "[0.7, 1.0, 0.0]", ""));
    let p1 = pooled.analyse(&xb, &obs1, Method::Hybrid).unwrap();
    assert!(an1.analysis.iter().zip(&p1.analysis).all(|(x, y)| x.to_bits() == y.to_bits()));
    let cand: Vec<Vec<f64>> = [(1.0, 0.0), (0.0, 1.0)]
        .iter()
        .map(|(al, be)| open(&format!("hybrid_alpha = {al}\nhybrid_beta = {be}\n")).analyse(&xb, &obs1, Method::Hybrid))
        .map(|r| r.unwrap().analysis)
        .collect();
    let obs2 = truth.obs();
    let an2 = a.analyse(&an1.analysis, &obs2, Method::Hybrid).unwrap();
    let info = an2.report.mix.clone().unwrap();
    let mut checked = 0;
    for (k, f) in [&an1.analysis, &cand[0], &cand[1]].into_iter().enumerate() {
        let w = Withheld::evaluate(&a.bundle.layout, &obs2, &an1.analysis, f, &[]).unwrap();
        for v in ["u", "t", "ps"] {
            for band in ["nh", "tropics", "sh"] {
                let Some(c) = w.cell(v, band).filter(|c| c.n > 0) else { continue };
                let got = info.scored[k][&format!("{v}/{band}")];
                let want = c.sum_d / c.n as f64;
                assert!((got - want).abs() <= 1e-9 * want.abs().max(1e-12), "{k} {v}/{band}: {got} vs {want}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 9, "too few cells scored: {checked}");
    // the weights in force: each class's share in its own pair (nh: 0, 1; tropics: 2, 3; sh: 4, 5), S = 1
    let b_in_force = &an2.report.desroziers.as_ref().unwrap().b_in_force;
    for v in ["u", "t", "ps"] {
        let w = b_in_force.hybrid_weights_of(v).unwrap();
        for (class, i) in [(0, 0), (1, 2), (2, 4)] {
            let l = info.choice[v][class];
            assert!((w[i] - l).abs() < 1e-12 && (w[i + 1] - (1.0 - l)).abs() < 1e-12, "{v} class {class}: {w:?}");
        }
    }
    // the state remembers its classes; the pooled options take it over: the window's evidence (per band) is kept and
    // the choice made again with their classes, noted in the report
    let mut other = open(&mix_options(&dir, "[0.7, 1.0, 0.0]", ""));
    let an3 = other.analyse(&an2.analysis, &truth.obs(), Method::Hybrid).unwrap();
    let info3 = an3.report.mix.unwrap();
    assert_eq!(info3.classes, ["extratropics", "tropics"]);
    assert!(info3.notes.iter().any(|n| n.contains("mix_hemispheres") && n.contains("again")), "{:?}", info3.notes);
    assert!(info3.window_filled >= 1 && info3.choice["u"].len() == 2);
    // the CLI flag
    let sample = fixture("linear").join("sample");
    let st = dir.join("cli.json");
    let args = [
        "analyse",
        "--bundle",
        fixture("linear").to_str().unwrap(),
        "--background",
        sample.join("background.nc").to_str().unwrap(),
        "--obs",
        sample.join("obs.csv").to_str().unwrap(),
        "--output",
        dir.join("an.nc").to_str().unwrap(),
        "--method",
        "hybrid",
        "--mix-candidates",
        "0.7,0.2",
        "--mix-score",
        "persistence",
        "--mix-state",
        st.to_str().unwrap(),
        "--mix-hemispheres",
    ]
    .map(String::from);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (rc, stdout, stderr) = cli(&refs);
    assert_eq!(rc, 0, "{stdout}\n{stderr}");
    assert!(format!("{stdout}{stderr}").contains("latent share (nh/tropics/sh)"), "{stdout}\n{stderr}");
    let state: MixState = serde_json::from_str(&std::fs::read_to_string(&st).unwrap()).unwrap();
    assert_eq!(state.classes, ["nh", "tropics", "sh"]);
}
