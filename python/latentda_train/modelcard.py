"""Model card (README.md) of the bundle, written by `latentda-export`; `latentda-card` adds the validation-suite,
single-observation and latent-size sections from the JSON files those tools write."""
from __future__ import annotations

import argparse
import json
import os

UNITS = {"u": "m/s", "v": "m/s", "t": "K", "q": "kg/kg", "z": "m2/s2", "ps": "Pa"}
VARS = list(UNITS)


def fmt(x):
    return f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.2e}"


def write_card(d, rep, prov, ae, ck, sig):
    g = rep["gate"]
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    cfg = ae.cfg
    ls = rep["latent_shape"]
    nz = ls[0] * ls[1] * ls[2]
    L = ["# speedy-t31: latentda reference bundle (v2)", "",
         "Autoencoder for latent-space data assimilation on the SPEEDY T31L8 grid (jcm), with a hand-written",
         "tangent-linear and adjoint decoder, latent background-error variances from NMC statistics calibrated in",
         "model space, and the model-space baseline B statistics from the same samples. Bundle format version 1",
         "(`docs/bundle-format.md`). Produced by `python/` (`latentda-pipeline`, see `python/README.md`).", "",
         "## What changed from v1 and why", "",
         "v1 was a local-EOF patch autoencoder: one basis shared by all 8 x 8 patches of both hemispheres. Because",
         "the Coriolis parameter changes sign at the equator, pooling cancelled the wind-height coupling: random",
         "draws of its latent B had a geostrophic balance of 0.02, its L3DVar increments were less balanced than",
         "univariate 3D-Var's, and temperature and surface-pressure observations could not move the wind. v2 is a",
         "convolutional autoencoder that knows where it is: sin/cos latitude, land-sea mask and orography enter the",
         "encoder and every decoder convolution as fixed channels and set a position-dependent gain of the decoder's",
         "feature maps, so the decoder can make the wind-mass coupling follow the sign of f. Its latent variance is",
         "calibrated in model space (a latent-space fit came out an order of magnitude too small, see below).", "",
         "## Data", "",
         f"- {prov['data']}.",
         "- Layout: channels u, v (m/s), t (K), q (kg/kg), z (geopotential, m2/s2) on 8 sigma levels",
         f"  {', '.join(f'{s:g}' for s in sig)} (top to bottom), then ps (Pa): 41 channels on the 48 x 96",
         "  Gaussian grid, latitudes north to south, longitudes 0 to 356.25.",
         "- Backgrounds and NMC samples: 24 h and 48 h jcm forecasts launched daily at 00 UTC from perturbed truth",
         "  states. Perturbation = difference of two other (random, earlier) nature states, truncated to total",
         "  wavenumbers 1-10, on vorticity, divergence, temperature, log ps and humidity, scaled to a 0.7 K",
         "  temperature RMS with the vorticity and divergence parts x 1.6 (multivariate and balanced). Mean initial",
         "  perturbation RMS: " + ", ".join(f"{v} {fmt(x)} {UNITS[v]}" for v, x in rep["init_rms"].items()) + ".",
         f"- {prov['statistics']}.", "",
         "## Model", "",
         f"- {prov['training']}.",
         f"- Latent shape {ls} ({nz} values, {41 * 48 * 96 / nz:.1f}x compression of the 41 x 48 x 96 state);"
         " input [1, 41, 48, 96] normalised per channel (normalisation.nc).",
         "- Encoder: periodic 3 x 3 convolutions (longitude halo by slice + concat, zero padding in latitude), SiLU,",
         f"  two stride-2 stages to the {ls[1]} x {ls[2]} latent grid, residual blocks and a zonal-mean mixing layer",
         "  there (global receptive field). Input: the per-point standardised anomaly plus the 4 position fields.",
         "- Decoder: the mirror image with PixelShuffle upsampling; every convolution also sees the position fields at",
         "  its resolution, and a position-dependent gain h * (1 + G(P)) multiplies its feature maps. Position fields,",
         "  climatology and gains are fixed buffers, so the TL and AD are exact. The decoder's TL/AD are hand-written",
         "  (`python/latentda_train/model.py`) and tested against autograd in float64 (`python/tests`).",
         f"- Channels: encoder {cfg.get('ce')}, decoder {cfg.get('cd')}, latent {cfg.get('cl')}.",
         "- ONNX: float32 arithmetic, opset 18, fixed batch 1. Weights and buffers are stored as float16 values +",
         "  Cast (size); all four graphs and the statistics use the same rounded model, so the TL/AD stay exact; the",
         f"  rounding changes decoded fields by {rep['checks'].get('float16_storage_rel_change', float('nan')):.1e} of the"
         " decoded anomaly.",
         f"- Bundle size {size / 1e6:.1f} MB.", "",
         "## Calibration in model space (training-period cases only)", "",
         f"Random draws sd * D'(z_b)(s * xi) of the latent B at training-period backgrounds, against the true 48 h",
         f"error variance of {rep['n_calib']} training-period forecasts; the latent variance (NMC shape) is scaled by",
         f"the geometric mean over {', '.join(rep['calib_vars'])} of (true / implied): **x {rep['k_latent']:.3g}**.",
         f"A fit of the same errors in latent space would have given x {rep['k_latent_latent_space']:.3g}. The",
         "baseline's NMC variances are scaled the same way. Per variable, true / implied variance before scaling:", "",
         "| variable | latent B | baseline B |", "|---|---|---|"]
    for v in VARS:
        L.append(f"| {v} | {rep['latent_ratio_per_var'][v]:.3g} | {rep['baseline_ratio_per_var'][v]:.3g} |")
    pb, tb = rep["prior_draw_balance"], rep["true_error_balance"]
    L += ["", f"Prior-draw balance at training backgrounds: NH {pb['N']:.2f}, SH {pb['S']:.2f} (true 48 h errors: NH "
          f"{tb['N']:.2f}, SH {tb['S']:.2f}).", "",
          f"Baseline horizontal length scales (km) per channel: {', '.join(str(int(round(x))) for x in rep['length_scale_km'])}.",
          "", "## Reconstruction (reported, not a gate)", "",
          "On the validation nature states (never used in training), RMSE per variable over all levels against the",
          "RMSE of validation 48 h background errors. In the default increment mode the reconstruction error cancels",
          "to first order; what matters is the decoder's Jacobian (the latent B).", "",
          "| variable | AE reconstruction RMSE | 48 h background error RMSE | ratio |", "|---|---|---|---|"]
    for v in VARS:
        L.append(f"| {v} ({UNITS[v]}) | {fmt(g[v]['recon_rmse'])} | {fmt(g[v]['bg48_rmse'])} | {g[v]['ratio']:.3f} |")
    c = rep["checks"]
    L += ["", "## TL/AD checks (ONNX Runtime, float32, at an encoded validation state)", "",
          f"- dot-product test |<J v,u> - <v,J^T u>| / max: {', '.join(f'{e:.1e}' for e in c['dot'])}",
          f"- Taylor test along latent-B directions, |D(z+e dz) - D(z) - e TL dz| / (e |TL dz|), first order over"
          f" {c['taylor_decades']:g} decades:", "", "| eps | relative remainder | ratio |", "|---|---|---|"]
    for eps, rem, ratio in c["taylor"]:
        L.append(f"| {eps:.1e} | {rem:.2e} | {ratio:.6f} |")
    L += ["", f"- PyTorch vs ONNX Runtime: encoder {c['torch_vs_ort_encoder']:.1e}, decoder {c['torch_vs_ort_decoder']:.1e},"
          f" TL {c['torch_vs_ort_tl']:.1e} (max relative difference)", "",
          "## Sample case (`sample/`)", "",
          f"- truth.nc: nature state at 00 UTC of day {rep['sample']['launch'] + 2} (validation period, never used in"
          " training or calibration);",
          f"  background.nc: 48 h forecast from the perturbed truth of day {rep['sample']['launch']}.",
          "- Background error RMSE: " + ", ".join(f"{v} {fmt(x)} {UNITS[v]}" for v, x in rep["sample"]["bg_rmse"].items()) + ".",
          f"- obs.csv ({rep['sample']['nobs'].get('obs.csv')} observations): radiosonde-like network of 300 columns (random"
          " positions over land, |lat| <= 80, >= 250 km apart): u, v, t on all 8 levels, q where sigma >= 0.34 and the",
          "  truth q >= 1e-5 kg/kg, ps. Errors 1.5 m/s, 0.8 K, 100 Pa; q: a 10 % relative-humidity error, 0.1 q_sat(T, p).",
          f"- obs_mass.csv ({rep['sample']['nobs'].get('obs_mass.csv')} observations): mass only, t profiles in the same"
          " columns and ps at 1500 points uniform on the sphere (|lat| <= 85).", "",
          "<!-- validation -->", "",
          "## Licence and use", "",
          "Data generated with jcm (Apache-2.0; its SPEEDY physics is a port of research code: fine for generating",
          "reference data, not a runtime dependency of latentda)."]
    open(os.path.join(d, "README.md"), "w").write("\n".join(L) + "\n")


