//! C ABI (`include/latentda.h`, generated from this file by cbindgen in `build.rs`).
//!
//! Conventions (rustls-ffi style): an opaque handle, every function returns an `int32_t` status (`LdaStatus`,
//! `LDA_OK` = 0), every pointer is checked for NULL, every entry point catches panics (`LDA_ERR_INTERNAL`), and nothing here
//! ever aborts the host. Bound host arrays are read at `lda_analyse` and written only after the whole analysis
//! succeeded. The `///` comments below are the C header's documentation: they are written for C readers.

// The entry points take raw pointers from C by design; their validity is the documented contract of each function
// (checked for NULL here), so they are safe `extern "C"` functions rather than `unsafe` ones.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::coupling::callbacks::HostStep;
use crate::coupling::host::{HostContext, HostData, Order};
use crate::error::{Error, Result, Status};
use crate::model::backend::catch_quietly;

/// Quality-control flag of one observation, as returned by `lda_obs_qc` (an `int32_t` in C).
#[repr(i32)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdaQcFlag {
    /// Used in the analysis.
    LDA_QC_USED = 0,
    /// Rejected: non-finite value, position or level, latitude beyond +-90, or error standard deviation sigma <= 0
    /// or below 1e-6 times the variable's normalisation sd (too small to use in float32 models).
    LDA_QC_INVALID = 1,
    /// Rejected: outside the horizontal grid: poleward of the first or last grid latitude on a grid without polar
    /// caps (a global grid interpolates there with a zero-gradient cap), or outside the longitudes of a regional
    /// (non-periodic) grid.
    LDA_QC_OUTSIDE_DOMAIN = 2,
    /// Rejected: outside the vertical range of the model levels (or no level for an upper-air variable).
    LDA_QC_OUTSIDE_VERTICAL = 3,
    /// Rejected: the variable identifier is not a bundle variable (e.g. -1).
    LDA_QC_UNKNOWN_VARIABLE = 4,
    /// Rejected: background check |y - H(x_b)| > k sqrt(sigma_o^2 + sigma_b^2) (k: option `bg_check`).
    LDA_QC_BACKGROUND_CHECK = 5,
    /// Rejected by method "l4dvar": the observation time (`lda_set_obs_times`) is outside the assimilation window
    /// [0, `window_hours`]. Other methods ignore observation times.
    LDA_QC_OUTSIDE_WINDOW = 6,
}

/// Horizontal grid kind of the bundle (`kind_out` of `lda_grid_info`, an `int32_t`).
#[repr(i32)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdaGridKind {
    /// Equally spaced latitudes.
    LDA_GRID_REGULAR = 0,
    /// Gaussian (non-uniform) latitudes.
    LDA_GRID_GAUSSIAN = 1,
}

/// Vertical coordinate of the bundle (`vertical_out` of `lda_grid_info`, an `int32_t`): the unit of the `level`
/// argument of `lda_set_obs` and of the levels of `lda_grid_coords`.
#[repr(i32)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdaVertical {
    /// Sigma = p / ps (dimensionless, in (0, 1]).
    LDA_VERTICAL_SIGMA = 0,
    /// Pressure in Pa.
    LDA_VERTICAL_PRESSURE = 1,
}

impl From<crate::bundle::grid::GridKind> for LdaGridKind {
    fn from(k: crate::bundle::grid::GridKind) -> Self {
        match k {
            crate::bundle::grid::GridKind::Regular => LdaGridKind::LDA_GRID_REGULAR,
            crate::bundle::grid::GridKind::Gaussian => LdaGridKind::LDA_GRID_GAUSSIAN,
        }
    }
}

impl From<crate::bundle::grid::VerticalKind> for LdaVertical {
    fn from(k: crate::bundle::grid::VerticalKind) -> Self {
        match k {
            crate::bundle::grid::VerticalKind::Sigma => LdaVertical::LDA_VERTICAL_SIGMA,
            crate::bundle::grid::VerticalKind::Pressure => LdaVertical::LDA_VERTICAL_PRESSURE,
        }
    }
}

// The C ABI's numbers as `i32`, for Rust callers of the C ABI (tests, a Rust host): views of the one enum of each
// kind, not copies (`Status` in src/error.rs, `Order` in src/coupling/host.rs, exported to the header by cbindgen as
// `LdaStatus` and `LdaOrder`). cbindgen.toml excludes them from the header, which has the enums.
/// `LDA_OK` ([`Status::Ok`]).
pub const LDA_OK: i32 = Status::Ok as i32;
/// `LDA_ERR_NULL_POINTER` ([`Status::NullPointer`]).
pub const LDA_ERR_NULL_POINTER: i32 = Status::NullPointer as i32;
/// `LDA_ERR_INVALID_ARGUMENT` ([`Status::InvalidArgument`]).
pub const LDA_ERR_INVALID_ARGUMENT: i32 = Status::InvalidArgument as i32;
/// `LDA_ERR_BUNDLE` ([`Status::Bundle`]).
pub const LDA_ERR_BUNDLE: i32 = Status::Bundle as i32;
/// `LDA_ERR_BACKEND` ([`Status::Backend`]).
pub const LDA_ERR_BACKEND: i32 = Status::Backend as i32;
/// `LDA_ERR_IO` ([`Status::Io`]).
pub const LDA_ERR_IO: i32 = Status::Io as i32;
/// `LDA_ERR_INVALID_DATA` ([`Status::InvalidData`]).
pub const LDA_ERR_INVALID_DATA: i32 = Status::InvalidData as i32;
/// `LDA_ERR_NOT_READY` ([`Status::NotReady`]).
pub const LDA_ERR_NOT_READY: i32 = Status::NotReady as i32;
/// `LDA_ERR_SOLVER` ([`Status::Solver`]).
pub const LDA_ERR_SOLVER: i32 = Status::Solver as i32;
/// `LDA_ERR_INTERNAL` ([`Status::Internal`]).
pub const LDA_ERR_INTERNAL: i32 = Status::Internal as i32;
/// `LDA_ERR_BUFFER_TOO_SMALL` ([`Status::BufferTooSmall`]).
pub const LDA_ERR_BUFFER_TOO_SMALL: i32 = Status::BufferTooSmall as i32;
/// See [`LdaQcFlag::LDA_QC_USED`].
pub const LDA_QC_USED: i32 = LdaQcFlag::LDA_QC_USED as i32;
/// See [`LdaQcFlag::LDA_QC_INVALID`].
pub const LDA_QC_INVALID: i32 = LdaQcFlag::LDA_QC_INVALID as i32;
/// See [`LdaQcFlag::LDA_QC_OUTSIDE_DOMAIN`].
pub const LDA_QC_OUTSIDE_DOMAIN: i32 = LdaQcFlag::LDA_QC_OUTSIDE_DOMAIN as i32;
/// See [`LdaQcFlag::LDA_QC_OUTSIDE_VERTICAL`].
pub const LDA_QC_OUTSIDE_VERTICAL: i32 = LdaQcFlag::LDA_QC_OUTSIDE_VERTICAL as i32;
/// See [`LdaQcFlag::LDA_QC_UNKNOWN_VARIABLE`].
pub const LDA_QC_UNKNOWN_VARIABLE: i32 = LdaQcFlag::LDA_QC_UNKNOWN_VARIABLE as i32;
/// See [`LdaQcFlag::LDA_QC_BACKGROUND_CHECK`].
pub const LDA_QC_BACKGROUND_CHECK: i32 = LdaQcFlag::LDA_QC_BACKGROUND_CHECK as i32;
/// See [`LdaQcFlag::LDA_QC_OUTSIDE_WINDOW`].
pub const LDA_QC_OUTSIDE_WINDOW: i32 = LdaQcFlag::LDA_QC_OUTSIDE_WINDOW as i32;
/// `LDA_ORDER_C` ([`Order::C`]).
pub const LDA_ORDER_C: i32 = Order::C as i32;
/// `LDA_ORDER_FORTRAN` ([`Order::Fortran`]).
pub const LDA_ORDER_FORTRAN: i32 = Order::Fortran as i32;

