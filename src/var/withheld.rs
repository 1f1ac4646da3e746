//! Verification against withheld observations (cross-validation without truth).
//!
//! Observations the analysis did not use are compared with the background and with the analysis. Their errors are
//! independent of both, so over many of them
//!
//! ```text
//! mean((O-A)^2 - (O-B)^2) ~ mean((H e_a)^2) - mean((H e_b)^2)
//! ```
//!
//! estimates, at the withheld points and without any truth, whether the analysis beat its background (e_a, e_b the
//! analysis and background errors; the observation error cancels in expectation). This is what the Desroziers
//! statistics cannot see: they compare variances, while a B of the right size and the wrong structure still gives
//! an analysis worse than its background, and withheld observations show it. Operational centres use such passive
//! observations to monitor an assimilation; here they also decide between B configurations per variable.
//!
//! Statistics are kept per bundle variable and latitude band (the Desroziers bands) as sums, so that the sections of
//! several reports add up (`latentda tune` does this). The difference is normalised by sigma_o^2 per observation,
//! so the group `all` mixes units. Its standard error is cluster-robust over observation columns (observations at
//! one horizontal position, whose errors are correlated): the sampling error is not understated by counting the
//! levels of one sonde as independent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bundle::grid::Layout;
use crate::error::{Error, Result};
use crate::obs::operator::ObsOperator;
use crate::obs::{Observation, QcFlag};
use crate::var::desroziers::{in_band, BANDS};

/// A difference is called significant beyond this many standard errors.
pub const SIGNIFICANCE: f64 = 2.0;

/// Sums over the withheld observations of one cell (variable or `all`, x band).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct WithheldCell {
    /// Bundle variable name, or `all`.
    pub group: String,
    /// Band, one of the Desroziers bands (`global`, `nh`, `tropics`, `sh`).
    pub band: String,
    /// Observations.
    pub n: usize,
    /// Columns (distinct horizontal positions) among them.
    pub n_columns: usize,
    /// Sum of (O-B)^2, physical units squared (meaningless for `all`).
    pub sum_omb2: f64,
    /// Sum of (O-A)^2.
    pub sum_oma2: f64,
    /// Sum of sigma_o^2.
    pub sum_sigma2: f64,
    /// Sum of d_i = ((O-A)^2 - (O-B)^2) / sigma_o^2.
    pub sum_d: f64,
    /// Sum over columns c of D_c^2, D_c the sum of d_i in column c (for the cluster-robust standard error).
    pub sum_dc2: f64,
    /// Sum over columns of D_c n_c.
    pub sum_dc_nc: f64,
    /// Sum over columns of n_c^2.
    pub sum_nc2: f64,
    /// Derived: mean of d_i (negative: the analysis is closer to the withheld observations than the background).
    pub mean_d: f64,
    /// Derived: its cluster-robust standard error (`None` with fewer than two columns).
    pub se_d: Option<f64>,
    /// Derived: RMS of O-B.
    pub omb_rms: f64,
    /// Derived: RMS of O-A.
    pub oma_rms: f64,
    /// Derived: sqrt((mean (O-A)^2 - mean sigma_o^2) / (mean (O-B)^2 - mean sigma_o^2)), the analysis / background
    /// error ratio at the withheld points if sigma_o is right; `None` when either difference is not positive.
    pub ratio_estimate: Option<f64>,
    /// Derived: "better" or "worse" when mean_d differs from 0 by more than [`SIGNIFICANCE`] standard errors, else
    /// "no clear difference" (empty when the cell has no observation).
    pub verdict: String,
}

impl WithheldCell {
    fn new(group: &str, band: &str) -> WithheldCell {
        WithheldCell { group: group.into(), band: band.into(), ..Default::default() }
    }

    /// Adds the sums of `o` (same cell, another set of observations: other cases, so other columns).
    fn add(&mut self, o: &WithheldCell) {
        self.n += o.n;
        self.n_columns += o.n_columns;
        self.sum_omb2 += o.sum_omb2;
        self.sum_oma2 += o.sum_oma2;
        self.sum_sigma2 += o.sum_sigma2;
        self.sum_d += o.sum_d;
        self.sum_dc2 += o.sum_dc2;
        self.sum_dc_nc += o.sum_dc_nc;
        self.sum_nc2 += o.sum_nc2;
    }

