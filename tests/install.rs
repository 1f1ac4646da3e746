//! Installation (issue 15): `scripts/install.sh` into a temporary prefix outside the source tree, then the C, Fortran
//! and C++ examples built against that prefix the two ways forecast models build: CMake (the installed
//! `share/latentda/examples/CMakeLists.txt`, `find_package(latentda CONFIG REQUIRED)`) and make with pkg-config (the
//! installed `Makefile`), each including static links.
//!
//! What they show: the installed tree (listing printed), the versioned soname and the symlinks, one shared library
//! exporting the C ABI and the C++ API and nothing else, `Libs.private` equal to what rustc reports for the archive;
//! every program's analysis equals the installed CLI's (1e-6) and the C and Fortran programs agree bit for bit across
//! shared and static links and build systems; no compile or link command and no run path reaches into the source
//! tree (the Fortran programs use the installed `latentda.mod`); the version macros, the Fortran constants and the
//! C++ and C run-time versions equal Cargo.toml; the CMake version file accepts only ABI-compatible requests; a bundle
//! of another format version is refused at open with a message that says so.

mod common;

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::show;
use latentda::bundle::Bundle;
use latentda::coupling::ffi::{self, LdaContext};
use latentda::Status;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn version_parts() -> (u32, u32, u32) {
    let p = |s: &str| s.parse::<u32>().unwrap();
    (p(env!("CARGO_PKG_VERSION_MAJOR")), p(env!("CARGO_PKG_VERSION_MINOR")), p(env!("CARGO_PKG_VERSION_PATCH")))
}

/// The soname version: Cargo's compatibility rule (0.y.z -> 0.y, x.y.z -> x), as scripts/install.sh documents.
fn soversion() -> String {
    let (major, minor, _) = version_parts();
    if major == 0 {
        format!("0.{minor}")
    } else {
        major.to_string()
    }
}

/// Runs a command, panics with its output when it fails; returns stdout + stderr.
fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?} failed: {}", show(&o));
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The value of `#define NAME value` in a C header.
fn define(header: &str, name: &str) -> String {
    header
        .lines()
        .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
        .unwrap_or_else(|| panic!("no #define {name}"))
        .trim()
        .to_string()
}

/// The functions the cxx bridge header declares in `latentda::detail`, as demangled name prefixes
/// (`latentda::detail::open(`, `latentda::detail::Context::analyse(`): the public methods of `struct Context` and
/// the free functions after it.
fn bridge_functions(header: &str) -> Vec<String> {
    let body = header.split("namespace latentda {\nnamespace detail {").nth(1).expect("bridge.h: no latentda::detail");
    let body = body.split("} // namespace detail").next().unwrap();
    let (class, free) =
        body.split_once("#endif // CXXBRIDGE1_STRUCT_latentda$detail$Context").expect("bridge.h: no Context");
    let public = class.split("private:").next().unwrap();
    // A declaration is one line `<type> name(<args>)[ const][ noexcept];`; the name is the word before the '('.
    // Fields of shared structs (`::std::size_t nlat CXX_DEFAULT_VALUE(0);`) are not functions.
    let names = |text: &str, scope: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//") && !l.starts_with('~') && l.ends_with(';') && l.contains('('))
            .filter(|l| !l.contains("CXX_DEFAULT_VALUE("))
            .filter_map(|l| l.split('(').next().unwrap().rsplit([' ', '>', ':', '*', '&']).next())
            .filter(|n| !n.is_empty())
            .map(|n| format!("{scope}{n}("))
            .collect()
    };
    let mut all = names(public, "latentda::detail::Context::");
    all.extend(names(free, "latentda::detail::"));
    all
}

/// The value of a Fortran `parameter` NAME in a module source.
fn fortran_parameter(source: &str, name: &str) -> String {
    source
        .lines()
        .filter_map(|l| l.split_once("::"))
        .find_map(|(_, decl)| {
            decl.trim().strip_prefix(&format!("{name} = ")).map(|v| v.split('!').next().unwrap().trim().to_string())
        })
        .unwrap_or_else(|| panic!("no parameter {name} in the Fortran module"))
}

