//! Grid, vertical coordinate and variable layout of a bundle.
//!
//! A state is stored as one contiguous vector in channel-major C order: index `(c * nlat + j) * nlon + i`, with
//! channel `c` running over the variables in bundle order and, within an upper-air variable, over its levels top to
//! bottom; latitude row `j` runs north to south and longitude column `i` eastwards.

use crate::error::{Error, Result};

/// Horizontal grid kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GridKind {
    /// Equally spaced latitudes.
    Regular,
    /// Gaussian (non-uniform) latitudes.
    Gaussian,
}

/// A latitude-longitude grid with latitudes north to south and increasing longitudes.
#[derive(Debug, Clone)]
pub struct Grid {
    /// Grid kind as declared by the bundle.
    pub kind: GridKind,
    /// Latitudes in degrees north, strictly decreasing.
    pub lat: Vec<f64>,
    /// Longitudes in degrees east, strictly increasing.
    pub lon: Vec<f64>,
    /// Whether the longitudes close around the globe (interpolation wraps from the last to the first column).
    pub periodic: bool,
    /// Whether the first/last latitude rows are the last rows before the poles (observations poleward of them are
    /// interpolated with a zero-gradient pole cap instead of being rejected).
    pub polar_caps: bool,
}

impl Grid {
    /// Builds and validates a grid.
    pub fn new(kind: GridKind, lat: Vec<f64>, lon: Vec<f64>) -> Result<Grid> {
        if lat.len() < 2 || lon.len() < 2 {
            return Err(Error::bundle(format!(
                "grid needs at least 2 latitudes and 2 longitudes (got {} x {})",
                lat.len(),
                lon.len()
            )));
        }
        for (j, w) in lat.windows(2).enumerate() {
            if !(w[0] > w[1]) {
                return Err(Error::bundle(format!(
                    "grid.lat must be strictly decreasing (north to south): lat[{j}] = {} and lat[{}] = {}",
                    w[0],
                    j + 1,
                    w[1]
                )));
            }
        }
        if let Some((j, v)) = lat.iter().enumerate().find(|(_, v)| !v.is_finite() || v.abs() > 90.0) {
            return Err(Error::bundle(format!("grid.lat[{j}] = {v} is outside [-90, 90]")));
        }
        for (i, w) in lon.windows(2).enumerate() {
            if !(w[0] < w[1]) {
                return Err(Error::bundle(format!(
                    "grid.lon must be strictly increasing: lon[{i}] = {} and lon[{}] = {}",
                    w[0],
                    i + 1,
                    w[1]
                )));
            }
        }
        let span = lon[lon.len() - 1] - lon[0];
        if !(span < 360.0) || lon.iter().any(|v| !v.is_finite()) {
            return Err(Error::bundle(format!("grid.lon must span less than 360 degrees (spans {span})")));
        }
        let dlon_max = lon.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
        let gap = 360.0 - span;
        let periodic = gap <= 1.5 * dlon_max + 1e-9;
        let dlat_n = lat[0] - lat[1];
        let dlat_s = lat[lat.len() - 2] - lat[lat.len() - 1];
        let polar_caps = (90.0 - lat[0]) <= dlat_n + 1e-9 && (90.0 + lat[lat.len() - 1]) <= dlat_s + 1e-9;
        Ok(Grid { kind, lat, lon, periodic, polar_caps })
    }

    /// Number of latitudes.
    pub fn nlat(&self) -> usize {
        self.lat.len()
    }
    /// Number of longitudes.
    pub fn nlon(&self) -> usize {
        self.lon.len()
    }
    /// Number of horizontal points.
    pub fn npoints(&self) -> usize {
        self.lat.len() * self.lon.len()
    }

    /// Bilinear interpolation weights of (lat, lon) as four (point index, weight) pairs, or `None` when the point is
    /// outside the grid. Longitude is periodic on a global grid; poleward of the outermost row of a global grid the
    /// row values are used (zero-gradient cap).
    pub fn bilinear(&self, lat: f64, lon: f64) -> Option<[(usize, f64); 4]> {
        let (j0, j1, tj) = self.lat_bracket(lat)?;
        let (i0, i1, ti) = self.lon_bracket(lon)?;
        let nlon = self.nlon();
        Some([
            (j0 * nlon + i0, (1.0 - tj) * (1.0 - ti)),
            (j0 * nlon + i1, (1.0 - tj) * ti),
            (j1 * nlon + i0, tj * (1.0 - ti)),
            (j1 * nlon + i1, tj * ti),
        ])
    }

