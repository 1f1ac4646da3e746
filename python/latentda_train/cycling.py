"""Cycling experiment: jcm (SPEEDY T31L8) runs the forecast in memory and latentda analyses it every 6 h through the
C ABI, exactly as a Fortran model driver would call it.

Each cycle:
  1. jcm forecasts 6 h from the previous analysis (`model.resume`, in memory);
  2. the forecast (the background) is copied into the host's own float64 arrays, which were bound ONCE to latentda
     with `lda_bind_field_f64` (C order (lev, lat north->south, lon), the bundle's layout);
  3. observations are drawn from the nature run (the truth) at that time with the radiosonde-like network of
     `cases.make_obs` (network "sonde", or "mass": temperature profiles and surface pressure), with a fresh noise
     seed per cycle (the same for every method), and handed over with `lda_set_obs`;
  4. `lda_analyse(method)` writes the analysis into the same arrays;
  5. the analysis increment goes back into jcm's spectral state (u, v -> vorticity and divergence, t -> temperature
     variation, ps -> log surface pressure, q -> humidity tracer; geopotential is diagnostic in jcm and is not put
     back), and the model continues. The increment form dyn_b + P(x_a) - P(x_b), with P jcm's own gridpoint-to-
     spectral conversion, leaves the background's spectral state untouched where the analysis changed nothing
     (P is not an exact inverse of the spectral-to-gridpoint conversion for the wind: see `roundtrip_errors`).

Every day at 00 UTC after the spin-up, a 48 h forecast is also run from the analysis (and the model state put back
afterwards) and scored against the truth.

Networks: "sonde" (the fixed radiosonde-like land stations of `cases.stations`: the land network), "uniform" (the
same observed variables at UNIFORM_COLUMNS columns drawn uniformly on the sphere, |lat| <= 80, new positions every
cycle), "mass" (temperature profiles at the land stations and surface pressure at 1500 points).

Adaptive B (`--adaptive`): the B in force is s times the starting B (the options given, by default CYCLING_OPTIONS,
and the bundle's hybrid weights), and s is re-estimated after every cycle from the Desroziers statistics of the
reports of the last N cycles (`--adaptive-window`, default ADAPT_WINDOW = 4 cycles, one day; a moving window, not
exponential):

    s_new = sum_k sum_i (H x_a - H x_b)_i d_b,i / sigma_o,i^2  /  sum_k (1 / s_k) sum_i sigma_b,i^2 / sigma_o,i^2

over the cycles k of the window (all used observations, global; sigma_b^2 = the H B H^T in force at the
observation, s_k the scale that cycle ran with): the innovation estimate of H B H^T over the H B H^T of the
starting B, i.e. the fixed-point step of Desroziers et al. (2005) (docs/b-operator.md, "Tuning B from innovations"),
bounded to [ADAPT_BOUNDS] (`--adaptive-bounds`). In a scalar model (true H B H^T s_t, R r, in force s) one step
maps s to s (s_t + r) / (s + r): it converges, monotonically but slowly where r >> s_t (the rate is r / (s_t + r):
0.87 per cycle for the issue's u, s_t 0.3 and r 2.25 (m/s)^2, so about 60 cycles from a B 7x too large). The
alternative rule `--adaptive-rule innovation` uses E[d_b^2] - R instead of E[(H x_a - H x_b) d_b] as the estimate:
the fixed point in one step, provided R is right (it is, by construction, in this driver's observation recipe), but
noisier.

Hybrid weights fitted separately (`--adaptive-split`, folder <method>-adaptive-split): the reports of hybrid analyses
split the H B H^T in force into its latent part alpha (H sd_latent)^2 and its static part beta (H sd_static)^2; over
the disjoint cells (bundle variable x band nh / tropics / sh) of the window, the non-negative least-squares fit
E_c ~ alpha L_c + beta S_c (E: the Desroziers estimate, L and S: the parts in force per unit weight) gives alpha and
beta on their own (`hybrid_split`, the twin of `latentda tune --hybrid-split`), each bounded to ADAPT_BOUNDS x its
starting value. It needs cells whose latent / static proportions differ; otherwise the weights stay. Until the window
is full both weights are scaled together as above (with an ensemble part in the reports, gamma is fitted as a
third weight of the same non-negative fit once the window is full, from the run's starting `ensemble_gamma`): in a check run (hybrid, uniform network, 6 cycles from a perturbed
start) a split fitted to the first cycle alone, whose errors are far larger than the cycle's later ones, gave alpha
2.2 and beta 0.015 and made the next analyses worse.

Per-variable weights (`--adaptive-per-variable`, folder <method>-adaptive-pv): each bundle variable v and class c
(extratropics: the nh and sh cells; tropics) gets its own multiplier s_vc by the same window formula over its own
cells (`variable_scales`, the twin of `latentda tune --per-variable`), bounded like s; a variable with fewer than
MIN_CELL_OBS observations over the window (z, unobserved) takes its group's (wind, mass), else the all-variable one.
The options carry them as `hybrid_variable_weights` (alpha_v = s_vx alpha, alpha_tropics_v = s_vt alpha, likewise
beta: the mix is kept); until the window is full every variable follows the global s. Method 3dvar runs as the hybrid
with alpha 0 and beta 1 (the same static B, baseline_variance_factor unchanged), so that 3D-Var gets the same
per-variable sizing. `--static-variables q` (hybrid, per-variable mode; folder suffix -sq) analyses the named
variables with the static B alone: their latent weight goes to the static part (alpha_v = 0, beta_v = (alpha + beta)
s_v), so that no observation moves them through the latent B's cross-covariances.

Sized by the library (`--adaptive-in-library`, folder suffix -lib): the same step made by latentda itself (option
adaptive_state, src/var/adaptive.rs: what a Fortran or C++ host uses), with its state file adaptive_b.json in the
run's folder and one context for the whole run; the metrics' "adaptive" entry is the report's. Fed the same reports
it gives AdaptiveB's multipliers (python/tests/test_cycling_adaptive_library.py); over a 30-day run (uniform network,
hybrid per variable with q static, window 8, explicit hybrid_alpha and hybrid_beta in --options) the two runs'
analysis and 48 h forecast RMSE agree to 6e-16. Without explicit weights AdaptiveB runs its first cycle with the
start options (it learns the bundle's weights from the first report), so its first cycle leaves q latent and the
runs part; the library resolves the bundle's weights before the first cycle. With the library, --static-variables
also works with the scalar sizing (folder suffix -sq before -lib). The checkpoint keeps the state file's content of
its cycle, so a resume rewrites it (a 12-cycle run and an 8-cycle run resumed to 12 agree bit for bit).

Why a window of 4 cycles: with a few thousand observations per cycle the per-cycle ratio is already precise (3D-Var,
uniform network, cycles 2-8 of a check run: E[(Hxa-Hxb) db]/HBH^T 0.40-0.47), whereas the first cycles after the
perturbed start have much larger errors (ratio 2.0 at cycle 1) and a window of 8 kept that cycle in force for two
days. The window sum is, per cycle, the mean of the one-step estimates s_k x ratio_k (each cycle's H B H^T per unit
scale is about the same), so one large early estimate dominates it until it leaves the window. s scales baseline_variance_factor for 3dvar,
latent_variance_factor for l3dvar, and both hybrid_alpha and hybrid_beta for the hybrid (its mix is kept). Adaptive
runs go to OUT/<network>/<method>-adaptive/; every cycle's line in metrics.jsonl holds the scale and the option
values it ran with, the Desroziers ratios of its report and the next scale ("adaptive"); the state survives a resume. Method "none" runs the same model with no assimilation (a free run from
the same perturbed start) as the reference.

Time-lagged ensemble (`--ensemble lagged --members K`, folder <method>-laggedK[m][-adaptive]; issue 24): every cycle
the forecasts of the last K analyses valid now (leads 6, 12, ..., 6 K h; the 6 h one is the background itself) are
handed to latentda with `lda_set_ensemble` before the analysis (`advance_lagged`: the earlier analyses' forecasts
run on 6 h each cycle, K - 1 extra 6 h forecasts per cycle, kept across a resume in lagged.npz). Method 3dvar then
runs as hybrid 3DEnVar (static B + gamma x the model-space ensemble B), method hybrid as latent hybrid EnVar (latent
+ static + gamma x the latent ensemble B), or with `--ensemble-space model` as latent + static + the model-space
ensemble B (folder suffix "m"). The first K - 1 cycles run without members. gamma (`--ensemble-gamma`, default
ENSEMBLE_GAMMA) is fixed: `--adaptive` scales the static parts only (the ensemble carries its own amplitude), and
since the Desroziers H B H^T in force includes the ensemble part, the fixed point of the scale is the one where the
static parts make up what the ensemble leaves. Every cycle's metrics also hold the RMSE per latitude band (an_bands,
bg_bands, fc48_bands: nh > 20N, tropics, sh < 20S). Per cycle metrics.jsonl gains "ensemble": K, gamma, the spread
against the innovations per observed variable and the members' mean RMSE against the truth.

Perturbed-observation ensemble (`--ensemble eda --members K`, folder <method>-edaK[-adaptive]): K members start from
their own perturbed states (the start recipe with seeds EDA_SEED + k) and are cycled alongside the control: every
cycle each member's 6 h forecast is its background, it is handed (all K) to the control analysis as the members, and
each member is then analysed by 3D-Var (static B, baseline factor 0.35 x the control's adaptive scale) with the
cycle's observations perturbed by their own errors (sigma_o N(0, 1), seed EDA_OBS_SEED + 1000 c + k), its increment
put into its spectral state like the control's (`advance_eda`, `analyse_eda`; eda.npz keeps them across a resume).
Without `--eda-recentre` the members are not recentred on the control (they may drift away from it); with it
(folder suffix "r") every member's analysis is recentred on the control analysis in jcm's spectral state (`recentre`:
dyn_k + dyn_control - mean dyn, each member keeping its own physics carry). Cost per cycle: K more 6 h forecasts and
K 3D-Var analyses.

The run starts at 00 UTC of day START - SPINUP from the truth perturbed as in `forecasts.Forecaster.run`
(large-scale, multivariate difference of two earlier nature states), cycles through SPINUP + DAYS days, and scores
the last DAYS. Results, per network and method, in OUT/<network>/<method>/: metrics.jsonl (one line per cycle and
per 48 h forecast; each cycle also scores the 6 h forecast of its background without the analysis,
`fc6_no_analysis`, against the next truth: the next cycle's background is the 6 h forecast of the analysis, so the
pair measures what the analysis left in the forecast), state.npz (the model state after the last finished cycle: a
rerun resumes from it),
settings.json. `summary` turns all of them (every folder with a metrics.jsonl) into RMSE time-series and balance
figures (PNG) and a table (summary_<network>.md): time means from `--from-day` days after the perturbed start, and with
`--reference RUN` every run's means over that run's.

Commands (from the repository root, after `cargo build --release`; one method per process, they can run in
parallel):
  latentda-cycle run --method l3dvar --network sonde --out cycling
  latentda-cycle run --method none --out cycling            # and 3dvar, hybrid; --network mass or uniform
  latentda-cycle run --method hybrid --adaptive --out cycling   # B sized online from its innovations (below)
  latentda-cycle summary --out cycling
  latentda-cycle smoke                                      # 2 cycles, round trip and resume checks
"""
from __future__ import annotations

import argparse
import ctypes
import json
from pathlib import Path
import os
import sys
import time

import numpy as np

from . import cases as CS
from . import cycle_mix as CM
from . import data as D
from . import jcmrun

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_LIB = os.path.join(REPO, "target", "release", "liblatentda.so")
DEFAULT_BUNDLE = os.path.join(REPO, "models", "speedy-t31")
METHODS = ("none", "3dvar", "l3dvar", "hybrid")
RUN_NAMES = METHODS + tuple(f"{m}-adaptive" for m in METHODS[1:]) + ("hybrid-adaptive-split",)  # OUT/<network>/
RUN_NAMES += ("3dvar-adaptive-pv", "hybrid-adaptive-pv", "hybrid-adaptive-pv-sq")
RUN_NAMES += tuple(f"{m}-{kind}{k}{r}{sp}{ad}" for m in ("3dvar", "hybrid") for kind in ("lagged", "eda")
                   for k in (5, 8, 10, 20) for r in ("", "r") for sp in ("", "m") for ad in ("", "-adaptive")
                   if not (m == "3dvar" and sp) and not (kind == "lagged" and r))
NAMES = [v[0] for v in D.VARS]
OBS_SEED = 700000          # noise seed of cycle c: OBS_SEED + c (the same for every method)
FORECAST_CYCLES = 8        # 48 h
MIX_SEED = 800000          # --choose-mix: the column split of cycle c is drawn with MIX_SEED + c
IAU_PENDING = "iau_pending.npz"   # --iau: the last cycle's background and analysis, whose increment the next 6 h add
LIB_MIX = "lib_mix.npz"           # --choose-in-library: the library's mix state and fields of the checkpoint's cycle
MIX_PENDING = "mix_pending.npz"   # --choose-by forecast: the candidates' forecasts of the checkpoint's cycle
# The reference bundle's B (latent and static) is calibrated to 48 h forecast errors; cycled 6 h backgrounds have
# about 0.35 of that error variance (u 1.3 vs 2.1 m/s, t 0.52 vs 0.92 K, ps 118 vs 190 Pa after one cycle), and
# with the unscaled B the second cycle's analysis is no better than its background (smoke run).
CYCLING_OPTIONS = "latent_variance_factor = 0.35\nbaseline_variance_factor = 0.35"
UNIFORM_COLUMNS = 300      # columns of the "uniform" network (new positions every cycle)
NETWORKS = ("sonde", "mass", "uniform")
LIB_STATE = "adaptive_b.json"   # --adaptive-in-library: the library's state file in the run's folder
ADAPT_WINDOW = 4           # cycles of Desroziers sums behind each adaptive update (1 day; see the module doc)
ADAPT_BOUNDS = (0.05, 4.0)  # bounds of the adaptive scale s (relative to the starting B)
MIN_CELL_OBS = 50          # as src/var/desroziers.rs: fewest observations over the window to size a cell on its own
GROUPS = {"wind": ("u", "v"), "mass": ("t", "z", "ps")}   # as src/var/desroziers.rs
COMPOSITE = ("all", *GROUPS)   # report cells that are not one bundle variable
LAGGED_MEMBERS = 8         # K of --ensemble lagged: leads 6 .. 48 h
START_T_RMS = 0.7           # the perturbed start's temperature RMS (K) and wind factor (forecasts.perturb)
START_WIND_FACTOR = 1.6
EDA_SEED = 20261206        # member k of --ensemble eda starts from perturbed_start(seed EDA_SEED + k)
EDA_OBS_SEED = 900000      # noise seed of member k's observation perturbations in cycle c: EDA_OBS_SEED + 1000 c + k
ENSEMBLE_GAMMA = 0.5       # gamma of --ensemble (the options' default)


# --------------------------------------------------------------------------------------------------- C ABI (ctypes)

class LatentdaError(RuntimeError):
    """A latentda call returned a non-zero status; the message is lda_last_error's."""


