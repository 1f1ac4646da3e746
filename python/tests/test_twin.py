"""The perfect-B twin (`latentda-twin`, twin.py) through the real C ABI (liblatentda.so of `cargo build --release`,
the reference bundle and its sample case): the B in force read back from a run folder, and a twin cycle whose
background error is a draw of the analysis' own B. No jcm or nature run needed."""
import argparse
import json
import os

import numpy as np
import pytest

from latentda_train import cases as CS
from latentda_train import cycling as C
from latentda_train import twin as T
from test_cycling_ensemble import FAST, SAMPLE, lib, sample_obs  # noqa: F401 (lib is a fixture)


def write_run(folder, method, options, adaptive=None, state=None, metrics=()):
    os.makedirs(folder, exist_ok=True)
    json.dump({"method": method, "network": "uniform", "start_day": 610, "spinup_days": 3, "options": options,
               "adaptive": adaptive}, open(os.path.join(folder, "settings.json"), "w"))
    if state is not None:
        json.dump(state, open(os.path.join(folder, C.LIB_STATE), "w"))
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in metrics)


def test_options_in_force_come_from_the_last_b_in_force(tmp_path):
    base = "latent_variance_factor = 0.35\nbaseline_variance_factor = 0.35\nhybrid_alpha = 0.7\nhybrid_beta = 0.3"
    old = {"latent_variance_factor": 0.35, "baseline_variance_factor": 0.35, "hybrid_alpha": 0.5, "hybrid_beta": 0.2}
    last = dict(old, hybrid_alpha=0.035, hybrid_beta=0.015,
                hybrid_weights={"u": [0.035, 0.015, 0.07, 0.03], "q": [0.0, 0.05, 0.0, 0.5]})
    write_run(tmp_path / "lib", "hybrid", base, {"in_library": True},
              {"window": [{"b_in_force": old}, {"b_in_force": last}]})
    o = C.parse_options(T.options_in_force(str(tmp_path / "lib")))
    assert (o["hybrid_alpha"], o["hybrid_beta"], o["latent_variance_factor"]) == (0.035, 0.015, 0.35)
    assert o["hybrid_variable_weights"]["u"] == {"alpha": 0.035, "beta": 0.015, "alpha_tropics": 0.07,
                                                 "beta_tropics": 0.03}
    assert o["hybrid_variable_weights"]["q"]["alpha"] == 0.0
    # sized by the driver (scalar): the last metrics entry's options; a fixed B: the run's own options
    rows = [{"cycle": c, "adaptive": {"options": {"baseline_variance_factor": f}, "var_scales": {}}}
            for c, f in ((1, 0.2), (2, 0.05))]
    write_run(tmp_path / "drv", "3dvar", "baseline_variance_factor = 0.35", {"split": False}, metrics=rows)
    assert C.parse_options(T.options_in_force(str(tmp_path / "drv")))["baseline_variance_factor"] == 0.05
    write_run(tmp_path / "fixed", "3dvar", "baseline_variance_factor = 0.35")
    assert C.parse_options(T.options_in_force(str(tmp_path / "fixed")))["baseline_variance_factor"] == 0.35
    # runs the twin cannot replay are refused before anything opens
    ens = json.load(open(tmp_path / "fixed" / "settings.json"))
    ens["ensemble"] = {"kind": "lagged", "members": 8}
    json.dump(ens, open(tmp_path / "fixed" / "settings.json", "w"))
    with pytest.raises(SystemExit, match="ensemble"):
        T.twin(argparse.Namespace(run=str(tmp_path / "fixed"), from_day=10.0, samples=4))
    write_run(tmp_path / "none", "none", "")
    with pytest.raises(SystemExit, match="no B"):
        T.twin(argparse.Namespace(run=str(tmp_path / "none"), from_day=10.0, samples=4))


def test_a_twin_cycle_draws_its_error_from_the_b_and_the_analysis_beats_the_background(lib):
    xb = CS.read_state(os.path.join(SAMPLE, "background.nc"))
    lat = np.linspace(87.0, -87.0, xb.shape[1])   # only the cos(latitude) weights of the RMSE use it
    opts = f'{FAST}\nbaseline_variance_factor = 0.2\nb_operator = "static"\nbg_check = 0.0'
    lda, host = C.context(argparse.Namespace(lib=lib, bundle=C.DEFAULT_BUNDLE), opts, *xb.shape[1:])
    try:
        var, la, lo, lev, _, sd = sample_obs(lda)

        def obs_of(x_t, seed):   # the sample's positions, values H x_t + N(0, R)
            lda.set_obs(var, la, lo, lev, np.zeros(len(var)), sd)
            hx = lda.obs_h(len(var), x_t)
            return var, la, lo, lev, hx + sd * np.random.default_rng(seed).standard_normal(len(var)), sd

        host.load(xb)
        lda.b_linearise()
        d1, d1b, d2 = lda.brandomize(1), lda.brandomize(1), lda.brandomize(2)
        assert np.array_equal(d1, d1b) and not np.array_equal(d1, d2)   # the seed decides the draw
        for seed, draw in ((1, d1), (2, d2)):
            x_t, x_a = T.twin_cycle(lda, host, xb, seed, lambda x: obs_of(x, seed), "3dvar")
            # the background error is the draw (up to the rounding of x_b - draw)
            assert np.allclose(xb - x_t, draw.reshape(xb.shape), rtol=0, atol=1e-12 * np.abs(xb).max())
            eb, ea = C.area_rmse(xb - x_t, lat), C.area_rmse(x_a - x_t, lat)
            for v in ("u", "v", "t", "ps"):
                assert eb[v] > 0 and ea[v] < eb[v], (seed, v, ea[v], eb[v])
    finally:
        lda.close()


def test_six_hour_growth_pairs_consecutive_cycles_only():
    rows = [{"cycle": 1, "bg": {"u": 1.0}, "an": {"u": 0.9}},
            {"cycle": 2, "bg": {"u": 0.99}, "an": {"u": 0.95}},     # 0.99 / 0.9 = 1.1
            {"cycle": 4, "bg": {"u": 5.0}, "an": {"u": 0.5}},       # no cycle 3: no pair
            {"cycle": 5, "bg": {"u": 0.45}, "an": {"u": 0.4}}]      # 0.45 / 0.5 = 0.9
    assert C.six_hour_growth(rows, "u") == pytest.approx(0.0)
    assert C.six_hour_growth(rows[:2], "u") == pytest.approx(10.0)
    assert np.isnan(C.six_hour_growth(rows[:1], "u"))


def test_small_scale_share_splits_the_variance_at_zonal_wavenumber_8():
    lat, lon = np.linspace(60, -60, 7), np.arange(64) * 360 / 64
    wave = lambda m: np.cos(np.radians(m * lon))[None, None, :] * np.ones((2, 7, 1))
    assert T.zonal_small_scale_share(wave(2), lat, slice(0, 2)) == pytest.approx(0.0, abs=1e-12)
    assert T.zonal_small_scale_share(wave(10), lat, slice(0, 2)) == pytest.approx(1.0)
    assert T.zonal_small_scale_share(wave(3) + wave(8), lat, slice(0, 2)) == pytest.approx(0.5)
