"""Train the autoencoder on the first part of the nature run (validation on a later, unseen part)."""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from .model import AutoEncoder, PatchAutoEncoder, PosAutoEncoder, build


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=D.DEFAULT_OUT)
    ap.add_argument("--train-days", type=int, default=600, help="days [0, N) train; later days validate")
    ap.add_argument("--minutes", type=float, default=35.0, help="wall-clock training budget")
    ap.add_argument("--steps", type=int, default=None,
                    help="train exactly this many steps instead (the learning-rate schedule then runs on steps, "
                         "not on time, so a run is reproducible bit for bit)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--cl", type=int, default=32, help="latent channels (arch pos and conv)")
    ap.add_argument("--c1", type=int, default=32)
    ap.add_argument("--c2", type=int, default=64)
    ap.add_argument("--c3", type=int, default=96)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="ae")
    ap.add_argument("--no-res-full", action="store_true", help="no residual block at full resolution (cheaper)")
    ap.add_argument("--ndown", type=int, default=2, choices=[1, 2], help="number of 2x downsamplings to the latent")
    ap.add_argument("--arch", default="pos", choices=["pos", "patch", "conv"],
                    help="pos: conv AE with position inputs (reference v2); patch: local-EOF autoencoder with a "
                         "nonlinear conv correction (v1); conv: plain conv AE (first bundle)")
    ap.add_argument("--ce", default="32,64,96", help="encoder channels per resolution (arch pos)")
    ap.add_argument("--cd", default="96,64,32", help="decoder channels per resolution, coarse to fine (arch pos)")
    ap.add_argument("--patch", type=int, default=8, help="patch size of the local EOFs (arch patch)")
    ap.add_argument("--K", type=int, default=512, help="latent channels = local EOFs per patch (arch patch)")
    ap.add_argument("--lr-lin", type=float, default=2e-5, help="learning rate of the EOF weights (arch patch)")
    ap.add_argument("--init", default=None, help="continue from this checkpoint (same architecture)")
    ap.add_argument("--save-every", type=int, default=500, help="also save OUT/ae/NAME_partial.pt every N steps")
    ap.add_argument("--pair-launches", default=None,
                    help="first:last[:step] training-period launches whose (background, truth) pairs of recipes a "
                         "and b add the error-pair loss (issue 20 item 4); off by default")
    ap.add_argument("--pair-cycled", default="",
                    help="comma-separated folders of training-period cycled cases (c6) for the error-pair loss")
    ap.add_argument("--pair-batch", type=int, default=2, help="error pairs per step (their 2 states join the "
                                                                "reconstruction batch)")
    ap.add_argument("--pair-weight", type=float, default=1.0, help="weight of the error-pair loss")
    ap.add_argument("--balance-weight", type=float, default=0.0,
                    help="weight of the prior-draw balance hinge (latentda_train.draw_balance); 0: off")
    ap.add_argument("--balance-target", type=float, default=0.72,
                    help="prior-draw balance per hemisphere below which the hinge pulls (v2 has 0.72; v3 was trained "
                         "with 0.75)")
    ap.add_argument("--balance-draws", type=int, default=2, help="latent B draws per step for the balance term")
    ap.add_argument("--balance-nmc", default="22:331:3",
                    help="NMC valid days first:last[:step] whose encoded 48 h - 24 h differences give the latent "
                         "standard deviation of the draws (training period; refreshed every --balance-refresh steps)")
    ap.add_argument("--balance-refresh", type=int, default=250)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    X = D.nature(a.out)
    ntr = a.train_days * D.STATES_PER_DAY
    Xtr = np.asarray(X[:ntr], np.float32)
    if len(Xtr) < ntr:
        raise SystemExit(f"nature run has only {len(Xtr)} states, {ntr} needed for training")
    print(f"train states {len(Xtr)}", flush=True)
    mean = Xtr.mean(axis=(0, 2, 3), dtype=np.float64)
    std = Xtr.std(axis=(0, 2, 3), dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    std = np.maximum(std, 1e-12)
    for v, sl in D.VAR_SLICES.items():
        print(f"  {v}: min {Xtr[:, sl].min():.4g} max {Xtr[:, sl].max():.4g} channel std {std[sl].round(6)}")
    nrm = lambda x: ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
    Ntr = nrm(Xtr)
    del Xtr
    cm = Ntr.mean(axis=0, keepdims=True, dtype=np.float64)
    cs = Ntr.std(axis=0, keepdims=True, dtype=np.float64)
    # floor the per-point anomaly std: points that never vary (e.g. q at sigma 0.025 where it is ~0) must not
    # amplify tiny forecast differences into huge encoder inputs
    cs = np.maximum(cs, 0.1 * cs.mean(axis=(2, 3), keepdims=True))
    cs = np.maximum(cs, 1e-2)
    anom_rms = np.sqrt(np.mean(((Ntr - cm) ** 2), axis=(0, 2, 3), dtype=np.float64))
    # loss weights: 1 / (48 h background error)^2 per channel, from the forecasts available now
    # loss weights match the gate: per variable, squared error in physical units over the mean squared
    # 48 h background error of that variable (from the forecasts available now)
    # training-period forecasts only: nothing from the validation period may shape the model
    fc = D.forecasts(a.out)
    d = [fc[L][1] - X[D.truth_index(L + 2)] for L in sorted(fc) if L + 2 < a.train_days]
    w = np.zeros(41)
    for v, sl in D.VAR_SLICES.items():
        if len(d) >= 5:
            bgv = float(np.mean(np.stack([e[sl] for e in d]).astype(np.float64) ** 2))
        else:  # fallback: 10 % of the anomaly variance
            bgv = float(np.mean((0.1 * anom_rms[sl] * std[sl]) ** 2))
        w[sl] = std[sl] ** 2 / bgv / (sl.stop - sl.start)
    print(f"loss weights from {len(d)} 48 h forecast errors: {np.round(w / w.mean(), 3).tolist()}", flush=True)
    w = w / w.mean()
    wt = torch.tensor(w, dtype=torch.float32)[None, :, None, None]
    prev = None
    if a.init:
        prev = torch.load(a.init, map_location="cpu", weights_only=False)
        ae = build(prev["cfg"])
        ae.load_state_dict(prev["state_dict"])
        mean, std = prev["norm_mean"], prev["norm_std"]
        print(f"continuing from {a.init} ({prev['steps']} steps)", flush=True)
    else:
        if a.arch == "patch":
            ae = PatchAutoEncoder(patch=a.patch, K=a.K)
            local_eof_init(ae, Ntr, cm, np.sqrt(w))
        elif a.arch == "pos":
            from .cases import position_fields
            lat, lon, _ = D.grid(a.out)
            ae = PosAutoEncoder(cl=a.cl, ce=[int(c) for c in a.ce.split(",")], cd=[int(c) for c in a.cd.split(",")])
            ae.set_position(position_fields(lat, lon))
        else:
            ae = AutoEncoder(c1=a.c1, c2=a.c2, c3=a.c3, cl=a.cl, res_full=not a.no_res_full, ndown=a.ndown)
            with torch.no_grad():  # start close to the climatology
                last = ae.decoder.convs[-1].conv
                last.weight.mul_(0.1)
                last.bias.zero_()
        ae.clim_mean.copy_(torch.from_numpy(cm.astype(np.float32)))
        ae.clim_std.copy_(torch.from_numpy(cs.astype(np.float32)))
    nparam = sum(p.numel() for p in ae.parameters())
    print(f"params {nparam}, latent {ae.latent_shape}", flush=True)
    is_eof = lambda name: name in ("W_e", "W_d")
    lin = [p for n, p in ae.named_parameters() if is_eof(n)]
    rest = [p for n, p in ae.named_parameters() if not is_eof(n)]
    groups = [dict(params=rest, lr=a.lr, weight_decay=1e-5, base=a.lr)]
    if lin:
        groups.append(dict(params=lin, lr=a.lr_lin, weight_decay=0.0, base=a.lr_lin))
    opt = torch.optim.AdamW(groups)
    if isinstance(ae, PatchAutoEncoder):
        ae.eval()
        print("validation reconstruction RMSE before training:", json.dumps(validate(ae, a, ntr, nrm, std)), flush=True)
        ae.train()
    Ttr = torch.from_numpy(Ntr)
    pairs = error_pairs(a, X, nrm) if a.pair_launches else None
    drawbal = draw_balance_term(a, ae, nrm, mean, std) if a.balance_weight > 0 else None
    gen = torch.Generator().manual_seed(a.seed + 1)
    t0 = time.time()
    os.makedirs(os.path.join(a.out, "ae"), exist_ok=True)

    def save(path, rec=None):
        torch.save({"cfg": ae.cfg, "state_dict": ae.state_dict(), "norm_mean": mean, "norm_std": std,
                    "train_days": a.train_days, "steps": step + (prev["steps"] if prev else 0),
                    "epochs": ep + (prev["epochs"] if prev else 0),
                    "minutes": round((time.time() - t0) / 60 + (prev["minutes"] if prev else 0), 1),
                    "val_recon_rmse": rec, "loss_weights": w, "args": vars(a), "params": nparam, "hist": hist},
                   path)

    budget = a.minutes * 60
    step, ep, hist = 0, 0, []
    done = False
    while not done:
        perm = rng.permutation(len(Ttr))
        ep += 1
        run, prun, brun = 0.0, 0.0, np.zeros(2)
        for i in range(0, len(perm) - a.batch + 1, a.batch):
            frac = step / a.steps if a.steps else (time.time() - t0) / budget
            if frac >= 1:
                done = True
                break
            f_lr = (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac))) * min(1.0, (step + 1) / 100)
            lr = a.lr * f_lr
            for g in opt.param_groups:
                g["lr"] = g["base"] * f_lr
            xb = Ttr[perm[i:i + a.batch]]
            if pairs is None:
                loss = (wt * (ae(xb) - xb) ** 2).mean()
            else:
                # reconstruction over nature states and both members of each pair; the pair loss asks the decoded
                # difference D(E(xb)) - D(E(xt)) to reproduce the error xb - xt, relative to that error's size
                pb, pt = pairs.draw(a.pair_batch, rng)
                xs = torch.cat([xb, pb, pt])
                ys = ae(xs)
                loss = (wt * (ys - xs) ** 2).mean()
                nb, npair = len(xb), len(pb)
                pl = error_pair_loss(ys[nb:nb + npair], ys[nb + npair:], pb, pt, wt)
                loss = loss + a.pair_weight * pl
                prun += pl.item()
            if drawbal is not None:
                term, bal = drawbal.loss(ae, xb[:2], a.balance_target, a.balance_draws, gen)
                loss = loss + a.balance_weight * term
                brun += np.array([bal["N"], bal["S"]])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
            opt.step()
            step += 1
            run += loss.item()
            if step % 100 == 0:
                extra = f" pair {prun/100:.4f}" if pairs is not None else ""
                if drawbal is not None:
                    extra += f" draw balance NH {brun[0]/100:.3f} SH {brun[1]/100:.3f}"
                print(f"epoch {ep} step {step} loss {run/100:.4e}{extra} lr {lr:.2e} {time.time()-t0:.0f}s", flush=True)
                hist.append((step, run / 100))
                run, prun, brun = 0.0, 0.0, np.zeros(2)
            if drawbal is not None and step % a.balance_refresh == 0:
                drawbal.refresh(ae)
            if a.save_every and step % a.save_every == 0:
                save(os.path.join(a.out, "ae", f"{a.name}_partial.pt"))
    ae.eval()
    if isinstance(ae, PatchAutoEncoder):
        ae.round_weights()
    rec = validate(ae, a, ntr, nrm, std)
    print("validation reconstruction RMSE:", json.dumps(rec), flush=True)
    path = os.path.join(a.out, "ae", f"{a.name}.pt")
    save(path, rec)
    print("saved", path, flush=True)


