//! Analysis report: iteration history, observation statistics per variable, QC counts, timings and the backend
//! actually used. Serialised as JSON (`--report`, `lda_report_json`) and printed as a summary table.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::var::solver::SolveInfo;

/// Observation-space statistics of one variable.
#[derive(Debug, Clone, Serialize, Default)]
pub struct VarStats {
    /// Variable name.
    pub name: String,
    /// Units.
    pub units: String,
    /// Observations of this variable in the input.
    pub n_total: usize,
    /// Used in the analysis.
    pub n_used: usize,
    /// Rejected by QC.
    pub n_rejected: usize,
    /// Mean of O-B over used observations.
    pub omb_mean: f64,
    /// RMS of O-B over used observations.
    pub omb_rms: f64,
    /// Mean of O-A over used observations.
    pub oma_mean: f64,
    /// RMS of O-A over used observations.
    pub oma_rms: f64,
    /// Jo/n at the background: 1/2 sum((O-B)/sigma)^2 / n.
    pub jo_over_n_b: f64,
    /// Jo/n at the analysis: 1/2 sum((O-A)/sigma)^2 / n.
    pub jo_over_n_a: f64,
    /// RMS of the analysis increment over the whole field.
    pub increment_rms: f64,
}

/// Timings in seconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Timings {
    /// Encoder runs.
    pub encode_s: f64,
    /// Decoder runs.
    pub decode_s: f64,
    /// TL runs.
    pub tl_s: f64,
    /// AD runs.
    pub ad_s: f64,
    /// Observation operator H and H^T (including building it).
    pub h_s: f64,
    /// Whole analysis.
    pub total_s: f64,
    /// latentda's own code: total minus model runs.
    pub overhead_s: f64,
    /// TL runs spent on diag B for the background check (0 when the cached variance of this background was reused).
    pub variance_s: f64,
    /// Number of those TL runs.
    pub n_variance: usize,
    /// Model run counts.
    pub n_encode: usize,
    /// Decoder runs.
    pub n_decode: usize,
    /// TL runs.
    pub n_tl: usize,
    /// AD runs.
    pub n_ad: usize,
    /// Step-model runs (method l4dvar): nonlinear, TL and AD seconds and counts.
    pub step_s: f64,
    /// See `step_s`.
    pub step_tl_s: f64,
    /// See `step_s`.
    pub step_ad_s: f64,
    /// See `step_s`.
    pub n_step: usize,
    /// See `step_s`.
    pub n_step_tl: usize,
    /// See `step_s`.
    pub n_step_ad: usize,
}

// The balance diagnostic's result lives with the diagnostic (a lower layer); the report carries it.
pub use crate::diag::balance::BalanceStats;

/// Observation statistics of one time slot of the 4D-Var window.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SlotStats {
    /// Slot index (0 = analysis time).
    pub slot: usize,
    /// Slot time, hours from the analysis time.
    pub time_hours: f64,
    /// Observations assigned to the slot (inside the window, any QC flag).
    pub n_total: usize,
    /// Used in the analysis.
    pub n_used: usize,
    /// RMS of (O-B)/sigma over the used observations (dimensionless: variables of different units together).
    pub omb_rms_normalised: f64,
    /// RMS of (O-A)/sigma.
    pub oma_rms_normalised: f64,
    /// J_o of the slot at the background: 1/2 sum ((O-B)/sigma)^2 (sigma inflated by `error_growth_per_hour`).
    pub jo_b: f64,
    /// J_o of the slot at the analysis.
    pub jo_a: f64,
}

/// The 4D-Var window and how its trajectory was made (method l4dvar).
#[derive(Debug, Clone, Serialize, Default)]
pub struct WindowInfo {
    /// Window length, hours ([0, window_hours]).
    pub window_hours: f64,
    /// Slot width, hours.
    pub slot_hours: f64,
    /// Number of slots (window_hours / slot_hours + 1).
    pub nslots: usize,
    /// Step-model time step, hours.
    pub step_hours: f64,
    /// g of the observation error variance sigma^2 (1 + g t) at slot time t (option or bundle `[forecast]`).
    pub error_growth_per_hour: f64,
    /// The step model used.
    pub step_model: String,
    /// Per slot, where its background came from: "host" (given for the slot) or "step model" (the trajectory
    /// from the analysis-time background: x_b + sd (D(F^k(z_b)) - D(z_b)) for a latent step model, M^k(x_b) for a
    /// model-space one).
    pub background_trajectory: Vec<String>,
    /// Bytes held for the trajectories (linearisation and background trajectories, reference fields).
    pub trajectory_bytes: usize,
    /// Per-slot statistics.
    pub slots: Vec<SlotStats>,
}

