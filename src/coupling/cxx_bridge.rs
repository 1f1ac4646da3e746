//! C++ API through `cxx`: the Rust half of `include/latentda.hpp`.
//!
//! The bridge (namespace `latentda::detail`) exposes an opaque [`Context`] wrapping the same [`HostContext`] the C
//! ABI uses, so C++ gets the same checks, messages and status codes. The public C++ class `latentda::Context` in the
//! hand-written header owns a `rust::Box<latentda::detail::Context>` and turns the bridge's `rust::Error` into
//! `latentda::Error` (a `std::runtime_error` with `code()`).
//!
//! Error convention: every fallible bridge function returns `Result<_, String>` whose message is
//! `"[latentda <code>] <message>"`, `<code>` being the C ABI status (`LDA_ERR_*`, [`crate::error::Status`]) and `<message>` exactly
//! what `lda_last_error` would return. The header parses the prefix back. Every body runs under `guard` (calls on a
//! context under `guard_ctx`), which catches panics (a panic in an `extern "Rust"` function would otherwise abort the
//! C++ host) without printing them and reports them as `LDA_ERR_INTERNAL`; after one, the context fails every later
//! call, as in the C ABI. The C++ class owns its context by value (RAII, move-only), so the C ABI's double-close
//! check has no C++ counterpart. Its one kind of callback, the step model of `set_step_model` (C function pointers,
//! or `std::function`s behind the header's trampolines), runs while Rust holds `&mut Context`: the header refuses
//! every call on the same `latentda::Context` from inside it (`status::not_ready`, the C ABI's re-entry message)
//! before it could reach Rust, and carries a C++ exception thrown by it across the Rust frames as a status, to
//! rethrow it once the call has returned.
//!
//! Build: `build.rs` compiles the generated C++ glue into the Rust library (`cxx_build`), so `liblatentda.a` is all a
//! C++ program links; it also copies the generated header to `include/latentda/bridge.h` and `rust/cxx.h` to
//! `include/latentda/rust/cxx.h`. See `examples/cpp/README.md`.

use std::cell::Cell;

use crate::coupling::callbacks::HostStep;
use crate::coupling::ffi::{report_lookup, LdaStepAdFn, LdaStepFn, LdaStepTlFn};
use crate::coupling::host::{HostContext, HostData};
use crate::error::{Error, Result, Status};
use crate::model::backend::catch_quietly;

#[cxx::bridge(namespace = "latentda::detail")]
mod ffi {
    // Shared structs: plain data returned by value (the public header copies them into std types).

    /// The bundle's grid (see `lda_grid_info`).
    struct GridInfo {
        /// `LdaGridKind`: 0 regular, 1 Gaussian.
        kind: i32,
        /// Number of latitudes.
        nlat: usize,
        /// Number of longitudes.
        nlon: usize,
        /// `LdaVertical`: 0 sigma, 1 pressure (Pa).
        vertical: i32,
        /// Number of model levels.
        nlev: usize,
    }

    /// One variable's place in the state vector (see `lda_var_layout`).
    struct VarInfo {
        /// Variable name.
        name: String,
        /// Units.
        units: String,
        /// Levels (0 for a surface variable).
        nlev: i32,
        /// Offset of its first element in the state vector (0-based).
        offset: usize,
        /// Number of elements.
        length: usize,
    }

    /// H x with the geometric QC flag of each observation (see `lda_obs_h`).
    struct ObsValues {
        /// H_i x per observation (NaN where rejected).
        hx: Vec<f64>,
        /// Geometric QC flag per observation.
        qc: Vec<i32>,
    }

    /// The float32 noise floor of U and U^T (see `lda_bsqrt_noise`).
    struct NoiseFloor {
        /// Relative nonlinearity of U.
        u_nonlinearity: f64,
        /// Relative nonlinearity of U^T.
        ut_nonlinearity: f64,
        /// Normalised adjoint mismatch.
        adjoint_mismatch: f64,
    }

    /// Adjoint tests of latent 4D-Var's step model (see `lda_l4dvar_check`).
    struct L4dvarCheck {
        /// Relative dot-product error of one step of the step model.
        step_dot: f64,
        /// Relative dot-product error of the chained transform w -> [dx_0, ..., dx_K].
        chained_dot: f64,
    }

