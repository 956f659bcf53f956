//! The one place where daemon errors become gRPC statuses. Every status
//! carries `google.rpc.ErrorInfo` (domain [`DOMAIN`], a reason in
//! UPPER_SNAKE, metadata such as the resource or the field); bad requests
//! carry `BadRequest` field violations; missing and existing resources
//! `ResourceInfo`; retryable ones (UNAVAILABLE) `RetryInfo` with the
//! backend's `Retry-After` when it gave one. The reasons are listed in the
//! proto's header comment.

use std::{collections::HashMap, time::Duration};

use custos_adapter_core::{BackendError, ErrorKind, FieldViolation};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{engine::EngineError, job::Failure, store::StoreError};

/// `ErrorInfo.domain` of every error the daemon returns.
pub const DOMAIN: &str = "custos";

/// The most field violations one error carries; a request with more gets
/// the first ones and a count of the rest.
const MAX_VIOLATIONS: usize = 20;

/// The `RetryInfo` delay of a retryable error without a better one (a
/// backend's `Retry-After`).
pub const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// The `RetryInfo` delay while the daemon shuts down (it is restarting, or
/// another replica takes over).
pub const SHUTDOWN_RETRY: Duration = Duration::from_secs(5);

// Reasons (ErrorInfo.reason) the daemon itself gives; backend failures
// are `BACKEND_*` (`backend_reason`).
pub const FIELD_INVALID: &str = "FIELD_INVALID";
pub const FILTER_INVALID: &str = "FILTER_INVALID";
pub const NOT_FOUND: &str = "NOT_FOUND";
pub const ALREADY_EXISTS: &str = "ALREADY_EXISTS";
pub const REQUEST_ID_REUSED: &str = "REQUEST_ID_REUSED";
pub const CAPABILITY_MISSING: &str = "BACKEND_CAPABILITY_MISSING";
pub const JOB_NOT_CANCELLABLE: &str = "JOB_NOT_CANCELLABLE";
pub const SCHEDULE_UNREADABLE: &str = "SCHEDULE_UNREADABLE";
pub const SCHEDULE_RUN_OVERLAP: &str = "SCHEDULE_RUN_OVERLAP";
pub const STORE_UNAVAILABLE: &str = "STORE_UNAVAILABLE";
pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
pub const CREATION_OUTCOME_UNKNOWN: &str = "CREATION_OUTCOME_UNKNOWN";
pub const WATCH_FELL_BEHIND: &str = "WATCH_FELL_BEHIND";
pub const TOKEN_MISSING: &str = "TOKEN_MISSING";
pub const TOKEN_MALFORMED: &str = "TOKEN_MALFORMED";
pub const TOKEN_UNKNOWN: &str = "TOKEN_UNKNOWN";
pub const ROLE_INSUFFICIENT: &str = "ROLE_INSUFFICIENT";
pub const INTERNAL: &str = "INTERNAL";

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