class Latentda:
    """A latentda context opened through the C ABI of liblatentda.so (the calls of examples/c/driver.c)."""

    # lda_set_step_model's nonlinear step (LdaStepFn): status (user, n, x, x_next)
    STEP_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_double),
                               ctypes.POINTER(ctypes.c_double))

    def __init__(self, lib_path: str, bundle: str, options: str = ""):
        if not os.path.exists(lib_path):
            raise FileNotFoundError(f"{lib_path} not found: run `cargo build --release` first")
        L = self.lib = ctypes.CDLL(lib_path)
        c_p, i32, i64p, dp = ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_double)
        L.lda_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(c_p)]
        L.lda_close.argtypes = [c_p]
        L.lda_last_error.argtypes = [c_p]
        L.lda_last_error.restype = ctypes.c_char_p
        L.lda_var_index.argtypes = [c_p, ctypes.c_char_p, ctypes.POINTER(i32)]
        L.lda_bind_field_f64.argtypes = [c_p, ctypes.c_char_p, dp, i32, i64p, i32]
        L.lda_set_obs.argtypes = [c_p, ctypes.c_size_t, ctypes.POINTER(i32), dp, dp, dp, dp, dp]
        L.lda_analyse.argtypes = [c_p, ctypes.c_char_p]
        L.lda_obs_qc.argtypes = [c_p, ctypes.POINTER(i32), ctypes.c_size_t]
        L.lda_report_json.argtypes = [c_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
        L.lda_set_ensemble.argtypes = [c_p, ctypes.c_size_t, ctypes.c_size_t, dp, i32]
        L.lda_obs_h.argtypes = [c_p, dp, ctypes.c_size_t, dp, ctypes.POINTER(i32), ctypes.c_size_t]
        L.lda_obs_h.restype = i32
        L.lda_state_size.argtypes = [c_p, ctypes.POINTER(ctypes.c_size_t)]
        L.lda_b_linearise.argtypes = [c_p]
        L.lda_brandomize.argtypes = [c_p, ctypes.c_uint64, dp, ctypes.c_size_t]
        L.lda_set_step_model.argtypes = [c_p, self.STEP_FN, c_p, c_p, c_p, ctypes.c_double]   # tl, ad: NULL
        L.lda_report_number.argtypes = [c_p, ctypes.c_char_p, dp]
        for f in ("lda_state_size", "lda_b_linearise", "lda_brandomize", "lda_set_step_model", "lda_report_number"):
            getattr(L, f).restype = i32
        if hasattr(L, "lda_set_analysis_time"):   # libraries before analysis times lack it
            L.lda_set_analysis_time.argtypes = [c_p, ctypes.c_double]
            L.lda_set_analysis_time.restype = i32
        if hasattr(L, "lda_set_withheld"):   # libraries before withheld observations lack it
            L.lda_set_withheld.argtypes = L.lda_set_obs.argtypes
            L.lda_set_withheld.restype = i32
        L.lda_version.restype = ctypes.c_char_p
        for f in ("lda_open", "lda_close", "lda_var_index", "lda_bind_field_f64", "lda_set_obs", "lda_analyse",
                  "lda_obs_qc", "lda_report_json", "lda_set_ensemble"):
            getattr(L, f).restype = i32
        self.ctx = c_p()
        st = L.lda_open(bundle.encode(), options.encode() if options else None, ctypes.byref(self.ctx))
        if st != 0:
            raise LatentdaError(f"lda_open({bundle}): status {st}: {L.lda_last_error(None).decode()}")
        self.bound = {}  # name -> array, kept alive while bound

    def _check(self, st: int, what: str):
        if st != 0:
            raise LatentdaError(f"{what}: status {st}: {self.lib.lda_last_error(self.ctx).decode()}")

    def version(self) -> str:
        return self.lib.lda_version().decode()

    def var_index(self, name: str) -> int:
        i = ctypes.c_int32()
        self._check(self.lib.lda_var_index(self.ctx, name.encode(), ctypes.byref(i)), f"lda_var_index({name})")
        return i.value

    def bind(self, name: str, arr: np.ndarray):
        """Binds a C-contiguous float64 host array in place (latentda keeps the pointer: the array must live on)."""
        if arr.dtype != np.float64 or not arr.flags["C_CONTIGUOUS"]:
            raise ValueError(f"{name}: host arrays must be C-contiguous float64")
        shape = (ctypes.c_int64 * arr.ndim)(*arr.shape)
        ptr = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._check(self.lib.lda_bind_field_f64(self.ctx, name.encode(), ptr, arr.ndim, shape, 0),
                    f"lda_bind_field_f64({name})")
        self.bound[name] = arr

    def _obs_arrays(self, fn, what, var, lat, lon, level, value, sigma):
        a = [np.ascontiguousarray(x, dtype=np.float64) for x in (lat, lon, level, value, sigma)]
        v = np.ascontiguousarray(var, dtype=np.int32)
        dp = ctypes.POINTER(ctypes.c_double)
        self._check(fn(self.ctx, len(v), v.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                       *[x.ctypes.data_as(dp) for x in a]), what)

    def set_obs(self, *obs):
        """The observations to assimilate (lda_set_obs): var, lat, lon, level, value, sigma."""
        self._obs_arrays(self.lib.lda_set_obs, "lda_set_obs", *obs)

    def set_withheld(self, *obs):
        """Withheld observations (lda_set_withheld, same arrays as set_obs): compared with the background and the
        analysis, never assimilated; the report's "withheld" section scores them."""
        self._obs_arrays(self.lib.lda_set_withheld, "lda_set_withheld", *obs)

    def obs_h(self, n: int, x: np.ndarray | None = None) -> np.ndarray:
        """H x at the n observations of the last set_obs (lda_obs_h; NaN where the geometric checks reject one): of
        the state x (41, nlat, nlon), or of the bound arrays without it. H is built once per set_obs."""
        dp = ctypes.POINTER(ctypes.c_double)
        hx = np.empty(n)
        xs = None if x is None else np.ascontiguousarray(x, dtype=np.float64)
        self._check(self.lib.lda_obs_h(self.ctx, None if xs is None else xs.ctypes.data_as(dp),
                                       0 if xs is None else xs.size, hx.ctypes.data_as(dp), None, n), "lda_obs_h")
        return hx

    def b_linearise(self):
        """Linearises the host B operator (option `b_operator`) at the bound arrays (lda_b_linearise)."""
        self._check(self.lib.lda_b_linearise(self.ctx), "lda_b_linearise")

    def brandomize(self, seed: int) -> np.ndarray:
        """A draw U xi of the host B operator, xi ~ N(0, I) from `seed` (lda_brandomize), in the state layout (flat)."""
        n = ctypes.c_size_t()
        self._check(self.lib.lda_state_size(self.ctx, ctypes.byref(n)), "lda_state_size")
        x = np.empty(n.value)
        self._check(self.lib.lda_brandomize(self.ctx, seed, x.ctypes.data_as(ctypes.POINTER(ctypes.c_double)), n.value),
                    "lda_brandomize")
        return x

    def set_ensemble(self, members: np.ndarray):
        """Members (K, 41, nlat, nlon) in the state layout (the bundle's variables in order, C order): lda_set_ensemble
        copies them; with them 3dvar is hybrid 3DEnVar and hybrid has its latent ensemble part."""
        m = np.ascontiguousarray(members, dtype=np.float64).reshape(len(members), -1)
        self._check(self.lib.lda_set_ensemble(self.ctx, m.shape[0], m.shape[1],
                                              m.ctypes.data_as(ctypes.POINTER(ctypes.c_double)), 0),
                    "lda_set_ensemble")

    def analyse(self, method: str):
        self._check(self.lib.lda_analyse(self.ctx, method.encode()), f"lda_analyse({method})")

    def set_step_model(self, step, hours: float):
        """The host's model as the context's step model (lda_set_step_model): `step(x)` maps a flat state to the state
        `hours` later. The nonlinear step alone (TL and AD NULL): what the online mix's mix_score = "model" calls;
        an l4dvar analysis with it fails, naming the missing callback."""
        def nonlinear(_user, n, x, out):
            try:
                y = np.ascontiguousarray(step(np.ctypeslib.as_array(x, shape=(n,)).copy()), dtype=np.float64).ravel()
                if y.size != n:
                    return 2
                ctypes.memmove(out, y.ctypes.data, 8 * n)
                return 0
            except Exception as e:   # never raise through the C boundary
                print(f"step model callback failed: {e}", file=sys.stderr)
                return 3
        self._callback = self.STEP_FN(nonlinear)   # kept alive while the context may call it
        self._check(self.lib.lda_set_step_model(self.ctx, self._callback, None, None, None, hours),
                    "lda_set_step_model")

    def set_analysis_time(self, hours: float):
        """The time of the next analyses in hours from the run's epoch (lda_set_analysis_time): the online mix then
        scores its candidate forecasts only at the analysis whose time they are valid for."""
        if not hasattr(self.lib, "lda_set_analysis_time"):
            raise LatentdaError(f"lda_set_analysis_time: {self.lib._name} is older than analysis times; rebuild it")
        self._check(self.lib.lda_set_analysis_time(self.ctx, hours), "lda_set_analysis_time")

    def obs_qc(self, n: int) -> np.ndarray:
        f = np.zeros(n, np.int32)
        self._check(self.lib.lda_obs_qc(self.ctx, f.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), n), "lda_obs_qc")
        return f

    def report(self) -> dict:
        need = ctypes.c_size_t()
        self.lib.lda_report_json(self.ctx, None, 0, ctypes.byref(need))
        buf = ctypes.create_string_buffer(need.value)
        self._check(self.lib.lda_report_json(self.ctx, buf, need.value, ctypes.byref(need)), "lda_report_json")
        return json.loads(buf.value.decode())

    def report_number(self, path: str) -> float:
        """One number of the last report by its dotted path (lda_report_number), e.g. "mix.scored.1.t/extratropics"."""
        v = ctypes.c_double()
        self._check(self.lib.lda_report_number(self.ctx, path.encode(), ctypes.byref(v)), f"lda_report_number({path})")
        return v.value

    def close(self):
        if self.ctx:
            self.lib.lda_close(self.ctx)
            self.ctx = ctypes.c_void_p()


class HostFields:
    """The model side's own arrays, one per bundle variable, bound to latentda once."""

    def __init__(self, lda: Latentda, nlat: int, nlon: int):
        self.fields = {}
        for name, _, nlev, _ in D.VARS:
            a = np.zeros((nlev, nlat, nlon) if nlev else (nlat, nlon), np.float64)
            lda.bind(name, a)
            self.fields[name] = a

    def load(self, x: np.ndarray):
        """Copies a (41, nlat, nlon) state into the bound arrays (in place: the pointers stay valid)."""
        for name, _, nlev, _ in D.VARS:
            self.fields[name][...] = x[D.VAR_SLICES[name]] if nlev else x[D.VAR_SLICES[name]][0]

    def state(self) -> np.ndarray:
        return np.concatenate([self.fields[n].reshape(-1, *self.fields[n].shape[-2:]) for n in NAMES])


# --------------------------------------------------------------------------------------------- jcm state <-> latentda

def to_physics(x: np.ndarray):
    """Inverse of `jcmrun.physics_to_latentda` for one state: (41, lat N->S, lon) -> jcm PhysicsState with arrays
    (level top first, lon, lat S->N) and ps / p0. Geopotential is carried along but jcm does not use it here."""
    import jax.numpy as jnp
    from jcm.physics_interface import PhysicsState

    def f(name):
        return jnp.asarray(np.ascontiguousarray(x[D.VAR_SLICES[name]].transpose(0, 2, 1)[:, :, ::-1]), jnp.float32)

    ps = jnp.asarray(np.ascontiguousarray(x[40].T[:, ::-1] / jcmrun.P0), jnp.float32)
    return PhysicsState(f("u"), f("v"), f("t"), f("q"), f("z"), ps, {})


def to_spectral(model, x: np.ndarray):
    """jcm's own gridpoint -> spectral conversion of a latentda-layout state (a dinosaur State)."""
    from jcm.dycore.dinosaur.state_bridge import physics_state_to_dynamics_state
    dc = model.dycore
    return physics_state_to_dynamics_state(to_physics(x), dc._primitive, tracer_specs=dc.tracer_specs,
                                           nodal_tracers=dc._nodal_tracers)


INCREMENT_FIELDS = ("vorticity", "divergence", "temperature_variation", "log_surface_pressure")


def spectral_increment(model, x_b: np.ndarray, x_a: np.ndarray, truncation: int | None = None) -> dict:
    """P(x_a) - P(x_b): the analysis increment in jcm's spectral fields (INCREMENT_FIELDS and specific humidity).
    With `truncation` N (--increment-truncation) it keeps total wavenumbers <= N only: a host that filters the scales
    it does not trust out of its increments."""
    sa, sb = to_spectral(model, x_a), to_spectral(model, x_b)
    keep = 1.0
    if truncation is not None:
        keep = (model.dycore.coords.horizontal.modal_axes[1] <= truncation).astype(np.float64)   # total wavenumber l
    inc = {f: (getattr(sa, f) - getattr(sb, f)) * keep for f in INCREMENT_FIELDS}
    inc["specific_humidity"] = (sa.tracers["specific_humidity"] - sb.tracers["specific_humidity"]) * keep
    return inc


def apply_increment(dyn, inc: dict, fraction: float = 1.0):
    """dyn + fraction * inc (a `spectral_increment`). Fields latentda does not analyse (other tracers) keep dyn's
    values. Humidity is not floored at 0 here: jcm's own gridpoint q is negative in places (spectral truncation),
    and a floor would inject moisture wherever the background is negative, increment or not; the model's physics
    treats negative q as it does in its own forecasts."""
    add = lambda b, d: b + (d if fraction == 1.0 else d * fraction).astype(b.dtype)
    tr = dict(dyn.tracers)
    tr["specific_humidity"] = add(tr["specific_humidity"], inc["specific_humidity"])
    return dyn.replace(tracers=tr, **{f: add(getattr(dyn, f), inc[f]) for f in INCREMENT_FIELDS})


def add_increment(model, dyn_b, x_b: np.ndarray, x_a: np.ndarray, truncation: int | None = None):
    """dyn_b + P(x_a) - P(x_b): the analysis increment added to jcm's spectral state at once (`spectral_increment`,
    `apply_increment`)."""
    return apply_increment(dyn_b, spectral_increment(model, x_b, x_a, truncation))


def save_iau_pending(path: str, cycle: int, x_b: np.ndarray, x_a: np.ndarray):
    """--iau: the background and analysis of `cycle`, whose increment the next 6 h forecast adds (written atomically)."""
    tmp = path + ".partial.npz"
    np.savez(tmp, cycle=cycle, x_b=x_b, x_a=x_a)
    os.replace(tmp, path)


