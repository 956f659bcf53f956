//! P2 orchestration: N backup jobs end to end through the daemon
//! (`CreateBackup`, the daemon drives each to its end and finds the backup
//! id), against a plain async HTTP client (reqwest) making the same CF v3
//! calls itself, with no daemon, against simulators of the same kind.
//!
//! The calls of one backup job, as the CF adapter makes them
//! (`adapters/cf-v3/src/adapter.rs`):
//! - once per backend: `GET /` (the UAA's address), `POST /oauth/token`
//!   (client credentials, HTTP basic auth); the token is cached;
//! - prepare: `GET /v3/service_instances/{guid}` (its `last_operation`) and
//!   `GET /v3/service_instances/{guid}/backups` (the newest backups);
//! - submit: `POST /v3/service_instances/{guid}/backups` → 202 `Location`;
//! - poll: `GET {Location}` after the poll backoff's delay (`poll_interval`,
//!   ×2 up to `poll_max_interval`, each drawn from [½·d, d]), until the job
//!   is `COMPLETE`;
//! - then `GET /v3/service_instances/{guid}/backups` once more: the new
//!   backup (newer than any seen at prepare) is the job's backup id.
//!
//! Both sides hold the same concurrency: every job may be under way at
//! once, and backend calls are bounded as the daemon bounds them: a
//! permit of the backend (`per_backend_running_jobs`, 64; one backend per
//! simulator) and then a global one (`max_running_jobs`, 256), held for a
//! step (prepare, submit, one poll with its follow-up). The baseline draws
//! its poll delays from the same backoff (`custos_adapter_core::backoff`).
//! The daemon also takes its jobs over gRPC (`--streams`, 64), durably:
//! that is part of what it costs, so it is in its time.

