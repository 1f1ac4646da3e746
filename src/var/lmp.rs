//! Limited-memory spectral preconditioner across outer loops (Tshimanga et al. 2008; Gratton, Sartenaer &
//! Tshimanga 2011; the idea of Fisher's CONGRAD).
//!
//! The inner loop of outer loop k solves (I + G_k^T R^-1 G_k) dw = b_k. Its Lanczos process yields Ritz pairs
//! (theta_i, u_i) of that Hessian; the large ones converge first and are what slows CG down. Outer loop k+1 has
//! nearly the same Hessian, so it is solved in the variable v with dw = L v,
//!
//! ```text
//! L = I + sum_i (theta_i^(-1/2) - 1) u_i u_i^T,        L^T A L u_i = u_i  when A u_i = theta_i u_i,
//! ```
//!
//! which maps the converged Ritz values to 1 and leaves the rest of the spectrum alone. Factors of later loops
//! compose: dw = L_1 L_2 ... L_m v, and CG runs on M^T A M with M = L_1 ... L_m.
//!
//! Exactness. The Ritz vectors come from the float32 Krylov basis, so they are re-orthonormalised here in float64
//! (modified Gram-Schmidt, twice) and the Ritz values are clamped to [1, inf) (the Hessian's spectrum starts at 1).
//! Each factor is then I + U D U^T with U^T U = I to float64 rounding and D in (-1, 0]: its eigenvalues are
//! theta_i^(-1/2) in (0, 1] and 1, so every L is symmetric positive definite, M is non-singular, and M^T A M is
//! symmetric positive definite whatever the quality of the Ritz pairs. Poor pairs can only slow CG down, never change
//! the minimum it converges to.

use crate::numeric::dot;
use crate::var::lanczos::{tridiagonal_eigen, KrylovBasis};

/// Which Ritz pairs of an inner loop enter the preconditioner of the next one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RitzSelection {
    /// Largest relative Ritz residual |A u - theta u| / theta of a pair to keep (converged pairs only).
    pub tolerance: f64,
    /// Smallest Ritz value worth deflating (those near 1 are already where the preconditioner would put them).
    pub min_value: f64,
    /// At most this many pairs per outer loop (memory: one float64 control vector each).
    pub max_pairs: usize,
}

impl Default for RitzSelection {
    fn default() -> Self {
        RitzSelection { tolerance: 1e-2, min_value: 2.0, max_pairs: 40 }
    }
}

/// One factor L = I + U diag(scale) U^T, U orthonormal, scale_i = theta_i^(-1/2) - 1.
#[derive(Debug, Clone)]
pub(crate) struct SpectralFactor {
    n: usize,
    u: Vec<f64>,
    scale: Vec<f64>,
    theta: Vec<f64>,
}

impl SpectralFactor {
    /// The factor from the Lanczos process of an inner loop: `diag`, `off` its k x k tridiagonal matrix, `sub` the
    /// entry Tbar[k+1, k] (the Ritz residuals are |sub * s_i[k-1]|), `basis` its first k normalised residuals.
    /// `None` when no Ritz pair qualifies.
    pub(crate) fn from_lanczos(
        basis: &KrylovBasis,
        diag: &[f64],
        off: &[f64],
        sub: f64,
        n: usize,
        sel: RitzSelection,
    ) -> Option<SpectralFactor> {
        let k = diag.len();
        if k == 0 || basis.len() < k {
            return None;
        }
        let (vals, vecs) = tridiagonal_eigen(diag, off)?;
        let mut pairs: Vec<(f64, usize)> = (0..k)
            .filter(|&m| {
                let res = (sub * vecs[(k - 1) * k + m]).abs();
                vals[m] >= sel.min_value && res <= sel.tolerance * vals[m]
            })
            .map(|m| (vals[m], m))
            .collect();
        // largest first (ties broken by index: deterministic)
        pairs.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
        pairs.truncate(sel.max_pairs);
        let mut u: Vec<f64> = Vec::with_capacity(pairs.len() * n);
        let mut theta = Vec::with_capacity(pairs.len());
        let mut x = vec![0.0; n];
        let mut s = vec![0.0; k];
        for &(val, m) in &pairs {
            for i in 0..k {
                s[i] = vecs[i * k + m];
            }
            basis.combine(&s, &mut x);
            // twice is enough (Kahan-Parlett); a vector that loses most of its norm is dependent: drop it
            let before = dot(&x, &x).sqrt();
            for _ in 0..2 {
                for prev in u.chunks_exact(n) {
                    let c = dot(&x, prev);
                    x.iter_mut().zip(prev).for_each(|(xi, pi)| *xi -= c * pi);
                }
            }
            let after = dot(&x, &x).sqrt();
            if !(after > 0.5 * before) {
                continue;
            }
            u.extend(x.iter().map(|v| v / after));
            theta.push(val.max(1.0));
        }
        if theta.is_empty() {
            return None;
        }
        let scale = theta.iter().map(|t| 1.0 / t.sqrt() - 1.0).collect();
        Some(SpectralFactor { n, u, scale, theta })
    }

