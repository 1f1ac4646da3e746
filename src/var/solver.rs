//! Incremental Gauss-Newton minimisation with a conjugate-gradient inner loop (Courtier et al. 1994).
//!
//! Cost function in control space, with a control-to-state map x(w) = x_b + dx(w):
//!
//! ```text
//! J(w) = 1/2 |w|^2 + 1/2 sum_i ((y_i - H_i x(w)) / sigma_i)^2
//! ```
//!
//! Outer loop k linearises dx at w_k (G = H dx'(w_k)); the inner loop solves the quadratic problem
//! (I + G^T R^-1 G) dw = -w_k + G^T R^-1 d_k with conjugate gradients, one TL and one AD per iteration. The quadratic
//! J is tracked exactly along the CG iterates (G dw is updated from the TL products), so every inner iteration
//! reports J, Jb, Jo and |grad J| without extra model runs. After each outer loop the nonlinear J is evaluated.

use crate::error::{Error, Result, Status};
use crate::numeric::{dot, dot_lanes};
use crate::obs::operator::ObsOperator;

/// A control-variable transform: the map from the control vector w to a state increment, with its TL and AD.
pub trait ControlSpace {
    /// Length of the control vector.
    fn size(&self) -> usize;
    /// Nonlinear state increment dx(w) = x(w) - x_b (physical units).
    fn increment(&mut self, w: &[f64], dx: &mut [f64]) -> Result<()>;
    /// Sets the linearisation point of `tl`/`ad` to w.
    fn linearize(&mut self, w: &[f64]) -> Result<()>;
    /// dx = dx'(w_lin) dw.
    fn tl(&mut self, dw: &[f64], dx: &mut [f64]) -> Result<()>;
    /// dw = dx'(w_lin)^T dx.
    fn ad(&mut self, dx: &[f64], dw: &mut [f64]) -> Result<()>;
    /// Whether the map is linear (then one outer loop is exact).
    fn is_linear(&self) -> bool {
        false
    }
}

/// A borrowed transform is a transform (so a hybrid can borrow a cached static B).
impl<T: ControlSpace + ?Sized> ControlSpace for &mut T {
    fn size(&self) -> usize {
        (**self).size()
    }
    fn increment(&mut self, w: &[f64], dx: &mut [f64]) -> Result<()> {
        (**self).increment(w, dx)
    }
    fn linearize(&mut self, w: &[f64]) -> Result<()> {
        (**self).linearize(w)
    }
    fn tl(&mut self, dw: &[f64], dx: &mut [f64]) -> Result<()> {
        (**self).tl(dw, dx)
    }
    fn ad(&mut self, dx: &[f64], dw: &mut [f64]) -> Result<()> {
        (**self).ad(dx, dw)
    }
    fn is_linear(&self) -> bool {
        (**self).is_linear()
    }
}

/// Solver parameters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SolverParams {
    /// Number of outer (Gauss-Newton) loops.
    pub outer_loops: usize,
    /// Maximum CG iterations per outer loop.
    pub max_inner: usize,
    /// Stop an inner loop when |grad| has fallen by this factor from its start.
    pub gradient_reduction: f64,
    /// Print one line per iteration to stderr.
    pub verbose: bool,
}

impl Default for SolverParams {
    fn default() -> Self {
        SolverParams { outer_loops: 2, max_inner: 40, gradient_reduction: 1e-3, verbose: false }
    }
}

/// One iteration record. `inner = 0` is the start of an outer loop.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IterRecord {
    /// Outer loop index (1-based).
    pub outer: usize,
    /// Inner iteration (0 = start of the outer loop, exact nonlinear values).
    pub inner: usize,
    /// Total cost.
    pub j: f64,
    /// Background term.
    pub jb: f64,
    /// Observation term.
    pub jo: f64,
    /// Gradient norm.
    pub grad: f64,
}

impl IterRecord {
    /// The greppable log line `iter <k> <j> J= Jb= Jo= |g|=`.
    pub fn line(&self) -> String {
        format!(
            "iter {} {} J= {:.10e} Jb= {:.10e} Jo= {:.10e} |g|= {:.10e}",
            self.outer, self.inner, self.j, self.jb, self.jo, self.grad
        )
    }
}

