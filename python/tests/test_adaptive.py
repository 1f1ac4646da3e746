"""The cycling driver's online B sizing (cycling.AdaptiveB, adaptive_scale): no jcm, no latentda library needed.

Reports are synthetic dicts in the shape of latentda's report JSON `desroziers` section."""
import numpy as np
import pytest

from latentda_train import cycling as C


def report(est, hbh_in_force, dadb=None, n=100, b_in_force=None):
    """A report whose (all, global) cell has normalised sums est = sum dHx db / s^2, sum_hbh = sum sb^2 / s^2."""
    cell = {"group": "all", "band": "global", "n": n,
            "normalised": {"n": n, "sum_r": float(n), "sum_da_db": float(n if dadb is None else dadb),
                           "sum_dhx_db": est, "sum_db_db": est + n, "sum_db": 0.0, "sum_hbh": hbh_in_force},
            "r_ratio": 1.0, "hbh_ratio": None if hbh_in_force is None else est / hbh_in_force}
    return {"desroziers": {"method": "x", "b_in_force": b_in_force or {}, "cells": [cell]}}


def test_adaptive_scale_formula_and_bounds():
    # one cycle at s = 1: the estimate over the in-force value
    assert C.adaptive_scale([(30.0, 100.0, 1.0)]) == pytest.approx(0.3)
    # cycles made at different scales are normalised by their own scale: in-force per unit = 100 in both
    assert C.adaptive_scale([(30.0, 100.0, 1.0), (30.0, 50.0, 0.5)]) == pytest.approx(60.0 / 200.0)
    # bounds
    assert C.adaptive_scale([(1000.0, 1.0, 1.0)]) == 4.0
    assert C.adaptive_scale([(-5.0, 100.0, 1.0)]) == 0.05
    assert C.adaptive_scale([(1.0, 100.0, 1.0)], bounds=(0.2, 3.0)) == 0.2
    # nothing usable: the default, bounded
    assert C.adaptive_scale([], default=0.7) == 0.7
    assert C.adaptive_scale([], default=10.0) == 4.0


def test_terms_read_from_the_report_json():
    assert C.desroziers_terms(report(3.0, 10.0, dadb=90.0)) == (3.0, 10.0, 90.0, 100, 103.0)
    # no sigma_b (no background check): nothing to learn from
    assert C.desroziers_terms(report(3.0, None)) is None
    assert C.desroziers_terms({"method": "3dvar"}) is None


def test_3dvar_converges_to_the_fixed_point_of_a_scalar_model():
    """Scalar model of the Desroziers step: true H B H^T = s_true, R = r, B in force = s * b0 with b0 = 1: the
    expected estimate is E[(Hxa-Hxb) db] = s b0 / (s b0 + r) * (s_true + r). The adaptive scale must converge to
    s_true (inside the bounds), from above and from below, and the window must smooth it (no overshoot)."""
    for s_true, r in ((0.15, 1.0), (2.5, 0.5)):
        ad = C.AdaptiveB("3dvar", "baseline_variance_factor = 0.35\nlatent_variance_factor = 0.35", window=8)
        traj = []
        for _ in range(400):
            o = ad.options()
            s = o["baseline_variance_factor"] / 0.35
            assert s == pytest.approx(ad.scale)
            assert o["latent_variance_factor"] == 0.35   # not scaled for 3dvar
            n = 1000
            est = n * s / (s + r) * (s_true + r)
            entry = ad.update(report(est, n * s))
            traj.append(entry["scale_next"])
            assert entry["scale"] == pytest.approx(s)
        assert traj[-1] == pytest.approx(s_true, rel=1e-3), (s_true, traj[-5:])
        # a 30-day run (120 cycles) gets within 5 %
        assert traj[119] == pytest.approx(s_true, rel=0.05), (s_true, traj[119])
        # monotone approach, no overshoot beyond the truth
        d = np.sign(s_true - 1.0)
        assert all(d * (b - a) >= -1e-12 for a, b in zip(traj, traj[1:]))
        assert all(d * (x - s_true) <= 1e-9 for x in traj)


