"""The hybrid's mix chosen online from withheld observations (`latentda-cycle run --choose-mix`, cycle_mix.py),
through the real C ABI (liblatentda.so of `cargo build --release`, the reference bundle and its sample case): the
column split, the weights of a choice, candidates that run with the run's adaptive multipliers without writing the
run's state, a choice that is the lowest pooled mean d, and a resume from the chooser's state. No jcm needed."""
import argparse
import os

import numpy as np
import pytest

from latentda_train import cases as CS
from latentda_train import crossval as CV
from latentda_train import cycle_mix as CM
from latentda_train import cycling as C
from test_cycling_ensemble import FAST, SAMPLE, lib, sample_obs  # noqa: F401 (lib is a fixture)

START = "hybrid_alpha = 0.7\nhybrid_beta = 0.3\nbg_check = 5.0"


def test_split_keeps_columns_whole_and_halves_them():
    rng = np.random.default_rng(1)
    cols = np.round(rng.uniform(-80, 80, (41, 2)), 3)
    lat, lon = np.repeat(cols[:, 0], 5), np.repeat(cols[:, 1], 5)   # 5 levels per column
    second = CM.split_halves(lat, lon, 11)
    side = {}
    for la, lo, s in zip(lat, lon, second):
        assert side.setdefault((la, lo), s) == s, "a column was split"
    assert sum(side.values()) == 20   # half of 41 columns, rounded down
    assert np.array_equal(second, CM.split_halves(lat, lon, 11))   # the seed decides
    assert not np.array_equal(second, CM.split_halves(lat, lon, 12))


def test_weights_of_a_choice_keep_the_total_and_the_static_variables():
    choice = {v: {"extratropics": 0.9, "tropics": 0.25} for v in CV.VARS}
    w = CM.mix_weights(choice, 1.5, ("q",), CV.VARS)
    for v in CV.VARS:
        assert w[v]["alpha"] + w[v]["beta"] == pytest.approx(1.5)
        assert w[v]["alpha_tropics"] + w[v]["beta_tropics"] == pytest.approx(1.5)
    assert w["u"]["alpha"] == pytest.approx(1.35) and w["u"]["alpha_tropics"] == pytest.approx(0.375)
    assert (w["q"]["alpha"], w["q"]["alpha_tropics"]) == (0.0, 0.0)


def chooser(lib, tmp_path, shares, window=4, state=None, xb_shape=None, mode="withheld"):
    base = C.parse_options(f"{FAST}\n{START}\nadaptive_state = \"{tmp_path / 'adaptive_b.json'}\"\n"
                           "adaptive_window = 3\nadaptive_per_variable = true\n")
    return CM.MixChooser(shares, window, base, 1.0, ("q",), C.NAMES, str(tmp_path),
                         lambda o: C.context(argparse.Namespace(lib=lib, bundle=C.DEFAULT_BUNDLE), C.options_text(o),
                                             *xb_shape), state, mode)


def test_candidates_run_with_the_runs_multipliers_and_the_choice_is_the_lowest_mean_d(lib, tmp_path):
    xb = CS.read_state(os.path.join(SAMPLE, "background.nc"))
    ch = chooser(lib, tmp_path, [0.7, 0.0, 1.0], xb_shape=xb.shape[1:])
    main = None
    try:
        # the run's own context, sized by the library: two cycles so that its state file holds a multiplier != 1
        main, host = C.context(argparse.Namespace(lib=lib, bundle=C.DEFAULT_BUNDLE), C.options_text(ch.options()),
                               *xb.shape[1:])
        obs = sample_obs(main)
        rng = np.random.default_rng(5)
        for k in range(2):
            host.load(xb)
            main.set_obs(*obs[:4], obs[4] + 0.7 * obs[5] * rng.normal(size=obs[4].shape), obs[5])
            main.analyse("hybrid")
        state = tmp_path / "adaptive_b.json"
        before = state.read_bytes()
        rec = ch.evaluate(xb, obs, 3)
        assert state.read_bytes() == before, "a candidate wrote the run's state"
        # every candidate ran with the run's multiplier in force, and with its own mix
        m_next = main.report()["adaptive"]["multiplier_next"]
        assert m_next != pytest.approx(1.0)
        for k, share in enumerate(ch.shares):
            (lda, _), _ = ch.candidates[k]
            rep = lda.report()
            assert rep["adaptive"]["multiplier"] == pytest.approx(m_next, rel=1e-12), share
            w = rep["desroziers"]["b_in_force"]["hybrid_weights"]["u"]
            assert w[0] / (w[0] + w[1]) == pytest.approx(share, abs=1e-12)
            assert rep["withheld"]["n_used"] > 0
        # the choice is the lowest mean d of each variable's own withheld observations (window of one cycle)
        names = [CM.share_name(s) for s in ch.shares]
        assert set(rec["mean_d"]) == set(names)
        assert "q" not in rec["choice"], "q is static in every candidate: nothing to choose"
        for v in ("u", "v", "t", "ps"):
            for c in CM.CLASSES:
                d = {n: rec["mean_d"][n][f"{v}/{c}"] for n in names}
                if any(x is None for x in d.values()):
                    continue
                assert rec["sources"][f"{v}/{c}"] == "own"
                assert CM.share_name(rec["choice"][v][c]) == min(d, key=d.get), (v, c, d)
        # the run's options carry the choice, and the chooser's state resumes it
        w = ch.options()["hybrid_variable_weights"]
        assert w["t"]["alpha"] == pytest.approx(rec["choice"]["t"]["extratropics"])
        assert (w["q"]["alpha"], w["q"]["beta"]) == (0.0, 1.0)
        again = chooser(lib, tmp_path, [0.7, 0.0, 1.0], state=ch.state(), xb_shape=xb.shape[1:])
        try:
            assert again.options() == ch.options() and again.history == ch.history
        finally:
            again.close()
    finally:
        ch.close()
        if main is not None:
            main.close()


