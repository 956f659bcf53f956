//! The VBS adapter against the simulator, with a real Keystone client: the
//! seed's restore, failed restores, preconditions (validate and submit),
//! backups (full, incremental, failed), list across pages, delete, quota
//! and retried faults, expiring tokens, reconcile after a crash.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::Utc;
use custos_adapter_core::{
    Backend, BackendError, ErrorKind, Intent, Operation, Progress, Reconciled, RemoteHandle,
    Resource, ResourceKind, RestoreSpec, VolumeMapping,
};
use custos_vbs_v2::{
    VbsV2,
    sim::{DemoIds, Injection, RestoreEnd, SimConfig, Simulator},
};
use reqwest::Method;
use serde_json::Value;

/// The example request and answer of `shared/seeds/vbs-v2-restore-disk.txt`.
const SEED_REQUEST: &str = r#"{"restore":{"volume_id":"2748f2f2-4394-4e6e-af8d-8dd34496c024"}}"#;
const SEED_BACKUP: &str = "1d1139d8-8989-49d3-8aa1-83eb691e6db2";

struct T {
    sim: Simulator,
    ids: DemoIds,
    vbs: VbsV2,
}

async fn start(f: impl FnOnce(&mut SimConfig)) -> T {
    let mut cfg = SimConfig {
        restore_duration: Duration::from_millis(150),
        backup_duration: Duration::from_millis(150),
        delete_duration: Duration::from_millis(100),
        ..Default::default()
    };
    f(&mut cfg);
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let ids = sim.seed_demo();
    let vbs = VbsV2::new(sim.adapter_config(Duration::from_secs(2))).unwrap();
    T { sim, ids, vbs }
}

fn volume(id: &str) -> Resource {
    Resource {
        kind: ResourceKind::Volume,
        id: id.into(),
    }
}

fn restore(backup: &str, into: &str) -> Operation {
    Operation::Restore {
        resource: volume(into),
        spec: RestoreSpec {
            backup_id: Some(backup.into()),
            ..Default::default()
        },
    }
}

fn backup(of: &str, incremental: bool) -> Operation {
    Operation::CreateBackup {
        resource: volume(of),
        incremental,
    }
}

impl T {
    async fn intent(&self, op: &Operation) -> Intent {
        let mut i = self.vbs.prepare(op).await.unwrap();
        i.recorded_at = Some(Utc::now());
        i
    }

    /// prepare → submit → poll to the end, as the daemon does.
    async fn run(&self, op: &Operation) -> Result<Progress, BackendError> {
        assert!(self.vbs.check(op).is_empty(), "{:?}", self.vbs.check(op));
        let intent = self.intent(op).await;
        let mut h = self.vbs.submit(op, &intent).await?;
        self.follow(op, &intent, &mut h).await
    }

