"""NMC statistics (latent and model-space baseline) from the same 48 h - 24 h forecast pairs,
calibration of one global scale factor per method in model space on training-period 48 h forecast errors, and
the reconstruction figures."""
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


def latent_draws(ae, xb, mean, std, s, n_draws, rng):
    """Draws of the latent B at a background: dx = sd * D'(z_b)(s * xi), xi ~ N(0, I), physical units.
    xb [41, nlat, nlon] -> [n_draws, 41, nlat, nlon]."""
    xn = ((np.asarray(xb, np.float64) - mean[:, None, None]) / std[:, None, None]).astype(np.float32)[None]
    with torch.no_grad():
        z = ae.encode(torch.from_numpy(xn))
        xi = torch.from_numpy((rng.standard_normal((n_draws, *z.shape[1:])) * np.sqrt(s)[None]).astype(np.float32))
        dxn = ae.decode_tl(z.expand(n_draws, -1, -1, -1).contiguous(), xi).numpy().astype(np.float64)
    return dxn * std[None, :, None, None]


def per_var_ratio(v_true, v_model):
    """Per variable: sum over its channels of the true error variance over the model's variance."""
    return {v: float(v_true[sl].sum() / max(v_model[sl].sum(), 1e-300)) for v, sl in D.VAR_SLICES.items()}


