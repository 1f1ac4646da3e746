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
  hybrid-menvar  latent + static + gamma x the model-space ensemble B of 3denvar (--ensemble-space model)
scored against the truth (analysis RMSE / background RMSE per variable, global and per band) with the increment's
geostrophic balance. Options: the bundle's and the CLI's defaults (gamma 0.5, localisation 2500 km); K and the
localisation are NOT tuned here.

  python -m latentda_train.ensemble_cases --out DATA --launches 610,625,640,655,670,685 --members 10

Other recipes (`--recipe`):
  a48   the matrix's recipe (a) cases, members = more recipe-(a) forecasts of the same launch (other day pairs);
  b48t  recipe (b) at TRAINING-period launches (default 250,330,410,490; cases under DATA/matrix/b48_training, made
        here as the matrix makes its cases): where K and the localisation lengths are chosen (`--sweep`), so that
        the validation-period cells and the cycling are not tuned on;
  c6    the matrix's cycled-error cells (6 h backgrounds of a 3D-Var cycle, uniform network): members = the cycle's
        own time-lagged ensemble (leads 6 .. 6 K h, member 1 = the background), saved by
        `cycled_cases --members K` (run here when missing); the launches are the saved cycle numbers.

`--sweep K1,K2:L1,L2` runs the two EnVar methods for every K and localisation half-width L (the same L on the latent
and on the model grid) and prints, per network, the mean analysis / background RMSE ratio over the variables for each
(K, L): the training-period choice (issue 24).
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
           "hybrid-envar": ("hybrid", True), "hybrid-menvar": ("hybrid", True)}
# hybrid-menvar: latent + static + the model-space ensemble B of 3denvar (--ensemble-space model): the latent B
# added to a hybrid 3DEnVar
METHOD_ARGS = {"hybrid-menvar": ["--ensemble-space", "model"]}
TRAINING_LAUNCHES = "250,330,410,490"   # recipe b48t: training period (< 600), four seasons apart
RECIPE_DIRS = {"b48": "b48", "a48": "a48", "b48t": "b48_training", "c6": "c6"}
NETS = ("uniform", "sonde")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_members(out, launches, k, log=print, recipe="b48"):
    """K 48 h forecasts per launch of the case's own recipe, written when missing: recipe b48, seeds RANDOM_SEED +
    1000 j + L (j = 1..K); recipe a48 (nature-difference perturbations, `Forecaster.run` with the suite's t_rms 0.7
    and wind factor 1.6), other day pairs drawn with seeds 20261126 + 1000 j."""
    from . import forecasts as F
    lat, lon, sig = D.grid(out)
    if recipe == "c6":
        return c6_members(out, launches, k, log)
    fcst = None
    for L in launches:
        d = os.path.join(case_dir(out, recipe, L), "members")
        os.makedirs(d, exist_ok=True)
        for j in range(1, k + 1):
            fn = os.path.join(d, f"member_{j:02d}.nc")
            if os.path.exists(fn):
                continue
            fcst = fcst or F.Forecaster(out)
            t0 = time.time()
            if recipe in ("b48", "b48t"):
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


def case_dir(out, recipe, label):
    """The case folder of launch (or, for c6, saved cycle) `label`."""
    name = f"case_c{label:04d}" if recipe == "c6" else f"case_{label:04d}"
    return os.path.join(out, "matrix", RECIPE_DIRS[recipe], name)


def make_training_cases(out, launches, log=print):
    """Recipe (b) cases at training-period launches, made like the matrix's (truth, background, obs files of both
    networks) under DATA/matrix/b48_training."""
    from . import matrix as MX
    MX.RECIPES.setdefault("b48t", MX.RECIPES["b48"])
    MX.RECIPE_FOLDER.setdefault("b48t", RECIPE_DIRS["b48t"])
    MX.make_cases(out, "b48t", launches, NETS, log)


