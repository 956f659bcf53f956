//! P6 store: bytes on disk per finished job, scaled to 1,000,000, before
//! and after pruning (a restart with `job_history = "1s"` prunes them all).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use custos::api::pb;
use serde_json::json;

use crate::{
    daemon::{Daemon, DaemonConfig, Sims, count_jobs, dir_size},
    load,
    report::{Figure, Row},
};

pub struct Args {
    pub jobs: usize,
    pub targets: usize,
    pub streams: usize,
    pub finish_timeout: f64,
    pub sims: usize,
}

const LIVE: &str = "state=PENDING OR state=RUNNING";
const MIB: f64 = 1024.0 * 1024.0;

pub async fn run(bin: &Path, a: &Args) -> Result<Figure> {
    let cfg = DaemonConfig {
        // Short polls, so that the instant simulator's jobs end quickly.
        poll_interval: "20ms".into(),
        poll_max_interval: "200ms".into(),
        ..DaemonConfig::default()
    };
    let mut f = Figure::new(
        "P6",
        "store",
        json!({
            "jobs": a.jobs, "targets": a.targets, "streams": a.streams,
            "simulators": a.sims, "sim_job_duration": "0s", "config": cfg.describe(),
        }),
    );
    let targets = a.targets.max(1) as u64;
    let sims = std::sync::Arc::new(Sims::start(Duration::ZERO, targets as usize, a.sims).await?);
    let mut d = Daemon::start(bin, &sims, &cfg)?;
    let data = d.data_dir();
    // The empty store as the engine leaves it after a graceful stop.
    d.stop(Duration::from_secs(30))?;
    let empty = dir_size(&data);
    d.restart(&sims, &cfg)?;
    let (client, _) = d.client().await?;

    let t0 = Instant::now();
    let s = sims.clone();
    let made = load::create_backups(&client, a.streams, a.jobs, move |i| {
        s.target((i % targets) as usize)
    })
    .await?;
    let mut c = client;
    let limit = Duration::from_secs_f64(a.finish_timeout);
    loop {
        let live = count_jobs(&mut c, LIVE).await?;
        if live == 0 {
            break;
        }
        if t0.elapsed() > limit {
            bail!("{live} jobs still live after {limit:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let finished_after = t0.elapsed();
    let succeeded = count_jobs(&mut c, "state=SUCCEEDED").await?;
    let rss = d.usage().rss_kib;
    drop(c);
    d.stop(Duration::from_secs(30))?;
    let full = dir_size(&data);

    // Prune: every job ended over a second ago once this sleep is over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let prune_cfg = DaemonConfig {
        job_history: "1s".into(),
        ..cfg.clone()
    };
    let t1 = Instant::now();
    d.restart(&sims, &prune_cfg)?;
    let (mut c, _) = d.client().await?;
    loop {
        let r = c
            .list_jobs(pb::ListJobsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await?
            .into_inner();
        if r.jobs.is_empty() {
            break;
        }
        if t1.elapsed() > limit {
            bail!("jobs still stored {limit:?} after a restart with job_history = 1s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pruned_after = t1.elapsed();
    drop(c);
    d.stop(Duration::from_secs(30))?;
    let pruned = dir_size(&data);

    let per_job = full.1.saturating_sub(empty.1) as f64 / a.jobs as f64;
    f.rows.push(
        Row::new(
            format!("data dir with {} finished jobs (du)", a.jobs),
            full.1 as f64 / MIB,
            "MiB",
        )
        .baseline("empty store", empty.1 as f64 / MIB),
    );
    f.rows.push(Row::new(
        "bytes per finished job (du, above empty)",
        per_job,
        "B",
    ));
    f.rows.push(Row::new(
        format!("per 1,000,000 finished jobs (scaled from {})", a.jobs),
        per_job * 1e6 / (1024.0 * MIB),
        "GiB",
    ));
    f.rows.push(
        Row::new(
            "data dir after pruning them all (du)",
            pruned.1 as f64 / MIB,
            "MiB",
        )
        .baseline("before pruning", full.1 as f64 / MIB),
    );
    f.rows.push(Row::new(
        "finished jobs per second (create to all ended)",
        a.jobs as f64 / finished_after.as_secs_f64(),
        "1/s",
    ));
    f.notes.push(format!(
        "{} created in {:.1} s, all ended after {:.1} s ({succeeded} SUCCEEDED); RSS then {:.1} MiB; apparent sizes: empty {:.1} MiB, full {:.1} MiB, pruned {:.1} MiB; restart + prune until ListJobs was empty: {:.1} s",
        made.ok,
        made.elapsed.as_secs_f64(),
        finished_after.as_secs_f64(),
        rss as f64 / 1024.0,
        empty.0 as f64 / MIB,
        full.0 as f64 / MIB,
        pruned.0 as f64 / MIB,
        pruned_after.as_secs_f64()
    ));
    f.notes.push(format!(
        "sizes after a graceful stop (SIGTERM), the store engine's own files (store_engine = {}); the per-1,000,000 figure is scaled linearly, not measured",
        cfg.store_engine
    ));
    Ok(f)
}
