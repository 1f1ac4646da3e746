//! Online B sizing while cycling (option `adaptive_state`, src/var/adaptive.rs) on the linear fixture, where the
//! analysis is the exact Kalman analysis: the multipliers follow the closed-form update from the window's
//! Desroziers sums, converge to the size of the B that drew the innovations (scalar, and per variable), are bounded,
//! survive closing and reopening the context, and a failed analysis or a wrong state file changes nothing.

mod common;

use std::path::Path;

use common::*;
use latentda::numeric::Rng;
use latentda::obs::operator::ObsOperator;
use latentda::obs::{Observation, QcFlag};
use latentda::var::adaptive::{AdaptiveInfo, AdaptiveState};
use latentda::var::desroziers::Desroziers;
use latentda::var::options::BKind;
use latentda::{Analyser, Method, Options};

const EXACT: &str = "outer_loops = 1\nmax_inner = 400\ngradient_reduction = 1e-10\nbg_check = 1e6\n";

/// A truth: the linear fixture's background plus a draw of the B of `truth` (B kind `kind`), observed at the grid
/// points of `obs0` with their sigma_o.
struct Drawer {
    t: Analyser,
    kind: BKind,
    xb: Vec<f64>,
    obs0: Vec<Observation>,
    h: ObsOperator,
    rng: Rng,
}

impl Drawer {
    fn new(truth: &str, kind: BKind, seed: u64) -> Drawer {
        let mut t = Analyser::open(fixture("linear"), Options::from_toml(&format!("{EXACT}{truth}")).unwrap()).unwrap();
        let xb = linear_background(&t);
        let obs0 = linear_grid_obs(&t, 1.0);
        let mut flags = vec![QcFlag::Used; obs0.len()];
        let h = ObsOperator::build(&t.bundle.layout, &obs0, &mut flags);
        let z = t.encode_background(&xb).unwrap();
        t.prepare_b(kind, Some(&z)).unwrap();
        Drawer { t, kind, xb, obs0, h, rng: Rng::new(seed) }
    }

    fn case(&mut self) -> Vec<Observation> {
        let mut dx = vec![0.0; self.xb.len()];
        let rng = &mut self.rng;
        self.t
            .with_b(self.kind, |op, ae| {
                let v = rng.normals(op.control_size());
                op.sqrt(ae, &v, &mut dx)
            })
            .unwrap();
        let xt: Vec<f64> = self.xb.iter().zip(&dx).map(|(b, d)| b + d).collect();
        let mut hxt = vec![0.0; self.h.nrows()];
        self.h.apply(&xt, &mut hxt);
        let mut obs = self.obs0.clone();
        for (r, &i) in self.h.rows.iter().enumerate() {
            obs[i].value = hxt[r] + self.obs0[i].sigma * self.rng.normal();
        }
        obs
    }
}

fn open(options: &str) -> Analyser {
    Analyser::open(fixture("linear"), Options::from_toml(&format!("{EXACT}{options}")).unwrap()).unwrap()
}

fn state_options(dir: &Path, extra: &str) -> String {
    format!("adaptive_state = \"{}\"\n{extra}", dir.join("adaptive_b.json").display())
}

/// The scalar update in closed form: clip(sum_k E_k / sum_k (H B H^T_k / g_k) / g_start), E_k = sum d_b^2 /
/// sigma^2 - n (innovation rule) or sum (H x_a - H x_b) d_b / sigma^2 (Desroziers rule).
fn scalar_update(window: &[Desroziers], method: &str, g_start: f64, bounds: [f64; 2], desroziers: bool) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for d in window {
        let m = &d.cell("all", "global").unwrap().normalised;
        num += if desroziers { m.sum_dhx_db } else { m.sum_db_db - m.n as f64 };
        den += m.sum_hbh.unwrap() / d.b_in_force.scale(method).unwrap();
    }
    (num / den / g_start).clamp(bounds[0], bounds[1])
}

