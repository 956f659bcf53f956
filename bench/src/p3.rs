//! P3 waiting: N jobs (one per target) on remote jobs that last an hour;
//! once all are submitted and their poll backoff has reached its ceiling,
//! the daemon's RSS, CPU and poll rate over a window.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use custos::config::parse_duration;
use serde_json::json;

use crate::{
    daemon::{Daemon, DaemonConfig, Sims},
    floor, load,
    report::{Figure, Goal, Row},
};

pub struct Args {
    pub jobs: usize,
    pub window: f64,
    /// Seconds to wait after the last submit; None: the backoff's ramp.
    pub settle: Option<f64>,
    pub poll_interval: String,
    pub poll_max_interval: String,
    pub streams: usize,
    pub submit_timeout: f64,
    pub sims: usize,
}

/// How long the poll backoff takes to reach its ceiling: the sum of the
/// undithered delays before it (the driver's `Backoff`: `poll_interval`,
/// ×2 per poll, capped at `poll_max_interval`).
pub fn ramp(first: Duration, max: Duration) -> Duration {
    let mut d = first.max(Duration::from_millis(1));
    let mut sum = Duration::ZERO;
    while d < max {
        sum += d;
        d *= 2;
    }
    sum
}

pub async fn run(bin: &Path, a: &Args) -> Result<Figure> {
    let cfg = DaemonConfig {
        poll_interval: a.poll_interval.clone(),
        poll_max_interval: a.poll_max_interval.clone(),
        ..DaemonConfig::default()
    };
    let pi = parse_duration(&a.poll_interval).map_err(anyhow::Error::msg)?;
    let pmax = parse_duration(&a.poll_max_interval).map_err(anyhow::Error::msg)?;
    let settle = a
        .settle
        .map(Duration::from_secs_f64)
        .unwrap_or_else(|| ramp(pi, pmax));
    let mut f = Figure::new(
        "P3",
        "waiting",
        json!({
            "jobs": a.jobs, "window_s": a.window, "settle_s": settle.as_secs_f64(),
            "streams": a.streams, "simulators": a.sims, "sim_job_duration": "1h",
            "config": cfg.describe(),
        }),
    );
    let sims = std::sync::Arc::new(Sims::start(Duration::from_secs(3600), a.jobs, a.sims).await?);
    let d = Daemon::start(bin, &sims, &cfg)?;
    let (client, _) = d.client().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = d.usage();

    let t0 = Instant::now();
    let s = sims.clone();
    let made =
        load::create_backups(&client, a.streams, a.jobs, move |i| s.target(i as usize)).await?;
    let limit = Duration::from_secs_f64(a.submit_timeout);
    loop {
        let n = sims.counters().0;
        if n >= a.jobs as u64 {
            break;
        }
        if t0.elapsed() > limit {
            bail!(
                "only {n} of {} jobs were submitted to the simulator within {limit:?}; daemon log:\n{}",
                a.jobs,
                d.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let submitted = t0.elapsed();
    let after_submit = d.usage();
    tokio::time::sleep(settle).await;

    let w = Duration::from_secs_f64(a.window);
    let u0 = d.usage();
    let p0 = sims.counters().1;
    let w0 = Instant::now();
    let mut rss_max = u0.rss_kib;
    while w0.elapsed() < w {
        tokio::time::sleep((w - w0.elapsed()).min(Duration::from_secs(1))).await;
        rss_max = rss_max.max(d.usage().rss_kib);
    }
    let u1 = d.usage();
    let p1 = sims.counters().1;
    let dt = w0.elapsed().as_secs_f64();
    // The same polls without the daemon: a plain client at the rate the
    // daemon polled, once the daemon (and its polls) are gone.
    drop(d);
    let rate = (p1 - p0) as f64 / dt;
    let plain = floor::plain_polls(&sims, a.jobs, rate.max(1.0), a.window).await;

    // The goal is in MB (10^6 bytes, 190.7 MiB), so is this row.
    let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
    let cpu = (u1.cpu_s - u0.cpu_s) / dt * 100.0;
    // Once a job's backoff reached its ceiling, each delay is drawn from
    // [poll_max_interval/2, poll_max_interval]: at most 2/poll_max_interval
    // polls a second per job.
    let bound = a.jobs as f64 * 2.0 / pmax.as_secs_f64();
    f.rows.push(
        Row::new(
            format!("daemon RSS, {} jobs waiting", a.jobs),
            mb(rss_max),
            "MB",
        )
        .baseline("RSS idle, no jobs", mb(idle.rss_kib))
        .goal(Goal::ValueAtMost(200.0)),
    );
    f.rows.push(Row::new(
        "RSS per waiting job (above idle)",
        (rss_max.saturating_sub(idle.rss_kib)) as f64 * 1024.0 / a.jobs as f64,
        "B",
    ));
    let mut cpu_row = Row::new("daemon CPU while waiting", cpu, "% of a core");
    if let Ok(p) = &plain {
        cpu_row = cpu_row.baseline(
            format!(
                "a plain client making the same polls ({:.0}/s, the adapters' HTTP client, no daemon)",
                p.rate()
            ),
            p.cpu_percent(),
        );
    }
    f.rows.push(cpu_row.goal(Goal::ValueAtMost(5.0)));
    let per_poll = |cpu_s: f64, polls: f64| cpu_s / polls.max(1.0) * 1e6;
    match &plain {
        Ok(p) => {
            f.rows.push(
                Row::new(
                    "daemon CPU per poll",
                    per_poll(u1.cpu_s - u0.cpu_s, (p1 - p0) as f64),
                    "us",
                )
                .baseline("plain client", per_poll(p.cpu_s, p.polls as f64)),
            );
            f.notes.push(format!(
                "plain client (a process of its own, 2 runtime workers like the daemon): {} polls, {} failed, in {:.1} s; CPU {:.2} s; RSS {:.1} MiB{}",
                p.polls,
                p.errors,
                p.seconds,
                p.cpu_s,
                p.rss_kib as f64 / 1024.0,
                p.first_error
                    .as_ref()
                    .map(|e| format!("; first error: {e}"))
                    .unwrap_or_default()
            ));
        }
        Err(e) => f.notes.push(format!("the plain poll client failed: {e:#}")),
    }
    f.rows.push(
        Row::new("job polls/s (simulators' count)", rate, "1/s")
            .baseline("bound: jobs x 2 / poll_max_interval", bound)
            .goal(Goal::RatioAtMost(1.0)),
    );
    f.rows.push(Row::new(
        "creation rate (CreateBackup acks)",
        made.rate(),
        "1/s",
    ));
    f.rows.push(Row::new(
        "all submitted to the simulator after",
        submitted.as_secs_f64(),
        "s",
    ));
    f.notes.push(format!(
        "{} jobs acknowledged in {:.1} s; all submitted after {:.1} s (RSS then {:.1} MiB); waited {:.0} s for the poll backoff to reach poll_max_interval ({}); window {:.1} s: {} polls, CPU {:.2} s",
        made.ok,
        made.elapsed.as_secs_f64(),
        submitted.as_secs_f64(),
        after_submit.rss_kib as f64 / 1024.0,
        settle.as_secs_f64(),
        a.poll_max_interval,
        dt,
        p1 - p0,
        u1.cpu_s - u0.cpu_s
    ));
    if settle < ramp(pi, pmax) {
        f.notes.push(format!(
            "settle ({:.0} s) is shorter than the backoff ramp ({:.0} s): the poll rate can exceed the steady-state bound",
            settle.as_secs_f64(),
            ramp(pi, pmax).as_secs_f64()
        ));
    }
    f.notes.push(
        "the simulators run in the bench's process on the same 2 cores; their CPU is not counted"
            .into(),
    );
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_of_the_defaults() {
        assert_eq!(
            ramp(Duration::from_secs(1), Duration::from_secs(60)),
            Duration::from_secs(63)
        );
        assert_eq!(
            ramp(Duration::from_secs(5), Duration::from_secs(5)),
            Duration::ZERO
        );
    }
}
