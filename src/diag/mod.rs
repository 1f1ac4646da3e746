//! Diagnostics: geostrophic balance of increments ([`balance`](crate::diag::balance)), the adjoint, Taylor and reconstruction checks of
//! a bundle ([`checks`](crate::diag::checks)), and verification against a truth state ([`verify`](crate::diag::verify)).

pub mod balance;
pub mod checks;
pub mod verify;