def test_hybrid_scales_both_weights_from_the_first_report_and_survives_a_resume():
    ad = C.AdaptiveB("hybrid", C.CYCLING_OPTIONS, window=4)
    # the bundle's weights are not in the options: the first cycle runs with the start options
    assert not ad.ready()
    assert "hybrid_alpha" not in ad.options()
    bif = {"hybrid_alpha": 0.7, "hybrid_beta": 0.3, "latent_variance_factor": 0.35, "baseline_variance_factor": 0.35}
    e = ad.update(report(50.0, 100.0, b_in_force=bif))
    assert e["options"] == {"hybrid_alpha": 0.7, "hybrid_beta": 0.3}
    assert e["hbh_ratio"] == pytest.approx(0.5)
    assert ad.scale == pytest.approx(0.5)
    o = ad.options()
    assert o["hybrid_alpha"] == pytest.approx(0.35) and o["hybrid_beta"] == pytest.approx(0.15)
    assert o["latent_variance_factor"] == 0.35 and o["baseline_variance_factor"] == 0.35
    # the options text is valid latentda TOML (parsed back identically)
    assert C.parse_options(C.options_text(o)) == o
    # resume: the state round-trips through JSON (the checkpoint's extra)
    import json
    st = json.loads(json.dumps(ad.state()))
    ad2 = C.AdaptiveB("hybrid", C.CYCLING_OPTIONS, window=4, state=st)
    assert ad2.options() == o
    # the window keeps the last 4 cycles only
    for _ in range(6):
        ad2.update(report(10.0, 100.0 * ad2.scale))
    assert len(ad2.history) == 4
    assert ad2.scale == pytest.approx(0.1)


def test_innovation_rule_reaches_the_scalar_fixed_point_in_one_step():
    """E[d_b^2] - R = s_true whatever the B in force: one update lands on the truth (R right)."""
    s_true, r, n = 0.15, 1.0, 1000
    ad = C.AdaptiveB("l3dvar", C.CYCLING_OPTIONS, rule="innovation")
    for k in range(3):
        s = ad.scale
        est = n * s / (s + r) * (s_true + r)             # E[(Hxa-Hxb) db]
        dbdb = n * (s_true + r)                          # sum d_b^2 / sigma_o^2 with sigma_o^2 = r = 1
        rep = report(est, n * s, n=n)
        rep["desroziers"]["cells"][0]["normalised"]["sum_db_db"] = dbdb
        ad.update(rep)
        assert ad.scale == pytest.approx(s_true), (k, ad.scale)
        assert ad.options()["latent_variance_factor"] == pytest.approx(0.35 * s_true)
    with pytest.raises(ValueError):
        C.AdaptiveB("l3dvar", C.CYCLING_OPTIONS, rule="nope")


def test_level_off_ratio_of_the_summary():
    """Last 10 scored days over scored days 5-15 (the issue's gate), from metrics rows."""
    rows = [{"cycle": c, "an": {"u": 1.0 if c < 60 else 1.2}} for c in range(13, 133)]   # 30 days from cycle 13
    # days 5-15 = cycles 33..72: 27 at 1.0, 13 at 1.2; last 10 days all 1.2
    assert C.level_off(rows, "u") == pytest.approx(1.2 / ((27 * 1.0 + 13 * 1.2) / 40))
    assert np.isnan(C.level_off(rows[:40], "u"))     # 10 days: too short


def split_report(alpha, beta, cells):
    """A hybrid report with disjoint cells {(var, band): (est, latent in force, static in force)} (normalised sums)."""
    out = []
    for (g, band), (e, l, s) in cells.items():
        out.append({"group": g, "band": band, "n": 50,
                    "normalised": {"n": 50, "sum_r": 50.0, "sum_da_db": 50.0, "sum_dhx_db": e, "sum_db_db": e + 50,
                                   "sum_db": 0.0, "sum_hbh": l + s, "sum_hbh_latent": l, "sum_hbh_static": s}})
    tot = [sum(v[i] for v in cells.values()) for i in range(3)]
    out.append({"group": "all", "band": "global", "n": 50 * len(cells),
                "normalised": {"n": 50 * len(cells), "sum_r": 50.0 * len(cells), "sum_da_db": 50.0 * len(cells),
                               "sum_dhx_db": tot[0], "sum_db_db": tot[0] + 50 * len(cells), "sum_db": 0.0,
                               "sum_hbh": tot[1] + tot[2], "sum_hbh_latent": tot[1], "sum_hbh_static": tot[2]}})
    return {"desroziers": {"method": "hybrid", "cells": out,
                           "b_in_force": {"hybrid_alpha": alpha, "hybrid_beta": beta,
                                          "latent_variance_factor": 0.35, "baseline_variance_factor": 0.35}}}


