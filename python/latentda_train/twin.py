"""How often even a perfect B leaves the analysis worse than its background (issue 20, the cycling gate "worse than
the background in at most 5 % of cycles").

A cycling run counts the cycles whose analysis has a larger global RMSE than its 6 h background, per variable. Part
of that count is the B's fault (wrong size or structure); part is chance: with few, noisy observations a correct
analysis removes a little background error on average and adds observation noise, and in a given cycle the noise
can win. This verb measures the chance part directly, with a perfect-B twin of a run's late cycles:

* the B is the one the run had in force at its end (for a run sized by the library: the last `b_in_force` of its
  `adaptive_b.json`; otherwise the run's options), served by `lda_brandomize` with `b_operator` of the run's method;
* the background x_b of a twin cycle is the nature state of a scored cycle of the run, and its truth is
  x_t = x_b - U xi, xi ~ N(0, I): the background error is a draw from exactly that B;
* the observations are the run's network for that cycle (the same column positions and noise seeds,
  `cycling.observations`), taken from x_t with the errors R of the analysis;
* the analysis is the run's method with that same B (latent increments linear, so the hybrid's B is the one the draw
  came from): the best linear unbiased estimate for this B and R, up to the solver's convergence.

The report compares, per variable, the share of twin cycles whose analysis is worse than its background (and the
mean analysis/background RMSE ratio) with the run's own figures over its scored cycles. The twin's share is what a
method with a perfect B would get on this network at this error size; a run far above it has a mis-specified B,
a run near it has little left to gain from the B on that count.

    latentda-twin --run OUT/uniform/hybrid-adaptive-pv-sq-lib --samples 60 --from-day 10
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from . import cases as CS
from . import cycling as C
from . import data as D

TWIN_SEED = 910000   # the background-error draw of twin cycle c: TWIN_SEED + c
B_KIND = {"3dvar": "static", "hybrid": "hybrid", "l3dvar": "latent"}


def options_in_force(folder: str) -> str:
    """The options of the B the run had in force at its last analysis: its own options, with the sizes of the last
    `b_in_force` of the library's state file (runs with --adaptive-in-library) or of the metrics' last "adaptive"
    entry (runs sized by the driver); a run with a fixed B keeps its options."""
    settings = json.load(open(os.path.join(folder, "settings.json")))
    o = C.parse_options(settings["options"])
    state = os.path.join(folder, C.LIB_STATE)
    if os.path.exists(state):
        bif = json.load(open(state))["window"][-1]["b_in_force"]
        for k in ("baseline_variance_factor", "latent_variance_factor", "hybrid_alpha", "hybrid_beta"):
            if bif.get(k) is not None:
                o[k] = bif[k]
        if bif.get("hybrid_weights"):
            o["hybrid_variable_weights"] = {
                v: dict(zip(("alpha", "beta", "alpha_tropics", "beta_tropics", "alpha_sh", "beta_sh"), w))
                for v, w in bif["hybrid_weights"].items()}
    elif settings.get("adaptive"):
        rows = C.read_metrics(folder)
        ad = [r["adaptive"] for r in rows if r.get("adaptive")]
        if not ad:
            raise SystemExit(f"{folder}: an adaptive run without an 'adaptive' entry in its metrics")
        if ad[-1].get("var_scales") or settings["adaptive"].get("split"):
            raise SystemExit(f"{folder}: per-variable or split sizing by the driver is not supported here; use a run "
                             "sized by the library (--adaptive-in-library)")
        o.update(ad[-1]["options"])
    return C.options_text(o)


def twin_options(folder: str, method: str) -> str:
    """The options of a twin of run `folder`: its B in force (`options_in_force`), served by the host B operator of
    `method` (`lda_brandomize`), with linear latent increments so that the analysis' B is the B drawn from."""
    opts = C.parse_options(options_in_force(folder))
    opts.update(b_operator=B_KIND[method], latent_increment="linear")
    return C.options_text(opts)


def run_shares(rows: list, variables: list) -> dict:
    """The run's own figures over `rows` (its scored cycles): % of cycles with the analysis worse than the
    background, mean analysis/background RMSE ratio, mean background RMSE."""
    out = {}
    for v in variables:
        b = np.array([r["bg"][v] for r in rows])
        a = np.array([r["an"][v] for r in rows])
        out[v] = {"worse_pct": float(100 * np.mean(a > b)), "ratio": float(np.mean(a / b)), "bg_rmse": float(np.mean(b))}
    return out


