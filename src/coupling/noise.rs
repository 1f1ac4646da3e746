//! The float32 noise floor of a B operator's square root U and its adjoint U^T, for hosts that minimise with
//! their own solver (docs/b-operator.md, "Float32 noise and solver tolerances").
//!
//! The latent U runs the decoder's float32 tangent-linear graph, so U is linear, and U^T its adjoint, only to float32
//! rounding. Three numbers measure how far, each the worst over a few random trials:
//!
//! ```text
//! U nonlinearity    |U(a v1 + b v2) - a U v1 - b U v2| / (|a| |U v1| + |b| |U v2|)
//! U^T nonlinearity  |U^T(a y1 + b y2) - a U^T y1 - b U^T y2| / (|a| |U^T y1| + |b| |U^T y2|)
//! adjoint mismatch  |<U v1, y> - <v1, U^T y>| / max(|<U v1, y>|, |<v1, U^T y>|),   y = y1 + c s^2 U v1
//! ```
//!
//! with v ~ N(0, I) control vectors, y state-space (dual) vectors y_i = xi_i / sd_c (xi ~ N(0, I), sd_c the
//! normalisation sd of each element's channel, so that every variable weighs alike, as in an observation-term
//! gradient H^T R^-1 d), and a, b random in +-[0.5, 2]. Norms are Euclidean. The adjoint test's y has a component
//! along U v1 (s: the dual scale, c such that both parts have the same norm), so that the two products cannot be
//! small by cancellation, as in [`crate::bmat::BOperator::sqrt_test`]. The static B is float64: its floor is about
//! 1e-16.

use crate::bmat::BOperator;
use crate::error::Result;
use crate::model::autoencoder::Autoencoder;
use crate::numeric::{dot, Rng};

/// The measured noise floor of U and U^T (relative values; see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct NoiseFloor {
    /// Worst relative nonlinearity of U over the trials.
    pub u_nonlinearity: f64,
    /// Worst relative nonlinearity of U^T over the trials.
    pub ut_nonlinearity: f64,
    /// Worst relative adjoint mismatch |<U v, y> - <v, U^T y>| / max(|<U v, y>|, |<v, U^T y>|) over the trials.
    pub adjoint_mismatch: f64,
    /// Number of random trials.
    pub trials: usize,
}

