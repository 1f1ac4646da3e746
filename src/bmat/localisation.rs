//! Horizontal covariance localisation for the ensemble B parts ([`crate::bmat::ensemble`]): a Gaspari-Cohn
//! correlation L of great-circle distance and its symmetric square root L^1/2, with L = L^1/2 (L^1/2)^T.
//!
//! # Convention
//!
//! Gaspari and Cohn (1999, eq. 4.10), the compactly supported fifth-order piecewise rational function, with
//! half-width c (km; the option name suggested for hosts is `ensemble_localisation_km`) and r = d / c, d the
//! great-circle distance on a sphere of radius [`EARTH_RADIUS_KM`]:
//!
//! ```text
//! 0 <= r <= 1:  GC = -r^5/4 + r^4/2 + 5 r^3/8 - 5 r^2/3 + 1
//! 1 <  r <= 2:  GC =  r^5/12 - r^4/2 + 5 r^3/8 + 5 r^2/3 - 5 r + 4 - 2 / (3 r)
//! r > 2:        GC = 0
//! ```
//!
//! So GC = 1 exactly at d = 0, 5/24 = 0.2083 at d = c, 0 at d = 2c and beyond (support 2c), decreasing
//! monotonically in between, twice continuously differentiable. Near the origin it matches a Gaussian
//! exp(-d^2 / (2 l^2)) with l = c sqrt(3/10) (GC's own rule of thumb c = sqrt(10/3) l).
//!
//! # Square root
//!
//! L^1/2 is the symmetric square root U diag(sqrt(max(lambda, 0))) U^T of the eigen-decomposition L = U diag(lambda)
//! U^T (faer's self-adjoint solver). GC is positive definite as a function of distance in R^3; with great-circle
//! (rather than chordal) distance on the sphere the matrix can have small negative eigenvalues from the metric and
//! from round-off. They are clipped to zero: L^1/2 (L^1/2)^T is then the nearest positive semi-definite matrix to L
//! and differs from it by at most the largest clipped |lambda| in the 2-norm ([`Localisation::eigen_range`] reports
//! the smallest eigenvalue and how many were clipped, so a host can see it). On every grid tested (the 12 x 24 latent
//! grid with c = 1,500-4,000 km, 8 x 16, the 48 x 96 model grid with c = 800-8,000 km) none was negative (smallest
//! 2.6e-5 on 12 x 24 with c = 4,000 km, 2.5e-8 on 48 x 96) and L^1/2 (L^1/2)^T reproduced GC to 2e-14. The diagonal
//! of the implied localisation, diag(L^1/2 (L^1/2)^T), is kept ([`Localisation::diag`]): it is 1 up to clipping.
//!
//! Two ways to hold L^1/2, both exact for the same GC matrix:
//!
//! * **dense** ([`Localisation::dense`]): any set of points, an n x n matrix (O(n^3) once, O(n^2) per
//!   application). Used for the latent grid (12 x 24 = 288 points on the reference bundle: 0.6 MB).
//! * **zonal** ([`Localisation::zonal`]): a global latitude-longitude grid with uniformly spaced longitudes (the model
//!   grid, 48 x 96 = 4,608 points, where a dense 4,608^2 eigen-decomposition would cost 170 MB and minutes). GC of
//!   great-circle distance depends only on the two latitudes and |lon difference|, so each (row, row) block of L is a
//!   symmetric circulant matrix and the real DFT along longitude block-diagonalises L: L = F^-1 diag_m(Lhat_m) F with
//!   Lhat_m (nlat x nlat, real symmetric) the DFT of the kernel for zonal wavenumber m. Then
//!   L^1/2 = F^-1 diag_m(Lhat_m^1/2) F, with the same eigenvalue clipping per wavenumber (the eigenvalues of L are
//!   those of the Lhat_m). No approximation: the implied localisation is exactly the GC of the dense form. Cost: one
//!   real FFT per latitude row and an nlat x nlat product per wavenumber per application (about 0.5 Mflop for
//!   48 x 96), memory (nlon/2 + 1) nlat^2 doubles (0.9 MB for 48 x 96), construction well under a second.
//!
//! L^1/2 is symmetric in both forms, so its adjoint is itself; [`Localisation::sqrt_adjoint`] applies the transpose
//! of the dense matrix, or the same spectral product (identical up to round-off, ~1e-16 relative).
//!
//! Points are ordered as given ([`Localisation::dense`]) or row-major north to south, west to east
//! ([`Localisation::on_grid`], [`Localisation::zonal`]): the horizontal order of the state layout of
//! [`crate::bundle::grid`] and of a `[channels, lat, lon]` latent.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use crate::error::{Error, Result};