/// How the background check was made.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BackgroundCheckInfo {
    /// Threshold k (0: no check).
    pub k: f64,
    /// Where sigma_b came from: diag of the B in force, exact or randomised (with the sample count and error).
    pub sigma_b: String,
    /// Observations rejected by it.
    pub rejected: usize,
}

/// Ensemble spread against the innovations for one variable, over the used observations (spread/skill).
#[derive(Debug, Clone, Serialize, Default)]
pub struct EnsembleSpreadSkill {
    /// Variable name.
    pub name: String,
    /// Units.
    pub units: String,
    /// Used observations of the variable.
    pub n_used: usize,
    /// Ensemble spread in observation space: sqrt(mean over the used observations of s_i^2), s_i the sample standard
    /// deviation (divisor K - 1) of the members' H_i x_k, i.e. the ensemble's own spread, before localisation and
    /// without gamma.
    pub spread: f64,
    /// The background error the innovations d = y - H x_b imply: sqrt(max(mean d^2 - mean sigma_o^2, 0)).
    pub innovation_skill: f64,
    /// spread / innovation_skill (null when the skill is 0): about 1 for a well-dispersed ensemble, < 1 under-dispersed.
    pub ratio: Option<f64>,
}

/// The ensemble part of the B in force (see [`crate::var::ensemble`]).
#[derive(Debug, Clone, Serialize, Default)]
pub struct EnsembleInfo {
    /// Number of members K.
    pub members: usize,
    /// Weight gamma of the ensemble part (option `ensemble_gamma`).
    pub gamma: f64,
    /// Which ensemble part: "latent" (latent ensemble B, method hybrid) or "model" (model-space ensemble B, method
    /// 3dvar, i.e. hybrid 3DEnVar).
    pub part: String,
    /// The localisation in force (function, half-width, points, form, eigenvalues).
    pub localisation: String,
    /// Length of the ensemble part's control vector (K x localisation points).
    pub control_size: usize,
    /// Spread against the innovations per variable (bundle order).
    pub spread_skill: Vec<EnsembleSpreadSkill>,
}

/// A full report.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// latentda version.
    pub latentda_version: String,
    /// Bundle name.
    pub bundle: String,
    /// Method ("l3dvar", "3dvar" or "hybrid").
    pub method: String,
    /// What the returned/written field is ("analysis", "increment", "full_state").
    pub output: String,
    /// Formulation of x(w): "increment" (x_b + decoded increment) or "full_state".
    pub formulation: String,
    /// Latent increment form of l3dvar/hybrid: "linear" or "nonlinear" (empty for other methods).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub latent_increment: String,
    /// Backend actually used.
    pub backend: String,
    /// Backend detail (library, version).
    pub backend_detail: String,
    /// Device actually used.
    pub device: String,
    /// ONNX Runtime threads.
    pub threads: usize,
    /// Control-vector size.
    pub control_size: usize,
    /// J_b of each control part at the analysis: "latent" (1/2 |w|^2) and/or "static" (1/2 |v|^2).
    pub jb_parts: std::collections::BTreeMap<String, f64>,
    /// The background check and the sigma_b it used.
    pub background_check: BackgroundCheckInfo,
    /// Minimisation summary and history.
    pub solver: Option<SolveInfo>,
    /// Total observations given.
    pub n_obs: usize,
    /// Used observations.
    pub n_used: usize,
    /// Counts per QC flag name.
    pub qc_counts: std::collections::BTreeMap<String, usize>,
    /// Malformed input rows (file input only).
    pub input_problems: Vec<crate::obs::RowProblem>,
    /// Per-variable statistics, bundle order.
    pub variables: Vec<VarStats>,
    /// Balance diagnostic of the increment, if the bundle has u, v and a geopotential.
    pub balance: Option<BalanceStats>,
    /// The 4D-Var window (method l4dvar only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowInfo>,
    /// The ensemble part of the B (methods hybrid and 3dvar with ensemble members set): members, weight,
    /// localisation and spread against the innovations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleInfo>,
    /// Desroziers diagnostics per variable group and latitude band: the innovation estimates of R and H B H^T
    /// against those in force, with their sums (accumulated over reports by `latentda tune`).
    pub desroziers: Option<crate::var::desroziers::Desroziers>,
    /// Verification against withheld observations (`latentda analyse --withheld`, or set by the caller from
    /// [`crate::var::withheld::Withheld::evaluate`]): observations the analysis did not use, compared with the
    /// background and the analysis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withheld: Option<crate::var::withheld::Withheld>,
    /// Online B sizing (option `adaptive_state`): the multipliers this analysis ran with and those of the next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveInfo>,
    /// Online mix (option `mix_candidates`): the latent shares this analysis ran with, the scores of the last
    /// cycle's candidates and the shares of the next analysis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mix: Option<MixInfo>,
    /// The known-answer self-test run when the bundle was opened (status, cost, differences per graph).
    pub self_test: crate::model::selftest::SelfTest,
    /// Timings.
    pub timings: Timings,
}

