"""Statistics, ONNX export, ONNX Runtime checks and bundle writing (docs/bundle-format.md, version 1).

The bundle is written only if the dot-product test (< 1e-5) and the Taylor test (first-order
convergence over >= 3 decades) pass in ONNX Runtime. Its known-answer probes (probes.nc, [probes]) are
written by the runtime's own `latentda probes` (write_probes), so the exporter and the runtime share one
implementation of the format."""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import tomllib

import netCDF4
import numpy as np

from . import __version__
from . import cases as CS
from . import data as D
from . import onnxio
from . import stats as ST

FILES = ["encoder.onnx", "decoder.onnx", "decoder_tl.onnx", "decoder_ad.onnx",
         "normalisation.nc", "latent_variance.nc", "baseline_b.nc"]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def latentda_binary():
    """The `latentda` command: $LATENTDA_BIN, else `latentda` on PATH, else this repository's release build."""
    for c in (os.environ.get("LATENTDA_BIN"), shutil.which("latentda"),
              os.path.join(REPO, "target", "release", "latentda")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise SystemExit("writing the bundle's probes needs the latentda command: build it (cargo build --release) or "
                     "set LATENTDA_BIN")


def write_probes(bundle_dir, backend_args=()):
    """Writes the known-answer probes of every graph of the bundle in `bundle_dir` (probes.nc, the [probes] table
    and its checksum in bundle.toml) with `latentda probes`, which then reopens the bundle and runs the self-test.
    Every other file must already match its checksum. Returns the command's output."""
    r = subprocess.run([latentda_binary(), "probes", str(bundle_dir), *backend_args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"latentda probes {bundle_dir} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def code_version(repo=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")):
    """Commit of the working tree, read from .git (no git command needed)."""
    try:
        head = open(os.path.join(repo, ".git", "HEAD")).read().strip()
        if head.startswith("ref:"):
            ref = head.split()[1]
            p = os.path.join(repo, ".git", ref)
            if os.path.exists(p):
                return "git " + open(p).read().strip()[:12]
            for line in open(os.path.join(repo, ".git", "packed-refs")):
                if line.strip().endswith(ref):
                    return "git " + line.split()[0][:12]
        return "git " + head[:12]
    except Exception:
        return "unknown"


def channel_names(sig):
    names = []
    for v, _, nlev, _ in D.VARS:
        names += [f"{v}@{s:g}" for s in sig] if nlev else [v]
    return names


def write_latent_variance(path, var, k, description):
    """latent_variance.nc: the variance s^2 per latent element (channel, latent row, latent column), its description
    and the calibration factor k it includes."""
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        for n, size in zip(["latent_channel", "latent_y", "latent_x"], var.shape):
            ds.createDimension(n, size)
        v = ds.createVariable("variance", "f8", ("latent_channel", "latent_y", "latent_x"))
        v[:] = var
        v.description = description
        ds.calibration_factor = float(k)


def read_latent_variance(bundle):
    """The latent variance s^2 (channel, latent row, latent column) of a bundle folder, float64."""
    with netCDF4.Dataset(os.path.join(bundle, "latent_variance.nc")) as ds:
        return np.asarray(ds["variance"][:], np.float64)


def write_nc_stats(d, ck, st, lat, lon, sig, latent_shape):
    with netCDF4.Dataset(os.path.join(d, "normalisation.nc"), "w", format="NETCDF4") as ds:
        ds.createDimension("channel", 41)
        ds.description = "per-channel normalisation: xn = (x - mean) / std; channels u,v,t,q,z x 8 sigma levels (top to bottom), ps"
        m = ds.createVariable("mean", "f8", ("channel",))
        m[:] = ck["norm_mean"]
        s = ds.createVariable("std", "f8", ("channel",))
        s[:] = ck["norm_std"]
        ds.channels = ",".join(channel_names(sig))
    write_latent_variance(os.path.join(d, "latent_variance.nc"), st["latent_variance"].reshape(latent_shape),
                          st["k_latent"], "diagonal latent background-error variance s^2: variance of encoded NMC "
                          f"differences E(N(x48)) - E(N(x24)) over {st['n_nmc']} pairs, times calibration factor "
                          f"{st['k_latent']:.4f}")
    with netCDF4.Dataset(os.path.join(d, "baseline_b.nc"), "w", format="NETCDF4") as ds:
        ds.createDimension("channel", 41)
        ds.createDimension("lat", len(lat))
        ds.createDimension("lon", len(lon))
        ds.createDimension("upper_var", 5)
        ds.createDimension("lev", len(sig))
        v = ds.createVariable("lat", "f8", ("lat",))
        v[:] = lat
        v.units = "degrees_north"
        v = ds.createVariable("lon", "f8", ("lon",))
        v[:] = lon
        v.units = "degrees_east"
        v = ds.createVariable("lev", "f8", ("lev",))
        v[:] = sig
        v.units = "1"
        v = ds.createVariable("sd", "f8", ("channel", "lat", "lon"))
        v[:] = st["sd"]
        v.description = (f"background-error standard deviation (physical units), NMC 48h-24h differences "
                         f"({st['n_nmc']} pairs) times sqrt({st['k_baseline']:.4f})")
        v = ds.createVariable("length_scale", "f8", ("channel",))
        v[:] = st["length_scale"]
        v.units = "km"
        v.description = "Gaussian correlation exp(-d^2/(2 L^2)) fitted to NMC sample correlations vs great-circle distance"
        v = ds.createVariable("vertical_correlation", "f8", ("upper_var", "lev", "lev"))
        v[:] = st["vertical_correlation"]
        v.description = "vertical correlation of u, v, t, q, z (manifest order), levels top to bottom"
        ds.upper_vars = "u,v,t,q,z"
        ds.calibration_factor_variance = st["k_baseline"]
        ds.channels = ",".join(channel_names(sig))


def toml_list(xs, fmt=repr):
    return "[" + ", ".join(fmt(float(x)) for x in xs) + "]"


def write_manifest(d, lat, lon, sig, latent_shape, prov, description, extra=(), baseline_variance_factor=None):
    L = ['format = "latentda-bundle"', "format_version = 1", 'name = "speedy-t31"',
         f'description = "{description}"', "", "[grid]", 'kind = "gaussian"',
         f"lat = {toml_list(lat)}", f"lon = {toml_list(lon)}", "", "[vertical]", 'coordinate = "sigma"',
         f"levels = {toml_list(sig)}", ""]
    for name, units, nlev, long in D.VARS:
        L += ["[[variables]]", f'name = "{name}"', f'units = "{units}"', f"levels = {nlev}",
              f'long_name = "{long}"', ""]
    L += ["[latent]", f"shape = [{', '.join(str(int(k)) for k in latent_shape)}]", "", "[models]",
          'encoder = "encoder.onnx"', 'decoder = "decoder.onnx"', 'decoder_tl = "decoder_tl.onnx"',
          'decoder_ad = "decoder_ad.onnx"', "", "[statistics]", 'normalisation = "normalisation.nc"',
          'latent_variance = "latent_variance.nc"', 'baseline = "baseline_b.nc"']
    if baseline_variance_factor is not None:
        L.append(f"baseline_variance_factor = {float(baseline_variance_factor)!r}")
    L += ["", *extra, "[checksums]"]
    for f in FILES:
        L.append(f'"{f}" = "{sha256(os.path.join(d, f))}"')
    L += ["", "[provenance]"]
    for k, v in prov.items():
        L.append(f"{k} = {json.dumps(str(v))}")
    text = "\n".join(L) + "\n"
    tomllib.loads(text)  # must parse
    open(os.path.join(d, "bundle.toml"), "w").write(text)


def pair_loss_note(args):
    """Provenance words for the error-pair loss of `latentda_train.train --pair-launches` ('' when off)."""
    if not args.get("pair_launches"):
        return ""
    cyc = [os.path.basename(os.path.normpath(c)) for c in args.get("pair_cycled", "").split(",") if c]
    return (f"; plus {args['pair_weight']} x the error-pair loss |D(E(xb)) - D(E(xt)) - (xb - xt)|^2 / |xb - xt|^2 "
            f"({args['pair_batch']} pairs per step, recipes a24 a48 b6 b24 b48 from training launches "
            f"{args['pair_launches']}" + (f", cycled 6 h backgrounds {' '.join(cyc)}" if cyc else "") + ")")


def balance_term_note(args):
    """Provenance words for the prior-draw balance term of `latentda_train.train --balance-weight` ('' when off)."""
    if not args.get("balance_weight"):
        return ""
    return (f"; plus {args['balance_weight']} x the prior-draw balance hinge max(0, {args['balance_target']} - "
            f"balance) per hemisphere ({args['balance_draws']} draws per step, latent spread from NMC valid days "
            f"{args['balance_nmc']})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=D.DEFAULT_OUT, help="data directory (nature run, forecasts, ae)")
    ap.add_argument("--ckpt", default=None, help="autoencoder checkpoint (default OUT/ae/ae.pt)")
    ap.add_argument("--bundle", default=os.path.join(os.path.dirname(__file__), "..", "..", "models", "speedy-t31"))
    ap.add_argument("--nmc-valid", default="22:331", help="NMC valid days first:last")
    ap.add_argument("--calib-launches", default="20:328",
                    help="training-period launches whose 48 h errors calibrate the B variances (model space)")
    ap.add_argument("--val-launches", default="610:728:2", help="validation launches (only reported)")
    ap.add_argument("--sample-launch", type=int, default=700,
                    help="launch day of the sample case (validation period, never used in calibration)")
    ap.add_argument("--hybrid", default=None,
                    help="[hybrid] table of the manifest as 'alpha,beta,var1+var2+...' (tuned on training-period cases)")
    ap.add_argument("--baseline-variance-factor", type=float, default=None,
                    help="tuned factor on the baseline variance, written to the manifest (training-period cases)")
    ap.add_argument("--debug-ignore-checks", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    ckpt_trained = a.ckpt or os.path.join(a.out, "ae", "ae.pt")
    stage = tempfile.mkdtemp(prefix="bundle_", dir=a.out)
    # float16-representable weights and buffers (bundle size); everything below uses this rounded model
    ckpt = os.path.join(stage, "ae_half.pt")
    onnxio.half_rounded_checkpoint(ckpt_trained, ckpt)
    ae, ck = onnxio.load_ae(ckpt)
    ae_full, _ = onnxio.load_ae(ckpt_trained)
    lat, lon, sig = D.grid(a.out)
    latent_shape = ae.latent_shape
    from .forecasts import launch_days
    f, l_ = map(int, a.nmc_valid.split(":"))
    st = ST.compute(ae, ck, a.out, list(range(f, l_ + 1)), launch_days(a.calib_launches),
                    launch_days(a.val_launches))
    if a.sample_launch + 2 < ck["train_days"]:
        raise SystemExit(f"sample launch {a.sample_launch} lies in the training period")
    onnxio.export_all(ckpt, stage)
    # checks in ONNX Runtime at a realistic linearisation point (encoded validation state)
    X = D.nature(a.out)
    xv = np.asarray(X[-1], np.float64)
    xn = ((xv - ck["norm_mean"][:, None, None]) / ck["norm_std"][:, None, None]).astype(np.float32)[None]
    S = onnxio.sessions(stage)
    z0 = S["encoder"].run(None, {"x": xn})[0]
    with torch.no_grad():
        zt = ae.encode(torch.from_numpy(xn)).numpy()
    enc_err = float(np.abs(z0 - zt).max() / np.abs(zt).max())
    with torch.no_grad():  # what the float16 storage changes: decoded fields of the full-precision model
        zf = torch.from_numpy(z0)
        d_full, d_half = ae_full.decode(zf).numpy(), ae.decode(zf).numpy()
    half_err = float(np.sqrt(np.mean((d_full - d_half) ** 2) / np.mean((d_full - ae.clim_mean.numpy()) ** 2)))
    print(f"float16 storage: decoded-field change {half_err:.2e} relative to the decoded anomaly")
    chk = onnxio.check_graphs(stage, ckpt, z0=z0, s_latent=np.sqrt(st["latent_variance"]))
    chk["torch_vs_ort_encoder"] = enc_err
    chk["float16_storage_rel_change"] = half_err
    os.remove(ckpt)
    print(f"torch vs ORT: encoder {enc_err:.2e} decoder {chk['torch_vs_ort_decoder']:.2e} tl {chk['torch_vs_ort_tl']:.2e}")
    shipped = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "models", "speedy-t31"))
    if not chk["ok"] and a.debug_ignore_checks and os.path.abspath(a.bundle) != shipped:
        print("DEBUG: checks failed, writing a test bundle anyway (never for the shipped bundle)")
    elif not chk["ok"]:
        raise SystemExit(f"REFUSING to write the bundle: dot test {chk['dot_max']:.2e} (< 1e-5 needed), "
                         f"Taylor first-order decades {chk['taylor_decades']} (>= 3 needed)")
    write_nc_stats(stage, ck, st, lat, lon, sig, latent_shape)
    # sample case: a validation-period case (the validation suite, `latentda-suite`, makes the others)
    fc = D.forecasts(a.out)
    stn = CS.stations(lat, lon)
    Ls = a.sample_launch
    sdir = os.path.join(stage, "sample")
    truth = np.asarray(X[D.truth_index(Ls + 2)], np.float64)
    bg = fc[Ls][1].astype(np.float64)
    nobs = CS.write_case(sdir, truth, bg, lat, lon, sig, stn, seed=1000 + Ls,
                         title=f"valid day {Ls + 2} after spin-up 00 UTC (launch day {Ls})",
                         networks=(("obs.csv", "sonde"), ("obs_mass.csv", "mass")))
    sample = {"launch": Ls, "nobs": nobs, "bg_rmse": D.rmse_per_var((bg - truth)[None])}
    print("sample case", json.dumps(sample), flush=True)
    # manifest
    kind = ae.cfg.get("kind", "conv")
    arch_name = {"patch": "local-EOF + conv", "pos": "position-aware conv"}.get(kind, "conv")
    prov = {
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "creator": f"latentda-train {__version__}",
        "code_version": code_version(),
        "data": (f"jcm 3.0.0 SPEEDY T31L8 nature run (30 min step, packaged T30 boundary files, isothermal-rest "
                 f"start, spin-up {json.load(open(os.path.join(a.out, 'nature', 'meta.json')))['spinup_days']} d), "
                 f"{len(X) // 4} days 6-hourly; train days 0-{ck['train_days'] - 1}, validation days "
                 f"{ck['train_days']}-{len(X) // 4 - 1}"),
        "training": (f"{arch_name} AE {ae.cfg}, {ck['params']} parameters, {ck['steps']} Adam steps ({ck['epochs']} epochs, "
                     f"{ck['minutes']} min on 2 CPU cores), loss weighted by 1/(48 h background error)^2 per channel"
                     + pair_loss_note(ck.get("args", {})) + balance_term_note(ck.get("args", {}))),
        "statistics": (f"NMC 48h-24h pairs from perturbed-truth forecasts: {st['n_nmc']} valid days; calibration in model "
                       f"space on {st['n_calib']} training-period 48 h forecasts (launch days {st['calib_launches'][0]}-"
                       f"{st['calib_launches'][-1]}): latent variance x {st['k_latent']:.4f}, baseline variance x "
                       f"{st['k_baseline']:.4f}"),
        "checks": (f"ONNX Runtime: dot test max rel. error {chk['dot_max']:.2e}; Taylor first-order over "
                   f"{chk['taylor_decades']} decades"),
        "license": "weights and data generated with jcm (Apache-2.0; SPEEDY physics port, research use)",
    }
    extra = []
    if a.hybrid:
        al, be, vs = a.hybrid.split(",")
        extra += ["[hybrid]", f"alpha = {float(al)!r}", f"beta = {float(be)!r}",
                  "variables = [" + ", ".join(f'"{v}"' for v in vs.split("+")) + "]", ""]
    write_manifest(stage, lat, lon, sig, latent_shape, prov,
                   f"SPEEDY T31L8 (jcm) reference bundle: {arch_name} autoencoder, hand-written TL/AD decoder",
                   extra=extra, baseline_variance_factor=a.baseline_variance_factor)
    print(write_probes(stage), end="", flush=True)
    report = {"init_rms": D.forecast_init_rms(a.out), "gate": st["gate"], "checks": chk, "sample": sample,
              **{k: st[k] for k in ("k_latent", "k_latent_latent_space", "latent_ratio_per_var", "k_baseline",
                                    "baseline_ratio_per_var", "calib_vars", "n_calib", "calib_rmse",
                                    "prior_draw_balance", "true_error_balance")},
              "length_scale_km": st["length_scale"].tolist(),
              "latent_shape": list(latent_shape), "n_nmc": st["n_nmc"], "n_val": st["n_val"],
              "nmc_rmse": st["nmc_rmse"], "ae": {k: (v if not isinstance(v, np.ndarray) else None)
                                                  for k, v in ck.items() if k not in ("state_dict", "norm_mean",
                                                                                      "norm_std", "hist", "loss_weights")}}
    json.dump(report, open(os.path.join(stage, "report.json"), "w"), indent=1, default=float)
    from .modelcard import write_card
    write_card(stage, report, prov, ae, ck, sig)
    # replace the bundle directory
    if os.path.exists(a.bundle):
        shutil.rmtree(a.bundle)
    shutil.copytree(stage, a.bundle)
    shutil.rmtree(stage)
    for r, ds_, fs in os.walk(a.bundle):
        os.chmod(r, 0o755)
        for f_ in fs:
            os.chmod(os.path.join(r, f_), 0o644)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(a.bundle) for f in fs)
    print(f"bundle written to {a.bundle}: {size / 1e6:.2f} MB", flush=True)


if __name__ == "__main__":
    main()
