#!/usr/bin/env bash
# GPU check: the adjoint tests and analyses on an NVIDIA GPU through ONNX Runtime's CUDA execution provider, for the
# reference bundle and a paper-scale synthetic bundle (69 x 128 x 256 state, ViT decoder of ~156 M parameters), with
# the same per-phase breakdown as the CPU benchmarks.
#
#   scripts/gpu_check.sh run  [--scale S] [--bundle DIR] [--cpu-baseline]   on the GPU machine
#   scripts/gpu_check.sh pack                                              here: binary + shared libraries -> .gpu/
#   scripts/gpu_check.sh run --device cpu --scale 0.125                    rehearsal of the whole script on a CPU
#
# Needs on the GPU machine: an NVIDIA driver, Python 3 with numpy, onnx and netCDF4 or scipy (to generate the synthetic
# bundle), ONNX Runtime with the CUDA provider and the CUDA 12/13 + cuDNN 9 libraries, found in this order:
#   ORT_GPU_LIB=/path/to/onnxruntime/capi/libonnxruntime.so.1.xx   (libonnxruntime_providers_cuda.so beside it), else
#   the `onnxruntime` Python package if it ships the CUDA provider (`pip install onnxruntime-gpu`);
#   CUDA libraries from the `nvidia-*` Python packages (pip, e.g. a PyTorch install) are put on LD_LIBRARY_PATH, and
#   CUDA_LIB_DIRS (colon-separated) is added in front.
# latentda itself: LATENTDA_BIN, else .gpu/latentda-gpu.tar.zst (made by `pack` here and carried over), else
# `cargo build --release`. Without network on the GPU machine, follow ../shared/GPU.md to carry the onnxruntime-gpu
# wheel over in parts.
#
# TF32 stays off (option cuda_tf32 = false, the default), so the dot-product gate of 1e-5 applies on the GPU too.
# The per-call figures include host<->device copies: the backend does not yet keep tensors on the device between
# TL/AD calls (IO binding), see docs/performance.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
mode="${1:-run}"
shift || true

if [[ "$mode" == "pack" ]]; then
    cargo build --release
    rm -rf .gpu/pack && mkdir -p .gpu/pack/lib
    cp target/release/latentda .gpu/pack/
    # every shared library outside the C runtime (the GPU machine may lack libnetcdf, HDF5 and their dependencies)
    ldd target/release/latentda | awk '/=> \//{print $3}' \
        | grep -Ev '/(libc|libm|libdl|libpthread|librt|libgcc_s|ld-linux[^/]*)\.so' \
        | while read -r lib; do cp -L "$lib" .gpu/pack/lib/; done
    tar -C .gpu/pack -cf - . | zstd -19 -T0 -q -o .gpu/latentda-gpu.tar.zst -f
    rm -rf .gpu/pack
    size=$(stat -c %s .gpu/latentda-gpu.tar.zst)
    echo "wrote .gpu/latentda-gpu.tar.zst ($((size / 1048576)) MiB): carry it with the working tree (run ... carry: [\".gpu/latentda-gpu.tar.zst\"])"
    exit 0
fi
[[ "$mode" == "run" ]] || { echo "usage: $0 run [--scale S] [--bundle DIR] [--cpu-baseline] | $0 pack" >&2; exit 2; }

scale=1.0
bundle=models/speedy-t31
cpu_baseline=0
device=cuda:0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --scale) scale="$2"; shift 2 ;;
        --bundle) bundle="$2"; shift 2 ;;
        --cpu-baseline) cpu_baseline=1; shift ;;
        --device) device="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
work="${LATENTDA_GPU_WORK:-/tmp/latentda-gpu}"
mkdir -p "$work"

echo "== machine"
if [[ "$device" == cpu ]]; then
    echo "rehearsal on the CPU (no GPU figures)"
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no NVIDIA GPU visible" >&2; exit 1; }
fi
echo "$(nproc) CPU cores"

echo "== ONNX Runtime$([[ "$device" == cpu ]] || echo " with the CUDA provider")"
ort="${ORT_GPU_LIB:-}"
if [[ -z "$ort" ]]; then
    ort=$(CPU="$device" python3 - <<'EOF' || true
import glob, os
try:
    import onnxruntime
except ImportError:
    raise SystemExit(0)
capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so.1*")))
if libs and (os.environ["CPU"] == "cpu" or os.path.exists(os.path.join(capi, "libonnxruntime_providers_cuda.so"))):
    print(libs[0])
EOF
)
fi
[[ -n "$ort" && -f "$ort" ]] || { echo "ONNX Runtime with the CUDA provider not found: set ORT_GPU_LIB (see the header of $0)" >&2; exit 1; }
if [[ "$device" != cpu && ! -f "$(dirname "$ort")/libonnxruntime_providers_cuda.so" ]]; then
    echo "$(dirname "$ort") has no libonnxruntime_providers_cuda.so" >&2
    exit 1
