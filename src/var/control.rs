//! Control-variable transforms: the latent one of L3DVar, the static B of 3D-Var and their hybrid.
//!
//! ```text
//! z(w)  = z_b + s * w                                  (s = sqrt of the latent variance, elementwise)
//! dx(w) = sd * (D(z(w)) - D(z_b))                      (increment mode, default)
//! dx(w) = mean + sd * D(z(w)) - x_b                    (full-state mode)
//! TL:  dx = sd * D'(z_lin) (s * dw)        AD:  dw = s * D'(z_lin)^T (sd * dx)
//! ```
//!
//! `sd` and `mean` are the per-channel normalisation statistics, so dx is in physical units.
//!
//! Hybrid (method `hybrid`), control [w, v]:
//!
//! ```text
//! dx(w, v) = sd * (D(z_b + sqrt(alpha) s w) - D(z_b)) + sqrt(beta) P U_s v
//! TL:  sqrt(alpha) sd * D'(z_lin)(s * dw) + sqrt(beta) P U_s dv
//! ```
//!
//! alpha scales the latent variance inside the decoder's argument, so the latent part of the analysis stays a
//! decoded increment; at w = 0 the TL is the hybrid B's square root sqrt(alpha) U_l + sqrt(beta) P U_s.
//!
//! With `latent_increment = "linear"` the latent part is the latent B's square root at the background,
//! dx = sd * D'(z_b)(s * w): the cost is quadratic and one outer loop solves it exactly (the decoder's curvature is
//! then ignored; the nonlinear form follows it with further outer loops).

use crate::bmat::hybrid::Hybrid;
use crate::bmat::latent::LatentB;
use crate::bmat::static_b::StaticB;
use crate::bmat::BOperator;
use crate::diag::checks::TaylorRow;
use crate::error::Result;
use crate::model::autoencoder::Autoencoder;
use crate::numeric::{adjoint_test, DotTest, Rng};
use crate::var::solver::ControlSpace;

/// Latent control transform around a background. Its tangent-linear and adjoint are the latent B operator U
/// ([`LatentB`]) moved to the current linearisation point z(w_k).
pub struct LatentControl<'a> {
    ae: &'a mut Autoencoder,
    /// Background latent state z_b = E(N(x_b)).
    pub z_b: Vec<f32>,
    /// D(z_b), normalised.
    pub xn_zb: Vec<f32>,
    u: LatentB,
    chan_mean: Vec<f64>,
    x_b: &'a [f64],
    full_state: bool,
    linear: bool,
    buf_x: Vec<f32>,
}

impl<'a> LatentControl<'a> {
    /// Prepares the transform around the background `x_b` with latent background `z_b` = E(N(x_b)) and latent
    /// variance s^2 (`latent_variance`, already multiplied by the hybrid's alpha where that applies).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ae: &'a mut Autoencoder,
        x_b: &'a [f64],
        z_b: Vec<f32>,
        latent_variance: &[f64],
        mean: &[f64],
        sd: &[f64],
        npoints: usize,
        full_state: bool,
    ) -> Result<Self> {
        let nx = ae.state_len;
        let mut xn_zb = vec![0f32; nx];
        ae.decode(&z_b, &mut xn_zb)?;
        Ok(LatentControl {
            ae,
            u: LatentB::new(z_b.clone(), latent_variance, sd, npoints),
            z_b,
            xn_zb,
            chan_mean: mean.to_vec(),
            x_b,
            full_state,
            linear: false,
            buf_x: vec![0f32; nx],
        })
    }

    /// Uses the linear form dx = sd * D'(z_b)(s * w) (see the module documentation).
    pub fn linear(mut self, yes: bool) -> Self {
        self.linear = yes && !self.full_state;
        self
    }

    /// The ONNX sessions the transform borrows (for a further part of the control space that runs the decoder's TL,
    /// such as the latent ensemble B of [`crate::var::ensemble`]).
    pub(crate) fn ae(&mut self) -> &mut Autoencoder {
        self.ae
    }

    /// The ONNX sessions and the latent B at the linearisation point (s, sd, z) together, for a further latent part
    /// that shares the decoder's TL and AD runs (the fused latent hybrid EnVar of [`crate::var::ensemble`]).
    pub(crate) fn ae_and_latent_b(&mut self) -> (&mut Autoencoder, &LatentB) {
        (self.ae, &self.u)
    }

    /// z(w) = z_b + s * w.
    pub fn latent(&self, w: &[f64]) -> Vec<f32> {
        self.z_b.iter().zip(self.u.s()).zip(w).map(|((zb, s), w)| (*zb as f64 + s * w) as f32).collect()
    }
}

