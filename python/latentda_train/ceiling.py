"""How much extratropical wind error a mass-only analysis can remove at best (issue 20, gate G3).

G3 asks that mass-only observations (t, z, ps) lower the extratropical u and v RMSE by at least 10 % for every error
recipe. Mass observations reach the wind only through the B's mass-wind covariances, so the wind gain is bounded by
how much of the true wind error is a function of the true mass error. This verb measures that bound directly,
giving the analysis more than any network can: the exact mass error everywhere.

For each recipe it fits a linear mass -> wind operator on (background, truth) pairs of the training period (the same
samples `latentda-mixture` reads) and applies it to the validation-period cases of the robustness matrix:

    du_k(p) ~ sum_j sum_s  a_kjs ug_j^s(p) + b_kjs vg_j^s(p) + c_k        (and the same for dv_k)

where (ug_j, vg_j) is the geostrophic wind of the mass error (xb - xt) at level j, with the balance diagnostic's
pressure-gradient force (`balance.geostrophic`: z and R T ln ps), and s runs over smoothing scales (none and 1, 3, 8
passes of a 1-2-1 filter), so the operator can filter, rotate, shift between levels and scale the geostrophic
relation. One fit per wind level, component and latitude band (20-40, 40-60, 60-90 in each hemisphere; each
grid point weighted by cos(latitude)). A static B with any stationary mass-wind covariance of this family does no
better with perfect mass information; a real network observes less. The report gives, per recipe, the ratio
RMSE(du - prediction) / RMSE(du) over |lat| > 20 for u and v (the matrix's extratropical band):

* `fit on training`: the operator fitted on training-period samples, scored on the validation cases (the ceiling);
* `fit in sample`: fitted and scored on the validation cases themselves (optimistic: it may overfit);
* with `--network NET`: `from the analysis`, the training fit applied to the mass increment of a 3D-Var analysis
  (the bundle's static B, no mass-wind covariance) of each case's obs_NET.csv instead of the true mass error: what
  that network's mass analysis could give the wind through the operator; `best scale` multiplies the prediction by
  the one factor per component that fits these cases best (the fit on true errors overshoots a smoother estimate);
* `geostrophic`: the plain geostrophic wind of the mass error as the wind error (what a strictly balanced B
  assumes; above 1 where it makes things worse).

Flow-dependent covariances (an ensemble B, a latent B) are not in this family and could in principle do better; the
ceiling says how much a balance relation, however tuned, can give.

    latentda-ceiling --data DATA --matrix DATA/matrix --network mass \
        --cycled DATA/mixture/cycled_uniform,DATA/mixture/cycled_sonde
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile

import numpy as np

from . import balance as BL
from . import cases as CS
from . import data as D
from .bundle import REPO, latentda_binary
from .mixture import DEFAULT_LAUNCHES, load_pair, recipe_samples
from .suite import BANDS as MATRIX_BANDS, run_cli

EXTRATROPICS = MATRIX_BANDS["extratropics"]  # |lat| > 20, the matrix's band

SMOOTHING_PASSES = (0, 1, 3, 8)
BANDS = ((20.0, 40.0), (40.0, 60.0), (60.0, 90.0))
RIDGE = 1e-6  # relative to the mean diagonal of the normal matrix: only guards against collinear features


def smooth(f, passes):
    """1-2-1 filter `passes` times in longitude (periodic) and latitude (end rows kept) of [..., nlat, nlon]."""
    for _ in range(passes):
        f = 0.25 * (np.roll(f, 1, -1) + 2 * f + np.roll(f, -1, -1))
        g = f.copy()
        g[..., 1:-1, :] = 0.25 * (f[..., :-2, :] + 2 * f[..., 1:-1, :] + f[..., 2:, :])
        f = g
    return f


def features(xb, xt, lat, lon):
    """[nfeat, nlat, nlon] predictors of the wind error from the mass error: geostrophic wind of xb - xt at every
    level and smoothing scale, plus a constant. Rows without a geostrophic wind (the two end rows) are NaN."""
    uga, vga = BL.geostrophic(xb, lat, lon)
    ugb, vgb = BL.geostrophic(xt, lat, lon)
    ug, vg = uga - ugb, vga - vgb
    bad = ~np.isfinite(ug[0])
    ug, vg = np.nan_to_num(ug), np.nan_to_num(vg)
    out = [smooth(np.concatenate([ug, vg]), s) for s in SMOOTHING_PASSES]
    F = np.concatenate(out + [np.ones((1,) + ug.shape[1:])])
    F[:, bad] = np.nan
    return F


def band_masks(lat):
    """(name, row mask) of the six extratropical bands."""
    out = []
    for lo, hi in BANDS:
        out.append((f"N{lo:.0f}-{hi:.0f}", (lat > lo) & (lat <= hi)))
        out.append((f"S{lo:.0f}-{hi:.0f}", (lat < -lo) & (lat >= -hi)))
    return out


class Accumulator:
    """Weighted normal equations per (band, wind channel): F^T W F and F^T W y, summed over cases."""

    def __init__(self, lat):
        self.bands = band_masks(lat)
        self.w = np.cos(np.radians(lat))
        self.A = {}
        self.b = {}

    def add(self, F, err):
        for name, rows in self.bands:
            Fb = F[:, rows].reshape(F.shape[0], -1)
            ok = np.all(np.isfinite(Fb), axis=0)
            wb = np.broadcast_to(self.w[rows][:, None], (rows.sum(), F.shape[2])).reshape(-1)[ok]
            Fw = Fb[:, ok] * wb
            for c in range(16):  # u levels 0-7, v levels 8-15
                y = err[c][rows].reshape(-1)[ok]
                key = (name, c)
                self.A[key] = self.A.get(key, 0) + Fw @ Fb[:, ok].T
                self.b[key] = self.b.get(key, 0) + Fw @ y

    def solve(self):
        coef = {}
        for key, A in self.A.items():
            r = RIDGE * np.trace(A) / len(A)
            coef[key] = np.linalg.solve(A + r * np.eye(len(A)), self.b[key])
        return coef


def predict(coef, F, lat):
    """Predicted wind error [16, nlat, nlon] (0 outside the extratropical bands and on rows without features)."""
    out = np.zeros((16,) + F.shape[1:])
    for name, rows in band_masks(lat):
        Fb = np.nan_to_num(F[:, rows])
        for c in range(16):
            out[c][rows] = np.tensordot(coef[(name, c)], Fb, axes=(0, 0))
    return out


class Score:
    """Sums of cos(lat)-weighted squares over |lat| > 20 (rows with features) of the wind error and of residuals."""

    def __init__(self, lat):
        self.m = EXTRATROPICS(lat)
        self.w = np.cos(np.radians(lat))
        self.s = {}

    def add(self, name, d, F):
        ok = np.all(np.isfinite(F[:, self.m]), axis=0)
        w = np.broadcast_to(self.w[self.m][:, None], ok.shape) * ok
        d = np.nan_to_num(d[:, self.m])  # rows without features carry weight 0
        for v, sl in (("u", slice(0, 8)), ("v", slice(8, 16))):
            self.s[(name, v)] = self.s.get((name, v), 0.0) + float(np.sum(w * np.sum(d[sl] ** 2, axis=0)))

    def ratio(self, name, v):
        return float(np.sqrt(self.s[(name, v)] / self.s[("error", v)]))


def score_cases(pairs, coef_train, lat, lon, with_in_sample=True, analyses=None):
    """Ceiling ratios {'fit on training', 'fit in sample', 'geostrophic'[, 'from the analysis', 'from the analysis,
    best scale']: {u, v}} on (xb, xt) pairs. `analyses` (one mass analysis xa per pair, its wind unchanged) applies
    the training fit to the analysis's estimate xb - xa of the mass error instead of the true one; the best scale is
    the one factor per component (fitted on these cases) that undoes the regression's dilution."""
    sc = Score(lat)
    acc = Accumulator(lat)
    Fs, pa = [], []
    for i, (xb, xt) in enumerate(pairs):
        F = features(xb, xt, lat, lon)
        err = (xb - xt)[:16]
        sc.add("error", err, F)
        sc.add("geostrophic", err - np.concatenate([F[0:8], F[8:16]]), F)
        if coef_train is not None:
            sc.add("fit on training", err - predict(coef_train, F, lat), F)
        if with_in_sample:
            acc.add(F, err)
            Fs.append((F, err))
        if analyses is not None:
            Fa = features(xb, analyses[i], lat, lon)
            pred = predict(coef_train, Fa, lat)
            sc.add("from the analysis", err - pred, F)
            pa.append((err, pred, F))
    names = ["geostrophic"] + (["fit on training"] if coef_train is not None else []) + (
        ["fit in sample"] if with_in_sample else [])
    if with_in_sample:
        coef = acc.solve()
        for F, err in Fs:
            sc.add("fit in sample", err - predict(coef, F, lat), F)
    if analyses is not None:
        w = (np.cos(np.radians(lat)) * EXTRATROPICS(lat))[None, :, None]
        scale = np.ones((16, 1, 1))
        for sl in (slice(0, 8), slice(8, 16)):  # one factor for u, one for v
            num = sum(float(np.nansum(w * e[sl] * p[sl])) for e, p, _ in pa)
            den = sum(float(np.nansum(w * p[sl] ** 2)) for e, p, _ in pa)
            scale[sl] = num / den if den > 0 else 0.0
        for e, p, F in pa:
            sc.add("from the analysis, best scale", e - scale * p, F)
        names += ["from the analysis", "from the analysis, best scale"]
    return {n: {v: sc.ratio(n, v) for v in ("u", "v")} for n in names}


def fit(pairs, lat, lon):
    """The operator's coefficients {(band, wind channel): vector} from (xb, xt) pairs."""
    acc = Accumulator(lat)
    for xb, xt in pairs:
        acc.add(features(xb, xt, lat, lon), (xb - xt)[:16])
    return acc.solve()


# validation recipe (robustness-matrix folder) -> training-period sample recipes that stand for it
TRAINING_FOR = {"a48": ["a48"], "b48": ["b48"], "b24": ["b24"], "b6": ["b6"], "c6": ["c6_cycled_uniform"],
                "c6l": ["c6_cycled_uniform", "c6_cycled_sonde"]}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="latentda-ceiling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=D.DEFAULT_OUT)
    ap.add_argument("--matrix", default=None, help="robustness-matrix folder (default DATA/matrix)")
    ap.add_argument("--launches", default=DEFAULT_LAUNCHES, help="training launches first:last:step")
    ap.add_argument("--cycled", default="", help="training-period cycled-case folders, comma separated")
    ap.add_argument("--recipes", default="a48,b48,b24,b6,c6,c6l")
    ap.add_argument("--results", default=None, help="matrix JSON: also print its best latentda method's ratios")
    ap.add_argument("--network", default=None,
                    help="also apply the fit to the mass increment of a 3D-Var analysis of each case's obs_NETWORK.csv "
                         "(e.g. mass): what this network's mass analysis could give the wind through the fitted operator")
    ap.add_argument("--bundle", default=os.path.join(REPO, "models", "speedy-t31"), help="bundle of those analyses")
    ap.add_argument("--latentda", default=None, help="latentda CLI (default: the repository's release build)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    M = a.matrix or os.path.join(a.data, "matrix")
    lo, hi, st = (int(x) for x in a.launches.split(":"))
    cycled = [c for c in a.cycled.split(",") if c]
    samples = recipe_samples(a.data, list(range(lo, hi + 1, st)), cycled)
    X = D.nature(a.data)
    lat, lon, _ = D.grid(a.data)
    cli = (a.latentda or latentda_binary()) if a.network else None
    res_json = json.load(open(a.results)) if a.results else None
    out = {}
    print(f"{'recipe':7s} {'train':>5s} {'valid':>5s} | {'fit on training u, v':>20s} | {'fit in sample u, v':>19s} | "
          f"{'geostrophic u, v':>17s}" + (" | matrix mass cell, best latentda u, v" if res_json else ""))
    for r in a.recipes.split(","):
        train_keys = [k for k in TRAINING_FOR[r] if k in samples]
        train = [load_pair(it, X) for k in train_keys for it in samples[k]]
        cases = sorted(glob.glob(os.path.join(M, r, "case_*")))
        valid = [(CS.read_state(os.path.join(c, "background.nc")), CS.read_state(os.path.join(c, "truth.nc")))
                 for c in cases]
        if not train or not valid:
            print(f"{r:7s} skipped: {len(train)} training samples ({'+'.join(TRAINING_FOR[r])}), {len(valid)} cases")
            continue
        analyses = None
        if a.network:
            with tempfile.TemporaryDirectory() as tmp:
                analyses = [run_cli(cli, a.bundle, c, f"obs_{a.network}.csv", "3dvar", [], tmp)[0] for c in cases]
        s = score_cases(valid, fit(train, lat, lon), lat, lon, analyses=analyses)
        s["n_train"], s["n_valid"], s["training_recipes"] = len(train), len(valid), train_keys
        line = (f"{r:7s} {len(train):5d} {len(valid):5d} | {s['fit on training']['u']:9.3f}, "
                f"{s['fit on training']['v']:8.3f} | {s['fit in sample']['u']:8.3f}, {s['fit in sample']['v']:8.3f} | "
                f"{s['geostrophic']['u']:7.3f}, {s['geostrophic']['v']:7.3f}")
        if res_json and r in res_json["cells"] and "mass" in res_json["cells"][r]:
            g3 = res_json["cells"][r]["mass"]["gates"].get("G3 mass: extratropical wind down >= 10 %", {})
            line += f" | {g3.get('value', '-')}"
            s["matrix_best"] = g3.get("value")
        if a.network:
            fa, fb = s["from the analysis"], s["from the analysis, best scale"]
            line += (f"\n{'':19s} from the 3D-Var mass analysis of obs_{a.network}.csv: u {fa['u']:.3f}, v {fa['v']:.3f}; "
                     f"best scale u {fb['u']:.3f}, v {fb['v']:.3f}")
        print(line, flush=True)
        out[r] = s
    if a.json:
        json.dump({"recipes": out, "smoothing_passes": SMOOTHING_PASSES, "bands": BANDS}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