def load_iau_pending(path: str, cycle: int):
    """The (x_b, x_a) that `save_iau_pending` wrote for `cycle`; an error if the file is missing or of another cycle
    (a resume must add the same increment)."""
    if not os.path.exists(path):
        raise SystemExit(f"{path} missing: an --iau run resumes with the increment of its last cycle")
    f = np.load(path)
    if int(f["cycle"]) != cycle:
        raise SystemExit(f"{path} holds cycle {int(f['cycle'])}, the checkpoint cycle {cycle}")
    return f["x_b"], f["x_a"]


def save_lib_mix(path: str, cycle: int, mix_file: str):
    """--choose-in-library: the library's mix state and pending fields as of `cycle` (written atomically), so that a
    resume restores them with the checkpoint (the library rewrites them inside the next analysis, before the next
    checkpoint)."""
    fields = mix_file + ".fields"
    tmp = path + ".partial.npz"
    np.savez(tmp, cycle=cycle, state=np.frombuffer(Path(mix_file).read_bytes(), np.uint8),
             fields=np.frombuffer(Path(fields).read_bytes() if os.path.exists(fields) else b"", np.uint8))
    os.replace(tmp, path)


def load_lib_mix(path: str, cycle: int, mix_file: str):
    """Writes back the mix state and fields `save_lib_mix` saved for `cycle`; an error if the file is missing or of
    another cycle."""
    if not os.path.exists(path):
        raise SystemExit(f"{path} missing: a --choose-in-library run resumes with the library's mix state of its last "
                         "cycle")
    f = np.load(path)
    if int(f["cycle"]) != cycle:
        raise SystemExit(f"{path} holds cycle {int(f['cycle'])}, the checkpoint cycle {cycle}")
    Path(mix_file).write_bytes(f["state"].tobytes())
    fields = mix_file + ".fields"
    if f["fields"].size:
        Path(fields).write_bytes(f["fields"].tobytes())
    elif os.path.exists(fields):
        os.remove(fields)


def gridpoint(model, dyn) -> np.ndarray:
    """The gridpoint state of a spectral state (latentda layout, float64), q as the model holds it (negative where
    the spectral truncation rings)."""
    return jcmrun.physics_to_latentda(model.dycore.to_physics_state(dyn))[0].astype(np.float64)


def as_output(x: np.ndarray) -> np.ndarray:
    """A gridpoint state as jcm's output (and so the nature run) shows it: q floored at 0."""
    x = x.copy()
    q = x[D.VAR_SLICES["q"]]
    np.maximum(q, 0.0, out=q)
    return x


def roundtrip_errors(model, dyn, dx: np.ndarray) -> dict:
    """Relative RMS error per variable of putting the gridpoint increment `dx` into the spectral state `dyn` and
    reading it back: |G(dyn + P(x+dx) - P(x)) - x - dx| / |dx| with x = G(dyn) (G: spectral -> gridpoint).
    Geopotential is left out (diagnostic in jcm)."""
    x = gridpoint(model, dyn)
    back = gridpoint(model, add_increment(model, dyn, x, x + dx)) - x
    return {v: float(np.sqrt(np.mean((back[sl] - dx[sl]) ** 2)) / max(np.sqrt(np.mean(dx[sl] ** 2)), 1e-300))
            for v, sl in D.VAR_SLICES.items() if v != "z"}


# ----------------------------------------------------------------------------------------------------- the model

class Model:
    """jcm SPEEDY T31L8 with the nature run's saved states (one per process: the compiled step is reused)."""

    def __init__(self, data: str):
        import jax
        self.data = data
        self.m, self.forcing, _ = jcmrun.load_model()
        self.tmpl = self.m.bootstrap_state()
        self.treedef = jax.tree_util.tree_structure(self.tmpl)
        self.total_wavenumber = np.asarray(self.m.coords.horizontal.modal_mesh[1])

    def truth_state(self, day: int):
        """(dyn, phys, step) of the nature run at 00 UTC of `day`."""
        import jax
        import jax.numpy as jnp
        from .forecasts import load_ckpt
        leaves, step = load_ckpt(self.data, day)
        dyn, phys = jax.tree_util.tree_unflatten(self.treedef, [jnp.asarray(l) for l in leaves])
        return dyn, phys, step

    def perturbed_start(self, day: int, t_rms=None, wind_factor=None, nmax=10, seed=20261126, lookback=120):
        """The truth of `day` plus the perturbation recipe of `forecasts.Forecaster.run` (same defaults, same random
        choice of the two nature days for launch day `day`): alpha * P_{1<=n<=nmax}(S(a) - S(b))."""
        from .forecasts import perturb, perturbation_days
        t_rms = START_T_RMS if t_rms is None else t_rms
        wind_factor = START_WIND_FACTOR if wind_factor is None else wind_factor
        da, db = perturbation_days(day, seed, lookback)
        dyn, phys, step = self.truth_state(day)
        dA, _, _ = self.truth_state(da)
        dB, _, _ = self.truth_state(db)
        mask = ((self.total_wavenumber >= 1) & (self.total_wavenumber <= nmax)).astype(np.float32)
        new, alpha = perturb(self.m.coords.horizontal, mask, dyn, dA, dB, t_rms, wind_factor)
        return new, phys, step, {"a": int(da), "b": int(db), "alpha": alpha}

    def set(self, dyn, phys, step: int):
        import jax
        jcmrun.restore_from_leaves(self.m, self.tmpl, jax.tree_util.tree_leaves((dyn, phys)), step)

    def current(self):
        rs = self.m.run_state
        return rs.dynamics, rs.physics, int(rs.step)

    def step6h(self) -> np.ndarray:
        """Runs 6 h; returns the gridpoint state at the end (latentda layout, float64)."""
        p = self.m.resume(forcing=self.forcing, save_interval=0.25, total_time=0.25)
        return jcmrun.physics_to_latentda(p.dynamics)[-1].astype(np.float64)

    def step6h_iau(self, inc: dict, parts: int) -> np.ndarray:
        """Runs 6 h as an incremental analysis update: 1/parts of the spectral increment `inc` is added before each
        of `parts` equal sub-intervals (forward IAU: the whole increment is in by the end). Returns the gridpoint
        state at the end."""
        for _ in range(parts):
            dyn, phys, step = self.current()
            self.set(apply_increment(dyn, inc, 1.0 / parts), phys, step)
            p = self.m.resume(forcing=self.forcing, save_interval=0.25 / parts, total_time=0.25 / parts)
        return jcmrun.physics_to_latentda(p.dynamics)[-1].astype(np.float64)

    def save(self, path: str, extra: dict):
        import jax
        dyn, phys, step = self.current()
        leaves = [np.asarray(jax.device_get(l)) for l in jax.tree_util.tree_leaves((dyn, phys))]
        tmp = path + ".partial.npz"
        np.savez(tmp, *leaves, step=step, extra=json.dumps(extra))
        os.replace(tmp, path)

    def save_states(self, path: str, states: list):
        """Several (dyn, phys, step) states (the lagged ensemble's running forecasts) in one file."""
        import jax
        arrays = {}
        for i, (dyn, phys, step) in enumerate(states):
            for j, l in enumerate(jax.tree_util.tree_leaves((dyn, phys))):
                arrays[f"s{i}_{j}"] = np.asarray(jax.device_get(l))
            arrays[f"s{i}_step"] = np.asarray(step)
        tmp = path + ".partial.npz"
        np.savez(tmp, n=len(states), **arrays)
        os.replace(tmp, path)

    def load_states(self, path: str) -> list:
        import jax
        import jax.numpy as jnp
        z = np.load(path)
        out = []
        for i in range(int(z["n"])):
            nl = len([f for f in z.files if f.startswith(f"s{i}_") and f != f"s{i}_step"])
            leaves = [jnp.asarray(z[f"s{i}_{j}"]) for j in range(nl)]
            dyn, phys = jax.tree_util.tree_unflatten(self.treedef, leaves)
            out.append((dyn, phys, int(z[f"s{i}_step"])))
        return out

    def load(self, path: str) -> dict:
        z = np.load(path)
        n = len([f for f in z.files if f.startswith("arr_")])
        jcmrun.restore_from_leaves(self.m, self.tmpl, [z[f"arr_{i}"] for i in range(n)], int(z["step"]))
        return json.loads(str(z["extra"]))


# ------------------------------------------------------------------------------------------------------ scoring

class Nature:
    """The nature run's 6-hourly states by index (`data.truth_index`), one memory-mapped chunk file at a time
    (`data.nature` would read all 2 GB)."""

    def __init__(self, data: str):
        import glob
        self.files = sorted(glob.glob(os.path.join(data, "nature", "chunk_*.npy")))
        if not self.files:
            raise SystemExit(f"no nature run under {data}/nature (set --data or LATENTDA_DATA)")
        self.layout = json.load(open(os.path.join(data, "nature", "meta.json"))).get("layout", 1)
        self.chunks = [np.load(f, mmap_mode="r") for f in self.files]
        self.starts = np.cumsum([0] + [c.shape[0] for c in self.chunks])
        self.shape = (int(self.starts[-1]),) + self.chunks[0].shape[1:]

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.shape[0]:
            raise IndexError(f"nature state {i} outside 0..{self.shape[0] - 1}")
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        return D._layout_fix(np.asarray(self.chunks[k][i - self.starts[k]]), self.layout)


def area_rmse(d: np.ndarray, lat: np.ndarray) -> dict:
    """Area-weighted (cos latitude) RMSE per variable of a difference (41, nlat, nlon), as the runtime's demo."""
    w = np.cos(np.radians(lat))[None, :, None]
    return {v: float(np.sqrt(np.sum(w * d[sl] ** 2) / (np.sum(w) * d.shape[-1] * (sl.stop - sl.start))))
            for v, sl in D.VAR_SLICES.items()}


BANDS = {"nh": lambda lat: lat > 20.0, "tropics": lambda lat: np.abs(lat) <= 20.0, "sh": lambda lat: lat < -20.0}


def band_rmse(d: np.ndarray, lat: np.ndarray) -> dict:
    """`area_rmse` per latitude band (nh: lat > 20, tropics: |lat| <= 20, sh: lat < -20, as the runtime's
    Desroziers bands and the robustness matrix): {band: {variable: RMSE}}."""
    return {b: area_rmse(d[:, sel(lat)], lat[sel(lat)]) for b, sel in BANDS.items()}


def uniform_columns(seed: int, n: int = UNIFORM_COLUMNS, max_lat: float = 80.0) -> np.ndarray:
    """n column positions (lat, lon) uniform on the sphere within |lat| <= max_lat (the "uniform" network; a new
    draw per cycle, from the cycle's own seed)."""
    rng = np.random.default_rng(seed + 5000000)
    s = np.sin(np.radians(max_lat))
    plat = np.degrees(np.arcsin(rng.uniform(-s, s, n)))
    return np.stack([np.round(plat, 3), np.round(rng.uniform(0, 360, n), 3)], axis=1)


def observations(lda: Latentda, truth, lat, lon, sig, st, seed, network):
    """Observation arrays for lda_set_obs from `cases.make_obs` rows (network "uniform": the sonde variables at
    `uniform_columns(seed)` instead of the stations `st`)."""
    if network == "uniform":
        st, network = uniform_columns(seed), "sonde"
    rows = CS.make_obs(truth, lat, lon, sig, st, seed, network=network)
    ids = {n: lda.var_index(n) for n in NAMES}
    var = np.array([ids[r[0]] for r in rows], np.int32)
    la = np.array([r[1] for r in rows])
    lo = np.array([r[2] for r in rows])
    lev = np.array([float(r[3]) if r[3] != "" else np.nan for r in rows])
    val = np.array([r[4] for r in rows])
    sd = np.array([r[5] for r in rows])
    return var, la, lo, lev, val, sd


# ------------------------------------------------------------------------------------------------ adaptive B

def parse_options(text: str) -> dict:
    """latentda options TOML text -> dict."""
    import tomllib
    return tomllib.loads(text or "")


