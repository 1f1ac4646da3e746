//! Online B sizing from innovations, for a host that cycles (option `adaptive_state`).
//!
//! A B fitted to one kind of background error is mis-sized in a 6 h cycle, and differently at day 1 and at day 10
//! (docs/b-operator.md, "Online, while cycling"). With `adaptive_state = "FILE"` each analysis
//!
//! 1. reads FILE (missing: a new state, every multiplier 1, i.e. the B of the options and the bundle);
//! 2. runs with the B of the options multiplied by the state's multipliers: `baseline_variance_factor` (3dvar),
//!    `latent_variance_factor` (l3dvar, l4dvar) or the hybrid weights (hybrid: alpha and beta, their tropical values
//!    and every `hybrid_variable_weights` entry, so each variable's mix alpha : beta stays that of the options);
//! 3. after a successful analysis, adds the report's Desroziers section to the window of the last
//!    `adaptive_window` cycles, derives the next multipliers and rewrites FILE atomically (a synced temporary file
//!    renamed over it), before the host's arrays are written: a failed analysis changes neither the file nor the
//!    arrays.
//!    A caller with outputs of its own to write (the CLI) defers the rewrite ([`Analyser::defer_adaptive_commit`])
//!    and commits it once they are written ([`Analyser::commit_adaptive_state`]).
//!
//! One state file belongs to one analysing context: two contexts writing the same file would each drop the other's
//! cycles. A cycle without used observations or without the H B H^T in force is counted but leaves the window as it
//! was (as the driver's AdaptiveB does). The ensemble part of a hybrid EnVar is not sized: with members set the
//! option is refused. The host B operator (`lda_bsqrt`, ...) serves the B of the options, without the multipliers.
//!
//! The state is a small JSON file the host keeps between its cycles, as it keeps VarBC's bias coefficients: the
//! same sizing whether the host keeps one context open for the whole run or opens one per cycle. The step is the
//! fixed point of `latentda tune` over the window: g_next = sum_k E_k / sum_k (H_k / g_k), with E_k the cycle's
//! H B H^T estimate (`adaptive_rule`: "innovation", sum d_b^2 / sigma_o^2 - n, which reaches the scalar fixed point in
//! one step when R is right; or "desroziers", sum (H x_a - H x_b) d_b / sigma_o^2), H_k the H B H^T in force and
//! g_k the B's scale in force (factor, or alpha + beta), all over the used observations; the multiplier
//! g_next / g_start is bounded to `adaptive_bounds`. With `adaptive_per_variable = true` (hybrid) each bundle
//! variable and band class (extratropics, tropics) gets its own multiplier from its own cells
//! ([`crate::var::desroziers::variable_scales`]) once the window is full; until then every variable follows the
//! scalar one. A variable whose group has no observations takes the scale over all variables but at most its
//! starting B (multiplier <= 1): nothing checks the cross-covariances its increments come through. This is the
//! library twin of `latentda-cycle run --adaptive` (python/latentda_train/cycling.py, `AdaptiveB`), which the
//! cycling experiments of the README used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::VariableWeights;
use crate::error::{Error, Result};
use crate::var::analysis::{Analyser, Analysis};
use crate::var::desroziers::{joint_scale, variable_scales, Desroziers, Estimate, VariableScales, CLASSES};
use crate::var::options::{Method, Options};

/// Version of the state file's format.
pub const STATE_FORMAT: u32 = 1;

pub use crate::var::options::{DEFAULT_ADAPTIVE_BOUNDS as DEFAULT_BOUNDS, DEFAULT_ADAPTIVE_WINDOW as DEFAULT_WINDOW};
pub use crate::var::report::AdaptiveInfo;

/// The state a host keeps between cycles (the JSON file of option `adaptive_state`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdaptiveState {
    /// Format version ([`STATE_FORMAT`]).
    pub format: u32,
    /// Bundle the state belongs to.
    pub bundle: String,
    /// Analysis method the state sizes (one state file per method).
    pub method: String,
    /// Analyses added so far.
    pub cycles: usize,
    /// The scalar multiplier of the options' B for the next analysis.
    pub multiplier: f64,
    /// Per-variable mode, once the window is full: per bundle variable its [extratropics, tropics] multipliers
    /// (empty: every variable follows `multiplier`).
    #[serde(default)]
    pub variable_multipliers: BTreeMap<String, [f64; 2]>,
    /// The Desroziers sections of the last cycles (oldest first), at most the window's length.
    pub window: Vec<Desroziers>,
}

