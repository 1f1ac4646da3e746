"""The prior-draw balance term of the autoencoder training (latentda_train.draw_balance): the same balance as the
runtime's diagnostic (balance.sums), 1 for geostrophic draws, and a gradient that raises it."""
import os

import netCDF4
import numpy as np
import torch

from latentda_train import balance as BL
from latentda_train import cases as CS
from latentda_train.ceiling import smooth
from latentda_train.draw_balance import DrawBalance

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "models", "speedy-t31", "sample")


def _setup(seed=0):
    xt = CS.read_state(os.path.join(SAMPLE, "truth.nc"))
    with netCDF4.Dataset(os.path.join(SAMPLE, "truth.nc")) as ds:
        lat, lon = np.asarray(ds["lat"][:], np.float64), np.asarray(ds["lon"][:], np.float64)
    rng = np.random.default_rng(seed)
    term = DrawBalance(lat, lon, np.zeros(41), np.ones(41), None, None)
    return xt, lat, lon, rng, term


def _mass_increment(xt, rng):
    e = smooth(rng.standard_normal(xt.shape), 6)
    e /= e[:, 8:-8].std(axis=(1, 2), keepdims=True)
    d = np.zeros_like(xt)
    d[16:24] = 0.5 * e[16:24]
    d[32:40] = 100.0 * e[32:40]
    d[40] = 50.0 * e[40]
    return d


def _geostrophic_increment(term, xt, rng):
    """(background, increment) with a smooth mass increment and, as its wind, the mass increment's geostrophic wind."""
    xb = torch.from_numpy(xt[None])
    d = torch.from_numpy(_mass_increment(xt, rng)[None])
    ug, vg = term.geostrophic_increment(xb, d)
    d[:, 0:8, 1:-1] = ug
    d[:, 8:16, 1:-1] = vg
    return xb, d


def _correlations(s):
    return {h: float(v[2] / torch.sqrt(v[0] * v[1])) for h, v in s.items()}


def test_sums_agree_with_the_runtime_diagnostic_for_small_increments():
    xt, lat, lon, rng, term = _setup()
    d = _mass_increment(xt, rng)
    d[0:16] = 2.0 * smooth(rng.standard_normal((16, *xt.shape[1:])), 4)
    got = term.sums(torch.from_numpy(xt[None]), torch.from_numpy(d[None]))
    for h in ("N", "S"):
        want = BL.sums(xt, xt + d, lat, lon, h)
        np.testing.assert_allclose(got[h].numpy(), want, rtol=2e-3)
        # and the balance itself, to the same linearisation
        assert abs(float(got[h][2] / torch.sqrt(got[h][0] * got[h][1])) - BL.correlation(want)) < 2e-3


def test_a_geostrophic_increment_has_balance_one_and_a_wind_without_mass_none():
    xt, lat, lon, rng, term = _setup(1)
    xb, d = _geostrophic_increment(term, xt, rng)
    for h, c in _correlations(term.sums(xb, d)).items():
        assert c > 1 - 1e-9, (h, c)
    wind_only = torch.zeros_like(d)
    wind_only[:, 0:16] = d[:, 0:16]
    s = term.sums(xb, wind_only)
    assert all(float(v[1]) == 0.0 and float(v[0]) > 0 for v in s.values())


class _TwoModeDecoder(torch.nn.Module):
    """A latent B with two modes at one background: a geostrophic pattern and, scaled by a learnable weight, a
    wind pattern with no mass (unbalanced). encode ignores its input; decode_tl is linear in xi."""

    def __init__(self, balanced, unbalanced):
        super().__init__()
        self.balanced, self.unbalanced = balanced, unbalanced
        self.w = torch.nn.Parameter(torch.tensor(3.0))

    def encode(self, xn):
        return torch.zeros(len(xn), 2, 1, 1)

    def decode_tl(self, z, xi):
        return (xi[:, 0:1] * self.balanced + self.w * xi[:, 1:2] * self.unbalanced).float()


def test_the_hinge_pulls_the_balance_up_to_its_target_and_then_stops():
    xt, lat, lon, rng, term = _setup(2)
    _, bal = _geostrophic_increment(term, xt, rng)
    unb = torch.zeros_like(bal)
    unb[:, 0:16] = torch.from_numpy(10.0 * smooth(rng.standard_normal((16, *xt.shape[1:])), 4))
    ae = _TwoModeDecoder(bal, unb)
    term.s = torch.ones(2, 1, 1)
    gen = torch.Generator().manual_seed(0)
    xbn = torch.from_numpy(xt[None].astype(np.float32))
    before, b0 = term.loss(ae, xbn, 0.8, n_draws=64, generator=gen)
    assert min(b0.values()) < 0.6 and float(before.detach()) > 0
    opt = torch.optim.SGD(ae.parameters(), lr=0.5)
    for _ in range(40):
        loss, b = term.loss(ae, xbn, 0.8, n_draws=8, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, after = term.loss(ae, xbn, 0.8, n_draws=64, generator=gen)
    # the balance reaches the target without the unbalanced mode being removed altogether
    assert min(after.values()) > 0.75, after
    assert abs(float(ae.w.detach())) > 0.1, float(ae.w.detach())
