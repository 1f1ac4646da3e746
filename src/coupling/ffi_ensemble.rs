//! C ABI of the ensemble members (issue 24): `lda_set_ensemble`. A child module of [`crate::coupling::ffi`] (the
//! same guard, NULL checks and last-error); cbindgen reads it through the `mod` declaration there. The `///`
//! comments are the C header's documentation.

use crate::coupling::host::Order;
use crate::error::Error;

use super::{copy_in, null, with_ctx, LdaContext};

/// Sets the ensemble members of the B in force: `k` model states valid at the analysis time (ensemble forecasts,
/// or a time-lagged set of earlier cycles' forecasts valid now), copied.
///
/// - `k`: number of members, at least 2; 0 removes the members (`members` may then be NULL); 1 is
///   `LDA_ERR_INVALID_ARGUMENT` (one member has no spread).
/// - `n`: values per member: the state size (`lda_state_size`); any other value is `LDA_ERR_INVALID_ARGUMENT`.
/// - `members`: `k * n` values, member after member, each in the state layout of `lda_bsqrt`'s x (the bundle's
///   variables in order, each longitude fastest, latitudes north to south, levels top to bottom), physical units.
///   Read during the call only; must not be NULL when `k` > 0.
/// - `order`: `LDA_ORDER_C` (the array is `members[k][n]`) or `LDA_ORDER_FORTRAN` (the array is `members(n, k)`):
///   the same memory, so this only says how the host declared it; any other value is `LDA_ERR_INVALID_ARGUMENT`.
///
/// With members set, method "hybrid" has a third part, `ensemble_gamma` times the latent ensemble B (the members
/// encoded and localised on the latent grid, half-width `ensemble_localisation_km`), and method "3dvar" becomes
/// hybrid 3DEnVar, the static B plus `ensemble_gamma` times the model-space ensemble B of the same members
/// (`ensemble_localisation_model_km`). The report gains an `ensemble` section and `jb_parts.ensemble`. Methods
/// "l3dvar" and "l4dvar" ignore the members. The host's B operator (`lda_bsqrt`, `lda_bsqrt_ad`, `lda_bvariance`,
/// `lda_brandomize`, `lda_bsqrt_noise`) of `b_operator` "hybrid" or "static" then includes the same ensemble part:
/// its control vector (`lda_control_size`) gains k x (latent grid points) or k x (model grid points) values at the
/// end. A non-finite value is `LDA_ERR_INVALID_DATA` naming the member and the variable; on any error the members
/// set before are kept.
#[no_mangle]
pub extern "C" fn lda_set_ensemble(ctx: *mut LdaContext, k: usize, n: usize, members: *const f64, order: i32) -> i32 {
    with_ctx(ctx, |inner| {
        if Order::from_code(order).is_none() {
            return Err(Error::arg(format!(
                "lda_set_ensemble: order = {order} is neither LDA_ORDER_C nor LDA_ORDER_FORTRAN"
            )));
        }
        if k == 0 {
            inner.analyser.clear_ensemble();
            return Ok(());
        }
        let ns = inner.analyser.bundle.layout.state_len();
        if n != ns {
            return Err(Error::arg(format!("lda_set_ensemble: n = {n} values per member, but the state size is {ns}")));
        }
        if k == 1 {
            // the analyser's own message (K >= 2), before reading any memory
            return inner.analyser.set_ensemble(vec![Vec::new()]);
        }
        if members.is_null() {
            return Err(null("members"));
        }
        let total = k.checked_mul(n).ok_or_else(|| {
            Error::arg(format!("lda_set_ensemble: k = {k} members of n = {n} values overflow the address space"))
        })?;
        // SAFETY: `members` holds k * n values (contract) and was checked non-null.
        let all = unsafe { copy_in(members, total, "members") }?;
        inner.analyser.set_ensemble(all.chunks_exact(n).map(<[f64]>::to_vec).collect())
    })
}
