//! Error type shared by the Rust API, the CLI and the C ABI.
//!
//! Every variant carries a complete, human-readable message that names the file, variable, index or argument at
//! fault; the variant itself selects the numeric status code returned through the C ABI.

use std::fmt;

/// Numeric status codes of the C ABI (0 = success). Stable: documented in `include/latentda.h`.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullPointer = 1,
    /// An argument was invalid (shape, length, name, option value, ...).
    InvalidArgument = 2,
    /// The bundle is missing, malformed, or fails validation (checksum, ONNX names/shapes, statistics).
    Bundle = 3,
    /// The execution backend or device could not be used (library not found, CUDA unavailable, model run failed).
    Backend = 4,
    /// Reading or writing a file failed (NetCDF, CSV, report).
    Io = 5,
    /// Input data are invalid (NaN/Inf in a background field, ...).
    InvalidData = 6,
    /// A required field is not bound, or the analysis has no usable observations where some are needed.
    NotReady = 7,
    /// The minimisation failed (non-finite cost or gradient, breakdown).
    Solver = 8,
    /// An internal error (a caught panic). The context should be closed.
    Internal = 9,
    /// An output buffer was too small; the needed size was returned.
    BufferTooSmall = 10,
}

impl Status {
    /// Every status, in code order (the C header, the C++ and Fortran constants and docs/coupling.md must list the
    /// same; tests/coupling.rs checks them all against this list).
    pub const ALL: [Status; 11] = [
        Status::Ok,
        Status::NullPointer,
        Status::InvalidArgument,
        Status::Bundle,
        Status::Backend,
        Status::Io,
        Status::InvalidData,
        Status::NotReady,
        Status::Solver,
        Status::Internal,
        Status::BufferTooSmall,
    ];
}

/// latentda's error: a status category and a message.
#[derive(Debug, Clone)]
pub struct Error {
    /// Category, mapped to the C status code.
    pub status: Status,
    /// Complete message naming what is at fault.
    pub message: String,
}

impl Error {
    /// Builds an error of the given category.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Error { status, message: message.into() }
    }
    /// Invalid argument.
    pub fn arg(message: impl Into<String>) -> Self {
        Self::new(Status::InvalidArgument, message)
    }
    /// Bundle validation failure.
    pub fn bundle(message: impl Into<String>) -> Self {
        Self::new(Status::Bundle, message)
    }
    /// Backend or device failure.
    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(Status::Backend, message)
    }
    /// I/O failure.
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(Status::Io, message)
    }
    /// Invalid input data.
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(Status::InvalidData, message)
    }
    /// An `Internal` error from a panic payload caught at a language boundary (`boundary`: "C", "C++").
    pub fn from_panic(payload: Box<dyn std::any::Any + Send>, boundary: &str) -> Self {
        let m = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Self::new(Status::Internal, format!("internal error (panic caught at the {boundary} boundary): {m}"))
    }

    /// The numeric C status code.
    pub fn code(&self) -> i32 {
        self.status as i32
    }
    /// Prefixes the message with context, keeping the category.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;
