//! Error type shared by the Rust API, the CLI and the C ABI.
//!
//! Every variant carries a complete, human-readable message that names the file, variable, index or argument at
//! fault; the variant itself selects the numeric status code returned through the C ABI.
//!
//! [`Status`] is the one status enum of latentda: the category of every Rust [`Error`] and, exported by cbindgen as
//! `LdaStatus`, the C ABI's status (its doc comment is the C header's, written for C readers). Its C names are
//! `LDA_OK` and `LDA_ERR_<VARIANT>` ([`Status::c_name`]; build.rs writes them for cbindgen, which renames enums but
//! not single variants). Numbers are never reused: a new status takes the next number.

use std::fmt;

/// Status codes: every latentda function except `lda_last_error` and `lda_version` returns an `int32_t` holding one
/// of these values (`LdaStatus` is a typedef of `int32_t`).
///
/// `LDA_OK` (0) is success; every other value is a failure, and `lda_last_error` then returns a message that names
/// the argument, variable, file or index at fault. The numeric values are stable. A failing call never writes the
/// bound host arrays and leaves bindings and observations as they were (a failing `lda_analyse` does discard the
/// QC flags and report of the previous analysis).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// A required pointer argument (or the context) was NULL; the message names the argument.
    NullPointer = 1,
    /// An argument was invalid: unknown variable name, wrong ndim/shape/order at bind, observation count 0, wrong
    /// buffer length, unknown method, a bad options string, or a context pointer that is not an open context
    /// (closed already, e.g. a second `lda_close`, or never returned by `lda_open`).
    InvalidArgument = 2,
    /// The bundle directory is missing, or the bundle is malformed or fails validation (manifest, checksums, ONNX
    /// input/output names and shapes, statistics).
    Bundle = 3,
    /// The execution backend or device cannot be used (ONNX Runtime library not found, CUDA unavailable, a model
    /// run failed).
    Backend = 4,
    /// Reading or writing a file failed.
    Io = 5,
    /// Input data are invalid: NaN or Inf in a bound field (the message gives variable and indices) or in a
    /// control vector. Never returned for observations: a bad observation is QC-flagged, not an error.
    InvalidData = 6,
    /// Not ready: a field is not bound, no observations were set, no analysis has succeeded yet (for
    /// `lda_obs_qc`/`lda_report_json`), the bundle lacks what the method needs (method "3dvar" or "hybrid", or B
    /// operator "static" or "hybrid", without baseline statistics), or the context is busy: a call on it from
    /// inside one of its own callbacks (re-entry) is refused at once.
    NotReady = 7,
    /// The minimisation failed (non-finite cost, gradient or analysis).
    Solver = 8,
    /// Internal error (a Rust panic caught at the boundary). The context is failed: every later call on it returns
    /// this code until `lda_close`.
    Internal = 9,
    /// An output buffer is too small; the needed size was returned (`lda_report_json`).
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

    /// The status's name in the C header: `LDA_OK`, or `LDA_ERR_` and the variant in SCREAMING_SNAKE_CASE
    /// (`Status::NotReady` is `LDA_ERR_NOT_READY`). build.rs derives the header's names by the same rule, and
    /// tests/coupling.rs checks the header against this function.
    pub const fn c_name(self) -> &'static str {
        match self {
            Status::Ok => "LDA_OK",
            Status::NullPointer => "LDA_ERR_NULL_POINTER",
            Status::InvalidArgument => "LDA_ERR_INVALID_ARGUMENT",
            Status::Bundle => "LDA_ERR_BUNDLE",
            Status::Backend => "LDA_ERR_BACKEND",
            Status::Io => "LDA_ERR_IO",
            Status::InvalidData => "LDA_ERR_INVALID_DATA",
            Status::NotReady => "LDA_ERR_NOT_READY",
            Status::Solver => "LDA_ERR_SOLVER",
            Status::Internal => "LDA_ERR_INTERNAL",
            Status::BufferTooSmall => "LDA_ERR_BUFFER_TOO_SMALL",
        }
    }

    /// The status with numeric code `code`, or `None` for a number that is not a status (rustls-ffi's
    /// `rustls_result` maps unknown numbers the same way, to a safe default chosen by the caller).
    pub fn from_code(code: i32) -> Option<Status> {
        Status::ALL.iter().copied().find(|s| *s as i32 == code)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `c_name` follows the rule build.rs applies to the variant names for the C header.
    #[test]
    fn c_names_follow_the_header_rule() {
        for s in Status::ALL {
            let rust = format!("{s:?}");
            let mut shouty = String::new();
            for (i, ch) in rust.chars().enumerate() {
                if ch.is_ascii_uppercase() && i > 0 {
                    shouty.push('_');
                }
                shouty.push(ch.to_ascii_uppercase());
            }
            let want = if s == Status::Ok { "LDA_OK".to_string() } else { format!("LDA_ERR_{shouty}") };
            assert_eq!(s.c_name(), want);
            assert_eq!(Status::from_code(s as i32), Some(s));
        }
        assert_eq!(Status::from_code(11), None);
        assert_eq!(Status::from_code(-1), None);
    }
}