/// `ErrorInfo.reason` of a backend failure.
pub fn backend_reason(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unauthorized => "BACKEND_UNAUTHORIZED",
        ErrorKind::Forbidden => "BACKEND_FORBIDDEN",
        ErrorKind::NotFound => "BACKEND_NOT_FOUND",
        ErrorKind::Invalid => "BACKEND_INVALID",
        ErrorKind::Busy => "BACKEND_BUSY",
        ErrorKind::Throttled => "BACKEND_THROTTLED",
        ErrorKind::Transient => "BACKEND_UNAVAILABLE",
        ErrorKind::OutcomeUnknown => "BACKEND_OUTCOME_UNKNOWN",
        ErrorKind::Permanent => "BACKEND_FAILED",
        ErrorKind::Unsupported => "BACKEND_UNSUPPORTED",
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

/// Everything an RPC can fail with; each variant says its `ErrorInfo`
/// reason.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input; each violation names the field and the reason.
    #[error("invalid request: {}", describe(.violations))]
    Invalid {
        reason: &'static str,
        violations: Vec<FieldViolation>,
    },
    /// A named thing does not exist.
    #[error("{message}")]
    NotFound {
        /// `job`, `schedule`, `backend`.
        kind: &'static str,
        /// Its name, e.g. `jobs/{uuid}`.
        name: String,
        message: String,
    },
    /// The request is valid but cannot be done in this state.
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        /// What it is about (a backend, a job, a schedule).
        subject: String,
        message: String,
    },
    /// A `request_id` reused for a different request
    /// (`REQUEST_ID_REUSED`), or a resource that exists already.
    #[error("{message}")]
    AlreadyExists {
        reason: &'static str,
        kind: &'static str,
        name: String,
        message: String,
    },
    /// Retryable: the store, a shutdown.
    #[error("{message}")]
    Unavailable {
        reason: &'static str,
        message: String,
        retry: Duration,
    },
    /// The store failed while the request was being made durable: it may
    /// or may not have taken effect. UNAVAILABLE, as `api.md` has it for
    /// the store, with a reason of its own and the job it may have made:
    /// sending it again is safe with the same `request_id` (it gets that
    /// job), and could do it twice with a new one.
    #[error("{message}")]
    OutcomeUnknown {
        reason: &'static str,
        /// The job it may have made, e.g. `jobs/{uuid}`.
        name: String,
        message: String,
    },
    /// A watch stream that fell behind.
    #[error("{message}")]
    Aborted {
        reason: &'static str,
        message: String,
    },
    /// No, or no valid, client token.
    #[error("{message}")]
    Unauthenticated {
        reason: &'static str,
        message: String,
    },
    /// A token whose role may not make this call.
    #[error("{message}")]
    PermissionDenied {
        reason: &'static str,
        message: String,
        metadata: Vec<(&'static str, String)>,
    },
    /// A synchronous call to a backend failed.
    #[error("{}", .error)]
    Backend {
        /// The configured backend's name.
        backend: String,
        error: BackendError,
    },
    #[error("{0}")]
    Internal(String),
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
    /// One field violation (`FIELD_INVALID`).
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::invalid_with(FIELD_INVALID, field, description)
    }

    /// One field violation with a reason of its own.
    pub fn invalid_with(
        reason: &'static str,
        field: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        ApiError::Invalid {
            reason,
            violations: vec![FieldViolation::new(field, description)],
        }
    }

    /// Field violations (`FIELD_INVALID`).
    pub fn invalid(violations: Vec<FieldViolation>) -> Self {
        ApiError::Invalid {
            reason: FIELD_INVALID,
            violations,
        }
    }

    pub fn not_found(kind: &'static str, name: impl Into<String>, message: String) -> Self {
        ApiError::NotFound {
            kind,
            name: name.into(),
            message,
        }
    }

    pub fn backend(backend: &str, error: BackendError) -> Self {
        ApiError::Backend {
            backend: backend.to_string(),
            error,
        }
    }

    pub fn shutting_down(message: impl Into<String>) -> Self {
        ApiError::Unavailable {
            reason: SHUTTING_DOWN,
            message: message.into(),
            retry: SHUTDOWN_RETRY,
        }
    }

    pub fn store_unavailable(message: impl Into<String>) -> Self {
        ApiError::Unavailable {
            reason: STORE_UNAVAILABLE,
            message: message.into(),
            retry: DEFAULT_RETRY,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::store_unavailable(e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(s) => s.into(),
            EngineError::RequestIdReused(ref id, ref job) => ApiError::AlreadyExists {
                reason: REQUEST_ID_REUSED,
                kind: "job",
                name: job.clone(),
                message: format!("{e}; send a new request_id for a new request ({id:?} is taken)"),
            },
            EngineError::NotFound(n) => {
                let message = format!("{n} not found");
                ApiError::not_found("job", n, message)
            }
            // The engine refuses only cancellations.
            EngineError::FailedPrecondition(m) => ApiError::FailedPrecondition {
                reason: JOB_NOT_CANCELLABLE,
                subject: String::new(),
                message: m,
            },
            e @ EngineError::ShuttingDown => ApiError::shutting_down(e.to_string()),
            ref e @ (EngineError::CreationUnknown { job, .. } | EngineError::NotDurable(job)) => {
                ApiError::OutcomeUnknown {
                    reason: CREATION_OUTCOME_UNKNOWN,
                    name: crate::names::job_name(job),
                    message: e.to_string(),
                }
            }
        }
    }
}

