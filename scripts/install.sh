#!/usr/bin/env bash
# Installs latentda into a prefix, the way NWP libraries are installed, for C, Fortran and C++ models built with CMake
# (find_package(latentda CONFIG)) or make (pkg-config). docs/coupling.md, "Installing", describes the tree.
#
#   scripts/install.sh --prefix DIR [--fc FORTRAN_COMPILER] [--mpi]
#
#   bin/latentda                                   the CLI
#   lib/liblatentda.so.X.Y.Z (+ soname links)      one shared library for C, Fortran and C++ (C ABI + C++ glue)
#   lib/liblatentda.a                              the static archive (Rust code, C++ glue; needs its native libs)
#   lib/liblatentda_fortran.a                      the Fortran module's procedures, built with the installing compiler
#   include/latentda.h, latentda.hpp, latentda/    C and C++ headers (latentda/bridge.h, latentda/rust/cxx.h)
#   include/latentda/fortran/latentda.mod          the Fortran module file (compiler-specific)
#   lib/pkgconfig/latentda.pc, latentda-fortran.pc
#   lib/cmake/latentda/latentdaConfig.cmake, latentdaConfigVersion.cmake
#   share/latentda/fortran/latentda.f90            the module source (for other compilers)
#   share/latentda/examples/                       C, Fortran, C++ examples, CMakeLists.txt, Makefile, a small bundle
#   share/doc/latentda/                            the documentation
#
# With --mpi (or LATENTDA_MPI=1) it also builds the MPI coupling shim with the host's MPI C compiler wrapper (MPICC,
# default mpicc), for domain-decomposed hosts (docs/mpi.md); without it nothing needs MPI:
#   lib/liblatentda_mpi.so.X.Y.Z (+ links), liblatentda_mpi.a   the shim (links liblatentda and the host's libmpi)
#   lib/liblatentda_mpi_fortran.a, include/latentda/fortran/latentda_mpi.mod   module latentda_mpi (no `use mpi`)
#   include/latentda_mpi.h, latentda_mpi.hpp      C and C++ headers
#   lib/pkgconfig/latentda-mpi.pc                 CMake: target latentda::mpi, latentda::mpi_fortran (component MPI)
#   share/latentda/examples/mpi/                  driver.c, driver.f90
#
# Environment: FC (Fortran compiler, default gfortran), FFLAGS (default -O2 -fPIC), CXX (links the shared library,
# default c++), CARGO (default cargo). Needs cargo, a C++ compiler driver, nm and c++filt (binutils), ar.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix=""
fc="${FC:-gfortran}"
with_mpi="${LATENTDA_MPI:-0}"
usage() { echo "usage: scripts/install.sh --prefix DIR [--fc FORTRAN_COMPILER] [--mpi]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || usage; prefix="$2"; shift 2 ;;
    --prefix=*) prefix="${1#--prefix=}"; shift ;;
    --fc) [ $# -ge 2 ] || usage; fc="$2"; shift 2 ;;
    --fc=*) fc="${1#--fc=}"; shift ;;
    --mpi) with_mpi=1; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[ -n "$prefix" ] || usage
fail() { echo "install.sh: $*" >&2; exit 1; }
for tool in "${CARGO:-cargo}" "${CXX:-c++}" nm c++filt ar; do
  command -v "$tool" >/dev/null || fail "'$tool' not found (needed to install)"
done
command -v "$fc" >/dev/null || fail "Fortran compiler '$fc' not found (set --fc or FC)"
mpicc="${MPICC:-mpicc}"
if [ "$with_mpi" = 1 ]; then
  command -v "$mpicc" >/dev/null || fail "--mpi: MPI C compiler wrapper '$mpicc' not found (set MPICC; scripts/setup.sh installs Open MPI)"
