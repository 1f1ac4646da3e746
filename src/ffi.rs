//! C ABI (`include/latentda.h`, generated from this file by cbindgen in `build.rs`).
//!
//! Conventions (rustls-ffi style): an opaque handle, every function returns an `int32_t` status (`LDA_OK` = 0),
//! every pointer is checked for NULL, every entry point catches panics (`LDA_ERR_INTERNAL`), and nothing here ever
//! aborts the host. Bound host arrays are read at `lda_analyse` and written only after the whole analysis succeeded.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use crate::analysis::Analyser;
use crate::bop::LatentB;
use crate::error::{Error, Result, Status};
use crate::obs::{Observation, QcFlag};
use crate::options::{Method, Options};

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

#[derive(Debug, Clone, Copy)]
enum Data {
    F32(*mut f32),
    F64(*mut f64),
}

#[derive(Debug, Clone, Copy)]
struct Bound {
    data: Data,
}

struct Inner {
    analyser: Analyser,
    fields: Vec<Option<Bound>>,
    obs: Vec<Observation>,
    qc: Option<Vec<QcFlag>>,
    report: Option<CString>,
    latent_b: Option<LatentB>,
}

/// Opaque latentda context: one opened bundle, its ONNX sessions, the bound host arrays and the observations.
///
/// A context may be used from one thread at a time; different contexts may be used concurrently from different
/// threads. `lda_last_error` may be called from any thread.
pub struct LdaContext {
    inner: Mutex<Inner>,
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
fn with_ctx(ctx: *mut LdaContext, f: impl FnOnce(&mut Inner) -> Result<()>) -> i32 {
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
        let opts = if options.is_null() { Options::default() } else { Options::from_toml(unsafe { c_str(options, "options") }?)? };
        let analyser = Analyser::open(dir, opts)?;
        let nvar = analyser.bundle.layout.variables.len();
        let ctx = LdaContext {
            inner: Mutex::new(Inner {
                analyser,
                fields: vec![None; nvar],
                obs: Vec::new(),
                qc: None,
                report: None,
                latent_b: None,
            }),
            last_error: Mutex::new(CString::default()),
        };
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
        let lay = &inner.analyser.bundle.layout;
        let i = lay.var_index(name).ok_or_else(|| {
            let names: Vec<&str> = lay.variables.iter().map(|v| v.name.as_str()).collect();
            Error::arg(format!("variable '{name}' is not in the bundle (variables: {})", names.join(", ")))
        })?;
        // SAFETY: checked non-null.
        unsafe { *index_out = i as i32 };
        Ok(())
    })
}

fn bind(ctx: *mut LdaContext, name: *const c_char, data: Data, is_null: bool, ndim: i32, shape: *const i64, order: i32) -> i32 {
    with_ctx(ctx, |inner| {
        // SAFETY: NUL-terminated string per contract.
        let name = unsafe { c_str(name, "name") }?;
        if is_null {
            return Err(null("data"));
        }
        if shape.is_null() {
            return Err(null("shape"));
        }
        let lay = &inner.analyser.bundle.layout;
        let v = lay.var_index(name).ok_or_else(|| Error::arg(format!("lda_bind_field: variable '{name}' is not in the bundle")))?;
        let var = &lay.variables[v];
        let (nlat, nlon) = (lay.grid.nlat() as i64, lay.grid.nlon() as i64);
        if order != LDA_ORDER_C && order != LDA_ORDER_FORTRAN {
            return Err(Error::arg(format!("lda_bind_field '{name}': order = {order} (use 0 for C, 1 for Fortran)")));
        }
        let want_ndim = if var.is_surface() { 2 } else { 3 };
        if ndim != want_ndim {
            return Err(Error::arg(format!(
                "lda_bind_field '{name}': ndim = {ndim}, but '{name}' is {} and needs ndim = {want_ndim}",
                if var.is_surface() { "a surface field" } else { "an upper-air field" }
            )));
        }
        // SAFETY: shape points to ndim values (contract); ndim is 2 or 3 here.
        let got: Vec<i64> = unsafe { std::slice::from_raw_parts(shape, ndim as usize) }.to_vec();
        let mut want = if var.is_surface() { vec![nlat, nlon] } else { vec![var.nlev as i64, nlat, nlon] };
        if order == LDA_ORDER_FORTRAN {
            want.reverse();
        }
        if got != want {
            return Err(Error::arg(format!(
                "lda_bind_field '{name}': shape {got:?} does not match the bundle grid; expected {want:?} in {} order",
                if order == LDA_ORDER_C { "C (lev, lat, lon)" } else { "Fortran (lon, lat, lev)" }
            )));
        }
        // C (lev, lat, lon) and Fortran (lon, lat, lev) describe the same memory layout: longitude fastest.
        inner.fields[v] = Some(Bound { data });
        inner.latent_b = None;
        Ok(())
    })
}

