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

