//! Single-observation experiment: one temperature observation in each hemisphere, 1 K warmer than the background,
//! at the same longitude on the mid-troposphere level, assimilated together (they lie 10,000 km apart, far beyond
//! any correlation of the three B matrices, so each response is the single-observation response).
//!
//! The response shows the B matrix itself: B H^T scaled by the innovation. A balanced B answers a warm anomaly with
//! raised geopotential above it and an anticyclonic wind around it (clockwise in the north, anticlockwise in the
//! south: the sign flips with f); a univariate B changes temperature (and, with the hydrostatic link,
//! geopotential) but leaves the wind alone.

use latentda::bundle::grid::{Layout, VerticalKind};
use latentda::diag::balance;
use latentda::diag::verify;
use latentda::error::Result;
use latentda::obs::operator::ObsOperator;
use latentda::obs::{Observation, QcFlag};
use latentda::var::analysis::Analyser;
use latentda::var::options::Method;
use latentda::var::report::BalanceStats;

/// Innovation y - H(x_b) of each observation (K).
pub const INNOVATION: f64 = 1.0;
/// Observation error standard deviation (K).
pub const SIGMA: f64 = 1.0;
/// Latitudes of the two observations.
pub const LATITUDES: [f64; 2] = [45.0, -45.0];
/// Radius around each observation for the vorticity and wind of the response, km.
pub const RADIUS_KM: f64 = 1000.0;
/// Radius for the balance of the response, km.
pub const BALANCE_RADIUS_KM: f64 = 2500.0;

/// The level index nearest the middle troposphere: sigma 0.5, or 500 hPa on pressure levels.
pub fn mid_level(layout: &Layout) -> usize {
    let target = match layout.vertical.kind {
        VerticalKind::Sigma => 0.5f64,
        VerticalKind::Pressure => 5.0e4,
    };
    let lev = &layout.vertical.levels;
    (0..lev.len())
        .min_by(|&a, &b| (lev[a].ln() - target.ln()).abs().total_cmp(&(lev[b].ln() - target.ln()).abs()))
        .unwrap_or(0)
}

/// The response of one method around one observation.
#[derive(Debug, Clone)]
pub struct Response {
    /// Latitude of the observation.
    pub lat: f64,
    /// Longitude of the observation.
    pub lon: f64,
    /// QC flag of the observation.
    pub qc: QcFlag,
    /// Analysis minus background of the observed quantity at the observation, H(x_a) - H(x_b) (K).
    pub at_obs: f64,
    /// Largest wind-increment speed within [`RADIUS_KM`] on the observation's level (NaN without u, v).
    pub wind_max: f64,
    /// Mean relative vorticity of the wind increment within [`RADIUS_KM`] on the observation's level, s-1.
    pub vorticity: f64,
    /// Balance of the increment within [`BALANCE_RADIUS_KM`], all levels.
    pub balance: Option<BalanceStats>,
}

impl Response {
    /// "anticyclonic", "cyclonic", "no wind" when the wind increment is nil, or "n/a" without u and v.
    pub fn circulation(&self) -> &'static str {
        if self.wind_max.is_nan() {
            "n/a"
        } else if !(self.wind_max > 1e-9) || !self.vorticity.is_finite() || self.vorticity == 0.0 {
            "no wind"
        } else if self.vorticity * self.lat.signum() < 0.0 {
            "anticyclonic"
        } else {
            "cyclonic"
        }
    }
}

/// One method's single-observation experiment.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// Method.
    pub method: Method,
    /// Level index of the observations.
    pub level: usize,
    /// The analysis increment x_a - x_b (state layout).
    pub increment: Vec<f64>,
    /// One response per observation, in [`LATITUDES`] order.
    pub responses: Vec<Response>,
}

