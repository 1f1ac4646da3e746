//! What the conjugate-gradient inner loop knows about the Hessian: its Lanczos process.
//!
//! CG on A x = b with residuals r_0, r_1, ... is the Lanczos process with vectors v_(j+1) = (-1)^j r_j / |r_j| and
//! the tridiagonal matrix T_k built from the CG coefficients (Golub & Van Loan 10.2.6):
//!
//! ```text
//! A V_k = V_(k+1) Tbar_k,     T_11 = 1/alpha_1,  T_jj = 1/alpha_j + beta_(j-1)/alpha_(j-1),  T_j,j+1 = sqrt(beta_j)/alpha_j
//! ```
//!
//! From it come, without extra model runs: the extreme Ritz values (the condition number), the Ritz pairs that
//! precondition the next outer loop ([`crate::var::lmp`]) and the minimum-residual iterate (MINRES, Paige &
//! Saunders 1975), x = V_k y with y = argmin |beta_1 e_1 - Tbar_k y|, whose residual is never larger than CG's.

use crate::numeric::dot_lanes;

/// The Lanczos tridiagonal matrix of k CG iterations from the step lengths alpha_j and the ratios
/// beta_j = |r_j|^2 / |r_(j-1)|^2. Returns (diagonal, off-diagonal).
pub(crate) fn lanczos_tridiagonal(alphas: &[f64], betas: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let k = alphas.len();
    let diag = (0..k).map(|j| 1.0 / alphas[j] + if j > 0 { betas[j - 1] / alphas[j - 1] } else { 0.0 }).collect();
    let off = (0..k.saturating_sub(1)).map(|j| betas[j].sqrt() / alphas[j]).collect();
    (diag, off)
}

/// Number of eigenvalues of the symmetric tridiagonal (diag, off) below x (Sturm count of the LDL^T pivots).
fn count_below(diag: &[f64], off: &[f64], x: f64) -> usize {
    let mut count = 0;
    let mut d = 1.0;
    for j in 0..diag.len() {
        let o2 = if j > 0 { off[j - 1] * off[j - 1] } else { 0.0 };
        d = diag[j] - x - if j > 0 { o2 / d } else { 0.0 };
        if d == 0.0 {
            d = f64::EPSILON * (diag[j].abs() + x.abs()).max(f64::MIN_POSITIVE);
        }
        if d < 0.0 {
            count += 1;
        }
    }
    count
}

/// Smallest and largest eigenvalue of a symmetric tridiagonal matrix, by bisection inside the Gershgorin bounds
/// (to 1e-12 relative).
pub(crate) fn tridiagonal_extremes(diag: &[f64], off: &[f64]) -> (f64, f64) {
    let k = diag.len();
    let radius = |j: usize| (if j > 0 { off[j - 1].abs() } else { 0.0 }) + off.get(j).map_or(0.0, |o| o.abs());
    let lo = (0..k).map(|j| diag[j] - radius(j)).fold(f64::INFINITY, f64::min);
    let hi = (0..k).map(|j| diag[j] + radius(j)).fold(f64::NEG_INFINITY, f64::max);
    // the i-th eigenvalue (0-based) is the smallest x with count_below(x) > i
    let nth = |i: usize| {
        let (mut a, mut b) = (lo, hi);
        while b - a > 1e-12 * a.abs().max(b.abs()).max(f64::MIN_POSITIVE) {
            let m = 0.5 * (a + b);
            if m <= a || m >= b {
                break;
            }
            if count_below(diag, off, m) > i {
                b = m;
            } else {
                a = m;
            }
        }
        0.5 * (a + b)
    };
    (nth(0), nth(k - 1))
}