def twin_cycle(lda, host, x_b: np.ndarray, seed: int, obs_of, method: str) -> tuple:
    """One twin cycle: the truth x_b - U xi (xi from `seed`), the observations `obs_of(x_t)`, the analysis.
    Returns (x_t, x_a)."""
    host.load(x_b)
    lda.b_linearise()
    x_t = x_b - lda.brandomize(seed).reshape(x_b.shape)
    obs = obs_of(x_t)
    host.load(x_b)
    lda.set_obs(*obs)
    lda.analyse(method)
    return x_t, host.state()


def twin(a, log=print) -> dict:
    """The perfect-B twin of run `a.run` (see the module doc); returns the report (also written to `a.out`)."""
    folder = a.run
    settings = json.load(open(os.path.join(folder, "settings.json")))
    method = settings["method"]
    if method not in B_KIND:
        raise SystemExit(f"{folder}: method {method!r} has no B to draw from")
    if settings.get("ensemble"):
        raise SystemExit(f"{folder}: a run with an ensemble part; the twin draws from the static, latent or hybrid B "
                         "alone")
    rows = [r for r in C.read_metrics(folder) if r.get("scored") and "an" in r]
    first = settings["start_day"] + a.from_day
    rows = [r for r in rows if r["day"] + r["hour"] / 24 >= first]
    if not rows:
        raise SystemExit(f"{folder}: no scored cycle from day {first} on")
    picks = [rows[int(i)] for i in np.linspace(0, len(rows) - 1, min(a.samples, len(rows))).round()]
    options = twin_options(folder, method)
    lat, lon, sig = D.grid(a.data)
    X = C.Nature(a.data)
    st = CS.stations(lat, lon)
    t0_day = settings["start_day"] - settings["spinup_days"]
    lda, host = C.context(a, options, len(lat), len(lon))
    log(f"twin of {folder}: {len(picks)} cycles from day {first}, B in force:\n{options}")
    worse, ratio, bg = ({v: [] for v in C.NAMES} for _ in range(3))
    worse_bands = {b: {v: [] for v in C.NAMES} for b in C.BANDS}
    try:
        for r in picks:
            c = r["cycle"]
            x_b = np.asarray(X[4 * t0_day - 1 + c], np.float64)
            obs_of = lambda x_t: C.observations(lda, x_t, lat, lon, sig, st, C.OBS_SEED + c, settings["network"])
            x_t, x_a = twin_cycle(lda, host, x_b, TWIN_SEED + c, obs_of, method)
            eb, ea = C.area_rmse(x_b - x_t, lat), C.area_rmse(x_a - x_t, lat)
            bb, ba = C.band_rmse(x_b - x_t, lat), C.band_rmse(x_a - x_t, lat)
            for v in C.NAMES:
                worse[v].append(ea[v] > eb[v])
                ratio[v].append(ea[v] / eb[v])
                bg[v].append(eb[v])
                for b in C.BANDS:
                    worse_bands[b][v].append(ba[b][v] > bb[b][v])
            log(f"cycle {c} (day {r['day']} {r['hour']:02d}Z): " + " ".join(
                f"{v} {ea[v] / eb[v]:.4f}" for v in C.NAMES))
    finally:
        lda.close()
    rep = {"run": folder, "method": method, "network": settings["network"], "samples": len(picks),
           "from_day": first, "options": options,
           "twin": {v: {"worse_pct": float(100 * np.mean(worse[v])), "ratio": float(np.mean(ratio[v])),
                        "bg_rmse": float(np.mean(bg[v]))} for v in C.NAMES},
           "twin_bands": {b: {v: float(100 * np.mean(worse_bands[b][v])) for v in C.NAMES} for b in C.BANDS},
           "run_figures": run_shares(rows, C.NAMES)}
    log(table(rep))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rep, f, indent=1)
    return rep


def zonal_small_scale_share(e: np.ndarray, lat: np.ndarray, sl: slice, m_min: int = 8) -> float:
    """Share of the (cos latitude weighted) variance of e[sl] at zonal wavenumbers >= m_min."""
    p = np.abs(np.fft.rfft(e[sl], axis=-1)) ** 2
    p[..., 1:] *= 2
    p = (p * np.cos(np.radians(lat))[None, :, None]).sum(axis=(0, 1))
    return float(p[m_min:].sum() / p.sum())


