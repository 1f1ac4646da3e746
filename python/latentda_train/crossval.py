"""latentda-crossval: choose between B configurations with withheld observations, without truth (issue 20).

The Desroziers statistics size a B (`latentda tune`) but cannot choose its structure: they compare variances, and
the latent and static parts of the hybrid have nearly the same variance profile (docs/robustness-matrix.md, "The
mix cannot be sized per variable from innovations"). Withheld observations can. For every case of a matrix cell the
observation columns are split at random into two halves; each configuration analyses one half and is compared with
the other (`latentda analyse --withheld`), and the other way round, so that every observation is withheld once.
Over a cell's cases and both folds,

    mean d = mean(((O-A)^2 - (O-B)^2) / sigma_o^2)   over the withheld observations

estimates, without truth, how much closer the analysis came to the true state than the background at those points.
Per variable and band class (extratropics, tropics) the configuration with the lowest mean d is chosen; a variable
without withheld observations follows its group's pooled evidence (z: t and ps). A variable whose whole group
is unobserved (the mass network's wind and q) follows all observed variables' pooled evidence; `--cross` makes it
follow cross-variable evidence instead (each observed variable withheld whole, every configuration analyses the
others and is compared with it; tried on the mass cells and not adopted: docs/robustness-matrix.md). The
composite options file takes each variable's weights from its chosen configuration. `--blends F,...` adds
candidates between the sized static B and the sized hybrid with q static, (1 - F) x the weights of one + F x the
other's: the Desroziers sizing keeps each variable's alpha : beta, so only such candidates let the mix itself be
chosen. The truth scores the choice:
the half-network analyses' RMSE ratios of every configuration, the configuration the truth would have chosen, and the
composite's full-network analyses beside every configuration's.

The configurations are the innovation-sized rows of the matrix (`latentda-matrix --tuned-steps 2`): their last
options files, OUT/matrix/tuned/<stamp>/<exe tag>/<recipe>/<network>/<family>/step2.toml (or --options-root).

    latentda-crossval --out DATA --ort --recipes c6,b6 --networks uniform,sonde --blends 0.25,0.5
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys
import tempfile
import time
import zlib
import tomllib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import cases as CS
from . import data as D
from . import matrix as M
from . import suite as SU

# the first (the recommended configuration) is the choice where no withheld observation at all tells (choose)
FAMILIES = "hybrid-pv-sq,hybrid-pv,3dvar-pv"
CLASSES = {"extratropics": ("nh", "sh"), "tropics": ("tropics",)}
VARS = ("u", "v", "t", "q", "z", "ps")
SUMS = ("n", "n_columns", "sum_d", "sum_dc2", "sum_dc_nc", "sum_nc2")


def split_columns(path, seed):
    """The rows of an observation CSV in two halves by column (horizontal position), drawn with `seed`."""
    lines = open(path).read().splitlines()
    head, rows = lines[0], [r for r in lines[1:] if r.strip()]
    pos = lambda r: tuple(r.split(",")[1:3])
    cols = sorted({pos(r) for r in rows})
    held = set(np.random.default_rng(seed).permutation(len(cols))[: len(cols) // 2])
    side = {c: int(k in held) for k, c in enumerate(cols)}
    halves = ([head], [head])
    for r in rows:
        halves[side[pos(r)]].append(r)
    return ["\n".join(h) + "\n" for h in halves]


def class_stats(cells, var, cls):
    """Summed withheld statistics of variable `var` (or of every variable of a tuple, pooled) over the bands of class
    `cls`: (n, mean d, its standard error), the error cluster-robust over columns as in the runtime
    (src/var/withheld.rs)."""
    names = var if isinstance(var, tuple) else (var,)
    s = dict.fromkeys(SUMS, 0.0)
    for c in cells:
        if c["group"] in names and c["band"] in CLASSES[cls]:
            for k in SUMS:
                s[k] += c[k]
    n, ncol = s["n"], s["n_columns"]
    if n == 0:
        return 0, None, None
    m = s["sum_d"] / n
    v = max(s["sum_dc2"] - 2 * m * s["sum_dc_nc"] + m * m * s["sum_nc2"], 0.0) / n ** 2
    se = float(np.sqrt(v * ncol / (ncol - 1))) if ncol > 1 else None
    return int(n), m, se


def class_table(cells):
    """class_stats of every variable and band class of summed cells: {var: {class: (n, mean d, se)}}, what
    `choose` reads per candidate."""
    cells = list(cells)
    return {v: {c: class_stats(cells, v, c) for c in CLASSES} for v in VARS}


GROUPS = {"u": ("u", "v"), "v": ("u", "v"), "t": ("t", "z", "ps"), "z": ("t", "z", "ps"), "ps": ("t", "z", "ps"),
          "q": ("q",)}


def choose(cv, fams, v, cls, cross=None):
    """The family with the lowest mean d for variable `v` in class `cls`, and where the evidence came from: its own
    withheld observations ("own"); without them its group's, pooled (z from t and ps, as the static B's hydrostatic
    z follows t: "group"); without those the cross-variable evidence `cross` when given ({family: summed withheld
    cells of the analyses that predicted each observed variable, withheld whole, from the others}): a variable whose
    whole group is unobserved is analysed through cross-covariances alone, which this scores, and as nothing checks
    it directly the family is chosen by the upper bound mean d + 2 standard errors over all those observations
    ("cross": cross-covariances that do not help beyond their noise lose to a family without them, whose d is 0);
    else all observed variables' ("all"). The candidates were compared on the same withheld observations, so pooling
    weights each variable by its count. No withheld observation at all: the first family."""
    def pooled(members):
        out = []
        for f in fams:
            st = [cv[f][m][cls] for m in members if cv[f][m][cls][1] is not None]
            n = sum(x[0] for x in st)
            if n:
                out.append((sum(x[0] * x[1] for x in st) / n, f))
        return out

    def cross_bound():
        out = []
        for f in fams:
            n, m, se = class_stats(cross[f], VARS, cls)
            if n:
                # one column gives no error estimate: no bound, unless the family adds nothing (d = 0 exactly)
                out.append((m + 2.0 * se if se is not None else (0.0 if m == 0.0 else float("inf")), f))
        return out
    for where, score in (("own", lambda: pooled((v,))), ("group", lambda: pooled(GROUPS.get(v, (v,)))),
                         ("cross", cross_bound if cross is not None else list), ("all", lambda: pooled(VARS))):
        scored = score()
        if scored:
            return min(scored)[1], where
    return fams[0], "none"


def split_variables(path):
    """For each variable observed in an observation CSV: (the file without its rows, its rows alone), as texts, for
    the cross-variable evidence (`choose`)."""
    lines = open(path).read().splitlines()
    head, rows = lines[0], [r for r in lines[1:] if r.strip()]
    names = sorted({r.split(",")[0] for r in rows})
    text = lambda rs: "\n".join([head] + rs) + "\n"
    return {n: (text([r for r in rows if r.split(",")[0] != n]), text([r for r in rows if r.split(",")[0] == n]))
            for n in names}


def unobserved_groups(observed):
    """The variables of VARS whose group (GROUPS) has none of the `observed` variable names: analysed by
    cross-covariances alone."""
    return [v for v in VARS if not set(GROUPS.get(v, (v,))) & set(observed)]


def add_cells(acc, cells):
    """Adds a report's withheld cells into acc {(group, band): sums}."""
    for c in cells:
        a = acc.setdefault((c["group"], c["band"]), {"group": c["group"], "band": c["band"], **dict.fromkeys(SUMS, 0)})
        for k in SUMS:
            a[k] += c[k]


