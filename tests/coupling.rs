//! Coupling tests: the committed C header, the Fortran module and the C / Fortran example drivers, built with the
//! real gcc and gfortran against `target/release/liblatentda.{a,so}` (produced by `cargo test --release`, the
//! library's crate types include staticlib and cdylib).
//!
//! What they show (issue 4): the drivers analyse their own arrays in place and agree with `latentda analyse` on
//! the same inputs (1e-6 relative); C-order and Fortran-order bindings give identical results; float and double
//! entry points agree within float32 tolerance; static and shared linking both work; every error path returns its
//! documented code and message from C and from Fortran with the host arrays bit-identical; two contexts analyse
//! concurrently from two threads; the C driver is clean under valgrind memcheck. Hardening (issue 14): repeated
//! open/analyse/B-operator/close cycles do not grow under valgrind (no suppressions); `lda_last_error` is safe to
//! read from another thread; observation counts beyond memory are errors, not aborts. Issue 25: a call from inside a
//! context's own callback is refused instead of deadlocking, a second `lda_close` is an error instead of an abort,
//! and a caught panic leaves the host's stderr empty (tests/coupling/reentry.c, run under a time limit).

mod common;

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::show;
use latentda::bundle::Bundle;
use latentda::coupling::ffi::{self, LdaContext};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Directory holding liblatentda.{a,so}: where cargo put the `latentda` binary of this build (target/release).
fn libdir() -> PathBuf {
    let exe = common::latentda_exe();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_else(|| root().join("target/release"));
    assert!(
        dir.join("liblatentda.a").is_file(),
        "{}/liblatentda.a missing: run `cargo build --release` first (scripts/test.sh does)",
        dir.display()
    );
    assert!(dir.join("liblatentda.so").is_file(), "{}/liblatentda.so missing", dir.display());
    dir
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// Native libraries that liblatentda.a needs: what `cargo rustc --release -p latentda --lib --crate-type staticlib -- --print
/// native-static-libs` lists (NetCDF and HDF5 for the bundle statistics, zlib, the C++ runtime of the cxx bridge,
/// and the Rust standard library's system libraries). `nc-config --libs` supplies the NetCDF/HDF5 search paths.
fn static_libs() -> Vec<String> {
    let mut v: Vec<String> = Command::new("nc-config")
        .arg("--libs")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect())
        .unwrap_or_else(|| vec!["-lnetcdf".into()]);
    for l in [
        "-lhdf5",
        "-lz",
        "-lstdc++",
        "-lgcc_s",
        "-lutil",
        "-lrt",
        "-lpthread",
        "-lm",
        "-ldl",
        "-lc",
        "-Wl,-z,noexecstack",
    ] {
        v.push(l.into());
    }
    v
}

const C_FLAGS: &[&str] = &["-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-Wpedantic", "-Werror"];
const F_FLAGS: &[&str] = &["-std=f2008", "-O2", "-g", "-Wall", "-Werror"];

fn run_ok(cmd: &mut Command) -> Result<Output, String> {
    let o = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!("{cmd:?} failed: {}", show(&o)));
    }
    Ok(o)
}

/// Every program the tests run, built once.
struct Programs {
    dir: PathBuf,
    c_static: PathBuf,
    c_shared: PathBuf,
    c_errors: PathBuf,
    c_cycles: PathBuf,
    c_threads: PathBuf,
    c_limits: PathBuf,
    c_reentry: PathBuf,
    f_static: PathBuf,
    f_shared: PathBuf,
    f_errors: PathBuf,
    f_l4dvar: PathBuf,
    c_obs: PathBuf,
    f_obs: PathBuf,
    f_host: PathBuf,
}

fn build() -> Result<Programs, String> {
    let lib = libdir();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("coupling");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let inc = format!("-I{}", root().join("include").display());
    let rpath = format!("-Wl,-rpath,{}", lib.display());
    let shared = |cmd: &mut Command| {
        cmd.arg(format!("-L{}", lib.display())).args(["-llatentda", "-lnetcdf", "-lm"]).arg(&rpath);
    };
    let stat = |cmd: &mut Command| {
        cmd.arg(lib.join("liblatentda.a")).args(static_libs());
    };
    let p = Programs {
        c_static: dir.join("driver_c_static"),
        c_shared: dir.join("driver_c_shared"),
        c_errors: dir.join("errors_c"),
        c_cycles: dir.join("cycles_c"),
        c_threads: dir.join("threads_c"),
        c_limits: dir.join("limits_c"),
        c_reentry: dir.join("reentry_c"),
        f_static: dir.join("driver_f_static"),
        f_shared: dir.join("driver_f_shared"),
        f_errors: dir.join("errors_f"),
        f_l4dvar: dir.join("l4dvar_f"),
        c_obs: dir.join("obs_service_c"),
        f_obs: dir.join("obs_service_f"),
        f_host: dir.join("host_minimiser_f"),
        dir,
    };
    // One compile-and-link per program: C with gcc, Fortran with gfortran against the module built once below.
    let build = |compiler: &str,
                 flags: &[&str],
                 extra: &[&std::ffi::OsStr],
                 src: &Path,
                 exe: &Path,
                 link: &dyn Fn(&mut Command)| {
        let mut c = Command::new(compiler);
        c.args(flags).args(extra).arg(src).arg("-o").arg(exe);
        link(&mut c);
        run_ok(&mut c)
    };
    let c_prog =
        |src: &Path, exe: &Path, link: &dyn Fn(&mut Command)| build("gcc", C_FLAGS, &[inc.as_ref()], src, exe, link);
    let driver_c = root().join("examples/c/driver.c");
    c_prog(&driver_c, &p.c_static, &stat)?;
    c_prog(&driver_c, &p.c_shared, &shared)?;
    c_prog(&root().join("tests/coupling/errors.c"), &p.c_errors, &shared)?;
    c_prog(&root().join("tests/coupling/obs_service.c"), &p.c_obs, &shared)?;
    for (src, exe) in
        [("cycles.c", &p.c_cycles), ("threads.c", &p.c_threads), ("limits.c", &p.c_limits), ("reentry.c", &p.c_reentry)]
    {
        c_prog(&root().join("tests/coupling").join(src), exe, &stat)?;
    }
    // Fortran: the module once (object + .mod in the scratch directory), then the programs.
    let modobj = p.dir.join("latentda_mod.o");
    let jdir = format!("-J{}", p.dir.display());
    run_ok(
        Command::new("gfortran")
            .args(F_FLAGS)
            .arg(&jdir)
            .arg("-c")
            .arg(root().join("fortran/latentda.f90"))
            .arg("-o")
            .arg(&modobj),
    )?;
    let f_prog = |src: &Path, exe: &Path, link: &dyn Fn(&mut Command)| {
        build("gfortran", F_FLAGS, &[jdir.as_ref(), modobj.as_ref()], src, exe, link)
    };
    let driver_f = root().join("examples/fortran/driver.f90");
    f_prog(&driver_f, &p.f_static, &stat)?;
    f_prog(&driver_f, &p.f_shared, &shared)?;
    f_prog(&root().join("tests/coupling/errors.f90"), &p.f_errors, &stat)?;
    f_prog(&root().join("examples/fortran/l4dvar_callbacks.f90"), &p.f_l4dvar, &stat)?;
    f_prog(&root().join("tests/coupling/obs_service.f90"), &p.f_obs, &stat)?;
    f_prog(&root().join("examples/fortran/host_minimiser.f90"), &p.f_host, &shared)?;
    Ok(p)
}

fn programs() -> &'static Programs {
    static P: OnceLock<Result<Programs, String>> = OnceLock::new();
    match P.get_or_init(build) {
        Ok(p) => p,
        Err(e) => panic!("building the C/Fortran programs failed:\n{e}"),
    }
}

/// `latentda analyse` on the fixture's sample, cached per bundle: the analysis state (channel-major).
fn cli_analysis(bundle: &str) -> &'static [f64] {
    static LIN: OnceLock<Vec<f64>> = OnceLock::new();
    static TANH: OnceLock<Vec<f64>> = OnceLock::new();
    let cell = if bundle == "linear" { &LIN } else { &TANH };
    cell.get_or_init(|| run_cli(bundle, "l3dvar"))
}

/// `latentda analyse --method METHOD` on the fixture's sample: the analysis state (channel-major).
fn run_cli(bundle: &str, method: &str) -> Vec<f64> {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("coupling_cli_{bundle}_{method}.nc"));
    cli_analyse(bundle, method, &out, &[])
}

