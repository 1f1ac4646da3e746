"""Ensemble members for the validation suite, and the first latent-EnVar comparison (issue 24).

For a recipe-(b) case of the robustness matrix (`DATA/matrix/b48/case_LLLL`: background = the 48 h forecast from the
truth of launch day L plus a smooth random temperature and vorticity perturbation, seed 20261206 + L), the members
are K more forecasts of the same recipe from the same launch with other perturbation seeds (20261206 + 1000 k + L,
k = 1..K): a forecast ensemble whose spread samples exactly the background's error distribution (the matrix's
background is not a member). They are written as state files DATA/matrix/b48/case_LLLL/members/member_KK.nc.

Then, per case and network, four analyses by the CLI on the same background and observations:
  3dvar          static B
  3denvar        static B + gamma x model-space ensemble B (members localised on the grid: 3dvar with --ensemble)
  hybrid         latent + static (the shipped weights)
  hybrid-envar   latent + static + gamma x latent ensemble B (localised on the latent grid: hybrid with --ensemble)
scored against the truth (analysis RMSE / background RMSE per variable, global and per band) with the increment's
geostrophic balance. Options: the bundle's and the CLI's defaults (gamma 0.5, localisation 2500 km); K and the
localisation are NOT tuned here.

  python -m latentda_train.ensemble_cases --out DATA --launches 610,625,640,655,670,685 --members 10
"""
import argparse
import glob
import json
import os
import subprocess
import time

import numpy as np

from . import balance as BL
from . import cases as CS
from . import data as D
from . import suite as SU
from .forecasts import RANDOM_SEED

A_SEED, A_T_RMS, A_WIND_FACTOR = 20261126, 0.7, 1.6   # recipe a of the matrix (latentda-forecasts defaults)
METHODS = {"3dvar": ("3dvar", False), "3denvar": ("3dvar", True), "hybrid": ("hybrid", False),
           "hybrid-envar": ("hybrid", True)}
NETS = ("uniform", "sonde")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_members(out, launches, k, log=print, recipe="b48"):
    """K 48 h forecasts per launch of the case's own recipe, written when missing: recipe b48, seeds RANDOM_SEED +
    1000 j + L (j = 1..K); recipe a48 (nature-difference perturbations, `Forecaster.run` with the suite's t_rms 0.7
    and wind factor 1.6), other day pairs drawn with seeds 20261126 + 1000 j."""
    from . import forecasts as F
    lat, lon, sig = D.grid(out)
    fcst = None
    for L in launches:
        d = os.path.join(out, "matrix", recipe, f"case_{L:04d}", "members")
        os.makedirs(d, exist_ok=True)
        for j in range(1, k + 1):
            fn = os.path.join(d, f"member_{j:02d}.nc")
            if os.path.exists(fn):
                continue
            fcst = fcst or F.Forecaster(out)
            t0 = time.time()
            if recipe == "b48":
                r = fcst.run_random(L, seed=RANDOM_SEED + 1000 * j, hours=(48,))
                what = f"recipe b, seed {r['seed']}"
            else:
                fcst.seed = A_SEED + 1000 * j
                r = fcst.run(L, A_T_RMS, A_WIND_FACTOR)
                what = f"recipe a, days {r['a']} - {r['b']}"
            CS.write_state(fn + ".partial", np.asarray(r["fc48"], np.float64), lat, lon, sig,
                           f"member {j} of launch {L}: {what}")
            os.replace(fn + ".partial", fn)
            log(f"launch {L} member {j}: {time.time() - t0:.1f} s")


