"""Case files for the runtime: CF-style NetCDF states and radiosonde-like observation CSV."""
from __future__ import annotations

import os

import netCDF4
import numpy as np

from . import data as D

# observation networks and errors (documented in the model card)
OBS_ERR = {"u": 1.5, "v": 1.5, "t": 0.8, "ps": 100.0}
# q: a radiosonde's relative-humidity error (about 10 % of saturation) turned into specific humidity, so dry air does
# not get microscopic errors: sigma_q = Q_RH_ERR * q_sat(T, p)
Q_RH_ERR = 0.1
N_STATIONS = 300       # radiosonde-like columns
N_PS_POINTS = 1500     # surface-pressure points of the mass-only network
Q_MIN_SIGMA = 0.34
# Humidity is observed only where a radiosonde sensor resolves it: not in air drier than 0.01 g/kg (SPEEDY also
# clips q at exactly 0, and "observing" q = 0 with a 10 %-of-value error made the analysis Hessian's condition
# number 3.7e4 on the sample case; see the model card).
Q_MIN_VALUE = 1e-5


def write_state(path, x, lat, lon, sig, title=""):
    """x: (41, nlat, nlon) physical units -> CF NetCDF with u,v,t,q,z (lev,lat,lon) and ps (lat,lon)."""
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        ds.Conventions = "CF-1.8"
        ds.title = title
        ds.createDimension("lev", len(sig))
        ds.createDimension("lat", len(lat))
        ds.createDimension("lon", len(lon))
        v = ds.createVariable("lev", "f8", ("lev",))
        v[:] = sig
        v.units = "1"
        v.long_name = "sigma (p/ps), full levels, top to bottom"
        v.standard_name = "atmosphere_sigma_coordinate"
        v.positive = "down"
        v = ds.createVariable("lat", "f8", ("lat",))
        v[:] = lat
        v.units = "degrees_north"
        v.standard_name = "latitude"
        v = ds.createVariable("lon", "f8", ("lon",))
        v[:] = lon
        v.units = "degrees_east"
        v.standard_name = "longitude"
        for name, units, nlev, long in D.VARS:
            sl = D.VAR_SLICES[name]
            dims = ("lev", "lat", "lon") if nlev else ("lat", "lon")
            var = ds.createVariable(name, "f4", dims)
            var[:] = x[sl] if nlev else x[sl][0]
            var.units = units
            var.long_name = long


def read_state(path):
    with netCDF4.Dataset(path) as ds:
        return np.concatenate([np.asarray(ds[n][:], np.float64).reshape(-1, ds.dimensions["lat"].size,
                                                                       ds.dimensions["lon"].size)
                               for n, *_ in D.VARS])


# SPEEDY's T30 surface fields (land-sea mask, orography), copied from jcm 3.0.0's packaged boundary file
# data/bc/t30/clim/surface.nc, latitudes north to south: the position inputs of the autoencoder and the step model
# need them, and a torch-only environment (no jcm) must still be able to train and export.
SURFACE_FILE = os.path.join(os.path.dirname(__file__), "speedy_t31_surface.npz")


def _surface(name, lat, lon):
    with np.load(SURFACE_FILE) as f:
        field, flat, flon = f[name], f["lat"], f["lon"]
    if len(flat) != len(lat) or len(flon) != len(lon) or np.abs(flat - np.asarray(lat)).max() > 0.01 \
            or np.abs(flon - np.asarray(lon)).max() > 1e-6:
        raise ValueError(f"{SURFACE_FILE}: the SPEEDY surface fields are on the T30/T31 48 x 96 grid, not on "
                         f"a {len(lat)} x {len(lon)} grid")
    return np.asarray(field, np.float64)


def land_mask(lat, lon):
    """SPEEDY land-sea mask on (lat N->S, lon) (SURFACE_FILE)."""
    return _surface("lsm", lat, lon)


def orography(lat, lon):
    """SPEEDY surface geopotential height (m) on (lat N->S, lon) (SURFACE_FILE)."""
    return _surface("orog", lat, lon)


def position_fields(lat, lon):
    """The autoencoder's fixed position inputs on the bundle grid: sin/cos latitude, land-sea mask, orography."""
    from .model import position_fields as pf
    return pf(lat, lon, land_mask(lat, lon), orography(lat, lon))


def bilinear_weights(lat, lon, plat, plon):
    """Bilinear interpolation stencil at points (periodic in lon) on lat(N->S), lon: rows i0 (south), i1 (north),
    columns j0, j1 and weights wx (towards j1), wy (towards i1)."""
    nlon = len(lon)
    dlon = lon[1] - lon[0]
    fx = (np.mod(plon - lon[0], 360.0)) / dlon
    j0 = np.floor(fx).astype(int) % nlon
    j1 = (j0 + 1) % nlon
    wx = fx - np.floor(fx)
    la = lat[::-1]  # increasing
    i = np.clip(np.searchsorted(la, plat) - 1, 0, len(la) - 2)
    wy = (plat - la[i]) / (la[i + 1] - la[i])
    i0 = len(lat) - 1 - i        # index in N->S order of la[i]
    i1 = i0 - 1                  # index of la[i+1]
    return i0, i1, j0, j1, wx, wy


def bilinear(field, lat, lon, plat, plon):
    """Bilinear interpolation of field[..., lat(N->S), lon] at points (periodic in lon)."""
    i0, i1, j0, j1, wx, wy = bilinear_weights(lat, lon, plat, plon)
    f = field
    return ((1 - wy) * ((1 - wx) * f[..., i0, j0] + wx * f[..., i0, j1])
            + wy * ((1 - wx) * f[..., i1, j0] + wx * f[..., i1, j1]))


