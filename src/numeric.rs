//! Small numerical kernels shared by the solver and the diagnostics.

/// Dot product with eight independent partial sums: the compiler keeps a strict left-to-right order for a
/// single accumulator and cannot vectorise it; the fixed lane order keeps results deterministic.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    dot_lanes(a, b)
}

/// [`dot`] for a second vector of float64 or float32 elements (widened to float64).
pub fn dot_lanes<T: Copy + Into<f64>>(a: &[f64], b: &[T]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l].into();
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * (*y).into()).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}


/// Eigen-decomposition of a small symmetric matrix `a` (n x n, row-major) by cyclic Jacobi rotations, until the
/// squared off-diagonal norm is <= `off_tol2`. Deterministic. Returns the eigenvalues (unordered) and the
/// eigenvectors as the columns of a row-major n x n matrix (`vecs[i * n + m]` = component i of eigenvector m).
pub fn symmetric_eigen(a: &[f64], n: usize, off_tol2: f64) -> (Vec<f64>, Vec<f64>) {
    let mut m = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n).flat_map(|i| (0..n).map(move |j| (i, j))).filter(|(i, j)| i != j).map(|(i, j)| m[i * n + j].powi(2)).sum();
        if off < off_tol2 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| m[i * n + i]).collect(), v)
}