def c6_members(out, cycles, k, log=print):
    """The c6 cells' members: the 3D-Var cycle's lagged ensemble (`cycled_cases --members k`, rerun when missing,
    with the matrix's site bundle and ONNX Runtime as the matrix ran it), written as member files per case."""
    from . import cycled_cases as CC
    from . import matrix as MX
    lat, lon, sig = D.grid(out)
    cdir = os.path.join(out, "matrix", "cycled")
    if not all(os.path.exists(CC.members_file(cdir, k, c)) for c in cycles):
        lib = MX.ort_library()
        CC.run(out, cdir, bundle=os.path.join(out, "matrix", "bundle_site"), members=k, log=log,
               extra_options=f'backend = "ort"\nort_library = "{lib}"')
    for c in cycles:
        d = os.path.join(case_dir(out, "c6", c), "members")
        os.makedirs(d, exist_ok=True)
        z = np.load(CC.members_file(cdir, k, c))
        for j, m in enumerate(z["members"][:k], 1):
            fn = os.path.join(d, f"member_{j:02d}.nc")
            if not os.path.exists(fn):
                CS.write_state(fn + ".partial", np.asarray(m, np.float64), lat, lon, sig,
                               f"member {j} of cycle {c}: the {6 * j} h forecast of a cycled 3D-Var analysis")
                os.replace(fn + ".partial", fn)


def run(latentda, bundle, case, net, method, ensemble, k, tmp, extra):
    m, with_members = METHODS[method]
    tag = f"{method}_{net}" + (f"_k{k}" if with_members else "") + "".join(f"_{x.strip('-')}" for x in extra)
    an, rep = os.path.join(tmp, f"{tag}.nc"), os.path.join(tmp, f"{tag}.json")
    cmd = [latentda, "analyse", "--bundle", bundle, "--background", os.path.join(case, "background.nc"), "--obs",
           os.path.join(case, f"obs_{net}.csv"), "--method", m, "--output", an, "--report", rep, "--backend", "auto"]
    if with_members:
        files = sorted(glob.glob(os.path.join(case, "members", "member_*.nc")))[:k]
        if len(files) < k:
            raise RuntimeError(f"{case}: {len(files)} member files, {k} wanted")
        cmd += ["--ensemble", ",".join(files)] + METHOD_ARGS.get(method, [])
    cmd += extra
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return CS.read_state(an), json.load(open(rep))


def retention(out, recipe, launches, k, bundle, log=print):
    """How much of the members' error structure the latent ensemble B can represent: per case, the correlation
    between the members' normalised perturbations dx_k = (x_k - mean) / sd and their latent images
    D'(z_b)(z_k - mean z), z_k = E(N(x_k)), z_b = E(N(x_b)) (the bundle's encoder and decoder TL graphs run by ONNX
    Runtime), per variable (area-weighted) and per band; and the ratio of their norms. Returns the per-case rows."""
    import netCDF4
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    enc = ort.InferenceSession(os.path.join(bundle, "encoder.onnx"), so)
    tl = ort.InferenceSession(os.path.join(bundle, "decoder_tl.onnx"), so)
    with netCDF4.Dataset(os.path.join(bundle, "normalisation.nc")) as n:
        mean = np.asarray(n["mean"][:], np.float32)[:, None, None]
        sd = np.asarray(n["std"][:], np.float32)[:, None, None]
    lat, _, _ = D.grid(out)
    w = np.sqrt(np.cos(np.radians(lat)))[None, None, :, None]
    encode = lambda x: enc.run(None, {"x": ((x - mean) / sd)[None].astype(np.float32)})[0]
    bands = {"nh": lat > 20, "tropics": np.abs(lat) <= 20, "sh": lat < -20}
    rows = []
    for L in launches:
        case = case_dir(out, recipe, L)
        files = sorted(glob.glob(os.path.join(case, "members", "member_*.nc")))[:k]
        m = np.stack([CS.read_state(f) for f in files]).astype(np.float32)
        zb = encode(CS.read_state(os.path.join(case, "background.nc")).astype(np.float32))
        zs = np.concatenate([encode(x) for x in m])
        dz = zs - zs.mean(0, keepdims=True)
        dx = (m - m.mean(0, keepdims=True)) / sd
        px = np.concatenate([tl.run(None, {"z": zb, "dz": dz[j:j + 1]})[0] for j in range(len(m))])
        corr = lambda a, b: float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
        r = {"case": L, "k": len(m)}
        for v, sl in D.VAR_SLICES.items():
            a, b = dx[:, sl] * w, px[:, sl] * w
            r[v] = corr(a, b)
            r[v + "_norm"] = float(np.sqrt((b * b).sum() / (a * a).sum()))
        for band, sel in bands.items():
            r[band] = corr(dx[:, :, sel], px[:, :, sel])
        rows.append(r)
    names = list(D.VAR_SLICES) + list(bands)
    log(f"{recipe}, {len(rows)} cases, K = {rows[0]['k']}: corr(D'(z_b) dz_k, dx_k), mean over the cases")
    log("  " + " ".join(f"{v} {np.mean([r[v] for r in rows]):.2f}" for v in names))
    log("  |D'(z_b) dz| / |dx|: " + " ".join(f"{v} {np.mean([r[v + '_norm'] for r in rows]):.2f}"
                                            for v in D.VAR_SLICES))
    return rows


