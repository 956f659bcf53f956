//! The CF adapter against its simulator: the backend-level contract, below
//! the daemon.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::{TimeZone, Utc};
use custos_adapter_core::{
    Backend, ErrorKind, Operation, Progress, Reconciled, Resource, ResourceKind, RestoreSpec,
};
use custos_cf_v3::{
    CfAuth, CfConfig, CfV3, Grant,
    sim::{Injection, SimConfig, Simulator},
};

const GUID: &str = "11111111-2222-4333-8444-555555555555";

async fn setup(cfg: SimConfig, grant: Grant) -> (Simulator, CfV3) {
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    sim.add_instance(GUID, "db");
    sim.add_backup(GUID, "old-backup", 1_700_000_000);
    let c = sim.config();
    let cf = CfV3::new(CfConfig {
        endpoint: sim.url(),
        auth: CfAuth::Uaa {
            token_url: None,
            client_id: c.client_id,
            client_secret: c.client_secret.into(),
            grant,
        },
        timeout: Duration::from_secs(2),
    })
    .unwrap();
    (sim, cf)
}

fn instance() -> Resource {
    Resource {
        kind: ResourceKind::ServiceInstance,
        id: GUID.into(),
    }
}

async fn drive(cf: &CfV3, op: &Operation) -> Progress {
    let intent = cf.prepare(op).await.unwrap();
    let handle = cf.submit(op, &intent).await.unwrap();
    assert!(handle.display.contains("/v3/jobs/"), "{}", handle.display);
    loop {
        match cf.poll(op, &intent, &handle).await.unwrap() {
            Progress::Running { .. } => tokio::time::sleep(Duration::from_millis(30)).await,
            done => return done,
        }
    }
}

#[tokio::test]
async fn backup_then_restore_with_discovered_uaa() {
    let (sim, cf) = setup(SimConfig::default(), Grant::ClientCredentials).await;
    let op = Operation::CreateBackup {
        resource: instance(),
        incremental: false,
    };
    let Progress::Succeeded {
        backup_id: Some(id),
        ..
    } = drive(&cf, &op).await
    else {
        panic!("backup did not succeed with an id");
    };
    assert_ne!(id, "old-backup");
    assert!(sim.backups(GUID).contains(&id));
    let page = cf.list_backups(&instance(), Some(1), "").await.unwrap();
    assert_eq!(page.backups.len(), 1);
    assert_eq!(page.backups[0].id, id, "newest first");
    // CF takes only `limit`: pages by offset, made by the adapter.
    for i in 0..5 {
        sim.add_backup(GUID, &format!("older-{i}"), 1_600_000_000 + i);
    }
    let all: Vec<String> = cf
        .list_backups(&instance(), None, "")
        .await
        .unwrap()
        .backups
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(all.len(), 7, "{all:?}");
    let (mut paged, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let p = cf.list_backups(&instance(), Some(2), &token).await.unwrap();
        pages += 1;
        paged.extend(p.backups.into_iter().map(|b| b.id));
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    assert_eq!(paged, all, "every backup once, in order");
    assert_eq!(pages, 4);
    assert!(cf.list_backups(&instance(), Some(2), "x").await.is_err());

    let pitr = Operation::Restore {
        resource: instance(),
        spec: RestoreSpec {
            point_in_time: Utc.timestamp_opt(1_700_000_100, 0).single(),
            restore_point: Some("pitr".into()),
            ..Default::default()
        },
    };
    assert!(matches!(
        drive(&cf, &pitr).await,
        Progress::Succeeded { .. }
    ));
    let got = sim.restores();
    assert_eq!(
        got[0].body,
        serde_json::json!({"target_timestamp": "2023-11-14T22:15:00Z", "restore_point": "pitr"})
    );
    assert_eq!(sim.counters().backup_submits, 1);
    assert_eq!(sim.counters().token_grants, 1, "token reused");
}

#[tokio::test]
async fn password_grant_and_expired_tokens_refresh_once() {
    let cfg = SimConfig {
        token_lifetime: Duration::from_secs(1),
        job_duration: Duration::from_millis(50),
        ..Default::default()
    };
    let (sim, cf) = setup(
        cfg,
        Grant::Password {
            username: "admin".into(),
            password: "admin-password".into(),
        },
    )
    .await;
    cf.list_backups(&instance(), None, "").await.unwrap();
    // Past the 1 s lifetime: the client refreshes (at 80 %) or, if the
    // server saw it expire first, gets 401 CF-InvalidAuthToken and retries.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cf.list_backups(&instance(), None, "").await.unwrap();
    assert!(sim.counters().token_grants >= 2);
}

#[tokio::test]
async fn errors_keep_cf_envelope() {
    let (sim, cf) = setup(SimConfig::default(), Grant::ClientCredentials).await;
    let missing = Resource {
        kind: ResourceKind::ServiceInstance,
        id: "99999999-2222-4333-8444-555555555555".into(),
    };
    let e = cf.list_backups(&missing, None, "").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert_eq!(e.details[0].title.as_deref(), Some("CF-ResourceNotFound"));
    sim.inject(Injection {
        method: reqwest::Method::POST,
        path_contains: "/backups".into(),
        status: 403,
        error: custos_cf_v3::sim::cf_error(
            10003,
            "CF-NotAuthorized",
            "You are not authorized to perform the requested action",
        ),
        times: 1,
    });
    let op = Operation::CreateBackup {
        resource: instance(),
        incremental: false,
    };
    let intent = cf.prepare(&op).await.unwrap();
    let e = cf.submit(&op, &intent).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);
    assert!(!e.is_retryable());
    assert_eq!(sim.counters().backup_submits, 0);
}

