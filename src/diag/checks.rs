//! Self-tests a user can run on any bundle (`latentda check`): adjoint dot-product tests, the Taylor test of the
//! decoder's TL, AE reconstruction error, and adjoint tests of the B square roots.

use crate::bmat::BOperator;
use crate::bundle::Bundle;
use crate::error::Result;
use crate::model::autoencoder::Autoencoder;
use crate::model::autoencoder::{denormalise, encode_state};
pub use crate::numeric::{DotTest, Rng};

/// One row of the Taylor test of a TL against its nonlinear map f at z along dz.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaylorRow {
    /// Step size.
    pub eps: f64,
    /// |f(z + eps dz) - f(z)| / |eps TL dz| (-> 1).
    pub ratio: f64,
    /// One-sided remainder |f(z + eps dz) - f(z) - eps TL dz| / |eps TL dz|: falls 10x per decade (first order).
    pub remainder: f64,
    /// Central remainder |(f(z + eps dz) - f(z - eps dz)) / 2 - eps TL dz| / |eps TL dz|: falls 100x per decade
    /// (second order) until float32 round-off, which grows as 1/eps, takes over. This is what the gate judges.
    pub central: f64,
}

/// Taylor rows for a map evaluated by `f(e)` = f(z + e dz) (called with e = 0, +eps and -eps), against `tl` =
/// TL dz. One-sided and central remainders, relative to |eps TL dz|.
pub fn taylor_rows(eps_list: &[f64], tl: &[f64], mut f: impl FnMut(f64) -> Result<Vec<f64>>) -> Result<Vec<TaylorRow>> {
    let f0 = f(0.0)?;
    let mut rows = Vec::with_capacity(eps_list.len());
    for &eps in eps_list {
        let (fp, fm) = (f(eps)?, f(-eps)?);
        let (mut num, mut den, mut rem, mut cen) = (0.0, 0.0, 0.0, 0.0);
        for i in 0..tl.len() {
            let (fd, cd, lin) = (fp[i] - f0[i], 0.5 * (fp[i] - fm[i]), eps * tl[i]);
            num += fd * fd;
            den += lin * lin;
            rem += (fd - lin) * (fd - lin);
            cen += (cd - lin) * (cd - lin);
        }
        let den = den.max(f64::MIN_POSITIVE);
        rows.push(TaylorRow {
            eps,
            ratio: (num / den).sqrt(),
            remainder: (rem / den).sqrt(),
            central: (cen / den).sqrt(),
        });
    }
    Ok(rows)
}

/// The Taylor gate of `latentda check`, fitted to float32 graphs.
///
/// The one-sided remainder of a first-order Taylor test falls only 10x per decade and meets the float32 round-off
/// floor (which grows as 1/eps) after about two clean decades, so "three decades of 10x" fails correct but nearly
/// linear float32 graphs. The central remainder |(f(z + eps dz) - f(z - eps dz)) / 2 - eps TL dz| / |eps TL dz| of a
/// correct TL is a eps^2 + b / eps: second-order truncation plus round-off, a V in log-log with its minimum at
/// 1.89 a^(1/3) b^(2/3). A TL wrong by a relative amount delta adds a floor delta at every step. The gate, over the
/// steps eps <= `TAYLOR_WINDOW_MAX` (in units of the direction, a draw of the latent background error):
/// - pass when the smallest central remainder is below `TAYLOR_TOL` (1e-4), whatever the V looks like;
/// - else pass when both arms of the V are seen (two consecutive steps with log-log slope 1.5 to 2.5, and two with
///   slope -1.3 to -0.7), a and b are fitted there, and the smallest remainder is at most `TAYLOR_FLOOR_FACTOR` (3)
///   times the V's minimum: no floor beyond truncation and round-off;
/// - else fail.
///
/// So a TL error is caught once it exceeds the larger of 1e-4 and three times the graph's own float32 noise floor.
pub const TAYLOR_WINDOW_MAX: f64 = 1.0;
/// Absolute tolerance of the Taylor gate (see [`TAYLOR_WINDOW_MAX`]).
pub const TAYLOR_TOL: f64 = 1e-4;
/// How far above the minimum of the fitted truncation + round-off V the smallest remainder may lie.
pub const TAYLOR_FLOOR_FACTOR: f64 = 3.0;

/// What the Taylor gate found.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct TaylorVerdict {
    /// Smallest central remainder over the steps eps <= [`TAYLOR_WINDOW_MAX`].
    pub best_central: f64,
    /// Step at which it was reached.
    pub at_eps: f64,
    /// Minimum of the fitted V a eps^2 + b / eps (NaN when an arm of the V is not seen).
    pub v_minimum: f64,
    /// `best_central < TAYLOR_TOL`, or `best_central <= TAYLOR_FLOOR_FACTOR * v_minimum`.
    pub pass: bool,
}