/// The sizing settings of the options.
struct Settings {
    path: PathBuf,
    window: usize,
    bounds: [f64; 2],
    rule: Estimate,
    per_variable: bool,
}

impl Settings {
    fn of(o: &Options) -> Option<Settings> {
        Some(Settings {
            path: PathBuf::from(o.adaptive_state.as_ref()?),
            window: o.adaptive_window,
            bounds: o.adaptive_bounds,
            rule: o.adaptive_rule,
            per_variable: o.adaptive_per_variable,
        })
    }

    fn clip(&self, m: f64) -> f64 {
        m.clamp(self.bounds[0], self.bounds[1])
    }
}

/// The B of the options before any multiplier: its scale g_start (factor, or global alpha + beta) and, for the
/// hybrid, every variable's weights ([`crate::bundle::BandWeights`]) and the global ones.
struct Start {
    scale: f64,
    hybrid: Option<(crate::var::analysis::HybridSettings, Vec<String>)>,
}

impl AdaptiveState {
    /// A new state: every multiplier 1, an empty window.
    pub fn new(bundle: &str, method: Method) -> AdaptiveState {
        AdaptiveState {
            format: STATE_FORMAT,
            bundle: bundle.to_string(),
            method: method.name().to_string(),
            cycles: 0,
            multiplier: 1.0,
            variable_multipliers: BTreeMap::new(),
            window: Vec::new(),
        }
    }

    /// Reads the state of `path` (a new one when the file does not exist) and checks that it belongs to this
    /// bundle and method; errors name the file.
    pub fn load(path: &Path, bundle: &str, method: Method) -> Result<AdaptiveState> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AdaptiveState::new(bundle, method)),
            Err(e) => return Err(Error::io(format!("adaptive_state '{}': cannot read: {e}", path.display()))),
        };
        let s: AdaptiveState = serde_json::from_str(&text).map_err(|e| {
            Error::arg(format!("adaptive_state '{}': not a latentda adaptive state file: {e}", path.display()))
        })?;
        let bad = |what: String| Error::arg(format!("adaptive_state '{}': {what}", path.display()));
        if s.format != STATE_FORMAT {
            return Err(bad(format!("format {} is not {STATE_FORMAT}", s.format)));
        }
        if s.bundle != bundle {
            return Err(bad(format!("written for bundle '{}', not '{bundle}'", s.bundle)));
        }
        if s.method != method.name() {
            return Err(bad(format!(
                "written by method '{}', this analysis is '{}': keep one state file per method",
                s.method,
                method.name()
            )));
        }
        let positive = |m: f64| m.is_finite() && m > 0.0;
        if !positive(s.multiplier) || s.variable_multipliers.values().flatten().any(|m| !positive(*m)) {
            return Err(bad("a multiplier is not finite and > 0".into()));
        }
        if s.window.iter().any(|d| d.method != s.method) {
            return Err(bad(format!("its window holds a report of another method than '{}'", s.method)));
        }
        Ok(s)
    }

    /// Writes the state to `path` atomically (a temporary file in the same folder, renamed over it).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_text()?)
    }

    /// The file's JSON text.
    fn to_text(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::io(format!("adaptive state: {e}")))
    }
}

/// Writes the state text to `path` whole or not at all ([`crate::outfile::write_whole`]); errors name the option.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    crate::outfile::write_whole(path, text.as_bytes())
        .map_err(|e| Error::io(format!("adaptive_state '{}': cannot write it: {}", path.display(), e.message)))
}

impl AdaptiveState {
    /// The multipliers of variable `v`: its own, else [multiplier; 2].
    fn of_variable(&self, v: &str) -> [f64; 2] {
        self.variable_multipliers.get(v).copied().unwrap_or([self.multiplier; 2])
    }

