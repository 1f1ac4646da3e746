"""Validation suite: many cases, two observation networks, every method, the BRIEF section 4 gates.

    latentda-suite --out DATA --bundle models/speedy-t31                       # validation period (default)
    latentda-suite --out DATA --bundle B --launches 240:328:8 --name tune      # training period (for tuning)
    latentda-suite --out DATA --bundle B --run 3dvar=3dvar --run hyb2=hybrid:--hybrid-alpha=2 ...

Cases (made once, reproducible, under DATA/suite_NAME/case_LLLL/): the nature state valid two days after launch L
(truth), the 48 h forecast launched on day L from a perturbed truth (background), and two observation files from the
same fixed network of `cases.N_STATIONS` radiosonde-like columns: `obs_sonde.csv` (u, v, t on all levels, q where
meaningful with a relative-humidity error, ps) and `obs_mass.csv` (t profiles in the same columns plus ps at
`cases.N_PS_POINTS` points). Nothing here is used by training or calibration (those use launches before day 598).

For every case, network and run, the `latentda` CLI (target/release/latentda) analyses the case; the suite prints per
variable the mean over cases of (area-weighted RMSE of the analysis) / (RMSE of the background), how many cases each
run beats the baseline run on, the balance of the increments, the prior-draw balance of the latent B per hemisphere and
the true background error's balance as yardstick, and checks the gates of BRIEF section 4. `--json` keeps everything.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time

import netCDF4
import numpy as np

from . import balance as BL
from . import cases as CS
from . import data as D

VARS = list(D.VAR_SLICES)
NETWORKS = {"sonde": "obs_sonde.csv", "mass": "obs_mass.csv"}
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def make_cases(out, folder, launches):
    """Write the cases that do not exist yet; returns their folders."""
    X = D.nature(out)
    lat, lon, sig = D.grid(out)
    st = CS.stations(lat, lon)
    dirs = []
    fc = None
    for L in launches:
        d = os.path.join(folder, f"case_{L:04d}")
        dirs.append(d)
        if all(os.path.exists(os.path.join(d, f)) for f in ("truth.nc", "background.nc", *NETWORKS.values())):
            continue
        if fc is None:
            fc = D.forecasts(out)
        if L not in fc:
            raise SystemExit(f"no forecast launched on day {L} under {out}/forecasts")
        CS.write_case(d, np.asarray(X[D.truth_index(L + 2)], np.float64), fc[L][1].astype(np.float64), lat, lon, sig,
                      st, seed=1000 + L, title=f"launch day {L}",
                      networks=tuple((f, n) for n, f in NETWORKS.items()))
    return dirs


def area_rmse(d, lat):
    """Area-weighted (cos latitude) RMSE per variable of a difference [41, nlat, nlon]."""
    w = np.cos(np.radians(lat))[None, :, None]
    return {v: float(np.sqrt(np.sum(w * d[sl] ** 2) / (np.sum(w) * d.shape[-1] * (sl.stop - sl.start))))
            for v, sl in D.VAR_SLICES.items()}


# latitude bands of the robustness matrix (BRIEF section 2): name -> test on latitude (degrees)
BANDS = {"global": lambda la: np.ones_like(la, bool), "nh": lambda la: la > 20.0, "tropics": lambda la: np.abs(la) <= 20.0,
         "sh": lambda la: la < -20.0, "extratropics": lambda la: np.abs(la) > 20.0}


def band_rmse(d, lat, bands=BANDS):
    """Area-weighted (cos latitude) RMSE per band and variable of a difference [41, nlat, nlon]:
    {band: {var: rmse}} over the rows of each band (`area_rmse` for 'global')."""
    lat = np.asarray(lat, np.float64)
    out = {}
    for b, sel in bands.items():
        m = sel(lat)
        out[b] = area_rmse(d[:, m], lat[m])
    return out


def parse_runs(specs):
    """'name=method[:arg1:arg2...]' -> [(name, method, [args])] (arguments split on ':', '=' inside kept)."""
    runs = []
    for s in specs:
        name, rest = s.split("=", 1)
        method, *args = rest.split(":")
        runs.append((name, method, [x for a in args for x in a.split("=", 1)] if args else []))
    return runs


def bundle_stamp(bundle):
    """Identity of a bundle's content: the SHA-256 of its manifest (which holds every file's checksum)."""
    import hashlib
    return hashlib.sha256(open(os.path.join(bundle, "bundle.toml"), "rb").read()).hexdigest()[:16]


def run_cli(latentda, bundle, case, obs, method, args, tmp):
    out = os.path.join(tmp, "an.nc")
    rep = os.path.join(tmp, "report.json")
    cmd = [latentda, "analyse", "--bundle", bundle, "--method", method, "--background",
           os.path.join(case, "background.nc"), "--obs", os.path.join(case, obs), "--output", out, "--report", rep,
           *args]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    r = json.load(open(rep))
    return CS.read_state(out), r, time.time() - t0


class PriorDraws:
    """Draws sd * D'(z_b)(s * xi) of the bundle's latent B, with ONNX Runtime on the bundle's graphs."""

    def __init__(self, bundle):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.enc = ort.InferenceSession(os.path.join(bundle, "encoder.onnx"), so, providers=["CPUExecutionProvider"])
        self.tl = ort.InferenceSession(os.path.join(bundle, "decoder_tl.onnx"), so, providers=["CPUExecutionProvider"])
        with netCDF4.Dataset(os.path.join(bundle, "normalisation.nc")) as ds:
            self.mean, self.std = np.asarray(ds["mean"][:], np.float64), np.asarray(ds["std"][:], np.float64)
        with netCDF4.Dataset(os.path.join(bundle, "latent_variance.nc")) as ds:
            self.s = np.sqrt(np.asarray(ds["variance"][:], np.float64))

    def draws(self, xb, n, rng):
        xn = ((xb - self.mean[:, None, None]) / self.std[:, None, None]).astype(np.float32)[None]
        z = self.enc.run(None, {"x": xn})[0]
        out = []
        for _ in range(n):
            dz = (rng.standard_normal(self.s.shape) * self.s).astype(np.float32)[None]
            dx = self.tl.run(None, {"z": z, "dz": dz})[0][0].astype(np.float64)
            out.append(dx * self.std[:, None, None])
        return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=D.DEFAULT_OUT, help="data folder (nature run, forecasts)")
    ap.add_argument("--bundle", default=os.path.join(REPO, "models", "speedy-t31"))
    ap.add_argument("--launches", default="610:720:10", help="launch days first:last[:step] (default: 12 validation cases)")
    ap.add_argument("--name", default="validation", help="suite folder DATA/suite_NAME")
    ap.add_argument("--networks", default="sonde,mass")
    ap.add_argument("--run", action="append", default=None,
                    help="NAME=METHOD[:CLI-ARGS] (repeatable; args separated by ':'); default 3dvar, l3dvar, hybrid")
    ap.add_argument("--baseline", default="3dvar", help="the run the others are compared with")
    ap.add_argument("--latentda", default=os.path.join(REPO, "target", "release", "latentda"))
    ap.add_argument("--draws", type=int, default=4, help="prior draws per case for the prior-draw balance")
    ap.add_argument("--backend-args", default="",
                    help="CLI arguments added to every run, e.g. '--backend ort --ort-library PATH' (ONNX Runtime is "
                         "several times faster than the default pure-Rust backend; results agree to about 1e-6)")
    ap.add_argument("--no-cache", action="store_true",
                    help="rerun everything (default: reuse results of identical runs, DATA/suite_NAME/cache_BUNDLE.json)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from .forecasts import launch_days
    launches = launch_days(a.launches)
    folder = os.path.join(a.out, f"suite_{a.name}")
    cases = make_cases(a.out, folder, launches)
    runs = parse_runs(a.run or ["3dvar=3dvar", "l3dvar=l3dvar", "hybrid=hybrid"])
    names = [r[0] for r in runs]
    nets = a.networks.split(",")
    lat, lon, _ = D.grid(a.out)
    prior = PriorDraws(a.bundle)
    rng = np.random.default_rng(12345)
    res = {n: {} for n in nets}
    prior_acc = {h: np.zeros(3) for h in ("N", "S")}
    true_acc = {h: np.zeros(3) for h in ("N", "S")}
    cache_path = os.path.join(folder, f"cache_{bundle_stamp(a.bundle)}.json")  # one per bundle: suites may run at once
    cache = {} if a.no_cache or not os.path.exists(cache_path) else json.load(open(cache_path))
    extra = a.backend_args.split()
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            cname = os.path.basename(case)
            xt = CS.read_state(os.path.join(case, "truth.nc"))
            xb = CS.read_state(os.path.join(case, "background.nc"))
            rb = area_rmse(xb - xt, lat)
            for h in ("N", "S"):
                true_acc[h] += BL.sums(xt, xb, lat, lon, h)
                for d in prior.draws(xb, a.draws, rng):
                    prior_acc[h] += BL.sums(xb, xb + d, lat, lon, h)
            for net in nets:
                row = {"background": rb, "true_error_balance": BL.balance(xt, xb, lat, lon)}
                for name, method, args in runs:
                    key = "|".join([os.path.abspath(a.bundle), bundle_stamp(a.bundle), os.path.abspath(a.latentda),
                                    cname, net, method, *args, *extra])
                    if key not in cache:
                        xa, rep, secs = run_cli(a.latentda, a.bundle, case, NETWORKS[net], method, args + extra, tmp)
                        s = rep["solver"]
                        cache[key] = {"rmse": area_rmse(xa - xt, lat),
                                      "balance": (rep.get("balance") or {}).get("correlation"),
                                      "pairs": s["inner_total"], "grad_reduction": s["grad_reduction"], "seconds": secs,
                                      "n_used": rep["n_used"], "n_obs": rep["n_obs"], "backend": rep.get("backend")}
                        tmpc = cache_path + f".{os.getpid()}"
                        json.dump(cache, open(tmpc, "w"))
                        os.replace(tmpc, cache_path)
                    row[name] = cache[key]
                res[net][cname] = row
                print(f"{cname} {net:5s} " + "  ".join(
                    f"{n}: " + " ".join(f"{row[n]['rmse'][v] / rb[v]:.3f}" for v in VARS)
                    + f" bal {row[n]['balance']:.2f} {row[n]['pairs']}p {1 / row[n]['grad_reduction']:.0f}x"
                    for n in names), flush=True)
    summary = report(res, names, a.baseline, prior_acc, true_acc)
    if a.json:
        import sys
        json.dump({"command": "latentda-suite " + " ".join(sys.argv[1:] if argv is None else argv),
                   "bundle": os.path.abspath(a.bundle), "launches": launches, "runs": runs, "cases": res,
                   "summary": summary}, open(a.json, "w"), indent=1)


def report(res, names, base, prior_acc, true_acc):
    """Print the tables and the gates; return the summary dict."""
    summary = {"prior_draw_balance": {h: BL.correlation(s) for h, s in prior_acc.items()},
               "true_error_balance": {h: BL.correlation(s) for h, s in true_acc.items()}, "networks": {}}
    for net, rows in res.items():
        n = len(rows)
        print(f"\n### Network '{net}': {n} cases; mean over cases of analysis RMSE / background RMSE (lower is better)")
        print("| variable | background RMSE | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        S = {}
        for v in VARS:
            bgm = float(np.mean([r["background"][v] for r in rows.values()]))
            ratios = {m: [r[m]["rmse"][v] / r["background"][v] for r in rows.values()] for m in names}
            S[v] = {m: float(np.mean(x)) for m, x in ratios.items()}
            S[v]["wins_vs_" + base] = {m: int(sum(a < b for a, b in zip(ratios[m], ratios[base]))) for m in names
                                       if m != base}
            print(f"| {v} | {bgm:.4g} | " + " | ".join(f"{S[v][m]:.3f}" for m in names) + " |")
        bal = {m: float(np.mean([r[m]["balance"] for r in rows.values()])) for m in names}
        tb = float(np.mean([r["true_error_balance"] for r in rows.values()]))
        pairs = {m: (min(r[m]["pairs"] for r in rows.values()), max(r[m]["pairs"] for r in rows.values())) for m in names}
        red = {m: min(1 / r[m]["grad_reduction"] for r in rows.values()) for m in names}
        secs = {m: float(np.median([r[m]["seconds"] for r in rows.values()])) for m in names}
        print("| balance of increments (|lat| > 20) | " + f"{tb:.2f} (true bg error) | "
              + " | ".join(f"{bal[m]:.2f}" for m in names) + " |")
        print("| cases better than " + base + f" on >= 5 of 6 variables | | "
              + " | ".join(str(sum(sum(r[m]['rmse'][v] / r['background'][v] < r[base]['rmse'][v] / r['background'][v]
                                       for v in VARS) >= 5 for r in rows.values())) if m != base else "-"
                           for m in names) + " |")
        print("| TL/AD pairs (min-max) | | " + " | ".join(f"{pairs[m][0]}-{pairs[m][1]}" for m in names) + " |")
        print("| smallest gradient reduction | | " + " | ".join(f"{red[m]:.3g}" for m in names) + " |")
        print("| median wall time per analysis (s) | | " + " | ".join(f"{secs[m]:.2f}" for m in names) + " |")
        summary["networks"][net] = {"ratios": S, "balance": bal, "true_error_balance": tb, "pairs": pairs,
                                    "min_reduction": red, "median_seconds": secs, "n_cases": n}
    pb = summary["prior_draw_balance"]
    tb = summary["true_error_balance"]
    print(f"\nprior-draw balance of the latent B: NH {pb['N']:.3f}, SH {pb['S']:.3f}; true background error: "
          f"NH {tb['N']:.3f}, SH {tb['S']:.3f}")
    # gates (BRIEF section 4), for each latentda run
    print("\ngates (BRIEF section 4):")
    gates = {}
    for m in names:
        if m == base:
            continue
        g = {}
        for net, sn in summary["networks"].items():
            r = sn["ratios"]
            g[f"{net}: wins on >= 5 of 6 variables"] = sum(r[v][m] < r[v][base] for v in VARS) >= 5
            g[f"{net}: no variable worse than background"] = all(r[v][m] < 1.0 for v in VARS)
            g[f"{net}: increment balance >= 0.6"] = sn["balance"][m] >= 0.6
        if "mass" in summary["networks"]:
            r = summary["networks"]["mass"]["ratios"]
            g["mass: wind RMSE down >= 10 %"] = max(r["u"][m], r["v"][m]) <= 0.9
        g["prior-draw balance >= 0.6 in each hemisphere"] = min(pb.values()) >= 0.6
        gates[m] = g
        print(f"  {m}: " + "; ".join(f"{k} {'PASS' if ok else 'FAIL'}" for k, ok in g.items()))
    summary["gates"] = gates
    return summary


if __name__ == "__main__":
    main()