def family_args(family, options):
    """CLI arguments of a tuned family's last step, as latentda-matrix runs it (a blend: its options file alone; a
    scaled family FAM-xF: FAM's arguments with its scaled options file)."""
    family = family.split("-x")[0] if family.split("-x")[0] in M.TUNED else family
    if family not in M.TUNED:
        return ["--options", options]
    _, args0, repeat = M.TUNED[family]
    return (list(args0) if repeat else []) + ["--options", options]


def scaled_options(f, src, path):
    """Options whose hybrid weights (global and per variable) are those of `src` times `f`: the same B structure,
    a smaller (f < 1) increment. A candidate that can give up a part of the B where withheld observations say it
    hurts (f -> 0 leaves the background as it is)."""
    t = tomllib.load(open(src, "rb"))
    keys = ("alpha", "beta", "alpha_tropics", "beta_tropics")
    w = {v: {k: f * t["hybrid_variable_weights"][v][k] for k in keys} for v in VARS}
    g = {k: f * t[k] for k in ("hybrid_alpha", "hybrid_beta")}
    return write_weights(path, [f"{f:g} x {src}"], g, w)


def blend_options(f, static, hybrid, path):
    """Options whose per-variable hybrid weights are (1 - f) x those of `static` + f x those of `hybrid` (both
    innovation-sized, so the blend is sized about as well): a candidate between the static B and the hybrid."""
    ts, th = tomllib.load(open(static, "rb")), tomllib.load(open(hybrid, "rb"))
    keys = ("alpha", "beta", "alpha_tropics", "beta_tropics")
    w = {v: {k: (1 - f) * ts["hybrid_variable_weights"][v][k] + f * th["hybrid_variable_weights"][v][k] for k in keys}
         for v in VARS}
    return write_weights(path, [f"{1 - f:g} x {static}", f"  + {f:g} x {hybrid}"], th, w)


