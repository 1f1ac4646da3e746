//! C++ API through `cxx`: the Rust half of `include/latentda.hpp`.
//!
//! The bridge (namespace `latentda::detail`) exposes an opaque [`Context`] wrapping the same [`HostContext`] the C
//! ABI uses, so C++ gets the same checks, messages and status codes. The public C++ class `latentda::Context` in the
//! hand-written header owns a `rust::Box<latentda::detail::Context>` and turns the bridge's `rust::Error` into
//! `latentda::Error` (a `std::runtime_error` with `code()`).
//!
//! Error convention: every fallible bridge function returns `Result<_, String>` whose message is
//! `"[latentda <code>] <message>"`, `<code>` being the C ABI status (`LDA_ERR_*`, [`crate::error::Status`]) and `<message>` exactly
//! what `lda_last_error` would return. The header parses the prefix back. Every body runs under [`guard`], which
//! catches panics (a panic in an `extern "Rust"` function would otherwise abort the C++ host) and reports them as
//! `LDA_ERR_INTERNAL`.
//!
//! Build: `build.rs` compiles the generated C++ glue into the Rust library (`cxx_build`), so `liblatentda.a` is all a
//! C++ program links; it also copies the generated header to `include/latentda/bridge.h` and `rust/cxx.h` to
//! `include/latentda/rust/cxx.h`. See `examples/cpp/README.md`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{Error, Result};
use crate::coupling::host::{HostContext, HostData};

#[cxx::bridge(namespace = "latentda::detail")]
mod ffi {
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
        unsafe fn bind_field_f32(self: &mut Context, name: &str, data: &mut [f32], shape: &[i64], order: i32) -> Result<()>;
        /// Binds a double host array; see `bind_field_f32`.
        unsafe fn bind_field_f64(self: &mut Context, name: &str, data: &mut [f64], shape: &[i64], order: i32) -> Result<()>;
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
        /// Runs an analysis (`method` empty for the option's default); bound arrays are written only on success.
        fn analyse(self: &mut Context, method: &str) -> Result<()>;
        /// QC flags of the last successful analysis.
        fn obs_qc(self: &Context) -> Result<Vec<i32>>;
        /// JSON report of the last successful analysis.
        fn report_json(self: &Context) -> Result<String>;
        /// Control-vector size of the B operator (option `b_operator`).
        fn control_size(self: &Context) -> Result<usize>;
        /// Full state length.
        fn state_size(self: &Context) -> Result<usize>;
        /// (Re)linearises the B operator (option `b_operator`) at the bound background.
        fn b_linearise(self: &mut Context) -> Result<()>;
        /// x = U v into `x_out` (state layout).
        fn bsqrt(self: &mut Context, v: &[f64], x_out: &mut [f64]) -> Result<()>;
        /// x = U v written into the bound arrays.
        fn bsqrt_to_fields(self: &mut Context, v: &[f64]) -> Result<()>;
        /// v = U^T x from `x` (state layout).
        fn bsqrt_ad(self: &mut Context, x: &[f64], v_out: &mut [f64]) -> Result<()>;
        /// v = U^T x reading x from the bound arrays.
        fn bsqrt_ad_from_fields(self: &mut Context, v_out: &mut [f64]) -> Result<()>;
        /// diag(U U^T) into `var_out` (state layout).
        fn bvariance(self: &mut Context, var_out: &mut [f64]) -> Result<()>;
        /// A draw U xi, xi ~ N(0, I) from `seed`, into `x_out` (state layout).
        fn brandomize(self: &mut Context, seed: u64, x_out: &mut [f64]) -> Result<()>;
    }
}

/// The opaque context behind `latentda::Context` in C++.
pub struct Context {
    host: HostContext,
}

/// Formats an error for the C++ side: `"[latentda <code>] <message>"` (parsed by `include/latentda.hpp`).
pub fn encode_error(e: &Error) -> String {
    format!("[latentda {}] {}", e.code(), e.message)
}

/// Runs a bridge body with panics caught; errors and panics become encoded messages.
fn guard<T>(f: impl FnOnce() -> Result<T>) -> std::result::Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(encode_error(&e)),
        Err(p) => Err(encode_error(&Error::from_panic(p, "C++"))),
    }
}

