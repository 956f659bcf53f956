//! The one place where daemon errors become gRPC statuses, with
//! `google.rpc` details (field violations, error info).

use std::collections::HashMap;

use custos_adapter_core::{BackendError, ErrorKind, FieldViolation};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{engine::EngineError, store::StoreError};

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
    v.iter()
        .map(|f| format!("{}: {}", f.field, f.description))
        .collect::<Vec<_>>()
        .join("; ")
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
                for v in violations {
                    d.add_bad_request_violation(v.field, v.description);
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
                let code = match b.kind {
                    ErrorKind::NotFound => Code::NotFound,
                    ErrorKind::Invalid => Code::InvalidArgument,
                    ErrorKind::Busy | ErrorKind::Throttled | ErrorKind::Transient => {
                        Code::Unavailable
                    }
                    ErrorKind::Unsupported => Code::FailedPrecondition,
                    // The backend refused *our* credentials: not the
                    // caller's fault, and not the caller's auth either.
                    ErrorKind::Unauthorized | ErrorKind::Forbidden | ErrorKind::Permanent => {
                        Code::FailedPrecondition
                    }
                };
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
