//! Desroziers diagnostics: tuning B and R from innovations, without truth (Desroziers et al. 2005).
//!
//! With d_b = y - H x_b (innovation), d_a = y - H x_a (analysis residual) and H x_a - H x_b = d_b - d_a, an analysis
//! whose B and R are right satisfies, per observation subset,
//!
//! ```text
//! E[d_a d_b]              = R                (observation-error variance)
//! E[(H x_a - H x_b) d_b]  = H B H^T          (background-error variance at the observations)
//! E[d_b d_b]              = H B H^T + R      (holds for any gain: it is the sum of the two lines above)
//! ```
//!
//! Every analysis report carries, per variable group (each bundle variable, and `wind` = u + v, `mass` = t + z +
//! ps, `all`) and latitude band (`nh` lat > 20, `tropics` |lat| <= 20, `sh` lat < -20, `global`), over the observations
//! the analysis used: the sums of sigma_o^2 (the R in force), d_a d_b, (H x_a - H x_b) d_b, d_b d_b, d_b and
//! sigma_b^2 (the H B H^T in force, where sigma_b = H sqrt(diag B) is the background check's background-error sd
//! interpolated to the observation; null when no background check ran). Sums, not only means, so that reports can
//! be accumulated exactly ([`tune`], the `latentda tune` verb). The sums come twice: in physical units (null for
//! groups that mix units) and normalised, each term divided by the observation's sigma_o^2; the ratios
//! estimate / in force are taken from the normalised sums (each observation weighted as the analysis weighs it).
//!
//! Tuning (a fixed-point iteration, docs/b-operator.md): the B in force is g times a fixed shape (g: the variance
//! factor of the method's B, or the hybrid's alpha + beta). Over a set of reports k,
//!
//! ```text
//! g_new = sum_k sum_i (H x_a - H x_b)_i d_b,i / sigma_o,i^2  /  sum_k (1 / g_k) sum_i sigma_b,i^2 / sigma_o,i^2
//! ```
//!
//! which is g x (estimated / in-force H B H^T) when every report had the same g. Apply it, rerun, repeat until the
//! ratio is about 1. The hybrid's reports also split sigma_b^2 into its latent and static parts, and, with ensemble
//! members, its ensemble part (hybrid 3DEnVar's reports: static and ensemble), so that alpha, beta and gamma can be
//! fitted on their own ([`hybrid_split`]). With an ensemble part the joint scale g still scales alpha and beta only
//! (3dvar: the baseline factor), gamma stays: the fixed point of the step is then the one where the static parts
//! make up what the ensemble part leaves of the estimate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bundle::BandWeights;
use crate::error::{Error, Result};
use crate::obs::operator::ObsOperator;
use crate::obs::Observation;

/// Latitude bands of the diagnostics: name and whether a latitude belongs to it.
pub const BANDS: [&str; 4] = ["global", "nh", "tropics", "sh"];

/// Edge of the extratropical bands, degrees (nh: lat > 20, sh: lat < -20, tropics: the rest).
pub const BAND_EDGE: f64 = 20.0;

/// Multi-variable groups: name and member variable names (a group is reported when a bundle has a member).
pub const GROUPS: [(&str, &[&str]); 2] = [("wind", &["u", "v"]), ("mass", &["t", "z", "ps"])];

/// Whether a cell's group is composite (a [`GROUPS`] entry or `all`) rather than one bundle variable.
fn is_composite(group: &str) -> bool {
    group == "all" || GROUPS.iter().any(|(n, _)| *n == group)
}

/// Whether latitude `lat` (degrees) lies in band `band` (one of [`BANDS`]).
pub fn in_band(band: &str, lat: f64) -> bool {
    match band {
        "global" => true,
        "nh" => lat > BAND_EDGE,
        "sh" => lat < -BAND_EDGE,
        "tropics" => lat.abs() <= BAND_EDGE,
        _ => false,
    }
}

/// Sums over the observations of one cell (group x band). Accumulate reports by adding them field by field.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DesroziersSums {
    /// Number of used observations.
    pub n: usize,
    /// Sum of sigma_o^2 (the R in force; n in the normalised sums).
    pub sum_r: f64,
    /// Sum of d_a d_b.
    pub sum_da_db: f64,
    /// Sum of (H x_a - H x_b) d_b.
    pub sum_dhx_db: f64,
    /// Sum of d_b d_b.
    pub sum_db_db: f64,
    /// Sum of d_b (a bias makes the variance estimates above too large by its square).
    pub sum_db: f64,
    /// Sum of sigma_b^2, the H B H^T in force (null when the background-error sd was not computed).
    pub sum_hbh: Option<f64>,
    /// Hybrid only: the latent part of `sum_hbh`, alpha (H sd_latent)^2, or (H (sqrt(alpha(phi)) sd_latent))^2 with
    /// latitude-band weights (null otherwise).
    #[serde(default)]
    pub sum_hbh_latent: Option<f64>,
    /// Hybrid only: the static part of `sum_hbh`, beta (H sd_static)^2, or (H (sqrt(beta(phi)) sd_static))^2 with
    /// latitude-band weights (null otherwise). Hybrid 3DEnVar: the static B's (H sd_static)^2.
    #[serde(default)]
    pub sum_hbh_static: Option<f64>,
    /// With ensemble members (hybrid, or 3dvar as hybrid 3DEnVar): the ensemble part of `sum_hbh`, (H sd_ens)^2
    /// with gamma applied; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum_hbh_ensemble: Option<f64>,
}

/// The parts of sigma_b^2 in force at one observation: latent (hybrid), static (hybrid, hybrid 3DEnVar) and
/// ensemble (with members), each (H sd_part)^2 with its weight applied; `None` for a part the B does not have.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HbhParts {
    /// Latent part, alpha (H sd_latent)^2.
    pub latent: Option<f64>,
    /// Static part, beta (H sd_static)^2 (hybrid) or (H sd_static)^2 (hybrid 3DEnVar).
    pub statics: Option<f64>,
    /// Ensemble part, (H sd_ens)^2 with gamma.
    pub ensemble: Option<f64>,
}

/// Adds `x` to an optional sum that stays known only while every term is (`first`: the sum is still empty).
fn add_known(first: bool, acc: Option<f64>, x: Option<f64>) -> Option<f64> {
    match (first, acc, x) {
        (true, _, x) => x,
        (false, Some(a), Some(x)) => Some(a + x),
        _ => None,
    }
}

impl DesroziersSums {
    fn add_obs(&mut self, w: f64, r: f64, da: f64, db: f64, sb2: Option<f64>, parts: Option<HbhParts>) {
        let part = |f: fn(&HbhParts) -> Option<f64>| parts.as_ref().and_then(f).map(|p| w * p);
        self.sum_hbh_latent = add_known(self.n == 0, self.sum_hbh_latent, part(|p| p.latent));
        self.sum_hbh_static = add_known(self.n == 0, self.sum_hbh_static, part(|p| p.statics));
        self.sum_hbh_ensemble = add_known(self.n == 0, self.sum_hbh_ensemble, part(|p| p.ensemble));
        self.n += 1;
        self.sum_r += w * r;
        self.sum_da_db += w * da * db;
        self.sum_dhx_db += w * (db - da) * db;
        self.sum_db_db += w * db * db;
        self.sum_db += w.sqrt() * db;
        self.sum_hbh = match (self.n == 1, self.sum_hbh, sb2) {
            (true, _, Some(s)) => Some(w * s),
            (false, Some(acc), Some(s)) => Some(acc + w * s),
            _ => None,
        };
    }