def test_split_mode_fits_alpha_and_beta_separately():
    """Per unit weight the cells' latent and static H B H^T differ in proportion; the truth is alpha 0.2, beta 0.6
    (absolute). Whatever weights the cycle ran with, the estimate is E = 0.2 L + 0.6 S per unit: one update lands on
    the truth for each weight, relative to the starting (0.7, 0.3)."""
    unit = {("u", "nh"): (3.0, 1.0), ("u", "tropics"): (1.0, 1.0), ("t", "sh"): (2.0, 0.5), ("ps", "nh"): (0.5, 2.0)}
    ad = C.AdaptiveB("hybrid", C.CYCLING_OPTIONS, window=1, split=True)
    for k in range(3):
        a, b = (0.7, 0.3) if k == 0 else (ad.options()["hybrid_alpha"], ad.options()["hybrid_beta"])
        cells = {c: (0.2 * l + 0.6 * s, a * l, b * s) for c, (l, s) in unit.items()}
        e = ad.update(split_report(a, b, cells))
        assert e["split"]["alpha"] == pytest.approx(0.2) and e["split"]["beta"] == pytest.approx(0.6)
        o = ad.options()
        assert o["hybrid_alpha"] == pytest.approx(0.2) and o["hybrid_beta"] == pytest.approx(0.6)
        assert ad.weights == pytest.approx([0.2 / 0.7, 0.6 / 0.3])
    # state round trip
    import json
    ad2 = C.AdaptiveB("hybrid", C.CYCLING_OPTIONS, window=1, split=True, state=json.loads(json.dumps(ad.state())))
    assert ad2.options() == ad.options()
    # window 3: the first two updates scale both weights together (joint rule), the third fits them apart
    ad5 = C.AdaptiveB("hybrid", C.CYCLING_OPTIONS, window=3, split=True)
    for k in range(3):
        o = ad5.options()
        a, b = o.get("hybrid_alpha", 0.7), o.get("hybrid_beta", 0.3)
        ad5.update(split_report(a, b, {c: (0.2 * l + 0.6 * s, a * l, b * s) for c, (l, s) in unit.items()}))
        if k < 2:
            assert ad5.weights[0] == ad5.weights[1]
    assert ad5.options()["hybrid_alpha"] == pytest.approx(0.2) and ad5.options()["hybrid_beta"] == pytest.approx(0.6)
    # bounds apply to each weight: a truth of beta 3.0 is 10x the start 0.3, bounded to 4x
    ad3 = C.AdaptiveB("hybrid", C.CYCLING_OPTIONS, window=1, split=True)
    ad3.update(split_report(0.7, 0.3, {c: (0.2 * l + 3.0 * s, 0.7 * l, 0.3 * s) for c, (l, s) in unit.items()}))
    assert ad3.options()["hybrid_beta"] == pytest.approx(4.0 * 0.3)
    # parallel parts: no split, the weights stay
    ad4 = C.AdaptiveB("hybrid", C.CYCLING_OPTIONS, window=1, split=True)
    e = ad4.update(split_report(0.7, 0.3, {c: (l, 0.7 * l, 0.3 * l) for c, (l, s) in unit.items()}))
    assert "split" not in e and ad4.weights == [1.0, 1.0]
    with pytest.raises(ValueError):
        C.AdaptiveB("3dvar", C.CYCLING_OPTIONS, split=True)


