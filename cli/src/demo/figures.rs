//! The demo's figures (PNG, in the output folder):
//!
//! - `level_<sigma>.png`: on the mid-troposphere level, the background error (truth - background) and each
//!   method's increment: geopotential filled (temperature where the bundle has no geopotential), wind as vectors,
//!   the observations on that level as dots (crosses: rejected by that method's QC).
//! - `surface.png`: the same for the first surface field (surface pressure), with the wind of the lowest level.
//! - `single_obs.png`: each method's response to the two single temperature observations (45N and 45S):
//!   temperature increment filled, wind increment as vectors, both on the observations' level;
//!   `single_obs_z.png`: the same responses with the geopotential increment filled (a geostrophic wind runs along
//!   its contours, clockwise around a high in the north, anticlockwise in the south).
//!
//! Every panel of a figure shares one colour scale and one vector scale, set by the background error (for the
//! single-observation figure: by the largest response), so the increments compare directly with the error they
//! should remove.

use std::collections::HashSet;
use std::path::PathBuf;

use super::single_obs::{self, Experiment};
use super::table::{method_label, sig};
use super::Demo;
use crate::plot::colour::{nice_ceil, DEFAULT_LEVELS};
use crate::plot::{ColourScale, MapFigure, Marker, MarkerKind, Panel, VectorScale};
use latentda::bundle::grid::Layout;
use latentda::error::Result;
use latentda::obs::QcFlag;
use latentda::var::options::Method;

/// One horizontal field (variable `v`, level `k`; surface fields have k = 0) of a state.
fn horizontal<'a>(layout: &Layout, x: &'a [f64], v: usize, k: usize) -> &'a [f64] {
    let np = layout.grid.npoints();
    let c = layout.variables[v].first_channel + k;
    &x[c * np..(c + 1) * np]
}

/// Index of an upper-air variable by name.
fn upper(layout: &Layout, name: &str) -> Option<usize> {
    layout.var_index(name).filter(|&v| !layout.variables[v].is_surface())
}

/// Nearest model level of a vertical coordinate value (in ln).
fn nearest_level(layout: &Layout, level: f64) -> usize {
    let lev = &layout.vertical.levels;
    (0..lev.len())
        .min_by(|&a, &b| (lev[a].ln() - level.ln()).abs().total_cmp(&(lev[b].ln() - level.ln()).abs()))
        .unwrap_or(0)
}