def options_text(opts: dict) -> str:
    """dict -> latentda options TOML text (numbers, strings, booleans, lists, tables as inline tables)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(float(v)) if isinstance(v, float) else str(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        raise ValueError(f"option value {v!r} cannot be written")
    return "".join(f"{k} = {val(v)}\n" for k, v in opts.items())


def desroziers_terms(report: dict, group: str = "all", band: str = "global"):
    """(sum (H x_a - H x_b) d_b / sigma_o^2, sum sigma_b^2 / sigma_o^2, sum d_a d_b / sigma_o^2, n, sum d_b^2 /
    sigma_o^2) of a latentda report's desroziers cell, or None when the report has no such cell, no used observation
    or no sigma_b."""
    d = report.get("desroziers") or {}
    for c in d.get("cells", []):
        if c["group"] == group and c["band"] == band:
            m = c["normalised"]
            if m["n"] == 0 or m.get("sum_hbh") is None:
                return None
            return m["sum_dhx_db"], m["sum_hbh"], m["sum_da_db"], m["n"], m["sum_db_db"]
    return None


def adaptive_scale(window: list, bounds=ADAPT_BOUNDS, default: float = 1.0) -> float:
    """The adaptive update: window = [(est, in_force, s_k), ...] of the last N cycles (est = sum (Hx_a - Hx_b) d_b /
    sigma_o^2, in_force = sum sigma_b^2 / sigma_o^2 of a report made with scale s_k); returns
    clip(sum est / sum (in_force / s_k), bounds). With no usable entry (or a non-positive denominator) it returns
    `default` clipped; a non-positive estimate gives the lower bound."""
    num = sum(e for e, _, _ in window)
    den = sum(i / s for _, i, s in window if s > 0)
    lo, hi = bounds
    if not window or not den > 0:
        return float(min(max(default, lo), hi))
    return float(min(max(num / den, lo), hi))


class AdaptiveB:
    """Online B sizing of one run (see the module documentation): the scale s, the window of Desroziers sums, and
    the options each cycle runs with. `state()`/`AdaptiveB(..., state=...)` carry it across a resume."""

    SCALED = {"3dvar": ("baseline_variance_factor",), "l3dvar": ("latent_variance_factor",),
              "l4dvar": ("latent_variance_factor",), "hybrid": ("hybrid_alpha", "hybrid_beta")}

    RULES = ("desroziers", "innovation")

    def __init__(self, method: str, options: str, window: int = ADAPT_WINDOW, bounds=ADAPT_BOUNDS,
                 state: dict | None = None, rule: str = "desroziers", split: bool = False, per_variable: bool = False,
                 static_variables=()):
        if method not in self.SCALED:
            raise ValueError(f"method {method} has no B to adapt")
        if rule not in self.RULES:
            raise ValueError(f"adaptive rule {rule!r} is not one of {self.RULES}")
        if split and method != "hybrid":
            raise ValueError("--adaptive-split is for method hybrid")
        if per_variable and (method != "hybrid" or split):
            raise ValueError("per-variable adaptive weights are hybrid weights (3D-Var runs as the hybrid with "
                             "alpha 0), and not with --adaptive-split")
        self.method, self.window, self.bounds, self.rule = method, int(window), tuple(bounds), rule
        self.split, self.per_variable = bool(split), bool(per_variable)
        if static_variables and not per_variable:
            raise ValueError("static variables (--static-variables) need the per-variable mode")
        self.static_variables = tuple(static_variables)
        self.start = parse_options(options)
        st = state or {}
        self.scale = float(st.get("scale", 1.0))
        self.history = [tuple(h) for h in st.get("history", [])]
        # split mode: per-weight multipliers of the starting alpha and beta, and per cycle the cells' sums
        self.weights = [float(x) for x in st.get("weights", [1.0, 1.0])]
        self.cell_history = [dict((k, tuple(v)) for k, v in h.items()) for h in st.get("cell_history", [])]
        # per-variable mode: the multiplier of each "variable/class" (class x: extratropics, t: tropics) and per
        # cycle the cells' (estimate, H B H^T in force per unit multiplier, n)
        self.var_scales = {k: float(v) for k, v in st.get("var_scales", {}).items()}
        self.var_history = [dict((k, tuple(v)) for k, v in h.items()) for h in st.get("var_history", [])]
        self.variables = list(st.get("variables", []))
        # the starting values of the scaled options; missing ones (the bundle's defaults) come from the first report
        self.base = dict(st.get("base", {}))
        for k in self.SCALED[method]:
            if k in self.start:
                self.base.setdefault(k, float(self.start[k]))

    def ready(self) -> bool:
        """Whether every scaled option has a starting value (else the next cycle runs with the start options)."""
        return all(k in self.base for k in self.SCALED[self.method])

    def options(self) -> dict:
        """The options of the next cycle: the start options with the scaled ones multiplied by s."""
        o = dict(self.start)
        if self.ready() and self.split:
            o.update({k: self.base[k] * w for k, w in zip(self.SCALED["hybrid"], self.weights)})
            if len(self.weights) == 3:
                o["ensemble_gamma"] = float(self.start["ensemble_gamma"]) * self.weights[2]
        elif self.ready():
            o.update({k: self.base[k] * self.scale for k in self.SCALED[self.method]})
            if self.per_variable and (self.var_scales or self.static_variables):
                a, b = self.base["hybrid_alpha"], self.base["hybrid_beta"]
                sc = lambda v, c: self.var_scales.get(f"{v}/{c}", self.scale)
                w = {}
                for v in self.variables or self.static_variables:
                    # a static variable: its latent weight moved to the static part (the same total variance)
                    al, be = (0.0, a + b) if v in self.static_variables else (a, b)
                    w[v] = {"alpha": al * sc(v, "x"), "beta": be * sc(v, "x"),
                            "alpha_tropics": al * sc(v, "t"), "beta_tropics": be * sc(v, "t")}
                o["hybrid_variable_weights"] = w
        return o

    def update(self, report: dict) -> dict:
        """Adds the cycle's report (run with options() at the current scale); returns the log entry of the cycle."""
        used = {k: v for k, v in self.options().items() if k in self.SCALED[self.method]}
        bif = (report.get("desroziers") or {}).get("b_in_force") or {}
        if not self.ready():
            # the first report says what the bundle's defaults are (s = 1 so far)
            for k in self.SCALED[self.method]:
                if k not in self.base and bif.get(k) is not None:
                    self.base[k] = float(bif[k]) / self.scale
            used = {k: bif.get(k) for k in self.SCALED[self.method]}
        t = desroziers_terms(report)
        entry = {"scale": self.scale, "options": used}
        if t is not None:
            est, inf, dadb, n, dbdb = t
            if self.rule == "innovation":
                # H B H^T = E[d_b^2] - R (R taken as right): the scalar model's fixed point in one step
                est = dbdb - n
            self.history.append((est, inf, self.scale))
            self.history = self.history[-self.window:]
            entry.update(hbh_ratio=est / inf if inf > 0 else None, r_ratio=dadb / n, n=n)
        if self.split:
            self._update_split(report, bif, entry)
        else:
            if self.per_variable:
                self._update_per_variable(report, entry)
            self.scale = adaptive_scale(self.history, self.bounds, self.scale)
        entry["scale_next"] = self.scale
        return entry

    def _update_per_variable(self, report: dict, entry: dict):
        """Per-variable mode: each variable and class sized on its own over the window (variable_scales)."""
        entry["var_scales"] = dict(self.var_scales)
        if not self.variables:
            self.variables = [c["group"] for c in (report.get("desroziers") or {}).get("cells", [])
                              if c["band"] == "global" and c["group"] not in COMPOSITE]
        cells = variable_cells(report, self.rule)
        if cells:
            self.var_history.append({k: (e, i / self.var_scales.get(k, self.scale), n) for k, (e, i, n) in cells.items()})
            self.var_history = self.var_history[-self.window:]
        if len(self.var_history) < self.window:
            # as the split mode: until the window is full every variable follows the global scale
            self.var_scales = {}
        elif self.ready():
            self.var_scales = variable_scales(self.var_history, self.variables, self.bounds)
        entry["var_scales_next"] = dict(self.var_scales)

    def _update_split(self, report: dict, bif: dict, entry: dict):
        """Split mode: alpha and beta fitted separately (hybrid_split) over the window's cells, each bounded."""
        entry["weights"] = list(self.weights)
        a, b, g = bif.get("hybrid_alpha"), bif.get("hybrid_beta"), bif.get("ensemble_gamma")
        cells = split_cells(report, self.rule, a, b, g) if a and b else {}
        if cells:
            self.cell_history.append(cells)
            self.cell_history = self.cell_history[-self.window:]
        fit = hybrid_split(self.cell_history)
        lo, hi = self.bounds
        if len(self.cell_history) < self.window:
            # two weights from less than a full window are too noisy (and the first cycles after a perturbed start
            # are not representative): until the window is full, both weights are scaled together
            s = adaptive_scale(self.history, self.bounds, self.scale)
            self.weights = [s, s]
        elif fit is not None and self.ready():
            alpha, beta, cos = fit[0], fit[1], fit[-1]
            self.weights = [min(max(alpha / self.base["hybrid_alpha"], lo), hi),
                            min(max(beta / self.base["hybrid_beta"], lo), hi)]
            entry["split"] = {"alpha": alpha, "beta": beta, "cosine": cos}
            if len(fit) == 4 and "ensemble_gamma" in self.start:
                # the ensemble weight fitted with them (from the run's starting gamma, bounded the same way)
                g0 = float(self.start["ensemble_gamma"])
                self.weights.append(min(max(fit[2] / g0, lo), hi))
                entry["split"]["gamma"] = fit[2]
        # the plotted scale: the geometric mean of the two multipliers
        self.scale = float(np.sqrt(self.weights[0] * self.weights[1]))
        entry["weights_next"] = list(self.weights)

    def state(self) -> dict:
        return {"scale": self.scale, "history": [list(h) for h in self.history], "base": self.base,
                "weights": self.weights, "cell_history": [{k: list(v) for k, v in h.items()} for h in self.cell_history],
                "var_scales": self.var_scales, "variables": self.variables,
                "var_history": [{k: list(v) for k, v in h.items()} for h in self.var_history]}


SPLIT_MAX_COSINE = 0.995   # as src/var/desroziers.rs


def split_cells(report: dict, rule: str, alpha: float, beta: float, gamma: float | None = None) -> dict:
    """Per disjoint cell "var/band" (bundle variable x nh / tropics / sh) of a hybrid report: (estimate of H B H^T,
    latent H B H^T in force per unit alpha, static per unit beta[, ensemble per unit gamma when the report has an
    ensemble part and gamma > 0]), normalised sums (as `latentda tune`)."""
    out = {}
    for c in (report.get("desroziers") or {}).get("cells", []):
        m = c["normalised"]
        if c["band"] == "global" or c["group"] in COMPOSITE or m["n"] == 0:
            continue
        if m.get("sum_hbh_latent") is None or m.get("sum_hbh_static") is None:
            continue
        est = m["sum_db_db"] - m["n"] if rule == "innovation" else m["sum_dhx_db"]
        cell = (est, m["sum_hbh_latent"] / alpha, m["sum_hbh_static"] / beta)
        if gamma and m.get("sum_hbh_ensemble") is not None:
            cell += (m["sum_hbh_ensemble"] / gamma,)
        out[f"{c['group']}/{c['band']}"] = cell
    return out


def variable_cells(report: dict, rule: str) -> dict:
    """Per "variable/class" (class x: the nh and sh cells, t: the tropics) of a report: (estimate of H B H^T, H B H^T
    in force, n), normalised sums (as `latentda tune --per-variable`)."""
    out = {}
    for c in (report.get("desroziers") or {}).get("cells", []):
        m = c["normalised"]
        if c["band"] == "global" or c["group"] in COMPOSITE or m["n"] == 0 or m.get("sum_hbh") is None:
            continue
        est = m["sum_db_db"] - m["n"] if rule == "innovation" else m["sum_dhx_db"]
        k = f"{c['group']}/{'t' if c['band'] == 'tropics' else 'x'}"
        e, i, n = out.get(k, (0.0, 0.0, 0))
        out[k] = (e + est, i + m["sum_hbh"], n + m["n"])
    return out


def variable_scales(history: list, variables: list, bounds=ADAPT_BOUNDS) -> dict:
    """The multiplier of each "variable/class" over the window `history` (per cycle {key: (estimate, H B H^T in
    force per unit multiplier, n)}): sum estimate / sum in-force, bounded; a variable with fewer than MIN_CELL_OBS
    observations in a class takes its group's (wind, mass) multiplier, else the one over all variables but at most 1
    (no observation of its group: its starting B is never raised; the twin of desroziers::variable_scales and
    adaptive.rs)."""
    acc = {}
    for h in history:
        for k, v in h.items():
            acc[k] = np.add(acc.get(k, 0.0), v)
    lo, hi = bounds

    def ratio(members, cls):
        e, i, n = np.sum([acc[f"{m}/{cls}"] for m in members if f"{m}/{cls}" in acc] or [(0.0, 0.0, 0.0)], axis=0)
        return e / i if n >= MIN_CELL_OBS and i > 0 and e > 0 else None

    out = {}
    for v in variables:
        group = next((m for m in GROUPS.values() if v in m), ())
        for cls in ("x", "t"):
            r = ratio([v], cls) or (ratio(group, cls) if group else None)
            if r is None:
                r = min(ratio(variables, cls) or 1.0, 1.0)
            out[f"{v}/{cls}"] = float(min(max(r, lo), hi))
    return out


def hybrid_split(history: list):
    """Non-negative least squares E_c ~ alpha L_c + beta S_c [+ gamma G_c] over the cells summed over the window (the
    Python twin of desroziers::hybrid_split: every subset of the parts solved, the feasible one with the smallest
    residual kept; refused when the parts' normalised Gram determinant is below 1 - SPLIT_MAX_COSINE^2). Returns
    (alpha, beta, cosine) or (alpha, beta, gamma, cosine) when the cells carry an ensemble part; None when the parts
    cannot be told apart or there are fewer than two cells. Cells without the ensemble part count it as 0."""
    acc = {}
    for h in history:
        for k, v in h.items():
            v = tuple(v) + (0.0,) * (4 - len(v))
            acc[k] = np.add(acc.get(k, 0.0), v)
    if len(acc) < 2:
        return None
    a = np.array(list(acc.values()), float)
    e, parts = a[:, 0], a[:, 1:]
    if not np.any(parts[:, 2] != 0.0):
        parts = parts[:, :2]
    p = parts.shape[1]
    gram, rhs = parts.T @ parts, parts.T @ e
    if np.any(np.diag(gram) <= 0):
        return None
    norm = gram / np.sqrt(np.outer(np.diag(gram), np.diag(gram)))
    cos = float(max(norm[i, j] for i in range(p) for j in range(i + 1, p)))
    if np.linalg.det(norm) < 1.0 - SPLIT_MAX_COSINE ** 2:
        return None
    best = None
    for mask in range(1, 1 << p):
        idx = [i for i in range(p) if mask >> i & 1]
        try:
            w = np.linalg.solve(gram[np.ix_(idx, idx)], rhs[idx])
        except np.linalg.LinAlgError:
            continue
        if np.any(w < 0):
            continue
        full = np.zeros(p)
        full[idx] = w
        res = e @ e - 2 * full @ rhs + full @ gram @ full
        if best is None or res < best[0]:
            best = (res, full)
    if best is None or best[1].sum() <= 0:
        return None
    return tuple(float(x) for x in best[1]) + (cos,)


def desroziers_brief(report: dict) -> dict:
    """Per band, the Desroziers ratios of all used observations (R, H B H^T) of a report, for the metrics."""
    out = {}
    for c in (report.get("desroziers") or {}).get("cells", []):
        if c["group"] == "all" and c["n"] > 0:
            out[c["band"]] = {"n": c["n"], "r_ratio": c["r_ratio"], "hbh_ratio": c["hbh_ratio"],
                              "innovation_ratio": c.get("innovation_ratio")}
    return out


# ------------------------------------------------------------------------------------------------------ the run

def settings_of(a) -> dict:
    s = {"method": a.method, "network": a.network, "start_day": a.start_day, "spinup_days": a.spinup_days,
         "days": a.days, "bundle": os.path.abspath(a.bundle), "options": a.options, "obs_seed": OBS_SEED}
    if getattr(a, "ensemble", "none") != "none":
        s["ensemble"] = {"kind": a.ensemble, "members": a.members, "gamma": a.ensemble_gamma,
                         "space": getattr(a, "ensemble_space", "latent")}
        if getattr(a, "eda_recentre", False):
            s["ensemble"]["recentre"] = True
    if getattr(a, "adaptive", False):
        s["adaptive"] = {"window": a.adaptive_window, "bounds": list(a.adaptive_bounds), "rule": a.adaptive_rule,
                         "group": "all", "band": "global", "split": bool(getattr(a, "adaptive_split", False))}
        if getattr(a, "adaptive_per_variable", False):
            s["adaptive"]["per_variable"] = True
            if getattr(a, "static_variables", None):
                s["adaptive"]["static_variables"] = a.static_variables
        if getattr(a, "adaptive_in_library", False):
            s["adaptive"]["in_library"] = True
    if getattr(a, "increment_truncation", None) is not None:
        s["increment_truncation"] = a.increment_truncation
    if getattr(a, "iau", None):
        s["iau"] = a.iau
    start = (getattr(a, "start_t_rms", START_T_RMS), getattr(a, "start_wind_factor", START_WIND_FACTOR))
    if start != (START_T_RMS, START_WIND_FACTOR):
        s["start_perturbation"] = {"t_rms": start[0], "wind_factor": start[1]}
    if mix_shares(a):
        s["choose_mix"] = {"shares": mix_shares(a), "window": a.choose_window, "seed": MIX_SEED,
                           "by": getattr(a, "choose_by", "withheld")}
        if getattr(a, "choose_in_library", False):
            s["choose_mix"]["in_library"] = True
        if getattr(a, "mix_hemispheres", False):
            s["choose_mix"]["hemispheres"] = True
    return s


def mix_shares(a) -> list:
    """The latent shares of --choose-mix (empty without it)."""
    m = getattr(a, "choose_mix", None)
    return [float(x) for x in m.split(",")] if m else []


