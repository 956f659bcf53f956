//! The CBR simulator over HTTP, with reqwest: the API reference's example
//! restore, the restore preconditions and their codes, op-logs through
//! their states, checkpoint → backup → list → delete, auth, and faults.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use custos_cbr_v3::{
    sim::{DemoIds, Injection, PostFault, RestoreEnd, SimConfig, Simulator},
    wire::{BackupEnvelope, BackupList, ErrorBody, OperationLog, OperationLogList},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The example request of `shared/seeds/cbr-v3-restore-backup.txt`
/// (`POST /v3/f841e01fd2b14e7fa41b6ae7aa6b0594/backups/a5200268-…/restore`),
/// verbatim.
const SEED_BODY: &str = r#"{
  "restore" : {
    "mappings" : [ {
      "backup_id" : "5d822633-2bbf-4af8-a16e-5ab1c7705235",
      "volume_id" : "eccbcfdd-f843-4bbb-b2c0-a5ce861f9376"
    } ],
    "power_on" : true,
    "server_id" : "94eba8b2-acc9-4d82-badc-127144cc5526"
  }
}"#;
const SEED_PROJECT: &str = "f841e01fd2b14e7fa41b6ae7aa6b0594";
const SEED_BACKUP: &str = "a5200268-74a5-4806-acc6-95793ab0228b";

struct T {
    sim: Simulator,
    ids: DemoIds,
    http: reqwest::Client,
    token: String,
}

