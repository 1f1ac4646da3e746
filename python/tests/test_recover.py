"""latentda-recover: the shipped bundle's training checkpoint rebuilt from its ONNX graphs."""
import os

import numpy as np
import torch

from latentda_train.model import Film
from latentda_train.onnxio import load_ae
from latentda_train.recover import graph_mismatch, main

BUNDLE = os.path.join(os.path.dirname(__file__), "..", "..", "models", "speedy-t31")


def test_the_recovered_checkpoint_reproduces_the_bundle_and_loads_for_training(tmp_path):
    out = str(tmp_path / "shipped.pt")
    main(["--bundle", BUNDLE, "--out", out])
    ae, ck = load_ae(out)  # what latentda-train --init reads
    assert ck["steps"] > 0 and ck["norm_mean"].shape == (41,)
    mm = graph_mismatch(ae, BUNDLE)
    assert mm["encoder"] < 1e-5 and mm["decoder"] < 1e-4, mm
    # the folded position gains were solved back, not left at their zero initialisation
    films = [m for m in ae.decoder.convs if isinstance(m, Film)]
    assert films and all(float(m.g.weight.detach().abs().max()) > 1e-3 for m in films)
    # and they matter: without them the decoder is far from the bundle's
    with torch.no_grad():
        for m in films:
            m.g.weight.zero_()
            m.g.bias.zero_()
    assert graph_mismatch(ae, BUNDLE)["decoder"] > 1e-2
    assert np.isfinite(ck["minutes"])
