//! Map figures (PNG) of fields on the bundle grid: a filled field in discrete colour steps, wind vectors and
//! observation markers per panel, one shared colour bar and vector key per figure, labelled longitude/latitude axes.
//!
//! Drawn with plotters' bitmap backend; text uses DejaVu Sans compiled into the binary, so figures need no system
//! font. The filled field is the bilinear interpolation of the grid values at every pixel (the same interpolation
//! as the observation operator), binned to the colour steps: the bin edges read as contours.

pub mod colour;

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::combinators::IntoLinspace;
use plotters::prelude::*;

pub use colour::ColourScale;
use latentda::bundle::grid::Grid;
use latentda::error::{Error, Result, Status};

const FONT: &str = "sans-serif";
/// Length of the key arrow (the reference speed) in vector strides.
const KEY_STRIDES: f64 = 2.2;

/// Registers the embedded font with plotters (once per process).
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok())
    {
        Ok(())
    } else {
        Err(Error::new(Status::Internal, "the embedded DejaVu Sans font could not be loaded for figures"))
    }
}

/// What a marker shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    /// An observation used by the analysis (small black dot).
    Used,
    /// An observation rejected by quality control (magenta cross).
    Rejected,
    /// The observation of a single-observation experiment (large ring).
    Single,
}

/// A marker at a point.
#[derive(Debug, Clone, Copy)]
pub struct Marker {
    /// Latitude, degrees north.
    pub lat: f64,
    /// Longitude, degrees east.
    pub lon: f64,
    /// Kind.
    pub kind: MarkerKind,
}

/// One map panel: a filled horizontal field (nlat x nlon, latitudes north to south), optional wind vectors,
/// markers.
#[derive(Debug, Clone)]
pub struct Panel<'a> {
    /// Panel title.
    pub title: String,
    /// Filled field.
    pub field: &'a [f64],
    /// Wind vectors (u, v), same layout as the field.
    pub wind: Option<(&'a [f64], &'a [f64])>,
    /// Markers drawn on top.
    pub markers: Vec<Marker>,
}

/// Vector scaling shared by all panels of a figure.
#[derive(Debug, Clone)]
pub struct VectorScale {
    /// Speed drawn with the key's length.
    pub reference: f64,
    /// Units of the speed (for the key).
    pub units: String,
    /// Draw every `stride`-th grid point in each direction.
    pub stride: usize,
}

impl VectorScale {
    /// Reference speed: the 95th percentile of the speeds rounded up to a readable number (0 speeds: 1).
    pub fn for_winds(winds: &[(&[f64], &[f64])], units: &str, stride: usize) -> VectorScale {
        let mut s: Vec<f64> = winds
            .iter()
            .flat_map(|(u, v)| u.iter().zip(v.iter()).map(|(a, b)| a.hypot(*b)))
            .filter(|x| x.is_finite())
            .collect();
        s.sort_by(|a, b| a.total_cmp(b));
        let p = s.get(((s.len() as f64 * 0.95) as usize).min(s.len().saturating_sub(1))).copied().unwrap_or(0.0);
        VectorScale {
            reference: colour::nice_ceil(if p > 0.0 { p } else { 1.0 }),
            units: units.into(),
            stride: stride.max(1),
        }
    }
}

/// A figure: panels on a grid of `cols` columns over one longitude/latitude window.
#[derive(Debug, Clone)]
pub struct MapFigure<'a> {
    /// Figure title (top line).
    pub title: String,
    /// Second title line (what is shown, where it comes from).
    pub subtitle: String,
    /// The bundle grid of every field.
    pub grid: &'a Grid,
    /// Panels, row by row.
    pub panels: Vec<Panel<'a>>,
    /// Panels per row.
    pub cols: usize,
    /// Longitude window (degrees east, increasing; may pass 360).
    pub lon: (f64, f64),
    /// Latitude window (degrees north, south < north).
    pub lat: (f64, f64),
    /// Colour scale of the filled fields.
    pub colours: ColourScale,
    /// Vector scale (ignored by panels without wind).
    pub vectors: VectorScale,
    /// Size of one panel in pixels.
    pub panel_px: (u32, u32),
}

fn draw_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> Error + '_ {
    move |e| Error::io(format!("cannot draw figure '{}': {e}", path.display()))
}