/// Result of a minimisation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SolveInfo {
    /// Iteration history.
    pub iterations: Vec<IterRecord>,
    /// Total CG iterations (TL/AD pairs).
    pub inner_total: usize,
    /// Nonlinear J at the start (w = 0).
    pub j_initial: f64,
    /// Nonlinear J at the analysis.
    pub j_final: f64,
    /// Jb at the analysis.
    pub jb_final: f64,
    /// Jo at the analysis.
    pub jo_final: f64,
    /// |grad J| at w = 0.
    pub grad_initial: f64,
    /// |grad J| of the nonlinear cost at the analysis (one extra AD).
    pub grad_final: f64,
    /// grad_final / grad_initial.
    pub grad_reduction: f64,
    /// Per outer loop, the extreme Ritz values of the inner-loop Hessian I + G^T R^-1 G from the CG coefficients
    /// (the Lanczos tridiagonal matrix). `max` estimates the condition number (the smallest eigenvalue is >= 1)
    /// and so the CG iterations a given gradient reduction needs.
    pub hessian_ritz: Vec<RitzRange>,
}

/// Extreme Ritz values of one inner loop's Hessian.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RitzRange {
    /// Outer loop index (1-based).
    pub outer: usize,
    /// CG iterations the estimate is built from (the size of the tridiagonal matrix).
    pub iterations: usize,
    /// Smallest Ritz value (an upper bound of the smallest eigenvalue).
    pub min: f64,
    /// Largest Ritz value (a lower bound of the largest eigenvalue).
    pub max: f64,
}

/// The Lanczos tridiagonal matrix of k CG iterations (Golub & Van Loan 10.2.6): from the step lengths alpha_j and
/// the ratios beta_j = |r_j|^2 / |r_(j-1)|^2,
/// T_11 = 1/alpha_1, T_jj = 1/alpha_j + beta_(j-1)/alpha_(j-1), T_j,j+1 = sqrt(beta_j)/alpha_j.
/// Returns (diagonal, off-diagonal).
fn lanczos_tridiagonal(alphas: &[f64], betas: &[f64]) -> (Vec<f64>, Vec<f64>) {
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
fn tridiagonal_extremes(diag: &[f64], off: &[f64]) -> (f64, f64) {
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

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// The normalised CG residuals of one inner loop, stored contiguously in float32 for the full
/// re-orthogonalisation. The re-orthogonalisation only removes the float32-level loss of orthogonality that the
/// TL/AD products cause, so float32 copies of the basis are accurate enough, and they halve the memory traffic
/// of what is otherwise the largest cost of latentda's own code (k dot products and updates of the control
/// length in iteration k).
struct KrylovBasis {
    n: usize,
    data: Vec<f32>,
}

impl KrylovBasis {
    fn new(n: usize, capacity: usize) -> Self {
        KrylovBasis { n, data: Vec::with_capacity(n * capacity) }
    }

    fn clear(&mut self) {
        self.data.clear();
    }

    /// Appends v / |v|.
    fn push(&mut self, v: &[f64], norm: f64) {
        self.data.extend(v.iter().map(|x| (x / norm) as f32));
    }

    /// Modified Gram-Schmidt: r -= (r . b) b for every stored b, in order.
    fn orthogonalise(&self, r: &mut [f64]) {
        for b in self.data.chunks_exact(self.n) {
            let c = dot_lanes(r, b);
            for (ri, bi) in r.iter_mut().zip(b) {
                *ri -= c * *bi as f64;
            }
        }
    }
}

/// Workspace and problem data for [`minimise`].
pub struct Problem<'a> {
    /// Observation operator (rows = used observations).
    pub h: &'a ObsOperator,
    /// Observed values per row.
    pub y: &'a [f64],
    /// Observation error sd per row.
    pub sigma: &'a [f64],
    /// H x_b per row.
    pub hxb: &'a [f64],
}

fn jo_of(d: &[f64], sigma: &[f64]) -> f64 {
    0.5 * d.iter().zip(sigma).map(|(d, s)| (d / s) * (d / s)).sum::<f64>()
}

fn check_finite(what: &str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::new(Status::Solver, format!("minimisation failed: {what} is not finite ({v})")))
    }
}

/// Linearises at w and writes r = -grad J(w) = -w + G^T R^-1 d (one AD run); returns |r|.
fn negative_gradient(
    ctrl: &mut dyn ControlSpace,
    p: &Problem,
    w: &[f64],
    d: &[f64],
    tmp_obs: &mut [f64],
    tmp_state: &mut [f64],
    r: &mut [f64],
) -> Result<f64> {
    ctrl.linearize(w)?;
    for i in 0..d.len() {
        tmp_obs[i] = d[i] / (p.sigma[i] * p.sigma[i]);
    }
    tmp_state.iter_mut().for_each(|v| *v = 0.0);
    p.h.adjoint(tmp_obs, tmp_state);
    ctrl.ad(tmp_state, r)?;
    for i in 0..w.len() {
        r[i] -= w[i];
    }
    Ok(norm(r))
}

