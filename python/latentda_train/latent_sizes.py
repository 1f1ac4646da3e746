"""Latent-size study with the linear part of the reference autoencoder: truncated local EOFs on p x p patches.

For each (patch, K) it reports the reconstruction gate ratio on the validation nature states and, with
--analyses, the mean analysis RMSE / background RMSE of the exact (closed-form) linear latent analysis
z_a = z_b + S G^T (G S G^T + R)^-1 d on the analysis cases, with S from the NMC pairs calibrated like the
bundle. This is how the reference bundle's patch size and latent size were chosen (model card).

    latentda-latent-sizes --out /work/data --sizes 8:128,8:256,8:384,8:512,4:128 --analyses \
        --cases models/speedy-t31/sample /work/data/cases/case_*
"""
from __future__ import annotations

import argparse
import csv
import os

import numpy as np

from . import cases as CS
from . import data as D
from . import stats as ST
from .train import local_eofs


def patches(x, p):
    """[n, C, H, W] -> [n, patches, C*p*p] (the ordering of PixelUnshuffle)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5).reshape(n, (h // p) * (w // p), c * p * p)


def unpatch(P, shape, p):
    """Inverse of `patches` for one [n, patches, C*p*p] array back to [n, C, H, W]."""
    n, c, h, w = shape
    return P.reshape(n, h // p, w // p, c, p, p).transpose(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def read_case(case, lat, lon, sig):
    """Truth, background and the obs operator of a case: (xt, xb, rows, flat state index, weight, y, sigma)."""
    vi = {"u": 0, "v": 8, "t": 16, "q": 24}
    obs = list(csv.DictReader(open(os.path.join(case, "obs.csv"))))
    ch = np.array([40 if r["var"] == "ps" else vi[r["var"]] + int(np.argmin(abs(sig - float(r["level"]))))
                   for r in obs])
    plat = np.array([float(r["lat"]) for r in obs])
    plon = np.array([float(r["lon"]) for r in obs])
    i0, i1, j0, j1, wx, wy = CS.bilinear_weights(lat, lon, plat, plon)
    nlat, nlon = len(lat), len(lon)
    rows = np.tile(np.arange(len(obs)), 4)
    idx = np.concatenate([(ch * nlat + i) * nlon + j for i, j in ((i0, j0), (i0, j1), (i1, j0), (i1, j1))])
    wts = np.concatenate([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx])
    y = np.array([float(r["value"]) for r in obs])
    e = np.array([float(r["sigma"]) for r in obs])
    return (CS.read_state(os.path.join(case, "truth.nc")), CS.read_state(os.path.join(case, "background.nc")),
            rows, idx, wts, y, e)


def linear_analysis(xb, rows, idx, wts, y, e, dec, pix, where, pos):
    """Exact latent analysis with the linear decoder blocks dec[q] (state increment per unit control, patch q)."""
    K = dec[0].shape[1]
    d = y - np.bincount(rows, wts * xb.ravel()[idx], minlength=len(y))
    G = np.zeros((len(y), pix.shape[0] * K))
    for r_, c, wt in zip(rows, idx, wts):
        q = where[c]
        G[r_, q * K:(q + 1) * K] += wt * dec[q][pos[c]]
    eta = G.T @ np.linalg.solve(G @ G.T + np.diag(e ** 2), d)
    dx = np.zeros(xb.size)
    for q in range(pix.shape[0]):
        dx[pix[q]] += dec[q] @ eta[q * K:(q + 1) * K]
    return xb + dx.reshape(xb.shape)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=D.DEFAULT_OUT)
    ap.add_argument("--train-days", type=int, default=600)
    ap.add_argument("--sizes", default="8:128,8:256,8:384,8:512,4:128", help="patch:K list")
    ap.add_argument("--analyses", action="store_true", help="also run the closed-form linear analyses")
    ap.add_argument("--cases", nargs="*", default=[])
    a = ap.parse_args(argv)
    X = D.nature(a.out)
    ntr = a.train_days * D.STATES_PER_DAY
    lat, lon, sig = D.grid(a.out)
    Xtr = np.asarray(X[:ntr:2], np.float32)
    Xva = np.asarray(X[ntr::4], np.float32)
    fc = D.forecasts(a.out)
    vl = [L for L in range(610, 729, 2) if L in fc and D.truth_index(L + 2) < len(X)]
    b48 = np.stack([fc[L][1] for L in vl])
    tru = np.stack([X[D.truth_index(L + 2)] for L in vl])
    bg = D.rmse_per_var(b48 - tru)
    w = np.zeros(41, np.float32)
    for v, sl in D.VAR_SLICES.items():
        w[sl] = 1.0 / bg[v]
    wb = w[None, :, None, None]
    cm = Xtr.mean(axis=0)
    f48, f24, _ = ST.nmc_pairs(fc, range(22, 332))
    print(f"48 h background error RMSE (validation, {len(vl)} cases): {bg}")
    print("| patch | K | latent size | " + " | ".join(f"{v} ratio" for v in D.VAR_SLICES)
          + (" | " + " | ".join(f"{v} an/bg" for v in D.VAR_SLICES) if a.analyses else "") + " |")
    cases = [read_case(c, lat, lon, sig) for c in a.cases] if a.analyses else []
    eofs = {}  # patch size -> EOFs (computed once, truncated per K)
    for item in a.sizes.split(","):
        p, K = map(int, item.split(":"))
        if p not in eofs:
            eofs[p] = local_eofs(((Xtr[i:i + 64] - cm) * wb for i in range(0, len(Xtr), 64)), p)[1].numpy()
        V = eofs[p][:, :K].astype(np.float32)
        B = patches((Xva - cm) * wb, p)
        rec = D.rmse_per_var(unpatch(B - (B @ V) @ V.T, Xva.shape, p) / wb)
        cols = [f"{rec[v] / bg[v]:.3f}" for v in D.VAR_SLICES]
        if a.analyses:
            enc = lambda x: patches((x - cm) * wb, p) @ V
            var_nmc = (enc(f48) - enc(f24)).var(axis=0)
            k_lat = float((((enc(b48) - enc(tru)) ** 2).mean(axis=0)).sum() / var_nmc.sum())
            sd = np.sqrt(k_lat * var_nmc)                      # [patches, K]
            pix = patches(np.arange(Xva[0].size).reshape(1, *Xva.shape[1:]), p)[0]
            wpix = np.repeat(w, Xva.shape[2] * Xva.shape[3])[pix]
            dec = [V / wpix[q][:, None] * sd[q][None, :] for q in range(pix.shape[0])]
            where, pos = np.empty(Xva[0].size, int), np.empty(Xva[0].size, int)  # patch and row of a point
            for q in range(pix.shape[0]):
                where[pix[q]], pos[pix[q]] = q, np.arange(pix.shape[1])
            ratios = []
            for xt, xb, *H in cases:
                xa = linear_analysis(xb, *H, dec, pix, where, pos)
                ra, rb = D.rmse_per_var((xa - xt)[None]), D.rmse_per_var((xb - xt)[None])
                ratios.append({v: ra[v] / rb[v] for v in ra})
            cols += [f"{np.mean([q[v] for q in ratios]):.3f}" for v in D.VAR_SLICES]
        print(f"| {p} | {K} | {K * (Xva.shape[2] // p) * (Xva.shape[3] // p)} | " + " | ".join(cols) + " |",
              flush=True)


if __name__ == "__main__":
    main()
