"""ONNX export of the four bundle graphs (each in a fresh process) and ONNX Runtime checks."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np

GRAPHS = {
    "encoder": (["x"], ["z"]),
    "decoder": (["z"], ["x"]),
    "decoder_tl": (["z", "dz"], ["dx"]),
    "decoder_ad": (["z", "dx"], ["dz"]),
}


def load_ae(ckpt):
    import torch
    from .model import build
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    ae = build(ck["cfg"])
    ae.load_state_dict(ck["state_dict"])
    ae.eval()
    return ae, ck


def half_rounded_checkpoint(ckpt: str, out: str, min_size: int = 4096) -> dict:
    """Write a copy of a checkpoint whose large tensors (weights and fixed buffers with >= min_size elements) hold
    float16-representable values, so the export can store them as float16 + Cast (half the bundle size). All four
    graphs and the statistics then use the same rounded model, so the TL/AD stay exact; the rounding changes the
    decoded fields by about 1e-3 relative (measured and reported by the caller). Returns the checkpoint dict."""
    import torch
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    n = 0
    for k, t in ck["state_dict"].items():
        if t.is_floating_point() and t.numel() >= min_size:
            ck["state_dict"][k] = t.half().to(t.dtype)
            n += 1
    ck["half_rounded_tensors"] = n
    torch.save(ck, out)
    return ck


def export_one(which: str, ckpt: str, out: str, seed: int = 0):
    """Export one graph (float32, opset 18, fixed batch 1). Call in a fresh process."""
    import torch
    from . import model as M
    ae, _ = load_ae(ckpt)
    ae = ae.float()
    g = torch.Generator().manual_seed(seed)
    C, H, W = ae.cfg["nchan"], ae.cfg["nlat"], ae.cfg["nlon"]
    ls = ae.latent_shape
    # distinct tensor objects for every input (a shared object silently drops an input)
    x = torch.randn(1, C, H, W, generator=g)
    z = torch.randn(1, *ls, generator=g)
    dz = torch.randn(1, *ls, generator=g)
    dx = torch.randn(1, C, H, W, generator=g)
    mod, args = {
        "encoder": (M.EncoderGraph(ae), (x,)),
        "decoder": (M.DecoderGraph(ae), (z,)),
        "decoder_tl": (M.DecoderTLGraph(ae), (z, dz)),
        "decoder_ad": (M.DecoderADGraph(ae), (z, dx)),
    }[which]
    ins, outs = GRAPHS[which]
    with torch.no_grad():
        prog = torch.onnx.export(mod.eval(), args, input_names=ins, output_names=outs,
                                 dynamo=True, opset_version=18, external_data=False)
    prog.save(out)
    compact_half(out)
    import onnx
    m = onnx.load(out)
    names = [i.name for i in m.graph.input]
    if names != ins:
        raise RuntimeError(f"{which}: exported inputs {names} != {ins}")
    if [o.name for o in m.graph.output] != outs:
        raise RuntimeError(f"{which}: exported outputs wrong")


def compact_half(path: str, min_size: int = 4096) -> int:
    """Store large float32 weights whose values are exactly representable in float16 as float16
    initializers followed by a Cast to float32 (same numbers, half the bytes: the local-EOF weights are
    trained that way). Returns the number of converted tensors."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    m = onnx.load(path)
    g = m.graph
    casts = []
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(init)
        if a.size < min_size:
            continue
        h = a.astype(np.float16)
        if not np.array_equal(h.astype(np.float32), a):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(h, name + "_f16"))
        casts.append(helper.make_node("Cast", [name + "_f16"], [name], to=TensorProto.FLOAT, name=name + "_cast"))
    if casts:
        nodes = list(g.node)
        del g.node[:]
        g.node.extend(casts + nodes)
        onnx.checker.check_model(m)
        onnx.save(m, path)
    return len(casts)


def export_all(ckpt: str, outdir: str):
    os.makedirs(outdir, exist_ok=True)
    for which in GRAPHS:
        path = os.path.join(outdir, f"{which}.onnx")
        subprocess.run([sys.executable, "-m", "latentda_train.onnxio", "--one", which, "--ckpt", ckpt,
                        "--out", path], check=True)


def sessions(d):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return {k: ort.InferenceSession(os.path.join(d, f"{k}.onnx"), so, providers=["CPUExecutionProvider"])
            for k in GRAPHS}


