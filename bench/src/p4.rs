//! P4 recovery: the daemon started on a store that already holds F
//! finished and L live jobs; the time from its spawn until health says
//! `SERVING`, and until every live job has been polled again.
//!
//! The store is written by this process through the `custos` library
//! (`Store::open_with` with the run's `--store` engine, `put_job`,
//! `flush`) into a fresh data dir before the daemon starts, as the daemon
//! itself would have left it:
//! - finished jobs: CF backups `SUCCEEDED` over the last four weeks
//!   (inside the default `job_history` of 30 days, so none is pruned),
//!   round-robin over the L service instances, with what a real run
//!   stores (request id, fingerprint, intent, job URL, backup id, five
//!   history events); each written once (the daemon writes a job 5 or 6
//!   times, so the store here is smaller than a daemon's would be: P6);
//! - live jobs: one per instance, `RUNNING` in `Phase::Polling`, their
//!   handle the URL of a job the simulator has running
//!   (`Simulator::add_running_job`, an hour long), written as the daemon
//!   does (first `PENDING`, then the polling version).
//!
//! "Polling again" is read from the simulators: `jobs_polled` counts the
//! jobs polled at least once. The baseline is the same start with the same
//! live jobs and no finished ones, measured in the same run.
//!
//! Two starts with F finished jobs, each on a store of its own: after a
//! graceful stop (the seeded store is checkpointed as the daemon's stop
//! does, `custos::store::checkpoint`, timed) and after kill -9 (no
//! checkpoint: sled reads every log message written since the store was
//! last opened).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use custos::{
    job::{JobKind, JobRecord, JobState, Phase},
    store::Store,
};
use custos_adapter_core::{Intent, Operation, RemoteHandle, Resource, ResourceKind};
use serde_json::json;
use uuid::Uuid;

use crate::{
    daemon::{Daemon, DaemonConfig, Sims, count_jobs, dir_size, guid},
    report::{Figure, Goal, Row},
};

pub struct Args {
    pub finished: usize,
    pub live: usize,
    pub sims: usize,
    /// Seconds to wait for SERVING and for all live jobs polled.
    pub timeout: f64,
    /// Keep the folder of the full run (config, log, data dir), stopped
    /// gracefully, to profile its start by hand.
    pub keep: bool,
}

const MIB: f64 = 1024.0 * 1024.0;

/// The guid of the simulator's job behind live job `k`.
fn live_job_guid(k: usize) -> String {
    format!("a0000000-0000-4000-8000-{k:012}")
}

/// What one start measured.
struct Start {
    seed: Duration,
    /// The graceful stop's checkpoint of the seeded store (`After::Stop`).
    checkpoint: Option<Duration>,
    seed_bytes: u64,
    listening: Duration,
    serving: Duration,
    polling: Duration,
    rss_kib: u64,
    cpu_s: f64,
    running_listed: usize,
    /// SERVING after a second start of the same store.
    again: Option<Duration>,
    /// The folder left in place (`--p4-keep`).
    kept: Option<PathBuf>,
}