#[tokio::test]
async fn reconcile_tells_submitted_from_not_submitted() {
    let (sim, cf) = setup(SimConfig::default(), Grant::ClientCredentials).await;
    let op = Operation::CreateBackup {
        resource: instance(),
        incremental: false,
    };
    let intent = cf.prepare(&op).await.unwrap();
    assert_eq!(
        cf.reconcile(&op, &intent).await.unwrap(),
        Reconciled::NotSubmitted
    );
    cf.submit(&op, &intent).await.unwrap();
    let Reconciled::Submitted(h) = cf.reconcile(&op, &intent).await.unwrap() else {
        panic!("submit not recognised");
    };
    loop {
        match cf.poll(&op, &intent, &h).await.unwrap() {
            Progress::Running { .. } => tokio::time::sleep(Duration::from_millis(30)).await,
            Progress::Succeeded { backup_id, .. } => {
                assert!(backup_id.is_some());
                break;
            }
            Progress::Failed(e) => panic!("{e}"),
        }
    }
    assert_eq!(sim.counters().backup_submits, 1);
}

#[tokio::test]
async fn relative_location_and_fixed_token() {
    let cfg = SimConfig {
        relative_location: true,
        static_tokens: vec!["fixed-token".into()],
        ..Default::default()
    };
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    sim.add_instance(GUID, "db");
    let cf = CfV3::new(CfConfig {
        endpoint: sim.url(),
        auth: CfAuth::Token("fixed-token".into()),
        timeout: Duration::from_secs(2),
    })
    .unwrap();
    let op = Operation::CreateBackup {
        resource: instance(),
        incremental: false,
    };
    let Progress::Succeeded {
        backup_id: Some(_), ..
    } = drive(&cf, &op).await
    else {
        panic!("backup did not succeed");
    };
    assert_eq!(sim.counters().token_grants, 0, "no UAA with a fixed token");
}

