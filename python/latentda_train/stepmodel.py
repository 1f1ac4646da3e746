"""Latent step model for latent 4D-Var: F(z_t) = z_{t+dt}, trained on the nature run encoded with a bundle's
encoder, with a hand-written tangent-linear and adjoint, exported as the bundle's `[forecast]` graphs.

    F(z)      = z + ds * G((z - zm) / zs, P)            (residual form; zm, zs, ds: per latent channel)
    F'(z) dz  = dz + ds * G'(zn) (dz / zs)
    F'(z)^T g = g + G'(zn)^T (ds * g) / zs

G is a periodic convolutional net on the latent grid (the `Decoder` op list of `model.py`, so it has the same
hand-written TL/AD: periodic convolutions, SiLU, residual blocks, a zonal-mean mixing layer, position channels
and a position-dependent gain). P are the autoencoder's position fields (sin/cos latitude, land-sea mask,
orography) pooled to the latent grid: fixed buffers, so the TL and AD stay exact.

Stages (each a sub-command of `latentda-stepmodel`; --out is the data folder of every toolkit command, default
$LATENTDA_DATA, else ./data; step-model data and checkpoints under --work, default OUT/l4dvar; --bundle defaults to
the repository's models/speedy-t31). The defaults reproduce the reference bundle's shipped step model:

    latentda-stepmodel encode && latentda-stepmodel train && latentda-stepmodel export \
        && latentda-stepmodel bundle --dest models/speedy-t31 --error-growth 0.2


    encode   z = E(N(x)) of every nature state with the bundle's encoder (ONNX Runtime)  -> latent.npy
    train    Adam on one- and two-step latent errors (training days only)                 -> step.pt
    export   step.onnx, step_tl.onnx, step_ad.onnx (each in a fresh process) + ONNX Runtime dot/Taylor tests
    skill    decoded forecast RMSE against the nature run at 6-48 h, and persistence (validation days)
    bundle   copy a bundle and add the [forecast] table, the three graphs and their checksums
    sample4d the bundle's 4D sample case (BUNDLE/sample4d: background, truth, observations over 12 h)
    validate 4D cases (validation period): L4DVar against L3DVar with the same observations at the analysis time
             (3D-FGAT: innovations against the background at each observation's time) and L3DVar with only the
             analysis-time observations; analysis time and memory against the window length
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data as D
from .model import Decoder

GRAPHS = {
    "step": (["z"], ["z_next"]),
    "step_tl": (["z", "dz"], ["dz_next"]),
    "step_ad": (["z", "dz_next"], ["dz"]),
}
DT_HOURS = 6.0
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_BUNDLE = os.path.join(REPO, "models", "speedy-t31")


class LatentStep(nn.Module):
    """F(z) = z + ds * G((z - zm) / zs, P); see the module documentation."""

    def __init__(self, cl=40, nlat=12, nlon=24, c=64, nres=3, npos=4):
        super().__init__()
        self.cfg = dict(cl=cl, nlat=nlat, nlon=nlon, c=c, nres=nres, npos=npos)
        self.register_buffer("pos", torch.zeros(1, npos, nlat, nlon))
        self.register_buffer("zm", torch.zeros(1, cl, 1, 1))
        self.register_buffer("zs", torch.ones(1, cl, 1, 1))
        self.register_buffer("ds", torch.ones(1, cl, 1, 1))
        spec = [("pconv", cl, c, 3, 0), ("film", c, 0), ("act",)]
        for k in range(nres):
            spec += [("res", c), ("act",)]
            if k == 0:
                spec += [("zmix", c)]
        spec += [("pconv", c, cl, 3, 0)]
        self.net = Decoder(spec=spec, pos=[self.pos])
        with torch.no_grad():  # start at persistence
            last = self.net.convs[-1].conv.conv
            last.weight.mul_(0.1)
            last.bias.zero_()

    def _apply(self, fn, *args, **kwargs):
        # keep the net's reference to the position buffer valid after .float()/.double()/.to()
        super()._apply(fn, *args, **kwargs)
        self.net.pos = [self.pos]
        return self

    def forward(self, z):
        return z + self.ds * self.net((z - self.zm) / self.zs)

    def tl(self, z, dz):
        return dz + self.ds * self.net.tl((z - self.zm) / self.zs, dz / self.zs)

    def ad(self, z, g):
        return g + self.net.ad((z - self.zm) / self.zs, self.ds * g) / self.zs


class StepGraph(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, z):
        return self.m(z)


class StepTLGraph(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, z, dz):
        return self.m.tl(z, dz)


class StepADGraph(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, z, dz_next):
        return self.m.ad(z, dz_next)


# ---- data -------------------------------------------------------------------------------------------------
def bundle_norm(bundle):
    import netCDF4
    with netCDF4.Dataset(os.path.join(bundle, "normalisation.nc")) as ds:
        return np.asarray(ds["mean"][:], np.float64), np.asarray(ds["std"][:], np.float64)


def ort_session(path, threads=1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def cmd_encode(a):
    """Encode every nature state with the bundle's encoder: latent.npy (n, *latent_shape) float32."""
    os.makedirs(a.work, exist_ok=True)
    X = D.nature(a.data)
    mean, std = bundle_norm(a.bundle)
    enc = ort_session(os.path.join(a.bundle, "encoder.onnx"), a.threads)
    out = None
    t0 = time.time()
    for i in range(len(X)):
        xn = ((np.asarray(X[i], np.float64) - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
        z = enc.run(None, {"x": xn[None]})[0][0]
        if out is None:
            out = np.lib.format.open_memmap(os.path.join(a.work, "latent.npy.tmp"), "w+", np.float32, (len(X), *z.shape))
        out[i] = z
        if i % 200 == 0:
            print(f"encoded {i}/{len(X)} {time.time() - t0:.0f}s", flush=True)
    out.flush()
    del out
    os.replace(os.path.join(a.work, "latent.npy.tmp"), os.path.join(a.work, "latent.npy"))
    json.dump({"bundle": os.path.abspath(a.bundle), "states": len(X), "dt_hours": DT_HOURS},
              open(os.path.join(a.work, "latent.json"), "w"))
    print(f"wrote {a.work}/latent.npy ({len(X)} states) in {time.time() - t0:.0f}s", flush=True)


def latent_positions(data):
    """The autoencoder's position fields pooled 4x to the latent grid (as the decoder's coarsest level)."""
    from .cases import position_fields
    lat, lon, _ = D.grid(data)
    p0 = torch.from_numpy(position_fields(lat, lon))[None]
    return F.avg_pool2d(p0, 4)


# ---- training ---------------------------------------------------------------------------------------------
def cmd_train(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    Z = np.load(os.path.join(a.work, "latent.npy"), mmap_mode="r")
    ntr = a.train_days * D.STATES_PER_DAY
    Ztr = torch.from_numpy(np.asarray(Z[:ntr], np.float32))
    cl, nlat, nlon = Ztr.shape[1:]
    zm = Ztr.mean(dim=(0, 2, 3), keepdim=True)
    zs = Ztr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    ds = (Ztr[1:] - Ztr[:-1]).std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    m = LatentStep(cl, nlat, nlon, c=a.channels, nres=a.nres)
    with torch.no_grad():
        m.zm.copy_(zm)
        m.zs.copy_(zs)
        m.ds.copy_(ds)
        m.pos.copy_(latent_positions(a.data))
    nparam = sum(p.numel() for p in m.parameters())
    print(f"train pairs {ntr - a.rollout}, latent {tuple(Ztr.shape[1:])}, params {nparam}", flush=True)
    opt = torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=1e-5)
    t0 = time.time()
    hist, run, step = [], 0.0, 0
    idx = np.arange(ntr - a.rollout)
    while step < a.steps:
        for i in range(0, len(idx) - a.batch + 1, a.batch):
            if step >= a.steps:
                break
            if i == 0:
                rng.shuffle(idx)
            frac = step / a.steps
            lr = a.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac))) * min(1.0, (step + 1) / 100)
            for g in opt.param_groups:
                g["lr"] = lr
            b = idx[i:i + a.batch]
            z = Ztr[b]
            loss = 0.0
            for k in range(1, a.rollout + 1):  # one- and multi-step errors, in units of the 6 h tendency sd
                z = m(z)
                loss = loss + (((z - Ztr[b + k]) / ds) ** 2).mean() / a.rollout
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            step += 1
            run += loss.item()
            if step % 100 == 0:
                print(f"step {step} loss {run / 100:.4e} lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)
                hist.append((step, run / 100))
                run = 0.0
            if step % 500 == 0 or step == a.steps:
                save(m, a, hist, step, time.time() - t0, os.path.join(a.work, "step_partial.pt"))
    m.eval()
    val = latent_validation(m, Z, ntr, ds)
    print("validation (latent, in units of the 6 h tendency sd): " + json.dumps(val), flush=True)
    save(m, a, hist, step, time.time() - t0, os.path.join(a.work, "step.pt"), val)


def save(m, a, hist, step, secs, path, val=None):
    torch.save({"cfg": m.cfg, "state_dict": m.state_dict(), "steps": step, "minutes": round(secs / 60, 1),
                "args": {k: v for k, v in vars(a).items() if k != "func"}, "hist": hist, "validation": val,
                "train_days": a.train_days, "dt_hours": DT_HOURS}, path + ".tmp")
    os.replace(path + ".tmp", path)


def latent_validation(m, Z, ntr, ds):
    """RMS one-step latent error of F and of persistence on the validation states (tendency-sd units)."""
    Zv = torch.from_numpy(np.asarray(Z[ntr:], np.float32))
    with torch.no_grad():
        pred = torch.cat([m(Zv[i:i + 64]) for i in range(0, len(Zv), 64)])[:-1]
        e_f = (pred - Zv[1:]) / ds
        e_p = (Zv[:-1] - Zv[1:]) / ds
    return {"step_rms": float(e_f.pow(2).mean().sqrt()), "persistence_rms": float(e_p.pow(2).mean().sqrt())}


def load(ckpt, dtype=torch.float32):
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    m = LatentStep(**ck["cfg"])
    m.load_state_dict(ck["state_dict"])
    m.eval()
    return m.to(dtype), ck


# ---- export -----------------------------------------------------------------------------------------------
def export_one(which, ckpt, out, seed=0):
    """Export one graph (float32, opset 18, fixed batch 1). Call in a fresh process."""
    import onnx
    m, _ = load(ckpt)
    g = torch.Generator().manual_seed(seed)
    shape = (1, m.cfg["cl"], m.cfg["nlat"], m.cfg["nlon"])
    # distinct tensor objects for every input (a shared object silently drops an input)
    z = torch.randn(*shape, generator=g)
    dz = torch.randn(*shape, generator=g)
    mod, args = {"step": (StepGraph(m), (z,)), "step_tl": (StepTLGraph(m), (z, dz)),
                 "step_ad": (StepADGraph(m), (z, dz))}[which]
    ins, outs = GRAPHS[which]
    with torch.no_grad():
        prog = torch.onnx.export(mod.eval(), args, input_names=ins, output_names=outs, dynamo=True,
                                 opset_version=18, external_data=False)
    prog.save(out)
    from .onnxio import compact_half
    compact_half(out)  # float16-representable weights (a half-rounded checkpoint) stored as float16 + Cast
    mo = onnx.load(out)
    if [i.name for i in mo.graph.input] != ins or [o.name for o in mo.graph.output] != outs:
        raise RuntimeError(f"{which}: exported names {[i.name for i in mo.graph.input]} -> "
                           f"{[o.name for o in mo.graph.output]}, expected {ins} -> {outs}")


def export_all(ckpt, outdir):
    os.makedirs(outdir, exist_ok=True)
    for which in GRAPHS:
        subprocess.run([sys.executable, "-m", "latentda_train.stepmodel", "export-one", which, "--ckpt", ckpt,
                        "--out", os.path.join(outdir, f"{which}.onnx")], check=True)


def check_graphs(d, z0, seed=1, ckpt=None):
    """ONNX Runtime (float32): dot-product test of step_tl/step_ad, Taylor test of step_tl against step, and
    agreement with PyTorch."""
    S = {k: ort_session(os.path.join(d, f"{k}.onnx")) for k in GRAPHS}
    rng = np.random.default_rng(seed)
    z0 = np.asarray(z0, np.float32).reshape(1, *np.shape(z0)[-3:])
    f = lambda z: S["step"].run(None, {"z": z.astype(np.float32)})[0].astype(np.float64)
    tl = lambda z, dz: S["step_tl"].run(None, {"z": z, "dz": dz.astype(np.float32)})[0].astype(np.float64)
    ad = lambda z, g: S["step_ad"].run(None, {"z": z, "dz_next": g.astype(np.float32)})[0].astype(np.float64)
    res = {"dot": []}
    for _ in range(3):
        v = rng.standard_normal(z0.shape).astype(np.float32)
        for u in (rng.standard_normal(z0.shape), tl(z0, rng.standard_normal(z0.shape).astype(np.float32))):
            u = u.astype(np.float32)
            x, y = float(np.sum(tl(z0, v) * u)), float(np.sum(v.astype(np.float64) * ad(z0, u)))
            res["dot"].append(abs(x - y) / max(abs(x), abs(y)))
    res["dot_max"] = max(res["dot"])
    dz = (rng.standard_normal(z0.shape) * np.std(z0, axis=(0, 2, 3), keepdims=True)).astype(np.float32)
    tdz, f0 = tl(z0, dz), f(z0)
    tay = []
    for k in range(0, 15):
        eps = 10.0 ** (1 - k / 2)
        dd, dc = f(z0 + eps * dz) - f0, 0.5 * (f(z0 + eps * dz) - f(z0 - eps * dz))
        lin = eps * np.linalg.norm(tdz)
        tay.append((eps, float(np.linalg.norm(dd - eps * tdz) / lin), float(np.linalg.norm(dd) / lin),
                    float(np.linalg.norm(dc - eps * tdz) / lin)))
    res["taylor"] = tay
    # the runtime's gate (`latentda check`, src/diag/checks.rs taylor_verdict): see taylor_verdict below
    res["taylor_central_best"], res["taylor_v_minimum"], res["taylor_pass"] = taylor_verdict([(t[0], t[3]) for t in tay])
    rems = [t[1] for t in tay]
    best = run = 0
    for i in range(0, len(rems) - 2, 2):  # consecutive decades with the one-sided remainder falling 3-30x
        run = run + 1 if 3.0 <= rems[i] / max(rems[i + 2], 1e-300) <= 30.0 else 0
        best = max(best, run)
    res["taylor_decades"] = best
    if ckpt is not None:
        m, _ = load(ckpt)
        with torch.no_grad():
            zt = torch.from_numpy(z0)
            res["torch_vs_ort_step"] = float(np.abs(m(zt).numpy() - f0).max() / np.abs(f0).max())
            res["torch_vs_ort_tl"] = float(np.abs(m.tl(zt, torch.from_numpy(dz)).numpy() - tdz).max()
                                           / np.abs(tdz).max())
    res["ok"] = bool(res["dot_max"] < 1e-5 and res["taylor_pass"])
    return res


def taylor_verdict(rows, window_max=1.0, tol=1e-4, floor_factor=3.0):
    """The float32 Taylor gate of `latentda check` (src/diag/checks.rs `taylor_verdict`), on (eps, central remainder)
    rows in decreasing eps: pass when the best central remainder over eps <= window_max is below tol, or at most
    floor_factor x the minimum 1.89 a^(1/3) b^(2/3) of the V a eps^2 + b / eps fitted on its second-order arm (two
    consecutive rows with log-log slope 1.5-2.5) and its round-off arm (slope -1.3 to -0.7). Returns (best, V minimum,
    pass)."""
    best = min(c for e, c in rows if e <= window_max * (1 + 1e-9) and np.isfinite(c))
    a = b = float("nan")
    for (e1, c1), (e2, c2) in zip(rows, rows[1:]):
        if not (c1 > 0 and c2 > 0 and e1 > e2):
            continue
        slope = math.log(c1 / c2) / math.log(e1 / e2)
        if 1.5 <= slope <= 2.5:
            a = c2 / e2 ** 2
        if -1.3 <= slope <= -0.7 and math.isnan(b):
            b = c1 * e1
    vmin = 1.89 * a ** (1 / 3) * b ** (2 / 3)
    return best, vmin, bool(best < tol or (math.isfinite(vmin) and best <= floor_factor * vmin))


def cmd_export(a):
    out = a.graphs_out or os.path.join(a.work, "graphs")
    ckpt = a.ckpt or os.path.join(a.work, "step.pt")
    if not a.full_precision:
        # as the autoencoder's graphs: weights rounded to float16-representable values so the graphs store them
        # as float16 + Cast (half the bytes); step, TL and AD come from the same rounded model, so they stay exact
        from .onnxio import half_rounded_checkpoint
        half = os.path.join(a.work, "step_half.pt")
        half_rounded_checkpoint(ckpt, half)
        ckpt = half
    Z = np.load(os.path.join(a.work, "latent.npy"), mmap_mode="r")
    # the first validation state after the training days the checkpoint was trained on (not a flag to repeat)
    train_days = torch.load(ckpt, map_location="cpu", weights_only=False).get("train_days", a.train_days)
    export_all(ckpt, out)
    res = check_graphs(out, np.asarray(Z[min(train_days * D.STATES_PER_DAY + 3, len(Z) - 1)]), ckpt=ckpt)
    print(f"dot test rel. errors {['%.2e' % e for e in res['dot']]}")
    for eps, rem, ratio, cen in res["taylor"]:
        print(f"taylor eps={eps:.1e}  one-sided {rem:.3e}  central {cen:.3e}  ratio={ratio:.7f}")
    print(f"central remainder best {res['taylor_central_best']:.2e}, V minimum {res['taylor_v_minimum']:.2e} (gate: best"
          f" < 1e-4 or <= 3x the V minimum; pass {res['taylor_pass']}); one-sided first-order"
          f" decades {res['taylor_decades']}; torch vs ORT step {res.get('torch_vs_ort_step')}, "
          f"TL {res.get('torch_vs_ort_tl')}; ok={res['ok']}")
    json.dump(res, open(os.path.join(out, "checks.json"), "w"), indent=1)
    if not res["ok"]:
        raise SystemExit("ONNX checks failed")


# ---- skill ------------------------------------------------------------------------------------------------
def cmd_skill(a):
    """Forecast RMSE per variable against the nature run, 6-48 h, from validation-period states: the decoded latent
    forecast N^-1(D(F^k(z))) (its lead 0 is the autoencoder's reconstruction error), the same in increment form
    x + sd (D(F^k(z)) - D(z)) (what l4dvar uses as background trajectory: the reconstruction error cancels), and
    persistence."""
    X = D.nature(a.data)
    Z = np.load(os.path.join(a.work, "latent.npy"), mmap_mode="r")
    mean, std = bundle_norm(a.bundle)
    dec = ort_session(os.path.join(a.bundle, "decoder.onnx"), a.threads)
    step = ort_session(os.path.join(a.graphs or os.path.join(a.work, "graphs"), "step.onnx"), a.threads)
    leads = list(range(0, a.max_lead + 1))
    ntr = a.train_days * D.STATES_PER_DAY
    starts = list(range(ntr + 4, len(X) - a.max_lead, a.every))
    sq_f = {k: np.zeros(41) for k in leads}
    sq_i = {k: np.zeros(41) for k in leads}
    sq_p = {k: np.zeros(41) for k in leads}
    for s in starts:
        z = np.asarray(Z[s], np.float32)[None]
        x0 = np.asarray(X[s], np.float64)
        for k in leads:
            if k > 0:
                z = step.run(None, {"z": z})[0]
            xf = mean[:, None, None] + std[:, None, None] * dec.run(None, {"z": z})[0][0].astype(np.float64)
            if k == 0:
                xr = xf
            xt = np.asarray(X[s + k], np.float64)
            sq_f[k] += np.mean((xf - xt) ** 2, axis=(1, 2))
            sq_i[k] += np.mean((x0 + xf - xr - xt) ** 2, axis=(1, 2))
            sq_p[k] += np.mean((x0 - xt) ** 2, axis=(1, 2))
    rows = []
    for k in leads:
        rf = {v: float(np.sqrt(sq_f[k][sl].mean() / len(starts))) for v, sl in D.VAR_SLICES.items()}
        ri = {v: float(np.sqrt(sq_i[k][sl].mean() / len(starts))) for v, sl in D.VAR_SLICES.items()}
        rp = {v: float(np.sqrt(sq_p[k][sl].mean() / len(starts))) for v, sl in D.VAR_SLICES.items()}
        rows.append({"lead_h": k * DT_HOURS, "step_model": rf, "step_model_increment_form": ri, "persistence": rp})
    res = {"starts": len(starts), "first_start": starts[0], "every_states": a.every, "rows": rows}
    json.dump(res, open(os.path.join(a.work, "skill.json"), "w"), indent=1)
    print(f"forecast RMSE against the nature run, {len(starts)} validation starts (states {starts[0]}..{starts[-1]}"
          f" every {a.every}): F decoded N^-1(D(F^k z)) (lead 0 = autoencoder reconstruction), Fi increment form"
          f" x + sd (D(F^k z) - D(z)), P persistence")
    for v in D.VAR_SLICES:
        print(f"{v:>3} " + " ".join(f"{r['lead_h']:>5.0f}h" for r in rows[1:]))
        for key, lab in (("step_model", "F"), ("step_model_increment_form", "Fi"), ("persistence", "P")):
            print(f"{lab:>3} " + " ".join(f"{r[key][v]:>6.3g}" for r in rows[1:]))


# ---- bundle -----------------------------------------------------------------------------------------------
def add_forecast(bundle_dir, graphs_dir, dt_hours=DT_HOURS, space="latent", note="", error_growth=None):
    """Adds the [forecast] table, the three graphs and their SHA-256 checksums to the bundle in `bundle_dir`
    (in place). A bundle that already has a [forecast] table is refused."""
    import tomllib
    path = os.path.join(bundle_dir, "bundle.toml")
    text = open(path).read()
    if "forecast" in tomllib.loads(text):
        raise SystemExit(f"{path} already has a [forecast] table")
    for k in GRAPHS:
        shutil.copyfile(os.path.join(graphs_dir, f"{k}.onnx"), os.path.join(bundle_dir, f"{k}.onnx"))
    table = ["[forecast]", f'space = "{space}"', f"time_step_hours = {float(dt_hours)!r}",
             'step = "step.onnx"', 'step_tl = "step_tl.onnx"', 'step_ad = "step_ad.onnx"']
    if note:
        table.append(f"description = {json.dumps(note)}")
    if error_growth is not None:
        table.append(f"error_growth_per_hour = {float(error_growth)!r}")
    from .bundle import sha256
    sums = [f'"{k}.onnx" = "{sha256(os.path.join(bundle_dir, k + ".onnx"))}"' for k in GRAPHS]
    lines = text.rstrip("\n").split("\n")
    out, in_sums, done = [], False, False
    for ln in lines:
        if ln.strip().startswith("[") and in_sums and not done:
            while out and not out[-1].strip():
                out.pop()
            out += sums + [""]
            done = True
        if ln.strip() == "[checksums]":
            out += table + [""]
            in_sums = True
        out.append(ln)
    if not in_sums:
        raise SystemExit(f"{path} has no [checksums] table")
    if not done:
        out += sums
    new = "\n".join(out) + "\n"
    tomllib.loads(new)
    open(path + ".tmp", "w").write(new)
    os.replace(path + ".tmp", path)


def cmd_bundle(a):
    if os.path.abspath(a.dest) != os.path.abspath(a.bundle):
        if os.path.exists(a.dest):
            raise SystemExit(f"{a.dest} exists")
        shutil.copytree(a.bundle, a.dest)
    ck = torch.load(a.ckpt or os.path.join(a.work, "step.pt"), map_location="cpu", weights_only=False)
    note = (f"latent step model F(z) = z + ds G((z - zm)/zs, P), {sum(v.numel() for k, v in ck['state_dict'].items() if k.startswith('net.'))}"
            f" parameters, {ck['steps']} Adam steps on days 0-{ck['train_days'] - 1} of the nature run encoded with"
            f" this bundle's encoder (latentda_train.stepmodel)")
    if a.error_growth is not None:
        note += (f"; error_growth_per_hour {a.error_growth}: observation error variance x (1 + g t) for the step"
                 f" model's own error, chosen on training-period 4D cases (latentda-stepmodel validate --launches"
                 f" 240:330:18)")
    add_forecast(a.dest, a.graphs or os.path.join(a.work, "graphs"), ck.get("dt_hours", DT_HOURS), "latent", note,
                 a.error_growth)
    print(f"added [forecast] to {a.dest}")
    import tomllib
    with open(os.path.join(a.dest, "bundle.toml"), "rb") as f:
        if "probes" in tomllib.load(f):
            # the known-answer probes now cover the step graphs too (latentda probes rewrites probes.nc)
            from .bundle import write_probes
            print(write_probes(a.dest).strip().splitlines()[-1])


# ---- validation ---------------------------------------------------------------------------------------------
def _h(x, rows, sig):
    """H x for observation rows (var, lat, lon, level string, ...) at model levels (the sonde network's)."""
    from . import cases as CS
    out = []
    lat, lon = _GRID
    for v, a, b, lev, *_ in rows:
        f = x[D.VAR_SLICES[v]]
        f = f[0] if v == "ps" else f[int(np.argmin(np.abs(sig - float(lev))))]
        out.append(CS.bilinear(f, lat, lon, np.array([a]), np.array([b]))[0])
    return np.array(out)


_GRID = None


def make_4d_case(d, L, X, fcst, st, lat, lon, sig, nets):
    """Truth and background at 0, 6, 12 h after the analysis time (day L + 2, 00 UTC): the nature run and the
    perturbed-truth jcm forecast launched on day L continued from 48 h to 60 h; observations of each network at each
    slot, as a 4D file (time column), a 3D-FGAT file (value shifted by H(x_b,0) - H(x_b,k): innovations against the
    background at the observation's time, all at the analysis time) and the analysis-time observations alone."""
    from . import cases as CS
    from . import jcmrun
    os.makedirs(d, exist_ok=True)
    r = fcst.run(L, 0.7, 1.6)
    p = fcst.m.resume(forcing=fcst.forcing, save_interval=0.25, total_time=0.5)
    xc = jcmrun.physics_to_latentda(p.dynamics)
    bg = [r["fc48"].astype(np.float64), xc[0].astype(np.float64), xc[1].astype(np.float64)]
    i0 = D.truth_index(L + 2)
    truth = [np.asarray(X[i0 + k], np.float64) for k in range(3)]
    stored = D.forecasts(fcst.out, [L]).get(L)
    fc48_diff = float(np.abs(stored[1] - r["fc48"]).max()) if stored else None
    for k, h in enumerate((0, 6, 12)):
        CS.write_state(os.path.join(d, f"truth_{h}.nc"), truth[k], lat, lon, sig, f"nature, launch {L} + {48 + h} h")
        CS.write_state(os.path.join(d, f"background_{h}.nc"), bg[k], lat, lon, sig, f"jcm forecast {L} + {48 + h} h")
    for n, net in enumerate(nets):
        rows = [CS.make_obs(truth[k], lat, lon, sig, st, 1000 + L + 7 * k + 100000 * n, network=net) for k in range(3)]
        with open(os.path.join(d, f"obs4d_{net}.csv"), "w") as f:
            f.write("var,lat,lon,level,value,sigma,time\n")
            for k, rk in enumerate(rows):
                for v, a, b, lev, val, err in rk:
                    f.write(f"{v},{a:.3f},{b:.3f},{lev},{val:.7g},{err:.6g},{6 * k}\n")
        fgat = []
        for k, rk in enumerate(rows):
            shift = _h(bg[0], rk, sig) - _h(bg[k], rk, sig)
            fgat += [(v, a, b, lev, val + s, err) for (v, a, b, lev, val, err), s in zip(rk, shift)]
        CS.write_obs(os.path.join(d, f"obsfgat_{net}.csv"), fgat)
        CS.write_obs(os.path.join(d, f"obs0_{net}.csv"), rows[0])
    json.dump({"launch": L, "fc48_max_abs_diff_to_stored": fc48_diff}, open(os.path.join(d, "case.json"), "w"))


def cmd_validate(a):
    global _GRID
    import glob
    from . import cases as CS
    from . import suite as SU
    from .forecasts import Forecaster, launch_days
    X = D.nature(a.data)
    lat, lon, sig = D.grid(a.data)
    _GRID = (lat, lon)
    st = CS.stations(lat, lon)
    nets = a.networks.split(",")
    folder = os.path.join(a.work, "cases")
    fcst = None
    dirs = []
    for L in launch_days(a.launches):
        d = os.path.join(folder, f"case_{L:04d}")
        dirs.append((L, d))
        if not os.path.exists(os.path.join(d, "case.json")):
            if fcst is None:
                fcst = Forecaster(a.data)
            t0 = time.time()
            make_4d_case(d, L, X, fcst, st, lat, lon, sig, nets)
            print(f"case {L}: made in {time.time() - t0:.0f}s", flush=True)
    import onnxruntime
    ortlib = glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.1*"))[0]
    common = ["--backend", "ort", "--ort-library", ortlib, "--threads", "1"]
    bgat = lambda d: ["--background-at", f"6={d}/background_6.nc", "--background-at", f"12={d}/background_12.nc"]
    growth = ["--error-growth-per-hour", str(a.error_growth)]
    runs = {
        "l4dvar": lambda d, net: ("l4dvar", f"obs4d_{net}.csv", bgat(d) + growth),
        "l4dvar_stepbg": lambda d, net: ("l4dvar", f"obs4d_{net}.csv", growth),
        "l3dvar_fgat": lambda d, net: ("l3dvar", f"obsfgat_{net}.csv", []),
        "l3dvar_t0": lambda d, net: ("l3dvar", f"obs0_{net}.csv", []),
    }
    names = [n for n in runs if n in a.runs.split(",")]
    res = {}
    for L, d in dirs:
        case = os.path.join(d, "case")
        os.makedirs(case, exist_ok=True)
        shutil.copyfile(os.path.join(d, "background_0.nc"), os.path.join(case, "background.nc"))
        truth = CS.read_state(os.path.join(d, "truth_0.nc"))
        xb = CS.read_state(os.path.join(case, "background.nc"))
        rb = SU.area_rmse(xb - truth, lat)
        for net in nets:
            for name in names:
                method, obs, extra = runs[name](d, net)
                shutil.copyfile(os.path.join(d, obs), os.path.join(case, obs))
                with tempfile.TemporaryDirectory() as tmp:
                    an, rep, secs = SU.run_cli(a.latentda, a.bundle, case, obs, method, common + extra, tmp)
                ra = SU.area_rmse(an - truth, lat)
                res.setdefault(net, {}).setdefault(name, []).append(
                    {"launch": L, "ratio": {v: ra[v] / rb[v] for v in ra}, "seconds": secs,
                     "tl_ad_pairs": rep["solver"]["inner_total"], "n_used": rep["n_used"],
                     "trajectory_bytes": (rep.get("window") or {}).get("trajectory_bytes", 0)})
                print(f"case {L} {net:5s} {name:14s} " + " ".join(f"{v} {ra[v] / rb[v]:.3f}" for v in ra)
                      + f"  {secs:.1f}s {rep['n_used']} obs", flush=True)
        json.dump(res, open(os.path.join(a.work, f"validation_{a.tag}.json"), "w"), indent=1)
    for net in nets:
        print(f"\nnetwork {net}: mean over {len(dirs)} cases of analysis RMSE / background RMSE at the analysis time")
        print(f"{'run':16s} " + " ".join(f"{v:>7s}" for v in D.VAR_SLICES) + "   time/s  TL/AD pairs")
        for name in names:
            rs = res[net][name]
            m = {v: np.mean([r["ratio"][v] for r in rs]) for v in D.VAR_SLICES}
            print(f"{name:16s} " + " ".join(f"{m[v]:7.3f}" for v in D.VAR_SLICES)
                  + f"  {np.mean([r['seconds'] for r in rs]):7.1f}  {np.mean([r['tl_ad_pairs'] for r in rs]):7.1f}")
        if "l4dvar" in names:
            for other in names:
                if other.startswith("l3dvar"):
                    wins = {v: sum(r4["ratio"][v] < r3["ratio"][v] for r4, r3 in zip(res[net]["l4dvar"], res[net][other]))
                            for v in D.VAR_SLICES}
                    better = sum(np.mean([r["ratio"][v] for r in res[net]["l4dvar"]])
                                 < np.mean([r["ratio"][v] for r in res[net][other]]) for v in D.VAR_SLICES)
                    print(f"l4dvar better than {other} on {better}/6 variables (mean); cases won per variable {wins}")


def cmd_sample4d(a):
    """The bundle's 4D sample case (`sample4d/`), for `latentda demo --case BUNDLE/sample4d` and `latentda analyse
    --method l4dvar`: a validation-period case from the nature run in --out. `background.nc`: the 48 h forecast of
    the perturbed-truth recipe launched on day --launch (forecasts.py, as the suite's cases); `truth.nc`: the nature
    state at the window start (the analysis time); `obs4d.csv`: the sonde network observed at 0, 6 and 12 h (time
    column, hours); `obs.csv`: its 0 h rows alone (the same rows, for L3DVar with the analysis-time observations)."""
    from . import cases as CS
    from .forecasts import Forecaster
    X = D.nature(a.data)
    lat, lon, sig = D.grid(a.data)
    st = CS.stations(lat, lon)
    d = os.path.join(a.bundle, "sample4d")
    os.makedirs(d, exist_ok=True)
    L = a.launch
    if L + 2 < a.train_days:
        raise SystemExit(f"launch {L} lies in the training period (days < {a.train_days})")
    i0 = D.truth_index(L + 2)
    bg = Forecaster(a.data).run(L, 0.7, 1.6)["fc48"].astype(np.float64)
    truth = np.asarray(X[i0], np.float64)
    CS.write_state(os.path.join(d, "truth.nc"), truth, lat, lon, sig,
                   f"truth (nature run) at the window start: valid day {L + 2} 00 UTC")
    CS.write_state(os.path.join(d, "background.nc"), bg, lat, lon, sig,
                   f"48 h forecast from perturbed truth, launch day {L}, valid day {L + 2} 00 UTC")
    rows = []
    for k, h in enumerate((0, 6, 12)):
        rk = CS.make_obs(np.asarray(X[i0 + k], np.float64), lat, lon, sig, st, 1000 + L + 7 * k, network="sonde")
        rows += [(*r, h) for r in rk]
        if h == 0:
            CS.write_obs(os.path.join(d, "obs.csv"), rk)
    with open(os.path.join(d, "obs4d.csv"), "w") as f:
        f.write("var,lat,lon,level,value,sigma,time\n")
        for v, la, lo, lev, val, err, h in rows:
            f.write(f"{v},{la:.3f},{lo:.3f},{lev},{val:.7g},{err:.6g},{h}\n")
    rb = D.rmse_per_var((bg - truth)[None])
    print(f"wrote {d}: background (launch {L} + 48 h), truth, obs4d.csv ({len(rows)} observations at 0, 6, 12 h), "
          f"obs.csv (the 0 h rows); background RMSE {json.dumps(rb)}")


def cmd_window(a):
    """Analysis time and peak memory (maximum resident set size of the CLI) against the window length."""
    import glob
    import onnxruntime
    ortlib = glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.1*"))[0]
    rows = []
    for L in [int(x) for x in a.launches.split(",")]:
        d = os.path.join(a.work, "cases", f"case_{L:04d}")
        for w in (0, 6, 12):
            with tempfile.TemporaryDirectory() as tmp:
                rep = os.path.join(tmp, "r.json")
                method = ["--method", "l3dvar", "--obs", f"{d}/obs0_sonde.csv"] if w == 0 else \
                    ["--method", "l4dvar", "--window-hours", str(w), "--obs", f"{d}/obs4d_sonde.csv",
                     "--background-at", f"6={d}/background_6.nc"] + \
                    (["--background-at", f"12={d}/background_12.nc"] if w == 12 else [])
                cmd = ["/usr/bin/time", "-f", "MAXRSS %M", a.latentda, "analyse", "--bundle", a.bundle, "--background",
                       f"{d}/background_0.nc", "--output", f"{tmp}/an.nc", "--report", rep, "--backend", "ort",
                       "--ort-library", ortlib, "--threads", "1", *method]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode not in (0, 3):
                    raise SystemExit(p.stderr[-2000:])
                r = json.load(open(rep))
                rss = int([l for l in p.stderr.splitlines() if l.startswith("MAXRSS")][-1].split()[1])
                t = r["timings"]
                rows.append({"launch": L, "window_h": w, "total_s": t["total_s"], "pairs": r["solver"]["inner_total"],
                             "n_used": r["n_used"], "max_rss_mb": rss / 1024,
                             "trajectory_mb": (r.get("window") or {}).get("trajectory_bytes", 0) / 2 ** 20})
                print(rows[-1], flush=True)
    json.dump(rows, open(os.path.join(a.work, "window.json"), "w"), indent=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--out", "--data", dest="data", default=D.DEFAULT_OUT,
                       help="data folder with the nature run (as every toolkit command; --data is an alias)")
        p.add_argument("--work", default=None, help="step-model data and checkpoints (default OUT/l4dvar)")
        p.add_argument("--bundle", default=DEFAULT_BUNDLE)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--train-days", type=int, default=600)
        return p

    common(sub.add_parser("encode")).set_defaults(func=cmd_encode)
    p = common(sub.add_parser("train"))
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--channels", type=int, default=96)
    p.add_argument("--nres", type=int, default=3)
    p.add_argument("--rollout", type=int, default=2)
    p.add_argument("--seed", type=int, default=1234)
    p.set_defaults(func=cmd_train)
    p = common(sub.add_parser("export"))
    p.add_argument("--ckpt")
    p.add_argument("--graphs", dest="graphs_out", help="output folder of the graphs (default WORK/graphs)")
    p.add_argument("--full-precision", action="store_true", help="keep float32 weights (graphs twice as large)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("export-one")
    p.add_argument("which", choices=list(GRAPHS))
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=lambda a: export_one(a.which, a.ckpt, a.out))
    p = common(sub.add_parser("skill"))
    p.add_argument("--graphs")
    p.add_argument("--max-lead", type=int, default=8, help="in 6 h steps")
    p.add_argument("--every", type=int, default=6, help="start every N states")
    p.set_defaults(func=cmd_skill)
    p = common(sub.add_parser("validate"))
    p.add_argument("--launches", default="610:720:10", help="launch days first:last[:step] (validation period)")
    p.add_argument("--networks", default="sonde")
    p.add_argument("--runs", default="l4dvar,l3dvar_fgat,l3dvar_t0")
    p.add_argument("--error-growth", type=float, default=0.0, help="l4dvar option error_growth_per_hour")
    p.add_argument("--tag", default="validation", help="results go to WORK/validation_TAG.json")
    p.add_argument("--latentda", default=os.path.join(os.path.dirname(__file__), "..", "..", "target", "release",
                                                      "latentda"))
    p.set_defaults(func=cmd_validate)
    p = common(sub.add_parser("sample4d"))
    p.add_argument("--launch", type=int, default=700, help="launch day (validation period)")
    p.set_defaults(func=cmd_sample4d)
    p = common(sub.add_parser("window"))
    p.add_argument("--launches", default="610,620")
    p.add_argument("--latentda", default=os.path.join(os.path.dirname(__file__), "..", "..", "target", "release",
                                                      "latentda"))
    p.set_defaults(func=cmd_window)
    p = common(sub.add_parser("bundle"))
    p.add_argument("--dest", required=True, help="copy of --bundle that gets the [forecast] table")
    p.add_argument("--error-growth", type=float, default=None, help="[forecast] error_growth_per_hour")
    p.add_argument("--ckpt")
    p.add_argument("--graphs")
    p.set_defaults(func=cmd_bundle)
    a = ap.parse_args(argv)
    if getattr(a, "data", None) is not None and getattr(a, "work", "x") is None:
        a.work = os.path.join(a.data, "l4dvar")
    torch.set_num_threads(getattr(a, "threads", 1))
    a.func(a)


if __name__ == "__main__":
    main()