pub async fn run(bin: &Path, a: &Args) -> Result<Figure> {
    if a.live == 0 {
        bail!("P4 needs at least one live job (--p4-live)");
    }
    let cfg = DaemonConfig::default();
    let mut f = Figure::new(
        "P4",
        "recovery",
        json!({
            "finished": a.finished, "live": a.live, "simulators": a.sims,
            "sim_job_duration": "1h", "config": cfg.describe(),
        }),
    );
    let base = start(bin, a, 0, &cfg, After::Stop, false, false)
        .await
        .context("the baseline (live jobs only)")?;
    let stopped = start(bin, a, a.finished, &cfg, After::Stop, false, a.keep)
        .await
        .context("the start after a graceful stop")?;
    let full = start(bin, a, a.finished, &cfg, After::Crash, true, false)
        .await
        .context("the start after a crash")?;

    let (fin, live) = (a.finished, a.live);
    for (s, after) in [
        (&stopped, "after a graceful stop"),
        (&full, "after kill -9"),
    ] {
        f.rows.push(
            Row::new(
                format!("health SERVING after spawn, {after} ({fin} finished, {live} live)"),
                s.serving.as_secs_f64(),
                "s",
            )
            .baseline("no finished jobs", base.serving.as_secs_f64())
            .goal(Goal::ValueAtMost(1.0)),
        );
        f.rows.push(
            Row::new(
                format!("all {live} live jobs polled again after spawn, {after}"),
                s.polling.as_secs_f64(),
                "s",
            )
            .baseline("no finished jobs", base.polling.as_secs_f64())
            .goal(Goal::ValueAtMost(5.0)),
        );
    }
    if let Some(c) = stopped.checkpoint {
        f.rows.push(Row::new(
            format!(
                "the graceful stop's store checkpoint ({} jobs written since the store was opened)",
                fin + live
            ),
            c.as_secs_f64(),
            "s",
        ));
    }
    if let Some(again) = full.again {
        f.rows.push(
            Row::new(
                "health SERVING after a second start of the same store",
                again.as_secs_f64(),
                "s",
            )
            .baseline("first start", full.serving.as_secs_f64()),
        );
    }
    f.rows.push(
        Row::new(
            "daemon RSS when all were polled",
            full.rss_kib as f64 / 1024.0,
            "MiB",
        )
        .baseline("no finished jobs", base.rss_kib as f64 / 1024.0),
    );
    f.rows.push(
        Row::new("daemon CPU, spawn to all polled", full.cpu_s, "s")
            .baseline("no finished jobs", base.cpu_s),
    );
    f.rows.push(Row::new(
        format!("seeding the store ({} jobs, in the bench)", fin + live),
        full.seed.as_secs_f64(),
        "s",
    ));
    f.rows.push(Row::new(
        "data dir after seeding (du)",
        full.seed_bytes as f64 / MIB,
        "MiB",
    ));
    f.notes.push(format!(
        "with {fin} finished, after kill -9 (no checkpoint): store written at {:.0} jobs/s ({:.0} B on disk a job); the daemon listened after {:.3} s (once its store was open and its jobs resumed), SERVING after {:.3} s, all {live} polled after {:.3} s; {} RUNNING in ListJobs",
        (fin + live) as f64 / full.seed.as_secs_f64().max(1e-9),
        full.seed_bytes as f64 / (fin + live) as f64,
        full.listening.as_secs_f64(),
        full.serving.as_secs_f64(),
        full.polling.as_secs_f64(),
        full.running_listed,
    ));
    f.notes.push(format!(
        "baseline (no finished jobs): store written in {:.2} s ({:.1} MiB); listening after {:.3} s, SERVING after {:.3} s, all polled after {:.3} s; {} RUNNING in ListJobs",
        base.seed.as_secs_f64(),
        base.seed_bytes as f64 / MIB,
        base.listening.as_secs_f64(),
        base.serving.as_secs_f64(),
        base.polling.as_secs_f64(),
        base.running_listed,
    ));
    f.notes.push(format!(
        "after a graceful stop (the seeded store checkpointed as the daemon's stop does, in {:.2} s): listening after {:.3} s, SERVING after {:.3} s, all {live} polled after {:.3} s",
        stopped.checkpoint.unwrap_or_default().as_secs_f64(),
        stopped.listening.as_secs_f64(),
        stopped.serving.as_secs_f64(),
        stopped.polling.as_secs_f64(),
    ));
    if let Some(p) = &stopped.kept {
        f.notes.push(format!(
            "kept (--p4-keep): {}; start it by hand with BENCH_TOKEN={} BENCH_CF_SECRET=custos-secret {} serve --config {}/custos.toml (its simulators are gone: the live jobs' polls fail and are retried)",
            p.display(),
            crate::daemon::TOKEN,
            bin.display(),
            p.display()
        ));
    }
    f.notes.push(
        "a live job's first poll comes after its poll backoff's first delay, drawn from [poll_interval/2, poll_interval] once its driver runs"
            .into(),
    );
    Ok(f)
}

/// How the daemon that wrote the store stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// Gracefully: its store was checkpointed at the stop.
    Stop,
    /// By a crash (kill -9), or a store written without a checkpoint: the
    /// start reads what was written since the store's last open.
    Crash,
}

