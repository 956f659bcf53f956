//! Prometheus metrics: every metric's name and labels in one place, the
//! recorder, and `GET /metrics` on `metrics_listen`. Without
//! `metrics_listen` no recorder is installed and every call here is a
//! no-op.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `custos_job_state_changes_total` | counter | kind, backend, state |
//! | `custos_jobs_finished_total` | counter | kind, backend, state |
//! | `custos_job_duration_seconds` | histogram | kind, backend |
//! | `custos_last_successful_backup_timestamp_seconds` | gauge | target |
//! | `custos_retries_total` | counter | backend |
//! | `custos_reconciles_total` | counter | backend, outcome |
//! | `custos_watch_streams` | gauge | |
//! | `custos_schedule_runs_total` | counter | schedule |
//! | `custos_schedule_skips_total` | counter | schedule, reason |
//! | `custos_store_size_bytes` | gauge | |
//! | `custos_store_flushes_total` | counter | outcome |
//! | `custos_store_flush_waiters_total` | counter | |
//! | `custos_store_flush_duration_seconds` | histogram | |
//! | `custos_backend_calls_total` | counter | backend, operation, outcome |
//! | `custos_backend_call_duration_seconds` | histogram | backend, operation |
//! | `custos_tls_reloads_total` | counter | outcome |
//!
//! The HTTP requests under each backend call and the token fetches are
//! counted in `custos_adapter_core::observe` (`custos_backend_http_*`,
//! `custos_backend_token_refreshes_total`), labelled by the scope
//! [`timed`] opens.

use std::net::SocketAddr;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::job::{JobKind, JobRecord, JobState};

/// Job duration buckets, in seconds: a minute to six hours.
const DURATION_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
];

/// Backend call buckets, in seconds: 5 ms to a minute.
const CALL_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// Store flush buckets, in seconds: 50 µs to a second (an fsync takes
/// 0.1-0.25 ms on the machine of `docs/benchmarks.md`).
const FLUSH_BUCKETS: [f64; 10] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.025, 0.1, 1.0,
];

/// Installs the process's recorder (once).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("custos_job_duration_seconds".into()),
            &DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("custos_backend_call_duration_seconds".into()),
            &CALL_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("custos_backend_http_request_duration_seconds".into()),
            &CALL_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("custos_store_flush_duration_seconds".into()),
            &FLUSH_BUCKETS,
        )?
        .install_recorder()?)
}

/// Answers `GET /metrics` (Prometheus text) on `listener` until shutdown.
pub fn serve(listener: TcpListener, handle: PrometheusHandle, shutdown: CancellationToken) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = handle.clone();
            async move { h.render() }
        }),
    );
    tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
}

/// Binds `metrics_listen`.
pub async fn bind(addr: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on metrics_listen {addr}: {e}"))?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// A job entered the state it now has.
pub fn job_state(j: &JobRecord) {
    let (kind, backend, state) = (j.kind.as_str(), j.backend.clone(), j.state.as_str());
    counter!("custos_job_state_changes_total", "kind" => kind, "backend" => backend.clone(), "state" => state)
        .increment(1);
    if !j.state.is_terminal() {
        return;
    }
    counter!("custos_jobs_finished_total", "kind" => kind, "backend" => backend.clone(), "state" => state)
        .increment(1);
    if let Some(end) = j.end_time {
        let secs = (end - j.create_time).num_milliseconds().max(0) as f64 / 1000.0;
        histogram!("custos_job_duration_seconds", "kind" => kind, "backend" => backend)
            .record(secs);
        if j.kind == JobKind::Backup && j.state == JobState::Succeeded {
            gauge!("custos_last_successful_backup_timestamp_seconds", "target" => j.target.clone())
                .set(end.timestamp() as f64);
        }
    }
}

/// A failed try that will be retried.
pub fn retry(backend: &str) {
    counter!("custos_retries_total", "backend" => backend.to_string()).increment(1);
}

/// What a reconcile found: `submitted`, `not_submitted`, `unknown`.
pub fn reconcile(backend: &str, outcome: &'static str) {
    counter!("custos_reconciles_total", "backend" => backend.to_string(), "outcome" => outcome)
        .increment(1);
}

/// A watch stream is open while this lives.
pub struct WatchStream;

impl WatchStream {
    pub fn open() -> WatchStream {
        gauge!("custos_watch_streams").increment(1.0);
        WatchStream
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        gauge!("custos_watch_streams").decrement(1.0);
    }
}

pub fn schedule_run(schedule: &str) {
    counter!("custos_schedule_runs_total", "schedule" => schedule.to_string()).increment(1);
}

pub fn schedule_skip(schedule: &str, reason: &'static str) {
    counter!("custos_schedule_skips_total", "schedule" => schedule.to_string(), "reason" => reason)
        .increment(1);
}

/// Runs one call to a backend (`prepare`, `submit`, `poll`, `reconcile`,
/// `list_backups`, `validate`) and counts it with its outcome (`ok`, or
/// the error's kind) and its duration.
pub async fn timed<T>(
    backend: &str,
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T, custos_adapter_core::BackendError>>,
) -> Result<T, custos_adapter_core::BackendError> {
    let start = std::time::Instant::now();
    let r = custos_adapter_core::observe::scope(backend, operation, call).await;
    let outcome = match &r {
        Ok(_) => "ok",
        Err(e) => kind_label(e.kind),
    };
    counter!("custos_backend_calls_total", "backend" => backend.to_string(), "operation" => operation, "outcome" => outcome)
        .increment(1);
    histogram!("custos_backend_call_duration_seconds", "backend" => backend.to_string(), "operation" => operation)
        .record(start.elapsed().as_secs_f64());
    r
}

fn kind_label(k: custos_adapter_core::ErrorKind) -> &'static str {
    use custos_adapter_core::ErrorKind as K;
    match k {
        K::Unauthorized => "unauthorized",
        K::Forbidden => "forbidden",
        K::NotFound => "not_found",
        K::Invalid => "invalid",
        K::Busy => "busy",
        K::Throttled => "throttled",
        K::Transient => "transient",
        K::Permanent => "permanent",
        K::Unsupported => "unsupported",
        K::OutcomeUnknown => "outcome_unknown",
    }
}

/// A reload of the listener's TLS files: `ok` or `error`.
pub fn tls_reload(ok: bool) {
    counter!("custos_tls_reloads_total", "outcome" => if ok { "ok" } else { "error" }).increment(1);
}

pub fn store_size(bytes: u64) {
    gauge!("custos_store_size_bytes").set(bytes as f64);
}

/// One group commit of the store: how many writers waited for it, how
/// long it took, whether it made their writes durable (`ok`, `error`).
/// Waiters per flush is how well writes are grouped (P1, P2 in
/// `docs/benchmarks.md`).
pub fn store_flush(waiters: usize, took: std::time::Duration, ok: bool) {
    counter!("custos_store_flushes_total", "outcome" => if ok { "ok" } else { "error" })
        .increment(1);
    counter!("custos_store_flush_waiters_total").increment(waiters as u64);
    histogram!("custos_store_flush_duration_seconds").record(took.as_secs_f64());
}
