//! The one place where daemon errors become gRPC statuses, with
//! `google.rpc` details (field violations, error info).

use std::collections::HashMap;

use custos_adapter_core::{BackendError, ErrorKind, FieldViolation};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{engine::EngineError, job::Failure, store::StoreError};

/// The most field violations one error carries; a request with more gets
/// the first ones and a count of the rest.
const MAX_VIOLATIONS: usize = 20;

/// The gRPC code of a backend failure, the same for a synchronous call and
/// for `Job.error`.
pub fn backend_code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Invalid => Code::InvalidArgument,
        ErrorKind::Busy | ErrorKind::Throttled | ErrorKind::Transient => Code::Unavailable,
        ErrorKind::OutcomeUnknown => Code::Unknown,
        // The backend refused *our* credentials, or cannot do this: not
        // the caller's fault, and not the caller's auth either.
        ErrorKind::Unauthorized
        | ErrorKind::Forbidden
        | ErrorKind::Permanent
        | ErrorKind::Unsupported => Code::FailedPrecondition,
    }
}

/// The gRPC code of a failed job (`Job.error.code`).
pub fn failure_code(f: Failure) -> Code {
    match f {
        Failure::Backend(kind) => backend_code(kind),
        Failure::OutcomeUnknown => Code::Unknown,
        Failure::Timeout => Code::DeadlineExceeded,
        Failure::Internal => Code::Internal,
    }
}

/// Everything an RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input; each violation names the field and the reason.
    #[error("invalid request: {}", describe(.0))]
    Invalid(Vec<FieldViolation>),
    /// A named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but cannot be done in this state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A `request_id` reused for a different request.
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unavailable(String),
    /// A synchronous call to a backend failed.
    #[error("{}", .0)]
    Backend(BackendError),
}

fn describe(v: &[FieldViolation]) -> String {
    let mut s = v
        .iter()
        .take(MAX_VIOLATIONS)
        .map(|f| format!("{}: {}", f.field, f.description))
        .collect::<Vec<_>>()
        .join("; ");
    if v.len() > MAX_VIOLATIONS {
        s.push_str(&format!("; … and {} more", v.len() - MAX_VIOLATIONS));
    }
    s
}

impl ApiError {
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        ApiError::Invalid(vec![FieldViolation::new(field, description)])
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(s) => s.into(),
            e @ EngineError::RequestIdReused(..) => ApiError::AlreadyExists(e.to_string()),
            EngineError::NotFound(n) => ApiError::NotFound(format!("{n} not found")),
            EngineError::FailedPrecondition(m) => ApiError::FailedPrecondition(m),
            e @ EngineError::ShuttingDown => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = e.to_string();
        match e {
            ApiError::Invalid(violations) => {
                let mut d = ErrorDetails::new();
                let more = violations.len().saturating_sub(MAX_VIOLATIONS);
                for v in violations.into_iter().take(MAX_VIOLATIONS) {
                    d.add_bad_request_violation(v.field, v.description);
                }
                if more > 0 {
                    d.add_bad_request_violation("", format!("… and {more} more"));
                }
                Status::with_error_details(Code::InvalidArgument, msg, d)
            }
            ApiError::NotFound(_) => Status::not_found(msg),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ApiError::AlreadyExists(_) => {
                let d = ErrorDetails::with_bad_request_violation(
                    "request_id",
                    "already used for a different request",
                );
                Status::with_error_details(Code::AlreadyExists, msg, d)
            }
            ApiError::Unavailable(_) => Status::unavailable(msg),
            ApiError::Backend(b) => {
                let code = backend_code(b.kind);
                let mut meta = HashMap::new();
                if let Some(d) = b.details.first() {
                    if let Some(s) = d.http_status {
                        meta.insert("http_status".to_string(), s.to_string());
                    }
                    for (k, v) in [
                        ("code", &d.code),
                        ("title", &d.title),
                        ("detail", &d.detail),
                    ] {
                        if let Some(v) = v {
                            meta.insert(k.to_string(), v.clone());
                        }
                    }
                }
                let d = ErrorDetails::with_error_info(
                    format!("BACKEND_{:?}", b.kind).to_uppercase(),
                    "custos.dev",
                    meta,
                );
                Status::with_error_details(code, msg, d)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn field_violations_are_capped() {
        let v = (0..30)
            .map(|i| FieldViolation::new(format!("labels[k{i}]"), "bad"))
            .collect();
        let status = Status::from(ApiError::Invalid(v));
        assert_eq!(status.code(), Code::InvalidArgument);
        let br = status.get_details_bad_request().unwrap();
        assert_eq!(br.field_violations.len(), MAX_VIOLATIONS + 1);
        assert!(
            status.message().ends_with("… and 10 more"),
            "{}",
            status.message()
        );
    }
}
