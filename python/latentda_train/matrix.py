"""Robustness matrix of the validation suite (issue 20, BRIEF section 2 "Robustness"): error recipes x observation
networks x methods, per variable and latitude band, with the balance and the gates.

    latentda-matrix --out DATA --ort --json DATA/matrix/matrix.json --markdown DATA/matrix/matrix.md

Everything is in the validation period (days 600-731; training and calibration use days before 598), made once and
reproducibly (seeded) under DATA/matrix/:

Error recipes (the background's error; the truth is the nature state valid at the background's time):
- a48 / a24: today's recipe (`forecasts.Forecaster.run`, the suite's cases): truth + scaled difference of two
  earlier nature states at total wavenumbers 1-10, 48 h (24 h) forecast; from DATA/forecasts (`latentda-forecasts`).
- b48 / b24 / b6: smooth random temperature and vorticity perturbations at total wavenumbers 1-10 (1.5 K and 3 m/s
  RMS, `forecasts.Forecaster.run_random`, seed 20261206 + launch), 48 h (24 h, 6 h) forecast; made here into
  DATA/matrix/forecasts_random/.
- c6: 6 h forecasts of cycled 3D-Var analyses (`cycled_cases`: uniform 300-column network, B x 0.35), every 30 h
  after a 3-day spin-up from a perturbed start on day 608; made here into DATA/matrix/cycled/.
- c6l: the same with a 3D-Var cycle that assimilates the fixed land network (data-sparse oceans); cases in
  DATA/matrix/cycled_sonde/.
- c6s: the c6 cases analysed with both B x 0.35 (the cycling driver's setting for 6 h backgrounds) by every method.
- c6h (on request, --recipes): the c6 times and observations, but the backgrounds come from a cycle run with the
  bundle's own hybrid (both B x 0.35); cases in DATA/matrix/cycled_hybrid_<bundle stamp>/.
- c6a (on request): the c6 times and observations, the backgrounds of a 3D-Var cycle whose B the library sizes online
  from the innovations (`adaptive_state`, scalar, window 8); cases in DATA/matrix/cycled_adaptive/.
- c6hp (on request): the same with the cycle the README recommends for dense networks, the bundle's hybrid with q in
  the static B sized online per variable and band; cases in DATA/matrix/cycled_hybrid_pv_sq_<bundle stamp>/.
(b24 and b6 are the lead-time recipes (d); a24, the suite recipe's 24 h forecasts, runs on request.)

Networks (new observation noise per case; observations of cases valid at the same time are the same across recipes):
- sonde: the fixed land radiosonde-like stations (`cases.stations`, 300), u v t q ps (the suite's obs_sonde.csv);
- uniform: the same variables at 300 columns uniform on the sphere (|lat| <= 80), new positions in every case;
- mass: t profiles at the land stations + ps at 1500 points (the suite's obs_mass.csv);
- sparse: the sonde variables at 100 uniform random columns, new positions in every case.
For a48 the sonde and mass observations are those of `latentda-suite` (same seeds).

Methods (the CLI's shipped defaults unless --run says otherwise): 3dvar (the tuned baseline), l3dvar, hybrid. Where the
bundle's [bounds] t is narrower than 100-350 K, it runs as a site copy with t widened to that (SITE_T_BOUNDS;
--t-bounds): a lower bound of 120 K rejects analyses of the validation period's polar night; the analyses the
bundle's own bounds would have rejected are counted per cell. An analysis the runtime rejects leaves the background (scored as ratio 1, gate G0).

Per cell (recipe x network): per method, variable and band (global, NH > 20N, tropics, SH < 20S, extratropics) the
mean over cases of (area-weighted analysis RMSE) / (background RMSE); the balance of the increments (wind vs
geostrophic wind of the increment, |lat| > 20, the report's figure) next to the true background error's; the prior-
draw balance of the latent B per recipe and hemisphere; and the gates:
- G1 hybrid beats 3dvar on >= 5 of 6 variables (required where the network has >= 100 sonde columns: sonde, uniform,
  sparse; printed for mass too);
- G2 no latentda method (l3dvar, hybrid) worse than the background on any variable (global ratio >= 1 fails);
- G3 (mass cells) the best latentda method lowers the extratropical wind RMSE by >= 10 % (u and v ratio <= 0.9 over
  |lat| > 20).
- G0 every analysis succeeds.
Sized from innovations (`--tuned-steps N`, issue 20 item 2): per cell, the hybrid and 3D-Var (run as the hybrid with
alpha 0, beta 1: the same static B) each get N fixed-point steps of `latentda tune --per-variable` over the cell's own
reports (the 8 cases' Desroziers sums; no truth): step 0 runs the shipped defaults, step k runs the options tuned
from step k-1. The last step's analyses are the rows `hybrid-pv` and `3dvar-pv`, compared with each other in the
overview (TG1: hybrid-pv beats 3dvar-pv on >= 5 of 6; TG2: no tuned method worse than the background), next to the
untuned gates. `--tuned-families` adds `hybrid-pv-sq`, the hybrid with q left to the static B
(`--hybrid-variable-weights q=0,1` at step 0, the mix kept by the steps), and `l3dvar-pv`, the latent B alone (the
hybrid with beta 0). Options files and reports are kept under OUT/matrix/tuned/.
The worst cell is the one where the hybrid does worst against 3dvar (largest geometric mean over the six variables
of hybrid ratio / 3dvar ratio); the largest latentda ratio against the background is named as well.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import balance as BL
from . import cases as CS
from . import data as D
from . import suite as SU

VARS = list(D.VAR_SLICES)
BANDS = ("global", "nh", "tropics", "sh", "extratropics")
LATENT = ("l3dvar", "hybrid")
# recipe -> (kind, lead hours, observation seed base); observations depend on the valid time through the seed
RECIPES = {
    "a48": ("nature-difference", 48, 1000),
    "b48": ("smooth-random", 48, 1000),
    "c6": ("cycled-3dvar", 6, 7000),
    "a24": ("nature-difference", 24, 3000),
    "b24": ("smooth-random", 24, 3000),
    "b6": ("smooth-random", 6, 5000),
}
# c6s: the c6 cases with both B scaled by 0.35 for every method (cycling.CYCLING_OPTIONS: the factor the cycling
# driver documents for 6 h backgrounds, set on its own smoke run, not on these cases)
RECIPES["c6s"] = ("cycled-3dvar", 6, 7000)
# c6l: 6 h backgrounds of a 3D-Var cycle with the fixed land network (the cycle is data-sparse over the oceans:
# larger, different errors than c6's dense uniform cycle)
RECIPES["c6l"] = ("cycled-3dvar-land", 6, 9000)
# c6h: 6 h backgrounds of a cycle run with the bundle's own hybrid (uniform network, both B x 0.35), valid at the c6
# cases' times, with the c6 cases' observations (same seeds): only the cycle that made the backgrounds differs. c6's
# 3D-Var cycle leaves errors shaped by the static B (true-error balance 0.30); c6h asks whether the hybrid wins on
# the errors its own cycle leaves. Its cycle depends on the bundle, so its cases live in a folder per bundle.
RECIPES["c6h"] = ("cycled-hybrid", 6, 7000)
# c6a: the same times and observations again, the backgrounds of a 3D-Var cycle whose B the library sizes online from
# the innovations (the README's "Sized by latentda itself"): c6's cycle keeps 0.35 x the 48 h B, some 10x too large
# for its errors, so its analyses add errors of the static B's shape; c6a's are those of a cycle a user would run.
RECIPES["c6a"] = ("cycled-3dvar-adaptive", 6, 7000)
# c6hp: and the backgrounds of the cycle the README recommends for dense networks: the bundle's hybrid with q in the
# static B, sized online per variable and band by the library.
RECIPES["c6hp"] = ("cycled-hybrid-adaptive-pv-sq", 6, 7000)
RECOMMENDED_CYCLE = ("adaptive_per_variable = true\n"
                     "hybrid_variable_weights = { q = { alpha = 0.0, beta = 1.0 } }")
# cycle kind -> (network, case folder, method of the cycle, B sized online, further options of the cycle)
CYCLE_NETWORK = {"cycled-3dvar": ("uniform", "cycled", "3dvar", False, ""),
                 "cycled-3dvar-land": ("sonde", "cycled_sonde", "3dvar", False, ""),
                 "cycled-hybrid": ("uniform", "cycled_hybrid", "hybrid", False, ""),
                 "cycled-3dvar-adaptive": ("uniform", "cycled_adaptive", "3dvar", True, ""),
                 "cycled-hybrid-adaptive-pv-sq": ("uniform", "cycled_hybrid_pv_sq", "hybrid", True, RECOMMENDED_CYCLE)}
RECIPE_FOLDER = {"c6s": "c6"}
RECIPE_ARGS = {"c6s": ["--baseline-variance-factor", "0.35", "--latent-variance-factor", "0.35"]}
DEFAULT_RECIPES = "a48,b48,c6,c6s,c6l,b24,b6"   # a24 on request (--recipes): the lead-time recipes (d) are b24 and b6
# network -> (obs file, columns, kind); seed offsets keep the networks' noise independent
NETWORKS = {"sonde": ("obs_sonde.csv", None, "sonde", 0), "mass": ("obs_mass.csv", None, "mass", 100000),
            "uniform": ("obs_uniform.csv", 300, "sonde", 200000), "sparse": ("obs_sparse.csv", 100, "sonde", 300000),
            # on request (--networks): the uniform network's observations without humidity (same columns and noise),
            # a network like aircraft and wind profilers, where q has no observation and no group to be sized by
            "uniform-dry": ("obs_uniform_dry.csv", 300, "sonde-dry", 200000)}
# innovation-tuned families (--tuned-steps): row name -> CLI method and arguments of step 0 (3D-Var as the hybrid with
# alpha 0: the same static B, so that `latentda tune --per-variable` can size it per variable and band)
# and whether the later steps repeat those arguments before their options file (harmless for global weights, which
# every variable's tuned weights override; hybrid-pv-sq: the hybrid with q left to the static B, its latent weight
# moved to the static part, whose table flag would replace the tuned table: the steps keep that mix per variable;
# l3dvar-pv: the latent B alone, the hybrid with beta 0 (method l3dvar's analyses bit for bit, tests/hybrid_bands.rs),
# sized per variable: the latent channels cannot size the variables separately, per-variable weights on its output
# can)
TUNED = {"hybrid-pv": ("hybrid", [], True), "3dvar-pv": ("hybrid", ["--hybrid-alpha", "0", "--hybrid-beta", "1"], True),
         "hybrid-pv-sq": ("hybrid", ["--hybrid-variable-weights", "q=0,1"], False),
         "l3dvar-pv": ("hybrid", ["--hybrid-alpha", "1", "--hybrid-beta", "0"], True)}
DEFAULT_TUNED = "hybrid-pv,3dvar-pv"
SONDE_COLUMNS = {"sonde": CS.N_STATIONS, "uniform": 300, "sparse": 100, "mass": 0, "uniform-dry": 300}


def ort_library():
    """Path of libonnxruntime.so.1.* of the onnxruntime wheel."""
    import onnxruntime
    libs = glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.1*"))
    if not libs:
        raise SystemExit("no libonnxruntime.so.1* in the onnxruntime wheel")
    return sorted(libs)[0]


# ------------------------------------------------------------------------------------------------ site bounds
# The reference bundle's [bounds] t = [120, 350] K rejects analyses in the validation period's polar-night
# stratosphere (top-level backgrounds near 121-125 K; the nature run's own top-level t reaches 116.7 K in the
# training period, nature.log): a site may set bounds in bundle.toml without touching the graphs
# (docs/bundle-format.md). The matrix judges the B, so where the bundle's t bounds are narrower than SITE_T_BOUNDS it
# runs on a site copy of the bundle with them widened (every other file copied: the runtime refuses links that leave
# the bundle directory), and counts per cell the analyses that the bundle's own bounds would have rejected
# (`shipped_guard`; --guard-t-bounds for other bounds).
SITE_T_BOUNDS = (100.0, 350.0)


def bundle_bounds(bundle):
    """The [bounds] table of a bundle's manifest: {var: (lo, hi)}."""
    import tomllib
    with open(os.path.join(bundle, "bundle.toml"), "rb") as f:
        return {k: tuple(v) for k, v in tomllib.load(f).get("bounds", {}).items()}