def run_name(a) -> str:
    """The run's folder name under OUT/<network>/: the method, "-lagged<K>" with a lagged ensemble, "-adaptive" for
    an adaptive B."""
    mix_tag = {"forecast": "-mixf", "persistence": "-mixp"}.get(getattr(a, "choose_by", "withheld"), "-mix")
    if getattr(a, "choose_in_library", False):
        mix_tag = mix_tag.replace("-mix", "-mixl")
    if getattr(a, "mix_hemispheres", False):
        mix_tag += "h"
    name = a.method + (mix_tag if mix_shares(a) else "")
    if getattr(a, "ensemble", "none") != "none":
        name += f"-{a.ensemble}{a.members}" + ("r" if getattr(a, "eda_recentre", False) else "") \
            + ("m" if getattr(a, "ensemble_space", "latent") == "model" else "")
    if getattr(a, "increment_truncation", None) is not None:
        name += f"-t{a.increment_truncation}"
    if getattr(a, "iau", None):
        name += f"-iau{a.iau}"
    if getattr(a, "start_t_rms", START_T_RMS) != START_T_RMS or \
            getattr(a, "start_wind_factor", START_WIND_FACTOR) != START_WIND_FACTOR:
        name += f"-start{a.start_t_rms:g}x{a.start_wind_factor:g}"
    if not getattr(a, "adaptive", False):
        return name
    lib = "-lib" if getattr(a, "adaptive_in_library", False) else ""
    sv = static_variables(a)   # with the scalar sizing: library sizing only (AdaptiveB refuses it)
    sq = f"-s{'+'.join(sv)}" if sv else ""
    if getattr(a, "adaptive_per_variable", False):
        return name + "-adaptive-pv" + sq + lib
    return name + ("-adaptive-split" if getattr(a, "adaptive_split", False) else "-adaptive") + sq + lib


def static_variables(a) -> tuple:
    """The variables of --static-variables (empty when not given)."""
    sv = getattr(a, "static_variables", None)
    return tuple(sv.split(",")) if sv else ()


def analysis_method(a) -> str:
    """The method latentda runs: the run's, except 3D-Var with per-variable adaptive weights, which runs as the hybrid
    with alpha 0 (the same static B, its variance weighted per variable and band)."""
    return "hybrid" if a.method == "3dvar" and getattr(a, "adaptive_per_variable", False) else a.method


def run_options(a) -> str:
    """The options text of the run: --options, plus the ensemble weight when the run has members (and hybrid alpha 0,
    beta 1 for 3D-Var run as the hybrid, see analysis_method)."""
    if analysis_method(a) != a.method:
        return a.options + "\nhybrid_alpha = 0.0\nhybrid_beta = 1.0"
    if getattr(a, "ensemble", "none") == "none":
        return a.options
    space = getattr(a, "ensemble_space", "latent")
    return a.options + f"\nensemble_gamma = {a.ensemble_gamma}" + (f'\nensemble_space = "{space}"' if space != "latent" else "")


def start_weights(bundle: str, opts: dict) -> tuple:
    """The hybrid weights (alpha, beta) a run starts from: the options', else the bundle's [hybrid], else 1."""
    import tomllib
    with open(os.path.join(bundle, "bundle.toml"), "rb") as f:
        h = tomllib.load(f).get("hybrid", {})
    return float(opts.get("hybrid_alpha", h.get("alpha", 1.0))), float(opts.get("hybrid_beta", h.get("beta", 1.0)))


def library_adaptive_options(a, folder: str) -> str:
    """--adaptive-in-library: the options that make latentda size the B itself (option adaptive_state, the twin of
    AdaptiveB in src/var/adaptive.rs), with the state file in the run's folder. Static variables get alpha 0 and
    beta alpha + beta of the starting weights (the options', else the bundle's [hybrid]), as AdaptiveB gives them."""
    if getattr(a, "adaptive_split", False):
        raise SystemExit("--adaptive-in-library sizes one scale or per variable, not --adaptive-split")
    o = parse_options(run_options(a))
    o.update(adaptive_state=os.path.join(folder, LIB_STATE), adaptive_window=int(a.adaptive_window),
             adaptive_bounds=[float(x) for x in a.adaptive_bounds], adaptive_rule=a.adaptive_rule,
             adaptive_per_variable=bool(getattr(a, "adaptive_per_variable", False)))
    sv = static_variables(a)
    if sv:
        if analysis_method(a) != "hybrid":
            raise SystemExit("--static-variables is for method hybrid")
        al, be = start_weights(a.bundle, o)
        table = dict(o.get("hybrid_variable_weights", {}))   # entries of --options kept, static variables added
        table.update({v: {"alpha": 0.0, "beta": al + be} for v in sv})
        o["hybrid_variable_weights"] = table
    return options_text(o)


def library_adaptive_entry(rep: dict) -> dict:
    """The metrics' "adaptive" entry of a cycle sized by the library, in AdaptiveB's terms (scale, per-variable
    multipliers as "var/x" and "var/t")."""
    ad = rep.get("adaptive") or {}
    flat = lambda m: {f"{v}/{c}": x for v, xs in (m or {}).items() for c, x in zip(("x", "t"), xs)}
    bif = (rep.get("desroziers") or {}).get("b_in_force") or {}
    keys = ("baseline_variance_factor", "latent_variance_factor", "hybrid_alpha", "hybrid_beta")
    return {"scale": ad.get("multiplier"), "scale_next": ad.get("multiplier_next"), "hbh_ratio": ad.get("hbh_ratio"),
            "options": {k: bif[k] for k in keys if bif.get(k) is not None},
            "var_scales": flat(ad.get("variable_multipliers")), "var_scales_next": flat(ad.get("variable_multipliers_next")),
            "in_library": True}


def advance_lagged(model, x_b: np.ndarray, lag: list, k: int):
    """The time-lagged ensemble of this cycle: the background x_b (the 6 h forecast of the last analysis, the model's
    current state) and the earlier analyses' running forecasts `lag` (valid 6 h ago, newest first) each run on 6 h:
    leads 6, 12, ..., 6 k hours, all valid now. Returns (members, lag of the next cycle); the model is left at the
    background. members is None until k are available (the first k - 1 cycles run without an ensemble)."""
    bg = model.current()
    xs, after = forecast_states(model, lag[:k - 1])
    xs, new_lag = [x_b] + xs, [bg] + after
    return (np.stack(xs) if len(xs) >= k else None), new_lag[:k - 1]


def forecast_states(model, states: list):
    """Each (dyn, phys, step) of `states` run on 6 h: (their gridpoint states, their spectral states after); the
    model is left where it was."""
    here = model.current()
    xs, after = [], []
    for dyn, phys, step in states:
        model.set(dyn, phys, step)
        xs.append(model.step6h())
        after.append(model.current())
    model.set(*here)
    return xs, after


def forecast6(model, x_b: np.ndarray, x_a: np.ndarray) -> np.ndarray:
    """The 6 h forecast of an analysis x_a of the model's current state x_b (the increment put in as the cycle puts
    it); the model is left where it was."""
    dyn_b, phys, step = model.current()
    xs, _ = forecast_states(model, [(add_increment(model.m, dyn_b, x_b, x_a), phys, step)])
    return xs[0]


def context(a, options: str, nlat: int, nlon: int):
    """A latentda context with `options` and the host arrays bound to it."""
    lda = Latentda(a.lib, a.bundle, options)
    return lda, HostFields(lda, nlat, nlon)


def mix_chooser(a, folder: str, base: dict, state, open_context, refused: bool):
    """--choose-mix: the MixChooser of the run (cycle_mix.py). The candidates share the run's total weight alpha + beta
    (the options', else the bundle's [hybrid]) and its static variables."""
    if a.method != "hybrid" or refused:
        raise SystemExit("--choose-mix is for method hybrid without an ensemble, with a fixed B or "
                         "--adaptive-in-library (the candidates read the library's state file)")
    return CM.MixChooser(mix_shares(a), a.choose_window, base, sum(start_weights(a.bundle, base)), static_variables(a),
                         NAMES, folder, open_context, state, getattr(a, "choose_by", "withheld"))