/// Earth radius of the great-circle distances (km), as in the static B.
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// Largest point count for which [`Localisation::on_grid`] uses the dense form (2,048 points: 32 MB, about a second).
pub const MAX_DENSE_POINTS: usize = 2048;

/// Gaspari-Cohn correlation at r = d / c (c the half-width; support r < 2). 1 at r = 0, 5/24 at r = 1, 0 for r >= 2.
/// Negative r is treated as |r|.
pub fn gaspari_cohn(r: f64) -> f64 {
    let r = r.abs();
    if r <= 1.0 {
        let r2 = r * r;
        ((((-0.25 * r + 0.5) * r + 0.625) * r - 5.0 / 3.0) * r2) + 1.0
    } else if r < 2.0 {
        ((((r / 12.0 - 0.5) * r + 0.625) * r + 5.0 / 3.0) * r - 5.0) * r + 4.0 - 2.0 / (3.0 * r)
    } else {
        0.0
    }
}

/// Gaspari-Cohn correlation of a distance `d_km` for the half-width `half_width_km` (zero from 2 x half-width on).
pub fn gc_correlation(d_km: f64, half_width_km: f64) -> f64 {
    gaspari_cohn(d_km / half_width_km)
}

/// Great-circle distance (km, haversine) between (lat1, lon1) and (lat2, lon2) in degrees.
pub fn great_circle_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2, dl) = (lat1.to_radians(), lat2.to_radians(), (lon2 - lon1).to_radians());
    let h = ((p2 - p1) / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// The spectral (zonal-FFT) square root of a global grid with uniform longitudes.
#[derive(Clone)]
struct Zonal {
    nlat: usize,
    nlon: usize,
    nm: usize,
    /// s[(m * nlat + j) * nlat + j2]: Lhat_m^1/2 (symmetric).
    s: Vec<f64>,
    fwd: Arc<dyn RealToComplex<f64>>,
    inv: Arc<dyn ComplexToReal<f64>>,
    row: Vec<f64>,
    /// Spectra of the rows, wavenumber-major: spec[m * nlat + j].
    spec: Vec<Complex<f64>>,
    out: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
}

impl Zonal {
    fn apply(&mut self, a: &[f64], out: &mut [f64]) {
        let (nlat, nlon, nm) = (self.nlat, self.nlon, self.nm);
        for j in 0..nlat {
            self.row.copy_from_slice(&a[j * nlon..(j + 1) * nlon]);
            // Lengths are fixed at construction, so the transform cannot fail.
            self.fwd.process_with_scratch(&mut self.row, &mut self.out, &mut self.scratch).expect("FFT lengths");
            for m in 0..nm {
                self.spec[m * nlat + j] = self.out[m];
            }
        }
        let inv = 1.0 / nlon as f64;
        for j in 0..nlat {
            for m in 0..nm {
                let srow = &self.s[(m * nlat + j) * nlat..(m * nlat + j + 1) * nlat];
                let sp = &self.spec[m * nlat..(m + 1) * nlat];
                let mut acc = Complex::default();
                for (w, z) in srow.iter().zip(sp) {
                    acc += *z * *w;
                }
                self.out[m] = acc;
            }
            // The spectrum of a real sequence has real first (and, for even nlon, last) coefficients.
            self.out[0].im = 0.0;
            if nlon.is_multiple_of(2) {
                self.out[nm - 1].im = 0.0;
            }
            self.inv.process_with_scratch(&mut self.out, &mut self.row, &mut self.scratch).expect("FFT lengths");
            for (o, r) in out[j * nlon..(j + 1) * nlon].iter_mut().zip(&self.row) {
                *o = r * inv;
            }
        }
    }
}

#[derive(Clone)]
enum SqrtForm {
    /// Row-major n x n, exactly symmetric.
    Dense(Vec<f64>),
    Zonal(Box<Zonal>),
}

/// A Gaspari-Cohn localisation on a set of points and its symmetric square root; see the module documentation.
#[derive(Clone)]
pub struct Localisation {
    half_width_km: f64,
    lat: Vec<f64>,
    lon: Vec<f64>,
    form: SqrtForm,
    diag: Vec<f64>,
    min_eig: f64,
    max_eig: f64,
    n_clipped: usize,
}

impl std::fmt::Debug for Localisation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn check_half_width(c: f64) -> Result<()> {
    if !(c.is_finite() && c > 0.0) {
        return Err(Error::arg(format!("ensemble localisation half-width {c} km must be finite and > 0")));
    }
    Ok(())
}

fn check_coords(lat: &[f64], lon: &[f64]) -> Result<()> {
    if let Some((i, v)) = lat.iter().enumerate().find(|(_, v)| !(v.is_finite() && v.abs() <= 90.0)) {
        return Err(Error::arg(format!("localisation latitude {i} = {v} is outside [-90, 90]")));
    }
    if let Some((i, v)) = lon.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::arg(format!("localisation longitude {i} = {v} is not finite")));
    }
    Ok(())
}

