//! The happy paths: backup → list → restore (plain, point-in-time,
//! cross-instance), idempotency, watching, cancelling, and the CLI.

use std::time::Duration;

use custos::api::pb;
use custos_cf_v3::sim::SimConfig;
use serde_json::json;
use tokio_stream::StreamExt;

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn backup_list_and_restore_in_every_form() {
    let sim = sim(SimConfig::default(), 3).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;

    let backends = c
        .list_backends(pb::ListBackendsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(backends.backends[0].name, "backends/cf");
    assert_eq!(backends.backends[0].kind, "cf_v3");
    let caps = backends.backends[0].capabilities.unwrap();
    assert!(caps.point_in_time_restore && !caps.delete_backup && !caps.restore_mappings);

    let job = start_backup(&mut c, 0, "").await;
    assert!(job.name.starts_with("jobs/"));
    let done = wait_done(&mut c, &job.name, T).await;
    assert_eq!(state(&done), "SUCCEEDED", "{}", done.message);
    assert!(!done.backup_id.is_empty());
    assert!(
        done.remote_operation.contains("/v3/jobs/"),
        "{}",
        done.remote_operation
    );

    let list = c
        .list_backups(pb::ListBackupsRequest {
            target: target(0),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(list.backups.iter().any(|b| b.id == done.backup_id));
    assert_eq!(list.backups[0].id, done.backup_id, "newest first");
    // GetBackup by the name ListBackups gives (CF has no GET of one
    // backup: the adapter looks through the list), and through the CLI.
    let name = format!("{}/backups/{}", target(0), done.backup_id);
    assert_eq!(list.backups[0].name, name);
    let got = c
        .get_backup(pb::GetBackupRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, list.backups[0]);
    let e = c
        .get_backup(pb::GetBackupRequest {
            name: format!("{}/backups/no-such-backup", target(0)),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let endpoint = format!("http://{}", d.addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_custos"))
            .args(["backup", "get", &name, "-o", "json"])
            .env("CUSTOS_ENDPOINT", endpoint)
            .env("CUSTOS_TOKEN", OP_TOKEN)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], done.backup_id.as_str());

    // Restore from that backup.
    let mut r = restore_req(0);
    r.backup_id = done.backup_id.clone();
    let j = c.restore(r).await.unwrap().into_inner();
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}", j.message);
    assert_eq!(
        sim.restores().last().unwrap().body,
        json!({"backup_id": done.backup_id})
    );

    // Point in time: exactly target_timestamp + restore_point.
    let mut r = restore_req(1);
    r.point_in_time = Some(prost_types::Timestamp {
        seconds: 1_700_000_100,
        nanos: 0,
    });
    r.restore_point = "pitr".into();
    let j = c.restore(r).await.unwrap().into_inner();
    assert_eq!(state(&wait_done(&mut c, &j.name, T).await), "SUCCEEDED");
    let got = sim.restores().last().unwrap().clone();
    assert_eq!(got.instance, inst(1));
    assert_eq!(
        got.body,
        json!({"target_timestamp": "2023-11-14T22:15:00Z", "restore_point": "pitr"})
    );

    // Cross-instance: a backup of instance 0 into instance 2.
    let mut r = restore_req(2);
    r.backup_id = "seed-0".into();
    r.source = target(0);
    let j = c.restore(r).await.unwrap().into_inner();
    assert_eq!(state(&wait_done(&mut c, &j.name, T).await), "SUCCEEDED");
    let got = sim.restores().last().unwrap().clone();
    assert_eq!(got.instance, inst(2));
    assert_eq!(
        got.body,
        json!({"backup_id": "seed-0", "source_service_instance_guid": inst(0)})
    );

    // validate_only checks with the backend and submits nothing.
    let before = sim.counters();
    let mut r = restore_req(2);
    r.backup_id = "seed-2".into();
    r.validate_only = true;
    let v = c.restore(r).await.unwrap().into_inner();
    assert!(v.validate_only && v.name.is_empty());
    assert!(v.message.contains("actions/restore"), "{}", v.message);
    let mut r = restore_req(2);
    r.backup_id = "no-such-backup".into();
    r.validate_only = true;
    let e = c.restore(r).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert_eq!(sim.counters().restore_submits, before.restore_submits);

    assert_eq!(sim.counters().backup_submits, 1);
    assert_eq!(sim.counters().restore_submits, 3);

    // ListJobs: newest first, filters, pages.
    let all = c
        .list_jobs(pb::ListJobsRequest {
            page_size: 2,
            page_token: String::new(),
            filter: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.jobs.len(), 2);
    assert!(!all.next_page_token.is_empty());
    let rest = c
        .list_jobs(pb::ListJobsRequest {
            page_size: 10,
            page_token: all.next_page_token,
            filter: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.jobs.len(), 2);
    assert!(all.jobs[0].name > all.jobs[1].name && all.jobs[1].name > rest.jobs[0].name);
    let backups = c
        .list_jobs(pb::ListJobsRequest {
            page_size: 10,
            page_token: String::new(),
            filter: "kind=BACKUP AND state=SUCCEEDED".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(backups.jobs.len(), 1);
}

#[tokio::test]
async fn request_id_makes_creation_idempotent() {
    let sim = sim(SimConfig::default(), 2).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let a = start_backup(&mut c, 0, "nightly-42").await;
    let b = start_backup(&mut c, 0, "nightly-42").await;
    assert_eq!(a.name, b.name);
    wait_done(&mut c, &a.name, T).await;
    let again = start_backup(&mut c, 0, "nightly-42").await;
    assert_eq!(again.name, a.name);
    assert_eq!(state(&again), "SUCCEEDED");
    assert_eq!(
        sim.counters().backup_submits,
        1,
        "one submission for one request_id"
    );

    let e = c
        .create_backup(backup_req(1, "nightly-42"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert_eq!(violations(&e), vec!["request_id"]);
    let mut r = restore_req(0);
    r.backup_id = "seed-0".into();
    r.request_id = "nightly-42".into();
    assert_eq!(
        c.restore(r).await.unwrap_err().code(),
        tonic::Code::AlreadyExists
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.counters().backup_submits, 1);
    assert_eq!(sim.counters().restore_submits, 0);
}

#[tokio::test]
async fn watch_job_streams_every_change_and_ends() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(600),
            ..Default::default()
        },
        3,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let mut all = c
        .watch_jobs(pb::WatchJobsRequest {
            filter: "kind=BACKUP".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let job = start_backup(&mut c, 0, "").await;
    let mut stream = c
        .watch_job(pb::WatchJobRequest {
            name: job.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(j) = tokio::time::timeout(T, stream.next()).await.unwrap() {
        let j = j.unwrap();
        seen.push((state(&j), j.message.clone()));
    }
    let states: Vec<&str> = seen.iter().map(|s| s.0).collect();
    assert_eq!(*states.last().unwrap(), "SUCCEEDED", "{seen:?}");
    assert!(states.contains(&"RUNNING"), "{seen:?}");
    assert!(seen.iter().any(|s| s.1.contains("PROCESSING")), "{seen:?}");
    assert!(seen.iter().any(|s| s.1.contains("POLLING")), "{seen:?}");
    // Watching a finished job: one snapshot, then the end.
    let mut again = c
        .watch_job(pb::WatchJobRequest {
            name: job.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&again.next().await.unwrap().unwrap()), "SUCCEEDED");
    assert!(again.next().await.is_none());

    // WatchJobs saw this job and two more end.
    let b = start_backup(&mut c, 1, "").await;
    let e = start_backup(&mut c, 2, "").await;
    let mut ended = std::collections::HashSet::new();
    while ended.len() < 3 {
        let j = tokio::time::timeout(T, all.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if state(&j) == "SUCCEEDED" {
            ended.insert(j.name);
        }
    }
    assert!(ended.contains(&job.name) && ended.contains(&b.name) && ended.contains(&e.name));
}

#[tokio::test]
async fn one_job_per_target_and_cancel() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(800),
            ..Default::default()
        },
        1,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let first = start_backup(&mut c, 0, "").await;
    let second = start_backup(&mut c, 0, "").await;
    let third = start_backup(&mut c, 0, "").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = c
        .get_job(pb::GetJobRequest {
            name: second.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&s), "PENDING");
    assert!(
        s.message.contains(&first.name),
        "says what it waits for: {}",
        s.message
    );

    let cancelled = c
        .cancel_job(pb::CancelJobRequest {
            name: second.name.clone(),
            validate_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&cancelled), "CANCELLED");
    let e = c
        .cancel_job(pb::CancelJobRequest {
            name: first.name.clone(),
            validate_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("cannot be stopped"), "{}", e.message());

    assert_eq!(state(&wait_done(&mut c, &first.name, T).await), "SUCCEEDED");
    assert_eq!(state(&wait_done(&mut c, &third.name, T).await), "SUCCEEDED");
    let e = c
        .cancel_job(pb::CancelJobRequest {
            name: first.name.clone(),
            validate_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    // Two backups ran, one after the other (no 409 from the simulator).
    assert_eq!(sim.counters().backup_submits, 2);
}

// Multi-threaded: the CLI runs as a blocking child process while the
// simulator answers on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_waits_and_exits_by_outcome() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_custos"))
            .args(args)
            .env("CUSTOS_ENDPOINT", format!("http://{}", d.addr))
            .env("CUSTOS_TOKEN", OP_TOKEN)
            .output()
            .unwrap()
    };
    let t = target(0);
    let out = run(&["backup", "create", &t, "--wait", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "SUCCEEDED");
    assert!(!v["backupId"].as_str().unwrap().is_empty());

    sim.fail_next_job(
        &inst(0),
        custos_cf_v3::sim::cf_error(10001, "CF-ServerError", "restore broke"),
    );
    let out = run(&["restore", &t, "--backup", "seed-0", "--wait", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "a failed job exits non-zero");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "FAILED");

    let out = run(&["backup", "list", &t]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("seed-0"));
    let out = run(&["restore", &t, "--map", "a=b"]);
    assert_eq!(out.status.code(), Some(4), "refused: INVALID_ARGUMENT");
    assert!(String::from_utf8_lossy(&out.stderr).contains("mappings"));
}
