"""latentda-tangent: the best latent increment of the shipped bundle against errors whose answer is known."""
import os

import netCDF4
import numpy as np

from latentda_train import cases as CS
from latentda_train.tangent import Decoder, best_increment, explained, variable_weights

BUNDLE = os.path.join(os.path.dirname(__file__), "..", "..", "models", "speedy-t31")


def _setup():
    d = Decoder(BUNDLE)
    xb = CS.read_state(os.path.join(BUNDLE, "sample", "background.nc"))
    with netCDF4.Dataset(os.path.join(BUNDLE, "sample", "truth.nc")) as ds:
        lat = np.asarray(ds["lat"][:], np.float64)
    return d, d.encode(d.norm(xb)), lat


def test_an_error_inside_the_tangent_space_is_explained_and_grid_noise_is_not():
    d, zb, lat = _setup()
    rng = np.random.default_rng(0)
    e = d.J(zb, 0.3 * rng.standard_normal(zb.shape)).astype(np.float64)
    w = variable_weights(e, lat)
    inside = explained(best_increment(d, zb, e, w, 30), e, w)
    assert min(inside.values()) > 0.99, inside
    assert explained(-e, e, w) == {v: 0.0 for v in inside}  # no increment explains nothing
    noise = rng.standard_normal(e.shape)  # grid-point white noise: a 12 x 24 latent grid cannot carry it
    wn = variable_weights(noise, lat)
    outside = explained(best_increment(d, zb, noise, wn, 30), noise, wn)
    assert max(outside.values()) < 0.3, outside
    assert min(outside.values()) >= 0.0, outside  # least squares never does worse than no increment
