//! `/metrics` on `metrics_listen`: scraped after a few jobs, the counters
//! match what happened.

use std::time::Duration;

use custos::api::pb;
use custos_cf_v3::sim::SimConfig;

use crate::harness::*;

/// The value of the sample `name{labels…}` whose labels include `want`.
fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let (head, value) = l.rsplit_once(' ')?;
        let (n, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        if n != name {
            return None;
        }
        let all = want
            .iter()
            .all(|(k, v)| labels.split(',').any(|p| p == format!("{k}=\"{v}\"")));
        if all { value.parse().ok() } else { None }
    })
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(50),
            ..Default::default()
        },
        2,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let o = Opts {
        extra: "metrics_listen = \"127.0.0.1:0\"\n".into(),
        ..Default::default()
    };
    let d = Daemon::start(&sim, dir.path(), &o);
    let addr = d.metrics_addr();
    let mut c = d.op().await;
    // Two backups that succeed, one restore that fails.
    for i in 0..2 {
        let j = start_backup(&mut c, i, "").await;
        let j = wait_done(&mut c, &j.name, Duration::from_secs(20)).await;
        assert_eq!(state(&j), "SUCCEEDED");
    }
    sim.fail_next_job(
        &inst(0),
        custos_cf_v3::sim::cf_error(10001, "CF-ServerError", "restore broke"),
    );
    let mut r = restore_req(0);
    r.backup_id = "seed-0".into();
    let j = c.restore(r).await.unwrap().into_inner();
    let j = wait_done(&mut c, &j.name, Duration::from_secs(20)).await;
    assert_eq!(state(&j), "FAILED");
    // A watch stream open while scraping.
    let mut watch = c
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let _ = tokio::time::timeout(Duration::from_millis(200), watch.message()).await;

    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let finished = |kind, st| {
        sample(
            &text,
            "custos_jobs_finished_total",
            &[("kind", kind), ("backend", "cf"), ("state", st)],
        )
    };
    assert_eq!(finished("BACKUP", "SUCCEEDED"), Some(2.0), "{text}");
    assert_eq!(finished("RESTORE", "FAILED"), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "custos_job_state_changes_total",
            &[("kind", "BACKUP"), ("state", "PENDING")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "custos_job_duration_seconds_count",
            &[("kind", "BACKUP")]
        ),
        Some(2.0),
        "{text}"
    );
    let last = sample(
        &text,
        "custos_last_successful_backup_timestamp_seconds",
        &[("target", &target(1))],
    )
    .expect("the last successful backup of target 1");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - last).abs() < 60.0, "{last} vs {now}");
    assert_eq!(
        sample(&text, "custos_watch_streams", &[]),
        Some(1.0),
        "{text}"
    );
    assert!(sample(&text, "custos_store_size_bytes", &[]).is_some_and(|b| b > 0.0));
    // Every job was flushed at least at its creation and its end; each
    // flush had a writer waiting.
    let flushes =
        sample(&text, "custos_store_flushes_total", &[("outcome", "ok")]).expect("flushes counted");
    let waiters = sample(&text, "custos_store_flush_waiters_total", &[]).expect("waiters");
    assert!(
        flushes >= 2.0 && waiters >= flushes,
        "{flushes} flushes, {waiters} waiters"
    );
    assert!(
        sample(&text, "custos_store_flush_duration_seconds_count", &[]).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    // The HTTP under the calls: every request the simulator received, by
    // status; the submits answered 202; the token fetches.
    let sum = |name: &str, want: &[(&str, &str)]| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| {
                want.iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let counters = sim.counters();
    assert_eq!(
        sum("custos_backend_http_requests_total", &[("backend", "cf")]),
        counters.requests as f64,
        "{text}"
    );
    assert_eq!(
        sum(
            "custos_backend_http_requests_total",
            &[("operation", "submit"), ("status", "202")]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        sum(
            "custos_backend_http_request_duration_seconds_count",
            &[("backend", "cf")]
        ),
        counters.requests as f64
    );
    assert_eq!(
        sum(
            "custos_backend_token_refreshes_total",
            &[("backend", "cf"), ("outcome", "ok")]
        ),
        counters.token_grants as f64,
        "{text}"
    );
    assert!(counters.token_grants >= 1);
    drop(watch);
}
