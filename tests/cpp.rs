//! C++ API (include/latentda.hpp over the cxx bridge, src/coupling/cxx_bridge.rs): builds examples/cpp/driver.cpp and
//! examples/cpp/errors.cpp with the real g++ using the one command documented in examples/cpp/README.md, then checks
//! that the driver's analysis equals the CLI's on the same inputs, that errors carry the C ABI's codes and messages,
//! and that host arrays are bit-identical after a failed analysis; and (issue 25) that a panic caught inside
//! latentda reaches a C++ host as an exception, not as text on its stderr (tests/coupling/quiet_panic.cpp).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use latentda::Status;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The build command documented in examples/cpp/README.md (the line starting with `g++ -std=c++17` that builds
/// driver.cpp), rewritten for `example` (driver or errors).
fn documented_command(example: &str) -> String {
    let readme = std::fs::read_to_string(root().join("examples/cpp/README.md")).unwrap();
    let line = readme
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("g++ -std=c++17") && l.contains("examples/cpp/driver.cpp"))
        .expect("examples/cpp/README.md documents a `g++ -std=c++17 ... examples/cpp/driver.cpp ...` command")
        .to_string();
    line.replace("driver", example)
}

/// Builds an example once per test process and returns the executable. Tests run in parallel and two of them use the
/// driver: building it twice would rewrite the executable while the other test runs it ("Text file busy").
fn build(example: &str) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(|| Mutex::new(HashMap::new())).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(exe) = built.get(example) {
        return exe.clone();
    }
    let exe = build_uncached(example);
    built.insert(example.to_string(), exe.clone());
    exe
}

