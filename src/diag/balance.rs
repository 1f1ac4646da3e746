//! Geostrophic-balance diagnostic of an analysis increment.
//!
//! On sigma levels the pressure-gradient force is grad(Phi) + R T grad(ln ps) (not grad(Phi) alone). The geostrophic
//! wind v_g = (1/f) k x PGF is computed from the analysis and from the background, and their difference is compared
//! with the wind increment over |lat| > 20 deg: a balanced increment has a correlation near 1.

use crate::bundle::grid::{Layout, VerticalKind};

const EARTH_RADIUS: f64 = 6.371e6;
const OMEGA: f64 = 7.292e-5;
use crate::bmat::hydrostatic::R_DRY;

/// Geostrophic wind (u_g, v_g) on every level of `x` (interior rows only; others are NaN).
fn geostrophic(layout: &Layout, x: &[f64], iz: usize, it: usize, ips: Option<usize>) -> (Vec<f64>, Vec<f64>) {
    let g = &layout.grid;
    let (nlat, nlon, np) = (g.nlat(), g.nlon(), g.npoints());
    let nlev = layout.variables[iz].nlev;
    let z0 = layout.variables[iz].first_channel;
    let t0 = layout.variables[it].first_channel;
    let mut ug = vec![f64::NAN; nlev * np];
    let mut vg = vec![f64::NAN; nlev * np];
    let lnps = ips.map(|v| {
        let off = layout.variables[v].first_channel * np;
        x[off..off + np].iter().map(|p| p.max(1.0).ln()).collect::<Vec<f64>>()
    });
    for k in 0..nlev {
        // Pressure-gradient potential derivatives: dPhi + R T dln(ps).
        let phi = &x[(z0 + k) * np..(z0 + k + 1) * np];
        let tt = &x[(t0 + k) * np..(t0 + k + 1) * np];
        for j in 1..nlat - 1 {
            let lat = g.lat[j].to_radians();
            let f = 2.0 * OMEGA * lat.sin();
            let coslat = lat.cos();
            let dy = (g.lat[j - 1] - g.lat[j + 1]).to_radians() * EARTH_RADIUS; // north minus south
            for i in 0..nlon {
                let (ie, iw) = ((i + 1) % nlon, (i + nlon - 1) % nlon);
                let mut dl = g.lon[ie] - g.lon[iw];
                if dl <= 0.0 {
                    dl += 360.0;
                }
                let dx = dl.to_radians() * EARTH_RADIUS * coslat;
                let p = j * nlon + i;
                let (pn, ps_, pe, pw) = ((j - 1) * nlon + i, (j + 1) * nlon + i, j * nlon + ie, j * nlon + iw);
                let mut gx = (phi[pe] - phi[pw]) / dx;
                let mut gy = (phi[pn] - phi[ps_]) / dy;
                if let Some(l) = &lnps {
                    gx += R_DRY * tt[p] * (l[pe] - l[pw]) / dx;
                    gy += R_DRY * tt[p] * (l[pn] - l[ps_]) / dy;
                }
                ug[k * np + p] = -gy / f;
                vg[k * np + p] = gx / f;
            }
        }
    }
    (ug, vg)
}

/// Geostrophic balance of the increment in the extratropics.
#[derive(Debug, Clone, serde::Serialize, Default)]
pub struct BalanceStats {
    /// Correlation between the wind increment and the geostrophic wind of the increment (|lat| > 20).
    pub correlation: f64,
    /// |v - v_g| / |v| over the same points.
    pub relative_difference: f64,
    /// RMS of the wind increment used.
    pub wind_rms: f64,
    /// RMS of its geostrophic wind.
    pub geostrophic_rms: f64,
    /// Number of points.
    pub npoints: usize,
    /// How the pressure-gradient force was computed.
    pub method: String,
}

/// Balance of the increment `x_a - x_b` over |lat| > 20, or `None` if the bundle lacks u, v, t and z (geopotential).
pub fn diagnose(layout: &Layout, x_b: &[f64], x_a: &[f64]) -> Option<BalanceStats> {
    diagnose_where(layout, x_b, x_a, |lat, _| lat.abs() > 20.0)
}

/// Balance of the increment `x_a - x_b` over the grid points (all levels) where `keep(lat, lon)` holds (near the
/// equator f vanishes and v_g is meaningless: keep those points out). `None` as for [`diagnose`], or when no point
/// is kept.
pub fn diagnose_where(
    layout: &Layout,
    x_b: &[f64],
    x_a: &[f64],
    keep: impl Fn(f64, f64) -> bool,
) -> Option<BalanceStats> {
    let (iu, iv, it, iz) =
        (layout.var_index("u")?, layout.var_index("v")?, layout.var_index("t")?, layout.var_index("z")?);
    let ips = if layout.vertical.kind == VerticalKind::Sigma { Some(layout.var_index("ps")?) } else { None };
    let vars = &layout.variables;
    if [iu, iv, it, iz].iter().any(|&v| vars[v].is_surface()) || layout.grid.nlat() < 3 {
        return None;
    }
    let (uga, vga) = geostrophic(layout, x_a, iz, it, ips);
    let (ugb, vgb) = geostrophic(layout, x_b, iz, it, ips);
    let np = layout.grid.npoints();
    let nlon = layout.grid.nlon();
    let (u0, v0) = (vars[iu].first_channel * np, vars[iv].first_channel * np);
    let (mut suv, mut sgg, mut sug, mut sdd, mut n) = (0.0, 0.0, 0.0, 0.0, 0usize);
    for k in 0..vars[iz].nlev {
        for p in 0..np {
            let (lat, lon) = (layout.grid.lat[p / nlon], layout.grid.lon[p % nlon]);
            let (a, b) = (uga[k * np + p], ugb[k * np + p]);
            if !keep(lat, lon) || !a.is_finite() || !b.is_finite() {
                continue;
            }
            let du = x_a[u0 + k * np + p] - x_b[u0 + k * np + p];
            let dv = x_a[v0 + k * np + p] - x_b[v0 + k * np + p];
            let dug = a - b;
            let dvg = vga[k * np + p] - vgb[k * np + p];
            suv += du * du + dv * dv;
            sgg += dug * dug + dvg * dvg;
            sug += du * dug + dv * dvg;
            sdd += (du - dug).powi(2) + (dv - dvg).powi(2);
            n += 1;
        }
    }
    if n == 0 {
        return None;
    }
    let denom = (suv * sgg).sqrt();
    Some(BalanceStats {
        correlation: if denom > 0.0 { sug / denom } else { 0.0 },
        relative_difference: if suv > 0.0 { (sdd / suv).sqrt() } else { 0.0 },
        wind_rms: (suv / (2 * n) as f64).sqrt(),
        geostrophic_rms: (sgg / (2 * n) as f64).sqrt(),
        npoints: n,
        method: if ips.is_some() {
            "v_g from grad(Phi) + R T grad(ln ps) on sigma levels, analysis minus background".into()
        } else {
            "v_g from grad(Phi) on pressure levels, analysis minus background".into()
        },
    })
}