    /// Adds another cell's sums (the H B H^T sum stays known only when both are known).
    pub fn add(&mut self, o: &DesroziersSums) {
        if o.n == 0 {
            return;
        }
        self.sum_hbh_latent = add_known(self.n == 0, self.sum_hbh_latent, o.sum_hbh_latent);
        self.sum_hbh_static = add_known(self.n == 0, self.sum_hbh_static, o.sum_hbh_static);
        self.sum_hbh_ensemble = add_known(self.n == 0, self.sum_hbh_ensemble, o.sum_hbh_ensemble);
        self.sum_hbh = match (self.n == 0, self.sum_hbh, o.sum_hbh) {
            (true, _, h) => h,
            (false, Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.n += o.n;
        self.sum_r += o.sum_r;
        self.sum_da_db += o.sum_da_db;
        self.sum_dhx_db += o.sum_dhx_db;
        self.sum_db_db += o.sum_db_db;
        self.sum_db += o.sum_db;
    }

    fn mean(&self, s: f64) -> Option<f64> {
        (self.n > 0).then(|| s / self.n as f64)
    }
}

/// One cell (variable group x latitude band): sums, means and ratios.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DesroziersCell {
    /// Variable group: a bundle variable, `wind`, `mass` or `all`.
    pub group: String,
    /// Latitude band: `global`, `nh` (lat > 20), `tropics` (|lat| <= 20) or `sh` (lat < -20).
    pub band: String,
    /// Units of the physical sums (empty when the group mixes units).
    pub units: String,
    /// Used observations in the cell.
    pub n: usize,
    /// Sums in physical units (null for groups that mix units).
    pub sums: Option<DesroziersSums>,
    /// Sums with each term divided by the observation's sigma_o^2 (dimensionless).
    pub normalised: DesroziersSums,
    /// Mean sigma_o^2: the R in force (physical units; null for mixed groups or n = 0).
    pub r_in_force: Option<f64>,
    /// `E[d_a d_b]`: the innovation estimate of R.
    pub r_estimate: Option<f64>,
    /// Mean sigma_b^2: the H B H^T in force (null when not computed).
    pub hbh_in_force: Option<f64>,
    /// `E[(H x_a - H x_b) d_b]`: the innovation estimate of H B H^T.
    pub hbh_estimate: Option<f64>,
    /// `E[d_b d_b]` (= the two estimates' sum).
    pub db_db: Option<f64>,
    /// Mean innovation `E[d_b]`.
    pub db_mean: Option<f64>,
    /// R estimate / R in force, from the normalised sums: sum(d_a d_b / sigma_o^2) / n.
    pub r_ratio: Option<f64>,
    /// H B H^T estimate / H B H^T in force, from the normalised sums: sum((H x_a - H x_b) d_b / sigma_o^2) /
    /// sum(sigma_b^2 / sigma_o^2).
    pub hbh_ratio: Option<f64>,
    /// `E[d_b^2]` / (R + H B H^T in force), normalised sums (about 1 when both are right).
    pub innovation_ratio: Option<f64>,
}

impl DesroziersCell {
    /// Recomputes the means and ratios from the sums (after accumulation).
    pub fn finish(&mut self) {
        self.n = self.normalised.n;
        let (m, s) = (&self.normalised, self.sums.as_ref());
        self.r_in_force = s.and_then(|s| s.mean(s.sum_r));
        self.r_estimate = s.and_then(|s| s.mean(s.sum_da_db));
        self.hbh_in_force = s.and_then(|s| s.sum_hbh.and_then(|h| s.mean(h)));
        self.hbh_estimate = s.and_then(|s| s.mean(s.sum_dhx_db));
        self.db_db = s.and_then(|s| s.mean(s.sum_db_db));
        self.db_mean = s.and_then(|s| s.mean(s.sum_db));
        self.r_ratio = m.mean(m.sum_da_db);
        self.hbh_ratio = m.sum_hbh.filter(|h| *h > 0.0 && m.n > 0).map(|h| m.sum_dhx_db / h);
        self.innovation_ratio = m.sum_hbh.filter(|_| m.n > 0).map(|h| m.sum_db_db / (m.sum_r + h));
    }
}

/// The B whose size the diagnostics judge: the factors and weights in force for the analysis.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BInForce {
    /// Factor on the latent B's variances (l3dvar, l4dvar, hybrid).
    pub latent_variance_factor: Option<f64>,
    /// Factor on the static B's variances (3dvar, hybrid).
    pub baseline_variance_factor: Option<f64>,
    /// Hybrid weight of the latent B.
    pub hybrid_alpha: Option<f64>,
    /// Hybrid weight of the static B.
    pub hybrid_beta: Option<f64>,
    /// Weight gamma of the ensemble part (with members: hybrid, or 3dvar as hybrid 3DEnVar); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble_gamma: Option<f64>,
    /// Hybrid only, when the weights vary (latitude bands, hemispheres or per variable): per bundle variable its
    /// weights in force, [alpha, beta, alpha_tropics, beta_tropics, alpha_sh, beta_sh] ([`BandWeights`]; reports
    /// written before hemispheric weights have the first four, the southern ones then being alpha and beta).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hybrid_weights: Option<BTreeMap<String, Vec<f64>>>,
}

/// The (alpha, beta) of weights `w` in the diagnostic band `band` ("nh", "tropics", "sh"; "extratropics" and any
/// other name: the northern pair).
pub fn band_pair(w: &BandWeights, band: &str) -> (f64, f64) {
    match band {
        "tropics" => (w[2], w[3]),
        "sh" => (w[4], w[5]),
        _ => (w[0], w[1]),
    }
}

impl BInForce {
    /// Hybrid: the weights ([`BandWeights`]) in force for variable `var`: its entry of `hybrid_weights` when the
    /// weights vary (an entry of four: the southern pair is the northern one), else the global alpha and beta at
    /// every latitude. `None` for an entry of another length.
    pub fn hybrid_weights_of(&self, var: &str) -> Option<BandWeights> {
        match self.hybrid_weights.as_ref().and_then(|w| w.get(var)) {
            Some(w) if w.len() == 6 => Some([w[0], w[1], w[2], w[3], w[4], w[5]]),
            Some(w) if w.len() == 4 => Some([w[0], w[1], w[2], w[3], w[0], w[1]]),
            Some(_) => None,
            None => {
                let (a, b) = (self.hybrid_alpha?, self.hybrid_beta?);
                Some([a, b, a, b, a, b])
            }
        }
    }

    /// The scale g of the method's B (the B in force is g times a fixed shape): the latent variance factor for
    /// l3dvar and l4dvar, the baseline variance factor for 3dvar, alpha + beta for the hybrid (whose shape is fixed
    /// while alpha / beta is).
    pub fn scale(&self, method: &str) -> Option<f64> {
        match method {
            "l3dvar" | "l4dvar" => self.latent_variance_factor,
            "3dvar" => self.baseline_variance_factor,
            "hybrid" => Some(self.hybrid_alpha? + self.hybrid_beta?),
            _ => None,
        }
    }
}

/// The report's `desroziers` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Desroziers {
    /// Analysis method.
    pub method: String,
    /// The B in force.
    pub b_in_force: BInForce,
    /// Where sigma_b (the H B H^T in force) came from, or why it is null.
    pub sigma_b: String,
    /// Cells, groups in the order: bundle variables, `wind`, `mass`, `all`; bands as [`BANDS`].
    pub cells: Vec<DesroziersCell>,
}

impl Desroziers {
    /// The cell of `group` and `band`.
    pub fn cell(&self, group: &str, band: &str) -> Option<&DesroziersCell> {
        self.cells.iter().find(|c| c.group == group && c.band == band)
    }
}

/// One used observation: bundle variable index, latitude, value y, H x_b, H x_a, sigma_o (as used: inflated in
/// l4dvar's later slots) and sigma_b (if known).
#[derive(Debug, Clone, Copy)]
pub struct Innovation {
    /// Bundle variable index.
    pub var: usize,
    /// Latitude, degrees.
    pub lat: f64,
    /// Observed value.
    pub y: f64,
    /// H x_b.
    pub hxb: f64,
    /// H x_a.
    pub hxa: f64,
    /// Observation-error sd in force.
    pub sigma: f64,
    /// Background-error sd in force at the observation (H sqrt(diag B)), if known.
    pub sigma_b: Option<f64>,
    /// The parts of sigma_b^2 in force (hybrid: latent and static; with members also the ensemble part).
    pub sigma_b_parts: Option<HbhParts>,
}

/// The cells of the diagnostics for observations `rows` of a bundle with variables `variables` (name, units).
pub fn cells(variables: &[(String, String)], rows: &[Innovation]) -> Vec<DesroziersCell> {
    // groups: name, units ("" if mixed), member variable indices
    let mut groups: Vec<(String, String, Vec<usize>)> =
        variables.iter().enumerate().map(|(v, (n, u))| (n.clone(), u.clone(), vec![v])).collect();
    for (g, names) in GROUPS {
        let members: Vec<usize> = names.iter().filter_map(|n| variables.iter().position(|(m, _)| m == n)).collect();
        if !members.is_empty() {
            groups.push((g.to_string(), common_units(variables, &members), members));
        }
    }
    groups.push((
        "all".into(),
        common_units(variables, &(0..variables.len()).collect::<Vec<_>>()),
        (0..variables.len()).collect(),
    ));
    // one pass over the observations: each adds to the groups of its variable, in "global" and in its own band
    let of_var: Vec<Vec<usize>> =
        (0..variables.len()).map(|v| (0..groups.len()).filter(|&g| groups[g].2.contains(&v)).collect()).collect();
    let mut acc = vec![[(); 4].map(|_| (DesroziersSums::default(), DesroziersSums::default())); groups.len()];
    for r in rows {
        let (db, da, r2) = (r.y - r.hxb, r.y - r.hxa, r.sigma * r.sigma);
        let sb2 = r.sigma_b.map(|s| s * s);
        // "global", and the observation's own band (none for a non-finite latitude, which H never locates)
        let own = (1..BANDS.len()).find(|&b| in_band(BANDS[b], r.lat));
        for &g in of_var.get(r.var).map(|v| v.as_slice()).unwrap_or(&[]) {
            for b in std::iter::once(0).chain(own) {
                let (phys, norm) = &mut acc[g][b];
                phys.add_obs(1.0, r2, da, db, sb2, r.sigma_b_parts);
                norm.add_obs(1.0 / r2, r2, da, db, sb2, r.sigma_b_parts);
            }
        }
    }
    let mut out = Vec::new();
    for ((g, units, members), cells) in groups.iter().zip(acc) {
        for (band, (phys, norm)) in BANDS.iter().zip(cells) {
            let mut c = DesroziersCell {
                group: g.clone(),
                band: band.to_string(),
                units: units.clone(),
                sums: (!units.is_empty() || members.len() == 1).then_some(phys),
                normalised: norm,
                ..Default::default()
            };
            c.finish();
            out.push(c);
        }
    }
    out
}