def check_graphs(d: str, ckpt: str | None = None, z0=None, seed: int = 1, verbose=True, s_latent=None) -> dict:
    """Dot-product test and Taylor test in ONNX Runtime (float32), plus PyTorch agreement."""
    S = sessions(d)
    rng = np.random.default_rng(seed)
    zshape = S["decoder"].get_inputs()[0].shape
    xshape = S["decoder"].get_outputs()[0].shape
    if z0 is None:
        x0 = rng.standard_normal(S["encoder"].get_inputs()[0].shape).astype(np.float32)
        z0 = S["encoder"].run(None, {"x": x0})[0]
    z0 = np.asarray(z0, np.float32).reshape(zshape)
    dec = lambda z: S["decoder"].run(None, {"z": z.astype(np.float32)})[0].astype(np.float64)
    tl = lambda z, dz: S["decoder_tl"].run(None, {"z": z, "dz": dz.astype(np.float32)})[0].astype(np.float64)
    ad = lambda z, dx: S["decoder_ad"].run(None, {"z": z, "dx": dx.astype(np.float32)})[0].astype(np.float64)
    res = {"dot": []}
    # test vectors: u white noise scaled like model-space increments (clim_std of the decoder output is not
    # known here, so use |TL v2| per channel), and u = J v (<Jv,Jv> = <v,J^T J v>, no cancellation)
    for k in range(3):
        v = rng.standard_normal(zshape).astype(np.float32)
        v2 = rng.standard_normal(zshape).astype(np.float32)
        jv2 = tl(z0, v2)
        scale = np.sqrt(np.mean(jv2 ** 2, axis=(0, 2, 3), keepdims=True)) + 1e-30
        for u in (rng.standard_normal(xshape) * scale, tl(z0, v)):
            u = u.astype(np.float32)
            a = float(np.sum(tl(z0, v) * u.astype(np.float64)))
            b = float(np.sum(v.astype(np.float64) * ad(z0, u)))
            res["dot"].append(abs(a - b) / max(abs(a), abs(b)))
    res["dot_max"] = max(res["dot"])
    # perturbations of the size the analysis makes: dz = s * xi with s the latent background-error sd when given
    scale = np.std(z0) if s_latent is None else np.asarray(s_latent, np.float32).reshape(zshape)
    dz = (rng.standard_normal(zshape) * scale).astype(np.float32)
    tdz = tl(z0, dz)
    d0 = dec(z0)
    eps_list = [10.0 ** (1 - k / 2) for k in range(0, 15)]  # 10 .. 1e-6, half decades
    tay = []
    for eps in eps_list:
        dd = dec(z0 + eps * dz) - d0
        rem = np.linalg.norm(dd - eps * tdz) / (eps * np.linalg.norm(tdz))
        ratio = np.linalg.norm(dd) / (eps * np.linalg.norm(tdz))
        tay.append((eps, float(rem), float(ratio)))
    res["taylor"] = tay
    # first-order convergence, counted as in the runtime's `latentda check` (src/diag/checks.rs): the longest run of
    # consecutive full decades of eps over which the relative remainder falls by a factor 3 to 30 per decade
    rems = [t[1] for t in tay]
    best = run = 0
    for i in range(0, len(rems) - 2, 2):
        f = rems[i] / max(rems[i + 2], 1e-300)
        run = run + 1 if 3.0 <= f <= 30.0 else 0
        best = max(best, run)
    decades = float(best)
    res["taylor_decades"] = decades
    res["taylor_ratio_best"] = min(abs(t[2] - 1) for t in tay)
    if ckpt is not None:
        import torch
        ae, _ = load_ae(ckpt)
        with torch.no_grad():
            zt = torch.from_numpy(z0)
            res["torch_vs_ort_decoder"] = float(np.abs(ae.decode(zt).numpy() - d0).max() / np.abs(d0).max())
            res["torch_vs_ort_tl"] = float(np.abs(ae.decode_tl(zt, torch.from_numpy(dz)).numpy() - tdz).max()
                                           / np.abs(tdz).max())
    res["ok"] = bool(res["dot_max"] < 1e-5 and decades >= 3)
    if verbose:
        print(f"dot test rel. errors {['%.2e' % e for e in res['dot']]}")
        for eps, rem, ratio in tay:
            print(f"taylor eps={eps:.1e}  |D(z+e dz)-D(z)-e TL dz|/(e|TL dz|)={rem:.3e}  ratio={ratio:.7f}")
        print(f"taylor first-order decades: {decades}; ok={res['ok']}")
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", required=True, choices=list(GRAPHS))
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    export_one(a.one, a.ckpt, a.out)
