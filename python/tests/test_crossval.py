"""latentda-crossval's pieces that need neither jcm nor latentda: the column split, the summed withheld statistics
(the runtime's formula, src/var/withheld.rs) and the composite options file."""
import tomllib

import numpy as np
import pytest

from latentda_train import crossval as X


def test_split_is_by_column_disjoint_complete_and_deterministic(tmp_path):
    p = tmp_path / "obs.csv"
    rows = [f"t,{lat:.3f},{lon:.3f},{lev},250,1" for lat in (10.0, 20.0, 30.0) for lon in (0.0, 90.0, 180.0, 270.0)
            for lev in (0.3, 0.7)]
    p.write_text("var,lat,lon,level,value,sigma\n" + "\n".join(rows) + "\n")
    a, b = X.split_columns(p, 7)
    ra, rb = a.splitlines()[1:], b.splitlines()[1:]
    assert sorted(ra + rb) == sorted(rows)
    cols = lambda rs: {tuple(r.split(",")[1:3]) for r in rs}
    assert not cols(ra) & cols(rb)
    assert len(cols(ra)) == len(cols(rb)) == 6          # half of 12 columns each, every level with its column
    assert all(len([r for r in ra if tuple(r.split(",")[1:3]) == c]) == 2 for c in cols(ra))
    assert X.split_columns(p, 7) == [a, b] and X.split_columns(p, 8) != [a, b]


def cell(group, band, ds_by_column):
    """A report cell built from per-column lists of d values, as the runtime sums them."""
    d = [x for col in ds_by_column for x in col]
    dc = [sum(c) for c in ds_by_column]
    nc = [len(c) for c in ds_by_column]
    return {"group": group, "band": band, "n": len(d), "n_columns": len(ds_by_column), "sum_d": sum(d),
            "sum_dc2": sum(x * x for x in dc), "sum_dc_nc": sum(x * n for x, n in zip(dc, nc)),
            "sum_nc2": sum(n * n for n in nc)}


def test_class_stats_sums_the_bands_of_a_class_with_the_cluster_robust_error():
    nh = [[-1.0, -0.5], [0.2], [-0.3, -0.1, 0.0]]
    sh = [[-2.0], [0.5, 0.1]]
    cells = [cell("t", "nh", nh), cell("t", "sh", sh), cell("t", "tropics", [[9.0]]), cell("u", "nh", [[5.0]])]
    acc = {}
    X.add_cells(acc, cells)
    X.add_cells(acc, [cell("t", "nh", [[-0.4]])])        # a second case: another column
    n, m, se = X.class_stats(acc.values(), "t", "extratropics")
    cols = nh + sh + [[-0.4]]
    d = [x for c in cols for x in c]
    assert n == len(d) and m == pytest.approx(np.mean(d))
    k = len(cols)
    want = np.sqrt(k / (k - 1) * sum((sum(c) - len(c) * m) ** 2 for c in cols) / len(d) ** 2)
    assert se == pytest.approx(want)
    assert X.class_stats(acc.values(), "t", "tropics")[:2] == (1, 9.0)
    assert X.class_stats(acc.values(), "t", "tropics")[2] is None   # one column: no error estimate
    assert X.class_stats(acc.values(), "q", "tropics") == (0, None, None)


