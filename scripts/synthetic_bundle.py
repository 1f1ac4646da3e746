#!/usr/bin/env python3
"""Synthetic latentda bundles with a ViT-style decoder and exact TL/AD graphs: performance fixtures.

    python3 scripts/synthetic_bundle.py OUT_DIR --preset paper [--scale S]     # 69 x 128 x 256, ~156 M parameters
    python3 scripts/synthetic_bundle.py OUT_DIR --nlat 64 --nlon 128 --dim 64 --depth 2 --heads 4

The paper preset mirrors the decoder size of the published reference (Fan et al. 2026): a 69-channel state on a
1.40625-degree grid (128 x 256; u, v, t, q, z on 13 pressure levels plus u10, v10, t2m, msl) and a ViT decoder
of about 150 M parameters (width 1024, 12 blocks, 16 heads, 8 x 8 patches: 512 tokens). `--scale S` shrinks grid
and width by S (depth stays 12) so the same code runs on a CPU; `--scale 0.125` gives a 16 x 32 grid and
about 2.5 M parameters.

Weights are random (seeded): this is a performance fixture, not a model. What matters is exact and complete:
decoder, TL and AD graphs are generated from one program by forward- and reverse-mode differentiation of each
operation (linear layers, LayerNorm, GELU, multi-head softmax attention, patch (un)embedding), the TL/AD dot test
and the Taylor test of the TL are checked with ONNX Runtime before the bundle is written (`--no-check` skips
that, for paper scale on a small machine), and `latentda check OUT_DIR` checks them again in the runtime.

Decoder (z: [1, T, c_lat] tokens, T = (nlat/p) (nlon/p)):
    h = z W_in + b_in + pos
    repeat depth times:  h = h + Attn(LN(h));  h = h + W2 GELU(W1 LN(h) + b1) + b2
    x = unpatchify(LN(h) W_out + b_out)            -> [1, C, nlat, nlon] (normalised fields)
Encoder: patchify then one linear map to c_lat (a cheap stand-in; it runs once per analysis).

Also written: normalisation.nc (plausible per-channel mean/std in physical units), latent_variance.nc, and a
sample case (truth = N^-1(D(z_t)), background = N^-1(D(z_t + dz)), obs.csv drawn from the truth). Needs numpy,
onnx, netCDF4 or scipy, and (for the checks) onnxruntime; no torch. Deterministic for a given seed and library versions.
"""

import argparse
import hashlib
import math
import sys
import time
from pathlib import Path

import numpy as np

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as e:  # pragma: no cover
    sys.exit(f"synthetic_bundle.py needs numpy and onnx: {e}")


def nc_create(path):
    """A new NetCDF file (64-bit offset format): netCDF4 where installed, else scipy's pure-Python writer (the GPU
    machines have scipy but not always netCDF4)."""
    try:
        import netCDF4
        return netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET")
    except ImportError:
        try:
            from scipy.io import netcdf_file
        except ImportError:
            sys.exit("synthetic_bundle.py needs netCDF4 or scipy to write NetCDF files")
        return netcdf_file(str(path), "w", version=2)

OPSET = 17
IR_VERSION = 8
PRESSURE_HPA = [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]
UPPER = [  # name, units, long name, mean(top..bottom), std
    ("u", "m s-1", "eastward wind", lambda p: 5 + 10 * np.exp(-((p - 250) / 200) ** 2), lambda p: 6 + 8 * np.exp(-((p - 250) / 250) ** 2)),
    ("v", "m s-1", "northward wind", lambda p: 0.0 * p, lambda p: 5 + 5 * np.exp(-((p - 250) / 250) ** 2)),
    ("t", "K", "air temperature", lambda p: 210 + 75 * (p / 1000) ** 0.6, lambda p: 4 + 8 * p / 1000),
    ("q", "kg kg-1", "specific humidity", lambda p: 1e-2 * (p / 1000) ** 4 + 2e-6, lambda p: 3e-3 * (p / 1000) ** 3 + 1e-6),
    ("z", "m2 s-2", "geopotential", lambda p: 9.81 * 7000 * np.log(1000 / p), lambda p: 300 + 1500 * (1 - p / 1000)),
]
SURFACE = [("u10", "m s-1", "10 m eastward wind", 0.0, 5.0), ("v10", "m s-1", "10 m northward wind", 0.0, 4.5),
           ("t2m", "K", "2 m temperature", 285.0, 15.0), ("msl", "Pa", "mean sea level pressure", 101325.0, 1100.0)]


