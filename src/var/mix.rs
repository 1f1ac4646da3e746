//! The hybrid's latent : static mix chosen online while cycling (options `mix_candidates`, `mix_state`,
//! `mix_window`).
//!
//! Desroziers statistics size a B but cannot choose between its latent and its static part: they compare variance
//! profiles, which the two parts share (docs/robustness-matrix.md, "Sized from innovations"). How an analysis fits
//! later, independent observations can. With `mix_candidates = [L_1, ..., L_K]` (latent shares) every hybrid
//! analysis
//!
//! 1. reads the state of `mix_state` (missing: a new one, the share L_1 everywhere);
//! 2. scores the last cycle's candidates, when the state holds them: F_k, candidate k's analysis A_k of the last
//!    cycle carried to this time, against this cycle's observations, which are independent of the last analysis:
//!    d = ((O - F_k)^2 - (O - x_b)^2) / sigma_o^2, summed per variable and band ([`Withheld::evaluate`]) into a
//!    window of the last `mix_window` cycles. How A_k is carried (`mix_score`):
//!    - `"model"` (default): F_k is the host's step model (`lda_set_step_model`) run `mix_lead_hours` from A_k, as the
//!      host runs it from its own analysis A to make x_b. This sees what the model does to each increment (balance,
//!      spin-up): what decides a cycle;
//!    - `"persistence"`: no forecast, F_k = x_b + (A_k - A), the difference between the analyses taken to persist.
//!      Cheaper, and in the reference 30-day cycle it chose too much static B (README, "Cycling experiment");
//!    - with analysis times from the host ([`Analyser::set_analysis_time`]), the state records when the forecasts
//!      are valid (that time plus `mix_lead_hours`) and only the analysis at that time scores them: after a
//!      skipped cycle they are noted and dropped, not compared with observations of another time;
//! 3. chooses per bundle variable and latitude class the share with the lowest mean d over the window, from the
//!    variable's own observations, else from its group's (wind: u, v; mass: t, z, ps: the static B's z is the
//!    hydrostatic integral of t), else from all observations. The classes are extratropics (nh and sh pooled) and
//!    tropics, or with `mix_hemispheres = true` nh, tropics and sh apart: a network whose observations sit mostly
//!    in one hemisphere (the land sondes: 184 NH stations, 32 SH) otherwise gives the other hemisphere its choice;
//! 4. runs the analysis with alpha = L S and beta = (1 - L) S per variable and class, S = alpha + beta of the options
//!    in force (after the `adaptive_state` multipliers, which the mix leaves unchanged). A variable the options keep
//!    out of one part (alpha or beta 0, or not in `hybrid_variables`) keeps its weights: nothing to choose;
//! 5. analyses the same background and observations with each candidate's weights and keeps what F_k needs for the
//!    next cycle in `<mix_state>.fields` (binary: the forecasts, or A_k - A); the state and its fields are written
//!    together with the `adaptive_state` and before the host's arrays ([`Analyser::commit_adaptive_state`]): a failed
//!    analysis or write changes none of them. A candidate that fails leaves no evidence for the next cycle (noted in
//!    the report); the analysis itself stands.
//!
//! The cost is K more analyses per cycle, and with `"model"` K forecasts. The python driver's `latentda-cycle run
//! --choose-by forecast` is the same scheme outside the library, `--choose-by persistence` the persistence one.
//!
//! One state file belongs to one analysing context, as for `adaptive_state`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::VariableWeights;
use crate::error::{Error, Result};
use crate::model::forecast::StepModel;
use crate::obs::Observation;
use crate::var::analysis::{Analyser, Analysis};
use crate::var::desroziers::{CLASSES, CLASS_PAIRS, GROUPS};
use crate::var::formulation::Formulation;
use crate::var::options::{Method, MixScore, Options, OutputMode};
use crate::var::report::MixInfo;
use crate::var::threed::ThreeD;
use crate::var::withheld::WithheldCell;

/// Version of the state file's format.
pub const STATE_FORMAT: u32 = 1;

/// Most model steps of one candidate's forecast (`mix_lead_hours` over the model's time step).
const MAX_STEPS: usize = 10_000;

/// How far (hours) the analysis time may be from the time the pending forecasts are valid.
const VALID_TOLERANCE_HOURS: f64 = 1e-6;