fn rms(x: &[f64]) -> f64 {
    (x.iter().map(|v| v * v).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

fn max_speed(w: Option<(&[f64], &[f64])>) -> f64 {
    w.map_or(0.0, |(u, v)| u.iter().zip(v).map(|(a, b)| a.hypot(*b)).fold(0.0, f64::max))
}

/// A panel's title, full state difference and the QC flags of its method (none for the background error).
/// A panel's title, field, and the QC flags of the observations it was analysed with (and those observations).
type Shown<'a> = (String, Vec<f64>, Option<(&'a [QcFlag], &'a [latentda::obs::Observation])>);
/// Wind components of one level.
type Wind<'a> = (&'a [f64], &'a [f64]);

/// Which level a map shows.
#[derive(Debug, Clone, Copy)]
enum Level {
    /// The mid-troposphere level.
    Mid,
    /// The first surface field, with the wind of the lowest level.
    Surface,
}

/// Draws every figure the bundle's variables allow; returns the files written.
pub fn draw_all(d: &Demo) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for level in [Level::Mid, Level::Surface] {
        if let Some(p) = level_figure(d, level)? {
            out.push(p);
        }
    }
    for (var, file) in [("t", "single_obs.png"), ("z", "single_obs_z.png")] {
        if let Some(p) = single_obs_figure(d, var, file)? {
            out.push(p);
        }
    }
    Ok(out)
}

fn level_figure(d: &Demo, level: Level) -> Result<Option<PathBuf>> {
    let lay = &d.layout;
    let nlev = lay.vertical.levels.len();
    let (field_var, k, wind_k, file) = match level {
        Level::Mid => {
            let k = single_obs::mid_level(lay);
            let Some(v) = upper(lay, "z")
                .or_else(|| upper(lay, "t"))
                .or_else(|| lay.variables.iter().position(|v| !v.is_surface()))
            else {
                return Ok(None);
            };
            (v, k, k, format!("level_{}.png", lay.vertical.levels[k]))
        }
        Level::Surface => {
            let Some(v) = lay.variables.iter().position(|v| v.is_surface()) else {
                return Ok(None);
            };
            (v, 0, nlev.saturating_sub(1), "surface.png".to_string())
        }
    };
    let wind_vars = upper(lay, "u").zip(upper(lay, "v"));
    // Fields: the background error first, then each method's increment.
    let mut states: Vec<Shown> = vec![("truth - background (background error)".into(), diff(&d.truth, &d.x_b), None)];
    for r in &d.runs {
        let obs: &[latentda::obs::Observation] = if r.method == Method::L4dvar { &d.obs4d_rows } else { &d.obs };
        states.push((
            format!("{} increment", method_label(r.method)),
            diff(&r.analysis.analysis, &d.x_b),
            Some((&r.analysis.qc, obs)),
        ));
    }
    let fields: Vec<(&[f64], Option<Wind>)> = states
        .iter()
        .map(|(_, x, _)| {
            let w = wind_vars.map(|(iu, iv)| (horizontal(lay, x, iu, wind_k), horizontal(lay, x, iv, wind_k)));
            (horizontal(lay, x, field_var, k), w)
        })
        .collect();
    // Observations shown on this map: those nearest this level (or the surface fields').
    let on_map = |o: &latentda::obs::Observation| match (level, o.var, o.level) {
        (Level::Mid, Some(v), Some(l)) => !lay.variables[v].is_surface() && l > 0.0 && nearest_level(lay, l) == k,
        (Level::Surface, Some(v), _) => lay.variables[v].is_surface(),
        _ => false,
    };
    let units = &d.units[field_var];
    let var = &lay.variables[field_var].name;
    let wind_units = wind_vars.map_or(String::new(), |(iu, _)| d.units[iu].clone());
    let mut panels = Vec::new();
    let mut n_shown = 0;
    for ((title, _, qc), (field, wind)) in states.iter().zip(&fields) {
        let mut seen = HashSet::new();
        let mut markers = Vec::new();
        let obs = qc.map_or(&d.obs[..], |(_, o)| o);
        for (i, o) in obs.iter().enumerate().filter(|(_, o)| on_map(o)) {
            let kind = match qc {
                Some((q, _)) if q[i] != QcFlag::Used => MarkerKind::Rejected,
                _ => MarkerKind::Used,
            };
            // One dot per station (u, v, t, q share a position); every rejection is drawn.
            if kind == MarkerKind::Rejected || seen.insert(((o.lat * 1e3) as i64, (o.lon * 1e3) as i64)) {
                markers.push(Marker { lat: o.lat, lon: o.lon, kind });
            }
        }
        n_shown = n_shown.max(markers.len());
        let wind_txt = if wind.is_some() {
            format!(", max |wind| {} {wind_units}", sig(max_speed(*wind), 3))
        } else {
            String::new()
        };
        panels.push(Panel {
            title: format!("{title}: rms {} {units}{wind_txt}", sig(rms(field), 3)),
            field,
            wind: *wind,
            markers,
        });
    }
    let where_ = match level {
        Level::Mid => format!("{} {}", vertical_name(lay), lay.vertical.levels[k]),
        Level::Surface => {
            format!("the surface, wind on the lowest level ({} {})", vertical_name(lay), lay.vertical.levels[wind_k])
        }
    };
    let winds: Vec<(&[f64], &[f64])> = fields[..1].iter().filter_map(|(_, w)| *w).collect();
    let fig = MapFigure {
        title: format!("latentda demo, bundle {}: {var} (filled){} at {where_}", d.bundle, if wind_vars.is_some() { " and wind (vectors)" } else { "" }),
        subtitle: format!(
            "background error and analysis increments, case {}; observations on this level: {} positions (dots), QC rejections (crosses)",
            d.case.display(),
            n_shown
        ),
        grid: &lay.grid,
        cols: 2,
        lon: (0.0, 360.0),
        lat: (-90.0, 90.0),
        colours: ColourScale::symmetric(fields[0].0, format!("{var} ({units})")),
        vectors: VectorScale::for_winds(&winds, &wind_units, 2),
        panel_px: (780, 450),
        panels,
    };
    let path = d.out.join(file);
    fig.draw(&path)?;
    Ok(Some(path))
}

fn diff(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

fn vertical_name(lay: &Layout) -> &'static str {
    match lay.vertical.kind {
        latentda::bundle::grid::VerticalKind::Sigma => "sigma",
        latentda::bundle::grid::VerticalKind::Pressure => "p (Pa)",
    }
}

/// One panel title of the single-observation figure: the response at each observation.
fn response_title(e: &Experiment) -> String {
    let parts: Vec<String> = e
        .responses
        .iter()
        .map(|r| {
            let ns = if r.lat >= 0.0 { format!("{:.0}N", r.lat) } else { format!("{:.0}S", -r.lat) };
            format!("{ns} {:+.2} K, {}", r.at_obs, r.circulation())
        })
        .collect();
    format!("{}: {}", method_label(e.method), parts.join("; "))
}

/// The single-observation responses with variable `var` filled (None if the bundle lacks it or t).
fn single_obs_figure(d: &Demo, var: &str, file: &str) -> Result<Option<PathBuf>> {
    let lay = &d.layout;
    let (Some(e0), Some(iv)) = (d.single.first(), upper(lay, var)) else {
        return Ok(None);
    };
    let k = e0.level;
    let wind_vars = upper(lay, "u").zip(upper(lay, "v"));
    let panels: Vec<Panel> = d
        .single
        .iter()
        .map(|e| Panel {
            title: response_title(e),
            field: horizontal(lay, &e.increment, iv, k),
            wind: wind_vars
                .map(|(iu, iv)| (horizontal(lay, &e.increment, iu, k), horizontal(lay, &e.increment, iv, k))),
            markers: e.responses.iter().map(|r| Marker { lat: r.lat, lon: r.lon, kind: MarkerKind::Single }).collect(),
        })
        .collect();
    // The responses are local: scale colours and vectors by their largest values, not by a percentile.
    let fmax = panels.iter().flat_map(|p| p.field.iter()).fold(0.0f64, |m, v| m.max(v.abs()));
    let wmax = panels.iter().map(|p| max_speed(p.wind)).fold(0.0, f64::max);
    let wind_units = wind_vars.map_or(String::new(), |(iu, _)| d.units[iu].clone());
    let lon = super::SINGLE_OBS_LON;
    let fig = MapFigure {
        title: format!(
            "latentda demo, bundle {}: single temperature observations at 45N and 45S, {lon:.0}E, {} {}",
            d.bundle,
            vertical_name(lay),
            lay.vertical.levels[k]
        ),
        subtitle: format!(
            "innovation +{} K, error {} K; {var} increment (filled) and wind increment (vectors) on that level; balanced: anticyclonic wind around the warm anomaly in both hemispheres",
            single_obs::INNOVATION,
            single_obs::SIGMA
        ),
        grid: &lay.grid,
        cols: panels.len().max(1),
        lon: (lon - 50.0, lon + 50.0),
        lat: (-75.0, 75.0),
        colours: ColourScale { vmax: nice_ceil(fmax), levels: DEFAULT_LEVELS, label: format!("{var} increment ({})", d.units[iv]) },
        vectors: VectorScale { reference: nice_ceil(wmax), units: wind_units, stride: 1 },
        panel_px: (560, 760),
        panels,
    };
    let path = d.out.join(file);
    fig.draw(&path)?;
    Ok(Some(path))
}
