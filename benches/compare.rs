//! Gauss-Newton/CG against the published reference algorithm (Adam with the adjoint for gradients) on the same
//! cases: J against the number of decoder passes, and the RMSE against the truth each analysis reaches.
//!
//! `cargo bench --bench compare [-- CASE_DIR ...]` runs the bundle's `sample/` case (and, for each CASE_DIR holding
//! background.nc, truth.nc and one or more obs*.csv files, one case per observation file) on
//! LATENTDA_BENCH_BUNDLE (default `models/speedy-t31`). Decoder passes count the decoder, TL and AD runs of an
//! analysis, D(z_b) included; the one encoder run that both methods share, and the TL runs of the background check's
//! latent variance (cached per background), are not counted. Gauss-Newton's J is the
//! exact nonlinear J of separate analyses with a growing TL/AD-pair budget (not the quadratic model of one run).
//! Prints figures and asserts nothing about them.

#[path = "common/mod.rs"]
mod common;

use common::*;
use latentda::{Analyser, Method, Options};

struct Run {
    j: f64,
    passes: usize,
    pairs: usize,
    reduction: f64,
    rmse_ratio: Option<f64>,
    rmse: Option<Vec<f64>>,
    seconds: f64,
}

fn run(
    a: &mut Analyser,
    toml: &str,
    xb: &[f64],
    truth: Option<&[f64]>,
    obs: &[latentda::Observation],
) -> (Run, latentda::var::solver::SolveInfo) {
    let mut o = Options::from_toml(toml).unwrap();
    let cur = a.options();
    (o.backend, o.device, o.threads, o.ort_library) =
        (cur.backend.clone(), cur.device.clone(), cur.threads, cur.ort_library.clone());
    a.set_options(o).unwrap();
    let r = a.analyse(xb, obs, Method::L3dvar).unwrap();
    let s = r.report.solver.clone().unwrap();
    let t = &r.report.timings;
    let lay = &a.bundle.layout;
    let (rmse, ratio) = match truth {
        Some(xt) => {
            let rb = lay.rms_diff_by_var(xb, xt);
            let ra = lay.rms_diff_by_var(&r.analysis, xt);
            let ratio = ra.iter().zip(&rb).map(|(a, b)| a / b).sum::<f64>() / ra.len() as f64;
            (Some(ra), Some(ratio))
        }
        None => (None, None),
    };
    (
        Run {
            j: s.j_final,
            // (the background check's randomised latent variance is reported apart, in n_variance)
            passes: t.n_decode + t.n_tl + t.n_ad,
            pairs: s.inner_total,
            reduction: 1.0 / s.grad_reduction,
            rmse_ratio: ratio,
            rmse,
            seconds: t.total_s,
        },
        s,
    )
}

