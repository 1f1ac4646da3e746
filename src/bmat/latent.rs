//! The latent B operator for hosts that keep their own variational system.
//!
//! ```text
//! U v   = N^-1'( D'(z) (s * v) ) = sd * D'(z)(s * v)     (control -> model-space increment, physical units)
//! U^T u = s * D'(z)^T (sd * u)
//! B_implied = U U^T                                      (z = z_b = E(N(x_b)) for a host's B operator)
//! ```
//!
//! A host uses U as the control-variable transform (PDAF's cvt, SABER's multiplySqrt) and U^T as its adjoint
//! (cvt_adj, multiplySqrtAD); the control size is the latent size. The same operator, relinearised at each outer
//! loop, is the tangent-linear/adjoint pair of L3DVar's control transform ([`crate::var::control::LatentControl`]).

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::model::autoencoder::{encode_state, Autoencoder};

/// U and U^T linearised at a latent point z. Holds the point, s, the channel sd and scratch buffers; the ONNX
/// sessions are passed to each call. Lengths are checked here; finiteness of host input is checked by the host-facing
/// callers ([`crate::coupling::host::HostContext`]), which can name the variable and index at fault.
#[derive(Debug, Clone)]
pub struct LatentB {
    z: Vec<f32>,
    s: Vec<f64>,
    chan_sd: Vec<f64>,
    npoints: usize,
    bz: Vec<f32>,
    bx: Vec<f32>,
}

impl LatentB {
    /// U at latent point `z`, with latent variance s^2 and per-channel normalisation sd over `npoints` points.
    pub fn new(z: Vec<f32>, latent_variance: &[f64], chan_sd: &[f64], npoints: usize) -> LatentB {
        let nz = z.len();
        LatentB {
            z,
            s: latent_variance.iter().map(|v| v.sqrt()).collect(),
            chan_sd: chan_sd.to_vec(),
            npoints,
            bz: vec![0f32; nz],
            bx: vec![0f32; chan_sd.len() * npoints],
        }
    }

    /// Encodes x_b (physical units, state layout, finite values of the right length: the caller checks) and
    /// prepares U at z_b = E(N(x_b)).
    pub fn at_background(b: &Bundle, ae: &mut Autoencoder, x_b: &[f64]) -> Result<LatentB> {
        Self::check_len("background", x_b.len(), b.layout.state_len())?;
        let np = b.layout.grid.npoints();
        let z_b = encode_state(ae, x_b, &b.mean, &b.std, np)?;
        Ok(LatentB::new(z_b, &b.latent_variance, &b.std, np))
    }

    /// Moves the linearisation point to `z`.
    pub fn set_point(&mut self, z: Vec<f32>) {
        self.z = z;
    }

    /// Per-channel normalisation sd.
    pub fn chan_sd(&self) -> &[f64] {
        &self.chan_sd
    }

    /// sqrt of the latent variance, s.
    pub fn s(&self) -> &[f64] {
        &self.s
    }

    /// Control vector length n.
    pub fn control_size(&self) -> usize {
        self.z.len()
    }

    /// Model state length.
    pub fn state_len(&self) -> usize {
        self.bx.len()
    }

    pub(crate) fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
        if got != want {
            return Err(Error::arg(format!("{what} has length {got}, expected {want}")));
        }
        Ok(())
    }

    /// x = U v.
    pub fn sqrt(&mut self, ae: &mut Autoencoder, v: &[f64], x: &mut [f64]) -> Result<()> {
        Self::check_len("control vector v", v.len(), self.control_size())?;
        Self::check_len("state increment x", x.len(), self.state_len())?;
        for i in 0..v.len() {
            self.bz[i] = (self.s[i] * v[i]) as f32;
        }
        ae.tl(&self.z, &self.bz, &mut self.bx)?;
        let np = self.npoints;
        for (c, sd) in self.chan_sd.iter().enumerate() {
            for p in c * np..(c + 1) * np {
                x[p] = sd * self.bx[p] as f64;
            }
        }
        Ok(())
    }

    /// v = U^T x.
    pub fn sqrt_ad(&mut self, ae: &mut Autoencoder, x: &[f64], v: &mut [f64]) -> Result<()> {
        Self::check_len("control vector v", v.len(), self.control_size())?;
        Self::check_len("state x", x.len(), self.state_len())?;
        let np = self.npoints;
        for (c, sd) in self.chan_sd.iter().enumerate() {
            for p in c * np..(c + 1) * np {
                self.bx[p] = (sd * x[p]) as f32;
            }
        }
        ae.ad(&self.z, &self.bx, &mut self.bz)?;
        for i in 0..v.len() {
            v[i] = self.s[i] * self.bz[i] as f64;
        }
        Ok(())
    }
}
