//! Point observations and their CSV format; the observation operator ([`operator`](crate::obs::operator)) and
//! quality control ([`qc`](crate::obs::qc)).

pub mod operator;
pub mod qc;

pub use qc::{sigma_floors, QcFlag, MIN_SIGMA_REL};

use std::path::Path;

use crate::bundle::grid::Layout;
use crate::error::{Error, Result};

/// One point observation.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Index of the bundle variable, or `None` if unknown.
    pub var: Option<usize>,
    /// Variable name as given in a CSV row (empty for observations set through the C ABI, which identify
    /// variables by index).
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
    /// Observation time, hours from the analysis time (the start of the 4D-Var window); 0 when not given. Only
    /// method `l4dvar` uses it; the other methods treat every observation as valid at the analysis time.
    pub time: f64,
    /// CSV line number, when read from a file.
    pub line: Option<usize>,
    /// Why the observation is invalid, if it was malformed on input.
    pub malformed: Option<String>,
}

impl Observation {
    /// The observation of CSV line `line` before its fields are parsed: no variable, every number NaN.
    fn row(line: usize, var_name: String) -> Observation {
        Observation {
            var: None,
            var_name,
            lat: f64::NAN,
            lon: f64::NAN,
            level: None,
            value: f64::NAN,
            sigma: f64::NAN,
            time: 0.0,
            line: Some(line),
            malformed: None,
        }
    }
}

/// A malformed CSV row: line number and message (the row is kept as an `Invalid` observation).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RowProblem {
    /// 1-based line number in the file.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses an observation CSV (`var,lat,lon,level,value,sigma`, optionally followed by a `time` column: hours from
/// the analysis time; without it every time is 0). Every data row becomes one observation, in file order;
/// malformed rows (an empty or non-numeric time included) become `Invalid` observations and are listed with their
/// line numbers.
pub fn read_csv(path: &Path, layout: &Layout) -> Result<(Vec<Observation>, Vec<RowProblem>)> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io(format!("cannot read observation file '{}': {e}", path.display())))?;
    parse_csv_bytes(&bytes, layout).map_err(|e| e.context(path.display()))
}

/// Parses CSV text; see [`read_csv`].
pub fn parse_csv(text: &str, layout: &Layout) -> Result<(Vec<Observation>, Vec<RowProblem>)> {
    parse_csv_bytes(text.as_bytes(), layout)
}

/// Splits CSV bytes into numbered lines: a UTF-8 byte-order mark is skipped; LF, CRLF and a lone CR (old Mac
/// files) all end a line; each line is decoded on its own, so one undecodable row is one malformed row.
fn csv_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, std::result::Result<&str, std::str::Utf8Error>)> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut rest = bytes;
    let mut n = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(rest.len());
        let line = &rest[..end];
        let skip = match rest.get(end..end + 2) {
            Some(b"\r\n") => 2,
            _ if end < rest.len() => 1,
            _ => 0,
        };
        rest = &rest[end + skip..];
        n += 1;
        Some((n, std::str::from_utf8(line)))
    })
}

/// Parses CSV bytes; see [`read_csv`].
pub fn parse_csv_bytes(bytes: &[u8], layout: &Layout) -> Result<(Vec<Observation>, Vec<RowProblem>)> {
    let mut lines = csv_lines(bytes);
    let header = loop {
        match lines.next() {
            Some((n, Err(_))) => return Err(Error::data(format!("line {n}: the header is not valid UTF-8"))),
            Some((_, Ok(l))) if l.trim().is_empty() || l.trim_start().starts_with('#') => continue,
            Some((n, Ok(l))) => break (n, l),
            None => return Err(Error::data("empty observation file (expected header var,lat,lon,level,value,sigma)")),
        }
    };
    let cols: Vec<String> = header.1.split(',').map(|s| s.trim().to_ascii_lowercase()).collect();
    const COLS: [&str; 6] = ["var", "lat", "lon", "level", "value", "sigma"];
    let timed = cols.len() == 7 && cols[6] == "time";
    if cols[..cols.len().min(6)] != COLS[..] || !(cols.len() == 6 || timed) {
        return Err(Error::data(format!(
            "line {}: header is '{}', expected 'var,lat,lon,level,value,sigma' (optionally followed by ',time')",
            header.0, header.1
        )));
    }
    let nfields = cols.len();
    let mut obs = Vec::new();
    let mut problems = Vec::new();
    for (line, l) in lines {
        let l = match l {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("line {line}: not valid UTF-8 (byte {} of the line)", e.valid_up_to() + 1);
                problems.push(RowProblem { line, message: msg.clone() });
                obs.push(Observation { malformed: Some(msg), ..Observation::row(line, String::new()) });
                continue;
            }
        };
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        let f: Vec<&str> = l.split(',').map(|s| s.trim()).collect();
        let mut o = Observation::row(line, f.first().unwrap_or(&"").to_string());
        if f.len() != nfields {
            let msg = format!("line {line}: expected {nfields} fields, found {}", f.len());
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
            if timed {
                o.time = num(6, "time")?;
            }
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