    async fn follow(
        &self,
        op: &Operation,
        intent: &Intent,
        h: &mut RemoteHandle,
    ) -> Result<Progress, BackendError> {
        for _ in 0..400 {
            match self.vbs.poll(op, intent, h).await {
                Ok(Progress::Running { handle, .. }) => {
                    if let Some(n) = handle {
                        *h = n;
                    }
                }
                Err(e) if e.is_retryable() => {}
                other => return other,
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the operation did not end");
    }
}

fn succeeded(p: &Progress) -> bool {
    matches!(p, Progress::Succeeded { .. })
}

#[tokio::test]
async fn the_seed_restore_arrives_as_the_seed_says_and_succeeds() {
    let t = start(|c| c.restore_duration = Duration::from_millis(400)).await;
    let op = restore(SEED_BACKUP, &t.ids.volume_id);
    let plan = t.vbs.validate(&op).await.unwrap();
    assert!(
        plan.contains(&format!("/backups/{SEED_BACKUP}/restore")),
        "{plan}"
    );
    let intent = t.intent(&op).await;
    let mut h = t.vbs.submit(&op, &intent).await.unwrap();
    // The answer's three fields: backup, volume and its name.
    assert!(h.display.contains(SEED_BACKUP), "{}", h.display);
    assert!(h.display.contains(&t.ids.volume_id), "{}", h.display);
    assert!(h.display.contains("test_volume"), "{}", h.display);
    let got = t.sim.restores();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].backup_id, SEED_BACKUP);
    assert_eq!(
        got[0].body,
        serde_json::from_str::<Value>(SEED_REQUEST).unwrap()
    );
    assert_eq!(got[0].status, 202);
    // Followed on the volume: restoring-backup, then available.
    let mut saw_restoring = false;
    let end = loop {
        match t.vbs.poll(&op, &intent, &h).await.unwrap() {
            Progress::Running {
                message, handle, ..
            } => {
                saw_restoring |= message.contains("restoring");
                if let Some(n) = handle {
                    h = n;
                }
            }
            other => break other,
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    assert!(succeeded(&end), "{end:?}");
    assert!(saw_restoring);
    assert_eq!(t.sim.volume(&t.ids.volume_id).unwrap().status, "available");
    assert_eq!(t.sim.backup(SEED_BACKUP).unwrap().status, "available");
    assert_eq!(t.sim.counters().restore_submits, 1);
}

#[tokio::test]
async fn a_restore_that_ends_error_restoring_fails_with_a_clear_message() {
    let t = start(|_| {}).await;
    t.sim.end_next_restore(RestoreEnd::Error);
    let p = t
        .run(&restore(SEED_BACKUP, &t.ids.volume_id))
        .await
        .unwrap();
    let Progress::Failed(e) = p else {
        panic!("{p:?}")
    };
    assert!(e.message.contains("error_restoring"), "{e}");
    assert!(e.message.contains(&t.ids.volume_id), "{e}");
    assert!(e.message.contains("the backup is available again"), "{e}");
    assert_eq!(t.sim.backup(SEED_BACKUP).unwrap().status, "available");
}

#[tokio::test]
async fn in_use_and_small_volumes_are_refused_by_validate_and_by_vbs() {
    let t = start(|_| {}).await;
    for (vol, words, cinder) in [
        (
            t.ids.in_use_volume_id.clone(),
            "in-use",
            "Volume to be restored to must be available",
        ),
        (
            t.ids.small_volume_id.clone(),
            "smaller than backup",
            "is too small to restore backup of size",
        ),
    ] {
        let op = restore(SEED_BACKUP, &vol);
        let e = t.vbs.validate(&op).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
        assert!(e.message.contains(words), "{e}");
        // Submitted anyway: VBS's own 400, kept, and nothing to reconcile.
        let intent = t.intent(&op).await;
        let e = t.vbs.submit(&op, &intent).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
        assert!(!e.maybe_applied, "{e}");
        assert_eq!(e.details[0].title.as_deref(), Some("badRequest"));
        assert!(
            e.details[0].detail.as_deref().unwrap().contains(cinder),
            "{e:?}"
        );
        assert!(e.message.contains(cinder), "{e}");
    }
    assert_eq!(t.sim.counters().restore_submits, 0);

    // Unknown backup and volume: NotFound, with Cinder's words.
    let e = t
        .vbs
        .validate(&restore(
            "592a0c4d-65a3-4051-8d51-1e2b6401b2d8",
            &t.ids.volume_id,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("could not be found"), "{e}");
    let e = t
        .vbs
        .validate(&restore(
            SEED_BACKUP,
            "0e0e0e0e-0000-4000-8000-000000000000",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    // A backup that is busy.
    t.sim.set_backup_status(SEED_BACKUP, "creating");
    let e = t
        .vbs
        .validate(&restore(SEED_BACKUP, &t.ids.volume_id))
        .await
        .unwrap_err();
    assert!(e.message.contains("creating, not available"), "{e}");
}

#[tokio::test]
async fn fields_vbs_cannot_honour_are_named() {
    let t = start(|_| {}).await;
    let mut op = restore(SEED_BACKUP, &t.ids.volume_id);
    if let Operation::Restore { spec, .. } = &mut op {
        spec.mappings.push(VolumeMapping {
            backup_id: "a".into(),
            volume_id: "b".into(),
        });
        spec.power_on = Some(true);
        spec.point_in_time = Some(Utc::now());
        spec.backup_id = None;
    }
    let fields: Vec<String> = t.vbs.check(&op).into_iter().map(|v| v.field).collect();
    assert_eq!(
        fields,
        ["backup_id", "point_in_time", "mappings", "power_on"]
    );
    let op = Operation::CreateBackup {
        resource: Resource {
            kind: ResourceKind::Server,
            id: "x y".into(),
        },
        incremental: false,
    };
    let fields: Vec<String> = t.vbs.check(&op).into_iter().map(|v| v.field).collect();
    assert_eq!(fields, ["target", "target"]);
}

#[tokio::test]
async fn backups_full_incremental_failed_listed_across_pages_and_deleted() {
    let t = start(|_| {}).await;
    let vol = t.ids.volume_id.clone();
    let Progress::Succeeded {
        backup_id: Some(full),
        message,
    } = t.run(&backup(&vol, false)).await.unwrap()
    else {
        panic!()
    };
    assert!(message.contains("available"), "{message}");
    let b = t.sim.backup(&full).unwrap();
    assert!(b.name.starts_with("custos-"), "{}", b.name);
    assert!(!b.is_incremental);
    let Progress::Succeeded {
        backup_id: Some(inc),
        ..
    } = t.run(&backup(&vol, true)).await.unwrap()
    else {
        panic!()
    };
    assert!(t.sim.backup(&inc).unwrap().is_incremental);

    // An incremental backup of a volume with no backup: caught by validate.
    let small = t.ids.small_volume_id.clone();
    let e = t.vbs.validate(&backup(&small, true)).await.unwrap_err();
    assert!(e.message.contains("full backup first"), "{e}");

    // A backup that ends in error: its fail_reason in the job.
    t.sim.fail_next_backup("Swift container is full");
    let Progress::Failed(e) = t.run(&backup(&vol, false)).await.unwrap() else {
        panic!()
    };
    assert!(e.message.contains("Swift container is full"), "{e}");

    // Several pages, newest first, each backup once.
    for i in 0..5 {
        t.sim.add_backup(&vol, &format!("extra-{i}")).unwrap();
    }
    let all = t
        .sim
        .backups()
        .into_iter()
        .filter(|b| b.volume_id == vol)
        .count();
    assert_eq!(all, 9, "seed + full + incremental + failed + 5");
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let p = t
            .vbs
            .list_backups(&volume(&vol), Some(2), &token)
            .await
            .unwrap();
        pages += 1;
        assert!(p.backups.len() <= 2);
        seen.extend(p.backups.into_iter().map(|b| b.id));
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    assert!(pages >= 5, "{pages}");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 9, "{seen:?}");
    let e = t
        .vbs
        .list_backups(&volume(&vol), Some(2), "not a token!")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);

    // Delete: refused while an incremental depends on the full backup,
    // then the incremental and the full one go.
    let del = |id: &str| Operation::DeleteBackup {
        resource: volume(&vol),
        backup_id: id.into(),
    };
    let e = t.vbs.validate(&del(&full)).await.unwrap_err();
    assert!(e.message.contains("depend on it"), "{e}");
    assert!(succeeded(&t.run(&del(&inc)).await.unwrap()));
    assert!(t.sim.backup(&inc).is_none());
    assert!(succeeded(&t.run(&del(&full)).await.unwrap()));
    assert!(t.sim.backup(&full).is_none());
}

#[tokio::test]
async fn quota_is_not_retried_and_5xx_reads_are() {
    let t = start(|_| {}).await;
    let op = restore(SEED_BACKUP, &t.ids.volume_id);
    let intent = t.intent(&op).await;
    t.sim.inject(Injection {
        method: Method::POST,
        path_contains: "/restore".into(),
        status: 413,
        message: "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed gigabytes quota.".into(),
        retry_after: Some("0".into()),
        times: 1,
    });
    let e = t.vbs.submit(&op, &intent).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(!e.is_retryable() && !e.maybe_applied, "{e:?}");
    assert_eq!(e.details[0].title.as_deref(), Some("overLimit"));
    assert!(e.message.contains("quota"), "{e}");

    // Reads answered 503 twice are retried inside the adapter.
    t.sim.inject(Injection {
        method: Method::GET,
        path_contains: "/volumes/".into(),
        status: 503,
        message: "Service Unavailable".into(),
        retry_after: None,
        times: 2,
    });
    t.vbs.validate(&op).await.unwrap();
    // A 503 to a submit is maybe applied: the daemon reconciles.
    t.sim.inject(Injection {
        method: Method::POST,
        path_contains: "/restore".into(),
        status: 503,
        message: "Service Unavailable".into(),
        retry_after: None,
        times: 1,
    });
    let e = t.vbs.submit(&op, &intent).await.unwrap_err();
    assert!(e.is_retryable() && e.maybe_applied, "{e:?}");
    assert_eq!(
        t.vbs.reconcile(&op, &intent).await.unwrap(),
        Reconciled::NotSubmitted
    );
}

#[tokio::test]
async fn expiring_and_revoked_tokens_cause_no_failures() {
    let t = start(|c| c.token_lifetime = Duration::from_secs(2)).await;
    let vol = t.ids.volume_id.clone();
    assert!(succeeded(&t.run(&backup(&vol, false)).await.unwrap()));
    let grants = t.sim.keystone().grants();
    t.sim.keystone().revoke_all();
    assert!(succeeded(
        &t.run(&restore(SEED_BACKUP, &vol)).await.unwrap()
    ));
    assert!(
        t.sim.keystone().grants() > grants,
        "a fresh token was fetched"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(succeeded(&t.run(&backup(&vol, false)).await.unwrap()));
}

#[tokio::test]
async fn a_crash_after_the_restore_was_sent_is_reconciled_once_whatever_its_stage() {
    let t = start(|c| c.restore_duration = Duration::from_millis(300)).await;
    let vol = t.ids.volume_id.clone();
    let op = restore(SEED_BACKUP, &vol);
    // Sent, answer lost, looked at while it runs.
    let intent = t.intent(&op).await;
    t.vbs.submit(&op, &intent).await.unwrap();
    let Reconciled::Submitted(mut h) = t.vbs.reconcile(&op, &intent).await.unwrap() else {
        panic!()
    };
    assert!(succeeded(&t.follow(&op, &intent, &mut h).await.unwrap()));
    // Sent, answer lost, looked at only after it ended.
    let intent = t.intent(&op).await;
    t.vbs.submit(&op, &intent).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let Reconciled::Submitted(mut h) = t.vbs.reconcile(&op, &intent).await.unwrap() else {
        panic!()
    };
    assert!(succeeded(&t.follow(&op, &intent, &mut h).await.unwrap()));
    // Ended badly: the poll says so.
    let intent = t.intent(&op).await;
    t.sim.end_next_restore(RestoreEnd::Error);
    t.vbs.submit(&op, &intent).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let Reconciled::Submitted(mut h) = t.vbs.reconcile(&op, &intent).await.unwrap() else {
        panic!()
    };
    assert!(matches!(
        t.follow(&op, &intent, &mut h).await.unwrap(),
        Progress::Failed(_)
    ));
    assert_eq!(t.sim.counters().restore_submits, 3);
    // Someone else's restore from another backup into the volume: Unknown.
    t.sim.set_volume_status(&vol, "available");
    let other = t.sim.add_backup(&vol, "someone-elses").unwrap();
    let intent = t.intent(&op).await;
    t.sim.start_foreign_restore(&other, &vol);
    let Reconciled::Unknown(why) = t.vbs.reconcile(&op, &intent).await.unwrap() else {
        panic!()
    };
    assert!(why.contains(&vol) && why.contains("Check volume"), "{why}");
}

/// A submit that never arrived, while someone restored our backup into
/// another volume and, at another time, changed our volume: not ours.
#[tokio::test]
async fn someone_elses_restore_of_the_backup_plus_a_change_of_the_volume_is_not_ours() {
    let t = start(|_| {}).await;
    // A generous clock skew, so both foreign changes count as "after the
    // intent" and only their timing tells them apart.
    let vbs = VbsV2::new(t.sim.adapter_config(Duration::from_secs(2)))
        .unwrap()
        .with_clock_skew(Duration::from_secs(300));
    let vol = t.ids.volume_id.clone();
    t.sim.add_volume("spare", "spare", 10, "available");
    let op = restore(SEED_BACKUP, &vol);
    let mut intent = vbs.prepare(&op).await.unwrap();
    intent.recorded_at = Some(Utc::now());
    // Someone's restore of the seed backup into "spare" ended a minute ago;
    // our volume was just touched (detached, renamed...).
    t.sim
        .foreign_restore_done(SEED_BACKUP, "spare", Duration::from_secs(60));
    t.sim.set_volume_status(&vol, "available");
    match vbs.reconcile(&op, &intent).await.unwrap() {
        Reconciled::Unknown(why) => assert!(why.contains("Check volume"), "{why}"),
        other => panic!("someone else's restore taken for ours: {other:?}"),
    }
    assert_eq!(t.sim.counters().restore_submits, 0);
}
