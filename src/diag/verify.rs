//! Verification of analyses against a truth state, and the local response of an increment around one point.
//!
//! RMSE is area-weighted: each grid row counts with cos(latitude), the area it represents on the sphere (on a
//! Gaussian grid this is the Gaussian quadrature weight to within 0.5 % at T31), so the crowded polar rows of a
//! latitude-longitude grid do not dominate the score.
//!
//! The point response serves single-observation experiments: how large the increment is at the observation, and
//! whether its wind turns the way geostrophy asks. A positive geopotential (warm) anomaly is balanced by an
//! anticyclonic circulation, clockwise in the north and anticlockwise in the south; the relative vorticity of the
//! wind increment around the point then has the opposite sign to the Coriolis parameter f.

use crate::bundle::grid::{Grid, Layout};

const EARTH_RADIUS_KM: f64 = 6371.0;
const EARTH_RADIUS_M: f64 = 6.371e6;

/// Area weight cos(latitude) of each grid row, scaled so the weights of all points average to 1.
pub fn row_weights(grid: &Grid) -> Vec<f64> {
    let w: Vec<f64> = grid.lat.iter().map(|l| l.to_radians().cos().max(0.0)).collect();
    let mean = w.iter().sum::<f64>() / w.len() as f64;
    w.iter().map(|x| x / mean).collect()
}

/// Area-weighted RMS of `a - b` over each variable's whole field (all its levels), in bundle order.
///
/// ```
/// use latentda::bundle::grid::{Grid, GridKind, Layout, Vertical, VerticalKind};
/// use latentda::diag::verify::weighted_rmse_by_var;
///
/// let grid = Grid::new(GridKind::Regular, vec![60.0, 0.0, -60.0], vec![0.0, 120.0, 240.0]).unwrap();
/// let vert = Vertical::new(VerticalKind::Sigma, vec![0.5]).unwrap();
/// let lay = Layout::new(grid, vert, vec![("ps".into(), "Pa".into(), 0)]).unwrap();
/// let zero = vec![0.0; 9];
/// // An error of 2 everywhere has an RMSE of 2 whatever the weights.
/// assert!((weighted_rmse_by_var(&lay, &vec![2.0; 9], &zero)[0] - 2.0).abs() < 1e-12);
/// ```
pub fn weighted_rmse_by_var(layout: &Layout, a: &[f64], b: &[f64]) -> Vec<f64> {
    let w = row_weights(&layout.grid);
    let (np, nlon) = (layout.grid.npoints(), layout.grid.nlon());
    (0..layout.variables.len())
        .map(|v| {
            let r = layout.var_range(v);
            let (mut s, mut n) = (0.0, 0.0);
            for i in r {
                let wi = w[(i % np) / nlon];
                s += wi * (a[i] - b[i]).powi(2);
                n += wi;
            }
            (s / n).sqrt()
        })
        .collect()
}

/// Great-circle distance in km between two (lat, lon) points in degrees.
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let c = p1.sin() * p2.sin() + p1.cos() * p2.cos() * (lon2 - lon1).to_radians().cos();
    EARTH_RADIUS_KM * c.clamp(-1.0, 1.0).acos()
}

/// Relative vorticity dv/dx - du/dy of one level's wind (u, v: one horizontal field each), by centred differences
/// in spherical coordinates; NaN on the first and last rows.
pub fn relative_vorticity(grid: &Grid, u: &[f64], v: &[f64]) -> Vec<f64> {
    let (nlat, nlon) = (grid.nlat(), grid.nlon());
    let mut zeta = vec![f64::NAN; nlat * nlon];
    for j in 1..nlat - 1 {
        let phi = grid.lat[j].to_radians();
        let (phn, phs) = (grid.lat[j - 1].to_radians(), grid.lat[j + 1].to_radians());
        for i in 0..nlon {
            let (ie, iw) = if grid.periodic {
                ((i + 1) % nlon, (i + nlon - 1) % nlon)
            } else if i == 0 || i == nlon - 1 {
                continue;
            } else {
                (i + 1, i - 1)
            };
            let mut dl = grid.lon[ie] - grid.lon[iw];
            if dl <= 0.0 {
                dl += 360.0;
            }
            let dvdl = (v[j * nlon + ie] - v[j * nlon + iw]) / dl.to_radians();
            // d(u cos(phi))/d(phi), north minus south.
            let ducos = (u[(j - 1) * nlon + i] * phn.cos() - u[(j + 1) * nlon + i] * phs.cos()) / (phn - phs);
            zeta[j * nlon + i] = (dvdl - ducos) / (EARTH_RADIUS_M * phi.cos());
        }
    }
    zeta
}

