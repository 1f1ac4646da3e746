//! Diagnostics: geostrophic balance of increments ([`balance`](crate::diag::balance)) and the adjoint, Taylor and reconstruction checks of
//! a bundle ([`checks`](crate::diag::checks)).

pub mod balance;
pub mod checks;