impl ControlSpace for LatentControl<'_> {
    fn size(&self) -> usize {
        self.z_b.len()
    }

    fn increment(&mut self, w: &[f64], dx: &mut [f64]) -> Result<()> {
        if self.linear {
            return self.u.sqrt(self.ae, w, dx);
        }
        let z = self.latent(w);
        self.ae.decode(&z, &mut self.buf_x)?;
        let np = self.buf_x.len() / self.chan_mean.len();
        for (c, s) in self.u.chan_sd().iter().enumerate() {
            for p in c * np..(c + 1) * np {
                dx[p] = if self.full_state {
                    self.chan_mean[c] + s * self.buf_x[p] as f64 - self.x_b[p]
                } else {
                    s * (self.buf_x[p] as f64 - self.xn_zb[p] as f64)
                };
            }
        }
        Ok(())
    }

    fn linearize(&mut self, w: &[f64]) -> Result<()> {
        if !self.linear {
            let z = self.latent(w);
            self.u.set_point(z);
        }
        Ok(())
    }

    fn tl(&mut self, dw: &[f64], dx: &mut [f64]) -> Result<()> {
        self.u.sqrt(self.ae, dw, dx)
    }

    fn ad(&mut self, dx: &[f64], dw: &mut [f64]) -> Result<()> {
        self.u.sqrt_ad(self.ae, dx, dw)
    }

    fn is_linear(&self) -> bool {
        self.linear
    }
}

/// The static B as a (linear) control transform: dx = U_s v.
impl ControlSpace for StaticB {
    fn size(&self) -> usize {
        StaticB::size(self)
    }
    fn increment(&mut self, w: &[f64], dx: &mut [f64]) -> Result<()> {
        self.sqrt_apply(w, dx);
        Ok(())
    }
    fn linearize(&mut self, _w: &[f64]) -> Result<()> {
        Ok(())
    }
    fn tl(&mut self, dw: &[f64], dx: &mut [f64]) -> Result<()> {
        self.sqrt_apply(dw, dx);
        Ok(())
    }
    fn ad(&mut self, dx: &[f64], dw: &mut [f64]) -> Result<()> {
        self.sqrt_adjoint(dx, dw);
        Ok(())
    }
    fn is_linear(&self) -> bool {
        true
    }
}

/// The hybrid control transform: the parts' transforms summed over [w, v] (weights folded into the parts or given).
impl<A: ControlSpace, B: ControlSpace> ControlSpace for Hybrid<A, B> {
    fn size(&self) -> usize {
        self.a.size() + self.b.size()
    }
    fn increment(&mut self, c: &[f64], dx: &mut [f64]) -> Result<()> {
        let na = self.a.size();
        self.forward(&mut (), na, c, dx, |a, _, w, x| a.increment(w, x), |b, _, v, x| b.increment(v, x))
    }
    fn linearize(&mut self, c: &[f64]) -> Result<()> {
        let (w, v) = c.split_at(self.a.size());
        self.a.linearize(w)?;
        self.b.linearize(v)
    }
    fn tl(&mut self, dc: &[f64], dx: &mut [f64]) -> Result<()> {
        let na = self.a.size();
        self.forward(&mut (), na, dc, dx, |a, _, w, x| a.tl(w, x), |b, _, v, x| b.tl(v, x))
    }
    fn ad(&mut self, dx: &[f64], dc: &mut [f64]) -> Result<()> {
        let na = self.a.size();
        self.backward(&mut (), na, dx, dc, |a, _, x, w| a.ad(x, w), |b, _, x, v| b.ad(x, v))
    }
    fn is_linear(&self) -> bool {
        self.a.is_linear() && self.b.is_linear()
    }
}

/// Adjoint test of a control transform's TL/AD at its current linearisation point: |<T dw, u> - <dw, T^T u>| /
/// max(...) with random dw and u = r + (|r| / |T dw|) T dw (so the products cannot cancel by chance); `state_len` is
/// the length of T's output.
pub fn dot_test(ctrl: &mut dyn ControlSpace, state_len: usize, seed: u64) -> Result<DotTest> {
    let n = ctrl.size();
    adjoint_test(ctrl, n, state_len, seed, |c, v, x| c.tl(v, x), |c, x, v| c.ad(x, v))
}

/// Taylor test of a control transform's TL at w = 0 along a random direction dw: the rows of
/// [`taylor_rows`](crate::diag::checks::taylor_rows) for the map eps -> dx(eps dw) (one-sided and central).
pub fn taylor_test(
    ctrl: &mut dyn ControlSpace,
    state_len: usize,
    eps_list: &[f64],
    seed: u64,
) -> Result<Vec<TaylorRow>> {
    let n = ctrl.size();
    let dw = Rng::new(seed).normals(n);
    ctrl.linearize(&vec![0.0; n])?;
    let mut tdw = vec![0.0; state_len];
    ctrl.tl(&dw, &mut tdw)?;
    let mut dx = vec![0.0; state_len];
    crate::diag::checks::taylor_rows(eps_list, &tdw, |e| {
        if e == 0.0 {
            return Ok(vec![0.0; state_len]);
        }
        let w: Vec<f64> = dw.iter().map(|v| e * v).collect();
        ctrl.increment(&w, &mut dx)?;
        Ok(dx.clone())
    })
}
