"""Latent B variance from a mixture of error recipes (issue 20, item 4: "train on a mixture of error recipes, cycled
errors included; position-dependent latent variance").

The shipped bundle's latent variance has the shape of encoded NMC differences, E(N(x48)) - E(N(x24)), one number per
latent element (channel x latent row x latent column), times one model-space factor. NMC differences are
differences of two forecasts, not errors, and the robustness matrix's failing cells have errors of other shapes
(smooth random perturbations, short leads, cycled 6 h errors). This verb keeps the autoencoder and replaces the
variance's shape by that of the encoded true errors E(N(xb)) - E(N(xt)) of training-period cases of every recipe:

* a24, a48: nature-difference perturbations, 24 h / 48 h forecasts (DATA/forecasts, `latentda-forecasts`);
* b6, b24, b48: smooth random perturbations, 6 / 24 / 48 h forecasts (DATA/matrix/forecasts_random);
* c6 (one folder per cycle given): 6 h backgrounds of training-period 3D-Var cycles (`latentda_train.cycled_cases
  --start-day D`, D + its cases before day 600).

Each recipe's mean square latent error is normalised to unit sum and the recipes are averaged with equal weight, so
that no lead time dominates by its size. The amplitude is then set as the shipped one is, in model space: one global
factor k makes the latent B's implied variance diag(U U^T) (from `latentda sigma-b` at training-period 48 h
backgrounds) match the true a48 error variance (geometric mean over u, v, t, q, ps), the reference of the bundle's
static B as well. Only the training period (days < 600) is read. The result is a copy of the bundle with new
latent_variance.nc and latent_b_variance.nc and their checksums; it is judged by the matrix
(`latentda-matrix --bundle DEST`), not by these cases.

    latentda-mixture --data DATA --dest DATA/mixture/bundle \
        --cycled DATA/mixture/cycled_uniform,DATA/mixture/cycled_sonde
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

from . import cases as CS
from . import data as D
from .bundle import REPO, latentda_binary, read_latent_variance, sha256, write_latent_variance

TRAIN_DAYS = 600
CALIB_VARS = ("u", "v", "t", "q", "ps")
DEFAULT_LAUNCHES = "25:585:16"


def recipe_samples(data, launches, cycled):
    """dict recipe -> list of loaders () -> (background, truth), training period only."""
    fc = D.forecasts(data, launches)
    rnd = os.path.join(data, "matrix", "forecasts_random")
    res = {"a24": [], "a48": [], "b6": [], "b24": [], "b48": []}
    for L in launches:
        if L + 2 >= TRAIN_DAYS:
            raise SystemExit(f"launch {L}: its 48 h forecast is valid on day {L + 2}, not in the training period")
        if L in fc:
            res["a24"].append((L, 24, lambda L=L: fc[L][0]))
            res["a48"].append((L, 48, lambda L=L: fc[L][1]))
        fn = os.path.join(rnd, f"fc_{L:04d}.npz")
        if os.path.exists(fn):
            for h in (6, 24, 48):
                res[f"b{h}"].append((L, h, lambda fn=fn, h=h: np.load(fn)[f"fc{h}"]))
    for folder in cycled:
        files = sorted(glob.glob(os.path.join(folder, "cycle_*.npz")))
        late = [f for f in files if int(np.load(f)["day"]) >= TRAIN_DAYS]
        if late:
            raise SystemExit(f"{late[0]}: a cycled case in the validation period (day >= {TRAIN_DAYS})")
        res[f"c6_{os.path.basename(os.path.normpath(folder))}"] = [(f, 6, lambda f=f: np.load(f)) for f in files]
    missing = [r for r, v in res.items() if not v]
    if missing:
        raise SystemExit(f"no training-period samples for {', '.join(missing)} under {data} (launches "
                         f"{launches[0]}..{launches[-1]}): run latentda-forecasts and the recipe-b forecasts first")
    return res


def load_pair(item, X):
    """(background, truth) float64 (41, nlat, nlon) of one sample."""
    key, lead, load = item
    r = load()
    if isinstance(r, np.lib.npyio.NpzFile):
        return r["bg"].astype(np.float64), r["truth"].astype(np.float64)
    return np.asarray(r, np.float64), np.asarray(X[D.truth_index(key) + lead // 6], np.float64)


class Encoder:
    """The bundle's encoder.onnx through ONNX Runtime, with the bundle's normalisation."""

    def __init__(self, bundle):
        from .stepmodel import bundle_norm, ort_session
        self.sess = ort_session(os.path.join(bundle, "encoder.onnx"), threads=0)  # 0: ONNX Runtime's default
        self.mean, self.std = bundle_norm(bundle)

    def __call__(self, x):
        xn = ((x - self.mean[:, None, None]) / self.std[:, None, None]).astype(np.float32)[None]
        return self.sess.run(None, {"x": xn})[0][0].astype(np.float64)


def latent_error_moments(samples, enc, X, log=print):
    """recipe -> mean square latent error (40, 12, 24), and per-recipe model-space error variance per channel."""
    ms, vx = {}, {}
    for r, items in samples.items():
        acc, accx = 0.0, 0.0
        for it in items:
            xb, xt = load_pair(it, X)
            acc = acc + (enc(xb) - enc(xt)) ** 2
            accx = accx + ((xb - xt) ** 2).mean(axis=(1, 2))
        ms[r], vx[r] = acc / len(items), accx / len(items)
        log(f"{r}: {len(items)} samples, latent error rms {np.sqrt(ms[r].mean()):.4f}, model-space rms u "
            f"{np.sqrt(vx[r][0:8].mean()):.3f} t {np.sqrt(vx[r][16:24].mean()):.3f} ps {np.sqrt(vx[r][40]):.1f}")
    return ms, vx


def mixture_shape(ms):
    """Equal-weight average of the recipes' mean square latent errors, each normalised to unit sum."""
    return sum(m / m.sum() for m in ms.values()) / len(ms)