fn meta(pairs: impl IntoIterator<Item = (&'static str, String)>) -> HashMap<String, String> {
    pairs
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = e.to_string();
        let mut d = ErrorDetails::new();
        let code = match e {
            ApiError::Invalid { reason, violations } => {
                let more = violations.len().saturating_sub(MAX_VIOLATIONS);
                let first = violations
                    .first()
                    .map(|v| v.field.clone())
                    .unwrap_or_default();
                d.set_error_info(
                    reason,
                    DOMAIN,
                    meta([
                        ("field", first),
                        ("violations", violations.len().to_string()),
                    ]),
                );
                for v in violations.into_iter().take(MAX_VIOLATIONS) {
                    d.add_bad_request_violation(v.field, v.description);
                }
                if more > 0 {
                    d.add_bad_request_violation("", format!("… and {more} more"));
                }
                Code::InvalidArgument
            }
            ApiError::NotFound { kind, name, .. } => {
                d.set_error_info(
                    NOT_FOUND,
                    DOMAIN,
                    meta([
                        ("resource_type", kind.to_string()),
                        ("resource", name.clone()),
                    ]),
                );
                d.set_resource_info(kind, name, "", "not found");
                Code::NotFound
            }
            ApiError::FailedPrecondition {
                reason, subject, ..
            } => {
                d.set_error_info(reason, DOMAIN, meta([("resource", subject)]));
                Code::FailedPrecondition
            }
            ApiError::AlreadyExists {
                reason, kind, name, ..
            } => {
                d.set_error_info(
                    reason,
                    DOMAIN,
                    meta([
                        ("resource_type", kind.to_string()),
                        ("resource", name.clone()),
                    ]),
                );
                if reason == REQUEST_ID_REUSED {
                    d.add_bad_request_violation(
                        "request_id",
                        "already used for a different request",
                    );
                } else {
                    d.set_resource_info(kind, name, "", "already exists");
                }
                Code::AlreadyExists
            }
            ApiError::Unavailable { reason, retry, .. } => {
                d.set_error_info(reason, DOMAIN, HashMap::new());
                d.set_retry_info(Some(retry));
                Code::Unavailable
            }
            ApiError::OutcomeUnknown { reason, name, .. } => {
                d.set_error_info(
                    reason,
                    DOMAIN,
                    meta([("resource_type", "job".to_string()), ("resource", name)]),
                );
                d.set_retry_info(Some(DEFAULT_RETRY));
                Code::Unavailable
            }
            ApiError::Aborted { reason, .. } => {
                d.set_error_info(reason, DOMAIN, HashMap::new());
                Code::Aborted
            }
            ApiError::Unauthenticated { reason, .. } => {
                d.set_error_info(reason, DOMAIN, HashMap::new());
                Code::Unauthenticated
            }
            ApiError::PermissionDenied {
                reason, metadata, ..
            } => {
                d.set_error_info(reason, DOMAIN, meta(metadata));
                Code::PermissionDenied
            }
            ApiError::Backend { backend, error: b } => {
                let code = backend_code(b.kind);
                let mut m = vec![("backend", backend)];
                if let Some(x) = b.details.first() {
                    if let Some(s) = x.http_status {
                        m.push(("http_status", s.to_string()));
                    }
                    for (k, v) in [
                        ("code", &x.code),
                        ("title", &x.title),
                        ("detail", &x.detail),
                    ] {
                        if let Some(v) = v {
                            m.push((k, v.clone()));
                        }
                    }
                }
                if let Some(r) = b.retry_after {
                    m.push(("retry_after_ms", r.as_millis().to_string()));
                }
                d.set_error_info(backend_reason(b.kind), DOMAIN, meta(m));
                if code == Code::Unavailable {
                    d.set_retry_info(Some(b.retry_after.unwrap_or(DEFAULT_RETRY)));
                }
                code
            }
            ApiError::Internal(_) => {
                d.set_error_info(INTERNAL, DOMAIN, HashMap::new());
                Code::Internal
            }
        };
        Status::with_error_details(code, msg, d)
    }
}