def test_composite_takes_each_variable_and_class_from_its_chosen_family(tmp_path):
    def opts(name, scale):
        w = ", ".join(f"{v} = {{ alpha = {scale:.1f}, beta = {scale / 10:.2f}, alpha_tropics = {scale + 1:.1f}, "
                      f"beta_tropics = {scale / 10 + 1:.2f} }}" for v in X.VARS)
        p = tmp_path / f"{name}.toml"
        p.write_text(f"hybrid_alpha = 0.5\nhybrid_beta = 0.2\nhybrid_variable_weights = {{ {w} }}\n")
        return str(p)
    paths = {"A": opts("A", 1.0), "B": opts("B", 2.0)}
    choice = {v: {"extratropics": "A", "tropics": "A"} for v in X.VARS}
    choice["q"] = {"extratropics": "B", "tropics": "A"}
    choice["ps"] = {"extratropics": "A", "tropics": "B"}
    t = tomllib.load(open(X.composite_options(choice, paths, tmp_path / "c.toml"), "rb"))
    w = t["hybrid_variable_weights"]
    assert w["q"]["alpha"] == 2.0 and w["q"]["beta"] == pytest.approx(0.2) and w["q"]["alpha_tropics"] == 2.0
    assert w["ps"]["alpha"] == 1.0 and w["ps"]["alpha_tropics"] == 3.0 and w["ps"]["beta_tropics"] == pytest.approx(1.2)
    assert w["u"] == {"alpha": 1.0, "beta": pytest.approx(0.1), "alpha_tropics": 2.0, "beta_tropics": pytest.approx(1.1)}
    assert t["hybrid_alpha"] == 0.5


def test_blend_is_the_convex_combination_of_the_two_weight_tables(tmp_path):
    def opts(name, a, b):
        w = ", ".join(f"{v} = {{ alpha = {a}, beta = {b}, alpha_tropics = {2 * a}, beta_tropics = {2 * b} }}"
                      for v in X.VARS)
        p = tmp_path / f"{name}.toml"
        p.write_text(f"hybrid_alpha = 0.7\nhybrid_beta = 0.3\nhybrid_variable_weights = {{ {w} }}\n")
        return str(p)
    st, hy = opts("static", 0.0, 0.4), opts("hybrid", 0.8, 0.2)
    for f, (a, b) in [(0.0, (0.0, 0.4)), (1.0, (0.8, 0.2)), (0.25, (0.2, 0.35))]:
        t = tomllib.load(open(X.blend_options(f, st, hy, tmp_path / f"b{f}.toml"), "rb"))
        for v in X.VARS:
            w = t["hybrid_variable_weights"][v]
            assert w["alpha"] == pytest.approx(a) and w["beta"] == pytest.approx(b)
            assert w["alpha_tropics"] == pytest.approx(2 * a) and w["beta_tropics"] == pytest.approx(2 * b)
    assert X.family_args("blend-0.25", "x.toml") == ["--options", "x.toml"]
    assert X.family_args("3dvar-pv", "x.toml")[-2:] == ["--options", "x.toml"]
    # a scaled family: every weight times F, run with its family's arguments
    t = tomllib.load(open(X.scaled_options(0.25, hy, tmp_path / "s.toml"), "rb"))
    assert t["hybrid_alpha"] == pytest.approx(0.175) and t["hybrid_beta"] == pytest.approx(0.075)
    for v in X.VARS:
        w = t["hybrid_variable_weights"][v]
        assert (w["alpha"], w["beta"], w["alpha_tropics"]) == (pytest.approx(0.2), pytest.approx(0.05), pytest.approx(0.4))
    assert X.family_args("l3dvar-pv-x0.25", "s.toml") == X.family_args("l3dvar-pv", "s.toml")
    assert X.family_args("l3dvar-pv", "s.toml")[:4] == ["--hybrid-alpha", "1", "--hybrid-beta", "0"]


def test_a_variable_without_withheld_observations_follows_its_group_then_all():
    # cv[f][v][cls] = (n, mean d, se); z and the wind unobserved
    none = (0, None, None)
    cv = {"A": {"u": none, "v": none, "t": (100, -1.0, 0.1), "q": (50, -0.1, 0.1), "z": none, "ps": (10, -2.0, 0.5)},
          "B": {"u": none, "v": none, "t": (100, -1.2, 0.1), "q": (50, 0.5, 0.1), "z": none, "ps": (10, -1.0, 0.5)}}
    cv = {f: {v: {c: x for c in X.CLASSES} for v, x in t.items()} for f, t in cv.items()}
    fams = ["A", "B"]
    assert X.choose(cv, fams, "t", "tropics") == ("B", "own")
    assert X.choose(cv, fams, "q", "tropics") == ("A", "own")
    # z: t and ps pooled by count: A (100 x -1 + 10 x -2) / 110 = -1.09, B (-120 - 10) / 110 = -1.18
    assert X.choose(cv, fams, "z", "extratropics") == ("B", "group")
    # u: no wind observations: all variables pooled: A (-100 - 5 - 20) / 160, B (-120 + 25 - 10) / 160
    assert X.choose(cv, fams, "u", "tropics") == ("A", "all")
    empty = {f: {v: {c: none for c in X.CLASSES} for v in X.VARS} for f in fams}
    assert X.choose(empty, fams, "u", "tropics") == ("A", "none")


