//! Typed errors of the driver and their single conversion to `tonic::Status`.
//!
//! Every service returns [`Error`]; the gRPC code is chosen here and nowhere
//! else. Messages name the offending field or path so that an operator (or a
//! CO surfacing the message) can tell what to fix.

use tonic::{Code, Status};

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a CSI call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required field is missing or a field has an invalid value.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The volume, snapshot or node named in the request does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A resource with that name exists with incompatible properties.
    #[error("{0}")]
    AlreadyExists(String),
    /// Another operation on the same volume is in flight, or a pagination
    /// token is not one this driver handed out.
    #[error("{0}")]
    Aborted(String),
    /// A capacity range the driver cannot satisfy.
    #[error("{0}")]
    OutOfRange(String),
    /// Not enough space in the pool, or an attach limit was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request is valid but the volume is in the wrong state for it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The RPC is not served in this mode.
    #[error("{0}")]
    Unimplemented(String),
    /// A remote service (an NFS server) cannot be reached now; retrying
    /// later may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// A remote service did not answer within the driver's bound.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A system call, command or state-store failure.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// INVALID_ARGUMENT naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// INVALID_ARGUMENT for a missing required field.
    pub fn missing(field: impl Into<String>) -> Self {
        Error::invalid(field, "is required")
    }

    /// INTERNAL with context for an I/O error.
    pub fn io(context: impl std::fmt::Display, err: std::io::Error) -> Self {
        Error::Internal(format!("{context}: {err}"))
    }

    /// INTERNAL with context for an errno from nix.
    pub fn sys(context: impl std::fmt::Display, err: nix::Error) -> Self {
        Error::Internal(format!("{context}: {}", err.desc()))
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Aborted(_) => Code::Aborted,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Internal(format!("state store: {e}"))
    }
}

/// The status of a failed call of RPC `rpc`, logged at debug level (the
/// answer itself is the CO's to log).
pub fn failed(rpc: &'static str) -> impl Fn(Error) -> Status {
    move |e| {
        tracing::debug!(rpc, error = %e, "request failed");
        Status::from(e)
    }
}

/// A gRPC answer: the response, or the status of the error.
pub fn answer<T>(
    rpc: &'static str,
    r: Result<T>,
) -> std::result::Result<tonic::Response<T>, Status> {
    r.map(tonic::Response::new).map_err(failed(rpc))
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::new(e.code(), e.to_string())
    }
}
