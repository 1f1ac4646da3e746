//! Model-space 3D-Var baseline: a static B = U_s U_s^T with U_s = P M_h S V^1/2 K.
//!
//! * K: horizontal square-root correlation per channel, an isotropic Gaussian kernel on the sphere,
//!   K = N G A^1/2 with G_pq = exp(-d_pq^2 / L^2) (d great-circle distance, L the channel's length scale),
//!   A the cell areas and N the row normalisation that makes diag(K K^T) = 1. K K^T is then (up to the grid) the
//!   Gaussian correlation exp(-d^2 / (2 L^2)), with e-folding distance sqrt(2) L, and unit variance at every point.
//! * V^1/2: symmetric square root of each upper-air variable's vertical correlation matrix (faer's self-adjoint
//!   eigen-decomposition, negative eigenvalues clipped to 0).
//! * S: grid-point background-error standard deviations (bundle `baseline_b.nc`, `sd`), times sqrt of the
//!   variance factor (manifest `[statistics] baseline_variance_factor`, option `baseline_variance_factor`).
//! * M_h: the hydrostatic balance ([`crate::bmat::hydrostatic`]): when the bundle has `t` and `z`, the z increment is
//!   computed from the t (q, ps) increments and z has no control variable and no independent variance.
//! * P: keeps the selected variables (all for 3D-Var; the `[hybrid]` variables for the static part of the hybrid B)
//!   and zeroes the others. Control channels that only feed unselected variables are dropped from the control vector.
//!
//! Because the grid has uniformly spaced longitudes, G_pq depends only on the two latitude rows and the longitude
//! difference: each (row, row) block is a symmetric circulant matrix, diagonal in Fourier space along longitude. U_s
//! applies it exactly with real FFTs (`realfft`) and a product with the nlat x nlat block of each wavenumber:
//! O(nchan nlat^2 nlon) per application. No truncation. The blocks form a symmetric matrix per wavenumber, and on a
//! grid symmetric about the equator (Gaussian grids, and regular ones with an even number of rows) also one that
//! commutes with the reflection j -> nlat-1-j:
//!
//! ```text
//! G_m = [[P, Q R], [R Q, R P R]]  (P, Q: north-north and north-south blocks, h = nlat/2 rows, R the row reversal)
//! G_m s = [u + w; R (u - w)],  u = (P + Q)/2 (s_N + R s_S),  w = (P - Q)/2 (s_N - R s_S)
//! ```
//!
//! so the product takes two symmetric h x h matrices per wavenumber (stored as lower triangles, with the inverse
//! FFT's 1/nlon folded in): half the flops of the full block and a quarter of its memory, nchan (h^2 + h) (nlon/2+1)
//! doubles (9.5 MB for T31, 41 channels, instead of 37 MB). Other grids keep the full blocks. FFT plans and all
//! buffers are allocated once, at construction; the vertical square roots and the hydrostatic balance run as
//! axpy loops over whole channels (contiguous points) instead of point by point. The variances diag(U_s U_s^T) are exact: each level has its own control field, so the level
//! covariance at a point is S V S (K K^T has unit diagonal) and the variances of the controlled channels are S^2;
//! those of a balanced z are the diagonal of M_h (S V S) M_h^T at each point.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use crate::bmat::hydrostatic::Hydrostatic;
use crate::bmat::BOperator;
use crate::bundle::grid::Layout;
use crate::bundle::{BaselineStats, Bundle};
use crate::error::{Error, Result};
use crate::model::autoencoder::Autoencoder;

const EARTH_RADIUS_KM: f64 = 6371.0;

