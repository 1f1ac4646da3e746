//! Model-space 3D-Var baseline: a static, univariate B = U U^T with U = S V^1/2 K.
//!
//! * S: grid-point background-error standard deviations (bundle `baseline_b.nc`, `sd`).
//! * K: horizontal square-root correlation per channel, an isotropic Gaussian kernel on the sphere,
//!   K = N G A^1/2 with G_pq = exp(-d_pq^2 / L^2) (d great-circle distance, L the channel's length scale),
//!   A the cell areas and N the row normalisation that makes diag(K K^T) = 1. K K^T is then (up to the grid) the
//!   Gaussian correlation exp(-d^2 / (2 L^2)), with e-folding distance sqrt(2) L, and unit variance at every point.
//! * V^1/2: symmetric square root of each upper-air variable's vertical correlation matrix (Jacobi eigen-solve).
//!
//! Because the grid has uniformly spaced longitudes, G_pq depends only on the two latitude rows and the longitude
//! difference: each (row, row) block is a circulant matrix, applied exactly with a real DFT along longitude.
//! Cost per application: O(nchan nlat^2 nlon) for the spectral products plus O(nchan nlat nlon^2) for the DFTs
//! (a few ms on the T31 grid); memory nchan nlat^2 (nlon/2+1) doubles (37 MB for T31, 41 channels). No truncation.
//! The variances of B are exactly S^2, and B is symmetric positive semi-definite by construction.

use crate::bundle::BaselineStats;
use crate::error::{Error, Result};
use crate::bundle::grid::Layout;

const EARTH_RADIUS_KM: f64 = 6371.0;

/// The static-B control transform x = x_b + U v.
pub struct StaticB {
    nchan: usize,
    nlat: usize,
    nlon: usize,
    nm: usize,
    /// ghat[c][(j * nlat + j2) * nm + m]: DFT of the circulant block G_c(j, j2).
    ghat: Vec<Vec<f64>>,
    /// Row normalisation N per channel and latitude row.
    norm: Vec<Vec<f64>>,
    /// sqrt of the cell area (relative) per row.
    sqrt_area: Vec<f64>,
    cos_t: Vec<f64>,
    sin_t: Vec<f64>,
    sd: Vec<f64>,
    /// (first channel, nlev, V^1/2 row-major) of each upper-air variable.
    vsqrt: Vec<(usize, usize, Vec<f64>)>,
    buf: Vec<f64>,
    re: Vec<f64>,
    im: Vec<f64>,
    ore: Vec<f64>,
    oim: Vec<f64>,
}

/// Symmetric square root of a small symmetric PSD matrix by cyclic Jacobi (negative eigenvalues clipped to 0).
pub fn sym_sqrt(a: &[f64], n: usize) -> Vec<f64> {
    let (vals, v) = crate::numeric::symmetric_eigen(a, n, 1e-30);
    let lam: Vec<f64> = vals.iter().map(|l| l.max(0.0).sqrt()).collect();
    let mut r = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            r[i * n + j] = (0..n).map(|k| v[i * n + k] * lam[k] * v[j * n + k]).sum();
        }
    }
    r
}