async fn token(sim: &Simulator) -> String {
    let c = sim.config();
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": c.user_name, "password": c.password, "domain": {"name": c.user_domain}}}},
        "scope": {"project": {"id": c.project_id}}}});
    let r = reqwest::Client::new()
        .post(format!("{}/auth/tokens", sim.auth_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.headers()["x-subject-token"].to_str().unwrap().to_string()
}

async fn start(f: impl FnOnce(&mut SimConfig)) -> T {
    let mut cfg = SimConfig::default();
    f(&mut cfg);
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let ids = sim.seed_demo();
    let token = token(&sim).await;
    T {
        sim,
        ids,
        http: reqwest::Client::new(),
        token,
    }
}

impl T {
    fn url(&self, rest: &str) -> String {
        format!("{}/v3/{}/{rest}", self.sim.url(), self.ids.project_id)
    }

    async fn send(&self, method: Method, rest: &str, body: Option<Value>) -> reqwest::Response {
        let mut rb = self
            .http
            .request(method, self.url(rest))
            .header("x-auth-token", &self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        rb.send().await.unwrap()
    }

    async fn get<R: serde::de::DeserializeOwned>(&self, rest: &str) -> R {
        let r = self.send(Method::GET, rest, None).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {rest}");
        r.json().await.unwrap()
    }

    /// Status and error code of a restore.
    async fn restore(&self, backup_id: &str, body: Value) -> (StatusCode, String) {
        let r = self
            .send(
                Method::POST,
                &format!("backups/{backup_id}/restore"),
                Some(body),
            )
            .await;
        let status = r.status();
        let code = if status == StatusCode::ACCEPTED {
            assert!(r.bytes().await.unwrap().is_empty(), "202 has no body");
            String::new()
        } else {
            r.json::<ErrorBody>().await.unwrap().error_code
        };
        (status, code)
    }

    fn server_restore(&self) -> Value {
        json!({"restore": {"server_id": self.ids.server_id, "power_on": true,
            "mappings": [{"backup_id": self.ids.data_child_id, "volume_id": self.ids.data_volume_id}]}})
    }

    fn disk_restore(&self, volume_id: &str) -> Value {
        json!({"restore": {"volume_id": volume_id}})
    }

    async fn restore_logs(&self) -> Vec<OperationLog> {
        self.get::<OperationLogList>("operation-logs?operation_type=restore")
            .await
            .operation_logs
    }

    /// Waits for the newest restore op-log to end.
    async fn restore_end(&self) -> OperationLog {
        for _ in 0..200 {
            let logs = self.restore_logs().await;
            if let Some(l) = logs.first()
                && matches!(
                    l.status.as_str(),
                    "success" | "failed" | "timeout" | "skipped"
                )
            {
                return l.clone();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the restore did not end");
    }
}

#[tokio::test]
async fn the_seed_example_is_accepted_and_runs_to_success() {
    let t = start(|c| c.restore_duration = Duration::from_millis(600)).await;
    assert_eq!(t.ids.project_id, SEED_PROJECT);
    assert_eq!(t.ids.server_backup_id, SEED_BACKUP);
    let r = t
        .http
        .post(t.url(&format!("backups/{SEED_BACKUP}/restore")))
        .header("x-auth-token", &t.token)
        .header("content-type", "application/json")
        .body(SEED_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(r.bytes().await.unwrap().is_empty());

    let got = t.sim.restores();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].backup_id, SEED_BACKUP);
    assert_eq!(got[0].status, 202);
    assert_eq!(
        got[0].body,
        serde_json::from_str::<Value>(SEED_BODY).unwrap()
    );
    assert_eq!(t.sim.counters().restore_submits, 1);

    let b: BackupEnvelope = t.get(&format!("backups/{SEED_BACKUP}")).await;
    assert_eq!(b.backup.status, "restoring");
    assert_eq!(b.backup.children.len(), 2);
    let first = t.restore_logs().await;
    assert_eq!(first.len(), 1);
    assert!(matches!(first[0].status.as_str(), "waiting" | "running"));
    // While it runs, the server is busy: a disk restore onto its volume waits.
    let (s, code) = t
        .restore(&t.ids.disk_backup_id, t.disk_restore(&t.ids.data_volume_id))
        .await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::BAD_REQUEST, "BackupService.2010")
    );

    let end = t.restore_end().await;
    assert_eq!(end.status, "success");
    assert_eq!(end.operation_type, "restore");
    let info = end.extra_info.restore.clone().unwrap();
    assert_eq!(info.backup_id, SEED_BACKUP);
    assert_eq!(info.target_resource_id, t.ids.server_id);
    assert_eq!(info.target_resource_name, "ecs-1f0f-0002");
    assert_eq!(end.extra_info.common.clone().unwrap().progress, 100);
    assert!(end.started_at.is_some() && end.ended_at.is_some());
    assert!(end.created_at.ends_with("+00:00"), "{}", end.created_at);
    let one: Value = t.get(&format!("operation-logs/{}", end.id)).await;
    assert_eq!(one["operation_log"]["status"], "success");
    let b: BackupEnvelope = t.get(&format!("backups/{SEED_BACKUP}")).await;
    assert_eq!(b.backup.status, "available");
    assert!(t.sim.counters().op_log_polls >= 2);
}

#[tokio::test]
async fn each_precondition_has_its_code() {
    let t = start(|c| c.restore_duration = Duration::from_secs(30)).await;
    let ids = t.ids.clone();
    let bad = StatusCode::BAD_REQUEST;
    let nf = StatusCode::NOT_FOUND;
    let check = |got: (StatusCode, String), status: StatusCode, code: &str| {
        assert_eq!((got.0, got.1.as_str()), (status, code));
    };

    check(
        t.restore("nope", t.server_restore()).await,
        nf,
        "BackupService.6200",
    );

    t.sim.set_backup_status(&ids.server_backup_id, "error");
    check(
        t.restore(&ids.server_backup_id, t.server_restore()).await,
        bad,
        "BackupService.2005",
    );
    t.sim.set_backup_status(&ids.server_backup_id, "available");

    // Server backups: server_id and mappings required, mapped to children
    // and existing volumes, onto the same server in a good state.
    let sb = &ids.server_backup_id;
    let no_server = json!({"restore": {"mappings": [{"backup_id": ids.data_child_id, "volume_id": ids.data_volume_id}]}});
    check(t.restore(sb, no_server).await, bad, "BackupService.0001");
    let no_map = json!({"restore": {"server_id": ids.server_id}});
    check(t.restore(sb, no_map).await, bad, "BackupService.0001");
    let foreign_child = json!({"restore": {"server_id": ids.server_id,
        "mappings": [{"backup_id": ids.disk_backup_id, "volume_id": ids.data_volume_id}]}});
    check(
        t.restore(sb, foreign_child).await,
        bad,
        "BackupService.6217",
    );
    let no_volume = json!({"restore": {"server_id": ids.server_id,
        "mappings": [{"backup_id": ids.data_child_id, "volume_id": "gone"}]}});
    check(t.restore(sb, no_volume).await, nf, "BackupService.6302");
    let no_such_server = json!({"restore": {"server_id": "gone",
        "mappings": [{"backup_id": ids.data_child_id, "volume_id": ids.data_volume_id}]}});
    check(
        t.restore(sb, no_such_server).await,
        nf,
        "BackupService.6302",
    );
    t.sim.add_server("other", "ecs-other", "ACTIVE", &[]);
    let other = json!({"restore": {"server_id": "other",
        "mappings": [{"backup_id": ids.data_child_id, "volume_id": ids.data_volume_id}]}});
    check(t.restore(sb, other).await, bad, "BackupService.2003");
    t.sim.set_server_status(&ids.server_id, "ERROR");
    check(
        t.restore(sb, t.server_restore()).await,
        bad,
        "BackupService.2008",
    );
    t.sim.set_server_status(&ids.server_id, "DELETED");
    check(
        t.restore(sb, t.server_restore()).await,
        bad,
        "BackupService.2007",
    );
    t.sim.set_server_status(&ids.server_id, "SHUTOFF");

    // Disk backups: volume_id required, big enough, in a good state.
    let db = &ids.disk_backup_id;
    check(
        t.restore(db, json!({"restore": {}})).await,
        bad,
        "BackupService.0001",
    );
    check(
        t.restore(db, t.disk_restore("gone")).await,
        nf,
        "BackupService.6302",
    );
    t.sim.add_volume("small", "small", 10, "available", None);
    check(
        t.restore(db, t.disk_restore("small")).await,
        bad,
        "BackupService.2001",
    );
    t.sim.add_volume("broken", "broken", 200, "error", None);
    check(
        t.restore(db, t.disk_restore("broken")).await,
        bad,
        "BackupService.2011",
    );
    check(
        t.restore(db, json!("not an object")).await,
        bad,
        "BackupService.0001",
    );

    t.sim
        .add_volume("bigsys", "bigsys", 200, "in-use", Some("s2"));
    t.sim.add_server("s2", "ecs-s2", "ACTIVE", &["bigsys"]);
    check(
        t.restore(db, t.disk_restore("bigsys")).await,
        bad,
        "BackupService.2013",
    );

    // A restore running on the target: 2010 (the data child onto the data
    // disk while the disk backup is restored onto it).
    t.sim.add_volume("spare", "spare", 100, "available", None);
    check(
        t.restore(db, t.disk_restore(&ids.data_volume_id)).await,
        StatusCode::ACCEPTED,
        "",
    );
    check(
        t.restore(&ids.data_child_id, t.disk_restore(&ids.data_volume_id))
            .await,
        bad,
        "BackupService.2010",
    );
    // The same backup again: it is `restoring`.
    check(
        t.restore(db, t.disk_restore("spare")).await,
        bad,
        "BackupService.2005",
    );
    assert_eq!(t.sim.counters().restore_submits, 1);
    assert_eq!(t.sim.restores().len(), 19);
}

#[tokio::test]
async fn a_backup_running_on_the_resource_refuses_restores_with_2002() {
    let t = start(|c| c.backup_duration = Duration::from_secs(30)).await;
    let r = t
        .send(
            Method::POST,
            "checkpoints",
            Some(json!({"checkpoint": {"vault_id": t.ids.vault_id,
                "parameters": {"resources": [t.ids.server_id], "name": "nightly"}}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (s, code) = t
        .restore(&t.ids.disk_backup_id, t.disk_restore(&t.ids.data_volume_id))
        .await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::BAD_REQUEST, "BackupService.2002")
    );
    let (s, code) = t.restore(&t.ids.server_backup_id, t.server_restore()).await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::BAD_REQUEST, "BackupService.2002")
    );
}

#[tokio::test]
async fn a_restore_op_log_can_end_failed_timeout_or_skipped() {
    let t = start(|c| c.restore_duration = Duration::from_millis(100)).await;
    let ends = [
        (
            RestoreEnd::Failed {
                code: "BackupService.4004".into(),
                message: "the disk could not be written".into(),
            },
            "failed",
        ),
        (RestoreEnd::Timeout, "timeout"),
        (RestoreEnd::Skipped, "skipped"),
    ];
    for (end, want) in ends {
        t.sim.end_next_restore(end);
        let (s, _) = t
            .restore(&t.ids.disk_backup_id, t.disk_restore(&t.ids.data_volume_id))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
        let log = t.restore_end().await;
        assert_eq!(log.status, want);
        let info = log.error_info.unwrap();
        assert!(!info.message.is_empty());
        if want == "failed" {
            assert_eq!(info.code, "BackupService.4004");
        }
        let b: BackupEnvelope = t.get(&format!("backups/{}", t.ids.disk_backup_id)).await;
        assert_eq!(b.backup.status, "available");
    }
    // The next one succeeds again.
    let (s, _) = t
        .restore(&t.ids.disk_backup_id, t.disk_restore(&t.ids.data_volume_id))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(t.restore_end().await.status, "success");
    assert_eq!(t.restore_logs().await.len(), 4);
}

#[tokio::test]
async fn checkpoint_makes_a_backup_that_is_listed_and_deleted() {
    let t = start(|c| {
        c.backup_duration = Duration::from_millis(200);
        c.delete_duration = Duration::from_millis(200);
    })
    .await;
    let r = t
        .send(
            Method::POST,
            "checkpoints",
            Some(json!({"checkpoint": {"vault_id": "nope", "parameters": {"resources": [t.ids.server_id]}}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<ErrorBody>().await.unwrap().error_code,
        "BackupService.6100"
    );

    let r = t
        .send(
            Method::POST,
            "checkpoints",
            Some(json!({"checkpoint": {"vault_id": t.ids.vault_id, "parameters": {
                "resources": [t.ids.server_id], "name": "nightly", "description": "d", "incremental": true}}})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let cp: Value = r.json().await.unwrap();
    let cp = &cp["checkpoint"];
    assert_eq!(cp["status"], "protecting");
    assert_eq!(cp["vault"]["resources"][0]["id"], t.ids.server_id.as_str());
    assert_eq!(cp["vault"]["resources"][0]["type"], "OS::Nova::Server");
    assert_eq!(cp["extra_info"]["name"], "nightly");
    let cp_id = cp["id"].as_str().unwrap().to_string();
    assert_eq!(t.sim.counters().checkpoint_submits, 1);

    let logs: OperationLogList = t.get("operation-logs?operation_type=backup").await;
    assert_eq!(logs.count, 1);
    let new_id = logs.operation_logs[0]
        .extra_info
        .backup
        .clone()
        .unwrap()
        .backup_id;

    let mut backup = None;
    for _ in 0..100 {
        let l: BackupList = t.get(&format!("backups?checkpoint_id={cp_id}")).await;
        if l.backups.first().is_some_and(|b| b.status == "available") {
            backup = l.backups.first().cloned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backup = backup.expect("the backup became available");
    assert_eq!(backup.id, new_id);
    assert_eq!(backup.resource_type, "OS::Nova::Server");
    assert_eq!(backup.provider_id, "0daac4c5-6707-4851-97ba-169e36266b66");
    assert_eq!(backup.resource_size, 140);
    assert_eq!(backup.children.len(), 2);
    assert!(backup.children.iter().all(|c| c.status == "available"
        && c.resource_type == "OS::Cinder::Volume"
        && c.parent_id.as_deref() == Some(new_id.as_str())));
    let cp: Value = t.get(&format!("checkpoints/{cp_id}")).await;
    assert_eq!(cp["checkpoint"]["status"], "available");
    let logs: OperationLogList = t.get("operation-logs?operation_type=backup").await;
    assert_eq!(logs.operation_logs[0].status, "success");

    // Listed, newest first, with pages.
    let l: BackupList = t
        .get(&format!("backups?resource_id={}", t.ids.server_id))
        .await;
    assert_eq!(l.count, 2);
    assert_eq!(l.backups[0].id, new_id);
    let l: BackupList = t
        .get(&format!(
            "backups?resource_id={}&limit=1&offset=1",
            t.ids.server_id
        ))
        .await;
    assert_eq!((l.count, l.limit, l.offset, l.backups.len()), (2, 1, 1, 1));
    assert_eq!(l.backups[0].id, t.ids.server_backup_id);
    let r = t.send(Method::GET, "backups?limit=0", None).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Deleted: 204, `deleting`, then gone.
    let r = t
        .send(Method::DELETE, &format!("backups/{new_id}"), None)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(t.sim.counters().delete_submits, 1);
    let b: BackupEnvelope = t.get(&format!("backups/{new_id}")).await;
    assert_eq!(b.backup.status, "deleting");
    let mut gone = false;
    for _ in 0..100 {
        let r = t
            .send(Method::GET, &format!("backups/{new_id}"), None)
            .await;
        if r.status() == StatusCode::NOT_FOUND {
            assert_eq!(
                r.json::<ErrorBody>().await.unwrap().error_code,
                "BackupService.6200"
            );
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone);
    let logs: OperationLogList = t.get("operation-logs?operation_type=delete").await;
    assert_eq!(logs.operation_logs[0].status, "success");
    assert_eq!(
        logs.operation_logs[0]
            .extra_info
            .delete
            .clone()
            .unwrap()
            .backup_id,
        new_id
    );
    let r = t.send(Method::GET, "operation-logs/nope", None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn missing_expired_and_foreign_tokens_are_refused() {
    let t = start(|_| {}).await;
    let r = t.http.get(t.url("backups")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let e: ErrorBody = r.json().await.unwrap();
    assert_eq!(e.error_code, "APIGW.0301");
    assert_eq!(
        e.error_msg,
        "Incorrect IAM authentication information: decrypt token fail"
    );
    assert!(e.request_id.is_some());

    t.sim
        .keystone()
        .set_token_lifetime(Duration::from_millis(200));
    let short = token(&t.sim).await;
    let ok = t
        .http
        .get(t.url("backups"))
        .header("x-auth-token", &short)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = t
        .http
        .post(t.url(&format!("backups/{SEED_BACKUP}/restore")))
        .header("x-auth-token", &short)
        .body(SEED_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<ErrorBody>().await.unwrap().error_code,
        "APIGW.0301"
    );
    assert_eq!(t.sim.counters().restore_submits, 0);

    let r = t
        .http
        .get(format!("{}/v3/someone-else/backups", t.sim.url()))
        .header("x-auth-token", &t.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn injected_429_then_accepted() {
    let t = start(|_| {}).await;
    t.sim.inject(Injection {
        method: Method::POST,
        path_contains: "/restore".into(),
        status: 429,
        error_code: "APIG.0308".into(),
        error_msg: "The throttling threshold has been reached".into(),
        times: 1,
    });
    let (s, code) = t.restore(&t.ids.server_backup_id, t.server_restore()).await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "APIG.0308")
    );
    assert_eq!(t.sim.counters().restore_submits, 0);
    let (s, _) = t.restore(&t.ids.server_backup_id, t.server_restore()).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let c = t.sim.counters();
    assert_eq!((c.restore_submits, c.faults), (1, 1));
}

#[tokio::test]
async fn armed_504_html_is_applied_and_rates_fault() {
    let t = start(|c| c.restore_duration = Duration::from_secs(30)).await;
    t.sim.arm_apply_then_html("/restore", 504, 1);
    let r = t
        .send(
            Method::POST,
            &format!("backups/{}/restore", t.ids.server_backup_id),
            Some(t.server_restore()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.text().await.unwrap().contains("<html>"));
    assert_eq!(t.sim.counters().restore_submits, 1);
    let b = t.sim.backup(&t.ids.server_backup_id).unwrap();
    assert_eq!(b.status, "restoring");
    assert_eq!(t.restore_logs().await.len(), 1);

    t.sim.configure(|c| c.throttle_rate = 1.0);
    let r = t.send(Method::GET, "backups", None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json::<ErrorBody>().await.unwrap().error_code, "APIG.0308");
    t.sim.configure(|c| {
        c.throttle_rate = 0.0;
        c.error_rate = 1.0;
    });
    let r = t.send(Method::GET, "backups", None).await;
    assert!(matches!(r.status().as_u16(), 500 | 503));
    t.sim.configure(|c| c.error_rate = 0.0);
    let r = t.send(Method::GET, "backups", None).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[test]
fn the_wire_restore_body_round_trips_the_seed_and_leaves_absent_fields_out() {
    use custos_cbr_v3::wire::{BackupRestore, RestoreMapping, RestoreRequest};
    let seed: Value = serde_json::from_str(SEED_BODY).unwrap();
    let req: RestoreRequest = serde_json::from_value(seed.clone()).unwrap();
    assert_eq!(serde_json::to_value(&req).unwrap(), seed);
    let disk = RestoreRequest {
        restore: BackupRestore {
            volume_id: Some("v".into()),
            ..Default::default()
        },
    };
    assert_eq!(
        serde_json::to_value(&disk).unwrap(),
        json!({"restore": {"volume_id": "v"}})
    );
    let m = RestoreMapping {
        backup_id: "b".into(),
        volume_id: "v".into(),
    };
    assert_eq!(
        serde_json::to_value(&m).unwrap(),
        json!({"backup_id": "b", "volume_id": "v"})
    );
}

#[tokio::test]
async fn power_on_false_leaves_the_server_shutoff() {
    let t = start(|c| c.restore_duration = Duration::from_millis(100)).await;
    let mut body = t.server_restore();
    body["restore"]["power_on"] = json!(false);
    let (s, _) = t.restore(&t.ids.server_backup_id, body).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(t.restore_end().await.status, "success");
    assert_eq!(t.sim.server_status(&t.ids.server_id).unwrap(), "SHUTOFF");
    let (s, _) = t.restore(&t.ids.server_backup_id, t.server_restore()).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(t.restore_end().await.status, "success");
    assert_eq!(t.sim.server_status(&t.ids.server_id).unwrap(), "ACTIVE");
    // start_time filters: none created after now.
    let later = "2999-01-01T00:00:00";
    let l: OperationLogList = t
        .get(&format!(
            "operation-logs?operation_type=restore&start_time={later}"
        ))
        .await;
    assert_eq!(l.count, 0);
    let l: OperationLogList = t
        .get(&format!(
            "operation-logs?resource_id={}&limit=1",
            t.ids.server_id
        ))
        .await;
    assert_eq!((l.count, l.operation_logs.len()), (2, 1));
}

#[tokio::test]
async fn ak_sk_signed_requests_are_accepted() {
    let t = start(|c| c.access_keys = vec!["AK-TEST".into()]).await;
    let signed = |ak: &str| {
        t.http
            .get(t.url("backups"))
            .header(
                "authorization",
                format!(
                    "SDK-HMAC-SHA256 Access={ak}, SignedHeaders=content-type;host;x-project-id;x-sdk-date, Signature=00"
                ),
            )
            .header("x-sdk-date", "20261122T101519Z")
            .header("x-project-id", SEED_PROJECT)
    };
    assert_eq!(
        signed("AK-TEST").send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        signed("AK-OTHER").send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn armed_5xx_and_delay_are_applied_and_op_logs_can_show_late() {
    let t = start(|c| {
        c.restore_duration = Duration::from_secs(30);
        c.op_log_delay = Duration::from_millis(300);
    })
    .await;
    t.sim
        .arm_post("/restore", PostFault::ApplyThenError(500), 1);
    let (s, code) = t.restore(&t.ids.server_backup_id, t.server_restore()).await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "BackupService.0002")
    );
    assert_eq!(t.sim.counters().restore_submits, 1);
    // Not yet in the list, but there.
    assert!(t.restore_logs().await.is_empty());
    assert_eq!(t.sim.operation_logs().len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(t.restore_logs().await.len(), 1);

    t.sim.arm_post(
        "/restore",
        PostFault::ApplyThenDelay(Duration::from_secs(5)),
        1,
    );
    let r = t
        .http
        .post(t.url(&format!("backups/{}/restore", t.ids.disk_backup_id)))
        .header("x-auth-token", &t.token)
        .json(&t.disk_restore("nope-but-refused"))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap();
    // Refused (404): the armed fault is kept for an applied POST.
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    t.sim.add_volume("spare", "spare", 100, "available", None);
    let r = t
        .http
        .post(t.url(&format!("backups/{}/restore", t.ids.disk_backup_id)))
        .header("x-auth-token", &t.token)
        .json(&t.disk_restore("spare"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    assert_eq!(t.sim.counters().restore_submits, 2);
    assert_eq!(
        t.sim.backup(&t.ids.disk_backup_id).unwrap().status,
        "restoring"
    );
}
