//! Generates the C header `latentda.h` from `src/coupling/ffi.rs` with cbindgen into OUT_DIR. The committed copy in
//! `include/` is refreshed only when LATENTDA_WRITE_HEADER=1, so a test can detect a stale committed header.
//!
//! Also compiles the C++ side of the cxx bridge (`src/coupling/cxx_bridge.rs`) into this library, so `liblatentda.a` holds
//! everything a C++ program needs, and copies the generated bridge header and `rust/cxx.h` to `include/latentda/`
//! (`bridge.h`, `rust/cxx.h`; rewritten only when their content changes), where `include/latentda.hpp` finds them.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/coupling/ffi.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=LATENTDA_WRITE_HEADER");
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let mut config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    config.after_includes = Some(version_macros());
    let header = out_dir.join("latentda.h");
    match cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/coupling/ffi.rs"))
        .generate()
    {
        Ok(b) => {
            b.write_to_file(&header);
        }
        Err(e) => panic!("cbindgen failed on src/coupling/ffi.rs: {e}"),
    }
    if std::env::var("LATENTDA_WRITE_HEADER").as_deref() == Ok("1") {
        std::fs::create_dir_all(crate_dir.join("include")).unwrap();
        std::fs::copy(&header, crate_dir.join("include/latentda.h")).unwrap();
    }
    cxx_bridge(&crate_dir, &out_dir);
    println!("cargo:include={}", crate_dir.join("include").display());
}

/// `LATENTDA_VERSION_*` macros for the C header, from Cargo.toml's version so header and library cannot drift.
fn version_macros() -> String {
    let v = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("cargo sets {k}"));
    format!(
        "\n/* Version of latentda this header belongs to (from Cargo.toml); lda_version() gives the library's at run time. */\n\
         #define LATENTDA_VERSION_MAJOR {}\n#define LATENTDA_VERSION_MINOR {}\n#define LATENTDA_VERSION_PATCH {}\n\
         #define LATENTDA_VERSION_STRING \"{}\"",
        v("CARGO_PKG_VERSION_MAJOR"),
        v("CARGO_PKG_VERSION_MINOR"),
        v("CARGO_PKG_VERSION_PATCH"),
        v("CARGO_PKG_VERSION")
    )
}

/// C++ API: the bridge's generated glue is compiled into this crate (bundled into the staticlib), and its headers are
/// published under `include/latentda/`.
fn cxx_bridge(crate_dir: &std::path::Path, out_dir: &std::path::Path) {
    println!("cargo:rerun-if-changed=src/coupling/cxx_bridge.rs");
    println!("cargo:rerun-if-changed=include/latentda/bridge.h");
    println!("cargo:rerun-if-changed=include/latentda/rust/cxx.h");
    cxx_build::bridge("src/coupling/cxx_bridge.rs").std("c++17").compile("latentda-cxx");
    let gen = out_dir.join("cxxbridge/include");
    let dst = crate_dir.join("include/latentda");
    for (from, to) in [(gen.join("latentda/src/coupling/cxx_bridge.rs.h"), dst.join("bridge.h")), (gen.join("rust/cxx.h"), dst.join("rust/cxx.h"))] {
        let text = std::fs::read(&from).unwrap_or_else(|e| panic!("cxx_build did not produce {}: {e}", from.display()));
        if std::fs::read(&to).ok().as_deref() != Some(text.as_slice()) {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(&to, &text).unwrap_or_else(|e| panic!("cannot write {}: {e}", to.display()));
        }
    }
}
