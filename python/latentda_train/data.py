"""Access to the nature run, forecasts and grid (latentda layout)."""
from __future__ import annotations

import glob
import json
import os

import numpy as np

VARS = [("u", "m s-1", 8, "eastward wind"), ("v", "m s-1", 8, "northward wind"),
        ("t", "K", 8, "air temperature"), ("q", "kg kg-1", 8, "specific humidity"),
        ("z", "m2 s-2", 8, "geopotential"), ("ps", "Pa", 0, "surface pressure")]
VAR_SLICES = {"u": slice(0, 8), "v": slice(8, 16), "t": slice(16, 24), "q": slice(24, 32),
              "z": slice(32, 40), "ps": slice(40, 41)}
STATES_PER_DAY = 4
# Default data folder of every stage: $LATENTDA_DATA, else ./data relative to the working directory.
DEFAULT_OUT = os.environ.get("LATENTDA_DATA", "data")


def grid(out):
    g = json.load(open(os.path.join(out, "nature", "grid.json")))
    # jcm keeps sigma levels in float32 (0.33999999...): use the nominal SPEEDY values; lon exact multiples
    return np.array(g["lat"]), np.round(np.array(g["lon"]), 8), np.round(np.array(g["sigma"]), 6)


def _layout_fix(x, layout):
    from .jcmrun import LEGACY_PERM
    return x if layout >= 2 else np.ascontiguousarray(np.asarray(x)[..., LEGACY_PERM, :, :])


def nature(out, mmap=True):
    files = sorted(glob.glob(os.path.join(out, "nature", "chunk_*.npy")))
    meta = json.load(open(os.path.join(out, "nature", "meta.json")))
    layout = meta.get("layout", 1)
    arrs = [np.load(f, mmap_mode="r" if (mmap and layout >= 2) else None) for f in files]
    x = np.concatenate(arrs) if len(arrs) > 1 else arrs[0]
    return _layout_fix(x, layout)


def truth_index(day: int) -> int:
    """Index in the nature array of 00 UTC of day `day` (days counted after spin-up, day >= 1)."""
    return STATES_PER_DAY * day - 1


def forecasts(out, launches=None):
    """dict launch -> (fc24, fc48) for the available forecast files."""
    res = {}
    for f in sorted(glob.glob(os.path.join(out, "forecasts", "fc_*.npz"))):
        L = int(os.path.basename(f)[3:7])
        if launches is not None and L not in launches:
            continue
        z = np.load(f)
        layout = int(z["layout"]) if "layout" in z.files else 1
        res[L] = (_layout_fix(z["fc24"], layout), _layout_fix(z["fc48"], layout))
    return res


def rmse_per_var(d, w=None):
    """RMSE per variable of a difference array [..., 41, lat, lon], averaged over levels (and samples)."""
    out = {}
    for v, sl in VAR_SLICES.items():
        out[v] = float(np.sqrt(np.mean(np.asarray(d[..., sl, :, :], np.float64) ** 2)))
    return out


def forecast_init_rms(out):
    """RMS of the initial perturbations per variable, over all forecast launches."""
    acc = []
    for f in sorted(glob.glob(os.path.join(out, "forecasts", "fc_*.npz"))):
        acc.append(np.load(f)["init_rms"] ** 2)
    m = np.mean(acc, axis=0)
    return {v: float(np.sqrt(m[sl].mean())) for v, sl in VAR_SLICES.items()}