def test_bad_shares_are_refused(tmp_path):
    for shares in ([], [0.7, 0.7], [1.2]):
        with pytest.raises(SystemExit):
            CM.MixChooser(shares, 4, {}, 1.0, (), C.NAMES, str(tmp_path), lambda o: None)


def test_run_name_and_settings_of_a_mix_run():
    a = argparse.Namespace(method="hybrid", network="uniform", adaptive=True, adaptive_in_library=True,
                           adaptive_per_variable=True, static_variables="q", adaptive_window=8,
                           adaptive_bounds=[0.05, 4.0], adaptive_rule="innovation", adaptive_split=False,
                           ensemble="none", options=C.CYCLING_OPTIONS, bundle=C.DEFAULT_BUNDLE, choose_mix="0.7,0.9,0",
                           choose_window=12, start_day=610, spinup_days=3, days=30)
    assert C.run_name(a) == "hybrid-mix-adaptive-pv-sq-lib"
    assert C.settings_of(a)["choose_mix"] == {"shares": [0.7, 0.9, 0.0], "window": 12, "seed": C.MIX_SEED,
                                              "by": "withheld"}
    a.choose_by = "forecast"
    assert C.run_name(a) == "hybrid-mixf-adaptive-pv-sq-lib"
    a.choose_by = "persistence"
    assert C.run_name(a) == "hybrid-mixp-adaptive-pv-sq-lib"
    a.choose_by, a.choose_in_library = "forecast", True
    assert C.run_name(a) == "hybrid-mixlf-adaptive-pv-sq-lib" and C.settings_of(a)["choose_mix"]["in_library"]
    assert "hemispheres" not in C.settings_of(a)["choose_mix"]   # older runs' settings compare equal on resume
    a.mix_hemispheres = True   # the library's mix_hemispheres = true: its own folder and settings
    assert C.run_name(a) == "hybrid-mixlfh-adaptive-pv-sq-lib" and C.settings_of(a)["choose_mix"]["hemispheres"]
    a.choose_in_library, a.mix_hemispheres = False, False
    # increments truncated before they enter the model: named and recorded, refused with a chooser (in run())
    a.choose_mix, a.increment_truncation = None, 21
    assert C.run_name(a) == "hybrid-t21-adaptive-pv-sq-lib"
    assert C.settings_of(a)["increment_truncation"] == 21
    a.increment_truncation = None
    assert "increment_truncation" not in C.settings_of(a)   # older runs' settings compare equal on resume
    a.iau = 6
    assert C.run_name(a) == "hybrid-iau6-adaptive-pv-sq-lib" and C.settings_of(a)["iau"] == 6


def test_iau_pending_increment_is_tied_to_its_cycle(tmp_path):
    p = str(tmp_path / C.IAU_PENDING)
    xb, xa = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    with pytest.raises(SystemExit, match="missing"):
        C.load_iau_pending(p, 4)
    C.save_iau_pending(p, 4, xb, xa)
    b, a = C.load_iau_pending(p, 4)
    assert np.array_equal(b, xb) and np.array_equal(a, xa)
    with pytest.raises(SystemExit, match="holds cycle 4"):
        C.load_iau_pending(p, 5)