// The QC flag enum above is a literal copy (cbindgen needs literals) of `crate::obs::QcFlag`: the compiler checks
// every value here, and tests/coupling.rs checks the header, C++, Fortran and documentation copies.
const _: () = {
    use crate::obs::QcFlag;
    assert!(Status::ALL.len() == 11 && QcFlag::ALL.len() == 7);
    assert!(LdaQcFlag::LDA_QC_USED as i32 == QcFlag::Used as i32);
    assert!(LdaQcFlag::LDA_QC_INVALID as i32 == QcFlag::Invalid as i32);
    assert!(LdaQcFlag::LDA_QC_OUTSIDE_DOMAIN as i32 == QcFlag::OutsideDomain as i32);
    assert!(LdaQcFlag::LDA_QC_OUTSIDE_VERTICAL as i32 == QcFlag::OutsideVertical as i32);
    assert!(LdaQcFlag::LDA_QC_UNKNOWN_VARIABLE as i32 == QcFlag::UnknownVariable as i32);
    assert!(LdaQcFlag::LDA_QC_BACKGROUND_CHECK as i32 == QcFlag::BackgroundCheck as i32);
    assert!(LdaQcFlag::LDA_QC_OUTSIDE_WINDOW as i32 == QcFlag::OutsideWindow as i32);
};

impl From<crate::obs::QcFlag> for LdaQcFlag {
    fn from(f: crate::obs::QcFlag) -> Self {
        use crate::obs::QcFlag as Q;
        match f {
            Q::Used => LdaQcFlag::LDA_QC_USED,
            Q::Invalid => LdaQcFlag::LDA_QC_INVALID,
            Q::OutsideDomain => LdaQcFlag::LDA_QC_OUTSIDE_DOMAIN,
            Q::OutsideVertical => LdaQcFlag::LDA_QC_OUTSIDE_VERTICAL,
            Q::UnknownVariable => LdaQcFlag::LDA_QC_UNKNOWN_VARIABLE,
            Q::BackgroundCheck => LdaQcFlag::LDA_QC_BACKGROUND_CHECK,
            Q::OutsideWindow => LdaQcFlag::LDA_QC_OUTSIDE_WINDOW,
        }
    }
}

/// Opaque latentda context: one opened bundle, its ONNX sessions, the bound host arrays, the observations and the
/// results of the last analysis. Created by `lda_open`, released by `lda_close`.
///
/// A context may be used from one thread at a time (calls on one context are serialised internally, but bound
/// arrays must not be touched by the host during a call); different contexts are independent and may run
/// concurrently on different threads. `lda_last_error` may be called from any thread.
///
/// The pointer is a handle, not an address to read: latentda looks it up in its table of open contexts. A pointer
/// that is not an open context (closed already, or never returned by `lda_open`) is refused by every function
/// with `LDA_ERR_INVALID_ARGUMENT`, so a second `lda_close` is an error, not a crash. Handles are never reused, so
/// a stale pointer cannot reach a context opened later.
///
/// A call on a context from inside one of its own callbacks (the step model of `lda_set_step_model`) is refused at
/// once with `LDA_ERR_NOT_READY` (the context is busy with the call that runs the callback); `lda_last_error` works
/// there. A call from another thread meanwhile waits for the running call, as any concurrent call does.
///
/// After an internal error (a caught panic) the context is failed: every later call on it returns
/// `LDA_ERR_INTERNAL` without touching the host's arrays, until `lda_close`.
pub struct LdaContext {
    /// The host context. A panic while it is locked poisons the mutex, which marks the context failed.
    inner: Mutex<HostContext>,
    last_error: Mutex<String>,
    /// The thread running a call on this context ([`thread_mark`]), 0 when none: a call that finds its own thread
    /// here comes from one of the context's callbacks and would lock `inner` a second time (a deadlock).
    busy_on: AtomicUsize,
}

/// Open contexts by handle (the pointer value given to C). Each holds one reference; a call in progress holds
/// another, so `lda_close` on one thread while a call runs on another frees the context only when that call ends.
static LIVE: Mutex<BTreeMap<usize, Arc<LdaContext>>> = Mutex::new(BTreeMap::new());

/// The next handle number. Handles are `number * 16`: never 0, aligned like a pointer, and never reused.
static NEXT_HANDLE: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// Its address identifies the calling thread for [`LdaContext::busy_on`] (distinct for live threads, never 0).
    static THREAD_MARK: u8 = const { 0 };
}

fn thread_mark() -> usize {
    THREAD_MARK.with(|m| m as *const u8 as usize)
}

fn live_contexts() -> std::sync::MutexGuard<'static, BTreeMap<usize, Arc<LdaContext>>> {
    // Never poisoned in practice (no code that can panic runs under it); a poisoned map is still consistent.
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_live(ctx: *const LdaContext) -> Error {
    Error::arg(format!(
        "context {ctx:p} is not a live context: it was closed already (lda_close), or was never returned by lda_open"
    ))
}

/// The open context behind `ctx` (a new reference that keeps it alive during the call).
fn live(ctx: *const LdaContext) -> Result<Arc<LdaContext>> {
    if ctx.is_null() {
        return Err(Error::new(Status::NullPointer, "context is NULL (lda_open failed or was not called)"));
    }
    live_contexts().get(&(ctx as usize)).cloned().ok_or_else(|| not_live(ctx))
}

fn reentry_error() -> Error {
    Error::new(
        Status::NotReady,
        "re-entrant call refused: this thread is inside a call on this context already (a call made from one of \
         the context's own callbacks, such as the step model of lda_set_step_model); return from the callback first",
    )
}

/// Clears [`LdaContext::busy_on`] when the call ends, also when it panics (declared after the lock guard, so it
/// runs before the lock is released).
struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

thread_local! {
    /// The last failure on this thread that had no context (a failed `lda_open`, a NULL context).
    static OPEN_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
    /// What `lda_last_error` last returned on this thread: a copy, so no other thread can free it under the reader.
    static RETURNED_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

fn set_error(ctx: Option<&LdaContext>, e: &Error) -> i32 {
    match ctx {
        Some(c) => {
            let mut g = c.last_error.lock().unwrap_or_else(|p| p.into_inner());
            g.clone_from(&e.message);
        }
        None => OPEN_ERROR.with(|o| o.borrow_mut().clone_from(&e.message)),
    }
    e.status as i32
}

/// Runs `f` on the context with panics caught (quietly: nothing on the host's stderr) and the error recorded: the
/// one guard every entry point that takes a context goes through.
///
/// A NULL or closed `ctx` is refused before anything else; so is a call from inside one of the context's own
/// callbacks (its thread already holds the lock: locking again would deadlock). Calls from other threads wait for
/// the lock, as before. A panic inside `f` poisons the context's lock, so the context stays failed (every later
/// call returns `LDA_ERR_INTERNAL`) until `lda_close`: its state may be half-updated.
fn with_ctx(ctx: *mut LdaContext, f: impl FnOnce(&mut HostContext) -> Result<()>) -> i32 {
    let c = match catch_quietly(|| live(ctx)) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return set_error(None, &e),
        Err(p) => return set_error(None, &p.into_error("C")),
    };
    let me = thread_mark();
    if c.busy_on.load(Ordering::Acquire) == me {
        return set_error(Some(&c), &reentry_error());
    }
    let r = catch_quietly(|| match c.inner.lock() {
        Ok(mut g) => {
            c.busy_on.store(me, Ordering::Release);
            let _busy = Busy(&c.busy_on);
            f(&mut g)
        }
        Err(_) => Err(Error::new(
            Status::Internal,
            "the context failed in an earlier call (internal error) and can no longer be used: close it with lda_close",
        )),
    });
    let st = match r {
        Ok(Ok(())) => LDA_OK,
        Ok(Err(e)) => set_error(Some(&c), &e),
        Err(p) => set_error(Some(&c), &p.into_error("C")),
    };
    // The last reference, if lda_close ran on another thread meanwhile: the context is released here, guarded too.
    let _ = catch_quietly(move || drop(c));
    st
}

/// Copies `n` values from a host array into a new vector (fallibly: a lying `n` is an error, not an abort).
///
/// # Safety
/// `p` must point to `n` readable values.
unsafe fn copy_in<T: Copy>(p: *const T, n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::arg(format!("argument '{what}': cannot allocate memory for {n} values")))?;
    // SAFETY: p holds n values (contract); no reference into it outlives this call.
    v.extend_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
    Ok(v)
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
    // SAFETY: non-null, NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| Error::arg(format!("argument '{what}' is not valid UTF-8")))
}