impl Report {
    /// JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Multi-line human summary.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "method {}{}  output {}  backend {} ({})  device {}",
            self.method,
            if self.latent_increment.is_empty() {
                String::new()
            } else {
                format!(" ({} latent increment)", self.latent_increment)
            },
            self.output,
            self.backend,
            self.backend_detail,
            self.device
        );
        if let Some(si) = &self.solver {
            let fold = if si.grad_reduction > 0.0 { 1.0 / si.grad_reduction } else { f64::INFINITY };
            let how = match si.solver {
                crate::var::solver::SolverKind::GaussNewton => {
                    format!("in {} TL/AD pairs, {} outer loop(s)", si.inner_total, si.outer_total)
                }
                crate::var::solver::SolverKind::Adam => format!("in {} Adam steps", si.outer_total),
            };
            let _ = writeln!(
                s,
                "J {:.4e} -> {:.4e} (Jb {:.4e}, Jo {:.4e});  |grad J| reduced {fold:.2e}-fold {how} ({} control-transform runs){}",
                si.j_initial,
                si.j_final,
                si.jb_final,
                si.jo_final,
                si.passes,
                if si.converged { String::new() } else { format!("; NOT converged to the gradient target: {}", si.stop_reason) }
            );
            for r in &si.hessian_ritz {
                let _ = writeln!(
                    s,
                    "outer loop {}: {}Hessian Ritz values in [{:.3}, {:.4e}] after {} CG iterations (condition number >= {:.3e})",
                    r.outer,
                    if r.preconditioner_pairs > 0 { format!("preconditioned ({} Ritz pairs) ", r.preconditioner_pairs) } else { String::new() },
                    r.min,
                    r.max,
                    r.iterations,
                    r.max / r.min
                );
            }
        }
        if self.jb_parts.len() > 1 {
            let parts: Vec<String> = self.jb_parts.iter().map(|(k, v)| format!("Jb {k} {v:.4e}")).collect();
            let _ = writeln!(s, "background term by part: {}", parts.join(", "));
        }
        let _ = writeln!(s, "observations: {} given, {} used; QC {:?}", self.n_obs, self.n_used, self.qc_counts);
        if self.background_check.k > 0.0 {
            let _ = writeln!(
                s,
                "background check k = {}: sigma_b from {}",
                self.background_check.k, self.background_check.sigma_b
            );
        }
        if let Some(e) = &self.ensemble {
            let ss: Vec<String> = e
                .spread_skill
                .iter()
                .filter(|v| v.n_used > 0)
                .map(|v| format!("{} {:.3e}/{:.3e}", v.name, v.spread, v.innovation_skill))
                .collect();
            let _ = writeln!(
                s,
                "ensemble part ({}): K = {}, gamma = {}, {}; spread/innovation skill: {}",
                e.part,
                e.members,
                e.gamma,
                e.localisation,
                if ss.is_empty() { "no used observations".to_string() } else { ss.join(", ") }
            );
        }
        let _ = writeln!(
            s,
            "{:<6} {:>6} {:>6} {:>11} {:>11} {:>11} {:>11} {:>8} {:>8} {:>11}",
            "var", "used", "rej", "O-B mean", "O-B rms", "O-A mean", "O-A rms", "Jo/n b", "Jo/n a", "incr rms"
        );
        for v in &self.variables {
            let _ = writeln!(
                s,
                "{:<6} {:>6} {:>6} {:>11.4e} {:>11.4e} {:>11.4e} {:>11.4e} {:>8.3} {:>8.3} {:>11.4e}",
                v.name,
                v.n_used,
                v.n_rejected,
                v.omb_mean,
                v.omb_rms,
                v.oma_mean,
                v.oma_rms,
                v.jo_over_n_b,
                v.jo_over_n_a,
                v.increment_rms
            );
        }
        if let Some(w) = &self.window {
            let _ = writeln!(
                s,
                "window {} h: {} slots of {} h, {} ({:.1} MB of trajectories)",
                w.window_hours,
                w.nslots,
                w.slot_hours,
                w.step_model,
                w.trajectory_bytes as f64 / 1048576.0
            );
            let _ = writeln!(
                s,
                "{:<5} {:>6} {:>6} {:>6} {:>12} {:>12} {:>11} {:>11}",
                "slot", "hours", "obs", "used", "(O-B)/s rms", "(O-A)/s rms", "Jo b", "Jo a"
            );
            for t in &w.slots {
                let _ = writeln!(
                    s,
                    "{:<5} {:>6} {:>6} {:>6} {:>12.4} {:>12.4} {:>11.4e} {:>11.4e}",
                    t.slot,
                    t.time_hours,
                    t.n_total,
                    t.n_used,
                    t.omb_rms_normalised,
                    t.oma_rms_normalised,
                    t.jo_b,
                    t.jo_a
                );
            }
        }
        if let Some(b) = &self.balance {
            let _ = writeln!(
                s,
                "balance (|lat|>20): corr(wind incr, geostrophic wind of incr) = {:.3}, relative difference = {:.3}",
                b.correlation, b.relative_difference
            );
        }
        if let Some(c) = self.desroziers.as_ref().and_then(|d| d.cell("all", "global")).filter(|c| c.n > 0) {
            let f = |x: Option<f64>| x.map_or("null".to_string(), |x| format!("{x:.3}"));
            let _ = writeln!(
                s,
                "Desroziers (all observations, weighted by 1/sigma_o^2): E[da db]/R = {}, E[(Hxa-Hxb) db]/HBH^T = {}, E[db^2]/(R+HBH^T) = {}",
                f(c.r_ratio),
                f(c.hbh_ratio),
                f(c.innovation_ratio)
            );
        }
        if let Some(a) = &self.adaptive {
            let vars = |m: &std::collections::BTreeMap<String, [f64; 2]>| {
                m.iter().map(|(v, [x, t])| format!(" {v} {x:.3}/{t:.3}")).collect::<String>()
            };
            let _ = writeln!(
                s,
                "adaptive B ({}, {} rule, window {}/{}, cycle {}): multiplier {:.4} -> {:.4}{}{}",
                a.state,
                a.rule,
                a.window_filled,
                a.window,
                a.cycles,
                a.multiplier,
                a.multiplier_next,
                if a.variable_multipliers_next.is_empty() {
                    String::new()
                } else {
                    format!("; next per variable (extratropics/tropics):{}", vars(&a.variable_multipliers_next))
                },
                if a.notes.is_empty() { String::new() } else { format!(" [{}]", a.notes.join("; ")) }
            );
        }
        if let Some(m) = &self.mix {
            let shares = |c: &std::collections::BTreeMap<String, Vec<f64>>| {
                c.iter()
                    .map(|(v, x)| format!(" {v} {}", x.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("/")))
                    .collect::<String>()
            };
            let _ = writeln!(
                s,
                "mix ({}, window {}/{}, cycle {}, candidates {:?}, {:.2} s): latent share ({}){}{}",
                m.state,
                m.window_filled,
                m.window,
                m.cycles,
                m.candidates,
                m.candidates_s,
                m.classes.join("/"),
                shares(&m.choice),
                if m.notes.is_empty() { String::new() } else { format!(" [{}]", m.notes.join("; ")) }
            );
        }
        let t = &self.timings;
        let _ = writeln!(
            s,
            "time: total {:.3} s = encode {:.3} + decode {:.3} ({}x) + TL {:.3} ({}x) + AD {:.3} ({}x) + diag B {:.3} ({}x TL) + H {:.4} + other {:.4}{}",
            t.total_s,
            t.encode_s,
            t.decode_s,
            t.n_decode,
            t.tl_s,
            t.n_tl,
            t.ad_s,
            t.n_ad,
            t.variance_s,
            t.n_variance,
            t.h_s,
            t.overhead_s - t.h_s,
            if t.n_step + t.n_step_tl + t.n_step_ad > 0 {
                format!(
                    " + step model {:.3} ({}x) + step TL {:.3} ({}x) + step AD {:.3} ({}x)",
                    t.step_s, t.n_step, t.step_tl_s, t.n_step_tl, t.step_ad_s, t.n_step_ad
                )
            } else {
                String::new()
            }
        );
        s
    }
}

