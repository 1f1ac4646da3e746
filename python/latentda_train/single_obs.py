"""Single-observation experiments: the wind response of each method to one temperature or surface-pressure
observation at 45N and at 45S (BRIEF section 4: geostrophically consistent, cyclonic around a low in each hemisphere).

    latentda-single-obs --bundle models/speedy-t31 [--case models/speedy-t31/sample] [--json out.json]

For each experiment the observation's innovation is fixed (t: +1 K at sigma 0.51; ps: -100 Pa, a low), the background
is the case's background, and the CLI analyses it with each method. Printed per experiment and method: the largest
wind increment, the relative vorticity of the wind increment at the observation (averaged within 600 km; for the
low, positive = cyclonic in the north, negative = cyclonic in the south), the sign expected from geostrophy, and the
balance (wind increment vs geostrophic wind of the increment) within 2500 km of the observation."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile

import netCDF4
import numpy as np

from . import balance as BL
from . import cases as CS
from . import data as D

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
EXPERIMENTS = [  # (name, var, lat, lon, sigma level or None, innovation)
    ("t +1 K at 45N", "t", 45.0, 180.0, 0.51, 1.0),
    ("t +1 K at 45S", "t", -45.0, 180.0, 0.51, 1.0),
    ("ps -100 Pa at 45N", "ps", 45.0, 180.0, None, -100.0),
    ("ps -100 Pa at 45S", "ps", -45.0, 180.0, None, -100.0),
]


def vorticity(u, v, lat, lon):
    """Relative vorticity (1/s) of (u, v) [nlat, nlon] by centred differences (NaN on the edge rows)."""
    R = BL.EARTH_RADIUS
    la = np.radians(lat)[:, None]
    dl = np.radians(lon[1] - lon[0])
    dvdx = (np.roll(v, -1, axis=1) - np.roll(v, 1, axis=1)) / (2 * dl * R * np.cos(la))
    ucos = u * np.cos(la)
    zeta = np.full(u.shape, np.nan)
    dy = np.radians(lat[:-2] - lat[2:])[:, None] * R
    zeta[1:-1] = dvdx[1:-1] - (ucos[:-2] - ucos[2:]) / dy / np.cos(la[1:-1])
    return zeta


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=os.path.join(REPO, "models", "speedy-t31"))
    ap.add_argument("--case", default=None, help="folder with background.nc (default: the bundle's sample)")
    ap.add_argument("--methods", default="3dvar,l3dvar,hybrid")
    ap.add_argument("--latentda", default=os.path.join(REPO, "target", "release", "latentda"))
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    case = a.case or os.path.join(a.bundle, "sample")
    bgf = os.path.join(case, "background.nc")
    xb = CS.read_state(bgf)
    with netCDF4.Dataset(bgf) as ds:
        lat, lon, sig = (np.asarray(ds[k][:], np.float64) for k in ("lat", "lon", "lev"))
    LAT, LON = np.meshgrid(lat, lon, indexing="ij")
    out = []
    print("| experiment | method | max wind increment (m/s) | vorticity at obs, level | expected sign | "
          "local balance |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, var, plat, plon, lev, innov in EXPERIMENTS:
            if var == "ps":
                hx = CS.bilinear(xb[40], lat, lon, np.array([plat]), np.array([plon]))[0]
                k_lev = len(sig) - 1     # the wind response of a surface low: lowest level
                sigma_o = 50.0
            else:
                k = int(np.argmin(np.abs(sig - lev)))
                hx = CS.bilinear(xb[D.VAR_SLICES[var]][k], lat, lon, np.array([plat]), np.array([plon]))[0]
                k_lev = max(k - 2, 0)    # a warm column: heights rise above it, anticyclonic flow aloft
                sigma_o = 0.5
            obs = os.path.join(tmp, "obs.csv")
            CS.write_obs(obs, [(var, plat, plon, "" if lev is None else f"{lev:g}", hx + innov, sigma_o)])
            # expected sign of the relative vorticity: low -> cyclonic (sign of f); warm column -> anticyclonic aloft
            fsign = np.sign(plat)
            expected = fsign if var == "ps" else -fsign
            for m in a.methods.split(","):
                an = os.path.join(tmp, f"an_{m}.nc")
                p = subprocess.run([a.latentda, "analyse", "--bundle", a.bundle, "--method", m, "--background", bgf,
                                    "--obs", obs, "--output", an, "--output-mode", "increment"],
                                   capture_output=True, text=True)
                if p.returncode != 0:
                    raise SystemExit(p.stderr)
                dx = CS.read_state(an)
                du, dv = dx[D.VAR_SLICES["u"]], dx[D.VAR_SLICES["v"]]
                speed = np.sqrt(du ** 2 + dv ** 2)
                zeta = vorticity(du[k_lev], dv[k_lev], lat, lon)
                dist = CS._gc(plat, plon, LAT, LON)
                near = (dist < 600) & np.isfinite(zeta)
                zmean = float(np.mean(zeta[near])) if near.any() else float("nan")
                # local balance within 2500 km (all levels)
                ug, vg = BL.geostrophic(xb + dx, lat, lon)
                ugb, vgb = BL.geostrophic(xb, lat, lon)
                m_ = (dist < 2500)[None] & np.isfinite(ug) & (np.abs(LAT) > 20)[None]
                dug, dvg = ug - ugb, vg - vgb
                s = [np.sum((du ** 2 + dv ** 2)[m_]), np.sum((dug ** 2 + dvg ** 2)[m_]), np.sum((du * dug + dv * dvg)[m_])]
                bal = BL.correlation(s)
                ok = np.sign(zmean) == expected if speed.max() > 1e-6 else False
                row = dict(experiment=name, method=m, max_wind=float(speed.max()), vorticity=zmean,
                           level=float(sig[k_lev]), expected_sign=int(expected), consistent=bool(ok), balance=bal)
                out.append(row)
                print(f"| {name} | {m} | {speed.max():.3f} | {zmean:+.2e} at sigma {sig[k_lev]:g} | "
XX
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
