"""Run the latentda CLI on analysis cases (sample + validation cases) with L3DVar and the model-space 3D-Var,
and tabulate the RMSE against the truth per variable (the numbers of the model card's analysis table).

    latentda-evaluate --bundle models/speedy-t31 --cases models/speedy-t31/sample /work/data/cases/case_*
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile

import numpy as np

from . import cases as CS
from . import data as D
from .modelcard import UNITS

VARS = list(D.VAR_SLICES)


def run_case(latentda, bundle, case, method, tmp, extra):
    out = os.path.join(tmp, f"{os.path.basename(case.rstrip('/'))}_{method}.nc")
    rep = out[:-3] + ".json"
    cmd = [latentda, "analyse", "--bundle", bundle, "--method", method, "--background",
           os.path.join(case, "background.nc"), "--obs", os.path.join(case, "obs.csv"), "--output", out,
           "--report", rep, *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    s = json.load(open(rep))["solver"]
    return CS.read_state(out), s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--cases", nargs="+", required=True, help="folders with truth.nc, background.nc, obs.csv")
    ap.add_argument("--latentda", default=os.path.join(os.path.dirname(__file__), "..", "..", "target", "release",
                                                       "latentda"))
    ap.add_argument("--var3d-max-inner", default="150", help="CG iterations of the 3D-Var baseline (so it converges)")
    ap.add_argument("--l3dvar-args", default="", help="extra CLI options of the L3DVar runs (e.g. '--max-inner 100')")
    ap.add_argument("--json", default=None, help="write the table as JSON here")
    ap.add_argument("--update-card", action="store_true",
                    help="write the tables into the bundle's README.md (section 'Analyses')")
    a = ap.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in a.cases:
            xt = CS.read_state(os.path.join(case, "truth.nc"))
            xb = CS.read_state(os.path.join(case, "background.nc"))
            xl, sl = run_case(a.latentda, a.bundle, case, "l3dvar", tmp, a.l3dvar_args.split())
            xv, sv = run_case(a.latentda, a.bundle, case, "3dvar", tmp, ["--max-inner", a.var3d_max_inner])
            r = {k: D.rmse_per_var((x - xt)[None]) for k, x in (("background", xb), ("3dvar", xv), ("l3dvar", xl))}
            r["l3dvar_solver"] = {k: sl[k] for k in ("inner_total", "grad_reduction")}
            r["3dvar_solver"] = {k: sv[k] for k in ("inner_total", "grad_reduction")}
            rows[case] = r
            print(f"{case}: " + "  ".join(f"{v} {r['background'][v]:.4g}/{r['3dvar'][v]:.4g}/{r['l3dvar'][v]:.4g}"
                                          for v in VARS)
                  + f"  (bg/3dvar/l3dvar; L3DVar |g| reduced {1 / sl['grad_reduction']:.3g}x in {sl['inner_total']}"
                    " TL/AD pairs)", flush=True)
    print("\nmean over cases of RMSE / background RMSE (lower is better):")
    print("| variable | 3D-Var | L3DVar | L3DVar better on |")
    print("|---|---|---|---|")
    summary = {}
    for v in VARS:
        rv = np.array([r["3dvar"][v] / r["background"][v] for r in rows.values()])
        rl = np.array([r["l3dvar"][v] / r["background"][v] for r in rows.values()])
        summary[v] = {"3dvar": float(rv.mean()), "l3dvar": float(rl.mean()), "l3dvar_wins": int((rl < rv).sum())}
        print(f"| {v} | {rv.mean():.3f} | {rl.mean():.3f} | {int((rl < rv).sum())} of {len(rl)} cases |")
    if a.json:
        json.dump({"cases": rows, "summary": summary}, open(a.json, "w"), indent=1)
    if a.update_card:
        update_card(a.bundle, rows, summary, a.l3dvar_args)


def _f(x):
    return f"{x:.5g}" if abs(x) >= 1e-3 else f"{x:.4e}"


def update_card(bundle, rows, summary, l3dvar_args=""):
    """Replace the '## Analyses' section of the bundle's README.md with the tables of this evaluation."""
    first = next(iter(rows))
    r = rows[first]
    L = ["## Analyses (latentda runtime)", "",
         "`latentda-evaluate --bundle <bundle> --cases <bundle>/sample <data>/cases/case_*"
         + (f" --l3dvar-args '{l3dvar_args}'" if l3dvar_args else "") + "` (tract backend;",
         f"L3DVar with {('options ' + repr(l3dvar_args)) if l3dvar_args else 'default options'}; the 3D-Var baseline with "
         "`--max-inner 150` so that it converges). RMSE against the truth on the",
         f"first case (`{os.path.basename(first.rstrip('/'))}`):", "",
         "| variable | background | 3D-Var (static B) | L3DVar (this bundle) |", "|---|---|---|---|"]
    for v in VARS:
        b, x, l_ = r["background"][v], r["3dvar"][v], r["l3dvar"][v]
        L.append(f"| {v} ({UNITS[v]}{', not observed' if v == 'z' else ''}) | {_f(b)} | "
                 + (f"**{_f(x)}** | {_f(l_)} |" if x < l_ else f"{_f(x)} | **{_f(l_)}** |"))
    s = r["l3dvar_solver"]
    L += ["", f"L3DVar on this case: |grad J| reduced {1 / s['grad_reduction']:.3g}-fold in {s['inner_total']} TL/AD pairs.",
          "", f"All {len(rows)} cases (sample + validation cases), mean of RMSE / background RMSE:", "",
          "| variable | 3D-Var | L3DVar | L3DVar better than 3D-Var on |", "|---|---|---|---|"]
    for v in VARS:
        m = summary[v]
        L.append(f"| {v} | {m['3dvar']:.3f} | {m['l3dvar']:.3f} | {m['l3dvar_wins']} of {len(rows)} cases |")
    L.append("")
    path = os.path.join(bundle, "README.md")
    text = open(path).read()
    sec = "\n".join(L) + "\n"
    if "## Analyses" in text:
        i = text.index("## Analyses")
        j = text.find("\n## ", i + 1)
        text = text[:i] + sec + (text[j + 1:] if j >= 0 else "")
    else:
        i = text.find("## Why this architecture")
        i = i if i >= 0 else text.find("## Known limitations")
        text = text[:i] + sec + "\n" + text[i:] if i >= 0 else text + "\n" + sec
    open(path, "w").write(text)


if __name__ == "__main__":
    main()
