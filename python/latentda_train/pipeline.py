"""Whole reference pipeline from nothing: nature run -> forecasts -> autoencoder -> statistics,
export, checks -> bundle and sample case.

    latentda-pipeline --out DATA --bundle models/speedy-t31

Each stage is skipped when its output exists (delete the folder to redo it). About 1.5-2 h on 2 cores (nature run
11 min, forecasts 20 min, training 4000 steps about 45-60 min, statistics/export/checks 5 min)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from . import data as D


def run(mod, *args):
    cmd = [sys.executable, "-m", f"latentda_train.{mod}", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=D.DEFAULT_OUT)
    ap.add_argument("--bundle", default=os.path.join(os.path.dirname(__file__), "..", "..", "models", "speedy-t31"))
    ap.add_argument("--train-minutes", default=None,
                    help="train for wall-clock minutes instead of steps (comma-separated stages continue the previous "
                         "one); not reproducible bit for bit")
    ap.add_argument("--train-steps", default="4000",
                    help="training steps (comma-separated per stage): reproducible bit for bit (one thread)")
    ap.add_argument("--latent-channels", default="40", help="latent channels of the 12 x 24 latent grid")
    ap.add_argument("--hybrid", default="0.7,0.3,u+v+t+q+z+ps",
                    help="[hybrid] alpha,beta,variables written to the bundle (tuned on training-period cases with "
                         "latentda-suite, see python/README.md)")
    ap.add_argument("--baseline-variance-factor", default="1.0")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    if not os.path.exists(os.path.join(a.out, "nature", "chunk_024.npy")):
        run("nature", "--out", a.out, "--spinup-days", "160", "--days", "732")
    run("forecasts", "--out", a.out, "--launches", "20:330,610:728:2", "--t-rms", "0.7", "--wind-factor", "1.6")
    arch = ["--arch", "pos", "--cl", a.latent_channels, "--lr", "2e-3", "--threads", "1"]
    # one budget per training stage: wall-clock minutes if given, else a step count
    budget = "--minutes" if a.train_minutes else "--steps"
    stages = (a.train_minutes or a.train_steps).split(",")
    prev = None
    for k, amount in enumerate(stages):
        name = "ae" if len(stages) == 1 else f"ae_stage{k + 1}"
        if not os.path.exists(os.path.join(a.out, "ae", f"{name}.pt")):
            extra = ["--init", prev] if prev else []
            run("train", "--out", a.out, "--train-days", "600", budget, amount, *arch, "--name", name, *extra)
        prev = os.path.join(a.out, "ae", f"{name}.pt")
    if prev != os.path.join(a.out, "ae", "ae.pt"):
        import shutil
        shutil.copyfile(prev, os.path.join(a.out, "ae", "ae.pt"))
    run("bundle", "--out", a.out, "--ckpt", os.path.join(a.out, "ae", "ae.pt"), "--bundle",
        os.path.abspath(a.bundle), "--nmc-valid", "22:331", "--calib-launches", "20:328", "--val-launches",
        "610:728:2", "--sample-launch", "700", "--hybrid", a.hybrid,
        "--baseline-variance-factor", a.baseline_variance_factor)


if __name__ == "__main__":
    main()