/// Applies the Taylor gate (see [`TAYLOR_WINDOW_MAX`]) to rows from [`taylor_rows`] (steps in decreasing order).
pub fn taylor_verdict(rows: &[TaylorRow]) -> TaylorVerdict {
    let inside = rows.iter().filter(|r| r.eps <= TAYLOR_WINDOW_MAX * (1.0 + 1e-9) && r.central.is_finite());
    let (best_central, at_eps) =
        inside.fold((f64::INFINITY, f64::NAN), |b, r| if r.central < b.0 { (r.central, r.eps) } else { b });
    let (mut a, mut b) = (f64::NAN, f64::NAN);
    for w in rows.windows(2) {
        let (big, small) = (&w[0], &w[1]);
        if !(big.central > 0.0 && small.central > 0.0 && big.eps > small.eps) {
            continue;
        }
        let slope = (big.central / small.central).ln() / (big.eps / small.eps).ln();
        // the truncation arm at its smallest step, the round-off arm at its largest: the estimates nearest the V
        if (1.5..=2.5).contains(&slope) {
            a = small.central / small.eps.powi(2);
        }
        if (-1.3..=-0.7).contains(&slope) && b.is_nan() {
            b = big.central * big.eps;
        }
    }
    let v_minimum = 1.89 * a.cbrt() * b.powf(2.0 / 3.0);
    let pass = best_central < TAYLOR_TOL || (v_minimum.is_finite() && best_central <= TAYLOR_FLOOR_FACTOR * v_minimum);
    TaylorVerdict { best_central, at_eps, v_minimum, pass }
}

/// The latent point of the checks: E(N(x)) of a given state, or E(0) (the climatological mean state).
pub fn check_latent_point(bundle: &Bundle, ae: &mut Autoencoder, state: Option<&[f64]>) -> Result<Vec<f32>> {
    let b = bundle;
    let mean_state;
    let x = match state {
        Some(x) => x,
        None => {
            mean_state = b.mean_state();
            &mean_state
        }
    };
    encode_state(ae, x, &b.mean, &b.std, b.layout.grid.npoints())
}

/// Dot-product test of the decoder TL/AD at z (`trials` draws, worst returned). The state-space vector is
/// u = r + (|r| / |J dz|) J dz with r random, so <J dz, u> cannot vanish by chance and the relative difference
/// measures the adjoint's accuracy rather than a cancellation.
pub fn decoder_dot_test(ae: &mut Autoencoder, z: &[f32], trials: usize, seed: u64) -> Result<DotTest> {
    let (nz, nx) = (ae.latent_len, ae.state_len);
    let mut rng = Rng::new(seed);
    let mut worst = DotTest::new(0.0, 0.0);
    for _ in 0..trials {
        let dz: Vec<f32> = rng.normals(nz).iter().map(|v| *v as f32).collect();
        let r = rng.normals(nx);
        let mut jv = vec![0f32; nx];
        let mut jtu = vec![0f32; nz];
        ae.tl(z, &dz, &mut jv)?;
        let nr = r.iter().map(|v| v * v).sum::<f64>().sqrt();
        let nj = jv.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt().max(1e-300);
        let u: Vec<f32> = r.iter().zip(&jv).map(|(r, j)| (r + nr / nj * *j as f64) as f32).collect();
        ae.ad(z, &u, &mut jtu)?;
        let lhs: f64 = jv.iter().zip(&u).map(|(x, y)| *x as f64 * *y as f64).sum();
        let rhs: f64 = dz.iter().zip(&jtu).map(|(x, y)| *x as f64 * *y as f64).sum();
        let t = DotTest::new(lhs, rhs);
        if t.rel >= worst.rel {
            worst = t;
        }
    }
    Ok(worst)
}

/// Taylor test of the decoder TL at z along a random direction scaled like the latent background error.
pub fn decoder_taylor_test(
    bundle: &Bundle,
    ae: &mut Autoencoder,
    z: &[f32],
    eps_list: &[f64],
    seed: u64,
) -> Result<Vec<TaylorRow>> {
    let (nz, nx) = (ae.latent_len, ae.state_len);
    let mut rng = Rng::new(seed);
    let dz: Vec<f64> = rng.normals(nz).iter().zip(&bundle.latent_variance).map(|(r, v)| r * v.sqrt()).collect();
    let dz32: Vec<f32> = dz.iter().map(|v| *v as f32).collect();
    let mut tl = vec![0f32; nx];
    ae.tl(z, &dz32, &mut tl)?;
    let tl: Vec<f64> = tl.iter().map(|v| *v as f64).collect();
    let mut d = vec![0f32; nx];
    taylor_rows(eps_list, &tl, |e| {
        let zp: Vec<f32> = z.iter().zip(&dz).map(|(z, d)| (*z as f64 + e * d) as f32).collect();
        ae.decode(&zp, &mut d)?;
        Ok(d.iter().map(|v| *v as f64).collect())
    })
}