    // Opaque Rust context; C++ owns it as rust::Box<Context> (RAII) inside the public latentda::Context.
    extern "Rust" {
        type Context;

        /// Opens a bundle (`options`: TOML text, empty for defaults).
        fn open(bundle_dir: &str, options: &str) -> Result<Box<Context>>;
        /// latentda version string.
        fn version() -> String;
        /// 0-based variable identifier for `set_obs`.
        fn var_index(self: &Context, name: &str) -> Result<i32>;
        /// Binds a float host array; the array must outlive the binding (stored as pointer, shape and order).
        unsafe fn bind_field_f32(
            self: &mut Context,
            name: &str,
            data: &mut [f32],
            shape: &[i64],
            order: i32,
        ) -> Result<()>;
        /// Binds a double host array; see `bind_field_f32`.
        unsafe fn bind_field_f64(
            self: &mut Context,
            name: &str,
            data: &mut [f64],
            shape: &[i64],
            order: i32,
        ) -> Result<()>;
        /// Sets (copies) the observations.
        fn set_obs(
            self: &mut Context,
            var: &[i32],
            lat: &[f64],
            lon: &[f64],
            level: &[f64],
            value: &[f64],
            sigma: &[f64],
        ) -> Result<()>;
        /// Sets (copies) the withheld observations: compared in the report, never assimilated; empty clears them.
        fn set_withheld(
            self: &mut Context,
            var: &[i32],
            lat: &[f64],
            lon: &[f64],
            level: &[f64],
            value: &[f64],
            sigma: &[f64],
        ) -> Result<()>;
        /// Sets the observation times (hours from the analysis time) of the observations set last (method l4dvar).
        fn set_obs_times(self: &mut Context, time_hours: &[f64]) -> Result<()>;
        /// Sets the time of this and later analyses in hours from the host's epoch (see `lda_set_analysis_time`).
        fn set_analysis_time(self: &mut Context, hours: f64) -> Result<()>;
        /// Sets `k` ensemble members, member after member in the state layout (see `lda_set_ensemble`); k = 0
        /// removes them.
        fn set_ensemble(self: &mut Context, k: usize, members: &[f64]) -> Result<()>;
        /// Installs the host's step model for method l4dvar (see `lda_set_step_model`): the addresses of three C
        /// callbacks (`LdaStepFn`, `LdaStepTlFn`, `LdaStepAdFn`; all three 0 removes the host model) and the
        /// `user` pointer passed back to them, as integers (cxx passes no C function pointers from C++ to Rust).
        unsafe fn set_step_model(
            self: &mut Context,
            step: usize,
            tl: usize,
            ad: usize,
            user: usize,
            time_step_hours: f64,
        ) -> Result<()>;
        /// Adjoint tests of the step model and the chained 4D transform over `nslots` slots (see `lda_l4dvar_check`).
        fn l4dvar_check(self: &mut Context, nslots: i32, seed: u64) -> Result<L4dvarCheck>;
        /// Runs an analysis (`method` empty for the option's default); bound arrays are written only on success.
        fn analyse(self: &mut Context, method: &str) -> Result<()>;
        /// QC flags of the last successful analysis.
        fn obs_qc(self: &Context) -> Result<Vec<i32>>;
        /// JSON report of the last successful analysis.
        fn report_json(self: &Context) -> Result<String>;
        /// One number of that report by its dot-separated path (see `lda_report_number`).
        fn report_number(self: &Context, path: &str) -> Result<f64>;
        /// Control-vector size of the B operator (option `b_operator`).
        fn control_size(self: &Context) -> Result<usize>;
        /// Full state length.
        fn state_size(self: &Context) -> Result<usize>;
        /// (Re)linearises the B operator (option `b_operator`) at the bound background.
        fn b_linearise(self: &mut Context) -> Result<()>;
        /// x = U v (state layout). Returned, not written into a host span: a host span could overlap `v` or a bound
        /// array, and Rust must not hold a mutable slice of memory it also reads (the header copies).
        fn bsqrt(self: &mut Context, v: &[f64]) -> Result<Vec<f64>>;
        /// x = U v written into the bound arrays (`v` must not overlap them: the header passes a copy).
        fn bsqrt_to_fields(self: &mut Context, v: &[f64]) -> Result<()>;
        /// v = U^T x from `x` (state layout).
        fn bsqrt_ad(self: &mut Context, x: &[f64]) -> Result<Vec<f64>>;
        /// v = U^T x reading x from the bound arrays.
        fn bsqrt_ad_from_fields(self: &mut Context) -> Result<Vec<f64>>;
        /// diag(U U^T) (state layout), returned like `bsqrt`.
        fn bvariance(self: &mut Context) -> Result<Vec<f64>>;
        /// A draw U xi, xi ~ N(0, I) from `seed` (state layout), returned like `bsqrt`.
        fn brandomize(self: &mut Context, seed: u64) -> Result<Vec<f64>>;
        /// The grid's kind and sizes.
        fn grid_info(self: &Context) -> Result<GridInfo>;
        /// Latitudes (north to south), longitudes or levels (top to bottom): `which` 0, 1 or 2.
        fn grid_coords(self: &Context, which: i32) -> Result<Vec<f64>>;
        /// Number of bundle variables.
        fn var_count(self: &Context) -> Result<i32>;
        /// Layout of variable `index` (0-based identifier).
        fn var_info(self: &Context, index: i32) -> Result<VarInfo>;
        /// H x of the observations set, from `x` (state layout).
        fn obs_h(self: &mut Context, x: &[f64]) -> Result<ObsValues>;
        /// H x of the observations set, from the bound arrays.
        fn obs_h_fields(self: &mut Context) -> Result<ObsValues>;
        /// H^T y (state layout) for one value per observation set.
        fn obs_h_ad(self: &mut Context, y: &[f64]) -> Result<Vec<f64>>;
        /// The measured noise floor of U and U^T over `trials` random trials.
        fn bsqrt_noise(self: &mut Context, seed: u64, trials: i32) -> Result<NoiseFloor>;
    }
}