impl NoiseFloor {
    /// The largest of the three values: the relative accuracy to which a gradient computed with U and U^T is known.
    pub fn worst(&self) -> f64 {
        self.u_nonlinearity.max(self.ut_nonlinearity).max(self.adjoint_mismatch)
    }
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// A random factor in +-[0.5, 2].
fn factor(rng: &mut Rng) -> f64 {
    let m = 0.5 + 1.5 * rng.uniform();
    if rng.uniform() < 0.5 {
        -m
    } else {
        m
    }
}

/// |f(a p + b q) - a f(p) - b f(q)| / (|a| |f(p)| + |b| |f(q)|), with `f` writing its result into the slice given.
fn nonlinearity(
    p: &[f64],
    q: &[f64],
    a: f64,
    b: f64,
    out_len: usize,
    mut f: impl FnMut(&[f64], &mut [f64]) -> Result<()>,
) -> Result<f64> {
    let (mut fp, mut fq, mut fpq) = (vec![0.0; out_len], vec![0.0; out_len], vec![0.0; out_len]);
    f(p, &mut fp)?;
    f(q, &mut fq)?;
    let pq: Vec<f64> = p.iter().zip(q).map(|(x, y)| a * x + b * y).collect();
    f(&pq, &mut fpq)?;
    let diff: Vec<f64> = (0..out_len).map(|i| fpq[i] - a * fp[i] - b * fq[i]).collect();
    let scale = a.abs() * norm(&fp) + b.abs() * norm(&fq);
    Ok(if scale > 0.0 { norm(&diff) / scale } else { 0.0 })
}

/// Measures the noise floor of `b` (linearised already) over `trials` random trials from `seed` (deterministic).
/// `dual_scale` holds, per state element, the scale of the state-space vectors y fed to U^T (1 / normalisation sd
/// of the element's channel; its length is the state length).
pub fn noise_floor(
    b: &mut dyn BOperator,
    ae: &mut Autoencoder,
    dual_scale: &[f64],
    seed: u64,
    trials: usize,
) -> Result<NoiseFloor> {
    let (n, m) = (b.control_size(), b.state_len());
    crate::bmat::check_len("noise_floor: dual_scale", dual_scale.len(), m)?;
    let mut nf = NoiseFloor { u_nonlinearity: 0.0, ut_nonlinearity: 0.0, adjoint_mismatch: 0.0, trials };
    for t in 0..trials {
        let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(t as u64 + 1));
        let (v1, v2) = (rng.normals(n), rng.normals(n));
        let mut dual = || -> Vec<f64> { rng.normals(m).iter().zip(dual_scale).map(|(x, s)| x * s).collect() };
        let (y1, y2) = (dual(), dual());
        let (a, c) = (factor(&mut rng), factor(&mut rng));
        let u = nonlinearity(&v1, &v2, a, c, m, |v, x| b.sqrt(ae, v, x))?;
        let ut = nonlinearity(&y1, &y2, a, c, n, |y, v| b.sqrt_ad(ae, y, v))?;
        let (mut uv, mut uty) = (vec![0.0; m], vec![0.0; n]);
        b.sqrt(ae, &v1, &mut uv)?;
        let along: Vec<f64> = uv.iter().zip(dual_scale).map(|(x, s)| x * s * s).collect();
        let c = if norm(&along) > 0.0 { norm(&y1) / norm(&along) } else { 0.0 };
        let y: Vec<f64> = y1.iter().zip(&along).map(|(a, b)| a + c * b).collect();
        b.sqrt_ad(ae, &y, &mut uty)?;
        let (lhs, rhs) = (dot(&uv, &y), dot(&v1, &uty));
        let scale = lhs.abs().max(rhs.abs());
        let adj = if scale > 0.0 { (lhs - rhs).abs() / scale } else { 0.0 };
        nf.u_nonlinearity = nf.u_nonlinearity.max(u);
        nf.ut_nonlinearity = nf.ut_nonlinearity.max(ut);
        nf.adjoint_mismatch = nf.adjoint_mismatch.max(adj);
    }
    Ok(nf)
}

/// Per state element, 1 / the normalisation sd of its channel (`std`: one value per channel, `npoints` grid points
/// per channel): the scale of the dual vectors of [`noise_floor`].
pub fn dual_scale(std: &[f64], npoints: usize) -> Vec<f64> {
    std.iter().flat_map(|s| std::iter::repeat_n(if *s > 0.0 { 1.0 / s } else { 1.0 }, npoints)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A linear map computed in float32 has a nonlinearity of float32 rounding; one with a small quadratic term has
    /// about that term's relative size: the measure separates the two.
    #[test]
    fn nonlinearity_measures_float32_rounding_and_real_nonlinearity() {
        let mut rng = Rng::new(3);
        let (n, m) = (50, 80);
        let w: Vec<f64> = rng.normals(n * m);
        let lin = |v: &[f64], x: &mut [f64]| -> Result<()> {
            for i in 0..m {
                let s: f32 = (0..n).map(|j| w[i * n + j] as f32 * v[j] as f32).sum();
                x[i] = s as f64;
            }
            Ok(())
        };
        let (p, q) = (rng.normals(n), rng.normals(n));
        let e = nonlinearity(&p, &q, 1.3, -0.7, m, lin).unwrap();
        assert!(e > 1e-9 && e < 1e-5, "float32 linear map: {e:e}");
        let quad = |v: &[f64], x: &mut [f64]| -> Result<()> {
            lin(v, x)?;
            x.iter_mut().for_each(|y| *y += 1e-3 * *y * *y);
            Ok(())
        };
        let e2 = nonlinearity(&p, &q, 1.3, -0.7, m, quad).unwrap();
        assert!(e2 > 1e-4, "quadratic map: {e2:e}");
    }
}
