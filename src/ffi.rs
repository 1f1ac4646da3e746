//! C ABI (`include/latentda.h`, generated from this file by cbindgen in `build.rs`).
//!
//! Conventions (rustls-ffi style): an opaque handle, every function returns an `int32_t` status (`LDA_OK` = 0),
//! every pointer is checked for NULL, every entry point catches panics (`LDA_ERR_INTERNAL`), and nothing here ever
//! aborts the host. Bound host arrays are read at `lda_analyse` and written only after the whole analysis succeeded.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use crate::error::{Error, Result, Status};
use crate::host::{HostContext, HostData};

/// Success.
pub const LDA_OK: i32 = 0;
/// A required pointer argument was NULL.
pub const LDA_ERR_NULL_POINTER: i32 = 1;
/// An argument was invalid (unknown name, wrong shape, wrong length, bad option).
pub const LDA_ERR_INVALID_ARGUMENT: i32 = 2;
/// The bundle is missing, malformed or fails validation.
pub const LDA_ERR_BUNDLE: i32 = 3;
/// The execution backend or device cannot be used.
pub const LDA_ERR_BACKEND: i32 = 4;
/// File input/output failed.
pub const LDA_ERR_IO: i32 = 5;
/// Input data are invalid (NaN/Inf in a bound field or observation array).
pub const LDA_ERR_INVALID_DATA: i32 = 6;
/// Not ready: a field is not bound, no observations were set, or no analysis has run yet.
pub const LDA_ERR_NOT_READY: i32 = 7;
/// The minimisation failed.
pub const LDA_ERR_SOLVER: i32 = 8;
/// Internal error (a caught panic); close the context.
pub const LDA_ERR_INTERNAL: i32 = 9;
/// An output buffer is too small; the needed size was returned.
pub const LDA_ERR_BUFFER_TOO_SMALL: i32 = 10;

/// QC flag: observation used.
pub const LDA_QC_USED: i32 = 0;
/// QC flag: invalid value, position, level, or error sd <= 0.
pub const LDA_QC_INVALID: i32 = 1;
/// QC flag: outside the horizontal grid.
pub const LDA_QC_OUTSIDE_DOMAIN: i32 = 2;
/// QC flag: outside the vertical range.
pub const LDA_QC_OUTSIDE_VERTICAL: i32 = 3;
/// QC flag: unknown variable index.
pub const LDA_QC_UNKNOWN_VARIABLE: i32 = 4;
/// QC flag: background check failed.
pub const LDA_QC_BACKGROUND_CHECK: i32 = 5;

/// Array order: C (row-major), shape (nlev, nlat, nlon) or (nlat, nlon).
pub const LDA_ORDER_C: i32 = 0;
/// Array order: Fortran (column-major), shape (nlon, nlat, nlev) or (nlon, nlat) in Fortran terms.
pub const LDA_ORDER_FORTRAN: i32 = 1;

/// Opaque latentda context: one opened bundle, its ONNX sessions, the bound host arrays and the observations.
///
/// A context may be used from one thread at a time; different contexts may be used concurrently from different
/// threads. `lda_last_error` may be called from any thread.
pub struct LdaContext {
    inner: Mutex<HostContext>,
    last_error: Mutex<CString>,
}

thread_local! {
    static OPEN_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

fn set_error(ctx: Option<&LdaContext>, e: &Error) -> i32 {
    match ctx {
        Some(c) => {
            let mut g = c.last_error.lock().unwrap_or_else(|p| p.into_inner());
            *g = cstring(&e.message);
        }
        None => OPEN_ERROR.with(|o| *o.borrow_mut() = cstring(&e.message)),
    }
    e.code()
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let m = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error (panic caught at the C boundary): {m}")
}

/// Runs `f` on the context with panics caught and the error recorded.
fn with_ctx(ctx: *mut LdaContext, f: impl FnOnce(&mut HostContext) -> Result<()>) -> i32 {
    if ctx.is_null() {
        return set_error(None, &Error::new(Status::NullPointer, "context is NULL"));
    }
    // SAFETY: non-null pointers passed here were returned by lda_open and not yet closed (documented contract).
    let c: &LdaContext = unsafe { &*ctx };
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut g = c.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }));
    match r {
        Ok(Ok(())) => LDA_OK,
        Ok(Err(e)) => set_error(Some(c), &e),
        Err(p) => set_error(Some(c), &Error::new(Status::Internal, panic_message(p))),
    }
}

fn null(what: &str) -> Error {
    Error::new(Status::NullPointer, format!("argument '{what}' is NULL"))
}

