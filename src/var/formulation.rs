//! What differs between the variational analyses, as one trait: the 3D methods (l3dvar, 3dvar, hybrid: one time
//! slot, [`crate::var::threed`]) and latent 4D-Var (a window of slots, [`crate::var::fourd`]). The sequence they
//! share (QC, H, the background check, minimisation, the divergence guards, the report) is written once, in
//! [`crate::var::pipeline`], over a window of slots; a 3D analysis is the one-slot window.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::obs::{Observation, QcFlag};
use crate::var::analysis::Analyser;
use crate::var::options::Method;
use crate::var::report::{Report, StepClock};
use crate::var::solver::{Problem, SolveInfo, SolverParams};

/// The diagonal of the B in force over the window (state layout per slot, slots concatenated) and what it cost.
#[derive(Debug, Clone, Default)]
pub struct Variance {
    /// diag B, one value per element of the window's trajectory.
    pub var: Vec<f64>,
    /// How it was obtained (the report's `background_check.sigma_b`).
    pub how: String,
    /// Seconds spent (reported as diag B time, apart from the solver's model runs).
    pub seconds: f64,
    /// Decoder TL runs spent.
    pub n_tl: usize,
}

/// Which estimate of diag B is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarianceFor {
    /// The background check's sigma_b (option `bg_check_samples` draws, or cached).
    BackgroundCheck,
    /// The divergence guards' scale when no background check ran ([`crate::var::guards::VARIANCE_DRAWS`] draws).
    Guards,
}

/// The minimiser's result: control vector, increment over the window, diagnostics, and (full-state output only) the
/// part of the increment that is the autoencoder's reconstruction error, which the guards leave out.
pub struct Minimised {
    /// Analysis control vector w_a.
    pub w: Vec<f64>,
    /// Increment dx(w_a) over the window's slots (physical units).
    pub dx: Vec<f64>,
    /// Solver diagnostics.
    pub info: SolveInfo,
    /// Full-state output: N^-1(D(z_b)) - x_b.
    pub reconstruction: Option<Vec<f64>>,
}

/// One variational formulation (see the module documentation). Every method gets the [`Analyser`] it runs in, so
/// a formulation holds no borrow of it between steps.
pub trait Formulation {
    /// The method.
    fn method(&self) -> Method;
    /// Prepares the B (and, over a window, the step model's background trajectory); returns the background at every
    /// slot (slot-major, `nslots` times the state length).
    fn background(&mut self, an: &mut Analyser, x_b: &[f64]) -> Result<Vec<f64>>;
    /// The slot of every observation (empty: all in slot 0) and the number of slots.
    fn slots(&self, obs: &[Observation]) -> (Vec<std::result::Result<usize, QcFlag>>, usize);
    /// Observation error sd of observation `i` as the analysis uses it (its slot `slot`).
    fn sigma(&self, obs: &Observation, slot: usize) -> f64;
    /// diag B of the B in force over the window.
    fn variance(&mut self, an: &mut Analyser, x_b: &[f64], what: VarianceFor) -> Result<Variance>;
    /// Minimises the cost function.
    fn minimise(
        &mut self,
        an: &mut Analyser,
        x_b: &[f64],
        problem: &Problem,
        params: &SolverParams,
    ) -> Result<Minimised>;
    /// J_b per control part.
    fn jb_parts(&self, an: &Analyser, w: &[f64]) -> BTreeMap<String, f64>;
    /// Slot width for the guards' messages (`None`: one slot).
    fn slot_hours(&self) -> Option<f64>;
    /// Formulation-specific report sections.
    fn finish(&mut self, report: &mut Report, rows: &Rows);
    /// Step-model timings, if a step model ran.
    fn step_clock(&self) -> Option<StepClock>;
}

/// The used observations' rows, for formulation-specific report sections.
pub struct Rows<'a> {
    /// Observations.
    pub obs: &'a [Observation],
    /// Observation index of each row.
    pub rows: &'a [usize],
    /// Slot of every observation.
    pub slots: &'a [std::result::Result<usize, QcFlag>],
    /// H x_b per row.
    pub hxb: &'a [f64],
    /// H x_a per row.
    pub hxa: &'a [f64],
    /// sigma_o per row as used.
    pub sigma: &'a [f64],
}

/// 1/2 |c|^2.
pub fn jb(c: &[f64]) -> f64 {
    0.5 * c.iter().map(|x| x * x).sum::<f64>()
}