/// First bytes of the pending fields file.
const FIELDS_MAGIC: &[u8; 8] = b"LDAMIX01";

/// The latitude classes the mix chooses a share for: their names, the diagnostic bands each pools, and the
/// indices in [`crate::bundle::BandWeights`] of the (alpha, beta) pairs each sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Classes {
    /// Class names (reports, state file).
    pub names: &'static [&'static str],
    bands: &'static [&'static [&'static str]],
    pairs: &'static [&'static [usize]],
}

/// One extratropical class for both hemispheres, and the tropics (`mix_hemispheres = false`).
pub const POOLED: Classes = Classes { names: &CLASSES, bands: &[&["nh", "sh"], &["tropics"]], pairs: &CLASS_PAIRS };

/// The northern extratropics, the tropics and the southern extratropics apart (`mix_hemispheres = true`).
pub const HEMISPHERES: Classes =
    Classes { names: &["nh", "tropics", "sh"], bands: &[&["nh"], &["tropics"], &["sh"]], pairs: &[&[0], &[2], &[4]] };

impl Classes {
    /// The classes of options `o`.
    pub fn of(o: &Options) -> Classes {
        if o.mix_hemispheres {
            HEMISPHERES
        } else {
            POOLED
        }
    }

    fn names_owned(&self) -> Vec<String> {
        self.names.iter().map(|s| s.to_string()).collect()
    }
}

/// The state a host keeps between cycles (the JSON file of option `mix_state`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MixState {
    /// Format version ([`STATE_FORMAT`]).
    pub format: u32,
    /// Bundle the state belongs to.
    pub bundle: String,
    /// The candidate latent shares (the options' `mix_candidates` when it was written).
    pub candidates: Vec<f64>,
    /// How the candidates are carried to the next cycle (`mix_score`: "model" or "persistence").
    pub score: String,
    /// Analyses run so far.
    pub cycles: usize,
    /// The latitude classes of `choice` and `sources` (absent from states written before hemispheric classes:
    /// extratropics, tropics).
    #[serde(default = "pooled_names")]
    pub classes: Vec<String>,
    /// The classes the state was written with, when the options' differ (`mix_hemispheres` changed between
    /// analyses); not stored.
    #[serde(skip)]
    pub reclassed: Option<Vec<String>>,
    /// The latent share per variable and class (`classes`) of the next analysis.
    pub choice: BTreeMap<String, Vec<f64>>,
    /// Where each choice's evidence came from ("own", "group", "all"; "none": no evidence yet).
    pub sources: BTreeMap<String, Vec<String>>,
    /// Per scored cycle (oldest first, at most `mix_window`), per candidate: its cells (variable x band).
    pub window: Vec<Vec<Vec<WithheldCell>>>,
    /// The cycle count at which the pending fields (`<file>.fields`: the forecasts F_k, or A_k - A) were made;
    /// `None`: none to score.
    pub pending: Option<usize>,
    /// When the pending fields are valid (hours; the analysis time that made them plus `mix_lead_hours`), if the
    /// host sets analysis times ([`Analyser::set_analysis_time`]). Absent from states of hosts that do not.
    #[serde(default)]
    pub pending_valid_hours: Option<f64>,
    /// The analysis count (`cycles` before it) from which the candidates run again (`mix_every`): the run's count
    /// plus `mix_every` after candidates that wrote their fields, the next analysis after candidates that failed;
    /// an analysis whose pending candidates could not be scored runs them at once.
    #[serde(default)]
    pub next_run: usize,
}

fn pooled_names() -> Vec<String> {
    POOLED.names_owned()
}

/// The candidate's name in reports: "L0.7" for latent share 0.7.
pub fn share_name(share: f64) -> String {
    format!("L{share}")
}

impl MixState {
    /// A new state: the first candidate everywhere, no evidence.
    pub fn new(bundle: &str, candidates: &[f64], score: MixScore, classes: Classes) -> MixState {
        MixState {
            format: STATE_FORMAT,
            bundle: bundle.to_string(),
            candidates: candidates.to_vec(),
            score: score.name().into(),
            classes: classes.names_owned(),
            reclassed: None,
            cycles: 0,
            choice: BTreeMap::new(),
            sources: BTreeMap::new(),
            window: Vec::new(),
            pending: None,
            pending_valid_hours: None,
            next_run: 0,
        }
    }