/// Opens a bundle and creates a context.
///
/// - `bundle_dir`: path of the bundle directory (NUL-terminated UTF-8); must not be NULL.
/// - `options`: NULL or "" for the defaults, or TOML text with any of the keys `backend` ("tract" | "ort" | "auto"),
///   `ort_library`, `device` ("cpu" | "cuda:N"), `threads`, `cuda_tf32`, `method` ("l3dvar" | "3dvar" |
///   "hybrid" | "l4dvar"), `output` ("analysis" | "increment" | "full_state"), `solver` ("gauss_newton" | "adam"),
///   `gradient_reduction`, `max_pairs`, `outer_loops`, `max_inner`, `preconditioner` ("ritz" | "none"),
///   `adam_steps`, `adam_lr`, `bg_check`, `bg_check_samples`, `bg_check_sigma_b` ("calibrated" | "flow"),
///   `hybrid_alpha`, `hybrid_beta`, `hybrid_variables`,
///   `hybrid_alpha_tropics`, `hybrid_beta_tropics`, `hybrid_alpha_sh`, `hybrid_beta_sh` (southern extratropics),
///   `hybrid_band_lat` (`[lat0, lat1]`),
///   `hybrid_variable_weights` (inline table per variable or group: `{ q = { alpha = 0.1, beta = 0.4 } }`), `baseline_variance_factor`, `baseline_length_scale_factor`,
///   `latent_variance_factor`, `latent_increment` ("linear" | "nonlinear"), `b_operator` ("latent" | "hybrid" |
///   "static"), `window_hours`, `slot_hours`, `error_growth_per_hour`, `verbosity`, `self_test`, `ensemble_gamma`,
///   `ensemble_localisation_km`, `ensemble_localisation_model_km`, `ensemble_space` ("latent" | "model"),
///   `adaptive_state` (a JSON file: online B sizing while cycling, read before and rewritten after each successful
///   analysis), `adaptive_window`, `adaptive_bounds` (`[lo, hi]`), `adaptive_rule` ("innovation" | "desroziers"),
///   `adaptive_per_variable`, `mix_candidates` (`[L1, L2, ...]`: the hybrid's latent share chosen online per
///   variable and band class while cycling), `mix_state` (its JSON file, with `<file>.fields` beside it), `mix_window`,
///   `mix_every` (candidates run every this many analyses), `mix_hemispheres` (true: the northern and southern
///   extratropics choose their shares apart),
///   `mix_score` ("model": candidates forecast by the step model of `lda_set_step_model`; "persistence"),
///   `mix_lead_hours` (the cycle length; with `lda_set_analysis_time` the candidates are scored only by the
///   analysis that many hours later)
///   (one `key = value` per line; see
///   docs/coupling.md). Unknown keys are an error.
/// - `out`: receives the new context; must not be NULL. It is set to NULL on failure.
///
/// The strings are only read during the call. The context is owned by the caller and must be released with
/// `lda_close`. On failure the message is available from `lda_last_error(NULL)` on the same thread.
/// Thread-safe: different threads may open contexts concurrently. The context pointer is a handle (see
/// `LdaContext`): never the value of an earlier context, even one closed since.
#[no_mangle]
pub extern "C" fn lda_open(bundle_dir: *const c_char, options: *const c_char, out: *mut *mut LdaContext) -> i32 {
    let r = catch_quietly(|| -> Result<*mut LdaContext> {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: out checked non-null; the caller provides a writable pointer.
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: strings are NUL-terminated per the contract.
        let dir = unsafe { c_str(bundle_dir, "bundle_dir") }?;
        let opts = if options.is_null() { None } else { Some(unsafe { c_str(options, "options") }?) };
        let host = HostContext::open(dir, opts)?;
        let ctx =
            LdaContext { inner: Mutex::new(host), last_error: Mutex::new(String::new()), busy_on: AtomicUsize::new(0) };
        let handle = NEXT_HANDLE
            .fetch_add(1, Ordering::Relaxed)
            .checked_mul(16)
            .ok_or_else(|| Error::new(Status::Internal, "lda_open: no context handles left in this process"))?;
        live_contexts().insert(handle, Arc::new(ctx));
        // A handle, not an address: only looked up in LIVE, never dereferenced.
        Ok(handle as *mut LdaContext)
    });
    match r {
        Ok(Ok(p)) => {
            // SAFETY: out was checked non-null inside the closure before success was possible.
            unsafe { *out = p };
            LDA_OK
        }
        Ok(Err(e)) => set_error(None, &e),
        Err(p) => set_error(None, &p.into_error("C")),
    }
}

/// Releases a context and everything it owns (ONNX sessions, observations, report). NULL is accepted and ignored
/// (`LDA_OK`). Bound host arrays are not touched and remain owned by the host. The pointer must not be used
/// afterwards.
///
/// Closing twice is detected: a pointer that is not an open context (closed already, or never returned by
/// `lda_open`) returns `LDA_ERR_INVALID_ARGUMENT` and changes nothing (message from `lda_last_error(NULL)` on the
/// same thread), also when a context opened since then is open (handles are never reused). Called from inside one
/// of the context's own callbacks, it returns `LDA_ERR_NOT_READY` and the context stays open. Called while another
/// thread is in a call on the context, the context is released when that call returns.
#[no_mangle]
pub extern "C" fn lda_close(ctx: *mut LdaContext) -> i32 {
    if ctx.is_null() {
        return LDA_OK;
    }
    let r = catch_quietly(|| -> std::result::Result<(), (Option<Arc<LdaContext>>, Error)> {
        let mut map = live_contexts();
        let c = map.get(&(ctx as usize)).ok_or_else(|| (None, not_live(ctx).context("lda_close")))?;
        if c.busy_on.load(Ordering::Acquire) == thread_mark() {
            return Err((Some(c.clone()), reentry_error().context("lda_close")));
        }
        let c = map.remove(&(ctx as usize));
        if map.is_empty() {
            *map = BTreeMap::new(); // give the map's memory back with the last context
        }
        drop(map); // releasing the context (its ONNX sessions) must not hold up every other context's calls
        drop(c);
        Ok(())
    });
    match r {
        Ok(Ok(())) => LDA_OK,
        Ok(Err((c, e))) => set_error(c.as_deref(), &e),
        Err(p) => set_error(None, &p.into_error("C")),
    }
}

/// Message of the last failed call on `ctx` ("" if none has failed). With `ctx` NULL: the message of the last
/// failure on the calling thread that had no context (a failed `lda_open`, a call given a NULL context or one that
/// is not open, such as a second `lda_close`). With a pointer that is not an open context: a message saying so.
///
/// Never returns NULL. The string is owned by latentda: do not free it. It is a copy made for the calling thread:
/// it stays valid until the same thread calls `lda_last_error` again, whatever other threads do meanwhile (later
/// failures on the context, `lda_close`); copy it to keep it longer. Thread-safe: any thread may ask about any
/// live context, also from inside one of the context's callbacks.
#[no_mangle]
pub extern "C" fn lda_last_error(ctx: *const LdaContext) -> *const c_char {
    let r = catch_quietly(|| {
        let msg = if ctx.is_null() {
            OPEN_ERROR.with(|o| cstring(&o.borrow()))
        } else {
            match live(ctx) {
                // The message is copied under the context's error lock, so a failing call on another thread cannot
                // free it under this reader.
                Ok(c) => {
                    let g = c.last_error.lock().unwrap_or_else(|p| p.into_inner());
                    cstring(&g)
                }
                Err(e) => cstring(&e.message),
            }
        };
        RETURNED_ERROR.with(|r| {
            let mut r = r.borrow_mut();
            *r = msg;
            r.as_ptr()
        })
    });
    r.unwrap_or(c"internal error while reading the last error".as_ptr())
}

/// Identifier of the bundle variable `name` for `lda_set_obs` (its 0-based position in the bundle's channel
/// order). `name` and `index_out` must not be NULL. An unknown name returns `LDA_ERR_INVALID_ARGUMENT` with the list
/// of bundle variables in the message.
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
        if !(2..=3).contains(&ndim) {
            return Err(Error::arg(format!("bind_field '{name}': ndim = {ndim} must be 2 (surface) or 3 (upper air)")));
        }
        // SAFETY: shape points to ndim values (contract).
        let shape = unsafe { std::slice::from_raw_parts(shape, ndim as usize) };
        // SAFETY: the host keeps the array valid while bound (documented contract of lda_bind_field_*).
        unsafe { inner.bind(name, data, shape, order) }
    })
}