def run(a, model: Model | None = None, log=print) -> str:
    """Runs (or resumes) one method's experiment; returns its folder."""
    from . import balance as BAL
    if a.method not in METHODS:
        raise SystemExit(f"--method must be one of {METHODS}")
    if a.network not in NETWORKS:
        raise SystemExit(f"--network must be one of {NETWORKS}")
    adaptive = getattr(a, "adaptive", False)
    if adaptive and a.method == "none":
        raise SystemExit("--adaptive needs an assimilating method")
    ens_k = a.members if getattr(a, "ensemble", "none") == "lagged" else 0
    eda_k = a.members if getattr(a, "ensemble", "none") == "eda" else 0
    if getattr(a, "adaptive_per_variable", False) and (not adaptive or a.method not in ("3dvar", "hybrid")
                                                       or ens_k or eda_k or getattr(a, "adaptive_split", False)):
        raise SystemExit("--adaptive-per-variable needs --adaptive, method 3dvar or hybrid, no ensemble and no "
                         "--adaptive-split")
    if getattr(a, "increment_truncation", None) is not None and (ens_k or eda_k or mix_shares(a)
                                                                 or a.method == "none" or a.increment_truncation < 0):
        raise SystemExit("--increment-truncation N (N >= 0) is for an assimilating control run without --choose-mix "
                         "or an ensemble")
    if getattr(a, "iau", None) is not None and (ens_k or eda_k or mix_shares(a) or a.method == "none"
                                                or a.iau < 1 or 12 % a.iau):
        raise SystemExit("--iau N (N divides 12: sub-intervals of whole model steps) is for an assimilating control "
                         "run without --choose-mix or an ensemble")
    if (ens_k or eda_k) and a.method not in ("3dvar", "hybrid"):
        raise SystemExit("--ensemble is for methods 3dvar (then hybrid 3DEnVar) and hybrid (latent hybrid EnVar)")
    if (ens_k or eda_k) and max(ens_k, eda_k) < 2:
        raise SystemExit("--members must be at least 2")
    folder = os.path.join(a.out, a.network, run_name(a))
    os.makedirs(folder, exist_ok=True)
    settings = settings_of(a)
    sp = os.path.join(folder, "settings.json")
    ckpt = os.path.join(folder, "state.npz")
    metrics = os.path.join(folder, "metrics.jsonl")
    lag_file = os.path.join(folder, "lagged.npz")
    lag = []
    eda_file = os.path.join(folder, "eda.npz")
    eda = []   # the perturbed-observation members' analyses (dyn, phys, step), valid at the last analysis time
    if os.path.exists(ckpt) and os.path.exists(sp):
        old = json.load(open(sp))
        if {k: v for k, v in old.items() if k != "days"} != {k: v for k, v in settings.items() if k != "days"}:
            raise SystemExit(f"{folder} holds a run with other settings ({old}); use another --out or delete it")
    json.dump(settings, open(sp, "w"), indent=1)
    lat, lon, sig = D.grid(a.data)
    X = Nature(a.data)
    st = CS.stations(lat, lon)
    t0_day = a.start_day - a.spinup_days
    n_cycles = int(round(4 * (a.spinup_days + a.days)))
    if 4 * a.start_day - 1 + 4 * a.days + FORECAST_CYCLES >= X.shape[0]:
        raise SystemExit(f"the nature run ends before day {a.start_day + a.days} + 48 h")
    t_load = time.time()
    model = model or Model(a.data)
    adapt_state = adapt_lib = mix_state = None
    if os.path.exists(ckpt):
        extra = model.load(ckpt)
        cycle = extra["cycle"]
        adapt_state = extra.get("adaptive")
        adapt_lib = extra.get("adaptive_lib")
        mix_state = extra.get("mix")
        if ens_k:
            lag = model.load_states(lag_file)
        if eda_k:
            eda = model.load_states(eda_file)
        kept = [l for l in open(metrics)] if os.path.exists(metrics) else []
        kept = [l for l in kept if json.loads(l)["cycle"] <= cycle]
        open(metrics, "w").writelines(kept)
        log(f"{a.method}/{a.network}: resumed after cycle {cycle} of {n_cycles}")
    else:
        dyn, phys, step, info = model.perturbed_start(t0_day, t_rms=getattr(a, "start_t_rms", START_T_RMS),
                                                      wind_factor=getattr(a, "start_wind_factor", START_WIND_FACTOR))
        model.set(dyn, phys, step)
        cycle = 0
        open(metrics, "w").close()
        # EDA members: their own perturbed starts (other day pairs of the same recipe)
        eda = [model.perturbed_start(t0_day, seed=EDA_SEED + k)[:3] for k in range(eda_k)]
        log(f"{a.method}/{a.network}: perturbed start at day {t0_day} 00 UTC (days {info['a']}, {info['b']}, "
            f"alpha {info['alpha']:.3f}); {n_cycles} cycles")
    trunc = getattr(a, "increment_truncation", None)
    iau = getattr(a, "iau", None)
    # --iau: the spectral increment the next 6 h add (on a resume, from the checkpointed background and analysis)
    iau_inc = (spectral_increment(model.m, *load_iau_pending(os.path.join(folder, IAU_PENDING), cycle), trunc)
               if iau and cycle > 0 else None)
    lda = host = adapt = None
    eda_lda = eda_host = None
    eda_options = None
    in_library = adaptive and getattr(a, "adaptive_in_library", False)
    if in_library and (ens_k or eda_k):
        raise SystemExit("--adaptive-in-library is for runs without an ensemble")
    if adaptive and not in_library:
        adapt = AdaptiveB(analysis_method(a), run_options(a), a.adaptive_window, a.adaptive_bounds, adapt_state,
                          a.adaptive_rule, getattr(a, "adaptive_split", False), getattr(a, "adaptive_per_variable", False),
                          static_variables(a))
    lib_state = os.path.join(folder, LIB_STATE)
    if in_library and cycle == 0 and os.path.exists(lib_state):
        os.remove(lib_state)   # a new run starts at the options' B
    elif in_library and adapt_lib is not None:
        with open(lib_state, "w") as f:   # the state of the checkpoint's cycle (a later analysis may have advanced it)
            f.write(adapt_lib)
    lda_options = (library_adaptive_options(a, folder) if in_library
                   else options_text(adapt.options()) if adapt else run_options(a))
    chooser = None
    lib_mix = bool(mix_shares(a)) and getattr(a, "choose_in_library", False)
    current = {}   # the cycle's background, for the step model callback of the library's online mix
    if lib_mix:
        if a.method != "hybrid" or ens_k or eda_k or a.choose_by == "withheld":
            raise SystemExit("--choose-in-library is for method hybrid without an ensemble, with --choose-by forecast "
                             "or persistence")
        mix_file = os.path.join(folder, "mix_lib.json")
        if cycle > 0:   # the library's mix state of the checkpoint's cycle (a later analysis may have advanced it)
            load_lib_mix(os.path.join(folder, LIB_MIX), cycle, mix_file)
        else:
            for f in (mix_file, mix_file + ".fields"):
                if os.path.exists(f):
                    os.remove(f)
        lda_options += (f"\nmix_candidates = {mix_shares(a)!r}\nmix_state = {json.dumps(mix_file)}\n"
                        f"mix_window = {a.choose_window}\n"
                        f"mix_score = \"{'model' if a.choose_by == 'forecast' else 'persistence'}\"")
        if getattr(a, "mix_hemispheres", False):
            lda_options += "\nmix_hemispheres = true"
    elif getattr(a, "mix_hemispheres", False):
        raise SystemExit("--mix-hemispheres is for the library's online mix (--choose-mix with --choose-in-library)")
    elif mix_shares(a):
        chooser = mix_chooser(a, folder, parse_options(lda_options), mix_state,
                              lambda o: context(a, options_text(o), len(lat), len(lon)), adapt is not None
                              or ens_k or eda_k)
        lda_options = options_text(chooser.options())
        if chooser.mode in CM.NEXT_CYCLE_MODES:
            chooser.load_pending(os.path.join(folder, MIX_PENDING), cycle)
    if a.method != "none":
        lda, host = context(a, lda_options, len(lat), len(lon))
        if lib_mix:   # the library forecasts each candidate 6 h with jcm, as the cycle forecasts its analysis
            lda.set_step_model(lambda x: forecast6(model, current["x_b"], x.reshape(current["x_b"].shape)), 6.0)
    log(f"model and latentda ready in {time.time() - t_load:.1f} s")
    with open(metrics, "a") as mf:
        while cycle < n_cycles:
            tc = time.time()
            c = cycle + 1
            iau_next = None
            x_b = model.step6h_iau(iau_inc, iau) if iau_inc is not None else model.step6h()
            t_fc = time.time() - tc
            members = None
            if ens_k:
                tm = time.time()
                members, lag = advance_lagged(model, x_b, lag, ens_k)
                t_members = time.time() - tm
            if eda_k:
                tm = time.time()
                members, eda_fc = advance_eda(model, eda)
                t_members = time.time() - tm
            truth = np.asarray(X[4 * t0_day - 1 + c], np.float64)
            rec = {"cycle": c, "day": t0_day + c // 4, "hour": 6 * (c % 4), "scored": c > 4 * a.spinup_days,
                   "bg": area_rmse(x_b - truth, lat), "bg_bands": band_rmse(x_b - truth, lat),
                   "bg_balance_true": BAL.balance(x_b, truth, lat, lon)}
            if lda is not None:
                ta = time.time()
                if adapt is not None and options_text(adapt.options()) != lda_options:
                    # the C ABI takes options at lda_open: a new context with the new B size, arrays bound again
                    lda.close()
                    lda_options = options_text(adapt.options())
                    lda, host = context(a, lda_options, len(lat), len(lon))
                obs = observations(lda, truth, lat, lon, sig, st, OBS_SEED + c, a.network)
                if lib_mix and hasattr(lda.lib, "lda_set_analysis_time"):   # hours from the start: forecasts made
                    lda.set_analysis_time(6.0 * c)                           # for another time are not scored
                if chooser is not None:
                    # withheld: the candidates on halves of this cycle's observations; forecast: the candidates' 6 h
                    # forecasts from the last cycle against these observations, then this cycle's candidates.
                    # Then the run's analysis, with all the observations.
                    tm = time.time()
                    if chooser.mode == "withheld":
                        rec["mix"] = chooser.evaluate(x_b, obs, MIX_SEED + c)
                    else:
                        rec["mix"] = chooser.verify(x_b, obs, {lda.var_index(n): n for n in NAMES})
                        chooser.propose(x_b, obs, (lambda x_a: x_a) if chooser.mode == "persistence"
                                        else lambda x_a: forecast6(model, x_b, x_a))
                    rec["t_mix"] = time.time() - tm
                    chosen = options_text(chooser.options())
                    if chosen != lda_options:
                        lda.close()
                        lda_options = chosen
                        lda, host = context(a, lda_options, len(lat), len(lon))
                host.load(x_b)
                current["x_b"] = x_b
                lda.set_obs(*obs)
                if members is not None:
                    lda.set_ensemble(members)
                lda.analyse(analysis_method(a))
                x_a = host.state()
                if chooser is not None:
                    chooser.relative_to(x_a)
                rep = lda.report()
                if lib_mix:   # the library's choice, recorded as the driver's chooser records its own
                    m = rep["mix"]
                    classes = m.get("classes") or list(CM.CLASSES)
                    rec["mix"] = {"choice": {v: dict(zip(classes, x)) for v, x in m["choice"].items()},
                                  "mean_d": {CM.share_name(L): d for L, d in zip(m["candidates"], m["scored"])},
                                  "notes": m["notes"]}
                    rec["t_mix"] = m["candidates_s"]
                qc = lda.obs_qc(len(obs[0]))
                dyn_b, phys, step = model.current()
                inc = spectral_increment(model.m, x_b, x_a, trunc)
                dyn_a = apply_increment(dyn_b, inc)
                # forecast impact: the 6 h forecast of the background itself (this cycle without its analysis),
                # scored against the next truth; the next cycle's background is the 6 h forecast of the analysis
                # (the model is set back to the analysis, so the control run is unchanged)
                x_nb = model.step6h()
                rec["fc6_no_analysis"] = area_rmse(x_nb - np.asarray(X[4 * t0_day + c], np.float64), lat)
                # with --iau the model stays at the background and the next 6 h add the increment in parts
                model.set(dyn_b if iau else dyn_a, phys, step)
                iau_next = inc if iau else None
                si = rep.get("solver") or {}
                # an: latentda's analysis; an_model: what the model holds after the increment went into its
                # spectral state (T31 truncation of the increment; geopotential recomputed by jcm), shown as jcm's
                # output shows states (q >= 0), like the truth.
                rec.update(an=area_rmse(x_a - truth, lat), an_bands=band_rmse(x_a - truth, lat),
                           an_model=area_rmse(as_output(gridpoint(model.m, dyn_a)) - truth, lat),
                           n_obs=int(len(qc)), n_rejected=int(np.sum(qc != 0)),
                           balance=(rep.get("balance") or {}).get("correlation"),
                           # per observed variable: used count, O-B and O-A rms (for tuning B to 6 h errors)
                           obs_stats={st_["name"]: [st_["n_used"], st_["omb_rms"], st_["oma_rms"]]
                                      for st_ in rep["variables"] if st_["n_used"] > 0},
                           iterations=si.get("inner_total"), grad_reduction=si.get("grad_reduction"),
                           t_analysis=time.time() - ta, t_latentda=rep["timings"]["total_s"],
                           desroziers=desroziers_brief(rep))
                if members is not None:
                    ens = rep.get("ensemble") or {}
                    rec.update(t_members=t_members, ensemble={
                        "k": ens.get("members"), "gamma": ens.get("gamma"),
                        # per observed variable: ensemble spread at the observations / the innovations' own skill
                        "spread_skill": {v["name"]: [v["spread"], v["innovation_skill"]]
                                         for v in ens.get("spread_skill", []) if v.get("n_used", 0) > 0},
                        "member_rmse": {v: float(np.mean([area_rmse(m - truth, lat)[v] for m in members]))
                                        for v in NAMES}})
                if eda_k:
                    # the members' own analyses: 3D-Var with the control's B scale, perturbed observations
                    tm = time.time()
                    bvf = 0.35 * (adapt.scale if adapt is not None else 1.0)
                    want = f"baseline_variance_factor = {bvf!r}\nlatent_variance_factor = 0.35"
                    if want != eda_options:
                        if eda_lda is not None:
                            eda_lda.close()
                        (eda_lda, eda_host), eda_options = context(a, want, len(lat), len(lon)), want
                    eda, n_failed = analyse_eda(model, eda_lda, eda_host, members, eda_fc, obs, c)
                    if getattr(a, "eda_recentre", False):
                        eda = recentre(eda, dyn_a)
                    rec.update(t_eda_analyses=time.time() - tm, eda_failed=n_failed, eda_bvf=bvf)
                if adapt is not None:
                    rec["adaptive"] = adapt.update(rep)
                elif in_library:
                    rec["adaptive"] = library_adaptive_entry(rep)
            else:
                rec["an"], rec["an_bands"] = rec["bg"], rec["bg_bands"]
            rec["t_forecast6h"] = t_fc
            if c % 4 == 0 and rec["scored"]:
                # 48 h forecast from this analysis, then back to the analysis.
                tf = time.time()
                dyn, phys, step = model.current()
                for k in range(FORECAST_CYCLES):
                    x_f = model.step6h_iau(iau_next, iau) if k == 0 and iau_next is not None else model.step6h()
                truth48 = np.asarray(X[4 * t0_day - 1 + c + FORECAST_CYCLES], np.float64)
                rec["fc48"] = area_rmse(x_f - truth48, lat)
                rec["fc48_bands"] = band_rmse(x_f - truth48, lat)
                model.set(dyn, phys, step)
                rec["t_fc48"] = time.time() - tf
            rec["t_cycle"] = time.time() - tc
            if not all(np.isfinite(v) for v in rec["an"].values()):
                raise RuntimeError(f"cycle {c}: non-finite analysis RMSE {rec['an']}")
            mf.write(json.dumps(rec) + "\n")
            mf.flush()
            if ens_k:
                model.save_states(lag_file, lag)
            if eda_k:
                model.save_states(eda_file, eda)
            model.save(ckpt, {"cycle": c, "adaptive": adapt.state() if adapt else None,
                              "mix": chooser.state() if chooser else None,
                              # --adaptive-in-library: the library's state as of this cycle, for a resume
                              "adaptive_lib": Path(lib_state).read_text() if in_library else None})
            if chooser is not None and chooser.mode in CM.NEXT_CYCLE_MODES:
                chooser.save_pending(os.path.join(folder, MIX_PENDING), c)
            if iau:
                iau_inc = iau_next
                save_iau_pending(os.path.join(folder, IAU_PENDING), c, x_b, x_a)
            if lib_mix:
                save_lib_mix(os.path.join(folder, LIB_MIX), c, mix_file)
            cycle = c
            if c % 4 == 0 or c == n_cycles or c <= 2:
                log(f"{a.method}/{a.network} cycle {c}/{n_cycles} day {rec['day']} {rec['hour']:02d}Z: "
                    + " ".join(f"{v} {rec['bg'][v]:.3g}->{rec['an'][v]:.3g}" for v in ("u", "t", "ps"))
                    + (f" bal {rec['balance']:.2f}" if rec.get("balance") is not None else "")
                    + (f" B scale {rec['adaptive']['scale']:.3f}->{rec['adaptive']['scale_next']:.3f}"
                       if rec.get("adaptive") else "")
                    + f" {rec['t_cycle']:.2f} s")
    if lda is not None:
        lda.close()
    if chooser is not None:
        chooser.close()
    if eda_lda is not None:
        eda_lda.close()
    return folder


def advance_eda(model, eda: list):
    """The perturbed-observation ensemble's backgrounds: each member's last analysis run on 6 h. Returns (members
    (K, 41, nlat, nlon), their spectral states); the model is left where it was."""
    xs, fc = forecast_states(model, eda)
    return np.stack(xs), fc


def recentre(eda: list, dyn_control):
    """The members' analyses recentred on the control analysis, in jcm's spectral state: dyn_k + dyn_control -
    mean_j dyn_j (each member keeps its own physics carry). The ensemble keeps its analysis perturbations and
    cannot drift away from the control."""
    import jax
    dyns = [d for d, _, _ in eda]
    mean = jax.tree_util.tree_map(lambda *x: sum(x) / len(x), *dyns)
    return [(jax.tree_util.tree_map(lambda dk, dc, dm: dk + (dc - dm).astype(dk.dtype), d, dyn_control, mean), p, s)
            for d, p, s in eda]


def analyse_eda(model, lda, host, members, fc, obs, c):
    """Each member's analysis of its own background with the cycle's observations perturbed by their own errors
    (sigma_o N(0, 1), seed EDA_OBS_SEED + 1000 c + k): method 3dvar. A failed member analysis keeps its background
    (counted). Returns (the members' analysed spectral states, failures)."""
    var, la, lo, lev, val, sd = obs
    out, failed = [], 0
    for k, (x_b, (dyn_b, phys, step)) in enumerate(zip(members, fc)):
        rng = np.random.default_rng(EDA_OBS_SEED + 1000 * c + k)
        host.load(x_b)
        lda.set_obs(var, la, lo, lev, val + sd * rng.normal(size=len(val)), sd)
        try:
            lda.analyse("3dvar")
            out.append((add_increment(model.m, dyn_b, x_b, host.state()), phys, step))
        except LatentdaError:
            failed += 1
            out.append((dyn_b, phys, step))
    return out, failed


# --------------------------------------------------------------------------------------------------- summary

def read_metrics(folder: str):
    p = os.path.join(folder, "metrics.jsonl")
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []


def run_folders(network_dir: str) -> list:
    """The run folders of one network: the known run names first (RUN_NAMES' order, which the figures' colours
    follow), then any other folder holding a metrics.jsonl (a run moved aside, e.g. to keep two windows apart)."""
    known = [m for m in RUN_NAMES if os.path.isdir(os.path.join(network_dir, m))]
    other = sorted(d for d in os.listdir(network_dir) if d not in RUN_NAMES
                   and os.path.exists(os.path.join(network_dir, d, "metrics.jsonl")))
    return known + other