def composite_options(choice, opts_of, path):
    """An options file whose per-variable hybrid weights take each (variable, class) from its chosen family."""
    tables = {f: tomllib.load(open(p, "rb")) for f, p in opts_of.items()}
    any_t = next(iter(tables.values()))
    w = {}
    for v in VARS:
        e = {}
        for cls, keys in (("extratropics", ("alpha", "beta")), ("tropics", ("alpha_tropics", "beta_tropics"))):
            src = tables[choice[v][cls]]["hybrid_variable_weights"][v]
            for k in keys:
                e[k] = src[k]
        w[v] = e
    notes = ["per variable and band class, the weights of the family chosen by withheld observations"]
    notes += [f"{v}: extratropics {choice[v]['extratropics']}, tropics {choice[v]['tropics']}" for v in VARS]
    return write_weights(path, notes, any_t, w)


def write_weights(path, notes, globals_from, w):
    """An options file: comment lines `notes`, the global hybrid weights of the options table `globals_from` and
    the per-variable table `w` {var: {alpha, beta, alpha_tropics, beta_tropics}}. Returns `path`."""
    fmt = lambda d: "{ " + ", ".join(f"{k} = {x:.6f}" for k, x in d.items()) + " }"
    with open(path, "w") as f:
        f.write("".join(f"# latentda-crossval: {n}\n" if k == 0 else f"# {n}\n" for k, n in enumerate(notes)))
        f.write(f"hybrid_alpha = {globals_from['hybrid_alpha']:.6f}\nhybrid_beta = {globals_from['hybrid_beta']:.6f}\n")
        f.write("hybrid_variable_weights = { " + ", ".join(f"{v} = {fmt(w[v])}" for v in VARS) + " }\n")
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(prog="latentda-crossval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=D.DEFAULT_OUT, help="data folder with the matrix cases (DATA/matrix)")
    ap.add_argument("--bundle", default=os.path.join(SU.REPO, "models", "speedy-t31"))
    ap.add_argument("--latentda", default=os.path.join(SU.REPO, "target", "release", "latentda"))
    ap.add_argument("--options-root", default=None,
                    help="folder with <recipe>/<network>/<family>/step2.toml (default: OUT/matrix/tuned/<bundle stamp>, "
                         "where latentda-matrix --tuned-steps writes them; a run's per-executable folder under it "
                         "can be given instead)")
    ap.add_argument("--recipes", default="c6,b6,b24,a48,b48")
    ap.add_argument("--networks", default="uniform,sonde,sparse")
    ap.add_argument("--families", default=FAMILIES)
    ap.add_argument("--blends", default="", help="F,...: also candidates blend-F, (1 - F) x the weights of 3dvar-pv + "
                    "F x those of hybrid-pv-sq, per variable and band")
    ap.add_argument("--scales", default="", help="F,...: also candidates <scale-family>-xF, that family's weights "
                    "times F (the same structure, a smaller increment; F small: about the background)")
    ap.add_argument("--scale-family", default=None, help="the family --scales scales (default: the first of --families)")
    ap.add_argument("--cross", action="store_true",
                    help="cross-variable evidence for a variable whose group has no observation (the mass network's wind "
                         "and q): tried and not adopted (docs/robustness-matrix.md, \"Cross-variable evidence for an "
                         "unobserved variable\"); without it such a variable follows all observed variables' pooled "
                         "evidence")
    ap.add_argument("--base", default="3dvar-pv", help="the summary's reference configuration (wins counted against it)")
    ap.add_argument("--ref", default="hybrid-pv-sq", help="the summary's second reference configuration")
    ap.add_argument("--launches", default="610:720:15")
    ap.add_argument("--ort", action="store_true", help="ONNX Runtime from the onnxruntime wheel")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--json", default=None, help="default OUT/matrix/crossval.json")
    ap.add_argument("--summary", default=None, metavar="JSON", help="print the summary of an earlier run's JSON")
    a = ap.parse_args(argv)
    if a.summary:
        print(summarise(json.load(open(a.summary)), a.base, a.ref))
        return 0
    log = lambda m: print(m, flush=True)
    lat, _, _ = D.grid(a.out)
    extra = ["--backend", "ort", "--ort-library", M.ort_library()] if a.ort else []
    bundle = os.path.abspath(a.bundle)
    stamp = SU.bundle_stamp(bundle)
    root = a.options_root or os.path.join(a.out, "matrix", "tuned", stamp)
    base_fams = a.families.split(",")
    blends = [float(x) for x in a.blends.split(",") if x]
    if blends and not {"3dvar-pv", "hybrid-pv-sq"} <= set(base_fams):
        raise SystemExit("--blends needs the families 3dvar-pv and hybrid-pv-sq")
    scales = [float(x) for x in a.scales.split(",") if x]
    scale_family = a.scale_family or base_fams[0]
    if scales and scale_family not in base_fams:
        raise SystemExit(f"--scale-family {scale_family} is not among --families {a.families}")
    fams = base_fams + [f"blend-{bf:g}" for bf in blends] + [f"{scale_family}-x{f:g}" for f in scales]
    if {a.base, a.ref} - set(fams):
        raise SystemExit(f"--base {a.base} and --ref {a.ref} must be among the candidates {fams}")
    from .forecasts import launch_days
    launches = launch_days(a.launches)
    work = os.path.join(a.out, "matrix", "crossval")
    result = {"command": "latentda-crossval " + " ".join(argv if argv is not None else sys.argv[1:]), "bundle": bundle, "cells": {}}
    t0 = time.time()

    cache_path = os.path.join(work, "cache.json")
    cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}

    def task_key(task):
        """The analysis' inputs: case, observation files' and options files' contents, arguments, executable."""
        d, obs, held, args, _ = task
        h = hashlib.sha256()
        for x in [d, a.latentda, bundle, *args, *extra]:
            h.update(x.encode() + b"\0")
            if x.endswith(".toml") and os.path.exists(x):
                h.update(open(x, "rb").read())
        for f in (os.path.join(d, obs), held):
            if f:
                h.update(open(f, "rb").read())
        return h.hexdigest()

    def analyse(task):
        k = task_key(task)
        if k in cache:
            return cache[k]
        res = analyse_now(task)
        cache[k] = res
        return res

    def analyse_now(task):
        d, obs, held, args, report_to = task
        with M.NC_LOCK:
            xt, xb = CS.read_state(os.path.join(d, "truth.nc")), CS.read_state(os.path.join(d, "background.nc"))
        with tempfile.TemporaryDirectory() as tmp:
            wargs = ["--withheld", held] if held else []
            xa, rep, _ = M.run_cli_retry(a.latentda, bundle, d, obs, "hybrid", args + wargs + extra, tmp, log=log)
        rb, ra = SU.band_rmse(xb - xt, lat), SU.band_rmse(xa - xt, lat)
        ratio = {b: {v: ra[b][v] / rb[b][v] for v in VARS} for b in ("global", "extratropics", "tropics")}
        return {"ratio": ratio, "withheld": (rep.get("withheld") or {}).get("cells", [])}

    for r in a.recipes.split(","):
        for net in a.networks.split(","):
            opts = {f: os.path.join(root, r, net, f, "step2.toml") for f in base_fams}
            missing = [p for p in opts.values() if not os.path.exists(p)]
            if missing:
                raise SystemExit(f"no tuned options for {r}/{net}: {missing[0]} (run latentda-matrix --tuned-steps 2 "
                                 f"--tuned-families {a.families})")
            cases = M.make_cases(a.out, r, launches, [net], log, bundle=bundle)
            cdir = os.path.join(work, r, net)
            os.makedirs(cdir, exist_ok=True)
            for bf in blends:
                opts[f"blend-{bf:g}"] = blend_options(bf, opts["3dvar-pv"], opts["hybrid-pv-sq"],
                                                      os.path.join(cdir, f"blend-{bf:g}.toml"))
            for f in scales:
                name = f"{scale_family}-x{f:g}"
                opts[name] = scaled_options(f, opts[scale_family], os.path.join(cdir, f"{name}.toml"))
            tasks, keys = [], []
            for cname, d in cases:
                seed = a.seed + zlib.crc32(cname.encode()) % 100000
                halves = split_columns(os.path.join(d, M.NETWORKS[net][0]), seed)
                paths = []
                for k, h in enumerate(halves):
                    p = os.path.join(cdir, cname, f"half{k}.csv")
                    os.makedirs(os.path.dirname(p), exist_ok=True)
                    open(p, "w").write(h)
                    paths.append(p)
                for f in fams:
                    for k in (0, 1):
                        tasks.append((d, paths[k], paths[1 - k], M.RECIPE_ARGS.get(r, []) + family_args(f, opts[f]),
                                      None))
                        keys.append((f, "fold", cname, k))
                # a network that leaves a variable group unobserved: cross-variable evidence for it (`choose`)
                per_var = split_variables(os.path.join(d, M.NETWORKS[net][0])) if a.cross else {}
                if len(per_var) >= 2 and unobserved_groups(per_var):
                    for var, texts in per_var.items():
                        vp = [os.path.join(cdir, cname, f"{kind}_{var}.csv") for kind in ("without", "only")]
                        for p_, t_ in zip(vp, texts):
                            open(p_, "w").write(t_)
                        for f in fams:
                            tasks.append((d, vp[0], vp[1], M.RECIPE_ARGS.get(r, []) + family_args(f, opts[f]), None))
                            keys.append((f, "cross", cname, var))
            with ThreadPoolExecutor(max_workers=a.jobs) as ex:
                out = list(ex.map(analyse, tasks))
            cell = {"families": fams, "cv": {}, "truth_half": {}, "choice_cv": {}, "choice_truth": {}}
            has_cross = any(kind == "cross" for _, kind, _, _ in keys)
            if has_cross:
                cell["cross"] = {}
            for f in fams:
                acc, xacc, ratios = {}, {}, []
                for (kf, kind, _, _), o in zip(keys, out):
                    if kf == f and kind == "fold":
                        add_cells(acc, o["withheld"])
                        ratios.append(o["ratio"])
                    elif kf == f:
                        add_cells(xacc, o["withheld"])
                cell["cv"][f] = class_table(acc.values())
                if has_cross:
                    cell["cross"][f] = list(xacc.values())
                cell["truth_half"][f] = {b: {v: float(np.mean([x[b][v] for x in ratios])) for v in VARS}
                                         for b in ("global", "extratropics", "tropics")}
            for v in VARS:
                cell["choice_cv"][v], cell["choice_truth"][v] = {}, {}
                cell.setdefault("choice_from", {})[v] = {}
                for c in CLASSES:
                    cell["choice_cv"][v][c], cell["choice_from"][v][c] = choose(cell["cv"], fams, v, c, cell.get("cross"))
                    cell["choice_truth"][v][c] = min((cell["truth_half"][f][c][v], f) for f in fams)[1]
            comp = composite_options(cell["choice_cv"], opts, os.path.join(cdir, "composite.toml"))
            full = [(d, M.NETWORKS[net][0], None, M.RECIPE_ARGS.get(r, []) + fa, None)
                    for fa in [family_args(f, opts[f]) for f in fams] + [["--options", comp]] for _, d in cases]
            with ThreadPoolExecutor(max_workers=a.jobs) as ex:
                fo = list(ex.map(analyse, full))
            nc = len(cases)
            cell["truth_full"] = {name: {v: float(np.mean([o["ratio"]["global"][v] for o in fo[i * nc:(i + 1) * nc]]))
                                         for v in VARS} for i, name in enumerate(fams + ["cv-composite"])}
            result["cells"][f"{r}/{net}"] = cell
            log(f"{r}/{net}: {len(tasks) + len(full)} analyses, {time.time() - t0:.0f}s so far")
            print(cell_table(r, net, cell), flush=True)
            path = a.json or os.path.join(a.out, "matrix", "crossval.json")
            json.dump(result, open(path, "w"), indent=1)
            json.dump(cache, open(cache_path + ".tmp", "w"))
            os.replace(cache_path + ".tmp", cache_path)
    print(summarise(result, a.base, a.ref), flush=True)
    return 0