fn great_circle_km(lat1: f64, lat2: f64, dlon: f64) -> f64 {
    let (p1, p2, dl) = (lat1.to_radians(), lat2.to_radians(), dlon.to_radians());
    let h = ((p2 - p1) / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

impl StaticB {
    /// Precomputes the spectral kernels, normalisation and vertical square roots.
    pub fn new(layout: &Layout, stats: &BaselineStats) -> Result<StaticB> {
        let g = &layout.grid;
        let (nlat, nlon, nchan) = (g.nlat(), g.nlon(), layout.nchan);
        let dlon = 360.0 / nlon as f64;
        let uniform = g.lon.iter().enumerate().all(|(i, l)| (l - g.lon[0] - i as f64 * dlon).abs() < 1e-6 * 360.0);
        if !g.periodic || !uniform {
            return Err(Error::arg(
                "method 3dvar needs a global grid with uniformly spaced longitudes (the horizontal correlation is applied spectrally along longitude)",
            ));
        }
        let nm = nlon / 2 + 1;
        let mut cos_t = vec![0.0; nlon * nm];
        let mut sin_t = vec![0.0; nlon * nm];
        for i in 0..nlon {
            for m in 0..nm {
                let a = 2.0 * std::f64::consts::PI * (m * i) as f64 / nlon as f64;
                cos_t[i * nm + m] = a.cos();
                sin_t[i * nm + m] = a.sin();
            }
        }
        // Relative cell areas: cos(lat) times the latitude band width.
        let edges: Vec<f64> = (0..=nlat)
            .map(|j| if j == 0 { 90.0 } else if j == nlat { -90.0 } else { 0.5 * (g.lat[j - 1] + g.lat[j]) })
            .collect();
        let sqrt_area: Vec<f64> =
            (0..nlat).map(|j| (edges[j].to_radians().sin() - edges[j + 1].to_radians().sin()).abs().sqrt()).collect();
        let mut dist2 = vec![0.0; nlat * nlat * nlon];
        for j in 0..nlat {
            for j2 in 0..nlat {
                for d in 0..nlon {
                    let dd = great_circle_km(g.lat[j], g.lat[j2], d as f64 * dlon);
                    dist2[(j * nlat + j2) * nlon + d] = dd * dd;
                }
            }
        }
        let mut ghat = Vec::with_capacity(nchan);
        let mut norm = Vec::with_capacity(nchan);
        for c in 0..nchan {
            let l2 = stats.length_scale[c].powi(2);
            let mut gh = vec![0.0; nlat * nlat * nm];
            let mut rowsum = vec![0.0; nlat];
            for j in 0..nlat {
                for j2 in 0..nlat {
                    let base = (j * nlat + j2) * nlon;
                    let gk: Vec<f64> = (0..nlon).map(|d| (-dist2[base + d] / l2).exp()).collect();
                    rowsum[j] += sqrt_area[j2].powi(2) * gk.iter().map(|v| v * v).sum::<f64>();
                    for m in 0..nm {
                        gh[(j * nlat + j2) * nm + m] = (0..nlon).map(|d| gk[d] * cos_t[d * nm + m]).sum();
                    }
                }
            }
            ghat.push(gh);
            norm.push(rowsum.iter().map(|s| 1.0 / s.sqrt()).collect());
        }
        let mut vsqrt = Vec::new();
        for (v, var) in layout.variables.iter().enumerate() {
            if let Some(cv) = &stats.vertical_correlation[v] {
                vsqrt.push((var.first_channel, var.nlev, sym_sqrt(cv, var.nlev)));
            }
        }
        let np = nlat * nlon;
        Ok(StaticB {
            nchan,
            nlat,
            nlon,
            nm,
            ghat,
            norm,
            sqrt_area,
            cos_t,
            sin_t,
            sd: stats.sd.clone(),
            vsqrt,
            buf: vec![0.0; nchan * np],
            re: vec![0.0; nlat * nm],
            im: vec![0.0; nlat * nm],
            ore: vec![0.0; nlat * nm],
            oim: vec![0.0; nlat * nm],
        })
    }

    /// out = G_c v (one channel, nlat x nlon, symmetric circulant blocks).
    fn apply_g(&mut self, c: usize, v: &[f64], out: &mut [f64]) {
        let (nlat, nlon, nm) = (self.nlat, self.nlon, self.nm);
        for j in 0..nlat {
            for m in 0..nm {
                let (mut a, mut b) = (0.0, 0.0);
                for i in 0..nlon {
                    let x = v[j * nlon + i];
                    a += x * self.cos_t[i * nm + m];
                    b -= x * self.sin_t[i * nm + m];
                }
                self.re[j * nm + m] = a;
                self.im[j * nm + m] = b;
            }
        }
        let gh = &self.ghat[c];
        for j in 0..nlat {
            for m in 0..nm {
                let (mut a, mut b) = (0.0, 0.0);
                for j2 in 0..nlat {
                    let k = gh[(j * nlat + j2) * nm + m];
                    a += k * self.re[j2 * nm + m];
                    b += k * self.im[j2 * nm + m];
                }
                self.ore[j * nm + m] = a;
                self.oim[j * nm + m] = b;
            }
        }
        let inv = 1.0 / nlon as f64;
        for j in 0..nlat {
            for i in 0..nlon {
                let mut s = 0.0;
                for m in 0..nm {
                    let w = if m == 0 || (nlon % 2 == 0 && m == nlon / 2) { 1.0 } else { 2.0 };
                    s += w * (self.ore[j * nm + m] * self.cos_t[i * nm + m] - self.oim[j * nm + m] * self.sin_t[i * nm + m]);
                }
                out[j * nlon + i] = s * inv;
            }
        }
    }

    fn vertical(&self, x: &mut [f64]) {
        let np = self.nlat * self.nlon;
        let mut col = Vec::new();
        for (c0, nlev, vs) in &self.vsqrt {
            for p in 0..np {
                col.clear();
                col.extend((0..*nlev).map(|k| x[(c0 + k) * np + p]));
                for l in 0..*nlev {
                    x[(c0 + l) * np + p] = (0..*nlev).map(|k| vs[l * nlev + k] * col[k]).sum();
                }
            }
        }
    }

    /// Control vector length (the state length: one control variable per grid value).
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// x = U v.
    pub fn sqrt_apply(&mut self, v: &[f64], x: &mut [f64]) {
        let np = self.nlat * self.nlon;
        let nlon = self.nlon;
        let mut tmp = vec![0.0; np];
        for c in 0..self.nchan {
            for p in 0..np {
                tmp[p] = v[c * np + p] * self.sqrt_area[p / nlon];
            }
            let mut out = vec![0.0; np];
            self.apply_g(c, &tmp, &mut out);
            for p in 0..np {
                x[c * np + p] = out[p] * self.norm[c][p / nlon];
            }
        }
        self.vertical(x);
        for (xi, s) in x.iter_mut().zip(&self.sd) {
            *xi *= s;
        }
    }

    /// v = U^T x.
    pub fn sqrt_adjoint(&mut self, x: &[f64], v: &mut [f64]) {
        let np = self.nlat * self.nlon;
        let nlon = self.nlon;
        let mut y: Vec<f64> = x.iter().zip(&self.sd).map(|(a, s)| a * s).collect();
        self.vertical(&mut y);
        let mut tmp = vec![0.0; np];
        let mut out = vec![0.0; np];
        for c in 0..self.nchan {
            for p in 0..np {
                tmp[p] = y[c * np + p] * self.norm[c][p / nlon];
            }
            self.apply_g(c, &tmp, &mut out);
            for p in 0..np {
                v[c * np + p] = out[p] * self.sqrt_area[p / nlon];
            }
        }
    }
}