/// Eigen-decomposition of a small symmetric tridiagonal matrix (faer's self-adjoint eigen-decomposition). Returns the
/// eigenvalues and the eigenvectors as columns of a row-major k x k matrix (`vecs[i * k + m]` = component i of
/// eigenvector m), or None if the decomposition fails.
pub(crate) fn tridiagonal_eigen(diag: &[f64], off: &[f64]) -> Option<(Vec<f64>, Vec<f64>)> {
    let k = diag.len();
    let t = faer::Mat::<f64>::from_fn(k, k, |i, j| match i.abs_diff(j) {
        0 => diag[i],
        1 => off[i.min(j)],
        _ => 0.0,
    });
    let evd = t.self_adjoint_eigen(faer::Side::Lower).ok()?;
    let (u, s) = (evd.U(), evd.S().column_vector());
    let vals = (0..k).map(|m| s[m]).collect();
    let vecs = (0..k * k).map(|x| u[(x / k, x % k)]).collect();
    Some((vals, vecs))
}

/// The normalised CG residuals of one inner loop, stored contiguously in float32 for the full
/// re-orthogonalisation. The re-orthogonalisation only removes the float32-level loss of orthogonality that the
/// TL/AD products cause, so float32 copies of the basis are accurate enough, and they halve the memory traffic
/// of what is otherwise the largest cost of latentda's own code (k dot products and updates of the control
/// length in iteration k). Vector j is r_j / |r_j|, i.e. the Lanczos vector v_(j+1) times (-1)^j.
pub(crate) struct KrylovBasis {
    n: usize,
    data: Vec<f32>,
}

impl KrylovBasis {
    pub(crate) fn new(n: usize, capacity: usize) -> Self {
        KrylovBasis { n, data: Vec::with_capacity(n * capacity) }
    }

    pub(crate) fn clear(&mut self) {
        self.data.clear();
    }

    /// Number of stored vectors.
    pub(crate) fn len(&self) -> usize {
        self.data.len() / self.n.max(1)
    }

    /// Appends v / |v|.
    pub(crate) fn push(&mut self, v: &[f64], norm: f64) {
        self.data.extend(v.iter().map(|x| (x / norm) as f32));
    }

    /// Modified Gram-Schmidt: r -= (r . b) b for every stored b, in order.
    pub(crate) fn orthogonalise(&self, r: &mut [f64]) {
        for b in self.data.chunks_exact(self.n) {
            let c = dot_lanes(r, b);
            for (ri, bi) in r.iter_mut().zip(b) {
                *ri -= c * *bi as f64;
            }
        }
    }

