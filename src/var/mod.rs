//! Variational analysis: run-time options, the incremental Gauss-Newton solver, control-variable transforms, the
//! analysis driver and its report.

pub mod adam;
pub mod adaptive;
pub mod analysis;
pub mod control;
pub mod desroziers;
pub mod ensemble;
pub mod formulation;
pub mod fourd;
pub mod guards;
mod lanczos;
mod lmp;
pub mod members;
pub mod mix;
pub mod options;
pub mod pipeline;
pub mod report;
pub mod sigma_b;
pub mod solver;
pub mod threed;
pub mod twin;
pub mod withheld;