use std::{
    collections::HashSet,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use custos::{api::pb, config::parse_duration};
use custos_adapter_core::backoff::Backoff;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::{OnceCell, Semaphore};

use crate::{
    daemon::{Daemon, DaemonConfig, Sims, count_jobs},
    floor, load,
    report::{Figure, Goal, Row},
};

pub struct Args {
    pub jobs: usize,
    pub poll_interval: String,
    pub streams: usize,
    pub sims: usize,
    pub timeout: f64,
}

/// Every job that ended, as `WatchJobs` shows them.
const ENDED: &str = "state=SUCCEEDED OR state=FAILED OR state=CANCELLED";

pub async fn run(bin: &Path, a: &Args) -> Result<Figure> {
    if a.jobs == 0 {
        bail!("P2 needs at least one job (--p2-jobs)");
    }
    let cfg = DaemonConfig {
        poll_interval: a.poll_interval.clone(),
        ..DaemonConfig::default()
    };
    let pi = parse_duration(&cfg.poll_interval).map_err(anyhow::Error::msg)?;
    let pmax = parse_duration(&cfg.poll_max_interval).map_err(anyhow::Error::msg)?;
    let timeout = parse_duration(&cfg.timeout).map_err(anyhow::Error::msg)?;
    let limit = Duration::from_secs_f64(a.timeout);
    let mut f = Figure::new(
        "P2",
        "orchestration",
        json!({
            "jobs": a.jobs, "targets": a.jobs, "streams": a.streams, "simulators": a.sims,
            "sim_job_duration": "0s", "config": cfg.describe(),
            "baseline_permits": format!("{} per simulator, {} in all", cfg.per_backend_running_jobs, cfg.max_running_jobs),
        }),
    );

    // The baseline first, on simulators of its own (a simulator keeps
    // every job it ran, and looks through them on every request).
    let sims = Sims::start(Duration::ZERO, a.jobs, a.sims).await?;
    let plain = Plain::new(&sims, &cfg, timeout, pi, pmax)?;
    let base = tokio::time::timeout(limit, plain.run(a.jobs))
        .await
        .map_err(|_| anyhow!("the baseline did not finish within {limit:?}"))??;
    let base_requests = sims.sum(|c| c.requests);
    let base_submits = sims.sum(|c| c.backup_submits);
    drop(plain);
    for s in &sims.0 {
        s.shutdown();
    }
    drop(sims);

    // The daemon, on fresh simulators.
    let sims = Arc::new(Sims::start(Duration::ZERO, a.jobs, a.sims).await?);
    let d = Daemon::start(bin, &sims, &cfg)?;
    let (client, _) = d.client().await?;
    // Subscribed before the first submit: every ending is seen.
    let mut watch = client
        .clone()
        .watch_jobs(pb::WatchJobsRequest {
            filter: ENDED.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let n = a.jobs;
    let watcher = tokio::spawn(async move {
        let mut done = HashSet::with_capacity(n);
        let mut failed = 0usize;
        let mut first_failure = None;
        while done.len() + failed < n {
            match watch.message().await {
                Ok(Some(j)) if j.state == pb::job::State::Succeeded as i32 => {
                    if !j.backup_id.is_empty() {
                        done.insert(j.name);
                    } else {
                        failed += 1;
                        first_failure.get_or_insert(format!(
                            "{} SUCCEEDED without a backup id: {}",
                            j.name, j.message
                        ));
                    }
                }
                Ok(Some(j)) => {
                    failed += 1;
                    first_failure
                        .get_or_insert(format!("{} ended {}: {}", j.name, j.state, j.message));
                }
                Ok(None) => return Err(anyhow!("WatchJobs ended early")),
                Err(e) => return Err(anyhow!("WatchJobs failed: {e}")),
            }
        }
        Ok((Instant::now(), done.len(), failed, first_failure))
    });
    let before = d.usage();
    let t0 = Instant::now();
    let s = sims.clone();
    let made = load::create_backups(&client, a.streams, n, move |i| s.target(i as usize)).await?;
    let acked = t0.elapsed();
    let (t_end, ok, failed, first_failure) = tokio::time::timeout(limit, watcher)
        .await
        .map_err(|_| {
            anyhow!(
                "the jobs had not all ended {limit:?} after the first submit; daemon log:\n{}",
                d.log_tail()
            )
        })?
        .context("the WatchJobs reader panicked")??;
    let daemon_time = t_end.duration_since(t0);
    let after = d.usage();
    if failed > 0 {
        bail!(
            "{failed} of {n} jobs did not succeed with a backup id: {}",
            first_failure.unwrap_or_default()
        );
    }
    let mut c = client;
    let listed = count_jobs(&mut c, "state=SUCCEEDED").await?;
    let requests = sims.sum(|c| c.requests);
    let submits = sims.sum(|c| c.backup_submits);
    // The store's part alone, with the daemon gone: every version the
    // daemon writes of the same number of jobs, from as many writers as
    // it may have (every running job, and every stream creating one).
    drop(d);
    let writers = cfg.max_running_jobs as usize + a.streams;
    let urls = sims.0.iter().map(|s| s.url()).collect();
    let floor = floor::store_writes(n, urls, writers, 5, load::Until::Calls(n as u64)).await?;

    f.rows.push(
        Row::new(
            format!("{n} backup jobs end to end through the daemon"),
            daemon_time.as_secs_f64(),
            "s",
        )
        .baseline(
            "plain reqwest client, same calls",
            base.elapsed.as_secs_f64(),
        )
        .goal(Goal::RatioAtMost(1.3)),
    );
    f.rows.push(
        Row::new(
            "jobs per second, end to end",
            n as f64 / daemon_time.as_secs_f64(),
            "1/s",
        )
        .baseline("plain client", n as f64 / base.elapsed.as_secs_f64()),
    );
    f.rows.push(
        Row::new(
            format!(
                "the store alone: the 5 durable versions of each of {n} jobs, {writers} writers (no daemon)"
            ),
            floor.elapsed.as_secs_f64(),
            "s",
        )
        .baseline(
            "plain reqwest client, same calls",
            base.elapsed.as_secs_f64(),
        ),
    );
    f.rows.push(Row::new(
        format!("all {n} CreateBackup acknowledged after"),
        acked.as_secs_f64(),
        "s",
    ));
    f.rows.push(Row::new(
        "last job done after the last acknowledgement",
        daemon_time.saturating_sub(acked).as_secs_f64(),
        "s",
    ));
    f.rows.push(Row::new(
        "daemon CPU, first submit to last job done",
        after.cpu_s - before.cpu_s,
        "s",
    ));
    f.rows.push(
        Row::new(
            "HTTP requests per job (simulators' count)",
            requests as f64 / n as f64,
            "",
        )
        .baseline("plain client", base_requests as f64 / n as f64),
    );
    f.notes.push(format!(
        "daemon: {} CreateBackup acknowledged in {:.2} s ({} failed), {ok} SUCCEEDED with a backup id seen on WatchJobs after {:.2} s, {listed} SUCCEEDED in ListJobs; {submits} backup submits and {requests} HTTP requests reached the simulators; daemon CPU {:.2} s, RSS at the end {:.1} MiB",
        made.ok,
        made.elapsed.as_secs_f64(),
        made.errors,
        daemon_time.as_secs_f64(),
        after.cpu_s - before.cpu_s,
        after.rss_kib as f64 / 1024.0
    ));
    f.notes.push(format!(
        "baseline: {} jobs with a backup id in {:.2} s; {base_submits} backup submits, {base_requests} HTTP requests; {} polls of a job URL ({:.2} a job)",
        base.backup_ids,
        base.elapsed.as_secs_f64(),
        base.polls,
        base.polls as f64 / n as f64
    ));
    f.notes.push(format!(
        "the store alone ({} store, its group commit; no gRPC, no HTTP): {} versions ({} jobs: creation, start, intent, handle, end, each awaited durable) in {:.2} s, {:.0}/s, {:.1} versions made durable a flush; the ratio is P2's ceiling if the daemon cost nothing but its durable writes",
        crate::daemon::store_engine(),
        floor.writes,
        floor.jobs,
        floor.elapsed.as_secs_f64(),
        floor.writes_per_s(),
        floor.per_flush()
    ));
    f.notes.push(
        "the baseline runs first, each side on fresh simulators in this process (their CPU is the bench's, on the same cores)"
            .into(),
    );
    Ok(f)
}

/// What the plain client did.
struct PlainRun {
    elapsed: Duration,
    backup_ids: usize,
    polls: u64,
}

/// One CF endpoint as the plain client sees it: its HTTP client (one per
/// backend, as the daemon's adapters have), its token once fetched, and
/// its permits.
pub(crate) struct Endpoint {
    base: String,
    http: reqwest::Client,
    client_id: String,
    client_secret: String,
    token: OnceCell<String>,
    permits: Arc<Semaphore>,
}

/// The plain async HTTP client: N jobs, each a task making the adapter's
/// calls in order.
struct Plain {
    endpoints: Vec<Arc<Endpoint>>,
    global: Arc<Semaphore>,
    poll_interval: Duration,
    poll_max: Duration,
}

impl Plain {
    fn new(
        sims: &Sims,
        cfg: &DaemonConfig,
        timeout: Duration,
        poll_interval: Duration,
        poll_max: Duration,
    ) -> Result<Plain> {
        let mut endpoints = Vec::new();
        for sim in &sims.0 {
            let c = sim.config();
            // What the adapters' client does: a timeout per call, no
            // redirects.
            let http = reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .redirect(reqwest::redirect::Policy::none())
                .build()?;
            endpoints.push(Arc::new(Endpoint::new(
                sim.url(),
                http,
                c.client_id,
                c.client_secret,
                cfg.per_backend_running_jobs as usize,
            )));
        }
        Ok(Plain {
            endpoints,
            global: Arc::new(Semaphore::new(cfg.max_running_jobs as usize)),
            poll_interval,
            poll_max,
        })
    }

    async fn run(&self, n: usize) -> Result<PlainRun> {
        let polls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let t0 = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let ep = self.endpoints[i % self.endpoints.len()].clone();
            let global = self.global.clone();
            let (pi, pmax) = (self.poll_interval, self.poll_max);
            let polls = polls.clone();
            set.spawn(async move {
                backup_job(&ep, &global, &crate::daemon::guid(i), pi, pmax, &polls).await
            });
        }
        let mut ids = HashSet::with_capacity(n);
        while let Some(r) = set.join_next().await {
            let id = r.context("a baseline job panicked")??;
            ids.insert(id);
        }
        let elapsed = t0.elapsed();
        if ids.len() != n {
            bail!(
                "the baseline found {} distinct backup ids for {n} jobs",
                ids.len()
            );
        }
        Ok(PlainRun {
            elapsed,
            backup_ids: ids.len(),
            polls: polls.load(std::sync::atomic::Ordering::Relaxed),
        })
    }
}

/// A backend permit, then a global one, as the daemon takes them.
async fn permits(
    ep: &Endpoint,
    global: &Arc<Semaphore>,
) -> Result<(
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let b = ep.permits.clone().acquire_owned().await?;
    let g = global.clone().acquire_owned().await?;
    Ok((b, g))
}

/// One backup job: prepare, submit, poll until complete, find the backup.
async fn backup_job(
    ep: &Endpoint,
    global: &Arc<Semaphore>,
    guid: &str,
    poll_interval: Duration,
    poll_max: Duration,
    polls: &std::sync::atomic::AtomicU64,
) -> Result<String> {
    let instance = format!("{}/v3/service_instances/{guid}", ep.base);
    let backups = format!("{instance}/backups");
    // Prepare: the instance's last_operation and its newest backups.
    let seen = {
        let _p = permits(ep, global).await?;
        let token = ep.token().await?;
        let inst = ep.get(&token, &instance).await?;
        if inst.get("guid").is_none() {
            bail!("GET {instance}: no guid in {inst}");
        }
        newest(&ep.get(&token, &backups).await?)
    };
    // Submit.
    let job_url = {
        let _p = permits(ep, global).await?;
        let token = ep.token().await?;
        let r = ep
            .http
            .post(&backups)
            .header(header::AUTHORIZATION, format!("bearer {token}"))
            .header(header::ACCEPT, "application/json")
            .send()
            .await?;
        let status = r.status();
        let location = r
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let _ = r.bytes().await?;
        if status != StatusCode::ACCEPTED {
            bail!("POST {backups}: {status}");
        }
        let loc = location.with_context(|| format!("POST {backups}: 202 without a Location"))?;
        reqwest::Url::parse(&ep.base)?.join(&loc)?.to_string()
    };
    // Poll until complete, then the new backup.
    let mut backoff = Backoff::new(poll_interval, poll_max);
    loop {
        tokio::time::sleep(backoff.next_delay()).await;
        let _p = permits(ep, global).await?;
        let token = ep.token().await?;
        polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let job = ep.get(&token, &job_url).await?;
        match job["state"].as_str() {
            Some("COMPLETE") => {
                let list = ep.get(&token, &backups).await?;
                return new_backup(&list, &seen).with_context(|| {
                    format!("{guid}: the job is COMPLETE but no new backup is listed")
                });
            }
            Some("FAILED") => bail!("the CF job {job_url} failed: {}", job["errors"]),
            Some(_) => {}
            None => bail!("GET {job_url}: no state in {job}"),
        }
    }
}

impl Endpoint {
    /// A simulator at `base` with the client credentials it accepts; calls
    /// under `permits` at once (see [`permits`]).
    pub(crate) fn new(
        base: String,
        http: reqwest::Client,
        client_id: String,
        client_secret: String,
        permits: usize,
    ) -> Endpoint {
        Endpoint {
            base,
            http,
            client_id,
            client_secret,
            token: OnceCell::new(),
            permits: Arc::new(Semaphore::new(permits)),
        }
    }

    /// The UAA token, fetched once (the address from `GET /`, then a
    /// client-credentials grant with HTTP basic auth).
    pub(crate) async fn token(&self) -> Result<String> {
        self.token
            .get_or_try_init(|| async {
                let root: Value = self
                    .http
                    .get(format!("{}/", self.base))
                    .header(header::ACCEPT, "application/json")
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let uaa = ["login", "uaa"]
                    .iter()
                    .find_map(|k| root["links"][k]["href"].as_str())
                    .context("the root document names no UAA")?;
                let t: Value = self
                    .http
                    .post(format!("{}/oauth/token", uaa.trim_end_matches('/')))
                    .basic_auth(&self.client_id, Some(&self.client_secret))
                    .header(header::ACCEPT, "application/json")
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("scope", ""),
                        ("client_id", self.client_id.as_str()),
                        ("client_secret", self.client_secret.as_str()),
                    ])
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                t["access_token"]
                    .as_str()
                    .map(str::to_string)
                    .context("the token answer has no access_token")
            })
            .await
            .cloned()
    }

    /// An authenticated GET of JSON.
    async fn get(&self, token: &str, url: &str) -> Result<Value> {
        let r = self
            .http
            .get(url)
            .header(header::AUTHORIZATION, format!("bearer {token}"))
            .header(header::ACCEPT, "application/json")
            .send()
            .await?;
        let status = r.status();
        let body = r.bytes().await?;
        if !status.is_success() {
            bail!("GET {url}: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

/// The newest `created_at` of a backup list and the ids that have it.
fn newest(list: &Value) -> (Option<i64>, Vec<String>) {
    let items = list["backups"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let t = items.iter().filter_map(|b| b["created_at"].as_i64()).max();
    let ids = items
        .iter()
        .filter(|b| t.is_some() && b["created_at"].as_i64() == t)
        .filter_map(|b| b["id"].as_str().map(str::to_string))
        .collect();
    (t, ids)
}

/// The backup newer than what prepare saw (the adapter's rule).
fn new_backup(list: &Value, seen: &(Option<i64>, Vec<String>)) -> Option<String> {
    let items = list["backups"].as_array()?;
    items
        .iter()
        .filter_map(|b| Some((b["created_at"].as_i64()?, b["id"].as_str()?)))
        .filter(|(t, id)| match seen.0 {
            None => true,
            Some(s) => *t > s || (*t == s && !seen.1.iter().any(|x| x == id)),
        })
        .max_by_key(|(t, _)| *t)
        .map(|(_, id)| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_backup_is_the_one_prepare_did_not_see() {
        let before =
            json!({"backups": [{"id": "a", "created_at": 10}, {"id": "b", "created_at": 10}]});
        let seen = newest(&before);
        assert_eq!(seen, (Some(10), vec!["a".to_string(), "b".to_string()]));
        let after = json!({"backups": [{"id": "a", "created_at": 10}, {"id": "b", "created_at": 10}, {"id": "c", "created_at": 10}]});
        assert_eq!(new_backup(&after, &seen).as_deref(), Some("c"));
        assert_eq!(new_backup(&before, &seen), None);
        assert_eq!(
            new_backup(
                &json!({"backups": [{"id": "x", "created_at": 1}]}),
                &newest(&json!({"backups": []}))
            )
            .as_deref(),
            Some("x")
        );
    }
}