/// The opaque context behind `latentda::Context` in C++.
pub struct Context {
    host: HostContext,
    /// Set when a call panicked: the host context may be half-updated, so every later call fails (as the C ABI).
    failed: Cell<bool>,
}

/// Formats an error for the C++ side: `"[latentda <code>] <message>"` (parsed by `include/latentda.hpp`).
pub fn encode_error(e: &Error) -> String {
    format!("[latentda {}] {}", e.code(), e.message)
}

/// Runs a bridge body with panics caught quietly (nothing on the host's stderr); errors and panics become encoded
/// messages.
fn guard<T>(f: impl FnOnce() -> Result<T>) -> std::result::Result<T, String> {
    match catch_quietly(f) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(encode_error(&e)),
        Err(p) => Err(encode_error(&p.into_error("C++"))),
    }
}

/// [`guard`] for a call on a context: refuses to run on a failed context, and marks it failed when `f` panics.
fn guard_ctx<T>(failed: &Cell<bool>, f: impl FnOnce() -> Result<T>) -> std::result::Result<T, String> {
    if failed.get() {
        return Err(encode_error(&Error::new(
            Status::Internal,
            "the context failed in an earlier call (internal error) and can no longer be used: destroy it",
        )));
    }
    match catch_quietly(f) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(encode_error(&e)),
        Err(p) => {
            failed.set(true);
            Err(encode_error(&p.into_error("C++")))
        }
    }
}

type BridgeResult<T> = std::result::Result<T, String>;

fn open(bundle_dir: &str, options: &str) -> BridgeResult<Box<Context>> {
    guard(|| {
        let opts = if options.trim().is_empty() { None } else { Some(options) };
        Ok(Box::new(Context { host: HostContext::open(bundle_dir, opts)?, failed: Cell::new(false) }))
    })
}

fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

fn method_arg(method: &str) -> Option<&str> {
    Some(method).filter(|m| !m.trim().is_empty())
}

impl Context {
    fn var_index(&self, name: &str) -> BridgeResult<i32> {
        guard_ctx(&self.failed, || Ok(self.host.var_index(name)? as i32))
    }

