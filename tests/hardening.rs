//! Hardening (issue 14): hostile files, arguments and call sequences give errors, never an abort, a panic that
//! escapes, memory corruption or a silently wrong analysis. Each test names the issue item it guards.

mod common;

use std::ffi::{c_char, CStr, CString};
use std::path::Path;

use common::*;
use latentda::coupling::ffi::{self, LdaContext};

/// The message of the last failure on `ctx` (NULL: this thread's last context-less failure).
fn last_error(ctx: *const LdaContext) -> String {
    // SAFETY: lda_last_error never returns NULL; the string lives until the next failing call.
    unsafe { CStr::from_ptr(ffi::lda_last_error(ctx)) }.to_string_lossy().into_owned()
}

/// `lda_open` through the C ABI: Ok(context) or Err((status, message)).
fn c_open(dir: &Path, options: Option<&str>) -> Result<*mut LdaContext, (i32, String)> {
    let d = CString::new(dir.to_str().unwrap()).unwrap();
    let o = options.map(|s| CString::new(s).unwrap());
    let mut ctx: *mut LdaContext = std::ptr::null_mut();
    let st = ffi::lda_open(d.as_ptr(), o.as_ref().map_or(std::ptr::null(), |o| o.as_ptr()), &mut ctx);
    if st == ffi::LDA_OK {
        Ok(ctx)
    } else {
        assert!(ctx.is_null(), "a failed lda_open must leave *out NULL");
        Err((st, last_error(std::ptr::null())))
    }
}

// ---- item 1: corrupt ONNX graphs whose checksum matches

/// Twelve mutations of the tanh fixture's graphs (4 flipped bits each, tests/corpus/README.md) that aborted the
/// process before the fix: tract panicked inside ort's `extern "C"` functions, which cannot unwind. Each must now
/// be a bundle error naming the file, through the C ABI, in this process.
#[test]
fn corrupt_onnx_graphs_that_used_to_abort_are_bundle_errors() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/onnx");
    let mut n = 0;
    let mut files: Vec<_> = std::fs::read_dir(&corpus).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for p in files {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let Some((role, _)) = name.split_once(".seed") else { continue };
        let target = format!("{role}.onnx");
        let b = copy_fixture("tanh", &format!("corrupt_onnx_{n}"));
        std::fs::copy(&p, b.join(&target)).unwrap();
        refresh_checksum(&b, &target);
        match c_open(&b, None) {
            Ok(ctx) => panic!("{name}: a corrupt {target} opened ({})", ffi::lda_close(ctx)),
            Err((st, msg)) => {
                assert_eq!(st, ffi::LDA_ERR_BUNDLE, "{name}: {msg}");
                assert!(msg.contains(&target) && msg.contains("cannot load ONNX graph"), "{name}: {msg}");
            }
        }
        n += 1;
    }
    assert_eq!(n, 12, "expected the 12 corpus graphs");
}