fn tick_step(span: f64) -> f64 {
    [10.0, 15.0, 30.0, 60.0].into_iter().find(|s| span / s <= 7.0).unwrap_or(90.0)
}

fn lon_label(x: f64) -> String {
    let l = x.rem_euclid(360.0);
    if l == 0.0 || l == 180.0 {
        format!("{l:.0}")
    } else if l < 180.0 {
        format!("{l:.0}E")
    } else {
        format!("{:.0}W", 360.0 - l)
    }
}

fn lat_label(y: f64) -> String {
    if y == 0.0 {
        "0".into()
    } else if y > 0.0 {
        format!("{y:.0}N")
    } else {
        format!("{:.0}S", -y)
    }
}

/// Bilinear interpolation of a horizontal field at (lat, lon); NaN outside the grid.
fn interpolate(grid: &Grid, field: &[f64], lat: f64, lon: f64) -> f64 {
    match grid.bilinear(lat, lon.rem_euclid(360.0)) {
        Some(w) => w.iter().map(|(p, c)| c * field[*p]).sum(),
        None => f64::NAN,
    }
}

/// Draws an arrow from `a` to `b` (pixels) with a head of two strokes.
fn arrow<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    a: (i32, i32),
    b: (f64, f64),
    style: ShapeStyle,
) -> std::result::Result<(), String> {
    let (dx, dy) = (b.0 - a.0 as f64, b.1 - a.1 as f64);
    let len = dx.hypot(dy);
    if len < 1.5 {
        return Ok(());
    }
    let head = (0.35 * len).clamp(2.5, 7.0);
    let (ux, uy) = (dx / len, dy / len);
    let tip = (b.0.round() as i32, b.1.round() as i32);
    let side = |s: f64| {
        let (c, sn) = (0.45f64.cos(), s * 0.45f64.sin());
        let (rx, ry) = (-(ux * c - uy * sn), -(ux * sn + uy * c));
        ((b.0 + head * rx).round() as i32, (b.1 + head * ry).round() as i32)
    };
    area.draw(&PathElement::new(vec![a, tip], style)).map_err(|e| e.to_string())?;
    area.draw(&PathElement::new(vec![side(1.0), tip, side(-1.0)], style)).map_err(|e| e.to_string())?;
    Ok(())
}