def test_split_mode_fits_the_ensemble_weight_too():
    """With an ensemble part in the reports (sum_hbh_ensemble, b_in_force.ensemble_gamma), the split fits alpha, beta
    and gamma: truth alpha 0.2, beta 0.6, gamma 0.3, starting from (0.7, 0.3, 0.5); the same NNLS as the Rust side."""
    unit = {("u", "nh"): (3.0, 1.0, 0.5), ("u", "tropics"): (1.0, 1.0, 2.0), ("t", "sh"): (2.0, 0.5, 1.0),
            ("ps", "nh"): (0.5, 2.0, 0.2), ("v", "sh"): (1.5, 1.5, 3.0)}
    opts = C.CYCLING_OPTIONS + "\nensemble_gamma = 0.5"
    ad = C.AdaptiveB("hybrid", opts, window=1, split=True)
    for k in range(2):
        o = ad.options()
        a, b, g = o.get("hybrid_alpha", 0.7), o.get("hybrid_beta", 0.3), o["ensemble_gamma"]
        rep = split_report(a, b, {c: (0.2 * l + 0.6 * s + 0.3 * e, a * l, b * s) for c, (l, s, e) in unit.items()})
        rep["desroziers"]["b_in_force"]["ensemble_gamma"] = g
        for c in rep["desroziers"]["cells"]:
            key = (c["group"], c["band"])
            if key in unit:
                c["normalised"]["sum_hbh_ensemble"] = g * unit[key][2]
        e = ad.update(rep)
        assert e["split"]["alpha"] == pytest.approx(0.2) and e["split"]["beta"] == pytest.approx(0.6)
        assert e["split"]["gamma"] == pytest.approx(0.3)
        o = ad.options()
        assert (o["hybrid_alpha"], o["hybrid_beta"], o["ensemble_gamma"]) == pytest.approx((0.2, 0.6, 0.3))
    # the twin of the Rust fit: a negative ensemble weight is clipped to 0, the other two refitted
    hist = [{f"{g}/{b}": (0.2 * l + 0.6 * s - 0.3 * e, l, s, e) for (g, b), (l, s, e) in unit.items()}]
    fit = C.hybrid_split(hist)
    assert len(fit) == 4 and fit[2] == 0.0 and fit[0] >= 0 and fit[1] >= 0
    # an ensemble part that is a combination of the other two cannot be told apart
    hist = [{f"{g}/{b}": (l + s, l, s, l + s) for (g, b), (l, s, e) in unit.items()}]
    assert C.hybrid_split(hist) is None


def test_band_rmse_splits_the_area_weighted_rmse_by_band():
    """The cycling metrics' per-band RMSE: a difference that is 1 in the tropics and 0 elsewhere has RMSE 1 in the
    tropics, 0 in nh and sh, and the bands' area-weighted mean squares add up to the global one."""
    lat = np.linspace(87.0, -87.0, 48)
    d = np.zeros((41, 48, 96))
    d[:, np.abs(lat) <= 20.0, :] = 1.0
    b = C.band_rmse(d, lat)
    assert set(b) == {"nh", "tropics", "sh"}
    for v in ("u", "q", "ps"):
        assert b["tropics"][v] == pytest.approx(1.0) and b["nh"][v] == 0.0 and b["sh"][v] == 0.0
    rng = np.random.default_rng(1)
    d = rng.normal(size=(41, 48, 96))
    g, b = C.area_rmse(d, lat), C.band_rmse(d, lat)
    w = np.cos(np.radians(lat))
    wb = {k: w[sel(lat)].sum() / w.sum() for k, sel in C.BANDS.items()}
    for v in ("u", "t", "ps"):
        assert g[v] ** 2 == pytest.approx(sum(wb[k] * b[k][v] ** 2 for k in b))


def variable_report(alpha, beta, cells, variables=("u", "v", "t", "q", "z", "ps")):
    """A hybrid report with per-band cells {(var, band): (est, hbh in force, n)} (normalised sums), the variables'
    global cells and an (all, global) cell."""
    out = [{"group": v, "band": "global", "n": 0, "normalised": {"n": 0}} for v in variables]
    for (g, band), (e, h, n) in cells.items():
        out.append({"group": g, "band": band, "n": n,
                    "normalised": {"n": n, "sum_r": float(n), "sum_da_db": float(n), "sum_dhx_db": e,
                                   "sum_db_db": e + n, "sum_db": 0.0, "sum_hbh": h}})
    e, h, n = (sum(c[i] for c in cells.values()) for i in range(3))
    out.append({"group": "all", "band": "global", "n": n,
                "normalised": {"n": n, "sum_r": float(n), "sum_da_db": float(n), "sum_dhx_db": e, "sum_db_db": e + n,
                               "sum_db": 0.0, "sum_hbh": h}})
    return {"desroziers": {"method": "hybrid", "cells": out,
                           "b_in_force": {"hybrid_alpha": alpha, "hybrid_beta": beta}}}