def wins_ties(a, b, tie):
    """Variables whose ratio in `a` is lower than in `b` by more than the relative `tie`, and those within it."""
    return (sum(a[v] < b[v] * (1 - tie) for v in VARS), sum(abs(a[v] - b[v]) <= tie * b[v] for v in VARS))


def summarise(result, base="3dvar-pv", ref="hybrid-pv-sq", tie=0.001):
    """Markdown summary over the cells: per cell the composite's wins against `base` and `ref` (strict, and within
    a relative `tie`), its worst ratio, and how often withheld observations chose what the truth would have (over
    the observed variables' (variable, class) pairs), with the truth's cost of the differing choices."""
    out = ["| cell | composite vs " + base + " (wins / ties) | vs " + ref + " | worst ratio: composite, " + ref +
           ", hybrid-pv | choices as the truth's | cost of the others (half-network ratio) |", "|---|---|---|---|---|---|"]
    tot = {"agree": 0, "pairs": 0, "worse_bg": 0, "cells": 0, "ge5": 0, "ge5_ties": 0}
    for name, c in result["cells"].items():
        f = c["truth_full"]
        comp = f["cv-composite"]

        wb, tb = wins_ties(comp, f[base], tie)
        wr, tr = wins_ties(comp, f[ref], tie)
        agree = pairs = 0
        cost = []
        for v in VARS:
            for cl in CLASSES:
                if all(c["cv"][fam][v][cl][1] is None for fam in c["families"]):
                    continue
                pairs += 1
                ch, tr_ch = c["choice_cv"][v][cl], c["choice_truth"][v][cl]
                agree += ch == tr_ch
                if ch != tr_ch:
                    cost.append(f"{v} {cl[:5]} {c['truth_half'][ch][cl][v] / c['truth_half'][tr_ch][cl][v] - 1:+.1%}")
        worst = lambda row: max((row[v], v) for v in VARS)
        wc, wq, wh = worst(comp), worst(f[ref]), worst(f["hybrid-pv"]) if "hybrid-pv" in f else (float("nan"), "-")
        out.append(f"| {name} | {wb} / {tb} | {wr} / {tr} | {wc[0]:.3f} {wc[1]}, {wq[0]:.3f} {wq[1]}, {wh[0]:.3f} "
                   f"{wh[1]} | {agree} of {pairs} | {'; '.join(cost) or '-'} |")
        tot["agree"] += agree
        tot["pairs"] += pairs
        tot["cells"] += 1
        tot["worse_bg"] += wc[0] > 1
        tot["ge5"] += wb >= 5
        tot["ge5_ties"] += wb + tb >= 5
    out += ["", f"{tot['cells']} cells: choices as the truth's in {tot['agree']} of {tot['pairs']} (variable, class) "
            f"pairs; the composite beats {base} on >= 5 of 6 in {tot['ge5']} cells ({tot['ge5_ties']} counting ties "
            f"within {tie:.1%}); worse than the background on some variable in {tot['worse_bg']} cells."]
    out += ["", configuration_table(result, base, ref, tie)]
    return "\n".join(out)