    /// Binds `data` (`len` values) after checking the length. Shape, ndim and order are checked against the bundle
    /// by [`HostContext::bind`] with the C ABI's messages, which take precedence: the length message appears only
    /// when the array length matches neither the given shape nor the variable.
    ///
    /// # Safety
    /// The array must stay valid and not be accessed by the host during calls on this context while bound.
    unsafe fn bind_checked(
        host: &mut HostContext,
        name: &str,
        len: usize,
        data: HostData,
        shape: &[i64],
        order: i32,
    ) -> Result<()> {
        let lay = &host.analyser.bundle.layout;
        let expected = lay.var_index(name).map(|v| lay.variables[v].nchan() * lay.grid.npoints());
        let product = shape.iter().try_fold(1i64, |a, &d| a.checked_mul(d));
        if let Some(want) = expected {
            if len != want && product != Some(len as i64) {
                return Err(Error::arg(format!(
                    "bind_field '{name}': the array has {len} values but shape {shape:?} describes {}; '{name}' needs {want}",
                    product.map_or_else(|| "an overflowing size".to_string(), |p| p.to_string())
                )));
            }
        }
        // When the lengths disagree here, the shape cannot equal the bundle's, so `bind` rejects it without storing.
        // SAFETY: forwarded contract.
        unsafe { host.bind(name, data, shape, order) }
    }

    unsafe fn bind_field_f32(&mut self, name: &str, data: &mut [f32], shape: &[i64], order: i32) -> BridgeResult<()> {
        guard_ctx(&self.failed, || {
            // SAFETY: the C++ caller keeps the array alive while bound (documented in latentda.hpp).
            unsafe {
                Self::bind_checked(&mut self.host, name, data.len(), HostData::F32(data.as_mut_ptr()), shape, order)
            }
        })
    }