def site_bundle(bundle, folder, t_bounds=SITE_T_BOUNDS):
    """A copy of `bundle` under `folder` whose bundle.toml has [bounds] t = t_bounds (other files linked)."""
    import re
    bundle = os.path.abspath(bundle)
    text = open(os.path.join(bundle, "bundle.toml")).read()
    new, n = re.subn(r"(?m)^t = \[[^\]]*\]$", f"t = [{t_bounds[0]:.1f}, {t_bounds[1]:.1f}]", text)
    if n != 1:
        raise SystemExit(f"{bundle}/bundle.toml: no single 't = [lo, hi]' line in [bounds] to widen")
    import filecmp
    import shutil
    os.makedirs(folder, exist_ok=True)
    for f in os.listdir(bundle):   # plain copies: the runtime refuses bundle files that resolve outside the bundle
        src, dst = os.path.join(bundle, f), os.path.join(folder, f)
        if f == "bundle.toml" or not os.path.isfile(src):
            continue
        if os.path.islink(dst):
            os.remove(dst)
        if not (os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False)):
            shutil.copyfile(src, dst)
    for f in os.listdir(folder):
        if os.path.islink(os.path.join(folder, f)):
            os.remove(os.path.join(folder, f))
    new = ("# site copy made by latentda-matrix: [bounds] t widened to the validation period's polar night; every "
           f"other file is a copy of {bundle}'s\n") + new
    p = os.path.join(folder, "bundle.toml")
    if not os.path.exists(p) or open(p).read() != new:
        open(p + ".tmp", "w").write(new)
        os.replace(p + ".tmp", p)
    return folder


