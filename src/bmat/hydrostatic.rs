//! Hydrostatic balance of the static B: the geopotential increment as a linear function of the temperature (and,
//! on pressure levels, surface-pressure) increments, with its exact adjoint.
//!
//! On sigma surfaces d(Phi) = -R T_v d(ln sigma) (surface pressure cancels along a column), so with the surface
//! geopotential fixed the increment at full level k is
//!
//! ```text
//! dPhi_k = R sum_j A_kj dTv_j,     dTv_j = (1 + eps q_j) dT_j + eps T_j dq_j   (eps = 0.608, virtual temperature)
//! A_kj   = 1/2 ln(eta_(j+1) / eta_(j-1))   for k < j < n-1      (eta: the vertical coordinate, levels top to bottom)
//! A_kk   = 1/2 ln(eta_(k+1) / eta_k)       for k < n-1
//! A_k,n-1 = 1/2 ln(eta_(n-1) / eta_(n-2)) + ln(eta_s / eta_(n-1))    (k < n-1);   A_(n-1),(n-1) = ln(eta_s / eta_(n-1))
//! ```
//!
//! the trapezoidal rule in ln(eta) between full levels (equivalently: each full level's T_v holds from the log-midpoint
//! half level above to the one below) and T_(n-1) below the lowest level down to the surface eta_s (sigma = 1). On
//! pressure levels eta_s = ps_ref and the surface-pressure increment adds dPhi_k += R Tv_(n-1) / ps_ref dps.
//! The coefficients T_j, q_j, Tv_(n-1) and ps_ref are the bundle's normalisation means (a static operator, not
//! linearised at the background). Without a `q` variable dTv = dT.
//!
//! Checked against the SPEEDY nature run (48 h differences of 10 pairs of states, `docs/b-operator.md`): the
//! relative error of dz predicted from dt, dq is 0.29 % (4.1 % from dt alone); SPEEDY's own half levels
//! (0, 0.05, 0.14, ...) fit worse (2.4 % / 4.8 %), arithmetic-mean half levels much worse (10 % / 11 %).

use crate::bundle::grid::{Layout, VerticalKind};
use crate::error::{Error, Result};

/// Gas constant of dry air, J kg-1 K-1.
pub const R_DRY: f64 = 287.04;
/// Virtual-temperature coefficient: T_v = T (1 + EPS_VIRTUAL q).
pub const EPS_VIRTUAL: f64 = 0.608;
/// Standard gravity, m s-2 (for geopotential height in m).
pub const G0: f64 = 9.80665;

/// The matrix A (row-major, n x n) of `dPhi = R A dTv` for full levels `eta` (top to bottom) and surface value
/// `eta_s` (1 for sigma, the reference surface pressure for pressure levels); see the module documentation.
pub fn integration_matrix(eta: &[f64], eta_s: f64) -> Vec<f64> {
    let n = eta.len();
    let mut a = vec![0.0; n * n];
    for k in 0..n {
        a[k * n + n - 1] += (eta_s / eta[n - 1]).ln();
        for j in k..n - 1 {
            let w = 0.5 * (eta[j + 1] / eta[j]).ln();
            a[k * n + j] += w;
            a[k * n + j + 1] += w;
        }
    }
    a
}

/// The linear map (dT, dq, dps) -> dz on a state layout.
#[derive(Debug, Clone)]
pub struct Hydrostatic {
    np: usize,
    nlev: usize,
    /// First channel of t, z, and of q when the virtual-temperature term is used.
    t0: usize,
    z0: usize,
    q0: Option<usize>,
    /// ps channel (pressure coordinate only).
    ps: Option<usize>,
    /// Coefficients of dT_j and dq_j in dz_k (row-major nlev x nlev, units of z per K and per unit of q).
    ct: Vec<f64>,
    cq: Vec<f64>,
    /// Coefficient of dps in every dz_k (pressure coordinate only).
    cps: f64,
}

fn unit_factor(units: &str, what: &str, accepted: &[(&str, f64)]) -> Result<f64> {
    let u = units.trim();
    accepted.iter().find(|(a, _)| *a == u).map(|(_, f)| *f).ok_or_else(|| {
        let names: Vec<&str> = accepted.iter().map(|(a, _)| *a).collect();
        Error::bundle(format!(
            "hydrostatic balance of the baseline B: variable '{what}' has units '{units}'; expected one of {names:?}"
        ))
    })
}