/// Reads a NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(null(what));
    }
    CStr::from_ptr(p).to_str().map_err(|_| Error::arg(format!("argument '{what}' is not valid UTF-8")))
}

/// Opens a bundle and creates a context.
///
/// `bundle_dir`: path of the bundle directory (NUL-terminated, UTF-8). `options`: NULL for defaults, or a TOML
/// string (see docs/coupling.md: backend, device, threads, output, outer_loops, max_inner, gradient_reduction,
/// bg_check, verbosity, method). On success `*out` receives a context that must be released with `lda_close`.
/// On failure `*out` is set to NULL and the message is available from `lda_last_error(NULL)` on the same thread.
#[no_mangle]
pub extern "C" fn lda_open(bundle_dir: *const c_char, options: *const c_char, out: *mut *mut LdaContext) -> i32 {
    let r = catch_unwind(|| -> Result<*mut LdaContext> {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: out checked non-null; the caller provides a writable pointer.
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: strings are NUL-terminated per the contract.
        let dir = unsafe { c_str(bundle_dir, "bundle_dir") }?;
        let opts = if options.is_null() { None } else { Some(unsafe { c_str(options, "options") }?) };
        let host = HostContext::open(dir, opts)?;
        let ctx = LdaContext { inner: Mutex::new(host), last_error: Mutex::new(CString::default()) };
        Ok(Box::into_raw(Box::new(ctx)))
    });
    match r {
        Ok(Ok(p)) => {
            // SAFETY: out was checked non-null inside the closure before success was possible.
            unsafe { *out = p };
            LDA_OK
        }
        Ok(Err(e)) => set_error(None, &e),
        Err(p) => set_error(None, &Error::new(Status::Internal, panic_message(p))),
    }
}

/// Releases a context and everything it owns. NULL is accepted and ignored. Bound host arrays are not touched.
#[no_mangle]
pub extern "C" fn lda_close(ctx: *mut LdaContext) -> i32 {
    if ctx.is_null() {
        return LDA_OK;
    }
    let r = catch_unwind(|| {
        // SAFETY: ctx was returned by lda_open and is closed once (documented contract).
        drop(unsafe { Box::from_raw(ctx) });
    });
    match r {
        Ok(()) => LDA_OK,
        Err(p) => set_error(None, &Error::new(Status::Internal, panic_message(p))),
    }
}

/// Message of the last failed call on `ctx` (empty if none). With `ctx` NULL: the last `lda_open` failure (or NULL
/// context error) on the calling thread. The pointer stays valid until the next failing call on the same context
/// (or thread, for NULL) and must not be freed.
#[no_mangle]
pub extern "C" fn lda_last_error(ctx: *const LdaContext) -> *const c_char {
    let r = catch_unwind(|| {
        if ctx.is_null() {
            OPEN_ERROR.with(|o| o.borrow().as_ptr())
        } else {
            // SAFETY: ctx is a live context (contract). The CString buffer lives in the context and is replaced
            // only by a later failing call.
            let c = unsafe { &*ctx };
            let g = c.last_error.lock().unwrap_or_else(|p| p.into_inner());
            g.as_ptr()
        }
    });
    r.unwrap_or(c"internal error while reading the last error".as_ptr())
}

/// Index of a bundle variable by name (an identifier for `lda_set_obs`; 0-based channel-order position).
#[no_mangle]
pub extern "C" fn lda_var_index(ctx: *mut LdaContext, name: *const c_char, index_out: *mut i32) -> i32 {
    with_ctx(ctx, |inner| {
        // SAFETY: NUL-terminated string per contract.
        let name = unsafe { c_str(name, "name") }?;
        if index_out.is_null() {
            return Err(null("index_out"));
        }
        let i = inner.var_index(name)?;
        // SAFETY: checked non-null.
        unsafe { *index_out = i as i32 };
        Ok(())
    })
}

fn bind(ctx: *mut LdaContext, name: *const c_char, data: HostData, ndim: i32, shape: *const i64, order: i32) -> i32 {
    with_ctx(ctx, |inner| {
        // SAFETY: NUL-terminated string per contract.
        let name = unsafe { c_str(name, "name") }?;
        if shape.is_null() {
            return Err(null("shape"));
        }
        if !(1..=3).contains(&ndim) {
            return Err(Error::arg(format!("lda_bind_field '{name}': ndim = {ndim} must be 2 or 3")));
        }
        // SAFETY: shape points to ndim values (contract).
        let shape = unsafe { std::slice::from_raw_parts(shape, ndim as usize) };
        // SAFETY: the host keeps the array valid while bound (documented contract of lda_bind_field_*).
        unsafe { inner.bind(name, data, shape, order) }
    })
}

