//! Limits, timeouts and history: the engine's knobs, driven through the
//! daemon.

use std::time::Duration;

use custos::api::pb;
use custos_cf_v3::sim::SimConfig;

use crate::harness::*;

#[tokio::test]
async fn per_backend_limit_bounds_backend_calls_and_a_stalled_watcher_slows_nothing() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(200),
            latency: Duration::from_millis(20),
            ..Default::default()
        },
        30,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &sim,
        dir.path(),
        &Opts {
            extra: "[limits]\nmax_running_jobs = 4\nper_backend_running_jobs = 2\n".into(),
            ..Default::default()
        },
    );
    let mut c = d.op().await;
    // A watcher that never reads.
    let _stalled = c
        .watch_jobs(pb::WatchJobsRequest {
            filter: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    let names = create_backups(&mut c, 0..30).await;
    expect_all_succeed(&mut c, &names, Duration::from_secs(60), &d).await;
    let k = sim.counters();
    assert_eq!(k.backup_submits, 30);
    assert!(
        k.max_in_flight <= 2,
        "at most per_backend_running_jobs calls at once, saw {}",
        k.max_in_flight
    );
    assert!(k.max_in_flight >= 1);
}

#[tokio::test]
async fn operation_timeout_fails_the_job_and_says_the_remote_may_still_run() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_secs(30),
            ..Default::default()
        },
        1,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let o = Opts {
        backend_extra: "operation_timeout = \"1s\"".into(),
        ..Default::default()
    };
    let d = Daemon::start(&sim, dir.path(), &o);
    let mut c = d.op().await;
    let j = start_backup(&mut c, 0, "").await;
    let j = wait_done(&mut c, &j.name, Duration::from_secs(20)).await;
    assert_eq!(state(&j), "FAILED");
    assert!(j.message.contains("operation timeout"), "{}", j.message);
    assert!(
        j.message.contains("/v3/jobs/"),
        "names the remote operation: {}",
        j.message
    );
    assert_eq!(j.error.unwrap().code, tonic::Code::DeadlineExceeded as i32);
}

#[tokio::test]
async fn finished_jobs_are_pruned_after_job_history() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(50),
            ..Default::default()
        },
        1,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let o = Opts {
        extra: "job_history = \"1s\"\n".into(),
        ..Default::default()
    };
    let d = Daemon::start(&sim, dir.path(), &o);
    let mut c = d.op().await;
    let j = start_backup(&mut c, 0, "keep-me-briefly").await;
    assert_eq!(
        state(&wait_done(&mut c, &j.name, Duration::from_secs(20)).await),
        "SUCCEEDED"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Pruning runs at start, in the background (and hourly).
    let d = d.restart_after_kill9(&sim, dir.path());
    let mut c = d.op().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .get_job(pb::GetJobRequest {
                name: j.name.clone(),
            })
            .await;
        match r {
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::NotFound);
                break;
            }
            Ok(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "the job was not pruned"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its request_id went with it: the same id now makes a new job.
    let again = start_backup(&mut c, 0, "keep-me-briefly").await;
    assert_ne!(again.name, j.name);
}
