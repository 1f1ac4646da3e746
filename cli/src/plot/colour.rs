//! Colour scales: a diverging blue-white-red palette in discrete steps (a filled-contour look), symmetric limits
//! rounded to readable numbers. The two steps next to zero are white, so weak signals do not paint the whole map
//! (as the zero contour interval of a weather chart).

use plotters::style::RGBColor;

/// Anchors of the diverging palette (position in [0, 1], colour), ColorBrewer RdBu reversed: blue for negative,
/// white at zero, red for positive.
const ANCHORS: [(f64, (u8, u8, u8)); 9] = [
    (0.0, (5, 48, 97)),
    (0.15, (33, 102, 172)),
    (0.3, (67, 147, 195)),
    (0.42, (146, 197, 222)),
    (0.5, (247, 247, 247)),
    (0.58, (244, 165, 130)),
    (0.7, (214, 96, 77)),
    (0.85, (178, 24, 43)),
    (1.0, (103, 0, 31)),
];

/// Colour of the continuous palette at `t` in [0, 1] (clamped).
pub fn diverging(t: f64) -> RGBColor {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.5 };
    let k = ANCHORS.iter().position(|a| a.0 >= t).unwrap_or(ANCHORS.len() - 1).max(1);
    let ((t0, c0), (t1, c1)) = (ANCHORS[k - 1], ANCHORS[k]);
    let f = (t - t0) / (t1 - t0);
    let mix = |a: u8, b: u8| (a as f64 + f * (b as f64 - a as f64)).round() as u8;
    RGBColor(mix(c0.0, c1.0), mix(c0.1, c1.1), mix(c0.2, c1.2))
}

/// Number of colour steps: 10, so bin edges fall on multiples of vmax / 5 (readable labels).
pub const DEFAULT_LEVELS: usize = 10;
/// Colour of the two steps next to zero.
pub const WHITE_BIN: RGBColor = RGBColor(255, 255, 255);

/// Smallest of 1, 2, 2.5, 5 times a power of ten that is >= `x` (x > 0), for axis limits people can read.
pub fn nice_ceil(x: f64) -> f64 {
    if !(x > 0.0) || !x.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= x * (1.0 - 1e-12) {
            return m * p;
        }
    }
    10.0 * p
}

/// A symmetric, discrete colour scale: `levels` equal bins between -vmax and vmax; values beyond fall in the end
/// bins; the two bins next to zero are white.
#[derive(Debug, Clone)]
pub struct ColourScale {
    /// Half range.
    pub vmax: f64,
    /// Number of bins (even, so zero is a bin edge and small values of either sign are pale).
    pub levels: usize,
    /// Colour-bar label (quantity and units).
    pub label: String,
}

impl ColourScale {
    /// A scale whose half range is the 99th percentile of |values| rounded up by [`nice_ceil`] (a few extreme
    /// points do not wash out the rest).
    pub fn symmetric(values: &[f64], label: impl Into<String>) -> ColourScale {
        let mut a: Vec<f64> = values.iter().filter(|v| v.is_finite()).map(|v| v.abs()).collect();
        let vmax = if a.is_empty() {
            1.0
        } else {
            a.sort_by(|x, y| x.total_cmp(y));
            let p = a[((a.len() as f64 * 0.99) as usize).min(a.len() - 1)];
            nice_ceil(if p > 0.0 { p } else { a[a.len() - 1] })
        };
        ColourScale { vmax, levels: DEFAULT_LEVELS, label: label.into() }
    }

    /// Bin index of `v` (0 ..levels).
    pub fn bin(&self, v: f64) -> usize {
        let t = (v + self.vmax) / (2.0 * self.vmax);
        ((t * self.levels as f64).floor().max(0.0) as usize).min(self.levels - 1)
    }

    /// Colour of bin `k`: white next to zero, else the palette at the bin centre.
    pub fn bin_colour(&self, k: usize) -> RGBColor {
        if k + 1 == self.levels / 2 || k == self.levels / 2 {
            WHITE_BIN
        } else {
            diverging((k as f64 + 0.5) / self.levels as f64)
        }
    }

    /// Width of one bin.
    pub fn step(&self) -> f64 {
        2.0 * self.vmax / self.levels as f64
    }

    /// Colour of value `v`.
    pub fn colour(&self, v: f64) -> RGBColor {
        self.bin_colour(self.bin(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers() {
        for (x, n) in
            [(0.7, 1.0), (1.0, 1.0), (1.01, 2.0), (2.2, 2.5), (3.0, 5.0), (7.0, 10.0), (230.0, 250.0), (4.1e-5, 5e-5)]
        {
            assert!((nice_ceil(x) - n).abs() < 1e-12 * n, "{x} -> {} (expected {n})", nice_ceil(x));
        }
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(f64::NAN), 1.0);
    }

    #[test]
    fn scale_is_symmetric_and_signed() {
        let vals: Vec<f64> = (0..1000).map(|i| (i as f64 - 500.0) / 100.0).collect();
        let s = ColourScale::symmetric(&vals, "x");
        assert_eq!(s.vmax, 5.0);
        assert_eq!(s.bin(-1e9), 0);
        assert_eq!(s.bin(1e9), s.levels - 1);
        assert_eq!(s.bin(-1e-9), s.levels / 2 - 1);
        assert_eq!(s.bin(1e-9), s.levels / 2);
        // Negative values are blue (b > r), positive red (r > b), and |v| < one step is white.
        let (neg, pos) = (s.colour(-4.0), s.colour(4.0));
        assert!(neg.2 > neg.0 && pos.0 > pos.2);
        assert_eq!(s.step(), 1.0);
        for v in [-0.99, -1e-3, 1e-3, 0.99] {
            assert_eq!(s.colour(v), WHITE_BIN, "{v}");
        }
        assert!(s.colour(1.01) != WHITE_BIN && s.colour(-1.01) != WHITE_BIN);
    }
}