/// Seeds a store with `finished` + `a.live` jobs, starts the daemon on it
/// and measures.
async fn start(
    bin: &Path,
    a: &Args,
    finished: usize,
    cfg: &DaemonConfig,
    after: After,
    second: bool,
    keep: bool,
) -> Result<Start> {
    let sims = Sims::start(Duration::from_secs(3600), a.live, a.sims).await?;
    let mut urls = Vec::with_capacity(a.live);
    for k in 0..a.live {
        let sim = &sims.0[k % sims.len()];
        let url = sim
            .add_running_job(&guid(k), &live_job_guid(k), Duration::from_secs(3600))
            .with_context(|| format!("the simulator refused live job {k}"))?;
        urls.push(url);
    }
    let plan = Plan {
        finished,
        instances: a.live,
        sims: sims.0.iter().map(|s| s.url()).collect(),
        live_urls: urls,
        now: Utc::now(),
    };
    let dir = Daemon::fresh_dir()?;
    let data = Daemon::data_dir_of(dir.path());
    let (seed, checkpoint) = seed_store(data.clone(), plan, after == After::Stop).await?;
    let seed_bytes = dir_size(&data).1;

    let limit = Duration::from_secs_f64(a.timeout);
    let t0 = Instant::now();
    let mut d = Daemon::start_in(dir, bin, &sims, cfg)?;
    let listening = t0.elapsed();
    let addr = d.addr.clone();
    let health = tokio::spawn(async move { wait_serving(&addr, t0, limit).await });
    let live = a.live as u64;
    let polling = loop {
        let n = sims.sum(|c| c.jobs_polled);
        if n >= live {
            break t0.elapsed();
        }
        if t0.elapsed() > limit {
            bail!(
                "only {n} of {live} live jobs were polled within {limit:?} of the daemon's start; its log:\n{}",
                d.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let u = d.usage();
    let serving = health.await.context("the health prober panicked")??;
    let (mut c, _) = d.client().await?;
    let running_listed = count_jobs(&mut c, "state=RUNNING").await?;
    drop(c);
    // Once more on the same store, after a graceful stop: sled brings its
    // snapshot up to date when it opens a store, so this start reads only
    // what the first one wrote.
    let again = if second {
        d.stop(Duration::from_secs(60))?;
        let t1 = Instant::now();
        d.restart(&sims, cfg)?;
        Some(wait_serving(&d.addr, t1, limit).await?)
    } else {
        None
    };
    let kept = if keep {
        d.stop(Duration::from_secs(60))?;
        Some(d.keep_dir())
    } else {
        None
    };
    Ok(Start {
        seed,
        checkpoint,
        seed_bytes,
        listening,
        serving,
        polling,
        rss_kib: u.rss_kib,
        cpu_s: u.cpu_s,
        running_listed,
        again,
        kept,
    })
}

/// Calls `grpc.health.v1.Health/Check` until it answers SERVING; the time
/// since `t0`.
async fn wait_serving(addr: &str, t0: Instant, limit: Duration) -> Result<Duration> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect_lazy();
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    loop {
        let r = tokio::time::timeout(
            Duration::from_millis(500),
            h.check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await;
        if let Ok(Ok(r)) = r
            && r.get_ref().status == ServingStatus::Serving as i32
        {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            bail!("health did not say SERVING within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What to write into the store.
pub(crate) struct Plan {
    finished: usize,
    /// Service instances: live job `k` is on instance `k`, finished job `i`
    /// on instance `i % instances`; instance `t` is on simulator
    /// `t % sims.len()` (backend `cf{t % n}`).
    instances: usize,
    /// The simulators' URLs.
    sims: Vec<String>,
    /// The job URL of each live job.
    live_urls: Vec<String>,
    now: DateTime<Utc>,
}

impl Plan {
    fn backup_op(&self, t: usize) -> (String, String, Operation) {
        let n = self.sims.len().max(1);
        let g = guid(t);
        (
            format!("backends/cf{}/serviceInstances/{g}", t % n),
            format!("cf{}", t % n),
            Operation::CreateBackup {
                resource: Resource {
                    kind: ResourceKind::ServiceInstance,
                    id: g,
                },
                incremental: false,
            },
        )
    }

    /// A job as `Engine::create` makes it, created at `at`.
    fn new_job(&self, t: usize, at: DateTime<Utc>) -> JobRecord {
        let (target, backend, op) = self.backup_op(t);
        let mut r = JobRecord::new(JobKind::Backup, target, backend, op, BTreeMap::new());
        r.id = v7(at);
        r.create_time = at;
        if let Some(e) = r.events.first_mut() {
            e.time = at;
        }
        r.request_id = Some(Uuid::new_v4().to_string());
        r.fingerprint = Some(format!(
            "s256:{}{}",
            Uuid::new_v4().simple(),
            Uuid::new_v4().simple()
        ));
        r.created_by = Some("bench".into());
        r
    }

    /// Running, intent stored, handle stored: what the driver has written
    /// by the time the job polls.
    fn to_polling(&self, r: &mut JobRecord, job_url: &str, at: DateTime<Utc>) {
        started(r, at);
        submitting(r, at);
        polling(r, job_url, at);
        let job = job_url.rsplit('/').next().unwrap_or_default();
        r.message = format!("CF job {job} is PROCESSING");
    }

    /// Finished job `i`: created over the last four weeks, oldest first.
    fn finished(&self, i: usize) -> JobRecord {
        let span = chrono::Duration::days(28).num_milliseconds() as f64;
        let back = span * (self.finished - i) as f64 / self.finished.max(1) as f64;
        let at =
            self.now - chrono::Duration::hours(1) - chrono::Duration::milliseconds(back as i64);
        let t = i % self.instances.max(1);
        let mut r = self.new_job(t, at);
        let sim = &self.sims[t % self.sims.len()];
        let url = format!("{sim}/v3/jobs/{}", Uuid::new_v4());
        self.to_polling(&mut r, &url, at);
        succeeded(&mut r, at + chrono::Duration::minutes(3));
        r
    }

    /// Live job `k` as first written (PENDING) and as it is now (polling).
    fn live(&self, k: usize) -> (JobRecord, JobRecord) {
        let at = self.now - chrono::Duration::minutes(2);
        let pending = self.new_job(k, at);
        let mut polling = pending.clone();
        self.to_polling(&mut polling, &self.live_urls[k], at);
        (pending, polling)
    }

    /// A plan of no stored jobs, for `crate::floor`: jobs on `instances`
    /// service instances spread over the simulators at `sims`.
    pub(crate) fn of_instances(instances: usize, sims: Vec<String>) -> Plan {
        Plan {
            finished: 0,
            instances,
            sims,
            live_urls: Vec::new(),
            now: Utc::now(),
        }
    }

    /// The first `n` (at most 5) of the versions the daemon writes of a
    /// backup job on instance `t % instances` that runs to its end
    /// (creation, start, intent, handle, end), made now.
    pub(crate) fn versions(&self, t: usize, n: usize) -> Vec<JobRecord> {
        let at = Utc::now();
        let t = t % self.instances.max(1);
        let mut r = self.new_job(t, at);
        let mut out = Vec::with_capacity(n.min(5));
        for step in 0..n.min(5) {
            match step {
                0 => {}
                1 => started(&mut r, at),
                2 => submitting(&mut r, at),
                3 => {
                    let sim = self.sims.get(t % self.sims.len().max(1));
                    let sim = sim.map_or("http://127.0.0.1", String::as_str);
                    polling(&mut r, &format!("{sim}/v3/jobs/{}", Uuid::new_v4()), at);
                }
                _ => succeeded(&mut r, at + chrono::Duration::milliseconds(60)),
            }
            out.push(r.clone());
        }
        out
    }
}

/// The steps of a backup job's life, each as the driver writes it (the
/// versions of `Plan::versions`): PENDING → RUNNING ("starting") →
/// intent stored (Submitting) → handle stored (Polling) → SUCCEEDED.
fn started(r: &mut JobRecord, at: DateTime<Utc>) {
    let t = at + chrono::Duration::milliseconds(2);
    r.state = JobState::Running;
    r.start_time = Some(t);
    r.message = "starting".into();
    r.record_event(t);
}

/// What the CF adapter's prepare records (the instance's last operation,
/// the previous backup, and its newest backups), stored before the submit.
fn submitting(r: &mut JobRecord, at: DateTime<Utc>) {
    let prev = (at - chrono::Duration::days(1)).to_rfc3339();
    let state = json!({
        "last_operation": {"type": "update", "state": "succeeded",
            "description": "backup succeeded", "created_at": prev, "updated_at": prev},
        "has_last_operation": true,
        "newest_created_at": (at - chrono::Duration::days(1)).timestamp(),
        "newest_ids": [Uuid::new_v4().to_string()],
    });
    let t = at + chrono::Duration::milliseconds(30);
    r.intent = Some(Intent {
        state: state.to_string(),
        recorded_at: Some(t),
    });
    r.phase = Phase::Submitting;
    r.message = "submitting to the backend".into();
    r.record_event(t);
}

fn polling(r: &mut JobRecord, job_url: &str, at: DateTime<Utc>) {
    r.handle = Some(RemoteHandle {
        display: job_url.to_string(),
        state: json!({"watch": "job", "url": job_url}).to_string(),
    });
    r.phase = Phase::Polling;
    r.message = format!("submitted; waiting for {job_url}");
    r.record_event(at + chrono::Duration::milliseconds(45));
}

fn succeeded(r: &mut JobRecord, end: DateTime<Utc>) {
    let backup = Uuid::new_v4().to_string();
    r.state = JobState::Succeeded;
    r.phase = Phase::Done;
    r.end_time = Some(end);
    r.message = format!("backup {backup} created");
    r.backup_id = Some(backup);
    r.record_event(end);
}

/// A UUIDv7 of `at`, as `Uuid::now_v7` would have made then.
fn v7(at: DateTime<Utc>) -> Uuid {
    let ms = at.timestamp_millis().max(0) as u64;
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        ms / 1000,
        u32::try_from(ms % 1000).unwrap_or(0) * 1_000_000,
    );
    Uuid::new_v7(ts)
}

/// Writes the plan into a store at `data`, on a thread with a runtime of
/// its own; returns once the store is flushed and closed (the runtime
/// gone, and with it the store's flusher and its handle on the engine, so
/// that the daemon can open it).
/// Writes `plan` into a store in `data`; with `stop`, then does what the
/// daemon's graceful stop does to its store (`custos::store::checkpoint`),
/// timed: the seeding stands for a daemon's life, and this for its stop.
async fn seed_store(data: PathBuf, plan: Plan, stop: bool) -> Result<(Duration, Option<Duration>)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = (|| -> Result<(Duration, Option<Duration>)> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let r = rt.block_on(async {
                let t0 = Instant::now();
                let store = Store::open_with(&data, crate::daemon::store_engine())?;
                for i in 0..plan.finished {
                    store.put_job(&plan.finished(i))?;
                }
                for k in 0..plan.live_urls.len() {
                    let (pending, polling) = plan.live(k);
                    store.put_job(&pending)?;
                    store.put_job(&polling)?;
                }
                store.flush().await?;
                drop(store);
                Ok::<_, anyhow::Error>(t0.elapsed())
            });
            // Every handle of the store is gone with the runtime.
            drop(rt);
            let seeded = r?;
            let checkpoint = if stop {
                let t = Instant::now();
                custos::store::checkpoint(&data, crate::daemon::store_engine())?
                    .then(|| t.elapsed())
            } else {
                None
            };
            Ok((seeded, checkpoint))
        })();
        let _ = tx.send(r);
    });
    rx.await
        .map_err(|_| anyhow!("the seeding thread ended without an answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            finished: 10,
            instances: 4,
            sims: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            live_urls: (0..4)
                .map(|k| {
                    format!(
                        "http://127.0.0.1:{}/v3/jobs/{}",
                        1 + k % 2,
                        live_job_guid(k)
                    )
                })
                .collect(),
            now: Utc::now(),
        }
    }

    #[test]
    fn the_versions_of_a_job_are_its_life_in_order() {
        let p = Plan::of_instances(4, vec!["http://127.0.0.1:1".into()]);
        let v = p.versions(6, 5);
        let steps: Vec<_> = v.iter().map(|r| (r.state, r.phase)).collect();
        assert_eq!(
            steps,
            [
                (JobState::Pending, Phase::Queued),
                (JobState::Running, Phase::Queued),
                (JobState::Running, Phase::Submitting),
                (JobState::Running, Phase::Polling),
                (JobState::Succeeded, Phase::Done),
            ]
        );
        assert!(v.iter().all(|r| r.id == v[0].id));
        assert_eq!(
            v[0].target,
            format!("backends/cf0/serviceInstances/{}", guid(2))
        );
        assert!(v[3].handle.is_some() && v[4].backup_id.is_some());
        assert_eq!(p.versions(0, 1).len(), 1);
        assert_eq!(p.versions(0, 9).len(), 5);
    }

    #[test]
    fn seeded_records_look_like_the_daemons() {
        let p = plan();
        let f = p.finished(3);
        assert_eq!(f.state, JobState::Succeeded);
        assert_eq!(f.phase, Phase::Done);
        assert_eq!(
            f.target,
            format!("backends/cf1/serviceInstances/{}", guid(3))
        );
        assert_eq!(f.backend, "cf1");
        assert!(f.backup_id.is_some() && f.end_time.is_some() && f.intent.is_some());
        assert_eq!(f.events.len(), 5);
        assert!(f.end_time.is_some_and(|e| e < p.now));
        // Ids sort by creation, as UUIDv7 do.
        assert!(p.finished(2).id < f.id);
        assert!(f.id < p.live(0).0.id);
        let back = JobRecord::decode(&f.encode().unwrap()).unwrap();
        assert_eq!(back, f);

        let (pending, polling) = p.live(1);
        assert_eq!(pending.id, polling.id);
        assert_eq!(
            (pending.state, pending.phase),
            (JobState::Pending, Phase::Queued)
        );
        assert!(pending.start_time.is_none());
        assert_eq!(
            (polling.state, polling.phase),
            (JobState::Running, Phase::Polling)
        );
        let h = polling.handle.unwrap();
        assert_eq!(h.display, p.live_urls[1]);
        let v: serde_json::Value = serde_json::from_str(&h.state).unwrap();
        assert_eq!(v, json!({"watch": "job", "url": p.live_urls[1]}));
        assert!(polling.message.contains(&live_job_guid(1)));
    }
}
