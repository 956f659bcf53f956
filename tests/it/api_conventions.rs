//! The API's Google-style conventions through the real daemon: AIP-160
//! job filters, page tokens bound to their request (AIP-158), error details
//! on every error (ErrorInfo, RetryInfo, BadRequest), validate_only on
//! every mutation.

use std::{collections::HashSet, time::Duration};

use custos::api::pb;
use custos_cf_v3::sim::SimConfig;
use tonic::Code;

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

async fn list_names(c: &mut Client, filter: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut token = String::new();
    loop {
        let p = c
            .list_jobs(pb::ListJobsRequest {
                page_size: 2,
                page_token: token,
                filter: filter.to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("{filter}: {e:?}"))
            .into_inner();
        for j in p.jobs {
            assert!(out.insert(j.name.clone()), "{filter}: {} twice", j.name);
        }
        if p.next_page_token.is_empty() {
            return out;
        }
        token = p.next_page_token;
    }
}

fn set(v: &[&String]) -> HashSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn labelled(i: usize, env: &str) -> pb::CreateBackupRequest {
    let mut r = backup_req(i, "");
    if !env.is_empty() {
        r.labels.insert("env".into(), env.into());
    }
    r
}

async fn create(c: &mut Client, i: usize, env: &str) -> String {
    c.create_backup(labelled(i, env))
        .await
        .unwrap()
        .into_inner()
        .name
}

#[tokio::test]
async fn filters_with_or_not_labels_and_create_time_over_real_jobs() {
    let sim = sim(SimConfig::default(), 4).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;

    let prod0 = create(&mut c, 0, "prod").await;
    let dev1 = create(&mut c, 1, "dev").await;
    // Jobs are stamped in milliseconds; a clear gap between the batches.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mid = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let none2 = create(&mut c, 2, "").await;
    let prod3 = create(&mut c, 3, "prod").await;
    let all = [&prod0, &dev1, &none2, &prod3];
    expect_all_succeed(
        &mut c,
        &all.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        T,
        &d,
    )
    .await;
    // A restore that fails: the backup does not exist.
    let mut r = restore_req(1);
    r.backup_id = "no-such-backup".into();
    r.labels.insert("env".into(), "dev".into());
    let failed = c.restore(r).await.unwrap().into_inner().name;
    let j = wait_done(&mut c, &failed, T).await;
    assert_eq!(state(&j), "FAILED", "{}", j.message);

    let cases: Vec<(String, HashSet<String>)> = vec![
        (
            "labels.env=prod OR labels.env=dev".into(),
            set(&[&prod0, &dev1, &prod3, &failed]),
        ),
        ("labels.env=\"prod\"".into(), set(&[&prod0, &prod3])),
        ("NOT labels.env=prod".into(), set(&[&dev1, &none2, &failed])),
        ("-labels:env".into(), set(&[&none2])),
        (
            "kind=BACKUP AND NOT labels.env=prod".into(),
            set(&[&dev1, &none2]),
        ),
        // OR binds tighter than AND: RESTORE AND (dev OR prod).
        (
            "kind=RESTORE AND labels.env=dev OR labels.env=prod".into(),
            set(&[&failed]),
        ),
        (
            "(kind=RESTORE AND labels.env=dev) OR labels.env=prod".into(),
            set(&[&failed, &prod0, &prod3]),
        ),
        (
            format!("target=\"{}\" OR target={}", target(0), target(3)),
            set(&[&prod0, &prod3]),
        ),
        (
            format!("target={} AND state!=FAILED", target(1)),
            set(&[&dev1]),
        ),
        ("state=FAILED OR state=CANCELLED".into(), set(&[&failed])),
        (
            format!("create_time > \"{}\"", mid.to_rfc3339()),
            set(&[&none2, &prod3, &failed]),
        ),
        (
            format!(
                "create_time <= {} AND kind=BACKUP",
                mid.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
            set(&[&prod0, &dev1]),
        ),
        (
            format!(
                "create_time>{} AND (labels.env=prod OR state=FAILED)",
                mid.to_rfc3339()
            ),
            set(&[&prod3, &failed]),
        ),
        ("state=SUCCEEDED AND state=FAILED".into(), HashSet::new()),
    ];
    for (f, want) in cases {
        assert_eq!(list_names(&mut c, &f).await, want, "{f}");
    }

    // Errors name the position and what was expected, or the key.
    for (f, says) in [
        (
            "state=SUCCEEDED AND target=",
            "at 27: expected a value after \"=\"",
        ),
        ("colour=red", "unknown key \"colour\""),
        ("state=DONE", "state \"DONE\" is not one of"),
        ("(state=FAILED", "at 13: expected \")\""),
        ("create_time > soon", "not an RFC 3339 timestamp"),
    ] {
        let e = c
            .list_jobs(pb::ListJobsRequest {
                filter: f.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{f}");
        assert_eq!(violations(&e), vec!["filter"], "{f}");
        assert!(e.message().contains(says), "{f}: {}", e.message());
        let e = c
            .watch_jobs(pb::WatchJobsRequest { filter: f.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{f}");
    }

    // WatchJobs with OR and NOT: only the matching job's changes arrive.
    let mut w = c
        .watch_jobs(pb::WatchJobsRequest {
            filter: "labels.env=qa OR (labels.env=prod AND NOT kind=BACKUP)".into(),
        })
        .await
        .unwrap()
        .into_inner();
    create(&mut c, 2, "").await;
    create(&mut c, 3, "qa").await;
    let first = tokio::time::timeout(T, w.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.labels.get("env").map(String::as_str), Some("qa"));
}

/// ErrorInfo's reason, after checking the domain.
fn reason(s: &tonic::Status) -> (String, std::collections::HashMap<String, String>) {
    use tonic_types::StatusExt;
    let i = s
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {s:?}"));
    assert_eq!(i.domain, "custos", "{s:?}");
    (i.reason, i.metadata)
}

fn retry_delay(s: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    s.get_details_retry_info().and_then(|r| r.retry_delay)
}

#[tokio::test]
async fn every_error_carries_error_info_in_the_custos_domain() {
    let sim = sim(SimConfig::default(), 2).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;

    // NOT_FOUND: a job, a backend, a schedule; each names the resource.
    let missing = "jobs/0190a3c4-0000-7000-8000-000000000001";
    let e = c
        .get_job(pb::GetJobRequest {
            name: missing.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let (why, m) = reason(&e);
    assert_eq!(why, "NOT_FOUND");
    assert_eq!(m["resource"], missing);
    let e = c
        .create_backup(pb::CreateBackupRequest {
            target: "backends/nope/serviceInstances/x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(reason(&e).1["resource"], "backends/nope");
    let e = c
        .get_schedule(pb::GetScheduleRequest {
            name: "schedules/nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).0.as_str()),
        (Code::NotFound, "NOT_FOUND")
    );

    // INVALID_ARGUMENT: BadRequest too.
    let e = c
        .create_backup(pb::CreateBackupRequest {
            target: "not a target".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let (why, m) = reason(&e);
    assert_eq!(
        (why.as_str(), m["field"].as_str()),
        ("FIELD_INVALID", "target")
    );
    assert_eq!(violations(&e), vec!["target"]);
    let e = c
        .list_jobs(pb::ListJobsRequest {
            filter: "state=".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e).0, "FILTER_INVALID");

    // ALREADY_EXISTS: a request id reused for another request names
    // request_id; an existing schedule names the schedule, not request_id.
    start_backup(&mut c, 0, "reused-id").await;
    let e = c
        .create_backup(backup_req(1, "reused-id"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert_eq!(reason(&e).0, "REQUEST_ID_REUSED");
    assert_eq!(violations(&e), vec!["request_id"]);
    let s = pb::CreateScheduleRequest {
        schedule_id: "nightly".into(),
        schedule: Some(pb::Schedule {
            target: target(0),
            cron: "0 3 * * *".into(),
            ..Default::default()
        }),
        validate_only: false,
    };
    c.create_schedule(s.clone()).await.unwrap();
    let e = c.create_schedule(s).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let (why, m) = reason(&e);
    assert_eq!(
        (why.as_str(), m["resource"].as_str()),
        ("ALREADY_EXISTS", "schedules/nightly")
    );
    assert!(violations(&e).is_empty(), "{:?}", violations(&e));

    // FAILED_PRECONDITION: cancelling a job that ended.
    let j = start_backup(&mut c, 1, "").await;
    wait_done(&mut c, &j.name, T).await;
    let e = c
        .cancel_job(pb::CancelJobRequest {
            name: j.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(reason(&e).0, "JOB_NOT_CANCELLABLE");

    // UNAUTHENTICATED and PERMISSION_DENIED, from the interceptor.
    let mut none = d.client(None).await;
    let e = none
        .list_backends(pb::ListBackendsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(reason(&e).0, "TOKEN_MISSING");
    let mut bad = d.client(Some("not-a-token")).await;
    let e = bad
        .list_backends(pb::ListBackendsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(reason(&e).0, "TOKEN_UNKNOWN");
    let mut ro = d.client(Some(RO_TOKEN)).await;
    let e = ro.create_backup(backup_req(0, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let (why, m) = reason(&e);
    assert_eq!(
        (why.as_str(), m["required_role"].as_str()),
        ("ROLE_INSUFFICIENT", "operator")
    );

    // A backend 404 on a synchronous call: NOT_FOUND from the backend, no
    // RetryInfo.
    let e = c
        .list_backups(pb::ListBackupsRequest {
            target: "backends/cf/serviceInstances/ffffffff-0000-4000-8000-000000000000".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let (why, m) = reason(&e);
    assert_eq!(
        (why.as_str(), m["backend"].as_str()),
        ("BACKEND_NOT_FOUND", "cf")
    );
    assert_eq!(m["http_status"], "404");
    assert_eq!(retry_delay(&e), None);
}

/// A VBS simulator with the demo world and a daemon whose backend `vbs`
/// points at it.
async fn start_vbs(
    dir: &std::path::Path,
) -> (
    custos_vbs_v2::sim::Simulator,
    custos_vbs_v2::sim::DemoIds,
    Daemon,
) {
    use custos_vbs_v2::sim::{SimConfig as VbsSimConfig, Simulator};
    let cfg = VbsSimConfig::default();
    let vbs = Simulator::start("127.0.0.1:0".parse().unwrap(), cfg.clone())
        .await
        .unwrap();
    let ids = vbs.seed_demo();
    let d = start_keystone_daemon(
        dir,
        "vbs",
        KeystoneBackend {
            kind: "vbs_v2",
            endpoint: vbs.url(),
            auth_url: vbs.auth_url(),
            project_id: &ids.project_id,
            vault_id: None,
            user: &cfg.user_name,
            domain: &cfg.user_domain,
            password: &cfg.password,
        },
    )
    .await;
    (vbs, ids, d)
}

#[tokio::test]
async fn unavailable_backends_give_retry_info_with_their_retry_after() {
    use custos_vbs_v2::sim::Injection;
    let dir = tempfile::tempdir().unwrap();
    let (vbs, ids, d) = start_vbs(dir.path()).await;
    let mut c = d.op().await;
    let list = || pb::ListBackupsRequest {
        target: format!("backends/vbs/volumes/{}", ids.volume_id),
        ..Default::default()
    };
    c.list_backups(list()).await.unwrap();

    // 429 with a Retry-After: UNAVAILABLE, BACKEND_THROTTLED, and the
    // backend's delay in RetryInfo.
    vbs.inject(Injection {
        method: reqwest::Method::GET,
        path_contains: "/backups/detail".into(),
        status: 429,
        message: "Too many requests".into(),
        retry_after: Some("120".into()),
        times: 100,
    });
    let e = c.list_backups(list()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let (why, m) = reason(&e);
    assert_eq!(
        (why.as_str(), m["backend"].as_str()),
        ("BACKEND_THROTTLED", "vbs")
    );
    assert_eq!(m["http_status"], "429");
    assert_eq!(retry_delay(&e), Some(Duration::from_secs(120)));
    vbs.clear_faults();

    // 503 without one: UNAVAILABLE with the default delay.
    vbs.inject(Injection {
        method: reqwest::Method::GET,
        path_contains: "/backups/detail".into(),
        status: 503,
        message: "Service Unavailable".into(),
        retry_after: None,
        times: 100,
    });
    let e = c.list_backups(list()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(reason(&e).0, "BACKEND_UNAVAILABLE");
    let delay = retry_delay(&e).expect("RetryInfo");
    assert!(delay >= Duration::from_millis(100), "{delay:?}");
    vbs.clear_faults();
    c.list_backups(list()).await.unwrap();
}
