//! Step models for latent 4D-Var: one time step x_{k+1} = M(x_k) with its tangent-linear and adjoint.
//!
//! ```text
//! step:  x_next  = M(x)
//! TL:    dx_next = M'(x) dx
//! AD:    dx      = M'(x)^T dx_next
//! ```
//!
//! [`StepModel`] is the one interface the 4D-Var control transforms use. It is implemented by the bundle's ONNX
//! graphs ([`OnnxStep`], `[forecast]` in `docs/bundle-format.md`: latent z -> z or normalised model state
//! xn -> xn), by [`Normalised`] (an xn -> xn model seen in physical units) and by a host's callbacks
//! (`crate::coupling`).

use crate::bundle::{Bundle, ForecastSpace, StepRole};
use crate::error::{Error, Result};
use crate::model::backend::{ExecOptions, OnnxModel, TensorSpec};
use crate::model::scale::ChannelScale;

/// One time step of a forecast model with its tangent-linear and adjoint, on vectors of length
/// [`state_len`](StepModel::state_len). Every call writes its whole output.
pub trait StepModel {
    /// Length of the state the model steps.
    fn state_len(&self) -> usize;
    /// Time step, hours.
    fn time_step_hours(&self) -> f64;
    /// Short description for reports ("bundle latent step model", "host callbacks").
    fn describe(&self) -> String;
    /// x_next = M(x).
    fn step(&mut self, x: &[f64], x_next: &mut [f64]) -> Result<()>;
    /// dx_next = M'(x) dx.
    fn tl(&mut self, x: &[f64], dx: &[f64], dx_next: &mut [f64]) -> Result<()>;
    /// dx = M'(x)^T dx_next.
    fn ad(&mut self, x: &[f64], dx_next: &[f64], dx: &mut [f64]) -> Result<()>;
}

/// The bundle's step model: three ONNX graphs (float32, batch 1) loaded once.
#[derive(Debug)]
pub struct OnnxStep {
    step: OnnxModel,
    tl: OnnxModel,
    ad: OnnxModel,
    space: ForecastSpace,
    dt: f64,
    a: Vec<f32>,
    b: Vec<f32>,
    out: Vec<f32>,
}

impl OnnxStep {
    /// Loads the `[forecast]` graphs of `bundle` (checksums verified on the bytes loaded) and checks their names
    /// and shapes: latent space `z -> z_next`, `(z, dz) -> dz_next`, `(z, dz_next) -> dz` on the latent shape;
    /// model space `x -> x_next`, `(x, dx) -> dx_next`, `(x, dx_next) -> dx` on [channels, nlat, nlon].
    /// `None` when the bundle has no step model.
    pub fn load(bundle: &Bundle, opts: &ExecOptions) -> Result<Option<OnnxStep>> {
        let Some(f) = &bundle.forecast else { return Ok(None) };
        let lay = &bundle.layout;
        let dims: Vec<i64> = match f.space {
            ForecastSpace::Latent => std::iter::once(1).chain(bundle.latent_shape.iter().map(|&d| d as i64)).collect(),
            ForecastSpace::Model => vec![1, lay.nchan as i64, lay.grid.nlat() as i64, lay.grid.nlon() as i64],
        };
        let n = dims[1..].iter().product::<i64>() as usize;
        let (s, ds, ds_next, s_next) = match f.space {
            ForecastSpace::Latent => ("z", "dz", "dz_next", "z_next"),
            ForecastSpace::Model => ("x", "dx", "dx_next", "x_next"),
        };
        let spec = |name: &'static str| TensorSpec { name, dims: dims.clone() };
        let load = |role: StepRole, inputs: Vec<TensorSpec>, output: TensorSpec| -> Result<OnnxModel> {
            let bytes = bundle.step_bytes(role).expect("the bundle has a [forecast] table")?;
            OnnxModel::new(f.file(role), &bytes, opts, inputs, output)
        };
        Ok(Some(OnnxStep {
            step: load(StepRole::Step, vec![spec(s)], spec(s_next))?,
            tl: load(StepRole::StepTl, vec![spec(s), spec(ds)], spec(ds_next))?,
            ad: load(StepRole::StepAd, vec![spec(s), spec(ds_next)], spec(ds))?,
            space: f.space,
            dt: f.time_step_hours,
            a: vec![0f32; n],
            b: vec![0f32; n],
            out: vec![0f32; n],
        }))
    }