/// Runs the experiment for `method` with the observations at longitude `lon`. `None` if the bundle has no `t`.
pub fn run(a: &mut Analyser, x_b: &[f64], method: Method, lon: f64) -> Result<Option<Experiment>> {
    let layout = a.bundle.layout.clone();
    let Some(it) = layout.var_index("t") else {
        return Ok(None);
    };
    let level = mid_level(&layout);
    let lev = if layout.variables[it].is_surface() { None } else { Some(layout.vertical.levels[level]) };
    let mut obs: Vec<Observation> = LATITUDES
        .iter()
        .map(|&lat| Observation {
            var: Some(it),
            var_name: "t".into(),
            lat,
            lon,
            level: lev,
            value: 0.0,
            sigma: SIGMA,
            line: None,
            time: 0.0,
            malformed: None,
        })
        .collect();
    let mut flags = vec![QcFlag::Used; obs.len()];
    let h = ObsOperator::build(&layout, &obs, &mut flags);
    let mut hxb = vec![0.0; h.nrows()];
    h.apply(x_b, &mut hxb);
    for (r, &i) in h.rows.iter().enumerate() {
        obs[i].value = hxb[r] + INNOVATION;
    }
    let result = a.analyse_with(x_b, &obs, method, latentda::var::options::OutputMode::Analysis)?;
    let increment: Vec<f64> = result.analysis.iter().zip(x_b).map(|(xa, xb)| xa - xb).collect();
    let mut hdx = vec![0.0; h.nrows()];
    h.apply(&increment, &mut hdx);
    let g = &layout.grid;
    let np = g.npoints();
    let wind = match (layout.var_index("u"), layout.var_index("v")) {
        (Some(iu), Some(iv)) if !layout.variables[iu].is_surface() && !layout.variables[iv].is_surface() => {
            let (u0, v0) =
                ((layout.variables[iu].first_channel + level) * np, (layout.variables[iv].first_channel + level) * np);
            Some((&increment[u0..u0 + np], &increment[v0..v0 + np]))
        }
        _ => None,
    };
    let mut responses = Vec::new();
    for (i, o) in obs.iter().enumerate() {
        let at_obs = h.rows.iter().position(|&r| r == i).map_or(f64::NAN, |r| hdx[r]);
        let (mut wind_max, mut vorticity) = (f64::NAN, f64::NAN);
        if let Some((u, v)) = wind {
            wind_max = (0..np)
                .filter(|&p| verify::distance_km(o.lat, o.lon, g.lat[p / g.nlon()], g.lon[p % g.nlon()]) <= RADIUS_KM)
                .map(|p| u[p].hypot(v[p]))
                .fold(0.0, f64::max);
            vorticity = verify::mean_vorticity_near(g, u, v, o.lat, o.lon, RADIUS_KM);
        }
        let x_a = &result.analysis;
        let bal = balance::diagnose_where(&layout, x_b, x_a, |la, lo| {
            la.abs() > 20.0 && verify::distance_km(o.lat, o.lon, la, lo) <= BALANCE_RADIUS_KM
        });
        responses.push(Response {
            lat: o.lat,
            lon: o.lon,
            qc: result.qc[i],
            at_obs,
            wind_max,
            vorticity,
            balance: bal,
        });
    }
    Ok(Some(Experiment { method, level, increment, responses }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use latentda::bundle::grid::{Grid, GridKind, Vertical};

    #[test]
    fn mid_level_is_nearest_half_sigma_or_500_hpa() {
        let g = Grid::new(GridKind::Regular, vec![45.0, -45.0], vec![0.0, 180.0]).unwrap();
        let v = Vertical::new(VerticalKind::Sigma, vec![0.025, 0.095, 0.2, 0.34, 0.51, 0.685, 0.835, 0.95]).unwrap();
        let lay = Layout::new(g.clone(), v, vec![("t".into(), "K".into(), 8)]).unwrap();
        assert_eq!(mid_level(&lay), 4);
        let p = Vertical::new(VerticalKind::Pressure, vec![20000.0, 45000.0, 85000.0]).unwrap();
        let lay = Layout::new(g, p, vec![("t".into(), "K".into(), 3)]).unwrap();
        assert_eq!(mid_level(&lay), 1);
    }

    #[test]
    fn circulation_sense_follows_the_hemisphere() {
        let r = |lat: f64, vorticity: f64, wind_max: f64| Response {
            lat,
            lon: 0.0,
            qc: QcFlag::Used,
            at_obs: 0.5,
            wind_max,
            vorticity,
            balance: None,
        };
        assert_eq!(r(45.0, -1e-6, 0.3).circulation(), "anticyclonic");
        assert_eq!(r(-45.0, 1e-6, 0.3).circulation(), "anticyclonic");
        assert_eq!(r(45.0, 1e-6, 0.3).circulation(), "cyclonic");
        assert_eq!(r(-45.0, -1e-6, 0.3).circulation(), "cyclonic");
        assert_eq!(r(45.0, 0.0, 0.0).circulation(), "no wind");
        assert_eq!(r(45.0, f64::NAN, f64::NAN).circulation(), "n/a");
    }
}
