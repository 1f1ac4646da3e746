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


def patches(x, p):
    """[n, C, H, W] -> [n, patches, C*p*p] (the ordering of PixelUnshuffle)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5).reshape(n, (h // p) * (w // p), c * p * p)


def bilinear_rows(lat, lon, sig, path):
    """Observation operator of an obs CSV as (rows, flat state index, weight), values and errors."""
    vi = {"u": 0, "v": 8, "t": 16, "q": 24}
    nlat, nlon = len(lat), len(lon)
    la_inc = lat[::-1]
    R, Cc, W, y, e = [], [], [], [], []
    for k, r in enumerate(csv.DictReader(open(path))):
        ch = 40 if r["var"] == "ps" else vi[r["var"]] + int(np.argmin(abs(sig - float(r["level"]))))
        fx = np.mod(float(r["lon"]) - lon[0], 360.0) / (lon[1] - lon[0])
        j0 = int(np.floor(fx)) % nlon
        j1, wx = (j0 + 1) % nlon, fx - np.floor(fx)
        i = int(np.clip(np.searchsorted(la_inc, float(r["lat"])) - 1, 0, nlat - 2))
        wy = (float(r["lat"]) - la_inc[i]) / (la_inc[i + 1] - la_inc[i])
        i0 = nlat - 1 - i
        for ii, jj, ww in ((i0, j0, (1 - wy) * (1 - wx)), (i0, j1, (1 - wy) * wx),
                           (i0 - 1, j0, wy * (1 - wx)), (i0 - 1, j1, wy * wx)):
            R.append(k), Cc.append((ch * nlat + ii) * nlon + jj), W.append(ww)
        y.append(float(r["value"])), e.append(float(r["sigma"]))
    return np.array(R), np.array(Cc), np.array(W), np.array(y), np.array(e)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/work/data")
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
    for item in a.sizes.split(","):
        p, K = map(int, item.split(":"))
        A = patches((Xtr - cm) * wb, p).reshape(-1, 41 * p * p)
        _, V = np.linalg.eigh(A.T.astype(np.float64) @ A)
        V = V[:, ::-1][:, :K].astype(np.float32)
        B = patches((Xva - cm) * wb, p)
        r = (B - (B @ V) @ V.T).reshape(len(Xva), 48 // p, 96 // p, 41, p, p).transpose(0, 3, 1, 4, 2, 5)
        rec = D.rmse_per_var(r.reshape(len(Xva), 41, 48, 96) / wb)
        cols = [f"{rec[v] / bg[v]:.3f}" for v in D.VAR_SLICES]
        if a.analyses:
            enc = lambda x: patches((x - cm) * wb, p) @ V
            var_nmc = (enc(f48) - enc(f24)).var(axis=0)
            k_lat = float((((enc(b48) - enc(tru)) ** 2).mean(axis=0)).sum() / var_nmc.sum())
            sd = np.sqrt(k_lat * var_nmc)                      # [patches, K]
            pix = patches(np.arange(41 * 48 * 96).reshape(1, 41, 48, 96), p)[0]
            wpix = np.repeat(w, 48 * 96)[pix]
            ratios = []
            for case in a.cases:
                xt = CS.read_state(os.path.join(case, "truth.nc"))
                xb = CS.read_state(os.path.join(case, "background.nc"))
                R, Cc, Wt, y, e = bilinear_rows(lat, lon, sig, os.path.join(case, "obs.csv"))
                d = y - np.bincount(R, Wt * xb.ravel()[Cc], minlength=len(y))
                G = np.zeros((len(y), pix.shape[0] * K))
                dec = [V / wpix[q][:, None] * sd[q][None, :] for q in range(pix.shape[0])]
                where, pos = np.empty(41 * 48 * 96, int), np.empty(41 * 48 * 96, int)  # patch and row of a point
                for q in range(pix.shape[0]):
                    where[pix[q]], pos[pix[q]] = q, np.arange(pix.shape[1])
                for r_, c, wt in zip(R, Cc, Wt):
                    q = where[c]
                    G[r_, q * K:(q + 1) * K] += wt * dec[q][pos[c]]
                eta = G.T @ np.linalg.solve(G @ G.T + np.diag(e ** 2), d)
                dx = np.zeros(41 * 48 * 96)
                for q in range(pix.shape[0]):
                    dx[pix[q]] += dec[q] @ eta[q * K:(q + 1) * K]
                xa = xb + dx.reshape(xb.shape)
                ra, rb = D.rmse_per_var((xa - xt)[None]), D.rmse_per_var((xb - xt)[None])
                ratios.append({v: ra[v] / rb[v] for v in ra})
            cols += [f"{np.mean([q[v] for q in ratios]):.3f}" for v in D.VAR_SLICES]
        print(f"| {p} | {K} | {K * (48 // p) * (96 // p)} | " + " | ".join(cols) + " |", flush=True)


if __name__ == "__main__":
    main()