    /// Reads the state of `path` (a new one when the file does not exist) and checks that it belongs to this bundle
    /// and these candidates; errors name the file.
    pub fn load(path: &Path, bundle: &str, candidates: &[f64], score: MixScore, classes: Classes) -> Result<MixState> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(MixState::new(bundle, candidates, score, classes))
            }
            Err(e) => return Err(Error::io(format!("mix_state '{}': cannot read: {e}", path.display()))),
        };
        let mut s: MixState = serde_json::from_str(&text)
            .map_err(|e| Error::arg(format!("mix_state '{}': not a latentda mix state file: {e}", path.display())))?;
        let bad = |what: String| Error::arg(format!("mix_state '{}': {what}", path.display()));
        if s.format != STATE_FORMAT {
            return Err(bad(format!("format {} is not {STATE_FORMAT}", s.format)));
        }
        if s.bundle != bundle {
            return Err(bad(format!("written for bundle '{}', not '{bundle}'", s.bundle)));
        }
        if s.candidates != candidates {
            return Err(bad(format!(
                "written for mix_candidates {:?}, the options give {candidates:?}: start a new state file",
                s.candidates
            )));
        }
        if s.score != score.name() {
            return Err(bad(format!(
                "written with mix_score '{}', the options give '{}': start a new state file",
                s.score,
                score.name()
            )));
        }
        if let Some((v, x)) = s.choice.iter().find(|(_, x)| x.len() != s.classes.len()) {
            return Err(bad(format!("the choice of '{v}' ({x:?}) does not have one share per class {:?}", s.classes)));
        }
        if s.classes != classes.names {
            // the window holds the scores per band, not per class: the evidence carries over, the choice is made
            // again with the options' classes (with_mix) and the report notes it
            s.reclassed = Some(std::mem::replace(&mut s.classes, classes.names_owned()));
            s.choice.clear();
            s.sources.clear();
        }
        if s.window.iter().any(|c| c.len() != candidates.len()) {
            return Err(bad("a window entry does not have one set of cells per candidate".into()));
        }
        if let Some((v, x)) = s.choice.iter().find(|(_, x)| !x.iter().all(|l| candidates.contains(l))) {
            return Err(bad(format!("the choice of '{v}' ({x:?}) is not among the candidates")));
        }
        Ok(s)
    }

    /// The latent shares of variable `v` in force, one per class.
    fn share_of(&self, v: &str) -> Vec<f64> {
        self.choice.get(v).cloned().unwrap_or_else(|| vec![self.candidates[0]; self.classes.len()])
    }

    /// Pools the window: per candidate, per (variable, class index), (n, sum d).
    fn pooled(&self, classes: Classes) -> Vec<ClassSums> {
        let mut out = vec![BTreeMap::new(); self.candidates.len()];
        for cycle in &self.window {
            for (k, cells) in cycle.iter().enumerate() {
                add_class_sums(&mut out[k], cells, classes);
            }
        }
        out
    }

    /// Chooses again from the window for every variable of `names` (module documentation, step 3).
    fn choose(&mut self, names: &[String], classes: Classes) {
        let pooled = self.pooled(classes);
        let nc = classes.names.len();
        for v in names {
            let mut share = vec![self.candidates[0]; nc];
            let mut source = vec![String::from("none"); nc];
            let group: Vec<String> = GROUPS
                .iter()
                .find(|(_, m)| m.contains(&v.as_str()))
                .map_or_else(|| vec![v.clone()], |(_, m)| m.iter().map(|s| s.to_string()).collect());
            for class in 0..nc {
                for (where_, members) in [("own", vec![v.clone()]), ("group", group.clone()), ("all", names.to_vec())] {
                    // mean d of each candidate over the members' observations (the same observations for all)
                    let best = pooled
                        .iter()
                        .enumerate()
                        .filter_map(|(k, p)| {
                            let (n, s) = members.iter().fold((0usize, 0.0), |(n, s), m| {
                                let (dn, ds) = p.get(&(m.clone(), class)).copied().unwrap_or((0, 0.0));
                                (n + dn, s + ds)
                            });
                            (n > 0).then_some((s / n as f64, k))
                        })
                        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                    if let Some((_, k)) = best {
                        share[class] = self.candidates[k];
                        source[class] = where_.into();
                        break;
                    }
                }
            }
            self.choice.insert(v.clone(), share);
            self.sources.insert(v.clone(), source);
        }
    }
}