def test_an_unobserved_group_follows_the_cross_variable_evidence(tmp_path):
    # the mass network: t and ps observed, the wind and q not
    p = tmp_path / "obs.csv"
    p.write_text("var,lat,lon,level,value,sigma\nt,10,0,0.5,250,1\nt,10,0,0.9,280,1\nps,20,30,,100000,100\n")
    sv = X.split_variables(p)
    assert X.unobserved_groups(sv) == ["u", "v", "q"]
    assert sorted(sv) == ["ps", "t"]
    without_t, only_t = sv["t"]
    assert without_t.splitlines() == ["var,lat,lon,level,value,sigma", "ps,20,30,,100000,100"]
    assert [r.split(",")[0] for r in only_t.splitlines()[1:]] == ["t", "t"]
    none = (0, None, None)
    # own withheld evidence: B is better on t and ps (univariate skill) ...
    cv = {"A": {"u": none, "v": none, "t": (100, -1.0, 0.1), "q": none, "z": none, "ps": (10, -2.0, 0.5)},
          "B": {"u": none, "v": none, "t": (100, -1.5, 0.1), "q": none, "z": none, "ps": (10, -2.5, 0.5)}}
    wrap = lambda t: {f: {v: {c: x for c in X.CLASSES} for v, x in r.items()} for f, r in t.items()}
    cv = wrap(cv)
    fams = ["A", "B", "C"]
    cv["C"] = cv["B"]
    # ... and predicting t from ps alone and ps from t alone (summed withheld cells, per column): A has no
    # cross-covariances (d = 0), B's hurt, C's help by less than their noise in the tropics and clearly in the
    # extratropics
    zero = [[0.0, 0.0]] * 6
    cross = {"A": [cell("t", "nh", zero), cell("ps", "tropics", [[0.0]] * 4)],
             "B": [cell("t", "nh", [[0.3, 0.2]] * 6), cell("ps", "tropics", [[0.1]] * 4)],
             "C": [cell("t", "nh", [[-0.3, -0.2], [-0.2, -0.4]] * 3), cell("ps", "tropics", [[-0.5], [0.4], [-0.3], [0.3]])]}
    assert X.choose(cv, fams, "u", "extratropics") == ("B", "all")             # without cross evidence
    assert X.choose(cv, fams, "u", "extratropics", cross) == ("C", "cross")
    assert X.choose(cv, fams, "u", "tropics", cross) == ("A", "cross")         # C's mean -0.025, but 2 se = 0.44
    assert X.choose(cv, fams, "q", "tropics", cross) == ("A", "cross")
    # observed variables and z (its group observed) keep their own or group evidence
    assert X.choose(cv, fams, "t", "tropics", cross) == ("B", "own")
    assert X.choose(cv, fams, "z", "tropics", cross) == ("B", "group")
    # pooled statistics over several variables: the counts add
    n, m, se = X.class_stats(cross["C"], ("t", "ps"), "tropics")
    assert (n, m) == (4, pytest.approx(-0.025)) and se > 0.2
    # one column gives no standard error: no bound for a family that changes something, d = 0 still counts
    one = {"A": [cell("t", "nh", [[0.0]])], "B": [cell("t", "nh", [[-0.5]])], "C": [cell("t", "nh", [[0.2]])]}
    assert X.choose(cv, fams, "u", "extratropics", one) == ("A", "cross")
