//! The latent B operator for hosts that keep their own variational system.
//!
//! ```text
//! U v   = N^-1'( D'(z_b) (s * v) ) = sd * D'(z_b)(s * v)     (control -> model-space increment, physical units)
//! U^T u = s * D'(z_b)^T (sd * u)
//! B_implied = U U^T
//! ```
//!
//! A host uses U as the control-variable transform (PDAF's cvt, SABER's multiplySqrt) and U^T as its adjoint
//! (cvt_adj, multiplySqrtAD); the control size is the latent size. The operator is linearised once per background
//! with [`LatentB::linearise`], then applied any number of times.

use crate::analysis::Analyser;
use crate::error::{Error, Result};
use crate::latent::normalise;

/// U and U^T linearised at z_b = E(N(x_b)). Holds only the linearisation point; the ONNX sessions stay in the
/// [`Analyser`] passed to each call.
#[derive(Debug, Clone)]
pub struct LatentB {
    z_b: Vec<f32>,
    s: Vec<f64>,
    bz: Vec<f32>,
    bx: Vec<f32>,
}

impl LatentB {
    /// Encodes x_b (physical units, state layout) and prepares U at z_b = E(N(x_b)).
    pub fn linearise(a: &mut Analyser, x_b: &[f64]) -> Result<LatentB> {
        a.check_state(x_b, "background")?;
        let b = &a.bundle;
        let np = b.layout.grid.npoints();
        let mut xn = vec![0f32; b.layout.state_len()];
        normalise(x_b, &b.mean, &b.std, np, &mut xn);
        let mut z_b = vec![0f32; b.latent_size()];
        a.ae.encode(&xn, &mut z_b)?;
        let s = a.bundle.latent_variance.iter().map(|v| v.sqrt()).collect();
        let (nz, nx) = (a.ae.latent_len, a.ae.state_len);
        Ok(LatentB { z_b, s, bz: vec![0f32; nz], bx: vec![0f32; nx] })
    }

    /// Control vector length n.
    pub fn control_size(&self) -> usize {
        self.z_b.len()
    }

    /// Model state length.
    pub fn state_len(&self) -> usize {
        self.bx.len()
    }

    fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
        if got != want {
            return Err(Error::arg(format!("{what} has length {got}, expected {want}")));
        }
        Ok(())
    }

    /// x = U v.
    pub fn sqrt(&mut self, a: &mut Analyser, v: &[f64], x: &mut [f64]) -> Result<()> {
        Self::check_len("control vector v", v.len(), self.control_size())?;
        Self::check_len("state increment x", x.len(), self.state_len())?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::data(format!("control vector v[{i}] = {} is not finite", v[i])));
        }
        for i in 0..v.len() {
            self.bz[i] = (self.s[i] * v[i]) as f32;
        }
        a.ae.tl(&self.z_b, &self.bz, &mut self.bx)?;
        let b = &a.bundle;
        let np = b.layout.grid.npoints();
        for (c, sd) in b.std.iter().enumerate() {
            for p in c * np..(c + 1) * np {
                x[p] = sd * self.bx[p] as f64;
            }
        }
        Ok(())
    }

    /// v = U^T x.
    pub fn sqrt_ad(&mut self, a: &mut Analyser, x: &[f64], v: &mut [f64]) -> Result<()> {
        Self::check_len("control vector v", v.len(), self.control_size())?;
        Self::check_len("state x", x.len(), self.state_len())?;
        if let Some(i) = x.iter().position(|x| !x.is_finite()) {
            return Err(Error::data(format!("x is not finite at {}", a.bundle.layout.describe_index(i))));
        }
        let b = &a.bundle;
        let np = b.layout.grid.npoints();
        for (c, sd) in b.std.iter().enumerate() {
            for p in c * np..(c + 1) * np {
                self.bx[p] = (sd * x[p]) as f32;
            }
        }
        a.ae.ad(&self.z_b, &self.bx, &mut self.bz)?;
        for i in 0..v.len() {
            v[i] = self.s[i] * self.bz[i] as f64;
        }
        Ok(())
    }
}
