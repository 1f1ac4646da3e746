"""Hand-written TL/AD of the decoder against autograd (float64)."""
import pytest
import torch

from latentda_train.model import AutoEncoder, ppad, ppad_adjoint


def small_model(seed=0, res_full=True):
    torch.manual_seed(seed)
    ae = AutoEncoder(nchan=7, nlat=16, nlon=32, c1=6, c2=8, c3=8, cl=4, res_full=res_full).double()
    with torch.no_grad():
        for p in ae.parameters():
            p.mul_(2.0)  # make the decoder clearly nonlinear
        ae.clim_mean.copy_(torch.randn_like(ae.clim_mean))
        ae.clim_std.copy_(torch.rand_like(ae.clim_std) + 0.5)
    return ae


def test_periodic_pad_adjoint():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    g = torch.randn(2, 3, 5, 9, dtype=torch.float64)
    assert abs((ppad(x, 1) * g).sum() - (x * ppad_adjoint(g, 1)).sum()) < 1e-12
    g2 = torch.randn(2, 3, 5, 11, dtype=torch.float64)
    assert abs((ppad(x, 2) * g2).sum() - (x * ppad_adjoint(g2, 2)).sum()) < 1e-12


@pytest.mark.parametrize("res_full", [True, False])
def test_tl_matches_jvp(res_full):
    ae = small_model(0, res_full)
    z = torch.randn(2, *ae.latent_shape, dtype=torch.float64)
    dz = torch.randn_like(z)
    _, ref = torch.func.jvp(ae.decode, (z,), (dz,))
    tl = ae.decode_tl(z, dz)
    assert ((tl - ref).abs().max() / ref.abs().max()) < 1e-12


@pytest.mark.parametrize("res_full", [True, False])
def test_ad_matches_vjp(res_full):
    ae = small_model(1, res_full)
    z = torch.randn(2, *ae.latent_shape, dtype=torch.float64)
    dx = torch.randn(2, 7, 16, 32, dtype=torch.float64)
    _, f = torch.func.vjp(ae.decode, z)
    ref = f(dx)[0]
    ad = ae.decode_ad(z, dx)
    assert ((ad - ref).abs().max() / ref.abs().max()) < 1e-12


def test_dot_product_float64():
    ae = small_model(2)
    z = torch.randn(1, *ae.latent_shape, dtype=torch.float64)
    v = torch.randn_like(z)
    u = torch.randn(1, 7, 16, 32, dtype=torch.float64)
    a = (ae.decode_tl(z, v) * u).sum()
    b = (v * ae.decode_ad(z, u)).sum()
    assert abs(a - b) / max(abs(a), abs(b)) < 1e-13


def test_periodicity():
    """Rolling the latent by one column (4 grid columns) rolls the decoded field: longitude is periodic."""
    ae = small_model(3)
    with torch.no_grad():
        ae.clim_mean.zero_()
        ae.clim_std.fill_(1.0)
    z = torch.randn(1, *ae.latent_shape, dtype=torch.float64)
    x = ae.decode(z)
    xr = ae.decode(torch.roll(z, 1, dims=-1))
    assert torch.allclose(torch.roll(x, 4, dims=-1), xr, atol=1e-12)


def small_patch_model(seed=0):
    from latentda_train.model import PatchAutoEncoder
    torch.manual_seed(seed)
    ae = PatchAutoEncoder(nchan=5, nlat=16, nlon=32, patch=8, K=12, cn=(4, 6, 6, 8), cd=(8, 6, 6, 4)).double()
    with torch.no_grad():
        for p in ae.parameters():  # the nonlinear nets start at zero output: make them clearly nonlinear
            p.copy_(torch.randn_like(p) * 0.5)
        ae.clim_mean.copy_(torch.randn_like(ae.clim_mean))
        ae.clim_std.copy_(torch.rand_like(ae.clim_std) + 0.5)
        ae.escale.copy_(torch.rand_like(ae.escale) + 0.5)
        ae.zscale.copy_(torch.rand_like(ae.zscale) + 0.5)
    return ae.eval()


