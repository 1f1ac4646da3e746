"""NMC statistics (latent and model-space baseline) from the same 48 h - 24 h forecast pairs,
calibration of one global scale factor per method on validation 48 h forecast errors, and the
reconstruction gate."""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from . import data as D

R_EARTH_KM = 6371.0


def encode(ae, X, mean, std, bs=16):
    out = []
    with torch.no_grad():
        for i in range(0, len(X), bs):
            xb = ((np.asarray(X[i:i + bs], np.float64) - mean[None, :, None, None]) / std[None, :, None, None])
            out.append(ae.encode(torch.from_numpy(xb.astype(np.float32))).numpy())
    return np.concatenate(out)


def reconstruct(ae, X, mean, std, bs=16):
    out = []
    with torch.no_grad():
        for i in range(0, len(X), bs):
            xb = ((np.asarray(X[i:i + bs], np.float64) - mean[None, :, None, None]) / std[None, :, None, None])
            y = ae(torch.from_numpy(xb.astype(np.float32))).numpy().astype(np.float64)
            out.append(y * std[None, :, None, None] + mean[None, :, None, None])
    return np.concatenate(out)


def nmc_pairs(fc, valid_days):
    """48 h forecast launched v-2 and 24 h forecast launched v-1, both valid at day v."""
    f48, f24, days = [], [], []
    for v in valid_days:
        if (v - 2) in fc and (v - 1) in fc:
            f48.append(fc[v - 2][1])
            f24.append(fc[v - 1][0])
            days.append(v)
    return np.stack(f48), np.stack(f24), days


def great_circle_km(lat1, lon1, lat2, lon2):
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dl = np.radians(lon2 - lon1)
    c = np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(dl)
    return R_EARTH_KM * np.arccos(np.clip(c, -1, 1))


def fit_length_scales(dn, lat, lon, rng, nref=120, dmax=4000.0, binw=100.0):
    """dn: [n, C, lat, lon] differences normalised by their point std (zero mean).
    Fit a Gaussian correlation exp(-d^2 / (2 L^2)) to the sample correlations vs great-circle distance.
    Returns L (km) per channel and the binned correlations used."""
    n, C, H, W = dn.shape
    LAT, LON = np.meshgrid(lat, lon, indexing="ij")
    # reference points uniform on the sphere, within the latitude range of the grid
    u = rng.uniform(np.sin(np.radians(lat.min())), np.sin(np.radians(lat.max())), nref)
    rlat = np.degrees(np.arcsin(u))
    ri = np.array([np.argmin(np.abs(lat - x)) for x in rlat])
    rj = rng.integers(0, W, nref)
    dists = [great_circle_km(lat[ri[k]], lon[rj[k]], LAT, LON) for k in range(nref)]
    nb = int(dmax / binw)
    Ls, binned = [], []
    grid_L = np.arange(100.0, 3000.0, 10.0)
    for c in range(C):
        x = dn[:, c]
        s = np.zeros(nb)
        cnt = np.zeros(nb)
        for k in range(nref):
            corr = np.einsum("n,nij->ij", x[:, ri[k], rj[k]], x) / n
            b = (dists[k] / binw).astype(int)
            ok = b < nb
            np.add.at(s, b[ok], corr[ok])
            np.add.at(cnt, b[ok], 1)
        cb = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
        dc = (np.arange(nb) + 0.5) * binw
        dc[0] = 0.0  # first bin is (mostly) the reference point itself
        # fit where the correlation is still clearly positive (Gaussian core), at least 4 bins
        use = np.isfinite(cb)
        below = np.where(use & (cb < 0.2))[0]
        last = max(4, below[0] if len(below) else nb)
        use[last:] = False
        sse = [np.nansum(((cb - np.exp(-dc ** 2 / (2 * L ** 2))) ** 2)[use] * np.maximum(cnt[use], 1) ** 0) for L in grid_L]
        Ls.append(float(grid_L[int(np.argmin(sse))]))
        binned.append(cb)
    return np.array(Ls), np.array(binned)


