//! Static (baseline) B benchmark (`cargo bench --bench static_b`): construction and application time of U_s and
//! U_s^T on the reference bundle's grid and statistics (`models/speedy-t31`, or LATENTDA_BENCH_BUNDLE), univariate and
//! with the hydrostatic z of 3D-Var and the hybrid, medians of LATENTDA_BENCH_REPS (default 9) runs (each U_s and U_s^T
//! figure the mean of 10 applications). Prints figures, asserts nothing about speed.

use std::path::Path;
use std::time::Instant;

use latentda::bmat::static_b::StaticB;
use latentda::bundle::Bundle;
use latentda::diag::checks::Rng;

/// CPU seconds of this thread (less sensitive than wall time to other processes on a shared machine).
fn cpu_now() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + 1e-9 * t.tv_nsec as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var("LATENTDA_BENCH_BUNDLE").map(Into::into).unwrap_or_else(|_| root.join("models/speedy-t31"));
    let reps: usize = std::env::var("LATENTDA_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(9);
    let bundle = match Bundle::open(&dir) {
        Ok(b) => b,
        Err(e) => {
            println!("static_b: cannot open {}: {e}", dir.display());
            return;
        }
    };
    let Some(stats) = bundle.baseline.as_ref() else {
        println!("static_b: bundle {} has no baseline statistics", bundle.name);
        return;
    };
    let lay = &bundle.layout;
    // Univariate (StaticB::new) and as 3D-Var and the hybrid use it (StaticB::for_bundle: hydrostatic z).
    for (label, hydro) in [("univariate", false), ("hydrostatic", true)] {
        let (mut tb, mut ta, mut tt, mut ca, mut ct) = (vec![], vec![], vec![], vec![], vec![]);
        let mut rng = Rng::new(3);
        let mut check = 0.0;
        for _ in 0..reps {
            let t = Instant::now();
            let mut b =
                if hydro { StaticB::for_bundle(&bundle, 1.0).unwrap() } else { StaticB::new(lay, stats).unwrap() };
            tb.push(t.elapsed().as_secs_f64());
            let v = rng.normals(b.size());
            let mut x = vec![0.0; lay.state_len()];
            let mut w = vec![0.0; b.size()];
            // A pair is cheap: time PAIRS of them per repetition (an inner loop does one pair per iteration).
            const PAIRS: usize = 10;
            let (t, c) = (Instant::now(), cpu_now());
            for _ in 0..PAIRS {
                b.sqrt_apply(&v, &mut x);
            }
            ta.push(t.elapsed().as_secs_f64() / PAIRS as f64);
            ca.push((cpu_now() - c) / PAIRS as f64);
            let (t, c) = (Instant::now(), cpu_now());
            for _ in 0..PAIRS {
                b.sqrt_adjoint(&x, &mut w);
            }
            tt.push(t.elapsed().as_secs_f64() / PAIRS as f64);
            ct.push((cpu_now() - c) / PAIRS as f64);
            check = w.iter().map(|e| e * e).sum::<f64>();
        }
        println!(
            "static_b {label} on {} ({} x {} x {} channels): median of {reps}: build {:.4} s, U_s {:.6} s, U_s^T {:.6} s \
             (thread CPU: U_s {:.6} s, U_s^T {:.6} s; |U^T U v|^2 = {check:.6e})",
            bundle.name,
            lay.grid.nlat(),
            lay.grid.nlon(),
            lay.nchan,
            median(tb),
            median(ta),
            median(tt),
            median(ca),
            median(ct)
        );
    }
}