def shipped_guard(xb, xa, bounds):
    """Whether the bounds guard (docs/bundle-format.md) with `bounds` would reject the analysis xa of background xb:
    an analysed value outside [lo, hi] that the analysis moved out or further out. Returns the list of variables."""
    bad = []
    for v, (lo, hi) in bounds.items():
        if v not in D.VAR_SLICES:
            continue
        a, b = xa[D.VAR_SLICES[v]], xb[D.VAR_SLICES[v]]
        if np.any((a < lo) & (a < b)) or np.any((a > hi) & (a > b)):
            bad.append(v)
    return bad


# ------------------------------------------------------------------------------------------------------- cases

def write_obs_files(d, truth, lat, lon, sig, st, seed, nets):
    """One observation file per network (see NETWORKS) for a case whose observation seed is `seed`."""
    for net in nets:
        fname, ncol, kind, off = NETWORKS[net]
        if os.path.exists(os.path.join(d, fname)):
            continue
        cols = st if ncol is None else CS.uniform_columns(ncol, seed + off)
        CS.write_obs(os.path.join(d, fname), network_obs(truth, lat, lon, sig, cols, seed + off, kind))


def network_obs(truth, lat, lon, sig, cols, seed, kind):
    """The observation rows of a network kind: cases.make_obs's "sonde" or "mass", or "sonde-dry", the sonde rows
    without humidity (drawn as "sonde" and filtered, so every other observation keeps its value and noise)."""
    if kind == "sonde-dry":
        return [r for r in CS.make_obs(truth, lat, lon, sig, cols, seed, network="sonde") if r[0] != "q"]
    return CS.make_obs(truth, lat, lon, sig, cols, seed, network=kind)


def random_forecasts(out, launches, log):
    """Recipe (b) forecasts under OUT/matrix/forecasts_random/fc_LLLL.npz (made when missing)."""
    from . import forecasts as F
    fd = os.path.join(out, "matrix", "forecasts_random")
    os.makedirs(fd, exist_ok=True)
    fcst = None
    res = {}
    for L in launches:
        fn = os.path.join(fd, f"fc_{L:04d}.npz")
        if not os.path.exists(fn):
            if fcst is None:
                fcst = F.Forecaster(out)
            t0 = time.time()
            r = fcst.run_random(L)
            np.savez(fn + ".partial.npz", **r)
            os.replace(fn + ".partial.npz", fn)
            log(f"recipe b: launch {L} perturbation t {r['init_t_rms']:.2f} K wind {r['init_wind_rms']:.2f} m/s "
                f"(seed {r['seed']}) {time.time() - t0:.1f}s")
        res[L] = fn
    return res


def make_cases(out, recipe, launches, nets, log=print, backend_options="", bundle=None):
    """Case folders DATA/matrix/<recipe>/case_*/ (truth.nc, background.nc, one obs file per network), made when
    missing. Returns [(case name, folder)]."""
    kind, lead, seed0 = RECIPES[recipe]
    folder = os.path.join(out, "matrix", RECIPE_FOLDER.get(recipe, recipe))
    lat, lon, sig = D.grid(out)
    st = CS.stations(lat, lon)
    X = None
    items = []   # (name, folder, seed, loader)
    if kind in CYCLE_NETWORK:
        from . import cycled_cases as CC
        cnet, cdir, cmethod, adaptive, copts = CYCLE_NETWORK[kind]
        if cmethod != "3dvar":
            # the cycle's backgrounds depend on the bundle's latent B: one case folder per bundle
            from .cycling import DEFAULT_BUNDLE
            tag = SU.bundle_stamp(bundle or DEFAULT_BUNDLE)
            cdir, folder = f"{cdir}_{tag}", f"{folder}_{tag}"
        files = CC.run(out, os.path.join(out, "matrix", cdir), network=cnet, method=cmethod,
                       extra_options=backend_options, log=log, bundle=bundle, adaptive=adaptive,
                       adaptive_options=copts)
        for f in files:
            c = int(os.path.basename(f)[6:10])
            items.append((f"case_c{c:04d}", seed0 + c, lambda f=f: (np.load(f)["truth"], np.load(f)["bg"])))
    else:
        if kind == "smooth-random":
            random_forecasts(out, launches, log)   # all at once: one jcm model
        for L in launches:
            vidx = D.truth_index(L) + lead // 6
            if kind == "nature-difference":
                def load(L=L, vidx=vidx):
                    fc = D.forecasts(out, [L])
                    if L not in fc:
                        raise SystemExit(f"no forecast launched on day {L} under {out}/forecasts: run "
                                         f"latentda-forecasts --out {out} --launches {L}:{L}")
                    return X[vidx], fc[L][0 if lead == 24 else 1]
            else:
                def load(L=L, vidx=vidx):
                    return X[vidx], np.load(random_forecasts(out, [L], log)[L])[f"fc{lead}"]
            items.append((f"case_{L:04d}", seed0 + L, load))
    res = []
    for name, seed, load in items:
        d = os.path.join(folder, name)
        res.append((name, d))
        need = ["truth.nc", "background.nc"] + [NETWORKS[n][0] for n in nets]
        if all(os.path.exists(os.path.join(d, f)) for f in need):
            continue
        if X is None and kind not in CYCLE_NETWORK:   # cycled cases carry their own truth
            from .cycling import Nature
            X = Nature(out)   # one memory-mapped chunk at a time (data.nature would read all 2 GB)
        os.makedirs(d, exist_ok=True)
        if not (os.path.exists(os.path.join(d, "truth.nc")) and os.path.exists(os.path.join(d, "background.nc"))):
            xt, xb = load()
            xt, xb = np.asarray(xt, np.float64), np.asarray(xb, np.float64)
            CS.write_state(os.path.join(d, "truth.nc"), xt, lat, lon, sig, f"truth (nature run) {recipe} {name}")
            CS.write_state(os.path.join(d, "background.nc"), xb, lat, lon, sig, f"background {recipe} ({kind}, "
                           f"{lead} h) {name}")
        xt = CS.read_state(os.path.join(d, "truth.nc"))
        write_obs_files(d, xt, lat, lon, sig, st, seed, nets)
    return res


