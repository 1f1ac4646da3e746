"""Convolutional autoencoder on the T31 Gaussian grid with a hand-written tangent-linear and adjoint
decoder.

Conventions: tensors [B, C, lat, lon]; longitude is periodic (padding by slice + concat, never a
'wrap' Pad), latitude is zero-padded (by the convolution's own padding). Smooth activations (SiLU).
Upsampling by PixelShuffle.

The model works on per-channel normalised fields xn = (x - mean_c) / std_c (the bundle's
normalisation). Inside, it also removes a fixed per-grid-point climatology (clim_mean, clim_std of
the normalised training data): the encoder sees (xn - clim_mean) / clim_std and the decoder returns
clim_mean + clim_std * y. Both are fixed buffers, so the decoder stays a smooth map whose TL and AD
are exact.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def ppad(x: torch.Tensor, p: int = 1) -> torch.Tensor:
    """Periodic halo of p columns in longitude (last dim), by slice + concat."""
    if p == 0:
        return x
    return torch.cat([x[..., -p:], x, x[..., :p]], dim=-1)


def ppad_adjoint(g: torch.Tensor, p: int = 1) -> torch.Tensor:
    """Adjoint of ppad: fold the halo back onto the columns it was copied from."""
    if p == 0:
        return g
    W = g.shape[-1] - 2 * p
    core = g[..., p:p + W]
    left = g[..., :p]            # copies of x[..., W-p:W]
    right = g[..., p + W:]       # copies of x[..., 0:p]
    return core + F.pad(right, (0, W - p)) + F.pad(left, (W - p, 0))


def dsilu(a: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(a)
    return s * (1.0 + a * (1.0 - s))


class PConv(nn.Module):
    """k x k convolution, periodic in longitude, zero padding in latitude."""

    def __init__(self, cin, cout, k=3, stride=1, bias=True):
        super().__init__()
        self.p = k // 2
        self.stride = stride
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=(self.p, 0), bias=bias)

    def forward(self, x):
        return self.conv(ppad(x, self.p))

    def tl(self, dx):
        return F.conv2d(ppad(dx, self.p), self.conv.weight, None, stride=self.stride, padding=(self.p, 0))

    def ad(self, g):
        assert self.stride == 1
        return ppad_adjoint(F.conv_transpose2d(g, self.conv.weight, None, padding=(self.p, 0)), self.p)


class ResBlock(nn.Module):
    """y = x + conv2(silu(conv1(x)))"""

    def __init__(self, c):
        super().__init__()
        self.c1 = PConv(c, c)
        self.c2 = PConv(c, c)

    def forward(self, x):
        return x + self.c2(F.silu(self.c1(x)))


class Encoder(nn.Module):
    def __init__(self, nchan=41, c1=32, c2=64, c3=96, cl=16, res_full=True, ndown=2):
        super().__init__()
        full = [ResBlock(c1), nn.SiLU()] if res_full else []
        layers = [PConv(nchan, c1), nn.SiLU(), *full,
                  PConv(c1, c2, stride=2), nn.SiLU(), ResBlock(c2), nn.SiLU()]
        if ndown == 2:
            layers += [PConv(c2, c3, stride=2), nn.SiLU(), ResBlock(c3), nn.SiLU(), PConv(c3, cl)]
        else:
            layers += [PConv(c2, cl)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    """Sequence of ops: ('conv', PConv) | ('act', None) | ('res', ResBlock) | ('shuffle', r)."""

    def __init__(self, nchan=41, c1=32, c2=64, c3=96, cl=16, res_full=True, ndown=2):
        super().__init__()
        self.convs = nn.ModuleList()
        self.plan = []

        def conv(ci, co):
            self.convs.append(PConv(ci, co))
            self.plan.append(("conv", len(self.convs) - 1))

        def res(c):
            self.convs.append(ResBlock(c))
            self.plan.append(("res", len(self.convs) - 1))

        def act():
            self.plan.append(("act", None))

        def shuffle():
            self.plan.append(("shuffle", 2))

        if ndown == 2:
            conv(cl, c3); act(); res(c3); act()
            conv(c3, 4 * c2); shuffle(); act(); res(c2); act()
        else:
            conv(cl, c2); act(); res(c2); act(); res(c2); act()
        conv(c2, 4 * c1); shuffle(); act()
        if res_full:
            res(c1); act()
        conv(c1, nchan)

    # --- forward -------------------------------------------------------------------------------
    def forward(self, z):
        h = z
        for kind, i in self.plan:
            if kind == "conv":
                h = self.convs[i](h)
            elif kind == "res":
                h = self.convs[i](h)
            elif kind == "act":
                h = F.silu(h)
            else:
                h = F.pixel_shuffle(h, i)
        return h

    # --- tangent linear: dx = D'(z) dz ---------------------------------------------------------
    def tl(self, z, dz):
        h, dh = z, dz
        for kind, i in self.plan:
            if kind == "conv":
                h, dh = self.convs[i](h), self.convs[i].tl(dh)
            elif kind == "res":
                blk = self.convs[i]
                a1 = blk.c1(h)
                d1 = dsilu(a1) * blk.c1.tl(dh)
                h, dh = h + blk.c2(F.silu(a1)), dh + blk.c2.tl(d1)
            elif kind == "act":
                h, dh = F.silu(h), dsilu(h) * dh
            else:
                h, dh = F.pixel_shuffle(h, i), F.pixel_shuffle(dh, i)
        return dh

    # --- adjoint: dz = D'(z)^T dx --------------------------------------------------------------
    def ad(self, z, g):
        cache = []
        h = z
        for kind, i in self.plan:   # forward sweep, keep what the adjoint needs
            if kind == "conv":
                cache.append(None)
                h = self.convs[i](h)
            elif kind == "res":
                blk = self.convs[i]
                a1 = blk.c1(h)
                cache.append(dsilu(a1))
                h = h + blk.c2(F.silu(a1))
            elif kind == "act":
                cache.append(dsilu(h))
                h = F.silu(h)
            else:
                cache.append(None)
                h = F.pixel_shuffle(h, i)
        for (kind, i), c in zip(reversed(self.plan), reversed(cache)):
            if kind == "conv":
                g = self.convs[i].ad(g)
            elif kind == "res":
                blk = self.convs[i]
                g = g + blk.c1.ad(c * blk.c2.ad(g))
            elif kind == "act":
                g = c * g
            else:
                g = F.pixel_unshuffle(g, i)
        return g


class AutoEncoder(nn.Module):
    def __init__(self, nchan=41, nlat=48, nlon=96, c1=32, c2=64, c3=96, cl=16, res_full=True, ndown=2):
        super().__init__()
        self.cfg = dict(nchan=nchan, nlat=nlat, nlon=nlon, c1=c1, c2=c2, c3=c3, cl=cl, res_full=res_full,
                        ndown=ndown)
        self.encoder = Encoder(nchan, c1, c2, c3, cl, res_full, ndown)
        self.decoder = Decoder(nchan, c1, c2, c3, cl, res_full, ndown)
        self.register_buffer("clim_mean", torch.zeros(1, nchan, nlat, nlon))
        self.register_buffer("clim_std", torch.ones(1, nchan, nlat, nlon))

    @property
    def latent_shape(self):
        f = 2 ** self.cfg.get("ndown", 2)
        return (self.cfg["cl"], self.cfg["nlat"] // f, self.cfg["nlon"] // f)

    def encode(self, xn):
        return self.encoder((xn - self.clim_mean) / self.clim_std)

    def decode(self, z):
        return self.clim_mean + self.clim_std * self.decoder(z)

    def decode_tl(self, z, dz):
        return self.clim_std * self.decoder.tl(z, dz)

    def decode_ad(self, z, dx):
        return self.decoder.ad(z, self.clim_std * dx)

    def forward(self, xn):
        return self.decode(self.encode(xn))


# ---- thin wrappers for ONNX export (fixed names) ---------------------------------------------
class EncoderGraph(nn.Module):
    def __init__(self, ae):
        super().__init__()
        self.ae = ae

    def forward(self, x):
        return self.ae.encode(x)


class DecoderGraph(nn.Module):
    def __init__(self, ae):
        super().__init__()
        self.ae = ae

    def forward(self, z):
        return self.ae.decode(z)


class DecoderTLGraph(nn.Module):
    def __init__(self, ae):
        super().__init__()
        self.ae = ae

    def forward(self, z, dz):
        return self.ae.decode_tl(z, dz)


class DecoderADGraph(nn.Module):
    def __init__(self, ae):
        super().__init__()
        self.ae = ae

    def forward(self, z, dx):
        return self.ae.decode_ad(z, dx)


def build(cfg: dict) -> AutoEncoder:
    return AutoEncoder(**cfg)
