"""Latent step model: hand-written TL/AD against autograd (float64), ONNX export round trip with ONNX Runtime dot
and Taylor tests (float32), and the bundle's [forecast] table."""
import hashlib
import tomllib

import numpy as np
import pytest
import torch

from latentda_train import stepmodel as S


def small_model(seed=0, nonlinear=2.0):
    torch.manual_seed(seed)
    m = S.LatentStep(cl=4, nlat=6, nlon=12, c=8, nres=2).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3 * nonlinear)  # clearly nonlinear, incl. the zero-initialised parts
        m.pos.copy_(torch.randn_like(m.pos))
        m.zm.copy_(torch.randn_like(m.zm))
        m.zs.copy_(torch.rand_like(m.zs) + 0.5)
        m.ds.copy_(torch.rand_like(m.ds) + 0.5)
    return m


def test_tl_matches_jvp():
    m = small_model(0)
    z = torch.randn(2, 4, 6, 12, dtype=torch.float64)
    dz = torch.randn_like(z)
    _, ref = torch.func.jvp(m, (z,), (dz,))
    assert ((m.tl(z, dz) - ref).abs().max() / ref.abs().max()) < 1e-12


def test_ad_matches_vjp():
    m = small_model(1)
    z = torch.randn(2, 4, 6, 12, dtype=torch.float64)
    g = torch.randn_like(z)
    _, f = torch.func.vjp(m, z)
    ref = f(g)[0]
    assert ((m.ad(z, g) - ref).abs().max() / ref.abs().max()) < 1e-12


def test_dot_product_float64_and_residual_form():
    m = small_model(2)
    z = torch.randn(1, 4, 6, 12, dtype=torch.float64)
    v, u = torch.randn_like(z), torch.randn_like(z)
    a, b = (m.tl(z, v) * u).sum(), (v * m.ad(z, u)).sum()
    assert abs(a - b) / max(abs(a), abs(b)) < 1e-13
    # a fresh model starts near persistence: F(z) - z is small against z
    f = S.LatentStep(cl=4, nlat=6, nlon=12, c=8, nres=2).double()
    with torch.no_grad():
        assert float((f(z) - z).abs().max()) < 0.2 * float(z.abs().max())


def test_export_roundtrip_and_ort_checks(tmp_path):
    m = small_model(3).float()
    ck = tmp_path / "step.pt"
    torch.save({"cfg": m.cfg, "state_dict": m.state_dict()}, ck)
    S.export_all(str(ck), str(tmp_path))
    import onnx
    for k, (ins, outs) in S.GRAPHS.items():
        mo = onnx.load(str(tmp_path / f"{k}.onnx"))
        assert [i.name for i in mo.graph.input] == ins and [o.name for o in mo.graph.output] == outs
        assert [d.dim_value for d in mo.graph.input[0].type.tensor_type.shape.dim] == [1, 4, 6, 12]
        assert not any(n.op_type == "Pad" and any(a.name == "mode" and a.s == b"wrap" for a in n.attribute)
                       for n in mo.graph.node)
    z0 = np.random.default_rng(0).standard_normal((1, 4, 6, 12)).astype(np.float32)
    res = S.check_graphs(str(tmp_path), z0, ckpt=str(ck))
    assert res["dot_max"] < 1e-5, res["dot"]
    assert res["taylor_decades"] >= 3, res["taylor"]  # this small net is nonlinear enough for 3 one-sided decades
    # the gate the runtime applies: this small random net's own float32 floor is about 5e-4 (the V's minimum)
    assert res["taylor_pass"] and res["ok"] and res["taylor_central_best"] < 1e-3, res["taylor"]
    # central remainders are second order: about 100x per decade (two half-decade rows) somewhere above round-off
    cen = [t[3] for t in res["taylor"]]
    assert any(cen[i] / cen[i + 2] > 30 for i in range(len(cen) - 2)), cen
    assert res["torch_vs_ort_step"] < 1e-5 and res["torch_vs_ort_tl"] < 1e-5


def test_add_forecast_table(tmp_path):
    b = tmp_path / "bundle"
    g = tmp_path / "graphs"
    b.mkdir()
    g.mkdir()
    (b / "bundle.toml").write_text('format = "latentda-bundle"\n\n[checksums]\n"encoder.onnx" = "' + "0" * 64
                                   + '"\n\n[provenance]\ncreated = "x"\n')
    for k in S.GRAPHS:
        (g / f"{k}.onnx").write_bytes(k.encode() * 3)
    S.add_forecast(str(b), str(g), 6.0, "latent", 'trained "here"', 0.2)
    m = tomllib.loads((b / "bundle.toml").read_text())
    assert m["forecast"] == {"space": "latent", "time_step_hours": 6.0, "step": "step.onnx", "step_tl": "step_tl.onnx",
                             "step_ad": "step_ad.onnx", "description": 'trained "here"', "error_growth_per_hour": 0.2}
    for k in S.GRAPHS:
        assert m["checksums"][f"{k}.onnx"] == hashlib.sha256(k.encode() * 3).hexdigest()
    assert m["checksums"]["encoder.onnx"] == "0" * 64 and m["provenance"]["created"] == "x"
    with pytest.raises(SystemExit):
        S.add_forecast(str(b), str(g))


def test_taylor_verdict_passes_a_float32_v_and_fails_a_floor():
    # a eps^2 + b / eps (a correct TL in float32) against the same plus a floor 2e-3 (a TL wrong by 0.2 %)
    eps = [10.0 ** (1 - k / 2) for k in range(15)]
    v = [(e, 500.0 * e * e + 2e-7 / e) for e in eps]
    best, vmin, ok = S.taylor_verdict(v)
    assert ok and 1e-4 < best < 3 * vmin, (best, vmin)
    best, vmin, ok = S.taylor_verdict([(e, c + 2e-3) for e, c in v])
    assert not ok and best > 2e-3, (best, vmin)
