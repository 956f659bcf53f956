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
                ..Default::default()
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
            .watch_jobs(pb::WatchJobsRequest {
                filter: f.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{f}");
    }

    // WatchJobs with OR and NOT: only the matching job's changes arrive.
    let mut w = c
        .watch_jobs(pb::WatchJobsRequest {
            filter: "labels.env=qa OR (labels.env=prod AND NOT kind=BACKUP)".into(),
            ..Default::default()
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
            validate_only: false,
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

#[tokio::test]
async fn unavailable_backends_give_retry_info_with_their_retry_after() {
    use custos_vbs_v2::sim::Injection;
    let dir = tempfile::tempdir().unwrap();
    let (vbs, ids, d) = start_vbs(dir.path(), Default::default()).await;
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

fn bad_token(e: &tonic::Status) -> String {
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(violations(e), vec!["page_token"], "{e:?}");
    reason(e).0
}

/// `n` more CF backends `cf-0` … on the harness's simulator.
fn more_backends(sim: &custos_cf_v3::sim::Simulator, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[backends]]\nname = \"cf-{i}\"\nkind = \"cf_v3\"\nendpoint = \"{}\"\n\
                 [backends.auth]\ntype = \"uaa\"\nclient_id = \"{}\"\n\
                 client_secret_env = \"CUSTOS_IT_CF_SECRET\"\n",
                sim.url(),
                sim.config().client_id
            )
        })
        .collect()
}

