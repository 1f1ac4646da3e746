"""Pure-numpy parts of the robustness matrix (no jcm, no data): the smooth random perturbation's spectrum, vertical
correlation and scaling, band RMSE, the uniform networks, the gates."""
import json
import os

import numpy as np
import pytest

from latentda_train import cases as CS
from latentda_train import data as D
from latentda_train import forecasts as F
from latentda_train import matrix as M
from latentda_train import suite as SU


def _mesh(lmax=32):
    """A dinosaur-like real modal mesh: rows m = 0, 1, -1, 2, -2, ..., columns l = 0..lmax."""
    ms = [0] + [s * k for k in range(1, lmax) for s in (1, -1)]
    mm = np.repeat(np.array(ms)[:, None], lmax + 1, axis=1)
    ml = np.repeat(np.arange(lmax + 1)[None, :], len(ms), axis=0)
    return mm, ml


def test_random_modal_lives_at_wavenumbers_1_to_10_only():
    mm, ml = _mesh()
    c = F.random_modal(np.random.default_rng(0), 8, mm, ml)
    inside = (ml >= 1) & (ml <= 10) & (np.abs(mm) <= ml)
    assert c.shape == (8,) + ml.shape
    assert np.all(c[:, ~inside] == 0)                       # nothing at l = 0, l > 10 or |m| > l
    # every total wavenumber 1..10 is present, with about the same variance per coefficient (slope 0)
    var_l = np.array([np.mean(c[:, inside & (ml == l)] ** 2) for l in range(1, 11)])
    assert np.all(var_l > 0.3) and np.all(var_l < 3.0)
    # slope 1 (vorticity): variance per coefficient grows like l(l+1)
    cz = np.stack([F.random_modal(np.random.default_rng(s), 8, mm, ml, slope=1.0) for s in range(20)])
    vz = np.array([np.mean(cz[:, :, inside & (ml == l)] ** 2) for l in range(1, 11)])
    ratio = vz / (np.arange(1, 11) * np.arange(2, 12))
    assert ratio.max() / ratio.min() < 1.6, ratio


def test_random_modal_is_seeded_and_smooth_in_the_vertical():
    mm, ml = _mesh()
    a = F.random_modal(np.random.default_rng(7), 8, mm, ml)
    b = F.random_modal(np.random.default_rng(7), 8, mm, ml)
    c = F.random_modal(np.random.default_rng(8), 8, mm, ml)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    inside = (ml >= 1) & (ml <= 10) & (np.abs(mm) <= ml)
    x = np.stack([F.random_modal(np.random.default_rng(s), 8, mm, ml)[:, inside] for s in range(40)], 0)
    x = x.transpose(1, 0, 2).reshape(8, -1)
    r = np.corrcoef(x)
    # Gaussian correlation in level index, length RANDOM_VCORR_LEVELS: exp(-1/4.5) = 0.80 adjacent, 0.41 at 2
    assert abs(r[3, 4] - np.exp(-1 / (2 * F.RANDOM_VCORR_LEVELS ** 2))) < 0.05
    assert abs(r[2, 4] - np.exp(-4 / (2 * F.RANDOM_VCORR_LEVELS ** 2))) < 0.06
    assert abs(r[0, 7]) < 0.1
    white = F.random_modal(np.random.default_rng(1), 8, mm, ml, vcorr=0)
    assert abs(np.corrcoef(white[:, inside])[3, 4]) < 0.15


def test_random_scales_reach_the_target_amplitudes_area_weighted():
    lat = np.linspace(87.5, -87.5, 48)
    rng = np.random.default_rng(2)
    t = rng.standard_normal((8, 48, 96)) * 0.3
    u = rng.standard_normal((8, 48, 96)) * 2.0
    v = rng.standard_normal((8, 48, 96)) * 5.0
    ft, fw = F.random_scales(t, u, v, lat, t_rms=1.5, wind_rms=3.0)
    assert abs(F.area_rms(ft * t, lat) - 1.5) < 1e-12
    assert abs(np.sqrt(0.5 * (F.area_rms(fw * u, lat) ** 2 + F.area_rms(fw * v, lat) ** 2)) - 3.0) < 1e-12
    # area weighting: a field that is large only near the poles has a small area-weighted RMS
    polar = np.zeros((1, 48, 96))
    polar[:, :2] = 1.0
    assert F.area_rms(polar, lat) < 0.5 * np.sqrt(np.mean(polar ** 2)) + 1e-12