    /// x = L x (L is symmetric).
    fn apply(&self, x: &mut [f64]) {
        let c: Vec<f64> = self.u.chunks_exact(self.n).zip(&self.scale).map(|(u, s)| s * dot(x, u)).collect();
        for (u, c) in self.u.chunks_exact(self.n).zip(&c) {
            x.iter_mut().zip(u).for_each(|(xi, ui)| *xi += c * ui);
        }
    }

    /// Number of Ritz pairs.
    pub(crate) fn len(&self) -> usize {
        self.theta.len()
    }
}

/// M = L_1 L_2 ... L_m, the product of the factors of the previous outer loops (identity when empty).
#[derive(Debug, Clone, Default)]
pub(crate) struct Preconditioner {
    factors: Vec<SpectralFactor>,
}

impl Preconditioner {
    /// True when M = I.
    pub(crate) fn is_identity(&self) -> bool {
        self.factors.is_empty()
    }

    /// Total number of Ritz pairs in M.
    pub(crate) fn pairs(&self) -> usize {
        self.factors.iter().map(|f| f.len()).sum()
    }

    /// Appends the factor of the latest outer loop: M <- M L.
    pub(crate) fn push(&mut self, f: SpectralFactor) {
        self.factors.push(f);
    }

    /// x = M x.
    pub(crate) fn apply(&self, x: &mut [f64]) {
        for f in self.factors.iter().rev() {
            f.apply(x);
        }
    }

    /// x = M^T x.
    pub(crate) fn apply_transpose(&self, x: &mut [f64]) {
        for f in &self.factors {
            f.apply(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::numeric::Rng::new(seed);
        (0..n).map(|_| rng.uniform() - 0.5).collect()
    }

    #[test]
    fn factor_is_spd_with_the_predicted_eigenvalues_even_from_a_float32_basis() {
        // Lanczos on diag(a): a few large separated eigenvalues on top of a cluster near 1.
        let n = 400;
        let mut a: Vec<f64> = (0..n).map(|i| 1.0 + 0.5 * (i as f64 / n as f64)).collect();
        for (i, v) in [1e4, 3e3, 800.0, 200.0, 50.0].iter().enumerate() {
            a[7 + 31 * i] = *v;
        }
        let b = pseudo_random(n, 5);
        let (alphas, betas, basis, _) = crate::var::lanczos::test_support::cg(&a, &b, 25);
        let k = alphas.len();
        let (diag, off) = crate::var::lanczos::lanczos_tridiagonal(&alphas, &betas[..k - 1]);
        let sub = betas[k - 1].sqrt() / alphas[k - 1];
        let f = SpectralFactor::from_lanczos(&basis, &diag, &off, sub, n, RitzSelection::default()).unwrap();
        assert_eq!(f.len(), 5, "the five outlying eigenvalues are converged Ritz values: {:?}", f.theta);
        // U^T U = I in float64
        for (i, ui) in f.u.chunks_exact(n).enumerate() {
            for (j, uj) in f.u.chunks_exact(n).enumerate() {
                let d = dot(ui, uj) - if i == j { 1.0 } else { 0.0 };
                assert!(d.abs() < 1e-13, "U^T U - I = {d:e} at ({i}, {j})");
            }
        }
        // L A L maps the outliers to ~1: its largest Rayleigh quotient on the unit vectors e_i is about 1.5
        let mut pre = Preconditioner::default();
        pre.push(f);
        let mut worst: f64 = 0.0;
        let mut smallest = f64::INFINITY;
        for i in 0..n {
            let mut x = vec![0.0; n];
            x[i] = 1.0;
            pre.apply(&mut x);
            let mut y: Vec<f64> = x.iter().zip(&a).map(|(x, a)| x * a).collect();
            pre.apply_transpose(&mut y);
            worst = worst.max(y[i]);
            smallest = smallest.min(y[i]);
        }
        assert!(worst < 2.0, "largest diagonal of L A L is {worst}, the outliers were not deflated");
        assert!(smallest > 0.5, "smallest diagonal of L A L is {smallest}");
        // M is invertible with eigenvalues in (0, 1]: |M x| <= |x| and x^T M x > 0 for random x
        for s in 0..5 {
            let x = pseudo_random(n, 100 + s);
            let mut mx = x.clone();
            pre.apply(&mut mx);
            assert!(dot(&mx, &mx) <= dot(&x, &x) * (1.0 + 1e-12));
            assert!(dot(&x, &mx) > 0.0);
        }
    }
}