def suite_section(s, title):
    """Markdown tables of a `latentda-suite --json` file."""
    su = s["summary"]
    runs = [r[0] for r in s["runs"]]
    L = [f"### {title}", "", f"`{s.get('command', 'latentda-suite')}`", ""]
    for net, sn in su["networks"].items():
        L += [f"Network `{net}`, {sn['n_cases']} cases: mean over cases of analysis RMSE / background RMSE "
              "(area-weighted; lower is better):", "",
              "| variable | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
        for v in VARS:
            L.append(f"| {v} | " + " | ".join(f"{sn['ratios'][v][m]:.3f}" for m in runs) + " |")
        L.append("| balance of increments | " + " | ".join(f"{sn['balance'][m]:.2f}" for m in runs) + " |")
        L.append("| TL/AD pairs | " + " | ".join(f"{sn['pairs'][m][0]}-{sn['pairs'][m][1]}" for m in runs) + " |")
        L += ["", f"True background error balance: {sn['true_error_balance']:.2f}.", ""]
    pb, tb = su["prior_draw_balance"], su["true_error_balance"]
    L += [f"Prior-draw balance of the latent B at these backgrounds: NH {pb['N']:.2f}, SH {pb['S']:.2f} (true background"
          f" errors NH {tb['N']:.2f}, SH {tb['S']:.2f}).", ""]
    for m, g in su.get("gates", {}).items():
        L.append(f"- gates for `{m}`: " + "; ".join(f"{k}: {'pass' if ok else '**FAIL**'}" for k, ok in g.items()))
    return L + [""]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--suite", nargs="*", default=[], help="TITLE=suite.json (latentda-suite --json)")
    ap.add_argument("--single-obs", default=None, help="latentda-single-obs --json file")
    ap.add_argument("--text", nargs="*", default=[], help="markdown files appended to the section")
    a = ap.parse_args(argv)
    L = ["## Validation (latentda runtime, cases never used in training or calibration)", ""]
    for item in a.suite:
        title, path = item.split("=", 1)
        L += suite_section(json.load(open(path)), title)
    if a.single_obs:
        rows = json.load(open(a.single_obs))
        L += ["### Single observations", "", "`latentda-single-obs` (innovation +1 K at sigma 0.51, or -100 Pa; "
              "vorticity of the wind increment within 600 km of the observation; balance within 2500 km):", "",
              "| experiment | method | max wind increment (m/s) | vorticity (1/s) | level | expected sign | balance |",
              "|---|---|---|---|---|---|---|"]
        for r in rows:
            L.append(f"| {r['experiment']} | {r['method']} | {r['max_wind']:.3f} | {r['vorticity']:+.2e} | {r['level']:g} | "
                     f"{'+' if r['expected_sign'] > 0 else '-'} ({'ok' if r['consistent'] else ('none' if r['max_wind'] <= 1e-6 else 'WRONG')})"
                     f" | {r['balance']:.2f} |")
        L.append("")
    for f in a.text:
        L += [open(f).read().rstrip(), ""]
    path = os.path.join(a.bundle, "README.md")
    text = open(path).read()
    i = text.index("<!-- validation -->")
    j = text.index("## Licence and use")
    open(path, "w").write(text[:i] + "<!-- validation -->\n" + "\n".join(L) + "\n" + text[j:])


if __name__ == "__main__":
    main()
