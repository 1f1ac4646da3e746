#!/usr/bin/env bash
# Builds the MPI coupling shim and the MPI examples in the source tree, with the host's MPI compiler wrappers
# (mpicc, mpif90), against target/release/liblatentda.so (run `cargo build --release` first).
#
#   scripts/mpi_build.sh [OUT_DIR]          (default target/mpi)
#
#   OUT_DIR/liblatentda_mpi.so, liblatentda_mpi.a   the shim (src/coupling/mpi/latentda_mpi.c)
#   OUT_DIR/latentda_mpi.mod, latentda_mpi_mod.o    the Fortran module (fortran/latentda_mpi.f90)
#   OUT_DIR/driver_c, driver_f                      examples/mpi/driver.c, driver.f90
# Environment: MPICC (default mpicc), MPIFC (default mpif90). scripts/install.sh --mpi installs the same library.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/target/mpi}"
mpicc="${MPICC:-mpicc}"
mpifc="${MPIFC:-mpif90}"
for tool in "$mpicc" "$mpifc"; do
  command -v "$tool" >/dev/null || { echo "mpi_build.sh: '$tool' not found (scripts/setup.sh installs Open MPI)" >&2; exit 1; }
done
lib="$root/target/release"
[ -f "$lib/liblatentda.so" ] || { echo "mpi_build.sh: $lib/liblatentda.so missing: run cargo build --release" >&2; exit 1; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cflags=(-std=c99 -O2 -g -Wall -Wextra -Wpedantic -Werror -I"$root/include")
"$mpicc" "${cflags[@]}" -fPIC -c "$root/src/coupling/mpi/latentda_mpi.c" -o "$out/latentda_mpi.o"
"$mpicc" -shared -o "$out/liblatentda_mpi.so" -Wl,-soname,liblatentda_mpi.so "$out/latentda_mpi.o" \
  -L"$lib" -llatentda -Wl,-rpath,"$lib"
rm -f "$out/liblatentda_mpi.a"
ar rcs "$out/liblatentda_mpi.a" "$out/latentda_mpi.o"
(cd "$out" && "$mpifc" -std=f2008 -O2 -g -Wall -Werror -c "$root/fortran/latentda_mpi.f90" -o latentda_mpi_mod.o)
link=(-L"$out" -llatentda_mpi -L"$lib" -llatentda -lnetcdf -lm -Wl,-rpath,"$out:$lib")
"$mpicc" "${cflags[@]}" "$root/examples/mpi/driver.c" -o "$out/driver_c" "${link[@]}"
(cd "$out" && "$mpifc" -O2 -g -Wall -Werror "$root/examples/mpi/driver.f90" latentda_mpi_mod.o -o driver_f "${link[@]}")
echo "mpi_build.sh: built $out/liblatentda_mpi.{so,a}, driver_c, driver_f" >&2
