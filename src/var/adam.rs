//! Adam on the latent cost: the published reference algorithm of latent data assimilation (Fan et al. 2026), kept
//! as a comparison for the Gauss-Newton solver, not as a default.
//!
//! ```text
//! g_t = grad J(w_t)                          (one nonlinear map and one adjoint run)
//! m_t = b1 m_(t-1) + (1 - b1) g_t,   v_t = b2 v_(t-1) + (1 - b2) g_t^2
//! w_(t+1) = w_t - lr * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)      (b1 0.9, b2 0.999, eps 1e-8)
//! ```
//!
//! The learning rate starts at `adam_lr` (0.1) and is halved when J has not improved on its best value by 1e-4
//! (relative) for [`PATIENCE`] steps (PyTorch's ReduceLROnPlateau defaults, with a shorter patience for runs of
//! 50-100 steps). The analysis is the last iterate, as in the reference; J and the gradient are evaluated there once
//! more for the report.

use crate::error::Result;
use crate::var::solver::{ControlSpace, Evaluator, IterRecord, Problem, SolveInfo, SolverKind, SolverParams};

/// Steps without improvement before the learning rate is halved.
pub const PATIENCE: usize = 5;

/// Runs `params.adam_steps` Adam steps from w = 0; returns (w, dx(w), info) like the Gauss-Newton solver.
pub fn minimise(
    ctrl: &mut dyn ControlSpace,
    p: &Problem,
    params: &SolverParams,
) -> Result<(Vec<f64>, Vec<f64>, SolveInfo)> {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    let n = ctrl.size();
    let mut ev = Evaluator::new(p);
    let mut w = vec![0.0; n];
    let mut r = vec![0.0; n];
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let mut lr = params.adam_lr;
    let (mut best, mut since_best) = (f64::INFINITY, 0usize);
    let mut iters = Vec::with_capacity(params.adam_steps + 1);
    let (mut j_initial, mut grad_initial) = (f64::NAN, f64::NAN);
    let mut t = 0;
    loop {
        let (jb, jo) = ev.cost(ctrl, &w)?;
        // r = -grad J
        let g = ev.negative_gradient(ctrl, &w, &mut r)?;
        let j = jb + jo;
        if t == 0 {
            j_initial = j;
            grad_initial = g;
        }
        let rec = IterRecord { outer: 1, inner: t, j, jb, jo, grad: g, grad_mr: None, passes: ev.passes };
        if params.verbose {
            eprintln!("{} lr= {lr:.4e}", rec.line());
        }
        iters.push(rec);
        if t == params.adam_steps {
            let reached = g <= params.gradient_reduction * grad_initial;
            let info = SolveInfo {
                solver: SolverKind::Adam,
                iterations: iters,
                inner_total: 0,
                outer_total: t,
                passes: ev.passes,
                linearity_checks: 0,
                converged: reached,
                stop_reason: if reached {
                    "converged".to_string()
                } else {
                    format!(
                        "Adam runs a fixed number of steps (adam_steps = {}) and did not reach the gradient target",
                        params.adam_steps
                    )
                },
                j_initial,
                j_final: j,
                jb_final: jb,
                jo_final: jo,
                grad_initial,
                grad_final: g,
                grad_reduction: if grad_initial > 0.0 { g / grad_initial } else { 0.0 },
                hessian_ritz: Vec::new(),
                step_lengths: Vec::new(),
            };
            return Ok((w, ev.dx.clone(), info));
        }
        // learning rate on plateaus
        if j < best * (1.0 - 1e-4) {
            best = j;
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= PATIENCE {
                lr *= 0.5;
                since_best = 0;
            }
        }
        t += 1;
        let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for i in 0..n {
            let gi = -r[i];
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            w[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
        }
    }
}