    fn lat_bracket(&self, lat: f64) -> Option<(usize, usize, f64)> {
        let n = self.lat.len();
        if !(lat.abs() <= 90.0) {
            return None;
        }
        if lat >= self.lat[0] {
            return if lat == self.lat[0] || self.polar_caps { Some((0, 0, 0.0)) } else { None };
        }
        if lat <= self.lat[n - 1] {
            return if lat == self.lat[n - 1] || self.polar_caps { Some((n - 1, n - 1, 0.0)) } else { None };
        }
        // First row whose latitude is below `lat` (latitudes decrease).
        let j1 = self.lat.partition_point(|&v| v >= lat);
        let j0 = j1 - 1;
        let t = (self.lat[j0] - lat) / (self.lat[j0] - self.lat[j1]);
        Some((j0, j1, t))
    }

    fn lon_bracket(&self, lon: f64) -> Option<(usize, usize, f64)> {
        let n = self.lon.len();
        let lon0 = self.lon[0];
        if !lon.is_finite() {
            return None;
        }
        let x = if self.periodic { lon0 + (lon - lon0).rem_euclid(360.0) } else { lon };
        if x < lon0 {
            return None;
        }
        let last = self.lon[n - 1];
        if x >= last {
            if x == last {
                return Some((n - 1, n - 1, 0.0));
            }
            if !self.periodic {
                return None;
            }
            let t = (x - last) / (lon0 + 360.0 - last);
            return Some((n - 1, 0, t));
        }
        let i1 = self.lon.partition_point(|&v| v <= x);
        let i0 = i1 - 1;
        let t = (x - self.lon[i0]) / (self.lon[i1] - self.lon[i0]);
        Some((i0, i1, t))
    }
}

/// Vertical coordinate kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerticalKind {
    /// Sigma = p / ps (dimensionless).
    Sigma,
    /// Pressure in Pa.
    Pressure,
}

/// Vertical coordinate with full levels top to bottom (increasing values).
#[derive(Debug, Clone)]
pub struct Vertical {
    /// Coordinate kind.
    pub kind: VerticalKind,
    /// Levels top to bottom, strictly increasing, positive.
    pub levels: Vec<f64>,
}

impl Vertical {
    /// Builds and validates the vertical coordinate.
    pub fn new(kind: VerticalKind, levels: Vec<f64>) -> Result<Vertical> {
        if levels.is_empty() {
            return Err(Error::bundle("vertical.levels is empty"));
        }
        for (k, v) in levels.iter().enumerate() {
            let bad = !v.is_finite() || *v <= 0.0 || (kind == VerticalKind::Sigma && *v > 1.0);
            if bad {
                return Err(Error::bundle(format!("vertical.levels[{k}] = {v} is not a valid {kind:?} level")));
            }
        }
        for (k, w) in levels.windows(2).enumerate() {
            if !(w[0] < w[1]) {
                return Err(Error::bundle(format!(
                    "vertical.levels must increase from top to bottom: levels[{k}] = {} >= levels[{}] = {}",
                    w[0],
                    k + 1,
                    w[1]
                )));
            }
        }
        Ok(Vertical { kind, levels })
    }

    /// Linear-in-ln(level) interpolation weights ((k0, w0), (k1, w1)), or `None` outside [top, bottom].
    pub fn interpolate(&self, level: f64) -> Option<[(usize, f64); 2]> {
        let n = self.levels.len();
        if !(level > 0.0) || !level.is_finite() {
            return None;
        }
        if level < self.levels[0] || level > self.levels[n - 1] {
            return None;
        }
        if n == 1 {
            return Some([(0, 1.0), (0, 0.0)]);
        }
        let k1 = self.levels.partition_point(|&v| v < level).clamp(1, n - 1);
        let k0 = k1 - 1;
        let t = (level.ln() - self.levels[k0].ln()) / (self.levels[k1].ln() - self.levels[k0].ln());
        Some([(k0, 1.0 - t), (k1, t)])
    }
}

/// A model variable of the bundle.
#[derive(Debug, Clone)]
pub struct Variable {
    /// Name as in the bundle and in state files.
    pub name: String,
    /// Units (UDUNITS string).
    pub units: String,
    /// Number of levels; 0 for a surface variable.
    pub nlev: usize,
    /// Index of the first channel of this variable.
    pub first_channel: usize,
}

impl Variable {
    /// Number of channels (levels, or 1 for a surface variable).
    pub fn nchan(&self) -> usize {
        self.nlev.max(1)
    }
    /// Whether this is a surface variable.
    pub fn is_surface(&self) -> bool {
        self.nlev == 0
    }
}