def test_band_rmse_splits_the_globe_at_20_degrees():
    lat = np.linspace(87.5, -87.5, 48)
    d = np.zeros((41, 48, 96))
    d[D.VAR_SLICES["u"], lat > 20] = 2.0     # error only in the northern extratropics
    d[D.VAR_SLICES["t"], np.abs(lat) <= 20] = 1.0
    b = SU.band_rmse(d, lat)
    assert b["nh"]["u"] == pytest.approx(2.0) and b["sh"]["u"] == 0.0 and b["tropics"]["u"] == 0.0
    assert b["tropics"]["t"] == pytest.approx(1.0) and b["nh"]["t"] == 0.0
    assert b["global"] == SU.area_rmse(d, lat)
    # the global mean square is the area-weighted mix of the three bands
    w = np.cos(np.radians(lat))
    wn, wt, ws = (w[lat > 20].sum(), w[np.abs(lat) <= 20].sum(), w[lat < -20].sum())
    assert b["global"]["u"] ** 2 == pytest.approx((wn * 4.0) / (wn + wt + ws))
    assert 0 < b["extratropics"]["u"] < 2.0


def test_uniform_networks_are_area_uniform_and_new_in_every_case():
    a = CS.uniform_columns(300, seed=11)
    b = CS.uniform_columns(300, seed=11)
    c = CS.uniform_columns(300, seed=12)
    assert a.shape == (300, 2) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(np.abs(a[:, 0]) <= 80.0) and np.all((a[:, 1] >= 0) & (a[:, 1] < 360))
    big = CS.uniform_columns(20000, seed=3)
    # uniform on the sphere: sin(lat) uniform on [-sin 80, sin 80]; tropics (|lat| <= 20) hold sin20/sin80 = 35 %
    frac = np.mean(np.abs(big[:, 0]) <= 20)
    assert abs(frac - np.sin(np.radians(20)) / np.sin(np.radians(80))) < 0.015
    assert abs(np.mean(big[:, 0] > 0) - 0.5) < 0.015
    # the matrix's networks: new positions per case (seed), different for the uniform and the sparse network
    lat = np.linspace(87.5, -87.5, 48)
    lon = np.arange(96) * 3.75
    sig = np.array([0.025, 0.095, 0.2, 0.34, 0.51, 0.685, 0.835, 0.95])
    x = np.random.default_rng(0).uniform(1e-4, 1e-2, (41, 48, 96))
    x[40] = 1e5
    cols = lambda net, seed: CS.uniform_columns(M.NETWORKS[net][1], seed + M.NETWORKS[net][3])
    assert len(cols("sparse", 1000)) == 100 and len(cols("uniform", 1000)) == 300
    assert not np.array_equal(cols("uniform", 1000), cols("uniform", 1001))
    rows = CS.make_obs(x, lat, lon, sig, cols("sparse", 5), 5, network="sonde")
    assert {r[0] for r in rows} == {"u", "v", "t", "q", "ps"}
    assert sum(r[0] == "ps" for r in rows) == 100


def test_existing_station_network_is_unchanged():
    # the suite's and the shipped sample's fixed land network must not move (cases.py got additions only)
    import hashlib
    lat = np.degrees(np.arcsin(np.polynomial.legendre.leggauss(48)[0]))[::-1]   # the T31 Gaussian latitudes
    st = CS.stations(lat, np.arange(96) * 3.75)
    assert st.shape == (300, 2)
    assert st[0].tolist() == [46.311, 251.052] and st[2].tolist() == [68.525, 321.524]
    assert hashlib.sha256(np.ascontiguousarray(st).tobytes()).hexdigest()[:16] == "82630551dcc7e72f"


def _cell(h, t, l3=0.95):
    r = {m: {v: x for v in M.VARS} for m, x in (("3dvar", t), ("l3dvar", l3), ("hybrid", h))}
    ratios = {b: {m: dict(r[m]) for m in r} for b in M.BANDS}
    return {"ratios": ratios, "wins_vs_3dvar": {"hybrid": sum(h < t for _ in M.VARS), "l3dvar": 0},
            "rejected": {m: [] for m in r}}