/// Observation counts and sums of d per (variable, class index).
type ClassSums = BTreeMap<(String, usize), (usize, f64)>;

/// Adds the counts and sums of d of `cells` (variable x band) into `acc`, per (variable, class index).
fn add_class_sums(acc: &mut ClassSums, cells: &[WithheldCell], classes: Classes) {
    for c in cells {
        if let Some(class) = classes.bands.iter().position(|b| b.contains(&c.band.as_str())) {
            let e = acc.entry((c.group.clone(), class)).or_insert((0, 0.0));
            e.0 += c.n;
            e.1 += c.sum_d;
        }
    }
}

/// The pending fields file of state file `path`.
pub fn fields_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".fields");
    PathBuf::from(p)
}

/// The bytes of the pending fields (tag, then each field).
fn fields_bytes(tag: usize, fields: &[Vec<f64>]) -> Vec<u8> {
    let n = fields.first().map_or(0, Vec::len);
    let mut b = Vec::with_capacity(32 + 8 * n * fields.len());
    b.extend_from_slice(FIELDS_MAGIC);
    for x in [tag, fields.len(), n] {
        b.extend_from_slice(&(x as u64).to_le_bytes());
    }
    for f in fields {
        f.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
    }
    b
}

/// Reads the pending fields of `path` made at cycle `tag`: K fields of n values. `Ok(Err(note))` when the file is
/// missing or belongs to another cycle (a state written without its fields, after a crash between the two renames).
fn read_fields(path: &Path, tag: usize, k: usize, n: usize) -> Result<std::result::Result<Vec<Vec<f64>>, String>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(format!("'{}' is missing: nothing scored this cycle", path.display())))
        }
        Err(e) => return Err(Error::io(format!("mix_state fields '{}': cannot read: {e}", path.display()))),
    };
    let word = |i: usize| -> Option<usize> {
        bytes.get(8 + 8 * i..16 + 8 * i).map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")) as usize)
    };
    if bytes.get(..8) != Some(FIELDS_MAGIC.as_slice()) || bytes.len() != 32 + 8 * k * n {
        return Err(Error::arg(format!(
            "mix_state fields '{}': not a latentda mix fields file of {k} fields of {n} values",
            path.display()
        )));
    }
    if (word(0), word(1), word(2)) != (Some(tag), Some(k), Some(n)) {
        return Ok(Err(format!(
            "'{}' was made at cycle {:?}, the state expects cycle {tag}: nothing scored this cycle",
            path.display(),
            word(0)
        )));
    }
    let vals: Vec<f64> =
        bytes[32..].chunks_exact(8).map(|w| f64::from_le_bytes(w.try_into().expect("8 bytes"))).collect();
    Ok(Ok(vals.chunks(n).map(<[f64]>::to_vec).collect()))
}

/// `steps` steps of `model` from `x`.
fn forecast(model: &mut dyn StepModel, mut x: Vec<f64>, steps: usize) -> Result<Vec<f64>> {
    let mut next = vec![0.0; x.len()];
    for _ in 0..steps {
        model.step(&x, &mut next)?;
        std::mem::swap(&mut x, &mut next);
    }
    Ok(x)
}

/// The options with each variable's weights set to latent share `share(v)` (one per class of `classes`) of its
/// total in force (module documentation, step 4), and the shares applied (variables with nothing to choose left
/// out).
fn mixed_options(
    a: &Analyser,
    classes: Classes,
    share: impl Fn(&str) -> Vec<f64>,
) -> Result<(Options, BTreeMap<String, Vec<f64>>)> {
    let hs = a.hybrid_settings()?;
    let lay = &a.bundle.layout;
    let mut o = a.options().clone();
    let mut applied = BTreeMap::new();
    let mut table = BTreeMap::new();
    for (v, var) in lay.variables.iter().enumerate() {
        let w = hs.per_variable[v];
        let l = share(&var.name);
        let mut out = w;
        let mut used = vec![f64::NAN; classes.names.len()];
        for (class, pairs) in classes.pairs.iter().enumerate() {
            for &i in pairs.iter() {
                let (al, be) = (w[i], w[i + 1]);
                if hs.keep[v] && al > 0.0 && be > 0.0 {
                    let s = al + be;
                    (out[i], out[i + 1]) = (l[class] * s, (1.0 - l[class]) * s);
                    used[class] = l[class];
                }
            }
        }
        if used.iter().any(|x| !x.is_nan()) {
            applied.insert(var.name.clone(), used);
        }
        table.insert(var.name.clone(), VariableWeights::of(out));
    }
    o.hybrid_variable_weights = Some(table);
    Ok((o, applied))
}

