//! The v2 VBS disk-restore backend through the real daemon: the seed's
//! restore, failed and refused restores (and `validate_only` catching
//! them), backups full and incremental, listed across pages and deleted,
//! quota and 503 faults, expiring tokens, and a restore that survives
//! `kill -9` without running twice.

use std::time::Duration;

use custos::api::pb;
use custos_cf_v3::sim::SimConfig;
use custos_vbs_v2::sim::{Injection, RestoreEnd, SimConfig as VbsSimConfig};
use reqwest::Method;
use serde_json::json;
use tonic::Code;

use crate::harness::*;

const T: Duration = Duration::from_secs(60);
const SEED_BACKUP: &str = "1d1139d8-8989-49d3-8aa1-83eb691e6db2";

fn vol(id: &str) -> String {
    format!("backends/vbs/volumes/{id}")
}

fn restore(backup: &str, volume: &str) -> pb::RestoreRequest {
    pb::RestoreRequest {
        target: vol(volume),
        backup_id: backup.into(),
        ..Default::default()
    }
}

async fn run_restore(c: &mut Client, r: pb::RestoreRequest) -> pb::Job {
    let j = c.restore(r).await.unwrap().into_inner();
    wait_done(c, &j.name, T).await
}

async fn run_backup(c: &mut Client, volume: &str, incremental: bool) -> pb::Job {
    let j = c
        .create_backup(pb::CreateBackupRequest {
            target: vol(volume),
            incremental,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    wait_done(c, &j.name, T).await
}

#[tokio::test]
async fn the_seed_restore_and_a_failed_one() {
    let dir = tempfile::tempdir().unwrap();
    let (vbs, ids, d) = start_vbs(dir.path(), VbsSimConfig::default()).await;
    let mut c = d.op().await;
    assert_eq!(ids.volume_id, "2748f2f2-4394-4e6e-af8d-8dd34496c024");
    assert_eq!(ids.backup_id, SEED_BACKUP);

    let j = run_restore(&mut c, restore(SEED_BACKUP, &ids.volume_id)).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    // The seed's request, and its answer's three fields in the job.
    assert_eq!(
        vbs.restores()[0].body,
        json!({"restore": {"volume_id": "2748f2f2-4394-4e6e-af8d-8dd34496c024"}})
    );
    for part in [SEED_BACKUP, ids.volume_id.as_str(), "test_volume"] {
        assert!(j.remote_operation.contains(part), "{}", j.remote_operation);
    }
    assert_eq!(vbs.volume(&ids.volume_id).unwrap().status, "available");

    // The volume ends error_restoring: FAILED, saying so.
    vbs.end_next_restore(RestoreEnd::Error);
    let j = run_restore(&mut c, restore(SEED_BACKUP, &ids.volume_id)).await;
    assert_eq!(state(&j), "FAILED", "{}", j.message);
    assert!(j.message.contains("error_restoring"), "{}", j.message);
    assert_eq!(vbs.backup(SEED_BACKUP).unwrap().status, "available");
    assert_eq!(vbs.counters().restore_submits, 2);
}

#[tokio::test]
async fn in_use_and_too_small_volumes_are_caught_by_validate_only_and_fail_with_vbs_words() {
    let dir = tempfile::tempdir().unwrap();
    let (vbs, ids, d) = start_vbs(dir.path(), VbsSimConfig::default()).await;
    let mut c = d.op().await;
    for (volume, ours, theirs) in [
        (
            &ids.in_use_volume_id,
            "in-use",
            "Volume to be restored to must be available",
        ),
        (
            &ids.small_volume_id,
            "smaller than backup",
            "is too small to restore backup of size",
        ),
    ] {
        let mut r = restore(SEED_BACKUP, volume);
        r.validate_only = true;
        let e = c.restore(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(ours), "{e:?}");

        let j = run_restore(&mut c, restore(SEED_BACKUP, volume)).await;
        assert_eq!(state(&j), "FAILED", "{}", j.message);
        assert!(j.message.contains(theirs), "{}", j.message);
        let e = j.error.unwrap();
        assert_eq!(e.code, Code::InvalidArgument as i32);
        assert_eq!(e.details[0].http_status, 400);
        assert_eq!(e.details[0].title, "badRequest");
    }
    assert_eq!(vbs.counters().restore_submits, 0);
    // A fine one passes validate_only and runs nothing.
    let mut r = restore(SEED_BACKUP, &ids.volume_id);
    r.validate_only = true;
    let j = c.restore(r).await.unwrap().into_inner();
    assert!(j.validate_only);
    assert!(j.message.contains("/restore"), "{}", j.message);
    // Fields a disk restore cannot take, by name.
    let mut r = restore(SEED_BACKUP, &ids.volume_id);
    r.power_on = Some(true);
    r.restore_point = "p".into();
    let v = violations(&c.restore(r).await.unwrap_err());
    assert!(v.contains(&"power_on".to_string()), "{v:?}");
    assert!(v.contains(&"restore_point".to_string()), "{v:?}");
    assert_eq!(vbs.counters().restore_submits, 0);
}

#[tokio::test]
async fn backups_are_made_listed_across_pages_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (vbs, ids, d) = start_vbs(dir.path(), VbsSimConfig::default()).await;
    let mut c = d.op().await;
    let full = run_backup(&mut c, &ids.volume_id, false).await;
    assert_eq!(state(&full), "SUCCEEDED", "{}\n{}", full.message, d.logs());
    let inc = run_backup(&mut c, &ids.volume_id, true).await;
    assert_eq!(state(&inc), "SUCCEEDED", "{}", inc.message);
    assert!(vbs.backup(&inc.backup_id).unwrap().is_incremental);
    for i in 0..4 {
        vbs.add_backup(&ids.volume_id, &format!("old-{i}")).unwrap();
    }
    // 7 backups, pages of 2.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let p = c
            .list_backups(pb::ListBackupsRequest {
                target: vol(&ids.volume_id),
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(p.backups.into_iter().map(|b| b.id));
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    assert!(pages >= 4, "{pages}");
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert!(seen.contains(&full.backup_id) && seen.contains(&inc.backup_id));

    // GetBackup by name: the incremental one; not under another volume;
    // not an id VBS does not have.
    let name = format!("{}/backups/{}", vol(&ids.volume_id), inc.backup_id);
    let b = c
        .get_backup(pb::GetBackupRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (b.name.as_str(), b.id.as_str()),
        (name.as_str(), inc.backup_id.as_str())
    );
    assert_eq!(b.state, "available");
    assert!(b.create_time.is_some());
    for other in [
        format!("{}/backups/{}", vol(&ids.small_volume_id), inc.backup_id),
        format!("{}/backups/{}", vol(&ids.volume_id), uuid::Uuid::new_v4()),
    ] {
        let e = c
            .get_backup(pb::GetBackupRequest {
                name: other.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{other}: {e:?}");
    }

    let del = |id: &str| pb::DeleteBackupRequest {
        target: vol(&ids.volume_id),
        backup_id: id.into(),
        ..Default::default()
    };
    // The full backup has an incremental on it: VBS refuses, kept.
    let j = c
        .delete_backup(del(&full.backup_id))
        .await
        .unwrap()
        .into_inner();
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "FAILED", "{}", j.message);
    assert!(
        j.message.contains("Incremental backups exist"),
        "{}",
        j.message
    );
    for id in [&inc.backup_id, &full.backup_id] {
        // By the backup's name (the other way to say target and id).
        let by_name = pb::DeleteBackupRequest {
            name: format!("{}/backups/{id}", vol(&ids.volume_id)),
            ..Default::default()
        };
        let j = c.delete_backup(by_name).await.unwrap().into_inner();
        let j = wait_done(&mut c, &j.name, T).await;
        assert_eq!(state(&j), "SUCCEEDED", "{}", j.message);
        assert!(vbs.backup(id).is_none());
    }
    // An incremental backup of a volume with none: refused up front.
    let e = c
        .create_backup(pb::CreateBackupRequest {
            target: vol(&ids.small_volume_id),
            incremental: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = wait_done(&mut c, &e.name, T).await;
    assert_eq!(state(&e), "FAILED", "{}", e.message);
    assert!(e.message.contains("incremental"), "{}", e.message);
}

#[tokio::test]
async fn quota_is_not_retried_503_is_and_expiring_tokens_fail_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = VbsSimConfig {
        token_lifetime: Duration::from_secs(1),
        ..Default::default()
    };
    let (vbs, ids, d) = start_vbs(dir.path(), cfg).await;
    let mut c = d.op().await;
    vbs.inject(Injection {
        method: Method::POST,
        path_contains: "/backups".into(),
        status: 413,
        message: "VolumeBackupSizeExceedsAvailableQuota: Requested backup exceeds allowed Backup gigabytes quota.".into(),
        retry_after: Some("0".into()),
        times: 5,
    });
    let j = run_backup(&mut c, &ids.volume_id, false).await;
    assert_eq!(state(&j), "FAILED", "{}", j.message);
    assert!(j.message.contains("quota"), "{}", j.message);
    assert_eq!(vbs.counters().faults, 1, "one POST, not retried");
    let e = j.error.unwrap();
    assert_eq!(e.details[0].title, "overLimit");
    assert_eq!(e.details[0].http_status, 413);
    vbs.clear_faults();

    // A 503 before anything was applied: retried (through reconcile, since
    // a 503 to a POST may hide an applied one) and made once.
    vbs.inject(Injection {
        method: Method::POST,
        path_contains: "/backups".into(),
        status: 503,
        message: "Service Unavailable".into(),
        retry_after: None,
        times: 1,
    });
    let before = vbs.counters().backup_submits;
    let j = run_backup(&mut c, &ids.volume_id, false).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    assert_eq!(vbs.counters().backup_submits, before + 1);

    // Tokens live a second; jobs spread over several keep working.
    let grants = vbs.keystone().grants();
    for _ in 0..2 {
        let j = run_restore(&mut c, restore(SEED_BACKUP, &ids.volume_id)).await;
        assert_eq!(state(&j), "SUCCEEDED", "{}", j.message);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(vbs.keystone().grants() > grants);
}

#[tokio::test]
async fn kill_nine_mid_restore_resumes_without_a_second_restore() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = VbsSimConfig {
        restore_duration: Duration::from_secs(3),
        ..Default::default()
    };
    let (vbs, ids, d) = start_vbs(dir.path(), cfg).await;
    let mut c = d.op().await;
    let j = c
        .restore(restore(SEED_BACKUP, &ids.volume_id))
        .await
        .unwrap()
        .into_inner();
    let deadline = tokio::time::Instant::now() + T;
    while vbs.counters().restore_submits == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cf = sim(SimConfig::default(), 0).await;
    let d = d.restart_after_kill9(&cf, dir.path());
    let mut c = d.op().await;
    let j = wait_done(&mut c, &j.name, T).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    assert_eq!(vbs.counters().restore_submits, 1, "one restore only");
}

/// The CLI takes a backup's name alone: `backup get NAME`, and
/// `backup delete NAME --yes --wait`, whose last line says what was deleted.
#[tokio::test]
async fn the_cli_gets_and_deletes_a_backup_by_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let (vbs, ids, d) = start_vbs(dir.path(), VbsSimConfig::default()).await;
    let mut c = d.op().await;
    let made = run_backup(&mut c, &ids.volume_id, false).await;
    assert_eq!(state(&made), "SUCCEEDED", "{}", made.message);
    let name = format!("{}/backups/{}", vol(&ids.volume_id), made.backup_id);
    let endpoint = format!("http://{}", d.addr);
    let cli = move |args: Vec<String>| {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_custos"))
                .args(&args)
                .env("CUSTOS_ENDPOINT", endpoint)
                .env("CUSTOS_TOKEN", OP_TOKEN)
                .output()
                .unwrap()
        })
    };
    let out = cli(vec!["backup".into(), "get".into(), name.clone()])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&made.backup_id));
    let out = cli(vec![
        "backup".into(),
        "delete".into(),
        name.clone(),
        "--yes".into(),
        "--wait".into(),
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with(&format!(
                "backup {} of {} deleted",
                made.backup_id,
                vol(&ids.volume_id)
            )),
        "{stdout}"
    );
    assert!(vbs.backup(&made.backup_id).is_none());
}