/// Binds a host `float` array, in place, to the bundle variable `name`.
///
/// - `data`: the host's array of nlon*nlat*nlev (upper air) or nlon*nlat (surface) values, longitude fastest,
///   latitudes north to south, levels top to bottom. Not copied: latentda keeps the pointer.
/// - `ndim`: 3 for upper-air fields, 2 for surface fields.
/// - `shape`: `ndim` extents, read during the call only: (nlev, nlat, nlon) for `order` = `LDA_ORDER_C`,
///   (nlon, nlat, nlev) for `LDA_ORDER_FORTRAN`. Checked against the bundle grid now.
///
/// Lifetime: the array must stay valid (not freed or moved) until the variable is bound again or the context is
/// closed, and the host must not access it during calls on this context. `lda_analyse` reads it as the background
/// and overwrites it with the result only when the whole analysis succeeded. Binding again replaces the previous
/// binding (and may switch precision). On failure the previous binding, if any, is kept.
#[no_mangle]
pub extern "C" fn lda_bind_field_f32(
    ctx: *mut LdaContext,
    name: *const c_char,
    data: *mut f32,
    ndim: i32,
    shape: *const i64,
    order: i32,
) -> i32 {
    bind(ctx, name, HostData::F32(data), ndim, shape, order)
}

/// Binds a host `double` array, in place, to the bundle variable `name`; see `lda_bind_field_f32`.
#[no_mangle]
pub extern "C" fn lda_bind_field_f64(
    ctx: *mut LdaContext,
    name: *const c_char,
    data: *mut f64,
    ndim: i32,
    shape: *const i64,
    order: i32,
) -> i32 {
    bind(ctx, name, HostData::F64(data), ndim, shape, order)
}

/// A buffer for the observations, the variable identifiers and the lat, lon, level, value and sigma arrays.
type ObsArrays<'a> = (Vec<crate::obs::Observation>, &'a [i32], [&'a [f64]; 5]);

/// The six observation arrays of `lda_set_obs` and `lda_set_withheld` as slices of `n` values, each checked for
/// NULL first (the error names the array), and a buffer for `n` observations: the whole set must fit in memory
/// before any array is read, so a count too large (or a lying one) is an error, not an allocation failure that
/// aborts the host (the error names the call `what`).
///
/// # Safety
/// Every non-NULL pointer must point to `n` values that stay valid and unchanged while the slices are used.
#[allow(clippy::too_many_arguments)]
unsafe fn obs_arrays<'a>(
    what: &str,
    n: usize,
    var: *const i32,
    lat: *const f64,
    lon: *const f64,
    level: *const f64,
    value: *const f64,
    sigma: *const f64,
) -> Result<ObsArrays<'a>> {
    let names = ["var", "lat", "lon", "level", "value", "sigma"];
    let ptrs = [var as *const u8, lat as _, lon as _, level as _, value as _, sigma as _];
    if let Some(i) = ptrs.iter().position(|p| p.is_null()) {
        return Err(null(names[i]));
    }
    let buf = HostContext::obs_buffer(what, n)?;
    // SAFETY: non-NULL (checked) and n values each (the caller's contract).
    let sl = |p: *const f64| -> &'a [f64] { unsafe { std::slice::from_raw_parts(p, n) } };
    // SAFETY: as above.
    let vars = unsafe { std::slice::from_raw_parts(var, n) };
    Ok((buf, vars, [sl(lat), sl(lon), sl(level), sl(value), sl(sigma)]))
}

/// Sets the observations for the next analyses, replacing any previous set. All arrays hold `n` >= 1 values and
/// are copied (they may be freed after the call); none may be NULL. `n` = 0 is `LDA_ERR_INVALID_ARGUMENT` (a host
/// without observations in a cycle skips `lda_analyse`).
///
/// - `var`: identifiers from `lda_var_index` (any other value, e.g. -1, is flagged `LDA_QC_UNKNOWN_VARIABLE`).
/// - `lat`, `lon`: degrees north / east (longitude periodic).
/// - `level`: in the bundle's vertical coordinate (e.g. sigma); ignored for surface variables (pass e.g. NaN).
/// - `value`: observed value in the variable's units; `sigma`: observation error standard deviation (> 0 and
///   at least 1e-6 times the variable's normalisation sd).
///
/// Invalid observations are not an error here: they are flagged by QC at the analysis (`lda_obs_qc`). A count `n`
/// too large for memory is `LDA_ERR_INVALID_ARGUMENT`, detected before the arrays are read.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
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
        if n == 0 {
            // HostContext rejects empty observation sets; never form slices from possibly NULL pointers.
            return inner.set_obs(&[], &[], &[], &[], &[], &[]);
        }
        // SAFETY: each array holds n values (contract); obs_arrays checks them for NULL and the count for memory.
        let (buf, vars, [la, lo, le, va, si]) =
            unsafe { obs_arrays("set_obs", n, var, lat, lon, level, value, sigma) }?;
        inner.set_obs_in(buf, vars, la, lo, le, va, si)
    })
}

/// Sets the withheld observations of the next analyses, replacing any previous set: arrays as for `lda_set_obs`
/// (copied), `n` = 0 clears them (the pointers may then be NULL). They never enter an analysis: the report of each
/// analysis compares them with the background and the analysis (section "withheld" of `lda_report_json`:
/// per variable and latitude band, mean d = mean((O-A)^2 - (O-B)^2) / sigma_o^2 with its cluster-robust standard
/// error over columns; negative where the analysis came closer to them than the background). Their errors are
/// independent of both, so this checks the analysis without truth, as passive observations do in operational
/// monitoring: withhold a random part of the columns, for example. Invalid ones are counted in the section's QC
/// counts, never an error.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn lda_set_withheld(
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
        if n == 0 {
            return inner.set_withheld(&[], &[], &[], &[], &[], &[]);
        }
        // SAFETY: each array holds n values (contract); obs_arrays checks them for NULL and the count for memory.
        let (buf, vars, [la, lo, le, va, si]) =
            unsafe { obs_arrays("set_withheld", n, var, lat, lon, level, value, sigma) }?;
        inner.set_withheld_in(buf, vars, la, lo, le, va, si)
    })
}

/// Sets the observation times, in hours from the analysis time (the time of the bound background, the start of the
/// 4D-Var window), of the `n` observations set by the last `lda_set_obs`, in the same order. `n` must equal that
/// count; `time_hours` holds `n` values, is copied, and must not be NULL.
///
/// `lda_set_obs` resets every time to 0, so call this after it. Only method "l4dvar" uses times (each observation
/// goes to the nearest time slot of the window; outside [0, `window_hours`] it is flagged
/// `LDA_QC_OUTSIDE_WINDOW`, a non-finite time `LDA_QC_INVALID`); the other methods treat every observation as valid
/// at the analysis time.
#[no_mangle]
pub extern "C" fn lda_set_obs_times(ctx: *mut LdaContext, n: usize, time_hours: *const f64) -> i32 {
    with_ctx(ctx, |inner| {
        if n != inner.n_obs() {
            return Err(Error::arg(format!("lda_set_obs_times: n = {n}, but {} observations are set", inner.n_obs())));
        }
        if time_hours.is_null() {
            return Err(null("time_hours"));
        }
        // SAFETY: time_hours holds n values (contract); copied before use.
        let t = unsafe { copy_in(time_hours, n, "time_hours") }?;
        inner.set_obs_times(&t)
    })
}

/// One time step of a host's forecast model, for method "l4dvar": `x_next` = M(`x`).
///
/// `user` is the pointer given to `lda_set_step_model`; `n` is `lda_state_size`; `x` holds the state (physical
/// units, state layout: variables in bundle order, each a C-order (lev, lat, lon) block); the callback writes all `n`
/// values of `x_next` and returns 0, or any other value to make the analysis fail (`LDA_ERR_BACKEND`). The buffers
/// belong to latentda and are valid for the call only. A callback may not use its own context: every call on it
/// from inside the callback returns `LDA_ERR_NOT_READY` at once (`lda_last_error` works); other contexts may be
/// used.
pub type LdaStepFn = Option<unsafe extern "C" fn(user: *mut c_void, n: usize, x: *const f64, x_next: *mut f64) -> i32>;

/// The tangent-linear of `LdaStepFn` at `x`: `dx_next` = M'(`x`) `dx` (all `n` values written; status as there).
pub type LdaStepTlFn =
    Option<unsafe extern "C" fn(user: *mut c_void, n: usize, x: *const f64, dx: *const f64, dx_next: *mut f64) -> i32>;