fn common_units(variables: &[(String, String)], members: &[usize]) -> String {
    let u = &variables[members[0]].1;
    if members.iter().all(|&m| &variables[m].1 == u) {
        u.clone()
    } else {
        String::new()
    }
}

/// The used observations of an analysis as [`Innovation`]s: rows of `h` (observations `obs`), H x_b and H x_a per
/// row, the sigma_o in force per row, and the background-error sd `sd` (the layout `h` applies to) if computed.
pub fn innovations(
    obs: &[Observation],
    h: &ObsOperator,
    hxb: &[f64],
    hxa: &[f64],
    sigma: &[f64],
    sd: Option<&[f64]>,
) -> Vec<Innovation> {
    let sigb = sd.map(|sd| {
        let mut s = vec![0.0; h.nrows()];
        h.apply(sd, &mut s);
        s
    });
    (0..h.nrows())
        .map(|r| {
            let o = &obs[h.rows[r]];
            Innovation {
                var: o.var.unwrap_or(0),
                lat: o.lat,
                y: o.value,
                hxb: hxb[r],
                hxa: hxa[r],
                sigma: sigma[r],
                sigma_b: sigb.as_ref().map(|s| s[r]),
                sigma_b_parts: None,
            }
        })
        .collect()
}

/// The result of accumulating the `desroziers` sections of a set of reports of one method ([`tune`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Tuning {
    /// Method of the reports.
    pub method: String,
    /// Reports accumulated.
    pub n_reports: usize,
    /// Accumulated cells (sums added, means and ratios recomputed).
    pub cells: Vec<DesroziersCell>,
    /// Group and band the suggestion is made from.
    pub group: String,
    /// See `group`.
    pub band: String,
    /// R estimate / R in force over that cell (no option scales R: scale the observation errors sigma_o by its
    /// square root).
    pub r_ratio: Option<f64>,
    /// H B H^T estimate / H B H^T in force over that cell (reports with sigma_b only).
    pub hbh_ratio: Option<f64>,
    /// The new scale g_new of the method's B (module documentation), if it can be estimated.
    pub scale_new: Option<f64>,
    /// Suggested options (name, value), in the order to write them.
    pub options: Vec<(String, f64)>,
    /// Hybrid only: alpha and beta fitted separately ([`hybrid_split`]), if the reports carry the latent and static
    /// parts of sigma_b^2 and the cells tell them apart; written instead of the joint scaling by
    /// [`Tuning::use_split`] (`latentda tune --hybrid-split`).
    pub hybrid_split: Option<HybridSplit>,
    /// Hybrid only: weights per bundle variable ([`BandWeights`]), each variable and band class scaled on its own
    /// ([`variable_weights`]); written as `hybrid_variable_weights` by [`Tuning::use_variable_weights`]
    /// (`latentda tune --per-variable`).
    pub variable_weights: Option<BTreeMap<String, BandWeights>>,
    /// Whether [`Tuning::options_toml`] writes `variable_weights`.
    pub write_variable_weights: bool,
    /// Warnings (missing sigma_b, varying hybrid mix, too few observations, ...).
    pub notes: Vec<String>,
}

/// Fewest observations (all reports together) in a variable's extratropical or tropical cells for
/// [`variable_weights`] to size that variable and band on its own; with fewer, the variable's group (wind, mass),
/// else all variables, sizes it.
pub const MIN_CELL_OBS: usize = 50;

/// How a cell's H B H^T is estimated from its normalised sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimate {
    /// E[(H x_a - H x_b) d_b] (Desroziers et al. 2005): unbiased at the fixed point, slow where R dominates.
    Desroziers,
    /// E[d_b^2] - R: holds for any gain when R is right, so one step reaches the scalar fixed point (noisier).
    Innovation,
}

impl Estimate {
    /// Parses `desroziers` or `innovation`.
    pub fn parse(s: &str) -> Result<Estimate> {
        match s {
            "desroziers" => Ok(Estimate::Desroziers),
            "innovation" => Ok(Estimate::Innovation),
            _ => Err(Error::arg(format!("estimate rule '{s}' is not known (use 'desroziers' or 'innovation')"))),
        }
    }

    /// Name used in options and reports.
    pub fn name(self) -> &'static str {
        match self {
            Estimate::Desroziers => "desroziers",
            Estimate::Innovation => "innovation",
        }
    }

    /// The H B H^T estimate of normalised sums `m` (sum over the observations, each divided by sigma_o^2).
    pub fn of(self, m: &DesroziersSums) -> f64 {
        match self {
            Estimate::Desroziers => m.sum_dhx_db,
            Estimate::Innovation => m.sum_db_db - m.n as f64,
        }
    }
}

/// Band classes of the per-variable sizing: extratropics (the nh and sh cells together) and tropics.
pub const CLASSES: [&str; 2] = ["extratropics", "tropics"];

/// The (alpha, beta) pairs of [`BandWeights`] that each class of [`CLASSES`] sets, by the index of the pair's alpha:
/// the extratropics both hemispheres' (northern 0, southern 4), the tropics 2.
pub const CLASS_PAIRS: [&[usize]; 2] = [&[0, 4], &[2]];

/// A bundle variable's B scales per band class (see [`variable_scales`]).
#[derive(Debug, Clone, PartialEq)]
pub struct VariableScales {
    /// The bundle variable.
    pub name: String,
    /// Its [extratropics, tropics] scales (`None`: too few observations anywhere to size it).
    pub scales: [Option<f64>; 2],
    /// Per class: neither the variable nor its group had enough observations, so the scale is the one over all
    /// variables. The variable's increments then come only through cross-covariances that no innovation checked,
    /// and the callers never let such a scale raise its B (see [`variable_weights`] and `crate::var::adaptive`).
    pub unobserved: [bool; 2],
}

/// The B scale of each bundle variable and band class over hybrid reports, from innovations: for variable v and
/// class c (see [`CLASSES`]), S_vc = sum_k E_vck / sum_k (H_vck / s_vck), with E the estimate `est` of H B H^T,
/// H the H B H^T in force and s_vck = alpha + beta of v in class c in report k (the report's `hybrid_weights`, else
/// its global alpha and beta): the joint Desroziers step of [`tune`] made per cell, in absolute terms (the alpha +
/// beta the cell's innovations ask for). A variable with fewer than [`MIN_CELL_OBS`] observations in a class (an
/// unobserved z, say) takes its group's scale (wind, mass), else the scale over all variables, else `None`. Returns
/// per variable (the last hybrid report's, bundle order) its [extratropics, tropics] scales, and notes on the
/// fallbacks.
pub fn variable_scales(sections: &[Desroziers], est: Estimate) -> (Vec<VariableScales>, Vec<String>) {
    let mut notes = Vec::new();
    let Some(last) = sections.iter().rev().find(|s| s.method == "hybrid") else {
        return (Vec::new(), vec!["no hybrid report: no per-variable scales".into()]);
    };
    let vars: Vec<String> =
        last.cells.iter().filter(|c| !is_composite(&c.group) && c.band == "global").map(|c| c.group.clone()).collect();
    // per variable and class (0 extratropics, 1 tropics): [num, den, n]
    let mut acc: BTreeMap<(String, usize), [f64; 3]> = BTreeMap::new();
    for s in sections.iter().filter(|s| s.method == "hybrid") {
        for c in s.cells.iter().filter(|c| !is_composite(&c.group) && c.band != "global" && c.normalised.n > 0) {
            let (Some(w), Some(h)) = (s.b_in_force.hybrid_weights_of(&c.group), c.normalised.sum_hbh) else { continue };
            let class = usize::from(c.band == "tropics");
            // each cell normalised by its own band's scale in force (the hemispheres may differ)
            let (a, b) = band_pair(&w, &c.band);
            let scale = a + b;
            if !(scale > 0.0) {
                continue;
            }
            let e = acc.entry((c.group.clone(), class)).or_default();
            e[0] += est.of(&c.normalised);
            e[1] += h / scale;
            e[2] += c.normalised.n as f64;
        }
    }
    let ratio = |members: &[&str], class: usize| -> Option<f64> {
        let (mut num, mut den, mut n) = (0.0, 0.0, 0.0);
        for m in members {
            if let Some(e) = acc.get(&(m.to_string(), class)) {
                num += e[0];
                den += e[1];
                n += e[2];
            }
        }
        let r = num / den;
        (n >= MIN_CELL_OBS as f64 && den > 0.0 && r > 0.0 && r.is_finite()).then_some(r)
    };
    let all: Vec<&str> = vars.iter().map(|v| v.as_str()).collect();
    let mut out = Vec::new();
    for v in &vars {
        let group = GROUPS.iter().find(|(_, m)| m.contains(&v.as_str()));
        let mut scales = [None; 2];
        let mut unobserved = [false; 2];
        for (class, band) in CLASSES.iter().enumerate() {
            scales[class] = match ratio(&[v.as_str()], class) {
                Some(r) => Some(r),
                None => {
                    let by_group = group.and_then(|(g, m)| Some((*g, ratio(m, class)?)));
                    match by_group.or_else(|| Some(("all", ratio(&all, class)?))) {
                        Some((from, r)) => {
                            unobserved[class] = from == "all";
                            notes.push(format!(
                                "'{v}' ({band}): fewer than {MIN_CELL_OBS} observations, scaled as '{from}'{}",
                                if from == "all" { " (never raised)" } else { "" }
                            ));
                            Some(r)
                        }
                        None => {
                            notes.push(format!("'{v}' ({band}): too few observations anywhere, weights kept"));
                            None
                        }
                    }
                }
            };
        }
        out.push(VariableScales { name: v.clone(), scales, unobserved });
    }
    (out, notes)
}