#[cfg(test)]
mod tests {
    use custos_adapter_core::ErrorDetail;
    use tonic_types::StatusExt;

    use super::*;

    fn info(s: &Status) -> (String, String, HashMap<String, String>) {
        let i = s.get_details_error_info().expect("ErrorInfo");
        (i.reason, i.domain, i.metadata)
    }

    #[test]
    fn field_violations_are_capped() {
        let v = (0..30)
            .map(|i| FieldViolation::new(format!("labels[k{i}]"), "bad"))
            .collect();
        let status = Status::from(ApiError::invalid(v));
        assert_eq!(status.code(), Code::InvalidArgument);
        let br = status.get_details_bad_request().unwrap();
        assert_eq!(br.field_violations.len(), MAX_VIOLATIONS + 1);
        assert!(
            status.message().ends_with("… and 10 more"),
            "{}",
            status.message()
        );
        let (reason, domain, m) = info(&status);
        assert_eq!((reason.as_str(), domain.as_str()), (FIELD_INVALID, DOMAIN));
        assert_eq!(m["field"], "labels[k0]");
        assert_eq!(m["violations"], "30");
    }

    fn is_upper_snake(s: &str) -> bool {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && !s.starts_with('_')
            && !s.ends_with('_')
            && !s.contains("__")
    }

    /// Every error the API can return carries ErrorInfo with an UPPER_SNAKE
    /// reason and the domain `custos`; the retryable ones RetryInfo.
    #[test]
    fn every_error_has_error_info() {
        let kinds = [
            ErrorKind::Unauthorized,
            ErrorKind::Forbidden,
            ErrorKind::NotFound,
            ErrorKind::Invalid,
            ErrorKind::Busy,
            ErrorKind::Throttled,
            ErrorKind::Transient,
            ErrorKind::OutcomeUnknown,
            ErrorKind::Permanent,
            ErrorKind::Unsupported,
        ];
        let mut errors = vec![
            ApiError::field("target", "bad"),
            ApiError::not_found("job", "jobs/x", "job jobs/x not found".into()),
            ApiError::FailedPrecondition {
                reason: CAPABILITY_MISSING,
                subject: "backends/cf".into(),
                message: "cannot".into(),
            },
            EngineError::RequestIdReused("r".into(), "jobs/x".into()).into(),
            EngineError::NotFound("jobs/x".into()).into(),
            EngineError::FailedPrecondition("ended".into()).into(),
            EngineError::ShuttingDown.into(),
            EngineError::CreationUnknown {
                job: uuid::Uuid::nil(),
                error: StoreError::Io("disk full".into()),
            }
            .into(),
            EngineError::NotDurable(uuid::Uuid::nil()).into(),
            StoreError::Closed.into(),
            ApiError::Aborted {
                reason: WATCH_FELL_BEHIND,
                message: "behind".into(),
            },
            ApiError::Unauthenticated {
                reason: TOKEN_UNKNOWN,
                message: "unknown token".into(),
            },
            ApiError::PermissionDenied {
                reason: ROLE_INSUFFICIENT,
                message: "reader".into(),
                metadata: vec![("required_role", "operator".into())],
            },
            ApiError::Internal("x".into()),
        ];
        errors.extend(
            kinds
                .iter()
                .map(|k| ApiError::backend("cf", BackendError::new(*k, "x"))),
        );
        let mut reasons = std::collections::HashSet::new();
        for e in errors {
            let s = Status::from(e);
            let (reason, domain, _) = info(&s);
            assert_eq!(domain, "custos", "{s:?}");
            assert!(is_upper_snake(&reason), "{reason}");
            reasons.insert(reason);
            let retryable = s.code() == Code::Unavailable;
            assert_eq!(
                s.get_details_retry_info().is_some(),
                retryable,
                "{:?}: RetryInfo on retryable errors only",
                s.code()
            );
        }
        // Each backend kind its own reason.
        let backend: std::collections::HashSet<_> =
            kinds.iter().map(|k| backend_reason(*k)).collect();
        assert_eq!(backend.len(), kinds.len());
        assert!(reasons.contains("BACKEND_OUTCOME_UNKNOWN"));
        assert!(reasons.contains(CREATION_OUTCOME_UNKNOWN));
    }