    unsafe fn bind_field_f64(&mut self, name: &str, data: &mut [f64], shape: &[i64], order: i32) -> BridgeResult<()> {
        guard_ctx(&self.failed, || {
            // SAFETY: as in bind_field_f32.
            unsafe {
                Self::bind_checked(&mut self.host, name, data.len(), HostData::F64(data.as_mut_ptr()), shape, order)
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn set_obs(
        &mut self,
        var: &[i32],
        lat: &[f64],
        lon: &[f64],
        level: &[f64],
        value: &[f64],
        sigma: &[f64],
    ) -> BridgeResult<()> {
        guard_ctx(&self.failed, || self.host.set_obs(var, lat, lon, level, value, sigma))
    }

    fn set_obs_times(&mut self, time_hours: &[f64]) -> BridgeResult<()> {
        guard_ctx(&self.failed, || self.host.set_obs_times(time_hours))
    }

    #[allow(clippy::too_many_arguments)]
    fn set_withheld(
        &mut self,
        var: &[i32],
        lat: &[f64],
        lon: &[f64],
        level: &[f64],
        value: &[f64],
        sigma: &[f64],
    ) -> BridgeResult<()> {
        guard_ctx(&self.failed, || self.host.set_withheld(var, lat, lon, level, value, sigma))
    }

    fn set_analysis_time(&mut self, hours: f64) -> BridgeResult<()> {
        guard_ctx(&self.failed, || {
            self.host.analyser.set_analysis_time(hours).map_err(|e| e.context("set_analysis_time"))
        })
    }

    fn set_ensemble(&mut self, k: usize, members: &[f64]) -> BridgeResult<()> {
        guard_ctx(&self.failed, || {
            let an = &mut self.host.analyser;
            if k == 0 {
                an.clear_ensemble();
                return Ok(());
            }
            let n = an.bundle.layout.state_len();
            if k.checked_mul(n) != Some(members.len()) {
                return Err(Error::arg(format!(
                    "set_ensemble: {} values for k = {k} members of the state size {n}",
                    members.len()
                )));
            }
            an.set_ensemble(members.chunks_exact(n).map(<[f64]>::to_vec).collect())
        })
    }

    /// # Safety
    /// `step`, `tl` and `ad` are each 0 or the address of a function of the C type `LdaStepFn`, `LdaStepTlFn` and
    /// `LdaStepAdFn` respectively, callable with `user` for as long as the model is installed (the header's
    /// trampolines and the `StepFns` they read live in the C++ `Context`, which outlives this one).
    unsafe fn set_step_model(
        &mut self,
        step: usize,
        tl: usize,
        ad: usize,
        user: usize,
        time_step_hours: f64,
    ) -> BridgeResult<()> {
        guard_ctx(&self.failed, || {
            // SAFETY: `Option<unsafe extern "C" fn>` has the size of usize, 0 is `None` (the niche of a non-null
            // function pointer), and any other value is a function of the right type (the contract above).
            let (step, tl, ad) = unsafe {
                (
                    std::mem::transmute::<usize, LdaStepFn>(step),
                    std::mem::transmute::<usize, LdaStepTlFn>(tl),
                    std::mem::transmute::<usize, LdaStepAdFn>(ad),
                )
            };
            if step.is_none() && tl.is_none() && ad.is_none() {
                self.host.set_step_model(None);
                return Ok(());
            }
            let m =
                HostStep::new(step, tl, ad, user as *mut std::ffi::c_void, self.host.state_size(), time_step_hours)?;
            self.host.set_step_model(Some(m));
            Ok(())
        })
    }

    fn l4dvar_check(&mut self, nslots: i32, seed: u64) -> BridgeResult<ffi::L4dvarCheck> {
        guard_ctx(&self.failed, || {
            if !(1..=1000).contains(&nslots) {
                return Err(Error::arg(format!("l4dvar_check: nslots = {nslots} must be in 1..=1000")));
            }
            let c = self.host.l4dvar_check(nslots as usize, seed)?;
            Ok(ffi::L4dvarCheck { step_dot: c.step_dot.rel, chained_dot: c.chained_dot.rel })
        })
    }

    fn report_number(&self, path: &str) -> BridgeResult<f64> {
        guard_ctx(&self.failed, || report_lookup(self.host.report_json()?, path))
    }

    fn analyse(&mut self, method: &str) -> BridgeResult<()> {
        guard_ctx(&self.failed, || self.host.analyse(method_arg(method)))
    }

    fn obs_qc(&self) -> BridgeResult<Vec<i32>> {
        guard_ctx(&self.failed, || Ok(self.host.obs_qc()?.iter().map(|f| *f as i32).collect()))
    }

    fn report_json(&self) -> BridgeResult<String> {
        guard_ctx(&self.failed, || Ok(self.host.report_json()?.to_string()))
    }

    fn control_size(&self) -> BridgeResult<usize> {
        guard_ctx(&self.failed, || self.host.control_size())
    }

    fn state_size(&self) -> BridgeResult<usize> {
        guard_ctx(&self.failed, || Ok(self.host.state_size()))
    }

    fn b_linearise(&mut self) -> BridgeResult<()> {
        guard_ctx(&self.failed, || self.host.b_linearise())
    }

    fn bsqrt(&mut self, v: &[f64]) -> BridgeResult<Vec<f64>> {
        guard_ctx(&self.failed, || self.host.bsqrt_vec(v))
    }

    fn bsqrt_to_fields(&mut self, v: &[f64]) -> BridgeResult<()> {
        guard_ctx(&self.failed, || self.host.bsqrt(v, None))
    }

    fn bsqrt_ad(&mut self, x: &[f64]) -> BridgeResult<Vec<f64>> {
        guard_ctx(&self.failed, || self.host.bsqrt_ad_vec(Some(x)))
    }

    fn bsqrt_ad_from_fields(&mut self) -> BridgeResult<Vec<f64>> {
        guard_ctx(&self.failed, || self.host.bsqrt_ad_vec(None))
    }

    fn bvariance(&mut self) -> BridgeResult<Vec<f64>> {
        guard_ctx(&self.failed, || self.host.bvariance_vec())
    }

    fn brandomize(&mut self, seed: u64) -> BridgeResult<Vec<f64>> {
        guard_ctx(&self.failed, || self.host.brandomize_vec(seed))
    }

    fn grid_info(&self) -> BridgeResult<ffi::GridInfo> {
        guard_ctx(&self.failed, || {
            let lay = self.host.layout();
            Ok(ffi::GridInfo {
                kind: crate::coupling::ffi::LdaGridKind::from(lay.grid.kind) as i32,
                nlat: lay.grid.nlat(),
                nlon: lay.grid.nlon(),
                vertical: crate::coupling::ffi::LdaVertical::from(lay.vertical.kind) as i32,
                nlev: lay.vertical.levels.len(),
            })
        })
    }

    fn grid_coords(&self, which: i32) -> BridgeResult<Vec<f64>> {
        guard_ctx(&self.failed, || {
            let lay = self.host.layout();
            match which {
                0 => Ok(lay.grid.lat.clone()),
                1 => Ok(lay.grid.lon.clone()),
                2 => Ok(lay.vertical.levels.clone()),
                _ => Err(Error::arg(format!("grid_coords: which = {which} (0 latitudes, 1 longitudes, 2 levels)"))),
            }
        })
    }

    fn var_count(&self) -> BridgeResult<i32> {
        guard_ctx(&self.failed, || Ok(self.host.layout().variables.len() as i32))
    }

    fn var_info(&self, index: i32) -> BridgeResult<ffi::VarInfo> {
        guard_ctx(&self.failed, || {
            let i = usize::try_from(index).map_err(|_| {
                Error::arg(format!("variable identifier {index} is negative (identifiers are 0-based)"))
            })?;
            let v = self.host.var_layout(i)?;
            Ok(ffi::VarInfo { name: v.name, units: v.units, nlev: v.nlev as i32, offset: v.offset, length: v.length })
        })
    }

    fn obs_h(&mut self, x: &[f64]) -> BridgeResult<ffi::ObsValues> {
        guard_ctx(&self.failed, || {
            self.host.check_state_len("obs_h: state x", x.len())?;
            let (hx, qc) = self.host.obs_h(Some(x))?;
            Ok(ffi::ObsValues { hx, qc: qc.iter().map(|f| *f as i32).collect() })
        })
    }

    fn obs_h_fields(&mut self) -> BridgeResult<ffi::ObsValues> {
        guard_ctx(&self.failed, || {
            let (hx, qc) = self.host.obs_h(None)?;
            Ok(ffi::ObsValues { hx, qc: qc.iter().map(|f| *f as i32).collect() })
        })
    }

    fn obs_h_ad(&mut self, y: &[f64]) -> BridgeResult<Vec<f64>> {
        guard_ctx(&self.failed, || self.host.obs_h_ad(y))
    }

    fn bsqrt_noise(&mut self, seed: u64, trials: i32) -> BridgeResult<ffi::NoiseFloor> {
        guard_ctx(&self.failed, || {
            let t = usize::try_from(trials)
                .map_err(|_| Error::arg(format!("bsqrt_noise: trials = {trials} must be in 1..=100")))?;
            let nf = self.host.bsqrt_noise(seed, t)?;
            Ok(ffi::NoiseFloor {
                u_nonlinearity: nf.u_nonlinearity,
                ut_nonlinearity: nf.ut_nonlinearity,
                adjoint_mismatch: nf.adjoint_mismatch,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_the_status_code() {
        let e = Error::arg("bind_field 'u': bad");
        assert_eq!(encode_error(&e), "[latentda 2] bind_field 'u': bad");
        let r: BridgeResult<()> = guard(|| panic!("boom"));
        let m = r.unwrap_err();
        assert!(m.starts_with("[latentda 9] internal error"), "{m}");
        assert!(m.contains("boom"));
    }

    #[test]
    fn a_panic_fails_the_context_for_good() {
        let failed = Cell::new(false);
        let r: BridgeResult<()> = guard_ctx(&failed, || panic!("boom"));
        assert!(r.unwrap_err().starts_with("[latentda 9] internal error"));
        assert!(failed.get());
        let r: BridgeResult<i32> = guard_ctx(&failed, || Ok(1));
        let m = r.unwrap_err();
        assert!(m.starts_with("[latentda 9] ") && m.contains("can no longer be used"), "{m}");
    }

    #[test]
    fn bad_bundle_path_is_a_bundle_error() {
        let m = open("/nonexistent/latentda-bundle", "").err().expect("must fail");
        assert!(m.starts_with("[latentda 3] "), "{m}");
    }
}
