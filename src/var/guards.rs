//! Divergence guards: the last checks of every analysis, before anything reaches a host (issue 25).
//!
//! A model that is broken without being unreadable (a TL or AD graph corrupted behind a valid checksum, a decoder
//! that blows up) lets every step of the minimisation "succeed" and ends in an absurd analysis. [`check`] turns that
//! into a [`Status::Solver`] error naming the guard, the variable and the size of the violation. Both analysis paths
//! ([`crate::Analyser::analyse_with`] and [`crate::Analyser::analyse_4d`]) call it after the minimisation and
//! return its error before writing anything, so host arrays stay untouched. Non-convergence alone is not an error:
//! it stays a warning in the report.
//!
//! The guards, in the order they are checked:
//! - `finite`: every increment (every slot of a 4D window) and every analysed value is finite;
//! - `cost`: J at the analysis <= J at the background (w = 0) + [`J_REL_TOL`] max(J at the background, 1);
//! - `increment`: per variable (and slot), the increment's RMS <= [`INCREMENT_SD_MULTIPLE`] times the RMS
//!   background-error standard deviation of the B in force;
//! - `bounds`: analysed values stay inside the physical bounds the bundle declares (`[bounds]` of `bundle.toml`);
//!   a point whose background is already outside may stay there, but the analysis may not move it further out.

use crate::bundle::grid::Layout;
use crate::error::{Error, Result, Status};
use crate::var::solver::SolveInfo;

/// Relative tolerance of the `cost` guard. J at w = 0 is exact (the increment is exactly 0 there); J at the
/// analysis carries the float32 round-off of the decoded increment, about 1e-7 relative: 1e-6 is ten times that.
/// The absolute part (1e-6 when J < 1) covers a background that already fits the observations.
pub const J_REL_TOL: f64 = 1e-6;

/// Largest increment RMS per variable, in units of the RMS background-error sd of the B in force. A variational
/// increment is a B-weighted pull towards the observations; over a whole field its RMS stays below about one sd
/// (observations are local), so 10 leaves a wide margin and still catches a diverged solver (1e10 and more).
pub const INCREMENT_SD_MULTIPLE: f64 = 10.0;

/// Draws of the B's square root that estimate its per-variable variance when the background check (`bg_check`
/// = 0) has not computed it: the RMS over a whole field needs few draws (its relative error is about
/// sqrt(2 / (draws x effective rank))), and 4 keep the cost at 4 TL runs.
pub const VARIANCE_DRAWS: usize = 4;

/// What the guards look at.
#[derive(Debug, Clone, Copy)]
pub struct Guarded<'a> {
    /// The solver's record (J at the background and at the analysis).
    pub info: &'a SolveInfo,
    /// The background, state layout.
    pub x_b: &'a [f64],
    /// The analysis written back, state layout.
    pub analysis: &'a [f64],
    /// The increments made by the solver, `nslots` states one after the other (one for the 3D methods). In the
    /// full-state mode: without the reconstruction error x_b - N^-1(D(z_b)), which is not the solver's doing.
    pub increment: &'a [f64],
    /// Background-error variance of the B in force, same layout as `increment` (estimated or exact).
    pub b_variance: &'a [f64],
    /// Per bundle variable: the bounds `[min, max]` the bundle declares, if any.
    pub bounds: &'a [Option<[f64; 2]>],
    /// Slot width in hours (4D windows), for the messages.
    pub slot_hours: Option<f64>,
}

fn guard_error(name: &str, what: String) -> Error {
    Error::new(
        Status::Solver,
        format!("divergence guard '{name}': {what}; the analysis was rejected (nothing written back)"),
    )
}

/// RMS over each variable's values of a per-value variance field of `nslots` states: sqrt(mean variance), slot-major.
pub fn rms_sd_by_variable(lay: &Layout, variance: &[f64], nslots: usize) -> Vec<f64> {
    let nx = lay.state_len();
    let mut out = Vec::with_capacity(nslots * lay.variables.len());
    for k in 0..nslots {
        for v in 0..lay.variables.len() {
            let r = lay.var_range(v);
            let n = r.len() as f64;
            let s: f64 = variance[k * nx + r.start..k * nx + r.end].iter().map(|x| x.max(0.0)).sum();
            out.push((s / n).sqrt());
        }
    }
    out
}

