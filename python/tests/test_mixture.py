"""latentda_train.mixture: the latent variance's shape from a mixture of error recipes, and the bundle it writes."""
import hashlib
import os
import shutil
import subprocess
import tomllib

import netCDF4
import numpy as np
import pytest

from latentda_train import bundle as B
from latentda_train import mixture as M

SHIPPED = os.path.join(B.REPO, "models", "speedy-t31")


def test_mixture_shape_weighs_recipes_equally_whatever_their_size():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 1.0, (2, 3, 4)), rng.uniform(0.1, 1.0, (2, 3, 4))
    s = M.mixture_shape({"big": 1e6 * a, "small": 1e-3 * b})
    assert s.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(s, 0.5 * (a / a.sum() + b / b.sum()), rtol=1e-12)
    # one recipe: its own normalised shape
    np.testing.assert_allclose(M.mixture_shape({"x": 7.0 * a}), a / a.sum(), rtol=1e-12)


def test_validation_period_launches_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="not in the training period"):
        M.recipe_samples(str(tmp_path), [598], [])


def test_missing_samples_name_the_recipes(tmp_path):
    with pytest.raises(SystemExit, match="no training-period samples for a24, a48, b6, b24, b48"):
        M.recipe_samples(str(tmp_path), [100], [])


def test_cycled_cases_of_the_validation_period_are_refused(tmp_path):
    c = tmp_path / "cycled"
    c.mkdir()
    np.savez(c / "cycle_0013.npz", bg=np.zeros(1), truth=np.zeros(1), day=611)
    with pytest.raises(SystemExit, match="cycle_0013.npz: a cycled case in the validation period"):
        M.recipe_samples(str(tmp_path), [], [str(c)])


def test_new_variance_files_keep_the_bundle_valid(tmp_path):
    """On a copy of the shipped bundle: the variance doubled and latent_b_variance.nc scaled to match, the manifest
    rewritten by set_manifest; the checksums are those of the files, the provenance line and the sigma_b comment are
    replaced, and the runtime's own check accepts the bundle. The same files without set_manifest are refused
    (the checksums guard them)."""
    try:
        exe = B.latentda_binary()
    except SystemExit:
        pytest.skip("latentda binary not built")
    d = tmp_path / "b"
    shutil.copytree(SHIPPED, d, ignore=shutil.ignore_patterns("sample", "sample4d"))
    with netCDF4.Dataset(d / "latent_variance.nc") as ds:
        v = np.asarray(ds["variance"][:], np.float64)
    with netCDF4.Dataset(d / "latent_b_variance.nc") as ds:
        u0 = np.asarray(ds["u"][:], np.float64)
    B.write_latent_variance(str(d / "latent_variance.nc"), 2.0 * v, 2.0, "test: shipped x 2")
    M.scale_netcdf(str(d / "latent_b_variance.nc"), 2.0)
    with netCDF4.Dataset(d / "latent_b_variance.nc") as ds:
        np.testing.assert_allclose(np.asarray(ds["u"][:], np.float64), 2.0 * u0, rtol=1e-6)
    r = subprocess.run([exe, "check", str(d)], capture_output=True, text=True)
    assert r.returncode != 0 and "latent_variance.nc" in r.stdout + r.stderr, r.stdout + r.stderr
    M.set_manifest(str(d), "test statistics line", "# sigma_b comment of the test\n")
    text = (d / "bundle.toml").read_text()
    m = tomllib.loads(text)
    for f in ("latent_variance.nc", "latent_b_variance.nc"):
        assert m["checksums"][f] == hashlib.sha256((d / f).read_bytes()).hexdigest()
    assert m["provenance"]["statistics"] == "test statistics line"
    assert "# sigma_b comment of the test\nlatent_b_variance" in text
    assert "mean over 17" not in text
    r = subprocess.run([exe, "check", str(d)], capture_output=True, text=True)
    assert r.returncode == 0 and "all checks passed" in r.stdout, r.stdout + r.stderr


def test_channel_multipliers_recover_a_consistent_fit_and_the_ridge_shrinks_their_spread():
    """With an exactly reachable target (G @ a_true, G well conditioned over u, v, t, q, ps) the Gauss-Newton fit
    recovers a_true; a strong ridge pulls the multipliers to one common value (the best single factor)."""
    rng = np.random.default_rng(5)
    G = rng.uniform(0.1, 1.0, (41, 6))
    a_true = np.array([0.5, 1.0, 2.0, 4.0, 0.8, 1.5])
    a, obj = M.fit_channel_multipliers(G, G @ a_true, ridge=1e-8)
    np.testing.assert_allclose(a, a_true, rtol=1e-5)
    assert obj < 1e-12
    a2, _ = M.fit_channel_multipliers(G, G @ a_true, ridge=1e6)
    assert a2.max() / a2.min() < 1.001
    assert np.ptp(a2) < np.ptp(a)