/// Hybrid weights per bundle variable and band from innovations: the scales S_vc of [`variable_scales`] (Desroziers
/// estimate), and new weights that keep the last report's mix: alpha_vc = S_vc alpha_vc / s_vc, likewise beta (a
/// variable and class without a scale keeps its weights). A variable sized from all variables' scale because
/// neither it nor its group was observed (the wind of a mass-only network, q without humidity observations) may
/// shrink with it but never grows: S_vc is at most s_vc, since nothing checks the cross-covariances its increments
/// come through, and a B too large there adds error where one too small only gives up gain. Returns the weights
/// and notes on the fallbacks.
pub fn variable_weights(sections: &[Desroziers]) -> (Option<BTreeMap<String, BandWeights>>, Vec<String>) {
    variable_weights_with(sections, Estimate::Desroziers)
}

/// [`variable_weights`] with the H B H^T estimate `est`.
pub fn variable_weights_with(
    sections: &[Desroziers],
    est: Estimate,
) -> (Option<BTreeMap<String, BandWeights>>, Vec<String>) {
    let (scales, notes) = variable_scales(sections, est);
    let Some(last) = sections.iter().rev().find(|s| s.method == "hybrid") else {
        return (None, notes);
    };
    let mut out = BTreeMap::new();
    for VariableScales { name: v, scales: sc, unobserved } in scales {
        let Some(w) = last.b_in_force.hybrid_weights_of(&v) else { continue };
        let mut new = w;
        // each pair of the class (CLASS_PAIRS) gets the class's scale and keeps its own mix
        for (class, pairs) in CLASS_PAIRS.iter().enumerate() {
            let Some(scale) = sc[class] else { continue };
            for &i in pairs.iter() {
                let s = w[i] + w[i + 1];
                if !(s > 0.0) {
                    continue;
                }
                let scale = if unobserved[class] { scale.min(s) } else { scale };
                new[i] = scale * w[i] / s;
                new[i + 1] = scale * w[i + 1] / s;
            }
        }
        out.insert(v, new);
    }
    ((!out.is_empty()).then_some(out), notes)
}

/// One entry of `hybrid_variable_weights` as TOML: `v = { alpha = .., beta = .., alpha_tropics = .., beta_tropics =
/// .. }`, with `alpha_sh`, `beta_sh` only where the southern pair differs from the northern one.
fn weights_entry(v: &str, w: &BandWeights) -> String {
    let sh = if (w[4], w[5]) != (w[0], w[1]) {
        format!(", alpha_sh = {:.6}, beta_sh = {:.6}", w[4], w[5])
    } else {
        String::new()
    };
    format!(
        "{v} = {{ alpha = {:.6}, beta = {:.6}, alpha_tropics = {:.6}, beta_tropics = {:.6}{sh} }}",
        w[0], w[1], w[2], w[3]
    )
}

/// Separately fitted hybrid weights (see [`hybrid_split`]).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct HybridSplit {
    /// New alpha.
    pub alpha: f64,
    /// New beta.
    pub beta: f64,
    /// New gamma (`ensemble_gamma`), when the reports had an ensemble part.
    pub gamma: Option<f64>,
    /// Largest cosine between two parts' in-force vectors over the cells (near 1: those parts cannot be told apart).
    pub cosine: f64,
    /// Cells used (bundle variable x band nh / tropics / sh, with observations).
    pub cells: usize,
}

/// Largest cosine between the latent and static in-force vectors for which [`hybrid_split`] gives an answer; with
/// three parts, the determinant of their normalised Gram matrix must exceed 1 - SPLIT_MAX_COSINE^2 (the same test
/// for two parts).
pub const SPLIT_MAX_COSINE: f64 = 0.995;

/// Hybrid weights from innovations, each part sized on its own: over the disjoint cells c (bundle variable x band
/// nh, tropics, sh) of hybrid reports k, with E_c = sum_k sum (H x_a - H x_b) d_b / sigma_o^2 (the H B H^T estimate),
/// L_c = sum_k sum alpha_k (H sd_l)^2 / sigma_o^2 / alpha_k and S_c likewise for the static part (the two parts in
/// force per unit weight), and with ensemble members G_c for the ensemble part per unit gamma, the non-negative
/// least-squares fit E_c ~ alpha L_c + beta S_c (+ gamma G_c) (exact: every subset of the parts is solved and the
/// feasible one with the smallest residual kept). The fit needs cells whose proportions differ (different variables,
/// or the tropics against the extratropics); it returns `None` when the parts are nearly parallel (see
/// [`SPLIT_MAX_COSINE`]) or no report has the parts. It is a fixed-point step like the joint scaling.
pub fn hybrid_split(sections: &[Desroziers]) -> Option<HybridSplit> {
    hybrid_split_with(sections, Estimate::Desroziers)
}

/// [`hybrid_split`] with the H B H^T estimate `est` of every cell.
pub fn hybrid_split_with(sections: &[Desroziers], est: Estimate) -> Option<HybridSplit> {
    let mut acc: BTreeMap<(String, String), [f64; 4]> = BTreeMap::new();
    let mut with_ensemble = false;
    for s in sections.iter().filter(|s| s.method == "hybrid") {
        let (Some(a), Some(b)) = (s.b_in_force.hybrid_alpha, s.b_in_force.hybrid_beta) else { continue };
        if !(a > 0.0 && b > 0.0) {
            continue;
        }
        let gamma = s.b_in_force.ensemble_gamma.filter(|g| *g > 0.0);
        for c in s.cells.iter().filter(|c| c.band != "global" && !is_composite(&c.group) && c.normalised.n > 0) {
            let m = &c.normalised;
            let (Some(l), Some(st)) = (m.sum_hbh_latent, m.sum_hbh_static) else { continue };
            // the cell's own weights (bands, variables): the parts in force per unit weight
            let Some(w) = s.b_in_force.hybrid_weights_of(&c.group) else { continue };
            let (a, b) = band_pair(&w, &c.band);
            if !(a > 0.0 && b > 0.0) {
                continue;
            }
            let e = acc.entry((c.group.clone(), c.band.clone())).or_default();
            e[0] += est.of(m);
            e[1] += l / a;
            e[2] += st / b;
            if let (Some(g), Some(en)) = (gamma, m.sum_hbh_ensemble) {
                e[3] += en / g;
                with_ensemble = true;
            }
        }
    }
    if acc.len() < 2 {
        return None;
    }
    let p = if with_ensemble { 3 } else { 2 };
    // normal equations of E ~ sum_j w_j P_j over the cells
    let (mut gram, mut rhs, mut ee) = ([[0.0; 3]; 3], [0.0; 3], 0.0);
    for v in acc.values() {
        ee += v[0] * v[0];
        for i in 0..p {
            rhs[i] += v[i + 1] * v[0];
            for j in 0..p {
                gram[i][j] += v[i + 1] * v[j + 1];
            }
        }
    }
    if (0..p).any(|i| gram[i][i] <= 0.0) {
        return None;
    }
    let corr = |i: usize, j: usize| gram[i][j] / (gram[i][i] * gram[j][j]).sqrt();
    let cosine = (0..p).flat_map(|i| (i + 1..p).map(move |j| (i, j))).map(|(i, j)| corr(i, j)).fold(f64::MIN, f64::max);
    let det = if p == 2 {
        1.0 - corr(0, 1).powi(2)
    } else {
        let (a, b, c) = (corr(0, 1), corr(0, 2), corr(1, 2));
        1.0 + 2.0 * a * b * c - a * a - b * b - c * c
    };
    if det < 1.0 - SPLIT_MAX_COSINE * SPLIT_MAX_COSINE {
        return None;
    }
    let mut best: Option<(f64, [f64; 3])> = None;
    for mask in 1u32..(1 << p) {
        let idx: Vec<usize> = (0..p).filter(|i| mask & (1 << i) != 0).collect();
        let Some(w) = solve_small(&gram, &rhs, &idx) else { continue };
        if w.iter().any(|x| *x < 0.0) {
            continue;
        }
        let mut full = [0.0; 3];
        idx.iter().zip(&w).for_each(|(&i, &x)| full[i] = x);
        let fit: f64 = (0..p).map(|i| full[i] * rhs[i]).sum::<f64>();
        let quad: f64 =
            (0..p).flat_map(|i| (0..p).map(move |j| (i, j))).map(|(i, j)| full[i] * gram[i][j] * full[j]).sum();
        let residual = ee - 2.0 * fit + quad;
        if best.as_ref().is_none_or(|(r, _)| residual < *r) {
            best = Some((residual, full));
        }
    }
    let (_, w) = best?;
    (w.iter().sum::<f64>() > 0.0).then_some(HybridSplit {
        alpha: w[0],
        beta: w[1],
        gamma: with_ensemble.then_some(w[2]),
        cosine,
        cells: acc.len(),
    })
}