def scales(a, log=print) -> dict:
    """--scales: the run's last background error (its checkpoint forecast 6 h with jcm, against the nature run) and
    `a.draws` draws of the B in force at that background, per variable: RMSE and the share of variance at zonal
    wavenumbers >= 8. Needs jcm (as `latentda-cycle run`)."""
    folder = a.run
    settings = json.load(open(os.path.join(folder, "settings.json")))
    lat, lon, _ = D.grid(a.data)
    model = C.Model(a.data)
    extra = model.load(os.path.join(folder, "state.npz"))
    x_b = model.step6h()
    t0_day = settings["start_day"] - settings["spinup_days"]
    err = x_b - np.asarray(C.Nature(a.data)[4 * t0_day + extra["cycle"]], np.float64)
    lda, host = C.context(a, twin_options(folder, settings["method"]), len(lat), len(lon))
    try:
        host.load(x_b)
        lda.b_linearise()
        draws = [lda.brandomize(TWIN_SEED + k).reshape(x_b.shape) for k in range(a.draws)]
    finally:
        lda.close()
    out = {v: {"run_rmse": C.area_rmse(err, lat)[v],
               "draw_rmse": float(np.mean([C.area_rmse(d, lat)[v] for d in draws])),
               "run_small_scale": zonal_small_scale_share(err, lat, sl),
               "draw_small_scale": float(np.mean([zonal_small_scale_share(d, lat, sl) for d in draws]))}
           for v, sl in D.VAR_SLICES.items()}
    log(f"Background error of {folder} after its last cycle against {a.draws} draws of its B in force")
    log("| variable | run RMSE | draw RMSE | run: variance at zonal m >= 8 | draws |")
    log("|---|---|---|---|---|")
    for v, r in out.items():
        log(f"| {v} | {r['run_rmse']:.4g} | {r['draw_rmse']:.4g} | {r['run_small_scale']:.2f} | {r['draw_small_scale']:.2f} |")
    return out


def table(rep: dict) -> str:
    """Markdown table of a twin report: the twin against the run, per variable."""
    lines = [f"Perfect-B twin of {rep['run']} ({rep['method']}, {rep['network']} network; {rep['samples']} twin "
             f"cycles from day {rep['from_day']:g})", "",
             "| variable | twin: worse than bg (%) | twin: an/bg | twin: bg RMSE | run: worse than bg (%) | run: an/bg "
             "| run: bg RMSE | twin worse (%) nh / tropics / sh |", "|---|---|---|---|---|---|---|---|"]
    for v in C.NAMES:
        t, r = rep["twin"][v], rep["run_figures"][v]
        bands = " / ".join(f"{rep['twin_bands'][b][v]:.0f}" for b in C.BANDS)
        lines.append(f"| {v} | {t['worse_pct']:.0f} | {t['ratio']:.4f} | {t['bg_rmse']:.4g} | {r['worse_pct']:.0f} "
                     f"| {r['ratio']:.4f} | {r['bg_rmse']:.4g} | {bands} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="latentda-twin", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a latentda-cycle run folder (OUT/NETWORK/RUN_NAME)")
    ap.add_argument("--samples", type=int, default=60, help="twin cycles, spread evenly over the run's scored cycles")
    ap.add_argument("--from-day", type=float, default=10.0, help="days after the run's start day to sample from")
    ap.add_argument("--data", default=os.environ.get("LATENTDA_DATA", "data"), help="data folder (nature run, grid)")
    ap.add_argument("--lib", default=C.DEFAULT_LIB, help="liblatentda.so")
    ap.add_argument("--bundle", default=C.DEFAULT_BUNDLE, help="the bundle the run used")
    ap.add_argument("--out", help="write the report as JSON here")
    ap.add_argument("--scales", action="store_true",
                    help="instead: the run's last background error (6 h forecast of its checkpoint, with jcm) against "
                         "draws of its B, RMSE and variance share at zonal wavenumbers >= 8")
    ap.add_argument("--draws", type=int, default=8, help="draws of the B for --scales")
    a = ap.parse_args(argv)
    scales(a) if a.scales else twin(a)


if __name__ == "__main__":
    main()
