//! Background-error covariance operators B = U U^T: the latent B of the autoencoder ([`latent`](crate::bmat::latent)) and the static,
//! univariate model-space B of the 3D-Var baseline ([`static_b`](crate::bmat::static_b)).

pub mod latent;
pub mod static_b;