def configuration_table(result, base="3dvar-pv", ref="hybrid-pv-sq", tie=0.001):
    """Markdown: per configuration (every candidate and the composite) over the cells, full network, global ratios:
    cells beating `base` on >= 5 of 6 (all cells, and those with >= 100 sonde columns, i.e. not the mass network;
    ties within `tie` counted in brackets), cells worse than the background on some variable, the largest ratio,
    and the geometric mean over the variables against `base` (mean over the cells, worst cell); then how often the
    composite beats `ref` and the best single candidate."""
    cells = result["cells"]
    names = list(next(iter(cells.values()))["truth_full"])
    geo = lambda row, b: float(np.exp(np.mean([np.log(row[v] / b[v]) for v in VARS])))
    out = [f"| configuration | >= 5 of 6 against {base}: all cells (ties counted) | of them with >= 100 sonde columns "
           "| worse than the background | largest ratio | geometric mean / " + base + ": mean, worst cell |",
           "|---|---|---|---|---|---|"]
    for n in names:
        ge5 = ge5t = ge5s = ge5st = worse = 0
        gm, mx = [], []
        for key, c in cells.items():
            a, b = c["truth_full"][n], c["truth_full"][base]
            w, t = wins_ties(a, b, tie)
            sonde = not key.endswith("/mass")
            ge5 += w >= 5
            ge5t += w + t >= 5
            ge5s += sonde and w >= 5
            ge5st += sonde and w + t >= 5
            worse += max(a.values()) > 1 + 1e-9
            gm.append(geo(a, b))
            mx.append(max(a.values()))
        ns = sum(not k.endswith("/mass") for k in cells)
        out.append(f"| {n} | {ge5} ({ge5t}) of {len(cells)} | {ge5s} ({ge5st}) of {ns} | {worse} | {max(mx):.3f} | "
                   f"{np.mean(gm):.3f}, {max(gm):.3f} |")
    g = {k: {n: float(np.exp(np.mean([np.log(c["truth_full"][n][v]) for v in VARS]))) for n in names}
         for k, c in cells.items()}
    singles = [n for n in names if n != "cv-composite"]
    better_ref = sum(x["cv-composite"] < x[ref] for x in g.values())
    better_best = sum(x["cv-composite"] < min(x[n] for n in singles) for x in g.values())
    out += ["", f"The composite's geometric mean over the variables is lower than {ref}'s in {better_ref} of "
            f"{len(cells)} cells and lower than the best single candidate's (which only the truth could pick) in "
            f"{better_best}."]
    return "\n".join(out)