/// `latentda analyse --method METHOD ... EXTRA` on the fixture's sample, written to `out`: the analysis state.
fn cli_analyse(bundle: &str, method: &str, out: &Path, extra: &[&std::ffi::OsStr]) -> Vec<f64> {
    let b = fixture(bundle);
    let o = Command::new(common::latentda_exe())
        .args(["analyse", "--method", method, "--bundle"])
        .arg(&b)
        .arg("--background")
        .arg(b.join("sample/background.nc"))
        .arg("--obs")
        .arg(b.join("sample/obs.csv"))
        .arg("--output")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "latentda analyse --method {method} {extra:?} failed: {}", show(&o));
    let layout = Bundle::open(&b).unwrap().layout;
    latentda::bundle::ncio::read_state(out, &layout).unwrap()
}

/// Runs a driver on the fixture's sample and returns (analysed state read back from its output, stdout).
fn run_driver(exe: &Path, bundle: &str, tag: &str, extra: &[&str]) -> (Vec<f64>, String) {
    let b = fixture(bundle);
    let out = programs().dir.join(format!("{tag}_{bundle}.bin"));
    let o = Command::new(exe)
        .arg(&b)
        .arg(b.join("sample/background.nc"))
        .arg(b.join("sample/obs.csv"))
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{} failed: {}", exe.display(), show(&o));
    let bytes = std::fs::read(&out).unwrap();
    let x = bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
    (x, String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Largest per-variable relative difference max|a - b| / max|b| (over each variable's whole field).
fn max_rel_diff(bundle: &str, a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "state lengths differ");
    let layout = Bundle::open(fixture(bundle)).unwrap().layout;
    let mut worst: f64 = 0.0;
    for v in 0..layout.variables.len() {
        let r = layout.var_range(v);
        let scale = b[r.clone()].iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
        let d = a[r.clone()].iter().zip(&b[r]).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        worst = worst.max(d / scale);
    }
    worst
}

fn background(bundle: &str) -> Vec<f64> {
    let b = fixture(bundle);
    latentda::bundle::ncio::read_state(&b.join("sample/background.nc"), &Bundle::open(&b).unwrap().layout).unwrap()
}

#[test]
fn header_is_up_to_date() {
    let committed = std::fs::read_to_string(root().join("include/latentda.h")).unwrap();
    let generated = std::fs::read_to_string(concat!(env!("OUT_DIR"), "/latentda.h")).unwrap();
    assert!(
        committed == generated,
        "include/latentda.h differs from the header build.rs generates from src/coupling/ffi.rs: run \
         `LATENTDA_WRITE_HEADER=1 cargo build --release` and commit include/latentda.h"
    );
    for name in ["LdaStatus", "LDA_ERR_NOT_READY", "LdaQcFlag", "LDA_QC_BACKGROUND_CHECK", "LDA_ORDER_FORTRAN"] {
        assert!(committed.contains(name), "header lacks {name}");
    }
}

/// Status codes, QC flags and array orders are defined once in Rust (`Status` and `Order`, exported to the C header
/// by cbindgen; `QcFlag`, whose C enum in src/coupling/ffi.rs is checked against it at compile time) and copied by
/// hand into the C++ header, the Fortran module and the documentation. Every copy must list every value, with the same number.
#[test]
fn status_codes_qc_flags_and_orders_agree_in_every_copy() {
    use latentda::coupling::ffi::LdaQcFlag;
    use latentda::{QcFlag, Status};
    // (C name, value, C++ name)
    let statuses: Vec<(String, i32, String)> = Status::ALL
        .iter()
        .map(|&s| {
            let c = s.c_name().to_string();
            let short = c.trim_start_matches("LDA_ERR_").trim_start_matches("LDA_").to_lowercase();
            (c, s as i32, short)
        })
        .collect();
    let flags: Vec<(String, i32, String)> = QcFlag::ALL
        .iter()
        .map(|&f| {
            let c = format!("{:?}", LdaQcFlag::from(f));
            assert_eq!(c.trim_start_matches("LDA_QC_").to_lowercase(), f.name(), "report name of {c}");
            (c, f as i32, f.name().to_string())
        })
        .collect();
    let orders = [("LDA_ORDER_C", ffi::LDA_ORDER_C, "C"), ("LDA_ORDER_FORTRAN", ffi::LDA_ORDER_FORTRAN, "Fortran")];
    assert_eq!((statuses.len(), flags.len()), (11, 7));
    let read = |f: &str| std::fs::read_to_string(root().join(f)).unwrap();
    let (header, hpp, module, docs, readme) = (
        read("include/latentda.h"),
        read("include/latentda.hpp"),
        read("fortran/latentda.f90"),
        read("docs/coupling.md"),
        read("README.md"),
    );
    // The C header: exactly these enumerators.
    let in_header: Vec<(String, i32)> = header
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').split_once(" = "))
        .filter(|(n, _)| n.starts_with("LDA_"))
        .map(|(n, v)| (n.to_string(), v.trim().parse().unwrap()))
        .collect();
    let mut want: Vec<(String, i32)> = statuses.iter().chain(&flags).map(|(c, v, _)| (c.clone(), *v)).collect();
    want.extend(orders.iter().map(|(c, v, _)| (c.to_string(), *v)));
    // Grid kind and vertical coordinate (issue 26): (C name, value, C++ enumerator).
    use latentda::coupling::ffi::{LdaGridKind, LdaVertical};
    let kinds = [
        (format!("{:?}", LdaGridKind::LDA_GRID_REGULAR), LdaGridKind::LDA_GRID_REGULAR as i32, "Regular"),
        (format!("{:?}", LdaGridKind::LDA_GRID_GAUSSIAN), LdaGridKind::LDA_GRID_GAUSSIAN as i32, "Gaussian"),
        (format!("{:?}", LdaVertical::LDA_VERTICAL_SIGMA), LdaVertical::LDA_VERTICAL_SIGMA as i32, "Sigma"),
        (format!("{:?}", LdaVertical::LDA_VERTICAL_PRESSURE), LdaVertical::LDA_VERTICAL_PRESSURE as i32, "Pressure"),
    ];
    want.extend(kinds.iter().map(|(c, v, _)| (c.clone(), *v)));
    let (mut a, mut b) = (in_header.clone(), want.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "include/latentda.h enumerators");
    // C++: latentda::status::<name>, latentda::qc::<name>, latentda::Order::{C, Fortran}.
    let ns = |name: &str| -> String {
        let i =
            hpp.find(&format!("namespace {name} {{")).unwrap_or_else(|| panic!("latentda.hpp has no namespace {name}"));
        hpp[i..].split("}  // namespace").next().unwrap().to_string()
    };
    for (block, list) in [(ns("status"), &statuses), (ns("qc"), &flags)] {
        let n = block.matches("constexpr int32_t").count();
        assert_eq!(n, list.len(), "latentda.hpp: {n} constants, expected {}", list.len());
        for (c, v, short) in list {
            assert!(
                block.contains(&format!("constexpr int32_t {short} = {v};")),
                "latentda.hpp lacks {short} = {v} ({c})"
            );
        }
    }
    for (c, v, cpp) in orders {
        assert!(hpp.contains(&format!("  {cpp} = {v},")), "latentda.hpp: Order::{cpp} = {v} ({c})");
    }
    // Fortran: parameters named as in C (the bind order is private: ORDER_FORTRAN).
    let f90_has = |name: &str, v: i32| {
        module.lines().any(|m| {
            m.contains(":: ")
                && m.split(":: ").nth(1).and_then(|d| d.split('!').next()).map(|d| d.trim().to_string())
                    == Some(format!("{name} = {v}"))
        })
    };
    for (c, v, _) in statuses.iter().chain(&flags) {
        assert!(f90_has(c, *v), "fortran/latentda.f90 has no parameter {c} = {v}");
    }
    assert!(f90_has("ORDER_FORTRAN", ffi::LDA_ORDER_FORTRAN), "fortran/latentda.f90: ORDER_FORTRAN");
    for (c, v, cpp) in &kinds {
        assert!(f90_has(c, *v), "fortran/latentda.f90 has no parameter {c} = {v}");
        assert!(hpp.contains(&format!("  {cpp} = {v},")), "latentda.hpp: {cpp} = {v} ({c})");
    }
    // docs/coupling.md tables and the README's QC summary.
    for (c, v, _) in statuses.iter().chain(&flags) {
        assert!(docs.contains(&format!("| {v} | `{c}` |")), "docs/coupling.md has no table row '| {v} | `{c}` |'");
    }
    let summary: Vec<String> = flags.iter().map(|(_, v, n)| format!("{v} `{n}`")).collect();
    let flat = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut at = 0;
    for s in &summary {
        let i = flat[at..].find(s.as_str()).unwrap_or_else(|| panic!("README.md's QC summary lacks '{s}' (in order)"));
        at += i + s.len();
    }
}

/// Every run-time option is listed wherever options are listed. The TOML block in `src/var/options.rs`'s docs parses
/// as `Options` (so each key exists and its example value is valid), its keys are exactly the fields of `Options`,
/// and each key appears in the docs/coupling.md table, in `lda_open`'s comment in the C header and in
/// `Context::open`'s comment in latentda.hpp.
#[test]
fn every_option_is_listed_in_every_copy() {
    let read = |f: &str| std::fs::read_to_string(root().join(f)).unwrap();
    let (src, header, hpp, docs) = (
        read("src/var/options.rs"),
        read("include/latentda.h"),
        read("include/latentda.hpp"),
        read("docs/coupling.md"),
    );
    let block: String = src
        .lines()
        .filter_map(|l| l.strip_prefix("//! "))
        .skip_while(|l| *l != "```toml")
        .skip(1)
        .take_while(|l| *l != "```")
        .map(|l| format!("{l}\n"))
        .collect();
    latentda::Options::from_toml(&block)
        .unwrap_or_else(|e| panic!("the documented options do not parse: {e}\n{block}"));
    let mut keys: Vec<&str> = block.lines().filter_map(|l| l.split_once(" = ")).map(|(k, _)| k.trim()).collect();
    let struct_body = src.split("pub struct Options {").nth(1).unwrap().split("\n}").next().unwrap();
    let mut fields: Vec<&str> = struct_body
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split_once(':'))
        .map(|(f, _)| f)
        .collect();
    keys.sort();
    fields.sort();
    assert_eq!(keys, fields, "documented option keys vs the fields of Options");
    // The identifiers of a text, so that `bg_check` is not found inside `bg_check_samples`.
    let words = |t: &str| -> std::collections::BTreeSet<String> {
        t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect()
    };
    let before = |text: &str, start: &str, end: &str| -> String {
        let j = text.find(end).unwrap_or_else(|| panic!("no '{end}'"));
        let i = text[..j].rfind(start).unwrap_or_else(|| panic!("no '{start}' before '{end}'"));
        text[i..j].to_string()
    };
    let c_doc = words(&before(&header, "/**", "int32_t lda_open("));
    let cpp_doc = words(&before(&hpp, "// Opens and validates a bundle directory.", "static Context open("));
    let table: String =
        docs.lines().filter(|l| l.starts_with("| `")).filter_map(|l| l.split('|').nth(1)).collect::<Vec<_>>().join(" ");
    let table = words(&table);
    for k in &keys {
        assert!(table.contains(*k), "docs/coupling.md's options table has no row for `{k}`");
        assert!(c_doc.contains(*k), "lda_open's comment (src/coupling/ffi.rs, include/latentda.h) does not list `{k}`");
        assert!(cpp_doc.contains(*k), "Context::open's comment in include/latentda.hpp does not list `{k}`");
    }
}

/// The module, the driver and the error program compile with -std=f2008 -Wall (checked as errors), and no line
/// is longer than 132 characters.
#[test]
fn fortran_sources_compile_cleanly() {
    programs();
    let dir = programs().dir.join("wextra");
    std::fs::create_dir_all(&dir).unwrap();
    let o = Command::new("gfortran")
        .args(["-std=f2008", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"])
        .arg(format!("-J{}", dir.display()))
        .arg(root().join("fortran/latentda.f90"))
        .output()
        .unwrap();
    assert!(o.status.success(), "module not clean under -Wall -Wextra: {}", show(&o));
    for f in [
        "fortran/latentda.f90",
        "examples/fortran/driver.f90",
        "tests/coupling/errors.f90",
        "examples/fortran/l4dvar_callbacks.f90",
        "examples/fortran/host_minimiser.f90",
        "tests/coupling/obs_service.f90",
    ] {
        let text = std::fs::read_to_string(root().join(f)).unwrap();
        for (i, l) in text.lines().enumerate() {
            assert!(l.chars().count() <= 132, "{f}:{}: line longer than 132 characters", i + 1);
        }
    }
}

/// The C driver (static and shared, C and Fortran order, double and float) against `latentda analyse`.
#[test]
fn c_driver_matches_cli() {
    let p = programs();
    for bundle in ["linear", "tanh"] {
        let cli = cli_analysis(bundle);
        let bg = background(bundle);
        let (x, stdout) = run_driver(&p.c_static, bundle, "c_static_f64_c", &[]);
        let d = max_rel_diff(bundle, &x, cli);
        println!("{bundle}: C driver (static, f64, C order) vs CLI: max rel diff {d:.2e}\n{stdout}");
        assert!(d <= 1e-6, "{bundle}: C driver differs from latentda analyse by {d:e}");
        assert!(max_rel_diff(bundle, &x, &bg) > 1e-4, "{bundle}: the analysis equals the background");
        assert!(stdout.contains("O-B rms") && stdout.contains("qc used"), "summary missing:\n{stdout}");
        // Same memory bound with a Fortran-order shape: identical bits.
        let (xf, _) = run_driver(&p.c_shared, bundle, "c_shared_f64_f", &["--order", "fortran"]);
        assert!(xf == x, "{bundle}: Fortran-order binding differs from C-order binding");
        // Shared library, C order: identical bits to the static build.
        let (xs, _) = run_driver(&p.c_shared, bundle, "c_shared_f64_c", &["--quiet"]);
        assert!(xs == x, "{bundle}: shared and static builds differ");
        // Single precision entry point: agrees within float32 tolerance.
        let (x4, _) = run_driver(&p.c_static, bundle, "c_static_f32_c", &["--precision", "f32", "--quiet"]);
        let d4 = max_rel_diff(bundle, &x4, &x);
        println!("{bundle}: f32 vs f64 max rel diff {d4:.2e}");
        assert!(d4 <= 1e-5, "{bundle}: f32 and f64 entry points differ by {d4:e}");
    }
}

/// The Fortran driver (static and shared, double and float) against `latentda analyse` and the C driver.
#[test]
fn fortran_driver_matches_cli() {
    let p = programs();
    for bundle in ["linear", "tanh"] {
        let cli = cli_analysis(bundle);
        let (x, stdout) = run_driver(&p.f_static, bundle, "f_static_f64", &[]);
        let d = max_rel_diff(bundle, &x, cli);
        println!("{bundle}: Fortran driver (static, f64) vs CLI: max rel diff {d:.2e}\n{stdout}");
        assert!(d <= 1e-6, "{bundle}: Fortran driver differs from latentda analyse by {d:e}");
        assert!(stdout.contains("O-B rms") && stdout.contains("qc used"), "summary missing:\n{stdout}");
        let (xs, _) = run_driver(&p.f_shared, bundle, "f_shared_f64", &["--quiet"]);
        assert!(xs == x, "{bundle}: Fortran shared and static builds differ");
        // Fortran-order binding from Fortran == C-order binding from C, bit for bit.
        let (xc, _) = run_driver(&p.c_shared, bundle, "c_for_f_compare", &["--quiet"]);
        assert!(xc == x, "{bundle}: Fortran driver (Fortran order) and C driver (C order) differ");
        let (x4, _) = run_driver(&p.f_shared, bundle, "f_shared_f32", &["--precision", "f32", "--quiet"]);
        let d4 = max_rel_diff(bundle, &x4, &x);
        println!("{bundle}: Fortran f32 vs f64 max rel diff {d4:.2e}");
        assert!(d4 <= 1e-5, "{bundle}: Fortran f32 and f64 differ by {d4:e}");
    }
}

/// The C and Fortran drivers' `--method hybrid` analyses against `latentda analyse --method hybrid` (default weights
/// and variables: alpha 1, beta 1, all variables), on both fixtures.
#[test]
fn c_and_fortran_drivers_run_hybrid_like_cli() {
    let p = programs();
    for bundle in ["linear", "tanh"] {
        let cli = run_cli(bundle, "hybrid");
        let (xc, _) = run_driver(&p.c_shared, bundle, "c_hybrid", &["--method", "hybrid", "--quiet"]);
        let (xf, _) = run_driver(&p.f_shared, bundle, "f_hybrid", &["--method", "hybrid", "--quiet"]);
        let (dc, df) = (max_rel_diff(bundle, &xc, &cli), max_rel_diff(bundle, &xf, &cli));
        println!("{bundle}: hybrid, C driver vs CLI {dc:.2e}, Fortran driver vs CLI {df:.2e}");
        assert!(dc <= 1e-6 && df <= 1e-6, "{bundle}: hybrid analyses differ from the CLI's: C {dc:e}, Fortran {df:e}");
        assert!(max_rel_diff(bundle, &xc, cli_analysis(bundle)) > 1e-6, "{bundle}: hybrid equals l3dvar");
    }
}

/// A host that cycles with `adaptive_state` (one process per cycle, the state file kept between them): the Fortran
/// driver's third analysis equals `latentda analyse --adaptive-state`'s third, both differ from the first (the B was
/// resized), and the state file counts the cycles.
#[test]
fn fortran_host_and_cli_cycle_with_an_adaptive_state_file() {
    let p = programs();
    let bundle = "linear";
    let (sf, sc) = (p.dir.join("adaptive_fortran.json"), p.dir.join("adaptive_cli.json"));
    for f in [&sf, &sc] {
        let _ = std::fs::remove_file(f);
    }
    let opt = format!("adaptive_state = \"{}\"", sf.display());
    let fortran: Vec<Vec<f64>> = (0..3)
        .map(|k| run_driver(&p.f_shared, bundle, &format!("f_adaptive_{k}"), &["--options", &opt, "--quiet"]).0)
        .collect();
    let cli: Vec<Vec<f64>> = (0..3)
        .map(|k| {
            let out = p.dir.join(format!("cli_adaptive_{k}.nc"));
            cli_analyse(bundle, "l3dvar", &out, &["--adaptive-state".as_ref(), sc.as_os_str()])
        })
        .collect();
    let d = max_rel_diff(bundle, &fortran[2], &cli[2]);
    let moved = max_rel_diff(bundle, &fortran[2], &fortran[0]);
    println!("adaptive cycling: Fortran vs CLI (cycle 3) {d:.2e}; cycle 3 vs cycle 1 {moved:.2e}");
    assert!(d <= 1e-6, "Fortran and CLI cycles differ by {d:e}");
    assert!(moved > 1e-4, "the third analysis should run with a resized B: {moved:e}");
    assert!(max_rel_diff(bundle, &fortran[0], cli_analysis(bundle)) <= 1e-6, "the first cycle is the options' B");
    for f in [&sf, &sc] {
        let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        assert_eq!((s["cycles"].as_u64(), s["method"].as_str()), (Some(3), Some("l3dvar")), "{}", f.display());
        assert!(s["multiplier"].as_f64().unwrap() != 1.0);
    }
}

fn run_error_program(exe: &Path) {
    // A time limit: errors.f90 re-enters its context from a callback, which hung before issue 25.
    let tag = exe.file_name().unwrap().to_string_lossy().into_owned();
    let o = output_within(Command::new(exe).arg(fixture("tanh")), std::time::Duration::from_secs(300), &tag);
    let out = String::from_utf8_lossy(&o.stdout);
    println!("{out}");
    assert!(o.status.success() && out.contains("PASSED"), "{} reported failures: {}", exe.display(), show(&o));
    assert!(!out.contains("FAIL "), "{out}");
}

/// Bad bundle path, wrong shape, NaN, unbound field, zero-length observations, NULL pointers, from C.
#[test]
fn error_paths_from_c() {
    run_error_program(&programs().c_errors);
}

/// Bad bundle path, wrong shape/rank, NaN, unbound field, mismatched and zero-length observations, from Fortran;
/// and (issue 25) a step-model callback that calls lda_analyse and lda_close on its own context through a copy of
/// the handle gets LDA_ERR_NOT_READY with the context left open, and closing a copy of a closed handle is refused.
#[test]
fn error_paths_from_fortran() {
    run_error_program(&programs().f_errors);
}

/// valgrind memcheck with every leak kind but "still reachable" counted as an error, and no suppressions.
fn valgrind(args: &[&std::ffi::OsStr]) -> Output {
    let o = Command::new("valgrind")
        .args(["--error-exitcode=1", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect,possible"])
        .args(["--show-leak-kinds=definite,indirect,possible"])
        .args(args)
        .output();
    match o {
        Ok(o) => o,
        Err(e) => panic!("valgrind is required for this test (install it: scripts/setup.sh): {e}"),
    }
}

/// Bytes "in use at exit" from a valgrind report.
fn in_use_at_exit(stderr: &str) -> u64 {
    let l =
        stderr.lines().find(|l| l.contains("in use at exit:")).unwrap_or_else(|| panic!("no heap summary:\n{stderr}"));
    l.split("in use at exit:").nth(1).unwrap().split_whitespace().next().unwrap().replace(',', "").parse().unwrap()
}

/// The C driver under valgrind memcheck: no invalid reads or writes, no leaks after lda_close (definite, indirect
/// or possible), no suppressions. valgrind is required (scripts/setup.sh installs it): a missing valgrind fails this
/// test.
#[test]
fn c_driver_is_valgrind_clean() {
    let p = programs();
    let b = fixture("tanh");
    let out = p.dir.join("valgrind.bin");
    let (bg, obs) = (b.join("sample/background.nc"), b.join("sample/obs.csv"));
    let o = valgrind(&[
        p.c_static.as_os_str(),
        b.as_os_str(),
        bg.as_os_str(),
        obs.as_os_str(),
        out.as_os_str(),
        "--quiet".as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "valgrind reported errors: {}", show(&o));
    assert!(stderr.contains("ERROR SUMMARY: 0 errors"), "{stderr}");
    for kind in ["definitely", "indirectly", "possibly"] {
        assert!(
            stderr.contains(&format!("{kind} lost: 0 bytes")) || stderr.contains("All heap blocks were freed"),
            "{stderr}"
        );
    }
    let (x, _) = run_driver(&p.c_static, "tanh", "valgrind_ref", &["--quiet"]);
    let xv: Vec<f64> =
        std::fs::read(&out).unwrap().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
    // Not bit for bit: valgrind's CPU model lacks AVX-512 (and more), so tract picks other matrix kernels under it
    // and rounds differently. Bit-identity holds on one machine and instruction set, not across them; across them
    // the analyses agree to float32 model rounding, the tolerance the drivers meet against the CLI.
    let d = max_rel_diff("tanh", &xv, &x);
    println!("analysis under valgrind vs native: max rel diff {d:.2e}");
    assert!(d <= 1e-6, "the analysis under valgrind differs from the native one by {d:e} (tolerance 1e-6)");
}

// ---- two contexts from two threads, through the C ABI (Rust threads calling the extern "C" functions)

fn check(ctx: *mut LdaContext, st: i32, what: &str) {
    if st != ffi::LDA_OK {
        // SAFETY: lda_last_error never returns NULL and the string lives until the next failing call.
        let msg = unsafe { CStr::from_ptr(ffi::lda_last_error(ctx)) }.to_string_lossy().into_owned();
        panic!("{what}: status {st}: {msg}");
    }
}

/// Binds one host array per bundle variable (`fields[v]`, C order); the arrays must stay put until lda_close.
fn bind_fields(ctx: *mut LdaContext, lay: &latentda::grid::Layout, fields: &mut [Vec<f64>]) {
    for (v, f) in lay.variables.iter().zip(fields.iter_mut()) {
        let name = CString::new(v.name.as_str()).unwrap();
        let (shape, nd): (Vec<i64>, i32) = if v.is_surface() {
            (vec![lay.grid.nlat() as i64, lay.grid.nlon() as i64], 2)
        } else {
            (vec![v.nlev as i64, lay.grid.nlat() as i64, lay.grid.nlon() as i64], 3)
        };
        check(ctx, ffi::lda_bind_field_f64(ctx, name.as_ptr(), f.as_mut_ptr(), nd, shape.as_ptr(), 0), "bind");
    }
}

/// Opens `bundle`, binds host arrays of the sample background, sets the sample observations and analyses `n`
/// times (restoring the background each time); returns every analysis.
fn analyse_through_c_abi(bundle: &str, n: usize) -> Vec<Vec<f64>> {
    let b = fixture(bundle);
    let lay = Bundle::open(&b).unwrap().layout;
    let (obs, _) = latentda::obs::read_csv(&b.join("sample/obs.csv"), &lay).unwrap();
    let bg = background(bundle);
    let dir = CString::new(b.to_str().unwrap()).unwrap();
    let mut ctx: *mut LdaContext = std::ptr::null_mut();
    check(ctx, ffi::lda_open(dir.as_ptr(), std::ptr::null(), &mut ctx), "lda_open");
    // Host arrays: one Vec per variable, kept alive (and not moved) until lda_close.
    let mut fields: Vec<Vec<f64>> = (0..lay.variables.len()).map(|v| bg[lay.var_range(v)].to_vec()).collect();
    bind_fields(ctx, &lay, &mut fields);
    let var: Vec<i32> = obs.iter().map(|o| o.var.map(|v| v as i32).unwrap_or(-1)).collect();
    let col = |f: &dyn Fn(&latentda::Observation) -> f64| obs.iter().map(f).collect::<Vec<f64>>();
    let (lat, lon) = (col(&|o| o.lat), col(&|o| o.lon));
    let (level, value, sigma) = (col(&|o| o.level.unwrap_or(f64::NAN)), col(&|o| o.value), col(&|o| o.sigma));
    check(
        ctx,
        ffi::lda_set_obs(
            ctx,
            obs.len(),
            var.as_ptr(),
            lat.as_ptr(),
            lon.as_ptr(),
            level.as_ptr(),
            value.as_ptr(),
            sigma.as_ptr(),
        ),
        "set_obs",
    );
    let mut results = Vec::new();
    for _ in 0..n {
        for (v, f) in fields.iter_mut().enumerate() {
            f.copy_from_slice(&bg[lay.var_range(v)]);
        }
        check(ctx, ffi::lda_analyse(ctx, std::ptr::null::<c_char>()), "analyse");
        results.push(fields.concat());
    }
    check(ctx, ffi::lda_close(ctx), "close");
    results
}

#[test]
fn two_contexts_analyse_concurrently() {
    let runs = 4;
    let t1 = std::thread::spawn(move || analyse_through_c_abi("tanh", runs));
    let t2 = std::thread::spawn(move || analyse_through_c_abi("tanh", runs));
    let t3 = std::thread::spawn(move || analyse_through_c_abi("linear", runs));
    let (r1, r2, r3) = (t1.join().unwrap(), t2.join().unwrap(), t3.join().unwrap());
    let (cli_t, cli_l) = (cli_analysis("tanh"), cli_analysis("linear"));
    for (name, rs, cli, bundle) in
        [("thread 1", &r1, cli_t, "tanh"), ("thread 2", &r2, cli_t, "tanh"), ("thread 3", &r3, cli_l, "linear")]
    {
        for (i, x) in rs.iter().enumerate() {
            let d = max_rel_diff(bundle, x, cli);
            assert!(d <= 1e-6, "{name} run {i}: differs from latentda analyse by {d:e}");
            assert!(x == &rs[0], "{name} run {i}: not bit-identical to run 0");
        }
    }
    assert!(r1[0] == r2[0], "two concurrent contexts on the same inputs differ");
}

/// A long-running host (tests/coupling/cycles.c): open, bind, set_obs, analyse (L3DVar and hybrid), QC, report,
/// B operator (linearise, bsqrt, bsqrt_ad, bsqrt into the bound arrays, bvariance, brandomize), close, repeated. Under valgrind with no suppression:
/// no errors, nothing lost, and the heap still in use at exit (one-time library state: HDF5's error stack, tract's
/// lazily built tables) is the same after N cycles as after one, so nothing grows per cycle. N is 25 here
/// (about 25 s under valgrind); LATENTDA_VALGRIND_CYCLES=100 reproduces the issue's 100-cycle run.
#[test]
fn repeated_open_analyse_bsqrt_close_does_not_grow_under_valgrind() {
    let p = programs();
    let b = fixture("tanh");
    let n: usize = std::env::var("LATENTDA_VALGRIND_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(25);
    let mut in_use = Vec::new();
    for cycles in [1, n] {
        let o = valgrind(&[p.c_cycles.as_os_str(), b.as_os_str(), cycles.to_string().as_ref()]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{cycles} cycles under valgrind: {}", show(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("{cycles} cycles done")), "{}", show(&o));
        for kind in ["definitely", "indirectly", "possibly"] {
            assert!(stderr.contains(&format!("{kind} lost: 0 bytes")), "{cycles} cycles: {stderr}");
        }
        in_use.push(in_use_at_exit(&stderr));
        println!("{cycles} cycles: ERROR SUMMARY 0, nothing lost, {} bytes in use at exit", in_use.last().unwrap());
    }
    assert_eq!(in_use[0], in_use[1], "heap in use at exit grows with the number of cycles (1 vs {n})");
}

/// `lda_last_error(ctx)` read by one thread while another makes failing calls on the context
/// (tests/coupling/threads.c): every string read is a complete message, natively and under valgrind (before the
/// fix the reader read a message freed by the writer).
#[test]
fn last_error_can_be_read_from_another_thread() {
    let p = programs();
    let b = fixture("tanh");
    let o = Command::new(&p.c_threads).arg(&b).arg("20000").output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let o = valgrind(&[p.c_threads.as_os_str(), b.as_os_str(), "2000".as_ref()]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("PASSED"), "{}", show(&o));
}

/// Observation counts beyond memory (tests/coupling/limits.c, under a 3 GiB address-space limit): 2^25
/// observations and a lying count of 2^40 are LDA_ERR_INVALID_ARGUMENT, not an abort; the context keeps working.
#[test]
fn observation_counts_beyond_memory_are_errors() {
    let o = Command::new(&programs().c_limits).arg(fixture("tanh")).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    println!("{out}");
    assert!(o.status.success() && out.contains("PASSED"), "{}", show(&o));
}

/// Issue 17: a Fortran host gives latentda its own forecast model, TL and AD as bind(C) callbacks
/// (examples/fortran/l4dvar_callbacks.f90): the adjoint tests of its step (float64) and of the chained 4D transform
/// pass, latent 4D-Var with its model brings the analysis towards the truth of a twin experiment, and a failing
/// callback makes lda_analyse fail with LDA_ERR_BACKEND and the fields unchanged.
#[test]
fn fortran_step_model_callbacks() {
    let p = programs();
    let b = fixture("tanh");
    let lay = Bundle::open(&b).unwrap().layout;
    let read = |f: &str| latentda::ncio::read_state(&b.join("sample").join(f), &lay).unwrap();
    let mut bytes = Vec::new();
    for n in [lay.grid.nlon(), lay.grid.nlat(), lay.vertical.levels.len()] {
        bytes.extend((n as i32).to_ne_bytes());
    }
    for v in [&lay.grid.lat, &lay.grid.lon, &lay.vertical.levels, &read("background.nc"), &read("truth.nc")] {
        v.iter().for_each(|x| bytes.extend(x.to_ne_bytes()));
    }
    let input = p.dir.join("l4dvar_input.bin");
    std::fs::write(&input, bytes).unwrap();
    let o = Command::new(&p.f_l4dvar).arg(&b).arg(&input).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{out}");
    assert!(o.status.success(), "{}", show(&o));
    for line in ["PASS adjoint tests", "PASS analysis closer to the truth", "PASS failure reported, fields unchanged"] {
        assert!(out.contains(line), "missing '{line}':\n{out}");
    }
    assert!(out.contains("callback 'step' returned status 1"), "{out}");
}

// ---- issue 25, items 4 and 6: re-entry, double close, quiet panics (tests/coupling/reentry.c)

/// Runs `cmd` for at most `limit`: a program still running then (a deadlock) is killed, and the test fails.
fn output_within(cmd: &mut Command, limit: std::time::Duration, tag: &str) -> Output {
    let dir = &programs().dir;
    let (out, err) = (dir.join(format!("{tag}.stdout")), dir.join(format!("{tag}.stderr")));
    let mut child = cmd
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {limit:?} (deadlock?)\n--- stdout\n{}\n--- stderr\n{}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    Output { status, stdout: std::fs::read(&out).unwrap(), stderr: std::fs::read(&err).unwrap() }
}

/// Runs tests/coupling/reentry.c in `mode` (60 s at most) and checks that every case passed.
fn run_reentry(mode: &str, extra: &[&Path]) -> Output {
    let mut cmd = Command::new(&programs().c_reentry);
    cmd.arg(fixture("tanh")).arg(mode).args(extra);
    let o = output_within(&mut cmd, std::time::Duration::from_secs(60), &format!("reentry_{mode}"));
    let out = String::from_utf8_lossy(&o.stdout);
    println!("{out}");
    assert!(o.status.success() && out.contains("PASSED") && !out.contains("FAIL "), "reentry {mode}: {}", show(&o));
    o
}

/// Issue 25, item 4: a step-model callback that calls lda_analyse (or lda_var_index, lda_close, lda_state_size) on
/// its own context gets LDA_ERR_NOT_READY at once, and the outer call completes (before: the context's mutex was
/// locked a second time and the program hung). A call from another thread meanwhile still waits for the running
/// call and then succeeds: one thread at a time per context, as documented.
#[test]
fn a_call_from_inside_a_callback_is_refused_not_a_deadlock() {
    run_reentry("reentry", &[]);
}

/// Issue 25, item 4: a second lda_close of the same pointer is LDA_ERR_INVALID_ARGUMENT instead of aborting the
/// process (before: free(): invalid pointer, SIGABRT), also after a new context was opened; every other call on the
/// closed pointer is refused too. Under valgrind: no invalid read or write, nothing lost.
#[test]
fn closing_twice_is_an_error_not_an_abort() {
    run_reentry("close", &[]);
    let p = programs();
    let b = fixture("tanh");
    let o = valgrind(&[p.c_reentry.as_os_str(), b.as_os_str(), "close".as_ref()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("PASSED"), "{}", show(&o));
    assert!(stderr.contains("ERROR SUMMARY: 0 errors"), "{stderr}");
}

/// Issue 25, item 6: a graph that makes tract panic while the bundle opens (tests/corpus/onnx/decoder_tl.seed2.onnx,
/// checksum refreshed) is LDA_ERR_BUNDLE with tract's panic message in lda_last_error, and the C host's stderr stays
/// empty (before: "thread '<unnamed>' panicked at ..." and the panic text were printed there).
#[test]
fn caught_panics_print_nothing_and_reach_lda_last_error() {
    let b = common::copy_fixture("tanh", "quiet_panic");
    std::fs::copy(root().join("tests/corpus/onnx/decoder_tl.seed2.onnx"), b.join("decoder_tl.onnx")).unwrap();
    common::refresh_checksum(&b, "decoder_tl.onnx");
    let o = run_reentry("panic", &[&b]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("decoder_tl.onnx") && out.contains("out of range"),
        "the panic message is not in lda_last_error:\n{out}"
    );
    assert!(
        !err.contains("panicked at") && !err.contains("out of range"),
        "panic text reached the host's stderr:\n{err}"
    );
    assert!(err.trim().is_empty(), "the host's stderr is not empty:\n{err}");
}

// ---- issue 26: layout queries, H as a service, the noise floor of U, a host's own minimiser

/// The fixture's background as raw float64 in state layout (what the issue-26 programs read), written once per
/// bundle into the programs' directory.
fn background_bin(bundle: &str) -> PathBuf {
    let path = programs().dir.join(format!("background_{bundle}.bin"));
    let bytes: Vec<u8> = background(bundle).iter().flat_map(|x| x.to_le_bytes()).collect();
    let tmp = programs().dir.join(format!("background_{bundle}.{:?}.tmp", std::thread::current().id()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn run_pass_program(exe: &Path, args: &[&std::ffi::OsStr]) -> String {
    let o = Command::new(exe).args(args).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    println!("{out}");
    assert!(o.status.success() && out.contains("PASSED") && !out.contains("FAIL"), "{}", show(&o));
    out
}

/// Issue 26 from C (tests/coupling/obs_service.c): the layout queries describe the bundle and its state layout, the
/// background binds through them, lda_obs_h gives the geometric QC flags and, for one used observation per
/// variable (polar cap, longitude wrap, exact grid point and level), the analysis's own H x_b bit for bit (the
/// report's O-B mean is value - H x_b exactly); lda_obs_h_ad is its transpose; failing calls write nothing.
#[test]
fn layout_and_h_service_from_c() {
    let out = run_pass_program(&programs().c_obs, &[fixture("tanh").as_os_str(), background_bin("tanh").as_os_str()]);
    assert_eq!(out.matches("PASS H x_b of the service equals the analysis's bit for bit").count(), 3, "{out}");
}

/// Issue 26 from Fortran (tests/coupling/obs_service.f90): the same checks through the module's default-integer
/// wrappers (lda_grid_info, lda_var_layout, lda_state_dim, lda_control_dim) and pointer views of one state vector.
#[test]
fn layout_and_h_service_from_fortran() {
    let out = run_pass_program(&programs().f_obs, &[fixture("tanh").as_os_str(), background_bin("tanh").as_os_str()]);
    assert_eq!(out.matches("PASS H x_b of the service equals the analysis's bit for bit").count(), 3, "{out}");
}

/// A number printed by a program after `key` (e.g. "J final = 1.96E+01").
fn number_after(text: &str, key: &str) -> f64 {
    let rest = text.split(key).nth(1).unwrap_or_else(|| panic!("no '{key}' in:\n{text}"));
    rest.split_whitespace().next().unwrap().parse().unwrap_or_else(|e| panic!("'{key}': {e}\n{text}"))
}

/// Issue 26, item 5: examples/fortran/host_minimiser.f90, a host's own CG on the control variable with
/// lda_bsqrt/lda_bsqrt_ad and the H service, reaches the J of `latentda analyse` on the same case to 1e-6
/// relative (both stop on a 1e-5 gradient reduction; no background check, so both use the same observations), from
/// the same J at the background, and its analysis agrees with the CLI's.
#[test]
fn fortran_host_minimiser_matches_cli() {
    let p = programs();
    let options = "gradient_reduction = 1e-5\nbg_check = 0\n";
    let opt_file = p.dir.join("host_minimiser_options.toml");
    std::fs::write(&opt_file, options).unwrap();
    for bundle in ["tanh", "linear"] {
        let b = fixture(bundle);
        let (cli_out, report) =
            (p.dir.join(format!("host_cli_{bundle}.nc")), p.dir.join(format!("host_cli_{bundle}.json")));
        let o = Command::new(common::latentda_exe())
            .args(["analyse", "--method", "l3dvar", "--bundle"])
            .arg(&b)
            .arg("--background")
            .arg(b.join("sample/background.nc"))
            .arg("--obs")
            .arg(b.join("sample/obs.csv"))
            .arg("--output")
            .arg(&cli_out)
            .arg("--report")
            .arg(&report)
            .arg("--options")
            .arg(&opt_file)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", show(&o));
        let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let (cli_j0, cli_j) =
            (rep["solver"]["j_initial"].as_f64().unwrap(), rep["solver"]["j_final"].as_f64().unwrap());
        let out_bin = p.dir.join(format!("host_minimiser_{bundle}.bin"));
        let bg = background_bin(bundle);
        let o = Command::new(&p.f_host)
            .arg(&b)
            .arg(&bg)
            .arg(b.join("sample/obs.csv"))
            .arg(&out_bin)
            .args(["--options", options, "--tol", "1e-5"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{}", show(&o));
        let (j0, j) = (number_after(&text, "J initial = "), number_after(&text, "J final = "));
        let g = number_after(&text, "recomputed |grad J|/|grad J0| = ");
        let rel = (j - cli_j).abs() / cli_j;
        println!("{bundle}: host CG J {j0:.12e} -> {j:.12e} (|g| reduced to {g:.2e}); CLI J {cli_j0:.12e} -> {cli_j:.12e}; rel diff {rel:.2e}");
        assert!(text.contains("variable 2 ps: levels 0, x(769:896)"), "layout lines:\n{text}");
        assert!((j0 - cli_j0).abs() <= 1e-12 * cli_j0, "{bundle}: J at the background {j0} vs CLI {cli_j0}");
        assert!(j < 0.5 * j0, "{bundle}: the host CG did not lower J ({j0} -> {j})");
        assert!(g <= 1e-4, "{bundle}: recomputed gradient reduction {g:e}");
        assert!(rel <= 1e-6, "{bundle}: host minimiser J {j} vs latentda analyse {cli_j}: rel diff {rel:e}");
        // The analyses: per variable, the difference relative to the increment (CG tolerance 1e-5, float32 U).
        let layout = Bundle::open(&b).unwrap().layout;
        let cli = latentda::bundle::ncio::read_state(&cli_out, &layout).unwrap();
        let host: Vec<f64> = std::fs::read(&out_bin)
            .unwrap()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let bgv = background(bundle);
        for v in 0..layout.variables.len() {
            let r = layout.var_range(v);
            let inc = r.clone().map(|i| (cli[i] - bgv[i]).abs()).fold(0.0, f64::max);
            let d = r.map(|i| (cli[i] - host[i]).abs()).fold(0.0, f64::max);
            println!("{bundle} {}: max |host - CLI| / max |increment| = {:.2e}", layout.variables[v].name, d / inc);
            assert!(
                inc > 0.0 && d <= 2e-4 * inc,
                "{bundle} {}: analyses differ by {:.2e} of the increment",
                layout.variables[v].name,
                d / inc
            );
        }
    }
}

/// Issue 26 through the C ABI in this process: layout queries against the bundle; lda_obs_h's geometric flags are
/// the analysis's flags with background-check rejections counted as used; failing calls (NULL output, wrong count,
/// NaN state, no observations) write nothing; the noise floor is deterministic per seed.
#[test]
fn layout_h_service_and_noise_floor_through_the_c_abi() {
    let b = fixture("tanh");
    let lay = Bundle::open(&b).unwrap().layout;
    let dir = CString::new(b.to_str().unwrap()).unwrap();
    let mut ctx: *mut LdaContext = std::ptr::null_mut();
    check(ctx, ffi::lda_open(dir.as_ptr(), std::ptr::null(), &mut ctx), "lda_open");
    let (mut kind, mut vert, mut nlat, mut nlon, mut nlev) = (-1, -1, 0usize, 0usize, 0usize);
    check(ctx, ffi::lda_grid_info(ctx, &mut kind, &mut nlat, &mut nlon, &mut vert, &mut nlev), "lda_grid_info");
    assert_eq!((kind, vert, nlat, nlon, nlev), (1, 0, lay.grid.nlat(), lay.grid.nlon(), lay.vertical.levels.len()));
    let (mut la, mut lo, mut le) = (vec![0.0; nlat], vec![0.0; nlon], vec![0.0; nlev]);
    check(
        ctx,
        ffi::lda_grid_coords(ctx, la.as_mut_ptr(), nlat, lo.as_mut_ptr(), nlon, le.as_mut_ptr(), nlev),
        "coords",
    );
    assert_eq!((&la, &lo, &le), (&lay.grid.lat, &lay.grid.lon, &lay.vertical.levels));
    let mut nvar = 0;
    check(ctx, ffi::lda_var_count(ctx, &mut nvar), "lda_var_count");
    assert_eq!(nvar as usize, lay.variables.len());
    for (i, v) in lay.variables.iter().enumerate() {
        let (mut vl, mut off, mut len, mut needed) = (-1, 0usize, 0usize, 0usize);
        check(ctx, ffi::lda_var_layout(ctx, i as i32, &mut vl, &mut off, &mut len), "lda_var_layout");
        assert_eq!((vl as usize, off..off + len), (v.nlev, lay.var_range(i)));
        let mut buf = [0 as c_char; 64];
        check(ctx, ffi::lda_var_name(ctx, i as i32, buf.as_mut_ptr(), buf.len(), &mut needed), "lda_var_name");
        // SAFETY: NUL-terminated on success.
        assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap(), v.name);
        assert_eq!(needed, v.name.len() + 1);
    }
    let (mut vl, mut off) = (-5, 99usize);
    assert_eq!(ffi::lda_var_layout(ctx, -1, &mut vl, &mut off, std::ptr::null_mut()), ffi::LDA_ERR_INVALID_ARGUMENT);
    assert_eq!((vl, off), (-5, 99), "a failing lda_var_layout wrote its outputs");

    // H before any observation: not ready.
    let bg = background("tanh");
    let nx = bg.len();
    let mut hx = vec![-7.0; 1];
    assert_eq!(
        ffi::lda_obs_h(ctx, bg.as_ptr(), nx, hx.as_mut_ptr(), std::ptr::null_mut(), 1),
        ffi::LDA_ERR_INVALID_ARGUMENT
    );
    // Bind the background and set the sample observations.
    let mut fields: Vec<Vec<f64>> = (0..lay.variables.len()).map(|v| bg[lay.var_range(v)].to_vec()).collect();
    for (v, f) in lay.variables.iter().zip(fields.iter_mut()) {
        let name = CString::new(v.name.as_str()).unwrap();
        let shape: Vec<i64> =
            if v.is_surface() { vec![nlat as i64, nlon as i64] } else { vec![v.nlev as i64, nlat as i64, nlon as i64] };
        check(
            ctx,
            ffi::lda_bind_field_f64(ctx, name.as_ptr(), f.as_mut_ptr(), shape.len() as i32, shape.as_ptr(), 0),
            "bind",
        );
    }
    let (obs, _) = latentda::obs::read_csv(&b.join("sample/obs.csv"), &lay).unwrap();
    let n = obs.len();
    let var: Vec<i32> = obs.iter().map(|o| o.var.map(|v| v as i32).unwrap_or(-1)).collect();
    let col = |f: &dyn Fn(&latentda::Observation) -> f64| obs.iter().map(f).collect::<Vec<f64>>();
    let (lat, lon) = (col(&|o| o.lat), col(&|o| o.lon));
    let (level, value, sigma) = (col(&|o| o.level.unwrap_or(f64::NAN)), col(&|o| o.value), col(&|o| o.sigma));
    check(
        ctx,
        ffi::lda_set_obs(
            ctx,
            n,
            var.as_ptr(),
            lat.as_ptr(),
            lon.as_ptr(),
            level.as_ptr(),
            value.as_ptr(),
            sigma.as_ptr(),
        ),
        "set_obs",
    );
    let (mut hx, mut qc) = (vec![0.0; n], vec![-1i32; n]);
    check(ctx, ffi::lda_obs_h(ctx, std::ptr::null(), 0, hx.as_mut_ptr(), qc.as_mut_ptr(), n), "lda_obs_h");
    let (mut hx2, mut keep) = (vec![-7.0; n], vec![-7i32; n]);
    check(ctx, ffi::lda_obs_h(ctx, bg.as_ptr(), nx, hx2.as_mut_ptr(), std::ptr::null_mut(), n), "lda_obs_h (x)");
    assert!(hx.iter().zip(&hx2).all(|(a, b)| a.to_bits() == b.to_bits()), "bound fields and the same x given differ");
    assert!(qc.iter().any(|q| *q != ffi::LDA_QC_USED), "the sample has geometric rejections");
    for (i, q) in qc.iter().enumerate() {
        assert_eq!(hx[i].is_nan(), *q != ffi::LDA_QC_USED, "observation {i}: NaN exactly where rejected");
    }
    // Failing calls write nothing.
    assert_eq!(
        ffi::lda_obs_h(ctx, bg.as_ptr(), nx, std::ptr::null_mut(), keep.as_mut_ptr(), n),
        ffi::LDA_ERR_NULL_POINTER
    );
    assert_eq!(
        ffi::lda_obs_h(ctx, bg.as_ptr(), nx - 1, hx2.as_mut_ptr(), keep.as_mut_ptr(), n),
        ffi::LDA_ERR_INVALID_ARGUMENT
    );
    let mut bad = bg.clone();
    bad[5] = f64::NAN;
    hx2.iter_mut().for_each(|h| *h = -7.0);
    assert_eq!(
        ffi::lda_obs_h(ctx, bad.as_ptr(), nx, hx2.as_mut_ptr(), keep.as_mut_ptr(), n),
        ffi::LDA_ERR_INVALID_DATA
    );
    assert!(hx2.iter().all(|h| *h == -7.0) && keep.iter().all(|k| *k == -7), "a failing lda_obs_h wrote its outputs");
    // Adjoint over the whole sample: <H x, y> = <x, H^T y> for a random x and y.
    let mut rng = latentda::numeric::Rng::new(5);
    let x = rng.normals(nx);
    let y: Vec<f64> = rng.normals(n).iter().zip(&qc).map(|(v, q)| if *q == 0 { *v } else { f64::NAN }).collect();
    let (mut hxr, mut hty) = (vec![0.0; n], vec![0.0; nx]);
    check(ctx, ffi::lda_obs_h(ctx, x.as_ptr(), nx, hxr.as_mut_ptr(), std::ptr::null_mut(), n), "H x");
    check(ctx, ffi::lda_obs_h_ad(ctx, y.as_ptr(), n, hty.as_mut_ptr(), nx), "H^T y");
    let lhs: f64 = hxr.iter().zip(&y).filter(|(h, _)| !h.is_nan()).map(|(h, y)| h * y).sum();
    let rhs: f64 = x.iter().zip(&hty).map(|(a, b)| a * b).sum();
    assert!((lhs - rhs).abs() <= 1e-12 * lhs.abs().max(rhs.abs()), "<Hx,y> = {lhs:e}, <x,H^T y> = {rhs:e}");
    // The analysis flags the same observations, plus its background check.
    check(ctx, ffi::lda_analyse(ctx, std::ptr::null()), "analyse");
    let mut qa = vec![0i32; n];
    check(ctx, ffi::lda_obs_qc(ctx, qa.as_mut_ptr(), n), "obs_qc");
    for i in 0..n {
        let want = if qa[i] == ffi::LDA_QC_BACKGROUND_CHECK { ffi::LDA_QC_USED } else { qa[i] };
        assert_eq!(qc[i], want, "observation {i}: geometric flag {} vs analysis flag {}", qc[i], qa[i]);
    }
    // The noise floor: float32 level, deterministic per seed; the static B (float64) far below.
    let nf = |ctx: *mut LdaContext, seed: u64| {
        let (mut a, mut b2, mut c) = (0.0, 0.0, 0.0);
        check(ctx, ffi::lda_bsqrt_noise(ctx, seed, 2, &mut a, &mut b2, &mut c), "lda_bsqrt_noise");
        [a, b2, c]
    };
    let (n1, n2) = (nf(ctx, 3), nf(ctx, 3));
    println!("tanh latent U noise floor: {n1:?}");
    assert_eq!(n1, n2, "the noise floor is not deterministic per seed");
    assert!(n1[0] > 1e-9 && n1[0] < 1e-5 && n1[1] > 1e-9 && n1[1] < 1e-5 && n1[2] < 1e-5, "{n1:?}");
    let mut dummy = 0.0;
    assert_eq!(ffi::lda_bsqrt_noise(ctx, 1, 0, &mut dummy, &mut dummy, &mut dummy), ffi::LDA_ERR_INVALID_ARGUMENT);
    check(ctx, ffi::lda_close(ctx), "close");
    let opts = CString::new("b_operator = \"static\"").unwrap();
    check(ctx, ffi::lda_open(dir.as_ptr(), opts.as_ptr(), &mut ctx), "lda_open static");
    for (v, f) in lay.variables.iter().zip(fields.iter_mut()) {
        let name = CString::new(v.name.as_str()).unwrap();
        let shape: Vec<i64> =
            if v.is_surface() { vec![nlat as i64, nlon as i64] } else { vec![v.nlev as i64, nlat as i64, nlon as i64] };
        check(
            ctx,
            ffi::lda_bind_field_f64(ctx, name.as_ptr(), f.as_mut_ptr(), shape.len() as i32, shape.as_ptr(), 0),
            "bind",
        );
    }
    let ns = nf(ctx, 3);
    println!("tanh static U noise floor: {ns:?}");
    assert!(ns.iter().all(|v| *v < 1e-12), "static B (float64): {ns:?}");
    check(ctx, ffi::lda_close(ctx), "close");
}

/// Issue 26, item 6: an analysis that stops short of its gradient target says why, in the summary and in the
/// report: here the budget of TL/AD pairs (max_pairs = 2) is exhausted.
#[test]
fn a_non_converged_analysis_says_why() {
    let p = programs();
    let b = fixture("tanh");
    let opt_file = p.dir.join("budget_options.toml");
    std::fs::write(&opt_file, "max_pairs = 2\ngradient_reduction = 1e-6\n").unwrap();
    let report = p.dir.join("budget_report.json");
    let o = Command::new(common::latentda_exe())
        .args(["analyse", "--method", "l3dvar", "--bundle"])
        .arg(&b)
        .arg("--background")
        .arg(b.join("sample/background.nc"))
        .arg("--obs")
        .arg(b.join("sample/obs.csv"))
        .arg("--output")
        .arg(p.dir.join("budget.nc"))
        .arg("--report")
        .arg(&report)
        .arg("--options")
        .arg(&opt_file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(
        all.contains("NOT converged to the gradient target: budget exhausted: all max_pairs = 2 TL/AD pairs"),
        "{all}"
    );
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(rep["solver"]["converged"], false);
    assert!(rep["solver"]["stop_reason"].as_str().unwrap().starts_with("budget exhausted"), "{}", rep["solver"]);
    // and a converged one says so
    let out = Command::new(common::latentda_exe())
        .args(["analyse", "--bundle"])
        .arg(&b)
        .arg("--background")
        .arg(b.join("sample/background.nc"))
        .arg("--obs")
        .arg(b.join("sample/obs.csv"))
        .arg("--output")
        .arg(p.dir.join("converged.nc"))
        .arg("--report")
        .arg(p.dir.join("converged.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.dir.join("converged.json")).unwrap()).unwrap();
    assert_eq!(rep["solver"]["stop_reason"], "converged", "{}", rep["solver"]);
}

/// Withheld observations through the C ABI: compared in the report exactly as the library computes it from the
/// analysis written back, never assimilated (the analysis is bit for bit the one without them), cleared by n = 0.
#[test]
fn withheld_observations_through_the_c_abi() {
    let b = fixture("tanh");
    let bundle = Bundle::open(&b).unwrap();
    let lay = bundle.layout.clone();
    let (obs, _) = latentda::obs::read_csv(&b.join("sample/obs.csv"), &lay).unwrap();
    let (used, held): (Vec<_>, Vec<_>) = obs.iter().cloned().enumerate().partition(|(i, _)| i % 2 == 0);
    let (used, held): (Vec<_>, Vec<_>) =
        (used.into_iter().map(|x| x.1).collect(), held.into_iter().map(|x| x.1).collect());
    let bg = background("tanh");
    let dir = CString::new(b.to_str().unwrap()).unwrap();
    let mut ctx: *mut LdaContext = std::ptr::null_mut();
    check(ctx, ffi::lda_open(dir.as_ptr(), std::ptr::null(), &mut ctx), "lda_open");
    let mut fields: Vec<Vec<f64>> = (0..lay.variables.len()).map(|v| bg[lay.var_range(v)].to_vec()).collect();
    bind_fields(ctx, &lay, &mut fields);
    type Cols = (Vec<i32>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
    let cols = |o: &[latentda::Observation]| -> Cols {
        (
            o.iter().map(|o| o.var.map(|v| v as i32).unwrap_or(-1)).collect(),
            o.iter().map(|o| o.lat).collect(),
            o.iter().map(|o| o.lon).collect(),
            o.iter().map(|o| o.level.unwrap_or(f64::NAN)).collect(),
            o.iter().map(|o| o.value).collect(),
            o.iter().map(|o| o.sigma).collect(),
        )
    };
    let (u, h) = (cols(&used), cols(&held));
    let st = ffi::lda_set_obs(
        ctx,
        used.len(),
        u.0.as_ptr(),
        u.1.as_ptr(),
        u.2.as_ptr(),
        u.3.as_ptr(),
        u.4.as_ptr(),
        u.5.as_ptr(),
    );
    check(ctx, st, "set_obs");
    let st = ffi::lda_set_withheld(
        ctx,
        held.len(),
        h.0.as_ptr(),
        h.1.as_ptr(),
        h.2.as_ptr(),
        h.3.as_ptr(),
        h.4.as_ptr(),
        h.5.as_ptr(),
    );
    check(ctx, st, "set_withheld");
    let report = |ctx: *mut LdaContext| -> serde_json::Value {
        let mut buf = vec![0 as c_char; 1 << 22];
        let mut need = 0usize;
        check(ctx, ffi::lda_report_json(ctx, buf.as_mut_ptr(), buf.len(), &mut need), "report");
        // SAFETY: on success the buffer holds a NUL-terminated string.
        serde_json::from_slice(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_bytes()).unwrap()
    };
    check(ctx, ffi::lda_analyse(ctx, std::ptr::null::<c_char>()), "analyse");
    let with = fields.concat();
    let rep = report(ctx);
    let w: latentda::var::withheld::Withheld = serde_json::from_value(rep["withheld"].clone()).unwrap();
    assert_eq!((w.n_obs, rep["n_obs"].as_u64().unwrap() as usize), (held.len(), used.len()));
    let floors = latentda::obs::sigma_floors(&lay, &bundle.std);
    let again = latentda::var::withheld::Withheld::evaluate(&lay, &held, &bg, &with, &floors).unwrap();
    assert_eq!(w.n_used, again.n_used);
    for (x, y) in w.cells.iter().zip(&again.cells) {
        assert!((x.sum_d - y.sum_d).abs() <= 1e-12 * y.sum_d.abs().max(1.0), "{x:?} {y:?}");
    }
    assert!(w.cell("all", "global").unwrap().n > 0);
    // n = 0 clears them (NULL arrays allowed); the analysis is the same without them, bit for bit
    let null = std::ptr::null::<f64>();
    check(ctx, ffi::lda_set_withheld(ctx, 0, std::ptr::null(), null, null, null, null, null), "clear withheld");
    for (v, f) in fields.iter_mut().enumerate() {
        f.copy_from_slice(&bg[lay.var_range(v)]);
    }
    check(ctx, ffi::lda_analyse(ctx, std::ptr::null::<c_char>()), "analyse");
    assert_eq!(fields.concat(), with, "withheld observations changed the analysis");
    assert!(report(ctx).get("withheld").is_none());
    // a NULL array with n > 0 is an error naming it
    let st = ffi::lda_set_withheld(ctx, 1, h.0.as_ptr(), h.1.as_ptr(), null, h.3.as_ptr(), h.4.as_ptr(), h.5.as_ptr());
    assert_eq!(st, ffi::LDA_ERR_NULL_POINTER);
    // SAFETY: lda_last_error never returns NULL.
    let msg = unsafe { CStr::from_ptr(ffi::lda_last_error(ctx)) }.to_string_lossy().into_owned();
    assert!(msg.contains("lon"), "{msg}");
    check(ctx, ffi::lda_close(ctx), "close");
}
