"""A training checkpoint recovered from a bundle's ONNX graphs (issue 20, item 4: "longer training from the checkpoint").

The shipped autoencoder's training checkpoint was not kept, so continuing its training, or fine-tuning it with the
error-pair loss, first needs its weights back. The exported encoder.onnx and decoder.onnx hold every weight as a
named initializer ("ae.<state_dict key>", float16-rounded ones with the suffix "_f16"), except the decoder's
position-dependent gains (`model.Film`), which the exporter folded into constants G(P) = W P + b of the fixed position
fields P: their 1 x 1 convolutions are solved back from those constants by least squares (4 position fields plus a
constant per output channel, exact up to float32 rounding). The architecture comes from the manifest's provenance,
the normalisation from normalisation.nc. The result reproduces the bundle's encoder and decoder (the check below
runs both on the bundle's sample background) and loads with `latentda-train --init`.

    latentda-recover --bundle models/speedy-t31 --out DATA/ae/shipped.pt
"""
from __future__ import annotations

import argparse
import ast
import os
import re

import numpy as np

from . import cases as CS


def bundle_cfg(bundle):
    """(architecture cfg dict, {'steps', 'epochs', 'minutes', 'params'}) from the manifest's [provenance] training."""
    import tomllib
    with open(os.path.join(bundle, "bundle.toml"), "rb") as f:
        tr = tomllib.load(f)["provenance"]["training"]
    m = re.search(r"AE (\{.*?\}), (\d+) parameters, (\d+) Adam steps \((\d+) epochs, ([0-9.]+) min", tr)
    if not m:
        raise SystemExit(f"{bundle}/bundle.toml: [provenance] training does not name the AE's cfg: {tr[:120]}")
    cfg = ast.literal_eval(m.group(1))
    return cfg, {"params": int(m.group(2)), "steps": int(m.group(3)), "epochs": int(m.group(4)),
                 "minutes": float(m.group(5))}


def initializers(path):
    """{state_dict key: float32 array} of the graph's 'ae.*' initializers, and {name: array} of the others."""
    import onnx
    from onnx import numpy_helper
    named, other = {}, {}
    for i in onnx.load(path).graph.initializer:
        a = numpy_helper.to_array(i)
        if a.dtype.kind != "f":
            continue
        if i.name.startswith("ae."):
            named[i.name[3:].removesuffix("_f16")] = a.astype(np.float32)
        else:
            other[i.name] = a.astype(np.float32)
    return named, other


def recover(bundle):
    """(model, checkpoint dict) rebuilt from the bundle's graphs; raises SystemExit naming what could not be found."""
    import netCDF4
    import torch
    from .model import Film, build
    from .stepmodel import bundle_norm
    cfg, meta = bundle_cfg(bundle)
    ae = build(cfg)
    with netCDF4.Dataset(os.path.join(bundle, "sample", "background.nc")) as ds:
        lat, lon = np.asarray(ds["lat"][:], np.float64), np.asarray(ds["lon"][:], np.float64)
    ae.set_position(CS.position_fields(lat, lon))
    enc, enc_other = initializers(os.path.join(bundle, "encoder.onnx"))
    dec, dec_other = initializers(os.path.join(bundle, "decoder.onnx"))
    sd = ae.state_dict()
    loaded = set()
    for src in (enc, dec):
        for k, a in src.items():
            if k in sd and tuple(sd[k].shape) == a.shape:
                sd[k] = torch.from_numpy(a)
                loaded.add(k)
    # folded position gains: G(P) = W P + b for each Film layer whose weights are not initializers
    consts = {**enc_other, **dec_other}
    for i, layer in enumerate(ae.decoder.convs):
        if not isinstance(layer, Film) or f"decoder.convs.{i}.g.weight" in loaded:
            continue
        P = [ae.pos0, ae.pos1, ae.pos2][layer.level][0].numpy().astype(np.float64)  # [npos, h, w]
        c = layer.g.out_channels
        cands = [v for v in consts.values() if v.shape == (1, c) + P.shape[1:]]
        if len(cands) != 1:
            raise SystemExit(f"{bundle}/decoder.onnx: {len(cands)} folded constants of shape (1, {c}, "
                             f"{P.shape[1]}, {P.shape[2]}) for the gain of decoder.convs.{i} (need exactly 1)")
        A = np.concatenate([P.reshape(P.shape[0], -1), np.ones((1, P[0].size))]).T  # [points, npos + 1]
        coef, *_ = np.linalg.lstsq(A, cands[0][0].reshape(c, -1).T.astype(np.float64), rcond=None)
        sd[f"decoder.convs.{i}.g.weight"] = torch.from_numpy(coef[:-1].T.astype(np.float32))[:, :, None, None]
        sd[f"decoder.convs.{i}.g.bias"] = torch.from_numpy(coef[-1].astype(np.float32))
        loaded |= {f"decoder.convs.{i}.g.weight", f"decoder.convs.{i}.g.bias"}
    missing = [k for k in sd if k not in loaded and not k.startswith("pos")]
    if missing:
        raise SystemExit(f"{bundle}: no weights in the graphs for {', '.join(missing[:6])}"
                         + (f" and {len(missing) - 6} more" if len(missing) > 6 else ""))
    ae.load_state_dict(sd)  # copies in place: the decoder's references to the position buffers stay valid
    ae.eval()
    mean, std = bundle_norm(bundle)
    ck = {"cfg": cfg, "state_dict": ae.state_dict(), "norm_mean": np.asarray(mean, np.float32),
          "norm_std": np.asarray(std, np.float32), "train_days": 600, "args": {}, "recovered_from": bundle, **meta}
    return ae, ck


def graph_mismatch(ae, bundle):
    """Max |torch - ONNX| / max |ONNX| of the encoder (latent) and decoder (normalised state) on the sample
    background, both run in float32."""
    import torch
    from .stepmodel import bundle_norm, ort_session
    mean, std = bundle_norm(bundle)
    xb = CS.read_state(os.path.join(bundle, "sample", "background.nc"))
    xn = ((xb - mean[:, None, None]) / std[:, None, None]).astype(np.float32)[None]
    z = ort_session(os.path.join(bundle, "encoder.onnx"), 1).run(None, {"x": xn})[0]
    y = ort_session(os.path.join(bundle, "decoder.onnx"), 1).run(None, {"z": z})[0]
    with torch.no_grad():
        zt = ae.encode(torch.from_numpy(xn)).numpy()
        yt = ae.decode(torch.from_numpy(z)).numpy()
    rel = lambda a, b: float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    return {"encoder": rel(zt, z), "decoder": rel(yt, y)}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="latentda-recover", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    a = ap.parse_args(argv)
    import torch
    ae, ck = recover(a.bundle)
    mm = graph_mismatch(ae, a.bundle)
    print(f"recovered {ck['params']} parameters of {ck['cfg']}; against the bundle's graphs on its sample: encoder "
          f"max rel. difference {mm['encoder']:.2e}, decoder {mm['decoder']:.2e}")
    if max(mm.values()) > 1e-4:
        raise SystemExit("the recovered model does not reproduce the bundle's graphs (> 1e-4): not written")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    torch.save(ck, a.out)
    print(f"wrote {a.out} (continue with: latentda-train --init {a.out} ...)")


if __name__ == "__main__":
    main()