    /// x = sum_j c_j (-1)^j b_j over the first c.len() vectors: the vector V_k c in the Lanczos basis.
    pub(crate) fn combine(&self, c: &[f64], x: &mut [f64]) {
        x.iter_mut().for_each(|v| *v = 0.0);
        for (j, (b, cj)) in self.data.chunks_exact(self.n).zip(c).enumerate() {
            let cj = if j % 2 == 0 { *cj } else { -*cj };
            for (xi, bi) in x.iter_mut().zip(b) {
                *xi += cj * *bi as f64;
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn vectors(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks_exact(self.n)
    }
}

/// The minimum-residual iterate of the Lanczos process, updated one column of Tbar_k at a time by Givens
/// rotations (the QR factorisation inside MINRES): after k columns, |beta_1 e_1 - Tbar_k y_k| is `residual()`,
/// at no extra cost to CG.
#[derive(Debug, Clone, Default)]
pub(crate) struct MinResidual {
    /// R of Tbar_k = Q R, three diagonals per column: (R[j-2, j], R[j-1, j], R[j, j]).
    r: Vec<[f64; 3]>,
    /// Q^T beta_1 e_1, the last entry being the residual.
    rhs: Vec<f64>,
    /// Givens rotations (c, s).
    rot: Vec<(f64, f64)>,
}

impl MinResidual {
    /// Starts with |b| = beta_1.
    pub(crate) fn new(beta1: f64) -> Self {
        MinResidual { r: Vec::new(), rhs: vec![beta1], rot: Vec::new() }
    }

    /// Adds column j of Tbar: `up` = T[j-1, j] (0 for j = 0), `diag` = T[j, j], `sub` = T[j+1, j].
    pub(crate) fn push(&mut self, up: f64, diag: f64, sub: f64) {
        let j = self.r.len();
        // column entries at rows j-2, j-1, j, j+1
        let (mut c0, mut c1, mut c2) = (0.0, up, diag);
        if j >= 2 {
            let (c, s) = self.rot[j - 2];
            let (a, b) = (c0, c1);
            c0 = c * a + s * b;
            c1 = -s * a + c * b;
        }
        if j >= 1 {
            let (c, s) = self.rot[j - 1];
            let (a, b) = (c1, c2);
            c1 = c * a + s * b;
            c2 = -s * a + c * b;
        }
        let h = c2.hypot(sub);
        let (c, s) = if h == 0.0 { (1.0, 0.0) } else { (c2 / h, sub / h) };
        self.rot.push((c, s));
        self.r.push([c0, c1, h]);
        let t = self.rhs[j];
        self.rhs[j] = c * t;
        self.rhs.push(-s * t);
    }

    /// |beta_1 e_1 - Tbar_k y_k| for the current k.
    pub(crate) fn residual(&self) -> f64 {
        self.rhs.last().map_or(0.0, |v| v.abs())
    }

    /// y_k (back substitution in R).
    pub(crate) fn solution(&self) -> Vec<f64> {
        let k = self.r.len();
        let mut y = vec![0.0; k];
        for j in (0..k).rev() {
            let mut v = self.rhs[j];
            if j + 1 < k {
                v -= self.r[j + 1][1] * y[j + 1];
            }
            if j + 2 < k {
                v -= self.r[j + 2][0] * y[j + 2];
            }
            y[j] = v / self.r[j][2];
        }
        y
    }
}

/// Solves T y = rhs for the symmetric positive definite tridiagonal T = (diag, off) (Thomas algorithm).
fn tridiagonal_solve(diag: &[f64], off: &[f64], rhs: &[f64]) -> Vec<f64> {
    let k = diag.len();
    let (mut c, mut d) = (vec![0.0; k], vec![0.0; k]);
    for j in 0..k {
        let lower = if j > 0 { off[j - 1] } else { 0.0 };
        let den = diag[j] - if j > 0 { lower * c[j - 1] } else { 0.0 };
        c[j] = if j + 1 < k { off[j] / den } else { 0.0 };
        d[j] = (rhs[j] - if j > 0 { lower * d[j - 1] } else { 0.0 }) / den;
    }
    let mut y = d;
    for j in (0..k.saturating_sub(1)).rev() {
        y[j] -= c[j] * y[j + 1];
    }
    y
}

/// beta_1 e_1 - Tbar y, Tbar the (k+1) x k matrix of (diag, off) with `sub` = Tbar[k+1, k].
fn tbar_residual(diag: &[f64], off: &[f64], sub: f64, beta1: f64, y: &[f64]) -> Vec<f64> {
    let k = y.len();
    let mut r = vec![0.0; k + 1];
    r[0] = beta1;
    for j in 0..k {
        r[j] -= diag[j] * y[j];
        if j > 0 {
            r[j - 1] -= off[j - 1] * y[j];
        }
        if j + 1 < k {
            r[j + 1] -= off[j] * y[j];
        }
    }
    r[k] -= sub * y[k - 1];
    r
}

/// Coordinates y in the Lanczos basis of the iterate with the lowest quadratic J on the segment from the CG
/// iterate (lowest J in the Krylov space) to the minimum-residual iterate `mr` (lowest gradient) among those whose
/// gradient is <= `target`. J is convex along the segment with its minimum at the CG end, and |gradient|^2 a convex
/// quadratic with its minimum at the MR end, so this is the point nearest to CG where |gradient| = `target` (the MR
/// iterate itself if it does not meet the target). Returns (y, |gradient| there).
pub(crate) fn iterate_meeting_target(
    diag: &[f64],
    off: &[f64],
    sub: f64,
    beta1: f64,
    mr: &MinResidual,
    target: f64,
) -> (Vec<f64>, f64) {
    let k = diag.len();
    let mut rhs = vec![0.0; k];
    rhs[0] = beta1;
    let y_cg = tridiagonal_solve(diag, off, &rhs);
    let y_mr = mr.solution();
    let r_cg = tbar_residual(diag, off, sub, beta1, &y_cg);
    let r_mr = tbar_residual(diag, off, sub, beta1, &y_mr);
    let delta: Vec<f64> = r_mr.iter().zip(&r_cg).map(|(a, b)| a - b).collect();
    let (a, b, c) = (
        delta.iter().map(|v| v * v).sum::<f64>(),
        delta.iter().zip(&r_cg).map(|(d, r)| d * r).sum::<f64>(),
        r_cg.iter().map(|v| v * v).sum::<f64>(),
    );
    let t = if c <= target * target {
        0.0
    } else if a > 0.0 && b * b - a * (c - target * target) >= 0.0 {
        ((-b - (b * b - a * (c - target * target)).sqrt()) / a).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let y: Vec<f64> = y_cg.iter().zip(&y_mr).map(|(g, m)| g + t * (m - g)).collect();
    let g = (c + 2.0 * t * b + t * t * a).max(0.0).sqrt();
    (y, g)
}

/// y^T T y for the symmetric tridiagonal T = (diag, off) (first y.len() rows).
pub(crate) fn tridiagonal_quadratic(diag: &[f64], off: &[f64], y: &[f64]) -> f64 {
    let k = y.len();
    (0..k).map(|j| diag[j] * y[j] * y[j] + if j + 1 < k { 2.0 * off[j] * y[j] * y[j + 1] } else { 0.0 }).sum()
}

/// What the tests of this module and of the preconditioner share.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::numeric::dot;

    /// CG with full re-orthogonalisation on diag(a) x = b; returns (alphas, betas, basis, CG residual norms).
    pub(crate) fn cg(a: &[f64], b: &[f64], iters: usize) -> (Vec<f64>, Vec<f64>, KrylovBasis, Vec<f64>) {
        let n = a.len();
        let mut r = b.to_vec();
        let mut p = r.clone();
        let mut rr = dot(&r, &r);
        let mut basis = KrylovBasis::new(n, iters + 1);
        basis.push(&r, rr.sqrt());
        let (mut alphas, mut betas, mut norms) = (vec![], vec![], vec![]);
        for _ in 0..iters {
            let q: Vec<f64> = a.iter().zip(&p).map(|(a, p)| a * p).collect();
            let alpha = rr / dot(&p, &q);
            alphas.push(alpha);
            r.iter_mut().zip(&q).for_each(|(r, q)| *r -= alpha * q);
            basis.orthogonalise(&mut r);
            let rr_new = dot(&r, &r);
            basis.push(&r, rr_new.sqrt());
            norms.push(rr_new.sqrt());
            betas.push(rr_new / rr);
            p = r.iter().zip(&p).map(|(r, p)| r + rr_new / rr * p).collect();
            rr = rr_new;
        }
        (alphas, betas, basis, norms)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::cg;
    use super::*;
    use crate::numeric::dot;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::numeric::Rng::new(seed);
        (0..n).map(|_| rng.uniform() - 0.5).collect()
    }

    fn norm(a: &[f64]) -> f64 {
        dot(a, a).sqrt()
    }

    #[test]
    fn tridiagonal_extremes_match_the_closed_form_of_the_1d_laplacian() {
        // tridiag(-1, 2, -1) of size k: eigenvalues 2 - 2 cos(j pi / (k + 1)), j = 1..k
        let k = 50;
        let (lo, hi) = tridiagonal_extremes(&vec![2.0; k], &vec![-1.0; k - 1]);
        let ev = |j: f64| 2.0 - 2.0 * (j * std::f64::consts::PI / (k as f64 + 1.0)).cos();
        assert!((lo - ev(1.0)).abs() < 1e-11, "{lo} vs {}", ev(1.0));
        assert!((hi - ev(k as f64)).abs() < 1e-11, "{hi} vs {}", ev(k as f64));
        // the Jacobi eigen-decomposition gives every eigenvalue, with orthonormal eigenvectors
        let (vals, vecs) = tridiagonal_eigen(&vec![2.0; k], &vec![-1.0; k - 1]).unwrap();
        let mut sorted = vals.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for (j, v) in sorted.iter().enumerate() {
            assert!((v - ev(j as f64 + 1.0)).abs() < 1e-12, "eigenvalue {j}: {v} vs {}", ev(j as f64 + 1.0));
        }
        for m in 0..k {
            for l in 0..k {
                let d: f64 = (0..k).map(|i| vecs[i * k + m] * vecs[i * k + l]).sum();
                assert!((d - if m == l { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
            // T u = lambda u
            let u: Vec<f64> = (0..k).map(|i| vecs[i * k + m]).collect();
            for i in 0..k {
                let tu = 2.0 * u[i] - if i > 0 { u[i - 1] } else { 0.0 } - if i + 1 < k { u[i + 1] } else { 0.0 };
                assert!((tu - vals[m] * u[i]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn ritz_values_of_a_full_cg_run_are_the_eigenvalues() {
        // CG on A = diag(1..=k) from a vector with all components: after k iterations the Lanczos tridiagonal
        // matrix is similar to A, so its extreme eigenvalues are 1 and k.
        let k = 12;
        let a: Vec<f64> = (1..=k).map(|v| v as f64).collect();
        let (alphas, betas, _, _) = cg(&a, &pseudo_random(k, 7), k);
        let (diag, off) = lanczos_tridiagonal(&alphas, &betas);
        let (lo, hi) = tridiagonal_extremes(&diag, &off);
        assert!((lo - 1.0).abs() < 1e-6 && (hi - k as f64).abs() < 1e-6, "Ritz range [{lo}, {hi}], expected [1, {k}]");
    }

    #[test]
    fn minimum_residual_iterate_is_what_minres_gives_and_never_worse_than_cg() {
        // A = diag with a wide spectrum (1 .. 1e4), where CG's residual oscillates.
        let n = 300;
        let a: Vec<f64> = (0..n).map(|i| 10f64.powf(4.0 * (i as f64 / (n - 1) as f64).powi(3))).collect();
        let b = pseudo_random(n, 3);
        let iters = 40;
        let (alphas, betas, basis, cg_norms) = cg(&a, &b, iters);
        let (diag, off) = lanczos_tridiagonal(&alphas, &betas);
        let mut mr = MinResidual::new(norm(&b));
        let mut wins = 0;
        let mut prev = norm(&b);
        for j in 0..iters {
            let up = if j > 0 { off[j - 1] } else { 0.0 };
            let sub = betas[j].sqrt() / alphas[j];
            mr.push(up, diag[j], sub);
            assert!(
                mr.residual() <= cg_norms[j] * (1.0 + 1e-9),
                "iteration {}: MR {} > CG {}",
                j + 1,
                mr.residual(),
                cg_norms[j]
            );
            if mr.residual() < 0.7 * cg_norms[j] {
                wins += 1;
            }
            // the iterate x = V y really has the predicted residual |b - A x|
            let y = mr.solution();
            let mut x = vec![0.0; n];
            basis.combine(&y, &mut x);
            let res: Vec<f64> = (0..n).map(|i| b[i] - a[i] * x[i]).collect();
            let rel = (norm(&res) - mr.residual()).abs() / norm(&b);
            assert!(rel < 1e-6, "iteration {}: |b - Ax| = {:e}, predicted {:e}", j + 1, norm(&res), mr.residual());
            // and the monotone decrease of MINRES
            assert!(mr.residual() <= prev * (1.0 + 1e-12));
            prev = mr.residual();
        }
        assert!(wins > 5, "the example should show CG's residual above the minimum residual ({wins} iterations)");
        // the segment iterate meets a target between the two residuals, with J between CG's and MR's
        let sub = betas[iters - 1].sqrt() / alphas[iters - 1];
        let target = 0.5 * (mr.residual() + cg_norms[iters - 1]);
        let (ys, gs) = iterate_meeting_target(&diag, &off, sub, norm(&b), &mr, target);
        let mut xs = vec![0.0; n];
        basis.combine(&ys, &mut xs);
        let res: Vec<f64> = (0..n).map(|i| b[i] - a[i] * xs[i]).collect();
        assert!(
            (norm(&res) - target).abs() < 1e-6 * norm(&b) && (gs - target).abs() < 1e-9 * norm(&b),
            "|r| = {} vs target {target}",
            norm(&res)
        );
        let jq = |x: &[f64]| (0..n).map(|i| 0.5 * a[i] * x[i] * x[i] - b[i] * x[i]).sum::<f64>();
        let y_mr = mr.solution();
        let mut x_mr = vec![0.0; n];
        basis.combine(&y_mr, &mut x_mr);
        let (ycg, gcg) = iterate_meeting_target(&diag, &off, sub, norm(&b), &mr, 2.0 * cg_norms[iters - 1]);
        let mut x_cg = vec![0.0; n];
        basis.combine(&ycg, &mut x_cg);
        assert!((gcg - cg_norms[iters - 1]).abs() < 1e-6 * norm(&b), "a target CG meets gives the CG iterate");
        assert!(
            jq(&x_cg) <= jq(&xs) && jq(&xs) <= jq(&x_mr),
            "J: CG {} <= segment {} <= MR {}",
            jq(&x_cg),
            jq(&xs),
            jq(&x_mr)
        );
        // the quadratic form from T equals x^T A x
        let y = mr.solution();
        let mut x = vec![0.0; n];
        basis.combine(&y, &mut x);
        let xax: f64 = (0..n).map(|i| a[i] * x[i] * x[i]).sum();
        let tq = tridiagonal_quadratic(&diag, &off, &y);
        assert!((xax - tq).abs() < 1e-6 * xax, "x^T A x = {xax}, y^T T y = {tq}");
    }

    #[test]
    fn float32_krylov_basis_orthogonalises_to_float32_accuracy() {
        let n = 1003; // not a multiple of the 8 dot-product lanes
        let mut basis = KrylovBasis::new(n, 4);
        for k in 0..30 {
            let mut v = pseudo_random(n, k + 1);
            basis.orthogonalise(&mut v);
            let nv = norm(&v);
            basis.push(&v, nv);
        }
        let mut r = pseudo_random(n, 99);
        let r0 = norm(&r);
        basis.orthogonalise(&mut r);
        // what is left is still most of r (30 directions out of 1003 removed) ...
        assert!(norm(&r) > 0.9 * r0);
        // ... and orthogonal to every stored direction to float32 accuracy
        let worst = basis
            .vectors()
            .map(|b| b.iter().zip(&r).map(|(b, r)| *b as f64 * r).sum::<f64>().abs() / norm(&r))
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "largest |b.r|/|r| = {worst:e}");
        let first = basis.vectors().next().unwrap();
        let dots = dot_lanes(&r, first);
        let plain: f64 = r.iter().zip(first).map(|(a, b)| a * *b as f64).sum();
        assert!((dots - plain).abs() <= 1e-12 * r0, "lane-ordered dot {dots} vs plain sum {plain}");
    }
}
