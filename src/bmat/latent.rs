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
//!
//! diag(U U^T) ([`BOperator::variance`]) is computed exactly from the n columns U e_k when the control size n is at
//! most the sample count (default [`DEFAULT_VARIANCE_SAMPLES`], option `bg_check_samples`), else estimated from N draws
//! U xi_i (seeds 1..=N): var_p ~ 1/N sum_i (U xi_i)_p^2. For Gaussian xi each (U xi)_p^2 / var_p is chi-square with
//! one degree of freedom, so the estimate has a relative standard error sqrt(2/N) (25 % for N = 32, i.e. about
//! 12.5 % on the standard deviation), independent of the point.

use crate::bmat::{check_len, BOperator};
use crate::bundle::Bundle;
use crate::error::Result;
use crate::model::autoencoder::{encode_state, Autoencoder};
use crate::model::scale::ChannelScale;

/// Default number of draws for the randomised variance estimate (and the largest control size computed exactly).
pub const DEFAULT_VARIANCE_SAMPLES: usize = 32;

/// U and U^T linearised at a latent point z. Holds the point, s, the channel sd and scratch buffers; the ONNX
/// sessions are passed to each call. Lengths are checked here; finiteness of host input is checked by the host-facing
/// callers ([`crate::coupling::host::HostContext`]), which can name the variable and index at fault.
#[derive(Debug, Clone)]
pub struct LatentB {
    z: Vec<f32>,
    s: Vec<f64>,
    scale: ChannelScale,
    bz: Vec<f32>,
    bx: Vec<f32>,
    variance_samples: usize,
    variance: Option<Vec<f64>>,
}

impl LatentB {
    /// U at latent point `z`, with latent variance s^2 and per-channel normalisation sd over `npoints` points.
    pub fn new(z: Vec<f32>, latent_variance: &[f64], chan_sd: &[f64], npoints: usize) -> LatentB {
        let nz = z.len();
        LatentB {
            z,
            s: latent_variance.iter().map(|v| v.sqrt()).collect(),
            scale: ChannelScale::for_increments(chan_sd, npoints),
            bz: vec![0f32; nz],
            bx: vec![0f32; chan_sd.len() * npoints],
            variance_samples: DEFAULT_VARIANCE_SAMPLES,
            variance: None,
        }
    }

    /// Encodes x_b (physical units, state layout, finite values of the right length: the caller checks) and
    /// prepares U at z_b = E(N(x_b)).
    pub fn at_background(b: &Bundle, ae: &mut Autoencoder, x_b: &[f64]) -> Result<LatentB> {
        check_len("background", x_b.len(), b.layout.state_len())?;
        let np = b.layout.grid.npoints();
        let z_b = encode_state(ae, x_b, &b.mean, &b.std, np)?;
        Ok(LatentB::new(z_b, &b.latent_variance, &b.std, np))
    }

    /// Moves the linearisation point to `z` (and forgets the cached variance).
    pub fn set_point(&mut self, z: Vec<f32>) {
        self.z = z;
        self.variance = None;
    }

    /// The linearisation point z.
    pub fn point(&self) -> &[f32] {
        &self.z
    }

    /// Number of draws of the randomised variance estimate (>= 1); forgets a cached variance computed otherwise.
    pub fn set_variance_samples(&mut self, n: usize) {
        let n = n.max(1);
        if n != self.variance_samples {
            self.variance_samples = n;
            self.variance = None;
        }
    }

    /// Whether [`BOperator::variance`] is exact (control size <= sample count).
    pub fn variance_is_exact(&self) -> bool {
        self.control_size() <= self.variance_samples
    }

    /// Per-channel normalisation sd.
    pub fn chan_sd(&self) -> &[f64] {
        self.scale.sd()
    }

    /// sqrt of the latent variance, s.
    pub fn s(&self) -> &[f64] {
        &self.s
    }
}

impl BOperator for LatentB {
    fn control_size(&self) -> usize {
        self.z.len()
    }

    fn state_len(&self) -> usize {
        self.bx.len()
    }

    fn sqrt(&mut self, ae: &mut Autoencoder, v: &[f64], x: &mut [f64]) -> Result<()> {
        check_len("control vector v", v.len(), self.control_size())?;
        check_len("state increment x", x.len(), self.state_len())?;
        for i in 0..v.len() {
            self.bz[i] = (self.s[i] * v[i]) as f32;
        }
        ae.tl(&self.z, &self.bz, &mut self.bx)?;
        self.scale.scale_from_f32(&self.bx, x);
        Ok(())
    }

    fn sqrt_ad(&mut self, ae: &mut Autoencoder, x: &[f64], v: &mut [f64]) -> Result<()> {
        check_len("control vector v", v.len(), self.control_size())?;
        check_len("state x", x.len(), self.state_len())?;
        self.scale.scale_to_f32(x, &mut self.bx);
        ae.ad(&self.z, &self.bx, &mut self.bz)?;
        for i in 0..v.len() {
            v[i] = self.s[i] * self.bz[i] as f64;
        }
        Ok(())
    }

    fn variance(&mut self, ae: &mut Autoencoder) -> Result<&[f64]> {
        if self.variance.is_none() {
            let (n, m, samples) = (self.control_size(), self.state_len(), self.variance_samples);
            let (acc, _) = crate::bmat::diag_of_sqrt(n, m, samples, |v, x| self.sqrt(ae, v, x))?;
            self.variance = Some(acc);
        }
        Ok(self.variance.as_deref().expect("computed above"))
    }

    fn variance_method(&self) -> String {
        if self.variance_is_exact() {
            format!("latent B: exact ({} columns)", self.control_size())
        } else {
            let n = self.variance_samples;
            format!(
                "latent B: randomised, {n} draws (relative standard error of the variance sqrt(2/{n}) = {:.3})",
                (2.0 / n as f64).sqrt()
            )
        }
    }
}
