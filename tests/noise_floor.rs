//! Issue 26, item 4: the float32 noise floor of the latent U, from `latentda check` (tract and ONNX Runtime) and from
//! the library call (`lda_bsqrt_noise`), on the tanh fixture at its sample background: both report the same
//! numbers for the same seed and trials, they lie at float32 level (well above float64 round-off, well below any
//! real nonlinearity), and the static B (float64) reports about 1e-16.

mod common;

use std::ffi::{CStr, CString};

use common::{cli, fixture, onnxruntime_library};
use latentda::bundle::Bundle;
use latentda::coupling::ffi::{self, LdaContext};

/// The three numbers of the `latent U float32 noise floor` line of `latentda check`.
fn check_line(out: &str) -> [f64; 3] {
    let line = out
        .lines()
        .find(|l| l.starts_with("latent U float32 noise floor"))
        .unwrap_or_else(|| panic!("no noise line:\n{out}"));
    let after = |key: &str| -> f64 {
        let rest = line.split(key).nth(1).unwrap_or_else(|| panic!("no '{key}' in {line}"));
        rest.trim_start().split([',', ';', ' ']).next().unwrap().parse().unwrap()
    };
    [after("U nonlinearity"), after("U^T nonlinearity"), after("adjoint mismatch")]
}

fn check_cli(extra: &[&str]) -> [f64; 3] {
    let b = fixture("tanh");
    let state = b.join("sample/background.nc");
    let mut args = vec!["check", b.to_str().unwrap(), "--state", state.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, out, err) = cli(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    println!("{}", out.lines().find(|l| l.contains("noise floor")).unwrap_or(""));
    check_line(&out)
}

/// lda_bsqrt_noise(seed 1, 3 trials) on the tanh fixture bound at its sample background, with `options`.
fn library_call(options: &str) -> [f64; 3] {
    let b = fixture("tanh");
    let lay = Bundle::open(&b).unwrap().layout;
    let bg = latentda::ncio::read_state(&b.join("sample/background.nc"), &lay).unwrap();
    let dir = CString::new(b.to_str().unwrap()).unwrap();
    let opts = CString::new(options).unwrap();
    let mut ctx: *mut LdaContext = std::ptr::null_mut();
    let ok = |ctx: *mut LdaContext, st: i32| {
        // SAFETY: lda_last_error never returns NULL.
        assert_eq!(st, ffi::LDA_OK, "{}", unsafe { CStr::from_ptr(ffi::lda_last_error(ctx)) }.to_string_lossy());
    };
    ok(ctx, ffi::lda_open(dir.as_ptr(), opts.as_ptr(), &mut ctx));
    let mut fields: Vec<Vec<f64>> = (0..lay.variables.len()).map(|v| bg[lay.var_range(v)].to_vec()).collect();
    for (v, f) in lay.variables.iter().zip(fields.iter_mut()) {
        let name = CString::new(v.name.as_str()).unwrap();
        let (nlat, nlon) = (lay.grid.nlat() as i64, lay.grid.nlon() as i64);
        let shape: Vec<i64> = if v.is_surface() { vec![nlat, nlon] } else { vec![v.nlev as i64, nlat, nlon] };
        ok(ctx, ffi::lda_bind_field_f64(ctx, name.as_ptr(), f.as_mut_ptr(), shape.len() as i32, shape.as_ptr(), 0));
    }
    let mut r = [0.0; 3];
    let [a, b2, c] = &mut r;
    ok(ctx, ffi::lda_bsqrt_noise(ctx, 1, 3, a, b2, c));
    ok(ctx, ffi::lda_close(ctx));
    r
}

fn assert_float32_level(what: &str, v: [f64; 3]) {
    assert!(v[0] > 1e-9 && v[0] < 1e-5, "{what}: U nonlinearity {v:?}");
    assert!(v[1] > 1e-9 && v[1] < 1e-5, "{what}: U^T nonlinearity {v:?}");
    assert!(v[2] < 1e-5, "{what}: adjoint mismatch {v:?}");
}

#[test]
fn check_and_the_library_report_the_same_float32_noise_floor() {
    let cli_tract = check_cli(&[]);
    let lib = library_call("");
    println!("check (tract): {cli_tract:?}\nlda_bsqrt_noise (tract): {lib:?}");
    assert_float32_level("check, tract", cli_tract);
    // The CLI prints two decimals: the library's values round to the same.
    for i in 0..3 {
        let rounded: f64 = format!("{:.2e}", lib[i]).parse().unwrap();
        assert_eq!(rounded, cli_tract[i], "value {i}: check {} vs library {:e}", cli_tract[i], lib[i]);
    }
    let lib_static = library_call("b_operator = \"static\"");
    println!("lda_bsqrt_noise (static B): {lib_static:?}");
    assert!(lib_static.iter().all(|v| *v < 1e-12), "the float64 static B: {lib_static:?}");
}

#[test]
fn check_reports_the_noise_floor_with_onnx_runtime() {
    let lib = onnxruntime_library();
    let ort = check_cli(&["--backend", "ort", "--ort-library", lib.to_str().unwrap()]);
    println!("check (ONNX Runtime): {ort:?}");
    assert_float32_level("check, ort", ort);
}