# ------------------------------------------------------------------------------------------------------------------
# graph building
# ------------------------------------------------------------------------------------------------------------------
class Graph:
    """Nodes and initialisers of one ONNX graph under construction."""

    def __init__(self, float16_weights):
        self.nodes, self.inits, self.count, self.f16 = [], [], 0, float16_weights
        self.weights = {}

    def name(self, base):
        self.count += 1
        return f"{base}_{self.count}"

    def op(self, op_type, inputs, base=None, **attrs):
        out = self.name(base or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, arr, base="c"):
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def weight(self, key, arr):
        """A float32 weight, stored as float16 + Cast where asked (values are float16-representable already)."""
        if key in self.weights:
            return self.weights[key]
        if self.f16 and arr.size >= 4096:
            raw = self.const(arr.astype(np.float16), key + "_f16")
            name = self.op("Cast", [raw], key, to=TensorProto.FLOAT)
        else:
            name = self.const(arr.astype(np.float32), key)
        self.weights[key] = name
        return name

    def weight_t(self, key, arr):
        """The transpose of a 2-D weight (a Transpose node: the runtimes fold it once at load)."""
        tkey = key + "_T"
        if tkey not in self.weights:
            self.weights[tkey] = self.op("Transpose", [self.weight(key, arr)], tkey, perm=[1, 0])
        return self.weights[tkey]

    def axes(self, values):
        return self.const(np.array(values, dtype=np.int64), "axes")

    def shape(self, values):
        return self.const(np.array(values, dtype=np.int64), "shape")

    def model(self, inputs, output, doc):
        g = helper.make_graph(self.nodes, doc, inputs, [output], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="latentda-synthetic",
                              producer_version="1")
        m.ir_version = IR_VERSION
        return m


