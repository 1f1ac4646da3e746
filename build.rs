//! Generates the C header `latentda.h` from `src/ffi.rs` with cbindgen into OUT_DIR. The committed copy in
//! `include/` is refreshed only when LATENTDA_WRITE_HEADER=1, so a test can detect a stale committed header.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=LATENTDA_WRITE_HEADER");
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let header = out_dir.join("latentda.h");
    match cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/ffi.rs"))
        .generate()
    {
        Ok(b) => {
            b.write_to_file(&header);
        }
        Err(e) => panic!("cbindgen failed on src/ffi.rs: {e}"),
    }
    if std::env::var("LATENTDA_WRITE_HEADER").as_deref() == Ok("1") {
        std::fs::create_dir_all(crate_dir.join("include")).unwrap();
        std::fs::copy(&header, crate_dir.join("include/latentda.h")).unwrap();
    }
    println!("cargo:include={}", crate_dir.join("include").display());
}