/// The adjoint of `LdaStepTlFn` at `x`: `dx` = M'(`x`)^T `dx_next` (all `n` values written, not accumulated; status
/// as there). It must be the exact transpose of the TL in the Euclidean inner product of the state vector.
pub type LdaStepAdFn =
    Option<unsafe extern "C" fn(user: *mut c_void, n: usize, x: *const f64, dx_next: *const f64, dx: *mut f64) -> i32>;

/// Installs the host's own forecast model as the step model of method "l4dvar" (it replaces the bundle's
/// `[forecast]` model, if any): the nonlinear step `step`, its tangent-linear `tl` and its adjoint `ad`, each
/// advancing one time step of `time_step_hours` hours on physical states in state layout (see `LdaStepFn`). So a
/// centre with its own TL/AD model runs latent 4D-Var with latentda's latent B:
///
/// ```text
/// x_0(w) = x_b + sd * D'(z_b)(s w)   (latent_increment = "linear", the default)
/// x_0(w) = x_b + sd * (D(z_b + s w) - D(z_b))   (latent_increment = "nonlinear")
/// x_(j+1) = M(x_j),  J(w) = 1/2 |w|^2 + 1/2 sum_k |R^-1/2 (y_k - H_k x_k)|^2
/// ```
///
/// The same model serves the hybrid's online mix (option `mix_score = "model"`), which forecasts each candidate
/// analysis with `step` alone: `step` given with `tl` and `ad` both NULL installs such a nonlinear-only model (an
/// `l4dvar` analysis or `lda_l4dvar_check` with it then fails with `LDA_ERR_INVALID_ARGUMENT` naming the missing
/// callback).
///
/// `user` is passed to every call (may be NULL). All three callbacks NULL removes the host model; any other
/// combination with a NULL is `LDA_ERR_NULL_POINTER`. The callbacks run inside `lda_analyse` (method "l4dvar") and `lda_l4dvar_check`; each
/// returns 0 on success, and any other status fails the call cleanly with `LDA_ERR_BACKEND` (bound arrays left
/// untouched), as does an output value left non-finite. The background at later slot times is the model's
/// trajectory from the bound background.
#[no_mangle]
pub extern "C" fn lda_set_step_model(
    ctx: *mut LdaContext,
    step: LdaStepFn,
    tl: LdaStepTlFn,
    ad: LdaStepAdFn,
    user: *mut c_void,
    time_step_hours: f64,
) -> i32 {
    with_ctx(ctx, |inner| {
        if step.is_none() && tl.is_none() && ad.is_none() {
            inner.set_step_model(None);
            return Ok(());
        }
        let m = HostStep::new(step, tl, ad, user, inner.state_size(), time_step_hours)?;
        inner.set_step_model(Some(m));
        Ok(())
    })
}

/// Sets the time of this and later analyses, in hours from any fixed epoch the host chooses (for example hours
/// since the start of the run, or since 1970), kept until set again. Only the hybrid's online mix uses it (option
/// `mix_candidates`): it records when its candidate forecasts are valid (this time plus `mix_lead_hours`) and
/// scores them at the analysis whose time that is. An analysis at another time (a cycle skipped for want of
/// observations, a failed analysis, a restart) notes the stale forecasts in the report's `mix.notes` and scores
/// nothing that cycle, instead of comparing them with observations of another time. A host that cycles with the
/// mix should call it before every `lda_analyse`; without it the mix cannot check the times. A non-finite `hours`
/// is `LDA_ERR_INVALID_ARGUMENT` and leaves the time as it was.
#[no_mangle]
pub extern "C" fn lda_set_analysis_time(ctx: *mut LdaContext, hours: f64) -> i32 {
    with_ctx(ctx, |inner| inner.analyser.set_analysis_time(hours).map_err(|e| e.context("lda_set_analysis_time")))
}

/// Adjoint tests of latent 4D-Var's step model at the bound background: the host's (`lda_set_step_model`), else the
/// bundle's. `*step_dot_out` receives the relative dot-product error |<M' dx, u> - <dx, M'^T u>| / max of one
/// step, `*chained_dot_out` that of the whole chained transform w -> [dx_0, ..., dx_K] (latent B, decoder and
/// `nslots` - 1 model steps) at w = 0; both must not be NULL. latentda's float32 graphs reach about 1e-7; values
/// above 1e-5 indicate an adjoint that does not match its TL. Every field must be bound. Without any step model:
/// `LDA_ERR_NOT_READY`.
#[no_mangle]
pub extern "C" fn lda_l4dvar_check(
    ctx: *mut LdaContext,
    nslots: i32,
    seed: u64,
    step_dot_out: *mut f64,
    chained_dot_out: *mut f64,
) -> i32 {
    with_ctx(ctx, |inner| {
        if step_dot_out.is_null() {
            return Err(null("step_dot_out"));
        }
        if chained_dot_out.is_null() {
            return Err(null("chained_dot_out"));
        }
        if !(1..=1000).contains(&nslots) {
            return Err(Error::arg(format!("lda_l4dvar_check: nslots = {nslots} must be in 1..=1000")));
        }
        let c = inner.l4dvar_check(nslots as usize, seed)?;
        // SAFETY: both checked non-null; written last.
        unsafe {
            *step_dot_out = c.step_dot.rel;
            *chained_dot_out = c.chained_dot.rel;
        }
        Ok(())
    })
}

/// Runs an analysis: reads every bound field as the background x_b, assimilates the observations set by
/// `lda_set_obs`, and on success writes the result into the bound arrays (per option `output`: the analysis, the
/// increment, or the full decoded state). On any failure the bound arrays are left bit-identical.
///
/// `method`: NULL for the option's default, or "l3dvar" / "3dvar" / "hybrid" / "l4dvar" (latent 4D-Var: needs a
/// step model, the bundle's `[forecast]` or the host's from `lda_set_step_model`, and uses the observation times of
/// `lda_set_obs_times`; `LDA_ERR_NOT_READY` without a step model). Every bundle variable must be bound
/// (`LDA_ERR_NOT_READY` names the first unbound one) and observations must have been set (`LDA_ERR_NOT_READY`).
/// NaN/Inf in a bound field is `LDA_ERR_INVALID_DATA`. Rejected observations never make the analysis fail; read
/// their flags with `lda_obs_qc` and the diagnostics with `lda_report_json` / `lda_report_number`.
#[no_mangle]
pub extern "C" fn lda_analyse(ctx: *mut LdaContext, method: *const c_char) -> i32 {
    with_ctx(ctx, |inner| {
        // SAFETY: NUL-terminated string per contract.
        let m = if method.is_null() { None } else { Some(unsafe { c_str(method, "method") }?) };
        inner.analyse(m)
    })
}

/// Copies the QC flag (`LdaQcFlag` values) of every observation of the last successful analysis into `flags_out`,
/// in the order given to `lda_set_obs`. `n` must equal the number of observations set; `flags_out` holds `n`
/// values and must not be NULL. Before any successful analysis (or after new observations were set):
/// `LDA_ERR_NOT_READY`.
#[no_mangle]
pub extern "C" fn lda_obs_qc(ctx: *mut LdaContext, flags_out: *mut i32, n: usize) -> i32 {
    with_ctx(ctx, |inner| {
        if flags_out.is_null() {
            return Err(null("flags_out"));
        }
        let qc = inner.obs_qc()?;
        if n != qc.len() {
            return Err(Error::arg(format!(
                "lda_obs_qc: n = {n}, but the last analysis had {} observations",
                qc.len()
            )));
        }
        for (i, f) in qc.iter().enumerate() {
            // SAFETY: flags_out holds n values (contract).
            unsafe { *flags_out.add(i) = *f as i32 };
        }
        Ok(())
    })
}

/// Copies the JSON report of the last successful analysis (solver history, per-variable O-B/O-A statistics, QC
/// counts, timings, backend) into `buf` as a NUL-terminated string.
///
/// `*needed` (if `needed` is not NULL) receives the size including the NUL. If `buf` is NULL or `len` is too
/// small, nothing is copied and `LDA_ERR_BUFFER_TOO_SMALL` is returned: call once with `buf` = NULL, `len` = 0 to
/// get the size, allocate, call again. Before any successful analysis: `LDA_ERR_NOT_READY`.
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
            return Err(Error::new(
                Status::BufferTooSmall,
                format!("report needs {} bytes, buffer has {len}", bytes.len()),
            ));
        }
        // SAFETY: buf holds len >= bytes.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, buf, bytes.len()) };
        Ok(())
    })
}