def draw_balance_term(a, ae, nrm, mean, std):
    """The prior-draw balance term of --balance-weight, its latent spread from training-period NMC pairs."""
    from .draw_balance import DrawBalance
    from .forecasts import launch_days
    from .stats import nmc_pairs
    valid = [v for v in launch_days(a.balance_nmc) if v < a.train_days]
    f48, f24, days = nmc_pairs(D.forecasts(a.out, set(v - k for v in valid for k in (1, 2))), valid)
    lat, lon, _ = D.grid(a.out)
    term = DrawBalance(lat, lon, mean, std, torch.from_numpy(nrm(f48)), torch.from_numpy(nrm(f24)))
    term.refresh(ae)
    print(f"draw balance term: {len(days)} NMC pairs (valid days {days[0]}..{days[-1]}), target "
          f"{a.balance_target}, weight {a.balance_weight}", flush=True)
    return term


def error_pair_loss(yb, yt, xb, xt, wt):
    """Mean over pairs of |(yb - yt) - (xb - xt)|^2 / |xb - xt|^2 in the weighted norm wt: 0 when the decoded
    difference reproduces the error, 1 when the autoencoder maps both states to the same field."""
    e = xb - xt
    r = (yb - yt) - e
    return ((wt * r ** 2).sum(dim=(1, 2, 3)) / (wt * e ** 2).sum(dim=(1, 2, 3))).mean()