def tensor(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def add(g, a, b):
    if a is None:
        return b
    if b is None:
        return a
    return g.op("Add", [a, b])


# Each operation: fwd(g, xs) -> y;  tl(g, xs, y, dxs) -> dy;  ad(g, xs, y, dy) -> [dx per input]
class Linear:
    def __init__(self, key, w, b):
        self.key, self.w, self.b = key, w, b

    def fwd(self, g, xs):
        y = g.op("MatMul", [xs[0], g.weight(self.key + "_w", self.w)])
        return g.op("Add", [y, g.weight(self.key + "_b", self.b)])

    def tl(self, g, xs, y, dxs):
        return g.op("MatMul", [dxs[0], g.weight(self.key + "_w", self.w)])

    def ad(self, g, xs, y, dy):
        return [g.op("MatMul", [dy, g.weight_t(self.key + "_w", self.w)])]


class AddConst:
    def __init__(self, key, c):
        self.key, self.c = key, c

    def fwd(self, g, xs):
        return g.op("Add", [xs[0], g.weight(self.key, self.c)])

    def tl(self, g, xs, y, dxs):
        return dxs[0]

    def ad(self, g, xs, y, dy):
        return [dy]


class Sum:
    def fwd(self, g, xs):
        return g.op("Add", xs)

    def tl(self, g, xs, y, dxs):
        return add(g, dxs[0], dxs[1])

    def ad(self, g, xs, y, dy):
        return [dy, dy]


class LayerNorm:
    """y = gamma * (x - mean) / sqrt(var + eps) + beta over the last axis. Its Jacobian
    (1/s)(I - 11^T/D - xh xh^T/D) (times gamma) is symmetric, so TL and AD apply the same formula."""

    def __init__(self, key, gamma, beta, eps=1e-5):
        self.key, self.gamma, self.beta, self.eps = key, gamma, beta, eps
        self.cache = {}

    def _stats(self, g, x):
        if id(g) in self.cache and self.cache[id(g)][0] == x:
            return self.cache[id(g)][1:]
        mu = g.op("ReduceMean", [x], axes=[-1], keepdims=1)
        xc = g.op("Sub", [x, mu])
        var = g.op("ReduceMean", [g.op("Mul", [xc, xc])], axes=[-1], keepdims=1)
        s = g.op("Sqrt", [g.op("Add", [var, g.const(np.array(self.eps, np.float32))])])
        xh = g.op("Div", [xc, s])
        self.cache[id(g)] = (x, s, xh)
        return s, xh

    def fwd(self, g, xs):
        _, xh = self._stats(g, xs[0])
        return g.op("Add", [g.op("Mul", [xh, g.weight(self.key + "_g", self.gamma)]), g.weight(self.key + "_b", self.beta)])

    def _jac(self, g, xs, v):
        s, xh = self._stats(g, xs[0])
        m1 = g.op("ReduceMean", [v], axes=[-1], keepdims=1)
        m2 = g.op("ReduceMean", [g.op("Mul", [xh, v])], axes=[-1], keepdims=1)
        return g.op("Div", [g.op("Sub", [g.op("Sub", [v, m1]), g.op("Mul", [xh, m2])]), s])

    def tl(self, g, xs, y, dxs):
        return g.op("Mul", [self._jac(g, xs, dxs[0]), g.weight(self.key + "_g", self.gamma)])

    def ad(self, g, xs, y, dy):
        return [self._jac(g, xs, g.op("Mul", [dy, g.weight(self.key + "_g", self.gamma)]))]


class Gelu:
    """gelu(x) = x Phi(x); gelu'(x) = Phi(x) + x phi(x)."""

    def fwd(self, g, xs):
        cdf = self._cdf(g, xs[0])
        return g.op("Mul", [xs[0], cdf])

    def _cdf(self, g, x):
        e = g.op("Erf", [g.op("Mul", [x, g.const(np.array(1 / math.sqrt(2), np.float32))])])
        return g.op("Mul", [g.op("Add", [e, g.const(np.array(1.0, np.float32))]), g.const(np.array(0.5, np.float32))])

    def _deriv(self, g, x):
        pdf = g.op("Mul", [g.op("Exp", [g.op("Mul", [g.op("Mul", [x, x]), g.const(np.array(-0.5, np.float32))])]),
                           g.const(np.array(1 / math.sqrt(2 * math.pi), np.float32))])
        return g.op("Add", [self._cdf(g, x), g.op("Mul", [x, pdf])])

    def tl(self, g, xs, y, dxs):
        return g.op("Mul", [dxs[0], self._deriv(g, xs[0])])

    def ad(self, g, xs, y, dy):
        return [g.op("Mul", [dy, self._deriv(g, xs[0])])]


class Reshape:
    """Reshape + Transpose (a permutation of the values: TL is itself, AD its inverse)."""

    def __init__(self, shape_in, shape_mid, perm, shape_out):
        self.shape_in, self.shape_mid, self.perm, self.shape_out = shape_in, shape_mid, perm, shape_out

    def fwd(self, g, xs):
        t = g.op("Transpose", [g.op("Reshape", [xs[0], g.shape(self.shape_mid)])], perm=self.perm)
        return g.op("Reshape", [t, g.shape(self.shape_out)])

    def tl(self, g, xs, y, dxs):
        return self.fwd(g, dxs)

    def ad(self, g, xs, y, dy):
        inv = list(np.argsort(self.perm))
        mid_t = [self.shape_mid[p] for p in self.perm]
        t = g.op("Transpose", [g.op("Reshape", [dy, g.shape(mid_t)])], perm=inv)
        return [g.op("Reshape", [t, g.shape(self.shape_in)])]


class Scores:
    """s = scale q k^T over the last two axes."""

    def __init__(self, scale):
        self.scale = scale

    def _mm(self, g, a, b_t):
        return g.op("Mul", [g.op("MatMul", [a, b_t]), g.const(np.array(self.scale, np.float32))])

    def fwd(self, g, xs):
        return self._mm(g, xs[0], g.op("Transpose", [xs[1]], perm=[0, 1, 3, 2]))

    def tl(self, g, xs, y, dxs):
        a = self._mm(g, dxs[0], g.op("Transpose", [xs[1]], perm=[0, 1, 3, 2]))
        b = self._mm(g, xs[0], g.op("Transpose", [dxs[1]], perm=[0, 1, 3, 2]))
        return g.op("Add", [a, b])

    def ad(self, g, xs, y, dy):
        dq = self._mm(g, dy, xs[1])
        dk = self._mm(g, g.op("Transpose", [dy], perm=[0, 1, 3, 2]), xs[0])
        return [dq, dk]


class Softmax:
    def fwd(self, g, xs):
        return g.op("Softmax", xs, axis=-1)

    def _jac(self, g, p, v):
        sm = g.op("ReduceSum", [g.op("Mul", [p, v]), g.axes([-1])], keepdims=1)
        return g.op("Mul", [p, g.op("Sub", [v, sm])])

    def tl(self, g, xs, y, dxs):
        return self._jac(g, y, dxs[0])

    def ad(self, g, xs, y, dy):
        return [self._jac(g, y, dy)]


class Mix:
    """o = p v (attention-weighted values)."""

    def fwd(self, g, xs):
        return g.op("MatMul", xs)

    def tl(self, g, xs, y, dxs):
        return g.op("Add", [g.op("MatMul", [dxs[0], xs[1]]), g.op("MatMul", [xs[0], dxs[1]])])

    def ad(self, g, xs, y, dy):
        dp = g.op("MatMul", [dy, g.op("Transpose", [xs[1]], perm=[0, 1, 3, 2])])
        dv = g.op("MatMul", [g.op("Transpose", [xs[0]], perm=[0, 1, 3, 2]), dy])
        return [dp, dv]


class Program:
    """A straight-line program over value ids; input id 0."""

    def __init__(self):
        self.steps = []  # (op, input ids, output id)
        self.n = 1

    def __call__(self, op, *ins):
        out = self.n
        self.n += 1
        self.steps.append((op, list(ins), out))
        return out

    def forward(self, g, x):
        vals = {0: x}
        for op, ins, out in self.steps:
            vals[out] = op.fwd(g, [vals[i] for i in ins])
        return vals

    def emit_decoder(self, g, z):
        vals = self.forward(g, z)
        return vals[self.n - 1]

    def emit_tl(self, g, z, dz):
        vals = self.forward(g, z)
        tan = {0: dz}
        for op, ins, out in self.steps:
            tan[out] = op.tl(g, [vals[i] for i in ins], vals[out], [tan.get(i) for i in ins])
        return tan[self.n - 1]

    def emit_ad(self, g, z, dx):
        vals = self.forward(g, z)
        adj = {self.n - 1: dx}
        for op, ins, out in reversed(self.steps):
            if out not in adj:
                continue
            grads = op.ad(g, [vals[i] for i in ins], vals[out], adj.pop(out))
            for i, gi in zip(ins, grads):
                adj[i] = add(g, adj.get(i), gi)
        return adj[0]


# ------------------------------------------------------------------------------------------------------------------
# the ViT decoder
# ------------------------------------------------------------------------------------------------------------------
def f16(a):
    """Random weights rounded to float16-representable float32 values (stored as float16 + Cast when large)."""
    return a.astype(np.float16).astype(np.float32)


def build_program(cfg, rng):
    T, D, H, C, P, cl = cfg["tokens"], cfg["dim"], cfg["heads"], cfg["channels"], cfg["patch"], cfg["latent_channels"]
    th, tw = cfg["nlat"] // P, cfg["nlon"] // P
    dh = D // H
    prog = Program()
    nparams = 0

    def lin(key, din, dout, gain=1.0):
        nonlocal nparams
        nparams += din * dout + dout
        return Linear(key, f16(rng.standard_normal((din, dout)) * gain / math.sqrt(din)), f16(0.02 * rng.standard_normal(dout)))

    def ln(key):
        nonlocal nparams
        nparams += 2 * D
        return LayerNorm(key, f16(1 + 0.1 * rng.standard_normal(D)), f16(0.02 * rng.standard_normal(D)))

    # token positions: fixed sin/cos of the patch's latitude and longitude (a ViT's position embedding)
    ii, jj = np.meshgrid(np.arange(th), np.arange(tw), indexing="ij")
    freq = np.arange(1, D // 4 + 1)
    pos = np.concatenate([np.sin(np.pi * (ii.reshape(-1, 1) + 0.5) / th * freq), np.cos(np.pi * (ii.reshape(-1, 1) + 0.5) / th * freq),
                          np.sin(2 * np.pi * jj.reshape(-1, 1) / tw * freq), np.cos(2 * np.pi * jj.reshape(-1, 1) / tw * freq)], axis=1)
    pos = np.pad(pos, ((0, 0), (0, D - pos.shape[1])))[None].astype(np.float32) * 0.5

    h = prog(lin("in", cl, D), 0)
    h = prog(AddConst("pos", f16(pos)), h)
    split = Reshape([1, T, D], [1, T, H, dh], [0, 2, 1, 3], [1, H, T, dh])
    merge = Reshape([1, H, T, dh], [1, H, T, dh], [0, 2, 1, 3], [1, T, D])
    for b in range(cfg["depth"]):
        a = prog(ln(f"b{b}_ln1"), h)
        q = prog(split, prog(lin(f"b{b}_q", D, D), a))
        k = prog(split, prog(lin(f"b{b}_k", D, D), a))
        v = prog(split, prog(lin(f"b{b}_v", D, D), a))
        p = prog(Softmax(), prog(Scores(1 / math.sqrt(dh)), q, k))
        o = prog(merge, prog(Mix(), p, v))
        h = prog(Sum(), h, prog(lin(f"b{b}_o", D, D, 0.5), o))
        a2 = prog(ln(f"b{b}_ln2"), h)
        m = prog(lin(f"b{b}_fc2", 4 * D, D, 0.5), prog(Gelu(), prog(lin(f"b{b}_fc1", D, 4 * D), a2)))
        h = prog(Sum(), h, m)
    out = prog(lin("out", D, P * P * C), prog(ln("ln_f"), h))
    # [1, T, P*P*C] -> [1, th, tw, P, P, C] -> [1, C, th, P, tw, P] -> [1, C, nlat, nlon]
    prog(Reshape([1, T, P * P * C], [1, th, tw, P, P, C], [0, 5, 1, 3, 2, 4], [1, C, cfg["nlat"], cfg["nlon"]]), out)
    return prog, nparams


def build_encoder(cfg, rng, f16_weights):
    T, C, P, cl = cfg["tokens"], cfg["channels"], cfg["patch"], cfg["latent_channels"]
    th, tw = cfg["nlat"] // P, cfg["nlon"] // P
    g = Graph(f16_weights)
    # the inverse permutation of the decoder's unpatchify
    patch = Reshape([1, C, cfg["nlat"], cfg["nlon"]], [1, C, th, P, tw, P], [0, 2, 4, 3, 5, 1], [1, T, P * P * C])
    w = f16(rng.standard_normal((P * P * C, cl)) / math.sqrt(P * P * C))
    z = Linear("enc", w, np.zeros(cl, np.float32)).fwd(g, [patch.fwd(g, ["x"])])
    g.nodes.append(helper.make_node("Identity", [z], ["z"]))
    return g.model([tensor("x", [1, C, cfg["nlat"], cfg["nlon"]])], tensor("z", [1, T, cl]), "encoder")


def build_graphs(prog, cfg, f16_weights):
    T, cl, C = cfg["tokens"], cfg["latent_channels"], cfg["channels"]
    xs, zs = [1, C, cfg["nlat"], cfg["nlon"]], [1, T, cl]
    out = {}
    g = Graph(f16_weights)
    g.nodes.append(helper.make_node("Identity", [prog.emit_decoder(g, "z")], ["x"]))
    out["decoder"] = g.model([tensor("z", zs)], tensor("x", xs), "decoder")
    g = Graph(f16_weights)
    g.nodes.append(helper.make_node("Identity", [prog.emit_tl(g, "z", "dz")], ["dx"]))
    out["decoder_tl"] = g.model([tensor("z", zs), tensor("dz", zs)], tensor("dx", xs), "decoder_tl")
    g = Graph(f16_weights)
    g.nodes.append(helper.make_node("Identity", [prog.emit_ad(g, "z", "dx")], ["dz"]))
    out["decoder_ad"] = g.model([tensor("z", zs), tensor("dx", xs)], tensor("dz", zs), "decoder_ad")
    return out


# ------------------------------------------------------------------------------------------------------------------
# bundle files
# ------------------------------------------------------------------------------------------------------------------
def layout(cfg):
    levels = cfg["levels"]
    chans, means, stds = [], [], []
    p = np.array(levels, dtype=float) / 100.0  # hPa
    for name, units, long_name, mean, std in UPPER:
        chans.append((name, units, len(levels), long_name))
        means.extend(np.broadcast_to(mean(p), p.shape))
        stds.extend(np.broadcast_to(std(p), p.shape))
    for name, units, long_name, mean, std in SURFACE:
        chans.append((name, units, 0, long_name))
        means.append(mean)
        stds.append(std)
    return chans, np.array(means), np.array(stds)


def nc_coords(d, cfg, with_lev):
    if with_lev:
        d.createDimension("lev", len(cfg["levels"]))
        v = d.createVariable("lev", "f8", ("lev",))
        v.units = "Pa"
        v[:] = cfg["levels"]
    d.createDimension("lat", cfg["nlat"])
    d.createDimension("lon", cfg["nlon"])
    v = d.createVariable("lat", "f8", ("lat",))
    v.units = "degrees_north"
    v[:] = cfg["lat"]
    v = d.createVariable("lon", "f8", ("lon",))
    v.units = "degrees_east"
    v[:] = cfg["lon"]


def write_state(path, cfg, chans, x):
    d = nc_create(path)
    nc_coords(d, cfg, True)
    c = 0
    for name, units, nlev, long_name in chans:
        dims = ("lev", "lat", "lon") if nlev else ("lat", "lon")
        v = d.createVariable(name, "f4", dims)
        v.units = units
        v.long_name = long_name
        v[:] = x[c:c + nlev] if nlev else x[c]
        c += max(nlev, 1)
    d.close()


def sha256(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def fl(a):
    return "[" + ", ".join(repr(float(v)) for v in a) + "]"


def write_manifest(out, cfg, chans, description, training, checks):
    s = ['format = "latentda-bundle"', "format_version = 1", f'name = "{cfg["name"]}"', f'description = "{description}"', "",
         "[grid]", 'kind = "regular"', f"lat = {fl(cfg['lat'])}", f"lon = {fl(cfg['lon'])}", "",
         "[vertical]", 'coordinate = "pressure"', f"levels = {fl(cfg['levels'])}", ""]
    for name, units, nlev, long_name in chans:
        s += ["[[variables]]", f'name = "{name}"', f'units = "{units}"', f"levels = {nlev}", f'long_name = "{long_name}"', ""]
    s += ["[latent]", f"shape = [{cfg['tokens']}, {cfg['latent_channels']}]", "", "[models]", 'encoder = "encoder.onnx"',
          'decoder = "decoder.onnx"', 'decoder_tl = "decoder_tl.onnx"', 'decoder_ad = "decoder_ad.onnx"', "",
          "[statistics]", 'normalisation = "normalisation.nc"', 'latent_variance = "latent_variance.nc"', "", "[checksums]"]
    for f in ["encoder.onnx", "decoder.onnx", "decoder_tl.onnx", "decoder_ad.onnx", "normalisation.nc", "latent_variance.nc"]:
        s.append(f'"{f}" = "{sha256(out / f)}"')
    s += ["", "[provenance]", 'created = "synthetic"', 'creator = "scripts/synthetic_bundle.py"',
          'data = "none: random weights, a performance fixture"', f'training = "{training}"', f'checks = "{checks}"', 'license = "Apache-2.0"']
    (out / "bundle.toml").write_text("\n".join(s) + "\n")


# ------------------------------------------------------------------------------------------------------------------
# checks with ONNX Runtime
# ------------------------------------------------------------------------------------------------------------------
def sessions(out):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return {k: ort.InferenceSession(str(out / f"{k}.onnx"), so, providers=["CPUExecutionProvider"])
            for k in ["encoder", "decoder", "decoder_tl", "decoder_ad"]}


def check(s, rng, zshape, xshape, s_lat):
    z = (0.3 * rng.standard_normal(zshape)).astype(np.float32)
    worst = 0.0
    for _ in range(3):
        dz = rng.standard_normal(zshape).astype(np.float32)
        u = rng.standard_normal(xshape).astype(np.float32)
        tl = s["decoder_tl"].run(None, {"z": z, "dz": dz})[0]
        ad = s["decoder_ad"].run(None, {"z": z, "dx": u})[0]
        a, b = float(np.vdot(tl.astype(np.float64), u)), float(np.vdot(dz.astype(np.float64), ad))
        worst = max(worst, abs(a - b) / max(abs(a), abs(b)))
    # Taylor test along a latent background-error-sized direction
    v = (s_lat * rng.standard_normal(zshape)).astype(np.float32)
    d0 = s["decoder"].run(None, {"z": z})[0].astype(np.float64)
    tlv = s["decoder_tl"].run(None, {"z": z, "dz": v})[0].astype(np.float64)
    rows = []
    for e in [1.0, 1e-1, 1e-2, 1e-3, 1e-4]:
        ze = (z.astype(np.float64) + e * v).astype(np.float32)
        de = s["decoder"].run(None, {"z": ze})[0].astype(np.float64) - d0
        rows.append((e, np.linalg.norm(de) / np.linalg.norm(e * tlv), np.linalg.norm(de - e * tlv) / np.linalg.norm(d0)))
    return worst, rows


# ------------------------------------------------------------------------------------------------------------------
def config(a):
    s = a.scale
    if a.preset == "paper":
        nlat, nlon, dim, heads, depth = 128, 256, 1024, 16, 12
        patch, cl, nlev = 8, 64, 13
        nlat = max(patch * 2, int(round(nlat * s / patch)) * patch)
        nlon = max(patch * 2, int(round(nlon * s / patch)) * patch)
        heads = max(2, int(round(heads * s)))
        dim = max(heads * 8, int(round(dim * s / (heads * 8))) * heads * 8)
    else:
        nlat, nlon, dim, heads, depth, patch, cl, nlev = a.nlat, a.nlon, a.dim, a.heads, a.depth, a.patch, a.latent_channels, a.levels
    if nlat % patch or nlon % patch or dim % heads:
        sys.exit(f"grid {nlat} x {nlon} must be a multiple of the patch {patch}, and dim {dim} of heads {heads}")
    levels = [100.0 * p for p in (PRESSURE_HPA if nlev == 13 else np.linspace(50, 1000, nlev).round())]
    dlat = 180.0 / nlat
    return {
        "name": a.name or f"synthetic-vit-{nlat}x{nlon}",
        "nlat": nlat, "nlon": nlon, "dim": dim, "heads": heads, "depth": depth, "patch": patch,
        "latent_channels": cl, "tokens": (nlat // patch) * (nlon // patch), "levels": levels,
        "channels": 5 * nlev + 4,
        "lat": 90.0 - dlat / 2 - dlat * np.arange(nlat), "lon": 360.0 / nlon * np.arange(nlon),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="bundle directory to write (created)")
    ap.add_argument("--preset", choices=["paper", "custom"], default="custom")
    ap.add_argument("--scale", type=float, default=1.0, help="paper preset: shrink grid and width by this factor")
    ap.add_argument("--nlat", type=int, default=32)
    ap.add_argument("--nlon", type=int, default=64)
    ap.add_argument("--levels", type=int, default=13, help="pressure levels (13: the paper's)")
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--latent-channels", type=int, default=16)
    ap.add_argument("--obs", type=int, default=5000, help="observations in sample/obs.csv")
    ap.add_argument("--name", default=None)
    ap.add_argument("--seed", type=int, default=20261127)
    ap.add_argument("--no-float16", action="store_true", help="store weights as float32 (default: float16 + Cast)")
    ap.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime dot and Taylor tests")
    a = ap.parse_args()
    cfg = config(a)
    rng = np.random.default_rng(a.seed)
    out = a.out
    (out / "sample").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    prog, nparams = build_program(cfg, rng)
    graphs = build_graphs(prog, cfg, not a.no_float16)
    graphs["encoder"] = build_encoder(cfg, rng, not a.no_float16)
    for k, m in graphs.items():
        onnx.save(m, str(out / f"{k}.onnx"))
    print(f"{cfg['name']}: state {cfg['channels']} x {cfg['nlat']} x {cfg['nlon']}, latent [{cfg['tokens']}, {cfg['latent_channels']}], "
          f"ViT width {cfg['dim']} depth {cfg['depth']} heads {cfg['heads']}: {nparams / 1e6:.1f} M decoder parameters "
          f"({time.time() - t0:.1f} s)")
    chans, mean, std = layout(cfg)
    C = cfg["channels"]
    d = nc_create(out / "normalisation.nc")
    d.createDimension("channel", C)
    for name, val in [("mean", mean), ("std", std)]:
        d.createVariable(name, "f8", ("channel",))[:] = val
    d.close()
    s_lat = 0.3  # latent background-error sd (the encoder is not calibrated; any positive value works)
    d = nc_create(out / "latent_variance.nc")
    d.createDimension("token", cfg["tokens"])
    d.createDimension("latent_channel", cfg["latent_channels"])
    d.createVariable("variance", "f8", ("token", "latent_channel"))[:] = s_lat ** 2
    d.close()
    zshape, xshape = [1, cfg["tokens"], cfg["latent_channels"]], [1, C, cfg["nlat"], cfg["nlon"]]
    checks = "not run (--no-check)"
    if not a.no_check:
        s = sessions(out)
        worst, rows = check(s, rng, zshape, xshape, s_lat)
        print(f"ONNX Runtime dot test: max rel. error {worst:.2e} (gate 1e-5)")
        print("Taylor test: eps, |D(z+e v)-D(z)| / |e TL v|, remainder / |D(z)|")
        for e, r, rem in rows:
            print(f"  {e:8.0e} {r:12.8f} {rem:12.4e}")
        ok = worst < 1e-5 and any(abs(r - 1) < 1e-3 for _, r, _ in rows)
        checks = f"ONNX Runtime: dot test max rel. error {worst:.2e}"
        if not ok:
            sys.exit("synthetic_bundle.py: TL/AD checks failed")
        dec = lambda z: s["decoder"].run(None, {"z": z})[0][0].astype(np.float64)
    else:
        import onnxruntime as ort
        sd = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
        dec = lambda z: sd.run(None, {"z": z})[0][0].astype(np.float64)
    # sample case: truth = N^-1(D(z_t)), background = N^-1(D(z_t + dz)), observations from the truth
    z_t = (0.3 * rng.standard_normal(zshape)).astype(np.float32)
    dz = (s_lat * rng.standard_normal(zshape)).astype(np.float32)
    scale = (mean[:, None, None], std[:, None, None])
    truth = scale[0] + scale[1] * dec(z_t)
    background = scale[0] + scale[1] * dec(z_t + dz)
    write_state(out / "sample/truth.nc", cfg, chans, truth)
    write_state(out / "sample/background.nc", cfg, chans, background)
    write_obs(out / "sample/obs.csv", cfg, chans, truth, std, rng, a.obs)
    write_manifest(out, cfg, chans, f"synthetic ViT-style decoder, {nparams / 1e6:.1f} M parameters, random weights (performance fixture)",
                   f"none; ViT width {cfg['dim']}, depth {cfg['depth']}, heads {cfg['heads']}, patch {cfg['patch']}, {nparams} decoder parameters",
                   checks)
    print(f"wrote {out} ({time.time() - t0:.1f} s)")


def write_obs(path, cfg, chans, truth, std, rng, n):
    """Point observations of the truth (nearest grid point, exact levels) with noise of 0.3 channel sd."""
    lines = ["var,lat,lon,level,value,sigma"]
    upper = [c for c in chans if c[2]]
    nlev = len(cfg["levels"])
    for k in range(n):
        j, i = rng.integers(cfg["nlat"]), rng.integers(cfg["nlon"])
        if k % 10 == 9:
            vi = len(upper) + int(rng.integers(len(chans) - len(upper)))
            c, level = len(upper) * nlev + (vi - len(upper)), ""
        else:
            vi, lev = int(rng.integers(len(upper))), int(rng.integers(nlev))
            c, level = vi * nlev + lev, repr(float(cfg["levels"][lev]))
        sig = float(0.3 * std[c])
        val = float(truth[c, j, i] + sig * rng.standard_normal())
        lines.append(f"{chans[vi][0]},{float(cfg['lat'][j])!r},{float(cfg['lon'][i])!r},{level},{val!r},{sig!r}")
    Path(path).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
