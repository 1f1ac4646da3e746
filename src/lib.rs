//! # latentda
//!
//! An embedded runtime for **latent data assimilation** in numerical weather prediction models (Fan, Bai, Fei et al.,
//! Science Advances 2026). A host model hands latentda its background fields; latentda encodes them with an ONNX
//! autoencoder, minimises the latent 3D-Var cost
//!
//! ```text
//! z = z_b + s * w,   x(w) = x_b + sd * (D(z) - D(z_b)),
//! J(w) = 1/2 |w|^2 + 1/2 sum_i ((y_i - H_i x(w)) / sigma_i)^2
//! ```
//!
//! by incremental Gauss-Newton with a conjugate-gradient inner loop (one TL and one AD decoder run per iteration),
//! and returns the analysis. The same solver, observation operator and report serve a model-space 3D-Var baseline
//! with a static B, and the latent B square root is exposed for hosts with their own minimiser.
//!
//! Entry points: [`analysis::Analyser`] (Rust), the C ABI in `include/latentda.h`, the Fortran module
//! `fortran/latentda.f90`, and the `latentda` command-line tool.

// Numerical kernels index several arrays in lock-step, where an index loop reads clearer than zipped iterators;
// `!(x > 0.0)`-style tests are deliberate: they also reject NaN.
#![allow(clippy::needless_range_loop, clippy::neg_cmp_op_on_partial_ord)]

pub mod analysis;
pub mod autoencoder;
pub mod backend;
pub mod balance;
pub mod baseline;
pub mod bop;
pub mod bundle;
pub mod checks;
pub mod cxx_bridge;
pub mod error;
pub mod grid;
pub mod host;
pub mod latent;
pub mod ncio;
pub mod obs;
pub mod obsop;
pub mod options;
pub mod report;
pub mod solver;

pub use analysis::{Analyser, Analysis};
pub use error::{Error, Result, Status};
pub use obs::{Observation, QcFlag};
pub use options::{Method, Options, OutputMode};
pub mod ffi;
