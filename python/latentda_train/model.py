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

import numpy as np
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


class PosConv(nn.Module):
    """k x k periodic convolution over [h, P]: the features h with the fixed position fields P of the same
    resolution appended as extra input channels. P is a constant, so TL and AD use only the weights acting on h."""

    def __init__(self, cin, cout, npos, level, k=3):
        super().__init__()
        self.cin, self.level = cin, level
        self.conv = PConv(cin + npos, cout, k)

    def forward(self, x, pos):
        p = pos[self.level]
        return self.conv(torch.cat([x, p.expand(x.shape[0], -1, -1, -1)], dim=1))

    def _w(self):
        return self.conv.conv.weight[:, :self.cin]

    def tl(self, dx, pos):
        c = self.conv
        return F.conv2d(ppad(dx, c.p), self._w(), None, padding=(c.p, 0))

    def ad(self, g, pos):
        c = self.conv
        return ppad_adjoint(F.conv_transpose2d(g, self._w(), None, padding=(c.p, 0)), c.p)


class Film(nn.Module):
    """Position-dependent gain: h * (1 + G(P)), G a 1 x 1 convolution of the fixed position fields. Linear in h
    with a fixed map, so the gain can change sign with latitude (the Coriolis parameter does) and the TL and AD are
    the same multiplication."""

    def __init__(self, c, npos, level):
        super().__init__()
        self.level = level
        self.g = nn.Conv2d(npos, c, 1)
        with torch.no_grad():
            self.g.weight.zero_()
            self.g.bias.zero_()

    def gain(self, pos):
        return 1.0 + self.g(pos[self.level])

    def forward(self, x, pos):
        return x * self.gain(pos)

    def tl(self, dx, pos):
        return dx * self.gain(pos)

    def ad(self, g, pos):
        return g * self.gain(pos)


class ZonalMix(nn.Module):
    """Global reach along longitude: h + W mean_lon(h), W a 1 x 1 convolution, the result broadcast back along
    longitude. Linear; the adjoint of "mean then broadcast" is itself, so AD = g + mean_lon(W^T g)."""

    def __init__(self, c):
        super().__init__()
        self.w = nn.Conv2d(c, c, 1, bias=False)
        with torch.no_grad():
            self.w.weight.zero_()

    def forward(self, x):
        return x + self.w(x.mean(dim=-1, keepdim=True))

    def tl(self, dx):
        return self.forward(dx)

    def ad(self, g):
        return g + F.conv_transpose2d(g, self.w.weight).mean(dim=-1, keepdim=True)


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
    """Sequence of ops: ('conv', PConv) | ('act', None) | ('res', ResBlock) | ('shuffle', r).

    Built from the (c1, c2, c3, cl, ...) arguments of the conv autoencoder, or from an explicit `spec`, a
    list of ("conv", cin, cout, k) | ("res", c) | ("act",) | ("shuffle",) entries."""

    def __init__(self, nchan=41, c1=32, c2=64, c3=96, cl=16, res_full=True, ndown=2, spec=None, pos=None):
        super().__init__()
        self.convs = nn.ModuleList()
        self.plan = []
        # fixed position fields per resolution level (0 = full grid, 1 = /2, 2 = /4), for "pconv" and "film"
        self.pos = pos if pos is not None else []

        def conv(ci, co, k=3):
            self.convs.append(PConv(ci, co, k))
            self.plan.append(("conv", len(self.convs) - 1))

        def res(c):
            self.convs.append(ResBlock(c))
            self.plan.append(("res", len(self.convs) - 1))

        def act():
            self.plan.append(("act", None))

        def shuffle():
            self.plan.append(("shuffle", 2))

        def pconv(ci, co, k, level):
            self.convs.append(PosConv(ci, co, self.pos[level].shape[1], level, k))
            self.plan.append(("pconv", len(self.convs) - 1))

        def film(c, level):
            self.convs.append(Film(c, self.pos[level].shape[1], level))
            self.plan.append(("film", len(self.convs) - 1))

        def zmix(c):
            self.convs.append(ZonalMix(c))
            self.plan.append(("zmix", len(self.convs) - 1))

        if spec is not None:
            ops = {"conv": conv, "res": res, "act": act, "shuffle": shuffle, "pconv": pconv, "film": film,
                   "zmix": zmix}
            for kind, *args in spec:
                ops[kind](*args)
            return
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
            if kind in ("conv", "res", "zmix"):
                h = self.convs[i](h)
            elif kind in ("pconv", "film"):
                h = self.convs[i](h, self.pos)
            elif kind == "act":
                h = F.silu(h)
            else:
                h = F.pixel_shuffle(h, i)
        return h

    # --- tangent linear: dx = D'(z) dz ---------------------------------------------------------
    def tl(self, z, dz):
        h, dh = z, dz
        for kind, i in self.plan:
            if kind in ("conv", "zmix"):
                h, dh = self.convs[i](h), self.convs[i].tl(dh)
            elif kind in ("pconv", "film"):
                h, dh = self.convs[i](h, self.pos), self.convs[i].tl(dh, self.pos)
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
            if kind in ("conv", "zmix"):
                cache.append(None)
                h = self.convs[i](h)
            elif kind in ("pconv", "film"):
                cache.append(None)
                h = self.convs[i](h, self.pos)
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
            if kind in ("conv", "zmix"):
                g = self.convs[i].ad(g)
            elif kind in ("pconv", "film"):
                g = self.convs[i].ad(g, self.pos)
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