    /// Recomputes the derived fields from the sums.
    fn finish(&mut self) {
        if self.n == 0 {
            (self.mean_d, self.se_d, self.omb_rms, self.oma_rms) = (0.0, None, 0.0, 0.0);
            self.ratio_estimate = None;
            self.verdict.clear();
            return;
        }
        let n = self.n as f64;
        let m = self.sum_d / n;
        self.mean_d = m;
        // Var(mean) = sum_c (D_c - n_c m)^2 / n^2, expanded into the accumulated sums; with one column the spread
        // between columns is unknown, and so is the error.
        let v = (self.sum_dc2 - 2.0 * m * self.sum_dc_nc + m * m * self.sum_nc2).max(0.0) / (n * n);
        let c = self.n_columns as f64;
        self.se_d = (self.n_columns > 1).then(|| (v * c / (c - 1.0)).sqrt());
        self.omb_rms = (self.sum_omb2 / n).sqrt();
        self.oma_rms = (self.sum_oma2 / n).sqrt();
        let (b, a) = ((self.sum_omb2 - self.sum_sigma2) / n, (self.sum_oma2 - self.sum_sigma2) / n);
        self.ratio_estimate = (a > 0.0 && b > 0.0 && self.group != "all").then(|| (a / b).sqrt());
        self.verdict = match self.se_d {
            Some(se) if m > SIGNIFICANCE * se => "worse",
            Some(se) if m < -SIGNIFICANCE * se => "better",
            Some(_) => "no clear difference",
            None => "one column: no error estimate",
        }
        .into();
    }
}

/// Verification of one analysis (or, summed, of several) against withheld observations.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Withheld {
    /// Withheld observations given.
    pub n_obs: usize,
    /// Those compared (inside the grid, valid, of a bundle variable).
    pub n_used: usize,
    /// Counts per QC flag name (geometric checks and the error-sd floor; no background check: a gross error in a
    /// withheld observation counts in both O-B and O-A).
    pub qc_counts: BTreeMap<String, usize>,
    /// Cells: bundle variables then `all`, each with the bands of [`BANDS`].
    pub cells: Vec<WithheldCell>,
}

impl Withheld {
    /// Compares the withheld observations `obs` with the background `x_b` and the analysis `x_a` (state layout,
    /// physical units). `sigma_floor` as for [`ObsOperator::try_build`] (empty: none).
    pub fn evaluate(
        layout: &Layout,
        obs: &[Observation],
        x_b: &[f64],
        x_a: &[f64],
        sigma_floor: &[f64],
    ) -> Result<Withheld> {
        let n = layout.state_len();
        for (name, x) in [("background", x_b), ("analysis", x_a)] {
            if x.len() != n {
                return Err(Error::arg(format!(
                    "withheld observations: {name} has {} values, the layout {n}",
                    x.len()
                )));
            }
        }
        let mut flags = vec![QcFlag::Used; obs.len()];
        let h = ObsOperator::try_build(layout, obs, &mut flags, sigma_floor)?;
        let (mut hb, mut ha) = (vec![0.0; h.nrows()], vec![0.0; h.nrows()]);
        h.apply(x_b, &mut hb);
        h.apply(x_a, &mut ha);
        let mut qc_counts = BTreeMap::new();
        for f in &flags {
            *qc_counts.entry(f.name().to_string()).or_insert(0) += 1;
        }
        let names: Vec<&str> = layout.variables.iter().map(|v| v.name.as_str()).chain(["all"]).collect();
        let mut cells: Vec<WithheldCell> =
            names.iter().flat_map(|g| BANDS.iter().map(move |b| WithheldCell::new(g, b))).collect();
        // Per cell, the column sums D_c and counts n_c, keyed by the position's bits.
        let mut columns: Vec<BTreeMap<(u64, u64), (f64, f64)>> = vec![BTreeMap::new(); cells.len()];
        let nvar = layout.variables.len();
        for (r, &i) in h.rows.iter().enumerate() {
            let o = &obs[i];
            let Some(v) = o.var else { continue };
            let (omb, oma, s2) = (o.value - hb[r], o.value - ha[r], o.sigma * o.sigma);
            let d = (oma * oma - omb * omb) / s2;
            for (b, band) in BANDS.iter().enumerate() {
                if !in_band(band, o.lat) {
                    continue;
                }
                for g in [v, nvar] {
                    let k = g * BANDS.len() + b;
                    let c = &mut cells[k];
                    c.n += 1;
                    c.sum_omb2 += omb * omb;
                    c.sum_oma2 += oma * oma;
                    c.sum_sigma2 += s2;
                    c.sum_d += d;
                    let col = columns[k].entry((o.lat.to_bits(), o.lon.to_bits())).or_insert((0.0, 0.0));
                    col.0 += d;
                    col.1 += 1.0;
                }
            }
        }
        for (c, cols) in cells.iter_mut().zip(&columns) {
            c.n_columns = cols.len();
            for &(dc, nc) in cols.values() {
                c.sum_dc2 += dc * dc;
                c.sum_dc_nc += dc * nc;
                c.sum_nc2 += nc * nc;
            }
            c.finish();
        }
        Ok(Withheld { n_obs: obs.len(), n_used: h.nrows(), qc_counts, cells })
    }