/// Longest variable name: NetCDF's NC_MAX_NAME.
pub const MAX_NAME_BYTES: usize = 256;

/// A variable name must be usable everywhere it goes: as a NetCDF variable name, in an observation CSV field and
/// in C and Fortran strings. CF's rule (a letter, then letters, digits or underscores; a leading underscore is
/// allowed too), at most [`MAX_NAME_BYTES`] bytes.
fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = name.len() <= MAX_NAME_BYTES
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        return Ok(());
    }
    let shown: String = name.chars().take(40).flat_map(char::escape_default).collect();
    Err(Error::bundle(format!(
        "variable name '{shown}'{} ({} bytes) is not valid: use a letter, then letters, digits or underscores, at most \
         {MAX_NAME_BYTES} bytes",
        if name.chars().count() > 40 { "..." } else { "" },
        name.len()
    )))
}

/// The full state layout: grid, vertical coordinate and variables in channel order.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Horizontal grid.
    pub grid: Grid,
    /// Vertical coordinate.
    pub vertical: Vertical,
    /// Variables in channel order.
    pub variables: Vec<Variable>,
    /// Total number of channels.
    pub nchan: usize,
}

impl Layout {
    /// Builds the layout, assigning channels.
    pub fn new(grid: Grid, vertical: Vertical, vars: Vec<(String, String, usize)>) -> Result<Layout> {
        let mut variables = Vec::with_capacity(vars.len());
        let mut c = 0;
        for (name, units, nlev) in vars {
            check_name(&name)?;
            if nlev != 0 && nlev != vertical.levels.len() {
                return Err(Error::bundle(format!(
                    "variable '{name}' has {nlev} levels; must be 0 (surface) or {} (vertical.levels)",
                    vertical.levels.len()
                )));
            }
            if variables.iter().any(|v: &Variable| v.name == name) {
                return Err(Error::bundle(format!("variable '{name}' is declared twice")));
            }
            let v = Variable { name, units, nlev, first_channel: c };
            c += v.nchan();
            variables.push(v);
        }
        if variables.is_empty() {
            return Err(Error::bundle("bundle declares no variables"));
        }
        Ok(Layout { grid, vertical, variables, nchan: c })
    }

    /// Number of values in a full state.
    pub fn state_len(&self) -> usize {
        self.nchan * self.grid.npoints()
    }
    /// Flat state indices of variable `v` (all its levels).
    pub fn var_range(&self, v: usize) -> std::ops::Range<usize> {
        let np = self.grid.npoints();
        let var = &self.variables[v];
        var.first_channel * np..(var.first_channel + var.nchan()) * np
    }

    /// RMS of `a - b` over each variable's whole field, in bundle order.
    pub fn rms_diff_by_var(&self, a: &[f64], b: &[f64]) -> Vec<f64> {
        (0..self.variables.len())
            .map(|v| {
                let r = self.var_range(v);
                let n = r.len() as f64;
                (r.map(|i| (a[i] - b[i]).powi(2)).sum::<f64>() / n).sqrt()
            })
            .collect()
    }

    /// Index of a variable by name.
    pub fn var_index(&self, name: &str) -> Option<usize> {
        self.variables.iter().position(|v| v.name == name)
    }
    /// Variable owning channel `c`, and the level within it.
    pub fn channel_owner(&self, c: usize) -> (usize, usize) {
        let v = self.variables.iter().rposition(|v| v.first_channel <= c).unwrap_or(0);
        (v, c - self.variables[v].first_channel)
    }
    /// Human-readable channel name (`t@3` for level index 3, `ps` for a surface field).
    pub fn channel_name(&self, c: usize) -> String {
        let (v, k) = self.channel_owner(c);
        let var = &self.variables[v];
        if var.is_surface() {
            var.name.clone()
        } else {
            format!("{}@{}", var.name, k)
        }
    }
    /// Describes the location of flat state index `idx` (variable, level, lat, lon indices).
    pub fn describe_index(&self, idx: usize) -> String {
        let np = self.grid.npoints();
        let c = idx / np;
        let p = idx % np;
        let (v, k) = self.channel_owner(c);
        let var = &self.variables[v];
        let (j, i) = (p / self.grid.nlon(), p % self.grid.nlon());
        if var.is_surface() {
            format!("variable '{}' at (lat index {j}, lon index {i})", var.name)
        } else {
            format!("variable '{}' at (lev index {k}, lat index {j}, lon index {i})", var.name)
        }
    }
}