#[test]
fn scalar_sizing_follows_the_closed_form_and_finds_the_b_that_drew_the_innovations() {
    // L3DVar with the options' latent B 4x too large (factor 2, truth 0.5): the multiplier must go to about 1/4
    let dir = scratch("adaptive_scalar");
    let mut a = open(&state_options(&dir, "latent_variance_factor = 2.0\nadaptive_window = 6"));
    let mut d = Drawer::new("latent_variance_factor = 0.5", BKind::Latent, 41);
    let mut window: Vec<Desroziers> = Vec::new();
    let mut last_next = 1.0;
    let mut trajectory = Vec::new();
    for k in 0..16 {
        let obs = d.case();
        let res = a.analyse(&d.xb.clone(), &obs, Method::L3dvar).unwrap();
        let info: AdaptiveInfo = res.report.adaptive.clone().expect("the report has the adaptive section");
        let des = res.report.desroziers.clone().unwrap();
        // the analysis ran with the multiplier of the state, and the host's options are the host's again
        assert_eq!(info.multiplier, last_next, "cycle {k}");
        assert_eq!(des.b_in_force.latent_variance_factor, Some(2.0 * info.multiplier), "cycle {k}");
        assert_eq!(a.options().latent_variance_factor, Some(2.0));
        window.push(des);
        if window.len() > 6 {
            window.remove(0);
        }
        let want = scalar_update(&window, "l3dvar", 2.0, [0.05, 4.0], false);
        assert!((info.multiplier_next - want).abs() <= 1e-12 * want, "cycle {k}: {} vs {want}", info.multiplier_next);
        assert_eq!((info.window_filled, info.cycles), (window.len(), k + 1));
        // the file holds what the report says
        let s: AdaptiveState =
            serde_json::from_str(&std::fs::read_to_string(dir.join("adaptive_b.json")).unwrap()).unwrap();
        assert_eq!((s.multiplier, s.cycles, s.window.len()), (info.multiplier_next, k + 1, window.len()));
        last_next = info.multiplier_next;
        trajectory.push(last_next);
    }
    eprintln!("multipliers: {trajectory:.3?}");
    // innovation rule: one step lands near the fixed point; the window's 6 x 24 latent directions leave ~12 % noise
    assert!((trajectory[0] - 0.25).abs() < 0.1, "first step {:.3}", trajectory[0]);
    let tail = &trajectory[8..];
    let mean = tail.iter().sum::<f64>() / tail.len() as f64;
    assert!((mean / 0.25 - 1.0).abs() < 0.15, "multiplier {mean:.3} not about 1/4: {trajectory:.3?}");
}

#[test]
fn bounds_hold_and_the_desroziers_rule_is_the_other_estimate() {
    let dir = scratch("adaptive_bounds");
    // truth 100x smaller than the options' B: the lower bound 0.2 binds and the report says so
    let mut a = open(&state_options(&dir, "adaptive_bounds = [0.2, 2.0]\nadaptive_rule = \"desroziers\""));
    let mut d = Drawer::new("latent_variance_factor = 0.01", BKind::Latent, 43);
    let mut infos = Vec::new();
    for _ in 0..4 {
        let obs = d.case();
        infos.push(a.analyse(&d.xb.clone(), &obs, Method::L3dvar).unwrap().report.adaptive.unwrap());
    }
    assert!(infos.iter().all(|i| i.multiplier_next >= 0.2 && i.rule == "desroziers"));
    assert_eq!(infos[3].multiplier_next, 0.2, "{infos:?}");
    assert!(infos[3].notes.iter().any(|n| n.contains("bounded")), "{:?}", infos[3].notes);
    // unbounded, the Desroziers rule's closed form (E[(H x_a - H x_b) d_b]: not the innovation rule's)
    let dir = scratch("adaptive_desroziers");
    let mut a = open(&state_options(
        &dir,
        "adaptive_bounds = [1e-6, 1e6]\nadaptive_rule = \"desroziers\"\nadaptive_window = 3",
    ));
    let mut window = Vec::new();
    for k in 0..5 {
        let obs = d.case();
        let res = a.analyse(&d.xb.clone(), &obs, Method::L3dvar).unwrap();
        window.push(res.report.desroziers.clone().unwrap());
        if window.len() > 3 {
            window.remove(0);
        }
        let (got, d_rule) =
            (res.report.adaptive.unwrap().multiplier_next, scalar_update(&window, "l3dvar", 1.0, [1e-6, 1e6], true));
        let i_rule = scalar_update(&window, "l3dvar", 1.0, [1e-6, 1e6], false);
        assert!((got - d_rule).abs() <= 1e-12 * d_rule, "cycle {k}: {got} vs {d_rule}");
        assert!((got - i_rule).abs() > 1e-6 * i_rule, "cycle {k}: the two rules should differ");
    }
}

