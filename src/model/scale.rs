//! Per-channel normalisation of a state: the one place the bundle's mean and standard deviation are applied.
//!
//! ```text
//! N(x)      = (x - mean[c]) / sd[c]         normalise
//! N^-1(xn)  = mean[c] + sd[c] * xn          denormalise
//! N^-1'(dxn) = sd[c] * dxn,  N'(dx) = dx / sd[c]   (the increments' scalings, each its own adjoint)
//! ```
//!
//! A state is laid out as channels x points: channel `c` holds elements `c * npoints .. (c + 1) * npoints`
//! (`npoints` = nlat x nlon). Each operation evaluates exactly the expression written above, per element, so a loop
//! replaced by a [`ChannelScale`] call gives bit-identical results. Loops that combine the scaling with other terms
//! iterate [`ChannelScale::channels`].

use std::ops::Range;

/// The per-channel normalisation `xn = (x - mean[c]) / sd[c]` over `mean.len()` channels of `npoints` points each.
///
/// Holds its own copy of the statistics (one mean and one standard deviation per channel), so a B operator or step
/// model can keep one. Every method panics if a slice is shorter than [`len`](ChannelScale::len).
///
/// ```
/// use latentda::model::scale::ChannelScale;
/// let scale = ChannelScale::new(&[10.0, 0.0], &[2.0, 4.0], 2);
/// let mut x = [12.0, 8.0, 4.0, -8.0];
/// scale.normalise_in_place(&mut x);
/// assert_eq!(x, [1.0, -1.0, 1.0, -2.0]);
/// scale.denormalise_in_place(&mut x);
/// assert_eq!(x, [12.0, 8.0, 4.0, -8.0]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelScale {
    mean: Vec<f64>,
    sd: Vec<f64>,
    npoints: usize,
}

impl ChannelScale {
    /// The normalisation with per-channel `mean` and `sd` (equal lengths: the channels) on `npoints` points.
    ///
    /// # Panics
    /// If `mean` and `sd` differ in length.
    pub fn new(mean: &[f64], sd: &[f64], npoints: usize) -> Self {
        assert_eq!(mean.len(), sd.len(), "ChannelScale: {} means but {} standard deviations", mean.len(), sd.len());
        ChannelScale { mean: mean.to_vec(), sd: sd.to_vec(), npoints }
    }

    /// The scaling of increments only (zero means): for the operators that use `sd` alone
    /// ([`scale_in_place`](ChannelScale::scale_in_place), [`scale_from_f32`](ChannelScale::scale_from_f32), ...).
    pub fn for_increments(sd: &[f64], npoints: usize) -> Self {
        ChannelScale { mean: vec![0.0; sd.len()], sd: sd.to_vec(), npoints }
    }

    /// The bundle's normalisation (`normalisation.nc`) on its grid.
    pub fn for_bundle(bundle: &crate::bundle::Bundle) -> Self {
        Self::new(&bundle.mean, &bundle.std, bundle.layout.grid.npoints())
    }

    /// Number of channels.
    pub fn nchan(&self) -> usize {
        self.sd.len()
    }

    /// Points per channel.
    pub fn npoints(&self) -> usize {
        self.npoints
    }

    /// State length, channels x points.
    pub fn len(&self) -> usize {
        self.sd.len() * self.npoints
    }

    /// Whether the state is empty (no channel or no point).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per-channel means.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Per-channel standard deviations.
    pub fn sd(&self) -> &[f64] {
        &self.sd
    }

