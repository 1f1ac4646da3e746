"""Geostrophic balance of increments (numpy port of the runtime's `src/diag/balance.rs`), per hemisphere.

On sigma levels the pressure-gradient force is grad(Phi) + R T grad(ln ps). The geostrophic wind of the analysis and
of the background are computed (centred differences, interior rows) and their difference is compared with the wind
increment over |lat| > 20 deg: correlation of the 2-D vectors summed over points and levels."""
from __future__ import annotations

import numpy as np

from . import data as D

EARTH_RADIUS = 6.371e6
OMEGA = 7.292e-5
R_DRY = 287.04


def grid_factors(lat, lon):
    """Coriolis parameter f and the centred-difference spans dy, dx (m) on the interior rows, each [nlat - 2, 1]."""
    lat = np.asarray(lat, np.float64)
    la = np.radians(lat[1:-1])[:, None]
    dy = np.radians(lat[:-2] - lat[2:])[:, None] * EARTH_RADIUS
    dx = np.radians(lon[1] - lon[0]) * 2 * EARTH_RADIUS * np.cos(la)
    return 2 * OMEGA * np.sin(la), dy, dx


def geostrophic(x, lat, lon):
    """(u_g, v_g) [8, nlat, nlon] of a state x [41, nlat, nlon] (NaN on the first and last row)."""
    z, t = x[D.VAR_SLICES["z"]], x[D.VAR_SLICES["t"]]
    lnps = np.log(np.maximum(x[40], 1.0))
    nlat = len(lat)
    ug = np.full(z.shape, np.nan)
    vg = np.full(z.shape, np.nan)
    f, dy, dx = grid_factors(lat, lon)
    ex = lambda a: np.roll(a, -1, axis=-1) - np.roll(a, 1, axis=-1)
    gx = ex(z)[:, 1:-1] / dx + R_DRY * t[:, 1:-1] * ex(lnps)[None, 1:-1] / dx
    gy = (z[:, :-2] - z[:, 2:]) / dy + R_DRY * t[:, 1:-1] * (lnps[None, :-2] - lnps[None, 2:]) / dy
    ug[:, 1:nlat - 1] = -gy / f
    vg[:, 1:nlat - 1] = gx / f
    return ug, vg


def sums(xb, xa, lat, lon, hemisphere=None):
    """Sums (wind.wind, geo.geo, wind.geo) of the increment xa - xb over |lat| > 20 (one hemisphere: 'N' or 'S')."""
    uga, vga = geostrophic(xa, lat, lon)
    ugb, vgb = geostrophic(xb, lat, lon)
    du = xa[D.VAR_SLICES["u"]] - xb[D.VAR_SLICES["u"]]
    dv = xa[D.VAR_SLICES["v"]] - xb[D.VAR_SLICES["v"]]
    dug, dvg = uga - ugb, vga - vgb
    m = np.abs(lat) > 20
    if hemisphere == "N":
        m &= lat > 0
    elif hemisphere == "S":
        m &= lat < 0
    m = np.broadcast_to(m[None, :, None], du.shape) & np.isfinite(dug)
    return np.array([np.sum((du ** 2 + dv ** 2)[m]), np.sum((dug ** 2 + dvg ** 2)[m]), np.sum((du * dug + dv * dvg)[m])])


def correlation(s):
    return float(s[2] / np.sqrt(s[0] * s[1])) if s[0] > 0 and s[1] > 0 else 0.0


def balance(xb, xa, lat, lon, hemisphere=None):
    """Correlation of the wind increment with the geostrophic wind of the increment (|lat| > 20)."""
    return correlation(sums(xb, xa, lat, lon, hemisphere))
