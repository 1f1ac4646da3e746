//! Static (baseline) B benchmark (`cargo bench --bench static_b`): construction and application time of U_s and
//! U_s^T on the reference bundle's grid and statistics (`models/speedy-t31`, or LATENTDA_BENCH_BUNDLE), medians of
//! LATENTDA_BENCH_REPS (default 9) runs. Prints figures, asserts nothing about speed.

use std::path::Path;
use std::time::Instant;

use latentda::bmat::static_b::StaticB;
use latentda::bundle::Bundle;
use latentda::diag::checks::Rng;

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
    let (mut tb, mut ta, mut tt) = (vec![], vec![], vec![]);
    let mut rng = Rng::new(3);
    for _ in 0..reps {
        let t = Instant::now();
        let mut b = StaticB::new(lay, stats).unwrap();
        tb.push(t.elapsed().as_secs_f64());
        let v = rng.normals(b.size());
        let mut x = vec![0.0; lay.state_len()];
        let t = Instant::now();
        b.sqrt_apply(&v, &mut x);
        ta.push(t.elapsed().as_secs_f64());
        let mut w = vec![0.0; b.size()];
        let t = Instant::now();
        b.sqrt_adjoint(&x, &mut w);
        tt.push(t.elapsed().as_secs_f64());
    }
    println!(
        "static_b on {} ({} x {} x {} channels): median of {reps}: build {:.4} s, U_s {:.5} s, U_s^T {:.5} s",
        bundle.name,
        lay.grid.nlat(),
        lay.grid.nlon(),
        lay.nchan,
        median(tb),
        median(ta),
        median(tt)
    );
}