/// Wall time and counts of step-model runs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StepClock {
    /// Seconds in the nonlinear step model.
    pub step_s: f64,
    /// Seconds in its TL.
    pub tl_s: f64,
    /// Seconds in its AD.
    pub ad_s: f64,
    /// Nonlinear runs.
    pub n_step: usize,
    /// TL runs.
    pub n_tl: usize,
    /// AD runs.
    pub n_ad: usize,
}

impl StepClock {
    /// Total seconds.
    pub fn total_s(&self) -> f64 {
        self.step_s + self.tl_s + self.ad_s
    }

    /// Adds the runs of `o`.
    pub fn add(&mut self, o: &StepClock) {
        self.step_s += o.step_s;
        self.tl_s += o.tl_s;
        self.ad_s += o.ad_s;
        self.n_step += o.n_step;
        self.n_tl += o.n_tl;
        self.n_ad += o.n_ad;
    }
}

/// What the report says about the mix of its analysis (report key `mix`).
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct MixInfo {
    /// State file.
    pub state: String,
    /// Candidate latent shares.
    pub candidates: Vec<f64>,
    /// Cycles of evidence pooled, and the window's length.
    pub window_filled: usize,
    /// Window length (`mix_window`).
    pub window: usize,
    /// Analyses run with this state, this one included.
    pub cycles: usize,
    /// The latitude classes of `choice` and `sources`: ["extratropics", "tropics"], or ["nh", "tropics", "sh"] with
    /// `mix_hemispheres = true`.
    pub classes: Vec<String>,
    /// The latent share each variable had in this analysis, one per class (`classes`), chosen with this cycle's
    /// scores included (so also the share of the next analysis, until new evidence); a variable the options keep
    /// out of one part is left out, a class of it so kept is NaN (null in JSON).
    pub choice: BTreeMap<String, Vec<f64>>,
    /// Where that evidence came from, per class.
    pub sources: BTreeMap<String, Vec<String>>,
    /// This cycle's scores of the last cycle's candidates, in the order of `candidates` (report path
    /// `mix.scored.K.u/extratropics`): per "variable/class", mean d (negative: closer to this cycle's observations
    /// than the background); empty when nothing was pending.
    pub scored: Vec<BTreeMap<String, f64>>,
    /// Seconds spent in the candidates' analyses.
    pub candidates_s: f64,
    /// Notes (a candidate that failed, pending fields that did not match, forecasts valid at another time).
    pub notes: Vec<String>,
    /// Whether this analysis ran the candidates for the next one to score (every `mix_every`-th analysis, and at
    /// once after an analysis that could not score the last run or whose candidates failed).
    pub candidates_run: bool,
    /// This analysis' time (hours, `lda_set_analysis_time`), when the host set one.
    pub analysis_time_hours: Option<f64>,
    /// When the candidate forecasts written by this analysis are valid (its time plus `mix_lead_hours`): the
    /// time of the analysis that will score them. None without an analysis time, or when this analysis left no
    /// candidates pending.
    pub valid_next_hours: Option<f64>,
}

/// What the report says about the sizing of its analysis (report key `adaptive`).
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct AdaptiveInfo {
    /// State file.
    pub state: String,
    /// H B H^T estimate: "innovation" or "desroziers".
    pub rule: String,
    /// Per variable and band class, or one scalar.
    pub per_variable: bool,
    /// Window length (cycles).
    pub window: usize,
    /// Cycles in the window after this analysis.
    pub window_filled: usize,
    /// Analyses added so far, this one included.
    pub cycles: usize,
    /// Bounds of the multipliers.
    pub bounds: [f64; 2],
    /// The scalar multiplier this analysis ran with.
    pub multiplier: f64,
    /// The scalar multiplier of the next analysis.
    pub multiplier_next: f64,
    /// Per variable, the [extratropics, tropics] multipliers this analysis ran with (empty: all at `multiplier`).
    pub variable_multipliers: std::collections::BTreeMap<String, [f64; 2]>,
    /// Per variable, those of the next analysis.
    pub variable_multipliers_next: std::collections::BTreeMap<String, [f64; 2]>,
    /// This analysis alone: H B H^T estimate over H B H^T in force, all used observations.
    pub hbh_ratio: Option<f64>,
    /// Fallbacks and bounds that applied.
    pub notes: Vec<String>,
}