def score_case(a, recipe, label, nets, jobs, log=print):
    """Runs `jobs` [(method, K, extra CLI args)] on case `label` for every network; rows of scores."""
    lat, lon, _ = D.grid(a.out)
    names = [v[0] for v in D.VARS]
    case = case_dir(a.out, recipe, label)
    xt, xb = CS.read_state(os.path.join(case, "truth.nc")), CS.read_state(os.path.join(case, "background.nc"))
    rb = SU.band_rmse(xb - xt, lat)
    tmp = os.path.join(case, "envar")
    os.makedirs(tmp, exist_ok=True)
    rows = []
    for net in nets:
        for method, k, extra in jobs:
            t0 = time.time()
            xa, rep = run(a.latentda, a.bundle, case, net, method, None, k, tmp, extra)
            ra = SU.band_rmse(xa - xt, lat)
            bal = {h: BL.balance(xb, xa, lat, lon, h) for h in ("N", "S")}
            ens = rep.get("ensemble") or {}
            rows.append(dict(launch=label, net=net, method=method, k=k if METHODS[method][1] else 0,
                             extra=" ".join(extra), seconds=time.time() - t0, bal_n=bal["N"], bal_s=bal["S"],
                             ratio={b: {v: ra[b][v] / rb[b][v] for v in names} for b in ra},
                             spread_skill=ens.get("spread_skill")))
            r = rows[-1]["ratio"]["global"]
            log(f"{label} {net:8s} {method:13s} K {rows[-1]['k']:2d} {' '.join(extra):>60s} "
                + " ".join(f"{v} {r[v]:.3f}" for v in names)
                + f"  bal {bal['N']:.2f}/{bal['S']:.2f}  {rows[-1]['seconds']:.1f} s")
    return rows


def table(rows, recipe, n_cases, k, nets, methods):
    names = [v[0] for v in D.VARS]
    print("\nmean analysis RMSE / background RMSE over the cases (global; bold = best)")
    for net in nets:
        print(f"\n{net} network, {n_cases} {recipe} cases, K = {k}")
        print("| method | " + " | ".join(names) + " | balance N/S |")
        print("|---|" + "---|" * (len(names) + 1))
        means = {m: {v: np.mean([r["ratio"]["global"][v] for r in rows if r["net"] == net and r["method"] == m])
                     for v in names} for m in methods}
        for m in methods:
            bn = np.mean([r["bal_n"] for r in rows if r["net"] == net and r["method"] == m])
            bs = np.mean([r["bal_s"] for r in rows if r["net"] == net and r["method"] == m])
            cells = [(f"**{means[m][v]:.3f}**" if means[m][v] == min(means[x][v] for x in methods) else f"{means[m][v]:.3f}")
                     for v in names]
            print(f"| {m} | " + " | ".join(cells) + f" | {bn:.2f}/{bs:.2f} |")
        for band in ("nh", "tropics", "sh"):
            if band in rows[0]["ratio"]:
                line = {m: np.mean([np.mean(list(r["ratio"][band].values())) for r in rows
                                    if r["net"] == net and r["method"] == m]) for m in methods}
                print(f"  {band}: mean over variables " + ", ".join(f"{m} {line[m]:.3f}" for m in methods))


