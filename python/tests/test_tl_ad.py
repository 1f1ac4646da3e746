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