/// Longest run of consecutive decades over which the relative Taylor remainder falls by a factor 3 to 30 per
/// decade (first-order convergence; an exactly linear decoder has no such run and reports 0).
pub fn first_order_decades(rows: &[TaylorRow]) -> usize {
    let (mut best, mut run) = (0, 0);
    for w in rows.windows(2) {
        let f = w[0].remainder / w[1].remainder;
        let decade = (w[0].eps / w[1].eps - 10.0).abs() < 1e-6;
        if decade && (3.0..=30.0).contains(&f) {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

/// Per-variable RMSE of N^-1(D(E(N(x)))) - x, physical units.
pub fn reconstruction_rmse(bundle: &Bundle, ae: &mut Autoencoder, x: &[f64]) -> Result<Vec<(String, f64)>> {
    let b = bundle;
    let z = check_latent_point(b, ae, Some(x))?;
    let np = b.layout.grid.npoints();
    let mut xn = vec![0f32; b.layout.state_len()];
    ae.decode(&z, &mut xn)?;
    let mut xr = vec![0.0; xn.len()];
    denormalise(&xn, &b.mean, &b.std, np, &mut xr);
    let rms = b.layout.rms_diff_by_var(&xr, x);
    Ok(b.layout.variables.iter().zip(rms).map(|(v, r)| (v.name.clone(), r)).collect())
}

/// Adjoint test of the latent B square root U (control -> physical increment) at z_b = E(N(x_b)).
pub fn latent_bsqrt_dot_test(bundle: &Bundle, ae: &mut Autoencoder, x_b: &[f64], seed: u64) -> Result<DotTest> {
    crate::bmat::latent::LatentB::at_background(bundle, ae, x_b)?.sqrt_test(ae, seed)
}

/// Adjoint test of the baseline (static) B square root, with its hydrostatic balance; `None` without baseline.
pub fn baseline_bsqrt_dot_test(bundle: &Bundle, ae: &mut Autoencoder, seed: u64) -> Result<Option<DotTest>> {
    if bundle.baseline.is_none() {
        return Ok(None);
    }
    Ok(Some(crate::bmat::static_b::StaticB::for_bundle(bundle, bundle.baseline_variance_factor)?.sqrt_test(ae, seed)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f(z) = tanh(z) + 0.3 z^2 evaluated in float32 (as an ONNX graph would be), its exact TL scaled by `scale`.
    fn rows_for(scale: f64, amplitude: f64) -> Vec<TaylorRow> {
        let n = 2000;
        let mut rng = Rng::new(7);
        let z: Vec<f64> = rng.normals(n);
        let dz: Vec<f64> = rng.normals(n).iter().map(|v| amplitude * v).collect();
        let f = |x: f64| -> f64 {
            let x = x as f32;
            (x.tanh() + 0.3f32 * x * x) as f64
        };
        let tl: Vec<f64> = z.iter().zip(&dz).map(|(z, d)| scale * (1.0 - z.tanh().powi(2) + 0.6 * z) * d).collect();
        let eps: Vec<f64> = (-2..8).map(|k| 10f64.powi(-k)).collect();
        taylor_rows(&eps, &tl, |e| Ok(z.iter().zip(&dz).map(|(z, d)| f(z + e * d)).collect())).unwrap()
    }

    #[test]
    fn a_correct_float32_tl_passes_the_central_gate() {
        for amplitude in [0.03, 0.3, 3.0] {
            let rows = rows_for(1.0, amplitude);
            let v = taylor_verdict(&rows);
            assert!(v.pass, "amplitude {amplitude}: {v:?} {rows:?}");
        }
    }

    #[test]
    fn a_tl_wrong_by_a_thousandth_fails_the_gate() {
        for scale in [1.001, 0.999, 1.0005] {
            for amplitude in [0.03, 0.3, 3.0] {
                let v = taylor_verdict(&rows_for(scale, amplitude));
                assert!(!v.pass && v.best_central > 3e-4, "scale {scale} amplitude {amplitude}: {v:?}");
            }
        }
    }
}