def test_per_variable_mode_sizes_each_variable_and_band():
    """True H B H^T per unit of the starting B: u 0.2 (extratropics) / 0.5 (tropics), t 0.1 / 0.1, q 0.04 with too few
    observations (its group has none: all variables decide), v and z unobserved (v: the wind group = u; z: mass = t, ps);
    ps 2.0 in the tropics, bounded to 4. Whatever the multipliers a cycle ran with, the estimate is truth x unit H B H^T:
    once the window is full the multipliers land on the truth."""
    unit = {("u", "nh"): 10.0, ("u", "sh"): 6.0, ("u", "tropics"): 8.0, ("t", "nh"): 5.0, ("t", "tropics"): 4.0,
            ("q", "sh"): 1.0, ("ps", "tropics"): 3.0, ("ps", "nh"): 2.0}
    truth = {"u/x": 0.2, "u/t": 0.5, "t/x": 0.1, "t/t": 0.1, "q/x": 0.04, "ps/t": 9.0, "ps/x": 0.3}
    n_of = {"q": 10}
    ad = C.AdaptiveB("hybrid", C.CYCLING_OPTIONS, window=2, per_variable=True)
    for k in range(4):
        o = ad.options()
        a, b = o.get("hybrid_alpha", 0.7), o.get("hybrid_beta", 0.3)
        scales = {key: ad.var_scales.get(key, ad.scale) for key in truth}
        cells = {}
        for (v, band), h in unit.items():
            key = f"{v}/{'t' if band == 'tropics' else 'x'}"
            cells[(v, band)] = (truth[key] * h, scales[key] * h, n_of.get(v, 100))
        e = ad.update(variable_report(a, b, cells))
        if k == 0:
            # window not full: every variable follows the global scale
            assert e["var_scales_next"] == {} and "hybrid_variable_weights" not in ad.options()
    s = ad.var_scales
    assert s["u/x"] == pytest.approx(0.2) and s["u/t"] == pytest.approx(0.5)
    assert s["t/x"] == pytest.approx(0.1) and s["t/t"] == pytest.approx(0.1)
    # groups: v as u (wind); z as t and ps together (mass)
    assert s["v/x"] == pytest.approx(0.2) and s["v/t"] == pytest.approx(0.5)
    assert s["z/x"] == pytest.approx((0.1 * 5 + 0.3 * 2) / 7) and s["z/t"] == pytest.approx((0.1 * 4 + 9.0 * 3) / 7)
    assert s["ps/t"] == 4.0 and s["ps/x"] == pytest.approx(0.3)                # bound
    # q: 20 observations over the window (< MIN_CELL_OBS), no group: all variables' extratropical ratio
    num = sum(truth[f"{v}/x"] * h for (v, band), h in unit.items() if band != "tropics")
    den = sum(h for (v, band), h in unit.items() if band != "tropics")
    assert s["q/x"] == pytest.approx(num / den)
    # the options carry them as hybrid_variable_weights (the 0.7 : 0.3 mix kept), and the text is valid TOML
    import tomllib
    o = tomllib.loads(C.options_text(ad.options()))
    w = o["hybrid_variable_weights"]
    assert w["u"]["alpha"] == pytest.approx(0.7 * 0.2) and w["u"]["beta_tropics"] == pytest.approx(0.3 * 0.5)
    assert set(w) == {"u", "v", "t", "q", "z", "ps"}
    # state round trip
    import json
    ad2 = C.AdaptiveB("hybrid", C.CYCLING_OPTIONS, window=2, per_variable=True,
                      state=json.loads(json.dumps(ad.state())))
    assert ad2.options() == ad.options()
    # a static variable: its latent weight moved into the static part, the same scale
    ad3 = C.AdaptiveB("hybrid", C.CYCLING_OPTIONS, window=2, per_variable=True, static_variables=("q",),
                      state=json.loads(json.dumps(ad.state())))
    w3 = ad3.options()["hybrid_variable_weights"]
    assert w3["q"]["alpha"] == 0.0 and w3["q"]["beta"] == pytest.approx(1.0 * s["q/x"])
    assert w3["q"]["alpha_tropics"] == 0.0 and w3["u"] == w["u"]
    # before the window is full (no per-variable scales yet) the static variable is already static
    ad4 = C.AdaptiveB("hybrid", C.CYCLING_OPTIONS + "\nhybrid_alpha = 0.7\nhybrid_beta = 0.3", per_variable=True,
                      static_variables=("q",))
    assert ad4.options()["hybrid_variable_weights"] == {"q": {"alpha": 0.0, "beta": 1.0, "alpha_tropics": 0.0,
                                                               "beta_tropics": 1.0}}
    with pytest.raises(ValueError):
        C.AdaptiveB("hybrid", C.CYCLING_OPTIONS, static_variables=("q",))
    with pytest.raises(ValueError):
        C.AdaptiveB("3dvar", C.CYCLING_OPTIONS, per_variable=True)
    with pytest.raises(ValueError):
        C.AdaptiveB("hybrid", C.CYCLING_OPTIONS, per_variable=True, split=True)