def sweep_table(rows, nets, ks, ls):
    """Per network and EnVar method: the mean over cases and variables of the ratio, for every (K, L)."""
    names = [v[0] for v in D.VARS]
    print("\nsweep: mean over the cases and the six variables of analysis RMSE / background RMSE (global)")
    best = {}
    for net in nets:
        for m in ("3denvar", "hybrid-envar"):
            print(f"\n{net}, {m}: rows K, columns localisation half-width (km)")
            print("| K | " + " | ".join(str(l) for l in ls) + " |")
            print("|---|" + "---|" * len(ls))
            grid = {}
            for k in ks:
                for l in ls:
                    sel = [r for r in rows if r["net"] == net and r["method"] == m and r["k"] == k
                           and r["extra"].endswith(f"-km {l}")]
                    grid[k, l] = float(np.mean([np.mean([r["ratio"]["global"][v] for v in names]) for r in sel]))
                lo = min(grid.values())
                print(f"| {k} | " + " | ".join(f"**{grid[k, l]:.4f}**" if grid[k, l] == lo else f"{grid[k, l]:.4f}"
                                             for l in ls) + " |")
            best[net, m] = min(grid, key=grid.get)
            print(f"  best: K {best[net, m][0]}, L {best[net, m][1]} km")
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("LATENTDA_DATA", "data"), help="data folder (as latentda-matrix)")
    ap.add_argument("--launches", default=None, help="launch days (c6: saved cycle numbers); default per recipe")
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--recipe", default="b48", choices=tuple(RECIPE_DIRS), help="cases (see above)")
    ap.add_argument("--bundle", default=os.path.join(REPO, "models", "speedy-t31"))
    ap.add_argument("--latentda", default=os.path.join(REPO, "target", "release", "latentda"))
    ap.add_argument("--extra", default="", help="more CLI arguments for every analysis, e.g. '--ensemble-gamma 1.0'")
    ap.add_argument("--retention", action="store_true",
                    help="instead of analyses: how much of the members' structure the latent ensemble B represents")
    ap.add_argument("--sweep", default=None, metavar="K1,K2:L1,L2",
                    help="run the EnVar methods for every K and localisation half-width L (km) instead")
    a = ap.parse_args(argv)
    if a.recipe == "c6":
        from . import cycled_cases as CC
        default = ",".join(str(c) for c in CC.saved_cycles())
    else:
        default = TRAINING_LAUNCHES if a.recipe == "b48t" else "610,625,640,655,670,685"
    launches = [int(x) for x in (a.launches or default).split(",")]
    if a.recipe == "c6" and a.bundle == os.path.join(REPO, "models", "speedy-t31"):
        # the matrix's c6 cells run on its site bundle (bounds widened for the polar-night stratosphere)
        a.bundle = os.path.join(a.out, "matrix", "bundle_site")
    if a.recipe == "b48t":
        make_training_cases(a.out, launches)
    extra = a.extra.split()
    if a.retention:
        make_members(a.out, launches, a.members, recipe=a.recipe)
        retention(a.out, a.recipe, launches, a.members, os.path.join(REPO, "models", "speedy-t31"))
        return
    if a.sweep:
        ks, ls = ([int(x) for x in p.split(",")] for p in a.sweep.split(":"))
        make_members(a.out, launches, max(ks), recipe=a.recipe)
        jobs = [(m, k, extra + ["--ensemble-localisation-km", str(l), "--ensemble-localisation-model-km", str(l)])
                for k in ks for l in ls for m in ("3denvar", "hybrid-envar")]
        rows = [r for L in launches for r in score_case(a, a.recipe, L, NETS, jobs, log=lambda m: print(m, flush=True))]
        out = os.path.join(a.out, "matrix", f"envar_sweep_{a.recipe}.json")
        json.dump(rows, open(out, "w"), indent=1)
        sweep_table(rows, NETS, ks, ls)
        print(f"\nwrote {out}")
        return
    make_members(a.out, launches, a.members, recipe=a.recipe)
    jobs = [(m, a.members, extra) for m in METHODS]
    rows = [r for L in launches for r in score_case(a, a.recipe, L, NETS, jobs, log=lambda m: print(m, flush=True))]
    out = os.path.join(a.out, "matrix", f"envar_{a.recipe}" + ("_" + "_".join(x.strip("-") for x in extra) if extra else "")
                       + ".json")
    json.dump(rows, open(out, "w"), indent=1)
    table(rows, a.recipe, len(launches), a.members, NETS, list(METHODS))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