fi
cargo="${CARGO:-cargo}"
cxx="${CXX:-c++}"
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
cd "$root"

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
[ -n "$version" ] || fail "no version in Cargo.toml"
IFS=. read -r vmajor vminor _ <<< "${version%%[-+]*}"
# Soname: the part of the version that promises ABI compatibility (Cargo's semver rule, as cargo-c does):
# 0.y.z -> liblatentda.so.0.y, x.y.z -> liblatentda.so.x.
if [ "$vmajor" = 0 ]; then soversion="0.$vminor"; else soversion="$vmajor"; fi
soname="liblatentda.so.$soversion"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. Build: the CLI and the libraries; the JSON messages give the build-script outputs (generated header, the search
#    paths of native libraries such as HDF5's).
echo "install.sh: building latentda $version (cargo build --release)" >&2
"$cargo" build --release --message-format=json-render-diagnostics > "$work/build.json"
target_dir="$(sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p' <("$cargo" metadata --no-deps --format-version 1) | head -n 1)"
[ -d "$target_dir/release" ] || fail "cargo target directory '$target_dir/release' not found"
out_dir="$(grep '"reason":"build-script-executed"' "$work/build.json" | grep -o '"out_dir":"[^"]*/build/latentda-[^"]*"' \
  | sed 's/"out_dir":"\(.*\)"/\1/' | head -n 1)"
[ -f "$out_dir/latentda.h" ] || fail "the build script's generated header was not found (out_dir '$out_dir')"

# 2. The native libraries a static link needs, as rustc reports them for the staticlib (never hard-coded), and the
#    search paths the -sys crates' build scripts found them in (those outside cargo's target directory).
echo "install.sh: native libraries (cargo rustc --crate-type staticlib -- --print native-static-libs)" >&2
"$cargo" rustc --release -p latentda --lib --crate-type staticlib -- --print native-static-libs 2> "$work/rustc.err" \
  || { cat "$work/rustc.err" >&2; fail "cargo rustc failed"; }
native_libs="$(sed -n 's/.*note: native-static-libs: //p' "$work/rustc.err" | tail -n 1)"
[ -n "$native_libs" ] || { cat "$work/rustc.err" >&2; fail "rustc printed no native-static-libs line"; }
# Directories the linker searches anyway stay out (an explicit -L/usr/lib/... could shadow a user's own builds).
"$cxx" -print-search-dirs | sed -n 's/^libraries: =//p' | tr ':' '\n' | while IFS= read -r d; do
  [ -d "$d" ] && (cd "$d" && pwd -P); done | sort -u > "$work/system_dirs"
native_dirs=""
while IFS= read -r dir; do
  dir="${dir#*=}"
  case "$dir" in ""|"$target_dir"/*) continue ;; esac
  [ -d "$dir" ] || continue
  grep -qxF "$(cd "$dir" && pwd -P)" "$work/system_dirs" && continue
  case " $native_dirs " in *" -L$dir "*) ;; *) native_dirs="${native_dirs:+$native_dirs }-L$dir" ;; esac
done < <(grep -o '"linked_paths":\[[^]]*\]' "$work/build.json" | sed 's/"linked_paths":\[//; s/\]$//' | tr ',' '\n' | sed 's/^"//; s/"$//')
# tract's assembly kernels carry no .note.GNU-stack section: keep the stack non-executable explicitly.
static_link="$native_dirs $native_libs -Wl,-z,noexecstack"
static_link="${static_link# }"

# 3. Install tree.
libdir="$prefix/lib"
incdir="$prefix/include"
moddir="$incdir/latentda/fortran"
mkdir -p "$prefix/bin" "$libdir/pkgconfig" "$libdir/cmake/latentda" "$incdir/latentda/rust" "$moddir" \
  "$prefix/share/latentda/fortran" "$prefix/share/latentda/examples/c" "$prefix/share/latentda/examples/fortran" \
  "$prefix/share/latentda/examples/cpp" "$prefix/share/doc/latentda"
install -m 755 "$target_dir/release/latentda" "$prefix/bin/latentda"
install -m 644 "$target_dir/release/liblatentda.a" "$libdir/liblatentda.a"
install -m 644 "$out_dir/latentda.h" "$incdir/latentda.h"
install -m 644 include/latentda.hpp "$incdir/latentda.hpp"
install -m 644 include/latentda/bridge.h "$incdir/latentda/bridge.h"
install -m 644 include/latentda/rust/cxx.h "$incdir/latentda/rust/cxx.h"

# 4. The shared library, linked from the static archive. rustc links its cdylib with a version script that exports
#    only Rust's #[no_mangle] functions, which hides the C++ side of the cxx bridge, and GNU ld refuses a second
#    anonymous version script. Linking the archive ourselves with one version script exports the C ABI (lda_*) and the
#    C++ API (latentda::detail::*, rust::cxxbridge1::*) from one library, built from the same objects as liblatentda.a.
echo "install.sh: linking $soname" >&2
nm -g --defined-only -P "$libdir/liblatentda.a" 2>/dev/null | awk 'NF >= 2 && $2 ~ /^[TDRBVW]$/ {print $1}' | sort -u > "$work/defined"
c++filt < "$work/defined" | paste "$work/defined" - | awk -F'\t' '
  $1 ~ /^lda_/ ||
  $2 ~ /^(latentda::detail::|rust::cxxbridge1::|typeinfo for rust::cxxbridge1::|typeinfo name for rust::cxxbridge1::|vtable for rust::cxxbridge1::)/ \
  {print $1}' > "$work/exports"
grep -q '^lda_open$' "$work/exports" || fail "lda_open not found in liblatentda.a"
grep -q '^_ZN8latentda6detail4open' "$work/exports" || fail "the C++ glue (latentda::detail::open) is not in liblatentda.a"
{ echo "{"; echo "  global:"; sed 's/^/    /; s/$/;/' "$work/exports"; echo "  local: *;"; echo "};"; } > "$work/latentda.map"
sed 's/^/-Wl,-u,/' "$work/exports" > "$work/undefined.rsp"
# shellcheck disable=SC2086 # the native library list is a list of words
"$cxx" -shared -o "$libdir/liblatentda.so.$version" -Wl,-soname,"$soname" @"$work/undefined.rsp" \
  "$libdir/liblatentda.a" -Wl,--as-needed $static_link -Wl,--version-script="$work/latentda.map" \
  -Wl,--gc-sections -Wl,-z,relro,-z,now
ln -sfn "liblatentda.so.$version" "$libdir/$soname"
ln -sfn "$soname" "$libdir/liblatentda.so"

# 5. Fortran: the module compiled with the installing compiler (a .mod file is compiler- and version-specific). It
#    is compiled inside the module directory because compilers spell the module-output flag differently.
echo "install.sh: Fortran module with $fc" >&2
fc_path="$(command -v "$fc")"
fc_version_line="$("$fc" --version 2>/dev/null | head -n 1 || true)"
case "$fc_version_line" in
  *"GNU Fortran"*) fc_id=GNU; fc_version="$("$fc" -dumpfullversion 2>/dev/null || "$fc" -dumpversion)" ;;
  *ifx*) fc_id=IntelLLVM ;;
  *ifort*) fc_id=Intel ;;
  *nvfortran*) fc_id=NVHPC ;;
  *flang*) fc_id=LLVMFlang ;;
  *) fc_id=unknown ;;
esac
[ -n "${fc_version:-}" ] || fc_version="$(echo "$fc_version_line" | grep -o '[0-9][0-9]*\.[0-9][0-9.]*' | head -n 1 || true)"
install -m 644 fortran/latentda.f90 "$prefix/share/latentda/fortran/latentda.f90"
rm -f "$moddir"/*.mod
# shellcheck disable=SC2086 # FFLAGS is a list of words
(cd "$moddir" && "$fc" ${FFLAGS:--O2 -fPIC} -c "$prefix/share/latentda/fortran/latentda.f90" -o "$work/latentda_mod.o")
[ -f "$moddir/latentda.mod" ] || fail "$fc wrote no latentda.mod into $moddir"
rm -f "$libdir/liblatentda_fortran.a"
ar rcs "$libdir/liblatentda_fortran.a" "$work/latentda_mod.o"

# 5b. MPI coupling (--mpi): the C shim compiled by the host's own mpicc (so it uses exactly the host's MPI), linked
#     against the installed liblatentda (found next to it at run time: $ORIGIN), and its Fortran module.
mpicc_path=""
mpicc_line=""
if [ "$with_mpi" = 1 ]; then
  echo "install.sh: MPI coupling with $mpicc" >&2
  mpicc_path="$(command -v "$mpicc")"
  mpicc_line="$mpicc_path ($("$mpicc" --version 2>/dev/null | head -n 1 || true))"
  install -m 644 include/latentda_mpi.h include/latentda_mpi.hpp "$incdir/"
  "$mpicc" -std=c99 -O2 -fPIC -I"$incdir" -c src/coupling/mpi/latentda_mpi.c -o "$work/latentda_mpi.o"
  "$mpicc" -shared -o "$libdir/liblatentda_mpi.so.$version" -Wl,-soname,"liblatentda_mpi.so.$soversion" \
    "$work/latentda_mpi.o" -L"$libdir" -llatentda -Wl,-rpath,'$ORIGIN' -Wl,-z,relro,-z,now
  ln -sfn "liblatentda_mpi.so.$version" "$libdir/liblatentda_mpi.so.$soversion"
  ln -sfn "liblatentda_mpi.so.$soversion" "$libdir/liblatentda_mpi.so"
  rm -f "$libdir/liblatentda_mpi.a" "$libdir/liblatentda_mpi_fortran.a"
  ar rcs "$libdir/liblatentda_mpi.a" "$work/latentda_mpi.o"
  install -m 644 fortran/latentda_mpi.f90 "$prefix/share/latentda/fortran/latentda_mpi.f90"
  # shellcheck disable=SC2086 # FFLAGS is a list of words
  (cd "$moddir" && "$fc" ${FFLAGS:--O2 -fPIC} -c "$prefix/share/latentda/fortran/latentda_mpi.f90" -o "$work/latentda_mpi_mod.o")
  [ -f "$moddir/latentda_mpi.mod" ] || fail "$fc wrote no latentda_mpi.mod into $moddir"
  ar rcs "$libdir/liblatentda_mpi_fortran.a" "$work/latentda_mpi_mod.o"
  mkdir -p "$prefix/share/latentda/examples/mpi"
  install -m 644 examples/mpi/driver.c examples/mpi/driver.f90 "$prefix/share/latentda/examples/mpi/"
else
  # A reinstall without --mpi leaves no stale MPI parts (the CMake package offers latentda::mpi when they exist).
  rm -f "$libdir"/liblatentda_mpi.so* "$libdir/liblatentda_mpi.a" "$libdir/liblatentda_mpi_fortran.a" \
    "$moddir/latentda_mpi.mod" "$incdir/latentda_mpi.h" "$incdir/latentda_mpi.hpp" \
    "$prefix/share/latentda/fortran/latentda_mpi.f90"
  rm -rf "$prefix/share/latentda/examples/mpi"
fi

# 6. pkg-config and CMake package files from the templates in packaging/ (@NAME@ placeholders).
fill() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line//@PREFIX@/$prefix}"
    line="${line//@VERSION@/$version}"
    line="${line//@SOVERSION@/$soversion}"
    line="${line//@STATIC_LINK@/$static_link}"
    line="${line//@NATIVE_DIRS@/$native_dirs}"
    line="${line//@NATIVE_LIBS@/$native_libs}"
    line="${line//@FC_PATH@/$fc_path}"
    line="${line//@FC_ID@/$fc_id}"
    line="${line//@FC_VERSION@/$fc_version}"
    line="${line//@FC_VERSION_LINE@/$fc_version_line}"
    line="${line//@MPICC_PATH@/$mpicc_path}"
    line="${line//@MPICC_LINE@/$mpicc_line}"
    printf '%s\n' "$line"
  done < "$1" > "$2"
}
fill packaging/latentda.pc.in "$libdir/pkgconfig/latentda.pc"
fill packaging/latentda-fortran.pc.in "$libdir/pkgconfig/latentda-fortran.pc"
fill packaging/latentdaConfig.cmake.in "$libdir/cmake/latentda/latentdaConfig.cmake"
fill packaging/latentdaConfigVersion.cmake.in "$libdir/cmake/latentda/latentdaConfigVersion.cmake"
if [ "$with_mpi" = 1 ]; then
  fill packaging/latentda-mpi.pc.in "$libdir/pkgconfig/latentda-mpi.pc"
else
  rm -f "$libdir/pkgconfig/latentda-mpi.pc"
fi

# 7. Examples (with a CMake project and a Makefile that build them against this prefix) and documentation.
install -m 644 examples/CMakeLists.txt examples/Makefile "$prefix/share/latentda/examples/"
install -m 644 examples/c/driver.c "$prefix/share/latentda/examples/c/"
install -m 644 examples/fortran/driver.f90 examples/fortran/cvt_latent_b.f90 "$prefix/share/latentda/examples/fortran/"
install -m 644 examples/cpp/driver.cpp examples/cpp/errors.cpp "$prefix/share/latentda/examples/cpp/"
# A small bundle with a sample case (the tests' tanh fixture: u, t on 3 levels and ps, 8x16 grid) to run them on.
rm -rf "$prefix/share/latentda/examples/tanh"
cp -R tests/fixtures/tanh "$prefix/share/latentda/examples/tanh"
install -m 644 README.md docs/*.md "$prefix/share/doc/latentda/"
install -m 644 examples/cpp/README.md "$prefix/share/doc/latentda/cpp-examples.md"

echo "install.sh: installed latentda $version into $prefix" >&2
echo "  C, C++:  pkg-config --cflags --libs latentda           CMake: latentda::latentda, latentda::cxx" >&2
echo "  Fortran: pkg-config --cflags --libs latentda-fortran   CMake: latentda::fortran ($fc_id $fc_version)" >&2
if [ "$with_mpi" = 1 ]; then
  echo "  MPI:     pkg-config --cflags --libs latentda-mpi       CMake: latentda::mpi, latentda::mpi_fortran ($mpicc_path)" >&2
fi