/// Looks up `path` in the report JSON value, selecting array elements by index or by their "name" field.
pub(crate) fn report_lookup(json: &str, path: &str) -> Result<f64> {
    let root: serde_json::Value =
        serde_json::from_str(json).map_err(|e| Error::new(Status::Internal, format!("report is not JSON: {e}")))?;
    let mut cur = &root;
    for key in path.split('.') {
        let next = match cur {
            serde_json::Value::Object(m) => m.get(key),
            serde_json::Value::Array(a) => match key.parse::<usize>() {
                Ok(i) => a.get(i),
                Err(_) => a.iter().find(|e| e.get("name").and_then(|n| n.as_str()) == Some(key)),
            },
            _ => None,
        };
        cur =
            next.ok_or_else(|| Error::arg(format!("lda_report_number: report has no entry '{key}' in path '{path}'")))?;
    }
    match cur {
        serde_json::Value::Number(x) => x
            .as_f64()
            .ok_or_else(|| Error::arg(format!("lda_report_number: '{path}' is not representable as a double"))),
        serde_json::Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        other => Err(Error::arg(format!("lda_report_number: '{path}' is not a number (it is {other})"))),
    }
}

/// One number from the report of the last successful analysis, for hosts without a JSON parser (e.g. Fortran).
///
/// `path` is a dot-separated key path into the report of `lda_report_json`; an array element is selected by its
/// 0-based index or, for per-variable entries, by name. Examples: "n_used", "qc_counts.background_check",
/// "solver.j_final", "solver.grad_reduction", "variables.t.omb_rms", "variables.t.oma_rms", "variables.ps.n_used",
/// "timings.total_s". `path` and `value_out` must not be NULL. A missing or non-numeric entry is
/// `LDA_ERR_INVALID_ARGUMENT`; before any successful analysis `LDA_ERR_NOT_READY`.
#[no_mangle]
pub extern "C" fn lda_report_number(ctx: *mut LdaContext, path: *const c_char, value_out: *mut f64) -> i32 {
    with_ctx(ctx, |inner| {
        // SAFETY: NUL-terminated string per contract.
        let path = unsafe { c_str(path, "path") }?;
        if value_out.is_null() {
            return Err(null("value_out"));
        }
        let v = report_lookup(inner.report_json()?, path)?;
        // SAFETY: checked non-null.
        unsafe { *value_out = v };
        Ok(())
    })
}

/// Size n of the B operator's control vector into `*n_out` (must not be NULL): the latent size for the latent B
/// (option `b_operator = "latent"`, the default), the latent size plus the static control size for "hybrid", the
/// static control size for "static" (one value per grid point of each static control channel; z has none when it
/// is balanced hydrostatically).
#[no_mangle]
pub extern "C" fn lda_control_size(ctx: *mut LdaContext, n_out: *mut usize) -> i32 {
    with_ctx(ctx, |inner| {
        if n_out.is_null() {
            return Err(null("n_out"));
        }
        let n = inner.control_size()?;
        // SAFETY: checked non-null.
        unsafe { *n_out = n };
        Ok(())
    })
}

/// Size of a full model state (channels x nlat x nlon) into `*n_out` (must not be NULL): the length of the state
/// buffers of `lda_bsqrt` / `lda_bsqrt_ad` / `lda_obs_h` (where each variable sits in them: `lda_var_layout`). The
/// Fortran module also offers it as a default integer (`lda_state_dim`; `lda_control_dim` for the control size).
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

/// Linearises the B operator selected by option `b_operator` ("latent" by default, "hybrid" or "static") at the
/// background currently in the bound arrays (z_b = E(N(x_b)) for the latent and hybrid B); every variable must be
/// bound. Done implicitly by the first `lda_bsqrt`/`lda_bsqrt_ad`/`lda_bvariance`/`lda_brandomize` after a bind;
/// nothing else relinearises it: call it again whenever the background in the bound arrays changed (a new forecast,
/// or the analysis that `lda_analyse`, or `lda_bsqrt`/`lda_brandomize`/`lda_bvariance` with a NULL output, wrote
/// there). The hybrid B is U [w, v] = sqrt(alpha) U_l w + sqrt(beta) P U_s v (weights and variables: options
/// `hybrid_*` or the bundle's `[hybrid]` table; docs/b-operator.md).
#[no_mangle]
pub extern "C" fn lda_b_linearise(ctx: *mut LdaContext) -> i32 {
    with_ctx(ctx, |inner| inner.b_linearise())
}

/// Writes a computed state vector `x` to `out`, or into the bound arrays when `out` is NULL. The caller checked that
/// `out` holds `x.len()` = `lda_state_size` values before any model ran; a raw copy, so no Rust reference into host
/// memory (which may overlap the bound arrays or an input) is ever held.
fn write_state(inner: &mut HostContext, x: &[f64], out: *mut f64) {
    if out.is_null() {
        inner.scatter(x);
    } else {
        // SAFETY: out holds x.len() values (contract, length checked by the caller).
        unsafe { std::ptr::copy(x.as_ptr(), out, x.len()) };
    }
}

/// x = U v: the model-space increment (physical units) of control vector `v` (`nv` = `lda_control_size` values),
/// with B_implied = U U^T (U of the operator selected by option `b_operator`).
///
/// `x_out` receives `nx` = `lda_state_size` doubles in state layout: variables in bundle order, each as its C-order
/// (lev, lat, lon) block (levels top to bottom, latitudes north to south, longitude fastest; offsets from
/// `lda_var_layout`, the same memory as a Fortran (lon, lat, lev) array). With `x_out` NULL the
/// increment is written into the bound arrays instead (their content is replaced; the linearisation point is
/// kept). `v` is only read during the call.
///
/// `v` and `x_out` may overlap each other or the bound arrays: `v` is copied before anything is written, and
/// `x_out` is written only after the model runs. Lengths are checked before any model runs.
#[no_mangle]
pub extern "C" fn lda_bsqrt(ctx: *mut LdaContext, v: *const f64, nv: usize, x_out: *mut f64, nx: usize) -> i32 {
    with_ctx(ctx, |inner| {
        if v.is_null() {
            return Err(null("v"));
        }
        inner.check_control_len("lda_bsqrt: control vector v", nv)?;
        if !x_out.is_null() {
            inner.check_state_len("lda_bsqrt: state x_out", nx)?;
        }
        // SAFETY: v holds nv values (contract); copied so that no reference into host memory is held while the
        // bound arrays are read or x_out is written.
        let vs = unsafe { copy_in(v, nv, "v") }?;
        let x = inner.bsqrt_vec(&vs)?;
        write_state(inner, &x, x_out);
        Ok(())
    })
}

/// v = U^T x: the exact adjoint of `lda_bsqrt`. `x` holds `nx` = `lda_state_size` doubles in state layout, or is
/// NULL to read x from the bound arrays; `v_out` (not NULL) receives `nv` = `lda_control_size` values.
///
/// `x` and `v_out` may overlap each other or the bound arrays: `x` is copied first and `v_out` written last.
/// Lengths are checked before any model runs.
#[no_mangle]
pub extern "C" fn lda_bsqrt_ad(ctx: *mut LdaContext, x: *const f64, nx: usize, v_out: *mut f64, nv: usize) -> i32 {
    with_ctx(ctx, |inner| {
        if v_out.is_null() {
            return Err(null("v_out"));
        }
        inner.check_control_len("lda_bsqrt_ad: control vector v_out", nv)?;
        let xs = if x.is_null() {
            None
        } else {
            inner.check_state_len("lda_bsqrt_ad: state x", nx)?;
            // SAFETY: x holds nx values (contract); copied before anything else happens.
            Some(unsafe { copy_in(x, nx, "x") }?)
        };
        let v = inner.bsqrt_ad_vec(xs.as_deref())?;
        // SAFETY: v_out holds nv = v.len() values (contract, length checked); a raw copy, no reference held.
        unsafe { std::ptr::copy(v.as_ptr(), v_out, v.len()) };
        Ok(())
    })
}

