//! Point observations and their CSV format; the observation operator ([`operator`]) and quality control ([`qc`]).

pub mod operator;
pub mod qc;

pub use qc::QcFlag;

use std::path::Path;

use crate::error::{Error, Result};
use crate::bundle::grid::Layout;

/// One point observation.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Index of the bundle variable, or `None` if unknown.
    pub var: Option<usize>,
    /// Variable name as given (for reports).
    pub var_name: String,
    /// Latitude, degrees north.
    pub lat: f64,
    /// Longitude, degrees east.
    pub lon: f64,
    /// Vertical coordinate value (bundle coordinate); `None` for surface variables.
    pub level: Option<f64>,
    /// Observed value, physical units.
    pub value: f64,
    /// Observation error standard deviation.
    pub sigma: f64,
    /// CSV line number, when read from a file.
    pub line: Option<usize>,
    /// Why the observation is invalid, if it was malformed on input.
    pub malformed: Option<String>,
}

/// A malformed CSV row: line number and message (the row is kept as an `Invalid` observation).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RowProblem {
    /// 1-based line number in the file.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses an observation CSV (`var,lat,lon,level,value,sigma`). Every data row becomes one observation, in file
/// order; malformed rows become `Invalid` observations and are listed with their line numbers.
pub fn read_csv(path: &Path, layout: &Layout) -> Result<(Vec<Observation>, Vec<RowProblem>)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("cannot read observation file '{}': {e}", path.display())))?;
    parse_csv(&text, layout).map_err(|e| e.context(path.display()))
}

/// Parses CSV text; see [`read_csv`].
pub fn parse_csv(text: &str, layout: &Layout) -> Result<(Vec<Observation>, Vec<RowProblem>)> {
    let mut lines = text.lines().enumerate();
    let header = loop {
        match lines.next() {
            Some((_, l)) if l.trim().is_empty() || l.trim_start().starts_with('#') => continue,
            Some((n, l)) => break (n + 1, l),
            None => return Err(Error::data("empty observation file (expected header var,lat,lon,level,value,sigma)")),
        }
    };
    let cols: Vec<String> = header.1.split(',').map(|s| s.trim().to_ascii_lowercase()).collect();
    if cols != ["var", "lat", "lon", "level", "value", "sigma"] {
        return Err(Error::data(format!(
            "line {}: header is '{}', expected 'var,lat,lon,level,value,sigma'",
            header.0, header.1
        )));
    }
    let mut obs = Vec::new();
    let mut problems = Vec::new();
    for (n, l) in lines {
        let line = n + 1;
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        let f: Vec<&str> = l.split(',').map(|s| s.trim()).collect();
        let mut o = Observation {
            var: None,
            var_name: f.first().unwrap_or(&"").to_string(),
            lat: f64::NAN,
            lon: f64::NAN,
            level: None,
            value: f64::NAN,
            sigma: f64::NAN,
            line: Some(line),
            malformed: None,
        };
        if f.len() != 6 {
            let msg = format!("line {line}: expected 6 fields, found {}", f.len());
            problems.push(RowProblem { line, message: msg.clone() });
            o.malformed = Some(msg);
            obs.push(o);
            continue;
        }
        o.var = layout.var_index(f[0]);
        let num = |i: usize, name: &str| -> std::result::Result<f64, String> {
            f[i].parse::<f64>().map_err(|_| format!("line {line}: field '{name}' = '{}' is not a number", f[i]))
        };
        let parsed = (|| -> std::result::Result<(), String> {
            o.lat = num(1, "lat")?;
            o.lon = num(2, "lon")?;
            o.level = if f[3].is_empty() { None } else { Some(num(3, "level")?) };
            o.value = num(4, "value")?;
            o.sigma = num(5, "sigma")?;
            Ok(())
        })();
        if let Err(msg) = parsed {
            problems.push(RowProblem { line, message: msg.clone() });
            o.malformed = Some(msg);
        }
        obs.push(o);
    }
    Ok((obs, problems))
}
