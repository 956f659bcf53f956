//! Metrics of the HTTP under every backend call, through the `metrics`
//! facade (no-ops unless the daemon installs a recorder).
//!
//! The daemon runs each call to an adapter inside [`scope`], naming the
//! backend and the operation; [`crate::http::send`] and
//! [`crate::token::TokenCache`] read them from there, so adapters count
//! every request without passing labels around.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `custos_backend_http_requests_total` | counter | backend, operation, status |
//! | `custos_backend_http_request_duration_seconds` | histogram | backend, operation |
//! | `custos_backend_token_refreshes_total` | counter | backend, outcome |
//!
//! `status` is the HTTP status code, or `transport_error` when no answer
//! came (refused, reset, timed out); `outcome` is `ok` or `error`.

use std::{future::Future, sync::Arc, time::Duration};

use metrics::{counter, histogram};

/// The backend and operation a request is made for.
#[derive(Debug, Clone)]
struct Call {
    backend: Arc<str>,
    operation: &'static str,
}

tokio::task_local! {
    static CALL: Call;
}

/// Runs `fut` (one call to an adapter) with its requests labelled
/// `backend` and `operation`.
pub async fn scope<F: Future>(backend: &str, operation: &'static str, fut: F) -> F::Output {
    CALL.scope(
        Call {
            backend: backend.into(),
            operation,
        },
        fut,
    )
    .await
}

fn labels() -> (String, &'static str) {
    CALL.try_with(|c| (c.backend.to_string(), c.operation))
        .unwrap_or_else(|_| (String::new(), ""))
}

/// One HTTP request ended: with an answer's status, or `None` without one.
pub(crate) fn http_request(status: Option<u16>, elapsed: Duration) {
    let (backend, operation) = labels();
    let status = status.map_or_else(|| "transport_error".to_string(), |s| s.to_string());
    counter!("custos_backend_http_requests_total", "backend" => backend.clone(), "operation" => operation, "status" => status)
        .increment(1);
    histogram!("custos_backend_http_request_duration_seconds", "backend" => backend, "operation" => operation)
        .record(elapsed.as_secs_f64());
}

/// A token was fetched from the identity service (UAA, Keystone).
pub(crate) fn token_refresh(ok: bool) {
    let (backend, _) = labels();
    counter!("custos_backend_token_refreshes_total", "backend" => backend, "outcome" => if ok { "ok" } else { "error" })
        .increment(1);
}