/// Builds an example with the documented command (run from the repository root, as the README says); returns the
/// executable. The library it links (target/release/liblatentda.a) is the one `cargo test --release` just built.
fn build_uncached(example: &str) -> PathBuf {
    // target/release/deps/<test> -> target/release: where cargo put the libraries (and the `latentda` binary).
    let lib = std::env::current_exe().unwrap().parent().and_then(Path::parent).unwrap().join("liblatentda.a");
    assert!(lib.exists(), "{} is missing (run `cargo build --release`)", lib.display());
    assert_eq!(
        lib.canonicalize().unwrap(),
        root().join("target/release/liblatentda.a").canonicalize().unwrap(),
        "the documented command links target/release/liblatentda.a; run the tests without a custom target dir"
    );
    let cmd = documented_command(example);
    let out = Command::new("sh").arg("-c").arg(&cmd).current_dir(root()).output().expect("sh");
    assert!(
        out.status.success(),
        "documented build command failed:\n{cmd}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let exe = cmd.split_whitespace().skip_while(|w| *w != "-o").nth(1).expect("-o OUTPUT in the command");
    let exe = root().join(exe);
    assert!(exe.exists(), "{} was not produced", exe.display());
    exe
}

fn run(exe: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(exe).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parses the driver's output: "name count v..." lines and a final "qc count f..." line.
fn parse_driver_output(path: &Path) -> (Vec<(String, Vec<f64>)>, Vec<i32>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut fields = Vec::new();
    let mut qc = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let name = w.next().unwrap().to_string();
        let n: usize = w.next().unwrap().parse().unwrap();
        if name == "qc" {
            qc = w.map(|s| s.parse().unwrap()).collect();
            assert_eq!(qc.len(), n);
        } else {
            let v: Vec<f64> = w.map(|s| s.parse().unwrap()).collect();
            assert_eq!(v.len(), n, "field {name}");
            fields.push((name, v));
        }
    }
    (fields, qc)
}

fn read_nc(path: &Path, name: &str) -> Vec<f64> {
    let f = netcdf::open(path).unwrap();
    f.variable(name).unwrap_or_else(|| panic!("{} has no '{name}'", path.display())).get_values::<f64, _>(..).unwrap()
}

#[test]
fn cpp_driver_matches_cli() {
    let sample = common::fixture("tanh").join("sample");
    let dir = common::scratch("cpp_driver_matches_cli");
    let bundle = common::fixture("tanh");
    let (bg, obs) = (sample.join("background.nc"), sample.join("obs.csv"));
    let (an_cli, report) = (dir.join("an_cli.nc"), dir.join("report.json"));
    let (code, _, err) = common::cli(&[
        "analyse",
        "--bundle",
        bundle.to_str().unwrap(),
        "--background",
        bg.to_str().unwrap(),
        "--obs",
        obs.to_str().unwrap(),
        "--output",
        an_cli.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "CLI analyse failed: {err}");

    let driver = build("driver");
    let an_cpp = dir.join("an_cpp.txt");
    let (code, out, err) = run(
        &driver,
        &[bundle.to_str().unwrap(), bg.to_str().unwrap(), obs.to_str().unwrap(), an_cpp.to_str().unwrap()],
    );
    assert_eq!(code, 0, "C++ driver failed:\n{out}\n{err}");
    assert!(out.contains("O-B rms") && out.contains("O-A rms"), "driver prints O-B/O-A statistics:\n{out}");
    println!("{out}");

    let (fields, qc) = parse_driver_output(&an_cpp);
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["u", "t", "ps"], "the driver binds every bundle variable");
    let bgs: Vec<Vec<f64>> = names.iter().map(|n| read_nc(&bg, n)).collect();
    for ((name, cpp), b) in fields.iter().zip(&bgs) {
        let cli = read_nc(&an_cli, name);
        let rel = common::max_rel_diff(cpp, &cli);
        println!("{name}: max |C++ - CLI| / max|CLI| = {rel:.3e}");
        assert!(rel <= 1e-6, "{name}: C++ analysis differs from the CLI's by {rel:e} (relative)");
        // Element-wise as well, relative to each value's magnitude.
        for (i, (a, c)) in cpp.iter().zip(&cli).enumerate() {
            assert!((a - c).abs() <= 1e-6 * c.abs().max(1e-12), "{name}[{i}]: C++ {a} vs CLI {c}");
        }
        assert!(common::max_rel_diff(cpp, b) > 1e-6, "{name}: the analysis must differ from the background");
    }

    // Same QC outcome as the CLI's report: 60 used, and the three bad rows rejected.
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(qc.len(), 63);
    let used = qc.iter().filter(|&&f| f == 0).count();
    assert_eq!(used as u64, rep["n_used"].as_u64().unwrap());
    assert_eq!(used, 60);
    assert_eq!(
        &qc[60..],
        &[4, 1, 3],
        "QC flags of the last three rows: unknown variable, invalid sigma, outside vertical"
    );

    // Float host arrays: same analysis to float precision.
    let an_f32 = dir.join("an_cpp_f32.txt");
    let (code, out, err) = run(
        &driver,
        &[bundle.to_str().unwrap(), bg.to_str().unwrap(), obs.to_str().unwrap(), an_f32.to_str().unwrap(), "--float"],
    );
    assert_eq!(code, 0, "C++ driver (--float) failed:\n{out}\n{err}");
    let (fields32, _) = parse_driver_output(&an_f32);
    for (name, v) in &fields32 {
        let rel = common::max_rel_diff(v, &read_nc(&an_cli, name));
        assert!(rel <= 1e-5, "{name} (float): relative difference {rel:e}");
    }
}

/// Message of the last C ABI failure on `ctx` (or of lda_open with a null ctx).
fn c_last_error(ctx: *const latentda::coupling::ffi::LdaContext) -> String {
    // SAFETY: lda_last_error returns a valid NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(latentda::coupling::ffi::lda_last_error(ctx)) }.to_string_lossy().into_owned()
}

#[test]
fn cpp_errors_have_c_abi_codes_and_messages_and_leave_arrays_untouched() {
    let exe = build("errors");
    let bundle = common::fixture("tanh");
    let (code, out, err) = run(&exe, &[bundle.to_str().unwrap()]);
    println!("{out}");
    assert_eq!(code, 0, "errors example reported failures:\n{out}\n{err}");
    assert!(out.contains("all checks done, 0 failures"), "{out}");
    let case = |name: &str| -> (i32, String) {
        let l = out
            .lines()
            .find(|l| l.starts_with(&format!("case={name} code=")))
            .unwrap_or_else(|| panic!("no line for case {name}:\n{out}"));
        let rest = l.split_once(" code=").unwrap().1;
        let (c, w) = rest.split_once(" what=").unwrap_or((rest, ""));
        (c.parse().unwrap(), w.to_string())
    };

    // Bad bundle path: LDA_ERR_BUNDLE and the same message as lda_open.
    let bad = "/nonexistent/latentda-bundle";
    let (c, what) = case("bad_bundle");
    assert_eq!(c, Status::Bundle as i32);
    assert_eq!(what, format!("bundle directory '{bad}' does not exist"));
    let cbad = std::ffi::CString::new(bad).unwrap();
    let mut ctx: *mut latentda::coupling::ffi::LdaContext = std::ptr::null_mut();
    let st = latentda::coupling::ffi::lda_open(cbad.as_ptr(), std::ptr::null(), &mut ctx);
    assert_eq!((st as i32, c_last_error(std::ptr::null())), (c, what.clone()), "C++ and C ABI agree on a bad bundle");

    // Wrong shape (lat/lon swapped): LDA_ERR_INVALID_ARGUMENT and the C ABI's message.
    let (c, what) = case("wrong_shape");
    assert_eq!(c, Status::InvalidArgument as i32);
    assert_eq!(what, "bind_field 'u': shape [3, 16, 8] does not match the bundle grid; expected [3, 8, 16] in C (lev, lat, lon) order");
    let cdir = std::ffi::CString::new(bundle.to_str().unwrap()).unwrap();
    assert_eq!(latentda::coupling::ffi::lda_open(cdir.as_ptr(), std::ptr::null(), &mut ctx) as i32, 0);
    let mut u = vec![0.0f64; 384];
    let shape = [3i64, 16, 8];
    let st = latentda::coupling::ffi::lda_bind_field_f64(ctx, c"u".as_ptr(), u.as_mut_ptr(), 3, shape.as_ptr(), 0);
    assert_eq!((st as i32, c_last_error(ctx)), (c, what), "C++ and C ABI agree on a wrong shape");
    latentda::coupling::ffi::lda_close(ctx);

    let (c, what) = case("wrong_ndim");
    assert_eq!(c, 2);
    assert!(what.starts_with("bind_field 'ps': ndim = 3, but 'ps' is a surface field"), "{what}");
    let (c, what) = case("wrong_length");
    assert_eq!(c, 2);
    assert_eq!(what, "bind_field 'u': the array has 100 values but shape [3, 8, 16] describes 384; 'u' needs 384");
    let (c, what) = case("unknown_variable");
    assert_eq!(c, 2);
    assert!(what.contains("variable 'w' is not in the bundle"), "{what}");
    assert_eq!(case("null_data"), (1, "bind_field 't': data is NULL".to_string()));
    assert_eq!(case("obs_length").0, 2);
    assert_eq!(case("bad_options").0, 2);
    assert_eq!(case("qc_before_analysis").0, Status::NotReady as i32);
    assert_eq!(case("moved_from").0, 1);

    // Failed analyses leave every bound array bit-identical.
    let (c, what) = case("field_not_bound");
    assert_eq!(c, Status::NotReady as i32);
    assert!(what.contains("field 'ps' is not bound"), "{what}");
    let (c, what) = case("nan_in_field");
    assert_eq!(c, Status::InvalidData as i32);
    assert!(what.contains('u'), "the message names the field: {what}");
    assert_eq!(case("bad_method").0, 2);
    for name in ["field_not_bound", "nan_in_field", "bad_method"] {
        assert!(
            out.contains(&format!("case={name} untouched=1")),
            "{name}: host arrays modified by a failed analyse\n{out}"
        );
    }
    assert!(out.contains("case=valid_analysis changed=1"), "{out}");
    assert!(out.contains("case=hybrid_analysis qc="), "{out}");
    assert_eq!(case("bvariance_wrong_length").0, Status::InvalidArgument as i32);
    assert!(out.contains("case=bvariance positive=1 n=896 same_draw=1"), "{out}");
    assert_eq!(case("brandomize_wrong_length").0, Status::InvalidArgument as i32);
    // Issue 14: overlapping memory (items 4 and 5).
    let (c, what) = case("overlapping_binding");
    assert_eq!(c, Status::InvalidArgument as i32);
    assert!(what.contains("overlaps the array bound to 'u'"), "{what}");
    assert!(out.contains("case=bsqrt_in_place same=1"), "{out}");
    assert_eq!(case("bsqrt_wrong_length").0, Status::InvalidArgument as i32);
}

/// The C++ driver's hybrid analysis equals the CLI's (`--method hybrid`, weights and variables from options).
#[test]
fn cpp_driver_hybrid_matches_cli() {
    let bundle = common::fixture("tanh");
    let sample = bundle.join("sample");
    let dir = common::scratch("cpp_driver_hybrid_matches_cli");
    let (bg, obs) = (sample.join("background.nc"), sample.join("obs.csv"));
    let opts = dir.join("opts.toml");
    let text = "hybrid_alpha = 0.5\nhybrid_beta = 2.0\nhybrid_variables = [\"t\", \"ps\"]\n";
    std::fs::write(&opts, text).unwrap();
    let an_cli = dir.join("an_cli.nc");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (code, _, err) = common::cli(&[
        "analyse",
        "--bundle",
        &s(&bundle),
        "--background",
        &s(&bg),
        "--obs",
        &s(&obs),
        "--output",
        &s(&an_cli),
        "--options",
        &s(&opts),
        "--method",
        "hybrid",
    ]);
    assert_eq!(code, 0, "CLI hybrid failed: {err}");
    let driver = build("driver");
    let an_cpp = dir.join("an_cpp.txt");
    let (code, out, err) =
        run(&driver, &[&s(&bundle), &s(&bg), &s(&obs), &s(&an_cpp), "--method", "hybrid", "--options", text]);
    assert_eq!(code, 0, "C++ driver (hybrid) failed:\n{out}\n{err}");
    let (fields, _) = parse_driver_output(&an_cpp);
    for (name, cpp) in &fields {
        let cli = read_nc(&an_cli, name);
        let rel = common::max_rel_diff(cpp, &cli);
        println!("hybrid {name}: max |C++ - CLI| / max|CLI| = {rel:.3e}");
        assert!(rel <= 1e-6, "{name}: C++ hybrid analysis differs from the CLI's by {rel:e}");
        assert!(common::max_rel_diff(cpp, &read_nc(&bg, name)) > 1e-6, "{name}: unchanged by the hybrid analysis");
    }
}

/// Issue 25, item 6: a C++ host opening a bundle whose graph makes tract panic (tests/corpus/onnx/
/// decoder_tl.seed2.onnx, checksum refreshed) gets latentda::Error with status::bundle and the panic's text, and its
/// stderr stays empty (before: "thread '<unnamed>' panicked at ..." was printed there). Built with the documented
/// command, for tests/coupling/quiet_panic.cpp.
#[test]
fn cpp_host_sees_a_caught_panic_as_an_error_and_nothing_on_stderr() {
    let b = common::copy_fixture("tanh", "quiet_panic_cpp");
    std::fs::copy(root().join("tests/corpus/onnx/decoder_tl.seed2.onnx"), b.join("decoder_tl.onnx")).unwrap();
    common::refresh_checksum(&b, "decoder_tl.onnx");
    let cmd = documented_command("driver")
        .replace("examples/cpp/driver.cpp", "tests/coupling/quiet_panic.cpp")
        .replace("target/cpp-driver", "target/cpp-quiet-panic");
    let out = Command::new("sh").arg("-c").arg(&cmd).current_dir(root()).output().expect("sh");
    assert!(out.status.success(), "{cmd}\n{}", String::from_utf8_lossy(&out.stderr));
    let (code, out, err) = run(&root().join("target/cpp-quiet-panic"), &[b.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    let what =
        out.trim().strip_prefix(&format!("code={} what=", Status::Bundle as i32)).unwrap_or_else(|| panic!("{out}"));
    assert!(
        what.contains("decoder_tl.onnx") && what.contains("internal panic") && what.contains("out of range"),
        "{what}"
    );
    assert!(err.trim().is_empty(), "the C++ host's stderr is not empty:\n{err}");
}

/// Issue 26 from C++ (tests/coupling/obs_service.cpp, built with the documented command): Context::grid and
/// Context::variables describe the bundle and the state layout, the background binds through them, obs_h gives the
/// geometric QC flags and, for one used observation per variable, the analysis's own H x_b bit for bit (the
/// report's O-B mean of each variable equals value - H x_b to the last bit), obs_h_ad is its transpose, and
/// bsqrt_noise reports a float32 noise floor.
#[test]
fn cpp_layout_and_h_service() {
    let cmd = documented_command("driver")
        .replace("examples/cpp/driver.cpp", "tests/coupling/obs_service.cpp")
        .replace("target/cpp-driver", "target/cpp-obs-service");
    let out = Command::new("sh").arg("-c").arg(&cmd).current_dir(root()).output().expect("sh");
    assert!(out.status.success(), "{cmd}\n{}", String::from_utf8_lossy(&out.stderr));
    let dir = common::scratch("cpp_layout_and_h_service");
    let bundle = common::fixture("tanh");
    let layout = latentda::bundle::Bundle::open(&bundle).unwrap().layout;
    let bg = latentda::bundle::ncio::read_state(&bundle.join("sample/background.nc"), &layout).unwrap();
    let bg_bin = dir.join("background.bin");
    std::fs::write(&bg_bin, bg.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let report = dir.join("report.json");
    let (code, out, err) = run(
        &root().join("target/cpp-obs-service"),
        &[bundle.to_str().unwrap(), bg_bin.to_str().unwrap(), report.to_str().unwrap()],
    );
    println!("{out}");
    assert!(code == 0 && out.contains("PASSED") && !out.contains("FAIL"), "{out}\n{err}");
    let omb: Vec<f64> = out
        .lines()
        .find_map(|l| l.strip_prefix("O-B (service): "))
        .unwrap_or_else(|| panic!("no O-B line:\n{out}"))
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    for (i, name) in ["u", "t", "ps"].iter().enumerate() {
        let v = rep["variables"].as_array().unwrap().iter().find(|v| v["name"] == *name).unwrap();
        assert_eq!(v["n_used"], 1, "{name}: one used observation");
        let r = v["omb_mean"].as_f64().unwrap();
        assert_eq!(
            r.to_bits(),
            omb[i].to_bits(),
            "{name}: report O-B {r:e} vs value - H x_b of the service {:e}",
            omb[i]
        );
    }
}

/// Issue 23, item 6: the C++ class's step model (tests/coupling/step_model.cpp, built with the documented command).
/// From std::function lambdas and from the C ABI's callbacks it gives the C ABI's l4dvar analysis bit for bit;
/// l4dvar_check and report_number equal lda_l4dvar_check and lda_report_number; a step function's exception comes
/// out of analyse with the arrays untouched; a call on the Context from inside its step model is refused
/// (status::not_ready); clear_step_model brings back the bundle's model; a moved Context keeps its model.
#[test]
fn cpp_step_model_l4dvar_check_and_report_number() {
    let cmd = documented_command("driver")
        .replace("examples/cpp/driver.cpp", "tests/coupling/step_model.cpp")
        .replace("target/cpp-driver", "target/cpp-step-model");
    let out = Command::new("sh").arg("-c").arg(&cmd).current_dir(root()).output().expect("sh");
    assert!(out.status.success(), "{cmd}\n{}", String::from_utf8_lossy(&out.stderr));
    let dir = common::scratch("cpp_step_model");
    let bundle = common::fixture("tanh");
    let layout = latentda::bundle::Bundle::open(&bundle).unwrap().layout;
    let bg = latentda::bundle::ncio::read_state(&bundle.join("sample/background.nc"), &layout).unwrap();
    let bg_bin = dir.join("background.bin");
    std::fs::write(&bg_bin, bg.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let (code, out, err) =
        run(&root().join("target/cpp-step-model"), &[bundle.to_str().unwrap(), bg_bin.to_str().unwrap()]);
    println!("{out}");
    assert!(code == 0 && out.contains("PASSED") && !out.contains("FAIL"), "{out}\n{err}");
    assert!(err.trim().is_empty(), "stderr: {err}");
}