/// Solves the normal equations restricted to the parts `idx` (Gaussian elimination, partial pivoting); `None` when
/// singular.
fn solve_small(gram: &[[f64; 3]; 3], rhs: &[f64; 3], idx: &[usize]) -> Option<Vec<f64>> {
    let n = idx.len();
    let mut a: Vec<Vec<f64>> = idx.iter().map(|&i| idx.iter().map(|&j| gram[i][j]).chain([rhs[i]]).collect()).collect();
    for c in 0..n {
        let piv = (c..n).max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs()))?;
        if a[piv][c].abs() <= 1e-300 {
            return None;
        }
        a.swap(c, piv);
        for r in 0..n {
            if r != c {
                let f = a[r][c] / a[c][c];
                for k in c..=n {
                    a[r][k] -= f * a[c][k];
                }
            }
        }
    }
    Some((0..n).map(|i| a[i][n] / a[i][i]).collect())
}

/// The joint Desroziers step over `sections` from their cell (`group`, `band`): g_new = sum_k E_k / sum_k (H_k / g_k)
/// (module documentation; E_k the estimate `est`, H_k the H B H^T in force, g_k the scale of `method`'s B in force)
/// over the reports whose cell has used observations, sigma_b and a scale > 0. Returns g_new (`None` without such a
/// report) and how many reports with used observations lacked sigma_b or the scale. [`tune`] and the online sizing
/// (`crate::var::adaptive`) both take this step.
pub fn joint_scale(
    sections: &[Desroziers],
    method: &str,
    group: &str,
    band: &str,
    est: Estimate,
) -> (Option<f64>, usize) {
    let (mut num, mut den, mut n_without) = (0.0, 0.0, 0usize);
    for s in sections {
        let Some(c) = s.cell(group, band).filter(|c| c.normalised.n > 0) else { continue };
        match (c.normalised.sum_hbh, s.b_in_force.scale(method)) {
            (Some(h), Some(g)) if g > 0.0 => {
                num += est.of(&c.normalised);
                den += h / g;
            }
            _ => n_without += 1,
        }
    }
    ((den > 0.0).then(|| num / den), n_without)
}

/// Accumulates the `desroziers` sections of reports of method `method` and derives the new B size from the cell
/// (`group`, `band`) (the module documentation gives the formula). Sections of other methods are an error.
pub fn tune(sections: &[Desroziers], method: &str, group: &str, band: &str) -> Result<Tuning> {
    tune_with(sections, method, group, band, Estimate::Desroziers)
}

/// [`tune`] with the H B H^T estimate `est` (the Desroziers estimate, or E[d_b^2] - R as the online sizing's default
/// rule, [`Estimate`]) in the joint scale, the per-variable weights and the hybrid split.
pub fn tune_with(sections: &[Desroziers], method: &str, group: &str, band: &str, est: Estimate) -> Result<Tuning> {
    if sections.is_empty() {
        return Err(Error::arg("no report with a desroziers section to tune from"));
    }
    if let Some(s) = sections.iter().find(|s| s.method != method) {
        return Err(Error::arg(format!(
            "reports of method '{}' mixed with '{method}': tune one method at a time",
            s.method
        )));
    }
    if !BANDS.contains(&band) {
        return Err(Error::arg(format!("band '{band}' is not known (use {})", BANDS.join(", "))));
    }
    let mut acc: BTreeMap<(String, String), DesroziersCell> = BTreeMap::new();
    let mut order = Vec::new();
    let mut notes = Vec::new();
    // g_new = sum est / sum (in / g), over reports with sigma_b
    for s in sections {
        for c in &s.cells {
            let key = (c.group.clone(), c.band.clone());
            let e = acc.entry(key.clone()).or_insert_with(|| {
                order.push(key.clone());
                DesroziersCell {
                    group: c.group.clone(),
                    band: c.band.clone(),
                    units: c.units.clone(),
                    sums: c.sums.as_ref().map(|_| DesroziersSums::default()),
                    ..Default::default()
                }
            });
            if let (Some(a), Some(b)) = (e.sums.as_mut(), c.sums.as_ref()) {
                a.add(b);
            }
            e.normalised.add(&c.normalised);
        }
        if s.cell(group, band).is_none() {
            return Err(Error::arg(format!("a report has no desroziers cell for group '{group}', band '{band}'")));
        }
    }
    let (scale_new, n_without) = joint_scale(sections, method, group, band, est);
    if n_without > 0 {
        notes.push(format!(
            "{n_without} report(s) without sigma_b or without the B in force: left out of the B estimate"
        ));
    }
    let mut cells: Vec<DesroziersCell> = order.iter().map(|k| acc.remove(k).expect("inserted above")).collect();
    cells.iter_mut().for_each(DesroziersCell::finish);
    let cell = cells
        .iter()
        .find(|c| c.group == group && c.band == band)
        .ok_or_else(|| Error::arg(format!("no desroziers cell for group '{group}', band '{band}'")))?;
    if cell.n < 100 {
        notes.push(format!("only {} observations in group '{group}', band '{band}': the estimates are noisy", cell.n));
    }
    let mut options = Vec::new();
    let last = &sections.last().expect("not empty").b_in_force;
    match scale_new {
        Some(g) if g > 0.0 && g.is_finite() => match method {
            "l3dvar" | "l4dvar" => options.push(("latent_variance_factor".to_string(), g)),
            "3dvar" => options.push(("baseline_variance_factor".to_string(), g)),
            "hybrid" => {
                let (a, b) = (last.hybrid_alpha.unwrap_or(0.0), last.hybrid_beta.unwrap_or(0.0));
                let mix = if a + b > 0.0 { a / (a + b) } else { 0.5 };
                let mixes: Vec<f64> = sections
                    .iter()
                    .filter_map(|s| Some(s.b_in_force.hybrid_alpha? / s.b_in_force.scale("hybrid")?))
                    .collect();
                if mixes.iter().any(|m| (m - mix).abs() > 1e-9) {
                    notes.push(
                        "the hybrid mix alpha / (alpha + beta) varies over the reports: the last one's is kept".into(),
                    );
                }
                let (lf, bf) = (last.latent_variance_factor, last.baseline_variance_factor);
                let varying =
                    |f: fn(&BInForce) -> Option<f64>, v: Option<f64>| sections.iter().any(|s| f(&s.b_in_force) != v);
                if varying(|b| b.latent_variance_factor, lf) || varying(|b| b.baseline_variance_factor, bf) {
                    notes.push(
                        "the variance factors under the hybrid vary over the reports: the last one's are kept".into(),
                    );
                }
                options.push(("hybrid_alpha".to_string(), g * mix));
                options.push(("hybrid_beta".to_string(), g * (1.0 - mix)));
                if let Some(f) = lf {
                    options.push(("latent_variance_factor".to_string(), f));
                }
                if let Some(f) = bf {
                    options.push(("baseline_variance_factor".to_string(), f));
                }
            }
            _ => notes.push(format!("method '{method}' has no B to tune")),
        },
        Some(g) => notes.push(format!(
            "the H B H^T estimate is not positive (new scale {g:.4e}): too few or too biased observations to tune B"
        )),
        None => notes.push("no report with sigma_b (run with bg_check > 0): B cannot be tuned".into()),
    }
    let hybrid_split = if method == "hybrid" { hybrid_split_with(sections, est) } else { None };
    if sections.iter().any(|s| s.b_in_force.hybrid_weights.is_some()) {
        notes.push(
            "the reports ran with weights that vary by band or variable: the joint scaling writes global weights only; \
             --per-variable sizes each variable and band"
                .into(),
        );
    }
    let variable_weights = if method == "hybrid" && scale_new.is_some() {
        let (w, n) = variable_weights_with(sections, est);
        notes.extend(n.into_iter().map(|n| format!("per-variable weights: {n}")));
        w
    } else {
        None
    };
    if method == "hybrid" && hybrid_split.is_none() {
        notes.push("alpha and beta cannot be fitted separately (no latent/static parts of sigma_b, or cells that do not tell them apart)".into());
    }
    Ok(Tuning {
        hybrid_split,
        variable_weights,
        write_variable_weights: false,
        method: method.into(),
        n_reports: sections.len(),
        r_ratio: cell.r_ratio,
        hbh_ratio: cell.hbh_ratio,
        group: group.into(),
        band: band.into(),
        scale_new,
        options,
        notes,
        cells,
    })
}