#[test]
fn a_cycle_without_observations_counts_but_leaves_the_window_and_a_deferred_commit_waits() {
    let dir = scratch("adaptive_no_obs");
    let path = dir.join("adaptive_b.json");
    let mut a = open(&state_options(&dir, "latent_variance_factor = 2.0"));
    let mut d = Drawer::new("latent_variance_factor = 0.5", BKind::Latent, 61);
    let xb = d.xb.clone();
    let first = a.analyse(&xb, &d.case(), Method::L3dvar).unwrap().report.adaptive.unwrap();
    let none = a.analyse(&xb, &[], Method::L3dvar).unwrap().report.adaptive.unwrap();
    assert_eq!((none.cycles, none.window_filled), (2, 1), "{none:?}");
    assert_eq!(none.multiplier_next, first.multiplier_next);
    assert!(none.notes.iter().any(|n| n.contains("window is unchanged")), "{:?}", none.notes);
    // deferred: the file waits for the commit
    let before = std::fs::read(&path).unwrap();
    a.defer_adaptive_commit(true);
    let third = a.analyse(&xb, &d.case(), Method::L3dvar).unwrap().report.adaptive.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing written before the commit");
    a.commit_adaptive_state().unwrap();
    let s: AdaptiveState = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!((s.cycles, s.multiplier), (3, third.multiplier_next));
}

#[test]
fn a_context_per_cycle_sizes_as_one_context_for_the_run() {
    // a host that opens latentda in every cycle (one job per cycle) gets the same multipliers, bit for bit
    let (d1, d2) = (scratch("adaptive_reopen_a"), scratch("adaptive_reopen_b"));
    let opts = |d: &Path| state_options(d, "latent_variance_factor = 2.0\nadaptive_window = 3");
    let mut kept = open(&opts(&d1));
    let mut drawer = Drawer::new("latent_variance_factor = 0.5", BKind::Latent, 47);
    for k in 0..5 {
        let obs = drawer.case();
        let xb = drawer.xb.clone();
        let a = kept.analyse(&xb, &obs, Method::L3dvar).unwrap();
        let b = open(&opts(&d2)).analyse(&xb, &obs, Method::L3dvar).unwrap();
        assert_eq!(a.analysis, b.analysis, "cycle {k}");
        let (ia, ib) = (a.report.adaptive.unwrap(), b.report.adaptive.unwrap());
        assert_eq!((ia.multiplier, ia.multiplier_next), (ib.multiplier, ib.multiplier_next), "cycle {k}");
    }
}

#[test]
fn per_variable_sizing_finds_the_variable_whose_b_is_wrong_and_keeps_a_static_variable_static() {
    // Innovations from the hybrid B (0.7, 0.3) whose t part is 4x smaller; analysed with ps in the static B only
    // (alpha 0): once the window is full, t's multipliers must be about 1/4 of u's, and ps keeps alpha 0.
    let dir = scratch("adaptive_per_variable");
    let mut a = open(&state_options(
        &dir,
        "hybrid_alpha = 0.7\nhybrid_beta = 0.3\nhybrid_variable_weights = { ps = { alpha = 0.0, beta = 1.0 } }\n\
         adaptive_per_variable = true\nadaptive_window = 8",
    ));
    let truth =
        "hybrid_alpha = 0.7\nhybrid_beta = 0.3\nhybrid_variable_weights = { t = { alpha = 0.175, beta = 0.075 } }";
    let mut d = Drawer::new(truth, BKind::Hybrid, 53);
    let mut last = None;
    for k in 0..20 {
        let obs = d.case();
        let res = a.analyse(&d.xb.clone(), &obs, Method::Hybrid).unwrap();
        let info = res.report.adaptive.clone().unwrap();
        let w = res.report.desroziers.as_ref().unwrap().b_in_force.hybrid_weights.clone().expect("weights vary");
        // ps stays in the static B; every variable runs with its multipliers of the state
        assert_eq!(w["ps"][0], 0.0, "cycle {k}");
        for (v, ws) in &w {
            let [mx, mt] = info.variable_multipliers.get(v).copied().unwrap_or([info.multiplier; 2]);
            let start = if v == "ps" { [0.0, 1.0] } else { [0.7, 0.3] };
            for (i, m) in [mx, mx, mt, mt].iter().enumerate() {
                assert!((ws[i] - start[i % 2] * m).abs() <= 1e-12, "cycle {k}, {v}: {ws:?} vs {m}");
            }
        }
        // until the window is full every variable follows the scalar multiplier
        assert_eq!(info.variable_multipliers_next.is_empty(), k + 1 < 8, "cycle {k}");
        last = Some(info);
    }
    let info = last.unwrap();
    let m = &info.variable_multipliers_next;
    eprintln!("multipliers: {m:.3?}, scalar {:.3}", info.multiplier_next);
    for class in 0..2 {
        let r = m["t"][class] / m["u"][class];
        assert!((r / 0.25 - 1.0).abs() < 0.35, "class {class}: t / u {r:.3} not about 1/4: {m:?}");
        assert!((m["u"][class] - 1.0).abs() < 0.3, "class {class}: u {:.3} not about 1: {m:?}", m["u"][class]);
    }
}