def spread(items, n):
    """n items (at most all) evenly spaced over `items`, first and last included."""
    return [items[i] for i in np.linspace(0, len(items) - 1, min(n, len(items))).round().astype(int)]


def implied_variance(bundle, states, draws):
    """Per channel, the grid mean of the latent B's diag(U U^T) (factor 1) over `states`, from `latentda sigma-b`
    (which also writes bundle/latent_b_variance.nc)."""
    import netCDF4
    r = subprocess.run([latentda_binary(), "sigma-b", bundle, "--state", ",".join(states), "--draws", str(draws)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"latentda sigma-b {bundle} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    v = []
    with netCDF4.Dataset(os.path.join(bundle, "latent_b_variance.nc")) as ds:
        for name in ("u", "v", "t", "q", "z"):
            v += list(np.asarray(ds[name][:], np.float64).mean(axis=(1, 2)))
        v.append(float(np.asarray(ds["ps"][:], np.float64).mean()))
    return np.array(v)


def scale_netcdf(path, k):
    """Multiplies every data variable of latent_b_variance.nc (a variance, linear in the latent variance) by k."""
    import netCDF4
    with netCDF4.Dataset(path, "a") as ds:
        for name in ("u", "v", "t", "q", "z", "ps"):
            ds[name][:] = np.asarray(ds[name][:], np.float64) * k
        ds.title = ds.title + f"; latent variance of the error-recipe mixture (x {k:.4g})"


def set_manifest(bundle, statistics_note, comment=None):
    """New checksums of the two variance files and the provenance's statistics line in bundle.toml."""
    import tomllib
    path = os.path.join(bundle, "bundle.toml")
    text = open(path).read()
    for f in ("latent_variance.nc", "latent_b_variance.nc"):
        text, n = re.subn(rf'^"{re.escape(f)}" = "[0-9a-f]+"$', f'"{f}" = "{sha256(os.path.join(bundle, f))}"',
                          text, flags=re.M)
        if n != 1:
            raise SystemExit(f"{path}: no checksum line for {f}")
    text = re.sub(r"^statistics = .*$", lambda m: f"statistics = {json.dumps(statistics_note)}", text, flags=re.M)
    if comment is not None:
        text = re.sub(r"^# The latent B's calibrated variance.*\n(# .*\n)*", comment, text, flags=re.M)
    tomllib.loads(text)
    open(path + ".tmp", "w").write(text)
    os.replace(path + ".tmp", path)


def channel_response(bundle, backgrounds, var, n_draws, rng):
    """G[k, c]: the model-space variance per model channel k (41, physical units, grid mean) of draws of the latent
    B restricted to latent channel c, dx = sd * D'(z_b)(s^1/2 xi), averaged over `backgrounds`; by linearity the
    latent B with channel multipliers a_c has per-channel variance G @ a (decoder_tl.onnx through ONNX Runtime)."""
    import onnxruntime as ort
    enc = Encoder(bundle)
    tl = ort.InferenceSession(os.path.join(bundle, "decoder_tl.onnx"), providers=["CPUExecutionProvider"])
    nc = var.shape[0]
    G = np.zeros((41, nc))
    for xb in backgrounds:
        z = enc(xb).astype(np.float32)[None]
        for c in range(nc):
            for _ in range(n_draws):
                dz = np.zeros_like(z)
                dz[0, c] = rng.standard_normal(var.shape[1:]) * np.sqrt(var[c])
                dx = tl.run(None, {"z": z, "dz": dz.astype(np.float32)})[0][0].astype(np.float64)
                G[:, c] += ((dx * enc.std[:, None, None]) ** 2).mean(axis=(1, 2))
    return G / (len(backgrounds) * n_draws)


def fit_channel_multipliers(G, v_true, calib_vars=CALIB_VARS, ridge=0.1, iters=100):
    """Multipliers a_c = exp(b_c) > 0 of the latent channels so that the implied variance G @ a matches the true error
    variance per model channel in log space (each calibration variable weighs 1 in all, spread over its levels),
    with a ridge on the spread of b (not on its mean: the overall amplitude is free). Gauss-Newton."""
    w = np.zeros(41)
    for v in calib_vars:
        sl = D.VAR_SLICES[v]
        w[sl] = 1.0 / (sl.stop - sl.start)
    nc = G.shape[1]
    P = np.eye(nc) - 1.0 / nc
    b = np.full(nc, np.log(np.sum(w * v_true) / np.sum(w * G.sum(axis=1))))
    for _ in range(iters):
        a = np.exp(b)
        ga = G @ a
        r = np.log(ga) - np.log(v_true)
        J = G * a[None, :] / ga[:, None]
        H = J.T @ (w[:, None] * J) + ridge * P
        g = J.T @ (w * r) + ridge * P @ b
        step = np.linalg.solve(H + 1e-9 * np.eye(nc), -g)
        b = b + np.clip(step, -1.0, 1.0)
    return np.exp(b), float(np.sum(w * (np.log(G @ np.exp(b)) - np.log(v_true)) ** 2) / np.sum(w))


def channel_fit_report(a, a48, X):
    """--channel-fit: how far per-latent-channel variances can bring the latent B to the a48 error variances."""
    vt = 0.0
    for it in a48:
        xb, xt = load_pair(it, X)
        vt = vt + ((xb - xt) ** 2).mean(axis=(1, 2))
    vt = vt / len(a48)
    bgs = [load_pair(it, X)[0] for it in spread(a48, a.calib_states)]
    G = channel_response(a.bundle, bgs, read_latent_variance(a.bundle), max(1, a.draws // 8), np.random.default_rng(3))
    mult, obj = fit_channel_multipliers(G, vt, ridge=a.ridge)
    for name, m in (("as shipped", np.ones(G.shape[1])), (f"fitted (ridge {a.ridge})", mult)):
        ga = G @ m
        print(f"{name}: true / implied per variable "
              + ", ".join(f"{v} {vt[sl].sum() / ga[sl].sum():.3g}" for v, sl in D.VAR_SLICES.items()), flush=True)
        for v in ("u", "t", "q"):
            sl = D.VAR_SLICES[v]
            print(f"   {v} per level (top to bottom): " + " ".join(f"{x:.3g}" for x in vt[sl] / ga[sl]), flush=True)
    print(f"multipliers: min {mult.min():.3g}, median {np.median(mult):.3g}, max {mult.max():.3g}; weighted mean "
          f"square log misfit {obj:.3g}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=D.DEFAULT_OUT)
    ap.add_argument("--bundle", default=os.path.join(REPO, "models", "speedy-t31"), help="bundle to start from")
    ap.add_argument("--dest", help="new bundle folder (must not exist)")
    ap.add_argument("--launches", default=DEFAULT_LAUNCHES, help="training-period launch days of recipes a and b")
    ap.add_argument("--cycled", default="", help="comma-separated folders of training-period cycled cases (c6)")
    ap.add_argument("--calib-states", type=int, default=8, help="a48 backgrounds for the model-space factor")
    ap.add_argument("--draws", type=int, default=32, help="draws per state of latentda sigma-b")
    ap.add_argument("--channel-fit", action="store_true",
                    help="diagnostic, writes nothing: fit one multiplier per latent channel of the --bundle's variance "
                         "to the a48 error variance per model channel and print how close the fit comes, per level")
    ap.add_argument("--ridge", type=float, default=0.1, help="--channel-fit: ridge on the log multipliers' spread")
    a = ap.parse_args(argv)
    from . import forecasts as F
    from .cycling import Nature
    if a.dest and os.path.exists(a.dest):
        raise SystemExit(f"{a.dest} exists")
    if not a.dest and not a.channel_fit:
        raise SystemExit("--dest is required (unless --channel-fit)")
    launches = F.launch_days(a.launches)
    cycled = [c for c in a.cycled.split(",") if c]
    samples = recipe_samples(a.data, launches, cycled)
    X = Nature(a.data)
    if a.channel_fit:
        return channel_fit_report(a, samples["a48"], X)
    enc = Encoder(a.bundle)
    ms, vx = latent_error_moments(samples, enc, X)
    shape = mixture_shape(ms)
    shipped = read_latent_variance(a.bundle)
    # the shipped shape against the recipes': latent-space ratio true / shipped, per recipe (amplitude-free: both
    # normalised), and the spread of the element-wise ratio (position and channel dependence the NMC shape misses)
    sn = shipped / shipped.sum()
    for r, m in ms.items():
        q = (m / m.sum()) / sn
        print(f"{r}: element-wise (recipe shape / shipped shape) 10/50/90 % quantiles "
              f"{np.quantile(q, 0.1):.3g} {np.quantile(q, 0.5):.3g} {np.quantile(q, 0.9):.3g}", flush=True)
    q = (shape / shape.sum()) / sn
    print(f"mixture: element-wise (mixture shape / shipped shape) quantiles 10/50/90 % {np.quantile(q, 0.1):.3g} "
          f"{np.quantile(q, 0.5):.3g} {np.quantile(q, 0.9):.3g}", flush=True)
    shutil.copytree(a.bundle, a.dest)
    var0 = shape * shipped.sum()   # the shipped total to start from; k then sets the amplitude
    write_latent_variance(os.path.join(a.dest, "latent_variance.nc"), var0, 1.0, "uncalibrated")
    set_manifest(a.dest, "uncalibrated")
    lat, lon, sig = D.grid(a.data)
    a48 = samples["a48"]
    pick = spread(a48, a.calib_states)
    with tempfile.TemporaryDirectory() as tmp:
        states = []
        for i, it in enumerate(pick):
            xb, _ = load_pair(it, X)
            states.append(os.path.join(tmp, f"bg{i}.nc"))
            CS.write_state(states[-1], xb, lat, lon, sig, f"training-period 48 h background, launch {it[0]}")
        v_impl = implied_variance(a.dest, states, a.draws)
    v_true = vx["a48"]
    ratio = {v: float(v_true[sl].sum() / v_impl[sl].sum()) for v, sl in D.VAR_SLICES.items()}
    k = float(np.exp(np.mean([np.log(ratio[v]) for v in CALIB_VARS])))
    print("mixture latent B implied variance vs true a48 error variance per variable (true / implied): "
          + ", ".join(f"{v} {r:.3g}" for v, r in ratio.items()) + f"; model-space factor k = {k:.4g}", flush=True)
    n = {r: len(v) for r, v in samples.items()}
    desc = (f"diagonal latent background-error variance s^2: equal-weight mixture of the normalised mean square "
            f"encoded true errors E(N(xb)) - E(N(xt)) of training-period cases {json.dumps(n)}, times the "
            f"model-space factor (a48 errors, geometric mean over {', '.join(CALIB_VARS)})")
    write_latent_variance(os.path.join(a.dest, "latent_variance.nc"), var0 * k, k, desc)
    scale_netcdf(os.path.join(a.dest, "latent_b_variance.nc"), k)
    note = (f"latent variance: shape from the encoded true errors of an equal-weight mixture of training-period "
            f"error recipes {json.dumps(n)} (latentda_train.mixture), amplitude in model space on "
            f"{len(pick)} a48 backgrounds (x {k:.4g}); baseline as in {os.path.basename(os.path.normpath(a.bundle))}")
    comment = ("# The latent B's calibrated variance diag(U U^T) (factor 1), the background check's default sigma_b: mean "
               f"over\n# {len(pick)} training-period 48 h backgrounds x {a.draws} draws each (`latentda sigma-b`), "
               "after the mixture's variance was set.\n")
    set_manifest(a.dest, note, comment)
    r = subprocess.run([latentda_binary(), "check", a.dest], capture_output=True, text=True)
    print(r.stdout[-2000:], r.stderr[-2000:], flush=True)
    if r.returncode != 0:
        raise SystemExit(f"latentda check {a.dest} failed ({r.returncode})")
    json.dump({"samples": n, "k": k, "ratio_true_over_implied": ratio, "launches": launches, "cycled": cycled},
              open(os.path.join(a.dest, "mixture.json"), "w"), indent=1)
    print(f"bundle written: {a.dest}", flush=True)


if __name__ == "__main__":
    main()
