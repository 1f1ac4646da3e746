//! Self-tests a user can run on any bundle (`latentda check`): adjoint dot-product tests, the Taylor test of the
//! decoder's TL, AE reconstruction error, and adjoint tests of the B square roots.

use crate::bundle::Bundle;
use crate::model::autoencoder::Autoencoder;
use crate::error::Result;
use crate::model::autoencoder::{denormalise, encode_state};
use crate::bmat::BOperator;
pub use crate::numeric::{DotTest, Rng};

/// One row of the Taylor test.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaylorRow {
    /// Step size.
    pub eps: f64,
    /// |D(z + eps dz) - D(z)| / |eps TL dz| (-> 1).
    pub ratio: f64,
    /// |D(z + eps dz) - D(z) - eps TL dz| / |eps TL dz| (-> 0 at first order).
    pub remainder: f64,
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
pub fn decoder_taylor_test(bundle: &Bundle, ae: &mut Autoencoder, z: &[f32], eps_list: &[f64], seed: u64) -> Result<Vec<TaylorRow>> {
    let (nz, nx) = (ae.latent_len, ae.state_len);
    let mut rng = Rng::new(seed);
    let dz: Vec<f64> =
        rng.normals(nz).iter().zip(&bundle.latent_variance).map(|(r, v)| r * v.sqrt()).collect();
    let dz32: Vec<f32> = dz.iter().map(|v| *v as f32).collect();
    let mut d0 = vec![0f32; nx];
    ae.decode(z, &mut d0)?;
    let mut tl = vec![0f32; nx];
    ae.tl(z, &dz32, &mut tl)?;
    let mut rows = Vec::new();
    let mut d1 = vec![0f32; nx];
    for &eps in eps_list {
        let zp: Vec<f32> = z.iter().zip(&dz).map(|(z, d)| (*z as f64 + eps * d) as f32).collect();
        ae.decode(&zp, &mut d1)?;
        let (mut num, mut den, mut rem) = (0.0, 0.0, 0.0);
        for i in 0..nx {
            let fd = d1[i] as f64 - d0[i] as f64;
            let lin = eps * tl[i] as f64;
            num += fd * fd;
            den += lin * lin;
            rem += (fd - lin) * (fd - lin);
        }
        rows.push(TaylorRow { eps, ratio: (num / den).sqrt(), remainder: (rem / den).sqrt() });
    }
    Ok(rows)
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
