//! Bad input is refused with the field named, and the daemon keeps serving.

use custos::api::pb;
use custos_cf_v3::sim::SimConfig;
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn bad_input_names_the_field() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;

    let bad_targets = [
        "",
        "backends/cf",
        "backends/cf/serviceInstances/",
        "backends/cf/serviceInstances/has space",
        "backends/CF/serviceInstances/x",
        "backends/cf/volumes/x", // CF has no volumes
        "jobs/123",
    ];
    for t in bad_targets {
        let e = c
            .create_backup(pb::CreateBackupRequest {
                target: t.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{t:?}: {e:?}");
        assert_eq!(violations(&e), vec!["target"], "{t:?}");
    }
    let huge = format!("backends/cf/serviceInstances/{}", "a".repeat(100_000));
    let e = c
        .create_backup(pb::CreateBackupRequest {
            target: huge,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().len() < 1000, "input is not echoed whole");

    let e = c
        .create_backup(pb::CreateBackupRequest {
            target: "backends/nope/serviceInstances/x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("nope"));

    let mut r = backup_req(0, &"x".repeat(500));
    let e = c.create_backup(r.clone()).await.unwrap_err();
    assert_eq!(violations(&e), vec!["request_id"]);
    r.request_id = String::new();
    r.labels.insert("Bad Key".into(), "v".into());
    let e = c.create_backup(r).await.unwrap_err();
    assert!(violations(&e)[0].starts_with("labels["), "{e:?}");

    // CF makes full backups only.
    let mut r = backup_req(0, "");
    r.incremental = true;
    let e = c.create_backup(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violations(&e), vec!["incremental"]);
    assert!(e.message().contains("incremental"), "{e:?}");

    // Restore fields a CF backend cannot honour, a future time, empty ids.
    let mut r = restore_req(0);
    r.mappings.push(pb::VolumeMapping {
        backup_id: "b".into(),
        volume_id: "v".into(),
    });
    r.backup_id = "seed-0".into();
    let e = c.restore(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violations(&e), vec!["mappings"]);

    let mut r = restore_req(0);
    r.power_on = Some(false);
    r.resource_id = "r1".into();
    r.backup_id = "seed-0".into();
    let v = violations(&c.restore(r).await.unwrap_err());
    assert!(
        v.contains(&"power_on".to_string()) && v.contains(&"resource_id".to_string()),
        "{v:?}"
    );

    let mut r = restore_req(0);
    r.point_in_time = Some(prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 3600,
        nanos: 0,
    });
    let e = c.restore(r).await.unwrap_err();
    assert!(
        violations(&e).contains(&"point_in_time".to_string()),
        "{e:?}"
    );
    assert!(e.message().contains("future"));

    let e = c.restore(restore_req(0)).await.unwrap_err();
    assert_eq!(
        violations(&e),
        vec!["backup_id"],
        "CF needs a backup or a time"
    );

    let mut r = restore_req(0);
    r.backup_id = "seed-0".into();
    r.source = "backends/other/serviceInstances/x".into();
    assert_eq!(violations(&c.restore(r).await.unwrap_err()), vec!["source"]);

    let e = c
        .delete_backup(pb::DeleteBackupRequest {
            target: target(0),
            backup_id: String::new(),
            request_id: String::new(),
            validate_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["backup_id"]);
    let e = c
        .delete_backup(pb::DeleteBackupRequest {
            target: target(0),
            backup_id: "seed-0".into(),
            request_id: String::new(),
            validate_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "CF cannot delete backups"
    );

    for name in ["", "jobs/", "jobs/not-a-uuid", "x"] {
        let e = c
            .get_job(pb::GetJobRequest { name: name.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name:?}");
        assert_eq!(violations(&e), vec!["name"]);
    }
    let e = c
        .get_job(pb::GetJobRequest {
            name: "jobs/01a202f1-e91d-738c-a655-3c2fc4c5a467".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .list_jobs(pb::ListJobsRequest {
            filter: "colour=red".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["filter"]);
    let e = c
        .list_jobs(pb::ListJobsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["page_token"]);

    // Nothing reached the backend, and the daemon still serves.
    assert_eq!(
        sim.counters().backup_submits + sim.counters().restore_submits,
        0
    );
    let ok = start_backup(&mut c, 0, "").await;
    assert_eq!(
        state(&wait_done(&mut c, &ok.name, std::time::Duration::from_secs(30)).await),
        "SUCCEEDED"
    );
}