#[test]
fn a_variable_whose_group_is_unobserved_shrinks_with_the_rest_but_never_grows() {
    // Observations of t and ps only (a mass-only network): u's group, wind, has none, so u is sized from all
    // variables, at most its starting B. Innovations from a hybrid B 3x larger than the options': t and ps grow to
    // about 3, u stays at 1; from one 3x smaller, every variable shrinks to about 1/3, u with them.
    for (factor, tag) in [(3.0, "grow"), (1.0 / 3.0, "shrink")] {
        let dir = scratch(&format!("adaptive_unobserved_{tag}"));
        let mut a = open(&state_options(
            &dir,
            "hybrid_alpha = 0.7\nhybrid_beta = 0.3\nadaptive_per_variable = true\nadaptive_window = 8\n\
             adaptive_bounds = [0.05, 10.0]",
        ));
        let truth = format!("hybrid_alpha = {}\nhybrid_beta = {}", 0.7 * factor, 0.3 * factor);
        let mut d = Drawer::new(&truth, BKind::Hybrid, 71);
        let mut last = None;
        for _ in 0..12 {
            let mut obs = d.case();
            obs.retain(|o| o.var_name != "u");
            let res = a.analyse(&d.xb.clone(), &obs, Method::Hybrid).unwrap();
            last = Some(res.report.adaptive.clone().unwrap());
        }
        let info = last.unwrap();
        let m = &info.variable_multipliers_next;
        eprintln!("{tag}: multipliers {m:.3?}, scalar {:.3}", info.multiplier_next);
        for class in 0..2 {
            for v in ["t", "ps"] {
                assert!((m[v][class] / factor - 1.0).abs() < 0.35, "{tag}, class {class}: {v} {m:?}");
            }
            let all = 0.5 * (m["t"][class] + m["ps"][class]);
            if factor > 1.0 {
                assert_eq!(m["u"][class], 1.0, "{tag}, class {class}: u grew: {m:?}");
            } else {
                assert!((m["u"][class] / all - 1.0).abs() < 0.35, "{tag}, class {class}: u does not shrink: {m:?}");
            }
        }
    }
}