class ErrorPairs:
    """Normalised (background, truth) pairs of several error recipes, drawn with equal weight per recipe."""

    def __init__(self, recipes):
        self.names = sorted(recipes)
        self.recipes = recipes

    def draw(self, n, rng):
        """n pairs: a recipe uniformly, then one of its pairs uniformly."""
        bs, ts = [], []
        for _ in range(n):
            b, t = self.recipes[self.names[rng.integers(len(self.names))]]
            k = rng.integers(len(b))
            bs.append(b[k])
            ts.append(t[k])
        return torch.from_numpy(np.stack(bs)), torch.from_numpy(np.stack(ts))


def error_pairs(a, X, nrm):
    """The error-pair pool of --pair-launches / --pair-cycled (training period only, as the mixture reads it)."""
    from .forecasts import launch_days
    from .mixture import load_pair, recipe_samples
    cycled = [c for c in a.pair_cycled.split(",") if c]
    samples = recipe_samples(a.out, launch_days(a.pair_launches), cycled)
    recipes = {}
    for r, items in samples.items():
        bt = [load_pair(it, X) for it in items]  # recipe_samples refuses validation-period cases
        recipes[r] = (nrm(np.stack([b for b, _ in bt])), nrm(np.stack([t for _, t in bt])))
        print(f"error pairs {r}: {len(bt)}", flush=True)
    return ErrorPairs(recipes)


