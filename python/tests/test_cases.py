"""Observation generator of the sample and validation cases."""
import numpy as np

from latentda_train import cases as CS
from latentda_train import data as D


def _grid():
    lat = np.linspace(87.5, -87.5, 48)
    lon = np.arange(96) * 3.75
    sig = np.array([0.025, 0.095, 0.2, 0.34, 0.51, 0.685, 0.835, 0.95])
    return lat, lon, sig


def test_humidity_is_observed_only_where_meaningful_and_other_obs_keep_their_values():
    lat, lon, sig = _grid()
    rng = np.random.default_rng(3)
    moist = rng.uniform(1e-4, 1e-2, (41, 48, 96))
    moist[D.VAR_SLICES["q"]] = rng.uniform(2e-5, 1e-2, (8, 48, 96))
    moist[D.VAR_SLICES["t"]] = rng.uniform(220.0, 300.0, (8, 48, 96))
    moist[40] = rng.uniform(9e4, 1.03e5, (48, 96))
    dry = moist.copy()
    dry[D.VAR_SLICES["q"]][:, :24] = 0.0          # northern half: q = 0 (SPEEDY clips q at 0)
    st = np.array([[45.0, 10.0], [-45.0, 200.0], [30.0, 100.0]])
    rows_moist = CS.make_obs(moist, lat, lon, sig, st, seed=5)
    rows_dry = CS.make_obs(dry, lat, lon, sig, st, seed=5)
    q_moist = [r for r in rows_moist if r[0] == "q"]
    q_dry = [r for r in rows_dry if r[0] == "q"]
    # q only at sigma >= 0.34 (5 levels) in the moist case; none at the northern stations in the dry case
    assert len(q_moist) == 5 * len(st)
    assert all(float(r[3]) >= CS.Q_MIN_SIGMA for r in q_moist)
    assert len(q_dry) == 5 and all(r[1] < 0 for r in q_dry)
    # the error is a relative-humidity error: 10 % of the saturation humidity at the observation's T and p
    for r in q_moist:
        assert 0 < r[5] < 0.1 * 0.622 * 2e4 / (float(r[3]) * 9e4 - 0.378 * 2e4) + 1e-12
    assert len({round(r[5], 12) for r in q_moist}) > 1
    # dropping the dry q observations does not change the noise of any other observation
    others = lambda rows: [r for r in rows if r[0] != "q"]
    assert others(rows_moist) == others(rows_dry)
    assert q_dry == [r for r in q_moist if r[1] < 0]


def test_saturation_humidity_and_mass_network():
    # q_sat (over water) at 20 C and 1000 hPa is about 14.7 g/kg, at -40 C and 300 hPa about 0.39 g/kg
    assert abs(CS.q_sat(293.15, 1e5) - 0.0147) < 3e-4
    assert abs(CS.q_sat(233.15, 3e4) - 3.9e-4) < 2e-5
    lat, lon, sig = _grid()
    rng = np.random.default_rng(4)
    x = rng.uniform(1e-4, 1e-2, (41, 48, 96))
    x[40] = rng.uniform(9e4, 1.03e5, (48, 96))
    st = np.array([[45.0, 10.0], [-45.0, 200.0]])
    pts = CS.ps_points(50, seed=1)
    assert np.all(np.abs(pts[:, 0]) <= 85) and np.all((pts[:, 1] >= 0) & (pts[:, 1] < 360))
    rows = CS.make_obs(x, lat, lon, sig, st, seed=2, network="mass", ps_pts=pts)
    kinds = [r[0] for r in rows]
    assert kinds.count("t") == 8 * len(st) and kinds.count("ps") == len(pts) and set(kinds) == {"t", "ps"}
