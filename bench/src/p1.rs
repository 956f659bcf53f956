//! P1 intake: `CreateBackup` per second at N concurrent streams over one
//! channel, against `grpc.health.v1.Health/Check` on the same channel.

use std::{path::Path, time::Duration};

use anyhow::Result;
use custos::api::pb;
use serde_json::json;

use crate::{
    daemon::{Daemon, DaemonConfig, Sims},
    floor,
    load::{self, Until},
    report::{Figure, Goal, Row},
};

pub struct Args {
    pub duration: f64,
    pub warmup: f64,
    pub streams: usize,
    pub targets: usize,
    pub sims: usize,
}

pub async fn run(bin: &Path, a: &Args) -> Result<Figure> {
    let cfg = DaemonConfig::default();
    let mut f = Figure::new(
        "P1",
        "intake",
        json!({
            "duration_s": a.duration, "warmup_s": a.warmup, "streams": a.streams,
            "targets": a.targets, "simulators": a.sims, "sim_job_duration": "0s",
            "config": cfg.describe(),
        }),
    );
    let sims = std::sync::Arc::new(Sims::start(Duration::ZERO, a.targets, a.sims).await?);
    let d = Daemon::start(bin, &sims, &cfg)?;
    let (client, health) = d.client().await?;

    let check = move |_i: u64| {
        let mut h = health.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ())
        }
    };
    let targets = a.targets.max(1) as u64;
    let s = sims.clone();
    let create = move |i: u64| {
        let mut c = client.clone();
        let target = s.target((i % targets) as usize);
        async move {
            c.create_backup(pb::CreateBackupRequest {
                target,
                // A fresh id per call, as the CLI sends.
                request_id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
    };
    let dur = Duration::from_secs_f64(a.duration);
    let warm = Duration::from_secs_f64(a.warmup);

    // The baseline first: the jobs that CreateBackup leaves behind keep
    // the daemon busy afterwards.
    load::run(a.streams, Until::Elapsed(warm), check.clone()).await;
    let base = load::run(a.streams, Until::Elapsed(dur), check).await;
    let warm_stats = load::run(a.streams, Until::Elapsed(warm), create.clone()).await;
    let before = d.usage();
    let meas = load::run(a.streams, Until::Elapsed(dur), create).await;
    let after = d.usage();
    // The floor alone, with the daemon gone: its jobs would compete.
    drop(d);
    let urls = sims.0.iter().map(|s| s.url()).collect();
    let floor = floor::store_writes(a.targets, urls, a.streams, 1, Until::Elapsed(dur)).await?;

    f.rows.push(
        Row::new(
            format!("CreateBackup/s at {} streams", a.streams),
            meas.rate(),
            "1/s",
        )
        .baseline("Health/Check/s", base.rate())
        .goal(Goal::RatioAtLeast(0.5)),
    );
    f.rows.push(
        Row::new("CreateBackup latency p50", meas.quantile_ms(0.5), "ms")
            .baseline("Health/Check p50", base.quantile_ms(0.5)),
    );
    f.rows.push(
        Row::new("CreateBackup latency p99", meas.quantile_ms(0.99), "ms")
            .baseline("Health/Check p99", base.quantile_ms(0.99)),
    );
    f.rows.push(
        Row::new(
            format!(
                "the store alone: job creations made durable/s, {} writers (no daemon)",
                a.streams
            ),
            floor.writes_per_s(),
            "1/s",
        )
        .baseline("Health/Check/s", base.rate()),
    );
    f.notes.push(format!(
        "the store alone ({} store, its group commit; no gRPC, no jobs run): {} creations in {:.1} s, {:.1} versions made durable a flush; the ratio is P1's ceiling if a creation cost nothing but its durable write",
        crate::daemon::store_engine(),
        floor.writes,
        floor.elapsed.as_secs_f64(),
        floor.per_flush()
    ));
    let cpu = (after.cpu_s - before.cpu_s) / meas.elapsed.as_secs_f64() * 100.0;
    f.rows.push(Row::new(
        "daemon CPU during CreateBackup load",
        cpu,
        "% of a core",
    ));
    f.notes.push(format!(
        "CreateBackup: {} acknowledged, {} failed in {:.1} s (+{} during warm-up); Health/Check: {} ok, {} failed in {:.1} s",
        meas.ok,
        meas.errors,
        meas.elapsed.as_secs_f64(),
        warm_stats.ok,
        base.ok,
        base.errors,
        base.elapsed.as_secs_f64()
    ));
    for (what, s) in [("CreateBackup", &meas), ("Health/Check", &base)] {
        if let Some(e) = &s.first_error {
            f.notes.push(format!("{what}: first error: {e}"));
        }
    }
    f.notes.push(format!(
        "daemon RSS at the end: {:.1} MiB; the simulators (in the bench process) had {} backup submits",
        after.rss_kib as f64 / 1024.0,
        sims.counters().0
    ));
    Ok(f)
}