def test_the_librarys_mix_state_is_kept_with_its_cycle(tmp_path):
    mix = tmp_path / "mix_lib.json"
    path = str(tmp_path / C.LIB_MIX)
    with pytest.raises(SystemExit, match="missing"):
        C.load_lib_mix(path, 3, str(mix))
    mix.write_text('{"cycles": 3}')
    (tmp_path / "mix_lib.json.fields").write_bytes(b"LDAMIX01" + bytes(range(40)))
    C.save_lib_mix(path, 3, str(mix))
    # the library advances them inside the next analysis; a resume at cycle 3 brings back cycle 3's
    mix.write_text('{"cycles": 4}')
    (tmp_path / "mix_lib.json.fields").write_bytes(b"other")
    C.load_lib_mix(path, 3, str(mix))
    assert mix.read_text() == '{"cycles": 3}'
    assert (tmp_path / "mix_lib.json.fields").read_bytes() == b"LDAMIX01" + bytes(range(40))
    with pytest.raises(SystemExit, match="holds cycle 3"):
        C.load_lib_mix(path, 4, str(mix))


def test_summary_counts_how_often_each_share_was_chosen():
    cs = [{"u": {"extratropics": 0.7, "tropics": 0.0}}, {"u": {"extratropics": 0.4, "tropics": 0.0}},
          {"u": {"extratropics": 0.7, "tropics": 0.0}}, {"u": {"extratropics": 0.7, "tropics": 0.0}}]
    assert C.mix_shares_used(cs, "u", "extratropics") == "L0.7 75 %/L0.4 25 %"
    assert C.mix_shares_used(cs, "u", "tropics") == "L0 100 %"


def test_obs_cells_sum_by_variable_band_and_column():
    lat = np.array([50.0, 50.0, 10.0, -30.0, -30.0, 50.0])
    lon = np.array([0.0, 0.0, 5.0, 7.0, 7.0, 0.0])
    var = np.array([0, 0, 0, 0, 1, 1])
    d = np.array([1.0, -3.0, 2.0, 4.0, 5.0, np.nan])
    cells = {(c["group"], c["band"]): c for c in CM.obs_cells({0: "u", 1: "t"}, var, lat, lon, d)}
    assert set(cells) == {("u", "nh"), ("u", "tropics"), ("u", "sh"), ("t", "sh")}   # NaN left out
    nh = cells[("u", "nh")]
    assert (nh["n"], nh["n_columns"], nh["sum_d"], nh["sum_dc2"], nh["sum_nc2"]) == (2, 1, -2.0, 4.0, 4.0)
    n, m, _ = CV.class_stats(cells.values(), "u", "extratropics")
    assert (n, m) == (3, pytest.approx(2.0 / 3))


def test_forecast_mode_scores_the_candidates_next_cycle(lib, tmp_path):
    """Persistence as the host's model (the 6 h forecast of an analysis is the analysis): every candidate then fits
    the observations it assimilated better than the background does, and the choice is the lowest mean d."""
    xb = CS.read_state(os.path.join(SAMPLE, "background.nc"))
    ch = chooser(lib, tmp_path, [0.7, 0.0], xb_shape=xb.shape[1:], mode="forecast")
    try:
        (lda0, _), _ = ch.candidates[0]
        obs = sample_obs(lda0)
        names = {lda0.var_index(v): v for v in C.NAMES}
        # H of a state passed to lda_obs_h is H of the same state bound as the host's arrays
        (_, host0), _ = ch.candidates[0]
        lda0.set_obs(*obs)
        hx = lda0.obs_h(len(obs[0]), 1.01 * xb)
        host0.load(1.01 * xb)
        assert np.array_equal(hx, lda0.obs_h(len(obs[0])), equal_nan=True)
        first = ch.verify(xb, obs, names)
        assert first["mean_d"] == {}, "no forecasts yet: no evidence"
        ch.propose(xb, obs, lambda x_a: x_a.copy())
        assert len(ch.pending) == 2 and not np.array_equal(ch.pending[0], ch.pending[1])
        # checkpointed with their cycle: a resume at that cycle gets them back, at another none
        saved, path = [x.copy() for x in ch.pending], str(tmp_path / "pending.npz")
        ch.save_pending(path, 5)
        ch.load_pending(path, 6)
        assert ch.pending is None
        ch.load_pending(path, 5)
        assert all(np.array_equal(a, b) for a, b in zip(ch.pending, saved))
        rec = ch.verify(xb, obs, names)
        assert ch.pending is None
        names_ = [CM.share_name(s) for s in ch.shares]
        for v in ("u", "v", "t", "ps"):
            for c in CM.CLASSES:
                d = {n: rec["mean_d"][n][f"{v}/{c}"] for n in names_}
                if any(x is None for x in d.values()):
                    continue
                assert all(x < 0 for x in d.values()), (v, c, d)
                assert CM.share_name(rec["choice"][v][c]) == min(d, key=d.get), (v, c, d)
    finally:
        ch.close()


