"""latentda-ceiling: the mass -> wind operator's fit and scores on errors whose answer is known."""
import os

import netCDF4
import numpy as np

from latentda_train import balance as BL
from latentda_train import cases as CS
from latentda_train.ceiling import fit, score_cases, smooth

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "models", "speedy-t31", "sample")


def _grid():
    with netCDF4.Dataset(os.path.join(SAMPLE, "truth.nc")) as ds:
        return np.asarray(ds["lat"][:], np.float64), np.asarray(ds["lon"][:], np.float64)


def _pairs(n, wind_of_mass, seed):
    """n (xb, xt) pairs around the sample truth: smooth random mass errors (t, z, ps) and the wind error
    wind_of_mass(ug, vg, rng) of their geostrophic wind (ug, vg)."""
    xt = CS.read_state(os.path.join(SAMPLE, "truth.nc"))
    lat, lon = _grid()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        xb = xt.copy()
        e = smooth(rng.standard_normal(xt.shape), 6)
        e /= e[:, 8:-8].std(axis=(1, 2), keepdims=True)  # unit size per channel (away from the pole rows)
        xb[16:24] += 0.8 * e[16:24]  # t, K
        xb[32:40] += 150.0 * e[32:40]  # z, m2 s-2
        xb[40] += 80.0 * e[40]  # ps, Pa
        uga, vga = BL.geostrophic(xb, lat, lon)
        ugt, vgt = BL.geostrophic(xt, lat, lon)
        du, dv = wind_of_mass(np.nan_to_num(uga - ugt), np.nan_to_num(vga - vgt), rng)
        xb[0:8] += du
        xb[8:16] += dv
        out.append((xb, xt))
    return out, lat, lon


def test_a_wind_error_that_is_a_scaled_geostrophic_wind_is_recovered():
    lat, lon = _grid()
    scaled = lambda ug, vg, rng: (0.7 * ug, 0.7 * vg)
    train, _, _ = _pairs(4, scaled, 1)
    valid, _, _ = _pairs(3, scaled, 2)
    # analyses that found the mass error exactly (mass of the truth, wind of the background) and ones that found none
    exact = [np.concatenate([xb[:16], xt[16:]]) for xb, xt in valid]
    s = score_cases(valid, fit(train, lat, lon), lat, lon, analyses=exact)
    assert max(s["fit on training"].values()) < 1e-3, s  # the operator is exactly in the family
    assert max(s["from the analysis"].values()) < 1e-3, s
    assert max(s["from the analysis, best scale"].values()) < 1e-3, s
    none = score_cases(valid, fit(train, lat, lon), lat, lon, with_in_sample=False, analyses=[xb for xb, _ in valid])
    # no increment, no wind: only the fitted constant (about 0 here) is left
    for k in ("from the analysis", "from the analysis, best scale"):
        assert all(abs(r - 1.0) < 1e-3 for r in none[k].values()), none
    assert max(s["fit in sample"].values()) < 1e-3, s
    # the plain geostrophic wind overshoots by 0.3 / 0.7 of the error, everywhere it is defined
    for v in ("u", "v"):
        assert abs(s["geostrophic"][v] - 0.3 / 0.7) < 1e-6, s


def test_a_wind_error_unrelated_to_the_mass_error_is_not_explained():
    lat, lon = _grid()
    noise = lambda ug, vg, rng: tuple(3.0 * smooth(rng.standard_normal(ug.shape), 4) for _ in range(2))
    train, _, _ = _pairs(4, noise, 3)
    valid, _, _ = _pairs(3, noise, 4)
    s = score_cases(valid, fit(train, lat, lon), lat, lon)
    # out of sample, an operator fitted to noise can only add error; in sample it cannot do worse than nothing
    assert min(s["fit on training"].values()) > 0.97, s
    assert 0.8 < min(s["fit in sample"].values()) and max(s["fit in sample"].values()) <= 1.0, s
    assert min(s["geostrophic"].values()) > 1.0, s  # a strictly balanced increment adds its own size
