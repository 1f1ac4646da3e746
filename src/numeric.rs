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

/// Small deterministic generator (SplitMix64 -> Box-Muller) so checks are reproducible without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// The next raw 64-bit output (SplitMix64).
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// Vector of standard normals.
    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// Result of an adjoint test: |<A v, u> - <v, A^T u>| / max(|<A v, u>|, |<v, A^T u>|).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DotTest {
    /// <A v, u>.
    pub lhs: f64,
    /// <v, A^T u>.
    pub rhs: f64,
    /// Relative difference.
    pub rel: f64,
}

impl DotTest {
    /// Relative difference of two inner products that should agree.
    pub fn new(lhs: f64, rhs: f64) -> DotTest {
        let m = lhs.abs().max(rhs.abs());
        DotTest { lhs, rhs, rel: if m > 0.0 { (lhs - rhs).abs() / m } else { 0.0 } }
    }
}

/// Adjoint test of a linear map A: R^n -> R^m given by `tl` (v -> A v) and `ad` (u -> A^T u), both run on `ctx`:
/// |<A v, u> - <v, A^T u>| / max(...) with v random and u = r + (|r| / |A v|) A v, r random (a component along A v,
/// so the products cannot cancel by chance). Deterministic per seed.
pub fn adjoint_test<C: ?Sized>(
    ctx: &mut C,
    n: usize,
    m: usize,
    seed: u64,
    mut tl: impl FnMut(&mut C, &[f64], &mut [f64]) -> crate::error::Result<()>,
    mut ad: impl FnMut(&mut C, &[f64], &mut [f64]) -> crate::error::Result<()>,
) -> crate::error::Result<DotTest> {
    let mut rng = Rng::new(seed);
    let v = rng.normals(n);
    let mut av = vec![0.0; m];
    tl(ctx, &v, &mut av)?;
    let r = rng.normals(m);
    let (nr, na) = (dot(&r, &r).sqrt(), dot(&av, &av).sqrt().max(1e-300));
    let u: Vec<f64> = r.iter().zip(&av).map(|(r, a)| r + nr / na * a).collect();
    let mut atu = vec![0.0; n];
    ad(ctx, &u, &mut atu)?;
    Ok(DotTest::new(dot(&av, &u), dot(&v, &atu)))
}
