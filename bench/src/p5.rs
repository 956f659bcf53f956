//! P5 schedules: N schedules whose cron names the same second; the time
//! from that second until all N jobs exist, as a client sees them: a
//! `WatchJobs` stream opened before that second shows each job when it is
//! made (durable), and one `ListJobs` count afterwards checks that all N
//! are there. Formerly `examples/schedule_bench.rs`.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Result, bail};
use chrono::{Timelike, Utc};
use custos::api::pb;
use serde_json::json;

use crate::{
    daemon::{Daemon, DaemonConfig, Sims, count_jobs},
    load::{self, Until},
    report::{Figure, Goal, Row},
};

pub struct Args {
    pub schedules: usize,
    pub instances: usize,
    /// Seconds from the start until the due second.
    pub lead: f64,
    pub streams: usize,
    pub sims: usize,
}

pub async fn run(bin: &Path, a: &Args) -> Result<Figure> {
    let cfg = DaemonConfig::default();
    let mut f = Figure::new(
        "P5",
        "schedules",
        json!({
            "schedules": a.schedules, "instances": a.instances, "lead_s": a.lead,
            "streams": a.streams, "simulators": a.sims, "sim_job_duration": "20ms",
            "config": cfg.describe(),
        }),
    );
    let instances = a.instances.max(1);
    let sims =
        std::sync::Arc::new(Sims::start(Duration::from_millis(20), instances, a.sims).await?);
    let d = Daemon::start(bin, &sims, &cfg)?;
    let (client, _) = d.client().await?;
    let idle = d.usage();

    // One second, `lead` ahead (UTC), named in every schedule's cron.
    let due = {
        let t = Utc::now() + chrono::Duration::milliseconds((a.lead * 1000.0) as i64);
        t.with_nanosecond(0).unwrap_or(t)
    };
    let cron = Arc::new(format!(
        "{} {} {} * * *",
        due.second(),
        due.minute(),
        due.hour()
    ));
    let c = client.clone();
    let s = sims.clone();
    let create = move |i: u64| {
        let mut c = c.clone();
        let cron = cron.clone();
        let target = s.target(i as usize % instances);
        async move {
            c.create_schedule(pb::CreateScheduleRequest {
                schedule_id: format!("bench-{i}"),
                schedule: Some(pb::Schedule {
                    target,
                    cron: cron.to_string(),
                    overlap_policy: pb::schedule::OverlapPolicy::Allow as i32,
                    ..Default::default()
                }),
                validate_only: false,
            })
            .await
            .map(|_| ())
        }
    };
    let made = load::run(a.streams, Until::Calls(a.schedules as u64), create).await;
    if made.ok < a.schedules as u64 {
        bail!(
            "only {} of {} schedules were created: {}",
            made.ok,
            a.schedules,
            made.first_error.unwrap_or_default()
        );
    }
    f.rows.push(Row::new(
        format!("creating {} schedules ({} streams)", a.schedules, a.streams),
        made.elapsed.as_secs_f64(),
        "s",
    ));
    let until_due = (due - Utc::now()).to_std().unwrap_or_default();
    if until_due >= Duration::from_secs(12) {
        tokio::time::sleep(until_due - Duration::from_secs(11)).await;
        let u0 = d.usage();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let u1 = d.usage();
        f.rows.push(
            Row::new(
                format!("RSS idle with {} schedules", a.schedules),
                u0.rss_kib as f64 / 1024.0,
                "MiB",
            )
            .baseline("RSS idle, none", idle.rss_kib as f64 / 1024.0),
        );
        f.rows.push(Row::new(
            "CPU idle with the schedules, over 10 s",
            (u1.cpu_s - u0.cpu_s) * 10.0,
            "% of a core",
        ));
    } else {
        f.notes.push(format!(
            "less than 12 s were left before the due second ({:.1} s): no idle measurement (raise --p5-lead)",
            until_due.as_secs_f64()
        ));
    }
    let mut c = client;
    // Opened before the due second: it sees every job as it is made
    // (published once durable), with no polling and no listing that
    // would compete with the firing for the daemon's cores.
    let mut watch = c
        .watch_jobs(pb::WatchJobsRequest {
            filter: "state=PENDING".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let n = a.schedules;
    let watcher = tokio::spawn(async move {
        let mut seen = std::collections::HashSet::with_capacity(n);
        while seen.len() < n {
            match watch.message().await {
                Ok(Some(j)) => {
                    seen.insert(j.name);
                }
                Ok(None) => bail!("WatchJobs ended after {} of {n} jobs", seen.len()),
                Err(e) => bail!("WatchJobs failed after {} of {n} jobs: {e}", seen.len()),
            }
        }
        Ok(Utc::now())
    });
    let until_due = (due - Utc::now()).to_std().unwrap_or_default();
    if until_due.is_zero() {
        f.notes.push(
            "the due second passed before all schedules existed: the figure counts from it all the same (raise --p5-lead)"
                .into(),
        );
    }
    let limit = until_due + Duration::from_secs(600);
    let watched = match tokio::time::timeout(limit, watcher).await {
        Ok(r) => r?,
        Err(_) => bail!("not all {n} jobs were made within 600 s of the due second"),
    };
    let took = match watched {
        Ok(last) => {
            let listed = count_jobs(&mut c, "").await?;
            if listed != n {
                bail!("WatchJobs showed {n} jobs, ListJobs lists {listed}");
            }
            f.notes.push(format!(
                "the time the WatchJobs stream (opened before the due second) had shown all {n} jobs; ListJobs then listed {listed}"
            ));
            (last - due).to_std().unwrap_or_default()
        }
        // A watcher that fell behind (the cores busy elsewhere): counted
        // by listing instead, an upper bound.
        Err(e) => {
            let (took, began) = listed_all(&mut c, n, due).await?;
            f.notes.push(format!(
                "{e}: counted with ListJobs every 250 ms instead (taken at the end of each count: granularity ~250 ms plus one listing; the count that found them all began {:.2} s after the due second)",
                began.as_secs_f64()
            ));
            took
        }
    };
    f.rows.push(
        Row::new(
            format!("all {} jobs exist after the due second", a.schedules),
            took.as_secs_f64(),
            "s",
        )
        .goal(Goal::ValueAtMost(1.0)),
    );
    // The daemon's side, without the listing's granularity: when the
    // newest job was made (its create_time, taken before its flush).
    let newest = c
        .list_jobs(pb::ListJobsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .jobs
        .first()
        .and_then(|j| j.create_time)
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32));
    if let Some(t) = newest {
        f.rows.push(Row::new(
            "newest job made (create_time) after the due second",
            (t - due).to_std().unwrap_or_default().as_secs_f64(),
            "s",
        ));
    }
    let after = d.usage();
    f.rows.push(Row::new(
        "RSS after firing",
        after.rss_kib as f64 / 1024.0,
        "MiB",
    ));
    f.notes.push(format!(
        "simulators: {} instances on {}, jobs of 20 ms",
        instances,
        sims.len()
    ));
    Ok(f)
}

/// Lists the jobs every 250 ms until `n` exist: the time after `due` at
/// the end of that listing, and when it began.
async fn listed_all(
    c: &mut crate::daemon::Client,
    n: usize,
    due: chrono::DateTime<Utc>,
) -> Result<(Duration, Duration)> {
    let t0 = std::time::Instant::now();
    loop {
        let began = (Utc::now() - due).to_std().unwrap_or_default();
        let have = count_jobs(c, "").await?;
        if have >= n {
            return Ok(((Utc::now() - due).to_std().unwrap_or_default(), began));
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("only {have} of {n} jobs after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
