//! The latent B's calibrated variance: diag(U U^T) of the latent B (bundle variances, factor 1) averaged over a set
//! of calibration states, stored in the bundle (`[statistics] latent_b_variance`, written by `latentda sigma-b`) and
//! used as the background check's default sigma_b (option `bg_check_sigma_b = "calibrated"`): no decoder TL runs
//! per analysis, the way operational background checks use static error statistics. The flow-dependent estimate at
//! each background (`bg_check_sigma_b = "flow"`) remains an option.

use crate::bmat::latent::LatentB;
use crate::bmat::BOperator;
use crate::error::{Error, Result};
use crate::numeric::Rng;
use crate::var::analysis::Analyser;

impl Analyser {
    /// The mean over `states` (state layout, physical units) of diag(U U^T) of the latent B linearised at each
    /// state, with the bundle's latent variances (factor 1): `draws` randomised draws per state (seeds distinct
    /// across states, so the sampling errors average down: relative standard error about sqrt(2 / (draws K))).
    pub fn climatological_latent_variance(&mut self, states: &[Vec<f64>], draws: usize) -> Result<Vec<f64>> {
        if states.is_empty() {
            return Err(Error::arg("states: the calibrated latent B variance needs at least one state"));
        }
        if draws == 0 {
            return Err(Error::arg("draws must be >= 1"));
        }
        let nx = self.bundle.layout.state_len();
        let np = self.bundle.layout.grid.npoints();
        let mut acc = vec![0.0; nx];
        let mut x = vec![0.0; nx];
        for (k, state) in states.iter().enumerate() {
            self.check_state(state, &format!("calibration state {k}"))?;
            let z = self.encode_background(state)?;
            let mut lb = LatentB::new(z, &self.bundle.latent_variance, &self.bundle.std, np);
            for i in 0..draws {
                let xi = Rng::new((k * draws + i) as u64 + 1).normals(lb.control_size());
                lb.sqrt(&mut self.ae, &xi, &mut x)?;
                acc.iter_mut().zip(&x).for_each(|(a, x)| *a += x * x);
            }
        }
        let n = (states.len() * draws) as f64;
        acc.iter_mut().for_each(|a| *a /= n);
        Ok(acc)
    }
}