/// The static-B square root U_s (control vector -> state increment, physical units).
pub struct StaticB {
    nchan: usize,
    nlat: usize,
    nlon: usize,
    nm: usize,
    /// The Fourier transforms (real: the kernel is even in longitude) of the blocks G_c(j, j2) per channel, with
    /// the inverse FFT's 1/nlon folded in.
    kernel: Kernel,
    /// Row normalisation N per channel and latitude row.
    norm: Vec<Vec<f64>>,
    /// sqrt of the cell area (relative) per row.
    sqrt_area: Vec<f64>,
    sd: Vec<f64>,
    /// (first channel, nlev, V^1/2 row-major) of each upper-air variable with a control variable.
    vsqrt: Vec<(usize, usize, Vec<f64>)>,
    hydro: Option<Hydrostatic>,
    /// Variable of each channel.
    chan_var: Vec<usize>,
    /// Output channels kept by P.
    keep: Vec<bool>,
    /// Control channels in use under P (a subset of `ctl`, increasing).
    active: Vec<usize>,
    /// Exact diag(U_s U_s^T) without P, and with P.
    variance_full: Vec<f64>,
    variance: Vec<f64>,
    fwd: Arc<dyn RealToComplex<f64>>,
    inv: Arc<dyn ComplexToReal<f64>>,
    row: Vec<f64>,
    /// Row spectra, row-major: spec[j * nm + m].
    spec: Vec<Complex<f64>>,
    out_spec: Vec<Complex<f64>>,
    /// Even and odd parts of the spectra and their products (hemispheric kernel), each as real and imaginary
    /// planes of h rows (so the products are plain real axpys that vectorise): [re (h nm), im (h nm)].
    even: Vec<f64>,
    odd: Vec<f64>,
    u: Vec<f64>,
    w: Vec<f64>,
    fft_scratch: Vec<Complex<f64>>,
    /// Whole-state work array.
    full: Vec<f64>,
    /// One channel's input and output of G.
    chan_in: Vec<f64>,
    chan_out: Vec<f64>,
    /// The levels of one variable (vertical square root).
    levels: Vec<f64>,
}

/// The spectral blocks of G, per channel.
enum Kernel {
    /// Any grid: full[c][(j * nlat + j2) * nm + m] = Ĝ_c(j, j2)_m / nlon.
    Full(Vec<Vec<f64>>),
    /// A grid symmetric about the equator with h = nlat/2 rows per hemisphere: even[c] and odd[c] hold the lower
    /// triangles of (P + Q)/(2 nlon) and (P - Q)/(2 nlon), element (a, b), b <= a, at [(a (a + 1) / 2 + b) * nm + m].
    Hemispheric { h: usize, even: Vec<Vec<f64>>, odd: Vec<Vec<f64>> },
}

/// Index of the lower-triangle element (a, b), b <= a.
fn tri(a: usize, b: usize) -> usize {
    a * (a + 1) / 2 + b
}

/// o[m] += k[m] s[m] over one wavenumber row.
#[inline]
fn axpy_spec(o: &mut [Complex<f64>], k: &[f64], s: &[Complex<f64>]) {
    for ((o, k), s) in o.iter_mut().zip(k).zip(s) {
        o.re += k * s.re;
        o.im += k * s.im;
    }
}

/// o[m] += k[m] s[m] (real planes).
#[inline]
fn axpy(o: &mut [f64], k: &[f64], s: &[f64]) {
    for ((o, k), s) in o.iter_mut().zip(k).zip(s) {
        *o += k * s;
    }
}

/// Symmetric square root of a small symmetric PSD matrix (row-major n x n) by faer's self-adjoint eigen-decomposition
/// (negative eigenvalues, from rounding, clipped to 0).
pub fn sym_sqrt(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let m = faer::Mat::<f64>::from_fn(n, n, |i, j| a[i * n + j]);
    let evd = m
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| Error::bundle(format!("eigen-decomposition of a vertical correlation matrix failed: {e:?}")))?;
    let (u, s) = (evd.U(), evd.S().column_vector());
    let lam: Vec<f64> = (0..n).map(|k| s[k].max(0.0).sqrt()).collect();
    let mut r = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            r[i * n + j] = (0..n).map(|k| u[(i, k)] * lam[k] * u[(j, k)]).sum();
        }
    }
    Ok(r)
}

