#!/usr/bin/env python3
"""Which vertical discretisation of the hydrostatic relation fits the nature run (docs/b-operator.md).

Reads states of the SPEEDY nature run (float32 arrays (n, 41, 48, 96) in the bundle's channel order: u, v, t, q, z
on 8 sigma levels top to bottom, then ps), takes pairs of states 48 h apart and compares the geopotential
difference predicted from the temperature difference, dz = R A dTv, with the true one, for several conventions of
the half levels. Prints the relative error |dz_pred - dz| / |dz| per convention, from dT alone and with the virtual
temperature dTv = (1 + 0.608 q_ref) dT + 0.608 T_ref dq (reference values: means over the chunk, as the library
uses the bundle's normalisation means). Read only.

    python3 scripts/check_hydrostatic.py [/work/data/nature/chunk_000.npy]
"""
import sys

import numpy as np

R, EPS = 287.04, 0.608
SIGMA = np.array([0.025, 0.095, 0.2, 0.34, 0.51, 0.685, 0.835, 0.95])
T0, Q0, Z0 = 16, 24, 32  # first channels of t, q, z


def a_half(s, h):
    """T of full level j holds between half levels h[j] and h[j+1] (h[-1] = surface); dz_k integrates from level k."""
    n = len(s)
    a = np.zeros((n, n))
    for k in range(n):
        a[k, k] = np.log(h[k + 1] / s[k])
        for j in range(k + 1, n):
            a[k, j] = np.log(h[j + 1] / h[j])
    return a


def a_trapezoid(s):
    """Trapezoid in ln(sigma) between full levels, T of the lowest level down to sigma = 1 (the library's A)."""
    n = len(s)
    a = np.zeros((n, n))
    for k in range(n):
        a[k, n - 1] += -np.log(s[n - 1])
        for j in range(k, n - 1):
            w = 0.5 * np.log(s[j + 1] / s[j])
            a[k, j] += w
            a[k, j + 1] += w
    return a


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "/work/data/nature/chunk_000.npy"
    x = np.load(path, mmap_mode="r")
    s, n = SIGMA, len(SIGMA)
    h_speedy = np.zeros(n + 1)  # half levels whose midpoints are the full levels (SPEEDY's 0, 0.05, 0.14, ...)
    h_speedy[n] = 1.0
    for k in range(n - 1, -1, -1):
        h_speedy[k] = max(2 * s[k] - h_speedy[k + 1], 0.0)
    conventions = {
        "trapezoid in ln sigma (= log-midpoint half levels; latentda)": a_trapezoid(s),
        "SPEEDY half levels (full levels are their midpoints)": a_half(s, h_speedy),
        "arithmetic-mean half levels": a_half(s, np.r_[0.0, 0.5 * (s[:-1] + s[1:]), 1.0]),
    }
    idx = range(0, min(len(x), 120), 3)
    t_ref = np.mean([np.asarray(x[i, T0:T0 + n], dtype=np.float64).mean(axis=(1, 2)) for i in idx], 0)
    q_ref = np.mean([np.asarray(x[i, Q0:Q0 + n], dtype=np.float64).mean(axis=(1, 2)) for i in idx], 0)
    pairs = [(i, i + 8) for i in range(0, min(len(x) - 8, 100), 10)]
    print(f"{len(pairs)} pairs of states 48 h apart from {path}")
    for name, a in conventions.items():
        out = []
        for virtual in (False, True):
            num = den = 0.0
            for i, j in pairs:
                x1, x2 = np.asarray(x[i], dtype=np.float64), np.asarray(x[j], dtype=np.float64)
                dt, dq = x2[T0:T0 + n] - x1[T0:T0 + n], x2[Q0:Q0 + n] - x1[Q0:Q0 + n]
                if virtual:
                    dt = (1 + EPS * q_ref)[:, None, None] * dt + EPS * t_ref[:, None, None] * dq
                dz = x2[Z0:Z0 + n] - x1[Z0:Z0 + n]
                e = R * np.einsum("kj,jab->kab", a, dt) - dz
                num += (e ** 2).sum()
                den += (dz ** 2).sum()
            out.append(np.sqrt(num / den))
        print(f"  {name:62s} from dT: {out[0]:.4f}   from dTv: {out[1]:.4f}")


if __name__ == "__main__":
    main()