type BridgeResult<T> = std::result::Result<T, String>;

fn open(bundle_dir: &str, options: &str) -> BridgeResult<Box<Context>> {
    guard(|| {
        let opts = if options.trim().is_empty() { None } else { Some(options) };
        Ok(Box::new(Context { host: HostContext::open(bundle_dir, opts)? }))
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
        guard(|| Ok(self.host.var_index(name)? as i32))
    }

    /// Binds `data` (`len` values) after checking the length. Shape, ndim and order are checked against the bundle
    /// by [`HostContext::bind`] with the C ABI's messages, which take precedence: the length message appears only
    /// when the array length matches neither the given shape nor the variable.
    ///
    /// # Safety
    /// The array must stay valid and not be accessed by the host during calls on this context while bound.
    unsafe fn bind_checked(&mut self, name: &str, len: usize, data: HostData, shape: &[i64], order: i32) -> Result<()> {
        let lay = &self.host.analyser.bundle.layout;
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
        unsafe { self.host.bind(name, data, shape, order) }
    }

    unsafe fn bind_field_f32(&mut self, name: &str, data: &mut [f32], shape: &[i64], order: i32) -> BridgeResult<()> {
        guard(|| {
            // SAFETY: the C++ caller keeps the array alive while bound (documented in latentda.hpp).
            unsafe {
                self.bind_checked(name, data.len(), HostData::F32(data.as_mut_ptr()), shape, order)
            }
        })
    }

    unsafe fn bind_field_f64(&mut self, name: &str, data: &mut [f64], shape: &[i64], order: i32) -> BridgeResult<()> {
        guard(|| {
            // SAFETY: as in bind_field_f32.
            unsafe {
                self.bind_checked(name, data.len(), HostData::F64(data.as_mut_ptr()), shape, order)
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn set_obs(&mut self, var: &[i32], lat: &[f64], lon: &[f64], level: &[f64], value: &[f64], sigma: &[f64]) -> BridgeResult<()> {
        guard(|| self.host.set_obs(var, lat, lon, level, value, sigma))
    }

    fn analyse(&mut self, method: &str) -> BridgeResult<()> {
        guard(|| self.host.analyse(method_arg(method)))
    }

    fn obs_qc(&self) -> BridgeResult<Vec<i32>> {
        guard(|| Ok(self.host.obs_qc()?.iter().map(|f| *f as i32).collect()))
    }

    fn report_json(&self) -> BridgeResult<String> {
        guard(|| Ok(self.host.report_json()?.to_string()))
    }

    fn control_size(&self) -> BridgeResult<usize> {
        guard(|| self.host.control_size())
    }

    fn state_size(&self) -> BridgeResult<usize> {
        guard(|| Ok(self.host.state_size()))
    }

    fn b_linearise(&mut self) -> BridgeResult<()> {
        guard(|| self.host.b_linearise())
    }

    fn bsqrt(&mut self, v: &[f64], x_out: &mut [f64]) -> BridgeResult<()> {
        guard(|| self.host.bsqrt(v, Some(x_out)))
    }

    fn bsqrt_to_fields(&mut self, v: &[f64]) -> BridgeResult<()> {
        guard(|| self.host.bsqrt(v, None))
    }

    fn bsqrt_ad(&mut self, x: &[f64], v_out: &mut [f64]) -> BridgeResult<()> {
        guard(|| self.host.bsqrt_ad(Some(x), v_out))
    }

    fn bsqrt_ad_from_fields(&mut self, v_out: &mut [f64]) -> BridgeResult<()> {
        guard(|| self.host.bsqrt_ad(None, v_out))
    }

    fn bvariance(&mut self, var_out: &mut [f64]) -> BridgeResult<()> {
        guard(|| self.host.bvariance(Some(var_out)))
    }

    fn brandomize(&mut self, seed: u64, x_out: &mut [f64]) -> BridgeResult<()> {
        guard(|| self.host.brandomize(seed, Some(x_out)))
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
    fn bad_bundle_path_is_a_bundle_error() {
        let m = open("/nonexistent/latentda-bundle", "").err().expect("must fail");
        assert!(m.starts_with("[latentda 3] "), "{m}");
    }
}