/// diag(U U^T), the background-error variance of the B operator (option `b_operator`) per state element, in
/// physical units squared: `var_out` receives `nx` = `lda_state_size` doubles in state layout, or, when NULL, the
/// variance is written into the bound arrays (their content is replaced; the linearisation point is kept).
///
/// Exact for the static B and for a latent B with at most `bg_check_samples` latent elements; otherwise a
/// randomised estimate from `bg_check_samples` draws (relative standard error sqrt(2 / samples), e.g. 0.25 for 32).
/// Computed once per linearisation: repeated calls, and an `lda_analyse` of the same background (its background
/// check uses it), reuse it.
///
/// `var_out` may overlap the bound arrays: it is written only after the variance is computed, and its length is
/// checked before any model runs.
#[no_mangle]
pub extern "C" fn lda_bvariance(ctx: *mut LdaContext, var_out: *mut f64, nx: usize) -> i32 {
    with_ctx(ctx, |inner| {
        if !var_out.is_null() {
            inner.check_state_len("lda_bvariance: state var_out", nx)?;
        }
        let var = inner.bvariance_vec()?;
        write_state(inner, &var, var_out);
        Ok(())
    })
}

/// A random draw of the background error, x = U xi with xi ~ N(0, I) generated from `seed` (deterministic: the
/// same seed gives the same draw). `x_out` receives `nx` = `lda_state_size` doubles in state layout, or, when NULL,
/// the draw is written into the bound arrays (as `lda_bsqrt` with NULL).
///
/// `x_out` may overlap the bound arrays: it is written only after the draw is computed, and its length is checked
/// before any model runs.
#[no_mangle]
pub extern "C" fn lda_brandomize(ctx: *mut LdaContext, seed: u64, x_out: *mut f64, nx: usize) -> i32 {
    with_ctx(ctx, |inner| {
        if !x_out.is_null() {
            inner.check_state_len("lda_brandomize: state x_out", nx)?;
        }
        let x = inner.brandomize_vec(seed)?;
        write_state(inner, &x, x_out);
        Ok(())
    })
}

// ---- Layout queries: the bundle's grid and the state layout (of lda_bsqrt's x and every state-layout buffer)

/// Writes `v` through `p` if `p` is not NULL.
///
/// # Safety
/// `p` must be NULL or valid for one write of `T`.
unsafe fn put<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: non-null and writable per the caller's contract.
        unsafe { *p = v };
    }
}

/// The bundle's grid: `*kind_out` (`LdaGridKind`), `*nlat_out` latitudes, `*nlon_out` longitudes, `*vertical_out`
/// (`LdaVertical`: the coordinate of the levels and of `lda_set_obs`'s `level`) and `*nlev_out` model levels.
/// Any output may be NULL (not wanted). Needs no bound field.
///
/// Host arrays of one upper-air variable are (nlev, nlat, nlon) in C order, (nlon, nlat, nlev) in Fortran terms;
/// surface variables drop nlev (`lda_var_layout` says which is which).
#[no_mangle]
pub extern "C" fn lda_grid_info(
    ctx: *mut LdaContext,
    kind_out: *mut i32,
    nlat_out: *mut usize,
    nlon_out: *mut usize,
    vertical_out: *mut i32,
    nlev_out: *mut usize,
) -> i32 {
    with_ctx(ctx, |inner| {
        let lay = inner.layout();
        // SAFETY: each pointer is NULL or writable (contract).
        unsafe {
            put(kind_out, LdaGridKind::from(lay.grid.kind) as i32);
            put(nlat_out, lay.grid.nlat());
            put(nlon_out, lay.grid.nlon());
            put(vertical_out, LdaVertical::from(lay.vertical.kind) as i32);
            put(nlev_out, lay.vertical.levels.len());
        }
        Ok(())
    })
}

/// The grid coordinates: `lat_out` receives the `nlat` latitudes (degrees north, north to south: the order of the
/// latitude index of every field), `lon_out` the `nlon` longitudes (degrees east, increasing), `lev_out` the
/// `nlev` model levels (top to bottom, in the vertical coordinate of `lda_grid_info`). Each pointer may be NULL
/// (not wanted, its length ignored); for the others the length must equal the size from `lda_grid_info`
/// (`LDA_ERR_INVALID_ARGUMENT` otherwise, checked before anything is written).
#[no_mangle]
pub extern "C" fn lda_grid_coords(
    ctx: *mut LdaContext,
    lat_out: *mut f64,
    nlat: usize,
    lon_out: *mut f64,
    nlon: usize,
    lev_out: *mut f64,
    nlev: usize,
) -> i32 {
    with_ctx(ctx, |inner| {
        let lay = inner.layout();
        let parts = [
            ("lat_out", lat_out, nlat, &lay.grid.lat),
            ("lon_out", lon_out, nlon, &lay.grid.lon),
            ("lev_out", lev_out, nlev, &lay.vertical.levels),
        ];
        for (what, p, n, v) in &parts {
            if !p.is_null() && *n != v.len() {
                return Err(Error::arg(format!("lda_grid_coords: '{what}' has length {n}, the grid has {}", v.len())));
            }
        }
        for (_, p, _, v) in &parts {
            if !p.is_null() {
                // SAFETY: p holds v.len() values (contract, length checked above).
                unsafe { std::ptr::copy(v.as_ptr(), *p, v.len()) };
            }
        }
        Ok(())
    })
}

/// Number of bundle variables into `*n_out` (must not be NULL). Their identifiers (for `lda_set_obs`,
/// `lda_var_name`, `lda_var_layout`) are 0 .. n-1, in state order.
#[no_mangle]
pub extern "C" fn lda_var_count(ctx: *mut LdaContext, n_out: *mut i32) -> i32 {
    with_ctx(ctx, |inner| {
        if n_out.is_null() {
            return Err(null("n_out"));
        }
        let n = inner.layout().variables.len() as i32;
        // SAFETY: checked non-null.
        unsafe { *n_out = n };
        Ok(())
    })
}

fn var_id(index: i32) -> Result<usize> {
    usize::try_from(index)
        .map_err(|_| Error::arg(format!("variable identifier {index} is negative (identifiers are 0-based)")))
}

/// Name of variable `index` (0-based identifier) as a NUL-terminated string in `buf` (at most 256 bytes plus the
/// NUL, the NetCDF name limit). `*needed` (if `needed` is not NULL) receives the size including the NUL; with `buf`
/// NULL or `len` too small nothing is copied and `LDA_ERR_BUFFER_TOO_SMALL` is returned. An identifier out of
/// range is `LDA_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn lda_var_name(
    ctx: *mut LdaContext,
    index: i32,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> i32 {
    with_ctx(ctx, |inner| {
        let name = cstring(&inner.var_layout(var_id(index)?)?.name);
        let bytes = name.as_bytes_with_nul();
        // SAFETY: NULL or writable (contract).
        unsafe { put(needed, bytes.len()) };
        if buf.is_null() || len < bytes.len() {
            return Err(Error::new(
                Status::BufferTooSmall,
                format!("variable name needs {} bytes, buffer has {len}", bytes.len()),
            ));
        }
        // SAFETY: buf holds len >= bytes.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, buf, bytes.len()) };
        Ok(())
    })
}

/// Where variable `index` (0-based identifier) lives in the state vector of `lda_bsqrt`, `lda_bsqrt_ad`,
/// `lda_bvariance`, `lda_brandomize`, `lda_obs_h` and `lda_obs_h_ad`: `*nlev_out` levels (0 for a surface
/// variable), elements `*offset_out` .. `*offset_out + *length_out - 1` (0-based), `length` = max(nlev, 1) * nlat *
/// nlon. Any output may be NULL (not wanted).
///
/// Within its block a variable is stored longitude fastest, then latitude (north to south), then level (top to
/// bottom): a C array [nlev][nlat][nlon] or, in Fortran, an array (nlon, nlat, nlev) starting at x(offset + 1).
/// Both are the same memory, so a host's fields bound in either order map onto the state vector element for
/// element, and the whole state is the variables' blocks one after the other in identifier order.
#[no_mangle]
pub extern "C" fn lda_var_layout(
    ctx: *mut LdaContext,
    index: i32,
    nlev_out: *mut i32,
    offset_out: *mut usize,
    length_out: *mut usize,
) -> i32 {
    with_ctx(ctx, |inner| {
        let v = inner.var_layout(var_id(index)?)?;
        // SAFETY: each pointer is NULL or writable (contract).
        unsafe {
            put(nlev_out, v.nlev as i32);
            put(offset_out, v.offset);
            put(length_out, v.length);
        }
        Ok(())
    })
}