#[test]
fn version_constants_match_cargo_toml() {
    let (major, minor, patch) = version_parts();
    let header = std::fs::read_to_string(root().join("include/latentda.h")).unwrap();
    assert_eq!(define(&header, "LATENTDA_VERSION_MAJOR"), major.to_string());
    assert_eq!(define(&header, "LATENTDA_VERSION_MINOR"), minor.to_string());
    assert_eq!(define(&header, "LATENTDA_VERSION_PATCH"), patch.to_string());
    assert_eq!(define(&header, "LATENTDA_VERSION_STRING"), format!("\"{VERSION}\""));
    let module = std::fs::read_to_string(root().join("fortran/latentda.f90")).unwrap();
    assert_eq!(fortran_parameter(&module, "LATENTDA_VERSION_MAJOR"), major.to_string(), "fortran/latentda.f90");
    assert_eq!(fortran_parameter(&module, "LATENTDA_VERSION_MINOR"), minor.to_string(), "fortran/latentda.f90");
    assert_eq!(fortran_parameter(&module, "LATENTDA_VERSION_PATCH"), patch.to_string(), "fortran/latentda.f90");
    assert_eq!(fortran_parameter(&module, "LATENTDA_VERSION_STRING"), format!("'{VERSION}'"), "fortran/latentda.f90");
    // SAFETY: lda_version returns a static NUL-terminated string.
    let lib = unsafe { CStr::from_ptr(ffi::lda_version()) }.to_str().unwrap();
    assert_eq!(lib, VERSION);
}

/// Message of the last C ABI failure on `ctx` (or of lda_open with a null ctx).
fn last_error(ctx: *const LdaContext) -> String {
    // SAFETY: lda_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(ffi::lda_last_error(ctx)) }.to_string_lossy().into_owned()
}

/// A bundle whose manifest declares another format version, or none, is refused at open (C ABI and CLI) with a
/// message naming the manifest, the version found and the version this library reads.
#[test]
fn bundle_format_version_is_checked_at_open() {
    let bundle = common::copy_fixture("tanh", "install_format_version");
    let manifest = bundle.join("bundle.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let supported = latentda::bundle::FORMAT_VERSION;
    assert!(
        text.contains(&format!("\nformat_version = {supported}\n")),
        "fixture manifest declares format_version = {supported}"
    );
    let cdir = CString::new(bundle.to_str().unwrap()).unwrap();

    // The supported version opens.
    let mut ctx: *mut LdaContext = std::ptr::null_mut();
    assert_eq!(ffi::lda_open(cdir.as_ptr(), std::ptr::null(), &mut ctx), Status::Ok as i32, "{}", last_error(ctx));
    ffi::lda_close(ctx);

    let open_err = |manifest_text: String| -> String {
        std::fs::write(&manifest, manifest_text).unwrap();
        let mut ctx: *mut LdaContext = std::ptr::null_mut();
        assert_eq!(ffi::lda_open(cdir.as_ptr(), std::ptr::null(), &mut ctx), Status::Bundle as i32);
        assert!(ctx.is_null(), "no context on failure");
        last_error(std::ptr::null())
    };
    let line = format!("\nformat_version = {supported}\n");
    let newer = supported + 1;
    let msg = open_err(text.replace(&line, &format!("\nformat_version = {newer}\n")));
    let expected = format!(
        "{}: format_version = {newer} is not supported (this latentda reads version {supported})",
        manifest.display()
    );
    assert_eq!(msg, expected);
    let (code, _, err) = common::cli(&["info", bundle.to_str().unwrap()]);
    assert_ne!(code, 0, "latentda info must fail on format_version = {newer}");
    assert!(err.contains(&format!("format_version = {newer} is not supported")), "CLI message: {err}");
    println!("format_version = {newer}: {msg}");

    // A newer format may add sections this version does not know: the version is still what gets reported.
    let msg = open_err(text.replace(&line, &format!("\nformat_version = {newer}\nnew_in_a_later_format = true\n")));
    assert_eq!(msg, expected, "a newer bundle with an unknown key");

    let msg = open_err(text.replace(&line, "\n"));
    assert_eq!(
        msg,
        format!(
            "{}: no integer format_version (this latentda reads bundle format version {supported})",
            manifest.display()
        )
    );
    println!("no format_version: {msg}");
    let msg = open_err(text.replace(&line, "\nformat_version = \"1\"\n"));
    assert!(msg.contains("no integer format_version"), "format_version as a string: {msg}");
    let msg = open_err(text.replacen("format = \"latentda-bundle\"", "format = \"other-bundle\"", 1));
    assert_eq!(msg, format!("{}: format = 'other-bundle', expected 'latentda-bundle'", manifest.display()));
}

/// Files and symlinks under `dir`, sorted, with sizes (the installed tree listing).
fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", std::fs::read_link(&p).unwrap().display()));
            } else if meta.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(format!("{rel}  ({} bytes)", meta.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// Reads a driver's raw float64 output (u, t, ps, C order).
fn read_raw(path: &Path) -> Vec<f64> {
    std::fs::read(path).unwrap().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Reads the C++ driver's text output ("name count values..." per field, then "qc ...") as one state vector.
fn read_cpp(path: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut x = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() == Some("qc") {
            continue;
        }
        let n: usize = w.next().unwrap().parse().unwrap();
        let v: Vec<f64> = w.map(|s| s.parse().unwrap()).collect();
        assert_eq!(v.len(), n);
        x.extend(v);
    }
    x
}

/// Largest per-variable relative difference max|a - b| / max|b|.
fn max_rel_diff(bundle: &Path, a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "state lengths differ");
    let layout = Bundle::open(bundle).unwrap().layout;
    (0..layout.variables.len())
        .map(|v| common::max_rel_diff(&a[layout.var_range(v)], &b[layout.var_range(v)]))
        .fold(0.0, f64::max)
}

/// The compile and link commands of a verbose build log that mention `needle`.
fn commands_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle) && (l.contains(" -c ") || l.contains(" -o "))).collect()
}