def compute(ae, ck, out, nmc_valid, calib_launches, val_launches, seed=7, n_backgrounds=24, n_draws=4,
            calib_vars=("u", "v", "t", "q", "ps")):
    """Statistics of the bundle, calibrated in model space on training-period cases only.

    * Latent variance: shape from the NMC pairs (variance of E(N(x48)) - E(N(x24)) per latent element), times one
      global factor k_latent chosen in MODEL space: draws sd * D'(z_b)(s * xi) at `n_backgrounds` training-period
      48 h forecasts give the implied per-variable variance of the latent B; k_latent is the geometric mean over
      `calib_vars` of (true 48 h error variance) / (implied variance), from the training-period cases
      `calib_launches` (their 48 h forecasts against the nature run). One factor for all variables keeps the
      decoder's wind-mass ratio (its balance) intact; the per-variable ratios are reported.
    * Baseline: grid-point sd, length scales and vertical correlations from the same NMC pairs, variance scaled by
      k_baseline, the geometric mean over `calib_vars` of (true error variance) / (NMC variance), same cases.
    * The reconstruction gate is measured on the validation nature states, and the 48 h error of the validation
      forecasts `val_launches` is only reported (it scales nothing)."""
    rng = np.random.default_rng(seed)
    mean, std = ck["norm_mean"], ck["norm_std"]
    X = D.nature(out)
    lat, lon, sig = D.grid(out)
    fc = D.forecasts(out)
    f48, f24, days = nmc_pairs(fc, nmc_valid)
    print(f"NMC pairs: {len(days)} valid days {days[0]}..{days[-1]}", flush=True)
    ntr_days = ck["train_days"]
    cl = [L for L in calib_launches if L in fc and L + 2 < ntr_days]
    if len(cl) < 10:
        raise SystemExit(f"only {len(cl)} training-period calibration cases")
    c48 = np.stack([fc[L][1] for L in cl]).astype(np.float64)
    ctru = np.stack([X[D.truth_index(L + 2)] for L in cl]).astype(np.float64)
    ec = c48 - ctru
    v_true = (ec ** 2).mean(axis=(0, 2, 3))  # per channel
    print(f"calibration cases (training period): {len(cl)} (launch days {cl[0]}..{cl[-1]})", flush=True)
    # --- latent: NMC shape, model-space calibration ---
    z48, z24 = encode(ae, f48, mean, std), encode(ae, f24, mean, std)
    var_nmc_lat = np.maximum((z48 - z24).astype(np.float64).var(axis=0), 1e-12)
    zb, zt = encode(ae, c48, mean, std), encode(ae, ctru, mean, std)
    k_lat_latent_space = float(((zb - zt).astype(np.float64) ** 2).mean(axis=0).sum() / var_nmc_lat.sum())
    pick = rng.choice(len(cl), size=min(n_backgrounds, len(cl)), replace=False)
    v_draw = np.zeros(41)
    for i in pick:
        dx = latent_draws(ae, c48[i], mean, std, var_nmc_lat, n_draws, rng)
        v_draw += (dx ** 2).mean(axis=(0, 2, 3))
    v_draw /= len(pick)
    r_lat = per_var_ratio(v_true, v_draw)
    k_lat = float(np.exp(np.mean([np.log(r_lat[v]) for v in calib_vars])))
    print("latent B (NMC shape) implied variance vs true 48 h error variance, per variable (true / implied): "
          + ", ".join(f"{v} {r:.3g}" for v, r in r_lat.items())
          + f"; model-space factor k = {k_lat:.4g} (a latent-space fit would give {k_lat_latent_space:.4g})",
          flush=True)
    # --- model space (same NMC samples) ---
    dx = (f48 - f24).astype(np.float64)
    dx -= dx.mean(axis=0, keepdims=True)
    var_nmc_x = (dx ** 2).sum(axis=0) / (len(dx) - 1)
    r_b = per_var_ratio(v_true, var_nmc_x.mean(axis=(1, 2)))
    k_b = float(np.exp(np.mean([np.log(r_b[v]) for v in calib_vars])))
    print("baseline (NMC) variance vs true 48 h error variance per variable (true / NMC): "
          + ", ".join(f"{v} {r:.3g}" for v, r in r_b.items()) + f"; factor k = {k_b:.4g}", flush=True)
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
    # --- prior-draw balance at training-period backgrounds (after calibration; scale-free anyway) ---
    from . import balance as BL
    acc = {h: np.zeros(3) for h in ("N", "S")}
    for i in pick[:8]:
        for d in latent_draws(ae, c48[i], mean, std, k_lat * var_nmc_lat, 2, rng):
            for h in acc:
                acc[h] += BL.sums(c48[i], c48[i] + d, lat, lon, h)
    prior_balance = {h: BL.correlation(s) for h, s in acc.items()}
    true_balance = {h: BL.correlation(sum(BL.sums(ctru[i], c48[i], lat, lon, h) for i in pick)) for h in ("N", "S")}
    print(f"prior-draw balance (training backgrounds): NH {prior_balance['N']:.3f} SH {prior_balance['S']:.3f}; "
          f"true 48 h error: NH {true_balance['N']:.3f} SH {true_balance['S']:.3f}", flush=True)
    # --- reconstruction gate on validation nature states (never used in training) ---
    ntr = ntr_days * D.STATES_PER_DAY
    Xva = np.asarray(X[ntr:])
    sq = np.zeros(41)
    for i in range(0, len(Xva), 64):
        xb = Xva[i:i + 64].astype(np.float64)
        sq += ((reconstruct(ae, xb, mean, std) - xb) ** 2).sum(axis=(0, 2, 3))
    sq /= len(Xva) * Xva.shape[2] * Xva.shape[3]
    rec = {v: float(np.sqrt(sq[sl].mean())) for v, sl in D.VAR_SLICES.items()}
    vl = [L for L in val_launches if L in fc and D.truth_index(L + 2) < len(X)]
    e48 = np.stack([fc[L][1] for L in vl]).astype(np.float64) - np.stack([X[D.truth_index(L + 2)] for L in vl])
    bg = D.rmse_per_var(e48)
    nmc = D.rmse_per_var(dx)
    gate = {v: {"recon_rmse": rec[v], "bg48_rmse": bg[v], "ratio": rec[v] / bg[v]} for v in rec}
    res = dict(latent_variance=(k_lat * var_nmc_lat).astype(np.float64),
               k_latent=k_lat, k_latent_latent_space=k_lat_latent_space, latent_ratio_per_var=r_lat,
               k_baseline=k_b, baseline_ratio_per_var=r_b, calib_vars=list(calib_vars),
               sd=sd, length_scale=Ls, vertical_correlation=vc,
               corr_binned=binned, gate=gate, nmc_rmse=nmc, n_nmc=len(days), nmc_days=days,
               n_calib=len(cl), calib_launches=cl, calib_rmse=D.rmse_per_var(ec),
               prior_draw_balance=prior_balance, true_error_balance=true_balance,
               n_val=len(vl), val_launches=vl)
    print("length scales (km):", np.round(Ls).astype(int).tolist(), flush=True)
    print("gate:", json.dumps(gate, indent=None), flush=True)
    return res
