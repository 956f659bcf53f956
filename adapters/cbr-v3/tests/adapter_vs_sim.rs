//! The CBR adapter against the simulator, with a real Keystone client:
//! the seed's restore, server/disk restores, preconditions, op-log endings,
//! create → list → delete, expiring tokens, reconcile after a lost answer.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::Utc;
use custos_adapter_core::{
    Backend, BackendError, ErrorKind, Intent, Operation, Progress, Reconciled, Resource,
    ResourceKind, RestoreSpec, VolumeMapping,
};
use custos_cbr_v3::{
    CbrConfig, CbrV3,
    sim::{DemoIds, PostFault, RestoreEnd, SimConfig, Simulator},
};
use custos_openstack::KeystoneAuth;
use serde_json::Value;

/// The example request of `shared/seeds/cbr-v3-restore-backup.txt`.
const SEED_BODY: &str = r#"{"restore":{"mappings":[{"backup_id":"5d822633-2bbf-4af8-a16e-5ab1c7705235","volume_id":"eccbcfdd-f843-4bbb-b2c0-a5ce861f9376"}],"power_on":true,"server_id":"94eba8b2-acc9-4d82-badc-127144cc5526"}}"#;

struct T {
    sim: Simulator,
    ids: DemoIds,
    cbr: CbrV3,
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
    let cbr =
        CbrV3::new(sim.adapter_config(Some(ids.vault_id.clone()), Duration::from_secs(2))).unwrap();
    T { sim, ids, cbr }
}

impl T {
    fn server(&self) -> Resource {
        Resource {
            kind: ResourceKind::Server,
            id: self.ids.server_id.clone(),
        }
    }

    fn server_restore(&self, mappings: &[(&str, &str)], power_on: Option<bool>) -> Operation {
        Operation::Restore {
            resource: self.server(),
            spec: RestoreSpec {
                backup_id: Some(self.ids.server_backup_id.clone()),
                mappings: mappings
                    .iter()
                    .map(|(b, v)| VolumeMapping {
                        backup_id: b.to_string(),
                        volume_id: v.to_string(),
                    })
                    .collect(),
                power_on,
                ..Default::default()
            },
        }
    }

    fn seed_restore(&self) -> Operation {
        self.server_restore(
            &[(&self.ids.system_child_id, &self.ids.system_volume_id)],
            None,
        )
    }

    fn disk_restore(&self) -> Operation {
        Operation::Restore {
            resource: Resource {
                kind: ResourceKind::Volume,
                id: self.ids.data_volume_id.clone(),
            },
            spec: RestoreSpec {
                backup_id: Some(self.ids.disk_backup_id.clone()),
                ..Default::default()
            },
        }
    }

    async fn intent(&self, op: &Operation) -> Intent {
        let mut i = self.cbr.prepare(op).await.unwrap();
        i.recorded_at = Some(Utc::now());
        i
    }

    /// prepare → submit → poll to the end, as the daemon does.
    async fn run(&self, op: &Operation) -> Result<Progress, BackendError> {
        assert!(self.cbr.check(op).is_empty(), "{:?}", self.cbr.check(op));
        let intent = self.intent(op).await;
        let mut h = self.cbr.submit(op, &intent).await?;
        self.follow(op, &intent, &mut h).await
    }

