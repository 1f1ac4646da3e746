//! Diagnostics: geostrophic balance of increments ([`balance`]) and the adjoint, Taylor and reconstruction checks of
//! a bundle ([`checks`]).

pub mod balance;
pub mod checks;