/// Symmetric square root of a symmetric row-major n x n matrix with negative eigenvalues clipped; returns it with the
/// smallest and largest eigenvalue and the number clipped.
fn sym_sqrt_clipped(a: &[f64], n: usize, what: &str) -> Result<(Vec<f64>, f64, f64, usize)> {
    let m = faer::Mat::<f64>::from_fn(n, n, |i, j| a[i * n + j]);
    let evd = m.self_adjoint_eigen(faer::Side::Lower).map_err(|e| {
        Error::new(crate::error::Status::Internal, format!("eigen-decomposition of the {what} failed: {e:?}"))
    })?;
    let (u, s) = (evd.U(), evd.S().column_vector());
    let lam: Vec<f64> = (0..n).map(|k| s[k]).collect();
    let (lo, hi) = lam.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    let clipped = lam.iter().filter(|v| **v < 0.0).count();
    let root: Vec<f64> = lam.iter().map(|v| v.max(0.0).sqrt()).collect();
    let ut: Vec<f64> = (0..n * n).map(|q| u[(q / n, q % n)]).collect(); // row i: u[(i, k)]
    let mut r = vec![0.0; n * n];
    for i in 0..n {
        let ui = &ut[i * n..(i + 1) * n];
        for j in i..n {
            let uj = &ut[j * n..(j + 1) * n];
            let v: f64 = (0..n).map(|k| ui[k] * root[k] * uj[k]).sum();
            r[i * n + j] = v;
            r[j * n + i] = v;
        }
    }
    Ok((r, lo, hi, clipped))
}

/// Whether `lon` is a global set of uniformly spaced longitudes (the zonal form's requirement).
fn uniform_global(lon: &[f64]) -> bool {
    let n = lon.len();
    let dlon = 360.0 / n as f64;
    n >= 2 && lon.iter().enumerate().all(|(i, l)| (l - lon[0] - i as f64 * dlon).abs() < 1e-6 * 360.0)
}