    /// Each channel's element range in the state with its mean and standard deviation, in channel order.
    pub fn channels(&self) -> impl Iterator<Item = (Range<usize>, f64, f64)> + '_ {
        let np = self.npoints;
        self.mean.iter().zip(&self.sd).enumerate().map(move |(c, (m, s))| (c * np..(c + 1) * np, *m, *s))
    }

    /// `v[p] = f(v[p], mean[c], sd[c])` for every element `p` of channel `c`.
    pub fn map_in_place(&self, v: &mut [f64], f: impl Fn(f64, f64, f64) -> f64) {
        for (r, m, s) in self.channels() {
            for e in &mut v[r] {
                *e = f(*e, m, s);
            }
        }
    }

    /// `x = (x - mean[c]) / sd[c]`.
    pub fn normalise_in_place(&self, x: &mut [f64]) {
        self.map_in_place(x, |v, m, s| (v - m) / s);
    }

    /// `x = mean[c] + sd[c] * x`.
    pub fn denormalise_in_place(&self, x: &mut [f64]) {
        self.map_in_place(x, |v, m, s| m + s * v);
    }

    /// `dx = sd[c] * dx` (an increment from normalised to physical units).
    pub fn scale_in_place(&self, dx: &mut [f64]) {
        self.map_in_place(dx, |v, _, s| s * v);
    }

    /// `dx = dx / sd[c]` (an increment from physical to normalised units).
    pub fn unscale_in_place(&self, dx: &mut [f64]) {
        self.map_in_place(dx, |v, _, s| v / s);
    }

    /// `xn = ((x - mean[c]) / sd[c])` rounded to float32, the autoencoder's input.
    pub fn normalise_to_f32(&self, x: &[f64], xn: &mut [f32]) {
        for (r, m, s) in self.channels() {
            for p in r {
                xn[p] = ((x[p] - m) / s) as f32;
            }
        }
    }

    /// `x = mean[c] + sd[c] * xn` from a float32 normalised state (the decoder's output).
    pub fn denormalise_from_f32(&self, xn: &[f32], x: &mut [f64]) {
        for (r, m, s) in self.channels() {
            for p in r {
                x[p] = m + s * xn[p] as f64;
            }
        }
    }

    /// `dx = sd[c] * dxn` from a float32 normalised increment (the TL decoder's output).
    pub fn scale_from_f32(&self, dxn: &[f32], dx: &mut [f64]) {
        for (r, _, s) in self.channels() {
            for p in r {
                dx[p] = s * dxn[p] as f64;
            }
        }
    }

    /// `gn = (sd[c] * g)` rounded to float32: a physical-space gradient as the AD decoder's input (the adjoint of
    /// [`scale_from_f32`](ChannelScale::scale_from_f32)).
    pub fn scale_to_f32(&self, g: &[f64], gn: &mut [f32]) {
        for (r, _, s) in self.channels() {
            for p in r {
                gn[p] = (s * g[p]) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_invert_each_other_and_match_the_formulas() {
        let (mean, sd) = ([280.0, -3.0, 1.0e5], [7.0, 0.5, 900.0]);
        let s = ChannelScale::new(&mean, &sd, 4);
        assert_eq!((s.nchan(), s.npoints(), s.len()), (3, 4, 12));
        let x: Vec<f64> = (0..12).map(|i| mean[i / 4] + sd[i / 4] * (0.3 * i as f64 - 1.1)).collect();
        let mut xn = x.clone();
        s.normalise_in_place(&mut xn);
        for (i, v) in xn.iter().enumerate() {
            assert_eq!(v.to_bits(), ((x[i] - mean[i / 4]) / sd[i / 4]).to_bits());
        }
        let mut f = vec![0f32; 12];
        s.normalise_to_f32(&x, &mut f);
        assert!(f.iter().zip(&xn).all(|(a, b)| *a == *b as f32));
        let mut back = vec![0.0; 12];
        s.denormalise_from_f32(&f, &mut back);
        for (i, v) in back.iter().enumerate() {
            assert_eq!(v.to_bits(), (mean[i / 4] + sd[i / 4] * f[i] as f64).to_bits());
        }
        s.denormalise_in_place(&mut xn);
        assert!(xn.iter().zip(&x).all(|(a, b)| (a - b).abs() <= 1e-9 * b.abs()));
        let mut d = x.clone();
        s.scale_in_place(&mut d);
        s.unscale_in_place(&mut d);
        assert!(d.iter().zip(&x).all(|(a, b)| (a - b).abs() <= 1e-12 * b.abs()));
        let ranges: Vec<_> = s.channels().map(|(r, _, _)| r).collect();
        assert_eq!(ranges, [0..4, 4..8, 8..12]);
        let inc = ChannelScale::for_increments(&sd, 4);
        let (mut dx, mut g32) = (vec![0.0; 12], vec![0f32; 12]);
        inc.scale_from_f32(&f, &mut dx);
        inc.scale_to_f32(&x, &mut g32);
        for i in 0..12 {
            assert_eq!(dx[i].to_bits(), (sd[i / 4] * f[i] as f64).to_bits());
            assert_eq!(g32[i].to_bits(), ((sd[i / 4] * x[i]) as f32).to_bits());
        }
    }
}