/// A 202 whose Location cannot be followed is still a submitted operation:
/// followed through last_operation, and the token never goes elsewhere.
#[tokio::test]
async fn unusable_locations_are_followed_through_last_operation() {
    let other = Simulator::start("127.0.0.1:0".parse().unwrap(), SimConfig::default())
        .await
        .unwrap();
    type Set = Box<dyn Fn(&mut SimConfig)>;
    let other_url = other.url();
    let cases: [(&str, Set); 3] = [
        (
            "another origin",
            Box::new(move |c: &mut SimConfig| c.location_base = Some(other_url.clone())),
        ),
        ("none", Box::new(|c: &mut SimConfig| c.omit_location = true)),
        (
            "garbage",
            Box::new(|c: &mut SimConfig| c.raw_location = Some("http://[::1".into())),
        ),
    ];
    for (name, set) in cases {
        let (sim, cf) = setup(
            SimConfig {
                job_duration: Duration::from_millis(100),
                // The CC shows the operation late: until then the old
                // last_operation must not be taken for the end.
                last_operation_delay: Duration::from_millis(300),
                ..Default::default()
            },
            Grant::ClientCredentials,
        )
        .await;
        // An earlier operation that succeeded.
        let op = Operation::CreateBackup {
            resource: instance(),
            incremental: false,
        };
        drive(&cf, &op).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        sim.configure(|c| set(c));
        let intent = cf.prepare(&op).await.unwrap();
        let h = cf.submit(&op, &intent).await.unwrap();
        assert!(
            h.display.contains("last_operation"),
            "{name}: {}",
            h.display
        );
        let mut saw_waiting = false;
        let id = loop {
            match cf.poll(&op, &intent, &h).await.unwrap() {
                Progress::Running { message, .. } => {
                    saw_waiting |= message.contains("waiting for the operation to show");
                    tokio::time::sleep(Duration::from_millis(30)).await
                }
                Progress::Succeeded { backup_id, .. } => break backup_id,
                Progress::Failed(e) => panic!("{name}: {e}"),
            }
        };
        assert!(
            saw_waiting,
            "{name}: the late last_operation was waited for"
        );
        assert!(id.is_some(), "{name}: the new backup was found");
        assert_eq!(sim.counters().backup_submits, 2, "{name}");
    }
    assert_eq!(
        other.counters().requests,
        0,
        "nothing (no token) was sent to the other origin"
    );
}

#[tokio::test]
async fn not_authenticated_refreshes_the_token_once() {
    let (sim, cf) = setup(SimConfig::default(), Grant::ClientCredentials).await;
    cf.list_backups(&instance(), None, "").await.unwrap();
    sim.inject(Injection {
        method: reqwest::Method::POST,
        path_contains: "/backups".into(),
        status: 401,
        error: custos_cf_v3::sim::cf_error(10002, "CF-NotAuthenticated", "Authentication error"),
        times: 1,
    });
    let op = Operation::CreateBackup {
        resource: instance(),
        incremental: false,
    };
    let intent = cf.prepare(&op).await.unwrap();
    cf.submit(&op, &intent).await.unwrap();
    assert_eq!(sim.counters().token_grants, 2, "refreshed once");
    assert_eq!(sim.counters().backup_submits, 1);
}

#[tokio::test]
async fn retry_after_in_epoch_milliseconds_is_a_short_delay() {
    let (sim, cf) = setup(
        SimConfig {
            retry_after_millis: true,
            ..Default::default()
        },
        Grant::ClientCredentials,
    )
    .await;
    sim.inject(Injection {
        method: reqwest::Method::POST,
        path_contains: "/backups".into(),
        status: 429,
        error: custos_cf_v3::sim::cf_error(10013, "CF-RateLimitExceeded", "Rate Limit Exceeded"),
        times: 1,
    });
    let op = Operation::CreateBackup {
        resource: instance(),
        incremental: false,
    };
    let intent = cf.prepare(&op).await.unwrap();
    let e = cf.submit(&op, &intent).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Throttled);
    assert!(!e.maybe_applied, "CF's 429 is before processing");
    let ra = e.retry_after.expect("Retry-After parsed");
    assert!(ra <= Duration::from_secs(2), "{ra:?}");
}

