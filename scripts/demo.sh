#!/usr/bin/env bash
# The main job: an end-to-end latent 3D-Var analysis on the shipped reference bundle and sample case,
# then the model-space 3D-Var baseline on the same observations for comparison.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
LATENTDA_SKIP_PIP=1 bash scripts/setup.sh
cargo build --release --quiet
bundle=models/speedy-t31
case=$bundle/sample
out="${LATENTDA_DEMO_OUT:-target/demo}"
mkdir -p "$out"
./target/release/latentda info "$bundle"
echo
echo "== latent 3D-Var (L3DVar; default options: converged to a 1000-fold gradient reduction) =="
./target/release/latentda analyse --bundle "$bundle" --background "$case/background.nc" --obs "$case/obs.csv" \
  --truth "$case/truth.nc" --output "$out/analysis_l3dvar.nc" --report "$out/report_l3dvar.json" "$@"
echo
echo "== model-space 3D-Var baseline (static B; more CG iterations so it converges: its control vector is 20x larger) =="
./target/release/latentda analyse --bundle "$bundle" --method 3dvar --max-inner 150 --background "$case/background.nc" \
  --obs "$case/obs.csv" --truth "$case/truth.nc" --output "$out/analysis_3dvar.nc" --report "$out/report_3dvar.json" "$@"