/// Binds a host float array to a bundle variable. The array must stay valid (not freed or moved) until it is bound
/// again, or the context is closed; it is read by `lda_analyse` and written only when an analysis succeeds.
/// `ndim` is 3 for upper-air fields and 2 for surface fields; `shape` has `ndim` entries: (nlev, nlat, nlon) for
/// `order` = `LDA_ORDER_C`, (nlon, nlat, nlev) for `LDA_ORDER_FORTRAN`. Latitudes run north to south, longitudes
/// eastwards from the bundle's first longitude.
#[no_mangle]
pub extern "C" fn lda_bind_field_f32(ctx: *mut LdaContext, name: *const c_char, data: *mut f32, ndim: i32, shape: *const i64, order: i32) -> i32 {
    bind(ctx, name, HostData::F32(data), ndim, shape, order)
}

/// Binds a host double array to a bundle variable; see `lda_bind_field_f32`.
#[no_mangle]
pub extern "C" fn lda_bind_field_f64(ctx: *mut LdaContext, name: *const c_char, data: *mut f64, ndim: i32, shape: *const i64, order: i32) -> i32 {
    bind(ctx, name, HostData::F64(data), ndim, shape, order)
}

/// Sets the observations for the next analysis (copied; the arrays may be freed after the call). `n` may be 0.
/// `var` holds identifiers from `lda_var_index`; `level` is in the bundle's vertical coordinate and ignored for
/// surface variables (pass any value, e.g. NaN); `sigma` is the observation error standard deviation.
/// Invalid observations are not an error here: they are flagged by QC at the analysis.
#[no_mangle]
pub extern "C" fn lda_set_obs(
    ctx: *mut LdaContext,
    n: usize,
    var: *const i32,
    lat: *const f64,
    lon: *const f64,
    level: *const f64,
    value: *const f64,
    sigma: *const f64,
) -> i32 {
    with_ctx(ctx, |inner| {
        let names = ["var", "lat", "lon", "level", "value", "sigma"];
        let ptrs = [var as *const u8, lat as _, lon as _, level as _, value as _, sigma as _];
        if n > 0 {
            if let Some(i) = ptrs.iter().position(|p| p.is_null()) {
                return Err(null(names[i]));
            }
        }
        let sl = |p: *const f64| -> &[f64] {
            // SAFETY: each array holds n values (contract); n == 0 never dereferences.
            if n == 0 { &[] } else { unsafe { std::slice::from_raw_parts(p, n) } }
        };
        // SAFETY: as above.
        let vars: &[i32] = if n == 0 { &[] } else { unsafe { std::slice::from_raw_parts(var, n) } };
        let (la, lo, le, va, si) = (sl(lat), sl(lon), sl(level), sl(value), sl(sigma));
        inner.set_obs(vars, la, lo, le, va, si)
    })
}

/// Runs an analysis: reads every bound field as the background, assimilates the observations set by
/// `lda_set_obs`, and on success writes the result (per option `output`: analysis, increment or full_state) back
/// into the bound arrays. On any failure the bound arrays are left bit-identical. `method`: NULL for the option's
/// default, or "l3dvar" / "3dvar". Rejected observations never make the analysis fail; see `lda_obs_qc`.
#[no_mangle]
pub extern "C" fn lda_analyse(ctx: *mut LdaContext, method: *const c_char) -> i32 {
    with_ctx(ctx, |inner| {
        // SAFETY: NUL-terminated string per contract.
        let m = if method.is_null() { None } else { Some(unsafe { c_str(method, "method") }?) };
        inner.analyse(m)
    })
}

/// Copies the QC flag of every observation of the last successful analysis into `flags_out` (`n` must equal the
/// number of observations set). Flags: `LDA_QC_*`.
#[no_mangle]
pub extern "C" fn lda_obs_qc(ctx: *mut LdaContext, flags_out: *mut i32, n: usize) -> i32 {
    with_ctx(ctx, |inner| {
        let qc = inner.obs_qc()?;
        if n != qc.len() {
            return Err(Error::arg(format!("lda_obs_qc: n = {n}, but the last analysis had {} observations", qc.len())));
        }
        if n > 0 && flags_out.is_null() {
            return Err(null("flags_out"));
        }
        for (i, f) in qc.iter().enumerate() {
            // SAFETY: flags_out holds n values (contract).
            unsafe { *flags_out.add(i) = *f as i32 };
        }
        Ok(())
    })
}

