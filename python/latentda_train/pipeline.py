"""Whole reference pipeline from nothing: nature run -> forecasts -> autoencoder -> statistics,
export, checks -> bundle and sample case.

    latentda-pipeline --out /work/data --bundle ../models/speedy-t31

Each stage is skipped when its output exists (delete the folder to redo it). About 1.5 h on 2 cores."""
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
    ap.add_argument("--train-minutes", default="45",
                    help="wall-clock minutes of the training stage(s), comma-separated stages continue the previous one")
    ap.add_argument("--train-steps", default=None,
                    help="train a fixed number of steps instead (comma-separated per stage, like --train-minutes): "
                         "reproducible bit for bit, unlike a time budget")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    if not os.path.exists(os.path.join(a.out, "nature", "chunk_024.npy")):
        run("nature", "--out", a.out, "--spinup-days", "160", "--days", "732")
    run("forecasts", "--out", a.out, "--launches", "20:330,610:728:2", "--t-rms", "0.7", "--wind-factor", "1.6")
    arch = ["--arch", "patch", "--patch", "8", "--K", "512", "--lr", "1e-3"]
    # one budget per training stage: a step count if given, else wall-clock minutes
    budget = "--steps" if a.train_steps else "--minutes"
    stages = (a.train_steps or a.train_minutes).split(",")
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
        os.path.abspath(a.bundle), "--nmc-valid", "22:331", "--val-launches", "610:728:2", "--sample-launch", "670")


if __name__ == "__main__":
    main()
