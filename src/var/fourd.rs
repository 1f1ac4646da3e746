//! Latent 4D-Var (method `l4dvar`): observations assimilated at their own times through a step model, strong
//! constraint, with the latent control vector of L3DVar.
//!
//! ```text
//! latent step model F (z -> z, the bundle's [forecast] space = "latent"):
//!   z_0(w) = z_b + s * w,   z_(j+1) = F(z_j),   dx_k(w) = sd * (D(z_(k n)(w)) - D(F^(k n)(z_b)))
//!   TL: dz_0 = s * dw, dz_(j+1) = F'(z_j) dz_j, dx_k = sd * D'(z_(k n)) dz_(k n)      AD: the chain reversed
//! model-space step model M (physical x -> x: the bundle's normalised graphs, or a host's callbacks):
//!   x_0(w) = x_b + dx_0(w) (the L3DVar transform),  x_(j+1) = M(x_j),   dx_k(w) = x_(k n)(w) - M^(k n)(x_b)
//!   TL: dx_0 = sd * D'(z_0)(s * dw), dx_(j+1) = M'(x_j) dx_j                         AD: the chain reversed
//! J(w) = 1/2 |w|^2 + 1/2 sum_k sum_i ((y_ik - H_ik(x_b,k) - H_ik(dx_k(w))) / sigma_ik)^2
//! ```
//!
//! sigma_ik is the observation error sd, optionally inflated to sigma sqrt(1 + g t_k) at slot time t_k (option
//! `error_growth_per_hour` = g): the step model's TL carries increments to later slots with an error of its own,
//! which this accounts for in the simplest way (strong constraint otherwise).
//!
//! k = 0..K are the time slots of the window [0, window_hours] (slot k at k * slot_hours), n the step-model steps
//! per slot; each observation belongs to the slot nearest its time. x_b,k is the background at slot k: given by
//! the host, or made by the step model from the analysis-time background (x_b + sd (D(F^(k n)(z_b)) - D(z_b)) for a
//! latent model, M^(k n)(x_b) for a model-space one).
//!
//! The control transforms below map w to the whole trajectory of increments [dx_0, dx_1, ..., dx_K] (slots
//! concatenated), and the observation operator reads each observation's slot
//! ([`ObsOperator::try_build_in_window`]): H stays one sparse matrix with an exact transpose, and the incremental
//! Gauss-Newton solver of L3DVar ([`minimise`]) runs unchanged. Each inner iteration costs K + 1 decoder TL and AD
//! runs and K n step-model TL and AD runs.
//!
//! Memory: the linearisation trajectory is stored per outer loop at every model step (no checkpointing): K n + 1
//! latent vectors for a latent model, K n states for a model-space one, plus the background trajectory (K + 1
//! states) and, in the solver, a few vectors of the time-extended state. At T31 (188,928 state values) with a 12 h
//! window of 6 h slots and a latent step model [`WindowInfo::trajectory_bytes`] reported 12.8 MB (the whole process
//! peaked at about 210 MB, most of it ONNX Runtime's).

use std::collections::BTreeMap;
use std::time::Instant;

use crate::bmat::diag_of_sqrt;
use crate::bundle::{Bundle, ForecastSpace};
use crate::diag::checks::TaylorRow;
use crate::error::{Error, Result, Status};
use crate::model::autoencoder::Autoencoder;
use crate::model::forecast::{Normalised, StepModel};
use crate::model::scale::ChannelScale;
use crate::numeric::{adjoint_test, DotTest};
use crate::obs::{Observation, QcFlag};
use crate::var::analysis::Analyser;
use crate::var::control::LatentControl;
use crate::var::formulation::{jb, Formulation, Minimised, Rows, Variance, VarianceFor};
use crate::var::guards;
use crate::var::options::{LatentForm, Method, OutputMode};
use crate::var::report::{Report, SlotStats, WindowInfo};
use crate::var::solver::{minimise, ControlSpace, Problem, SolverParams};

/// Most step-model steps a window may take.
pub const MAX_STEPS: usize = 10_000;

/// Window length when neither option `window_hours` nor the bundle's `[forecast] window_hours` gives one (rounded
/// up to a multiple of the slot width): ECMWF's operational 4D-Var window, and the one every 4D case of this
/// project uses (sample cases, demo, step-model validation).
pub const DEFAULT_WINDOW_HOURS: f64 = 12.0;

/// The assimilation window: slots at 0, slot_hours, ..., window_hours, each `steps_per_slot` model steps apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Window length, hours.
    pub window_hours: f64,
    /// Slot width, hours.
    pub slot_hours: f64,
    /// Number of slots.
    pub nslots: usize,
    /// Model steps per slot.
    pub steps_per_slot: usize,
    /// Model time step, hours.
    pub step_hours: f64,
}

