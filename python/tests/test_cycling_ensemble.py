"""The cycling driver's time-lagged ensemble through the real C ABI (liblatentda.so of `cargo build --release`, the
reference bundle and its sample case): `Latentda.set_ensemble` hands members to `lda_set_ensemble`, method 3dvar
becomes hybrid 3DEnVar and hybrid gains its latent (or, with ensemble_space "model", model-space) ensemble part;
bad members are refused with latentda's message and the context stays usable. No jcm needed."""
import argparse
import csv
import os

import numpy as np
import pytest

from latentda_train import cases as CS
from latentda_train import cycling as C

SAMPLE = os.path.join(C.DEFAULT_BUNDLE, "sample")
FAST = "self_test = false\nmax_pairs = 20"   # the bundle's graphs are checked elsewhere; a short solve is enough here


def sample_obs(lda):
    rows = list(csv.DictReader(open(os.path.join(SAMPLE, "obs.csv"))))
    var = np.array([lda.var_index(r["var"]) for r in rows], np.int32)
    col = lambda k: np.array([float(r[k]) if r[k] != "" else np.nan for r in rows])
    return var, col("lat"), col("lon"), col("level"), col("value"), col("sigma")


def members_of(xb, k, seed=3):
    """K members x_b + large-scale perturbations (0.5 sd of each level) with random amplitudes."""
    rng = np.random.default_rng(seed)
    nlat, nlon = xb.shape[1:]
    lat = np.linspace(-1.0, 1.0, nlat)[:, None]
    lon = np.linspace(0.0, 2 * np.pi, nlon, endpoint=False)[None, :]
    sd = xb.reshape(xb.shape[0], -1).std(axis=1)[:, None, None]
    out = []
    for _ in range(k):
        a = rng.normal(size=(xb.shape[0], 3, 1, 1))
        out.append(xb + 0.5 * sd * (a[:, 0] * np.cos(lon) + a[:, 1] * np.sin(lon) * lat + a[:, 2] * lat))
    return np.stack(out)


@pytest.fixture(scope="module")
def lib():
    if not os.path.exists(C.DEFAULT_LIB):
        pytest.fail(f"{C.DEFAULT_LIB} missing: run `cargo build --release` first (scripts/test.sh does)")
    return C.DEFAULT_LIB


def analyse(lib, method, members=None, options=""):
    xb = CS.read_state(os.path.join(SAMPLE, "background.nc"))
    lda = C.Latentda(lib, C.DEFAULT_BUNDLE, options)
    try:
        host = C.HostFields(lda, xb.shape[1], xb.shape[2])
        host.load(xb)
        lda.set_obs(*sample_obs(lda))
        if members is not None:
            lda.set_ensemble(members)
        lda.analyse(method)
        return host.state(), lda.report()
    finally:
        lda.close()


def test_members_reach_the_analysis_through_the_c_abi(lib):
    xb = CS.read_state(os.path.join(SAMPLE, "background.nc"))
    mem = members_of(xb, 4)
    xa0, r0 = analyse(lib, "hybrid", None, FAST)
    assert r0.get("ensemble") is None and "ensemble" not in r0["jb_parts"]
    for method, space, part in (("hybrid", "latent", "latent"), ("hybrid", "model", "model"),
                                ("3dvar", "latent", "model")):
        xa1, r1 = analyse(lib, method, mem, FAST + f'\nensemble_space = "{space}"')
        e = r1["ensemble"]
        assert (e["members"], e["part"]) == (4, part), e
        assert r1["jb_parts"]["ensemble"] > 0.0
        assert r1["desroziers"]["b_in_force"]["ensemble_gamma"] == 0.5
        assert np.all(np.isfinite(xa1))
        if method == "hybrid":
            assert np.max(np.abs(xa1 - xa0)) > 0.0, f"{method}/{space}: the members changed nothing"


def test_bad_members_are_refused_and_the_context_stays_usable(lib):
    xb = CS.read_state(os.path.join(SAMPLE, "background.nc"))
    lda = C.Latentda(lib, C.DEFAULT_BUNDLE, FAST)
    try:
        with pytest.raises(C.LatentdaError, match="lda_set_ensemble"):
            lda.set_ensemble(xb[None])                       # K = 1
        bad = members_of(xb, 3)
        bad[1, 5, 10, 20] = np.nan
        with pytest.raises(C.LatentdaError, match="member"):
            lda.set_ensemble(bad)
        lda.set_ensemble(members_of(xb, 3))                  # then a good set is taken
    finally:
        lda.close()


def test_run_names_and_options_of_an_ensemble_run():
    a = argparse.Namespace(method="hybrid", adaptive=True, adaptive_split=False, ensemble="lagged", members=8,
                           ensemble_gamma=0.5, ensemble_space="latent", options=C.CYCLING_OPTIONS)
    assert C.run_name(a) == "hybrid-lagged8-adaptive"
    assert "ensemble_gamma = 0.5" in C.run_options(a) and "ensemble_space" not in C.run_options(a)
    a.ensemble_space = "model"
    assert C.run_name(a) == "hybrid-lagged8m-adaptive"
    assert 'ensemble_space = "model"' in C.run_options(a)
    assert C.run_name(a) in C.RUN_NAMES
    a.ensemble, a.adaptive = "none", False
    assert C.run_name(a) == "hybrid" and C.run_options(a) == C.CYCLING_OPTIONS
