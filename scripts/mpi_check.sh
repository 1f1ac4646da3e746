#!/usr/bin/env bash
# MPI coupling check (issue 22): builds the shim and the MPI examples (scripts/mpi_build.sh), runs them under mpirun
# with 1, 2, 3 and 4 ranks and several decompositions (uneven splits, a halo, another analysing rank, float32
# patches), and compares every analysis with the single-process CLI analysis (`latentda analyse`) of the same case,
# bit for bit. Observation results (QC flag, H(x_b), H(x_a) per row, routed back to the rank that gave each one) are
# compared with those of the 1-rank run. Prints a table; exits non-zero on any difference or failed run.
#
#   scripts/mpi_check.sh [BUNDLE]        (default models/speedy-t31; its sample/background.nc and sample/obs.csv)
#
# When the bundle has a 4D sample (sample4d/obs4d.csv, with observation times), a last row runs latent 4D-Var from 3
# ranks against `latentda analyse --method l4dvar` (about 2 minutes; LATENTDA_MPI_SKIP_L4DVAR=1 skips it).
#
# Environment: MPIRUN (default mpirun), LATENTDA_MPI_TIMEOUT (seconds per run, default 600). Needs cargo's
# target/release (latentda, liblatentda.so), mpicc, mpif90, mpirun, python3 with numpy and netCDF4.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bundle="${1:-models/speedy-t31}"
mpirun="${MPIRUN:-mpirun}"
limit="${LATENTDA_MPI_TIMEOUT:-600}"
command -v "$mpirun" >/dev/null || { echo "mpi_check.sh: $mpirun not found (scripts/setup.sh installs Open MPI)" >&2; exit 1; }
bash scripts/mpi_build.sh target/mpi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
bg="$bundle/sample/background.nc"
obs="$bundle/sample/obs.csv"

# Open MPI: running as root needs consent; more ranks than cores needs --oversubscribe. Waiting ranks yield the CPU.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
mpi_args=()
if "$mpirun" --version 2>/dev/null | grep -q "Open MPI"; then mpi_args+=(--oversubscribe); fi

echo "mpi_check.sh: reference: latentda analyse --bundle $bundle (single process)" >&2
t0=$(date +%s.%N)
target/release/latentda analyse --bundle "$bundle" --background "$bg" --obs "$obs" --output "$work/cli.nc" \
  --report "$work/cli.json" > "$work/cli.log" 2>&1 || { cat "$work/cli.log" >&2; exit 1; }
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "CLI analysis: %.2f s wall\n\n", b - a }'

fail=0
printf '%-8s %-5s %-6s %-24s %-10s %-22s %-22s %-9s %-9s %-9s\n' driver ranks grid options result \
  "fields vs CLI (n ulp)" "obs vs 1 rank (n ulp)" gather_s analyse_s scatter_s