impl Window {
    /// The window for a step model of time step `step_hours`: slot width `slot_hours` (default: the step; a
    /// multiple of it), window length `window_hours` (a multiple of the slot width; default:
    /// [`DEFAULT_WINDOW_HOURS`] rounded up to one). Never made from observation times: an observation outside the
    /// window is flagged (`slot_of`), it cannot stretch the window.
    pub fn new(step_hours: f64, slot_hours: Option<f64>, window_hours: Option<f64>) -> Result<Window> {
        if !(step_hours.is_finite() && step_hours > 0.0) {
            return Err(Error::arg(format!("the step model's time step {step_hours} h must be finite and > 0")));
        }
        let slot = slot_hours.unwrap_or(step_hours);
        let sps = (slot / step_hours).round();
        if !(sps >= 1.0) || (sps * step_hours - slot).abs() > 1e-6 * slot {
            return Err(Error::arg(format!(
                "slot_hours = {slot} is not a multiple of the step model's time step ({step_hours} h)"
            )));
        }
        let window = match window_hours {
            Some(w) => {
                if ((w / slot).round() * slot - w).abs() > 1e-6 * slot {
                    return Err(Error::arg(format!("window_hours = {w} is not a multiple of slot_hours = {slot}")));
                }
                w
            }
            None => (DEFAULT_WINDOW_HOURS / slot - 1e-9).ceil().max(0.0) * slot,
        };
        let nslots = (window / slot).round() as usize + 1;
        if (nslots - 1).saturating_mul(sps as usize) > MAX_STEPS {
            return Err(Error::arg(format!(
                "a {window} h window takes {} steps of {step_hours} h, more than {MAX_STEPS}",
                (nslots - 1) as f64 * sps
            )));
        }
        Ok(Window { window_hours: window, slot_hours: slot, nslots, steps_per_slot: sps as usize, step_hours })
    }

    /// Model steps from the first slot to the last.
    pub fn nsteps(&self) -> usize {
        (self.nslots - 1) * self.steps_per_slot
    }

    /// Time of slot k, hours.
    pub fn slot_time(&self, k: usize) -> f64 {
        k as f64 * self.slot_hours
    }

    /// The slot of an observation at time `t` (the nearest), or its QC flag: `Invalid` for a non-finite time,
    /// `OutsideWindow` outside [0, window_hours].
    pub fn slot_of(&self, t: f64) -> std::result::Result<usize, QcFlag> {
        if !t.is_finite() {
            return Err(QcFlag::Invalid);
        }
        let tol = 1e-9 * self.slot_hours;
        if t < -tol || t > self.window_hours + tol {
            return Err(QcFlag::OutsideWindow);
        }
        Ok(((t.max(0.0) / self.slot_hours).round() as usize).min(self.nslots - 1))
    }
}

pub use crate::var::report::StepClock;

/// A step model whose runs are timed.
pub struct Clocked<'a> {
    inner: &'a mut dyn StepModel,
    /// Timings so far.
    pub clock: StepClock,
}

impl<'a> Clocked<'a> {
    /// Times the runs of `inner`.
    pub fn new(inner: &'a mut dyn StepModel) -> Self {
        Clocked { inner, clock: StepClock::default() }
    }
}

impl StepModel for Clocked<'_> {
    fn state_len(&self) -> usize {
        self.inner.state_len()
    }
    fn time_step_hours(&self) -> f64 {
        self.inner.time_step_hours()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn step(&mut self, x: &[f64], x_next: &mut [f64]) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.step(x, x_next);
        self.clock.step_s += t.elapsed().as_secs_f64();
        self.clock.n_step += 1;
        r
    }
    fn tl(&mut self, x: &[f64], dx: &[f64], dx_next: &mut [f64]) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.tl(x, dx, dx_next);
        self.clock.tl_s += t.elapsed().as_secs_f64();
        self.clock.n_tl += 1;
        r
    }
    fn ad(&mut self, x: &[f64], dx_next: &[f64], dx: &mut [f64]) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.ad(x, dx_next, dx);
        self.clock.ad_s += t.elapsed().as_secs_f64();
        self.clock.n_ad += 1;
        r
    }
}

/// The background trajectory a 4D transform makes once and can hand to the next transform of the same analysis
/// (so a host's model is not run twice over the window).
#[derive(Debug, Clone)]
pub enum Reference {
    /// Latent step model: z at every step from z_b, and D(z) at every slot.
    Latent {
        /// F^j(z_b), j = 0..=nsteps.
        z: Vec<Vec<f64>>,
        /// D(F^(k n)(z_b)), k = 0..nslots (normalised).
        xn: Vec<Vec<f32>>,
    },
    /// Model-space step model: M^j(x_b), j = 0..=nsteps (physical units).
    Model(Vec<Vec<f64>>),
}

/// A 4D-Var control transform: w -> [dx_0, ..., dx_K] (see the module documentation), with the background
/// trajectory it makes.
pub trait Trajectory: ControlSpace {
    /// The background at every slot made by the step model (slots concatenated, physical units).
    fn background_trajectory(&self) -> Vec<f64>;
    /// The background trajectory, for a later transform of the same analysis.
    fn reference(&self) -> Reference;
    /// Bytes held for trajectories.
    fn trajectory_bytes(&self) -> usize;
}

/// x_j = M^j(x_0), j = 0..=nsteps; a step that returns a non-finite value is an error (a model blowing up).
fn integrate(m: &mut dyn StepModel, x0: Vec<f64>, nsteps: usize) -> Result<Vec<Vec<f64>>> {
    let mut traj = vec![x0];
    for j in 0..nsteps {
        let mut next = vec![0.0; traj[j].len()];
        m.step(&traj[j], &mut next)?;
        if let Some(i) = next.iter().position(|v| !v.is_finite()) {
            return Err(Error::new(
                Status::Backend,
                format!("{}: step {} returned a non-finite value at index {i}", m.describe(), j + 1),
            ));
        }
        traj.push(next);
    }
    Ok(traj)
}

fn vec_bytes<T>(v: &[Vec<T>]) -> usize {
    v.iter().map(|x| x.len() * std::mem::size_of::<T>()).sum()
}

fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The 4D transform of a latent step model F (z -> z): trajectory in latent space, decoded at each slot.
pub struct LatentTrajectory<'a> {
    ae: &'a mut Autoencoder,
    f: &'a mut dyn StepModel,
    win: Window,
    s: Vec<f64>,
    scale: ChannelScale,
    z_b: Vec<f32>,
    x_b: Vec<f64>,
    z_ref: Vec<Vec<f64>>,
    xn_ref: Vec<Vec<f32>>,
    /// Linearisation trajectory z_j, j = 0..=nsteps (the reference one in linear mode).
    z_lin: Vec<Vec<f64>>,
    /// The trajectory of the last `increment`, kept for a `linearize` at the same w.
    last: Option<(Vec<f64>, Vec<Vec<f64>>)>,
    linear: bool,
    bz: Vec<f32>,
    bz2: Vec<f32>,
    bx: Vec<f32>,
    dz: Vec<f64>,
    dz2: Vec<f64>,
}

impl<'a> LatentTrajectory<'a> {
    /// The transform around the background `x_b` (z_b = E(N(x_b))) with latent variance s^2 and the bundle's
    /// normalisation sd; `reference` reuses the background trajectory of an earlier transform. `linear`: the map
    /// linearised at the background trajectory (dx_k = sd D'(z_b,k) F'... (s w), a quadratic cost).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ae: &'a mut Autoencoder,
        f: &'a mut dyn StepModel,
        win: Window,
        bundle: &Bundle,
        latent_variance: &[f64],
        x_b: &[f64],
        z_b: Vec<f32>,
        reference: Option<Reference>,
        linear: bool,
    ) -> Result<Self> {
        let (nz, nx) = (z_b.len(), ae.state_len);
        if f.state_len() != nz {
            return Err(Error::arg(format!("latent step model of length {}, the latent size is {nz}", f.state_len())));
        }
        let mut t = LatentTrajectory {
            ae,
            f,
            s: latent_variance.iter().map(|v| v.sqrt()).collect(),
            scale: ChannelScale::for_increments(&bundle.std, bundle.layout.grid.npoints()),
            x_b: x_b.to_vec(),
            z_ref: Vec::new(),
            xn_ref: Vec::new(),
            z_lin: Vec::new(),
            last: None,
            linear,
            bz: vec![0f32; nz],
            bz2: vec![0f32; nz],
            bx: vec![0f32; nx],
            dz: vec![0.0; nz],
            dz2: vec![0.0; nz],
            z_b,
            win,
        };
        match reference {
            Some(Reference::Latent { z, xn }) => (t.z_ref, t.xn_ref) = (z, xn),
            _ => {
                let z0: Vec<f64> = t.z_b.iter().map(|&v| v as f64).collect();
                t.z_ref = t.run(z0)?;
                for k in 0..t.win.nslots {
                    let z: Vec<f32> = t.z_ref[k * t.win.steps_per_slot].iter().map(|&v| v as f32).collect();
                    let mut xn = vec![0f32; nx];
                    t.ae.decode(&z, &mut xn)?;
                    t.xn_ref.push(xn);
                }
            }
        }
        t.z_lin = t.z_ref.clone();
        Ok(t)
    }

    /// z_0(w) = z_b + s * w, rounded to the float32 the models take.
    fn z0(&self, w: &[f64]) -> Vec<f64> {
        self.z_b.iter().zip(&self.s).zip(w).map(|((zb, s), w)| (*zb as f64 + s * w) as f32 as f64).collect()
    }

    /// z_j = F^j(z_0), j = 0..=nsteps.
    fn run(&mut self, z0: Vec<f64>) -> Result<Vec<Vec<f64>>> {
        integrate(self.f, z0, self.win.nsteps())
    }

    fn slot(&self, j: usize) -> Option<usize> {
        j.is_multiple_of(self.win.steps_per_slot).then_some(j / self.win.steps_per_slot)
    }
}

