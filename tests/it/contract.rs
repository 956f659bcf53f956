//! The Backend contract through the real daemon: a submit whose answer was
//! lost is reconciled, never repeated; odd `Retry-After`s and `Location`s
//! do not fail or stall a job.

use std::time::Duration;

use custos_cf_v3::sim::{Injection, PostFault, SimConfig, Simulator, cf_error};
use reqwest::Method;

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_restore_applied_then_answered_504_runs_once() {
    // A load balancer gave up waiting and answered 504 (an HTML page) to a
    // restore POST the CC had already accepted.
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    sim.arm_post(
        &format!("{}/actions/restore", inst(0)),
        PostFault::ApplyThenHtml(504),
        1,
    );
    let mut r = restore_req(0);
    r.backup_id = "seed-0".into();
    let j = c.restore(r).await.unwrap().into_inner();
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    // Let a wrongly repeated submit land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sim.counters().restore_submits,
        1,
        "the restore ran exactly once"
    );
}

#[tokio::test]
async fn retry_after_in_epoch_milliseconds_does_not_stall_the_job() {
    let sim = sim(
        SimConfig {
            retry_after_millis: true,
            ..Default::default()
        },
        1,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    sim.inject(Injection {
        method: Method::POST,
        path_contains: format!("{}/backups", inst(0)),
        status: 429,
        error: cf_error(10013, "CF-RateLimitExceeded", "Rate Limit Exceeded"),
        times: 1,
    });
    let j = start_backup(&mut c, 0, "").await;
    // Retry-After is about 1 s away; read as epoch seconds it would be
    // tens of thousands of years.
    let j = wait_done(&mut c, &j.name, Duration::from_secs(10)).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    assert_eq!(sim.counters().backup_submits, 1);
}

#[tokio::test]
async fn a_job_url_on_another_origin_is_followed_through_last_operation() {
    // The other origin is a second simulator that counts every request: the
    // daemon must send it nothing (least of all the bearer token).
    let other = Simulator::start("127.0.0.1:0".parse().unwrap(), SimConfig::default())
        .await
        .unwrap();
    let sim = sim(
        SimConfig {
            location_base: Some(other.url()),
            ..Default::default()
        },
        2,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let j = start_backup(&mut c, 0, "").await;
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    assert!(!j.backup_id.is_empty());
    assert!(
        j.remote_operation.contains("last_operation"),
        "{}",
        j.remote_operation
    );
    let mut r = restore_req(1);
    r.backup_id = "seed-1".into();
    let j = c.restore(r).await.unwrap().into_inner();
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    let k = sim.counters();
    assert_eq!((k.backup_submits, k.restore_submits), (1, 1));
    assert_eq!(
        other.counters().requests,
        0,
        "nothing sent to the other origin"
    );
}

#[tokio::test]
async fn cf_not_authenticated_on_a_submit_refreshes_the_token_once() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    sim.inject(Injection {
        method: Method::POST,
        path_contains: format!("{}/backups", inst(0)),
        status: 401,
        error: cf_error(10002, "CF-NotAuthenticated", "Authentication error"),
        times: 1,
    });
    let j = start_backup(&mut c, 0, "").await;
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    let k = sim.counters();
    assert_eq!(k.backup_submits, 1);
    assert_eq!(k.token_grants, 2, "one refresh");
}

#[tokio::test]
async fn a_backup_answered_504_with_a_late_last_operation_runs_once() {
    // The CC applied the POST, a proxy answered 504, and the instance shows
    // the operation only a second later: the daemon must keep asking (its
    // grace period) instead of taking "no trace yet" for "not submitted".
    let sim = sim(
        SimConfig {
            last_operation_delay: Duration::from_millis(1000),
            job_duration: Duration::from_millis(200),
            ..Default::default()
        },
        1,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    sim.arm_post(
        &format!("{}/backups", inst(0)),
        PostFault::ApplyThenHtml(504),
        1,
    );
    let j = start_backup(&mut c, 0, "").await;
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sim.counters().backup_submits, 1, "exactly one backup");
    assert_eq!(sim.backups(&inst(0)).len(), 2, "seed + one");
}
