"""The error-pair loss of the autoencoder training (issue 20, item 4) and its recipe sampling."""
import numpy as np
import torch

from latentda_train.bundle import balance_term_note, pair_loss_note
from latentda_train.train import ErrorPairs, error_pair_loss


def _pairs(rng, n=3):
    xt = torch.from_numpy(rng.standard_normal((n, 41, 6, 8)).astype(np.float32))
    xb = xt + 0.1 * torch.from_numpy(rng.standard_normal((n, 41, 6, 8)).astype(np.float32))
    wt = torch.from_numpy(rng.uniform(0.1, 2.0, (1, 41, 1, 1)).astype(np.float32))
    return xb, xt, wt


def test_pair_loss_is_zero_for_an_exact_autoencoder_and_one_when_it_maps_both_states_alike():
    xb, xt, wt = _pairs(np.random.default_rng(0))
    assert float(error_pair_loss(xb, xt, xb, xt, wt)) == 0.0
    same = torch.zeros_like(xb)
    assert abs(float(error_pair_loss(same, same, xb, xt, wt)) - 1.0) < 1e-6
    # a decoded difference at half the error's size leaves a quarter of it, whatever the weights
    half = float(error_pair_loss(xt + 0.5 * (xb - xt), xt, xb, xt, wt))
    assert abs(half - 0.25) < 1e-5


def test_pair_loss_weighs_each_pair_by_its_own_error_size():
    xb, xt, wt = _pairs(np.random.default_rng(1), n=2)
    xb2 = xb.clone()
    xb2[1] = xt[1] + 100 * (xb[1] - xt[1])  # a 100x larger error, mapped to nothing, counts no more than the other
    same = torch.zeros_like(xb)
    assert abs(float(error_pair_loss(same, same, xb2, xt, wt)) - 1.0) < 1e-5


def test_pairs_are_drawn_with_equal_weight_per_recipe_whatever_its_size():
    z = lambda n: np.zeros((n, 41, 2, 2), np.float32)
    pool = ErrorPairs({"big": (z(90), z(90)), "small": (z(10) + 1, z(10))})
    rng = np.random.default_rng(2)
    b, t = pool.draw(4000, rng)
    share_small = float((b[:, 0, 0, 0] == 1).float().mean())
    assert abs(share_small - 0.5) < 0.03
    assert b.shape == (4000, 41, 2, 2) and t.shape == b.shape


def test_provenance_names_the_pair_loss_only_when_it_was_used():
    assert pair_loss_note({}) == ""
    assert pair_loss_note({"pair_launches": None}) == ""
    note = pair_loss_note({"pair_launches": "25:585:16", "pair_cycled": "/d/cycled_uniform", "pair_weight": 1.0,
                           "pair_batch": 2})
    assert "25:585:16" in note and "cycled_uniform" in note and "error-pair loss" in note


def test_provenance_names_the_balance_term_only_when_it_was_used():
    assert balance_term_note({}) == "" and balance_term_note({"balance_weight": 0.0}) == ""
    note = balance_term_note({"balance_weight": 1.0, "balance_target": 0.75, "balance_draws": 2,
                              "balance_nmc": "22:331:3"})
    assert "balance hinge" in note and "0.75" in note and "22:331:3" in note