impl ControlSpace for LatentTrajectory<'_> {
    fn size(&self) -> usize {
        self.z_b.len()
    }

    fn increment(&mut self, w: &[f64], dx: &mut [f64]) -> Result<()> {
        if self.linear {
            return self.tl(w, dx);
        }
        let traj = self.run(self.z0(w))?;
        let nx = self.bx.len();
        for k in 0..self.win.nslots {
            let z: Vec<f32> = traj[k * self.win.steps_per_slot].iter().map(|&v| v as f32).collect();
            self.ae.decode(&z, &mut self.bx)?;
            let out = &mut dx[k * nx..(k + 1) * nx];
            for (r, _, sd) in self.scale.channels() {
                for p in r {
                    out[p] = sd * (self.bx[p] as f64 - self.xn_ref[k][p] as f64);
                }
            }
        }
        self.last = Some((w.to_vec(), traj));
        Ok(())
    }

    fn linearize(&mut self, w: &[f64]) -> Result<()> {
        if self.linear {
            return Ok(());
        }
        self.z_lin = match self.last.take() {
            Some((lw, traj)) if same_bits(&lw, w) => traj,
            _ => self.run(self.z0(w))?,
        };
        Ok(())
    }

    fn tl(&mut self, dw: &[f64], dx: &mut [f64]) -> Result<()> {
        let nx = self.bx.len();
        self.dz.iter_mut().zip(&self.s).zip(dw).for_each(|((d, s), w)| *d = s * w);
        for j in 0..=self.win.nsteps() {
            if let Some(k) = self.slot(j) {
                self.bz.iter_mut().zip(&self.dz).for_each(|(b, d)| *b = *d as f32);
                self.bz2.iter_mut().zip(&self.z_lin[j]).for_each(|(b, z)| *b = *z as f32);
                self.ae.tl(&self.bz2, &self.bz, &mut self.bx)?;
                self.scale.scale_from_f32(&self.bx, &mut dx[k * nx..(k + 1) * nx]);
            }
            if j < self.win.nsteps() {
                self.f.tl(&self.z_lin[j], &self.dz, &mut self.dz2)?;
                std::mem::swap(&mut self.dz, &mut self.dz2);
            }
        }
        Ok(())
    }

    fn ad(&mut self, dx: &[f64], dw: &mut [f64]) -> Result<()> {
        let nx = self.bx.len();
        self.dz.iter_mut().for_each(|v| *v = 0.0);
        for j in (0..=self.win.nsteps()).rev() {
            if j < self.win.nsteps() {
                self.f.ad(&self.z_lin[j], &self.dz, &mut self.dz2)?;
                std::mem::swap(&mut self.dz, &mut self.dz2);
            }
            if let Some(k) = self.slot(j) {
                self.scale.scale_to_f32(&dx[k * nx..(k + 1) * nx], &mut self.bx);
                self.bz2.iter_mut().zip(&self.z_lin[j]).for_each(|(b, z)| *b = *z as f32);
                self.ae.ad(&self.bz2, &self.bx, &mut self.bz)?;
                self.dz.iter_mut().zip(&self.bz).for_each(|(d, b)| *d += *b as f64);
            }
        }
        dw.iter_mut().zip(&self.s).zip(&self.dz).for_each(|((w, s), d)| *w = s * d);
        Ok(())
    }

    fn is_linear(&self) -> bool {
        self.linear
    }
}

impl Trajectory for LatentTrajectory<'_> {
    fn background_trajectory(&self) -> Vec<f64> {
        let nx = self.bx.len();
        let mut out = vec![0.0; nx * self.win.nslots];
        for k in 0..self.win.nslots {
            for (r, _, sd) in self.scale.channels() {
                for p in r {
                    out[k * nx + p] = self.x_b[p] + sd * (self.xn_ref[k][p] as f64 - self.xn_ref[0][p] as f64);
                }
            }
        }
        out
    }
    fn reference(&self) -> Reference {
        Reference::Latent { z: self.z_ref.clone(), xn: self.xn_ref.clone() }
    }
    fn trajectory_bytes(&self) -> usize {
        let last = self.last.as_ref().map_or(0, |(_, t)| vec_bytes(t));
        vec_bytes(&self.z_ref) + vec_bytes(&self.xn_ref) + vec_bytes(&self.z_lin) + last + self.x_b.len() * 8
    }
}

/// The 4D transform of a model-space step model M on physical states: the initial-time transform `inner`
/// (L3DVar's) followed by M.
pub struct ModelTrajectory<'a, C> {
    inner: C,
    m: &'a mut dyn StepModel,
    win: Window,
    x_b: Vec<f64>,
    /// M^j(x_b), j = 0..=nsteps.
    x_ref: Vec<Vec<f64>>,
    /// Linearisation trajectory x_j, j = 0..nsteps (the reference one in linear mode).
    x_lin: Vec<Vec<f64>>,
    last: Option<(Vec<f64>, Vec<Vec<f64>>)>,
    linear: bool,
    d: Vec<f64>,
    d2: Vec<f64>,
}

impl<'a, C: ControlSpace> ModelTrajectory<'a, C> {
    /// The transform around the background `x_b`; `reference` reuses the background trajectory of an earlier
    /// transform; `linear`: M linearised at the background trajectory (with a linear `inner`: a quadratic cost).
    pub fn new(
        inner: C,
        m: &'a mut dyn StepModel,
        win: Window,
        x_b: &[f64],
        reference: Option<Reference>,
        linear: bool,
    ) -> Result<Self> {
        if m.state_len() != x_b.len() {
            return Err(Error::arg(format!(
                "model-space step model of length {}, the state has {}",
                m.state_len(),
                x_b.len()
            )));
        }
        let n = x_b.len();
        let mut t = ModelTrajectory {
            inner,
            m,
            win,
            x_b: x_b.to_vec(),
            x_ref: Vec::new(),
            x_lin: Vec::new(),
            last: None,
            linear,
            d: vec![0.0; n],
            d2: vec![0.0; n],
        };
        t.x_ref = match reference {
            Some(Reference::Model(x)) => x,
            _ => t.run(x_b.to_vec())?,
        };
        t.x_lin = t.x_ref.clone();
        Ok(t)
    }

    /// x_j = M^j(x_0), j = 0..=nsteps.
    fn run(&mut self, x0: Vec<f64>) -> Result<Vec<Vec<f64>>> {
        integrate(self.m, x0, self.win.nsteps())
    }

    /// The trajectory from x_b + inner(w).
    fn run_from(&mut self, w: &[f64]) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
        let mut d0 = vec![0.0; self.x_b.len()];
        self.inner.increment(w, &mut d0)?;
        let x0 = self.x_b.iter().zip(&d0).map(|(b, d)| b + d).collect();
        Ok((d0, self.run(x0)?))
    }
}

