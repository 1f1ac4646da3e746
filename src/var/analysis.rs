//! The analysis driver: background checks, quality control, minimisation, diagnostics.
//!
//! [`Analyser`] owns an opened bundle and its ONNX sessions; [`Analyser::analyse`] takes a background state (the
//! channel-major layout of [`crate::bundle::grid`]) and observations and returns the analysis, the per-observation QC flags
//! and the report. It never modifies its inputs; callers write results back only on success.

use std::path::Path;
use std::time::Instant;

use crate::model::autoencoder::Autoencoder;
use crate::bundle::Bundle;
use crate::error::{Error, Result, Status};
use crate::obs::{Observation, QcFlag};
use crate::obs::operator::ObsOperator;
use crate::var::options::{Method, Options, OutputMode};
use crate::var::report::{Report, Timings, VarStats};
use crate::var::solver::{minimise, ControlSpace, Problem};

/// An opened bundle with its ONNX sessions and options: the object a host keeps for the life of its run.
///
/// ```
/// use latentda::{Analyser, Method, Options};
///
/// let mut a = Analyser::open("tests/fixtures/tanh", Options::default())?;
/// let layout = a.bundle.layout.clone();
/// let x_b = latentda::bundle::ncio::read_state("tests/fixtures/tanh/sample/background.nc".as_ref(), &layout)?;
/// let (obs, _bad_rows) = latentda::obs::read_csv("tests/fixtures/tanh/sample/obs.csv".as_ref(), &layout)?;
/// let result = a.analyse(&x_b, &obs, Method::L3dvar)?;
/// let solver = result.report.solver.as_ref().unwrap();
/// assert!(solver.j_final < solver.j_initial);
/// assert_eq!(result.qc.len(), obs.len());
/// # Ok::<(), latentda::Error>(())
/// ```
#[derive(Debug)]
pub struct Analyser {
    /// The validated bundle.
    pub bundle: Bundle,
    /// ONNX sessions.
    pub ae: Autoencoder,
    /// Options in force.
    pub options: Options,
}

/// The result of one analysis.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The field selected by the output mode (analysis, increment or full decoded state), state layout.
    pub output: Vec<f64>,
    /// The analysis state x_a.
    pub analysis: Vec<f64>,
    /// QC flag of every observation, input order.
    pub qc: Vec<QcFlag>,
    /// Report.
    pub report: Report,
}

impl Analyser {
    /// Opens and validates the bundle, initialises the backend and loads the four ONNX graphs.
    pub fn open(bundle_dir: impl AsRef<Path>, options: Options) -> Result<Analyser> {
        options.validate()?;
        let bundle = Bundle::open(bundle_dir)?;
        let ae = Autoencoder::load(&bundle, &options.exec()?)?;
        Ok(Analyser { bundle, ae, options })
    }

