//! Diagnostics: geostrophic balance of increments ([`balance`](crate::diag::balance)), the adjoint, Taylor and reconstruction checks of
//! a bundle ([`checks`](crate::diag::checks)) and verification against a truth state ([`verify`](crate::diag::verify)). The Desroziers innovation statistics
//! of an analysis live with the analysis ([`desroziers`](crate::var::desroziers)).

pub mod balance;
pub mod checks;
pub mod verify;