    async fn follow(
        &self,
        op: &Operation,
        intent: &Intent,
        h: &mut custos_adapter_core::RemoteHandle,
    ) -> Result<Progress, BackendError> {
        for _ in 0..400 {
            match self.cbr.poll(op, intent, h).await {
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
    let t = start(|_| {}).await;
    let op = t.seed_restore();
    assert!(t.cbr.validate(&op).await.unwrap().contains("/restore"));
    let p = t.run(&op).await.unwrap();
    assert!(succeeded(&p), "{p:?}");
    let got = t.sim.restores();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].backup_id, "a5200268-74a5-4806-acc6-95793ab0228b");
    let seed: Value = serde_json::from_str(SEED_BODY).unwrap();
    assert_eq!(got[0].body, seed);
    assert_eq!(t.sim.counters().restore_submits, 1);
}

#[tokio::test]
async fn server_restore_with_two_mappings_and_progress_in_the_message() {
    let t = start(|c| c.restore_duration = Duration::from_millis(600)).await;
    let ids = t.ids.clone();
    let op = t.server_restore(
        &[
            (&ids.system_child_id, &ids.system_volume_id),
            (&ids.data_child_id, &ids.data_volume_id),
        ],
        None,
    );
    let intent = t.intent(&op).await;
    let mut h = t.cbr.submit(&op, &intent).await.unwrap();
    let mut saw_progress = false;
    for _ in 0..100 {
        match t.cbr.poll(&op, &intent, &h).await.unwrap() {
            Progress::Running {
                message, handle, ..
            } => {
                saw_progress |= message.contains('%') && message.contains("operation log");
                if let Some(n) = handle {
                    assert!(n.state.contains("op_log_id"));
                    h = n;
                }
            }
            Progress::Succeeded { .. } => break,
            Progress::Failed(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(saw_progress);
    assert!(h.state.contains("op_log_id"), "pinned: {}", h.state);
    assert_eq!(
        t.sim.server_status(&ids.server_id).as_deref(),
        Some("ACTIVE")
    );
}

#[tokio::test]
async fn disk_restore_and_power_off_restore() {
    let t = start(|_| {}).await;
    let op = t.disk_restore();
    t.cbr.validate(&op).await.unwrap();
    assert!(succeeded(&t.run(&op).await.unwrap()));
    let body = &t.sim.restores()[0].body;
    assert_eq!(body["restore"]["volume_id"], t.ids.data_volume_id.as_str());
    assert!(body["restore"].get("power_on").is_none());

    let ids = t.ids.clone();
    let op = t.server_restore(&[(&ids.data_child_id, &ids.data_volume_id)], Some(false));
    assert!(succeeded(&t.run(&op).await.unwrap()));
    assert_eq!(t.sim.restores()[1].body["restore"]["power_on"], false);
    assert_eq!(
        t.sim.server_status(&ids.server_id).as_deref(),
        Some("SHUTOFF")
    );
}

fn code(e: &BackendError) -> Option<&str> {
    e.details.first().and_then(|d| d.code.as_deref())
}

#[tokio::test]
async fn preconditions_fail_with_their_codes_and_are_not_maybe_applied() {
    let t = start(|_| {}).await;
    let ids = t.ids.clone();
    let op = t.seed_restore();
    let submit = |op: Operation| {
        let t = &t;
        async move {
            let intent = Intent {
                state: String::new(),
                recorded_at: Some(Utc::now()),
            };
            t.cbr.submit(&op, &intent).await.unwrap_err()
        }
    };

    t.sim.set_backup_status(&ids.server_backup_id, "error");
    let e = submit(op.clone()).await;
    assert_eq!(code(&e), Some("BackupService.2005"), "{e}");
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(!e.maybe_applied);
    assert!(t.cbr.validate(&op).await.is_err());
    t.sim.set_backup_status(&ids.server_backup_id, "available");

    t.sim.set_server_status(&ids.server_id, "ERROR");
    let e = submit(op.clone()).await;
    assert_eq!(code(&e), Some("BackupService.2008"), "{e}");
    t.sim.set_server_status(&ids.server_id, "DELETED");
    assert_eq!(code(&submit(op.clone()).await), Some("BackupService.2007"));
    t.sim.set_server_status(&ids.server_id, "ACTIVE");

    // The 100 GB data disk's backup onto the 40 GB system disk.
    let bad = t.server_restore(&[(&ids.data_child_id, &ids.system_volume_id)], None);
    assert_eq!(code(&submit(bad).await), Some("BackupService.2001"));

    t.sim.set_volume_status(&ids.data_volume_id, "error");
    let e = submit(t.disk_restore()).await;
    assert_eq!(code(&e), Some("BackupService.2011"));
    assert_eq!(e.details[0].http_status, Some(400));
    t.sim.set_volume_status(&ids.data_volume_id, "in-use");

    let missing = Operation::Restore {
        resource: t.server(),
        spec: RestoreSpec {
            backup_id: Some("00000000-0000-4000-8000-00000000dead".into()),
            mappings: vec![VolumeMapping {
                backup_id: ids.system_child_id.clone(),
                volume_id: ids.system_volume_id.clone(),
            }],
            ..Default::default()
        },
    };
    let e = submit(missing.clone()).await;
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert_eq!(code(&e), Some("BackupService.6200"));
    assert_eq!(
        t.cbr.validate(&missing).await.unwrap_err().kind,
        ErrorKind::NotFound
    );

    // A restore in progress: 2010, busy (the daemon retries).
    t.sim
        .configure(|c| c.restore_duration = Duration::from_secs(30));
    let intent = t.intent(&op).await;
    t.cbr.submit(&op, &intent).await.unwrap();
    // The same backup again: it is `restoring` (2005); its server's disk
    // from another backup: the server is being restored (2010).
    assert_eq!(code(&submit(op.clone()).await), Some("BackupService.2005"));
    let e = submit(t.disk_restore()).await;
    assert_eq!(code(&e), Some("BackupService.2010"));
    assert_eq!(e.kind, ErrorKind::Busy);
    assert!(!e.maybe_applied);
    assert_eq!(t.sim.counters().restore_submits, 1);
}

#[tokio::test]
async fn failed_timeout_and_skipped_op_logs_fail_with_error_info() {
    let t = start(|_| {}).await;
    let op = t.seed_restore();
    let ends = [
        (
            RestoreEnd::Failed {
                code: "BackupService.4005".into(),
                message: "disk write failed".into(),
            },
            Some("BackupService.4005"),
            "disk write failed",
        ),
        (RestoreEnd::Timeout, None, "time limit"),
        (RestoreEnd::Skipped, None, "pre-check"),
    ];
    for (end, want_code, want_msg) in ends {
        t.sim.end_next_restore(end);
        match t.run(&op).await.unwrap() {
            Progress::Failed(e) => {
                assert_eq!(code(&e), want_code, "{e}");
                assert!(e.message.contains(want_msg), "{e}");
                assert!(
                    e.details[0].detail.as_deref().unwrap().contains(want_msg),
                    "{e:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn create_list_in_pages_and_delete() {
    let t = start(|_| {}).await;
    let op = Operation::CreateBackup {
        resource: t.server(),
        incremental: false,
    };
    t.cbr.validate(&op).await.unwrap();
    let mut made = Vec::new();
    for _ in 0..2 {
        match t.run(&op).await.unwrap() {
            Progress::Succeeded {
                backup_id: Some(id),
                ..
            } => made.push(id),
            other => panic!("{other:?}"),
        }
    }
    // The seed's backup and the two new ones, two to a page.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = t
            .cbr
            .list_backups(&t.server(), Some(2), &token)
            .await
            .unwrap();
        pages += 1;
        assert!(page.backups.len() <= 2);
        seen.extend(page.backups.into_iter().map(|b| {
            assert_eq!(b.state, "available");
            assert!(b.created_at.is_some());
            b.id
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 2);
    assert_eq!(seen.len(), 3);
    assert!(made.iter().all(|m| seen.contains(m)));
    assert!(seen.contains(&t.ids.server_backup_id));
    assert!(
        t.cbr
            .list_backups(&t.server(), None, "not-a-number")
            .await
            .is_err()
    );

    let del = Operation::DeleteBackup {
        resource: t.server(),
        backup_id: made[0].clone(),
    };
    t.cbr.validate(&del).await.unwrap();
    assert!(succeeded(&t.run(&del).await.unwrap()));
    assert!(t.sim.backup(&made[0]).is_none());
    assert_eq!(t.sim.counters().delete_submits, 1);
}

#[tokio::test]
async fn no_vault_no_backups() {
    let t = start(|_| {}).await;
    let c = t.sim.config();
    let cbr = CbrV3::new(CbrConfig {
        endpoint: t.sim.url(),
        project_id: c.project_id,
        vault_id: None,
        auth: KeystoneAuth::Fixed("x".to_string().into()),
        timeout: Duration::from_secs(1),
    })
    .unwrap();
    assert!(!cbr.capabilities().create_backup);
    let v = cbr.check(&Operation::CreateBackup {
        resource: t.server(),
        incremental: false,
    });
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].field, "target");
    assert!(v[0].description.contains("vault_id"));
}

#[tokio::test]
async fn tokens_expiring_and_revoked_mid_run_cause_no_failure() {
    let t = start(|c| {
        c.token_lifetime = Duration::from_millis(300);
        c.restore_duration = Duration::from_millis(1200);
    })
    .await;
    let op = t.seed_restore();
    let intent = t.intent(&op).await;
    let mut h = t.cbr.submit(&op, &intent).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    t.sim.keystone().revoke_all();
    let p = t.follow(&op, &intent, &mut h).await.unwrap();
    assert!(succeeded(&p), "{p:?}");
    assert!(
        t.sim.keystone().grants() >= 3,
        "{}",
        t.sim.keystone().grants()
    );
    assert_eq!(t.sim.counters().restore_submits, 1);
}

#[tokio::test]
async fn applied_then_504_is_maybe_applied_then_reconciled_once() {
    let t = start(|c| c.op_log_delay = Duration::from_millis(300)).await;
    let op = t.seed_restore();
    let intent = t.intent(&op).await;
    t.sim.arm_post("/restore", PostFault::ApplyThenHtml(504), 1);
    let e = t.cbr.submit(&op, &intent).await.unwrap_err();
    assert!(e.maybe_applied, "{e}");
    let mut h = None;
    for _ in 0..100 {
        match t.cbr.reconcile(&op, &intent).await.unwrap() {
            Reconciled::Submitted(x) => {
                h = Some(x);
                break;
            }
            Reconciled::NotSubmitted => {}
            Reconciled::Unknown(why) => panic!("{why}"),
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut h = h.expect("reconciled");
    assert!(h.state.contains("op_log_id"));
    assert!(succeeded(&t.follow(&op, &intent, &mut h).await.unwrap()));
    assert_eq!(t.sim.counters().restore_submits, 1);

    // The next restore's reconcile does not take this one for its own.
    let intent = t.intent(&op).await;
    assert_eq!(
        t.cbr.reconcile(&op, &intent).await.unwrap(),
        Reconciled::NotSubmitted
    );
}

#[tokio::test]
async fn a_restore_found_outside_the_window_is_unknown_and_says_what_to_check() {
    let t = start(|_| {}).await;
    let op = t.seed_restore();
    let mut intent = t.cbr.prepare(&op).await.unwrap();
    t.sim.add_op_log(
        "restore",
        &t.ids.server_backup_id,
        &t.ids.server_id,
        "success",
        Duration::ZERO,
    );
    // Recorded an hour after the trace appeared: not ours.
    intent.recorded_at = Some(Utc::now() + chrono::Duration::hours(1));
    match t.cbr.reconcile(&op, &intent).await.unwrap() {
        Reconciled::Unknown(why) => {
            assert!(why.contains(&t.ids.server_id), "{why}");
            assert!(why.contains("operation-logs"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn check_names_the_fields() {
    let cbr = CbrV3::new(CbrConfig {
        endpoint: "https://cbr.example.com".into(),
        project_id: "f841e01fd2b14e7fa41b6ae7aa6b0594".into(),
        vault_id: Some("3b5816b5-f29c-4172-9d9a-76c719a659ce".into()),
        auth: KeystoneAuth::Fixed("t".to_string().into()),
        timeout: Duration::from_secs(1),
    })
    .unwrap();
    let fields =
        |op: Operation| -> Vec<String> { cbr.check(&op).into_iter().map(|v| v.field).collect() };
    let server = Resource {
        kind: ResourceKind::Server,
        id: "94eba8b2-acc9-4d82-badc-127144cc5526".into(),
    };
    let volume = Resource {
        kind: ResourceKind::Volume,
        id: "eccbcfdd-f843-4bbb-b2c0-a5ce861f9376".into(),
    };
    let m = |v: &str| VolumeMapping {
        backup_id: "5d822633-2bbf-4af8-a16e-5ab1c7705235".into(),
        volume_id: v.into(),
    };
    // Server: mappings required, no volume twice, backup_id required.
    assert_eq!(
        fields(Operation::Restore {
            resource: server.clone(),
            spec: RestoreSpec::default()
        }),
        ["backup_id", "mappings"]
    );
    assert_eq!(
        fields(Operation::Restore {
            resource: server.clone(),
            spec: RestoreSpec {
                backup_id: Some("b".into()),
                mappings: vec![m("v1"), m("v1")],
                ..Default::default()
            }
        }),
        ["mappings"]
    );
    // Volume: no mappings, no power_on.
    assert_eq!(
        fields(Operation::Restore {
            resource: volume.clone(),
            spec: RestoreSpec {
                backup_id: Some("b".into()),
                mappings: vec![m("v1")],
                power_on: Some(false),
                ..Default::default()
            }
        }),
        ["mappings", "power_on"]
    );
    // Unsupported restore fields and bad ids.
    assert_eq!(
        fields(Operation::Restore {
            resource: volume.clone(),
            spec: RestoreSpec {
                backup_id: Some("b/../x".into()),
                point_in_time: Some(Utc::now()),
                restore_point: Some("p".into()),
                source: Some(volume.clone()),
                ..Default::default()
            }
        }),
        ["point_in_time", "restore_point", "source", "backup_id"]
    );
    assert_eq!(
        fields(Operation::CreateBackup {
            resource: Resource {
                kind: ResourceKind::ServiceInstance,
                id: "x y".into()
            },
            incremental: false,
        }),
        ["target", "target"]
    );
    let caps = cbr.capabilities();
    assert!(caps.create_backup && caps.restore && caps.restore_mappings && caps.delete_backup);
    assert!(!caps.point_in_time_restore && !caps.cross_instance_restore && !caps.cancel_running);
}

#[tokio::test]
async fn a_revoked_token_before_the_submit_is_refreshed_once_and_reads_survive_faults() {
    let t = start(|c| c.restore_duration = Duration::from_millis(600)).await;
    let op = t.seed_restore();
    let intent = t.intent(&op).await;
    // The cached token is refused (401 APIGW.0301): one fresh token, one
    // restore.
    t.sim.keystone().revoke_all();
    let mut h = t.cbr.submit(&op, &intent).await.unwrap();
    assert_eq!(t.sim.counters().restore_submits, 1);
    // Reads meet 500 BackupService.0002, plain 503 and 429 APIG.0308.
    t.sim.configure(|c| {
        c.error_rate = 0.3;
        c.throttle_rate = 0.2;
    });
    let p = t.follow(&op, &intent, &mut h).await.unwrap();
    assert!(succeeded(&p), "{p:?}");
    assert!(t.sim.counters().faults > 0);
    assert_eq!(t.sim.counters().restore_submits, 1);
}

/// Review finding: with two restores of the same backup onto the same
/// target since the submit (someone else's too), poll pinned the oldest
/// and could report the other one's result as ours. Now it says it cannot
/// tell.
#[tokio::test]
async fn two_candidate_restores_are_outcome_unknown_not_adopted() {
    let t = start(|c| c.op_log_delay = Duration::from_millis(300)).await;
    let op = t.seed_restore();
    let intent = t.intent(&op).await;
    let h = t.cbr.submit(&op, &intent).await.unwrap();
    // Someone else's restore of the same backup onto the same server.
    t.sim.add_op_log(
        "restore",
        &t.ids.server_backup_id,
        &t.ids.server_id,
        "success",
        Duration::ZERO,
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    match t.cbr.poll(&op, &intent, &h).await.unwrap() {
        Progress::Failed(e) => {
            assert_eq!(e.kind, ErrorKind::OutcomeUnknown, "{e}");
            assert!(e.message.contains("check the target"), "{e}");
        }
        other => panic!("adopted an operation: {other:?}"),
    }
}
