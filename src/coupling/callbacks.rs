//! A host's own forecast model as latentda's step model: the three C callbacks of `lda_set_step_model` (one time
//! step, its tangent-linear and its adjoint, on physical states in state layout) behind
//! [`StepModel`].
//!
//! Every call hands the callback latentda's own buffers (n values each), fills the output with NaN first, and checks
//! the status and the output: a non-zero status or a value left non-finite is an error naming the callback, so the
//! analysis fails cleanly (host arrays untouched) instead of running on garbage.

use std::ffi::c_void;

use crate::coupling::ffi::{LdaStepAdFn, LdaStepFn, LdaStepTlFn};
use crate::error::{Error, Result, Status};
use crate::model::forecast::StepModel;

/// The host's callbacks and their context pointer.
#[derive(Debug, Clone, Copy)]
pub struct HostStep {
    step: unsafe extern "C" fn(*mut c_void, usize, *const f64, *mut f64) -> i32,
    /// `None`: a nonlinear-only model (step given, TL and AD both NULL), which serves the online mix's forecasts
    /// (`mix_score = "model"`) but not latent 4D-Var.
    tl: Option<unsafe extern "C" fn(*mut c_void, usize, *const f64, *const f64, *mut f64) -> i32>,
    ad: Option<unsafe extern "C" fn(*mut c_void, usize, *const f64, *const f64, *mut f64) -> i32>,
    user: *mut c_void,
    n: usize,
    dt: f64,
}

impl HostStep {
    /// The host model of time step `time_step_hours` on states of `n` values: all three callbacks, or `step` alone
    /// (a nonlinear-only model: the TL and AD calls of latent 4D-Var then fail, naming what is missing).
    pub fn new(
        step: LdaStepFn,
        tl: LdaStepTlFn,
        ad: LdaStepAdFn,
        user: *mut c_void,
        n: usize,
        time_step_hours: f64,
    ) -> Result<HostStep> {
        let missing = |what: &str| {
            Error::new(Status::NullPointer, format!("lda_set_step_model: '{what}' is NULL (give all three callbacks, 'step' alone for a nonlinear-only model, or all three NULL to remove the host model)"))
        };
        if !(time_step_hours.is_finite() && time_step_hours > 0.0) {
            return Err(Error::arg(format!(
                "lda_set_step_model: time_step_hours = {time_step_hours} must be finite and > 0"
            )));
        }
        Ok(HostStep {
            step: step.ok_or_else(|| missing("step"))?,
            tl: if ad.is_some() { Some(tl.ok_or_else(|| missing("tl"))?) } else { tl },
            ad: if tl.is_some() { Some(ad.ok_or_else(|| missing("ad"))?) } else { ad },
            user,
            n,
            dt: time_step_hours,
        })
    }

    /// Checks a callback's status and output.
    fn check(&self, what: &str, rc: i32, out: &[f64]) -> Result<()> {
        if rc != 0 {
            return Err(Error::backend(format!("the host's step model callback '{what}' returned status {rc}")));
        }
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(Error::backend(format!(
                "the host's step model callback '{what}' left output value {i} non-finite ({}): it must write all {} values",
                out[i], self.n
            )));
        }
        Ok(())
    }

    /// The error of a TL or AD call on a model set with its nonlinear step alone.
    fn nonlinear_only(&self, what: &str) -> Error {
        Error::arg(format!(
            "the host's step model was set with 'step' alone (lda_set_step_model with tl and ad NULL): it has no '{what}' \
             callback, which latent 4D-Var needs (it serves the online mix, mix_score = \"model\")"
        ))
    }

    fn lengths(&self, a: usize, b: usize) -> Result<()> {
        if a != self.n || b != self.n {
            return Err(Error::arg(format!("host step model: vectors of {} values expected", self.n)));
        }
        Ok(())
    }
}

impl StepModel for HostStep {
    fn state_len(&self) -> usize {
        self.n
    }
    fn time_step_hours(&self) -> f64 {
        self.dt
    }
    fn describe(&self) -> String {
        format!("host step model callbacks ({} h)", self.dt)
    }
    fn step(&mut self, x: &[f64], x_next: &mut [f64]) -> Result<()> {
        self.lengths(x.len(), x_next.len())?;
        x_next.fill(f64::NAN);
        // SAFETY: the host's contract (lda_set_step_model): the callback reads n values at x and writes n values at
        // x_next, both of which latentda owns for the call.
        let rc = unsafe { (self.step)(self.user, self.n, x.as_ptr(), x_next.as_mut_ptr()) };
        self.check("step", rc, x_next)
    }
    fn tl(&mut self, x: &[f64], dx: &[f64], dx_next: &mut [f64]) -> Result<()> {
        self.lengths(x.len(), dx.len())?;
        self.lengths(dx_next.len(), dx.len())?;
        dx_next.fill(f64::NAN);
        let tl = self.tl.ok_or_else(|| self.nonlinear_only("tl"))?;
        // SAFETY: as in `step`.
        let rc = unsafe { tl(self.user, self.n, x.as_ptr(), dx.as_ptr(), dx_next.as_mut_ptr()) };
        self.check("tl", rc, dx_next)
    }
    fn ad(&mut self, x: &[f64], dx_next: &[f64], dx: &mut [f64]) -> Result<()> {
        self.lengths(x.len(), dx_next.len())?;
        self.lengths(dx.len(), dx_next.len())?;
        dx.fill(f64::NAN);
        let ad = self.ad.ok_or_else(|| self.nonlinear_only("ad"))?;
        // SAFETY: as in `step`.
        let rc = unsafe { ad(self.user, self.n, x.as_ptr(), dx_next.as_ptr(), dx.as_mut_ptr()) };
        self.check("ad", rc, dx)
    }
}