/// Copies the JSON report of the last successful analysis into `buf` (NUL-terminated). `*needed` receives the size
/// including the NUL; if `buf` is NULL or `len` is too small, nothing is copied and `LDA_ERR_BUFFER_TOO_SMALL` is
/// returned (call again with a larger buffer).
#[no_mangle]
pub extern "C" fn lda_report_json(ctx: *mut LdaContext, buf: *mut c_char, len: usize, needed: *mut usize) -> i32 {
    with_ctx(ctx, |inner| {
        let rep = cstring(inner.report_json()?);
        let bytes = rep.as_bytes_with_nul();
        if !needed.is_null() {
            // SAFETY: checked non-null.
            unsafe { *needed = bytes.len() };
        }
        if buf.is_null() || len < bytes.len() {
            return Err(Error::new(Status::BufferTooSmall, format!("report needs {} bytes, buffer has {len}", bytes.len())));
        }
        // SAFETY: buf holds len >= bytes.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, buf, bytes.len()) };
        Ok(())
    })
}

/// Size of the latent B operator's control vector (the latent size).
#[no_mangle]
pub extern "C" fn lda_control_size(ctx: *mut LdaContext, n_out: *mut usize) -> i32 {
    with_ctx(ctx, |inner| {
        if n_out.is_null() {
            return Err(null("n_out"));
        }
        // SAFETY: checked non-null.
        unsafe { *n_out = inner.control_size() };
        Ok(())
    })
}

/// Size of a full model state (channels x nlat x nlon), the length of buffers for `lda_bsqrt`/`lda_bsqrt_ad`.
#[no_mangle]
pub extern "C" fn lda_state_size(ctx: *mut LdaContext, n_out: *mut usize) -> i32 {
    with_ctx(ctx, |inner| {
        if n_out.is_null() {
            return Err(null("n_out"));
        }
        // SAFETY: checked non-null.
        unsafe { *n_out = inner.state_size() };
        Ok(())
    })
}

/// Linearises the latent B operator at the background currently in the bound arrays (z_b = E(N(x_b))). Called
/// implicitly by the first `lda_bsqrt`/`lda_bsqrt_ad` after binding; call it again after the background changed.
#[no_mangle]
pub extern "C" fn lda_b_linearise(ctx: *mut LdaContext) -> i32 {
    with_ctx(ctx, |inner| inner.b_linearise())
}

/// x = U v: the model-space increment (physical units) of control vector `v` (length `lda_control_size`).
/// `x_out` receives `nx` = `lda_state_size` values in state layout (channel-major: variables in bundle order, levels
/// top to bottom, then lat north to south, lon fastest); with `x_out` NULL the increment is written into the bound
/// arrays instead (their background is then replaced; the linearisation point is kept).
#[no_mangle]
pub extern "C" fn lda_bsqrt(ctx: *mut LdaContext, v: *const f64, nv: usize, x_out: *mut f64, nx: usize) -> i32 {
    with_ctx(ctx, |inner| {
        if v.is_null() && nv > 0 {
            return Err(null("v"));
        }
        // SAFETY: v holds nv values (contract).
        let vs = if nv == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(v, nv) } };
        if x_out.is_null() {
            inner.bsqrt(vs, None)
        } else {
            // SAFETY: x_out holds nx values (contract).
            inner.bsqrt(vs, Some(unsafe { std::slice::from_raw_parts_mut(x_out, nx) }))
        }
    })
}

/// v = U^T x: the adjoint of `lda_bsqrt`. `x` has `nx` = `lda_state_size` values in state layout, or is NULL to read
/// the bound arrays; `v_out` receives `nv` = `lda_control_size` values.
#[no_mangle]
pub extern "C" fn lda_bsqrt_ad(ctx: *mut LdaContext, x: *const f64, nx: usize, v_out: *mut f64, nv: usize) -> i32 {
    with_ctx(ctx, |inner| {
        if v_out.is_null() && nv > 0 {
            return Err(null("v_out"));
        }
        // SAFETY: v_out holds nv values (contract).
        let vs = if nv == 0 { &mut [][..] } else { unsafe { std::slice::from_raw_parts_mut(v_out, nv) } };
        if x.is_null() {
            inner.bsqrt_ad(None, vs)
        } else {
            // SAFETY: x holds nx values (contract).
            inner.bsqrt_ad(Some(unsafe { std::slice::from_raw_parts(x, nx) }), vs)
        }
    })
}

/// The latentda version string (static, NUL-terminated).
#[no_mangle]
pub extern "C" fn lda_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}
