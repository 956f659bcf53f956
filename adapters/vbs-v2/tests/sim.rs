//! The VBS (Cinder backups) simulator over HTTP, with reqwest: auth, the
//! seed doc's restore, the restore and backup status machines and their
//! preconditions with Cinder's fault bodies, pages, deletion, injected,
//! random and armed faults, the late trace, counters and the foreign
//! helpers.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::Utc;
use custos_vbs_v2::{
    sim::{DemoIds, Injection, PostFault, RestoreEnd, SimConfig, Simulator},
    wire::{Backup, BackupEnvelope, BackupList, Fault, VolumeEnvelope, parse_time},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SEED_PROJECT: &str = "c95fc3e4afe248a49a28828f286a7b38";
const SEED_BACKUP: &str = "1d1139d8-8989-49d3-8aa1-83eb691e6db2";
/// The seed doc's example request, verbatim.
const SEED_BODY: &str = r#"{
    "restore": {
        "volume_id": "2748f2f2-4394-4e6e-af8d-8dd34496c024"
    }
}"#;
/// The seed doc's example answer, compact.
const SEED_ANSWER: &str = r#"{"restore":{"backup_id":"1d1139d8-8989-49d3-8aa1-83eb691e6db2","volume_id":"2748f2f2-4394-4e6e-af8d-8dd34496c024","volume_name":"test_volume"}}"#;

struct T {
    sim: Simulator,
    ids: DemoIds,
    http: reqwest::Client,
    token: String,
}