impl Tuning {
    /// Writes the separately fitted hybrid weights ([`hybrid_split`]) instead of the joint scaling.
    pub fn use_split(&mut self) -> Result<()> {
        let sp = self.hybrid_split.ok_or_else(|| {
            Error::arg("no separate hybrid weights: the reports are not hybrid reports with the latent and static parts of sigma_b, or their cells cannot tell the parts apart")
        })?;
        for (k, v) in self.options.iter_mut() {
            match k.as_str() {
                "hybrid_alpha" => *v = sp.alpha,
                "hybrid_beta" => *v = sp.beta,
                _ => {}
            }
        }
        if let Some(g) = sp.gamma {
            self.options.push(("ensemble_gamma".to_string(), g));
        }
        self.notes.push(format!("hybrid weights fitted separately over {} cells (cosine {:.3})", sp.cells, sp.cosine));
        Ok(())
    }

    /// Writes the per-variable, per-band weights ([`variable_weights`]) as `hybrid_variable_weights`, beside the
    /// joint scaling of the global weights.
    pub fn use_variable_weights(&mut self) -> Result<()> {
        if self.variable_weights.is_none() {
            return Err(Error::arg(
                "no per-variable weights: they need hybrid reports with sigma_b (bg_check > 0) and observations",
            ));
        }
        self.write_variable_weights = true;
        Ok(())
    }

