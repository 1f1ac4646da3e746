//! Diagnostics: geostrophic balance of increments ([`balance`]), the adjoint, Taylor and reconstruction checks of
//! a bundle ([`checks`]), and verification against a truth state ([`verify`]).

pub mod balance;
pub mod checks;
pub mod verify;
