"""How much of true background errors an autoencoder's tangent space can represent (issue 20, item 4).

A latent analysis can only add increments D'(zb) dz to the background. For each case (background xb, truth xt,
normalised by the bundle) this finds the latent increment dz that best reproduces the true error e = xt - xb,

    min_dz  sum_v |D'(zb) dz - e|_v^2 / |e|_v^2        (each variable counts alike),

by CGLS with the bundle's own TL and adjoint decoders (ONNX Runtime), and reports per variable the explained
fraction 1 - |r|_v^2 / |e|_v^2 and the same for the encoder's own increment D'(zb) (E(xt) - E(xb)). Cheap
(seconds per case): it ranks candidate autoencoders before the robustness matrix, which judges them.

    latentda-tangent --bundle models/speedy-t31 --cases 'DATA/matrix/c6/case_*' 'DATA/matrix/b6/case_*'
"""
from __future__ import annotations

import argparse
import glob
import os

import numpy as np

from . import cases as CS
from . import data as D


class Decoder:
    """encoder, TL and adjoint decoder of a bundle through ONNX Runtime (one thread), in normalised units."""

    def __init__(self, bundle, threads=1):
        from .stepmodel import bundle_norm, ort_session
        s = lambda n: ort_session(os.path.join(bundle, f"{n}.onnx"), threads)
        self.enc, self.tl, self.ad = s("encoder"), s("decoder_tl"), s("decoder_ad")
        mean, std = bundle_norm(bundle)
        self.mean, self.std = mean[:, None, None], std[:, None, None]

    def norm(self, x):
        return (x - self.mean) / self.std

    def encode(self, xn):
        return self.enc.run(None, {"x": xn[None].astype(np.float32)})[0][0].astype(np.float64)

    def J(self, z, dz):
        return self.tl.run(None, {"z": z[None].astype(np.float32), "dz": dz[None].astype(np.float32)})[0][0]

    def JT(self, z, dx):
        return self.ad.run(None, {"z": z[None].astype(np.float32), "dx": dx[None].astype(np.float32)})[0][0]


class TorchDecoder(Decoder):
    """The same operators from a training checkpoint (torch autodiff), to rank checkpoints before their export."""

    def __init__(self, ckpt, threads=1):
        import torch
        from .onnxio import load_ae
        torch.set_num_threads(threads)
        self.torch = torch
        self.ae, ck = load_ae(ckpt)
        self.mean = np.asarray(ck["norm_mean"], np.float64)[:, None, None]
        self.std = np.asarray(ck["norm_std"], np.float64)[:, None, None]

    def _t(self, a):
        return self.torch.from_numpy(np.asarray(a, np.float32)[None])

    def encode(self, xn):
        with self.torch.no_grad():
            return self.ae.encode(self._t(xn))[0].double().numpy()

    def J(self, z, dz):
        return self.torch.func.jvp(self.ae.decode, (self._t(z),), (self._t(dz),))[1][0].detach().double().numpy()

    def JT(self, z, dx):
        _, vjp = self.torch.func.vjp(self.ae.decode, self._t(z))
        return vjp(self._t(dx))[0][0].detach().double().numpy()


def variable_weights(e, lat):
    """Per-channel weights so that each variable's area-weighted error energy counts 1 (41, nlat, 1)."""
    aw = np.cos(np.radians(lat))[None, :, None]
    w = np.zeros((e.shape[0], 1, 1))
    for sl in D.VAR_SLICES.values():
        w[sl] = 1.0 / max(float((aw * e[sl] ** 2).sum()), 1e-30)
    return w * aw


def explained(r, e, w):
    """Per variable 1 - |r|^2 / |e|^2 in the weights w."""
    return {v: 1.0 - float((w[sl] * r[sl] ** 2).sum() / (w[sl] * e[sl] ** 2).sum()) for v, sl in D.VAR_SLICES.items()}


def best_increment(dec, zb, e, w, iters):
    """CGLS for min |W^(1/2) (J dz - e)|^2 from dz = 0; returns the residual J dz - e."""
    sw = np.sqrt(w)
    dz = np.zeros_like(zb)
    r = sw * e  # residual of the weighted system b - A dz, A = W^(1/2) J
    s = dec.JT(zb, sw * r)
    p, gamma = s.copy(), float((s * s).sum())
    for _ in range(iters):
        q = sw * dec.J(zb, p)
        alpha = gamma / max(float((q * q).sum()), 1e-300)
        dz += alpha * p
        r -= alpha * q
        s = dec.JT(zb, sw * r)
        g_new = float((s * s).sum())
        p = s + (g_new / gamma) * p
        gamma = g_new
    return dec.J(zb, dz) - e


def case_scores(dec, folder, lat, iters):
    """(explained by the best latent increment, explained by the encoder's increment) of one matrix case."""
    xb = CS.read_state(os.path.join(folder, "background.nc"))
    xt = CS.read_state(os.path.join(folder, "truth.nc"))
    nb, nt = dec.norm(xb), dec.norm(xt)
    e = nt - nb
    w = variable_weights(e, lat)
    zb = dec.encode(nb)
    best = explained(best_increment(dec, zb, e, w, iters), e, w)
    enc = explained(dec.J(zb, dec.encode(nt) - zb) - e, e, w)
    return best, enc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="bundle folder (encoder, decoder_tl, decoder_ad, normalisation)")
    ap.add_argument("--ckpt", help="or a training checkpoint (torch), instead of a bundle")
    ap.add_argument("--cases", nargs="+", required=True,
                    help="globs of case folders with background.nc and truth.nc (one recipe per glob)")
    ap.add_argument("--iters", type=int, default=40, help="CGLS iterations")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    import netCDF4
    if bool(a.bundle) == bool(a.ckpt):
        raise SystemExit("give one of --bundle and --ckpt")
    dec = Decoder(a.bundle, a.threads) if a.bundle else TorchDecoder(a.ckpt, a.threads)
    print(f"{a.bundle or a.ckpt}: explained fraction of the true error per variable, best latent increment "
          f"({a.iters} CGLS iterations) | encoder increment D'(zb)(E(xt) - E(xb))")
    for pattern in a.cases:
        folders = sorted(f for f in glob.glob(pattern) if os.path.exists(os.path.join(f, "truth.nc")))
        if not folders:
            raise SystemExit(f"{pattern}: no case folder with background.nc and truth.nc")
        with netCDF4.Dataset(os.path.join(folders[0], "truth.nc")) as ds:
            lat = np.asarray(ds["lat"][:], np.float64)
        res = [case_scores(dec, f, lat, a.iters) for f in folders]
        mean = lambda k: {v: float(np.mean([r[k][v] for r in res])) for v in D.VAR_SLICES}
        b, en = mean(0), mean(1)
        name = os.path.basename(os.path.dirname(os.path.normpath(folders[0])))
        print(f"{name:5s} {len(res):2d} cases  best " + " ".join(f"{v} {b[v]:.2f}" for v in b)
              + f"  mean {np.mean(list(b.values())):.3f} | enc " + " ".join(f"{v} {en[v]:.2f}" for v in en),
              flush=True)


if __name__ == "__main__":
    main()
