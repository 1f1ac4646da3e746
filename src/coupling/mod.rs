//! Coupling to host models: the host-array context shared by the interfaces ([`host`](crate::coupling::host)), the
//! C ABI ([`ffi`](crate::coupling::ffi), header `include/latentda.h`) and the C++ bridge
//! ([`cxx_bridge`](crate::coupling::cxx_bridge), `include/latentda.hpp`).

pub mod callbacks;
pub mod cxx_bridge;
pub mod ffi;
pub mod host;
pub mod noise;