def test_persistence_mode_scores_background_plus_analysis_difference(lib, tmp_path):
    """Mode persistence: the pending fields are A_k - A of the run's analysis A, and the forecast scored at the next
    cycle is B + (A_k - A). With B = A (a perfect 6 h persistence of the run's analysis) that is the forecast mode
    with persistence as the model: the same scores and choice."""
    xb = CS.read_state(os.path.join(SAMPLE, "background.nc"))
    ch = chooser(lib, tmp_path, [0.7, 0.0], xb_shape=xb.shape[1:], mode="persistence")
    try:
        (lda0, host0), _ = ch.candidates[0]
        obs = sample_obs(lda0)
        names = {lda0.var_index(v): v for v in C.NAMES}
        ch.propose(xb, obs, lambda x_a: x_a.copy())
        analyses = [x.copy() for x in ch.pending]
        x_a = 0.5 * (analyses[0] + analyses[1])   # a run whose mix lies between the two candidates
        ch.relative_to(x_a)
        assert all(np.allclose(p, a - x_a) for p, a in zip(ch.pending, analyses))
        rec = ch.verify(x_a, obs, names)
        ch.mode, ch.pending, ch.history = "forecast", analyses, []
        ref = ch.verify(x_a, obs, names)
        assert rec["choice"] == ref["choice"]
        for n in rec["mean_d"]:
            for key, d in rec["mean_d"][n].items():
                assert (d is None and ref["mean_d"][n][key] is None) or d == pytest.approx(ref["mean_d"][n][key])
    finally:
        ch.close()


def test_the_library_mix_forecasts_candidates_with_the_hosts_callback(lib, tmp_path):
    """The library's online mix (mix_candidates, mix_score = "model") through the C ABI: the host's model set with
    lda_set_step_model (here a 6 h relaxation towards the background, as a python callback) forecasts every
    candidate, and the next analysis scores those forecasts; without a model the analysis fails and says so."""
    xb = CS.read_state(os.path.join(SAMPLE, "background.nc"))
    state = tmp_path / "mix.json"
    opts = (f"{FAST}\n{START}\nmix_candidates = [0.7, 0.0]\nmix_state = \"{state}\"\n")
    lda, host = C.context(argparse.Namespace(lib=lib, bundle=C.DEFAULT_BUNDLE), opts, *xb.shape[1:])
    try:
        obs = sample_obs(lda)
        host.load(xb)
        lda.set_obs(*obs)
        with pytest.raises(C.LatentdaError, match="lda_set_step_model"):
            lda.analyse("hybrid")
        assert not state.exists()
        calls = []

        def relax(x):
            calls.append(1)
            return xb.ravel() + 0.5 * (x - xb.ravel())
        lda.set_step_model(relax, 6.0)
        lda.set_analysis_time(0.0)
        lda.analyse("hybrid")
        first = lda.report()["mix"]
        assert first["valid_next_hours"] == 6.0
        assert len(calls) == 2 and first["scored"] == [] and state.exists()
        x_a = host.state()
        host.load(xb + 0.5 * (x_a - xb))   # the next background: the same model from the analysis used
        lda.set_obs(*obs)
        lda.set_analysis_time(6.0)
        lda.analyse("hybrid")
        rep = lda.report()["mix"]
        assert len(calls) == 4
        # the candidate that was the analysis used forecasts to this background: d = 0; the other does not
        assert all(d == pytest.approx(0.0, abs=1e-12) for d in rep["scored"][0].values())
        assert any(abs(d) > 1e-6 for d in rep["scored"][1].values())
        # the report path of a score (lda_report_number): mix.scored.<candidate index>.<variable>/<class>
        assert lda.report_number("mix.scored.1.t/extratropics") == pytest.approx(rep["scored"][1]["t/extratropics"])
        # a cycle skipped (the next analysis at 18 h, the forecasts valid at 12 h): noted, nothing scored
        lda.set_analysis_time(18.0)
        lda.analyse("hybrid")
        late = lda.report()["mix"]
        assert late["scored"] == [] and late["window_filled"] == rep["window_filled"]
        assert any("valid at 12 h" in n for n in late["notes"]), late["notes"]
        with pytest.raises(C.LatentdaError, match="not finite"):
            lda.set_analysis_time(float("nan"))
    finally:
        lda.close()


def test_worse_than_background_per_band():
    """The per-band share of analyses worse than their background: counted in each band on its own."""
    rows = []
    for c in range(4):
        bands = lambda x: {b: {v: x[b] for v in C.NAMES} for b in ("nh", "tropics", "sh")}
        rows.append({"an_bands": bands({"nh": 1.0, "tropics": 1.2 if c else 0.9, "sh": 1.1 if c < 2 else 0.8}),
                     "bg_bands": bands({"nh": 1.1, "tropics": 1.0, "sh": 1.0})})
    assert C.worse_by_band(rows, "t") == "0 / 75 / 50"
    assert C.worse_by_band([{"an": {}}], "t") == "-"
