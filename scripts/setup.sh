#!/usr/bin/env bash
# Installs what latentda's build, demo and tests need on a fresh Debian machine (idempotent).
# System: NetCDF C library (+HDF5 headers), gfortran, g++, valgrind, cmake and pkg-config (tests/install.rs builds the
# examples against an installed latentda with both), Open MPI (libopenmpi-dev, openmpi-bin: the MPI coupling shim,
# its examples and tests/mpi.rs; the Rust library itself needs no MPI). Python: the packages the tests use.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
need_apt=0
for p in libnetcdf-dev gfortran g++ valgrind cmake pkg-config libopenmpi-dev openmpi-bin; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq libnetcdf-dev gfortran g++ valgrind cmake pkg-config libopenmpi-dev openmpi-bin >/dev/null
fi
# The test command checks formatting and lints: rustfmt and clippy come with rustup's default profile; add them
# where a minimal toolchain lacks them.
if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >/dev/null 2>&1 || true
  done
fi
if [ "${LATENTDA_SKIP_PIP:-0}" != 1 ]; then
  python3 -m pip install -q --disable-pip-version-check -r "$here/python/requirements-test.txt"
  # The training toolkit itself (its tests import it); no dependencies beyond the test requirements.
  python3 -m pip install -q --disable-pip-version-check --no-deps -e "$here/python"
fi
