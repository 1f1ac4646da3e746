"""Nature run: SPEEDY T31L8 (jcm), spin-up then 6-hourly states in latentda layout.

Writes to OUT/nature/: chunk_XXX.npy (float32, (n, 41, 48, 96)), times.npy (hours since start),
grid.json, and OUT/nature/ckpt/day_XXXX.npz: full model state (dycore + physics carry) at 00 UTC of
each day after spin-up (used to launch forecasts)."""
from __future__ import annotations

import argparse
import json
import os
import time

from . import data as D
from . import jcmrun
import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=D.DEFAULT_OUT)
    ap.add_argument("--spinup-days", type=int, default=160)
    ap.add_argument("--days", type=int, default=732)
    ap.add_argument("--chunk-days", type=int, default=30)
    a = ap.parse_args(argv)
    d = os.path.join(a.out, "nature")
    os.makedirs(os.path.join(d, "ckpt"), exist_ok=True)
    m, forcing, kw = jcmrun.load_model()
    t0 = time.time()
    # deterministic: isothermal-rest initial state of the configuration, no random numbers
    pred = m.run(**kw)  # first 6 h
    json.dump(jcmrun.grid_info(pred), open(os.path.join(d, "grid.json"), "w"), indent=1)
    spun = 0.25
    while spun < a.spinup_days - 1e-9:
        step = min(10.0, a.spinup_days - spun)
        m.resume(forcing=forcing, save_interval=step, total_time=step)
        spun += step
        print(f"spin-up {spun:.2f} d  {time.time()-t0:.0f}s", flush=True)
    meta = {"spinup_days": a.spinup_days, "days": a.days, "start_step": None, "dt_seconds": int(m.dt_si.m),
            "jcm": __import__("jcm").__version__ if hasattr(__import__("jcm"), "__version__") else "3.0.0",
            "seed": "none (deterministic model, isothermal rest start)", "layout": jcmrun.LAYOUT}
    buf, times, chunk, day = [], [], 0, 0
    while day < a.days:
        leaves, step = jcmrun.flatten_state(m)
        if meta["start_step"] is None:
            meta["start_step"] = step
        np.savez(os.path.join(d, "ckpt", f"day_{day:04d}.npz"), step=step, *leaves)
        p = m.resume(forcing=forcing, save_interval=0.25, total_time=1.0)
        x = jcmrun.physics_to_latentda(p.dynamics)
        buf.append(x)
        times += [(step * meta["dt_seconds"]) / 3600.0 + 6.0 * (k + 1) for k in range(x.shape[0])]
        day += 1
        if day % a.chunk_days == 0 or day == a.days:
            arr = np.concatenate(buf)
            np.save(os.path.join(d, f"chunk_{chunk:03d}.npy"), arr)
            buf, chunk = [], chunk + 1
            np.save(os.path.join(d, "times.npy"), np.array(times))
            meta["nchunks"] = chunk
            meta["nstates"] = len(times)
            json.dump(meta, open(os.path.join(d, "meta.json"), "w"), indent=1)
            print(f"day {day} chunk {chunk} {time.time()-t0:.0f}s  " +
                  " ".join(f"{v}[{arr[:, i*8:(i+1)*8].min():.4g},{arr[:, i*8:(i+1)*8].max():.4g}]"
                           for i, v in enumerate(jcmrun.UPPER)) +
                  f" ps[{arr[:, 40].min():.0f},{arr[:, 40].max():.0f}] mean ps {arr[:, 40].mean():.0f}", flush=True)
    print("done", time.time() - t0, flush=True)


if __name__ == "__main__":
    main()
