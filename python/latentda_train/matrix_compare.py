"""Summary of one or more robustness-matrix results (the JSON files of `latentda-matrix --json`), side by side: the
figures docs/robustness-matrix.md compares candidate bundles by.

    python3 -m latentda_train.matrix_compare BASE.json CANDIDATE.json [...]

Only the cells present in every file are compared (a run with --recipes c6h gives a partial matrix). Per file:
the worst cell (hybrid / 3D-Var, geometric mean over the six variables), the largest latentda ratio against the
background, how many cells each innovation-sized pair wins on >= 5 of 6 variables, the G1 / G2 / G3 gates, the cells
where a method is worse than its background, the prior-draw balance; against the first file, in how many cells each
method's geometric mean is lower.
"""
from __future__ import annotations

import argparse
import json

from .matrix import LATENT, VARS, geomean
# (row, compared against) of the wins lines; a pair missing from a file is skipped
PAIRS = [("hybrid", "3dvar"), ("hybrid-pv", "3dvar-pv"), ("hybrid-pv-sq", "3dvar-pv")]
LATENT_ROWS = ["hybrid", "l3dvar", "hybrid-pv", "hybrid-pv-sq", "l3dvar-pv"]


def load(path):
    return json.load(open(path))


def cells(m):
    """[(recipe, network)] of a matrix result, in its own order."""
    return [(r, n) for r, nets in m["cells"].items() for n in nets]


def ratios(m, r, n):
    """{method: {var: global analysis / background ratio}} of one cell."""
    return m["cells"][r][n]["ratios"]["global"]


def summary(m, keep):
    """The summary figures of one result over the cells `keep`."""
    out = {"cells": len(keep)}
    hv3 = {f"{r}/{n}": geomean(ratios(m, r, n), "hybrid", "3dvar") for r, n in keep}
    c = max(hv3, key=hv3.get)
    out["worst cell (hybrid / 3D-Var)"] = f"{c} {hv3[c]:.3f}"
    wr = max((ratios(m, r, n)[k][v], f"{r}/{n} {k} {v}") for r, n in keep for k in LATENT for v in VARS)
    out["largest latentda ratio (hybrid, l3dvar)"] = f"{wr[0]:.3f} ({wr[1]})"
    for a, b in PAIRS:
        if all(a in ratios(m, r, n) and b in ratios(m, r, n) for r, n in keep):
            w = sum(sum(ratios(m, r, n)[a][v] < ratios(m, r, n)[b][v] for v in VARS) >= 5 for r, n in keep)
            out[f"cells {a} >= 5/6 against {b}"] = w
    g1 = [f"{r}/{n}" for r, n in keep for k, v in m["cells"][r][n]["gates"].items()
          if k.startswith("G1") and v["required"] and not v["pass"]]
    g1n = sum(1 for r, n in keep for k, v in m["cells"][r][n]["gates"].items() if k.startswith("G1") and v["required"])
    out["G1 failed"] = f"{len(g1)} of {g1n}"
    g2 = [f"{r}/{n}" for r, n in keep if not m["cells"][r][n]["gates"]["G2 no latentda method worse than background"]["pass"]]
    out["G2 failed"] = f"{len(g2)} of {len(keep)}"
    g3 = [f"{r}/{n}" for r, n in keep for k, v in m["cells"][r][n]["gates"].items() if k.startswith("G3") and v["pass"]]
    out["G3 met"] = ", ".join(g3) or "none"
    for k in LATENT_ROWS:
        if all(k in ratios(m, r, n) for r, n in keep):
            # strictly above 1: a variable the method leaves unchanged (q static under the mass network) is not worse
            bad = [f"{r}/{n}" for r, n in keep if max(ratios(m, r, n)[k].values()) > 1.0]
            out[f"cells {k} worse than background"] = len(bad)
    pb = m.get("prior_draw_balance", {})
    rs = sorted({r for r, _ in keep} & set(pb))
    if rs:
        out["prior-draw balance NH / SH"] = (f"{min(pb[r]['N'] for r in rs):.2f}-{max(pb[r]['N'] for r in rs):.2f} / "
                                             f"{min(pb[r]['S'] for r in rs):.2f}-{max(pb[r]['S'] for r in rs):.2f}")
    return out


def against(base, m, keep):
    """In how many cells each method's geometric mean (over the variables, analysis / background) is lower in m than
    in base, and the range of the relative change."""
    out = {}
    for k in ["hybrid", "l3dvar", "3dvar", "hybrid-pv", "hybrid-pv-sq"]:
        if not all(k in ratios(base, r, n) and k in ratios(m, r, n) for r, n in keep):
            continue
        d = [geomean(ratios(m, r, n), k) / geomean(ratios(base, r, n), k) - 1.0 for r, n in keep]
        out[f"cells {k} better than the first"] = (f"{sum(x < 0 for x in d)} of {len(d)} "
                                                   f"({100 * min(d):+.1f} to {100 * max(d):+.1f} %)")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="matrix results (latentda-matrix --json); the first is the base")
    ap.add_argument("--cells", action="store_true", help="also print every cell's hybrid-pv-sq / 3dvar-pv and "
                                                           "hybrid / 3dvar geometric means")
    a = ap.parse_args(argv)
    ms = [load(p) for p in a.json]
    keep = [c for c in cells(ms[0]) if all(c[0] in m["cells"] and c[1] in m["cells"][c[0]] for m in ms[1:])]
    if not keep:
        raise SystemExit("no cell is in every file")
    rows = [summary(m, keep) for m in ms]
    for row, m in zip(rows[1:], ms[1:]):
        row.update(against(ms[0], m, keep))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| | " + " | ".join(a.json) + " |")
    print("|---|" + "---|" * len(ms))
    for k in keys:
        print(f"| {k} | " + " | ".join(str(r.get(k, "-")) for r in rows) + " |")
    if a.cells:
        print("\n| cell | " + " | ".join(f"hybrid/3dvar, hybrid-pv-sq/3dvar-pv ({p})" for p in a.json) + " |")
        print("|---|" + "---|" * len(ms))
        for r, n in keep:
            def f(m):
                g = ratios(m, r, n)
                s = f"{geomean(g, 'hybrid', '3dvar'):.3f}"
                if "hybrid-pv-sq" in g and "3dvar-pv" in g:
                    s += f", {geomean(g, 'hybrid-pv-sq', '3dvar-pv'):.3f}"
                return s
            print(f"| {r}/{n} | " + " | ".join(f(m) for m in ms) + " |")


if __name__ == "__main__":
    main()