impl Localisation {
    /// The dense form for points (`lat[i]`, `lon[i]`) in degrees, half-width `half_width_km`.
    pub fn dense(lat: &[f64], lon: &[f64], half_width_km: f64) -> Result<Localisation> {
        check_half_width(half_width_km)?;
        if lat.len() != lon.len() || lat.is_empty() {
            return Err(Error::arg(format!(
                "localisation points: {} latitudes and {} longitudes (need the same number, at least 1)",
                lat.len(),
                lon.len()
            )));
        }
        check_coords(lat, lon)?;
        let n = lat.len();
        let mut l = vec![0.0; n * n];
        for i in 0..n {
            l[i * n + i] = 1.0;
            for j in i + 1..n {
                let v = gc_correlation(great_circle_km(lat[i], lon[i], lat[j], lon[j]), half_width_km);
                l[i * n + j] = v;
                l[j * n + i] = v;
            }
        }
        let (s, min_eig, max_eig, n_clipped) = sym_sqrt_clipped(&l, n, "localisation matrix")?;
        let diag = (0..n).map(|i| s[i * n..(i + 1) * n].iter().map(|v| v * v).sum()).collect();
        Ok(Localisation {
            half_width_km,
            lat: lat.to_vec(),
            lon: lon.to_vec(),
            form: SqrtForm::Dense(s),
            diag,
            min_eig,
            max_eig,
            n_clipped,
        })
    }

    /// The zonal-FFT form on a global grid with latitude rows `lat_rows` (degrees, any order; the state's is north
    /// to south) and `nlon` uniformly spaced longitudes lon0 + i 360 / nlon. Points row-major.
    pub fn zonal(lat_rows: &[f64], nlon: usize, lon0: f64, half_width_km: f64) -> Result<Localisation> {
        check_half_width(half_width_km)?;
        if lat_rows.is_empty() || nlon < 2 {
            return Err(Error::arg(format!(
                "zonal localisation needs at least 1 latitude and 2 longitudes (got {} x {nlon})",
                lat_rows.len()
            )));
        }
        check_coords(lat_rows, &[lon0])?;
        let (nlat, nm) = (lat_rows.len(), nlon / 2 + 1);
        let dlon = 360.0 / nlon as f64;
        let mut planner = RealFftPlanner::<f64>::new();
        let fwd = planner.plan_fft_forward(nlon);
        let inv = planner.plan_fft_inverse(nlon);
        let scratch_len = fwd.get_scratch_len().max(inv.get_scratch_len());
        let (mut row, mut sp, mut scratch) =
            (vec![0.0; nlon], vec![Complex::default(); nm], vec![Complex::default(); scratch_len]);
        // lhat[m][j][j2] = sum_i GC(d(lat_j, lat_j2, i dlon)) e^{-2 pi i m i / nlon} (real: the kernel is even in i).
        let mut lhat = vec![0.0; nm * nlat * nlat];
        for j in 0..nlat {
            for j2 in j..nlat {
                for (i, g) in row.iter_mut().enumerate() {
                    let di = i.min(nlon - i) as f64 * dlon; // exactly even in i
                    *g = gc_correlation(great_circle_km(lat_rows[j], 0.0, lat_rows[j2], di), half_width_km);
                }
                fwd.process_with_scratch(&mut row, &mut sp, &mut scratch)
                    .map_err(|e| Error::new(crate::error::Status::Internal, format!("FFT: {e}")))?;
                for m in 0..nm {
                    lhat[(m * nlat + j) * nlat + j2] = sp[m].re;
                    lhat[(m * nlat + j2) * nlat + j] = sp[m].re;
                }
            }
        }
        let mut s = vec![0.0; nm * nlat * nlat];
        let (mut min_eig, mut max_eig, mut n_clipped) = (f64::INFINITY, f64::NEG_INFINITY, 0);
        for m in 0..nm {
            let blk = &lhat[m * nlat * nlat..(m + 1) * nlat * nlat];
            let (r, lo, hi, nc) = sym_sqrt_clipped(blk, nlat, "localisation spectrum")?;
            s[m * nlat * nlat..(m + 1) * nlat * nlat].copy_from_slice(&r);
            min_eig = min_eig.min(lo);
            max_eig = max_eig.max(hi);
            // Wavenumbers other than 0 and nlon/2 stand for two (cos and sin) eigenvectors of L each.
            let mult = if m == 0 || (nlon.is_multiple_of(2) && m == nm - 1) { 1 } else { 2 };
            n_clipped += mult * nc;
        }
        let mut z =
            Zonal { nlat, nlon, nm, s, fwd, inv, row, spec: vec![Complex::default(); nm * nlat], out: sp, scratch };
        // diag(L^1/2 L^1/2^T) is constant along a row: |L^1/2 e_p|^2 for one point p per row.
        let np = nlat * nlon;
        let (mut e, mut col, mut diag) = (vec![0.0; np], vec![0.0; np], vec![0.0; np]);
        for j in 0..nlat {
            e[j * nlon] = 1.0;
            z.apply(&e, &mut col);
            e[j * nlon] = 0.0;
            let v: f64 = col.iter().map(|c| c * c).sum();
            diag[j * nlon..(j + 1) * nlon].iter_mut().for_each(|d| *d = v);
        }
        let mut lat = Vec::with_capacity(np);
        let mut lon = Vec::with_capacity(np);
        for &phi in lat_rows {
            for i in 0..nlon {
                lat.push(phi);
                lon.push(lon0 + i as f64 * dlon);
            }
        }
        Ok(Localisation {
            half_width_km,
            lat,
            lon,
            form: SqrtForm::Zonal(Box::new(z)),
            diag,
            min_eig,
            max_eig,
            n_clipped,
        })
    }