def test_gates_pass_and_fail_where_they_should():
    names = ["3dvar", "l3dvar", "hybrid"]
    g = M.cell_gates("uniform", _cell(0.7, 0.8), names)
    assert g["G1 hybrid beats 3dvar on >= 5/6"]["pass"] and g["G1 hybrid beats 3dvar on >= 5/6"]["required"]
    assert g["G2 no latentda method worse than background"]["pass"]
    assert "G3 mass: extratropical wind down >= 10 %" not in g
    g = M.cell_gates("sonde", _cell(0.85, 0.8, l3=1.02), names)
    assert not g["G1 hybrid beats 3dvar on >= 5/6"]["pass"]
    assert not g["G2 no latentda method worse than background"]["pass"]
    assert "l3dvar u" in g["G2 no latentda method worse than background"]["worse"]
    g = M.cell_gates("mass", _cell(0.92, 1.0, l3=0.95), names)
    assert not g["G1 hybrid beats 3dvar on >= 5/6"]["required"]
    assert not g["G3 mass: extratropical wind down >= 10 %"]["pass"]     # best 0.92 > 0.9
    g = M.cell_gates("mass", _cell(0.88, 1.0, l3=0.95), names)
    assert g["G3 mass: extratropical wind down >= 10 %"]["pass"] and g["G0 every analysis succeeds"]["pass"]
    c = _cell(0.7, 0.8)
    c["rejected"]["l3dvar"] = ["case_0610"]
    g = M.cell_gates("sonde", c, names)
    assert not g["G0 every analysis succeeds"]["pass"] and "l3dvar 1 rejected" in g["G0 every analysis succeeds"]["value"]


def test_shipped_bounds_guard_rejects_only_what_the_analysis_moved_out():
    xb = np.full((41, 4, 8), 200.0)
    xb[D.VAR_SLICES["t"]][0, 0, 0] = 121.0
    bounds = {"t": (120.0, 350.0), "ps": (45000.0, 116000.0)}
    xb[40] = 1e5
    xa = xb.copy()
    assert M.shipped_guard(xb, xa, bounds) == []
    xa[D.VAR_SLICES["t"]][0, 0, 0] = 119.5                        # moved out of the bounds: rejected
    assert M.shipped_guard(xb, xa, bounds) == ["t"]
    xb2 = xa.copy()                                                # background already out, analysis moves it in
    xa2 = xb2.copy()
    xa2[D.VAR_SLICES["t"]][0, 0, 0] = 119.8
    assert M.shipped_guard(xb2, xa2, bounds) == []
    xa2[40, 1, 1] = 1.2e5                                          # ps above its upper bound
    assert M.shipped_guard(xb2, xa2, bounds) == ["ps"]


def test_site_bundle_widens_only_the_t_bounds(tmp_path):
    src = tmp_path / "b"
    src.mkdir()
    (src / "bundle.toml").write_text('[bounds]\nt = [120.0, 350.0]\nq = [-0.008, 0.05]\n')
    (src / "encoder.onnx").write_bytes(b"abc")
    out = M.site_bundle(str(src), str(tmp_path / "site"), (100.0, 350.0))
    assert M.bundle_bounds(out) == {"t": (100.0, 350.0), "q": (-0.008, 0.05)}
    assert M.bundle_bounds(str(src))["t"] == (120.0, 350.0)
    enc = tmp_path / "site" / "encoder.onnx"
    assert enc.read_bytes() == b"abc" and not enc.is_symlink()


