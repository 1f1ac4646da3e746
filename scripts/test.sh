#!/usr/bin/env bash
# The whole test suite: Rust unit/integration tests (which build and run the C, Fortran and C++ drivers with the
# real compilers) and the Python toolkit's tests.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
# Formatting (rustfmt.toml: 120 columns) before anything is built.
cargo fmt --all --check
# Build first: the C/Fortran/C++ tests link target/release/liblatentda.{a,so}, which `cargo test` alone does not emit.
cargo build --release
cargo test --release
cargo clippy --release --all-targets -- -D warnings
python3 -m pytest -q python/tests