/// Binds a host float array to a bundle variable. The array must stay valid (not freed or moved) until it is bound
/// again, or the context is closed; it is read by `lda_analyse` and written only when an analysis succeeds.
/// `ndim` is 3 for upper-air fields and 2 for surface fields; `shape` has `ndim` entries: (nlev, nlat, nlon) for
/// `order` = `LDA_ORDER_C`, (nlon, nlat, nlev) for `LDA_ORDER_FORTRAN`. Latitudes run north to south, longitudes
/// eastwards from the bundle's first longitude.
#[no_mangle]
pub extern "C" fn lda_bind_field_f32(ctx: *mut LdaContext, name: *const c_char, data: *mut f32, ndim: i32, shape: *const i64, order: i32) -> i32 {
    bind(ctx, name, Data::F32(data), data.is_null(), ndim, shape, order)
}

/// Binds a host double array to a bundle variable; see `lda_bind_field_f32`.
#[no_mangle]
pub extern "C" fn lda_bind_field_f64(ctx: *mut LdaContext, name: *const c_char, data: *mut f64, ndim: i32, shape: *const i64, order: i32) -> i32 {
    bind(ctx, name, Data::F64(data), data.is_null(), ndim, shape, order)
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
        let lay = &inner.analyser.bundle.layout;
        let nvar = lay.variables.len();
        inner.obs = (0..n)
            .map(|i| {
                let v = (vars[i] >= 0 && (vars[i] as usize) < nvar).then_some(vars[i] as usize);
                Observation {
                    var: v,
                    var_name: v.map(|v| lay.variables[v].name.clone()).unwrap_or_else(|| format!("#{}", vars[i])),
                    lat: la[i],
                    lon: lo[i],
                    level: Some(le[i]).filter(|_| v.is_some_and(|v| !lay.variables[v].is_surface())),
                    value: va[i],
                    sigma: si[i],
                    line: None,
                    malformed: None,
                }
            })
            .collect();
        inner.qc = None;
        Ok(())
    })
}

fn gather(inner: &Inner) -> Result<Vec<f64>> {
    let lay = &inner.analyser.bundle.layout;
    let np = lay.grid.npoints();
    let mut x = vec![0.0; lay.state_len()];
    for (v, var) in lay.variables.iter().enumerate() {
        let b = inner.fields[v].ok_or_else(|| {
            Error::new(Status::NotReady, format!("field '{}' is not bound (call lda_bind_field for it)", var.name))
        })?;
        let off = var.first_channel * np;
        let n = var.nchan() * np;
        // SAFETY: bound arrays hold n elements and stay valid while bound (documented contract).
        match b.data {
            Data::F32(p) => {
                let s = unsafe { std::slice::from_raw_parts(p, n) };
                for i in 0..n {
                    x[off + i] = s[i] as f64;
                }
            }
            Data::F64(p) => x[off..off + n].copy_from_slice(unsafe { std::slice::from_raw_parts(p, n) }),
        }
    }
    Ok(x)
}

fn scatter(inner: &Inner, x: &[f64]) {
    let lay = &inner.analyser.bundle.layout;
    let np = lay.grid.npoints();
    for (v, var) in lay.variables.iter().enumerate() {
        let Some(b) = inner.fields[v] else { continue };
        let off = var.first_channel * np;
        let n = var.nchan() * np;
        // SAFETY: as in gather; the context has exclusive use of the arrays during the call (contract).
        match b.data {
            Data::F32(p) => {
                let s = unsafe { std::slice::from_raw_parts_mut(p, n) };
                for i in 0..n {
                    s[i] = x[off + i] as f32;
                }
            }
            Data::F64(p) => unsafe { std::slice::from_raw_parts_mut(p, n) }.copy_from_slice(&x[off..off + n]),
        }
    }
}

/// Runs an analysis: reads every bound field as the background, assimilates the observations set by
/// `lda_set_obs`, and on success writes the result (per option `output`: analysis, increment or full_state) back
/// into the bound arrays. On any failure the bound arrays are left bit-identical. `method`: NULL for the option's
/// default, or "l3dvar" / "3dvar". Rejected observations never make the analysis fail; see `lda_obs_qc`.
#[no_mangle]
pub extern "C" fn lda_analyse(ctx: *mut LdaContext, method: *const c_char) -> i32 {
    with_ctx(ctx, |inner| {
        let m = if method.is_null() {
            Method::parse(&inner.analyser.options.method)?
        } else {
            // SAFETY: NUL-terminated string per contract.
            Method::parse(unsafe { c_str(method, "method") }?)?
        };
        inner.qc = None;
        inner.report = None;
        let x_b = gather(inner)?;
        let obs = std::mem::take(&mut inner.obs);
        let r = inner.analyser.analyse(&x_b, &obs, m);
        inner.obs = obs;
        let result = r?;
        scatter(inner, &result.output);
        inner.qc = Some(result.qc);
        inner.report = Some(cstring(&result.report.to_json()));
        Ok(())
    })
}