def test_other_cycle_recipes_keep_c6_times_and_observations(tmp_path, monkeypatch):
    """c6h: the cycle runs the hybrid and its cases live in a folder per bundle; c6a: a 3D-Var cycle sized online. A
    case valid at a c6 case's time gets the c6 case's observations (same seed), so only the background differs."""
    from latentda_train import cycled_cases as CC
    out = tmp_path / "data"
    (out / "nature").mkdir(parents=True)
    x, _ = np.polynomial.legendre.leggauss(48)
    lat = np.degrees(np.arcsin(x))[::-1]
    sigma = [0.025, 0.095, 0.2, 0.34, 0.51, 0.685, 0.835, 0.95]
    (out / "nature" / "grid.json").write_text(json.dumps({"lat": lat.tolist(), "lon": (3.75 * np.arange(96)).tolist(),
                                                          "sigma": sigma}))
    rng = np.random.default_rng(1)
    truth = {c: (rng.standard_normal((41, 48, 96)) + 280.0).astype(np.float32) for c in (13, 18)}
    calls = []

    def fake_cycle(data, folder, network, method, adaptive=False, adaptive_options="", **kw):
        # stands in for the jcm cycle (needs the nature run): the truth of a cycle is the same for every method
        calls.append((folder, network, method, adaptive))
        os.makedirs(folder, exist_ok=True)
        files = []
        for c, xt in truth.items():
            f = os.path.join(folder, f"cycle_{c:04d}.npz")
            np.savez(f, truth=xt, bg=xt + (0.1 if method == "3dvar" else 0.2))
            files.append(f)
        return files

    monkeypatch.setattr(CC, "run", fake_cycle)
    bundles = []
    for k in range(2):
        b = tmp_path / f"bundle{k}"
        b.mkdir()
        (b / "bundle.toml").write_text(f'format_version = 1\nname = "b{k}"\n')
        bundles.append(str(b))
    c6 = M.make_cases(str(out), "c6", [], ["uniform"], log=lambda m: None, bundle=bundles[0])
    h0 = M.make_cases(str(out), "c6h", [], ["uniform"], log=lambda m: None, bundle=bundles[0])
    h1 = M.make_cases(str(out), "c6h", [], ["uniform"], log=lambda m: None, bundle=bundles[1])
    ca = M.make_cases(str(out), "c6a", [], ["uniform"], log=lambda m: None, bundle=bundles[1])
    assert [c[1:] for c in calls] == [("uniform", "3dvar", False), ("uniform", "hybrid", False),
                                      ("uniform", "hybrid", False), ("uniform", "3dvar", True)]
    assert calls[3][0].endswith(os.path.join("matrix", "cycled_adaptive"))   # one folder: 3D-Var's B only
    assert open(os.path.join(ca[1][1], "obs_uniform.csv")).read() == open(os.path.join(c6[1][1], "obs_uniform.csv")).read()
    seen = {}
    monkeypatch.setattr(CC, "run", lambda *a, **kw: seen.update(kw) or fake_cycle(*a, **kw))
    M.make_cases(str(out), "c6hp", [], ["uniform"], log=lambda m: None, bundle=bundles[0])
    assert seen["adaptive"] and "adaptive_per_variable = true" in seen["adaptive_options"]
    assert "q = { alpha = 0.0, beta = 1.0 }" in seen["adaptive_options"] and calls[-1][2] == "hybrid"
    assert calls[-1][0].endswith(f"cycled_hybrid_pv_sq_{SU.bundle_stamp(bundles[0])}")
    stamps = [SU.bundle_stamp(b) for b in bundles]
    assert calls[0][0].endswith(os.path.join("matrix", "cycled"))
    assert calls[1][0].endswith(f"cycled_hybrid_{stamps[0]}") and calls[2][0].endswith(f"cycled_hybrid_{stamps[1]}")
    assert [n for n, _ in c6] == [n for n, _ in h0] == ["case_c0013", "case_c0018"]
    for (_, d6), (_, dh) in zip(c6, h0):
        assert os.path.basename(os.path.dirname(dh)) == f"c6h_{stamps[0]}"
        assert open(os.path.join(d6, "obs_uniform.csv")).read() == open(os.path.join(dh, "obs_uniform.csv")).read()
        b6, bh = CS.read_state(os.path.join(d6, "background.nc")), CS.read_state(os.path.join(dh, "background.nc"))
        assert np.abs(b6 - bh).max() > 0.05
    assert h1[0][1] != h0[0][1]


