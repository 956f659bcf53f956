//! Concurrent load: `streams` tasks calling one RPC in a loop, for a time
//! or for a number of calls, with latencies recorded.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// When a load stops.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// Calls started before this much time has passed.
    Elapsed(Duration),
    /// Exactly this many calls (numbered 0..n).
    Calls(u64),
}

/// What a load did.
#[derive(Debug, Default)]
pub struct Stats {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Latencies of the successful calls, microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl Stats {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The q-quantile of the latencies, milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * q).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

/// Runs `call(i)` from `streams` tasks until `until`; `i` numbers the calls.
pub async fn run<F, Fut>(streams: usize, until: Until, call: F) -> Stats
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..streams.max(1) {
        let call = call.clone();
        let next = next.clone();
        set.spawn(async move {
            let mut s = Stats::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                match until {
                    Until::Elapsed(d) if started.elapsed() >= d => break,
                    Until::Calls(n) if i >= n => break,
                    _ => {}
                }
                let t = Instant::now();
                match call(i).await {
                    Ok(()) => {
                        s.ok += 1;
                        let us = t.elapsed().as_micros();
                        s.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                    Err(e) => {
                        s.errors += 1;
                        if s.first_error.is_none() {
                            s.first_error = Some(format!("{:?}: {}", e.code(), e.message()));
                        }
                    }
                }
            }
            s
        });
    }
    let mut all = Stats::default();
    while let Some(r) = set.join_next().await {
        let Ok(s) = r else { continue };
        all.ok += s.ok;
        all.errors += s.errors;
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
        all.latencies_us.extend(s.latencies_us);
    }
    all.elapsed = started.elapsed();
    all.latencies_us.sort_unstable();
    all
}

/// Creates `n` backups (each with a fresh request id, as the CLI sends)
/// from `streams` tasks, the i-th of `target(i)`; fails unless all `n` were
/// acknowledged.
pub async fn create_backups(
    client: &crate::daemon::Client,
    streams: usize,
    n: usize,
    target: impl Fn(u64) -> String + Clone + Send + Sync + 'static,
) -> anyhow::Result<Stats> {
    let client = client.clone();
    let create = move |i: u64| {
        let mut c = client.clone();
        let target = target(i);
        async move {
            c.create_backup(custos::api::pb::CreateBackupRequest {
                target,
                request_id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
    };
    let made = run(streams, Until::Calls(n as u64), create).await;
    if made.ok < n as u64 {
        anyhow::bail!(
            "only {} of {} jobs were created: {}",
            made.ok,
            n,
            made.first_error.unwrap_or_default()
        );
    }
    Ok(made)
}