def run(latentda, bundle, case, net, method, ensemble, k, tmp, extra):
    m, with_members = METHODS[method]
    an, rep = os.path.join(tmp, f"{method}_{net}.nc"), os.path.join(tmp, f"{method}_{net}.json")
    cmd = [latentda, "analyse", "--bundle", bundle, "--background", os.path.join(case, "background.nc"), "--obs",
           os.path.join(case, f"obs_{net}.csv"), "--method", m, "--output", an, "--report", rep, "--backend", "auto"]
    if with_members:
        files = sorted(glob.glob(os.path.join(case, "members", "member_*.nc")))[:k]
        cmd += ["--ensemble", ",".join(files)]
    cmd += extra
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return CS.read_state(an), json.load(open(rep))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("LATENTDA_DATA", "data"), help="data folder (as latentda-matrix)")
    ap.add_argument("--launches", default="610,625,640,655,670,685")
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--recipe", default="b48", choices=("b48", "a48"), help="matrix recipe of the cases")
    ap.add_argument("--bundle", default=os.path.join(REPO, "models", "speedy-t31"))
    ap.add_argument("--latentda", default=os.path.join(REPO, "target", "release", "latentda"))
    ap.add_argument("--extra", default="", help="more CLI arguments for every analysis, e.g. '--ensemble-gamma 1.0'")
    a = ap.parse_args(argv)
    launches = [int(x) for x in a.launches.split(",")]
    make_members(a.out, launches, a.members, recipe=a.recipe)
    lat, lon, _ = D.grid(a.out)
    names = [v[0] for v in D.VARS]
    rows = []
    for L in launches:
        case = os.path.join(a.out, "matrix", a.recipe, f"case_{L:04d}")
        xt, xb = CS.read_state(os.path.join(case, "truth.nc")), CS.read_state(os.path.join(case, "background.nc"))
        rb = SU.band_rmse(xb - xt, lat)
        tmp = os.path.join(case, "envar")
        os.makedirs(tmp, exist_ok=True)
        for net in NETS:
            for method in METHODS:
                t0 = time.time()
                xa, rep = run(a.latentda, a.bundle, case, net, method, None, a.members, tmp, a.extra.split())
                ra = SU.band_rmse(xa - xt, lat)
                bal = {h: BL.balance(xb, xa, lat, lon, h) for h in ("N", "S")}
                ens = rep.get("ensemble") or {}
                rows.append(dict(launch=L, net=net, method=method, seconds=time.time() - t0, bal_n=bal["N"],
                                 bal_s=bal["S"], ratio={b: {v: ra[b][v] / rb[b][v] for v in names} for b in ra},
                                 spread_skill=ens.get("spread_skill")))
                r = rows[-1]["ratio"]["global"]
                print(f"{L} {net:8s} {method:13s} " + " ".join(f"{v} {r[v]:.3f}" for v in names)
                      + f"  bal {bal['N']:.2f}/{bal['S']:.2f}  {rows[-1]['seconds']:.1f} s", flush=True)
    out = os.path.join(a.out, "matrix", f"envar_{a.recipe}.json")
    json.dump(rows, open(out, "w"), indent=1)
    print("\nmean analysis RMSE / background RMSE over the cases (global; bold = best)")
    for net in NETS:
        print(f"\n{net} network, {len(launches)} {a.recipe} cases, K = {a.members}")
        print("| method | " + " | ".join(names) + " | balance N/S |")
        print("|---|" + "---|" * (len(names) + 1))
        means = {m: {v: np.mean([r["ratio"]["global"][v] for r in rows if r["net"] == net and r["method"] == m])
                     for v in names} for m in METHODS}
        for m in METHODS:
            bn = np.mean([r["bal_n"] for r in rows if r["net"] == net and r["method"] == m])
            bs = np.mean([r["bal_s"] for r in rows if r["net"] == net and r["method"] == m])
            cells = [(f"**{means[m][v]:.3f}**" if means[m][v] == min(means[x][v] for x in METHODS) else f"{means[m][v]:.3f}")
                     for v in names]
            print(f"| {m} | " + " | ".join(cells) + f" | {bn:.2f}/{bs:.2f} |")
        for band in ("nh", "tropics", "sh"):
            if band in rows[0]["ratio"]:
                line = {m: np.mean([np.mean(list(r["ratio"][band].values())) for r in rows
                                    if r["net"] == net and r["method"] == m]) for m in METHODS}
                print(f"  {band}: mean over variables " + ", ".join(f"{m} {line[m]:.3f}" for m in METHODS))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