/// Minimises J over w, returning the analysis control vector, the analysis increment dx(w_a) (physical units)
/// and the diagnostics.
pub fn minimise(
    ctrl: &mut dyn ControlSpace,
    p: &Problem,
    params: &SolverParams,
) -> Result<(Vec<f64>, Vec<f64>, SolveInfo)> {
    let n = ctrl.size();
    let m = p.h.nrows();
    let sl = p.h.state_len();
    let mut w = vec![0.0; n];
    let mut dx = vec![0.0; sl];
    let mut hdx = vec![0.0; m];
    let mut d = vec![0.0; m];
    let mut iters = Vec::new();
    let mut inner_total = 0;
    let (mut r, mut pdir, mut q, mut dw) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let mut gdw = vec![0.0; m];
    let mut gp = vec![0.0; m];
    let mut tmp_obs = vec![0.0; m];
    let mut tmp_state = vec![0.0; sl];
    let mut basis = KrylovBasis::new(n, params.max_inner.min(200) + 1);
    let mut hessian_ritz = Vec::new();
    let mut j_initial = f64::NAN;
    let mut grad_initial = f64::NAN;
    let outer_loops = if ctrl.is_linear() { 1 } else { params.outer_loops.max(1) };

    // Innovation d = y - H x(w) at the current w, and the nonlinear cost.
    let mut innovations = |ctrl: &mut dyn ControlSpace, w: &[f64], d: &mut [f64]| -> Result<(f64, f64)> {
        ctrl.increment(w, &mut dx)?;
        p.h.apply(&dx, &mut hdx);
        for i in 0..m {
            d[i] = p.y[i] - p.hxb[i] - hdx[i];
        }
        Ok((0.5 * dot(w, w), jo_of(d, p.sigma)))
    };

    for k in 1..=outer_loops {
        let (jb, jo) = innovations(ctrl, &w, &mut d)?;
        check_finite("J", jb + jo)?;
        // b = -w + G^T R^-1 d: the negative gradient of the nonlinear J at w.
        let g0 = negative_gradient(ctrl, p, &w, &d, &mut tmp_obs, &mut tmp_state, &mut r)?;
        check_finite("|grad J|", g0)?;
        if k == 1 {
            j_initial = jb + jo;
            grad_initial = g0;
        }
        let rec = IterRecord { outer: k, inner: 0, j: jb + jo, jb, jo, grad: g0 };
        if params.verbose {
            eprintln!("{}", rec.line());
        }
        iters.push(rec);
        if g0 == 0.0 {
            break;
        }
        pdir.copy_from_slice(&r);
        // Normalised residuals, for full re-orthogonalisation: float32 TL/AD products otherwise lose conjugacy
        // after a few iterations (the operational CONGRAD/Lanczos practice).
        basis.clear();
        basis.push(&r, g0);
        dw.iter_mut().for_each(|v| *v = 0.0);
        gdw.iter_mut().for_each(|v| *v = 0.0);
        let mut rr = dot(&r, &r);
        let (mut alphas, mut betas) = (Vec::new(), Vec::new());
        for j in 1..=params.max_inner {
            // q = (I + G^T R^-1 G) p
            ctrl.tl(&pdir, &mut tmp_state)?;
            p.h.apply(&tmp_state, &mut gp);
            for i in 0..m {
                tmp_obs[i] = gp[i] / (p.sigma[i] * p.sigma[i]);
            }
            tmp_state.iter_mut().for_each(|v| *v = 0.0);
            p.h.adjoint(&tmp_obs, &mut tmp_state);
            ctrl.ad(&tmp_state, &mut q)?;
            for i in 0..n {
                q[i] += pdir[i];
            }
            inner_total += 1;
            let pq = dot(&pdir, &q);
            check_finite("p.Ap", pq)?;
            if pq <= 0.0 {
                return Err(Error::new(
                    Status::Solver,
                    format!("minimisation failed: non-positive curvature {pq:e} at outer {k}, inner {j} (TL/AD inconsistent?)"),
                ));
            }
            let alpha = rr / pq;
            alphas.push(alpha);
            for i in 0..n {
                dw[i] += alpha * pdir[i];
                r[i] -= alpha * q[i];
            }
            for i in 0..m {
                gdw[i] += alpha * gp[i];
            }
            basis.orthogonalise(&mut r);
            let rr_new = dot(&r, &r);
            if rr_new > 0.0 && j < params.max_inner {
                basis.push(&r, rr_new.sqrt());
            }
            let jb_q = 0.5 * w.iter().zip(&dw).map(|(a, b)| (a + b) * (a + b)).sum::<f64>();
            let jo_q = 0.5
                * (0..m).map(|i| ((d[i] - gdw[i]) / p.sigma[i]).powi(2)).sum::<f64>();
            let rec = IterRecord { outer: k, inner: j, j: jb_q + jo_q, jb: jb_q, jo: jo_q, grad: rr_new.sqrt() };
            if params.verbose {
                eprintln!("{}", rec.line());
            }
            iters.push(rec);
            if rr_new.sqrt() <= params.gradient_reduction * g0 {
                break;
            }
            let beta = rr_new / rr;
            betas.push(beta);
            rr = rr_new;
            for i in 0..n {
                pdir[i] = r[i] + beta * pdir[i];
            }
        }
        if !alphas.is_empty() {
            let (diag, off) = lanczos_tridiagonal(&alphas, &betas);
            let (min, max) = tridiagonal_extremes(&diag, &off);
            hessian_ritz.push(RitzRange { outer: k, iterations: alphas.len(), min, max });
        }
        for i in 0..n {
            w[i] += dw[i];
        }
    }
    // Exact nonlinear cost and gradient at the analysis.
    let (jb, jo) = innovations(ctrl, &w, &mut d)?;
    let analysis_dx = dx.clone();
    check_finite("J", jb + jo)?;
    let grad_final = negative_gradient(ctrl, p, &w, &d, &mut tmp_obs, &mut tmp_state, &mut r)?;
    let rec = IterRecord { outer: outer_loops + 1, inner: 0, j: jb + jo, jb, jo, grad: grad_final };
    if params.verbose {
        eprintln!("{}", rec.line());
    }
    iters.push(rec);
    let info = SolveInfo {
        iterations: iters,
        inner_total,
        j_initial,
        j_final: jb + jo,
        jb_final: jb,
        jo_final: jo,
        grad_initial,
        grad_final,
        grad_reduction: if grad_initial > 0.0 { grad_final / grad_initial } else { 0.0 },
        hessian_ritz,
    };
    Ok((w, analysis_dx, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    #[test]
    fn tridiagonal_extremes_match_the_closed_form_of_the_1d_laplacian() {
        // tridiag(-1, 2, -1) of size k: eigenvalues 2 - 2 cos(j pi / (k + 1)), j = 1..k
        let k = 50;
        let (lo, hi) = tridiagonal_extremes(&vec![2.0; k], &vec![-1.0; k - 1]);
        let ev = |j: f64| 2.0 - 2.0 * (j * std::f64::consts::PI / (k as f64 + 1.0)).cos();
        assert!((lo - ev(1.0)).abs() < 1e-11, "{lo} vs {}", ev(1.0));
        assert!((hi - ev(k as f64)).abs() < 1e-11, "{hi} vs {}", ev(k as f64));
    }

    #[test]
    fn ritz_values_of_a_full_cg_run_are_the_eigenvalues() {
        // CG on A = diag(1..=k) from a vector with all components: after k iterations the Lanczos tridiagonal
        // matrix is similar to A, so its extreme eigenvalues are 1 and k.
        let k = 12;
        let a: Vec<f64> = (1..=k).map(|v| v as f64).collect();
        let mut r = pseudo_random(k, 7);
        let mut p = r.clone();
        let mut rr = dot(&r, &r);
        let (mut alphas, mut betas) = (vec![], vec![]);
        for _ in 0..k {
            let q: Vec<f64> = a.iter().zip(&p).map(|(a, p)| a * p).collect();
            let alpha = rr / dot(&p, &q);
            alphas.push(alpha);
            r.iter_mut().zip(&q).for_each(|(r, q)| *r -= alpha * q);
            let rr_new = dot(&r, &r);
            betas.push(rr_new / rr);
            p = r.iter().zip(&p).map(|(r, p)| r + rr_new / rr * p).collect();
            rr = rr_new;
        }
        let (diag, off) = lanczos_tridiagonal(&alphas, &betas);
        let (lo, hi) = tridiagonal_extremes(&diag, &off);
        assert!((lo - 1.0).abs() < 1e-6 && (hi - k as f64).abs() < 1e-6, "Ritz range [{lo}, {hi}], expected [1, {k}]");
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
            .data
            .chunks_exact(n)
            .map(|b| b.iter().zip(&r).map(|(b, r)| *b as f64 * r).sum::<f64>().abs() / norm(&r))
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "largest |b.r|/|r| = {worst:e}");
        let dots = dot_lanes(&r, &basis.data[..n]);
        let plain: f64 = r.iter().zip(&basis.data[..n]).map(|(a, b)| a * *b as f64).sum();
        assert!((dots - plain).abs() <= 1e-12 * r0, "lane-ordered dot {dots} vs plain sum {plain}");
    }
}