def test_summary_table_time_window_and_reference_ratios():
    """`summary --from-day D --reference R`: time means over cycles >= D days after the perturbed start, the share of
    cycles worse than their background over the same cycles, and each run's means over R's, with its wins."""
    def run(an_early, an_late, fc):
        rows = []
        for c in range(1, 133):
            an = an_early if c / 4.0 < 10 else an_late
            r = {"cycle": c, "scored": c > 12, "t_cycle": 1.0, "bg_balance_true": 0.5, "balance": 0.7,
                 "an": {v: an for v in C.NAMES}, "bg": {v: an * (0.9 if c % 4 == 0 else 1.1) for v in C.NAMES}}
            if c % 4 == 0:
                r["fc48"] = {v: fc for v in C.NAMES}
            rows.append(r)
        return rows
    runs = {"3dvar-adaptive": run(2.0, 1.0, 4.0), "hybrid-adaptive-x": run(1.0, 0.8, 3.0)}
    md = C.summary_table("uniform", runs, from_day=10.0, reference="3dvar-adaptive")
    lines = md.splitlines()
    assert "- 3dvar-adaptive: 132 cycles, 120 scored (30 days)" in md   # the run's scored cycles, not the window's
    an = lines[lines.index(next(l for l in lines if l.startswith("Time-mean analysis RMSE"))) + 4]
    assert an.startswith("| u ") and "| 1 |" in an and "**0.8**" in an       # only days >= 10: 1.0 and 0.8
    worse = next(i for i, l in enumerate(lines) if l.startswith("Analysis worse than its own"))
    # cycles 40..132 (93) count; the 24 multiples of 4 among them have bg = 0.9 x an
    assert lines[worse + 4].split("|")[2].strip() == f"{100 * 24 / 93:.4g}"
    ratio = next(i for i, l in enumerate(lines) if l.startswith("Time-mean analysis RMSE over 3dvar-adaptive's"))
    assert lines[ratio + 4].split("|")[2:4] == [" 1 ", " 0.8 "]
    fc = next(i for i, l in enumerate(lines) if l.startswith("Time-mean 48 h forecast RMSE over"))
    assert lines[fc + 4].split("|")[3].strip() == "0.75"
    assert lines[fc + 4 + len(C.NAMES)] == "| wins (of 6) | - | 6 |"
    # without the window the early cycles count: the reference's mean rises above 1
    md0 = C.summary_table("uniform", runs, reference="3dvar-adaptive").splitlines()
    an0 = md0[md0.index(next(l for l in md0 if l.startswith("Time-mean analysis RMSE"))) + 4]
    assert float(an0.split("|")[2]) > 1.0