/// Mean relative vorticity of the wind (u, v: one level) over the grid points within `radius_km` of (lat, lon).
pub fn mean_vorticity_near(grid: &Grid, u: &[f64], v: &[f64], lat: f64, lon: f64, radius_km: f64) -> f64 {
    let zeta = relative_vorticity(grid, u, v);
    let nlon = grid.nlon();
    let (mut s, mut n) = (0.0, 0usize);
    for (p, z) in zeta.iter().enumerate() {
        if z.is_finite() && distance_km(lat, lon, grid.lat[p / nlon], grid.lon[p % nlon]) <= radius_km {
            s += z;
            n += 1;
        }
    }
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::grid::GridKind;

    fn grid(nlat: usize, nlon: usize) -> Grid {
        let lat = (0..nlat).map(|j| 90.0 - (j as f64 + 0.5) * 180.0 / nlat as f64).collect();
        let lon = (0..nlon).map(|i| i as f64 * 360.0 / nlon as f64).collect();
        Grid::new(GridKind::Regular, lat, lon).unwrap()
    }

    #[test]
    fn solid_body_rotation_has_the_analytic_vorticity() {
        // u = U cos(phi), v = 0 has zeta = 2 U sin(phi) / a.
        let g = grid(36, 72);
        let uu = 10.0;
        let u: Vec<f64> = (0..g.npoints()).map(|p| uu * g.lat[p / 72].to_radians().cos()).collect();
        let v = vec![0.0; g.npoints()];
        let z = relative_vorticity(&g, &u, &v);
        // d(cos^2)/dphi = -sin(2 phi) by centred differences over 2h: sin(2 phi) sin(2h) / (2h), a relative error of
        // 1 - sin(2h)/(2h) ~ (2h)^2 / 6 (5e-3 on this 5-degree grid), the same on every row.
        let h = 5f64.to_radians();
        let rel = 1.0 - (2.0 * h).sin() / (2.0 * h);
        for j in 1..35 {
            let exact = 2.0 * uu * g.lat[j].to_radians().sin() / EARTH_RADIUS_M;
            assert!(
                (z[j * 72 + 5] - exact * (1.0 - rel)).abs() <= 1e-9 * exact.abs().max(1e-12),
                "row {j}: {} vs {exact}",
                z[j * 72 + 5]
            );
        }
        assert!(z[5].is_nan() && z[35 * 72].is_nan());
    }

    #[test]
    fn a_clockwise_vortex_has_negative_vorticity() {
        // Clockwise (anticyclonic in the north) flow around 45N 180E: u = +dy, v = -dx in a local tangent plane.
        let g = grid(36, 72);
        let (mut u, mut v) = (vec![0.0; g.npoints()], vec![0.0; g.npoints()]);
        for p in 0..g.npoints() {
            let (la, lo) = (g.lat[p / 72], g.lon[p % 72]);
            let (dy, dx) = (la - 45.0, (lo - 180.0) * 45f64.to_radians().cos());
            let r2 = dx * dx + dy * dy;
            let amp = (-r2 / 200.0).exp();
            u[p] = amp * dy;
            v[p] = -amp * dx;
        }
        assert!(mean_vorticity_near(&g, &u, &v, 45.0, 180.0, 800.0) < 0.0);
        let (un, vn): (Vec<f64>, Vec<f64>) = (u.iter().map(|x| -x).collect(), v.iter().map(|x| -x).collect());
        assert!(mean_vorticity_near(&g, &un, &vn, 45.0, 180.0, 800.0) > 0.0);
    }

    #[test]
    fn weights_favour_low_latitudes_and_rmse_follows_them() {
        let g = Grid::new(GridKind::Regular, vec![80.0, 0.0, -80.0], vec![0.0, 180.0]).unwrap();
        let w = row_weights(&g);
        assert!((w.iter().sum::<f64>() / 3.0 - 1.0).abs() < 1e-12 && w[1] > 5.0 * w[0]);
        let vert = crate::bundle::grid::Vertical::new(crate::bundle::grid::VerticalKind::Sigma, vec![0.5]).unwrap();
        let lay = Layout::new(g, vert, vec![("ps".into(), "Pa".into(), 0)]).unwrap();
        // Error 1 only on the polar rows: the weighted RMSE is well below the unweighted sqrt(2/3) = 0.82.
        let a = [1.0, 1.0, 0.0, 0.0, 1.0, 1.0];
        let r = weighted_rmse_by_var(&lay, &a, &[0.0; 6])[0];
        let expected = (2.0 * w[0] / (2.0 * w[0] + w[1])).sqrt();
        assert!((r - expected).abs() < 1e-12 && r < 0.55, "{r} vs {expected}");
    }

    #[test]
    fn distances_on_the_sphere() {
        assert!((distance_km(0.0, 0.0, 0.0, 90.0) - EARTH_RADIUS_KM * std::f64::consts::FRAC_PI_2).abs() < 1e-9);
        assert!(distance_km(45.0, 10.0, 45.0, 10.0).abs() < 1e-9);
        assert!((distance_km(90.0, 0.0, -90.0, 123.0) - EARTH_RADIUS_KM * std::f64::consts::PI).abs() < 1e-6);
    }
}
