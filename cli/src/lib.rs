//! # latentda-cli
//!
//! What the `latentda` command-line tool needs beyond the host library `latentda`: the demonstration behind
//! `latentda demo` and its map figures. They live here, not in `liblatentda.{so,a}`, so the library that forecast
//! models link carries no plotting, PNG encoding or embedded font.

// Numerical kernels index several arrays in lock-step, where an index loop reads clearer than zipped iterators;
// `!(x > 0.0)`-style tests are deliberate: they also reject NaN.
#![allow(clippy::needless_range_loop, clippy::neg_cmp_op_on_partial_ord)]

/// The demonstration behind `latentda demo`: the three methods on one case, one table, figures.
pub mod demo;
/// Map figures (PNG) of fields, increments and observations.
pub mod plot;
