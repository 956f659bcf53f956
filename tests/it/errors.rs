//! Every CF error class ends the job FAILED with CF's own words kept.

use std::time::Duration;

use custos::api::pb;
use custos_cf_v3::sim::{Injection, SimConfig, cf_error};
use reqwest::Method;

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn cf_errors_end_jobs_failed_with_the_envelope() {
    let sim = sim(SimConfig::default(), 6).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &sim,
        dir.path(),
        &Opts {
            max_retries: 3,
            ..Default::default()
        },
    );
    let mut c = d.op().await;

    let cases: [(usize, u16, i64, &str, &str, i32); 4] = [
        (
            0,
            401,
            10002,
            "CF-NotAuthenticated",
            "Authentication error",
            9,
        ),
        (
            1,
            403,
            10003,
            "CF-NotAuthorized",
            "You are not authorized to perform the requested action",
            9,
        ),
        (
            2,
            404,
            10010,
            "CF-ResourceNotFound",
            "Service instance not found",
            5,
        ),
        (
            4,
            422,
            10008,
            "CF-UnprocessableEntity",
            "The service instance does not support backups",
            3,
        ),
    ];
    for (i, status, code, title, detail, grpc) in cases {
        sim.inject(Injection {
            method: Method::POST,
            path_contains: format!("{}/backups", inst(i)),
            status,
            error: cf_error(code, title, detail),
            times: 100,
        });
        let j = start_backup(&mut c, i, "").await;
        let j = wait_done(&mut c, &j.name, T).await;
        assert_eq!(state(&j), "FAILED", "{status}: {}", j.message);
        let e = j.error.expect("error set");
        assert_eq!(e.code, grpc, "{status}");
        assert_eq!(e.details[0].http_status, status as i32);
        assert_eq!(e.details[0].title, title);
        assert_eq!(e.details[0].detail, detail);
        assert_eq!(e.details[0].code, code.to_string());
        assert!(
            j.message.contains(detail),
            "{status}: message names the cause: {}",
            j.message
        );
    }

    // A job that CF runs and then fails.
    sim.fail_next_job(
        &inst(5),
        cf_error(
            10001,
            "CF-ServiceBrokerError",
            "Broker could not snapshot the volume",
        ),
    );
    let j = start_backup(&mut c, 5, "").await;
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "FAILED");
    assert!(
        j.message.contains("Broker could not snapshot the volume"),
        "{}",
        j.message
    );
    assert!(j.remote_operation.contains("/v3/jobs/"));
    let e = j.error.unwrap();
    assert_eq!(e.details[0].title, "CF-ServiceBrokerError");

    // A backend 404 on a synchronous call is NOT_FOUND.
    let e = c
        .list_backups(pb::ListBackupsRequest {
            target: "backends/cf/serviceInstances/ffffffff-0000-4000-8000-000000000000".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("Service instance not found"),
        "{}",
        e.message()
    );
    // Only the job that CF accepted was submitted.
    assert_eq!(sim.counters().backup_submits, 1);
}

#[tokio::test]
async fn bad_uaa_credentials_fail_the_job_clearly() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    // The secret is rotated on the UAA side; the daemon has the old one.
    sim.configure(|c| c.client_secret = "rotated".into());
    let mut c = d.op().await;
    let j = start_backup(&mut c, 0, "").await;
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "FAILED");
    assert!(j.message.contains("UAA refused"), "{}", j.message);
    assert_eq!(sim.counters().backup_submits, 0);
}

/// "Another operation is in progress" is retried until the operation
/// timeout, not given up after `max_retries` (on the old engine: FAILED
/// "gave up after 3 attempts").
#[tokio::test]
async fn operation_in_progress_is_retried_past_max_retries() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &sim,
        dir.path(),
        &Opts {
            max_retries: 2,
            ..Default::default()
        },
    );
    sim.inject(Injection {
        method: Method::POST,
        path_contains: format!("{}/backups", inst(0)),
        status: 409,
        error: cf_error(
            60016,
            "CF-AsyncServiceInstanceOperationInProgress",
            "An operation for service instance db-0 is in progress.",
        ),
        times: 6,
    });
    let mut c = d.op().await;
    let j = start_backup(&mut c, 0, "").await;
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    assert_eq!(
        sim.counters().backup_submits,
        1,
        "the 6 refusals were not applied"
    );
}

/// One error map: the same backend refusal has the same gRPC code on a
/// synchronous call as in `Job.error`.
#[tokio::test]
async fn one_code_for_one_backend_error() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let forbidden = || Injection {
        method: Method::GET,
        path_contains: format!("{}/backups", inst(0)),
        status: 403,
        error: cf_error(10003, "CF-NotAuthorized", "You are not authorized"),
        times: 100,
    };
    sim.inject(forbidden());
    let mut c = d.op().await;
    let sync = c
        .list_backups(pb::ListBackupsRequest {
            target: target(0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    // prepare lists backups too: the job fails on the same 403.
    let j = start_backup(&mut c, 0, "").await;
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "FAILED", "{}", j.message);
    assert_eq!(j.error.unwrap().code, sync.code() as i32, "{sync:?}");
    assert_eq!(sync.code(), tonic::Code::FailedPrecondition);
}