def validate(ae, a, ntr, nrm, std):
    """Reconstruction RMSE per variable (physical units) on the validation nature states."""
    sq, n = np.zeros(41), 0
    X = D.nature(a.out)
    with torch.no_grad():
        for i in range(ntr, len(X), 16):
            xb = torch.from_numpy(nrm(np.asarray(X[i:i + 16], np.float32)))
            r = (ae(xb) - xb).numpy().astype(np.float64) * std[None, :, None, None]
            sq += (r ** 2).sum(axis=(0, 2, 3))
            n += len(xb)
    sq /= n * 48 * 96
    return {v: float(np.sqrt(sq[sl].mean())) for v, sl in D.VAR_SLICES.items()}


def local_eofs(chunks, p):
    """EOFs of p x p patch vectors (PixelUnshuffle order, C * p * p values) pooled over all patches of the
    anomaly chunks [n, C, H, W]: (variances descending, EOFs as columns, total variance)."""
    C, n = None, 0
    for e in chunks:
        e = torch.as_tensor(e, dtype=torch.float32)
        P = F.pixel_unshuffle(e, p).permute(0, 2, 3, 1).reshape(-1, e.shape[1] * p * p)
        C = (P.T @ P).double() if C is None else C + (P.T @ P).double()
        n += P.shape[0]
    ev, V = torch.linalg.eigh(C / n)
    return ev.flip(0), V.flip(1), float(torch.trace(C / n))


def local_eof_init(ae, Ntr, cm, escale):
    """Set W_e, W_d to the leading K local EOFs of the weighted training anomalies e (p x p patches), and
    zscale to the square root of their variances."""
    p, K = ae.cfg["patch"], ae.cfg["K"]
    es = escale.astype(np.float32)[None, :, None, None]
    cm32 = cm.astype(np.float32)
    ev, V, total = local_eofs(((Ntr[i:i + 64] - cm32) * es for i in range(0, len(Ntr), 64)), p)
    ev, V = ev[:K], V[:, :K]
    print(f"local EOFs: {K} of {V.shape[0]} explain {float(ev.sum()) / total:.5f} of the variance", flush=True)
    with torch.no_grad():
        ae.W_e.copy_(V.T.float()[:, :, None, None])
        ae.W_d.copy_(V.float()[:, :, None, None])
        ae.zscale.copy_(ev.clamp_min(1e-12).sqrt().float()[None, :, None, None])
        ae.escale.copy_(torch.from_numpy(es))
        ae.round_weights()


if __name__ == "__main__":
    main()