#[test]
fn failures_change_neither_the_state_nor_the_options_and_wrong_files_are_named() {
    let dir = scratch("adaptive_failures");
    let path = dir.join("adaptive_b.json");
    let mut a = open(&state_options(&dir, "latent_variance_factor = 2.0"));
    let mut d = Drawer::new("latent_variance_factor = 0.5", BKind::Latent, 59);
    let obs = d.case();
    let xb = d.xb.clone();
    a.analyse(&xb, &obs, Method::L3dvar).unwrap();
    let before = std::fs::read(&path).unwrap();
    // a failing analysis (non-finite background): the state file is untouched, the options are the host's
    let mut bad = xb.clone();
    bad[7] = f64::NAN;
    assert!(a.analyse(&bad, &obs, Method::L3dvar).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before, "a failed analysis must not change the state");
    assert_eq!(a.options().latent_variance_factor, Some(2.0));
    // the state of another method
    let e = a.analyse(&xb, &obs, Method::Var3d).unwrap_err().to_string();
    assert!(e.contains("adaptive_b.json") && e.contains("'l3dvar'") && e.contains("'3dvar'"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // per-variable sizing is for the hybrid
    let mut pv = open(&state_options(&dir, "adaptive_per_variable = true"));
    let e = pv.analyse(&xb, &obs, Method::L3dvar).unwrap_err().to_string();
    assert!(e.contains("adaptive_per_variable"), "{e}");
    // the ensemble part of a hybrid EnVar is not sized: refused with members set
    let mut en = open(&state_options(&dir, ""));
    let members = (0..2).map(|k| xb.iter().map(|x| x * (1.0 + 1e-3 * (k as f64 + 1.0))).collect()).collect();
    en.set_ensemble(members).unwrap();
    let e = en.analyse(&xb, &obs, Method::Hybrid).unwrap_err().to_string();
    assert!(e.contains("ensemble part") && e.contains("adaptive_b.json"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // a damaged file is named, not overwritten
    std::fs::write(&path, "{ not json").unwrap();
    let e = a.analyse(&xb, &obs, Method::L3dvar).unwrap_err().to_string();
    assert!(e.contains("adaptive_b.json") && e.contains("not a latentda adaptive state file"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");
    // options that cannot size anything are refused at open
    for (bad, what) in [
        ("adaptive_state = \"x.json\"\nbg_check = 0.0", "bg_check"),
        ("adaptive_window = 0", "adaptive_window"),
        ("adaptive_bounds = [1.5, 4.0]", "adaptive_bounds"),
        ("adaptive_rule = \"chi2\"", "adaptive_rule"),
    ] {
        let e = Options::from_toml(bad).unwrap_err().to_string();
        assert!(e.contains(what), "{bad}: {e}");
    }
}

#[test]
fn the_tune_verb_with_the_innovation_rule_is_the_offline_twin_of_the_online_sizing() {
    // three cycles of `latentda analyse --adaptive-state` (the CLI writes the state after its outputs), then
    // `latentda tune --rule innovation` over their reports: the same B size as the state's next multiplier
    let dir = scratch("adaptive_tune_twin");
    let (b, s) = (fixture("linear"), fixture("linear").join("sample"));
    let state = dir.join("state.json");
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let mut reports = Vec::new();
    for k in 0..3 {
        let (rep, an) = (dir.join(format!("r{k}.json")), dir.join(format!("a{k}.nc")));
        let args = [
            "analyse".to_string(),
            "--method".into(),
            "l3dvar".into(),
            "--bundle".into(),
            path(&b),
            "--background".into(),
            path(&s.join("background.nc")),
            "--obs".into(),
            path(&s.join("obs.csv")),
            "--output".into(),
            path(&an),
            "--report".into(),
            path(&rep),
            "--adaptive-state".into(),
            path(&state),
            "--adaptive-bounds".into(),
            "0.0001,4".into(),
        ];
        let (code, out, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(out.contains("adaptive B ("), "the summary has the adaptive line:\n{out}");
        reports.push(path(&rep));
    }
    let s: AdaptiveState = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(s.cycles, 3);
    let opts = dir.join("tuned.toml");
    let mut args = vec!["tune", "--rule", "innovation", "--output", opts.to_str().unwrap()];
    args.extend(reports.iter().map(String::as_str));
    let (code, out, err) = cli(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    let o = Options::from_toml(&std::fs::read_to_string(&opts).unwrap()).unwrap();
    let g = o.latent_variance_factor.expect("tune writes the latent factor");
    // the options file writes 6 decimals
    assert!((g - s.multiplier).abs() <= 5e-7, "tune {g} vs online {}", s.multiplier);
    // the Desroziers rule gives another size
    args[2] = "desroziers";
    let (code, _, _) = cli(&args);
    assert_eq!(code, 0);
    let gd = Options::from_toml(&std::fs::read_to_string(&opts).unwrap()).unwrap().latent_variance_factor.unwrap();
    assert!((gd / g - 1.0).abs() > 1e-3, "the two rules agree: {gd} vs {g}");
    // a bad rule is a usage error naming it
    let (code, _, err) = cli(&["tune", "--rule", "chi2", reports[0].as_str()]);
    assert_eq!(code, 2);
    assert!(err.contains("chi2"), "{err}");
}
