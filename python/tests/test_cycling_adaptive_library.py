"""The library's online B sizing (option adaptive_state, src/var/adaptive.rs) against the cycling driver's own
AdaptiveB, through the real C ABI (liblatentda.so of `cargo build --release`, the reference bundle and its sample
case): fed the same reports, the two give the same multipliers, per variable and band with q left to the static B;
and `latentda-cycle run --adaptive-in-library` writes the options that switch it on. No jcm needed."""
import argparse
import json
import os

import numpy as np
import pytest

from latentda_train import cases as CS
from latentda_train import cycling as C
from test_cycling_ensemble import FAST, SAMPLE, lib, sample_obs  # noqa: F401 (lib is a fixture)

START = "hybrid_alpha = 0.7\nhybrid_beta = 0.3\nbg_check = 5.0"


def test_library_sizing_is_the_driver_sizing(lib, tmp_path):
    state = tmp_path / "adaptive_b.json"
    opts = (f"{FAST}\n{START}\nhybrid_variable_weights = {{ q = {{ alpha = 0.0, beta = 1.0 }} }}\n"
            f'adaptive_state = "{state}"\nadaptive_window = 3\nadaptive_per_variable = true\n')
    twin = C.AdaptiveB("hybrid", f"{FAST}\n{START}", window=3, rule="innovation", per_variable=True,
                       static_variables=("q",))
    xb = CS.read_state(os.path.join(SAMPLE, "background.nc"))
    lda = C.Latentda(lib, C.DEFAULT_BUNDLE, opts)
    rng = np.random.default_rng(7)
    try:
        host = C.HostFields(lda, xb.shape[1], xb.shape[2])
        var, lat, lon, lev, val, sig = sample_obs(lda)
        for k in range(5):
            host.load(xb)
            # each cycle other observation errors, and a B that the innovations find too large or too small
            lda.set_obs(var, lat, lon, lev, val + sig * rng.normal(size=val.shape) * (0.5 + k % 2), sig)
            lda.analyse("hybrid")
            rep = lda.report()
            ad = rep["adaptive"]
            # the weights this analysis ran with are the twin's options
            want = twin.options()
            bif = rep["desroziers"]["b_in_force"]
            assert bif["hybrid_alpha"] == pytest.approx(want["hybrid_alpha"], rel=1e-12), k
            for v, w in (want.get("hybrid_variable_weights") or {}).items():
                got = bif["hybrid_weights"][v]
                # six weights: the driver's twin has no southern ones, so the southern pair is the northern one
                want_w = [w["alpha"], w["beta"], w["alpha_tropics"], w["beta_tropics"],
                          w.get("alpha_sh", w["alpha"]), w.get("beta_sh", w["beta"])]
                assert got == pytest.approx(want_w, rel=1e-12, abs=1e-15), (k, v)
            assert bif["hybrid_weights"]["q"][0] == 0.0
            twin.update(rep)
            assert ad["multiplier_next"] == pytest.approx(twin.scale, rel=1e-12), k
            entry = C.library_adaptive_entry(rep)
            assert entry["options"]["hybrid_alpha"] == bif["hybrid_alpha"]   # what the summary lists
            flat = entry["var_scales_next"]
            assert flat.keys() == twin.var_scales.keys(), k
            for key, m in twin.var_scales.items():
                assert flat[key] == pytest.approx(m, rel=1e-12), (k, key)
        assert twin.var_scales, "the window filled: per-variable multipliers were compared"
        s = json.loads(state.read_text())
        assert (s["cycles"], len(s["window"]), s["method"]) == (5, 3, "hybrid")
    finally:
        lda.close()


def test_adaptive_in_library_options_and_folder(tmp_path):
    a = argparse.Namespace(method="hybrid", network="uniform", adaptive=True, adaptive_in_library=True,
                           adaptive_per_variable=True, static_variables="q", adaptive_window=8,
                           adaptive_bounds=[0.05, 4.0], adaptive_rule="innovation", adaptive_split=False,
                           ensemble="none", options=C.CYCLING_OPTIONS, bundle=C.DEFAULT_BUNDLE)
    assert C.run_name(a) == "hybrid-adaptive-pv-sq-lib"
    o = C.parse_options(C.library_adaptive_options(a, str(tmp_path)))
    assert o["adaptive_state"] == str(tmp_path / "adaptive_b.json")
    assert (o["adaptive_window"], o["adaptive_rule"], o["adaptive_per_variable"]) == (8, "innovation", True)
    # q static with the starting weights' alpha + beta (the bundle's 0.7 + 0.3: the cycling options set none)
    al = o.get("hybrid_alpha", 0.7)
    be = o.get("hybrid_beta", 0.3)
    assert o["hybrid_variable_weights"] == {"q": {"alpha": 0.0, "beta": pytest.approx(al + be)}}
    a.adaptive_per_variable = False
    assert C.run_name(a) == "hybrid-adaptive-sq-lib"   # scalar sizing with q static: the library only
    a.adaptive_split = True
    with pytest.raises(SystemExit):
        C.library_adaptive_options(a, str(tmp_path))