    /// The options of the next analysis: `o` with its B multiplied (module documentation).
    fn sized(&self, o: &Options, method: Method, start: &Start) -> Options {
        let mut o = o.clone();
        let m = self.multiplier;
        match method {
            Method::Var3d => o.baseline_variance_factor = Some(start.scale * m),
            Method::L3dvar | Method::L4dvar => o.latent_variance_factor = Some(start.scale * m),
            Method::Hybrid => {
                let (hs, names) = start.hybrid.as_ref().expect("hybrid start");
                o.hybrid_alpha = Some(hs.alpha * m);
                o.hybrid_beta = Some(hs.beta * m);
                // tropical values and every variable's entry scaled too (explicit ones take precedence over the
                // global weights); when nothing varies the operator is still the scalar-weight one, bit for bit
                o.hybrid_alpha_tropics = Some(hs.alpha_tropics * m);
                o.hybrid_beta_tropics = Some(hs.beta_tropics * m);
                o.hybrid_alpha_sh = Some(hs.alpha_sh * m);
                o.hybrid_beta_sh = Some(hs.beta_sh * m);
                // one extratropical multiplier for both hemispheres (the sizing's classes pool nh and sh)
                let table = names
                    .iter()
                    .zip(&hs.per_variable)
                    .map(|(v, w)| {
                        let [mx, mt] = self.of_variable(v);
                        (
                            v.clone(),
                            VariableWeights::of([w[0] * mx, w[1] * mx, w[2] * mt, w[3] * mt, w[4] * mx, w[5] * mx]),
                        )
                    })
                    .collect();
                o.hybrid_variable_weights = Some(table);
            }
        }
        o
    }

    /// Adds an analysis's Desroziers section and derives the next multipliers; returns this cycle's estimate over
    /// in-force ratio and notes.
    fn update(&mut self, d: Desroziers, method: Method, start: &Start, s: &Settings) -> (Option<f64>, Vec<String>) {
        let mut notes = Vec::new();
        let all = d.cell("all", "global").map(|c| c.normalised.clone());
        let ratio = all.as_ref().and_then(|m| m.sum_hbh.filter(|h| *h > 0.0).map(|h| s.rule.of(m) / h));
        self.cycles += 1;
        if all.as_ref().is_some_and(|m| m.n > 0 && m.sum_hbh.is_some()) {
            self.window.push(d);
        } else {
            notes.push("no used observation with sigma_b in this cycle: the window is unchanged".into());
        }
        let excess = self.window.len().saturating_sub(s.window);
        self.window.drain(..excess);
        // scalar: the joint step of `latentda tune` over the window's cycles
        if let Some(g) = joint_scale(&self.window, method.name(), "all", "global", s.rule).0.filter(|g| g.is_finite()) {
            let m = g / start.scale;
            let clipped = s.clip(m);
            if clipped != m {
                notes.push(format!("multiplier {m:.4e} bounded to {clipped:.4e}"));
            }
            self.multiplier = clipped;
        } else {
            self.multiplier = s.clip(self.multiplier);
            notes.push("no cycle in the window has sigma_b and used observations: multiplier kept".into());
        }
        // per variable and band class, once the window is full
        self.variable_multipliers.clear();
        if s.per_variable && self.window.len() >= s.window {
            let (hs, names) = start.hybrid.as_ref().expect("per-variable sizing is for the hybrid");
            let (scales, fallbacks) = variable_scales(&self.window, s.rule);
            // a variable no fallback could size follows the scalar multiplier (noted below)
            notes.extend(fallbacks.into_iter().filter(|n| !n.ends_with("weights kept")));
            for VariableScales { name: v, scales: sc, unobserved } in scales {
                let Some(k) = names.iter().position(|n| *n == v) else { continue };
                let w = hs.per_variable[k];
                let mut out = [self.multiplier; 2];
                for (class, scale) in sc.iter().enumerate() {
                    let base = w[2 * class] + w[2 * class + 1];
                    if let (Some(scale), true) = (scale, base > 0.0) {
                        // a variable no observation of its group sizes never grows past its starting B
                        let m = scale / base;
                        out[class] = s.clip(if unobserved[class] { m.min(1.0) } else { m });
                    } else {
                        notes.push(format!("'{v}' ({}): follows the scalar multiplier", CLASSES[class]));
                    }
                }
                self.variable_multipliers.insert(v, out);
            }
        }
        (ratio, notes)
    }
}