def summary(out: str, log=print, from_day: float = 0.0, reference: str | None = None) -> list:
    """Figures and table per network from every run folder under OUT; returns the files written. `from_day`: the
    table's time means start that many days after the perturbed start (the figures show every cycle); `reference`:
    a run the table also gives every other run's ratios to."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []

    def save(fig, name):
        fig.tight_layout()
        p = os.path.join(out, name)
        fig.savefig(p, dpi=90)
        plt.close(fig)
        return p

    for network in sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))):
        runs = {m: read_metrics(os.path.join(out, network, m)) for m in run_folders(os.path.join(out, network))}
        runs = {m: r for m, r in runs.items() if r}
        if not runs:
            continue
        colours = {"none": "0.5", "3dvar": "tab:blue", "l3dvar": "tab:red", "hybrid": "tab:green",
                   "3dvar-adaptive": "tab:cyan", "l3dvar-adaptive": "tab:pink", "hybrid-adaptive": "tab:olive",
                   "hybrid-adaptive-split": "tab:purple"}
        for i, m in enumerate(x for x in runs if x not in colours):
            colours[m] = ("tab:brown", "tab:orange", "k", "tab:gray", "m", "y")[i % 6]
        fig, axs = plt.subplots(3, 2, figsize=(13, 10), sharex=True)
        for ax, v in zip(axs.flat, NAMES):
            for m, r in runs.items():
                t = [x["cycle"] / 4.0 for x in r]
                ax.plot(t, [x["an"][v] for x in r], color=colours[m], lw=1.3, label=f"{m} analysis" if m != "none" else "no assimilation")
                if m != "none":
                    ax.plot(t, [x["bg"][v] for x in r], color=colours[m], lw=0.6, ls=":", label=f"{m} 6 h background")
            spin = next((x["cycle"] for x in next(iter(runs.values())) if x["scored"]), 1)
            if spin > 1:
                ax.axvline((spin - 1) / 4.0, color="k", lw=0.5)
            ax.set_title(f"{v} ({D.VARS[NAMES.index(v)][1]})")
            ax.set_ylabel("RMSE vs truth")
            ax.grid(alpha=0.3)
        for ax in axs[-1]:
            ax.set_xlabel("days since the perturbed start")
        axs[0, 0].legend(fontsize=7, ncol=2)
        fig.suptitle(f"latentda cycling with jcm SPEEDY T31L8, {network} network: area-weighted RMSE (vertical line: end of spin-up)")
        written.append(save(fig, f"rmse_{network}.png"))
        fig, ax = plt.subplots(figsize=(10, 4))
        for m, r in runs.items():
            if m == "none":
                continue
            ax.plot([x["cycle"] / 4.0 for x in r], [x.get("balance") for x in r], color=colours[m], label=f"{m} increment")
        r0 = next(iter(runs.values()))
        ax.plot([x["cycle"] / 4.0 for x in r0], [x["bg_balance_true"] for x in r0], color="k", lw=0.8, ls="--",
                label="true background error (first run listed)")
        ax.set_ylabel("corr(wind, geostrophic wind), |lat| > 20")
        ax.set_xlabel("days since the perturbed start")
        ax.set_ylim(-0.2, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"geostrophic balance of the analysis increments, {network} network")
        written.append(save(fig, f"balance_{network}.png"))
        adaptive = {m: r for m, r in runs.items() if any("adaptive" in x for x in r)}
        if adaptive:
            # the adaptive B's trajectory: its scale and the Desroziers H B H^T ratio of each cycle
            fig, axs = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
            for m, r in adaptive.items():
                t = [x["cycle"] / 4.0 for x in r if "adaptive" in x]
                axs[0].plot(t, [x["adaptive"]["scale"] for x in r if "adaptive" in x], color=colours[m], label=m)
                if any("weights" in x.get("adaptive", {}) for x in r):
                    # split mode: the multipliers of alpha (dashed) and beta (dotted); the solid line is their
                    # geometric mean
                    for i, ls in ((0, "--"), (1, ":")):
                        axs[0].plot(t, [x["adaptive"]["weights"][i] for x in r if "adaptive" in x], color=colours[m],
                                    ls=ls, lw=0.9, label=f"{m} {'alpha' if i == 0 else 'beta'}")
                axs[1].plot(t, [x["adaptive"].get("hbh_ratio") for x in r if "adaptive" in x], color=colours[m], lw=0.8)
            axs[0].set_ylabel("B scale s (x starting B)")
            axs[0].set_yscale("log")
            axs[1].set_ylabel("E[(Hxa-Hxb) db] / HBH^T")
            axs[1].axhline(1.0, color="k", lw=0.5)
            axs[1].set_xlabel("days since the perturbed start")
            for ax in axs:
                ax.grid(alpha=0.3)
            axs[0].legend(fontsize=8)
            axs[0].set_title(f"adaptive B (Desroziers), {network} network")
            written.append(save(fig, f"bscale_{network}.png"))
        pv = {m: r for m, r in runs.items() if any(x.get("adaptive", {}).get("var_scales_next") for x in r)}
        if pv:
            # per-variable mode: each variable's multiplier, extratropics (solid) and tropics (dashed), per run
            fig, axs = plt.subplots(len(pv), 1, figsize=(10, 3.2 * len(pv)), sharex=True, squeeze=False)
            for ax, (m, r) in zip(axs[:, 0], pv.items()):
                rows = [x for x in r if x.get("adaptive", {}).get("var_scales_next")]
                t = [x["cycle"] / 4.0 for x in rows]
                keys = sorted({k for x in rows for k in x["adaptive"]["var_scales_next"]})
                names = sorted({k.split("/")[0] for k in keys}, key=lambda v: NAMES.index(v) if v in NAMES else 99)
                for i, v in enumerate(names):
                    for cls, ls in (("x", "-"), ("t", "--")):
                        ax.plot(t, [x["adaptive"]["var_scales_next"].get(f"{v}/{cls}") for x in rows], ls=ls, lw=1.0,
                                color=f"C{i}", label=f"{v} {'extratropics' if cls == 'x' else 'tropics'}")
                ax.set_yscale("log")
                ax.set_ylabel("multiplier (x starting B)")
                ax.set_title(f"{m}: per-variable B multipliers, {network} network", fontsize=10)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7, ncol=4)
            axs[-1, 0].set_xlabel("days since the perturbed start")
            written.append(save(fig, f"varscales_{network}.png"))
        p = os.path.join(out, f"summary_{network}.md")
        with open(p, "w") as f:
            f.write(summary_table(network, runs, from_day, reference))
        written.append(p)
    for p in written:
        log(f"wrote {p}")
    return written


def level_off(scored: list, v: str) -> float:
    """Mean analysis RMSE of `v` over the last 10 scored days / over scored days 5-15 (NaN if the run is shorter)."""
    if not scored:
        return float("nan")
    c0 = scored[0]["cycle"]
    day = lambda x: (x["cycle"] - c0) / 4.0
    n_days = day(scored[-1]) + 0.25
    mid = [x["an"][v] for x in scored if 5.0 <= day(x) < 15.0]
    late = [x["an"][v] for x in scored if day(x) >= n_days - 10.0]
    if n_days < 20.0 or not mid or not late:
        return float("nan")
    return float(np.mean(late) / np.mean(mid))


def forecast_impact_pairs(rows: list, v: str) -> list:
    """(RMSE of the 6 h forecast of the analysis, of the 6 h forecast of the background) of variable `v` per cycle:
    the next cycle's background against this cycle's `fc6_no_analysis`, both against the same truth. Empty without
    the metric (runs made before it, the free run)."""
    nxt = {x["cycle"]: x for x in rows}
    return [(nxt[x["cycle"] + 1]["bg"][v], x["fc6_no_analysis"][v]) for x in rows
            if "fc6_no_analysis" in x and x["cycle"] + 1 in nxt]


def forecast_impact_worse(rows: list, v: str) -> float:
    """% of the cycles whose analysis made the 6 h forecast of variable `v` worse ([`forecast_impact_pairs`]). A model
    damps small-scale analysis noise that the analysis RMSE itself counts, so this share can be small where the
    analysis is often worse than its own background. NaN without the metric."""
    pairs = forecast_impact_pairs(rows, v)
    return 100.0 * float(np.mean([a > b for a, b in pairs])) if pairs else float("nan")


def forecast_impact_ratio(rows: list, v: str) -> float:
    """Mean over the cycles of the RMSE of the 6 h forecast of the analysis over that of the 6 h forecast of the
    background for variable `v` ([`forecast_impact_pairs`]): below 1 where the analyses improve the forecast on
    average. NaN without the metric."""
    r = [a / b for a, b in forecast_impact_pairs(rows, v) if b > 0]
    return float(np.mean(r)) if r else float("nan")


def summary_table(network: str, runs: dict, from_day: float = 0.0, reference: str | None = None) -> str:
    """Markdown: per method the cycle counts and timings; per variable and method the time-mean RMSE of the analyses,
    of the 6 h backgrounds and of the 48 h forecasts (scored cycles at least `from_day` days after the perturbed
    start: cycle c is c / 4 days after it), the share of cycles worse than their background, the drift and level-off
    (over all scored cycles: their definitions fix the days), the mean balance; with `reference`, every run's
    time-mean analysis and 48 h forecast RMSE over the reference run's, and how many variables it wins."""
    lines = [f"# Cycling with jcm SPEEDY T31L8, {network} network", ""]
    if from_day > 0:
        lines += [f"Time means, shares and balances over the scored cycles from {from_day:g} days after the perturbed "
                  "start on (drift and level-off: all scored cycles).", ""]
    every = {m: [x for x in r if x["scored"]] for m, r in runs.items()}
    scored = {m: [x for x in s if x["cycle"] / 4.0 >= from_day] for m, s in every.items()}
    for m, r in runs.items():
        later = [x["t_cycle"] for x in r[1:] if "fc48" not in x]
        ta = [x["t_analysis"] for x in r if "t_analysis" in x]
        lines.append(f"- {m}: {len(r)} cycles, {len(every[m])} scored ({len(every[m]) / 4:g} days); seconds per cycle: "
                     f"first {r[0]['t_cycle']:.1f} (compilation), then median {np.median(later) if later else float('nan'):.2f}"
                     + (f" (analysis {np.median(ta):.2f})" if ta else "")
                     + (f", 48 h forecast {np.median([x['t_fc48'] for x in r if 't_fc48' in x]):.2f}"
                        if any("t_fc48" in x for x in r) else ""))
    head = "| variable | " + " | ".join(runs) + " |"
    rule = "|---|" + "---|" * len(runs)

    def table(title, value, mark=True, rows=None):
        rows = scored if rows is None else rows
        out = ["", title, "", head, rule]
        for v in NAMES:
            vals = [value(rows[m], v) for m in runs]
            ok = [x for x, m in zip(vals, runs) if np.isfinite(x) and m != "none"]
            best = min(ok) if ok and mark else None
            out.append(f"| {v} ({D.VARS[NAMES.index(v)][1]}) | " + " | ".join(
                "-" if not np.isfinite(x) else (f"**{x:.4g}**" if x == best else f"{x:.4g}") for x in vals) + " |")
        return out

    mean = lambda key: (lambda s, v: float(np.mean([x[key][v] for x in s if key in x])) if any(key in x for x in s) else float("nan"))

    def drift(s, v):
        an = [x["an"][v] for x in s]
        h = len(an) // 2
        return float(np.mean(an[h:]) / np.mean(an[:h])) if h > 0 else float("nan")

    lines += table("Time-mean analysis RMSE (area-weighted; 'none': the free run; bold: best assimilating method)", mean("an"))
    lines += table("Time-mean 6 h background RMSE", mean("bg"))
    lines += table("Time-mean RMSE of the 48 h forecasts from the 00 UTC analyses", mean("fc48"))
    lines += table("Analysis as the model holds it (increment in jcm's spectral state, q >= 0 as in its output)", mean("an_model"))
    lines += table("Drift: mean analysis RMSE of the second half of the scored period / the first half (1: none)", drift,
                   mark=False, rows=every)
    lines += table("Analysis worse than its own 6 h background (global RMSE): % of the scored cycles (gate <= 5 %)",
                   lambda s, v: 100.0 * float(np.mean([x["an"][v] > x["bg"][v] for x in s])) if s else float("nan"),
                   mark=False)
    if any(any("an_bands" in x for x in sc) for sc in scored.values()):
        lines += ["", "The same per latitude band, nh / tropics / sh (|lat| > 20 extratropics; % of the scored cycles)", "",
                  head, rule]
        lines += [f"| {v} ({D.VARS[NAMES.index(v)][1]}) | " + " | ".join(worse_by_band(scored[m], v) for m in runs) + " |"
                  for v in NAMES]
    lines += table("Growth of the analysis error over the next 6 h forecast (mean of next background RMSE / "
                   "analysis RMSE - 1, %): in a steady cycle the analyses' mean gain equals this growth",
                   six_hour_growth, mark=False)
    lines += table("Scatter of the analysis/background RMSE ratio (sd over the scored cycles): with a mean gain of "
                   "g, a share of about Phi(-g / sd) of the cycles is worse than its background",
                   lambda s, v: float(np.std([x["an"][v] / x["bg"][v] for x in s], ddof=1)) if len(s) > 1
                   else float("nan"), mark=False)
    lines += table("6 h forecast of the analysis worse than the 6 h forecast of its background (the same cycle "
                   "without its analysis; global RMSE against the next truth): % of the scored cycles",
                   forecast_impact_worse, mark=False)
    lines += table("6 h forecast of the analysis over the 6 h forecast of its background (RMSE ratio, mean over the "
                   "scored cycles; below 1: the analyses improve the forecast)", forecast_impact_ratio, mark=False)
    lines += table("Levelling off: mean analysis RMSE of the last 10 scored days / that of scored days 5-15 "
                   "(gate <= 1.1)", level_off, mark=False, rows=every)
    if reference in runs:
        for key, what in (("an", "analysis"), ("fc48", "48 h forecast")):
            ref = {v: mean(key)(scored[reference], v) for v in NAMES}
            ratio = lambda s, v, key=key, ref=ref: mean(key)(s, v) / ref[v] if ref[v] else float("nan")
            lines += table(f"Time-mean {what} RMSE over {reference}'s (below 1: better)", ratio, mark=False)
            wins = [sum(1 for v in NAMES if ratio(scored[m], v) < 1) for m in runs]
            lines.append("| wins (of 6) | " + " | ".join("-" if m == reference else str(w) for m, w in zip(runs, wins)) + " |")
    lines += ["", "Geostrophic balance (|lat| > 20), mean over the scored cycles:", ""]
    for m in runs:
        b = [x["balance"] for x in scored[m] if x.get("balance") is not None]
        lines.append(f"- {m}: increments {np.mean(b):.3f}" if b else f"- {m}: no increments")
    s0 = next(iter(scored.values()))
    if s0:
        lines.append(f"- true 6 h background error of the first run listed: {np.mean([x['bg_balance_true'] for x in s0]):.3f}")
    ad = {m: [x["adaptive"] for x in r if "adaptive" in x] for m, r in runs.items()}
    ad = {m: a for m, a in ad.items() if a}
    if ad:
        lines += ["", "Adaptive B: scale s of the starting B (Desroziers, window of past cycles), and the options it gave:", ""]
        for m, a in ad.items():
            q = [a[min(len(a) - 1, int(f * (len(a) - 1)))] for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
            lines.append(f"- {m}: s at 0/25/50/75/100 % of the run " + ", ".join(f"{e['scale']:.3g}" for e in q)
                         + f"; last options {a[-1].get('options')}")
    mx = {m: [x["mix"]["choice"] for x in scored[m] if x.get("mix")] for m in runs}
    mx = {m: c for m, c in mx.items() if c}
    if mx:
        lines += ["", "Mix chosen online (--choose-mix; scored by withheld or next-cycle observations): latent share L "
                  "per variable and band class, "
                  "share of the scored cycles with each L (per class: extratropics, tropics, or nh, tropics, sh):", ""]
        for m, cs in mx.items():
            lines.append(f"- {m}: " + "; ".join(f"{v} " + ", ".join(f"{c} {mix_shares_used(cs, v, c)}" for c in cs[0][v])
                                               for v in cs[0]))
    # innovation ratios (all observations, global) of every run: about 1 when B and R are right
    dz = {m: [x["desroziers"]["global"] for x in scored[m] if (x.get("desroziers") or {}).get("global")] for m in runs}
    dz = {m: d for m, d in dz.items() if d}
    if dz:
        lines += ["", "Desroziers ratios over the scored cycles (mean; all observations, global):", ""]
        for m, d in dz.items():
            hb = [x["hbh_ratio"] for x in d if x.get("hbh_ratio") is not None]
            lines.append(f"- {m}: E[da db]/R {np.mean([x['r_ratio'] for x in d]):.3f}, "
                         f"E[(Hxa-Hxb) db]/HBH^T {np.mean(hb) if hb else float('nan'):.3f}")
    return "\n".join(lines) + "\n"


def six_hour_growth(rows: list, v: str) -> float:
    """Mean over consecutive cycles (c, c + 1) of `rows` of bg_{c+1}[v] / an_c[v] - 1, in %: how much the analysis
    error grows in the model's 6 h forecast (negative: the forecast removes part of the analysis error, e.g. increments
    the model damps). NaN without such a pair."""
    an = {x["cycle"]: x["an"][v] for x in rows if "an" in x}
    g = [x["bg"][v] / an[x["cycle"] - 1] for x in rows if x["cycle"] - 1 in an and an[x["cycle"] - 1] > 0]
    return 100.0 * (float(np.mean(g)) - 1.0) if g else float("nan")


def worse_by_band(rows: list, v: str) -> str:
    """"17 / 33 / 42": the % of `rows` whose analysis RMSE of v in each band (nh, tropics, sh) exceeds its
    background's; "-" without per-band scores."""
    rows = [x for x in rows if "an_bands" in x and "bg_bands" in x]
    if not rows:
        return "-"
    return " / ".join(f"{100 * np.mean([x['an_bands'][b][v] > x['bg_bands'][b][v] for x in rows]):.0f}"
                      for b in ("nh", "tropics", "sh"))


def mix_shares_used(choices: list, v: str, cls: str) -> str:
    """"L0.7 62 %/L0.4 38 %": how often each latent share was chosen for variable v in class cls."""
    shares = [c[v][cls] for c in choices]
    return "/".join(f"L{L:g} {100 * shares.count(L) / len(shares):.0f} %" for L in sorted(set(shares), reverse=True))


# ------------------------------------------------------------------------------------------------------ smoke

def smoke(a, log=print):
    """Two cycles of one method with a resume in between, the increment round trip, and plain assertions."""
    import tempfile
    out = a.out or tempfile.mkdtemp(prefix="latentda_cycle_smoke_")
    t0 = time.time()
    model = Model(a.data)
    log(f"model loaded in {time.time() - t0:.1f} s")
    # Round trip of a large-scale, balanced increment (difference of two nature states, truncated as the
    # perturbation) through the spectral state: what jcm keeps of an analysis increment.
    dyn, phys, step = model.truth_state(a.start_day)
    pert, _, _, _ = model.perturbed_start(a.start_day)
    dx = gridpoint(model.m, pert) - gridpoint(model.m, dyn)
    err = roundtrip_errors(model.m, dyn, dx)
    log("increment round trip, relative RMS error: " + " ".join(f"{k} {v:.2e}" for k, v in err.items()))
    assert all(v < 1e-3 for v in err.values()), f"round trip error too large: {err}"
    args = argparse.Namespace(**{**vars(a), "out": out, "spinup_days": 0, "days": 1})
    # One cycle, then a new call that must resume after it and run the second.
    t1 = time.time()
    run(_with_cycles(args, 1), model, log)
    run(_with_cycles(args, 2), model, log)
    dt = time.time() - t1
    rows = read_metrics(os.path.join(out, a.network, run_name(a)))
    assert [r["cycle"] for r in rows] == [1, 2], [r["cycle"] for r in rows]
    observed = ("u", "v", "t") if a.network in ("sonde", "uniform") else ("t",)
    for r in rows:
        for v in observed:
            assert r["an"][v] < r["bg"][v], f"cycle {r['cycle']}: {v} analysis RMSE {r['an'][v]} >= background {r['bg'][v]}"
    # forecast impact: the 6 h forecast of cycle 1's analysis (cycle 2's background) beats that of its background
    for v in observed:
        assert rows[1]["bg"][v] < rows[0]["fc6_no_analysis"][v], \
            f"{v}: 6 h forecast of the analysis {rows[1]['bg'][v]} >= of the background {rows[0]['fc6_no_analysis'][v]}"
    log(f"smoke passed: 2 cycles of {a.method} ({a.network}) in {dt:.1f} s including the first-call compilation; "
        f"per cycle: " + ", ".join(f"{r['t_cycle']:.2f} s" for r in rows) + f"; files in {out}")
    return rows, err


def _with_cycles(a, n):
    """Arguments whose run ends after cycle n (the smoke test's resume check): n / 4 days without spin-up."""
    b = argparse.Namespace(**vars(a))
    b.days = n / 4.0
    return b


# ------------------------------------------------------------------------------------------- error by distance

DISTANCE_RINGS = ((0, 300), (300, 600), (600, 1000), (1000, 1500), (1500, 2500), (2500, None))


def station_distance_km(lat: np.ndarray, lon: np.ndarray, st: np.ndarray) -> np.ndarray:
    """Great-circle distance (km) from every grid point (nlat, nlon) to the nearest of the columns `st` (n, 2)."""
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    return CS._gc(la[..., None], lo[..., None], st[:, 0], st[:, 1]).min(-1)


def error_by_distance(folder: str, data: str, model: "Model | None" = None) -> dict:
    """Error of a run's last saved model state (state.npz, the state after its last cycle) against the nature run,
    per variable and ring of distance to the nearest land station (DISTANCE_RINGS, km): where a fixed network's
    error sits. Networks sonde and mass (distance to the t columns; mass also observes ps at other points).
    The truth is the nature state of the state's cycle, as the run's metrics take it. Returns {"day", "cycle",
    "global": {variable: RMSE}, "rings": [[lo, hi, area share]], "rmse": {variable: [area-weighted RMSE per ring]}}."""
    st_settings = json.load(open(os.path.join(folder, "settings.json")))
    if st_settings["network"] not in ("sonde", "mass"):
        raise SystemExit(f"{folder}: network {st_settings['network']} has no fixed stations")
    lat, lon, _ = D.grid(data)
    model = model or Model(data)
    cycle = model.load(os.path.join(folder, "state.npz"))["cycle"]
    dyn, _, _ = model.current()
    x = as_output(gridpoint(model.m, dyn))
    # the truth of that cycle, as the run scored it (its metrics.jsonl)
    t0_day = st_settings["start_day"] - st_settings.get("spinup_days", 0)
    e = x - np.asarray(Nature(data)[4 * t0_day - 1 + cycle], np.float64)
    day = t0_day + cycle / 4
    dist = station_distance_km(lat, lon, CS.stations(lat, lon))
    w = np.broadcast_to(np.cos(np.radians(lat))[:, None], dist.shape)
    masks = [(dist >= a) & (dist < (b if b is not None else np.inf)) for a, b in DISTANCE_RINGS]
    rings = [[a, b, float(w[m].sum() / w.sum())] for (a, b), m in zip(DISTANCE_RINGS, masks)]
    out = {"day": day, "cycle": int(cycle), "global": area_rmse(e, lat), "rings": rings, "rmse": {}}
    for v, sl in D.VAR_SLICES.items():
        e2 = (e[sl] ** 2).mean(0)
        out["rmse"][v] = [float(np.sqrt((w[m] * e2[m]).sum() / w[m].sum())) for m in masks]
    return out


def print_error_by_distance(folders: list, data: str, log=print):
    """`latentda-cycle distance`: error_by_distance of each run folder as a table."""
    model = None
    for f in folders:
        model = model or Model(data)
        r = error_by_distance(f, data, model)
        head = " | ".join(f"{a}-{b if b is not None else ''} km ({100 * s:.0f} %)" for a, b, s in r["rings"])
        log(f"{f} (cycle {r['cycle']}, day {r['day']:g}): RMSE by distance to the nearest station (share of the "
            f"area)\n  var | {head} | global")
        for v, vals in r["rmse"].items():
            log(f"  {v} | " + " | ".join(f"{x:.4g}" for x in vals) + f" | {r['global'][v]:.4g}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="latentda-cycle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["run", "summary", "smoke", "distance"],
                    help="run a cycle, summarise the runs under --out, smoke-test, or 'distance': the error of each run "
                         "folder's last state (--out, comma-separated) by distance to the nearest land station")
    ap.add_argument("--method", default="l3dvar", help="none, 3dvar, l3dvar or hybrid (one per process)")
    ap.add_argument("--network", default="sonde", help="sonde (u, v, t, q, ps at 300 land stations), uniform (the same "
                    "at 300 new uniform random columns every cycle) or mass (t profiles + ps)")
    ap.add_argument("--out", default=None, help="results folder (run/summary: default ./cycling; smoke: a temporary folder)")
    ap.add_argument("--data", default=D.DEFAULT_OUT, help="data folder with nature/ (default $LATENTDA_DATA or ./data)")
    ap.add_argument("--bundle", default=DEFAULT_BUNDLE)
    ap.add_argument("--lib", default=DEFAULT_LIB, help="liblatentda.so")
    ap.add_argument("--options", default=CYCLING_OPTIONS,
                    help="latentda options (TOML text, as lda_open takes; default: both B scaled to 6 h errors)")
    ap.add_argument("--start-day", type=int, default=610, help="first scored day (validation period: >= 600)")
    ap.add_argument("--spinup-days", type=int, default=3)
    ap.add_argument("--days", type=float, default=30, help="scored days")
    ap.add_argument("--start-t-rms", type=float, default=START_T_RMS,
                    help="temperature RMS (K) of the perturbed start (default 0.7: a start error below a land-network "
                         "cycle's equilibrium; larger, e.g. 2.8: one above it, to see the cycle settle from both sides)")
    ap.add_argument("--start-wind-factor", type=float, default=START_WIND_FACTOR,
                    help="wind factor of the perturbed start (forecasts.perturb)")
    ap.add_argument("--adaptive", action="store_true",
                    help="size B online from the Desroziers statistics of the last --adaptive-window cycles")
    ap.add_argument("--adaptive-window", type=int, default=ADAPT_WINDOW, help="cycles in the adaptive window")
    ap.add_argument("--iau", type=int, default=None, metavar="N",
                    help="incremental analysis update: the increment enters the model in N equal parts over the next "
                         "6 h (before each 6/N h) instead of at once; the 48 h forecasts start the same way")
    ap.add_argument("--increment-truncation", type=int, default=None, metavar="N",
                    help="add only the total wavenumbers <= N of each analysis increment to the model (default: all "
                         "of jcm's T31); the control run only: refused with --choose-mix and ensembles")
    ap.add_argument("--adaptive-bounds", type=float, nargs=2, default=ADAPT_BOUNDS, metavar=("LO", "HI"),
                    help="bounds of the adaptive scale of the starting B")
    ap.add_argument("--adaptive-split", action="store_true",
                    help="hybrid: fit alpha and beta separately (latent and static parts of H B H^T over the cells "
                         "variable x band) instead of scaling both together")
    ap.add_argument("--adaptive-per-variable", action="store_true",
                    help="size each variable and band (extratropics, tropics) on its own (hybrid_variable_weights; "
                         "3dvar then runs as the hybrid with alpha 0); folder <method>-adaptive-pv")
    ap.add_argument("--static-variables", default=None,
                    help="hybrid with --adaptive-per-variable: comma-separated variables analysed by the static B "
                         "alone (their latent weight moved to the static part; folder suffix -s<vars>), e.g. q")
    ap.add_argument("--ensemble", default="none", choices=("none", "lagged", "eda"),
                    help="lagged: a time-lagged ensemble (the forecasts of the last --members analyses valid now, "
                         "leads 6 .. 6 K h) as the ensemble part: 3dvar becomes hybrid 3DEnVar, hybrid gains its "
                         "latent ensemble part (issue 24); eda: a perturbed-observation ensemble of K members, each "
                         "cycled with its own 3D-Var analysis (the control's B scale) of perturbed observations")
    ap.add_argument("--members", type=int, default=LAGGED_MEMBERS, help="K of the lagged ensemble")
    ap.add_argument("--eda-recentre", action="store_true",
                    help="eda: recentre the members' analyses on the control analysis every cycle (folder suffix r)")
    ap.add_argument("--ensemble-space", default="latent", choices=("latent", "model"),
                    help="method hybrid: the ensemble part in latent space (latent hybrid EnVar) or the model-space one "
                         "of 3DEnVar (latent + static + model-space ensemble; run folder suffix 'm')")
    ap.add_argument("--ensemble-gamma", type=float, default=ENSEMBLE_GAMMA,
                    help="weight gamma of the ensemble part (not scaled by --adaptive: see the module doc)")
    ap.add_argument("--from-day", type=float, default=0.0,
                    help="summary: time means from this many days after the perturbed start (the README's tables: 10)")
    ap.add_argument("--reference", default=None,
                    help="summary: a run folder (e.g. 3dvar-adaptive) that every run's time means are divided by")
    ap.add_argument("--adaptive-in-library", action="store_true",
                    help="with --adaptive: latentda sizes the B itself (option adaptive_state, src/var/adaptive.rs; the "
                         "state file adaptive_b.json in the run's folder) instead of this driver's AdaptiveB; folder "
                         "suffix -lib")
    ap.add_argument("--adaptive-rule", default="desroziers", choices=AdaptiveB.RULES,
                    help="desroziers: E[(Hxa-Hxb) db] (the fixed-point step; slow where R >> HBH^T); innovation: "
                         "E[db^2] - R (one step if R is right)")
    ap.add_argument("--choose-mix", default=None, metavar="L,...",
                    help="method hybrid: choose the latent share L of each variable and band class (alpha = L S, beta = "
                         "(1 - L) S) every cycle among these candidates, by withheld observations (cycle_mix.py; the "
                         "first is the choice until there is evidence), e.g. 0.7,0.9,0.4,0; folder prefix <method>-mix")
    ap.add_argument("--choose-by", default="withheld", choices=CM.MODES,
                    help="--choose-mix: withheld (each candidate analyses half of the columns, verified on the other "
                         "half) or forecast (each candidate analyses all; its 6 h forecast is verified against the next "
                         "cycle's observations) or persistence (as forecast, with the candidate's 6 h forecast taken as the "
                         "run's next background plus its analysis minus the run's: no extra forecasts); folder prefix "
                         "<method>-mixf for forecast, <method>-mixp for persistence")
    ap.add_argument("--choose-in-library", action="store_true",
                    help="--choose-mix with --choose-by forecast or persistence, done by the library (options "
                         "mix_candidates, mix_state, mix_score: jcm is the context's step model, lda_set_step_model) "
                         "instead of this driver; folder prefix <method>-mixlf / -mixlp")
    ap.add_argument("--mix-hemispheres", action="store_true",
                    help="--choose-in-library: the library's option mix_hemispheres = true (the northern and southern "
                         "extratropics choose their shares apart); folder suffix h (<method>-mixlfh)")
    ap.add_argument("--choose-window", type=int, default=CM.MIX_WINDOW,
                    help="--choose-mix: cycles of withheld evidence pooled (default 12, 3 days)")
    a = ap.parse_args(argv)
    if a.command == "smoke":
        smoke(a)
        return
    if a.command == "distance":
        if not a.out:
            raise SystemExit("distance: name the run folders with --out (comma-separated)")
        print_error_by_distance(a.out.split(","), a.data)
        return
    a.out = a.out or "cycling"
    if a.command == "summary":
        summary(a.out, from_day=a.from_day, reference=a.reference)
        return
    run(a)


if __name__ == "__main__":
    main()