def stations(lat, lon, n=N_STATIONS, seed=42):
    """Radiosonde-like network: n random positions with |lat| <= 80, over land of the SPEEDY mask
    (bilinear land fraction > 0.5), plus no two stations closer than ~250 km."""
    rng = np.random.default_rng(seed)
    lsm = land_mask(lat, lon)
    pts = []
    while len(pts) < n:
        plat = float(np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-60)), np.sin(np.radians(80))))))
        plon = float(rng.uniform(0, 360))
        if bilinear(lsm, lat, lon, np.array([plat]), np.array([plon]))[0] <= 0.5:
            continue
        if any(_gc(plat, plon, a, b) < 250.0 for a, b in pts):
            continue
        pts.append((round(plat, 3), round(plon, 3)))
    return np.array(pts)


def uniform_columns(n, seed, max_lat=80.0):
    """n observation columns (lat, lon) uniform on the sphere (uniform in sin(lat)) within |lat| <= max_lat: the
    robustness matrix's "uniform" (300) and "sparse" (100) networks, a new draw (seed) in every case."""
    rng = np.random.default_rng(seed)
    s = np.sin(np.radians(max_lat))
    plat = np.degrees(np.arcsin(rng.uniform(-s, s, n)))
    return np.stack([np.round(plat, 3), np.round(rng.uniform(0, 360, n), 3)], axis=1)


def _gc(a1, o1, a2, o2):
    p1, p2 = np.radians(a1), np.radians(a2)
    c = np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(np.radians(o2 - o1))
    return 6371.0 * np.arccos(np.clip(c, -1, 1))


def q_sat(t, p):
    """Saturation specific humidity (kg/kg) at temperature t (K) and pressure p (Pa), Bolton's vapour pressure."""
    es = 611.2 * np.exp(17.67 * (t - 273.15) / (t - 29.65))
    return 0.622 * es / np.maximum(p - 0.378 * es, 1.0)


def ps_points(n=N_PS_POINTS, seed=43):
    """Surface-pressure network of the mass-only case: n points uniform on the sphere within |lat| <= 85."""
    rng = np.random.default_rng(seed)
    plat = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-85)), np.sin(np.radians(85)), n)))
    return np.stack([np.round(plat, 3), np.round(rng.uniform(0, 360, n), 3)], axis=1)


def make_obs(truth, lat, lon, sig, st, seed, network="sonde", ps_pts=None):
    """Observations = truth interpolated + Gaussian noise. Returns a list of rows.

    network "sonde": u, v, t on every level, q on levels sigma >= 0.34 where the truth has q >= 1e-5 kg/kg (error
    Q_RH_ERR * q_sat), and ps at each station. "mass": t profiles at the same stations and ps at `ps_pts`."""
    rng = np.random.default_rng(seed)
    rows = []
    pvars = ["u", "v", "t", "q"] if network == "sonde" else ["t"]
    for plat, plon in st:
        a, b = np.array([plat]), np.array([plon])
        ps = bilinear(truth[40], lat, lon, a, b)[0]
        tprof = bilinear(truth[D.VAR_SLICES["t"]], lat, lon, a, b)[:, 0]
        for v in pvars:
            prof = bilinear(truth[D.VAR_SLICES[v]], lat, lon, a, b)[:, 0]
            for k, s in enumerate(sig):
                if v == "q":
                    if s < Q_MIN_SIGMA - 1e-6:
                        continue
                    # the noise is drawn before the dryness test, so the other observations keep their values
                    noise = rng.standard_normal()
                    if prof[k] < Q_MIN_VALUE:
                        continue
                    err = float(Q_RH_ERR * q_sat(tprof[k], s * ps))
                else:
                    err = OBS_ERR[v]
                    noise = rng.standard_normal()
                rows.append((v, plat, plon, f"{s:.6g}", prof[k] + err * noise, err))
        if network == "sonde":
            rows.append(("ps", plat, plon, "", ps + OBS_ERR["ps"] * rng.standard_normal(), OBS_ERR["ps"]))
    if network == "mass":
        pts = ps_points() if ps_pts is None else ps_pts
        psv = bilinear(truth[40], lat, lon, pts[:, 0], pts[:, 1])
        for (plat, plon), ps in zip(pts, psv):
            rows.append(("ps", float(plat), float(plon), "", ps + OBS_ERR["ps"] * rng.standard_normal(), OBS_ERR["ps"]))
    return rows


def write_obs(path, rows):
    with open(path, "w") as f:
        f.write("var,lat,lon,level,value,sigma\n")
        for v, a, b, lev, val, err in rows:
            f.write(f"{v},{a:.3f},{b:.3f},{lev},{val:.7g},{err:.6g}\n")


def write_case(d, truth, bg, lat, lon, sig, st, seed, title, networks=(("obs.csv", "sonde"),)):
    """truth.nc, background.nc and one observation file per (file name, network). Returns the observation counts."""
    os.makedirs(d, exist_ok=True)
    write_state(os.path.join(d, "truth.nc"), truth, lat, lon, sig, "truth (nature run) " + title)
    write_state(os.path.join(d, "background.nc"), bg, lat, lon, sig, "48 h forecast from perturbed truth " + title)
    counts = {}
    for k, (fname, net) in enumerate(networks):
        rows = make_obs(truth, lat, lon, sig, st, seed + 100000 * k, network=net)
        write_obs(os.path.join(d, fname), rows)
        counts[fname] = len(rows)
    return counts