async fn password_token(sim: &Simulator) -> reqwest::Response {
    let c = sim.config();
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "password": c.password, "name": c.user_name, "domain": {"name": c.user_domain}}}},
        "scope": {"project": {"id": c.project_id}}}});
    reqwest::Client::new()
        .post(format!("{}/auth/tokens", sim.auth_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn token(sim: &Simulator) -> String {
    let r = password_token(sim).await;
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

/// Waits (bounded) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

impl T {
    fn url(&self, rest: &str) -> String {
        format!("{}/v2/{}/{rest}", self.sim.url(), self.ids.project_id)
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

    async fn backup(&self, id: &str) -> Backup {
        self.get::<BackupEnvelope>(&format!("backups/{id}"))
            .await
            .backup
    }

    async fn volume_status(&self, id: &str) -> String {
        self.get::<VolumeEnvelope>(&format!("volumes/{id}"))
            .await
            .volume
            .status
    }

    /// Status and body of a restore.
    async fn restore(&self, backup_id: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .send(
                Method::POST,
                &format!("backups/{backup_id}/restore"),
                Some(body),
            )
            .await;
        let s = r.status();
        (s, r.json().await.unwrap())
    }

    async fn create_backup(&self, body: Value) -> (StatusCode, Value) {
        let r = self.send(Method::POST, "backups", Some(body)).await;
        let s = r.status();
        (s, r.json().await.unwrap())
    }

    fn onto(&self, volume_id: &str) -> Value {
        json!({"restore": {"volume_id": volume_id}})
    }
}

/// `(status, fault name, message)` of an error answer.
fn fault(status: StatusCode, body: &Value) -> (u16, String, String) {
    let f = Fault::parse(body.to_string().as_bytes()).unwrap();
    assert_eq!(f.code, status.as_u16(), "{body}");
    (status.as_u16(), f.name, f.message)
}

fn check(got: (StatusCode, Value), status: u16, name: &str, message: &str) {
    assert_eq!(
        fault(got.0, &got.1),
        (status, name.to_string(), message.to_string())
    );
}

#[tokio::test]
async fn tokens_are_required_and_keystone_issues_them() {
    let t = start(|_| {}).await;
    assert_eq!(t.ids.project_id, SEED_PROJECT);
    let r = t.http.get(t.url("backups")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("www-authenticate"));
    assert!(
        r.headers()["x-openstack-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req-")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"code": 401, "title": "Unauthorized",
            "message": "The request you have made requires authentication."}})
    );
    let r = t
        .http
        .get(t.url("backups"))
        .header("x-auth-token", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Password token (above), application credential, expiry.
    let r = t.send(Method::GET, "backups", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let id1 = r.headers()["x-openstack-request-id"].clone();
    let r = t.send(Method::GET, "backups", None).await;
    assert_ne!(r.headers()["x-openstack-request-id"], id1);
    t.sim
        .keystone()
        .add_application_credential("423f19a4ac1e4f48bbb4180756e6eb6c", "rEaqvJka48mpv");
    let r = t
        .http
        .post(format!("{}/auth/tokens", t.sim.auth_url()))
        .json(&json!({"auth": {"identity": {"methods": ["application_credential"],
            "application_credential": {"id": "423f19a4ac1e4f48bbb4180756e6eb6c", "secret": "rEaqvJka48mpv"}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().contains_key("x-openstack-request-id"));
    let app = r.headers()["x-subject-token"].to_str().unwrap().to_string();
    let r = t
        .http
        .get(t.url(&format!("backups/{SEED_BACKUP}")))
        .header("x-auth-token", &app)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    t.sim
        .configure(|c| c.token_lifetime = Duration::from_millis(200));
    let short = token(&t.sim).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = t
        .http
        .post(t.url(&format!("backups/{SEED_BACKUP}/restore")))
        .header("x-auth-token", &short)
        .body(SEED_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(t.sim.counters().restore_submits, 0);
    assert!(t.sim.restores().is_empty());

    // Another project in the path: Cinder's "Malformed request url".
    let r = t
        .http
        .get(format!("{}/v2/someone-else/backups", t.sim.url()))
        .header("x-auth-token", &t.token)
        .send()
        .await
        .unwrap();
    let s = r.status();
    check(
        (s, r.json().await.unwrap()),
        400,
        "badRequest",
        "Malformed request url",
    );
    // Unknown paths: itemNotFound.
    let r = t.send(Method::GET, "snapshots", None).await;
    let s = r.status();
    assert_eq!(fault(s, &r.json().await.unwrap()).1, "itemNotFound");

    // Keystone is not subject to the random faults.
    t.sim.configure(|c| c.error_rate = 1.0);
    assert_eq!(password_token(&t.sim).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn the_seed_restore_gives_the_seed_answer_and_runs_to_available() {
    let t = start(|c| c.restore_duration = Duration::from_millis(400)).await;
    let before = t.backup(SEED_BACKUP).await;
    let vol_before: VolumeEnvelope = t.get(&format!("volumes/{}", t.ids.volume_id)).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
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
    assert!(
        r.headers()["x-openstack-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req-")
    );
    assert_eq!(r.text().await.unwrap(), SEED_ANSWER);

    let got = t.sim.restores();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].backup_id, SEED_BACKUP);
    assert_eq!(got[0].status, 202);
    assert_eq!(
        got[0].body,
        serde_json::from_str::<Value>(SEED_BODY).unwrap()
    );
    assert_eq!(t.sim.counters().restore_submits, 1);
    assert!(t.sim.busy());

    let during = t.backup(SEED_BACKUP).await;
    assert_eq!(during.status, "restoring");
    assert_ne!(during.updated_at, before.updated_at);
    assert_eq!(t.volume_status(&t.ids.volume_id).await, "restoring-backup");
    let vol_during: VolumeEnvelope = t.get(&format!("volumes/{}", t.ids.volume_id)).await;
    assert!(
        parse_time(vol_during.volume.updated_at.as_deref().unwrap())
            > parse_time(vol_before.volume.updated_at.as_deref().unwrap())
    );

    until("the restore ended", || !t.sim.busy()).await;
    let after = t.backup(SEED_BACKUP).await;
    assert_eq!(after.status, "available");
    assert!(
        parse_time(after.updated_at.as_deref().unwrap())
            > parse_time(during.updated_at.as_deref().unwrap())
    );
    // Cinder's time format: microseconds, no offset.
    let u = after.updated_at.unwrap();
    assert_eq!(u.len(), "2013-04-02T10:35:27.000000".len(), "{u}");
    assert!(!u.ends_with('Z'));
    assert_eq!(t.volume_status(&t.ids.volume_id).await, "available");
}

#[tokio::test]
async fn a_restore_can_end_error_restoring() {
    let t = start(|c| c.restore_duration = Duration::from_millis(100)).await;
    t.sim.end_next_restore(RestoreEnd::Error);
    let (s, _) = t.restore(SEED_BACKUP, t.onto(&t.ids.volume_id)).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    until("the restore ended", || !t.sim.busy()).await;
    assert_eq!(t.volume_status(&t.ids.volume_id).await, "error_restoring");
    assert_eq!(t.backup(SEED_BACKUP).await.status, "available");
    assert_eq!(
        t.sim.volume(&t.ids.volume_id).unwrap().status,
        "error_restoring"
    );
    // The next one succeeds again (onto a fresh volume).
    t.sim.add_volume("spare", "spare", 20, "available");
    let (s, _) = t.restore(SEED_BACKUP, t.onto("spare")).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    until("the restore ended", || !t.sim.busy()).await;
    assert_eq!(t.volume_status("spare").await, "available");
}

#[tokio::test]
async fn name_null_is_accepted_and_unknown_fields_are_refused() {
    let t = start(|c| c.restore_duration = Duration::from_millis(50)).await;
    let (s, body) = t
        .restore(
            SEED_BACKUP,
            json!({"restore": {"volume_id": t.ids.volume_id, "name": null}}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(body["restore"]["volume_id"], t.ids.volume_id.as_str());
    until("the restore ended", || !t.sim.busy()).await;

    let (s, body) = t
        .restore(
            SEED_BACKUP,
            json!({"restore": {"volume_id": t.ids.volume_id, "force": true}}),
        )
        .await;
    let (code, name, msg) = fault(s, &body);
    assert_eq!((code, name.as_str()), (400, "badRequest"));
    assert!(msg.contains("'force' was unexpected"), "{msg}");
    let (s, body) = t
        .restore(SEED_BACKUP, json!({"restore": {"volume_id": 42}}))
        .await;
    let (_, _, msg) = fault(s, &body);
    assert!(msg.contains("volume_id"), "{msg}");
    let (s, body) = t
        .restore(SEED_BACKUP, json!({"restore": {}, "extra": 1}))
        .await;
    assert_eq!(fault(s, &body).0, 400);
    let r = t
        .http
        .post(t.url(&format!("backups/{SEED_BACKUP}/restore")))
        .header("x-auth-token", &t.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    let s = r.status();
    check(
        (s, r.json().await.unwrap()),
        400,
        "badRequest",
        "Malformed request body",
    );
    assert_eq!(t.sim.counters().restore_submits, 1);
    let statuses: Vec<u16> = t.sim.restores().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [202, 400, 400, 400, 400]);
    assert_eq!(t.sim.restores()[4].body, Value::Null);
}

#[tokio::test]
async fn restore_preconditions_answer_cinders_faults() {
    let t = start(|c| c.restore_duration = Duration::from_secs(30)).await;
    let ids = t.ids.clone();
    check(
        t.restore(
            "592a0c4d-65a3-4051-8d51-1e2b6401b2d8",
            t.onto(&ids.volume_id),
        )
        .await,
        404,
        "itemNotFound",
        "Backup 592a0c4d-65a3-4051-8d51-1e2b6401b2d8 could not be found.",
    );
    check(
        t.restore(SEED_BACKUP, t.onto("nope")).await,
        404,
        "itemNotFound",
        "Volume nope could not be found.",
    );
    check(
        t.restore(SEED_BACKUP, t.onto(&ids.in_use_volume_id)).await,
        400,
        "badRequest",
        "Invalid volume: Volume to be restored to must be available",
    );
    check(
        t.restore(SEED_BACKUP, t.onto(&ids.small_volume_id)).await,
        400,
        "badRequest",
        "Invalid volume: volume size 1 is too small to restore backup of size 10.",
    );
    t.sim.set_backup_status(SEED_BACKUP, "error");
    check(
        t.restore(SEED_BACKUP, t.onto(&ids.volume_id)).await,
        400,
        "badRequest",
        "Invalid backup: Backup status must be available",
    );
    t.sim.set_backup_status(SEED_BACKUP, "available");
    assert_eq!(t.sim.counters().restore_submits, 0);

    // A running restore: the backup is `restoring`, the volume
    // `restoring-backup`; both refuse another.
    let (s, _) = t.restore(SEED_BACKUP, t.onto(&ids.volume_id)).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    check(
        t.restore(SEED_BACKUP, t.onto(&ids.volume_id)).await,
        400,
        "badRequest",
        "Invalid backup: Backup status must be available",
    );
    let other = t.sim.add_backup(&ids.small_volume_id, "small").unwrap();
    check(
        t.restore(&other, t.onto(&ids.volume_id)).await,
        400,
        "badRequest",
        "Invalid volume: Volume to be restored to must be available",
    );
    assert_eq!(t.sim.counters().restore_submits, 1);
    assert_eq!(t.sim.restores().len(), 8);
}

#[tokio::test]
async fn a_restore_without_a_volume_makes_one() {
    let t = start(|c| c.restore_duration = Duration::from_millis(400)).await;
    let (s, body) = t.restore(SEED_BACKUP, json!({"restore": {}})).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let vid = body["restore"]["volume_id"].as_str().unwrap().to_string();
    assert_ne!(vid, t.ids.volume_id);
    assert_eq!(
        body["restore"]["volume_name"],
        format!("restore_backup_{SEED_BACKUP}")
    );
    let v: Value = t.get(&format!("volumes/{vid}")).await;
    assert_eq!(v["volume"]["status"], "restoring-backup");
    assert_eq!(v["volume"]["size"], 10);
    assert_eq!(
        v["volume"]["description"],
        "auto-created_from_restore_from_backup"
    );
    until("the restore ended", || !t.sim.busy()).await;
    assert_eq!(t.volume_status(&vid).await, "available");

    // A name, and volume_id null: a new volume with that name; it fails.
    t.sim.end_next_restore(RestoreEnd::Error);
    let (s, body) = t
        .restore(
            SEED_BACKUP,
            json!({"restore": {"volume_id": null, "name": "vol-01"}}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(body["restore"]["volume_name"], "vol-01");
    let vid = body["restore"]["volume_id"].as_str().unwrap().to_string();
    until("the restore ended", || !t.sim.busy()).await;
    assert_eq!(t.volume_status(&vid).await, "error");
    assert_eq!(t.backup(SEED_BACKUP).await.status, "available");

    // A volume id wins over a name.
    let (s, body) = t
        .restore(
            SEED_BACKUP,
            json!({"restore": {"volume_id": t.ids.volume_id, "name": "ignored"}}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(body["restore"]["volume_name"], "test_volume");
}

#[tokio::test]
async fn backups_are_created_incrementally_forced_and_can_fail() {
    let t = start(|c| c.backup_duration = Duration::from_millis(500)).await;
    let ids = t.ids.clone();
    let (s, body) = t
        .create_backup(
            json!({"backup": {"volume_id": ids.volume_id, "name": "nightly",
            "description": "d", "container": null, "incremental": false}}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let b = &body["backup"];
    assert_eq!(b["name"], "nightly");
    assert_eq!(b.as_object().unwrap().len(), 3, "{body}");
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["links"][0]["rel"], "self");
    assert!(
        b["links"][0]["href"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v2/{SEED_PROJECT}/backups/{id}"))
    );
    assert_eq!(b["links"][1]["rel"], "bookmark");
    assert_eq!(t.sim.counters().backup_submits, 1);

    let creating = t.backup(&id).await;
    assert_eq!(creating.status, "creating");
    assert_eq!(creating.volume_id, ids.volume_id);
    assert_eq!(t.volume_status(&ids.volume_id).await, "backing-up");
    // A volume being backed up takes no other backup, and no restore.
    check(
        t.create_backup(json!({"backup": {"volume_id": ids.volume_id}}))
            .await,
        400,
        "badRequest",
        "Invalid volume: Volume to be backed up must be available or in-use, but the current status is \"backing-up\".",
    );
    until("the backup ended", || !t.sim.busy()).await;
    let done = t.backup(&id).await;
    assert_eq!(done.status, "available");
    assert_eq!(done.size, 10);
    assert!(done.object_count > 0);
    assert!(!done.is_incremental);
    assert_eq!(done.description.as_deref(), Some("d"));
    assert_eq!(t.volume_status(&ids.volume_id).await, "available");

    // Incremental: needs an available backup of the volume.
    check(
        t.create_backup(json!({"backup": {"volume_id": ids.small_volume_id, "incremental": true}}))
            .await,
        400,
        "badRequest",
        "Invalid backup: No backups available to do an incremental backup.",
    );
    let (s, body) = t
        .create_backup(json!({"backup": {"volume_id": ids.volume_id, "incremental": true}}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(body["backup"]["name"], Value::Null);
    let inc = body["backup"]["id"].as_str().unwrap().to_string();
    until("the backup ended", || !t.sim.busy()).await;
    let inc_b = t.backup(&inc).await;
    assert!(inc_b.is_incremental);
    assert_eq!(inc_b.status, "available");
    // Its parent (the newest available backup) now has a dependent.
    let parent = t.backup(&id).await;
    assert!(parent.has_dependent_backups);
    assert!(!t.backup(SEED_BACKUP).await.has_dependent_backups);
    check(
        {
            let r = t.send(Method::DELETE, &format!("backups/{id}"), None).await;
            let s = r.status();
            (s, r.json().await.unwrap())
        },
        400,
        "badRequest",
        "Invalid backup: Incremental backups exist for this backup.",
    );

    // In-use: only with force; the volume is in-use again afterwards.
    check(
        t.create_backup(json!({"backup": {"volume_id": ids.in_use_volume_id}}))
            .await,
        400,
        "badRequest",
        "Invalid volume: Backing up an in-use volume must use the force flag.",
    );
    let (s, _) = t
        .create_backup(json!({"backup": {"volume_id": ids.in_use_volume_id, "force": true}}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(t.volume_status(&ids.in_use_volume_id).await, "backing-up");
    until("the backup ended", || !t.sim.busy()).await;
    let v: VolumeEnvelope = t.get(&format!("volumes/{}", ids.in_use_volume_id)).await;
    assert_eq!(v.volume.status, "in-use");
    assert_eq!(v.volume.attachments.len(), 1);

    // fail_next_backup: error with fail_reason; the volume is back.
    t.sim.fail_next_backup("the backup driver ran out of space");
    let (s, body) = t
        .create_backup(json!({"backup": {"volume_id": ids.small_volume_id}}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let failed = body["backup"]["id"].as_str().unwrap().to_string();
    until("the backup ended", || !t.sim.busy()).await;
    let f = t.backup(&failed).await;
    assert_eq!(f.status, "error");
    assert_eq!(
        f.fail_reason.as_deref(),
        Some("the backup driver ran out of space")
    );
    assert_eq!(t.volume_status(&ids.small_volume_id).await, "available");

    // Refusals: unknown volume, unknown field, volume in error, snapshot.
    check(
        t.create_backup(json!({"backup": {"volume_id": "nope"}}))
            .await,
        404,
        "itemNotFound",
        "Volume nope could not be found.",
    );
    let (s, body) = t
        .create_backup(json!({"backup": {"volume_id": ids.volume_id, "mode": "full"}}))
        .await;
    let (code, name, msg) = fault(s, &body);
    assert_eq!((code, name.as_str()), (400, "badRequest"));
    assert!(msg.contains("'mode' was unexpected"), "{msg}");
    let (s, body) = t.create_backup(json!({"backup": {"name": "x"}})).await;
    assert!(
        fault(s, &body)
            .2
            .contains("'volume_id' is a required property")
    );
    t.sim.set_volume_status(&ids.small_volume_id, "error");
    check(
        t.create_backup(json!({"backup": {"volume_id": ids.small_volume_id}}))
            .await,
        400,
        "badRequest",
        "Invalid volume: Volume to be backed up must be available or in-use, but the current status is \"error\".",
    );
    assert_eq!(t.sim.counters().backup_submits, 4);
}

#[tokio::test]
async fn lists_page_with_backups_links_and_filter() {
    let t = start(|_| {}).await;
    t.sim.add_volume("vol-p", "paged", 5, "available");
    let base = Utc::now() - chrono::Duration::hours(2);
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = format!("00000000-0000-0000-0000-00000000000{i}");
        t.sim.add_backup_at(
            &id,
            "vol-p",
            &format!("b{i}"),
            5,
            base + chrono::Duration::minutes(i),
        );
        ids.push(id);
    }
    ids.reverse(); // newest first
    let mut seen = Vec::new();
    let mut next = Some(t.url("backups/detail?volume_id=vol-p&limit=2"));
    let mut pages = 0;
    while let Some(url) = next {
        let r = t
            .http
            .get(&url)
            .header("x-auth-token", &t.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let l: BackupList = r.json().await.unwrap();
        pages += 1;
        seen.extend(l.backups.iter().map(|b| b.id.clone()));
        assert!(l.backups.iter().all(|b| b.status == "available"));
        next = l.next_link().map(str::to_string);
        if let Some(n) = &next {
            assert!(n.starts_with(&t.url("backups/detail?")), "{n}");
            assert!(n.contains("volume_id=vol-p"), "{n}");
            assert!(n.contains("limit=2"), "{n}");
            assert!(
                n.ends_with(&format!("marker={}", seen.last().unwrap())),
                "{n}"
            );
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    // The summary list: id, name, links; its next link stays on it.
    let l: Value = t.get("backups?limit=1").await;
    let first = l["backups"][0].as_object().unwrap();
    let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["id", "links", "name"]);
    let href = l["backups_links"][0]["href"].as_str().unwrap();
    assert!(
        href.starts_with(&t.url("backups?limit=1&marker=")),
        "{href}"
    );
    // Newest first overall: the paged ones are newer than the seed's.
    assert_eq!(first["id"], ids[0].as_str());

    // Filters: status, name; no link when fewer than limit.
    t.sim.set_backup_status(&ids[1], "error");
    let l: BackupList = t.get("backups/detail?status=error").await;
    assert_eq!(l.backups.len(), 1);
    assert_eq!(l.backups[0].id, ids[1]);
    assert!(l.backups_links.is_empty());
    let l: BackupList = t.get("backups/detail?name=backup001").await;
    assert_eq!(l.backups.len(), 1);
    assert_eq!(l.backups[0].id, SEED_BACKUP);
    let l: BackupList = t.get("backups/detail?sort_dir=asc&limit=1").await;
    assert_eq!(l.backups[0].id, SEED_BACKUP);

    // Exactly `limit` items: a link, even if nothing follows.
    let l: BackupList = t.get("backups/detail?volume_id=vol-p&limit=5").await;
    assert_eq!(l.backups.len(), 5);
    let last = t
        .http
        .get(l.next_link().unwrap())
        .header("x-auth-token", &t.token)
        .send()
        .await
        .unwrap();
    let last: BackupList = last.json().await.unwrap();
    assert!(last.backups.is_empty() && last.backups_links.is_empty());

    // osapi_max_limit: no limit → max_limit items and a link; a larger
    // limit is cut.
    t.sim.configure(|c| c.max_limit = 3);
    let l: BackupList = t.get("backups/detail").await;
    assert_eq!(l.backups.len(), 3);
    let n = l.next_link().unwrap();
    assert!(!n.contains("limit="), "{n}");
    let l: BackupList = t.get("backups/detail?limit=100").await;
    assert_eq!(l.backups.len(), 3);
    assert!(l.next_link().is_some());

    // Errors.
    for (q, msg) in [
        (
            "backups/detail?marker=nope",
            "Marker nope could not be found.",
        ),
        ("backups/detail?limit=abc", "limit param must be an integer"),
        ("backups?limit=-1", "limit param must be positive"),
    ] {
        let r = t.send(Method::GET, q, None).await;
        let s = r.status();
        check((s, r.json().await.unwrap()), 400, "badRequest", msg);
    }
    let r = t.send(Method::GET, "backups?sort_dir=up", None).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn deletion_runs_deleting_then_gone_and_is_refused_when_busy() {
    let t = start(|c| {
        c.delete_duration = Duration::from_millis(400);
        c.restore_duration = Duration::from_secs(30);
    })
    .await;
    let id = t.sim.add_backup(&t.ids.volume_id, "old").unwrap();
    let r = t.send(Method::DELETE, &format!("backups/{id}"), None).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(t.sim.counters().delete_submits, 1);
    assert_eq!(t.backup(&id).await.status, "deleting");
    let r = t.send(Method::DELETE, &format!("backups/{id}"), None).await;
    let s = r.status();
    check(
        (s, r.json().await.unwrap()),
        400,
        "badRequest",
        "Invalid backup: Backup status must be available or error",
    );
    until("the backup is gone", || t.sim.backup(&id).is_none()).await;
    let r = t.send(Method::GET, &format!("backups/{id}"), None).await;
    let s = r.status();
    check(
        (s, r.json().await.unwrap()),
        404,
        "itemNotFound",
        &format!("Backup {id} could not be found."),
    );
    let r = t.send(Method::DELETE, &format!("backups/{id}"), None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // An `error` backup can be deleted; a `restoring` one cannot.
    let broken = t.sim.add_backup(&t.ids.volume_id, "broken").unwrap();
    t.sim.set_backup_status(&broken, "error");
    let r = t
        .send(Method::DELETE, &format!("backups/{broken}"), None)
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let (s, _) = t.restore(SEED_BACKUP, t.onto(&t.ids.volume_id)).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let r = t
        .send(Method::DELETE, &format!("backups/{SEED_BACKUP}"), None)
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(t.sim.counters().delete_submits, 2);
}

#[tokio::test]
async fn injected_faults_answer_cinders_body_and_apply_nothing() {
    let t = start(|c| c.restore_duration = Duration::from_secs(30)).await;
    // The random rates are off by default.
    for _ in 0..30 {
        let r = t.send(Method::GET, "backups/detail", None).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(t.sim.counters().faults, 0);

    t.sim.inject(Injection {
        method: Method::POST,
        path_contains: "/restore".into(),
        status: 413,
        message: "Maximum number of volumes allowed (10) exceeded for quota 'volumes'.".into(),
        retry_after: Some("0".into()),
        times: 1,
    });
    let r = t
        .send(
            Method::POST,
            &format!("backups/{SEED_BACKUP}/restore"),
            Some(t.onto(&t.ids.volume_id)),
        )
        .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.headers()["retry-after"], "0");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"overLimit": {"code": 413, "retryAfter": "0",
            "message": "Maximum number of volumes allowed (10) exceeded for quota 'volumes'."}})
    );
    assert_eq!(t.sim.counters().restore_submits, 0);
    assert!(t.sim.restores().is_empty(), "never reached the service");
    assert_eq!(t.backup(SEED_BACKUP).await.status, "available");

    // A 503 on GET, without Retry-After.
    t.sim.inject(Injection {
        method: Method::GET,
        path_contains: "/volumes/".into(),
        status: 503,
        message: "Service is unavailable at this time.".into(),
        retry_after: None,
        times: 2,
    });
    for _ in 0..2 {
        let r = t
            .send(Method::GET, &format!("volumes/{}", t.ids.volume_id), None)
            .await;
        assert!(!r.headers().contains_key("retry-after"));
        let s = r.status();
        assert_eq!(fault(s, &r.json().await.unwrap()).1, "serviceUnavailable");
    }
    // clear_faults forgets the rest.
    t.sim.inject(Injection {
        method: Method::GET,
        path_contains: "/backups".into(),
        status: 500,
        message: "boom".into(),
        retry_after: None,
        times: 5,
    });
    t.sim.clear_faults();
    assert_eq!(
        t.send(Method::GET, "backups", None).await.status(),
        StatusCode::OK
    );
    let (s, _) = t.restore(SEED_BACKUP, t.onto(&t.ids.volume_id)).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(t.sim.counters().faults, 3);

    // The rates.
    t.sim.configure(|c| c.throttle_rate = 1.0);
    let r = t.send(Method::GET, "backups", None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    let s = r.status();
    assert_eq!(fault(s, &r.json().await.unwrap()).1, "computeFault");
    t.sim.configure(|c| {
        c.throttle_rate = 0.0;
        c.error_rate = 1.0;
    });
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let r = t.send(Method::GET, "backups", None).await;
        let s = r.status();
        let (code, name, _) = fault(s, &r.json().await.unwrap());
        seen.insert((code, name));
    }
    for f in &seen {
        assert!(
            *f == (500, "computeFault".to_string())
                || *f == (503, "serviceUnavailable".to_string()),
            "{f:?}"
        );
    }
    t.sim.configure(|c| c.error_rate = 0.0);
    assert_eq!(
        t.send(Method::GET, "backups", None).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn armed_posts_apply_or_not_as_the_kit_says() {
    let t = start(|c| {
        c.restore_duration = Duration::from_millis(300);
        c.backup_duration = Duration::from_millis(300);
    })
    .await;
    let restore_url = t.url(&format!("backups/{SEED_BACKUP}/restore"));
    let post = |url: String, body: Value| {
        t.http
            .post(url)
            .header("x-auth-token", &t.token)
            .json(&body)
            .send()
    };

    // ApplyThenHtml: applied once, answered with a proxy's page.
    t.sim.arm_post("/restore", PostFault::ApplyThenHtml(504), 1);
    let r = post(restore_url.clone(), t.onto(&t.ids.volume_id))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.text().await.unwrap().contains("<html>"));
    assert_eq!(t.sim.counters().restore_submits, 1);
    assert_eq!(t.sim.restores()[0].status, 202);
    assert_eq!(t.backup(SEED_BACKUP).await.status, "restoring");
    until("the restore ended", || !t.sim.busy()).await;

    // A refused POST does not use up an applied-fault.
    t.sim
        .arm_post("/restore", PostFault::ApplyThenError(503), 1);
    let r = post(restore_url.clone(), t.onto("nope")).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = post(restore_url.clone(), t.onto(&t.ids.volume_id))
        .await
        .unwrap();
    let s = r.status();
    check(
        (s, r.json().await.unwrap()),
        503,
        "serviceUnavailable",
        "Service is unavailable at this time.",
    );
    assert_eq!(t.sim.counters().restore_submits, 2);
    until("the restore ended", || !t.sim.busy()).await;

    // ResetBeforeApply: the connection breaks, nothing applied.
    t.sim.arm_post("/restore", PostFault::ResetBeforeApply, 1);
    let before = t.backup(SEED_BACKUP).await;
    assert!(
        post(restore_url.clone(), t.onto(&t.ids.volume_id))
            .await
            .is_err()
    );
    assert_eq!(t.sim.counters().restore_submits, 2);
    assert_eq!(t.sim.restores().len(), 3);
    assert_eq!(t.backup(SEED_BACKUP).await, before);
    assert!(!t.sim.busy());

    // ApplyThenReset on a backup: the connection breaks, but applied.
    t.sim.arm_post("/backups", PostFault::ApplyThenReset, 1);
    let n = t.sim.backups().len();
    assert!(
        post(
            t.url("backups"),
            json!({"backup": {"volume_id": t.ids.volume_id}})
        )
        .await
        .is_err()
    );
    assert_eq!(t.sim.counters().backup_submits, 1);
    assert_eq!(t.sim.backups().len(), n + 1);
    assert_eq!(t.sim.backups()[0].status, "creating");

    // ApplyThenError(500) on a backup: Cinder's computeFault.
    until("the backup ended", || !t.sim.busy()).await;
    t.sim
        .arm_post("/backups", PostFault::ApplyThenError(500), 1);
    let r = post(
        t.url("backups"),
        json!({"backup": {"volume_id": t.ids.volume_id}}),
    )
    .await
    .unwrap();
    let s = r.status();
    assert_eq!(fault(s, &r.json().await.unwrap()).1, "computeFault");
    assert_eq!(t.sim.counters().backup_submits, 2);

    // ApplyThenHugeBody: the usual status, an over-long body, applied.
    until("the backup ended", || !t.sim.busy()).await;
    t.sim
        .arm_post("/restore", PostFault::ApplyThenHugeBody(100_000), 1);
    let r = post(restore_url.clone(), t.onto(&t.ids.volume_id))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.bytes().await.unwrap().len(), 100_000);
    assert_eq!(t.sim.counters().restore_submits, 3);
    until("the restore ended", || !t.sim.busy()).await;

    // ApplyThenDelay: a client with a shorter timeout times out; applied.
    t.sim.arm_post(
        "/restore",
        PostFault::ApplyThenDelay(Duration::from_secs(3)),
        1,
    );
    let e = t
        .http
        .post(restore_url.clone())
        .header("x-auth-token", &t.token)
        .json(&t.onto(&t.ids.volume_id))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(t.sim.counters().restore_submits, 4);
    assert_eq!(t.sim.counters().faults, 7);
}

#[tokio::test]
async fn a_late_trace_hides_the_operation_then_shows_it() {
    let t = start(|c| {
        c.trace_delay = Duration::from_millis(500);
        c.restore_duration = Duration::from_millis(300);
        c.backup_duration = Duration::from_millis(300);
    })
    .await;
    let before = t.backup(SEED_BACKUP).await;
    let (s, body) = t.restore(SEED_BACKUP, t.onto(&t.ids.volume_id)).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(body["restore"]["volume_name"], "test_volume");
    // Nothing shows yet, but it was applied: another restore is refused.
    assert_eq!(t.backup(SEED_BACKUP).await, before);
    assert_eq!(t.volume_status(&t.ids.volume_id).await, "available");
    assert!(t.sim.busy());
    let (s, _) = t.restore(SEED_BACKUP, t.onto(&t.ids.volume_id)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    until("the trace shows", || {
        t.sim.backup(SEED_BACKUP).unwrap().status == "restoring"
    })
    .await;
    let during = t.backup(SEED_BACKUP).await;
    assert_ne!(during.updated_at, before.updated_at);
    assert_eq!(t.volume_status(&t.ids.volume_id).await, "restoring-backup");
    until("the restore ended", || !t.sim.busy()).await;
    assert_eq!(t.backup(SEED_BACKUP).await.status, "available");
    assert_eq!(t.volume_status(&t.ids.volume_id).await, "available");

    // A new backup is absent from GET and lists until the delay passed.
    let (s, body) = t
        .create_backup(json!({"backup": {"volume_id": t.ids.volume_id}}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let id = body["backup"]["id"].as_str().unwrap().to_string();
    let r = t.send(Method::GET, &format!("backups/{id}"), None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let l: BackupList = t.get("backups/detail").await;
    assert!(l.backups.iter().all(|b| b.id != id));
    assert_eq!(t.volume_status(&t.ids.volume_id).await, "available");
    until("the backup shows", || t.sim.backup(&id).is_some()).await;
    assert_eq!(t.backup(&id).await.status, "creating");
    assert_eq!(t.volume_status(&t.ids.volume_id).await, "backing-up");
    let l: BackupList = t.get("backups/detail").await;
    assert_eq!(l.backups[0].id, id);
    until("the backup ended", || !t.sim.busy()).await;
    assert_eq!(t.backup(&id).await.status, "available");
}

#[tokio::test]
async fn counters_count_what_reached_the_service() {
    let t = start(|c| c.restore_duration = Duration::from_secs(30)).await;
    let start = t.sim.counters();
    assert_eq!(start.requests, 1, "the token request");
    let _: Value = t.get(&format!("volumes/{}", t.ids.volume_id)).await;
    let _: Value = t.get(&format!("volumes/{}", t.ids.volume_id)).await;
    let r = t.send(Method::GET, "volumes/nope", None).await;
    let s = r.status();
    check(
        (s, r.json().await.unwrap()),
        404,
        "itemNotFound",
        "Volume nope could not be found.",
    );
    let _: Value = t.get("backups").await;
    let _: Value = t.get("backups/detail").await;
    let _: Value = t.get(&format!("backups/{SEED_BACKUP}")).await;
    let (s, _) = t.restore(SEED_BACKUP, t.onto(&t.ids.volume_id)).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    // Refused by the token check: counted as a request only.
    let r = t.http.get(t.url("backups")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let c = t.sim.counters();
    assert_eq!(c.requests, 1 + 8);
    assert_eq!(c.volume_polls, 3);
    assert_eq!(c.backup_polls, 3);
    assert_eq!(c.restore_submits, 1);
    assert_eq!((c.backup_submits, c.delete_submits, c.faults), (0, 0, 0));
}

#[tokio::test]
async fn foreign_operations_look_real_but_are_not_submissions() {
    let t = start(|c| {
        c.restore_duration = Duration::from_millis(400);
        c.backup_duration = Duration::from_millis(400);
        c.trace_delay = Duration::from_secs(30);
    })
    .await;
    let ids = t.ids.clone();
    // A foreign restore shows at once, whatever trace_delay.
    t.sim.start_foreign_restore(SEED_BACKUP, &ids.volume_id);
    assert_eq!(t.backup(SEED_BACKUP).await.status, "restoring");
    assert_eq!(t.volume_status(&ids.volume_id).await, "restoring-backup");
    assert!(t.sim.busy());
    until("the foreign restore ended", || !t.sim.busy()).await;
    assert_eq!(t.backup(SEED_BACKUP).await.status, "available");
    assert_eq!(t.volume_status(&ids.volume_id).await, "available");

    // One that ended an hour ago.
    t.sim
        .foreign_restore_done(SEED_BACKUP, &ids.volume_id, Duration::from_secs(3600));
    let b = t.backup(SEED_BACKUP).await;
    assert_eq!(b.status, "available");
    let updated = parse_time(b.updated_at.as_deref().unwrap()).unwrap();
    let age = Utc::now() - updated;
    assert!(age > chrono::Duration::minutes(59) && age < chrono::Duration::minutes(61));

    // A foreign backup running now.
    let fb = t.sim.start_foreign_backup(&ids.volume_id).unwrap();
    let b = t.backup(&fb).await;
    assert_eq!(
        (b.name.as_str(), b.status.as_str()),
        ("foreign-backup", "creating")
    );
    assert_eq!(t.volume_status(&ids.volume_id).await, "backing-up");
    until("the foreign backup ended", || !t.sim.busy()).await;
    assert_eq!(t.backup(&fb).await.status, "available");
    assert_eq!(t.volume_status(&ids.volume_id).await, "available");
    assert!(t.sim.start_foreign_backup("nope").is_none());

    // An old foreign backup, appearing now.
    let old = t
        .sim
        .add_foreign_backup(&ids.small_volume_id, Duration::from_secs(7200))
        .unwrap();
    let b = t.backup(&old).await;
    assert_eq!(b.status, "available");
    assert_eq!(b.size, 1);
    let created = parse_time(&b.created_at).unwrap();
    assert!(Utc::now() - created > chrono::Duration::minutes(119));
    let l: BackupList = t
        .get(&format!("backups/detail?volume_id={}", ids.small_volume_id))
        .await;
    assert_eq!(l.backups.len(), 1);
    assert!(t.sim.add_foreign_backup("nope", Duration::ZERO).is_none());

    let c = t.sim.counters();
    assert_eq!((c.restore_submits, c.backup_submits), (0, 0));
    assert!(t.sim.restores().is_empty());
}

#[tokio::test]
async fn volumes_and_backups_have_cinders_shape() {
    let t = start(|_| {}).await;
    let v: Value = t.get(&format!("volumes/{}", t.ids.in_use_volume_id)).await;
    let v = &v["volume"];
    assert_eq!(v["status"], "in-use");
    assert_eq!(v["name"], "data_in_use");
    assert_eq!(v["size"], 10);
    assert_eq!(v["attachments"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["attachments"][0]["volume_id"],
        t.ids.in_use_volume_id.as_str()
    );
    for k in [
        "id",
        "created_at",
        "updated_at",
        "availability_zone",
        "bootable",
    ] {
        assert!(!v[k].is_null(), "{k}");
    }
    let b: Value = t.get(&format!("backups/{SEED_BACKUP}")).await;
    let b = &b["backup"];
    for k in [
        "id",
        "name",
        "status",
        "size",
        "volume_id",
        "container",
        "object_count",
        "availability_zone",
        "created_at",
        "updated_at",
        "data_timestamp",
        "is_incremental",
        "has_dependent_backups",
        "links",
    ] {
        assert!(!b[k].is_null(), "{k}");
    }
    for k in ["snapshot_id", "description", "fail_reason"] {
        assert!(b.as_object().unwrap().contains_key(k), "{k}");
    }
    assert_eq!(b["volume_id"], t.ids.volume_id.as_str());
    assert_eq!(b["name"], "backup001");
    assert_eq!(b["size"], 10);
    assert_eq!(t.sim.volume(&t.ids.small_volume_id).unwrap().size, 1);
    assert!(t.sim.volume("nope").is_none());
    // seed_demo is idempotent in its ids.
    assert_eq!(t.sim.seed_demo(), t.ids);
}