/// Copies the QC flag of every observation of the last successful analysis into `flags_out` (`n` must equal the
/// number of observations set). Flags: `LDA_QC_*`.
#[no_mangle]
pub extern "C" fn lda_obs_qc(ctx: *mut LdaContext, flags_out: *mut i32, n: usize) -> i32 {
    with_ctx(ctx, |inner| {
        let qc = inner.qc.as_ref().ok_or_else(|| Error::new(Status::NotReady, "no analysis has succeeded since the observations were set"))?;
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
        let rep = inner.report.as_ref().ok_or_else(|| Error::new(Status::NotReady, "no analysis has succeeded yet"))?;
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
        unsafe { *n_out = inner.analyser.bundle.latent_size() };
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
        unsafe { *n_out = inner.analyser.bundle.layout.state_len() };
        Ok(())
    })
}

fn latent_b(inner: &mut Inner) -> Result<&mut LatentB> {
    if inner.latent_b.is_none() {
        let x_b = gather(inner)?;
        inner.latent_b = Some(LatentB::linearise(&mut inner.analyser, &x_b)?);
    }
    Ok(inner.latent_b.as_mut().unwrap())
}

/// Linearises the latent B operator at the background currently in the bound arrays (z_b = E(N(x_b))). Called
/// implicitly by the first `lda_bsqrt`/`lda_bsqrt_ad` after binding; call it again after the background changed.
#[no_mangle]
pub extern "C" fn lda_b_linearise(ctx: *mut LdaContext) -> i32 {
    with_ctx(ctx, |inner| {
        inner.latent_b = None;
        latent_b(inner).map(|_| ())
    })
}

/// x = U v: the model-space increment (physical units) of control vector `v` (length `lda_control_size`).
/// `x_out` receives `nx` = `lda_state_size` values in state layout (channel-major: variables in bundle order, levels
/// top to bottom, then lat north to south, lon fastest); with `x_out` NULL the increment is written into the bound
/// arrays instead (their background is then replaced; the linearisation point is kept).
#[no_mangle]
pub extern "C" fn lda_bsqrt(ctx: *mut LdaContext, v: *const f64, nv: usize, x_out: *mut f64, nx: usize) -> i32 {
    with_ctx(ctx, |inner| {
        if v.is_null() {
            return Err(null("v"));
        }
        let state_len = inner.analyser.bundle.layout.state_len();
        // SAFETY: v holds nv values (contract).
        let vs = unsafe { std::slice::from_raw_parts(v, nv) };
        let mut x = vec![0.0; state_len];
        let mut lb = latent_b(inner)?.clone();
        lb.sqrt(&mut inner.analyser, vs, &mut x)?;
        inner.latent_b = Some(lb);
        if x_out.is_null() {
            scatter(inner, &x);
        } else {
            if nx != state_len {
                return Err(Error::arg(format!("lda_bsqrt: nx = {nx}, state size is {state_len}")));
            }
            // SAFETY: x_out holds nx values.
            unsafe { std::slice::from_raw_parts_mut(x_out, nx) }.copy_from_slice(&x);
        }
        Ok(())
    })
}

/// v = U^T x: the adjoint of `lda_bsqrt`. `x` has `nx` = `lda_state_size` values in state layout, or is NULL to read
/// the bound arrays; `v_out` receives `nv` = `lda_control_size` values.
#[no_mangle]
pub extern "C" fn lda_bsqrt_ad(ctx: *mut LdaContext, x: *const f64, nx: usize, v_out: *mut f64, nv: usize) -> i32 {
    with_ctx(ctx, |inner| {
        if v_out.is_null() {
            return Err(null("v_out"));
        }
        let state_len = inner.analyser.bundle.layout.state_len();
        let xs = if x.is_null() {
            let mut lb = latent_b(inner)?.clone();
            let g = gather(inner)?;
            let mut v = vec![0.0; lb.control_size()];
            lb.sqrt_ad(&mut inner.analyser, &g, &mut v)?;
            if nv != v.len() {
                return Err(Error::arg(format!("lda_bsqrt_ad: nv = {nv}, control size is {}", v.len())));
            }
            // SAFETY: v_out holds nv values.
            unsafe { std::slice::from_raw_parts_mut(v_out, nv) }.copy_from_slice(&v);
            return Ok(());
        } else {
            if nx != state_len {
                return Err(Error::arg(format!("lda_bsqrt_ad: nx = {nx}, state size is {state_len}")));
            }
            // SAFETY: x holds nx values.
            unsafe { std::slice::from_raw_parts(x, nx) }.to_vec()
        };
        let mut lb = latent_b(inner)?.clone();
        let mut v = vec![0.0; lb.control_size()];
        if nv != v.len() {
            return Err(Error::arg(format!("lda_bsqrt_ad: nv = {nv}, control size is {}", v.len())));
        }
        lb.sqrt_ad(&mut inner.analyser, &xs, &mut v)?;
        // SAFETY: v_out holds nv values.
        unsafe { std::slice::from_raw_parts_mut(v_out, nv) }.copy_from_slice(&v);
        Ok(())
    })
}

/// The latentda version string (static, NUL-terminated).
#[no_mangle]
pub extern "C" fn lda_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}