impl<C: ControlSpace> ControlSpace for ModelTrajectory<'_, C> {
    fn size(&self) -> usize {
        self.inner.size()
    }

    fn increment(&mut self, w: &[f64], dx: &mut [f64]) -> Result<()> {
        if self.linear {
            return self.tl(w, dx);
        }
        let n = self.x_b.len();
        let (d0, traj) = self.run_from(w)?;
        dx[..n].copy_from_slice(&d0);
        for k in 1..self.win.nslots {
            let j = k * self.win.steps_per_slot;
            dx[k * n..(k + 1) * n].iter_mut().zip(&traj[j]).zip(&self.x_ref[j]).for_each(|((d, x), r)| *d = x - r);
        }
        self.last = Some((w.to_vec(), traj));
        Ok(())
    }

    fn linearize(&mut self, w: &[f64]) -> Result<()> {
        if self.linear {
            return Ok(());
        }
        self.inner.linearize(w)?;
        self.x_lin = match self.last.take() {
            Some((lw, traj)) if same_bits(&lw, w) => traj,
            _ => self.run_from(w)?.1,
        };
        Ok(())
    }

    fn tl(&mut self, dw: &[f64], dx: &mut [f64]) -> Result<()> {
        let (n, sps) = (self.x_b.len(), self.win.steps_per_slot);
        self.inner.tl(dw, &mut self.d)?;
        dx[..n].copy_from_slice(&self.d);
        for j in 0..self.win.nsteps() {
            self.m.tl(&self.x_lin[j], &self.d, &mut self.d2)?;
            std::mem::swap(&mut self.d, &mut self.d2);
            if (j + 1).is_multiple_of(sps) {
                let k = (j + 1) / sps;
                dx[k * n..(k + 1) * n].copy_from_slice(&self.d);
            }
        }
        Ok(())
    }

    fn ad(&mut self, dx: &[f64], dw: &mut [f64]) -> Result<()> {
        let (n, sps, last) = (self.x_b.len(), self.win.steps_per_slot, self.win.nslots - 1);
        self.d.copy_from_slice(&dx[last * n..(last + 1) * n]);
        for j in (0..self.win.nsteps()).rev() {
            self.m.ad(&self.x_lin[j], &self.d, &mut self.d2)?;
            std::mem::swap(&mut self.d, &mut self.d2);
            if j.is_multiple_of(sps) {
                let k = j / sps;
                self.d.iter_mut().zip(&dx[k * n..(k + 1) * n]).for_each(|(a, b)| *a += b);
            }
        }
        self.inner.ad(&self.d, dw)
    }

    fn is_linear(&self) -> bool {
        self.linear && self.inner.is_linear()
    }
}

impl<C: ControlSpace> Trajectory for ModelTrajectory<'_, C> {
    fn background_trajectory(&self) -> Vec<f64> {
        (0..self.win.nslots).flat_map(|k| self.x_ref[k * self.win.steps_per_slot].iter().copied()).collect()
    }
    fn reference(&self) -> Reference {
        Reference::Model(self.x_ref.clone())
    }
    fn trajectory_bytes(&self) -> usize {
        let last = self.last.as_ref().map_or(0, |(_, t)| vec_bytes(t));
        vec_bytes(&self.x_ref) + vec_bytes(&self.x_lin) + last + 8 * self.x_b.len() * 3
    }
}

/// What a 4D-Var analysis needs beyond the analysis-time background.
#[derive(Default)]
pub struct FourD<'a> {
    /// Backgrounds given by the host at slot times, (hours, state in physical units and state layout). A slot
    /// without one uses the step model's trajectory from the analysis-time background.
    pub backgrounds: Vec<(f64, &'a [f64])>,
    /// A host step model on physical states (state layout); `None` uses the bundle's `[forecast]` model.
    pub model: Option<&'a mut dyn StepModel>,
}

/// Builds the 4D transform of the step model `m` (latent space or physical model space).
#[allow(clippy::too_many_arguments)]
fn transform<'b>(
    ae: &'b mut Autoencoder,
    m: &'b mut dyn StepModel,
    latent_space: bool,
    win: &Window,
    bundle: &Bundle,
    latent_variance: &[f64],
    x_b: &'b [f64],
    z_b: &[f32],
    reference: Option<Reference>,
    linear: bool,
) -> Result<Box<dyn Trajectory + 'b>> {
    if latent_space {
        return Ok(Box::new(LatentTrajectory::new(
            ae,
            m,
            win.clone(),
            bundle,
            latent_variance,
            x_b,
            z_b.to_vec(),
            reference,
            linear,
        )?));
    }
    let np = bundle.layout.grid.npoints();
    let inner = LatentControl::new(ae, x_b, z_b.to_vec(), latent_variance, &bundle.mean, &bundle.std, np, false)?
        .linear(linear);
    Ok(Box::new(ModelTrajectory::new(inner, m, win.clone(), x_b, reference, linear)?))
}

/// Adjoint test of one step model at `x`: |<M' dx, u> - <dx, M'^T u>| / max with random dx and u = r + c M' dx.
pub fn step_dot_test(m: &mut dyn StepModel, x: &[f64], seed: u64) -> Result<DotTest> {
    let n = m.state_len();
    adjoint_test(m, n, n, seed, |m, d, y| m.tl(x, d, y), |m, g, y| m.ad(x, g, y))
}