/// Runs the four guards (see the module documentation); the first that fires is the error.
pub fn check(lay: &Layout, g: &Guarded) -> Result<()> {
    let nx = lay.state_len();
    let nslots = g.increment.len() / nx;
    let slot_name = |k: usize| match g.slot_hours {
        Some(h) => format!(" at slot {k} ({} h)", k as f64 * h),
        None => String::new(),
    };
    // finite
    if let Some(i) = g.increment.iter().position(|v| !v.is_finite()) {
        let (k, j) = (i / nx, i % nx);
        return Err(guard_error(
            "finite",
            format!("the increment{} is {} at {}", slot_name(k), g.increment[i], lay.describe_index(j)),
        ));
    }
    if let Some(i) = g.analysis.iter().position(|v| !v.is_finite()) {
        return Err(guard_error("finite", format!("analysis is not finite at {}", lay.describe_index(i))));
    }
    // cost
    let (j0, j1) = (g.info.j_initial, g.info.j_final);
    let tol = J_REL_TOL * j0.abs().max(1.0);
    if !(j1 <= j0 + tol) {
        return Err(guard_error(
            "cost",
            format!(
                "J rose from {j0:.6e} at the background to {j1:.6e} at the analysis (+{:.3e}, tolerance {tol:.1e}); \
                 a corrupt tangent-linear or adjoint graph does this: run `latentda check` on the bundle",
                j1 - j0
            ),
        ));
    }
    // increment
    let sd = rms_sd_by_variable(lay, g.b_variance, nslots);
    for k in 0..nslots {
        for (v, var) in lay.variables.iter().enumerate() {
            let r = lay.var_range(v);
            let d = &g.increment[k * nx + r.start..k * nx + r.end];
            let rms = (d.iter().map(|x| x * x).sum::<f64>() / d.len() as f64).sqrt();
            let s = sd[k * lay.variables.len() + v];
            if rms > INCREMENT_SD_MULTIPLE * s {
                let u = &var.units;
                return Err(guard_error(
                    "increment",
                    format!(
                        "the increment of '{}'{} has RMS {rms:.4e} {u}, {:.3e} times the RMS background-error sd of \
                         the B in force ({s:.4e} {u}; the limit is {INCREMENT_SD_MULTIPLE} times)",
                        var.name,
                        slot_name(k),
                        if s > 0.0 { rms / s } else { f64::INFINITY }
                    ),
                ));
            }
        }
    }
    // bounds: the worst excess per variable; points the analysis did not move further out are allowed
    for (v, var) in lay.variables.iter().enumerate() {
        let Some([lo, hi]) = g.bounds.get(v).copied().flatten() else { continue };
        let (mut n, mut worst) = (0usize, None::<(f64, usize)>);
        for i in lay.var_range(v) {
            let (a, b) = (g.analysis[i], g.x_b[i]);
            let excess = if a < lo && a < b {
                lo - a
            } else if a > hi && a > b {
                a - hi
            } else {
                continue;
            };
            n += 1;
            if worst.is_none_or(|(e, _)| excess > e) {
                worst = Some((excess, i));
            }
        }
        if let Some((e, i)) = worst {
            let u = &var.units;
            return Err(guard_error(
                "bounds",
                format!(
                    "{n} analysed value(s) of '{}' leave the bundle's bounds [{lo}, {hi}] {u}; the worst, {} {u} at {}, \
                     is {e:.4e} {u} outside (background {})",
                    var.name,
                    g.analysis[i],
                    lay.describe_index(i),
                    g.x_b[i]
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::grid::{Grid, GridKind, Vertical, VerticalKind};
    use crate::var::solver::SolverKind;

    fn layout() -> Layout {
        let grid = Grid::new(GridKind::Regular, vec![45.0, -45.0], vec![0.0, 90.0, 180.0, 270.0]).unwrap();
        let vert = Vertical::new(VerticalKind::Sigma, vec![0.5, 0.9]).unwrap();
        Layout::new(grid, vert, vec![("t".into(), "K".into(), 2), ("ps".into(), "Pa".into(), 0)]).unwrap()
    }

    fn info(j0: f64, j1: f64) -> SolveInfo {
        SolveInfo {
            solver: SolverKind::GaussNewton,
            iterations: vec![],
            inner_total: 0,
            outer_total: 0,
            passes: 0,
            linearity_checks: 0,
            converged: false,
            stop_reason: String::new(),
            j_initial: j0,
            j_final: j1,
            jb_final: 0.0,
            jo_final: j1,
            grad_initial: 0.0,
            grad_final: 0.0,
            grad_reduction: 0.0,
            hessian_ritz: vec![],
            step_lengths: vec![],
        }
    }

    /// Each guard fires on its own violation, names itself, the variable and the size, and passes just inside.
    #[test]
    fn each_guard_fires_alone_and_names_itself() {
        let lay = layout();
        let n = lay.state_len();
        let x_b: Vec<f64> = (0..n).map(|i| if i < 16 { 250.0 } else { 1e5 }).collect();
        let var = vec![1.0; n];
        let bounds = vec![Some([150.0, 350.0]), None];
        let dx = vec![0.5; n];
        let an: Vec<f64> = x_b.iter().zip(&dx).map(|(b, d)| b + d).collect();
        let ok = info(100.0, 10.0);
        let g = Guarded {
            info: &ok,
            x_b: &x_b,
            analysis: &an,
            increment: &dx,
            b_variance: &var,
            bounds: &bounds,
            slot_hours: None,
        };
        check(&lay, &g).unwrap();
        // cost: just inside the tolerance passes, beyond it fails; NaN fails
        let edge = info(100.0, 100.0 + 0.9e-4);
        check(&lay, &Guarded { info: &edge, ..g }).unwrap();
        for j in [100.0 + 1.1e-4, f64::NAN] {
            let bad = info(100.0, j);
            let e = check(&lay, &Guarded { info: &bad, ..g }).unwrap_err();
            assert!(e.status == Status::Solver && e.message.contains("'cost'"), "{}", e.message);
        }
        let zero = info(0.0, 0.9e-6);
        check(&lay, &Guarded { info: &zero, ..g }).unwrap();
        // finite: in a later slot of the increment, and in the analysis
        let mut dx2 = [dx.clone(), dx.clone()].concat();
        dx2[n + 3] = f64::INFINITY;
        let var2 = [var.clone(), var.clone()].concat();
        let e = check(&lay, &Guarded { increment: &dx2, b_variance: &var2, slot_hours: Some(6.0), ..g }).unwrap_err();
        assert!(
            e.message.contains("'finite'") && e.message.contains("slot 1 (6 h)") && e.message.contains("inf"),
            "{}",
            e.message
        );
        let mut an2 = an.clone();
        an2[17] = f64::NAN;
        assert!(check(&lay, &Guarded { analysis: &an2, ..g }).unwrap_err().message.contains("analysis is not finite"));
        // increment: t at 11 sd fails, at 9 sd passes
        for (d, fires) in [(9.0, false), (11.0, true)] {
            let mut dx3 = dx.clone();
            dx3[..16].iter_mut().for_each(|x| *x = d);
            let an3: Vec<f64> = x_b.iter().zip(&dx3).map(|(b, d)| b + d).collect();
            let r = check(&lay, &Guarded { increment: &dx3, analysis: &an3, ..g });
            assert_eq!(r.is_err(), fires, "{d} sd: {r:?}");
            if let Err(e) = r {
                assert!(
                    e.message.contains("'increment'")
                        && e.message.contains("'t'")
                        && e.message.contains("1.100e1 times"),
                    "{}",
                    e.message
                );
            }
        }
        // bounds: leaving them fails (worst point named); a background already outside may stay, not go further
        let mut an4 = an.clone();
        an4[5] = 351.0;
        an4[6] = 360.0;
        let e = check(&lay, &Guarded { analysis: &an4, ..g }).unwrap_err();
        assert!(
            e.message.contains("'bounds'")
                && e.message.contains("2 analysed value(s) of 't'")
                && e.message.contains("1.0000e1 K outside"),
            "{}",
            e.message
        );
        let mut xb5 = x_b.clone();
        xb5[6] = 370.0;
        an4[5] = 300.0;
        check(&lay, &Guarded { analysis: &an4, x_b: &xb5, ..g }).unwrap();
        an4[6] = 371.0;
        assert!(check(&lay, &Guarded { analysis: &an4, x_b: &xb5, ..g }).is_err());
    }

    #[test]
    fn rms_sd_is_per_variable_and_slot() {
        let lay = layout();
        let n = lay.state_len();
        let mut var = vec![4.0; 2 * n];
        var[n + 16..].iter_mut().for_each(|v| *v = 9.0);
        assert_eq!(rms_sd_by_variable(&lay, &var, 2), [2.0, 2.0, 2.0, 3.0]);
    }
}