def test_forecast_impact_share_pairs_each_cycle_with_the_next_background():
    """The forecast-impact share compares cycle c's `fc6_no_analysis` (the 6 h forecast of its background) with cycle
    c+1's background (the 6 h forecast of its analysis), both against the truth at c+1: it counts the analyses that
    made the forecast worse, whatever the analysis RMSE itself did."""
    rows = []
    for c in range(1, 11):
        r = {"cycle": c, "scored": True, "t_cycle": 1.0, "bg_balance_true": 0.5, "balance": 0.7,
             # every analysis is worse than its own background, as the global analysis RMSE sees it
             "an": {v: 1.1 for v in C.NAMES}, "bg": {v: 1.0 for v in C.NAMES},
             # the forecast without the analysis is worse than the next background, except after cycles 3 and 7
             "fc6_no_analysis": {v: (0.9 if c in (3, 7) else 1.2) for v in C.NAMES}}
        rows.append(r)
    # cycle 10 has no next cycle: 9 pairs, 2 of them worse
    assert C.forecast_impact_worse(rows, "u") == pytest.approx(100.0 * 2 / 9)
    assert np.isnan(C.forecast_impact_worse([{k: v for k, v in r.items() if k != "fc6_no_analysis"} for r in rows], "u"))
    md = C.summary_table("uniform", {"3dvar-adaptive": rows}).splitlines()
    i = next(i for i, l in enumerate(md) if l.startswith("6 h forecast of the analysis worse"))
    j = next(i for i, l in enumerate(md) if l.startswith("Analysis worse than its own"))
    assert md[i + 4].split("|")[2].strip() == f"{100 * 2 / 9:.4g}"
    assert md[j + 4].split("|")[2].strip() == "100"
    # mean ratio over the 9 pairs: next bg 1.0 over 0.9 twice, over 1.2 seven times
    assert C.forecast_impact_ratio(rows, "u") == pytest.approx((2 / 0.9 + 7 / 1.2) / 9)
    k = next(i for i, l in enumerate(md) if l.startswith("6 h forecast of the analysis over"))
    assert md[k + 4].split("|")[2].strip() == f"{(2 / 0.9 + 7 / 1.2) / 9:.4g}"


def test_variable_scales_never_raise_a_variable_whose_group_is_unobserved():
    """The driver's per-variable multipliers (twin of desroziers::variable_scales and adaptive.rs): a variable with
    its own observations gets its own ratio, an unobserved z its group's (mass), and a variable whose group has no
    observation (the wind of a mass-only network) the ratio over all variables, but at most 1."""
    hist = [{"t/x": (3.0, 1.0, 100), "ps/x": (3.0, 1.0, 100), "t/t": (0.5, 1.0, 100), "ps/t": (0.5, 1.0, 100)}]
    s = C.variable_scales(hist, ["u", "v", "t", "z", "ps"])
    assert s["t/x"] == pytest.approx(3.0) and s["z/x"] == pytest.approx(3.0)   # z: its group, mass
    assert s["u/x"] == pytest.approx(1.0) and s["v/x"] == pytest.approx(1.0)   # all would say 3: not raised
    assert s["u/t"] == pytest.approx(0.5) and s["z/t"] == pytest.approx(0.5)   # shrinking follows all variables


def test_station_distance_is_the_great_circle_distance_to_the_nearest_column():
    # `latentda-cycle distance` bins the error by this distance: a grid point on a station is 0 km from it, the
    # antipode half the circumference, a quarter circle 10008 km, and the nearest of two stations counts
    lat = np.array([0.0, 45.0, -45.0, 90.0])
    lon = np.array([0.0, 90.0, 180.0, 270.0])
    d = C.station_distance_km(lat, lon, np.array([[0.0, 0.0]]))
    assert d.shape == (4, 4)
    assert d[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert d[0, 2] == pytest.approx(np.pi * 6371.0)
    assert d[3, 1] == pytest.approx(np.pi / 2 * 6371.0)
    assert d[1, 0] == pytest.approx(np.pi / 4 * 6371.0)
    two = C.station_distance_km(lat, lon, np.array([[0.0, 0.0], [0.0, 180.0]]))
    assert two[0, 2] == pytest.approx(0.0, abs=1e-6) and two[0, 1] == pytest.approx(np.pi / 2 * 6371.0)
    assert np.all(two <= d + 1e-9)


def test_a_larger_perturbed_start_is_named_and_recorded():
    # `--start-t-rms`: a run started above the cycle's equilibrium gets its own folder and settings; the default
    # start changes neither (old runs resume)
    import argparse
    base = dict(method="3dvar", network="sonde", start_day=610, spinup_days=3, days=30.0, bundle=".", options="",
                choose_by="withheld", adaptive=False)
    a = argparse.Namespace(**base, start_t_rms=C.START_T_RMS, start_wind_factor=C.START_WIND_FACTOR)
    assert C.run_name(a) == "3dvar" and "start_perturbation" not in C.settings_of(a)
    b = argparse.Namespace(**base, start_t_rms=2.8, start_wind_factor=C.START_WIND_FACTOR)
    assert C.run_name(b) == "3dvar-start2.8x1.6"
    assert C.settings_of(b)["start_perturbation"] == {"t_rms": 2.8, "wind_factor": 1.6}
