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