#[tokio::test]
async fn pages_of_jobs_schedules_and_backends_give_every_item_once_and_tokens_are_bound() {
    let sim = sim(SimConfig::default(), 7).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &sim,
        dir.path(),
        &Opts {
            extra: more_backends(&sim, 6),
            ..Default::default()
        },
    );
    let mut c = d.op().await;

    // ListJobs: 7 backups and a failed restore, pages of 2.
    let backups = create_backups(&mut c, 0..7).await;
    let mut r = restore_req(0);
    r.backup_id = "no-such-backup".into();
    let restore = c.restore(r).await.unwrap().into_inner().name;
    assert_eq!(
        list_names(&mut c, "kind=BACKUP").await,
        backups.iter().cloned().collect::<HashSet<_>>()
    );
    let everything = list_names(&mut c, "").await;
    assert_eq!(everything.len(), 8);
    assert!(everything.contains(&restore));

    let first = c
        .list_jobs(pb::ListJobsRequest {
            page_size: 2,
            page_token: String::new(),
            filter: "kind=BACKUP".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.jobs.len(), 2);
    let token = first.next_page_token;
    // The same filter and another page size: fine (AIP-158).
    let p = c
        .list_jobs(pb::ListJobsRequest {
            page_size: 100,
            page_token: token.clone(),
            filter: "kind=BACKUP".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.jobs.len(), 5);
    assert!(p.next_page_token.is_empty());
    // Another filter, or none: refused, naming page_token.
    for other in ["kind=RESTORE", "", "kind=BACKUP "] {
        let e = c
            .list_jobs(pb::ListJobsRequest {
                page_size: 2,
                page_token: token.clone(),
                filter: other.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad_token(&e), "PAGE_TOKEN_MISMATCH", "{other:?}");
        assert!(e.message().contains("filter"), "{}", e.message());
    }
    // Garbage, and a bare job id (the old tokens): refused.
    let bare = first.jobs[1].name.trim_start_matches("jobs/").to_string();
    for garbage in ["garbage", "%%%", bare.as_str()] {
        let e = c
            .list_jobs(pb::ListJobsRequest {
                page_size: 2,
                page_token: garbage.into(),
                filter: "kind=BACKUP".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad_token(&e), "PAGE_TOKEN_INVALID", "{garbage:?}");
    }
    let e = c
        .list_jobs(pb::ListJobsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["page_size"]);

    // ListSchedules: 5, pages of 2.
    for i in 0..5 {
        c.create_schedule(pb::CreateScheduleRequest {
            schedule_id: format!("s{i}"),
            schedule: Some(pb::Schedule {
                target: target(i),
                cron: "0 3 * * *".into(),
                ..Default::default()
            }),
            validate_only: false,
        })
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut schedule_token = String::new();
    loop {
        let p = c
            .list_schedules(pb::ListSchedulesRequest {
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(p.schedules.len() <= 2);
        seen.extend(p.schedules.into_iter().map(|s| s.name));
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
        schedule_token = token.clone();
    }
    assert_eq!(
        seen,
        (0..5)
            .map(|i| format!("schedules/s{i}"))
            .collect::<Vec<_>>()
    );

    // ListBackends: cf and cf-0 … cf-5, pages of 4.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let p = c
            .list_backends(pb::ListBackendsRequest {
                page_size: 4,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(p.backends.into_iter().map(|b| b.name));
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    assert_eq!(pages, 2);
    let mut want: Vec<String> = (0..6).map(|i| format!("backends/cf-{i}")).collect();
    want.insert(0, "backends/cf".into());
    assert_eq!(seen, want);
    // page_size 0: the default page (50) holds them all.
    let all = c
        .list_backends(pb::ListBackendsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.backends.len(), 7);
    assert!(all.next_page_token.is_empty());
    let e = c
        .list_backends(pb::ListBackendsRequest {
            page_size: -5,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["page_size"]);
    // One method's token is not another's.
    let e = c
        .list_backends(pb::ListBackendsRequest {
            page_size: 2,
            page_token: schedule_token,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token(&e), "PAGE_TOKEN_MISMATCH");
}

#[tokio::test]
async fn backups_are_paged_through_the_backends_own_paging_and_tokens_are_bound_to_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let (vbs, ids, d) = start_vbs(dir.path(), Default::default()).await;
    let mut c = d.op().await;
    for i in 0..6 {
        vbs.add_backup(&ids.volume_id, &format!("old-{i}")).unwrap();
    }
    let target = format!("backends/vbs/volumes/{}", ids.volume_id);
    // The seed's backup and 6 more, pages of 2.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut first_token = String::new();
    let mut pages = 0;
    loop {
        let p = c
            .list_backups(pb::ListBackupsRequest {
                target: target.clone(),
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(p.backups.len() <= 2);
        seen.extend(p.backups.into_iter().map(|b| b.id));
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
        if first_token.is_empty() {
            first_token = token.clone();
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7, "{seen:?}");
    assert!(seen.contains(&ids.backup_id));
    // The token is ours, not the backend's marker.
    assert!(
        !seen.iter().any(|id| first_token.contains(id.as_str())),
        "{first_token}"
    );
    // Another target: refused before the backend is asked.
    let requests = vbs.counters().requests;
    let e = c
        .list_backups(pb::ListBackupsRequest {
            target: format!("backends/vbs/volumes/{}", ids.small_volume_id),
            page_size: 2,
            page_token: first_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token(&e), "PAGE_TOKEN_MISMATCH");
    assert_eq!(vbs.counters().requests, requests);
    let e = c
        .list_backups(pb::ListBackupsRequest {
            target,
            page_size: 2,
            page_token: "bm90IGEgdG9rZW4".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token(&e), "PAGE_TOKEN_INVALID");
}

async fn job_count(c: &mut Client) -> usize {
    list_names(c, "").await.len()
}

#[tokio::test]
async fn validate_only_on_every_mutation_checks_and_changes_nothing() {
    let sim = sim(SimConfig::default(), 2).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let done = start_backup(&mut c, 1, "").await;
    let done = wait_done(&mut c, &done.name, T).await;
    let submits = sim.counters().backup_submits;

    // CreateBackup: the job that would run; none made, nothing sent.
    let mut r = labelled(0, "prod");
    r.validate_only = true;
    let j = c.create_backup(r).await.unwrap().into_inner();
    assert!(j.validate_only);
    assert!(j.name.is_empty(), "{}", j.name);
    assert_eq!(j.target, target(0));
    assert!(j.message.starts_with("validated"), "{}", j.message);
    // The backend is asked: an instance it does not have is NOT_FOUND.
    let mut r = backup_req(0, "");
    r.target = "backends/cf/serviceInstances/ffffffff-0000-4000-8000-000000000000".into();
    r.validate_only = true;
    let e = c.create_backup(r).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(reason(&e).0, "BACKEND_NOT_FOUND");

    // CancelJob: the refusal it would get, and the job unchanged.
    let e = c
        .cancel_job(pb::CancelJobRequest {
            name: done.name.clone(),
            validate_only: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(reason(&e).0, "JOB_NOT_CANCELLABLE");

    // Schedules.
    let name = "schedules/nightly".to_string();
    c.create_schedule(pb::CreateScheduleRequest {
        schedule_id: "nightly".into(),
        schedule: Some(pb::Schedule {
            target: target(0),
            cron: "0 3 * * *".into(),
            ..Default::default()
        }),
        validate_only: false,
    })
    .await
    .unwrap();
    let get = async |c: &mut Client| {
        c.get_schedule(pb::GetScheduleRequest { name: name.clone() })
            .await
            .unwrap()
            .into_inner()
    };
    let before = get(&mut c).await;
    let p = c
        .pause_schedule(pb::PauseScheduleRequest {
            name: name.clone(),
            validate_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(p.paused);
    assert!(p.next_run_times.is_empty());
    assert_eq!(get(&mut c).await, before, "not paused");

    c.pause_schedule(pb::PauseScheduleRequest {
        name: name.clone(),
        validate_only: false,
    })
    .await
    .unwrap();
    let paused = get(&mut c).await;
    let r = c
        .resume_schedule(pb::ResumeScheduleRequest {
            name: name.clone(),
            validate_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.paused);
    assert_eq!(r.next_run_times.len(), 5);
    assert_eq!(get(&mut c).await, paused, "still paused");

    let jobs = job_count(&mut c).await;
    let j = c
        .run_schedule(pb::RunScheduleRequest {
            name: name.clone(),
            validate_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(j.validate_only && j.name.is_empty());
    assert_eq!(j.schedule, name);
    assert_eq!(j.target, target(0));

    c.delete_schedule(pb::DeleteScheduleRequest {
        name: name.clone(),
        validate_only: true,
    })
    .await
    .unwrap();
    assert_eq!(get(&mut c).await, paused, "not deleted");
    let e = c
        .delete_schedule(pb::DeleteScheduleRequest {
            name: "schedules/nope".into(),
            validate_only: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Nothing was made or sent by any of them.
    assert_eq!(job_count(&mut c).await, jobs);
    assert_eq!(jobs, 1);
    assert_eq!(sim.counters().backup_submits, submits);
}

#[tokio::test]
async fn validate_only_delete_backup_checks_with_the_backend_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (vbs, ids, d) = start_vbs(dir.path(), Default::default()).await;
    let mut c = d.op().await;
    let del = |backup: &str| pb::DeleteBackupRequest {
        target: format!("backends/vbs/volumes/{}", ids.volume_id),
        backup_id: backup.into(),
        validate_only: true,
        ..Default::default()
    };
    let j = c
        .delete_backup(del(&ids.backup_id))
        .await
        .unwrap()
        .into_inner();
    assert!(j.validate_only && j.name.is_empty());
    assert_eq!(j.backup_id, ids.backup_id);
    assert!(vbs.backup(&ids.backup_id).is_some(), "still there");
    assert!(list_names(&mut c, "").await.is_empty(), "no job made");
    let e = c
        .delete_backup(del("00000000-0000-4000-8000-0000000000ff"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}
