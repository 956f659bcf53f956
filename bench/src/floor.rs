//! Floors: the part of a figure that does not depend on the daemon,
//! measured alone in the same run, so that a goal the floor already misses
//! is shown out of reach of any change to the daemon's own code.
//!
//! - [`store_writes`]: job records written through the daemon's own
//!   `Store` (the run's `--store` engine, its group-commit flusher; a fresh
//!   data dir, no daemon, no gRPC, no backend), each version awaited
//!   durable before the next, grouped as `Engine::create` and the driver
//!   group them. P1 writes the creation alone; P2 the five versions of a
//!   job's life.
//! - [`plain_polls`]: a plain client in a process of its own (this
//!   executable, `custos-bench poll-client`) polling CF jobs on the same
//!   simulators at the rate the daemon polled, with the adapters' own HTTP
//!   client (`custos_adapter_core::http::client` and `send`); P3 compares
//!   its CPU with the daemon's.

use std::{
    io::Read,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use custos::store::Store;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::{
    daemon::{self, Daemon, Sims},
    load::Until,
    p2::Endpoint,
    p4::Plan,
};

/// What [`store_writes`] did.
#[derive(Debug)]
pub struct StoreRun {
    /// Jobs whose versions were all written.
    pub jobs: u64,
    /// Versions written, each awaited durable.
    pub writes: u64,
    pub elapsed: Duration,
    /// The store's group commits.
    pub flushes: u64,
}

impl StoreRun {
    pub fn writes_per_s(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Versions made durable by one flush, on average (a group of
    /// creations is one waiter of the flusher, so this is not waiters).
    pub fn per_flush(&self) -> f64 {
        self.writes as f64 / self.flushes.max(1) as f64
    }
}

/// The most creations the daemon's intake writes in one batch
/// (`INTAKE_GROUP` in `src/engine/mod.rs`).
const INTAKE_GROUP: usize = 256;

type Creation = (
    custos::job::JobRecord,
    tokio::sync::oneshot::Sender<Result<()>>,
);

/// `writers` tasks write jobs (on `instances` service instances of
/// simulators at `sims`) through a `Store` of their own, the first
/// `versions` (1 to 5) of each job's life, each awaited durable, until
/// `until` (a number of jobs, or a time after which no job is started).
/// As the daemon writes them: creations through one intake that writes
/// whatever is queued as one batch (`put_jobs`) and answers the group
/// after its flush, in a task of its own while it writes the next group
/// (`Engine::intake`); the later versions one key each (`update_job`),
/// each writer awaiting its flush (the driver).
pub async fn store_writes(
    instances: usize,
    sims: Vec<String>,
    writers: usize,
    versions: usize,
    until: Until,
) -> Result<StoreRun> {
    let dir = Daemon::fresh_dir()?;
    let store = Arc::new(Store::open_with(
        &Daemon::data_dir_of(dir.path()),
        daemon::store_engine(),
    )?);
    let plan = Arc::new(Plan::of_instances(instances, sims));
    let (intake_tx, intake_rx) = tokio::sync::mpsc::unbounded_channel::<Creation>();
    let intake = tokio::spawn(intake(store.clone(), intake_rx));
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..writers.max(1) {
        let (store, plan, next) = (store.clone(), plan.clone(), next.clone());
        let intake_tx = intake_tx.clone();
        set.spawn(async move {
            let (mut jobs, mut writes) = (0u64, 0u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                match until {
                    Until::Elapsed(d) if t0.elapsed() >= d => break,
                    Until::Calls(n) if i >= n => break,
                    _ => {}
                }
                let mut recs = plan.versions(i as usize, versions).into_iter();
                let Some(created) = recs.next() else { break };
                let (tx, rx) = tokio::sync::oneshot::channel();
                intake_tx
                    .send((created, tx))
                    .map_err(|_| anyhow!("the intake stopped"))?;
                rx.await
                    .map_err(|_| anyhow!("the intake dropped a creation"))??;
                writes += 1;
                for rec in recs {
                    store.update_job(&rec)?;
                    store.flush().await?;
                    writes += 1;
                }
                jobs += 1;
            }
            anyhow::Ok((jobs, writes))
        });
    }
    drop(intake_tx);
    let (mut jobs, mut writes) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (j, w) = r.context("a store writer panicked")??;
        jobs += j;
        writes += w;
    }
    let elapsed = t0.elapsed();
    intake.await.context("the intake panicked")?;
    let s = store.flush_stats();
    Ok(StoreRun {
        jobs,
        writes,
        elapsed,
        flushes: s.flushes.load(Ordering::Relaxed),
    })
}

/// The floor's `Engine::intake`: whatever is queued, up to
/// [`INTAKE_GROUP`], written as one batch, then flushed and answered in a
/// task of its own while the next group is written.
async fn intake(store: Arc<Store>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Creation>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < INTAKE_GROUP {
            match rx.try_recv() {
                Ok(x) => group.push(x),
                Err(_) => break,
            }
        }
        let (recs, answers): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let written = store.put_jobs(&recs).map_err(|e| e.to_string());
        let store = store.clone();
        tokio::spawn(async move {
            let r = match written {
                Ok(()) => store.flush().await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            for a in answers {
                let _ = a.send(r.clone().map_err(anyhow::Error::msg));
            }
        });
    }
}

/// What the plain poll client is told (on its stdin, as JSON).
#[derive(Debug, Serialize, Deserialize)]
struct PollSpec {
    /// Polls a second, started at an even pace.
    rate: f64,
    /// Seconds polled before the measurement, then measured.
    warmup: f64,
    seconds: f64,
    endpoints: Vec<PollEndpoint>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PollEndpoint {
    base: String,
    client_id: String,
    client_secret: String,
    /// Job URLs on this simulator.
    jobs: Vec<String>,
}

/// What the plain poll client measured over its window (on its stdout).
#[derive(Debug, Serialize, Deserialize)]
pub struct PollRun {
    /// Polls answered, and failed, in the window.
    pub polls: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    /// The client process's CPU in the window, and its RSS at the end.
    pub cpu_s: f64,
    pub rss_kib: u64,
}

impl PollRun {
    pub fn cpu_percent(&self) -> f64 {
        self.cpu_s / self.seconds.max(1e-9) * 100.0
    }

    pub fn rate(&self) -> f64 {
        self.polls as f64 / self.seconds.max(1e-9)
    }
}

/// Jobs the plain client polls: at most this many (its cost per poll does
/// not depend on how many jobs it cycles through, and the simulators scan
/// all their jobs on every request).
const POLL_JOBS: usize = 2_000;

/// Runs the plain poll client at `rate` polls a second for `seconds` (after
/// 2 s of warm-up) on `min(jobs, 2000)` hour-long jobs added to the
/// simulators for it. Run it with no daemon polling the same simulators.
pub async fn plain_polls(sims: &Sims, jobs: usize, rate: f64, seconds: f64) -> Result<PollRun> {
    let n = sims.len();
    if n == 0 {
        bail!("no simulator to poll");
    }
    let mut endpoints: Vec<PollEndpoint> = sims
        .0
        .iter()
        .map(|s| {
            let c = s.config();
            PollEndpoint {
                base: s.url(),
                client_id: c.client_id,
                client_secret: c.client_secret,
                jobs: Vec::new(),
            }
        })
        .collect();
    for i in 0..jobs.clamp(1, POLL_JOBS) {
        let sim = &sims.0[i % n];
        let instance = format!("f0000000-0000-4000-8000-{i:012}");
        sim.add_instance(&instance, &instance);
        let url = sim
            .add_running_job(
                &instance,
                &format!("f1000000-0000-4000-8000-{i:012}"),
                Duration::from_secs(3600),
            )
            .ok_or_else(|| anyhow!("the simulator refused the plain client's job {i}"))?;
        endpoints[i % n].jobs.push(url);
    }
    let spec = PollSpec {
        rate,
        warmup: 2.0,
        seconds,
        endpoints,
    };
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("poll-client")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the plain poll client")?;
    let mut stdin = child.stdin.take().context("the poll client's stdin")?;
    stdin.write_all(&serde_json::to_vec(&spec)?).await?;
    drop(stdin);
    let limit = Duration::from_secs_f64(spec.warmup + seconds + 60.0);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("the plain poll client did not finish within {limit:?}"))??;
    if !out.status.success() {
        bail!("the plain poll client failed: {}", out.status);
    }
    serde_json::from_slice(&out.stdout).context("the plain poll client's report")
}

/// `custos-bench poll-client`: the plain client's process. Reads a
/// [`PollSpec`] on stdin, polls, prints a [`PollRun`] on stdout.
pub async fn poll_client_main() -> Result<()> {
    let mut raw = Vec::new();
    std::io::stdin().read_to_end(&mut raw)?;
    let spec: PollSpec = serde_json::from_slice(&raw).context("the spec on stdin")?;
    // The adapters' own client: same pool, timeouts and redirect policy.
    let http = custos_adapter_core::http::client(Duration::from_secs(30))
        .map_err(|e| anyhow!("{}", e.message))?;
    let mut targets: Vec<(String, Arc<String>)> = Vec::new();
    for e in spec.endpoints {
        let ep = Endpoint::new(e.base, http.clone(), e.client_id, e.client_secret, 1);
        let auth = Arc::new(format!("bearer {}", ep.token().await?));
        targets.extend(e.jobs.into_iter().map(|u| (u, auth.clone())));
    }
    if targets.is_empty() {
        bail!("no job to poll");
    }
    let polls = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / spec.rate.max(0.01)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let me = std::process::id();
    let warmup = Duration::from_secs_f64(spec.warmup);
    let end = warmup + Duration::from_secs_f64(spec.seconds);
    let t0 = Instant::now();
    let mut start: Option<(Instant, f64, u64, u64)> = None;
    let mut i = 0usize;
    loop {
        tick.tick().await;
        let now = t0.elapsed();
        if start.is_none() && now >= warmup {
            start = Some((
                Instant::now(),
                daemon::usage(me).cpu_s,
                polls.load(Ordering::Relaxed),
                errors.load(Ordering::Relaxed),
            ));
        }
        if now >= end {
            break;
        }
        let (url, auth) = targets[i % targets.len()].clone();
        i += 1;
        let (http, polls, errors, first) = (
            http.clone(),
            polls.clone(),
            errors.clone(),
            first_error.clone(),
        );
        tokio::spawn(async move {
            // What the CF adapter's poll sends and reads.
            let req = http
                .get(&url)
                .header("Authorization", auth.as_str())
                .header("Accept", "application/json");
            let r = custos_adapter_core::http::send(req, "poll", true)
                .await
                .map_err(|e| e.message)
                .and_then(|reply| {
                    if !reply.status.is_success() {
                        return Err(format!("GET {url}: {}", reply.status));
                    }
                    serde_json::from_slice::<serde_json::Value>(&reply.body)
                        .map_err(|e| e.to_string())
                });
            match r {
                Ok(_) => polls.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    if let Ok(mut f) = first.lock() {
                        f.get_or_insert(e);
                    }
                    errors.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
    }
    let (w0, cpu0, p0, e0) = start.context("the window never began")?;
    let u = daemon::usage(me);
    let run = PollRun {
        polls: polls.load(Ordering::Relaxed) - p0,
        errors: errors.load(Ordering::Relaxed) - e0,
        first_error: first_error.lock().ok().and_then(|f| f.clone()),
        seconds: w0.elapsed().as_secs_f64(),
        cpu_s: u.cpu_s - cpu0,
        rss_kib: u.rss_kib,
    };
    println!("{}", serde_json::to_string(&run)?);
    Ok(())
}
