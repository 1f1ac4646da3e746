"""The packaged SPEEDY surface fields (position inputs of the autoencoder and the step model) without jcm."""
import json
import os

import numpy as np
import pytest

from latentda_train import cases

HERE = os.path.dirname(__file__)
BUNDLE = os.path.join(HERE, "..", "..", "models", "speedy-t31")


def bundle_grid():
    import tomllib
    with open(os.path.join(BUNDLE, "bundle.toml"), "rb") as f:
        g = tomllib.load(f)["grid"]
    return np.array(g["lat"]), np.array(g["lon"])


def test_surface_fields_load_on_the_bundle_grid_without_jcm():
    lat, lon = bundle_grid()
    lsm, orog = cases.land_mask(lat, lon), cases.orography(lat, lon)
    assert lsm.shape == orog.shape == (48, 96)
    assert lsm.min() >= 0.0 and lsm.max() <= 1.0 and 0.2 < lsm.mean() < 0.4  # land fraction; about 30 % land
    # north to south: Antarctica (land, high) in the last rows, the Arctic ocean mostly sea in the first
    assert lsm[-2:].mean() > 0.9 and orog[-4:].mean() > 1500.0 and lsm[:2].mean() < 0.5
    assert np.all(orog[lsm < 0.01] < 50.0)
    pos = cases.position_fields(lat, lon)
    assert pos.shape == (4, 48, 96) and np.all(np.isfinite(pos))


def test_another_grid_is_refused_with_a_message():
    with pytest.raises(ValueError, match="48 x 96"):
        cases.land_mask(np.linspace(80, -80, 24), np.arange(48) * 7.5)


def test_surface_fields_are_jcms_when_jcm_is_installed():
    jcm = pytest.importorskip("jcm")  # data environments only; the packaged copy is what the tests above check
    import netCDF4
    with netCDF4.Dataset(os.path.join(os.path.dirname(jcm.__file__), "data/bc/t30/clim/surface.nc")) as ds:
        lsm, orog, lat = (np.asarray(ds[n][:], np.float64) for n in ("lsm", "orog", "lat"))
    if lat[0] < lat[-1]:
        lsm, orog = lsm[::-1], orog[::-1]
    blat, blon = bundle_grid()
    assert np.array_equal(cases.land_mask(blat, blon), lsm) and np.array_equal(cases.orography(blat, blon), orog)