    /// An options file (TOML, for `--options` or `lda_open`) with the suggested values and, as comments, where
    /// they come from and the R ratio.
    pub fn options_toml(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# latentda tune: {} report(s) of method {}, cell {} / {}",
            self.n_reports, self.method, self.group, self.band
        );
        let f = |x: Option<f64>| x.map_or("null".to_string(), |x| format!("{x:.4}"));
        let _ = writeln!(
            s,
            "# H B H^T estimate / in force = {}; R estimate / in force = {}",
            f(self.hbh_ratio),
            f(self.r_ratio)
        );
        if let Some(r) = self.r_ratio {
            let _ = writeln!(
                s,
                "# (no option scales R: to follow the R estimate, multiply the observation errors sigma_o by {:.4})",
                r.max(0.0).sqrt()
            );
        }
        if let Some(sp) = &self.hybrid_split {
            let _ = writeln!(
                s,
                "# alpha and beta fitted separately (latentda tune --hybrid-split): hybrid_alpha = {:.6}, hybrid_beta = {:.6}{} ({} cells, cosine {:.3})",
                sp.alpha,
                sp.beta,
                sp.gamma.map_or(String::new(), |g| format!(", ensemble_gamma = {g:.6}")),
                sp.cells,
                sp.cosine
            );
        }
        let _ = writeln!(s, "# a fixed-point step: apply, rerun, repeat until the ratios are about 1");
        for n in &self.notes {
            let _ = writeln!(s, "# note: {n}");
        }
        for (k, v) in &self.options {
            let _ = writeln!(s, "{k} = {v:.6}");
        }
        if let (true, Some(w)) = (self.write_variable_weights, &self.variable_weights) {
            let entries: Vec<String> = w.iter().map(|(v, w)| weights_entry(v, w)).collect();
            let _ = writeln!(s, "hybrid_variable_weights = {{ {} }}", entries.join(", "));
        }
        s
    }

    /// A table of the accumulated cells (n, R and H B H^T in force and estimated, ratios).
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let f = |x: Option<f64>| x.map_or(format!("{:>10}", "-"), |x| format!("{x:>10.3e}"));
        let g = |x: Option<f64>| x.map_or(format!("{:>7}", "-"), |x| format!("{x:>7.3}"));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<6} {:<8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>7} {:>7} {:>7}",
            "group", "band", "n", "R", "E[da db]", "HBH^T", "E[dHx db]", "R rat", "B rat", "chi2"
        );
        for c in self.cells.iter().filter(|c| c.n > 0) {
            let _ = writeln!(
                s,
                "{:<6} {:<8} {:>7} {} {} {} {} {} {} {}",
                c.group,
                c.band,
                c.n,
                f(c.r_in_force),
                f(c.r_estimate),
                f(c.hbh_in_force),
                f(c.hbh_estimate),
                g(c.r_ratio),
                g(c.hbh_ratio),
                g(c.innovation_ratio)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(String, String)> {
        [("u", "m/s"), ("v", "m/s"), ("t", "K"), ("ps", "Pa")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn row(var: usize, lat: f64, y: f64, hxb: f64, hxa: f64, sigma: f64, sb: f64) -> Innovation {
        Innovation { var, lat, y, hxb, hxa, sigma, sigma_b: Some(sb), sigma_b_parts: None }
    }

    #[test]
    fn sums_bands_groups_and_identity() {
        let rows = [
            row(0, 45.0, 1.0, 0.0, 0.5, 1.0, 2.0),
            row(1, -45.0, -2.0, 0.0, -1.0, 2.0, 1.0),
            row(2, 0.0, 3.0, 1.0, 2.0, 0.5, 1.0),
            row(3, 20.0, 100.0, 0.0, 40.0, 100.0, 50.0),
        ];
        let c = cells(&vars(), &rows);
        // 4 variables + wind + mass + all, 4 bands each
        assert_eq!(c.len(), 7 * 4);
        let get = |g: &str, b: &str| c.iter().find(|x| x.group == g && x.band == b).unwrap();
        assert_eq!(get("u", "nh").n, 1);
        assert_eq!(get("u", "sh").n, 0);
        assert_eq!(get("v", "sh").n, 1);
        // lat = 20 is tropics (|lat| <= 20)
        assert_eq!(get("ps", "tropics").n, 1);
        assert_eq!(get("wind", "global").n, 2);
        assert_eq!(get("mass", "global").n, 2);
        assert_eq!(get("all", "global").n, 4);
        // units: wind shares m/s, mass and all mix units (no physical sums)
        assert_eq!(get("wind", "global").units, "m/s");
        assert!(get("mass", "global").sums.is_none() && get("all", "global").sums.is_none());
        // u nh: d_b = 1, d_a = 0.5, dHx = 0.5, sigma 1, sigma_b 2
        let u = get("u", "nh");
        assert_eq!(u.r_estimate, Some(0.5));
        assert_eq!(u.hbh_estimate, Some(0.5));
        assert_eq!(u.hbh_in_force, Some(4.0));
        assert_eq!(u.hbh_ratio, Some(0.125));
        assert_eq!(u.r_ratio, Some(0.5));
        // wind global, physical: sum d_a d_b = 0.5 + 2, sum dHx d_b = 0.5 + 2; normalised by sigma^2 (1, 4)
        let w = get("wind", "global");
        let s = w.sums.as_ref().unwrap();
        assert_eq!((s.sum_da_db, s.sum_dhx_db, s.sum_r), (2.5, 2.5, 5.0));
        assert_eq!(w.normalised.sum_da_db, 0.5 + 2.0 / 4.0);
        assert_eq!(w.normalised.sum_hbh, Some(4.0 + 1.0 / 4.0));
        // identity d_b d_b = d_a d_b + dHx d_b, for every cell
        for x in &c {
            let m = &x.normalised;
            assert!((m.sum_db_db - m.sum_da_db - m.sum_dhx_db).abs() <= 1e-12 * m.sum_db_db.abs().max(1.0), "{x:?}");
        }
    }

    #[test]
    fn unknown_sigma_b_is_null_and_accumulation_is_exact() {
        let mut rows = vec![row(0, 45.0, 1.0, 0.0, 0.5, 1.0, 2.0), row(0, 50.0, -1.0, 0.0, -0.2, 1.0, 2.0)];
        let a = cells(&vars(), &rows);
        rows.iter_mut().for_each(|r| r.sigma_b = None);
        let b = cells(&vars(), &rows);
        let ub = b.iter().find(|x| x.group == "u" && x.band == "nh").unwrap();
        assert_eq!(ub.hbh_in_force, None);
        assert_eq!(ub.hbh_ratio, None);
        assert!(ub.hbh_estimate.is_some());
        // a cell of one report added to the same cell of another: exactly the cell of all observations
        let one = cells(&vars(), &rows[..1]);
        let two = cells(&vars(), &rows[1..]);
        for ((x, y), z) in one.iter().zip(&two).zip(&b) {
            let mut s = x.normalised.clone();
            s.add(&y.normalised);
            assert_eq!(s.n, z.normalised.n);
            assert!((s.sum_dhx_db - z.normalised.sum_dhx_db).abs() < 1e-15);
            assert!((s.sum_da_db - z.normalised.sum_da_db).abs() < 1e-15);
        }
        // with and without sigma_b added: H B H^T unknown
        let (x, y) = (&a[0].normalised, &b[0].normalised);
        let mut s = x.clone();
        s.add(y);
        assert_eq!(s.sum_hbh, None);
    }

    /// One test cell: group, band, H B H^T estimate, and the latent, static and (optional) ensemble parts in force.
    type SplitCell<'a> = (&'a str, &'a str, f64, f64, f64, Option<f64>);

    /// A hybrid section with one normalised cell per [`SplitCell`].
    fn split_section(cells: &[SplitCell], b_in_force: BInForce) -> Desroziers {
        let cells = cells
            .iter()
            .map(|&(group, band, est, l, s, e)| DesroziersCell {
                group: group.to_string(),
                band: band.to_string(),
                normalised: DesroziersSums {
                    n: 10,
                    sum_dhx_db: est,
                    sum_hbh: Some(l + s + e.unwrap_or(0.0)),
                    sum_hbh_latent: Some(l),
                    sum_hbh_static: Some(s),
                    sum_hbh_ensemble: e,
                    ..Default::default()
                },
                ..Default::default()
            })
            .collect();
        Desroziers { method: "hybrid".into(), b_in_force, sigma_b: String::new(), cells }
    }

    #[test]
    fn hybrid_split_recovers_known_weights() {
        // cells whose latent / static proportions differ; estimates made by alpha 0.5, beta 2 at alpha = beta = 1
        let cells: Vec<_> = [("u", "nh"), ("u", "tropics"), ("t", "sh"), ("ps", "nh")]
            .iter()
            .enumerate()
            .map(|(i, &(g, band))| {
                let (l, s) = (1.0 + i as f64, 3.0 - 0.5 * i as f64);
                (g, band, 0.5 * l + 2.0 * s, l, s, None)
            })
            .collect();
        let d =
            split_section(&cells, BInForce { hybrid_alpha: Some(1.0), hybrid_beta: Some(1.0), ..Default::default() });
        let sp = hybrid_split(std::slice::from_ref(&d)).unwrap();
        assert!((sp.alpha - 0.5).abs() < 1e-12 && (sp.beta - 2.0).abs() < 1e-12, "{sp:?}");
        // a report made at alpha = 2, beta = 4 with the same estimates: per unit weight the parts halve / quarter
        let mut d2 = d.clone();
        d2.b_in_force.hybrid_alpha = Some(2.0);
        d2.b_in_force.hybrid_beta = Some(4.0);
        for c in &mut d2.cells {
            c.normalised.sum_hbh_latent = c.normalised.sum_hbh_latent.map(|l| 2.0 * l);
            c.normalised.sum_hbh_static = c.normalised.sum_hbh_static.map(|s| 4.0 * s);
        }
        let sp2 = hybrid_split(&[d2]).unwrap();
        assert!((sp2.alpha - 0.5).abs() < 1e-12 && (sp2.beta - 2.0).abs() < 1e-12, "{sp2:?}");
        // parallel parts cannot be told apart
        let mut d3 = d.clone();
        for c in &mut d3.cells {
            c.normalised.sum_hbh_static = c.normalised.sum_hbh_latent;
        }
        assert!(hybrid_split(&[d3]).is_none());
        // a negative fit is clipped to 0 and the other weight refitted alone
        let mut d4 = d;
        for c in &mut d4.cells {
            let (l, s) = (c.normalised.sum_hbh_latent.unwrap(), c.normalised.sum_hbh_static.unwrap());
            c.normalised.sum_dhx_db = -0.5 * l + 2.0 * s;
        }
        let sp4 = hybrid_split(&[d4]).unwrap();
        assert_eq!(sp4.alpha, 0.0);
        assert!(sp4.beta > 0.0);
    }

    #[test]
    fn hybrid_split_with_an_ensemble_part_recovers_three_weights() {
        // estimates made by alpha 0.5, beta 2, gamma 0.25; reported at alpha = beta = 1, gamma 0.5
        let make = |coef: (f64, f64, f64), parallel: bool| {
            let cells: Vec<_> = [("u", "nh"), ("u", "tropics"), ("t", "sh"), ("ps", "nh"), ("v", "sh")]
                .iter()
                .enumerate()
                .map(|(i, &(g, band))| {
                    let (l, s) = (1.0 + i as f64, 3.0 - 0.5 * i as f64);
                    let e = if parallel { l + s } else { 0.5 + (i as f64 - 2.0).powi(2) };
                    (g, band, coef.0 * l + coef.1 * s + coef.2 * e, l, s, Some(0.5 * e))
                })
                .collect();
            let bif = BInForce {
                hybrid_alpha: Some(1.0),
                hybrid_beta: Some(1.0),
                ensemble_gamma: Some(0.5),
                ..Default::default()
            };
            split_section(&cells, bif)
        };
        let sp = hybrid_split(&[make((0.5, 2.0, 0.25), false)]).unwrap();
        let g = sp.gamma.unwrap();
        assert!((sp.alpha - 0.5).abs() < 1e-12 && (sp.beta - 2.0).abs() < 1e-12 && (g - 0.25).abs() < 1e-12, "{sp:?}");
        // a negative ensemble weight is clipped to 0 and the other two refitted, non-negative
        let sp = hybrid_split(&[make((0.5, 2.0, -0.3), false)]).unwrap();
        assert_eq!(sp.gamma, Some(0.0));
        assert!(sp.alpha >= 0.0 && sp.beta >= 0.0 && sp.alpha + sp.beta > 0.0, "{sp:?}");
        // an ensemble part that is a combination of the other two cannot be told apart
        assert!(hybrid_split(&[make((0.5, 2.0, 0.25), true)]).is_none());
        // tune --hybrid-split writes the three weights
        let mut t = tune(&[make((0.5, 2.0, 0.25), false)], "hybrid", "u", "nh").unwrap();
        t.use_split().unwrap();
        let get = |k: &str| t.options.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        assert!((get("ensemble_gamma").unwrap() - 0.25).abs() < 1e-12, "{:?}", t.options);
        assert!((get("hybrid_alpha").unwrap() - 0.5).abs() < 1e-12);
    }

    /// A hybrid section from (group, band, n, E, H) cells (normalised sums only) and the B in force.
    fn weights_section(cells: &[(&str, &str, usize, f64, f64)], b_in_force: BInForce) -> Desroziers {
        let cells = cells
            .iter()
            .map(|&(group, band, n, e, h)| DesroziersCell {
                group: group.into(),
                band: band.into(),
                normalised: DesroziersSums { n, sum_dhx_db: e, sum_hbh: Some(h), ..Default::default() },
                ..Default::default()
            })
            .collect();
        Desroziers { method: "hybrid".into(), b_in_force, sigma_b: String::new(), cells }
    }

    #[test]
    fn variable_weights_scale_each_variable_and_band_on_its_own() {
        // in-force weights of four, as reports written before hemispheric weights have them (southern = northern)
        let g = [0.6, 0.2, 0.6, 0.2];
        let bif = BInForce {
            hybrid_alpha: Some(0.6),
            hybrid_beta: Some(0.2),
            hybrid_weights: Some(
                [("u", [1.0, 1.0, 0.5, 0.5]), ("t", g), ("z", g), ("q", g)]
                    .into_iter()
                    .map(|(v, w)| (v.to_string(), w.to_vec()))
                    .collect(),
            ),
            ..Default::default()
        };
        let cells = [
            ("u", "global", 220, 0.0, 0.0),
            ("t", "global", 200, 0.0, 0.0),
            ("z", "global", 0, 0.0, 0.0),
            ("q", "global", 10, 0.0, 0.0),
            // u: extratropics (nh + sh) E 4 over H / (alpha + beta) = 8 / 2 + 4 / 2 = 6; tropics 4 over 2 / 1
            ("u", "nh", 60, 3.0, 8.0),
            ("u", "sh", 60, 1.0, 4.0),
            ("u", "tropics", 100, 4.0, 2.0),
            // t: 0.2 over 0.8 / 0.8; tropics 0.8 over 0.8 / 0.8
            ("t", "nh", 100, 0.2, 0.8),
            ("t", "tropics", 100, 0.8, 0.8),
            // q: 10 observations (< MIN_CELL_OBS) in the extratropics, none in the tropics
            ("q", "sh", 10, 1.0, 0.8),
            ("wind", "nh", 60, 3.0, 8.0),
            ("all", "global", 430, 0.0, 0.0),
        ];
        let s = weights_section(&cells, bif.clone());
        let (w, notes) = variable_weights(std::slice::from_ref(&s));
        let w = w.unwrap();
        let close = |a: [f64; 6], b: [f64; 6]| a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-12);
        // u: S = 4 / 6 extratropical, 2 tropical; the mix (1:1, 1:1) kept, the southern pair the northern one
        assert!(close(w["u"], [1.0 / 3.0, 1.0 / 3.0, 1.0, 1.0, 1.0 / 3.0, 1.0 / 3.0]), "{:?}", w["u"]);
        // t: S = 0.2, 0.8 with the mix 3:1
        assert!(close(w["t"], [0.15, 0.05, 0.6, 0.2, 0.15, 0.05]), "{:?}", w["t"]);
        // z (unobserved): its group, mass, i.e. t's scales
        assert!(close(w["z"], [0.15, 0.05, 0.6, 0.2, 0.15, 0.05]), "{:?}", w["z"]);
        // q: too few in the extratropics and none in the tropics, and no group: all variables, (3 + 1 + 0.2 + 1) /
        // (4 + 2 + 1 + 1) = 0.65 (below the 0.8 in force: q shrinks with them) and (4 + 0.8) / (2 + 1) = 1.6 in the
        // tropics, above the 0.8 in force: an unobserved variable is never raised, so its tropical weights stay
        assert!(close(w["q"], [0.4875, 0.1625, 0.6, 0.2, 0.4875, 0.1625]), "{:?}", w["q"]);
        let (sc, _) = variable_scales(std::slice::from_ref(&s), Estimate::Desroziers);
        let q = sc.iter().find(|v| v.name == "q").unwrap();
        assert_eq!(q.unobserved, [true, true]);
        assert!((q.scales[1].unwrap() - 1.6).abs() < 1e-12, "{q:?}");
        let z = sc.iter().find(|v| v.name == "z").unwrap();
        assert_eq!(z.unobserved, [false, false], "z is sized by its observed group");
        assert!(notes.iter().any(|n| n.contains("'z'") && n.contains("'mass'")), "{notes:?}");
        assert!(
            notes.iter().any(|n| n.contains("'q'") && n.contains("'all'") && n.contains("never raised")),
            "{notes:?}"
        );
        // Two reports of the same statistics: the same weights (sums grow together).
        let (w2, _) = variable_weights(&[s.clone(), s.clone()]);
        assert!(w2.unwrap().iter().all(|(v, x)| close(*x, w[v])));
        // A fixed point: with the new weights in force (H B H^T in force scaled with them, the estimates E unchanged)
        // the same weights come back.
        let mut applied = s.clone();
        applied.b_in_force.hybrid_weights = Some(w.iter().map(|(v, x)| (v.clone(), x.to_vec())).collect());
        for c in applied.cells.iter_mut() {
            if let Some(nw) = w.get(&c.group) {
                let class = usize::from(c.band == "tropics");
                let old = &bif.hybrid_weights.as_ref().unwrap()[&c.group];
                let f = (nw[2 * class] + nw[2 * class + 1]) / (old[2 * class] + old[2 * class + 1]);
                c.normalised.sum_hbh = c.normalised.sum_hbh.map(|h| h * f);
            }
        }
        let (w3, _) = variable_weights(&[applied]);
        let w3 = w3.unwrap();
        for v in ["u", "t"] {
            assert!(close(w3[v], w[v]), "{v}: {:?} vs {:?}", w3[v], w[v]);
        }
        // Without per-variable weights in force: the global alpha and beta at every latitude.
        let mut plain = s.clone();
        plain.b_in_force.hybrid_weights = None;
        let (w4, _) = variable_weights(&[plain]);
        // u: S = 4 / (8 / 0.8 + 4 / 0.8) = 4 / 15 and 4 / (2 / 0.8) = 1.6, mix 3:1
        let u = w4.unwrap()["u"];
        assert!(close(u, [0.2, 0.2 / 3.0, 1.2, 0.4, 0.2, 0.2 / 3.0]), "{u:?}");
    }

    #[test]
    fn hemispheric_weights_normalise_each_cell_by_its_own_pair() {
        // u: northern pair 1 : 1 (total 2), southern 3 : 1 (total 4), tropics 0.5 : 0.5
        let bif = BInForce {
            hybrid_alpha: Some(1.0),
            hybrid_beta: Some(1.0),
            hybrid_weights: Some([("u".to_string(), vec![1.0, 1.0, 0.5, 0.5, 3.0, 1.0])].into_iter().collect()),
            ..Default::default()
        };
        assert_eq!(bif.hybrid_weights_of("u"), Some([1.0, 1.0, 0.5, 0.5, 3.0, 1.0]));
        assert_eq!(band_pair(&[1.0, 1.0, 0.5, 0.5, 3.0, 1.0], "sh"), (3.0, 1.0));
        let cells = [
            ("u", "global", 220, 0.0, 0.0),
            // extratropics: E 3 + 1 over H / s = 8 / 2 + 4 / 4 = 5: S = 0.8; tropics 4 over 2 / 1: S = 2
            ("u", "nh", 60, 3.0, 8.0),
            ("u", "sh", 60, 1.0, 4.0),
            ("u", "tropics", 100, 4.0, 2.0),
            ("all", "global", 220, 0.0, 0.0),
        ];
        let s = weights_section(&cells, bif);
        let (w, _) = variable_weights(std::slice::from_ref(&s));
        let u = w.unwrap()["u"];
        // each pair scaled to the class total 0.8, keeping its own mix
        let want = [0.4, 0.4, 1.0, 1.0, 0.6, 0.2];
        assert!(u.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-12), "{u:?}");
        // written as the options' table: the southern pair where it differs, and read back as the same weights
        let text = format!("hybrid_variable_weights = {{ {} }}", weights_entry("u", &u));
        assert!(text.contains("alpha_sh = 0.600000, beta_sh = 0.200000"), "{text}");
        let table: BTreeMap<String, BTreeMap<String, crate::bundle::VariableWeights>> = toml::from_str(&text).unwrap();
        let back = table["hybrid_variable_weights"]["u"].resolve([0.0; 6]);
        assert!(back.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-6), "{back:?}");
        assert!(!weights_entry("t", &[0.5, 0.5, 1.0, 1.0, 0.5, 0.5]).contains("_sh"));
        // an entry of another length is not read as weights
        let mut odd = s.b_in_force.clone();
        odd.hybrid_weights = Some([("u".to_string(), vec![1.0, 1.0, 0.5])].into_iter().collect());
        assert_eq!(odd.hybrid_weights_of("u"), None);
    }

    #[test]
    fn tune_normalises_by_the_scale_in_force() {
        // Two reports with the same observations: H B H^T in force 4 at factor 2 and 2 at factor 1; estimate 1 each.
        let make = |g: f64, hbh: f64| {
            let rows = vec![Innovation {
                var: 0,
                lat: 45.0,
                y: 1.0,
                hxb: 0.0,
                hxa: 1.0 - 0.5,
                sigma: 1.0,
                sigma_b: Some(hbh.sqrt()),
                sigma_b_parts: None,
            }];
            Desroziers {
                method: "3dvar".into(),
                b_in_force: BInForce { baseline_variance_factor: Some(g), ..Default::default() },
                sigma_b: String::new(),
                cells: cells(&vars(), &rows),
            }
        };
        // each: dHx d_b = 0.5; in force per unit factor = 2 -> g_new = (0.5 + 0.5) / (2 + 2) = 0.25
        let t = tune(&[make(2.0, 4.0), make(1.0, 2.0)], "3dvar", "all", "global").unwrap();
        assert!((t.scale_new.unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(t.options, vec![("baseline_variance_factor".to_string(), t.scale_new.unwrap())]);
        assert!(t.options_toml().contains("baseline_variance_factor = 0.25"));
        // the same factor in both: g_new = g x ratio
        let t = tune(&[make(2.0, 4.0), make(2.0, 4.0)], "3dvar", "u", "nh").unwrap();
        assert!((t.scale_new.unwrap() - 2.0 * t.hbh_ratio.unwrap()).abs() < 1e-12);
        // mixed methods are refused
        let mut other = make(1.0, 1.0);
        other.method = "l3dvar".into();
        assert!(tune(&[make(1.0, 1.0), other], "3dvar", "all", "global").is_err());
    }
}