fn restore_op() -> Operation {
    Operation::Restore {
        resource: instance(),
        spec: RestoreSpec {
            backup_id: Some("old-backup".into()),
            ..Default::default()
        },
    }
}

/// Review finding: a restore someone ran by hand hours after the intent
/// (the daemon was down) was taken for ours. A trace counts only within
/// the submit's window after the intent.
#[tokio::test]
async fn a_trace_long_after_the_intent_is_not_ours() {
    let (sim, cf) = setup(SimConfig::default(), Grant::ClientCredentials).await;
    let op = restore_op();
    let mut intent = cf.prepare(&op).await.unwrap();
    sim.foreign_last_operation(GUID, "restore", "in progress", Duration::ZERO);
    intent.recorded_at = Some(Utc::now() - chrono::Duration::hours(2));
    let r = cf.reconcile(&op, &intent).await.unwrap();
    assert!(matches!(r, Reconciled::Unknown(_)), "{r:?}");
    intent.recorded_at = Some(Utc::now() - chrono::Duration::seconds(1));
    let r = cf.reconcile(&op, &intent).await.unwrap();
    assert!(matches!(r, Reconciled::Submitted(_)), "{r:?}");
}

/// Review finding: while following an operation through `last_operation`,
/// another operation replacing it was reported as ours. The followed one
/// is pinned by its `created_at`.
#[tokio::test]
async fn a_followed_operation_replaced_by_another_is_outcome_unknown() {
    let (sim, cf) = setup(SimConfig::default(), Grant::ClientCredentials).await;
    let op = restore_op();
    let mut intent = cf.prepare(&op).await.unwrap();
    intent.recorded_at = Some(Utc::now());
    sim.foreign_last_operation(GUID, "restore", "in progress", Duration::ZERO);
    let Reconciled::Submitted(handle) = cf.reconcile(&op, &intent).await.unwrap() else {
        panic!("our trace")
    };
    let Progress::Running {
        handle: Some(pinned),
        ..
    } = cf.poll(&op, &intent, &handle).await.unwrap()
    else {
        panic!("the first poll pins the operation")
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    sim.foreign_last_operation(GUID, "update", "succeeded", Duration::ZERO);
    match cf.poll(&op, &intent, &pinned).await.unwrap() {
        Progress::Failed(e) => {
            assert_eq!(e.kind, ErrorKind::OutcomeUnknown, "{e}");
            assert!(e.message.contains("check the instance"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

/// The benchmark of issue 12 (P4) seeds a daemon's store with jobs that a
/// simulator must know as running: `add_running_job` makes one, the
/// adapter polls it through the stored handle shape, and the simulator
/// counts the job polled (once, however often).
#[tokio::test]
async fn a_job_added_as_running_is_polled_and_counted() {
    let (sim, cf) = setup(SimConfig::default(), Grant::ClientCredentials).await;
    let job = "99999999-0000-4000-8000-000000000001";
    let url = sim
        .add_running_job(GUID, job, Duration::from_secs(3600))
        .unwrap();
    assert!(sim.busy(GUID));
    assert!(
        sim.add_running_job(GUID, "another", Duration::from_secs(1))
            .is_none(),
        "the instance is busy"
    );
    assert!(
        sim.add_running_job("unknown", job, Duration::ZERO)
            .is_none(),
        "no such instance"
    );
    let op = Operation::CreateBackup {
        resource: instance(),
        incremental: false,
    };
    let intent = cf.prepare(&op).await.unwrap();
    let handle = custos_adapter_core::RemoteHandle {
        display: url.clone(),
        state: serde_json::json!({"watch": "job", "url": url}).to_string(),
    };
    assert_eq!(sim.job_polls(job), Some(0));
    for _ in 0..2 {
        match cf.poll(&op, &intent, &handle).await.unwrap() {
            Progress::Running { message, .. } => assert!(message.contains(job), "{message}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sim.job_polls(job), Some(2));
    let c = sim.counters();
    assert_eq!((c.job_polls, c.jobs_polled, c.backup_submits), (2, 1, 0));
}