impl Analyser {
    /// Runs `f`'s analysis with the mix of option `mix_candidates` (module documentation); without that option it
    /// runs it as is. The files are written with the adaptive state ([`Analyser::commit_adaptive_state`]). The
    /// options in force are those of the caller again afterwards, whatever happened.
    pub(crate) fn with_mix(
        &mut self,
        x_b: &[f64],
        obs: &[Observation],
        mode: OutputMode,
        f: &mut dyn Formulation,
        mut model: Option<&mut dyn StepModel>,
    ) -> Result<Analysis> {
        self.mix_write = None;
        let (Some(candidates), Some(path)) = (self.options.mix_candidates.clone(), self.options.mix_state.clone())
        else {
            return self.run_once(x_b, obs, mode, f);
        };
        let path = PathBuf::from(path);
        let method = f.method();
        if method != Method::Hybrid {
            return Err(Error::arg(format!(
                "mix_candidates chooses the hybrid's latent : static mix: method '{}' has no mix (remove the option)",
                method.name()
            )));
        }
        if self.ensemble_size() > 0 {
            return Err(Error::arg(
                "mix_candidates: with ensemble members the hybrid has a third part, which the mix does not weigh: \
                 remove the members or the option",
            ));
        }
        let score = self.options.mix_score;
        let steps = match (score, model.as_deref()) {
            (MixScore::Persistence, _) => 0,
            (MixScore::Model, None) => {
                return Err(Error::arg(
                    "mix_score = \"model\" forecasts each candidate with the host's step model: set one \
                     (lda_set_step_model), or use mix_score = \"persistence\"",
                ))
            }
            (MixScore::Model, Some(m)) => {
                let (lead, dt) = (self.options.mix_lead_hours, m.time_step_hours());
                let n = (lead / dt).round();
                if n < 1.0 || n > MAX_STEPS as f64 || (n * dt - lead).abs() > 1e-9 * lead {
                    return Err(Error::arg(format!(
                        "mix_lead_hours = {lead} is not a whole number (1 to {MAX_STEPS}) of the step model's {dt} h steps"
                    )));
                }
                n as usize
            }
        };
        self.check_state(x_b, "background")?;
        let names: Vec<String> = self.bundle.layout.variables.iter().map(|v| v.name.clone()).collect();
        let classes = Classes::of(&self.options);
        let mut state = MixState::load(&path, &self.bundle.name, &candidates, score, classes)?;
        let mut notes = Vec::new();
        if let Some(old) = state.reclassed.take() {
            notes.push(format!(
                "the state was written with the classes {old:?}, the options give {:?} (mix_hemispheres): the \
                 choice is made again from the window's evidence",
                classes.names
            ));
            state.choose(&names, classes);
        }
        // Step 2: the last cycle's candidates against this cycle's observations.
        let mut scored = Vec::new();
        let expected = state.pending.is_some();
        let now = self.analysis_time;
        let stale = match (state.pending.and(state.pending_valid_hours), now) {
            (Some(valid), Some(t)) if (valid - t).abs() > VALID_TOLERANCE_HOURS => Some(format!(
                "the last cycle's candidate forecasts are valid at {valid} h, this analysis is at {t} h (a cycle \
                 skipped, or another cycle length than mix_lead_hours): nothing scored this cycle"
            )),
            (Some(valid), None) => Some(format!(
                "the last cycle's candidate forecasts are valid at {valid} h and this analysis has no time \
                 (lda_set_analysis_time): nothing scored this cycle"
            )),
            _ => None,
        };
        if let Some(note) = stale {
            notes.push(note);
        } else if let Some(tag) = state.pending {
            let n = self.bundle.layout.state_len();
            match read_fields(&fields_path(&path), tag, candidates.len(), n)? {
                Ok(fields) => {
                    let mut cycle = Vec::with_capacity(fields.len());
                    for field in fields {
                        let f_k: Vec<f64> = match score {
                            MixScore::Model => field,
                            MixScore::Persistence => x_b.iter().zip(&field).map(|(b, d)| b + d).collect(),
                        };
                        let w = self.verify_withheld(obs, x_b, &f_k)?;
                        let cells: Vec<WithheldCell> =
                            w.cells.into_iter().filter(|c| c.n > 0 && c.group != "all" && c.band != "global").collect();
                        if cells.iter().any(|c| !c.sum_d.is_finite()) {
                            break;
                        }
                        let mut sums = ClassSums::new();
                        add_class_sums(&mut sums, &cells, classes);
                        scored.push(
                            sums.into_iter()
                                .map(|((v, class), (n, s))| (format!("{v}/{}", classes.names[class]), s / n as f64))
                                .collect(),
                        );
                        cycle.push(cells);
                    }
                    if cycle.len() < candidates.len() {
                        // a forecast that blew up: no evidence from this cycle rather than an infinite one
                        notes.push(
                            "a candidate's forecast gave a non-finite score: this cycle's evidence dropped".into(),
                        );
                        scored.clear();
                    } else {
                        state.window.push(cycle);
                    }
                    let excess = state.window.len().saturating_sub(self.options.mix_window);
                    state.window.drain(..excess);
                    state.choose(&names, classes);
                }
                Err(note) => notes.push(note),
            }
        }
        // Step 4: the analysis with the shares in force.
        let caller = self.options.clone();
        let (o, applied) = mixed_options(self, classes, |v| state.share_of(v))?;
        let sources = applied.keys().map(|v| (v.clone(), state.sources.get(v).cloned().unwrap_or_default())).collect();
        let res = self.set_options(o).and_then(|_| self.run_once(x_b, obs, mode, f));
        let mut an = match res {
            Ok(an) => an,
            Err(e) => {
                self.options = caller;
                return Err(e);
            }
        };
        // Step 5: every candidate's analysis of the same background and observations (at every `mix_every`-th
        // analysis of this state, and at once when this one could not score the last run: a stale or missing
        // forecast must not cost a whole period of evidence; the others leave nothing pending).
        let t = std::time::Instant::now();
        let k = state.cycles;
        let run_candidates = k >= state.next_run || (expected && scored.is_empty());
        let mut fields = Vec::with_capacity(candidates.len());
        for &l in candidates.iter().filter(|_| run_candidates) {
            self.options = caller.clone();
            let r = mixed_options(self, classes, |_| vec![l; classes.names.len()]).and_then(|(o, _)| {
                self.set_options(o)?;
                let mut three = ThreeD::new(Method::Hybrid, OutputMode::Analysis)?;
                self.run_once(x_b, obs, OutputMode::Analysis, &mut three)
            });
            let r = r.and_then(|c| match model.as_deref_mut() {
                Some(m) if score == MixScore::Model => forecast(m, c.analysis, steps),
                _ => Ok(c.analysis.iter().zip(&an.analysis).map(|(a, b)| a - b).collect()),
            });
            let r = r.and_then(|field| match field.iter().position(|x| !x.is_finite()) {
                Some(i) => Err(Error::backend(format!("value {i} of its forecast is not finite"))),
                None => Ok(field),
            });
            match r {
                Ok(field) => fields.push(field),
                Err(e) => {
                    notes.push(format!(
                        "candidate {}: its analysis or forecast failed ({}): nothing to score next cycle",
                        share_name(l),
                        e.message
                    ));
                    break;
                }
            }
        }
        self.options = caller;
        state.cycles = state.cycles.saturating_add(1);
        let written = run_candidates && fields.len() == candidates.len();
        if run_candidates {
            state.next_run = if written { k.saturating_add(self.options.mix_every) } else { k.saturating_add(1) };
        }
        let fields = written.then(|| fields_bytes(state.cycles, &fields));
        state.pending = fields.as_ref().map(|_| state.cycles);
        state.pending_valid_hours = state.pending.and(now.map(|t| t + self.options.mix_lead_hours));
        let text = serde_json::to_string_pretty(&state).map_err(|e| Error::io(format!("mix state: {e}")))?;
        self.mix_write = Some((path.clone(), text, fields));
        an.report.mix = Some(MixInfo {
            state: path.display().to_string(),
            candidates: candidates.clone(),
            window_filled: state.window.len(),
            window: self.options.mix_window,
            cycles: state.cycles,
            classes: classes.names_owned(),
            choice: applied.clone(),
            sources,
            scored,
            candidates_s: t.elapsed().as_secs_f64(),
            notes,
            candidates_run: run_candidates,
            analysis_time_hours: now,
            valid_next_hours: state.pending_valid_hours,
        });
        Ok(an)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(group: &str, band: &str, n: usize, sum_d: f64) -> WithheldCell {
        WithheldCell { group: group.into(), band: band.into(), n, sum_d, ..Default::default() }
    }

    #[test]
    fn choice_follows_own_then_group_then_all_evidence() {
        let names: Vec<String> = ["u", "v", "t", "q", "z", "ps"].iter().map(|s| s.to_string()).collect();
        let mut s = MixState::new("b", &[0.7, 0.0], MixScore::Model, POOLED);
        // u: L0 better in the extratropics, L0.7 in the tropics; t: L0.7 better; nothing else observed
        s.window.push(vec![
            vec![cell("u", "nh", 10, -1.0), cell("u", "tropics", 5, -2.0), cell("t", "sh", 4, -3.0)],
            vec![cell("u", "nh", 10, -2.0), cell("u", "tropics", 5, -1.0), cell("t", "sh", 4, -1.0)],
        ]);
        s.choose(&names, POOLED);
        assert_eq!(s.choice["u"], [0.0, 0.7]);
        assert_eq!(s.sources["u"], ["own".to_string(), "own".to_string()]);
        // v follows its group (u); z and ps follow t; q (no group observed) follows all
        assert_eq!(s.choice["v"], [0.0, 0.7]);
        assert_eq!(s.sources["v"][0], "group");
        assert_eq!(s.choice["z"][0], 0.7);
        assert_eq!(s.sources["ps"][0], "group");
        // extratropics over all: L0.7 sum -4 / 14, L0 -3 / 14: L0.7
        assert_eq!((s.choice["q"][0], s.sources["q"][0].as_str()), (0.7, "all"));
        // tropics: only u observed there
        assert_eq!((s.choice["t"][1], s.sources["t"][1].as_str()), (0.7, "all"));
    }

    #[test]
    fn the_window_pools_cycles_and_keeps_the_first_without_evidence() {
        let names = vec!["u".to_string()];
        let mut s = MixState::new("b", &[0.4, 0.9], MixScore::Model, POOLED);
        s.choose(&names, POOLED);
        assert_eq!((s.choice["u"].as_slice(), s.sources["u"][0].as_str()), ([0.4, 0.4].as_slice(), "none"));
        s.window.push(vec![vec![cell("u", "nh", 2, -1.0)], vec![cell("u", "nh", 2, -0.5)]]);
        s.window.push(vec![vec![cell("u", "sh", 2, 0.0)], vec![cell("u", "sh", 6, -1.0)]]);
        s.choose(&names, POOLED);
        // pooled: L0.4 -1 / 4 = -0.25, L0.9 -1.5 / 8 = -0.1875
        assert_eq!(s.choice["u"][0], 0.4);
    }

    #[test]
    fn hemispheric_classes_choose_the_south_from_its_own_cells() {
        let names: Vec<String> = ["u", "v", "t", "q", "z", "ps"].iter().map(|s| s.to_string()).collect();
        // u: L0.7 wins the nh by far (many stations), L0 the sh (few); pooled, the nh decides both
        let window = vec![
            vec![cell("u", "nh", 100, -50.0), cell("u", "sh", 10, 2.0), cell("u", "tropics", 5, -1.0)],
            vec![cell("u", "nh", 100, -40.0), cell("u", "sh", 10, -3.0), cell("u", "tropics", 5, -2.0)],
        ];
        let mut pooled = MixState::new("b", &[0.7, 0.0], MixScore::Model, POOLED);
        pooled.window.push(window.clone());
        pooled.choose(&names, POOLED);
        assert_eq!(pooled.choice["u"], [0.7, 0.0]);
        let mut hemi = MixState::new("b", &[0.7, 0.0], MixScore::Model, HEMISPHERES);
        hemi.window.push(window);
        hemi.choose(&names, HEMISPHERES);
        // nh, tropics, sh
        assert_eq!(hemi.choice["u"], [0.7, 0.0, 0.0]);
        assert_eq!(hemi.sources["u"], ["own", "own", "own"]);
        // v follows u's class by class; t (no mass observed) follows all
        assert_eq!((hemi.choice["v"].clone(), hemi.sources["v"][2].as_str()), (vec![0.7, 0.0, 0.0], "group"));
        assert_eq!(hemi.choice["t"][2], 0.0);
        assert_eq!(hemi.classes, ["nh", "tropics", "sh"]);
    }

    #[test]
    fn a_state_of_other_classes_is_chosen_again_from_its_window() {
        let dir = std::env::temp_dir().join(format!("lda_mix_classes_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.json");
        let mut s = MixState::new("b", &[0.7, 0.0], MixScore::Model, POOLED);
        s.window.push(vec![vec![cell("u", "nh", 10, -2.0), cell("u", "sh", 10, 1.0)], vec![cell("u", "sh", 10, -1.0)]]);
        s.choose(&["u".to_string()], POOLED);
        // pooled: L0.7 (-2 + 1) / 20 against L0 -1 / 10 in the extratropics; no tropical evidence
        assert_eq!(s.choice["u"], [0.0, 0.7]);
        std::fs::write(&p, serde_json::to_string(&s).unwrap()).unwrap();
        let same = MixState::load(&p, "b", &[0.7, 0.0], MixScore::Model, POOLED).unwrap();
        assert_eq!((same.reclassed, same.choice["u"].clone()), (None, vec![0.0, 0.7]));
        // another class setting keeps the window and drops the choice, which with_mix makes again (noted)
        let mut other = MixState::load(&p, "b", &[0.7, 0.0], MixScore::Model, HEMISPHERES).unwrap();
        assert_eq!(other.reclassed.as_deref(), Some(["extratropics".to_string(), "tropics".to_string()].as_slice()));
        assert!(other.choice.is_empty() && other.window.len() == 1);
        other.choose(&["u".to_string()], HEMISPHERES);
        // nh: only L0.7 scored there; sh: L0 -1 / 10 against L0.7 +1 / 10
        assert_eq!(other.choice["u"][0], 0.7);
        assert_eq!(other.choice["u"][2], 0.0);
        // a state written before the classes were recorded reads as the pooled classes
        let mut v: serde_json::Value = serde_json::to_value(&s).unwrap();
        v.as_object_mut().unwrap().remove("classes");
        std::fs::write(&p, v.to_string()).unwrap();
        assert_eq!(
            MixState::load(&p, "b", &[0.7, 0.0], MixScore::Model, POOLED).unwrap().classes,
            ["extratropics", "tropics"]
        );
        // a choice with a share missing names the variable
        v["choice"]["u"] = serde_json::json!([0.7]);
        std::fs::write(&p, v.to_string()).unwrap();
        let e = MixState::load(&p, "b", &[0.7, 0.0], MixScore::Model, POOLED).unwrap_err();
        assert!(e.message.contains("'u'"), "{}", e.message);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn fields_round_trip_and_refuse_other_cycles_and_sizes() {
        let dir = std::env::temp_dir().join(format!("lda_mix_fields_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.fields");
        let f = vec![vec![1.0, -2.5, 3.0], vec![0.0, 1e-300, -0.0]];
        std::fs::write(&p, fields_bytes(7, &f)).unwrap();
        assert_eq!(read_fields(&p, 7, 2, 3).unwrap().unwrap(), f);
        assert!(read_fields(&p, 8, 2, 3).unwrap().unwrap_err().contains("cycle"));
        assert!(read_fields(&p, 7, 2, 4).unwrap_err().message.contains("not a latentda mix fields file"));
        assert!(read_fields(&dir.join("none"), 7, 2, 3).unwrap().unwrap_err().contains("missing"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn options_are_checked() {
        let o = |t: &str| Options::from_toml(t).err().map(|e| e.message);
        assert!(o("mix_candidates = [0.7, 0.0]").unwrap().contains("needs mix_state"));
        assert!(o("mix_state = \"m.json\"").unwrap().contains("without mix_candidates"));
        assert!(o("mix_candidates = [0.7, 1.2]\nmix_state = \"m\"").unwrap().contains("1.2"));
        assert!(o("mix_candidates = [0.7, 0.7]\nmix_state = \"m\"").unwrap().contains("twice"));
        assert!(o("mix_candidates = []\nmix_state = \"m\"").unwrap().contains("empty"));
        assert!(o("mix_window = 0").unwrap().contains("mix_window"));
        assert!(o("mix_candidates = [0.7, 0.0]\nmix_state = \"m\"").is_none());
    }
}
