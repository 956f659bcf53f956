//! Faults in the backend and the network lose no job and submit nothing
//! twice.

use std::time::Duration;

use custos_cf_v3::sim::SimConfig;

use crate::harness::*;

#[tokio::test]
async fn thirty_percent_faults_all_fifty_jobs_succeed_once_each() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(300),
            error_rate: 0.10,
            throttle_rate: 0.10,
            reset_rate: 0.05,
            reset_after_apply_rate: 0.05,
            // Beyond the 30 %: some reads come back as broken JSON.
            malformed_rate: 0.03,
            ..Default::default()
        },
        50,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &sim,
        dir.path(),
        &Opts {
            max_retries: 30,
            ..Default::default()
        },
    );
    let mut c = d.op().await;
    let names = create_backups(&mut c, 0..50).await;
    expect_all_succeed(&mut c, &names, Duration::from_secs(120), &d).await;
    let k = sim.counters();
    assert!(k.faults > 20, "faults were injected: {k:?}");
    assert_eq!(
        k.backup_submits, 50,
        "exactly one submission per job: {k:?}"
    );
    for i in 0..50 {
        assert_eq!(
            sim.backups(&inst(i)).len(),
            2,
            "instance {i}: seed + exactly one new backup"
        );
    }
}

#[tokio::test]
async fn tokens_expiring_every_second_fail_no_job() {
    let sim = sim(
        SimConfig {
            token_lifetime: Duration::from_secs(1),
            job_duration: Duration::from_millis(1500),
            ..Default::default()
        },
        20,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let names = create_backups(&mut c, 0..20).await;
    expect_all_succeed(&mut c, &names, Duration::from_secs(60), &d).await;
    let k = sim.counters();
    assert!(k.token_grants >= 2, "tokens were renewed: {k:?}");
    assert_eq!(k.backup_submits, 20);
}

#[tokio::test]
async fn slow_answers_time_out_and_are_reconciled() {
    // Every answer to a POST comes after the client gave up; the POST was
    // applied. The daemon must find the backup, not submit again.
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(200),
            ..Default::default()
        },
        4,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &sim,
        dir.path(),
        &Opts {
            timeout: "500ms",
            ..Default::default()
        },
    );
    let mut c = d.op().await;
    sim.configure(|s| {
        s.slow_rate = 0.5;
        s.slow_delay = Duration::from_millis(1200);
    });
    let names = create_backups(&mut c, 0..4).await;
    expect_all_succeed(&mut c, &names, Duration::from_secs(90), &d).await;
    assert_eq!(sim.counters().backup_submits, 4);
}

#[tokio::test]
async fn a_restore_whose_outcome_cannot_be_known_fails_and_never_runs_twice() {
    // The restore POST is applied but answered after the client gave up,
    // and the instance shows no last_operation: nobody can tell whether the
    // restore started. Sending it again could destroy data.
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(200),
            omit_last_operation: true,
            slow_only_posts: true,
            slow_rate: 1.0,
            slow_delay: Duration::from_millis(1500),
            ..Default::default()
        },
        1,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &sim,
        dir.path(),
        &Opts {
            timeout: "500ms",
            ..Default::default()
        },
    );
    let mut c = d.op().await;
    let mut r = restore_req(0);
    r.backup_id = "seed-0".into();
    let j = c.restore(r).await.unwrap().into_inner();
    let j = wait_done(&mut c, &j.name, Duration::from_secs(30)).await;
    assert_eq!(state(&j), "FAILED");
    assert!(j.message.contains("outcome unknown"), "{}", j.message);
    assert!(j.message.contains("cannot be known"), "{}", j.message);
    assert_eq!(j.error.unwrap().code, tonic::Code::Unknown as i32);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sim.counters().restore_submits, 1, "never sent twice");
}

#[tokio::test]
async fn a_reconcile_that_fails_ends_the_job_outcome_unknown() {
    // The restore POST is applied but answered late; when the daemon asks
    // the instance what happened, the instance is gone (404).
    let sim = sim(
        SimConfig {
            slow_only_posts: true,
            slow_rate: 1.0,
            slow_delay: Duration::from_millis(1500),
            ..Default::default()
        },
        1,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &sim,
        dir.path(),
        &Opts {
            timeout: "600ms",
            ..Default::default()
        },
    );
    let mut c = d.op().await;
    let mut r = restore_req(0);
    r.backup_id = "seed-0".into();
    let j = c.restore(r).await.unwrap().into_inner();
    // After prepare has read the instance, while the POST is in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.inject(custos_cf_v3::sim::Injection {
        method: reqwest::Method::GET,
        path_contains: format!("service_instances/{}", inst(0)),
        status: 404,
        error: custos_cf_v3::sim::cf_error(
            10010,
            "CF-ResourceNotFound",
            "Service instance not found",
        ),
        times: 100,
    });
    let j = wait_done(&mut c, &j.name, Duration::from_secs(30)).await;
    assert_eq!(state(&j), "FAILED");
    assert!(j.message.starts_with("outcome unknown"), "{}", j.message);
    assert!(
        j.message.contains("Service instance not found"),
        "{}",
        j.message
    );
    let e = j.error.unwrap();
    assert_eq!(e.code, tonic::Code::Unknown as i32);
    assert_eq!(e.details[0].title, "CF-ResourceNotFound");
    assert_eq!(sim.counters().restore_submits, 1);
}