    /// Adds another verification's sums (other cases: its columns count as other columns) and recomputes the
    /// derived fields. Cells are matched by group and band; a cell only in `o` is appended.
    pub fn add(&mut self, o: &Withheld) {
        self.n_obs += o.n_obs;
        self.n_used += o.n_used;
        for (k, v) in &o.qc_counts {
            *self.qc_counts.entry(k.clone()).or_insert(0) += v;
        }
        for oc in &o.cells {
            match self.cells.iter_mut().find(|c| c.group == oc.group && c.band == oc.band) {
                Some(c) => c.add(oc),
                None => {
                    let mut c = WithheldCell::new(&oc.group, &oc.band);
                    c.add(oc);
                    self.cells.push(c);
                }
            }
        }
        self.cells.iter_mut().for_each(WithheldCell::finish);
    }

    /// The cell of `group` (variable name or `all`) and `band`.
    pub fn cell(&self, group: &str, band: &str) -> Option<&WithheldCell> {
        self.cells.iter().find(|c| c.group == group && c.band == band)
    }

    /// A table of the cells that have observations.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "withheld observations: {} given, {} compared (mean d = mean((O-A)^2 - (O-B)^2)/sigma_o^2 < 0: the analysis is closer to them than the background; +- {SIGNIFICANCE} cluster-robust standard errors)",
            self.n_obs, self.n_used
        );
        let _ = writeln!(
            s,
            "  {:<6} {:<8} {:>6} {:>5} {:>11} {:>11} {:>10} {:>9} {:>8}  verdict",
            "var", "band", "n", "cols", "O-B rms", "O-A rms", "mean d", "2 se", "ratio~"
        );
        for c in self.cells.iter().filter(|c| c.n > 0) {
            let ratio = c.ratio_estimate.map(|r| format!("{r:.3}")).unwrap_or_else(|| "-".into());
            let se = c.se_d.map(|e| format!("{:.4}", SIGNIFICANCE * e)).unwrap_or_else(|| "-".into());
            let rms = |x: f64| if c.group == "all" { "-".to_string() } else { format!("{x:.4e}") };
            let _ = writeln!(
                s,
                "  {:<6} {:<8} {:>6} {:>5} {:>11} {:>11} {:>+10.4} {:>9} {:>8}  {}",
                c.group,
                c.band,
                c.n,
                c.n_columns,
                rms(c.omb_rms),
                rms(c.oma_rms),
                c.mean_d,
                se,
                ratio,
                c.verdict
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::grid::{Grid, GridKind, Vertical, VerticalKind};

    fn layout() -> Layout {
        let grid =
            Grid::new(GridKind::Regular, vec![60.0, 30.0, 0.0, -30.0, -60.0], vec![0.0, 90.0, 180.0, 270.0]).unwrap();
        let vert = Vertical::new(VerticalKind::Sigma, vec![0.3, 0.7]).unwrap();
        Layout::new(grid, vert, vec![("t".into(), "K".into(), 2), ("ps".into(), "Pa".into(), 0)]).unwrap()
    }

    /// State with the constant value `t` in every t value and `ps` in every ps value (H of it is exact anywhere).
    fn state(lay: &Layout, t: f64, ps: f64) -> Vec<f64> {
        let np = lay.grid.npoints();
        let mut x = vec![t; 2 * np];
        x.extend(vec![ps; np]);
        x
    }

    fn ob(var: usize, lat: f64, lon: f64, level: Option<f64>, value: f64, sigma: f64) -> Observation {
        Observation {
            var: Some(var),
            var_name: String::new(),
            lat,
            lon,
            level,
            value,
            sigma,
            time: 0.0,
            line: None,
            malformed: None,
        }
    }

    /// t observations at two levels of columns along 45N and 45S, ps at the same columns; values +-1 (t) and
    /// +-5 (ps) around a truth of 0, alternating so that their mean is exactly 0.
    fn network() -> Vec<Observation> {
        let mut obs = Vec::new();
        for (k, lon) in [10.0, 50.0, 100.0, 140.0, 200.0, 250.0, 300.0, 340.0].iter().enumerate() {
            for lat in [45.0, -45.0] {
                let s = if k % 2 == 0 { 1.0 } else { -1.0 };
                obs.push(ob(0, lat, *lon, Some(0.3), s, 1.0));
                obs.push(ob(0, lat, *lon, Some(0.7), -s, 1.0));
                obs.push(ob(1, lat, *lon, None, 5.0 * s, 5.0));
            }
        }
        obs
    }

    #[test]
    fn closed_form_difference_ratio_and_verdicts() {
        let lay = layout();
        // truth 0; background error 2 in t, 10 in ps; the analysis corrects t to 0.5 and leaves ps alone
        let (xb, xa) = (state(&lay, 2.0, 10.0), state(&lay, 0.5, 10.0));
        let w = Withheld::evaluate(&lay, &network(), &xb, &xa, &[]).unwrap();
        assert_eq!((w.n_obs, w.n_used), (48, 48));
        let t = w.cell("t", "global").unwrap();
        assert_eq!((t.n, t.n_columns), (32, 16));
        // d = (y - 0.5)^2 - (y - 2)^2 = 3 y - 3.75, mean y = 0: mean d = e_a^2 - e_b^2 = -3.75
        assert!((t.mean_d + 3.75).abs() < 1e-12, "{}", t.mean_d);
        // mean (O-B)^2 - sigma^2 = 4, mean (O-A)^2 - sigma^2 = 0.25: the error ratio 0.25 exactly
        assert!((t.ratio_estimate.unwrap() - 0.25).abs() < 1e-12);
        assert!((t.omb_rms - 5f64.sqrt()).abs() < 1e-12 && (t.oma_rms - 1.25f64.sqrt()).abs() < 1e-12);
        assert_eq!(t.verdict, "better");
        let ps = w.cell("ps", "nh").unwrap();
        assert_eq!((ps.n, ps.mean_d, ps.verdict.as_str()), (8, 0.0, "no clear difference"));
        assert_eq!(w.cell("t", "tropics").unwrap().n, 0);
        // the analysis made worse: background = truth, analysis off by 1
        let w = Withheld::evaluate(&lay, &network(), &state(&lay, 0.0, 0.0), &state(&lay, 1.0, 0.0), &[]).unwrap();
        let t = w.cell("t", "sh").unwrap();
        // d = (y - 1)^2 - y^2 = 1 - 2 y: mean 1
        assert!((t.mean_d - 1.0).abs() < 1e-12 && t.verdict == "worse", "{t:?}");
        assert_eq!(w.cell("all", "global").unwrap().n, 48);
        assert!(w.table().contains("worse"));
    }

    #[test]
    fn standard_error_is_cluster_robust_over_columns() {
        let lay = layout();
        let obs = network();
        let (xb, xa) = (state(&lay, 2.0, 10.0), state(&lay, 0.5, 3.0));
        let w = Withheld::evaluate(&lay, &obs, &xb, &xa, &[]).unwrap();
        // direct: d per observation, D_c per column, se^2 = c / (c - 1) sum_c (D_c - n_c m)^2 / n^2
        let d: Vec<(f64, f64, f64)> = obs
            .iter()
            .map(|o| {
                let (b, a) = if o.var == Some(0) { (2.0, 0.5) } else { (10.0, 3.0) };
                (o.lat, o.lon, ((o.value - a).powi(2) - (o.value - b).powi(2)) / (o.sigma * o.sigma))
            })
            .collect();
        let n = d.len() as f64;
        let m = d.iter().map(|x| x.2).sum::<f64>() / n;
        let mut cols: Vec<(f64, f64, f64, f64)> = Vec::new();
        for &(lat, lon, di) in &d {
            match cols.iter_mut().find(|c| c.0 == lat && c.1 == lon) {
                Some(c) => (c.2, c.3) = (c.2 + di, c.3 + 1.0),
                None => cols.push((lat, lon, di, 1.0)),
            }
        }
        let c = cols.len() as f64;
        let se = (c / (c - 1.0) * cols.iter().map(|x| (x.2 - x.3 * m).powi(2)).sum::<f64>() / (n * n)).sqrt();
        let all = w.cell("all", "global").unwrap();
        assert_eq!(all.n_columns, 16);
        assert!((all.mean_d - m).abs() < 1e-12 && (all.se_d.unwrap() - se).abs() < 1e-12 * se.max(1.0), "{all:?} {se}");
        // the +-1 pattern within a column cancels: the column sums vary less than the observations
        let naive = (d.iter().map(|x| (x.2 - m).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt();
        assert!(all.se_d != Some(naive));
    }

    #[test]
    fn sections_of_disjoint_cases_add_up() {
        let lay = layout();
        let obs = network();
        let (xb, xa) = (state(&lay, 2.0, 10.0), state(&lay, 0.5, 3.0));
        let whole = Withheld::evaluate(&lay, &obs, &xb, &xa, &[]).unwrap();
        let (east, west): (Vec<_>, Vec<_>) = obs.into_iter().partition(|o| o.lon < 180.0);
        let mut sum = Withheld::evaluate(&lay, &east, &xb, &xa, &[]).unwrap();
        sum.add(&Withheld::evaluate(&lay, &west, &xb, &xa, &[]).unwrap());
        assert_eq!((sum.n_obs, sum.n_used), (whole.n_obs, whole.n_used));
        for (a, b) in sum.cells.iter().zip(&whole.cells) {
            assert_eq!(
                (a.group.as_str(), a.band.as_str(), a.n, a.n_columns),
                (b.group.as_str(), b.band.as_str(), b.n, b.n_columns)
            );
            assert_eq!(a.se_d.is_some(), b.se_d.is_some());
            for (x, y) in [
                (a.sum_d, b.sum_d),
                (a.sum_dc2, b.sum_dc2),
                (a.mean_d, b.mean_d),
                (a.se_d.unwrap_or(0.0), b.se_d.unwrap_or(0.0)),
            ] {
                assert!((x - y).abs() <= 1e-12 * y.abs().max(1.0), "{} {}: {x} {y}", a.group, a.band);
            }
        }
        // JSON round trip (tune reads the sections back)
        let back: Withheld = serde_json::from_str(&serde_json::to_string(&whole).unwrap()).unwrap();
        assert_eq!(back, whole);
    }

    #[test]
    fn unusable_observations_are_counted_not_compared_and_sizes_are_checked() {
        let lay = layout();
        let mut obs = network();
        obs.push(ob(0, 45.0, 10.0, Some(0.99), 1.0, 1.0)); // below the lowest level
        obs.push(ob(0, 45.0, 10.0, Some(0.5), f64::NAN, 1.0));
        obs.push(Observation { var: None, ..ob(0, 45.0, 10.0, None, 1.0, 1.0) });
        let (xb, xa) = (state(&lay, 2.0, 10.0), state(&lay, 0.5, 3.0));
        let w = Withheld::evaluate(&lay, &obs, &xb, &xa, &[]).unwrap();
        assert_eq!((w.n_obs, w.n_used), (51, 48));
        assert_eq!(w.qc_counts["used"], 48);
        assert_eq!(w.qc_counts.values().sum::<usize>(), 51);
        let e = Withheld::evaluate(&lay, &obs, &xb[1..], &xa, &[]).unwrap_err().to_string();
        assert!(e.contains("background"), "{e}");
    }
}