    /// The localisation of a latitude-longitude grid (rows `lat_rows`, columns `lon_cols`, points row-major): dense
    /// up to [`MAX_DENSE_POINTS`] points, else zonal (which needs global, uniformly spaced longitudes; an error
    /// otherwise). Both forms give the same L.
    pub fn on_grid(lat_rows: &[f64], lon_cols: &[f64], half_width_km: f64) -> Result<Localisation> {
        let np = lat_rows.len() * lon_cols.len();
        if np <= MAX_DENSE_POINTS {
            let lat: Vec<f64> = lat_rows.iter().flat_map(|&p| std::iter::repeat_n(p, lon_cols.len())).collect();
            let lon: Vec<f64> = lat_rows.iter().flat_map(|_| lon_cols.iter().copied()).collect();
            return Self::dense(&lat, &lon, half_width_km);
        }
        if !uniform_global(lon_cols) {
            return Err(Error::arg(format!(
                "ensemble localisation on a {} x {} grid: more than {MAX_DENSE_POINTS} points needs a global grid with \
                 uniformly spaced longitudes (the localisation is applied spectrally along longitude)",
                lat_rows.len(),
                lon_cols.len()
            )));
        }
        Self::zonal(lat_rows, lon_cols.len(), lon_cols[0], half_width_km)
    }

    /// Number of points n (= the length of the control field a_k of each member, and of L^1/2 a_k).
    pub fn npoints(&self) -> usize {
        self.lat.len()
    }

    /// The half-width c in km (GC is zero from 2c on).
    pub fn half_width_km(&self) -> f64 {
        self.half_width_km
    }

    /// (lat, lon) of point `p` in degrees.
    pub fn point(&self, p: usize) -> (f64, f64) {
        (self.lat[p], self.lon[p])
    }

    /// The target GC correlation L_pq between points `p` and `q` (the matrix L^1/2 reproduces up to clipping).
    pub fn correlation(&self, p: usize, q: usize) -> f64 {
        if p == q {
            return 1.0;
        }
        gc_correlation(great_circle_km(self.lat[p], self.lon[p], self.lat[q], self.lon[q]), self.half_width_km)
    }

    /// out = L^1/2 a (both of length [`npoints`](Localisation::npoints); panics otherwise: the callers check).
    pub fn sqrt_apply(&mut self, a: &[f64], out: &mut [f64]) {
        let n = self.npoints();
        assert!(
            a.len() == n && out.len() == n,
            "localisation square root: lengths {} and {} for {n} points",
            a.len(),
            out.len()
        );
        match &mut self.form {
            SqrtForm::Dense(s) => {
                for (o, row) in out.iter_mut().zip(s.chunks_exact(n)) {
                    *o = row.iter().zip(a).map(|(s, a)| s * a).sum();
                }
            }
            SqrtForm::Zonal(z) => z.apply(a, out),
        }
    }