def compute(ae, ck, out, nmc_valid, val_launches, seed=7):
    """Return a dict with latent variance, baseline B, calibration factors and the gate table."""
    rng = np.random.default_rng(seed)
    mean, std = ck["norm_mean"], ck["norm_std"]
    X = D.nature(out)
    lat, lon, sig = D.grid(out)
    fc = D.forecasts(out)
    f48, f24, days = nmc_pairs(fc, nmc_valid)
    print(f"NMC pairs: {len(days)} valid days {days[0]}..{days[-1]}", flush=True)
    # --- validation 48 h forecasts vs truth (calibration and gate) ---
    vl = [L for L in val_launches if L in fc and D.truth_index(L + 2) < len(X)]
    b48 = np.stack([fc[L][1] for L in vl]).astype(np.float64)
    tru = np.stack([X[D.truth_index(L + 2)] for L in vl]).astype(np.float64)
    e48 = b48 - tru
    print(f"validation cases: {len(vl)} (launch days {vl[0]}..{vl[-1]})", flush=True)
    # --- latent ---
    z48, z24 = encode(ae, f48, mean, std), encode(ae, f24, mean, std)
    dz = (z48 - z24).astype(np.float64)
    var_nmc_lat = dz.var(axis=0)
    zb, zt = encode(ae, b48, mean, std), encode(ae, tru, mean, std)
    ez = (zb - zt).astype(np.float64)
    var_true_lat = (ez ** 2).mean(axis=0)
    k_lat = float(var_true_lat.sum() / var_nmc_lat.sum())
    # --- model space (same NMC samples) ---
    dx = (f48 - f24).astype(np.float64)
    dx -= dx.mean(axis=0, keepdims=True)
    var_nmc_x = (dx ** 2).sum(axis=0) / (len(dx) - 1)
    sn = std[:, None, None] ** 2
    k_b = float((np.mean(e48 ** 2, axis=0) / sn).sum() / (var_nmc_x / sn).sum())
    sd_nmc = np.sqrt(np.maximum(var_nmc_x, 0))
    floor = 1e-3 * np.maximum(sd_nmc.mean(axis=(1, 2), keepdims=True), 1e-30)
    sd = np.sqrt(k_b) * np.maximum(sd_nmc, floor)
    dn = dx / np.maximum(sd_nmc, floor)[None]
    Ls, binned = fit_length_scales(dn.astype(np.float32), lat, lon, rng)
    vc = []
    for v in ["u", "v", "t", "q", "z"]:
        a = dn[:, D.VAR_SLICES[v]]  # n, 8, lat, lon
        m = np.einsum("nkij,nlij->kl", a, a) / (a.shape[0] * a.shape[2] * a.shape[3])
        dg = np.sqrt(np.diag(m))
        m = m / np.outer(dg, dg)
        m = 0.5 * (m + m.T)
        np.fill_diagonal(m, 1.0)
        vc.append(m)
    vc = np.array(vc)
    # --- reconstruction gate on validation nature states (never used in training) ---
    ntr = ck["train_days"] * D.STATES_PER_DAY
    Xva = np.asarray(X[ntr:])
    sq = np.zeros(41)
    for i in range(0, len(Xva), 64):
        xb = Xva[i:i + 64].astype(np.float64)
        sq += ((reconstruct(ae, xb, mean, std) - xb) ** 2).sum(axis=(0, 2, 3))
    sq /= len(Xva) * Xva.shape[2] * Xva.shape[3]
    rec = {v: float(np.sqrt(sq[sl].mean())) for v, sl in D.VAR_SLICES.items()}
    bg = D.rmse_per_var(e48)
    nmc = D.rmse_per_var(dx)
    gate = {v: {"recon_rmse": rec[v], "bg48_rmse": bg[v], "ratio": rec[v] / bg[v]} for v in rec}
    res = dict(latent_variance=(k_lat * np.maximum(var_nmc_lat, 1e-12)).astype(np.float64),
               k_latent=k_lat, k_baseline=k_b, sd=sd, length_scale=Ls, vertical_correlation=vc,
               corr_binned=binned, gate=gate, nmc_rmse=nmc, n_nmc=len(days), nmc_days=days,
               n_val=len(vl), val_launches=vl,
               latent_true_over_nmc=float(var_true_lat.mean() / var_nmc_lat.mean()))
    print("calibration: latent k = %.3f, baseline k = %.3f" % (k_lat, k_b), flush=True)
    print("length scales (km):", np.round(Ls).astype(int).tolist(), flush=True)
    print("gate:", json.dumps(gate, indent=None), flush=True)
    return res