class PatchAutoEncoder(nn.Module):
    """Local-EOF autoencoder with a convolutional nonlinear correction (the reference bundle's design).

    Internal variable: the weighted anomaly e = (xn - clim_mean) * escale, with escale per channel chosen so that
    |e|^2 is the training loss (squared error over the 48 h background error variance of each variable).

    Encoder: z = W_e * unshuffle_p(e) + zscale * N_e(a), a = (xn - clim_mean) / clim_std.
    Decoder: e = shuffle_p(W_d * z) + N_d(z / zscale), xn = clim_mean + e / escale.

    W_e and W_d are 1 x 1 convolutions on p x p patches (p = 8: 41 * 64 = 2624 values per patch, K latent
    channels), i.e. a convolution with kernel = stride = p; initialised with the leading K local EOFs of the
    training anomalies, so the untrained model is exactly a truncated local-EOF transform. N_e (strided
    periodic convs) and N_d (periodic convs + PixelShuffle, the `Decoder` op list with hand-written TL/AD)
    start at zero output and learn the nonlinear correction. zscale (sqrt of the EOF variances) keeps the
    nonlinear nets' inputs and outputs near unit size. W_e and W_d hold float16-representable values (the
    training rounds them in the forward pass), so the export can store them as float16 (bundle size).
    """

    def __init__(self, nchan=41, nlat=48, nlon=96, patch=8, K=512, cn=(16, 32, 32, 64), cd=(96, 32, 32, 16)):
        super().__init__()
        self.cfg = dict(kind="patch", nchan=nchan, nlat=nlat, nlon=nlon, patch=patch, K=K, cn=list(cn), cd=list(cd))
        npix = nchan * patch * patch
        self.W_e = nn.Parameter(torch.zeros(K, npix, 1, 1))
        self.W_d = nn.Parameter(torch.zeros(npix, K, 1, 1))
        nd = patch.bit_length() - 1
        assert 2 ** nd == patch, "patch must be a power of 2"
        layers, ci = [], nchan
        for j, co in enumerate(cn[:nd + 1]):
            layers += [PConv(ci, co, stride=1 if j == 0 else 2), nn.SiLU()]
            ci = co
        self.enc_net = nn.Sequential(*layers, PConv(ci, K, k=1))
        spec = [("conv", K, cd[0], 1), ("act",)]
        ci = cd[0]
        for co in cd[1:nd + 1]:
            spec += [("conv", ci, 4 * co, 3), ("shuffle",), ("act",)]
            ci = co
        spec += [("conv", ci, nchan, 3)]
        self.decoder = Decoder(spec=spec)
        with torch.no_grad():  # nonlinear parts start at zero output
            self.enc_net[-1].conv.weight.zero_()
            self.enc_net[-1].conv.bias.zero_()
            self.decoder.convs[-1].conv.weight.zero_()
            self.decoder.convs[-1].conv.bias.zero_()
        self.register_buffer("clim_mean", torch.zeros(1, nchan, nlat, nlon))
        self.register_buffer("clim_std", torch.ones(1, nchan, nlat, nlon))
        self.register_buffer("escale", torch.ones(1, nchan, 1, 1))
        self.register_buffer("zscale", torch.ones(1, K, 1, 1))
        self.round_half = True

    @property
    def latent_shape(self):
        p = self.cfg["patch"]
        return (self.cfg["K"], self.cfg["nlat"] // p, self.cfg["nlon"] // p)

    def _w(self, w):
        # float16-representable weights (straight-through rounding while training)
        return w.half().float().to(w.dtype) if (self.round_half and self.training) else w

    def lin_dec(self, z):
        return F.pixel_shuffle(F.conv2d(z, self._w(self.W_d)), self.cfg["patch"])

    def lin_dec_ad(self, g):
        return F.conv_transpose2d(F.pixel_unshuffle(g, self.cfg["patch"]), self._w(self.W_d))

    def encode(self, xn):
        d = xn - self.clim_mean
        zl = F.conv2d(F.pixel_unshuffle(d * self.escale, self.cfg["patch"]), self._w(self.W_e))
        return zl + self.zscale * self.enc_net(d / self.clim_std)

    def decode(self, z):
        e = self.lin_dec(z) + self.decoder(z / self.zscale)
        return self.clim_mean + e / self.escale

    def decode_tl(self, z, dz):
        return (self.lin_dec(dz) + self.decoder.tl(z / self.zscale, dz / self.zscale)) / self.escale

    def decode_ad(self, z, dx):
        g = dx / self.escale
        return self.lin_dec_ad(g) + self.decoder.ad(z / self.zscale, g) / self.zscale

    def forward(self, xn):
        return self.decode(self.encode(xn))

    def round_weights(self):
        """Round W_e, W_d to float16-representable values (done before saving)."""
        with torch.no_grad():
            for w in (self.W_e, self.W_d):
                w.copy_(w.half().float())


def position_fields(lat, lon, lsm, orog):
    """Fixed position inputs on the grid (lat north to south): sin(lat), cos(lat), land-sea mask, orography
    (normalised by its standard deviation). [4, nlat, nlon] float32."""
    lat = np.asarray(lat, np.float64)
    la = np.radians(lat)[:, None] * np.ones((1, len(lon)))
    o = np.asarray(orog, np.float64)
    return np.stack([np.sin(la), np.cos(la), np.asarray(lsm, np.float64), o / max(o.std(), 1e-9)]).astype(np.float32)


class PosAutoEncoder(nn.Module):
    """Convolutional autoencoder that knows where it is (the reference bundle v2 design).

    Position fields P (sin/cos latitude, land-sea mask, orography) are fixed extra input channels of the encoder
    and of every decoder convolution (at the feature map's resolution, by 2 x 2 average pooling), and set a
    position-dependent gain of the decoder's feature maps (`Film`): the decoder can couple wind and mass with a
    sign that follows the Coriolis parameter. Two stride-2 stages give a [cl, nlat/4, nlon/4] latent grid
    (cl = 32: 12 x 24 x 32, 20x compression of the 41 x 48 x 96 state); a zonal-mean mixing layer
    (`ZonalMix`) plus residual blocks at the latent level give a global receptive field there. Periodic in
    longitude (slice + concat), zero padding in latitude, SiLU. The decoder has hand-written TL/AD (the `Decoder`
    op list).

    Like `AutoEncoder`, it works on the per-point standardised anomaly (xn - clim_mean) / clim_std."""

    def __init__(self, nchan=41, nlat=48, nlon=96, cl=32, ce=(48, 96, 128), cd=(128, 64, 32), npos=4):
        super().__init__()
        self.cfg = dict(kind="pos", nchan=nchan, nlat=nlat, nlon=nlon, cl=cl, ce=list(ce), cd=list(cd), npos=npos)
        self.register_buffer("pos0", torch.zeros(1, npos, nlat, nlon))
        self.register_buffer("pos1", torch.zeros(1, npos, nlat // 2, nlon // 2))
        self.register_buffer("pos2", torch.zeros(1, npos, nlat // 4, nlon // 4))
        self.register_buffer("clim_mean", torch.zeros(1, nchan, nlat, nlon))
        self.register_buffer("clim_std", torch.ones(1, nchan, nlat, nlon))
        e0, e1, e2 = ce
        self.enc = nn.Sequential(
            PConv(nchan + npos, e0), nn.SiLU(),
            PConv(e0, e1, stride=2), nn.SiLU(), ResBlock(e1), nn.SiLU(),
            PConv(e1, e2, stride=2), nn.SiLU(), ResBlock(e2), nn.SiLU(), ZonalMix(e2), ResBlock(e2), nn.SiLU(),
            PConv(e2, cl))
        d2, d1, d0 = cd
        spec = [("pconv", cl, d2, 3, 2), ("film", d2, 2), ("act",), ("res", d2), ("act",), ("zmix", d2),
                ("res", d2), ("act",),
                ("pconv", d2, 4 * d1, 3, 2), ("shuffle",), ("film", d1, 1), ("act",), ("res", d1), ("act",),
                ("pconv", d1, 4 * d0, 3, 1), ("shuffle",), ("film", d0, 0), ("act",), ("res", d0), ("act",),
                ("pconv", d0, nchan, 3, 0)]
        self.decoder = Decoder(spec=spec, pos=[self.pos0, self.pos1, self.pos2])
        with torch.no_grad():  # start close to the climatology
            last = self.decoder.convs[-1].conv.conv
            last.weight.mul_(0.1)
            last.bias.zero_()

    def _apply(self, fn, *args, **kwargs):
        # keep the decoder's references to the position buffers valid after .float()/.double()/.to()
        super()._apply(fn, *args, **kwargs)
        self.decoder.pos = [self.pos0, self.pos1, self.pos2]
        return self

    def set_position(self, p0: np.ndarray):
        """Set the position fields from a [npos, nlat, nlon] array (pooled to the coarser levels)."""
        with torch.no_grad():
            t = torch.from_numpy(np.asarray(p0, np.float32))[None]
            self.pos0.copy_(t)
            self.pos1.copy_(F.avg_pool2d(t, 2))
            self.pos2.copy_(F.avg_pool2d(t, 4))

    @property
    def latent_shape(self):
        return (self.cfg["cl"], self.cfg["nlat"] // 4, self.cfg["nlon"] // 4)

    def encode(self, xn):
        a = (xn - self.clim_mean) / self.clim_std
        return self.enc(torch.cat([a, self.pos0.expand(a.shape[0], -1, -1, -1)], dim=1))

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


def build(cfg: dict) -> nn.Module:
    """The model of a checkpoint's `cfg` (`kind` "patch" or absent for the conv AE)."""
    cls = {"patch": PatchAutoEncoder, "pos": PosAutoEncoder}.get(cfg.get("kind"), AutoEncoder)
    return cls(**{k: v for k, v in cfg.items() if k != "kind"})