// ---- H as a service: latentda's own observation operator for a host's minimiser

/// H x: the model equivalent of every observation set by `lda_set_obs`, computed with latentda's own observation
/// operator (bilinear in latitude/longitude with periodic longitude and polar caps, linear in ln(level)), the one an
/// analysis uses: on the same background its values are bit-identical to the analysis's H x_b (the O-B of the
/// report is value - H x_b).
///
/// - `x`: `nx` = `lda_state_size` doubles in state layout (`lda_var_layout`), or NULL to read the bound arrays.
/// - `hx_out` (not NULL): `n` = number of observations set; receives H_i x, in `lda_set_obs` order, and NaN for an
///   observation rejected by the geometric checks.
/// - `qc_out` (may be NULL): `n` values; receives the geometric QC flag of each observation: `LDA_QC_USED`,
///   `LDA_QC_INVALID` (non-finite value or position, sigma <= 0 or below the floor), `LDA_QC_OUTSIDE_DOMAIN`,
///   `LDA_QC_OUTSIDE_VERTICAL` or `LDA_QC_UNKNOWN_VARIABLE`. The background check of an analysis (`LDA_QC_BACKGROUND_CHECK`)
///   is not made here; observation times are ignored.
///
/// H is built once per observation set (at the first call after `lda_set_obs`) and is linear: its tangent-linear is
/// itself and its adjoint is `lda_obs_h_ad`. NaN/Inf in x is `LDA_ERR_INVALID_DATA`; without observations
/// `LDA_ERR_NOT_READY`. Outputs are written only on success, after x was read (they may overlap x).
#[no_mangle]
pub extern "C" fn lda_obs_h(
    ctx: *mut LdaContext,
    x: *const f64,
    nx: usize,
    hx_out: *mut f64,
    qc_out: *mut i32,
    n: usize,
) -> i32 {
    with_ctx(ctx, |inner| {
        if hx_out.is_null() {
            return Err(null("hx_out"));
        }
        if n != inner.n_obs() {
            return Err(Error::arg(format!("lda_obs_h: n = {n}, but {} observations are set", inner.n_obs())));
        }
        let xs = if x.is_null() {
            None
        } else {
            inner.check_state_len("lda_obs_h: state x", nx)?;
            // SAFETY: x holds nx values (contract); copied before anything is written.
            Some(unsafe { copy_in(x, nx, "x") }?)
        };
        let (hx, qc) = inner.obs_h(xs.as_deref())?;
        // SAFETY: hx_out (and qc_out when not NULL) hold n values (contract, n checked above).
        unsafe {
            std::ptr::copy(hx.as_ptr(), hx_out, n);
            if !qc_out.is_null() {
                for (i, f) in qc.iter().enumerate() {
                    *qc_out.add(i) = *f as i32;
                }
            }
        }
        Ok(())
    })
}

/// x = H^T y: the exact adjoint of `lda_obs_h` (the same sparse weights, transposed). `y` (not NULL) holds `n` =
/// number of observations set, in `lda_set_obs` order; values of observations rejected by the geometric checks are
/// ignored (they may be NaN), the others must be finite (`LDA_ERR_INVALID_DATA`). `x_out` (not NULL) receives `nx`
/// = `lda_state_size` doubles in state layout, overwritten (not accumulated); written only on success, after y was
/// read. For a host cost J_o = 1/2 sum ((y_i - H_i x) / sigma_i)^2 the gradient is -H^T r with r_i = (y_i - H_i x)
/// / sigma_i^2.
#[no_mangle]
pub extern "C" fn lda_obs_h_ad(ctx: *mut LdaContext, y: *const f64, n: usize, x_out: *mut f64, nx: usize) -> i32 {
    with_ctx(ctx, |inner| {
        if y.is_null() {
            return Err(null("y"));
        }
        if x_out.is_null() {
            return Err(null("x_out"));
        }
        if n != inner.n_obs() {
            return Err(Error::arg(format!("lda_obs_h_ad: n = {n}, but {} observations are set", inner.n_obs())));
        }
        inner.check_state_len("lda_obs_h_ad: state x_out", nx)?;
        // SAFETY: y holds n values (contract); copied first.
        let ys = unsafe { copy_in(y, n, "y") }?;
        let x = inner.obs_h_ad(&ys)?;
        // SAFETY: x_out holds nx = x.len() values (contract, length checked).
        unsafe { std::ptr::copy(x.as_ptr(), x_out, x.len()) };
        Ok(())
    })
}

// ---- Float32 noise floor of U

/// The measured float32 noise floor of the B operator (option `b_operator`) at its linearisation point (linearised
/// as by `lda_bsqrt` if not yet), the worst over `trials` (1..=100) random trials from `seed` (deterministic):
///
/// - `*u_nonlin_out`: |U(a v1 + b v2) - a U v1 - b U v2| / (|a| |U v1| + |b| |U v2|), v ~ N(0, I);
/// - `*ut_nonlin_out`: the same for U^T, on state vectors y = xi / sd (sd: normalisation sd of each channel);
/// - `*adjoint_out`: |<U v, y> - <v, U^T y>| / max(|<U v, y>|, |<v, U^T y>|), y with a component along U v.
///
/// Outputs must not be NULL. The latent B runs float32 graphs and gives about 1e-7 to 1e-6; the static B is
/// float64 (about 1e-16). A host minimiser cannot reduce its gradient below about this relative level: stop on a
/// gradient criterion above it, never on an absolute change of J (docs/b-operator.md). Each trial costs 4 TL and
/// 4 AD runs. Every field must be bound.
#[no_mangle]
pub extern "C" fn lda_bsqrt_noise(
    ctx: *mut LdaContext,
    seed: u64,
    trials: i32,
    u_nonlin_out: *mut f64,
    ut_nonlin_out: *mut f64,
    adjoint_out: *mut f64,
) -> i32 {
    with_ctx(ctx, |inner| {
        for (what, p) in
            [("u_nonlin_out", u_nonlin_out), ("ut_nonlin_out", ut_nonlin_out), ("adjoint_out", adjoint_out)]
        {
            if p.is_null() {
                return Err(null(what));
            }
        }
        let t = usize::try_from(trials)
            .map_err(|_| Error::arg(format!("lda_bsqrt_noise: trials = {trials} must be in 1..=100")))?;
        let nf = inner.bsqrt_noise(seed, t)?;
        // SAFETY: all checked non-null.
        unsafe {
            *u_nonlin_out = nf.u_nonlinearity;
            *ut_nonlin_out = nf.ut_nonlinearity;
            *adjoint_out = nf.adjoint_mismatch;
        }
        Ok(())
    })
}

/// The latentda version string (static, NUL-terminated; do not free).
#[no_mangle]
pub extern "C" fn lda_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

// Ensemble members (issue 24): `lda_set_ensemble` (cbindgen follows this declaration into the file).
#[path = "ffi_ensemble.rs"]
mod ensemble;
pub use ensemble::lda_set_ensemble;

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14, item 6: after a panic is caught at the boundary the context stays failed until `lda_close`.
    #[test]
    fn a_caught_panic_fails_the_context_until_close() {
        let dir = CString::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tanh")).unwrap();
        let mut ctx: *mut LdaContext = std::ptr::null_mut();
        assert_eq!(lda_open(dir.as_ptr(), std::ptr::null(), &mut ctx), LDA_OK);
        let mut id = -1;
        assert_eq!(lda_var_index(ctx, c"t".as_ptr(), &mut id), LDA_OK);
        assert_eq!(with_ctx(ctx, |_| panic!("boom")), LDA_ERR_INTERNAL);
        // SAFETY: lda_last_error never returns NULL.
        let msg = |ctx| unsafe { CStr::from_ptr(lda_last_error(ctx)) }.to_string_lossy().into_owned();
        assert!(msg(ctx).contains("(panic caught at the C boundary): boom"), "{}", msg(ctx));
        assert_eq!(lda_var_index(ctx, c"t".as_ptr(), &mut id), LDA_ERR_INTERNAL);
        assert!(msg(ctx).contains("can no longer be used"), "{}", msg(ctx));
        let mut n = 0usize;
        assert_eq!(lda_control_size(ctx, &mut n), LDA_ERR_INTERNAL);
        assert_eq!(lda_close(ctx), LDA_OK);
    }
}