    /// out = (L^1/2)^T x, the adjoint of [`sqrt_apply`](Localisation::sqrt_apply) (L^1/2 is symmetric: the same map
    /// up to round-off).
    pub fn sqrt_adjoint(&mut self, x: &[f64], out: &mut [f64]) {
        let n = self.npoints();
        assert!(
            x.len() == n && out.len() == n,
            "localisation square root (adjoint): lengths {} and {} for {n} points",
            x.len(),
            out.len()
        );
        match &mut self.form {
            SqrtForm::Dense(s) => {
                out.iter_mut().for_each(|o| *o = 0.0);
                for (xi, row) in x.iter().zip(s.chunks_exact(n)) {
                    for (o, s) in out.iter_mut().zip(row) {
                        *o += s * xi;
                    }
                }
            }
            SqrtForm::Zonal(z) => z.apply(x, out),
        }
    }

    /// diag(L^1/2 (L^1/2)^T), the implied localisation at zero distance (1 up to the clipped eigenvalues).
    pub fn diag(&self) -> &[f64] {
        &self.diag
    }

    /// (smallest, largest eigenvalue of L, number of negative eigenvalues clipped to 0).
    pub fn eigen_range(&self) -> (f64, f64, usize) {
        (self.min_eig, self.max_eig, self.n_clipped)
    }

    /// Whether the zonal-FFT form is in use (else dense).
    pub fn is_zonal(&self) -> bool {
        matches!(self.form, SqrtForm::Zonal(_))
    }