fn great_circle_km(lat1: f64, lat2: f64, dlon: f64) -> f64 {
    let (p1, p2, dl) = (lat1.to_radians(), lat2.to_radians(), dlon.to_radians());
    let h = ((p2 - p1) / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

impl StaticB {
    /// U_s from baseline statistics, univariate for every variable (no balance), variance factor 1, all variables.
    pub fn new(layout: &Layout, stats: &BaselineStats) -> Result<StaticB> {
        Self::with_balance(layout, stats, None, 1.0)
    }

    /// The baseline of a bundle: hydrostatic z when the bundle has `t` and `z` (reference values: the normalisation
    /// means), every variance multiplied by `variance_factor`.
    pub fn for_bundle(bundle: &Bundle, variance_factor: f64) -> Result<StaticB> {
        Self::for_bundle_with_lengths(bundle, variance_factor, 1.0)
    }

    /// [`StaticB::for_bundle`] with every horizontal correlation length multiplied by `length_factor` (> 0; option
    /// `baseline_length_scale_factor`, for tuning a bundle's lengths to a host's errors).
    pub fn for_bundle_with_lengths(bundle: &Bundle, variance_factor: f64, length_factor: f64) -> Result<StaticB> {
        let stats = bundle.baseline.as_ref().ok_or_else(|| {
            Error::new(
                crate::error::Status::NotReady,
                format!("the static B needs baseline statistics, but bundle '{}' has none", bundle.name),
            )
        })?;
        let hydro = Hydrostatic::for_bundle(bundle)?;
        if length_factor == 1.0 {
            return Self::with_balance(&bundle.layout, stats, hydro, variance_factor);
        }
        if !(length_factor.is_finite() && length_factor > 0.0) {
            return Err(Error::arg(format!("baseline_length_scale_factor = {length_factor} must be finite and > 0")));
        }
        let scaled = BaselineStats {
            length_scale: stats.length_scale.iter().map(|l| l * length_factor).collect(),
            ..stats.clone()
        };
        Self::with_balance(&bundle.layout, &scaled, hydro, variance_factor)
    }

    /// U_s with an optional hydrostatic balance operator and a variance factor (> 0).
    pub fn with_balance(
        layout: &Layout,
        stats: &BaselineStats,
        hydro: Option<Hydrostatic>,
        variance_factor: f64,
    ) -> Result<StaticB> {
        Self::build(layout, stats, hydro, variance_factor, true)
    }

    /// [`StaticB::with_balance`], with the hemispheric kernel where the grid allows it and `hemispheric` is true
    /// (false: the full blocks on any grid, for the tests that compare the two forms).
    fn build(
        layout: &Layout,
        stats: &BaselineStats,
        hydro: Option<Hydrostatic>,
        variance_factor: f64,
        hemispheric: bool,
    ) -> Result<StaticB> {
        let g = &layout.grid;
        let (nlat, nlon, nchan) = (g.nlat(), g.nlon(), layout.nchan);
        let dlon = 360.0 / nlon as f64;
        let uniform = g.lon.iter().enumerate().all(|(i, l)| (l - g.lon[0] - i as f64 * dlon).abs() < 1e-6 * 360.0);
        if !g.periodic || !uniform {
            return Err(Error::arg(
                "the static B needs a global grid with uniformly spaced longitudes (the horizontal correlation is applied spectrally along longitude)",
            ));
        }
        if !(variance_factor.is_finite() && variance_factor > 0.0) {
            return Err(Error::arg(format!("baseline_variance_factor = {variance_factor} must be finite and > 0")));
        }
        let nm = nlon / 2 + 1;
        let mut planner = RealFftPlanner::<f64>::new();
        let fwd = planner.plan_fft_forward(nlon);
        let inv = planner.plan_fft_inverse(nlon);
        let scratch_len = fwd.get_scratch_len().max(inv.get_scratch_len());
        // Relative cell areas: cos(lat) times the latitude band width.
        let edges: Vec<f64> = (0..=nlat)
            .map(|j| {
                if j == 0 {
                    90.0
                } else if j == nlat {
                    -90.0
                } else {
                    0.5 * (g.lat[j - 1] + g.lat[j])
                }
            })
            .collect();
        let sqrt_area: Vec<f64> =
            (0..nlat).map(|j| (edges[j].to_radians().sin() - edges[j + 1].to_radians().sin()).abs().sqrt()).collect();
        // Squared distances of the row pairs (j, j2 <= j) at each longitude difference (the kernel is symmetric).
        let mut dist2 = vec![0.0; tri(nlat, 0) * nlon];
        for j in 0..nlat {
            for j2 in 0..=j {
                for d in 0..nlon {
                    let dd = great_circle_km(g.lat[j], g.lat[j2], d as f64 * dlon);
                    dist2[tri(j, j2) * nlon + d] = dd * dd;
                }
            }
        }
        // Latitudes mirrored about the equator (to 1e-9 degrees) and an even number of rows: the hemispheric form.
        let h = nlat / 2;
        let mirrored = hemispheric && nlat % 2 == 0 && (0..h).all(|j| (g.lat[j] + g.lat[nlat - 1 - j]).abs() < 1e-9);
        let (mut full, mut even, mut odd) = (Vec::new(), Vec::new(), Vec::new());
        let mut norm = Vec::with_capacity(nchan);
        let (mut gk, mut sp, mut scratch) =
            (vec![0.0; nlon], vec![Complex::default(); nm], vec![Complex::default(); scratch_len]);
        let inv_n = 1.0 / nlon as f64;
        let mut gh = vec![0.0; tri(nlat, 0) * nm];
        let mut sumsq = vec![0.0; nlat * nlat];
        for c in 0..nchan {
            let l2 = stats.length_scale[c].powi(2);
            for j in 0..nlat {
                for j2 in 0..=j {
                    let base = tri(j, j2) * nlon;
                    for d in 0..nlon {
                        gk[d] = (-dist2[base + d] / l2).exp();
                    }
                    let ss = gk.iter().map(|v| v * v).sum::<f64>();
                    sumsq[j * nlat + j2] = ss;
                    sumsq[j2 * nlat + j] = ss;
                    fwd.process_with_scratch(&mut gk, &mut sp, &mut scratch)
                        .map_err(|e| Error::new(crate::error::Status::Internal, format!("FFT: {e}")))?;
                    for m in 0..nm {
                        gh[tri(j, j2) * nm + m] = sp[m].re;
                    }
                }
            }
            let rowsum: Vec<f64> = (0..nlat)
                .map(|j| (0..nlat).map(|j2| sqrt_area[j2].powi(2) * sumsq[j * nlat + j2]).sum::<f64>())
                .collect();
            norm.push(rowsum.iter().map(|s| 1.0 / s.sqrt()).collect());
            // Block (j, j2) in either order.
            let block =
                |j: usize, j2: usize, m: usize| if j2 <= j { gh[tri(j, j2) * nm + m] } else { gh[tri(j2, j) * nm + m] };
            if mirrored {
                let (mut e, mut o) = (vec![0.0; tri(h, 0) * nm], vec![0.0; tri(h, 0) * nm]);
                for a in 0..h {
                    for b in 0..=a {
                        for m in 0..nm {
                            let (p, q) = (block(a, b, m), block(a, nlat - 1 - b, m));
                            e[tri(a, b) * nm + m] = 0.5 * (p + q) * inv_n;
                            o[tri(a, b) * nm + m] = 0.5 * (p - q) * inv_n;
                        }
                    }
                }
                even.push(e);
                odd.push(o);
            } else {
                full.push(
                    (0..nlat * nlat * nm).map(|i| block(i / (nlat * nm), (i / nm) % nlat, i % nm) * inv_n).collect(),
                );
            }
        }
        let kernel = if mirrored { Kernel::Hemispheric { h, even, odd } } else { Kernel::Full(full) };
        let z_chans = hydro.as_ref().map(|h| h.z_channels());
        let is_z = |c: usize| z_chans.as_ref().is_some_and(|r| r.contains(&c));
        let mut vsqrt = Vec::new();
        for (v, var) in layout.variables.iter().enumerate() {
            if let Some(cv) = &stats.vertical_correlation[v] {
                if !is_z(var.first_channel) {
                    vsqrt.push((var.first_channel, var.nlev, sym_sqrt(cv, var.nlev)?));
                }
            }
        }
        let chan_var: Vec<usize> = (0..nchan).map(|c| layout.channel_owner(c).0).collect();
        let ctl = Self::active_channels(layout, hydro.as_ref(), &vec![true; layout.variables.len()]);
        let np = nlat * nlon;
        let f = variance_factor.sqrt();
        let mut b = StaticB {
            nchan,
            nlat,
            nlon,
            nm,
            kernel,
            norm,
            sqrt_area,
            sd: stats.sd.iter().map(|s| s * f).collect(),
            vsqrt,
            hydro,
            chan_var,
            active: ctl,
            keep: vec![true; nchan],
            variance_full: vec![],
            variance: vec![],
            fwd,
            inv,
            row: vec![0.0; nlon],
            spec: vec![Complex::default(); nlat * nm],
            out_spec: vec![Complex::default(); nlat * nm],
            even: vec![0.0; 2 * h * nm],
            odd: vec![0.0; 2 * h * nm],
            u: vec![0.0; 2 * h * nm],
            w: vec![0.0; 2 * h * nm],
            fft_scratch: vec![Complex::default(); scratch_len],
            full: vec![0.0; nchan * np],
            chan_in: vec![0.0; np],
            chan_out: vec![0.0; np],
            levels: vec![0.0; layout.vertical.levels.len().max(1) * np],
        };
        b.variance_full = b.exact_variance();
        b.variance = b.variance_full.clone();
        Ok(b)
    }

    /// The control channels of a static B on `layout` restricted to the variables with `keep_var[v]`: those of the
    /// kept variables, and the sources of a kept balanced z (z itself has none).
    pub fn active_channels(layout: &Layout, hydro: Option<&Hydrostatic>, keep_var: &[bool]) -> Vec<usize> {
        let var_of = |c: usize| layout.channel_owner(c).0;
        let z = hydro.map(|h| h.z_channels());
        let z_kept = z.as_ref().is_some_and(|z| keep_var[var_of(z.start)]);
        (0..layout.nchan)
            .filter(|c| !z.as_ref().is_some_and(|z| z.contains(c)))
            .filter(|&c| keep_var[var_of(c)] || (z_kept && hydro.is_some_and(|h| h.is_source(c))))
            .collect()
    }

    /// Restricts the operator to the variables with `keep[v]` (the P of the hybrid B): other variables get no
    /// increment, and control channels feeding only them leave the control vector ([`StaticB::active_channels`]).
    pub fn set_selection(&mut self, layout: &Layout, keep_var: &[bool]) {
        self.keep = self.chan_var.iter().map(|&v| keep_var[v]).collect();
        self.active = Self::active_channels(layout, self.hydro.as_ref(), keep_var);
        let np = self.nlat * self.nlon;
        self.variance =
            self.variance_full.iter().enumerate().map(|(i, v)| if self.keep[i / np] { *v } else { 0.0 }).collect();
    }

    /// The hydrostatic balance operator in use, if any.
    pub fn hydrostatic(&self) -> Option<&Hydrostatic> {
        self.hydro.as_ref()
    }

    /// diag(U_s U_s^T) without P, exactly: S^2 for the controlled channels (their level covariance at a point is
    /// S V S, with V = V^1/2 V^1/2), and the diagonal of M_h (S V S) M_h^T for a balanced z.
    fn exact_variance(&self) -> Vec<f64> {
        let np = self.nlat * self.nlon;
        let mut var = vec![0.0; self.nchan * np];
        for &c in &self.active {
            for p in 0..np {
                var[c * np + p] = self.sd[c * np + p].powi(2);
            }
        }
        if let Some(h) = &self.hydro {
            let (t0, q0, ps) = h.sources();
            let n = h.z_channels().len();
            // V = V^1/2 V^1/2 of a source variable (identity if it has no vertical correlation).
            let v_of = |c0: usize| -> Vec<f64> {
                match self.vsqrt.iter().find(|(c, _, _)| *c == c0) {
                    Some((_, _, vs)) => {
                        (0..n * n).map(|k| (0..n).map(|l| vs[(k / n) * n + l] * vs[l * n + k % n]).sum()).collect()
                    }
                    None => (0..n * n).map(|k| if k / n == k % n { 1.0 } else { 0.0 }).collect(),
                }
            };
            let (vt, vq) = (v_of(t0), q0.map(v_of));
            let cov = |c0: usize, v: &[f64], p: usize| -> Vec<f64> {
                (0..n * n).map(|k| self.sd[(c0 + k / n) * np + p] * v[k] * self.sd[(c0 + k % n) * np + p]).collect()
            };
            for p in 0..np {
                let ct = cov(t0, &vt, p);
                let cq = q0.zip(vq.as_ref()).map(|(q, v)| cov(q, v, p));
                let vps = ps.map_or(0.0, |c| var[c * np + p]);
                for (k, zc) in h.z_channels().enumerate() {
                    var[zc * np + p] = h.z_variance(k, &ct, cq.as_deref(), vps);
                }
            }
        }
        var
    }

    /// chan_out = G_c chan_in (one channel, nlat x nlon, symmetric circulant blocks), by real FFTs along longitude.
    fn apply_g(&mut self, c: usize) {
        let (nlat, nlon, nm) = (self.nlat, self.nlon, self.nm);
        for j in 0..nlat {
            self.row.copy_from_slice(&self.chan_in[j * nlon..(j + 1) * nlon]);
            let sp = &mut self.spec[j * nm..(j + 1) * nm];
            // Lengths are fixed at construction, so the transform cannot fail.
            self.fwd.process_with_scratch(&mut self.row, sp, &mut self.fft_scratch).expect("FFT lengths");
        }
        match &self.kernel {
            Kernel::Full(full) => {
                let gh = &full[c];
                for j in 0..nlat {
                    let o = &mut self.out_spec[j * nm..(j + 1) * nm];
                    o.iter_mut().for_each(|z| *z = Complex::default());
                    for j2 in 0..nlat {
                        axpy_spec(
                            o,
                            &gh[(j * nlat + j2) * nm..(j * nlat + j2 + 1) * nm],
                            &self.spec[j2 * nm..(j2 + 1) * nm],
                        );
                    }
                }
            }
            Kernel::Hemispheric { h, even, odd } => {
                let (h, ke, ko) = (*h, &even[c], &odd[c]);
                let hn = h * nm;
                for a in 0..h {
                    let (n, s) = (&self.spec[a * nm..(a + 1) * nm], &self.spec[(nlat - 1 - a) * nm..(nlat - a) * nm]);
                    for m in 0..nm {
                        let (e, o) = (n[m] + s[m], n[m] - s[m]);
                        (self.even[a * nm + m], self.even[hn + a * nm + m]) = (e.re, e.im);
                        (self.odd[a * nm + m], self.odd[hn + a * nm + m]) = (o.re, o.im);
                    }
                }
                self.u.iter_mut().chain(self.w.iter_mut()).for_each(|z| *z = 0.0);
                // Real and imaginary planes alike: u += E e, w += O o with E, O symmetric (lower triangles).
                for plane in [0, hn] {
                    let (u, w) = (&mut self.u[plane..plane + hn], &mut self.w[plane..plane + hn]);
                    let (e, o) = (&self.even[plane..plane + hn], &self.odd[plane..plane + hn]);
                    for a in 0..h {
                        for b in 0..=a {
                            let t = tri(a, b) * nm;
                            let (kea, koa) = (&ke[t..t + nm], &ko[t..t + nm]);
                            axpy(&mut u[a * nm..(a + 1) * nm], kea, &e[b * nm..(b + 1) * nm]);
                            axpy(&mut w[a * nm..(a + 1) * nm], koa, &o[b * nm..(b + 1) * nm]);
                            if b < a {
                                axpy(&mut u[b * nm..(b + 1) * nm], kea, &e[a * nm..(a + 1) * nm]);
                                axpy(&mut w[b * nm..(b + 1) * nm], koa, &o[a * nm..(a + 1) * nm]);
                            }
                        }
                    }
                }
                for a in 0..h {
                    for m in 0..nm {
                        let i = a * nm + m;
                        let (u, w) = (Complex::new(self.u[i], self.u[hn + i]), Complex::new(self.w[i], self.w[hn + i]));
                        self.out_spec[i] = u + w;
                        self.out_spec[(nlat - 1 - a) * nm + m] = u - w;
                    }
                }
            }
        }
        for j in 0..nlat {
            let o = &mut self.out_spec[j * nm..(j + 1) * nm];
            // The spectrum of a real sequence has real first (and, for even nlon, last) coefficients.
            o[0].im = 0.0;
            if nlon % 2 == 0 {
                o[nm - 1].im = 0.0;
            }
            self.inv
                .process_with_scratch(o, &mut self.chan_out[j * nlon..(j + 1) * nlon], &mut self.fft_scratch)
                .expect("FFT lengths");
        }
    }

    /// x = V^1/2 x for every variable with a vertical correlation, over all points at once: level l of the result is
    /// sum_k V^1/2[l, k] x_k, accumulated in k order (axpy over the contiguous points of each level).
    fn vertical(&mut self, x: &mut [f64]) {
        let np = self.nlat * self.nlon;
        for (c0, nlev, vs) in &self.vsqrt {
            let (c0, n) = (*c0, *nlev);
            let col = &mut self.levels[..n * np];
            col.copy_from_slice(&x[c0 * np..(c0 + n) * np]);
            for l in 0..n {
                let out = &mut x[(c0 + l) * np..(c0 + l + 1) * np];
                let v0 = vs[l * n];
                out.iter_mut().zip(&col[..np]).for_each(|(o, c)| *o = v0 * c);
                for k in 1..n {
                    let v = vs[l * n + k];
                    out.iter_mut().zip(&col[k * np..(k + 1) * np]).for_each(|(o, c)| *o += v * c);
                }
            }
        }
    }

    /// Control vector length: one value per grid point of each control channel in use.
    pub fn size(&self) -> usize {
        self.active.len() * self.nlat * self.nlon
    }

    /// Model state length.
    pub fn state_len(&self) -> usize {
        self.nchan * self.nlat * self.nlon
    }

    /// Exact diag(U_s U_s^T) (with P), state layout.
    pub fn variance(&self) -> &[f64] {
        &self.variance
    }

    /// x = U_s v.
    pub fn sqrt_apply(&mut self, v: &[f64], x: &mut [f64]) {
        let np = self.nlat * self.nlon;
        let nlon = self.nlon;
        x.iter_mut().for_each(|e| *e = 0.0);
        for a in 0..self.active.len() {
            let c = self.active[a];
            for (j, row) in self.chan_in.chunks_exact_mut(nlon).enumerate() {
                let sa = self.sqrt_area[j];
                row.iter_mut().zip(&v[a * np + j * nlon..a * np + (j + 1) * nlon]).for_each(|(r, v)| *r = v * sa);
            }
            self.apply_g(c);
            for (j, row) in x[c * np..(c + 1) * np].chunks_exact_mut(nlon).enumerate() {
                let nr = self.norm[c][j];
                row.iter_mut().zip(&self.chan_out[j * nlon..(j + 1) * nlon]).for_each(|(x, o)| *x = o * nr);
            }
        }
        self.vertical(x);
        for (xi, s) in x.iter_mut().zip(&self.sd) {
            *xi *= s;
        }
        if let Some(h) = &self.hydro {
            h.apply(x);
        }
        for (c, keep) in self.keep.iter().enumerate() {
            if !keep {
                x[c * np..(c + 1) * np].iter_mut().for_each(|e| *e = 0.0);
            }
        }
    }

    /// v = U_s^T x.
    pub fn sqrt_adjoint(&mut self, x: &[f64], v: &mut [f64]) {
        let np = self.nlat * self.nlon;
        let nlon = self.nlon;
        let mut y = std::mem::take(&mut self.full);
        for (c, (yc, xc)) in y.chunks_exact_mut(np).zip(x.chunks_exact(np)).enumerate() {
            if self.keep[c] {
                yc.copy_from_slice(xc);
            } else {
                yc.iter_mut().for_each(|e| *e = 0.0);
            }
        }
        if let Some(h) = &self.hydro {
            h.adjoint(&mut y);
        }
        for (yi, s) in y.iter_mut().zip(&self.sd) {
            *yi *= s;
        }
        self.vertical(&mut y);
        for a in 0..self.active.len() {
            let c = self.active[a];
            for (j, row) in self.chan_in.chunks_exact_mut(nlon).enumerate() {
                let nr = self.norm[c][j];
                row.iter_mut().zip(&y[c * np + j * nlon..c * np + (j + 1) * nlon]).for_each(|(r, y)| *r = y * nr);
            }
            self.apply_g(c);
            for (j, row) in v[a * np..(a + 1) * np].chunks_exact_mut(nlon).enumerate() {
                let sa = self.sqrt_area[j];
                row.iter_mut().zip(&self.chan_out[j * nlon..(j + 1) * nlon]).for_each(|(v, o)| *v = o * sa);
            }
        }
        self.full = y;
    }
}

impl BOperator for StaticB {
    fn control_size(&self) -> usize {
        self.size()
    }
    fn state_len(&self) -> usize {
        StaticB::state_len(self)
    }
    fn sqrt(&mut self, _ae: &mut Autoencoder, v: &[f64], x: &mut [f64]) -> Result<()> {
        crate::bmat::check_len("control vector v", v.len(), self.size())?;
        crate::bmat::check_len("state increment x", x.len(), StaticB::state_len(self))?;
        self.sqrt_apply(v, x);
        Ok(())
    }
    fn sqrt_ad(&mut self, _ae: &mut Autoencoder, x: &[f64], v: &mut [f64]) -> Result<()> {
        crate::bmat::check_len("control vector v", v.len(), self.size())?;
        crate::bmat::check_len("state x", x.len(), StaticB::state_len(self))?;
        self.sqrt_adjoint(x, v);
        Ok(())
    }
    fn variance(&mut self, _ae: &mut Autoencoder) -> Result<&[f64]> {
        Ok(&self.variance)
    }
    fn variance_method(&self) -> String {
        "static B: exact".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::grid::{Grid, GridKind, Vertical, VerticalKind};
    use crate::numeric::Rng;

    /// A small global grid (`lat` north to south, 32 longitudes) with t on 3 levels and ps, varied statistics.
    fn case(lat: Vec<f64>) -> (Layout, BaselineStats) {
        let lon: Vec<f64> = (0..32).map(|i| 11.25 * i as f64).collect();
        let grid = Grid::new(GridKind::Regular, lat, lon).unwrap();
        let vert = Vertical::new(VerticalKind::Sigma, vec![0.2, 0.5, 0.9]).unwrap();
        let lay = Layout::new(grid, vert, vec![("t".into(), "K".into(), 3), ("ps".into(), "Pa".into(), 0)]).unwrap();
        let mut rng = Rng::new(11);
        let stats = BaselineStats {
            sd: (0..lay.state_len()).map(|_| 0.5 + rng.uniform()).collect(),
            length_scale: vec![900.0, 600.0, 1500.0, 400.0],
            vertical_correlation: vec![Some(vec![1.0, 0.6, 0.2, 0.6, 1.0, 0.5, 0.2, 0.5, 1.0]), None],
        };
        (lay, stats)
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn max_rel(a: &[f64], b: &[f64]) -> f64 {
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// The hemispheric kernel gives the full blocks' U_s and U_s^T to round-off, on a grid symmetric about the
    /// equator (16 rows, none on the equator).
    #[test]
    fn hemispheric_and_full_kernels_agree() {
        let (lay, stats) = case((0..16).map(|j| 84.375 - 11.25 * j as f64).collect());
        let mut hemi = StaticB::build(&lay, &stats, None, 1.0, true).unwrap();
        let mut full = StaticB::build(&lay, &stats, None, 1.0, false).unwrap();
        assert!(matches!(hemi.kernel, Kernel::Hemispheric { h: 8, .. }) && matches!(full.kernel, Kernel::Full(_)));
        let mut rng = Rng::new(5);
        let v = rng.normals(hemi.size());
        let (mut xh, mut xf) = (vec![0.0; lay.state_len()], vec![0.0; lay.state_len()]);
        hemi.sqrt_apply(&v, &mut xh);
        full.sqrt_apply(&v, &mut xf);
        assert!(max_rel(&xh, &xf) < 1e-13, "U_s: {:e}", max_rel(&xh, &xf));
        let x = rng.normals(lay.state_len());
        let (mut wh, mut wf) = (vec![0.0; hemi.size()], vec![0.0; full.size()]);
        hemi.sqrt_adjoint(&x, &mut wh);
        full.sqrt_adjoint(&x, &mut wf);
        assert!(max_rel(&wh, &wf) < 1e-13, "U_s^T: {:e}", max_rel(&wh, &wf));
        // Same normalisation: unit correlation variance, so diag(U U^T) = sd^2 in both.
        assert_eq!(hemi.variance(), full.variance());
    }

    /// <U v, x> = <v, U^T x> to round-off for both kernel forms, on a mirrored grid, on one shifted off the
    /// equator's symmetry and on one with an odd number of rows (both of which take the full blocks).
    #[test]
    fn adjoint_is_exact_for_every_kernel_form() {
        let grids: [(Vec<f64>, bool); 3] = [
            ((0..16).map(|j| 84.375 - 11.25 * j as f64).collect(), true),
            ((0..16).map(|j| 83.0 - 11.25 * j as f64).collect(), false),
            ((0..15).map(|j| 78.75 - 11.25 * j as f64).collect(), false),
        ];
        for (lat, mirrored) in grids {
            let (lay, stats) = case(lat);
            for hemispheric in [true, false] {
                let mut b = StaticB::build(&lay, &stats, None, 1.0, hemispheric).unwrap();
                assert_eq!(matches!(b.kernel, Kernel::Hemispheric { .. }), mirrored && hemispheric);
                let mut rng = Rng::new(9);
                let (v, x) = (rng.normals(b.size()), rng.normals(lay.state_len()));
                let (mut uv, mut utx) = (vec![0.0; lay.state_len()], vec![0.0; b.size()]);
                b.sqrt_apply(&v, &mut uv);
                b.sqrt_adjoint(&x, &mut utx);
                let (l, r) = (dot(&uv, &x), dot(&v, &utx));
                assert!((l - r).abs() <= 1e-13 * l.abs().max(r.abs()), "nlat {}: {l} vs {r}", lay.grid.nlat());
            }
        }
    }
}