# ------------------------------------------------------------------------------------------------------ scoring

class AnalysisRejected(RuntimeError):
    """The CLI ran and reported an error of its own (e.g. a divergence guard): deterministic, not retried."""


NC_LOCK = __import__("threading").Lock()   # netCDF4/HDF5 is not thread-safe: every read goes through it


def cli(latentda, bundle, case, obs, method, args, tmp):
    """`latentda analyse` of one case (as suite.run_cli); returns (analysis, report, seconds). Raises SystemExit with
    the command and its stderr on failure."""
    out, rep = os.path.join(tmp, "an.nc"), os.path.join(tmp, "report.json")
    cmd = [latentda, "analyse", "--bundle", bundle, "--method", method, "--background",
           os.path.join(case, "background.nc"), "--obs", os.path.join(case, obs), "--output", out, "--report", rep,
           *args]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    secs = time.time() - t0
    r = json.load(open(rep))
    with NC_LOCK:
        xa = CS.read_state(out)
    return xa, r, secs


def run_cli_retry(latentda, bundle, case, obs, method, args, tmp, tries=4, log=print):
    """`cli`, retried when the binary could not run (a build may be relinking it at that moment); an error that
    latentda itself reports ('latentda: error: ...') raises AnalysisRejected at once."""
    for k in range(tries):
        try:
            return cli(latentda, bundle, case, obs, method, args, tmp)
        except SystemExit as e:
            msg = str(e)
            if "latentda: error:" in msg:
                raise AnalysisRejected(msg[msg.index("latentda: error:"):].strip()) from None
            if k == tries - 1:
                raise
            log(f"  retry {k + 1} of {os.path.basename(case)} {obs} {method}: {msg[-300:]}")
        except (OSError, json.JSONDecodeError, KeyError) as e:
            if k == tries - 1:
                raise
            log(f"  retry {k + 1} of {os.path.basename(case)} {obs} {method}: {e}")
        time.sleep(15 * (k + 1))


def score(xt, xb, xa, shipped_bounds=None):
    """Band RMSE of the analysis, the increment's balance per hemisphere (numpy port of the runtime's), and the
    variables for which the shipped bounds would have rejected it."""
    return {"rmse": SU.band_rmse(xa - xt, LAT),
            "balance_hemi": {h: BL.balance(xb, xa, LAT, LON, h) for h in ("N", "S")},
            "shipped_guard": shipped_guard(xb, xa, shipped_bounds or {})}


LAT = LON = None


def geomean(g, a, b=None):
    """Geometric mean over the variables of g[a] (or of g[a] / g[b]), g: {method: {var: ratio}} of one cell; the
    worst cell is the largest geomean(g, "hybrid", "3dvar")."""
    return float(np.exp(np.mean([np.log(g[a][v] / (g[b][v] if b else 1.0)) for v in VARS])))


def cell_summary(rows, names, base="3dvar"):
    """rows: {case: {"background": band rmse, method: {...}}} -> the cell's numbers."""
    cs = list(rows.values())
    out = {"n_cases": len(cs), "ratios": {}, "background_rmse": {}, "balance": {}, "balance_hemi": {}}
    for b in BANDS:
        out["background_rmse"][b] = {v: float(np.mean([r["background"][b][v] for r in cs])) for v in VARS}
        out["ratios"][b] = {m: {v: float(np.mean([r[m]["rmse"][b][v] / r["background"][b][v] for r in cs]))
                                for v in VARS} for m in names}
    out["true_error_balance"] = float(np.mean([r["true_error_balance"] for r in cs]))
    out["true_error_balance_hemi"] = {h: float(np.mean([r["true_error_balance_hemi"][h] for r in cs])) for h in "NS"}
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")
    out["rejected"] = {}
    for m in names:
        out["balance"][m] = mean([r[m]["balance"] for r in cs if r[m]["balance"] is not None])
        out["balance_hemi"][m] = {h: mean([r[m]["balance_hemi"][h] for r in cs if r[m]["balance_hemi"][h] is not None])
                                  for h in "NS"}
        out["rejected"][m] = [c for c, r in rows.items() if r[m].get("failed")]
        out.setdefault("shipped_bounds_would_reject", {})[m] = [c for c, r in rows.items() if r[m].get("shipped_guard")]
    g = out["ratios"]["global"]
    out["wins_vs_" + base] = {m: int(sum(g[m][v] < g[base][v] for v in VARS)) for m in names if m != base}
    out["case_wins_5of6_vs_" + base] = {
        m: int(sum(sum(r[m]["rmse"]["global"][v] / r["background"]["global"][v]
                       < r[base]["rmse"]["global"][v] / r["background"]["global"][v] for v in VARS) >= 5 for r in cs))
        for m in names if m != base}
    out["pairs"] = {m: [int(min(r[m]["pairs"] for r in cs)), int(max(r[m]["pairs"] for r in cs))] for m in names}
    out["failure_messages"] = {m: sorted({r[m]["failed"][:300] for r in cs if r[m].get("failed")}) for m in names}
    out["median_seconds"] = {m: float(np.median([r[m]["seconds"] for r in cs])) for m in names}
    return out


