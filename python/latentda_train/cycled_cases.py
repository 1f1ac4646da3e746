"""Recipe (c) of the robustness matrix: backgrounds that are 6 h forecasts of cycled analyses.

A short 3D-Var cycle, in memory, with the cycling driver's own pieces (`cycling.Model`, its C ABI wrapper
`cycling.Latentda`, `cycling.HostFields`, `cycling.observations`, `cycling.add_increment`; cycling.py itself is not
changed and its outputs are not needed): jcm starts at 00 UTC of day START - SPINUP from the truth perturbed as in
`forecasts.Forecaster.run`, forecasts 6 h, latentda analyses the forecast with `--method` (default 3dvar, the B of
`cycling.CYCLING_OPTIONS`, both B x 0.35 for 6 h errors) and the cycle's observations (`--network`, default
"uniform": 300 new uniform random columns each cycle, noise seed `cycling.OBS_SEED + c`), the increment goes back
into jcm's spectral state, and so on. After the spin-up, the 6 h background and the truth of every EVERY-th cycle
are saved as OUT/cycle_CCCC.npz (bg, truth: float32 (41, 48, 96); cycle, day, hour, the background's RMSE):
the matrix draws its own, independent observations for them.

With `--members K` the cycle also runs the time-lagged ensemble of the cycling driver (`cycling.advance_lagged`:
the background and the earlier analyses' forecasts valid at the same time, leads 6 .. 6 K h) and saves it per saved
cycle as OUT/members<K>_CCCC.npz (members: float32 (K, 41, 48, 96), member 0 is the background), for the latent
EnVar comparison on the cycled-error cells (`ensemble_cases --recipe c6`). When the case files exist already, the
rerun is checked to reproduce their backgrounds (the largest difference is logged) and they are kept.

    python -m latentda_train.cycled_cases --data DATA --out DATA/matrix/cycled
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np

from . import cases as CS
from . import data as D

START_DAY = 611        # first day that may hold a saved case (validation period: >= 600)
SPINUP_DAYS = 3
EVERY = 5              # cycles between saved cases (30 h: the saved times walk through 00/06/12/18 UTC)
N_CASES = 8
METHOD = "3dvar"
NETWORK = "uniform"
ADAPTIVE_WINDOW = 8    # cycles behind each online sizing step (the library's default; README "Sized by latentda")


def saved_cycles(spinup_days=SPINUP_DAYS, every=EVERY, n=N_CASES):
    """Cycle numbers (1 = the first 6 h forecast) whose backgrounds are saved: after the spin-up, every `every`."""
    return [4 * spinup_days + 1 + every * k for k in range(n)]


def run(data, out, start_day=START_DAY, spinup_days=SPINUP_DAYS, every=EVERY, n=N_CASES, method=METHOD,
        network=NETWORK, bundle=None, lib=None, extra_options="", log=None, members=0, adaptive=False,
        adaptive_options=""):
    """Runs the cycle (unless every case file, and with `members` every members file, exists) and returns the saved
    case files in cycle order. With `adaptive` the library sizes the B online from the innovations, as a host would
    (options `adaptive_state` in OUT, `adaptive_rule = "innovation"`, `adaptive_window` ADAPTIVE_WINDOW; scalar):
    the backgrounds of a cycle whose B is sized right, not 0.35 x the bundle's 48 h B throughout; `adaptive_options`
    (TOML lines) adds to that, e.g. `adaptive_per_variable = true`."""
    from . import cycling as CY
    log = log or (lambda m: print(m, flush=True))
    want = saved_cycles(spinup_days, every, n)
    files = [os.path.join(out, f"cycle_{c:04d}.npz") for c in want]
    mfiles = [members_file(out, members, c) for c in want] if members else []
    if all(os.path.exists(f) for f in files + mfiles):
        return files
    os.makedirs(out, exist_ok=True)
    settings = {"start_day": start_day, "spinup_days": spinup_days, "every": every, "n": n, "method": method,
                "network": network, "options": CY.CYCLING_OPTIONS, "obs_seed": CY.OBS_SEED,
                "bundle": os.path.abspath(bundle or CY.DEFAULT_BUNDLE)}
    options = CY.CYCLING_OPTIONS + ("\n" + extra_options if extra_options else "")
    if adaptive:
        settings["adaptive"] = {"rule": "innovation", "window": ADAPTIVE_WINDOW}
        if adaptive_options:
            settings["adaptive"]["options"] = adaptive_options
        state = os.path.join(out, CY.LIB_STATE)
        if os.path.exists(state):
            os.remove(state)   # every run starts from the starting B, so a rerun reproduces its backgrounds
        options += f'\nadaptive_state = "{state}"\nadaptive_rule = "innovation"\nadaptive_window = {ADAPTIVE_WINDOW}'
        options += "\n" + adaptive_options if adaptive_options else ""
    sp = os.path.join(out, "settings.json")
    if os.path.exists(sp) and json.load(open(sp)) != settings:
        for f in glob.glob(os.path.join(out, "cycle_*.npz")):
            os.remove(f)
    json.dump(settings, open(sp, "w"), indent=1)
    t0 = time.time()
    lat, lon, sig = D.grid(data)
    X = CY.Nature(data)
    st = CS.stations(lat, lon)
    t0_day = start_day - spinup_days
    model = CY.Model(data)
    dyn, phys, step, info = model.perturbed_start(t0_day)
    model.set(dyn, phys, step)
    lda = CY.Latentda(lib or CY.DEFAULT_LIB, bundle or CY.DEFAULT_BUNDLE, options)
    host = CY.HostFields(lda, len(lat), len(lon))
    log(f"cycled cases: {method}/{network} from day {t0_day} 00 UTC (perturbation days {info['a']}, {info['b']}), "
        f"saving cycles {want}; ready in {time.time() - t0:.1f} s")
    lag = []
    for c in range(1, max(want) + 1):
        x_b = model.step6h()
        ens = None
        if members:
            ens, lag = CY.advance_lagged(model, x_b, lag, members)
        truth = np.asarray(X[4 * t0_day - 1 + c], np.float64)
        rb = CY.area_rmse(x_b - truth, lat)
        if c in want and members:
            if ens is None:
                raise SystemExit(f"cycle {c}: fewer than {members} lagged forecasts so far (more spin-up needed)")
            mf = mfiles[want.index(c)]
            np.savez(mf + ".partial.npz", members=ens.astype(np.float32), cycle=c,
                     member_rmse=json.dumps([CY.area_rmse(m - truth, lat) for m in ens]))
            os.replace(mf + ".partial.npz", mf)
        if c in want and os.path.exists(files[want.index(c)]):
            # kept: the rerun (for the members) must reproduce the saved background
            old = np.load(files[want.index(c)])["bg"].astype(np.float64)
            log(f"cycle {c}: saved background kept; largest |rerun - saved| per variable "
                + " ".join(f"{v} {np.max(np.abs(x_b[sl] - old[sl])):.2e}" for v, sl in D.VAR_SLICES.items()))
        elif c in want:
            f = files[want.index(c)]
            np.savez(f + ".partial.npz", bg=x_b.astype(np.float32), truth=truth.astype(np.float32), cycle=c,
                     day=t0_day + c // 4, hour=6 * (c % 4), bg_rmse=json.dumps(rb), start_day=t0_day)
            os.replace(f + ".partial.npz", f)
        obs = CY.observations(lda, truth, lat, lon, sig, st, CY.OBS_SEED + c, network)
        host.load(x_b)
        lda.set_obs(*obs)
        lda.analyse(method)
        x_a = host.state()
        dyn_b, phys, step = model.current()
        model.set(CY.add_increment(model.m, dyn_b, x_b, x_a), phys, step)
        ra = CY.area_rmse(x_a - truth, lat)
        log(f"cycle {c:3d} day {t0_day + c // 4} {6 * (c % 4):02d}Z " + " ".join(
            f"{v} {rb[v]:.3g}->{ra[v]:.3g}" for v in ("u", "v", "t", "ps")) + (" saved" if c in want else "")
            + f" {time.time() - t0:.0f}s")
    lda.close()
    return files


def members_file(out, k, c):
    """The lagged members of saved cycle c (run with --members k)."""
    return os.path.join(out, f"members{k}_{c:04d}.npz")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=D.DEFAULT_OUT)
    ap.add_argument("--out", default=None, help="default DATA/matrix/cycled")
    ap.add_argument("--start-day", type=int, default=START_DAY)
    ap.add_argument("--spinup-days", type=int, default=SPINUP_DAYS)
    ap.add_argument("--every", type=int, default=EVERY)
    ap.add_argument("--cases", type=int, default=N_CASES)
    ap.add_argument("--method", default=METHOD)
    ap.add_argument("--network", default=NETWORK)
    ap.add_argument("--bundle", default=None, help="default: the reference bundle models/speedy-t31")
    ap.add_argument("--options", default="", help="extra latentda options (TOML lines), e.g. the ONNX Runtime backend")
    ap.add_argument("--lib", default=None, help="liblatentda.so (default: target/release)")
    ap.add_argument("--members", type=int, default=0, help="K of a time-lagged ensemble saved with the cases (0: none)")
    ap.add_argument("--adaptive", action="store_true", help="the library sizes the B online from the innovations "
                    "(scalar, innovation rule, window ADAPTIVE_WINDOW)")
    a = ap.parse_args(argv)
    run(a.data, a.out or os.path.join(a.data, "matrix", "cycled"), a.start_day, a.spinup_days, a.every, a.cases,
        a.method, a.network, bundle=a.bundle, lib=a.lib, extra_options=a.options, members=a.members,
        adaptive=a.adaptive)


if __name__ == "__main__":
    main()
