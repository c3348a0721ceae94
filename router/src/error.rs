//! The router's errors: one vocabulary for every call, mapped to a gRPC status in one place
//! ([`ApiError::code`]). The messages are part of the API (docs/api.md): they name the field.

use herald_core::bus::BusError;
use herald_core::history::HistoryError;
use herald_core::registry::RegistryError;
use tonic::{Code, Status};

/// Why a call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No usable API key: missing, malformed or unknown.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The key belongs to another project.
    #[error("this API key does not belong to that project")]
    WrongProject,
    /// The project is not configured.
    #[error("unknown project {0:?}")]
    UnknownProject(String),
    /// A field of the request is missing or invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as named in the request.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry is unreachable or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The bus is unreachable or failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The history store is unreachable or failed: a recoverable message was not stored, so it
    /// was not sent either.
    #[error(transparent)]
    History(#[from] HistoryError),
}

impl ApiError {
    /// A missing or invalid `field`.
    pub fn invalid(field: &'static str, reason: impl std::fmt::Display) -> Self {
        ApiError::Invalid {
            field,
            reason: reason.to_string(),
        }
    }

    /// The gRPC status code of this error.
    pub fn code(&self) -> Code {
        match self {
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::WrongProject => Code::PermissionDenied,
            ApiError::UnknownProject(_) => Code::NotFound,
            ApiError::Invalid { .. } => Code::InvalidArgument,
            ApiError::Registry(_) | ApiError::Bus(_) | ApiError::History(_) => Code::Unavailable,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status() {
        let cases = [
            (
                ApiError::Unauthenticated("unknown API key"),
                Code::Unauthenticated,
                "unknown API key",
            ),
            (
                ApiError::WrongProject,
                Code::PermissionDenied,
                "this API key does not belong to that project",
            ),
            (
                ApiError::UnknownProject("x".into()),
                Code::NotFound,
                "unknown project \"x\"",
            ),
            (
                ApiError::invalid("event", "too long"),
                Code::InvalidArgument,
                "event: too long",
            ),
            (
                RegistryError::Unavailable("down".into()).into(),
                Code::Unavailable,
                "registry unavailable: down",
            ),
            (
                BusError::Unavailable("down".into()).into(),
                Code::Unavailable,
                "bus unavailable: down",
            ),
        ];
        for (e, code, message) in cases {
            let s = Status::from(e);
            assert_eq!((s.code(), s.message()), (code, message));
        }
    }
}