def cell_table(r, net, cell):
    """Markdown: per variable, mean d per family and class, the chosen and the truth's choice; full-network
    ratios."""
    fams = cell["families"]
    out = [f"### {r} / {net}", "", "| var | class | " + " | ".join(f"mean d {f}" for f in fams) +
           " | chosen | truth's choice | " + " | ".join(f"half ratio {f}" for f in fams) + " |",
           "|" + "---|" * (4 + 2 * len(fams))]
    for v in VARS:
        for c in CLASSES:
            ds = [cell["cv"][f][v][c] for f in fams]
            fd = lambda x: "-" if x[1] is None else f"{x[1]:+.3f} ({2 * x[2]:.3f})" if x[2] else f"{x[1]:+.3f}"
            out.append(f"| {v} | {c} | " + " | ".join(fd(x) for x in ds) + f" | {cell['choice_cv'][v][c]} | "
                       f"{cell['choice_truth'][v][c]} | " +
                       " | ".join(f"{cell['truth_half'][f][c][v]:.3f}" for f in fams) + " |")
    if "cross" in cell:
        fd = lambda x: "-" if x[1] is None else f"{x[1]:+.4f} ({2 * x[2]:.4f})" if x[2] is not None else f"{x[1]:+.4f}"
        out += ["", "Cross-variable evidence (each observed variable withheld whole, predicted from the others), mean d "
                "(2 se), pooled: " + "; ".join(f"{f} " + " ".join(f"{c[:5]} {fd(class_stats(cell['cross'][f], VARS, c))}"
                                                                 for c in CLASSES) for f in fams)]
    out += ["", "Full network, global ratio: " + "; ".join(
        f"{n} " + " ".join(f"{cell['truth_full'][n][v]:.3f}" for v in VARS) for n in cell["truth_full"]), ""]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