def cell_gates(net, s, names, base="3dvar"):
    """The gates of one cell (see the module documentation): {gate: {"pass": bool, "required": bool, ...}}."""
    g = s["ratios"]["global"]
    gates = {}
    if "hybrid" in names and base in names:
        w = s["wins_vs_" + base]["hybrid"]
        gates["G1 hybrid beats 3dvar on >= 5/6"] = {
            "pass": w >= 5, "required": SONDE_COLUMNS.get(net, 0) >= 100, "value": f"{w}/6",
            "margins": {v: g["hybrid"][v] - g[base][v] for v in VARS}}
    lat_m = [m for m in names if m in LATENT]
    rej = {m: len(s["rejected"][m]) for m in names if s["rejected"][m]}
    gates["G0 every analysis succeeds"] = {"pass": not rej, "required": True,
                                          "value": ", ".join(f"{m} {k} rejected" for m, k in rej.items()) or "all ran"}
    worst = max(((g[m][v], m, v) for m in lat_m for v in VARS), default=(0, "", ""))
    gates["G2 no latentda method worse than background"] = {
        "pass": worst[0] < 1.0, "required": True, "value": f"max {worst[0]:.3f} ({worst[1]} {worst[2]})",
        "worse": {f"{m} {v}": g[m][v] for m in lat_m for v in VARS if g[m][v] >= 1.0}}
    if net == "mass" and lat_m:
        ex = s["ratios"]["extratropics"]
        best = min(lat_m, key=lambda m: max(ex[m]["u"], ex[m]["v"]))
        val = max(ex[best]["u"], ex[best]["v"])
        gates["G3 mass: extratropical wind down >= 10 %"] = {
            "pass": val <= 0.9, "required": True, "value": f"{best} u {ex[best]['u']:.3f} v {ex[best]['v']:.3f}",
            "by_method": {m: {"u": ex[m]["u"], "v": ex[m]["v"],
                              "nh_u": s["ratios"]["nh"][m]["u"], "nh_v": s["ratios"]["nh"][m]["v"],
                              "sh_u": s["ratios"]["sh"][m]["u"], "sh_v": s["ratios"]["sh"][m]["v"]} for m in lat_m}}
    return gates


def tuned_folder(mdir: str, stamp: str, latentda: str, recipe: str, network: str, family: str) -> str:
    """Where a tuned family's options and reports go: per bundle stamp and per latentda executable (a tag of its
    absolute path, as in the cache key), so that a run with another build never reads reports that build did not
    write (the cache skips an analysis whose report file exists)."""
    exe = hashlib.sha256(os.path.abspath(latentda).encode()).hexdigest()[:12]
    return os.path.join(mdir, "tuned", stamp, exe, recipe, network, family)


def tuned_gates(s):
    """The innovation-tuned comparison of one cell: TG1 hybrid-pv beats 3dvar-pv on >= 5 of 6 (informative: both
    sized the same way), TG2 no tuned method (each row of TUNED the call ran) worse than the background on any
    variable."""
    g = s["ratios"]["global"]
    worst = max((g[m][v], m, v) for m in TUNED if m in g for v in VARS)
    out = {}
    if "hybrid-pv" in g and "3dvar-pv" in g:   # without the pair (e.g. l3dvar-pv alone) TG1 is not defined
        w = int(sum(g["hybrid-pv"][v] < g["3dvar-pv"][v] for v in VARS))
        out["TG1 hybrid-pv beats 3dvar-pv on >= 5/6"] = {
            "pass": w >= 5, "value": f"{w}/6", "margins": {v: g["hybrid-pv"][v] - g["3dvar-pv"][v] for v in VARS}}
    out["TG2 tuned methods not worse than background"] = {"pass": worst[0] < 1.0,
                                                          "value": f"max {worst[0]:.3f} ({worst[1]} {worst[2]})"}
    return out


# ------------------------------------------------------------------------------------------------------ report