fn pkg_config(pc_path: &Path, args: &[&str]) -> String {
    run(Command::new("pkg-config").env("PKG_CONFIG_PATH", pc_path).args(args)).trim().to_string()
}

/// The native libraries rustc reports for the static library (what the .pc and CMake files must carry).
fn rustc_native_static_libs() -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .args([
            "rustc",
            "--release",
            "-p",
            "latentda",
            "--lib",
            "--crate-type",
            "staticlib",
            "--",
            "--print",
            "native-static-libs",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    err.lines()
        .filter_map(|l| l.split_once("native-static-libs: "))
        .map(|(_, v)| v.trim().to_string())
        .next_back()
        .expect("no native-static-libs note")
}

#[test]
fn install_then_build_examples_with_cmake_and_pkg_config() {
    let t0 = Instant::now();
    let base = std::env::temp_dir().join(format!("latentda-install-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let prefix = base.join("prefix");
    let work = base.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let src_root = root().display().to_string();

    // 1. Install.
    run(Command::new("bash").arg(root().join("scripts/install.sh")).arg("--prefix").arg(&prefix));
    println!("install: {:.1} s", t0.elapsed().as_secs_f64());
    let tree = listing(&prefix);
    println!("installed tree ({}):\n  {}", prefix.display(), tree.join("\n  "));
    let so = format!("liblatentda.so.{VERSION}");
    let soname = format!("liblatentda.so.{}", soversion());
    for f in [
        "bin/latentda".to_string(),
        format!("lib/{so}"),
        "lib/liblatentda.a".into(),
        "lib/liblatentda_fortran.a".into(),
        "include/latentda.h".into(),
        "include/latentda.hpp".into(),
        "include/latentda/bridge.h".into(),
        "include/latentda/rust/cxx.h".into(),
        "include/latentda/fortran/latentda.mod".into(),
        "share/latentda/fortran/latentda.f90".into(),
        "lib/pkgconfig/latentda.pc".into(),
        "lib/pkgconfig/latentda-fortran.pc".into(),
        "lib/cmake/latentda/latentdaConfig.cmake".into(),
        "lib/cmake/latentda/latentdaConfigVersion.cmake".into(),
        "share/latentda/examples/CMakeLists.txt".into(),
        "share/latentda/examples/Makefile".into(),
        "share/doc/latentda/coupling.md".into(),
    ] {
        assert!(prefix.join(&f).is_file(), "{f} is not installed");
    }
    let lib = prefix.join("lib");
    assert_eq!(std::fs::read_link(lib.join("liblatentda.so")).unwrap(), PathBuf::from(&soname));
    assert_eq!(std::fs::read_link(lib.join(&soname)).unwrap(), PathBuf::from(&so));
    let dynamic = run(Command::new("readelf").arg("-d").arg(lib.join(&so)));
    assert!(dynamic.contains(&format!("Library soname: [{soname}]")), "soname of {so}:\n{dynamic}");
    assert_eq!(
        std::fs::read(prefix.join("include/latentda.h")).unwrap(),
        std::fs::read(root().join("include/latentda.h")).unwrap(),
        "the installed header differs from include/latentda.h"
    );

    // 2. One shared library exports the whole C ABI and the C++ API, and nothing else.
    let header = std::fs::read_to_string(root().join("include/latentda.h")).unwrap();
    // Declarations start in column 0 with their return type: `int32_t lda_open(...`, `const char *lda_version(void);`.
    let c_functions: Vec<&str> = header
        .lines()
        .filter(|l| !l.starts_with([' ', '*', '/', '#']))
        .filter_map(|l| l.split_once('(').map(|(head, _)| head.rsplit([' ', '*']).next().unwrap()))
        .filter(|name| name.starts_with("lda_"))
        .collect();
    assert!(c_functions.len() >= 19 && c_functions.contains(&"lda_version"), "header functions: {c_functions:?}");
    let exported = run(Command::new("nm").args(["-D", "--defined-only", "-C"]).arg(lib.join(&so)));
    let names: Vec<&str> = exported.lines().filter_map(|l| l.splitn(3, ' ').nth(2)).collect();
    for f in &c_functions {
        assert!(names.contains(f), "{so} does not export {f}");
    }
    // The C++ glue: every function the bridge header declares (latentda/bridge.h, generated by cxx from
    // src/coupling/cxx_bridge.rs), and the exception type latentda.hpp catches.
    let glue = bridge_functions(&std::fs::read_to_string(root().join("include/latentda/bridge.h")).unwrap());
    for f in [
        "latentda::detail::open(",
        "latentda::detail::version(",
        "latentda::detail::Context::analyse(",
        "latentda::detail::Context::brandomize(",
    ] {
        assert!(glue.iter().any(|g| g == f), "bridge.h parsed without {f}: {glue:?}");
    }
    for cpp in glue.iter().map(String::as_str).chain(["typeinfo for rust::cxxbridge1::Error"]) {
        assert!(names.iter().any(|n| n.starts_with(cpp)), "{so} does not export {cpp}...");
    }
    let foreign: Vec<&&str> = names
        .iter()
        .filter(|n| {
            !(n.starts_with("lda_")
                || [
                    "latentda::detail::",
                    "rust::cxxbridge1::",
                    "typeinfo for rust::",
                    "typeinfo name for rust::",
                    "vtable for rust::",
                ]
                .iter()
                .any(|p| n.starts_with(p)))
        })
        .collect();
    assert!(foreign.is_empty(), "{so} exports symbols outside its API: {:?}", &foreign[..foreign.len().min(10)]);
    println!(
        "{so}: soname {soname}, {} exported symbols ({} C functions, {} C++ bridge functions)",
        names.len(),
        c_functions.len(),
        glue.len()
    );

    // 3. Package files: versions, and the native libraries rustc reports for the archive.
    let pc = lib.join("pkgconfig");
    assert_eq!(pkg_config(&pc, &["--modversion", "latentda"]), VERSION);
    assert_eq!(pkg_config(&pc, &["--modversion", "latentda-fortran"]), VERSION);
    let native = rustc_native_static_libs();
    let private = pkg_config(&pc, &["--static", "--libs", "latentda"]);
    assert!(
        private.contains(&native),
        "pkg-config --static --libs latentda lacks rustc's native libraries '{native}': {private}"
    );
    let static_libs = pkg_config(&pc, &["--variable=static_libs", "latentda"]);
    assert!(
        static_libs.starts_with(&format!("{}/liblatentda.a ", lib.display())) && static_libs.contains(&native),
        "{static_libs}"
    );
    let config = std::fs::read_to_string(lib.join("cmake/latentda/latentdaConfig.cmake")).unwrap();
    assert!(config.contains(&format!("\"{native}\"")), "latentdaConfig.cmake lacks rustc's native libraries");
    println!("native libraries (rustc): {native}");
    println!("pkg-config --cflags --libs latentda: {}", pkg_config(&pc, &["--cflags", "--libs", "latentda"]));
    println!(
        "pkg-config --cflags --libs latentda-fortran: {}",
        pkg_config(&pc, &["--cflags", "--libs", "latentda-fortran"])
    );

    // 4. CMake: the installed example project, find_package(latentda CONFIG REQUIRED).
    let t = Instant::now();
    let cmake_build = work.join("cmake");
    let mut cmake_log = run(Command::new("cmake")
        .arg("-S")
        .arg(prefix.join("share/latentda/examples"))
        .arg("-B")
        .arg(&cmake_build)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
        .arg("-DCMAKE_BUILD_TYPE=Release"));
    cmake_log += &run(Command::new("cmake").arg("--build").arg(&cmake_build).args(["-v", "-j", "2"]));
    std::fs::write(work.join("cmake.log"), &cmake_log).unwrap();
    println!("CMake configure + build: {:.1} s (log {})", t.elapsed().as_secs_f64(), work.join("cmake.log").display());

    // 5. make + pkg-config: the installed Makefile, run from an empty directory.
    let t = Instant::now();
    let make_build = work.join("make");
    std::fs::create_dir_all(&make_build).unwrap();
    let make_log = run(Command::new("make")
        .arg("-f")
        .arg(prefix.join("share/latentda/examples/Makefile"))
        .args(["-j", "2"])
        .env("PKG_CONFIG_PATH", &pc)
        .current_dir(&make_build));
    std::fs::write(work.join("make.log"), &make_log).unwrap();
    println!("make (pkg-config) build: {:.1} s\n{make_log}", t.elapsed().as_secs_f64());

    // No command reaches into the source tree; the Fortran programs compile against the installed latentda.mod.
    let moddir = format!("-I{}", prefix.join("include/latentda/fortran").display());
    for (name, log) in [("CMake", &cmake_log), ("make", &make_log)] {
        assert!(!log.contains(&src_root), "the {name} build refers to the source tree {src_root}:\n{log}");
        let fortran: Vec<&str> = commands_with(log, "driver.f90");
        assert!(
            fortran.iter().any(|c| c.contains(" -c ") || c.contains("driver.f90 -o")),
            "no Fortran compile in the {name} log"
        );
        for c in fortran.iter().filter(|c| c.contains("driver.f90") && !c.contains(".o -o")) {
            assert!(c.contains(&moddir), "{name}: Fortran compile without the installed module directory: {c}");
        }
        println!("{name}, Fortran driver:\n  {}", commands_with(log, "lda_driver_f").join("\n  "));
    }
    for dir in [&cmake_build, &make_build] {
        assert!(!dir.join("latentda.mod").exists(), "a latentda.mod was built in {}", dir.display());
    }

    // 6. Run everything on the tanh fixture against the installed CLI's analysis.
    // The small bundle installed with the examples (the tanh test fixture), so nothing at run time comes from the
    // source tree either.
    let bundle = prefix.join("share/latentda/examples/tanh");
    assert!(bundle.join("bundle.toml").is_file(), "the example bundle is not installed");
    let (bg, obs) = (bundle.join("sample/background.nc"), bundle.join("sample/obs.csv"));
    let an_cli = work.join("an_cli.nc");
    run(Command::new(prefix.join("bin/latentda"))
        .arg("analyse")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--background")
        .arg(&bg)
        .arg("--obs")
        .arg(&obs)
        .arg("--output")
        .arg(&an_cli));
    let layout = Bundle::open(&bundle).unwrap().layout;
    let cli = latentda::bundle::ncio::read_state(&an_cli, &layout).unwrap();
    let background = latentda::bundle::ncio::read_state(&bg, &layout).unwrap();
    assert!(max_rel_diff(&bundle, &cli, &background) > 1e-6, "the analysis must move the background");

    let mut raw: Vec<(String, Vec<f64>)> = Vec::new();
    let programs = [
        (&cmake_build, "lda_driver_c"),
        (&cmake_build, "lda_driver_c_static"),
        (&cmake_build, "lda_driver_f"),
        (&make_build, "lda_driver_c"),
        (&make_build, "lda_driver_c_static"),
        (&make_build, "lda_driver_f"),
        (&make_build, "lda_driver_f_static"),
    ];
    for (dir, prog) in programs {
        let exe = dir.join(prog);
        let rpath = run(Command::new("readelf").arg("-d").arg(&exe));
        assert!(!rpath.contains(&src_root), "{} has a run path into the source tree:\n{rpath}", exe.display());
        let needs_so = rpath.contains(&format!("Shared library: [{soname}]"));
        assert_eq!(
            needs_so,
            !prog.ends_with("_static"),
            "{}: shared-library dependency on {soname} = {needs_so}",
            exe.display()
        );
        let out = work.join(format!("{}_{prog}.bin", dir.file_name().unwrap().to_str().unwrap()));
        let stdout = run(Command::new(&exe).arg(&bundle).arg(&bg).arg(&obs).arg(&out));
        let x = read_raw(&out);
        let rel = max_rel_diff(&bundle, &x, &cli);
        let tag = format!("{}/{prog}", dir.file_name().unwrap().to_str().unwrap());
        println!(
            "{tag}: max |x - CLI| / max|CLI| = {rel:.2e}; {}",
            stdout.lines().find(|l| l.starts_with("QC")).unwrap_or("")
        );
        assert!(rel <= 1e-6, "{tag}: analysis differs from the installed CLI's by {rel:e}");
        raw.push((tag, x));
    }
    // Same library code, same inputs, one thread: the C and Fortran programs agree bit for bit.
    for (tag, x) in &raw[1..] {
        assert!(x == &raw[0].1, "{tag} differs from {} (bitwise)", raw[0].0);
    }
    for dir in [&cmake_build, &make_build] {
        let out = dir.join("an_cpp.txt");
        run(Command::new(dir.join("lda_driver_cpp")).arg(&bundle).arg(&bg).arg(&obs).arg(&out));
        let rel = max_rel_diff(&bundle, &read_cpp(&out), &cli);
        println!("{}/lda_driver_cpp: max |x - CLI| / max|CLI| = {rel:.2e}", dir.file_name().unwrap().to_str().unwrap());
        assert!(rel <= 1e-6, "C++ driver ({}) differs from the CLI by {rel:e}", dir.display());
        // Exceptions thrown by the glue inside the shared library reach the program with their codes.
        let errors = run(Command::new(dir.join("lda_errors_cpp")).arg(&bundle));
        assert!(errors.contains("all checks done, 0 failures"), "{errors}");
        assert!(errors.contains("case=bad_bundle code=3"), "{errors}");
        let cvt = run(Command::new(dir.join("lda_cvt_latent_b")).arg(&bundle));
        assert!(cvt.contains("adjoint test passed") && cvt.contains("variance test passed"), "{cvt}");
    }

    // 7. Versions at compile time (header macros, Fortran constants) and run time, through pkg-config.
    let vdir = work.join("version");
    std::fs::create_dir_all(&vdir).unwrap();
    std::fs::write(
        vdir.join("version.c"),
        "#include <stdio.h>\n#include \"latentda.h\"\nint main(void) {\n  printf(\"%d.%d.%d %s %s\\n\", LATENTDA_VERSION_MAJOR, \
         LATENTDA_VERSION_MINOR, LATENTDA_VERSION_PATCH, LATENTDA_VERSION_STRING, lda_version());\n  return 0;\n}\n",
    )
    .unwrap();
    std::fs::write(
        vdir.join("version.cpp"),
        "#include <iostream>\n#include \"latentda.hpp\"\nint main() {\n  std::cout << LATENTDA_VERSION_MAJOR << '.' << \
         LATENTDA_VERSION_MINOR << '.' << LATENTDA_VERSION_PATCH << ' ' << LATENTDA_VERSION_STRING << ' ' << \
         latentda::version() << '\\n';\n}\n",
    )
    .unwrap();
    std::fs::write(
        vdir.join("version.f90"),
        "program version\n  use latentda\n  implicit none\n  print '(i0,\".\",i0,\".\",i0,1x,a,1x,a)', LATENTDA_VERSION_MAJOR, \
         LATENTDA_VERSION_MINOR, &\n    LATENTDA_VERSION_PATCH, LATENTDA_VERSION_STRING, lda_version()\nend program version\n",
    )
    .unwrap();
    let flags = |module: &str| -> Vec<String> {
        let mut v: Vec<String> =
            pkg_config(&pc, &["--cflags", "--libs", module]).split_whitespace().map(String::from).collect();
        v.push(format!("-Wl,-rpath,{}", lib.display()));
        v
    };
    let fc = pkg_config(&pc, &["--variable=fortran_compiler", "latentda-fortran"]);
    for (compiler, extra, src, module) in [
        ("cc", vec![], "version.c", "latentda"),
        ("c++", vec!["-std=c++17"], "version.cpp", "latentda"),
        (fc.as_str(), vec![], "version.f90", "latentda-fortran"),
    ] {
        let exe = vdir.join(src.replace('.', "_"));
        run(Command::new(compiler).args(&extra).arg(src).arg("-o").arg(&exe).args(flags(module)).current_dir(&vdir));
        let out = run(&mut Command::new(&exe));
        let (major, minor, patch) = version_parts();
        assert_eq!(
            out.trim(),
            format!("{major}.{minor}.{patch} {VERSION} {VERSION}"),
            "{src}: compile-time and run-time versions"
        );
        println!("{src}: {}", out.trim());
    }

    // 8. The CMake package's rules, probed with a project that enables no language (configures in a moment): version
    //    compatibility, components, latentda_USE_STATIC_LIBS, the warning for another Fortran compiler.
    let (major, minor, _) = version_parts();
    let probe = work.join("probe");
    std::fs::create_dir_all(&probe).unwrap();
    std::fs::write(
        probe.join("CMakeLists.txt"),
        r#"cmake_minimum_required(VERSION 3.13)
project(probe LANGUAGES NONE)
if(FAKE_FC_ID)  # pretend the project's Fortran compiler is another one
  set(CMAKE_Fortran_COMPILER_LOADED TRUE)
  set(CMAKE_Fortran_COMPILER_ID ${FAKE_FC_ID})
  set(CMAKE_Fortran_COMPILER_VERSION 99.0)
endif()
if(COMPS)
  find_package(latentda ${REQ} CONFIG COMPONENTS ${COMPS})
else()
  find_package(latentda ${REQ} CONFIG)
endif()
if(TARGET latentda::latentda)
  get_target_property(links latentda::latentda INTERFACE_LINK_LIBRARIES)
endif()
message(STATUS "probe found=${latentda_FOUND} version=${latentda_VERSION} links=${links}")
"#,
    )
    .unwrap();
    let cmake_probe = |defs: &[String]| -> String {
        let b = probe.join("build");
        let _ = std::fs::remove_dir_all(&b);
        run(Command::new("cmake")
            .arg("-S")
            .arg(&probe)
            .arg("-B")
            .arg(&b)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
            .args(defs))
    };
    let probe_line = |log: &str| log.lines().find(|l| l.contains("probe found=")).unwrap_or_default().to_string();
    let next_minor = format!("{major}.{}", minor + 1);
    let next_major = format!("{}.0", major + 1);
    let same = if major == 0 { format!("0.{minor}") } else { major.to_string() };
    // With 0.y releases another minor version is another ABI (the soname's rule too).
    let previous_minor = if major == 0 && minor > 0 { format!("0.{}", minor - 1) } else { next_major.clone() };
    for (req, comps, found) in [
        (same.as_str(), "", true),
        (VERSION, "", true),
        (VERSION, "C;CXX;Fortran", true),
        (VERSION, "Python", false),
        (next_minor.as_str(), "", false),
        (next_major.as_str(), "", false),
        (previous_minor.as_str(), "", false),
    ] {
        let log = cmake_probe(&[format!("-DREQ={req}"), format!("-DCOMPS={comps}")]);
        let want = if found { format!("probe found=1 version={VERSION} ") } else { "probe found=0".to_string() };
        assert!(probe_line(&log).contains(&want), "find_package(latentda {req} COMPONENTS {comps}):\n{log}");
    }
    assert!(probe_line(&cmake_probe(&[])).ends_with("links=latentda::latentda_shared"));
    let log = cmake_probe(&["-Dlatentda_USE_STATIC_LIBS=ON".into()]);
    assert!(probe_line(&log).ends_with("links=latentda::latentda_static"), "latentda_USE_STATIC_LIBS:\n{log}");
    let log = cmake_probe(&["-DFAKE_FC_ID=Intel".into()]);
    let words = log.split_whitespace().collect::<Vec<_>>().join(" ");
    let fc_id = pkg_config(&pc, &["--variable=fortran_compiler_id", "latentda-fortran"]);
    assert!(
        words.contains(&format!("was built by {fc_id} ")) && words.contains("this project uses Intel 99.0"),
        "no warning for another Fortran compiler:\n{log}"
    );
    let log = cmake_probe(&[]);
    assert!(!log.contains("was built by"), "warning without a Fortran compiler:\n{log}");

    println!("total: {:.1} s", t0.elapsed().as_secs_f64());
    std::fs::remove_dir_all(&base).unwrap();
}