    #[test]
    fn backend_errors_keep_the_envelope_and_the_retry_after() {
        let mut b = BackendError::new(ErrorKind::Throttled, "slow down");
        b.retry_after = Some(Duration::from_secs(7));
        b.details.push(ErrorDetail {
            http_status: Some(429),
            code: Some("10013".into()),
            title: Some("CF-RateLimitExceeded".into()),
            detail: Some("Rate Limit Exceeded".into()),
        });
        let s = Status::from(ApiError::backend("cf-prod", b));
        assert_eq!(s.code(), Code::Unavailable);
        let (reason, _, m) = info(&s);
        assert_eq!(reason, "BACKEND_THROTTLED");
        assert_eq!(m["backend"], "cf-prod");
        assert_eq!(m["http_status"], "429");
        assert_eq!(m["title"], "CF-RateLimitExceeded");
        assert_eq!(m["retry_after_ms"], "7000");
        let r = s.get_details_retry_info().unwrap();
        assert_eq!(r.retry_delay, Some(Duration::from_secs(7)));
        // Without Retry-After: the default delay.
        let s = Status::from(ApiError::backend(
            "cf",
            BackendError::new(ErrorKind::Busy, "busy"),
        ));
        assert_eq!(
            s.get_details_retry_info().unwrap().retry_delay,
            Some(DEFAULT_RETRY)
        );
    }

    #[test]
    fn not_found_and_already_exists_name_the_resource() {
        let s = Status::from(ApiError::not_found(
            "schedule",
            "schedules/x",
            "schedules/x not found".into(),
        ));
        let (reason, _, m) = info(&s);
        assert_eq!(reason, NOT_FOUND);
        assert_eq!(m["resource"], "schedules/x");
        let r = s.get_details_resource_info().unwrap();
        assert_eq!(
            (r.resource_type.as_str(), r.resource_name.as_str()),
            ("schedule", "schedules/x")
        );
        // A reused request id names request_id; an existing resource does
        // not (it is not a bad request id).
        let s = Status::from(ApiError::from(EngineError::RequestIdReused(
            "r1".into(),
            "jobs/j".into(),
        )));
        assert_eq!(s.code(), Code::AlreadyExists);
        assert_eq!(info(&s).0, REQUEST_ID_REUSED);
        assert_eq!(
            s.get_details_bad_request().unwrap().field_violations[0].field,
            "request_id"
        );
        let s = Status::from(ApiError::AlreadyExists {
            reason: ALREADY_EXISTS,
            kind: "schedule",
            name: "schedules/x".into(),
            message: "exists".into(),
        });
        assert!(s.get_details_bad_request().is_none());
        assert_eq!(info(&s).2["resource"], "schedules/x");
    }
}
