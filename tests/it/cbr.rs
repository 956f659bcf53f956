//! The v3 project-backup (CBR) backend through the real daemon: Keystone
//! auth from a password file, server restores with disk mappings, disk
//! restores, the fields a backend cannot honour, create → list → delete,
//! and a restore that survives `kill -9` without running twice.

use std::{path::Path, time::Duration};

use custos::api::pb;
use custos_cbr_v3::sim::{DemoIds, SimConfig as CbrSimConfig, Simulator as CbrSim};
use custos_cf_v3::sim::SimConfig;
use serde_json::json;
use tonic::Code;

use crate::harness::*;

const T: Duration = Duration::from_secs(60);

/// A CBR simulator with the demo world, and a daemon whose backend `cbr`
/// points at it.
async fn start(dir: &Path, cfg: CbrSimConfig) -> (CbrSim, DemoIds, Daemon) {
    let cbr = CbrSim::start("127.0.0.1:0".parse().unwrap(), cfg.clone())
        .await
        .unwrap();
    let ids = cbr.seed_demo();
    let d = start_keystone_daemon(
        dir,
        "cbr",
        KeystoneBackend {
            kind: "cbr_v3",
            endpoint: cbr.url(),
            auth_url: cbr.auth_url(),
            project_id: &ids.project_id,
            vault_id: Some(&ids.vault_id),
            user: &cfg.user_name,
            domain: &cfg.user_domain,
            password: &cfg.password,
        },
    )
    .await;
    (cbr, ids, d)
}

fn server(ids: &DemoIds) -> String {
    format!("backends/cbr/servers/{}", ids.server_id)
}

fn server_restore(ids: &DemoIds) -> pb::RestoreRequest {
    pb::RestoreRequest {
        target: server(ids),
        backup_id: ids.server_backup_id.clone(),
        mappings: vec![
            pb::VolumeMapping {
                backup_id: ids.system_child_id.clone(),
                volume_id: ids.system_volume_id.clone(),
            },
            pb::VolumeMapping {
                backup_id: ids.data_child_id.clone(),
                volume_id: ids.data_volume_id.clone(),
            },
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn server_and_disk_restores_with_mappings_and_power_on() {
    let dir = tempfile::tempdir().unwrap();
    let (cbr, ids, d) = start(dir.path(), CbrSimConfig::default()).await;
    let mut c = d.op().await;

    // A whole server, both disks mapped, powered on by default.
    let j = c.restore(server_restore(&ids)).await.unwrap().into_inner();
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    let got = cbr.restores();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].body,
        json!({"restore": {
            "mappings": [
                {"backup_id": ids.system_child_id, "volume_id": ids.system_volume_id},
                {"backup_id": ids.data_child_id, "volume_id": ids.data_volume_id},
            ],
            "power_on": true,
            "server_id": ids.server_id,
        }})
    );

    // The same with power_on = false.
    let mut r = server_restore(&ids);
    r.power_on = Some(false);
    let j = c.restore(r).await.unwrap().into_inner();
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}", j.message);
    assert_eq!(cbr.restores()[1].body["restore"]["power_on"], json!(false));

    // One disk from its disk backup.
    let disk = pb::RestoreRequest {
        target: format!("backends/cbr/volumes/{}", ids.data_volume_id),
        backup_id: ids.disk_backup_id.clone(),
        ..Default::default()
    };
    let j = c.restore(disk).await.unwrap().into_inner();
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}", j.message);
    assert_eq!(
        cbr.restores()[2].body,
        json!({"restore": {"volume_id": ids.data_volume_id}})
    );
    assert_eq!(cbr.counters().restore_submits, 3);
}

#[tokio::test]
async fn fields_a_target_cannot_take_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (cbr, ids, d) = start(dir.path(), CbrSimConfig::default()).await;
    let mut c = d.op().await;
    // Mappings and power_on on a disk target.
    let mut r = server_restore(&ids);
    r.target = format!("backends/cbr/volumes/{}", ids.data_volume_id);
    r.power_on = Some(true);
    let e = c.restore(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let v = violations(&e);
    assert!(v.iter().any(|f| f.starts_with("mappings")), "{v:?}");
    assert!(v.iter().any(|f| f == "power_on"), "{v:?}");
    // A server target without mappings.
    let mut r = server_restore(&ids);
    r.mappings.clear();
    let e = c.restore(r).await.unwrap_err();
    assert!(violations(&e).iter().any(|f| f == "mappings"), "{e:?}");
    // A CF-only field.
    let mut r = server_restore(&ids);
    r.restore_point = "pitr".into();
    let e = c.restore(r).await.unwrap_err();
    assert!(violations(&e).iter().any(|f| f == "restore_point"), "{e:?}");
    assert_eq!(cbr.counters().restore_submits, 0, "nothing reached CBR");
}