fn main() {
    let bundle = default_bundle();
    let mut cases = cases_in(&bundle.join("sample"));
    for d in bench_args() {
        cases.extend(cases_in(std::path::Path::new(&d)));
    }
    let mut a = Analyser::open(&bundle, Options::default()).unwrap();
    println!("bundle {} ({}): {}", a.bundle.name, bundle.display(), a.bundle.description);
    println!("backend {} ({}); Adam: lr 0.1 halved after 5 steps without improvement; decoder passes = decoder + TL + AD runs", a.ae.info.backend, a.ae.info.detail);
    let lay = a.bundle.layout.clone();
    let mut summary = Vec::new();
    for c in &cases {
        let xb = latentda::ncio::read_state(&c.background, &lay).unwrap();
        let xt = c.truth.as_ref().map(|t| latentda::ncio::read_state(t, &lay).unwrap());
        let (obs, _) = latentda::obs::read_csv(&c.obs, &lay).unwrap();
        println!("\n== case {} ({} observations)", c.name, obs.len());
        let (adam, adam_info) = run(&mut a, "solver = \"adam\"\nadam_steps = 100", &xb, xt.as_deref(), &obs);
        let (adam50, _) = run(&mut a, "solver = \"adam\"\nadam_steps = 50", &xb, xt.as_deref(), &obs);
        println!("Adam (100 steps): J against decoder passes");
        println!("  {:>6} {:>7} {:>14} {:>10}", "step", "passes", "J", "|g|");
        for r in adam_info.iterations.iter().filter(|r| r.inner % 10 == 0 || r.inner == 5 || r.inner == 15) {
            println!("  {:>6} {:>7} {:>14.6e} {:>10.3e}", r.inner, r.passes + 1, r.j, r.grad);
        }
        println!("Gauss-Newton (separate analyses, TL/AD-pair budget as shown; the last line: the default options)");
        println!("  {:>6} {:>7} {:>14} {:>10} {:>12} {:>8}", "pairs", "passes", "J", "reduction", "RMSE/bg", "seconds");
        let mut gn = Vec::new();
        for budget in [1usize, 2, 4, 6, 8, 10, 12, 15, 20, 25, 30, 35, 40, 50] {
            let (r, _) =
                run(&mut a, &format!("max_pairs = {budget}\ngradient_reduction = 1e-12"), &xb, xt.as_deref(), &obs);
            gn.push(r);
        }
        let (def, _) = run(&mut a, "", &xb, xt.as_deref(), &obs);
        for r in gn.iter().chain(std::iter::once(&def)) {
            println!(
                "  {:>6} {:>7} {:>14.6e} {:>10.3e} {:>12} {:>8.2}",
                r.pairs,
                r.passes,
                r.j,
                r.reduction,
                r.rmse_ratio.map_or("-".into(), |v| format!("{v:.4}")),
                r.seconds
            );
        }
        // the first budget that reaches Adam's J after 100 steps
        let first = gn.iter().chain(std::iter::once(&def)).find(|r| r.j <= adam.j);
        match first {
            Some(r) => println!(
                "target: Gauss-Newton reaches J <= J(Adam, 100 steps) = {:.6e} with {} passes = {:.2} x Adam's {} (target <= 1/3) {}",
                adam.j,
                r.passes,
                r.passes as f64 / adam.passes as f64,
                adam.passes,
                if 3 * r.passes <= adam.passes { "MET" } else { "NOT MET" }
            ),
            None => println!("target: Gauss-Newton never reaches J(Adam, 100 steps) = {:.6e} NOT MET", adam.j),
        }
        if let Some(xt) = &xt {
            let rb = lay.rms_diff_by_var(&xb, xt);
            println!("RMSE against the truth");
            println!("  {:<6} {:>11} {:>11} {:>11} {:>11}", "var", "background", "GN default", "Adam 50", "Adam 100");
            for (i, v) in lay.variables.iter().enumerate() {
                let g = |r: &Run| r.rmse.as_ref().map_or(f64::NAN, |x| x[i]);
                println!(
                    "  {:<6} {:>11.4e} {:>11.4e} {:>11.4e} {:>11.4e}",
                    v.name,
                    rb[i],
                    g(&def),
                    g(&adam50),
                    g(&adam)
                );
            }
            let f = |r: &Run| r.rmse_ratio.map_or(f64::NAN, |v| v);
            println!(
                "  mean RMSE / background RMSE: GN default {:.4}, Adam 50 {:.4}, Adam 100 {:.4}",
                f(&def),
                f(&adam50),
                f(&adam)
            );
        }
        summary.push((
            c.name.clone(),
            adam.j,
            adam.passes,
            adam50.j,
            adam50.passes,
            first.map(|r| r.passes),
            def.j,
            def.passes,
            def.pairs,
            def.reduction,
        ));
    }
    println!("\n== summary: J and decoder passes");
    println!(
        "  {:<28} {:>13} {:>7} {:>13} {:>7} {:>13} {:>7} {:>6} {:>10} {:>22}",
        "case",
        "J Adam 50",
        "passes",
        "J Adam 100",
        "passes",
        "J GN default",
        "passes",
        "pairs",
        "reduction",
        "GN passes to J(Adam100)"
    );
    for (n, ja, pa, ja50, pa50, first, jd, pd, pairs, red) in summary {
        println!(
            "  {n:<28} {ja50:>13.6e} {pa50:>7} {ja:>13.6e} {pa:>7} {jd:>13.6e} {pd:>7} {pairs:>6} {red:>10.3e} {:>22}",
            first.map_or("never".into(), |p| format!("{p} ({:.2}x)", p as f64 / pa as f64))
        );
    }
}
