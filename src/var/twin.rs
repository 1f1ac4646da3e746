//! Perfect-B twin: what an analysis gains when the background error really is a draw of its B.
//!
//! For a background x_b, a network (the positions, variables and error sds of a set of observations) and a B,
//! each twin sample draws a background error e = U xi (xi ~ N(0, I), U the B's square root linearised at x_b),
//! takes x_t = x_b - e as the truth, makes observations H x_t + sigma eps (eps ~ N(0, 1)) at the network's points,
//! and analyses them from x_b with the same B and R. With linear latent increments the analysis is then the best
//! linear unbiased estimate for that B and R, up to the solver's convergence.
//!
//! The report says, per variable, how much of the background error such an analysis removes (area-weighted RMSE
//! ratio, analysis over background) and in how many samples it is worse than its background. A host compares it
//! with its own cycle: where its analyses gain much less, or are worse far more often, than the twin's, the
//! background errors are not like the B's (structure, not size: the twin has the B's size by construction). In a
//! levelled-off cycle the mean gain also equals the 6 h error growth (docs/robustness-matrix.md, "What the
//! worse-than-background share measures in a cycle").

use crate::diag::verify::weighted_rmse_by_var;
use crate::error::{Error, Result};
use crate::numeric::Rng;
use crate::obs::operator::ObsOperator;
use crate::obs::{Observation, QcFlag};
use crate::var::analysis::Analyser;
use crate::var::options::{BKind, LatentForm, Method};

/// One variable of a [`TwinReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct TwinVariable {
    /// Bundle variable name.
    pub name: String,
    /// Mean over the samples of the background RMSE (the size of the draws; area-weighted).
    pub background_rmse: f64,
    /// Mean over the samples of RMSE(analysis) / RMSE(background).
    pub ratio_mean: f64,
    /// Standard deviation of that ratio over the samples (0 for one sample).
    pub ratio_sd: f64,
    /// Share of the samples whose analysis RMSE exceeds the background's, 0..1.
    pub worse_share: f64,
}

/// Result of [`Analyser::perfect_b_twin`].
#[derive(Debug, Clone, PartialEq)]
pub struct TwinReport {
    /// The method analysed (and whose B the errors were drawn from).
    pub method: Method,
    /// Samples drawn.
    pub samples: usize,
    /// Observations of the network that passed the geometric checks (the others are left out of every sample).
    pub observations_used: usize,
    /// Per bundle variable, in bundle order.
    pub variables: Vec<TwinVariable>,
}

impl Analyser {
    /// The perfect-B twin (module doc) of `method` at background `x_b` with the network of `obs` (their values are
    /// not used), `samples` draws from seeds `seed`, `seed + 1`, ... Runs with the options in force, except that the
    /// latent increments are linear (so the B analysed is the B drawn from) and no `adaptive_state` is read or
    /// written; the options are restored afterwards, also on failure. `l4dvar` has no single-time B: refused.
    pub fn perfect_b_twin(
        &mut self,
        x_b: &[f64],
        obs: &[Observation],
        method: Method,
        samples: usize,
        seed: u64,
    ) -> Result<TwinReport> {
        let kind = match method {
            Method::Var3d => BKind::Static,
            Method::Hybrid => BKind::Hybrid,
            Method::L3dvar => BKind::Latent,
            Method::L4dvar => return Err(Error::arg("twin: method l4dvar has no single-time B to draw from")),
        };
        if samples == 0 {
            return Err(Error::arg("twin: samples must be >= 1"));
        }
        self.check_state(x_b, "twin background")?;
        let saved = self.options().clone();
        let mut o = saved.clone();
        o.latent_increment = Some(LatentForm::Linear);
        o.adaptive_state = None;
        (o.mix_candidates, o.mix_state) = (None, None);
        self.set_options(o)?;
        let out = self.twin_samples(x_b, obs, method, kind, samples, seed);
        self.set_options(saved)?;
        out
    }

    fn twin_samples(
        &mut self,
        x_b: &[f64],
        obs: &[Observation],
        method: Method,
        kind: BKind,
        samples: usize,
        seed: u64,
    ) -> Result<TwinReport> {
        let lay = self.bundle.layout.clone();
        let nvar = lay.variables.len();
        let mut flags = vec![QcFlag::Used; obs.len()];
        let h = ObsOperator::try_build(&lay, obs, &mut flags, &[])?;
        let used: Vec<usize> = (0..obs.len()).filter(|&i| flags[i] == QcFlag::Used).collect();
        if used.is_empty() {
            return Err(Error::arg("twin: no observation of the network passed the geometric checks"));
        }
        let z = if kind == BKind::Static { None } else { Some(self.encode_background(x_b)?) };
        let n = self.prepare_b(kind, z.as_deref())?;
        let (mut bg, mut ratios) = (vec![0.0; nvar], vec![Vec::with_capacity(samples); nvar]);
        let (mut e, mut hx) = (vec![0.0; lay.state_len()], vec![0.0; h.nrows()]);
        for k in 0..samples {
            let mut rng = Rng::new(seed.wrapping_add(k as u64));
            let xi = rng.normals(n);
            self.with_b(kind, |b, ae| b.sqrt(ae, &xi, &mut e))?;
            let x_t: Vec<f64> = x_b.iter().zip(&e).map(|(b, e)| b - e).collect();
            h.apply(&x_t, &mut hx);
            // H x_t of observation i (rows are ordered by location; `rows` maps them back), plus its error
            let mut value = vec![0.0; obs.len()];
            for (row, &i) in h.rows.iter().enumerate() {
                value[i] = hx[row];
            }
            let noise = rng.normals(used.len());
            let twin_obs: Vec<Observation> = used
                .iter()
                .zip(&noise)
                .map(|(&i, eps)| Observation { value: value[i] + obs[i].sigma * eps, ..obs[i].clone() })
                .collect();
            let x_a = self.analyse(x_b, &twin_obs, method)?.analysis;
            let (rb, ra) = (weighted_rmse_by_var(&lay, x_b, &x_t), weighted_rmse_by_var(&lay, &x_a, &x_t));
            for v in 0..nvar {
                bg[v] += rb[v] / samples as f64;
                ratios[v].push(if rb[v] > 0.0 { ra[v] / rb[v] } else { 1.0 });
            }
        }
        let variables = (0..nvar)
            .map(|v| {
                let r = &ratios[v];
                let mean = r.iter().sum::<f64>() / r.len() as f64;
                let sd = if r.len() > 1 {
                    (r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (r.len() - 1) as f64).sqrt()
                } else {
                    0.0
                };
                TwinVariable {
                    name: lay.variables[v].name.clone(),
                    background_rmse: bg[v],
                    ratio_mean: mean,
                    ratio_sd: sd,
                    worse_share: r.iter().filter(|&&x| x > 1.0).count() as f64 / r.len() as f64,
                }
            })
            .collect();
        Ok(TwinReport { method, samples, observations_used: used.len(), variables })
    }
}