impl MapFigure<'_> {
    /// Draws the figure into the PNG file `path`.
    pub fn draw(&self, path: &Path) -> Result<()> {
        register_font()?;
        let err = draw_err(path);
        let np = self.grid.npoints();
        for (k, p) in self.panels.iter().enumerate() {
            let bad = p.field.len() != np || p.wind.is_some_and(|(u, v)| u.len() != np || v.len() != np);
            if bad {
                return Err(Error::arg(format!(
                    "figure '{}': panel {k} ('{}') is not one field of the grid",
                    path.display(),
                    p.title
                )));
            }
        }
        let cols = self.cols.max(1);
        let rows = self.panels.len().div_ceil(cols);
        let (head, bar) = (70u32, 130u32);
        let size = (self.panel_px.0 * cols as u32 + bar, self.panel_px.1 * rows as u32 + head);
        let root = BitMapBackend::new(path, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (top, body) = root.split_vertically(head);
        top.draw(&Text::new(self.title.clone(), (12, 8), (FONT, 24).into_font().color(&BLACK))).map_err(|e| err(&e))?;
        top.draw(&Text::new(self.subtitle.clone(), (12, 40), (FONT, 16).into_font().color(&RGBColor(60, 60, 60))))
            .map_err(|e| err(&e))?;
        let (maps, side) = body.split_horizontally(self.panel_px.0 * cols as u32);
        let areas = maps.split_evenly((rows, cols));
        for (p, area) in self.panels.iter().zip(&areas) {
            self.draw_panel(p, area).map_err(|e| err(&e))?;
        }
        self.draw_key(&side).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        p: &Panel,
        area: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> std::result::Result<(), String> {
        let e = |x: &dyn std::fmt::Display| x.to_string();
        let ((lon0, lon1), (lat0, lat1)) = (self.lon, self.lat);
        // Axis labels every `tick_step` degrees from the window's edge.
        let (xs, ys) = (tick_step(lon1 - lon0), tick_step(lat1 - lat0));
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, (FONT, caption_size(&p.title, self.panel_px.0)))
            .margin(8)
            .margin_right(16)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d((lon0..lon1).step(xs), (lat0..lat1).step(ys))
            .map_err(|x| e(&x))?;
        // Filled field: every pixel of the plotting area, from the linear pixel <-> (lon, lat) map of its corners.
        let screen = chart.plotting_area().use_screen_coord();
        let (c0, c1) = (chart.backend_coord(&(lon0, lat1)), chart.backend_coord(&(lon1, lat0)));
        let (wx, wy) = ((c1.0 - c0.0).max(1) as f64, (c1.1 - c0.1).max(1) as f64);
        for py in c0.1..=c1.1 {
            let lat = lat1 - (py - c0.1) as f64 / wy * (lat1 - lat0);
            for px in c0.0..=c1.0 {
                let lon = lon0 + (px - c0.0) as f64 / wx * (lon1 - lon0);
                let v = interpolate(self.grid, p.field, lat, lon);
                let c = if v.is_finite() { self.colours.colour(v) } else { RGBColor(200, 200, 200) };
                screen.draw_pixel((px, py), &c).map_err(|x| e(&x))?;
            }
        }
        chart
            .configure_mesh()
            .x_desc("longitude")
            .y_desc("latitude")
            .x_label_formatter(&|x| lon_label(*x))
            .y_label_formatter(&|y| lat_label(*y))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .bold_line_style(BLACK.mix(0.18))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(|x| e(&x))?;
        if let Some((u, v)) = p.wind {
            let g = self.grid;
            let px_per_deg = wx / (lon1 - lon0);
            // The key's speed spans KEY_STRIDES strides of longitude.
            let scale = KEY_STRIDES * self.vectors.stride as f64 * px_per_deg * dlon(g) / self.vectors.reference;
            let style = ShapeStyle::from(&BLACK).stroke_width(1);
            for j in (0..g.nlat()).step_by(self.vectors.stride) {
                for i in (0..g.nlon()).step_by(self.vectors.stride) {
                    let (lat, mut lon) = (g.lat[j], g.lon[i]);
                    while lon < lon0 {
                        lon += 360.0;
                    }
                    if lat < lat0 || lat > lat1 || lon > lon1 {
                        continue;
                    }
                    let q = j * g.nlon() + i;
                    if !(u[q].is_finite() && v[q].is_finite()) {
                        continue;
                    }
                    let a = chart.backend_coord(&(lon, lat));
                    let b = (a.0 as f64 + scale * u[q], a.1 as f64 - scale * v[q]);
                    let inside = b.0 >= c0.0 as f64 && b.0 <= c1.0 as f64 && b.1 >= c0.1 as f64 && b.1 <= c1.1 as f64;
                    if inside {
                        arrow(&screen, a, b, style)?;
                    }
                }
            }
        }
        let inside = |m: &&Marker| m.lat >= lat0 && m.lat <= lat1;
        let shift = |lon: f64| {
            let mut l = lon.rem_euclid(360.0);
            if l < lon0 {
                l += 360.0;
            }
            l
        };
        for m in p.markers.iter().filter(inside) {
            let at = (shift(m.lon), m.lat);
            if at.0 > lon1 {
                continue;
            }
            match m.kind {
                MarkerKind::Used => chart.draw_series(std::iter::once(Circle::new(at, 2, BLACK.filled()))),
                MarkerKind::Rejected => {
                    chart.draw_series(std::iter::once(Cross::new(at, 4, RGBColor(200, 0, 200).stroke_width(2))))
                }
                MarkerKind::Single => chart.draw_series(std::iter::once(Circle::new(at, 7, BLACK.stroke_width(2)))),
            }
            .map_err(|x| e(&x))?;
        }
        Ok(())
    }

    /// The shared colour bar and the vector key, in the right-hand column.
    fn draw_key<DB: DrawingBackend>(
        &self,
        side: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> std::result::Result<(), String> {
        let e = |x: &dyn std::fmt::Display| x.to_string();
        let s = &self.colours;
        let (w, h) = side.dim_in_pixel();
        let bar_h = (h as f64 * 0.55).min(520.0) as u32;
        let (bar_area, rest) = side.split_vertically(bar_h + 40);
        let step = s.step();
        let mut chart = ChartBuilder::on(&bar_area)
            .margin_top(30)
            .margin_bottom(10)
            .margin_left(8)
            .right_y_label_area_size(70)
            .build_cartesian_2d(0f64..1f64, (-s.vmax..s.vmax * (1.0 + 1e-9)).step(step))
            .map_err(|x| e(&x))?;
        chart
            .draw_series((0..s.levels).map(|k| {
                let y0 = -s.vmax + k as f64 * step;
                Rectangle::new([(0.0, y0), (1.0, y0 + step)], s.bin_colour(k).filled())
            }))
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .disable_y_mesh()
            .y_label_formatter(&|y| format_tick(if y.abs() < 1e-6 * step { 0.0 } else { *y }))
            .label_style((FONT, 13))
            .draw()
            .map_err(|x| e(&x))?;
        bar_area.draw(&Text::new(s.label.clone(), (6, 6), (FONT, 14).into_font().color(&BLACK))).map_err(|x| e(&x))?;
        if self.panels.iter().any(|p| p.wind.is_some()) {
            let g = self.grid;
            let px_per_deg = (self.panel_px.0 as f64 - 76.0) / (self.lon.1 - self.lon.0);
            let len = KEY_STRIDES * self.vectors.stride as f64 * px_per_deg * dlon(g);
            let y = 40;
            rest.draw(&Text::new("vector key".to_string(), (8, y - 30), (FONT, 14).into_font().color(&BLACK)))
                .map_err(|x| e(&x))?;
            arrow(&rest, (10, y), (10.0 + len, y as f64), ShapeStyle::from(&BLACK).stroke_width(1))?;
            let label = format!("{} {}", format_tick(self.vectors.reference), self.vectors.units);
            rest.draw(&Text::new(label, (8, y + 10), (FONT, 14).into_font().color(&BLACK))).map_err(|x| e(&x))?;
        }
        let _ = w;
        let legend = [
            ("obs used", MarkerKind::Used),
            ("obs rejected (QC)", MarkerKind::Rejected),
            ("single obs", MarkerKind::Single),
        ];
        let mut y = 100;
        for (text, kind) in legend {
            if !self.panels.iter().any(|p| p.markers.iter().any(|m| m.kind == kind)) {
                continue;
            }
            match kind {
                MarkerKind::Used => rest.draw(&Circle::new((14, y), 2, BLACK.filled())),
                MarkerKind::Rejected => rest.draw(&Cross::new((14, y), 4, RGBColor(200, 0, 200).stroke_width(2))),
                MarkerKind::Single => rest.draw(&Circle::new((14, y), 7, BLACK.stroke_width(2))),
            }
            .map_err(|x| e(&x))?;
            rest.draw(&Text::new(text.to_string(), (26, y - 8), (FONT, 13).into_font().color(&BLACK)))
                .map_err(|x| e(&x))?;
            y += 24;
        }
        Ok(())
    }
}

/// Caption font size that fits `title` into a panel `width` pixels wide (DejaVu Sans averages ~0.55 em per
/// character), at most 17.
fn caption_size(title: &str, width: u32) -> u32 {
    let fit = (width as f64 - 20.0) / (0.56 * title.chars().count().max(1) as f64);
    fit.clamp(10.0, 17.0) as u32
}

/// Mean longitude spacing of the grid, degrees.
fn dlon(g: &Grid) -> f64 {
    (g.lon[g.nlon() - 1] - g.lon[0]) / (g.nlon() - 1) as f64
}

/// A tick label with as few digits as the value needs.
pub fn format_tick(y: f64) -> String {
    let a = y.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{y:.1e}")
    } else if a >= 10.0 || (a * 1.0).fract() == 0.0 {
        format!("{y:.0}")
    } else if (a * 10.0).fract().abs() < 1e-9 {
        format!("{y:.1}")
    } else if (a * 100.0).fract().abs() < 1e-9 {
        format!("{y:.2}")
    } else {
        format!("{y:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels() {
        assert_eq!(lon_label(0.0), "0");
        assert_eq!(lon_label(60.0), "60E");
        assert_eq!(lon_label(300.0), "60W");
        assert_eq!(lon_label(420.0), "60E");
        assert_eq!(lat_label(-30.0), "30S");
        assert_eq!(tick_step(360.0), 60.0);
        assert_eq!(tick_step(100.0), 15.0);
        assert_eq!(format_tick(2.5), "2.5");
        assert_eq!(format_tick(-250.0), "-250");
        assert_eq!(format_tick(0.25), "0.25");
        assert_eq!(format_tick(5e-5), "5.0e-5");
    }
}