fi
echo "library $ort"
nv=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]) + '/nvidia')" 2>/dev/null || true)
libdirs="${CUDA_LIB_DIRS:-}"
if [[ -n "$nv" && -d "$nv" ]]; then
    for d in "$nv"/*/lib; do libdirs="$libdirs:$d"; done
fi
export LD_LIBRARY_PATH="${libdirs#:}:$(dirname "$ort"):${LD_LIBRARY_PATH:-}"

echo "== latentda"
bin="${LATENTDA_BIN:-}"
if [[ -z "$bin" && -f .gpu/latentda-gpu.tar.zst ]]; then
    mkdir -p "$work/pack"
    zstd -d -q -c .gpu/latentda-gpu.tar.zst | tar -C "$work/pack" -xf -
    bin="$work/pack/latentda"
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$work/pack/lib"
fi
if [[ -z "$bin" ]]; then
    cargo build --release
    bin="$here/target/release/latentda"
fi
if ldd "$bin" | grep -q "not found"; then
    echo "missing shared libraries for $bin:" >&2
    ldd "$bin" | grep "not found" >&2
    exit 1
fi
"$bin" --version
gpu=(--backend ort --ort-library "$ort" --device "$device")

# per-phase breakdown of an analysis report: total, model runs per kind (count, ms per run), own code
breakdown() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); t = r["timings"]; s = r["solver"]
model = t["encode_s"] + t["decode_s"] + t["tl_s"] + t["ad_s"]
per = lambda sec, n: 1e3 * sec / n if n else float("nan")
print(f"{sys.argv[2]}: total {t['total_s']:.3f} s on {r['device']} ({r['backend_detail']}); solver {s['solver']}, "
      f"{s['inner_total']} TL/AD pairs, |g| reduced {1 / s['grad_reduction']:.3g}-fold, J {s['j_final']:.6e}")
print(f"  encode {t['encode_s']:.4f} s ({t['n_encode']}x, {per(t['encode_s'], t['n_encode']):.2f} ms)  "
      f"decode {t['decode_s']:.4f} s ({t['n_decode']}x, {per(t['decode_s'], t['n_decode']):.2f} ms)  "
      f"TL {t['tl_s']:.4f} s ({t['n_tl']}x, {per(t['tl_s'], t['n_tl']):.2f} ms)  "
      f"AD {t['ad_s']:.4f} s ({t['n_ad']}x, {per(t['ad_s'], t['n_ad']):.2f} ms)")
print(f"  latentda's own code {t['overhead_s']:.4f} s = {100 * t['overhead_s'] / t['total_s']:.1f}% of the analysis "
      f"(H {t['h_s']:.4f} s)")
EOF
}

analyse() {  # label bundle extra-args...
    local label="$1" b="$2"; shift 2
    "$bin" analyse --bundle "$b" --background "$b/sample/background.nc" --obs "$b/sample/obs.csv" \
        --truth "$b/sample/truth.nc" --output "$work/an.nc" --report "$work/report.json" "$@" > "$work/analyse.log"
    grep -E "^(J |outer loop|time:)" "$work/analyse.log" || true
    breakdown "$work/report.json" "$label"
}

echo
echo "== adjoint tests on the GPU (TF32 off): $bundle"
"$bin" check "$bundle" --state "$bundle/sample/background.nc" "${gpu[@]}"
echo
echo "== analysis on the GPU: $bundle (default options, then a warm second run in a new process)"
analyse "gpu default" "$bundle" "${gpu[@]}"
analyse "gpu default (2nd)" "$bundle" "${gpu[@]}"
if [[ "$cpu_baseline" == 1 ]]; then
    analyse "cpu ort threads=$(nproc)" "$bundle" --backend ort --ort-library "$ort" --threads "$(nproc)"
fi

echo
echo "== paper-scale synthetic bundle (scale $scale)"
paper="$work/paper-$scale"
if [[ ! -f "$paper/bundle.toml" ]]; then
    python3 scripts/synthetic_bundle.py "$paper" --preset paper --scale "$scale" --no-check --obs 20000
fi
"$bin" info "$paper" "${gpu[@]}" > "$work/info.txt"
sed -n 1,3p "$work/info.txt"
echo "-- adjoint tests on the GPU (TF32 off)"
"$bin" check "$paper" --state "$paper/sample/background.nc" "${gpu[@]}"
echo "-- analyses on the GPU (target: <= 0.5 s on one H100 for the converged default analysis)"
analyse "paper gpu default" "$paper" "${gpu[@]}"
analyse "paper gpu 10 pairs" "$paper" "${gpu[@]}" --max-pairs 10
analyse "paper gpu adam 50" "$paper" "${gpu[@]}" --solver adam --adam-steps 50
echo
echo "gpu_check: done"