impl Analyser {
    /// Runs `analyse` with the B sized by the state of option `adaptive_state`, then updates and rewrites the state
    /// (module documentation); without that option it runs `analyse` as is. The options in force are those of the
    /// host again afterwards, whatever happened.
    pub(crate) fn with_adaptive_b(
        &mut self,
        method: Method,
        analyse: impl FnOnce(&mut Analyser) -> Result<Analysis>,
    ) -> Result<Analysis> {
        let Some(s) = Settings::of(&self.options) else { return analyse(self) };
        if s.per_variable && method != Method::Hybrid {
            return Err(Error::arg(format!(
                "adaptive_per_variable = true sizes hybrid weights: method '{}' has one B scale (set it to false)",
                method.name()
            )));
        }
        if self.ensemble_size() > 0 && matches!(method, Method::Hybrid | Method::Var3d) {
            return Err(Error::arg(format!(
                "adaptive_state '{}': method '{}' with ensemble members has an ensemble part, which the sizing \
                 does not scale: remove the members or the option",
                s.path.display(),
                method.name()
            )));
        }
        let mut state = AdaptiveState::load(&s.path, &self.bundle.name, method)?;
        // multipliers of a file written under other bounds: within this run's bounds
        state.multiplier = s.clip(state.multiplier);
        state.variable_multipliers.values_mut().flatten().for_each(|m| *m = s.clip(*m));
        let start = self.start_of(method)?;
        let host = self.options.clone();
        let in_force = (state.multiplier, state.variable_multipliers.clone());
        let sized = self
            .set_options(state.sized(&host, method, &start))
            .map_err(|e| Error::arg(format!("adaptive_state '{}': the sized options: {e}", s.path.display())));
        let res = sized.and_then(|_| analyse(self));
        self.options = host;
        let mut an = res?;
        let d =
            an.report.desroziers.clone().ok_or_else(|| Error::arg("the analysis report has no desroziers section"))?;
        let (hbh_ratio, notes) = state.update(d, method, &start, &s);
        if self.adaptive_deferred {
            self.adaptive_pending = Some((s.path.clone(), state.to_text()?));
        } else {
            state.save(&s.path)?;
        }
        an.report.adaptive = Some(AdaptiveInfo {
            state: s.path.display().to_string(),
            rule: s.rule.name().into(),
            per_variable: s.per_variable,
            window: s.window,
            window_filled: state.window.len(),
            cycles: state.cycles,
            bounds: s.bounds,
            multiplier: in_force.0,
            multiplier_next: state.multiplier,
            variable_multipliers: in_force.1,
            variable_multipliers_next: state.variable_multipliers.clone(),
            hbh_ratio,
            notes,
        });
        Ok(an)
    }

    /// Defers the rewrite of the `adaptive_state` file after each analysis until [`Analyser::commit_adaptive_state`]
    /// (for a caller that writes outputs of its own first: the state must not run ahead of them). Off by default.
    pub fn defer_adaptive_commit(&mut self, on: bool) {
        self.adaptive_deferred = on;
        if !on {
            self.adaptive_pending = None;
            self.mix_write = None;
        }
    }

    /// Writes the state of the last successful analysis, when its commit was deferred (nothing to do otherwise).
    /// The `mix_state` files of that analysis ([`crate::var::mix`]) are written with it: every temporary file first,
    /// then the renames, so that a write that fails changes none of them.
    pub fn commit_adaptive_state(&mut self) -> Result<()> {
        let adaptive = self.adaptive_pending.take();
        let mix = self.mix_write.take();
        let mut files: Vec<(PathBuf, &[u8])> = Vec::new();
        if let Some((path, text)) = &adaptive {
            files.push((path.clone(), text.as_bytes()));
        }
        if let Some((state, text, fields)) = &mix {
            if let Some(f) = fields {
                files.push((crate::var::mix::fields_path(state), f));
            }
            files.push((state.clone(), text.as_bytes()));
        }
        let refs: Vec<(&Path, &[u8])> = files.iter().map(|(p, b)| (p.as_path(), *b)).collect();
        crate::outfile::write_all_whole(&refs).map_err(|e| {
            let names: Vec<String> = files.iter().map(|(p, _)| format!("'{}'", p.display())).collect();
            Error::io(format!("adaptive_state / mix_state {}: cannot write them: {}", names.join(", "), e.message))
        })
    }

    /// The B of the host's options, before any multiplier.
    fn start_of(&self, method: Method) -> Result<Start> {
        let o = &self.options;
        let start = match method {
            Method::Var3d => Start {
                scale: o.baseline_variance_factor.unwrap_or(self.bundle.baseline_variance_factor),
                hybrid: None,
            },
            Method::L3dvar | Method::L4dvar => Start { scale: o.latent_variance_factor.unwrap_or(1.0), hybrid: None },
            Method::Hybrid => {
                let hs = self.hybrid_settings()?;
                let names = self.bundle.layout.variables.iter().map(|v| v.name.clone()).collect();
                Start { scale: hs.alpha + hs.beta, hybrid: Some((hs, names)) }
            }
        };
        if !(start.scale > 0.0 && start.scale.is_finite()) {
            return Err(Error::arg(format!(
                "adaptive_state: the B of method '{}' has scale {} in the options; it must be > 0 to be sized",
                method.name(),
                start.scale
            )));
        }
        Ok(start)
    }
}