def test_matrix_compare_counts_wins_gates_and_changes_over_the_common_cells(tmp_path, capsys):
    from latentda_train import matrix_compare as MC

    def cell(h, d, l, net):
        g = {"3dvar": dict.fromkeys(M.VARS, d), "hybrid": dict(h), "l3dvar": dict.fromkeys(M.VARS, l)}
        s = {"ratios": {"global": g}}
        s["gates"] = M.cell_gates(net, {"ratios": {"global": g, "extratropics": g, "nh": g, "sh": g},
                                        "wins_vs_3dvar": {"hybrid": sum(g["hybrid"][v] < d for v in M.VARS)},
                                        "rejected": {"3dvar": [], "hybrid": [], "l3dvar": []}},
                                  ["3dvar", "l3dvar", "hybrid"])
        return s

    good = dict.fromkeys(M.VARS, 0.8)
    bad = dict(good, q=1.05, u=0.95, v=0.95)            # 3 of 6 against 3dvar 0.9; q worse than the background
    base = {"cells": {"c6": {"uniform": cell(bad, 0.9, 0.95, "uniform"), "mass": cell(good, 0.9, 0.95, "mass")}},
            "prior_draw_balance": {"c6": {"N": 0.7, "S": 0.75}}}
    cand = {"cells": {"c6": {"uniform": cell(good, 0.9, 0.95, "uniform")},
                      "c6h": {"uniform": cell(good, 0.9, 0.95, "uniform")}},
            "prior_draw_balance": {"c6": {"N": 0.8, "S": 0.82}}}
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(base))
    pb.write_text(json.dumps(cand))
    keep = [("c6", "uniform")]
    sa, sb = MC.summary(base, keep), MC.summary(cand, keep)
    assert sa["cells hybrid >= 5/6 against 3dvar"] == 0 and sb["cells hybrid >= 5/6 against 3dvar"] == 1
    assert sa["G1 failed"] == "1 of 1" and sb["G1 failed"] == "0 of 1"
    assert sa["G2 failed"] == "1 of 1" and sa["cells hybrid worse than background"] == 1
    assert sb["G2 failed"] == "0 of 1" and sb["cells hybrid worse than background"] == 0
    assert sa["largest latentda ratio (hybrid, l3dvar)"].startswith("1.050 (c6/uniform hybrid q)")
    assert MC.against(base, cand, keep)["cells hybrid better than the first"].startswith("1 of 1")
    MC.main([str(pa), str(pb)])
    printed = capsys.readouterr().out
    assert "| cells | 1 | 1 |" in printed and "0.70-0.70 / 0.75-0.75" in printed


def test_tuned_reports_are_kept_per_executable():
    """Two latentda builds never share the tuned rows' report folders (a run skips an analysis whose report exists,
    so a shared folder would let one build's tuning read the other's reports); one build always gets the same."""
    a = M.tuned_folder("/m", "s", "/x/latentda_a", "c6", "uniform", "hybrid-pv")
    b = M.tuned_folder("/m", "s", "/x/latentda_b", "c6", "uniform", "hybrid-pv")
    assert a != b and a == M.tuned_folder("/m", "s", "/x/latentda_a", "c6", "uniform", "hybrid-pv")
    assert a.startswith("/m/tuned/s/") and a.endswith("/c6/uniform/hybrid-pv")


def test_the_dry_network_is_the_uniform_one_without_humidity():
    """uniform-dry: the uniform network's columns, values and noise, with every q observation left out."""
    lat, lon = np.linspace(87.0, -87.0, 48), np.arange(96) * 3.75
    sig = np.array([0.025, 0.095, 0.2, 0.34, 0.51, 0.685, 0.835, 0.95])
    rng = np.random.default_rng(3)
    truth = np.zeros((41, 48, 96))
    truth[:8] = 10.0 + rng.standard_normal((8, 48, 96))            # u
    truth[8:16] = rng.standard_normal((8, 48, 96))                 # v
    truth[16:24] = (250.0 + 40.0 * sig)[:, None, None]             # t
    truth[24:32] = (5e-3 * sig)[:, None, None]                     # q, wet enough to be observed below 0.34
    truth[40] = 1.0e5
    _, ncol, kind, off = M.NETWORKS["uniform-dry"]
    assert (ncol, off) == M.NETWORKS["uniform"][1::2] and kind == "sonde-dry"
    cols = CS.uniform_columns(ncol, 7 + off)
    wet = M.network_obs(truth, lat, lon, sig, cols, 7 + off, M.NETWORKS["uniform"][2])
    dry = M.network_obs(truth, lat, lon, sig, cols, 7 + off, kind)
    assert any(r[0] == "q" for r in wet) and not any(r[0] == "q" for r in dry)
    assert dry == [r for r in wet if r[0] != "q"]
    assert M.SONDE_COLUMNS["uniform-dry"] == 300