def test_patch_model_tl_ad_match_autograd():
    ae = small_patch_model(4)
    z = torch.randn(2, *ae.latent_shape, dtype=torch.float64)
    dz = torch.randn_like(z)
    _, ref = torch.func.jvp(ae.decode, (z,), (dz,))
    tl = ae.decode_tl(z, dz)
    assert ((tl - ref).abs().max() / ref.abs().max()) < 1e-12
    # the nonlinear correction matters: TL at another point differs
    assert ((ae.decode_tl(z + 1.0, dz) - tl).abs().max() / tl.abs().max()) > 1e-3
    dx = torch.randn(2, 5, 16, 32, dtype=torch.float64)
    _, f = torch.func.vjp(ae.decode, z)
    ref = f(dx)[0]
    ad = ae.decode_ad(z, dx)
    assert ((ad - ref).abs().max() / ref.abs().max()) < 1e-12
    a = (ae.decode_tl(z, dz) * dx).sum()
    b = (dz * ae.decode_ad(z, dx)).sum()
    assert abs(a - b) / max(abs(a), abs(b)) < 1e-13


def test_patch_model_local_eof_init_is_exact_projection():
    """With the nets at zero and K = all EOFs, encode/decode is the identity (orthonormal local EOFs)."""
    import numpy as np
    from latentda_train.model import PatchAutoEncoder
    from latentda_train.train import local_eof_init
    torch.manual_seed(5)
    ae = PatchAutoEncoder(nchan=2, nlat=8, nlon=16, patch=4, K=32, cn=(4, 4, 4), cd=(4, 4, 4))
    ae.round_half = False
    x = np.random.default_rng(0).standard_normal((6, 2, 8, 16)).astype(np.float32)
    cm = x.mean(axis=0, keepdims=True)
    local_eof_init(ae, x, cm, np.array([1.0, 0.5]))
    with torch.no_grad():
        ae.clim_mean.copy_(torch.from_numpy(cm))
        # float16-rounded EOFs: orthonormal to ~1e-3
        r = ae.eval()(torch.from_numpy(x)) - torch.from_numpy(x)
    assert float(r.abs().max()) < 1e-2 * float(np.abs(x - cm).max())


def small_pos_model(seed=0):
    """A small PosAutoEncoder with random weights everywhere (position gain, zonal mixing and the last conv
    start at zero or small values when trained: make every part active) and random position fields."""
    from latentda_train.model import PosAutoEncoder
    torch.manual_seed(seed)
    ae = PosAutoEncoder(nchan=5, nlat=16, nlon=32, cl=3, ce=(4, 6, 6), cd=(6, 5, 4), npos=4).double()
    with torch.no_grad():
        for p in ae.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
        ae.set_position(torch.randn(4, 16, 32).numpy())
        ae.clim_mean.copy_(torch.randn_like(ae.clim_mean))
        ae.clim_std.copy_(torch.rand_like(ae.clim_std) + 0.5)
    return ae


def test_pos_model_tl_ad_match_autograd():
    ae = small_pos_model(4)
    z = torch.randn(2, *ae.latent_shape, dtype=torch.float64)
    dz = torch.randn_like(z)
    _, ref = torch.func.jvp(ae.decode, (z,), (dz,))
    tl = ae.decode_tl(z, dz)
    assert ((tl - ref).abs().max() / ref.abs().max()) < 1e-12
    dx = torch.randn(2, 5, 16, 32, dtype=torch.float64)
    _, f = torch.func.vjp(ae.decode, z)
    ref = f(dx)[0]
    ad = ae.decode_ad(z, dx)
    assert ((ad - ref).abs().max() / ref.abs().max()) < 1e-12


def test_pos_model_uses_position():
    """The decoded field depends on the position fields (they are real inputs, not dead buffers), and the
    model stays periodic when the position fields are rolled with the latent."""
    ae = small_pos_model(5)
    with torch.no_grad():
        ae.clim_mean.zero_()
        ae.clim_std.fill_(1.0)
    z = torch.randn(1, *ae.latent_shape, dtype=torch.float64)
    x = ae.decode(z)
    p0 = ae.pos0[0].clone().numpy()
    ae.set_position(p0 * 0.5)
    assert (ae.decode(z) - x).abs().max() > 1e-3
    ae.set_position(torch.roll(torch.from_numpy(p0), 4, dims=-1).numpy())
    xr = ae.decode(torch.roll(z, 1, dims=-1))
    assert torch.allclose(torch.roll(x, 4, dims=-1), xr, atol=1e-12)