def markdown(res, recipes, nets, names, prior, meta):
    tuned = meta.get("tuned_steps", 0) > 0
    base = [m for m in names if m not in TUNED]
    L = [f"# Robustness matrix ({meta['bundle_name']}, validation period)", "",
         f"Command: `{meta['command']}`", "",
         f"Bundle `{meta['bundle']}`, run as `{meta['bundle_run']}` (manifest sha256 {meta['bundle_stamp']}; "
         f"t bounds {meta['t_bounds_run']}, shipped {list(meta['shipped_bounds'].get('t', []))}: the last column "
         f"counts the analyses the shipped bounds guard would have rejected); CLI backend {meta['backend']}; "
         f"{meta['n_analyses']} analyses in the matrix, {meta['n_run_now']} run by this call "
         f"({meta['wall_minutes']:.1f} min wall; the others from the cache).", ""] + ([meta["note"], ""] if meta.get("note") else []) + [
         "Numbers: mean over the cell's cases of (area-weighted analysis RMSE) / (background RMSE): below 1 the "
         "analysis is better than its background. Bands: NH > 20N, tropics 20S-20N, SH < 20S. Balance: correlation "
         "of the wind increment with the geostrophic wind of the increment, |lat| > 20 (true: the background "
         "error's own).", "", "## Overview", "",
         "| recipe | network | cases | bg RMSE u / t / ps | hybrid wins vs 3dvar | worst latentda ratio | "
         "mass: extratrop. wind (best latentda) | balance " + " / ".join(base) + " (true) | gates | "
         "shipped bounds reject |" + (" sized from innovations: hybrid-pv wins vs 3dvar-pv, worst ratio |" if tuned else ""),
         "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if tuned else "")]
    worst = meta.get("worst_cell")
    for r in recipes:
        for n in nets:
            s = res[r][n]
            g = s["gates"]
            bg = s["background_rmse"]["global"]
            w = s.get("wins_vs_3dvar", {}).get("hybrid")
            g2 = g["G2 no latentda method worse than background"]["value"]
            g3 = g.get("G3 mass: extratropical wind down >= 10 %", {}).get("value", "-")
            bal = " / ".join(f"{s['balance'][m]:.2f}" for m in base) + f" ({s['true_error_balance']:.2f})"
            gs = ", ".join(f"{k.split()[0]} {'pass' if v['pass'] else 'FAIL'}{'' if v['required'] else ' (info)'}"
                           for k, v in g.items())
            mark = " **(worst)**" if worst and worst["cell"] == f"{r}/{n}" else ""
            L.append(f"| {r}{mark} | {n} | {s['n_cases']} | {bg['u']:.2f} / {bg['t']:.2f} / {bg['ps']:.0f} | "
                     f"{w if w is not None else '-'}/6 | {g2} | {g3} | {bal} | {gs} | "
                     + " / ".join(f"{len(s['shipped_bounds_would_reject'][m]) + len(s['rejected'][m])}" for m in base)
                     + " |" + (f" {s['tuned_gates'].get('TG1 hybrid-pv beats 3dvar-pv on >= 5/6', {}).get('value', '-')}, "
                               f"{s['tuned_gates']['TG2 tuned methods not worse than background']['value']} |"
                               if tuned else ""))
    L += ["", "Gates: G1 hybrid beats 3dvar on >= 5 of 6 variables (required where the network has >= 100 sonde "
          "columns; '(info)' for mass-only); G2 no latentda method worse than the background on any variable; G3 "
          "mass-only: the best latentda method lowers the extratropical u and v RMSE by >= 10 %.", ""]
    if tuned:
        L += [f"Sized from innovations ({meta['tuned_steps']} steps of `latentda tune --per-variable` over each cell's "
              "own reports, no truth): hybrid-pv is the hybrid, 3dvar-pv the static B alone (the hybrid with alpha 0), "
              "each with weights per variable and band; the column counts the variables where hybrid-pv beats "
              "3dvar-pv, and gives the larger of the two methods' worst ratio against the background.", ""]
    if worst:
        L += [f"**Worst cell: {worst['cell']}** (hybrid / 3dvar ratio, geometric mean over the six variables, "
              f"{worst['hybrid_over_3dvar']:.3f}); largest latentda ratio against the background anywhere: "
              f"{meta['worst_ratio']['value']:.3f} ({meta['worst_ratio']['where']}).", ""]
    L += ["Prior-draw balance of the latent B at the recipe's backgrounds (NH / SH): " + "; ".join(
        f"{r} {prior[r]['N']:.2f} / {prior[r]['S']:.2f}" for r in recipes if r in prior), ""]
    for r in recipes:
        kind, lead, _ = RECIPES[r]
        L += [f"## Recipe {r}: {kind}, {lead} h" + (f" (every method with {' '.join(RECIPE_ARGS[r])})"
                                                   if r in RECIPE_ARGS else ""), "",
              "| network | method | u | v | t | q | z | ps | balance | NH mean | tropics mean | SH mean | "
              "wind NH / TR / SH |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for n in nets:
            s = res[r][n]
            bg = s["background_rmse"]["global"]
            L.append(f"| {n} | background RMSE | " + " | ".join(f"{bg[v]:.3g}" for v in VARS)
                     + f" | {s['true_error_balance']:.2f} (true) | | | | |")
            for m in names:
                g = s["ratios"]["global"][m]
                bm = {b: float(np.mean(list(s["ratios"][b][m].values()))) for b in ("nh", "tropics", "sh")}
                wind = {b: 0.5 * (s["ratios"][b][m]["u"] + s["ratios"][b][m]["v"]) for b in ("nh", "tropics", "sh")}
                best = {v: min(s["ratios"]["global"][x][v] for x in names) for v in VARS}
                nrej = len(s["rejected"][m])
                L.append(f"| {n} | {m}{f' ({nrej} rejected)' if nrej else ''} | " + " | ".join(
                    (f"**{g[v]:.3f}**" if g[v] == best[v] else f"{g[v]:.3f}") + ("!" if g[v] >= 1 else "")
                    for v in VARS) + f" | {s['balance'][m]:.2f} | {bm['nh']:.3f} | {bm['tropics']:.3f} | "
                    f"{bm['sh']:.3f} | {wind['nh']:.3f} / {wind['tropics']:.3f} / {wind['sh']:.3f} |")
        L.append("")
        L.append("(bold: best method per variable; '!': worse than the background; band means: mean over the six "
                 "variables of the band's ratio; wind: mean of the u and v ratios; a rejected analysis leaves the "
                 "host's background, scored as ratio 1, and is left out of the balance)")
        L.append("")
    return "\n".join(L) + "\n"


# -------------------------------------------------------------------------------------------------------- main

def main(argv=None):
    global LAT, LON
    ap = argparse.ArgumentParser(prog="latentda-matrix", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=D.DEFAULT_OUT, help="data folder (nature run, forecasts); results in OUT/matrix")
    ap.add_argument("--bundle", default=os.path.join(SU.REPO, "models", "speedy-t31"))
    ap.add_argument("--launches", default="610:720:15", help="launch days of recipes a and b (validation period)")
    ap.add_argument("--recipes", default=DEFAULT_RECIPES, help=f"comma-separated, of {', '.join(RECIPES)}")
    ap.add_argument("--networks", default="sonde,uniform,mass,sparse")
    ap.add_argument("--run", action="append", default=None,
                    help="NAME=METHOD[:CLI-ARGS] as latentda-suite (default 3dvar, l3dvar, hybrid: shipped defaults)")
    ap.add_argument("--latentda", default=os.path.join(SU.REPO, "target", "release", "latentda"))
    ap.add_argument("--ort", action="store_true", help="run the CLI (and the cycle) with ONNX Runtime from the "
                    "onnxruntime wheel (several times faster than the pure-Rust default; results agree to ~1e-6)")
    ap.add_argument("--backend-args", default="", help="further CLI arguments added to every analysis")
    ap.add_argument("--t-bounds", default="auto",
                    help="LO,HI: t bounds (K) of a site copy of the bundle the matrix runs on; 'shipped': the bundle "
                         "as it is; 'auto' (default): a site copy only where the bundle's t bounds are narrower than "
                         "SITE_T_BOUNDS")
    ap.add_argument("--guard-t-bounds", default=None,
                    help="t bounds (K) of the shipped-bounds count (default: the bundle's own [bounds] t)")
    ap.add_argument("--note", default="", help="a sentence for the head of the markdown and the JSON (provenance)")
    ap.add_argument("--jobs", type=int, default=2, help="CLI analyses at a time (each runs on one thread)")
    ap.add_argument("--draws", type=int, default=2, help="prior draws per case (prior-draw balance)")
    ap.add_argument("--tuned-steps", type=int, default=0,
                    help="also size the hybrid and 3D-Var per variable and band from each cell's innovations with this "
                         "many `latentda tune --per-variable` steps (rows hybrid-pv, 3dvar-pv; 0: not)")
    ap.add_argument("--tuned-families", default=DEFAULT_TUNED,
                    help=f"the innovation-tuned rows, of {', '.join(TUNED)} (hybrid-pv-sq: q by the static B alone; "
                         "l3dvar-pv: the latent B alone)")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--json", default=None, help="default OUT/matrix/matrix.json")
    ap.add_argument("--markdown", default=None, help="default OUT/matrix/matrix.md")
    a = ap.parse_args(argv)
    log = lambda m: print(m, flush=True)
    t_start = time.time()
    from .forecasts import launch_days
    launches = launch_days(a.launches)
    recipes = a.recipes.split(",")
    nets = a.networks.split(",")
    for r in recipes:
        if r not in RECIPES:
            raise SystemExit(f"unknown recipe {r} (known: {', '.join(RECIPES)})")
    for n in nets:
        if n not in NETWORKS:
            raise SystemExit(f"unknown network {n} (known: {', '.join(NETWORKS)})")
    runs = SU.parse_runs(a.run or ["3dvar=3dvar", "l3dvar=l3dvar", "hybrid=hybrid"])
    names = [r[0] for r in runs]
    tuned_names = [f for f in a.tuned_families.split(",") if f]
    for f in tuned_names:
        if f not in TUNED:
            raise SystemExit(f"unknown tuned family {f} (known: {', '.join(TUNED)})")
    if a.tuned_steps and len({"hybrid-pv", "3dvar-pv"} & set(tuned_names)) == 1:
        raise SystemExit("--tuned-families: hybrid-pv and 3dvar-pv go together (the compared pair), or neither")
    all_names = names + (tuned_names if a.tuned_steps else [])
    extra = a.backend_args.split()
    backend_options = ""
    if a.ort:
        lib = ort_library()
        extra = ["--backend", "ort", "--ort-library", lib] + extra
        backend_options = f'backend = "ort"\nort_library = "{lib}"'
    LAT, LON, _ = D.grid(a.out)
    mdir = os.path.join(a.out, "matrix")
    os.makedirs(mdir, exist_ok=True)
    shipped_bounds = bundle_bounds(a.bundle)
    if a.guard_t_bounds:
        shipped_bounds["t"] = tuple(float(x) for x in a.guard_t_bounds.split(","))
    tb = None
    if a.t_bounds == "auto":
        # widen only where the bundle's own bounds are narrower than SITE_T_BOUNDS (a bundle whose bounds already
        # cover the nature run's range runs as it is)
        lo, hi = shipped_bounds.get("t", SITE_T_BOUNDS)
        if lo > SITE_T_BOUNDS[0] or hi < SITE_T_BOUNDS[1]:
            tb = (min(lo, SITE_T_BOUNDS[0]), max(hi, SITE_T_BOUNDS[1]))
    elif a.t_bounds != "shipped":
        tb = tuple(float(x) for x in a.t_bounds.split(","))
    if tb is None:
        bundle = os.path.abspath(a.bundle)
    else:
        bundle = site_bundle(a.bundle, os.path.join(mdir, "bundle_site"), tb)
        log(f"running on {bundle}: the bundle with [bounds] t = {list(tb)} (shipped: {list(shipped_bounds.get('t', []))})")
    stamp = SU.bundle_stamp(bundle)
    cache_path = os.path.join(mdir, f"cache_{stamp}.json")
    cache = {} if a.no_cache or not os.path.exists(cache_path) else json.load(open(cache_path))
    prior = SU.PriorDraws(a.bundle)
    res, cases_all, prior_bal = {}, {}, {}
    n_analyses = 0
    from concurrent.futures import ThreadPoolExecutor

    def analyse(task):
        """One CLI analysis (in a worker thread); returns (key, cache entry)."""
        key, r, cname, d, n, name, method, args, report_to = task
        with NC_LOCK:
            xt = CS.read_state(os.path.join(d, "truth.nc"))
            xb = CS.read_state(os.path.join(d, "background.nc"))
        t_a = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                xa, rep, secs = run_cli_retry(a.latentda, bundle, d, NETWORKS[n][0], method, args + extra, tmp,
                                              log=log)
            except AnalysisRejected as e:
                # the host keeps its background (nothing is written back): scored as such
                log(f"  REJECTED {r} {cname} {n} {name}: {str(e)[:400]}")
                return key, {"rmse": SU.band_rmse(xb - xt, LAT), "balance_hemi": {"N": None, "S": None},
                             "balance": None, "pairs": 0, "grad_reduction": None, "seconds": time.time() - t_a,
                             "failed": str(e)[:2000]}
        if report_to:
            # the Desroziers section, for `latentda tune` (the whole report is not needed)
            os.makedirs(os.path.dirname(report_to), exist_ok=True)
            json.dump({"desroziers": rep.get("desroziers")}, open(report_to, "w"))
        s = rep["solver"]
        sc = score(xt, xb, xa, shipped_bounds)
        return key, {"rmse": sc["rmse"], "balance_hemi": sc["balance_hemi"], "shipped_guard": sc["shipped_guard"],
                     "balance": (rep.get("balance") or {}).get("correlation"), "pairs": s["inner_total"],
                     "grad_reduction": s["grad_reduction"], "seconds": secs, "n_used": rep["n_used"],
                     "n_obs": rep["n_obs"], "backend": rep.get("backend")}

    key_of = lambda r, cname, n, method, args: "|".join([stamp, os.path.abspath(a.latentda), r, cname, n, method,
                                                          *args, *extra])
    for r in recipes:
        t_r = time.time()
        cases = make_cases(a.out, r, launches, nets, log, backend_options, bundle)
        log(f"recipe {r}: {len(cases)} cases ready ({time.time() - t_r:.0f}s)")
        rargs = lambda args: list(args) + RECIPE_ARGS.get(r, [])
        tasks = [(key_of(r, cname, n, method, rargs(args)), r, cname, d, n, name, method, rargs(args), None)
                 for cname, d in cases for n in nets for name, method, args in runs]

        def run_tasks(tasks):
            nonlocal n_analyses
            tasks = [t for t in tasks if t[0] not in cache or (t[8] and not os.path.exists(t[8]))]
            with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
                for key, entry in ex.map(analyse, tasks):
                    cache[key] = entry
                    tmpc = cache_path + f".{os.getpid()}"
                    json.dump(cache, open(tmpc, "w"))
                    os.replace(tmpc, cache_path)
                    n_analyses += 1
            return len(tasks)

        n_run = run_tasks(tasks)
        tuned_keys = {}
        for n in nets:
            for fam in (tuned_names if a.tuned_steps else ()):
                method, args0, repeat = TUNED[fam]
                folder = tuned_folder(mdir, stamp, a.latentda, r, n, fam)
                args, tag = rargs(args0), []
                for k in range(a.tuned_steps + 1):
                    if k > 0:
                        # one fixed-point step from the previous step's reports (no truth)
                        opts = os.path.join(folder, f"step{k}.toml")
                        reps = sorted(glob.glob(os.path.join(folder, f"step{k - 1}", "*.json")))
                        p = subprocess.run([a.latentda, "tune", *reps, "--method", "hybrid", "--per-variable",
                                            "--output", opts], capture_output=True, text=True)
                        if p.returncode != 0:
                            raise SystemExit(f"latentda tune failed for {r}/{n} {fam} step {k}:\n{p.stderr[-2000:]}")
                        text = open(opts).read()
                        args = rargs(args0 if repeat else []) + ["--options", opts]
                        tag = ["options-sha256=" + hashlib.sha256(text.encode()).hexdigest()[:16]]
                    keys = {cname: key_of(r, cname, n, method, rargs(args0) + tag) + f"|{fam}|step{k}"
                            for cname, _ in cases}
                    n_run += run_tasks([(keys[cname], r, cname, d, n, fam, method, args,
                                         os.path.join(folder, f"step{k}", f"{cname}.json")) for cname, d in cases])
                tuned_keys[(n, fam)] = keys
        log(f"recipe {r}: {n_run} analyses run ({time.time() - t_r:.0f}s)")
        rng = np.random.default_rng(12345)
        pacc = {h: np.zeros(3) for h in "NS"}
        rows = {n: {} for n in nets}
        for cname, d in cases:
            xt = CS.read_state(os.path.join(d, "truth.nc"))
            xb = CS.read_state(os.path.join(d, "background.nc"))
            rb = SU.band_rmse(xb - xt, LAT)
            tb = BL.balance(xt, xb, LAT, LON)
            tbh = {h: BL.balance(xt, xb, LAT, LON, h) for h in "NS"}
            for dx in prior.draws(xb, a.draws, rng):
                for h in "NS":
                    pacc[h] += BL.sums(xb, xb + dx, LAT, LON, h)
            for n in nets:
                row = {"background": rb, "true_error_balance": tb, "true_error_balance_hemi": tbh}
                for name, method, args in runs:
                    row[name] = cache[key_of(r, cname, n, method, rargs(args))]
                for (n2, fam), keys in tuned_keys.items():
                    if n2 == n:
                        row[fam] = cache[keys[cname]]
                rows[n][cname] = row
                g = lambda m, v: row[m]["rmse"]["global"][v] / rb["global"][v]
                log(f"{r} {cname} {n:7s} " + "  ".join(
                    f"{m}: " + " ".join(f"{g(m, v):.3f}" for v in VARS)
                    + (f" bal {row[m]['balance']:.2f}" if row[m]["balance"] is not None else " REJECTED")
                    for m in all_names) + f"  true bal {tb:.2f}")
        prior_bal[r] = {h: BL.correlation(s) for h, s in pacc.items()}
        res[r] = {}
        for n in nets:
            s = cell_summary(rows[n], all_names)
            s["gates"] = cell_gates(n, s, names)
            if a.tuned_steps:
                s["tuned_gates"] = tuned_gates(s)
            res[r][n] = s
        cases_all[r] = rows
        log(f"recipe {r} done in {time.time() - t_r:.0f}s; prior-draw balance NH {prior_bal[r]['N']:.2f} "
            f"SH {prior_bal[r]['S']:.2f}")
    # worst cell: the hybrid against 3dvar (geometric mean over the variables of the ratio of ratios)
    worst = None
    if "hybrid" in names and "3dvar" in names:
        sc = {f"{r}/{n}": geomean(res[r][n]["ratios"]["global"], "hybrid", "3dvar") for r in recipes for n in nets}
        c = max(sc, key=sc.get)
        worst = {"cell": c, "hybrid_over_3dvar": sc[c], "all": sc}
    wr = max(((res[r][n]["ratios"]["global"][m][v], f"{r}/{n} {m} {v}") for r in recipes for n in nets
              for m in names if m in LATENT for v in VARS), default=(float("nan"), "-"))
    av = list(sys.argv[1:] if argv is None else argv)
    av = [x for i, x in enumerate(av) if x != "--note" and not (i > 0 and av[i - 1] == "--note")]
    meta = {"command": "latentda-matrix " + " ".join(av) + (' --note "..."' if a.note else ""),
            "bundle": os.path.abspath(a.bundle), "bundle_name": os.path.basename(os.path.abspath(a.bundle)),
            "bundle_run": bundle, "shipped_bounds": shipped_bounds, "t_bounds_run": a.t_bounds,
            "bundle_stamp": stamp, "backend": "ort" if a.ort else (a.backend_args or "tract"),
            "launches": launches, "runs": runs, "n_analyses": sum(
                res[r][n]["n_cases"] for r in recipes for n in nets) * len(names), "n_run_now": n_analyses,
            "wall_minutes": (time.time() - t_start) / 60.0, "worst_cell": worst,
            "worst_ratio": {"value": wr[0], "where": wr[1]}, "recipes": {r: RECIPES[r] for r in recipes},
            "networks": {n: NETWORKS[n] for n in nets}, "note": a.note, "tuned_steps": a.tuned_steps}
    md = markdown(res, recipes, nets, all_names, prior_bal, meta)
    print("\n" + md)
    jp = a.json or os.path.join(mdir, "matrix.json")
    mp = a.markdown or os.path.join(mdir, "matrix.md")
    json.dump({"meta": meta, "prior_draw_balance": prior_bal, "cells": res, "cases": cases_all}, open(jp, "w"), indent=1)
    open(mp, "w").write(md)
    log(f"wrote {jp} and {mp} ({meta['wall_minutes']:.1f} min)")


if __name__ == "__main__":
    main()
