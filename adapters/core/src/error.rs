//! The one error type every adapter returns: what the caller should do
//! (retry, give up, re-authenticate), plus the backend's own words.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

/// What the caller should do with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Credentials were refused even after a fresh token (401).
    Unauthorized,
    /// The credentials lack permission (403).
    Forbidden,
    /// The target, backup or job does not exist (404).
    NotFound,
    /// The backend refused the request's content (400, 422).
    Invalid,
    /// Another operation on the target is in progress (CF 409); retry later.
    Busy,
    /// Rate limited (429); retry after `retry_after` when given.
    Throttled,
    /// A server error, timeout or broken connection; retry with backoff.
    Transient,
    /// Any other failure that retrying will not fix.
    Permanent,
    /// The backend has no such feature.
    Unsupported,
    /// Nobody can tell whether the operation ran, or how it ended (its
    /// trace was replaced by another operation's): it must not be repeated
    /// blindly; a person checks the target.
    OutcomeUnknown,
}

/// One error entry as the backend reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub http_status: Option<u16>,
    /// The backend's code (CF numeric code as text, `BackupService.2001`, ...).
    pub code: Option<String>,
    /// CF `title`, e.g. `CF-ResourceNotFound`.
    pub title: Option<String>,
    pub detail: Option<String>,
}

/// A failure talking to a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendError {
    pub kind: ErrorKind,
    /// A sentence a person understands, with no secrets in it.
    pub message: String,
    /// The backend's own error entries, preserved verbatim.
    pub details: Vec<ErrorDetail>,
    /// The backend's `Retry-After`, already converted to a delay.
    #[serde(with = "opt_millis")]
    pub retry_after: Option<Duration>,
    /// True when a non-idempotent request may have reached the backend
    /// (the connection broke after the request was sent): the caller must
    /// reconcile, never blindly resend.
    pub maybe_applied: bool,
}

impl BackendError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        BackendError {
            kind,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
            maybe_applied: false,
        }
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }

    pub fn with_details(mut self, details: Vec<ErrorDetail>) -> Self {
        self.details = details;
        self
    }

    /// Whether waiting and trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Busy | ErrorKind::Throttled | ErrorKind::Transient
        )
    }

    /// The HTTP status of the first detail, if any.
    pub fn http_status(&self) -> Option<u16> {
        self.details.iter().find_map(|d| d.http_status)
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for d in &self.details {
            let parts: Vec<&str> = [d.title.as_deref(), d.detail.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            if !parts.is_empty() {
                write!(f, " [{}]", parts.join(": "))?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for BackendError {}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds() {
        assert!(BackendError::transient("x").is_retryable());
        assert!(BackendError::new(ErrorKind::Busy, "x").is_retryable());
        assert!(BackendError::new(ErrorKind::Throttled, "x").is_retryable());
        assert!(!BackendError::new(ErrorKind::NotFound, "x").is_retryable());
        assert!(!BackendError::new(ErrorKind::Unauthorized, "x").is_retryable());
        assert!(!BackendError::permanent("x").is_retryable());
    }

    #[test]
    fn display_includes_backend_words() {
        let e = BackendError::new(ErrorKind::NotFound, "service instance not found").with_details(
            vec![ErrorDetail {
                http_status: Some(404),
                code: Some("10010".into()),
                title: Some("CF-ResourceNotFound".into()),
                detail: Some("Service instance not found".into()),
            }],
        );
        assert_eq!(
            e.to_string(),
            "service instance not found [CF-ResourceNotFound: Service instance not found]"
        );
    }
}
