"""Export round trip on a tiny model: ONNX Runtime vs PyTorch, dot-product test in float32."""
import numpy as np
import onnx
import torch

from latentda_train import onnxio
from latentda_train.model import AutoEncoder


def test_export_roundtrip(tmp_path):
    torch.manual_seed(0)
    ae = AutoEncoder(nchan=7, nlat=16, nlon=32, c1=6, c2=8, c3=8, cl=4, res_full=False)
    with torch.no_grad():
        ae.clim_std.copy_(torch.rand_like(ae.clim_std) + 0.5)
    ck = tmp_path / "tiny.pt"
    torch.save({"cfg": ae.cfg, "state_dict": ae.state_dict()}, ck)
    onnxio.export_all(str(ck), str(tmp_path))
    for k, (ins, outs) in onnxio.GRAPHS.items():
        m = onnx.load(str(tmp_path / f"{k}.onnx"))
        assert [i.name for i in m.graph.input] == ins
        assert [o.name for o in m.graph.output] == outs
        assert m.opset_import[0].version == 18 or any(o.version == 18 for o in m.opset_import)
        assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in m.graph.output)
        assert not any(n.op_type == "Pad" and any(a.name == "mode" and a.s == b"wrap" for a in n.attribute)
                       for n in m.graph.node)
    S = onnxio.sessions(str(tmp_path))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 7, 16, 32)).astype(np.float32)
    z = S["encoder"].run(None, {"x": x})[0]
    dz = rng.standard_normal(z.shape).astype(np.float32)
    dx = rng.standard_normal(x.shape).astype(np.float32)
    with torch.no_grad():
        zt = ae.encode(torch.from_numpy(x)).numpy()
        xt = ae.decode(torch.from_numpy(z)).numpy()
        tlt = ae.decode_tl(torch.from_numpy(z), torch.from_numpy(dz)).numpy()
        adt = ae.decode_ad(torch.from_numpy(z), torch.from_numpy(dx)).numpy()
    rel = lambda a, b: np.abs(a - b).max() / np.abs(b).max()
    assert rel(z, zt) < 1e-5
    assert rel(S["decoder"].run(None, {"z": z})[0], xt) < 1e-5
    assert rel(S["decoder_tl"].run(None, {"z": z, "dz": dz})[0], tlt) < 1e-5
    assert rel(S["decoder_ad"].run(None, {"z": z, "dx": dx})[0], adt) < 1e-5
    # z genuinely used by the TL and AD graphs
    z2 = z + 1.0
    assert rel(S["decoder_tl"].run(None, {"z": z2, "dz": dz})[0], tlt) > 1e-4
    assert rel(S["decoder_ad"].run(None, {"z": z2, "dx": dx})[0], adt) > 1e-4
    res = onnxio.check_graphs(str(tmp_path), z0=z, verbose=False)
    assert res["dot_max"] < 1e-5


def test_export_patch_model_half_weights(tmp_path):
    """The local-EOF weights are stored as float16 + Cast; ONNX Runtime still matches PyTorch."""
    from latentda_train.model import PatchAutoEncoder
    torch.manual_seed(1)
    ae = PatchAutoEncoder(nchan=5, nlat=16, nlon=64, patch=8, K=256, cn=(4, 6, 6, 8), cd=(8, 6, 6, 4))
    with torch.no_grad():
        for p in ae.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
        ae.round_weights()
    ck = tmp_path / "tiny.pt"
    torch.save({"cfg": ae.cfg, "state_dict": ae.state_dict()}, ck)
    onnxio.export_all(str(ck), str(tmp_path))
    m = onnx.load(str(tmp_path / "decoder.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    S = onnxio.sessions(str(tmp_path))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 5, 16, 64)).astype(np.float32)
    z = S["encoder"].run(None, {"x": x})[0]
    ae.eval()
    with torch.no_grad():
        zt = ae.encode(torch.from_numpy(x)).numpy()
        xt = ae.decode(torch.from_numpy(z)).numpy()
    rel = lambda a, b: np.abs(a - b).max() / np.abs(b).max()
    assert rel(z, zt) < 1e-5
    assert rel(S["decoder"].run(None, {"z": z})[0], xt) < 1e-5
    res = onnxio.check_graphs(str(tmp_path), z0=z, verbose=False)
    assert res["dot_max"] < 1e-5


def test_write_probes_through_the_runtime(tmp_path):
    """bundle.write_probes on a copy of the tanh fixture without probes: probes.nc appears with its [probes] table
    and a checksum that matches, and the runtime's self-test passes on it (latentda probes reopens the bundle)."""
    import hashlib
    import os
    import shutil
    import tomllib

    import pytest

    from latentda_train import bundle as B
    try:
        B.latentda_binary()
    except SystemExit:
        pytest.skip("latentda binary not built")
    src = os.path.join(B.REPO, "tests", "fixtures", "tanh")
    d = tmp_path / "tanh"
    shutil.copytree(src, d)
    text = (d / "bundle.toml").read_text()
    lines, skip = [], False
    for ln in text.splitlines():
        if ln.startswith("["):
            skip = ln == "[probes]"
        if not skip and not ln.startswith('"probes.nc"'):
            lines.append(ln)
    (d / "bundle.toml").write_text("\n".join(lines) + "\n")
    (d / "probes.nc").unlink()
    out = B.write_probes(d)
    assert "self-test   passed: 7 graphs" in out, out
    m = tomllib.loads((d / "bundle.toml").read_text())
    assert m["probes"]["file"] == "probes.nc" and m["probes"]["tolerance"] == 1e-3
    assert m["checksums"]["probes.nc"] == hashlib.sha256((d / "probes.nc").read_bytes()).hexdigest()