    /// Checks a background state: length and finiteness (the error names variable and index).
    pub fn check_state(&self, x: &[f64], what: &str) -> Result<()> {
        let lay = &self.bundle.layout;
        if x.len() != lay.state_len() {
            return Err(Error::arg(format!("{what} has {} values, the bundle state has {}", x.len(), lay.state_len())));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::data(format!("{what}: non-finite value {} in {}", x[i], lay.describe_index(i))));
        }
        Ok(())
    }

    /// The latent B operator U at z_b = E(N(x_b)), for hosts with their own minimiser.
    pub fn latent_b(&mut self, x_b: &[f64]) -> Result<crate::bmat::latent::LatentB> {
        self.check_state(x_b, "background")?;
        crate::bmat::latent::LatentB::at_background(&self.bundle, &mut self.ae, x_b)
    }

    /// Runs one analysis with the options' output mode.
    pub fn analyse(&mut self, x_b: &[f64], obs: &[Observation], method: Method) -> Result<Analysis> {
        let mode = OutputMode::parse(&self.options.output)?;
        self.analyse_with(x_b, obs, method, mode)
    }

    /// Runs one analysis with an explicit output mode.
    pub fn analyse_with(&mut self, x_b: &[f64], obs: &[Observation], method: Method, mode: OutputMode) -> Result<Analysis> {
        let t_start = Instant::now();
        self.check_state(x_b, "background")?;
        self.ae.timings = Default::default();
        let lay = self.bundle.layout.clone();
        let mut qc = vec![QcFlag::Used; obs.len()];
        let t_h = Instant::now();
        let floors = crate::obs::sigma_floors(&lay, &self.bundle.std);
        let mut h = ObsOperator::try_build(&lay, obs, &mut qc, &floors)?;
        let mut hxb = vec![0.0; h.nrows()];
        h.apply(x_b, &mut hxb);
        // Background check with sigma_b interpolated from the baseline sd when the bundle has one.
        let k = self.options.bg_check;
        if k > 0.0 {
            let sigb = match &self.bundle.baseline {
                Some(b) => {
                    let mut s = vec![0.0; h.nrows()];
                    h.apply(&b.sd, &mut s);
                    s
                }
                None => vec![0.0; h.nrows()],
            };
            let mut keep = vec![true; h.nrows()];
            for r in 0..h.nrows() {
                let o = &obs[h.rows[r]];
                let d = o.value - hxb[r];
                if d.abs() > k * (o.sigma * o.sigma + sigb[r] * sigb[r]).sqrt() {
                    keep[r] = false;
                    qc[h.rows[r]] = QcFlag::BackgroundCheck;
                }
            }
            let hxb_all = hxb.clone();
            h.retain(|r| keep[r]);
            hxb = hxb_all.into_iter().zip(&keep).filter(|(_, k)| **k).map(|(v, _)| v).collect();
        }
        let mut h_s = t_h.elapsed().as_secs_f64();
        let y: Vec<f64> = h.rows.iter().map(|&i| obs[i].value).collect();
        let sigma: Vec<f64> = h.rows.iter().map(|&i| obs[i].sigma).collect();
        let problem = Problem { h: &h, y: &y, sigma: &sigma, hxb: &hxb };
        let params = self.options.solver();
        let np = lay.grid.npoints();
        let full_state = mode == OutputMode::FullState;
        let (control_size, dx, info) = match method {
            Method::L3dvar => {
                let b = &self.bundle;
                let mut ctrl = crate::var::control::LatentControl::new(
                    &mut self.ae,
                    x_b,
                    &b.latent_variance,
                    &b.mean,
                    &b.std,
                    np,
                    full_state,
                )?;
                let n = ctrl.size();
                let (_, dx, info) = minimise(&mut ctrl, &problem, &params)?;
                (n, dx, info)
            }
            Method::Var3d => {
                if full_state {
                    return Err(Error::arg("output 'full_state' exists only for method l3dvar"));
                }
                let base = self.bundle.baseline.as_ref().ok_or_else(|| {
                    Error::new(
                        Status::NotReady,
                        format!("method 3dvar needs baseline statistics, but bundle '{}' has none", self.bundle.name),
                    )
                })?;
                let mut ctrl = crate::bmat::static_b::StaticB::new(&lay, base)?;
                let n = ctrl.size();
                let (_, dx, info) = minimise(&mut ctrl, &problem, &params)?;
                (n, dx, info)
            }
        };
        let analysis: Vec<f64> = x_b.iter().zip(&dx).map(|(b, d)| b + d).collect();
        if let Some(i) = analysis.iter().position(|v| !v.is_finite()) {
            return Err(Error::new(Status::Solver, format!("analysis is not finite at {}", lay.describe_index(i))));
        }
        // Observation-space diagnostics (H x_a for used rows; O-B for all located observations).
        let t_h2 = Instant::now();
        let mut hxa = vec![0.0; h.nrows()];
        h.apply(&analysis, &mut hxa);
        h_s += t_h2.elapsed().as_secs_f64();
        let mut report = Report {
            latentda_version: env!("CARGO_PKG_VERSION").into(),
            bundle: self.bundle.name.clone(),
            method: method.name().into(),
            output: mode.name().into(),
            formulation: if full_state { "full_state".into() } else { "increment".into() },
            backend: self.ae.info.backend.clone(),
            backend_detail: self.ae.info.detail.clone(),
            device: self.options.exec()?.device.name(),
            threads: self.options.threads,
            control_size,
            n_obs: obs.len(),
            n_used: h.nrows(),
            ..Default::default()
        };
        for f in QcFlag::ALL {
            report.qc_counts.insert(f.name().into(), qc.iter().filter(|q| **q == f).count());
        }
        let mut stats: Vec<VarStats> = lay
            .variables
            .iter()
            .enumerate()
            .map(|(v, var)| VarStats { name: var.name.clone(), units: self.bundle.units(v).into(), ..Default::default() })
            .collect();
        for (o, q) in obs.iter().zip(&qc) {
            if let Some(v) = o.var {
                stats[v].n_total += 1;
                if *q != QcFlag::Used {
                    stats[v].n_rejected += 1;
                }
            }
        }
        // Per variable: n, sum O-B, sum (O-B)^2, sum O-A, sum (O-A)^2, sum ((O-B)/sigma)^2, sum ((O-A)/sigma)^2.
        let mut acc = vec![[0.0f64; 7]; lay.variables.len()];
        for r in 0..h.nrows() {
            let o = &obs[h.rows[r]];
            let v = o.var.unwrap_or(0);
            let (ob, oa) = (o.value - hxb[r], o.value - hxa[r]);
            let a = &mut acc[v];
            a[0] += 1.0;
            a[1] += ob;
            a[2] += ob * ob;
            a[3] += oa;
            a[4] += oa * oa;
            a[5] += (ob / o.sigma).powi(2);
            a[6] += (oa / o.sigma).powi(2);
        }
        for (v, s) in stats.iter_mut().enumerate() {
            let a = acc[v];
            let n = a[0];
            s.n_used = n as usize;
            if n > 0.0 {
                s.omb_mean = a[1] / n;
                s.omb_rms = (a[2] / n).sqrt();
                s.oma_mean = a[3] / n;
                s.oma_rms = (a[4] / n).sqrt();
                s.jo_over_n_b = 0.5 * a[5] / n;
                s.jo_over_n_a = 0.5 * a[6] / n;
            }
            let range = lay.var_range(v);
            s.increment_rms = (dx[range.clone()].iter().map(|d| d * d).sum::<f64>() / range.len() as f64).sqrt();
        }
        report.variables = stats;
        report.balance = crate::diag::balance::diagnose(&lay, x_b, &analysis);
        let output = match mode {
            OutputMode::Analysis | OutputMode::FullState => analysis.clone(),
            OutputMode::Increment => dx,
        };
        let mt = &self.ae.timings;
        let total_s = t_start.elapsed().as_secs_f64();
        // H and H^T inside the solver are not timed per call; they are part of `overhead_s` (the benchmark measures
        // them separately).
        report.timings = Timings {
            encode_s: mt.encode_s,
            decode_s: mt.decode_s,
            tl_s: mt.tl_s,
            ad_s: mt.ad_s,
            h_s,
            total_s,
            overhead_s: (total_s - mt.total_s()).max(0.0),
            n_encode: mt.n_encode,
            n_decode: mt.n_decode,
            n_tl: mt.n_tl,
            n_ad: mt.n_ad,
        };
        report.solver = Some(info);
        Ok(Analysis { output, analysis, qc, report })
    }
}