    /// One line for reports: the function, half-width, support, form and eigenvalue clipping.
    pub fn describe(&self) -> String {
        let form = match &self.form {
            SqrtForm::Dense(_) => "dense".to_string(),
            SqrtForm::Zonal(z) => format!("zonal FFT {} x {}", z.nlat, z.nlon),
        };
        format!(
            "Gaspari-Cohn, half-width {:.0} km (zero beyond {:.0} km), {} points, {form}, eigenvalues {:.3e}..{:.3e} ({} clipped)",
            self.half_width_km,
            2.0 * self.half_width_km,
            self.npoints(),
            self.min_eig,
            self.max_eig,
            self.n_clipped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numeric::{dot, Rng};

    /// Rows of a regular grid with `nlat` latitudes between the poles (cell centres), north to south.
    fn rows(nlat: usize) -> Vec<f64> {
        (0..nlat).map(|j| 90.0 - 180.0 * (j as f64 + 0.5) / nlat as f64).collect()
    }

    fn cols(nlon: usize, lon0: f64) -> Vec<f64> {
        (0..nlon).map(|i| lon0 + 360.0 * i as f64 / nlon as f64).collect()
    }

    /// The implied L = L^1/2 (L^1/2)^T column by column (L^1/2 symmetric: L e_p = L^1/2 (L^1/2 e_p)).
    fn implied(loc: &mut Localisation, p: usize) -> Vec<f64> {
        let n = loc.npoints();
        let (mut e, mut s, mut l) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        e[p] = 1.0;
        loc.sqrt_adjoint(&e, &mut s);
        loc.sqrt_apply(&s, &mut l);
        l
    }

    #[test]
    fn gaspari_cohn_has_the_documented_values() {
        let c = 2500.0;
        assert_eq!(gc_correlation(0.0, c), 1.0);
        assert!((gc_correlation(0.5 * c, c) - 0.684_895_833_333_333_3).abs() < 1e-15);
        assert!((gc_correlation(c, c) - 5.0 / 24.0).abs() < 1e-15);
        assert!(
            (gc_correlation(1.5 * c, c) - 0.016_493_055_555_555_58).abs() < 1e-12,
            "{}",
            gc_correlation(1.5 * c, c)
        );
        assert!(gc_correlation(2.0 * c, c).abs() < 1e-15);
        assert_eq!(gc_correlation(2.0 * c + 1e-9, c), 0.0);
        assert_eq!(gc_correlation(3.0 * c, c), 0.0);
        assert_eq!(gc_correlation(1e9, c), 0.0);
        // Continuous at r = 1 and 2, decreasing on [0, 2].
        for r in [1.0f64, 2.0] {
            let (a, b) = (gaspari_cohn(r - 1e-9), gaspari_cohn(r + 1e-9));
            assert!((a - b).abs() < 1e-8, "jump at r = {r}: {a} vs {b}");
        }
        let mut prev = 1.0;
        for i in 1..=2000 {
            let g = gaspari_cohn(i as f64 * 1e-3);
            assert!(g <= prev && g >= 0.0, "not decreasing at r = {}", i as f64 * 1e-3);
            prev = g;
        }
        // Great-circle distances: a quarter meridian, and a point to itself.
        assert!((great_circle_km(0.0, 0.0, 90.0, 123.0) - EARTH_RADIUS_KM * std::f64::consts::FRAC_PI_2).abs() < 1e-9);
        assert_eq!(great_circle_km(45.0, 10.0, 45.0, 10.0), 0.0);
    }

    #[test]
    fn dense_square_root_reproduces_the_gc_matrix_on_the_latent_grid() {
        // The reference bundle's latent grid: 12 x 24 cells of 15 degrees.
        let (lat, lon) = (rows(12), cols(24, 5.625));
        for c in [1500.0, 2500.0, 4000.0] {
            let mut loc = Localisation::on_grid(&lat, &lon, c).unwrap();
            assert!(!loc.is_zonal());
            let n = loc.npoints();
            assert_eq!(n, 288);
            let mut worst: f64 = 0.0;
            for p in 0..n {
                let l = implied(&mut loc, p);
                for q in 0..n {
                    worst = worst.max((l[q] - loc.correlation(p, q)).abs());
                }
                assert!((loc.diag()[p] - 1.0).abs() < 1e-12, "diag {}", loc.diag()[p]);
            }
            let (lo, hi, nc) = loc.eigen_range();
            eprintln!("latent 12x24, c = {c} km: max |L^1/2 L^1/2^T - GC| = {worst:.2e}, eigenvalues {lo:.3e}..{hi:.3e}, {nc} clipped");
            assert!(worst < 1e-12, "L^1/2 L^1/2^T differs from GC by {worst:e}");
            // Symmetric target, exactly 1 at zero distance.
            assert_eq!(loc.correlation(3, 3), 1.0);
            assert_eq!(loc.correlation(5, 77), loc.correlation(77, 5));
        }
    }

    #[test]
    fn zonal_form_equals_the_dense_form() {
        let (lat, lon) = (rows(8), cols(16, 0.0));
        let latp: Vec<f64> = lat.iter().flat_map(|&p| std::iter::repeat_n(p, 16)).collect();
        let lonp: Vec<f64> = lat.iter().flat_map(|_| lon.iter().copied()).collect();
        for c in [1000.0, 3000.0] {
            let mut d = Localisation::dense(&latp, &lonp, c).unwrap();
            let mut z = Localisation::zonal(&lat, 16, 0.0, c).unwrap();
            assert!(z.is_zonal());
            let (mut worst_l, mut worst_s): (f64, f64) = (0.0, 0.0);
            for p in 0..128 {
                let (ld, lz) = (implied(&mut d, p), implied(&mut z, p));
                let mut e = vec![0.0; 128];
                e[p] = 1.0;
                let (mut sd, mut sz) = (vec![0.0; 128], vec![0.0; 128]);
                d.sqrt_apply(&e, &mut sd);
                z.sqrt_apply(&e, &mut sz);
                for q in 0..128 {
                    worst_l = worst_l.max((lz[q] - z.correlation(p, q)).abs()).max((ld[q] - lz[q]).abs());
                    worst_s = worst_s.max((sd[q] - sz[q]).abs());
                }
                assert_eq!(d.point(p), z.point(p));
            }
            eprintln!(
                "8x16, c = {c}: zonal L vs GC and dense L: {worst_l:.2e}; zonal vs dense L^1/2: {worst_s:.2e}; {}",
                z.describe()
            );
            assert!(worst_l < 1e-12 && worst_s < 1e-10, "zonal vs dense: L {worst_l:e}, L^1/2 {worst_s:e}");
            assert!(z.diag().iter().all(|v| (v - 1.0).abs() < 1e-12));
        }
    }

    #[test]
    fn zonal_form_on_the_model_grid_is_exact_and_cheap() {
        let (lat, lon) = (rows(48), cols(96, 0.0));
        // Wider and narrower half-widths: the eigenvalue range (none negative) and L against GC.
        for c in [800.0, 5000.0, 8000.0] {
            let mut loc = Localisation::zonal(&lat, 96, 0.0, c).unwrap();
            let l = implied(&mut loc, 96 * 12 + 3);
            let worst = (0..loc.npoints()).map(|q| (l[q] - loc.correlation(96 * 12 + 3, q)).abs()).fold(0.0, f64::max);
            eprintln!("48x96 zonal, c = {c} km: max |L - GC| (one column) {worst:.2e}; {}", loc.describe());
            assert!(worst < 1e-12, "c = {c}: zonal L differs from GC by {worst:e}");
        }
        let t = std::time::Instant::now();
        let mut loc = Localisation::on_grid(&lat, &lon, 2500.0).unwrap();
        let build = t.elapsed().as_secs_f64();
        assert!(loc.is_zonal());
        let n = loc.npoints();
        let mut worst: f64 = 0.0;
        for p in [0, 95, 96 * 10 + 17, 96 * 23 + 50, 96 * 24, 96 * 47 + 95] {
            let l = implied(&mut loc, p);
            for q in 0..n {
                worst = worst.max((l[q] - loc.correlation(p, q)).abs());
            }
        }
        let a = Rng::new(3).normals(n);
        let mut out = vec![0.0; n];
        let t = std::time::Instant::now();
        for _ in 0..20 {
            loc.sqrt_apply(&a, &mut out);
        }
        let apply = t.elapsed().as_secs_f64() / 20.0;
        eprintln!(
            "48x96 zonal: build {build:.3} s, one L^1/2 {:.2} ms, max |L - GC| over 6 columns {worst:.2e}; {}",
            apply * 1e3,
            loc.describe()
        );
        assert!(worst < 1e-12, "zonal L differs from GC by {worst:e}");
        assert!(loc.diag().iter().all(|v| (v - 1.0).abs() < 1e-12));
    }

    #[test]
    fn square_roots_have_exact_adjoints() {
        let (lat, lon) = (rows(12), cols(24, 5.625));
        let mut d = Localisation::on_grid(&lat, &lon, 2500.0).unwrap();
        let mut z = Localisation::zonal(&rows(48), 96, 0.0, 2500.0).unwrap();
        for loc in [&mut d, &mut z] {
            let n = loc.npoints();
            let mut rng = Rng::new(11);
            let (a, x) = (rng.normals(n), rng.normals(n));
            let (mut sa, mut stx) = (vec![0.0; n], vec![0.0; n]);
            loc.sqrt_apply(&a, &mut sa);
            loc.sqrt_adjoint(&x, &mut stx);
            let (l, r) = (dot(&sa, &x), dot(&a, &stx));
            let rel = (l - r).abs() / l.abs().max(r.abs());
            eprintln!("{}: adjoint rel {rel:.2e}", loc.describe());
            assert!(rel < 1e-12, "adjoint rel {rel:e}");
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(Localisation::dense(&[0.0], &[0.0], 0.0).unwrap_err().message.contains("half-width"));
        assert!(Localisation::dense(&[0.0], &[0.0], f64::NAN).is_err());
        assert!(Localisation::dense(&[0.0, 1.0], &[0.0], 1000.0).is_err());
        assert!(Localisation::dense(&[91.0], &[0.0], 1000.0).unwrap_err().message.contains("latitude 0"));
        // Too many points for the dense form on a grid without uniform global longitudes.
        let lon: Vec<f64> = (0..60).map(|i| i as f64).collect();
        let e = Localisation::on_grid(&rows(40), &lon, 1000.0).unwrap_err();
        assert!(e.message.contains("uniformly spaced"), "{}", e.message);
    }
}
