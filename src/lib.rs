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
//! Entry points: [`Analyser`] (Rust), the C ABI in `include/latentda.h`, the Fortran module
//! `fortran/latentda.f90`, and the `latentda` command-line tool.

// Numerical kernels index several arrays in lock-step, where an index loop reads clearer than zipped iterators;
// `!(x > 0.0)`-style tests are deliberate: they also reject NaN.
#![allow(clippy::needless_range_loop, clippy::neg_cmp_op_on_partial_ord)]

// Layers, bottom to top; a module uses only its own layer and those below it.
/// Background-error covariances: latent, static, hybrid (one operator trait).
pub mod bmat;
/// Bundle: manifest, grid and layout, statistics, state files.
pub mod bundle;
/// Coupling to hosts: the host-array context, the C ABI and the C++ bridge.
pub mod coupling;
/// Diagnostics: balance, adjoint and Taylor tests.
pub mod diag;
pub mod error;
/// Models: ONNX execution backends and the autoencoder.
pub mod model;
pub mod numeric;
/// Observations: reading, the observation operator, quality control.
pub mod obs;
/// Output files written whole or not at all.
pub mod outfile;
/// Variational analysis: options, solver, control transforms, the analysis driver and its report.
pub mod var;

pub use bundle::{grid, ncio};
pub use coupling::ffi;
pub use error::{Error, Result, Status};
pub use obs::{Observation, QcFlag};
pub use var::analysis::{Analyser, Analysis};
pub use var::options::{Method, Options, OutputMode};