/// The self-tests of a step model (`latentda check`, `lda_l4dvar_check`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ForecastChecks {
    /// What was tested.
    pub step_model: String,
    /// Slots of the window the chained transform spans (one step-model step between slots).
    pub nslots: usize,
    /// Adjoint test of one step (TL/AD of the step model alone) at the background.
    pub step_dot: DotTest,
    /// Adjoint test of the chained 4D transform w -> [dx_0, ..., dx_K] (decoder and step model) at w = 0.
    pub chained_dot: DotTest,
    /// Taylor test of the chained transform's TL against its nonlinear increments, along a random control
    /// direction (a draw of the latent background error).
    pub taylor: Vec<TaylorRow>,
}

impl Analyser {
    /// Adjoint and Taylor tests of the step model (a host's, else the bundle's) and of the chained 4D-Var transform
    /// over `nslots` slots one step apart, at the background `x_b`. `None` when there is no step model.
    pub fn forecast_checks(
        &mut self,
        x_b: &[f64],
        model: Option<&mut dyn StepModel>,
        nslots: usize,
        eps_list: &[f64],
        seed: u64,
    ) -> Result<Option<ForecastChecks>> {
        self.check_state(x_b, "background")?;
        if nslots == 0 {
            return Err(Error::arg("the chained adjoint test needs at least one slot"));
        }
        let z_b = self.encode_background(x_b)?;
        let lv = self.latent_variance(1.0);
        let np = self.bundle.layout.grid.npoints();
        let mut normalised;
        let (m, latent_space): (&mut dyn StepModel, bool) = match (model, self.forecast.as_mut()) {
            (Some(m), _) => (m, false),
            (None, Some(f)) if f.space() == ForecastSpace::Latent => (f as &mut dyn StepModel, true),
            (None, Some(f)) => {
                normalised = Normalised::new(f, &self.bundle.mean, &self.bundle.std, np);
                (&mut normalised as &mut dyn StepModel, false)
            }
            (None, None) => return Ok(None),
        };
        let step_model = m.describe();
        let at: Vec<f64> = if latent_space { z_b.iter().map(|&v| v as f64).collect() } else { x_b.to_vec() };
        let step_dot = step_dot_test(m, &at, seed)?;
        let dt = m.time_step_hours();
        let win = Window::new(dt, None, Some(dt * (nslots - 1) as f64))?;
        let nx = self.bundle.layout.state_len() * win.nslots;
        let mut t = transform(&mut self.ae, m, latent_space, &win, &self.bundle, &lv, x_b, &z_b, None, false)?;
        t.linearize(&vec![0.0; t.size()])?;
        let chained_dot = crate::var::control::dot_test(&mut *t, nx, seed + 1)?;
        let taylor = crate::var::control::taylor_test(&mut *t, nx, eps_list, seed + 2)?;
        Ok(Some(ForecastChecks { step_model, nslots: win.nslots, step_dot, chained_dot, taylor }))
    }
}

/// The step model of a 4D analysis: the host's (physical units), else the bundle's (latent, or normalised model
/// space), timed into `clock`, lent to `f` with the ONNX sessions and the bundle.
fn with_step_model<R>(
    host: &mut Option<&mut dyn StepModel>,
    an: &mut Analyser,
    clock: Option<&mut StepClock>,
    f: impl FnOnce(&mut Autoencoder, &mut dyn StepModel, bool, &Bundle) -> Result<R>,
) -> Result<R> {
    let Analyser { ae, forecast, bundle, .. } = an;
    let np = bundle.layout.grid.npoints();
    let mut normalised;
    let (m, latent_space): (&mut dyn StepModel, bool) = match (host.as_deref_mut(), forecast.as_mut()) {
        (Some(m), _) => (m, false),
        (None, Some(f)) if f.space() == ForecastSpace::Latent => (f as &mut dyn StepModel, true),
        (None, Some(f)) => {
            normalised = Normalised::new(f, &bundle.mean, &bundle.std, np);
            (&mut normalised as &mut dyn StepModel, false)
        }
        (None, None) => {
            return Err(Error::new(
                Status::NotReady,
                format!(
                    "method l4dvar needs a step model: bundle '{}' has no [forecast] table and the host set none",
                    bundle.name
                ),
            ))
        }
    };
    let mut m = Clocked::new(m);
    let r = f(ae, &mut m, latent_space, bundle);
    if let Some(c) = clock {
        c.add(&m.clock);
    }
    r
}

/// Latent 4D-Var (method `l4dvar`) as a [`Formulation`]: observations at their own times (`Observation::time`,
/// hours from the analysis time `x_b` is valid at) through the bundle's step model or a host's. See the module
/// documentation. Output modes `analysis` and `increment` (at the analysis time).
pub struct FourDFormulation<'a> {
    backgrounds: Vec<(f64, &'a [f64])>,
    host: Option<&'a mut dyn StepModel>,
    clock: StepClock,
    latent_space: bool,
    step_model: String,
    growth: f64,
    win: Option<Window>,
    linear: bool,
    z_b: Vec<f32>,
    lv: Vec<f64>,
    reference: Option<Reference>,
    given: Vec<bool>,
    bytes: usize,
    nx: usize,
}