    /// The space the graphs work in.
    pub fn space(&self) -> ForecastSpace {
        self.space
    }

    fn run(&mut self, which: StepRole, x: &[f64], d: Option<&[f64]>, out: &mut [f64]) -> Result<()> {
        let n = self.a.len();
        if x.len() != n || d.is_some_and(|d| d.len() != n) || out.len() != n {
            return Err(Error::arg(format!("step model: vectors of length {n} expected")));
        }
        self.a.iter_mut().zip(x).for_each(|(a, x)| *a = *x as f32);
        match which {
            StepRole::Step => self.step.run(&[&self.a], &mut self.out)?,
            StepRole::StepTl | StepRole::StepAd => {
                self.b.iter_mut().zip(d.expect("TL/AD take a perturbation")).for_each(|(b, d)| *b = *d as f32);
                let m = if which == StepRole::StepTl { &mut self.tl } else { &mut self.ad };
                m.run(&[&self.a, &self.b], &mut self.out)?
            }
        }
        out.iter_mut().zip(&self.out).for_each(|(o, v)| *o = *v as f64);
        Ok(())
    }
}

impl StepModel for OnnxStep {
    fn state_len(&self) -> usize {
        self.a.len()
    }
    fn time_step_hours(&self) -> f64 {
        self.dt
    }
    fn describe(&self) -> String {
        format!("bundle step model ({} space, {} h)", self.space.name(), self.dt)
    }
    fn step(&mut self, x: &[f64], x_next: &mut [f64]) -> Result<()> {
        self.run(StepRole::Step, x, None, x_next)
    }
    fn tl(&mut self, x: &[f64], dx: &[f64], dx_next: &mut [f64]) -> Result<()> {
        self.run(StepRole::StepTl, x, Some(dx), dx_next)
    }
    fn ad(&mut self, x: &[f64], dx_next: &[f64], dx: &mut [f64]) -> Result<()> {
        self.run(StepRole::StepAd, x, Some(dx_next), dx)
    }
}

/// A step model on normalised states xn = (x - mean) / sd seen in physical units:
/// M(x) = mean + sd * M_n((x - mean) / sd), M'(x) dx = sd * M_n'(xn) (dx / sd), M'(x)^T g = M_n'(xn)^T (sd * g) / sd.
pub struct Normalised<'a> {
    inner: &'a mut dyn StepModel,
    scale: ChannelScale,
    xn: Vec<f64>,
    d: Vec<f64>,
}

impl<'a> Normalised<'a> {
    /// Wraps `inner` (length channels x `npoints`) with the per-channel normalisation `mean`, `sd`.
    pub fn new(inner: &'a mut dyn StepModel, mean: &'a [f64], sd: &'a [f64], npoints: usize) -> Self {
        let n = inner.state_len();
        Normalised { inner, scale: ChannelScale::new(mean, sd, npoints), xn: vec![0.0; n], d: vec![0.0; n] }
    }

    /// self.xn = N(x).
    fn normalise(&mut self, x: &[f64]) {
        self.xn.copy_from_slice(x);
        self.scale.normalise_in_place(&mut self.xn);
    }
}

impl StepModel for Normalised<'_> {
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
        self.normalise(x);
        self.inner.step(&self.xn, x_next)?;
        self.scale.denormalise_in_place(x_next);
        Ok(())
    }
    fn tl(&mut self, x: &[f64], dx: &[f64], dx_next: &mut [f64]) -> Result<()> {
        self.normalise(x);
        self.d.copy_from_slice(dx);
        self.scale.unscale_in_place(&mut self.d);
        self.inner.tl(&self.xn, &self.d, dx_next)?;
        self.scale.scale_in_place(dx_next);
        Ok(())
    }
    fn ad(&mut self, x: &[f64], dx_next: &[f64], dx: &mut [f64]) -> Result<()> {
        self.normalise(x);
        self.d.copy_from_slice(dx_next);
        self.scale.scale_in_place(&mut self.d);
        self.inner.ad(&self.xn, &self.d, dx)?;
        self.scale.unscale_in_place(dx);
        Ok(())
    }
}