impl Hydrostatic {
    /// The operator for a layout with upper-air variables `t` (K) and `z` (geopotential in m2 s-2, or height in m),
    /// optionally `q` (specific humidity, virtual temperature) and, on pressure levels, `ps` (Pa), which it needs.
    /// `mean` holds the per-channel reference values (the bundle's normalisation means). `None` when the layout has
    /// no `t` or `z` upper-air variable, or is on pressure levels without `ps`.
    pub fn for_layout(layout: &Layout, units: &[String], mean: &[f64]) -> Result<Option<Hydrostatic>> {
        let upper = |name: &str| layout.var_index(name).filter(|&v| !layout.variables[v].is_surface());
        let (Some(it), Some(iz)) = (upper("t"), upper("z")) else { return Ok(None) };
        let iq = upper("q");
        let ips = layout.var_index("ps").filter(|&v| layout.variables[v].is_surface());
        let pressure = layout.vertical.kind == VerticalKind::Pressure;
        if pressure && ips.is_none() {
            return Ok(None);
        }
        unit_factor(&units[it], "t", &[("K", 1.0)])?;
        let zf = unit_factor(
            &units[iz],
            "z",
            &[("m2 s-2", 1.0), ("m2/s2", 1.0), ("m**2 s**-2", 1.0), ("m", 1.0 / G0), ("gpm", 1.0 / G0)],
        )?;
        let qf = match iq {
            Some(q) => unit_factor(
                &units[q],
                "q",
                &[("kg kg-1", 1.0), ("kg/kg", 1.0), ("1", 1.0), ("g kg-1", 1e-3), ("g/kg", 1e-3)],
            )?,
            None => 0.0,
        };
        let ps_f = match ips {
            Some(p) if pressure => unit_factor(&units[p], "ps", &[("Pa", 1.0), ("hPa", 100.0)])?,
            _ => 1.0,
        };
        let nlev = layout.vertical.levels.len();
        let (t0, z0) = (layout.variables[it].first_channel, layout.variables[iz].first_channel);
        let q0 = iq.map(|v| layout.variables[v].first_channel);
        let ps_ref = ips.map(|p| mean[layout.variables[p].first_channel] * ps_f);
        let eta_s = if pressure { ps_ref.unwrap_or(1e5) } else { 1.0 };
        if !(eta_s > 0.0) {
            return Err(Error::bundle(format!("hydrostatic balance: reference surface pressure {eta_s} must be > 0")));
        }
        let a = integration_matrix(&layout.vertical.levels, eta_s);
        let (mut ct, mut cq) = (vec![0.0; nlev * nlev], vec![0.0; nlev * nlev]);
        for k in 0..nlev {
            for j in 0..nlev {
                let (t_ref, q_ref) = (mean[t0 + j], q0.map_or(0.0, |q| mean[q + j] * qf));
                ct[k * nlev + j] = zf * R_DRY * a[k * nlev + j] * (1.0 + EPS_VIRTUAL * q_ref);
                cq[k * nlev + j] = zf * R_DRY * a[k * nlev + j] * EPS_VIRTUAL * t_ref * qf;
            }
        }
        let cps = match ps_ref {
            Some(p) if pressure => {
                let j = nlev - 1;
                let tv = mean[t0 + j] * (1.0 + EPS_VIRTUAL * q0.map_or(0.0, |q| mean[q + j] * qf));
                zf * R_DRY * tv / p * ps_f
            }
            _ => 0.0,
        };
        Ok(Some(Hydrostatic {
            np: layout.grid.npoints(),
            nlev,
            t0,
            z0,
            q0: if qf > 0.0 { q0 } else { None },
            ps: if pressure { ips.map(|p| layout.variables[p].first_channel) } else { None },
            ct,
            cq,
            cps,
        }))
    }

    /// [`Hydrostatic::for_layout`] for a bundle: its layout, units and normalisation means.
    pub fn for_bundle(bundle: &crate::bundle::Bundle) -> Result<Option<Hydrostatic>> {
        let units: Vec<String> = (0..bundle.layout.variables.len()).map(|v| bundle.units(v).to_string()).collect();
        Self::for_layout(&bundle.layout, &units, &bundle.mean)
    }

    /// Channels of z (the balanced, derived variable).
    pub fn z_channels(&self) -> std::ops::Range<usize> {
        self.z0..self.z0 + self.nlev
    }

