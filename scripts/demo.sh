#!/usr/bin/env bash
# The main job: on the shipped reference bundle and its sample case, the model-space 3D-Var baseline, latent 3D-Var
# (L3DVar) and the hybrid, all with the default options; one comparison table and PNG figures (`latentda demo`). Then
# the 4D sample: the same three with the analysis-time observations against latent 4D-Var (L4DVar, the bundle's step
# model) with the observations of a 12 h window.
# Extra arguments go to `latentda demo` (e.g. --backend ort --ort-library PATH, --case DIR, --obs FILE).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
LATENTDA_SKIP_PIP=1 bash scripts/setup.sh
cargo build --release --quiet
bundle=models/speedy-t31
out="${LATENTDA_DEMO_OUT:-target/demo}"
# Backend "auto": ONNX Runtime when its library is found (ORT_DYLIB_PATH, or the onnxruntime Python wheel that
# scripts/test.sh installs), else the built-in tract; the table's "backend" line says which ran. An explicit
# --backend among the arguments wins.
backend=(--backend auto)
for a in "$@"; do [ "$a" = "--backend" ] && backend=(); done
./target/release/latentda info "$bundle" "${backend[@]}"
echo
./target/release/latentda demo "$bundle" --case "$bundle/sample" --output "$out" "${backend[@]}" "$@"
echo
./target/release/latentda demo "$bundle" --case "$bundle/sample4d" --output "$out/window" "${backend[@]}" "$@"
