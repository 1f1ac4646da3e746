//! Diagnostics: geostrophic balance of increments ([`balance`](crate::diag::balance)), the adjoint, Taylor and reconstruction checks of
//! a bundle ([`checks`](crate::diag::checks)), verification against a truth state ([`verify`](crate::diag::verify)), and the Desroziers innovation statistics that tune B and R
//! without truth ([`desroziers`](crate::diag::desroziers)).

pub mod balance;
pub mod checks;
pub mod desroziers;
pub mod verify;