    /// Whether channel `c` feeds z (a t, q or ps channel).
    pub fn is_source(&self, c: usize) -> bool {
        (self.t0..self.t0 + self.nlev).contains(&c)
            || self.q0.is_some_and(|q| (q..q + self.nlev).contains(&c))
            || self.ps == Some(c)
    }

    /// Coefficient matrices (dz per dT, dz per dq; row-major nlev x nlev) and the dz per dps coefficient.
    pub fn coefficients(&self) -> (&[f64], &[f64], f64) {
        (&self.ct, &self.cq, self.cps)
    }

    /// The z block of `x` (mutable) and the channels before and after it (`x` split around z).
    fn split_z<'x>(&self, x: &'x mut [f64]) -> (&'x mut [f64], &'x mut [f64], &'x mut [f64]) {
        let np = self.np;
        let (before, rest) = x.split_at_mut(self.z0 * np);
        let (z, after) = rest.split_at_mut(self.nlev * np);
        (before, z, after)
    }

    /// Channel `c` (not a z channel) of a state split by [`Hydrostatic::split_z`].
    fn channel<'x>(&self, before: &'x [f64], after: &'x [f64], c: usize) -> &'x [f64] {
        let np = self.np;
        if c < self.z0 {
            &before[c * np..(c + 1) * np]
        } else {
            let c = c - self.z0 - self.nlev;
            &after[c * np..(c + 1) * np]
        }
    }

    /// Mutable channel `c` (not a z channel) of a state split by [`Hydrostatic::split_z`].
    fn channel_mut<'x>(&self, before: &'x mut [f64], after: &'x mut [f64], c: usize) -> &'x mut [f64] {
        let np = self.np;
        if c < self.z0 {
            &mut before[c * np..(c + 1) * np]
        } else {
            let c = c - self.z0 - self.nlev;
            &mut after[c * np..(c + 1) * np]
        }
    }

    /// Overwrites the z channels of the state increment `x` with the balanced increment of its t, q, ps channels.
    ///
    /// Level by level over all points (contiguous): dz_k = cps dps + sum_j (ct_kj dT_j + cq_kj dq_j), accumulated in
    /// this order at every point.
    pub fn apply(&self, x: &mut [f64]) {
        let n = self.nlev;
        let (before, z, after) = self.split_z(x);
        let (before, after) = (&*before, &*after);
        for k in 0..n {
            let zk = &mut z[k * self.np..(k + 1) * self.np];
            match self.ps {
                Some(c) => zk.iter_mut().zip(self.channel(before, after, c)).for_each(|(z, p)| *z = self.cps * p),
                None => zk.iter_mut().for_each(|z| *z = 0.0),
            }
            for j in 0..n {
                let (a, t) = (self.ct[k * n + j], self.channel(before, after, self.t0 + j));
                match self.q0 {
                    Some(q0) => {
                        let (b, q) = (self.cq[k * n + j], self.channel(before, after, q0 + j));
                        zk.iter_mut().zip(t).zip(q).for_each(|((z, t), q)| {
                            *z += a * t;
                            *z += b * q;
                        });
                    }
                    None => zk.iter_mut().zip(t).for_each(|(z, t)| *z += a * t),
                }
            }
        }
    }

    /// The adjoint of [`Hydrostatic::apply`] (as a map of the whole state): adds the transposed coefficients times
    /// the z channels of `x` into its t, q, ps channels, then zeroes the z channels.
    pub fn adjoint(&self, x: &mut [f64]) {
        let n = self.nlev;
        let (before, z, after) = self.split_z(x);
        for k in 0..n {
            let zk = &z[k * self.np..(k + 1) * self.np];
            if let Some(c) = self.ps {
                let cps = self.cps;
                self.channel_mut(before, after, c).iter_mut().zip(zk).for_each(|(p, z)| *p += cps * z);
            }
            for j in 0..n {
                let a = self.ct[k * n + j];
                self.channel_mut(before, after, self.t0 + j).iter_mut().zip(zk).for_each(|(t, z)| *t += a * z);
                if let Some(q0) = self.q0 {
                    let b = self.cq[k * n + j];
                    self.channel_mut(before, after, q0 + j).iter_mut().zip(zk).for_each(|(q, z)| *q += b * z);
                }
            }
        }
        z.iter_mut().for_each(|z| *z = 0.0);
    }

    /// Variance of dz at one point from the covariance of its sources there: `cov_t`, `cov_q` (nlev x nlev, row-major)
    /// and `var_ps`.
    pub fn z_variance(&self, k: usize, cov_t: &[f64], cov_q: Option<&[f64]>, var_ps: f64) -> f64 {
        let n = self.nlev;
        let quad = |c: &[f64], m: &[f64]| -> f64 {
            (0..n).map(|i| (0..n).map(|j| c[k * n + i] * m[i * n + j] * c[k * n + j]).sum::<f64>()).sum()
        };
        let mut v = quad(&self.ct, cov_t);
        if let (Some(_), Some(cq)) = (self.q0, cov_q) {
            v += quad(&self.cq, cq);
        }
        if self.ps.is_some() {
            v += self.cps * self.cps * var_ps;
        }
        v
    }

    /// Channel of ps when the operator uses it, first channel of q when it uses q.
    pub fn sources(&self) -> (usize, Option<usize>, Option<usize>) {
        (self.t0, self.q0, self.ps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::grid::{Grid, GridKind, Vertical};
    use crate::numeric::Rng;

    /// The point-by-point form of `apply` and `adjoint` (the loops before they ran over whole channels).
    fn reference(h: &Hydrostatic, x: &mut [f64], adjoint: bool) {
        let (n, np) = (h.nlev, h.np);
        for p in 0..np {
            if adjoint {
                for k in 0..n {
                    let zk = x[(h.z0 + k) * np + p];
                    if let Some(c) = h.ps {
                        x[c * np + p] += h.cps * zk;
                    }
                    for j in 0..n {
                        x[(h.t0 + j) * np + p] += h.ct[k * n + j] * zk;
                        if let Some(q) = h.q0 {
                            x[(q + j) * np + p] += h.cq[k * n + j] * zk;
                        }
                    }
                }
                (0..n).for_each(|k| x[(h.z0 + k) * np + p] = 0.0);
            } else {
                let col: Vec<f64> = (0..n)
                    .map(|k| {
                        let mut s = h.ps.map_or(0.0, |c| h.cps * x[c * np + p]);
                        for j in 0..n {
                            s += h.ct[k * n + j] * x[(h.t0 + j) * np + p];
                            if let Some(q) = h.q0 {
                                s += h.cq[k * n + j] * x[(q + j) * np + p];
                            }
                        }
                        s
                    })
                    .collect();
                (0..n).for_each(|k| x[(h.z0 + k) * np + p] = col[k]);
            }
        }
    }

    /// The channel-wise loops give the point-by-point results bit for bit (same operations in the same order at
    /// every point), with q and ps (pressure levels) and without (sigma, t and z only).
    #[test]
    fn channel_loops_equal_the_point_loops_bit_for_bit() {
        let grid =
            Grid::new(GridKind::Regular, vec![60.0, 20.0, -20.0, -60.0], (0..8).map(|i| 45.0 * i as f64).collect())
                .unwrap();
        let pressure = Vertical::new(VerticalKind::Pressure, vec![30000.0, 60000.0, 90000.0]).unwrap();
        let sigma = Vertical::new(VerticalKind::Sigma, vec![0.3, 0.6, 0.9]).unwrap();
        let v = |n: &str, u: &str, l: usize| (n.to_string(), u.to_string(), l);
        let cases = [
            (
                pressure,
                vec![v("u", "m/s", 3), v("t", "K", 3), v("q", "kg/kg", 3), v("z", "m2 s-2", 3), v("ps", "Pa", 0)],
            ),
            (sigma, vec![v("t", "K", 3), v("z", "m2 s-2", 3), v("ps", "Pa", 0)]),
        ];
        for (vert, vars) in cases {
            let units: Vec<String> = vars.iter().map(|(_, u, _)| u.clone()).collect();
            let lay = Layout::new(grid.clone(), vert, vars).unwrap();
            let mean: Vec<f64> =
                (0..lay.nchan).map(|c| if c + 1 == lay.nchan { 1.0e5 } else { 250.0 + c as f64 }).collect();
            let h = Hydrostatic::for_layout(&lay, &units, &mean).unwrap().expect("t and z");
            let mut rng = Rng::new(4);
            for adjoint in [false, true] {
                let x = rng.normals(lay.state_len());
                let (mut a, mut b) = (x.clone(), x);
                if adjoint {
                    h.adjoint(&mut a)
                } else {
                    h.apply(&mut a)
                }
                reference(&h, &mut b, adjoint);
                assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()), "adjoint = {adjoint}");
            }
        }
    }
}