impl<'a> FourDFormulation<'a> {
    /// The formulation with the host's backgrounds and step model of `fourd`, output mode `mode`.
    pub fn new(mode: OutputMode, fourd: FourD<'a>) -> Result<FourDFormulation<'a>> {
        if mode == OutputMode::FullState {
            return Err(Error::arg("output 'full_state' exists only for method l3dvar, not l4dvar"));
        }
        let FourD { backgrounds, model } = fourd;
        Ok(FourDFormulation {
            backgrounds,
            host: model,
            clock: StepClock::default(),
            latent_space: false,
            step_model: String::new(),
            growth: 0.0,
            win: None,
            linear: false,
            z_b: Vec::new(),
            lv: Vec::new(),
            reference: None,
            given: Vec::new(),
            bytes: 0,
            nx: 0,
        })
    }

    fn win(&self) -> &Window {
        self.win.as_ref().expect("set by background()")
    }
}

impl Formulation for FourDFormulation<'_> {
    fn method(&self) -> Method {
        Method::L4dvar
    }

    /// The window, and the step model's background trajectory, made once; backgrounds given at slot times replace
    /// the step model's there.
    fn background(&mut self, an: &mut Analyser, x_b: &[f64]) -> Result<Vec<f64>> {
        for (t, x) in &self.backgrounds {
            an.check_state(x, &format!("background at {t} h"))?;
        }
        self.z_b = an.encode_background(x_b)?;
        self.lv = an.latent_variance(1.0);
        let o = &an.options;
        let (slot_hours, window_hours, linear) = (o.slot_hours, o.window_hours, o.latent_form() == LatentForm::Linear);
        let error_growth = o.error_growth_per_hour;
        // the bundle's error growth belongs to its own step model, not to a host's
        let host = self.host.is_some();
        let bundle_growth =
            if host { 0.0 } else { an.bundle.forecast.as_ref().map_or(0.0, |f| f.error_growth_per_hour) };
        self.growth = error_growth.unwrap_or(bundle_growth);
        // the window: option, else the bundle's [forecast] value, else the default; never the observations' times
        let bundle_window = an.bundle.forecast.as_ref().and_then(|f| f.window_hours);
        let (z_b, lv) = (std::mem::take(&mut self.z_b), std::mem::take(&mut self.lv));
        let (win, reference, x_bg, bytes, step_model, latent_space) =
            with_step_model(&mut self.host, an, Some(&mut self.clock), |ae, m, latent_space, bundle| {
                let step_model = format!("{}{}", m.describe(), if latent_space { "" } else { ", physical units" });
                let win = Window::new(m.time_step_hours(), slot_hours, window_hours.or(bundle_window))?;
                let t = transform(ae, m, latent_space, &win, bundle, &lv, x_b, &z_b, None, linear)?;
                Ok((
                    win.clone(),
                    t.reference(),
                    t.background_trajectory(),
                    t.trajectory_bytes(),
                    step_model,
                    latent_space,
                ))
            })?;
        (self.z_b, self.lv) = (z_b, lv);
        (self.linear, self.reference, self.bytes, self.step_model, self.latent_space) =
            (linear, Some(reference), bytes, step_model, latent_space);
        let nx = an.bundle.layout.state_len();
        self.nx = nx;
        let mut given: Vec<Option<&[f64]>> = vec![None; win.nslots];
        for (t, x) in &self.backgrounds {
            let k = match win.slot_of(*t) {
                Ok(k) if (win.slot_time(k) - t).abs() <= 1e-6 * win.slot_hours => k,
                _ => {
                    return Err(Error::arg(format!(
                        "a background is given at {t} h, which is not a slot time of the window (0 to {} h every {} h)",
                        win.window_hours, win.slot_hours
                    )))
                }
            };
            if given[k].is_some() {
                return Err(Error::arg(format!("two backgrounds are given at {t} h")));
            }
            given[k] = Some(x);
        }
        let mut x_bg = x_bg;
        for (k, g) in given.iter().enumerate() {
            if let Some(g) = g {
                x_bg[k * nx..(k + 1) * nx].copy_from_slice(g);
            }
        }
        self.given = given.iter().map(|g| g.is_some()).collect();
        self.win = Some(win);
        Ok(x_bg)
    }

    fn slots(&self, obs: &[Observation]) -> (Vec<std::result::Result<usize, QcFlag>>, usize) {
        let win = self.win();
        (obs.iter().map(|o| win.slot_of(o.time)).collect(), win.nslots)
    }

    /// Error variance sigma^2 (1 + g t_k) at slot time t_k (option error_growth_per_hour).
    fn sigma(&self, obs: &Observation, slot: usize) -> f64 {
        obs.sigma * (1.0 + self.growth * self.win().slot_time(slot)).sqrt()
    }

    /// The latent B propagated to each slot by the chained TL (the step model's runs here are not timed into the
    /// analysis' step-model clock: they are diag B time).
    fn variance(&mut self, an: &mut Analyser, x_b: &[f64], what: VarianceFor) -> Result<Variance> {
        let before = an.ae.timings.clone();
        let t_v = Instant::now();
        let samples = match what {
            VarianceFor::BackgroundCheck => an.options.bg_check_samples,
            VarianceFor::Guards => guards::VARIANCE_DRAWS,
        };
        let (win, reference, linear) = (self.win().clone(), self.reference.clone(), self.linear);
        let (z_b, lv) = (&self.z_b, &self.lv);
        let nx = an.bundle.layout.state_len();
        let (var, exact) = with_step_model(&mut self.host, an, None, |ae, m, latent_space, bundle| {
            let mut t = transform(ae, m, latent_space, &win, bundle, lv, x_b, z_b, reference, linear)?;
            t.linearize(&vec![0.0; t.size()])?;
            let n = t.size();
            diag_of_sqrt(n, nx * win.nslots, samples, |v, x| t.tl(v, x))
        })?;
        an.ae.timings = before;
        let latent_size = an.bundle.latent_size();
        // decoder TL runs, as for the other methods (each draw also runs the step model's TL)
        let n_tl = if exact { latent_size } else { samples } * win.nslots;
        let how = format!(
            "latent B propagated to each slot by the chained TL: {}",
            if exact { format!("exact ({latent_size} columns)") } else { format!("randomised, {samples} draws") }
        );
        Ok(Variance { var, how, seconds: t_v.elapsed().as_secs_f64(), n_tl })
    }