#[tokio::test]
async fn backup_create_list_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (cbr, ids, d) = start(dir.path(), CbrSimConfig::default()).await;
    let mut c = d.op().await;
    let j = c
        .create_backup(pb::CreateBackupRequest {
            target: server(&ids),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    assert!(!j.backup_id.is_empty());
    let listed = c
        .list_backups(pb::ListBackupsRequest {
            target: server(&ids),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.backups.iter().any(|b| b.id == j.backup_id),
        "{listed:?}"
    );
    // GetBackup by the name ListBackups gave; another id is NOT_FOUND.
    let listed_one = listed
        .backups
        .iter()
        .find(|b| b.id == j.backup_id)
        .unwrap()
        .clone();
    let got = c
        .get_backup(pb::GetBackupRequest {
            name: listed_one.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, listed_one);
    assert_eq!(
        got.name,
        format!("{}/backups/{}", server(&ids), j.backup_id)
    );
    let e = c
        .get_backup(pb::GetBackupRequest {
            name: format!("{}/backups/{}", server(&ids), uuid::Uuid::new_v4()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let del = c
        .delete_backup(pb::DeleteBackupRequest {
            target: server(&ids),
            backup_id: j.backup_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let del = wait_done(&mut c, &del.name, T).await;
    assert_eq!(state(&del), "SUCCEEDED", "{}", del.message);
    assert!(cbr.backup(&j.backup_id).is_none(), "gone");
    assert_eq!(cbr.counters().checkpoint_submits, 1);
}

#[tokio::test]
async fn kill_nine_mid_restore_resumes_without_a_second_restore() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = CbrSimConfig {
        restore_duration: Duration::from_secs(3),
        ..Default::default()
    };
    let (cbr, ids, d) = start(dir.path(), cfg).await;
    let mut c = d.op().await;
    let j = c.restore(server_restore(&ids)).await.unwrap().into_inner();
    // Wait until the restore was sent, then kill the daemon.
    let deadline = tokio::time::Instant::now() + T;
    while cbr.counters().restore_submits == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cf = sim(SimConfig::default(), 0).await;
    let d = d.restart_after_kill9(&cf, dir.path());
    let mut c = d.op().await;
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    assert_eq!(cbr.counters().restore_submits, 1, "one restore only");
}

/// CBR's refusals and failures end the job FAILED with CBR's own words.
#[tokio::test]
async fn cbr_errors_and_failed_operation_logs_are_kept() {
    use custos_cbr_v3::sim::RestoreEnd;
    let dir = tempfile::tempdir().unwrap();
    let (cbr, ids, d) = start(dir.path(), CbrSimConfig::default()).await;
    let mut c = d.op().await;

    // 2005: the backup is not available.
    cbr.set_backup_status(&ids.server_backup_id, "error");
    let j = c.restore(server_restore(&ids)).await.unwrap().into_inner();
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "FAILED", "{}", j.message);
    let e = j.error.unwrap();
    assert_eq!(e.details[0].code, "BackupService.2005", "{e:?}");
    assert_eq!(e.details[0].http_status, 400);
    cbr.set_backup_status(&ids.server_backup_id, "available");

    // The restore runs and its operation log ends failed.
    cbr.end_next_restore(RestoreEnd::Failed {
        code: "BackupService.9999".into(),
        message: "the disk could not be written".into(),
    });
    let j = c.restore(server_restore(&ids)).await.unwrap().into_inner();
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "FAILED", "{}", j.message);
    assert!(
        j.message.contains("the disk could not be written"),
        "{}",
        j.message
    );
    let e = j.error.unwrap();
    assert!(
        e.details.iter().any(|x| x.code == "BackupService.9999"),
        "{e:?}"
    );
    assert_eq!(
        cbr.counters().restore_submits,
        1,
        "the refused one was not applied"
    );
}

/// 5xx and 429 `APIG.0308` on a fifth of the calls: every job succeeds,
/// each restore submitted once.
#[tokio::test]
async fn faults_do_not_fail_jobs_or_repeat_restores() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = CbrSimConfig {
        error_rate: 0.1,
        throttle_rate: 0.1,
        ..Default::default()
    };
    let (cbr, ids, d) = start(dir.path(), cfg).await;
    let mut c = d.op().await;
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(
            c.restore(server_restore(&ids))
                .await
                .unwrap()
                .into_inner()
                .name,
        );
    }
    let mut restored = 0;
    let mut logs = std::collections::HashSet::new();
    for n in &names {
        let j = wait_done(&mut c, n, T).await;
        if state(&j) == "SUCCEEDED" {
            // Each success is its own operation log, never another job's.
            assert!(logs.insert(j.message.clone()), "{}", j.message);
        }
        // A submit answered 5xx may have been applied: it is reconciled,
        // and a restore that shows no trace is never sent again (FAILED,
        // UNKNOWN). Success or UNKNOWN; never a second restore.
        match state(&j) {
            "SUCCEEDED" => restored += 1,
            "FAILED" => assert_eq!(j.error.unwrap().code, Code::Unknown as i32, "{}", j.message),
            s => panic!("{s}: {}", j.message),
        }
    }
    assert!(cbr.counters().faults > 0, "faults were injected");
    assert!(restored >= 1);
    // Jobs on one target run one at a time, so each accepted restore is one
    // job's: never more submissions than jobs.
    assert!(cbr.counters().restore_submits <= names.len() as u64);
    assert!(cbr.counters().restore_submits >= restored);

    // Backups (harmless to repeat) all succeed under the same faults.
    let mut backups = Vec::new();
    for _ in 0..4 {
        let j = c
            .create_backup(pb::CreateBackupRequest {
                target: server(&ids),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        backups.push(j.name);
    }
    for n in &backups {
        let j = wait_done(&mut c, n, T).await;
        assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    }
}

/// CBR's operation log says how far a restore is: the job carries it
/// (`progress_percent`), rising, and 100 at the end.
#[tokio::test]
async fn restore_progress_is_reported_as_a_percentage() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = CbrSimConfig {
        restore_duration: Duration::from_millis(2000),
        ..Default::default()
    };
    let (_cbr, ids, d) = start(dir.path(), cfg).await;
    let mut c = d.op().await;
    let j = c.restore(server_restore(&ids)).await.unwrap().into_inner();
    assert_eq!(j.progress_percent, None, "nothing reported yet");
    let mut watch = c
        .watch_job(pb::WatchJobRequest {
            name: j.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let mut last = None;
    while let Some(m) = tokio::time::timeout(T, watch.message())
        .await
        .unwrap()
        .unwrap()
    {
        if let Some(p) = m.progress_percent {
            seen.push(p);
        }
        last = Some(m);
    }
    let last = last.unwrap();
    assert_eq!(state(&last), "SUCCEEDED", "{}", last.message);
    assert_eq!(last.progress_percent, Some(100));
    assert!(
        seen.iter().any(|p| (1..100).contains(p)),
        "a percentage on the way: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");

    // The CLI's --wait shows it (plain lines without a terminal) and ends
    // with what happened, and where.
    let endpoint = format!("http://{}", d.addr);
    let target = server(&ids);
    let mut args = vec![
        "restore".to_string(),
        target.clone(),
        "--backup".into(),
        ids.server_backup_id.clone(),
        "--wait".into(),
    ];
    for (b, v) in [
        (&ids.system_child_id, &ids.system_volume_id),
        (&ids.data_child_id, &ids.data_volume_id),
    ] {
        args.push("--map".into());
        args.push(format!("{b}={v}"));
    }
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_custos"))
            .args(&args)
            .env("CUSTOS_ENDPOINT", endpoint)
            .env("CUSTOS_TOKEN", OP_TOKEN)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("RUNNING") && l.ends_with("%)")),
        "progress lines: {stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "{target} restored from backup {}",
            ids.server_backup_id
        )),
        "{stdout}"
    );
}
