#!/usr/bin/env python3
"""Compares analyses bit for bit (used by scripts/mpi_check.sh).

    mpi_compare.py fields BUNDLE REFERENCE.nc RUN.bin     # RUN.bin: float64 state layout (examples/mpi drivers)
    mpi_compare.py obs REFERENCE.bin.obs RUN.bin.obs       # per observation: qc, H(x_b), H(x_a) as float64

Prints one line: `<n differing values> <max ULP distance> <max |difference|>` and exits 0 when identical (0 ULP;
NaN equals NaN, as the H(x) of a geometrically rejected observation), 1 otherwise. REFERENCE.nc is the output of
`latentda analyse` (variables in bundle order from BUNDLE/bundle.toml, dims (lev, lat, lon) or (lat, lon)).
"""
import sys
import tomllib
from pathlib import Path

import numpy as np


def ulp_distance(a, b):
    """|a - b| in units in the last place of float64 (via the ordered integer representation)."""
    ia = a.view(np.int64).astype(np.float64)
    ib = b.view(np.int64).astype(np.float64)
    ia = np.where(ia < 0, -2.0**63 - ia, ia)
    ib = np.where(ib < 0, -2.0**63 - ib, ib)
    return np.abs(ia - ib)


def report(ref, run):
    if ref.shape != run.shape:
        print(f"length differs: reference {ref.size}, run {run.size}")
        return 1
    both_nan = np.isnan(ref) & np.isnan(run)
    diff = (ref != run) & ~both_nan
    n = int(diff.sum())
    ulp = float(ulp_distance(ref[diff], run[diff]).max()) if n else 0.0
    absd = float(np.abs(ref[diff] - run[diff]).max()) if n else 0.0
    print(f"{n} {ulp:.0f} {absd:.3e}")
    return 0 if n == 0 else 1


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "fields":
        import netCDF4
        manifest = tomllib.loads((Path(sys.argv[2]) / "bundle.toml").read_text())
        names = [v["name"] for v in manifest["variables"]]
        with netCDF4.Dataset(sys.argv[3]) as d:
            d.set_auto_mask(False)
            ref = np.concatenate([np.asarray(d.variables[n][:], dtype=np.float64).ravel() for n in names])
        run = np.fromfile(sys.argv[4], dtype="<f8")
        return report(ref, run)
    if len(sys.argv) == 4 and sys.argv[1] == "obs":
        return report(np.fromfile(sys.argv[2], dtype="<f8"), np.fromfile(sys.argv[3], dtype="<f8"))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