# driver ranks grid extra-options
runs=(
  "c 1 1x1 --halo 0"
  "c 2 2x1 --uneven"
  "c 3 1x3 --uneven"
  "c 3 3x1 --uneven --root 2"
  "c 4 2x2 --uneven --halo 2"
  "c 4 4x1 --uneven"
  "f 1 1x1"
  "f 2 1x2 --uneven"
  "f 3 3x1 --uneven"
  "f 4 2x2 --uneven"
  "c32 1 1x1 --precision f32"
  "c32 4 2x2 --uneven --precision f32"
)
for spec in "${runs[@]}"; do
  read -r drv n grid extra <<< "$spec"
  exe=target/mpi/driver_c
  [ "$drv" = f ] && exe=target/mpi/driver_f
  tag="${drv}_${n}_${grid}_$(echo "$extra" | tr -c 'a-z0-9' _)"
  out="$work/$tag.bin"
  # shellcheck disable=SC2086 # extra is a list of words
  if timeout "$limit" nice "$mpirun" "${mpi_args[@]}" -n "$n" "$exe" "$bundle" "$bg" "$obs" "$out" --grid "$grid" $extra \
      > "$work/$tag.log" 2>&1; then
    status=ok
  else
    status="FAILED($?)"
  fi
  fields="-"
  obsres="-"
  tg="-"
  ta="-"
  ts="-"
  if [ "$status" = ok ]; then
    if [ "$drv" = c32 ]; then
      # float32 patches are rounded on write-back: compared with the 1-rank float32 run instead of the CLI.
      if [ "$n" = 1 ]; then ref32="$out"; fields="(float32 reference)"; else
        fields="$(python3 scripts/mpi_compare.py obs "$ref32" "$out" || true) vs 1 rank"; fi
    else
      fields="$(python3 scripts/mpi_compare.py fields "$bundle" "$work/cli.nc" "$out" || true)"
    fi
    if [ "$drv" != c32 ] && [ -z "${ref_obs:-}" ]; then ref_obs="$out.obs"; obsres="(reference)"; else
      if [ "$drv" = c32 ]; then obsres="-"; else obsres="$(python3 scripts/mpi_compare.py obs "$ref_obs" "$out.obs" || true)"; fi
    fi
    read -r tg ta ts < <(sed -n 's/.*gather *\([0-9.]*\) s, analysis *\([0-9.]*\) s, scatter *\([0-9.]*\) s.*/\1 \2 \3/p' \
      "$work/$tag.log" | head -n 1) || true
    ok_lines="$(grep -c '^RESULT .*status=0 untouched=1 halo_ok=1' "$work/$tag.log" || true)"
    [ "$ok_lines" = "$n" ] || { status="BAD($ok_lines/$n RESULT lines ok)"; }
  fi
  case "$fields" in "0 0 "*|"(float32 reference)"|"0 0 "*" vs 1 rank") ;; *) status="${status}+DIFF"; fail=1 ;; esac
  case "$obsres" in "0 0 "*|"(reference)"|"-") ;; *) status="${status}+OBSDIFF"; fail=1 ;; esac
  [ "${status%%+*}" = ok ] || { fail=1; sed 's/^/    /' "$work/$tag.log" | tail -n 20 >&2; }
  printf '%-8s %-5s %-6s %-24s %-10s %-22s %-22s %-9s %-9s %-9s\n' "$drv" "$n" "$grid" "${extra:--}" "$status" \
    "$fields" "$obsres" "${tg:--}" "${ta:--}" "${ts:--}"
done

# Latent 4D-Var with observation times routed from every rank (the bundle's 4D sample, if it has one).
obs4d="$bundle/sample4d/obs4d.csv"
if [ -f "$obs4d" ] && [ "${LATENTDA_MPI_SKIP_L4DVAR:-0}" != 1 ]; then
  bg4d="$bundle/sample4d/background.nc"
  target/release/latentda analyse --method l4dvar --bundle "$bundle" --background "$bg4d" --obs "$obs4d" \
    --output "$work/cli4d.nc" > "$work/cli4d.log" 2>&1 || { cat "$work/cli4d.log" >&2; exit 1; }
  out="$work/l4dvar.bin"
  if timeout "$limit" nice "$mpirun" "${mpi_args[@]}" -n 3 target/mpi/driver_c "$bundle" "$bg4d" "$obs4d" "$out" --grid 1x3 \
      --uneven --method l4dvar > "$work/l4dvar.log" 2>&1; then
    status=ok
    fields="$(python3 scripts/mpi_compare.py fields "$bundle" "$work/cli4d.nc" "$out" || true)"
    case "$fields" in "0 0 "*) ;; *) status="ok+DIFF"; fail=1 ;; esac
  else
    status="FAILED($?)"; fields="-"; fail=1; tail -n 20 "$work/l4dvar.log" >&2
  fi
  read -r tg ta ts < <(sed -n 's/.*gather *\([0-9.]*\) s, analysis *\([0-9.]*\) s, scatter *\([0-9.]*\) s.*/\1 \2 \3/p' \
    "$work/l4dvar.log" | head -n 1) || true
  printf '%-8s %-5s %-6s %-24s %-10s %-22s %-22s %-9s %-9s %-9s\n' c 3 1x3 "l4dvar, obs4d (times)" "$status" \
    "$fields" "-" "${tg:--}" "${ta:--}" "${ts:--}"
fi

echo
if [ "$fail" = 0 ]; then
  echo "mpi_check.sh: every analysis is bit-identical (0 ULP) to the single-process CLI analysis"
else
  echo "mpi_check.sh: FAILED (see above)" >&2
fi
exit "$fail"