    fn minimise(
        &mut self,
        an: &mut Analyser,
        x_b: &[f64],
        problem: &Problem,
        params: &SolverParams,
    ) -> Result<Minimised> {
        let (win, reference, linear) = (self.win().clone(), self.reference.clone(), self.linear);
        let (z_b, lv) = (&self.z_b, &self.lv);
        let (w, dx, info) =
            with_step_model(&mut self.host, an, Some(&mut self.clock), |ae, m, latent_space, bundle| {
                let mut t = transform(ae, m, latent_space, &win, bundle, lv, x_b, z_b, reference, linear)?;
                minimise(&mut *t, problem, params)
            })?;
        Ok(Minimised { w, dx, info, reconstruction: None })
    }

    fn jb_parts(&self, _an: &Analyser, w: &[f64]) -> BTreeMap<String, f64> {
        BTreeMap::from([("latent".to_string(), jb(w))])
    }

    fn slot_hours(&self) -> Option<f64> {
        Some(self.win().slot_hours)
    }

    /// The window section: per-slot statistics, the step model, the trajectory's memory.
    fn finish(&mut self, report: &mut Report, r: &Rows) {
        let win = self.win().clone();
        let mut slot_stats: Vec<SlotStats> = (0..win.nslots)
            .map(|k| SlotStats { slot: k, time_hours: win.slot_time(k), ..Default::default() })
            .collect();
        for s in r.slots.iter().flatten() {
            slot_stats[*s].n_total += 1;
        }
        for (row, &i) in r.rows.iter().enumerate() {
            let o = &r.obs[i];
            let s = &mut slot_stats[r.slots[i].expect("a row of H has a slot")];
            let (b, a) = ((o.value - r.hxb[row]) / r.sigma[row], (o.value - r.hxa[row]) / r.sigma[row]);
            s.n_used += 1;
            s.jo_b += 0.5 * b * b;
            s.jo_a += 0.5 * a * a;
        }
        for s in &mut slot_stats {
            if s.n_used > 0 {
                s.omb_rms_normalised = (2.0 * s.jo_b / s.n_used as f64).sqrt();
                s.oma_rms_normalised = (2.0 * s.jo_a / s.n_used as f64).sqrt();
            }
        }
        report.window = Some(WindowInfo {
            window_hours: win.window_hours,
            slot_hours: win.slot_hours,
            nslots: win.nslots,
            step_hours: win.step_hours,
            error_growth_per_hour: self.growth,
            step_model: self.step_model.clone(),
            background_trajectory: self
                .given
                .iter()
                .map(|g| if *g { "host" } else { "step model" }.to_string())
                .collect(),
            trajectory_bytes: self.bytes + 8 * self.nx * win.nslots * 2,
            slots: slot_stats,
        });
    }

    fn step_clock(&self) -> Option<StepClock> {
        Some(self.clock.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_slots_and_defaults() {
        let w = Window::new(6.0, None, Some(12.0)).unwrap();
        assert_eq!((w.window_hours, w.nslots, w.steps_per_slot), (12.0, 3, 1));
        assert_eq!(w.slot_of(2.9), Ok(0));
        assert_eq!(w.slot_of(3.1), Ok(1));
        assert_eq!(w.slot_of(12.0), Ok(2));
        assert_eq!(w.slot_of(12.5), Err(QcFlag::OutsideWindow));
        assert_eq!(w.slot_of(-0.5), Err(QcFlag::OutsideWindow));
        assert_eq!(w.slot_of(f64::NAN), Err(QcFlag::Invalid));
        // far-future and far-past times are flagged, never an error (issue 25)
        for t in [1e6, 1e300, f64::MAX, -1e300] {
            assert_eq!(w.slot_of(t), Err(QcFlag::OutsideWindow), "{t}");
        }
        let w = Window::new(1.0, Some(3.0), Some(12.0)).unwrap();
        assert_eq!((w.nslots, w.steps_per_slot, w.nsteps()), (5, 3, 12));
        // the default window: 12 h, rounded up to a multiple of the slot width
        let w = Window::new(6.0, None, None).unwrap();
        assert_eq!((w.window_hours, w.nslots), (DEFAULT_WINDOW_HOURS, 3));
        assert_eq!(Window::new(1.0, None, None).unwrap().nslots, 13);
        assert_eq!(Window::new(12.0, None, None).unwrap().window_hours, 12.0);
        assert_eq!(Window::new(5.0, None, None).unwrap().window_hours, 15.0);
        assert_eq!(Window::new(24.0, None, None).unwrap().window_hours, 24.0);
        assert_eq!(Window::new(6.0, None, Some(0.0)).unwrap().nslots, 1);
        assert!(Window::new(6.0, Some(3.0), None).unwrap_err().message.contains("not a multiple of the step"));
        assert!(Window::new(6.0, None, Some(9.0)).unwrap_err().message.contains("not a multiple of slot_hours"));
        assert!(Window::new(1e-3, None, Some(1e3)).unwrap_err().message.contains("more than"));
    }
}
