//! A simulator of the v2 VBS disk-restore API (`backends.md` §3): OpenStack
//! Cinder's block-storage backups under `/v2/{project_id}`. Volumes and
//! backups move through Cinder's statuses over configurable durations:
//! a backup is `creating` (its volume `backing-up`) then `available` or
//! `error`; a restore makes the backup `restoring` and the volume
//! `restoring-backup`, then the backup is `available` again whatever the
//! outcome and the volume `available`, `error_restoring` (an existing
//! volume) or `error` (a new one); a deleted backup is `deleting`, then
//! gone. Errors are Cinder's fault bodies (`{"<faultName>":{"code",
//! "message"}}`, [`Fault`]) with Cinder's messages, and every answer
//! carries `x-openstack-request-id`.
//!
//! Auth is the Keystone simulator of `custos-openstack`, mounted so that
//! `{url}/v3` is the `auth_url`; every `/v2` request needs a valid
//! `X-Auth-Token`, else keystonemiddleware's 401.
//!
//! Switches ([`SimConfig`]) add latency, 500/503 and 429 faults and a late
//! trace (`trace_delay`); [`Simulator::inject`] forces answers;
//! [`Simulator::arm_post`] makes the next POSTs meet a
//! [`PostFault`] (the shared kit's semantics); [`Simulator::end_next_restore`]
//! and [`Simulator::fail_next_backup`] make the next operations fail; the
//! `foreign` helpers leave someone else's operations. Counters
//! ([`CounterSnapshot`]) and the record of received restore bodies let
//! tests prove what arrived. Statuses advance lazily, on each request and
//! accessor call.
//!
//! Where §3 and Cinder's sources are silent, this simulator chooses \[INF\]:
//! - a project id in the path that is not the token's: 400 `badRequest`
//!   "Malformed request url" (what Cinder's `wsgi.Resource` answers, rather
//!   than a 403);
//! - an unknown `marker`: 400 `badRequest` "Marker {m} could not be
//!   found."; a `limit` that is not an integer or negative: 400
//!   `badRequest` "limit param must be an integer" / "... positive";
//! - `sort_key` (`created_at`, `updated_at`, `id`, `name`, `status`,
//!   `size`, `volume_id`) and `sort_dir` (`asc`, `desc`) are honoured,
//!   then `created_at` and `id` in the same direction; other unknown query
//!   parameters are ignored (v2 drops filters it does not know);
//! - ids (`volume_id`, `snapshot_id`) are not checked for UUID format, so
//!   tests may use readable ids; there are no snapshots, so a
//!   `snapshot_id` is 404 "Snapshot {id} could not be found.";
//! - `{"restore": null}` is read as `{"restore": {}}` (a new volume);
//! - schema errors read "Invalid input for field/attribute {field}. Value:
//!   {json}. {reason}" (Cinder prints the value as Python would);
//! - a backup's `object_count` is `21 × size + 1` once `available` (1 GiB
//!   → 22, as the api-ref example), 0 before; `container` defaults to
//!   `volumebackups`, the availability zone is `az1`;
//! - a backup's `updated_at` changes on every save, as in Cinder (a
//!   status change, and its parent's when an incremental child ends or is
//!   deleted);
//! - `trace_delay`: the operation is applied at once (a second restore of
//!   the same backup is refused as Cinder would), but what `GET` shows of
//!   the touched backup and volume stays as it was (a new backup stays
//!   absent) until the delay has passed; the operation's own course only
//!   starts then;
//! - the random rates, latency and injections apply to `/v2` paths only,
//!   not to `/v3/auth/tokens`; an unknown path is 404 `itemNotFound` "The
//!   resource could not be found.", a known path with another method 405
//!   `badMethod`.

use std::{
    cmp::Ordering as CmpOrdering,
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, Request, State, rejection::QueryRejection},
    http::{HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
pub use custos_adapter_core::sim::PostFault;
use custos_adapter_core::sim::{ArmedPosts, Injections, Kill, after_apply, html_page, lock, serve};
use custos_openstack::sim::{KeystoneSim, unauthorized};
use rand::Rng;
use serde_json::{Map, Value, json};
use tokio::{net::TcpListener, sync::Notify, time::Instant};

use crate::wire::{
    Backup, Fault, Link, RestoreAccepted, RestoreInfo, Volume, backup_status, format_time,
    volume_status,
};

/// Behaviour switches; change them at run time with [`Simulator::configure`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The one project; `/v2` paths must name it. Fixed at start.
    pub project_id: String,
    /// The Keystone password user (name, domain, password).
    pub user_name: String,
    pub user_domain: String,
    pub password: String,
    /// Life of the tokens Keystone issues.
    pub token_lifetime: Duration,
    /// Added to every `/v2` answer.
    pub latency: Duration,
    /// How long a restore keeps the backup `restoring` and the volume
    /// `restoring-backup`.
    pub restore_duration: Duration,
    /// How long a new backup stays `creating`.
    pub backup_duration: Duration,
    /// How long a deleted backup stays `deleting`.
    pub delete_duration: Duration,
    /// Share of `/v2` requests answered 500 `computeFault` or 503
    /// `serviceUnavailable` (not applied).
    pub error_rate: f64,
    /// Share of `/v2` requests answered 429 `computeFault` with
    /// `Retry-After: 1` (not applied).
    pub throttle_rate: f64,
    /// An accepted restore or backup shows nothing (statuses, `updated_at`,
    /// the new backup) until this long after it was accepted, then runs its
    /// course; the 202 is immediate.
    pub trace_delay: Duration,
    /// `osapi_max_limit`: the largest page.
    pub max_limit: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            project_id: "c95fc3e4afe248a49a28828f286a7b38".into(),
            user_name: "custos".into(),
            user_domain: "Default".into(),
            password: "custos-password".into(),
            token_lifetime: Duration::from_secs(86_400),
            latency: Duration::ZERO,
            restore_duration: Duration::from_millis(300),
            backup_duration: Duration::from_millis(300),
            delete_duration: Duration::from_millis(300),
            error_rate: 0.0,
            throttle_rate: 0.0,
            trace_delay: Duration::ZERO,
            max_limit: 1000,
        }
    }
}

/// What the simulator counted; every field only grows.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    restore_submits: AtomicU64,
    backup_submits: AtomicU64,
    delete_submits: AtomicU64,
    volume_polls: AtomicU64,
    backup_polls: AtomicU64,
    faults: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Every request, Keystone's included.
    pub requests: u64,
    /// Accepted restores (202).
    pub restore_submits: u64,
    /// Accepted backups (202).
    pub backup_submits: u64,
    /// Accepted deletions (202).
    pub delete_submits: u64,
    /// `GET volumes/{id}` that reached the service.
    pub volume_polls: u64,
    /// `GET backups`, `GET backups/detail` and `GET backups/{id}` that
    /// reached the service.
    pub backup_polls: u64,
    /// Random, injected and armed faults answered.
    pub faults: u64,
}

/// A forced answer for the next `times` requests whose method matches and
/// whose path contains `path_contains`: Cinder's fault body for `status`
/// with `message` (`retryAfter` in it too for a 413), and a `Retry-After`
/// header when `retry_after` is set. Nothing is applied.
#[derive(Debug, Clone)]
pub struct Injection {
    pub method: Method,
    pub path_contains: String,
    pub status: u16,
    pub message: String,
    pub retry_after: Option<String>,
    pub times: u32,
}

/// How the next accepted restore ends ([`Simulator::end_next_restore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreEnd {
    Success,
    /// The volume ends `error_restoring` (a new volume: `error`); the
    /// backup is `available` again.
    Error,
}

/// A restore body as received, whatever the answer was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRestore {
    pub backup_id: String,
    /// The body parsed as JSON (`Value::Null` if it was not JSON).
    pub body: Value,
    /// The status the simulator answered (before an armed fault).
    pub status: u16,
}

/// The ids [`Simulator::seed_demo`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoIds {
    pub project_id: String,
    /// `test_volume`, 10 GiB, available (the seed doc's).
    pub volume_id: String,
    /// `data_in_use`, 10 GiB, in-use.
    pub in_use_volume_id: String,
    /// `small_volume`, 1 GiB, available.
    pub small_volume_id: String,
    /// `backup001` of `test_volume`, 10 GiB, available (the seed doc's).
    pub backup_id: String,
}

const DEMO_VOLUME: &str = "2748f2f2-4394-4e6e-af8d-8dd34496c024";
const DEMO_IN_USE_VOLUME: &str = "6f3c2c8e-5b1a-4f7e-9a53-1d2e3f4a5b6c";
const DEMO_SMALL_VOLUME: &str = "8a9b0c1d-2e3f-4a5b-8c6d-7e8f9a0b1c2d";
const DEMO_BACKUP: &str = "1d1139d8-8989-49d3-8aa1-83eb691e6db2";
/// The server the demo's in-use volume is attached to.
const DEMO_SERVER: &str = "0c8a4b2e-9f1d-4e3a-8b7c-6d5e4f3a2b1c";
const AVAILABILITY_ZONE: &str = "az1";
const DEFAULT_CONTAINER: &str = "volumebackups";
const FOREIGN_BACKUP_NAME: &str = "foreign-backup";

#[derive(Debug, Clone)]
struct SimVolume {
    vol: Volume,
    description: Option<String>,
}

#[derive(Debug, Clone)]
struct SimBackup {
    /// Without `links` (added when shown); `name` "" when `null`.
    b: Backup,
    /// `None`: shown as `null`.
    name: Option<String>,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
    /// The backup an incremental one was made on.
    parent_id: Option<String>,
    /// Incremental backups made on this one (`num_dependent_backups`).
    dependents: u32,
    /// Whether this one was counted in its parent's `dependents`.
    counted: bool,
}

#[derive(Debug, Clone)]
enum Work {
    Restore {
        backup_id: String,
        volume_id: String,
        new_volume: bool,
        fail: bool,
    },
    Backup {
        backup_id: String,
        volume_id: String,
        /// The volume's status before `backing-up`.
        volume_prev: String,
        fail: Option<String>,
    },
    Delete {
        backup_id: String,
    },
}

#[derive(Debug, Clone)]
struct Op {
    work: Work,
    ends: Instant,
}

/// What `GET` shows of an object while a late trace hides a change.
#[derive(Debug, Clone)]
struct Shadow<T> {
    /// `None`: absent.
    pre: Option<T>,
    until: Instant,
}

/// Where a restore writes.
enum Target {
    Existing(String),
    New { name: String, size: u64 },
}

#[derive(Default)]
struct World {
    volumes: HashMap<String, SimVolume>,
    backups: HashMap<String, SimBackup>,
    ops: Vec<Op>,
    backup_shadows: HashMap<String, Shadow<SimBackup>>,
    volume_shadows: HashMap<String, Shadow<SimVolume>>,
    injections: Injections<Injection>,
    armed: ArmedPosts,
    next_restore_end: Option<RestoreEnd>,
    next_backup_failure: Option<String>,
    restores: Vec<ReceivedRestore>,
}

struct Inner {
    cfg: Mutex<SimConfig>,
    world: Mutex<World>,
    counters: Counters,
    keystone: KeystoneSim,
    base_url: String,
}

/// A running simulator. Dropping it does not stop the server; call
/// [`Simulator::shutdown`] or let the runtime end.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: Arc<Notify>,
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The wall-clock time of instant `i` (before now).
fn wall(i: Instant) -> DateTime<Utc> {
    let ago = Instant::now().saturating_duration_since(i);
    Utc::now() - chrono::Duration::from_std(ago).unwrap_or_default()
}

fn ago(age: Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(age).unwrap_or_default()
}

/// Objects a successful backup of `size` GiB is stored in (1 GiB → 22, as
/// the api-ref's example).
fn object_count(size: u64) -> u64 {
    size.max(1) * 21 + 1
}

/// An attachment as Cinder shows it.
fn attachment(volume_id: &str, server_id: &str, at: DateTime<Utc>) -> Value {
    json!({
        "server_id": server_id,
        "attachment_id": new_id(),
        "attached_at": format_time(at),
        "host_name": null,
        "volume_id": volume_id,
        "device": "/dev/vdb",
        "id": volume_id,
    })
}

impl SimBackup {
    fn touch(&mut self, t: DateTime<Utc>) {
        self.updated = t;
        self.b.updated_at = Some(format_time(t));
    }

    fn set_status(&mut self, status: &str, t: DateTime<Utc>) {
        self.b.status = status.into();
        self.touch(t);
    }
}

impl SimVolume {
    fn set_status(&mut self, status: &str, t: DateTime<Utc>) {
        self.vol.status = status.into();
        self.vol.updated_at = Some(format_time(t));
        if status == volume_status::IN_USE && self.vol.attachments.is_empty() {
            self.vol.attachments = vec![attachment(&self.vol.id, &new_id(), t)];
        } else if status == volume_status::AVAILABLE {
            self.vol.attachments.clear();
        }
    }
}

impl World {
    /// Moves every operation on to where its time says, and drops the
    /// shadows of late traces that have shown.
    fn advance(&mut self) {
        let now = Instant::now();
        self.backup_shadows.retain(|_, s| s.until > now);
        self.volume_shadows.retain(|_, s| s.until > now);
        let mut due: Vec<Op> = Vec::new();
        self.ops.retain(|o| {
            if o.ends <= now {
                due.push(o.clone());
                false
            } else {
                true
            }
        });
        due.sort_by_key(|o| o.ends);
        for op in due {
            self.finish(op);
        }
    }

    fn finish(&mut self, op: Op) {
        let t = wall(op.ends);
        match op.work {
            Work::Restore {
                backup_id,
                volume_id,
                new_volume,
                fail,
            } => {
                if let Some(b) = self.backups.get_mut(&backup_id) {
                    b.set_status(backup_status::AVAILABLE, t);
                }
                let status = match (fail, new_volume) {
                    (false, _) => volume_status::AVAILABLE,
                    (true, false) => volume_status::ERROR_RESTORING,
                    (true, true) => volume_status::ERROR,
                };
                if let Some(v) = self.volumes.get_mut(&volume_id) {
                    v.set_status(status, t);
                }
            }
            Work::Backup {
                backup_id,
                volume_id,
                volume_prev,
                fail,
            } => {
                let mut parent = None;
                if let Some(b) = self.backups.get_mut(&backup_id) {
                    match &fail {
                        Some(reason) => {
                            b.b.fail_reason = Some(reason.clone());
                            b.set_status(backup_status::ERROR, t);
                        }
                        None => {
                            b.b.object_count = object_count(b.b.size);
                            b.set_status(backup_status::AVAILABLE, t);
                            if b.parent_id.is_some() {
                                b.counted = true;
                                parent = b.parent_id.clone();
                            }
                        }
                    }
                }
                if let Some(p) = parent.and_then(|p| self.backups.get_mut(&p)) {
                    p.dependents += 1;
                    p.b.has_dependent_backups = true;
                    p.touch(t);
                }
                if let Some(v) = self.volumes.get_mut(&volume_id) {
                    v.set_status(&volume_prev, t);
                }
            }
            Work::Delete { backup_id } => {
                let Some(b) = self.backups.remove(&backup_id) else {
                    return;
                };
                if b.counted
                    && let Some(p) = b.parent_id.and_then(|p| self.backups.get_mut(&p))
                {
                    p.dependents = p.dependents.saturating_sub(1);
                    p.b.has_dependent_backups = p.dependents > 0;
                    p.touch(t);
                }
            }
        }
    }

    /// Keeps what `GET` shows of a backup as it is now until `until`.
    fn shadow_backup(&mut self, id: &str, until: Instant) {
        let pre = self.backups.get(id).cloned();
        let s = self
            .backup_shadows
            .entry(id.into())
            .or_insert(Shadow { pre, until });
        s.until = s.until.max(until);
    }

    fn shadow_volume(&mut self, id: &str, until: Instant) {
        let pre = self.volumes.get(id).cloned();
        let s = self
            .volume_shadows
            .entry(id.into())
            .or_insert(Shadow { pre, until });
        s.until = s.until.max(until);
    }

    /// The backup as `GET` shows it (a late trace may hide the truth).
    fn view_backup(&self, id: &str) -> Option<&SimBackup> {
        match self.backup_shadows.get(id) {
            Some(s) => s.pre.as_ref(),
            None => self.backups.get(id),
        }
    }

    fn view_volume(&self, id: &str) -> Option<&SimVolume> {
        match self.volume_shadows.get(id) {
            Some(s) => s.pre.as_ref(),
            None => self.volumes.get(id),
        }
    }

    /// Every backup `GET` shows, in no order.
    fn visible_backups(&self) -> Vec<&SimBackup> {
        let mut out: Vec<&SimBackup> = self
            .backups
            .keys()
            .filter(|id| !self.backup_shadows.contains_key(*id))
            .filter_map(|id| self.backups.get(id))
            .collect();
        out.extend(self.backup_shadows.values().filter_map(|s| s.pre.as_ref()));
        out
    }

    fn set_backup_status(&mut self, id: &str, status: &str, t: DateTime<Utc>) {
        if let Some(b) = self.backups.get_mut(id) {
            b.set_status(status, t);
        }
    }

    fn set_volume_status(&mut self, id: &str, status: &str, t: DateTime<Utc>) {
        if let Some(v) = self.volumes.get_mut(id) {
            v.set_status(status, t);
        }
    }

    fn insert_volume(&mut self, id: &str, name: &str, size_gb: u64, status: &str) {
        let t = Utc::now();
        let mut v = SimVolume {
            vol: Volume {
                id: id.into(),
                name: name.into(),
                status: String::new(),
                size: size_gb,
                created_at: format_time(t),
                updated_at: None,
                attachments: Vec::new(),
                availability_zone: Some(AVAILABILITY_ZONE.into()),
                bootable: "false".into(),
            },
            description: None,
        };
        v.set_status(status, t);
        self.volumes.insert(id.into(), v);
    }

    /// Inserts a backup of `volume_id` in `status`, created at `created`.
    #[allow(clippy::too_many_arguments)]
    fn insert_backup(
        &mut self,
        id: &str,
        volume_id: &str,
        name: Option<String>,
        description: Option<String>,
        container: Option<String>,
        size: u64,
        status: &str,
        created: DateTime<Utc>,
        parent_id: Option<String>,
    ) {
        let stamp = format_time(created);
        let available = status == backup_status::AVAILABLE;
        self.backups.insert(
            id.into(),
            SimBackup {
                b: Backup {
                    id: id.into(),
                    name: name.clone().unwrap_or_default(),
                    status: status.into(),
                    size,
                    volume_id: volume_id.into(),
                    snapshot_id: None,
                    container: Some(container.unwrap_or_else(|| DEFAULT_CONTAINER.into())),
                    object_count: if available { object_count(size) } else { 0 },
                    availability_zone: Some(AVAILABILITY_ZONE.into()),
                    created_at: stamp.clone(),
                    updated_at: Some(stamp.clone()),
                    data_timestamp: Some(stamp),
                    description,
                    fail_reason: None,
                    is_incremental: parent_id.is_some(),
                    has_dependent_backups: false,
                    links: Vec::new(),
                },
                name,
                created,
                updated: created,
                parent_id,
                dependents: 0,
                counted: false,
            },
        );
    }

    /// The newest `available` backup of a volume (an incremental's parent).
    fn latest_available(&self, volume_id: &str) -> Option<String> {
        self.backups
            .values()
            .filter(|b| b.b.volume_id == volume_id && b.b.status == backup_status::AVAILABLE)
            .max_by(|a, b| a.created.cmp(&b.created).then(a.b.id.cmp(&b.b.id)))
            .map(|b| b.b.id.clone())
    }

    /// Starts a restore (preconditions already checked): returns the
    /// volume's id and name.
    fn begin_restore(
        &mut self,
        backup_id: &str,
        target: Target,
        fail: bool,
        delay: Duration,
        duration: Duration,
    ) -> (String, String) {
        let now = Instant::now();
        let t = Utc::now();
        let (volume_id, new) = match &target {
            Target::Existing(v) => (v.clone(), None),
            Target::New { name, size } => (new_id(), Some((name.clone(), *size))),
        };
        if !delay.is_zero() {
            self.shadow_backup(backup_id, now + delay);
            self.shadow_volume(&volume_id, now + delay);
        }
        if let Some((name, size)) = new {
            self.insert_volume(&volume_id, &name, size, volume_status::CREATING);
            if let Some(v) = self.volumes.get_mut(&volume_id) {
                v.description = Some("auto-created_from_restore_from_backup".into());
            }
        }
        self.set_backup_status(backup_id, backup_status::RESTORING, t);
        self.set_volume_status(&volume_id, volume_status::RESTORING, t);
        let new_volume = matches!(target, Target::New { .. });
        self.ops.push(Op {
            work: Work::Restore {
                backup_id: backup_id.into(),
                volume_id: volume_id.clone(),
                new_volume,
                fail,
            },
            ends: now + delay + duration,
        });
        let name = self
            .volumes
            .get(&volume_id)
            .map(|v| v.vol.name.clone())
            .unwrap_or_default();
        (volume_id, name)
    }

    /// Starts a backup of an existing volume (preconditions already
    /// checked); returns its id.
    #[allow(clippy::too_many_arguments)]
    fn begin_backup(
        &mut self,
        volume_id: &str,
        name: Option<String>,
        description: Option<String>,
        container: Option<String>,
        parent_id: Option<String>,
        fail: Option<String>,
        delay: Duration,
        duration: Duration,
    ) -> Option<String> {
        let vol = self.volumes.get(volume_id)?.vol.clone();
        let now = Instant::now();
        let t = Utc::now();
        let id = new_id();
        if !delay.is_zero() {
            self.shadow_backup(&id, now + delay);
            self.shadow_volume(volume_id, now + delay);
        }
        self.insert_backup(
            &id,
            volume_id,
            name,
            description,
            container,
            vol.size,
            backup_status::CREATING,
            t,
            parent_id,
        );
        self.set_volume_status(volume_id, "backing-up", t);
        self.ops.push(Op {
            work: Work::Backup {
                backup_id: id.clone(),
                volume_id: volume_id.into(),
                volume_prev: vol.status,
                fail,
            },
            ends: now + delay + duration,
        });
        Some(id)
    }
}

/// Cinder's `links` of a backup: `self` (versioned) and `bookmark`.
fn backup_links(base: &str, pid: &str, id: &str) -> Vec<Link> {
    vec![
        Link {
            href: format!("{base}/v2/{pid}/backups/{id}"),
            rel: "self".into(),
        },
        Link {
            href: format!("{base}/{pid}/backups/{id}"),
            rel: "bookmark".into(),
        },
    ]
}

fn backup_wire(b: &SimBackup, base: &str, pid: &str) -> Backup {
    let mut out = b.b.clone();
    out.links = backup_links(base, pid, &b.b.id);
    out
}

/// A backup's detail as JSON (`name` `null` when it has none).
fn backup_detail_json(b: &SimBackup, base: &str, pid: &str) -> Value {
    let mut v = serde_json::to_value(backup_wire(b, base, pid)).unwrap_or(Value::Null);
    if b.name.is_none() {
        v["name"] = Value::Null;
    }
    v
}

fn backup_summary_json(b: &SimBackup, base: &str, pid: &str) -> Value {
    json!({
        "id": b.b.id,
        "name": b.name,
        "links": backup_links(base, pid, &b.b.id),
    })
}

fn volume_json(v: &SimVolume, base: &str, pid: &str) -> Value {
    let mut out = serde_json::to_value(&v.vol).unwrap_or(Value::Null);
    if let Some(o) = out.as_object_mut() {
        let id = &v.vol.id;
        o.insert(
            "links".into(),
            json!([
                {"href": format!("{base}/v2/{pid}/volumes/{id}"), "rel": "self"},
                {"href": format!("{base}/{pid}/volumes/{id}"), "rel": "bookmark"},
            ]),
        );
        o.insert("description".into(), json!(v.description));
        o.insert("metadata".into(), json!({}));
        o.insert("volume_type".into(), json!("SATA"));
        o.insert("encrypted".into(), json!(false));
        o.insert("multiattach".into(), json!(false));
        o.insert("os-vol-tenant-attr:tenant_id".into(), json!(pid));
    }
    out
}

/// Cinder's fault answer: `{"<faultName>":{"code","message"}}`.
pub fn fault_response(status: u16, message: &str) -> Response {
    fault_answer(Fault::new(status, message), None)
}

/// `f` as the body, with a `Retry-After` header when `retry_after` is set.
fn fault_answer(f: Fault, retry_after: Option<&str>) -> Response {
    let status = StatusCode::from_u16(f.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, Json(f.to_json())).into_response();
    if let Some(v) = retry_after.and_then(|s| HeaderValue::from_str(s).ok()) {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

/// The message Cinder gives a status it raises without one of its own.
fn default_message(status: StatusCode) -> String {
    match status.as_u16() {
        500 => "The server has either erred or is incapable of performing the requested operation."
            .into(),
        503 => "Service is unavailable at this time.".into(),
        429 => "This request was rate-limited.".into(),
        _ => status.canonical_reason().unwrap_or("Error").into(),
    }
}

fn bad(message: &str) -> Response {
    fault_response(400, message)
}

fn backup_missing(id: &str) -> Response {
    fault_response(404, &format!("Backup {id} could not be found."))
}

fn volume_missing(id: &str) -> Response {
    fault_response(404, &format!("Volume {id} could not be found."))
}

/// A JSON value as a schema error quotes it.
fn quoted(v: &Value) -> String {
    v.to_string()
}

/// What a request field may hold.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    StrOrNull,
    Bool,
}

fn invalid(field: &str, value: &Value, reason: &str) -> String {
    format!(
        "Invalid input for field/attribute {field}. Value: {}. {reason}",
        quoted(value)
    )
}

/// oslo's boolean strings, and JSON booleans.
fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "on" | "yes" | "y" | "t" => Some(true),
            "false" | "0" | "off" | "no" | "n" | "f" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Checks `{"<wrapper>": {...}}` against a schema with
/// `additionalProperties: false`: the inner object's fields, or the error
/// message. `null_ok`: the inner object may be `null` (read as `{}`).
fn validate(
    body: &[u8],
    wrapper: &str,
    fields: &[(&str, Kind)],
    required: &[&str],
    null_ok: bool,
) -> Result<Map<String, Value>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| "Malformed request body".to_string())?;
    let Some(top) = v.as_object() else {
        return Err(format!("{} is not of type 'object'", quoted(&v)));
    };
    if let Some(k) = top.keys().find(|k| k.as_str() != wrapper) {
        return Err(format!(
            "Additional properties are not allowed ('{k}' was unexpected)"
        ));
    }
    let inner = match top.get(wrapper) {
        None => return Err(format!("'{wrapper}' is a required property")),
        Some(Value::Null) if null_ok => return Ok(Map::new()),
        Some(Value::Object(o)) => o,
        Some(other) => {
            let want = if null_ok {
                "'object', 'null'"
            } else {
                "'object'"
            };
            return Err(invalid(
                wrapper,
                other,
                &format!("{} is not of type {want}", quoted(other)),
            ));
        }
    };
    let whole = Value::Object(inner.clone());
    if let Some(k) = inner.keys().find(|k| !fields.iter().any(|(f, _)| f == k)) {
        return Err(invalid(
            wrapper,
            &whole,
            &format!("Additional properties are not allowed ('{k}' was unexpected)"),
        ));
    }
    if let Some(r) = required.iter().find(|r| !inner.contains_key(**r)) {
        return Err(invalid(
            wrapper,
            &whole,
            &format!("'{r}' is a required property"),
        ));
    }
    for (name, kind) in fields {
        let Some(x) = inner.get(*name) else { continue };
        let ok = match kind {
            Kind::Str => x.is_string(),
            Kind::StrOrNull => x.is_string() || x.is_null(),
            Kind::Bool => as_bool(x).is_some(),
        };
        if !ok {
            let want = match kind {
                Kind::Str => "is not of type 'string'",
                Kind::StrOrNull => "is not of type 'string', 'null'",
                Kind::Bool => "is not valid under any of the given schemas",
            };
            return Err(invalid(name, x, &format!("{} {want}", quoted(x))));
        }
        if let Some(s) = x.as_str()
            && s.chars().count() > 255
        {
            return Err(invalid(name, x, &format!("{} is too long", quoted(x))));
        }
    }
    Ok(inner.clone())
}

fn opt_str(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_string)
}

fn world(inner: &Inner) -> MutexGuard<'_, World> {
    let mut w = lock(&inner.world);
    w.advance();
    w
}

impl Inner {
    fn fault(&self, r: Response) -> Response {
        self.counters.faults.fetch_add(1, Ordering::SeqCst);
        r
    }

    fn pid(&self) -> String {
        lock(&self.cfg).project_id.clone()
    }
}

impl Simulator {
    /// Binds `addr` (port 0 for a free port) and serves until shutdown.
    pub async fn start(addr: SocketAddr, cfg: SimConfig) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let keystone = KeystoneSim::new(&cfg.project_id);
        keystone.add_user(&cfg.user_name, &cfg.user_domain, &cfg.password);
        keystone.set_token_lifetime(cfg.token_lifetime);
        let inner = Arc::new(Inner {
            cfg: Mutex::new(cfg),
            world: Mutex::new(World::default()),
            counters: Counters::default(),
            keystone: keystone.clone(),
            base_url: format!("http://{addr}"),
        });
        let app = router(inner.clone())
            .merge(keystone.router())
            .fallback(|| async { fault_response(404, "The resource could not be found.") })
            .method_not_allowed_fallback(|| async {
                fault_response(
                    405,
                    "The method specified is not allowed for this resource.",
                )
            })
            .layer(middleware::from_fn_with_state(inner.clone(), gateway));
        let stop = Arc::new(Notify::new());
        serve(listener, app, stop.clone());
        Ok(Simulator { inner, addr, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`; the API is under `/v2/{project_id}/`.
    pub fn url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// `http://ADDR/v3`, the value for `auth_url`.
    pub fn auth_url(&self) -> String {
        format!("{}/v3", self.inner.base_url)
    }

    /// The Keystone behind the simulator (lifetimes, revocation, static
    /// tokens, application credentials, its counters).
    pub fn keystone(&self) -> KeystoneSim {
        self.inner.keystone.clone()
    }

    pub fn project_id(&self) -> String {
        self.inner.pid()
    }

    /// Changes the switches. A new user name, domain or password is added
    /// to Keystone (the old one keeps working) and a new `token_lifetime`
    /// applies to tokens issued from now on; `project_id` cannot change.
    pub fn configure(&self, f: impl FnOnce(&mut SimConfig)) {
        let (before, after) = {
            let mut c = lock(&self.inner.cfg);
            let before = c.clone();
            f(&mut c);
            c.project_id = before.project_id.clone();
            (before, c.clone())
        };
        if (&before.user_name, &before.user_domain, &before.password)
            != (&after.user_name, &after.user_domain, &after.password)
        {
            self.inner
                .keystone
                .add_user(&after.user_name, &after.user_domain, &after.password);
        }
        if before.token_lifetime != after.token_lifetime {
            self.inner.keystone.set_token_lifetime(after.token_lifetime);
        }
    }

    pub fn config(&self) -> SimConfig {
        lock(&self.inner.cfg).clone()
    }

    /// Stops accepting connections.
    pub fn shutdown(&self) {
        self.stop.notify_one();
    }

    /// Adds (or replaces) a volume; `status` "available", "in-use" (one
    /// attachment), "error", ...
    pub fn add_volume(&self, id: &str, name: &str, size_gb: u64, status: &str) {
        lock(&self.inner.world).insert_volume(id, name, size_gb, status);
    }

    /// Sets a volume's status (and `updated_at`); "in-use" gives it an
    /// attachment, "available" takes them away.
    pub fn set_volume_status(&self, id: &str, status: &str) {
        let mut w = world(&self.inner);
        w.set_volume_status(id, status, Utc::now());
    }

    /// The volume as `GET volumes/{id}` shows it.
    pub fn volume(&self, id: &str) -> Option<Volume> {
        world(&self.inner).view_volume(id).map(|v| v.vol.clone())
    }

    /// Adds an `available` backup of a volume, created now, of the volume's
    /// size; `None` if there is no such volume.
    pub fn add_backup(&self, volume_id: &str, name: &str) -> Option<String> {
        let mut w = world(&self.inner);
        let size = w.volumes.get(volume_id)?.vol.size;
        let id = new_id();
        w.insert_backup(
            &id,
            volume_id,
            Some(name.into()),
            None,
            None,
            size,
            backup_status::AVAILABLE,
            Utc::now(),
            None,
        );
        Some(id)
    }

    /// Adds (or replaces) an `available` backup with this id, size and
    /// creation time (the volume need not exist).
    pub fn add_backup_at(
        &self,
        id: &str,
        volume_id: &str,
        name: &str,
        size_gb: u64,
        created_at: DateTime<Utc>,
    ) {
        world(&self.inner).insert_backup(
            id,
            volume_id,
            Some(name.into()),
            None,
            None,
            size_gb,
            backup_status::AVAILABLE,
            created_at,
            None,
        );
    }

    /// Sets a backup's status (and `updated_at`).
    pub fn set_backup_status(&self, id: &str, status: &str) {
        world(&self.inner).set_backup_status(id, status, Utc::now());
    }

    /// The backup as `GET backups/{id}` shows it.
    pub fn backup(&self, id: &str) -> Option<Backup> {
        let pid = self.project_id();
        let w = world(&self.inner);
        w.view_backup(id)
            .map(|b| backup_wire(b, &self.inner.base_url, &pid))
    }

    /// Every backup `GET backups/detail` shows, newest first.
    pub fn backups(&self) -> Vec<Backup> {
        let pid = self.project_id();
        let w = world(&self.inner);
        let mut all = w.visible_backups();
        all.sort_by(|a, b| newest_first(a, b));
        all.into_iter()
            .map(|b| backup_wire(b, &self.inner.base_url, &pid))
            .collect()
    }

    /// Forces the next matching requests' answers (nothing is applied).
    pub fn inject(&self, inj: Injection) {
        let (method, path, times) = (inj.method.clone(), inj.path_contains.clone(), inj.times);
        lock(&self.inner.world)
            .injections
            .push(method, &path, times, inj);
    }

    /// The next `times` POSTs whose path contains `path_contains` meet
    /// `fault` ([`PostFault::ResetBeforeApply`]: whatever they are; the
    /// others: only once applied, i.e. answered 2xx). `ApplyThenError(s)`
    /// answers Cinder's fault body for `s`.
    pub fn arm_post(&self, path_contains: &str, fault: PostFault, times: u32) {
        lock(&self.inner.world)
            .armed
            .arm(path_contains, fault, times);
    }

    /// Forgets injections and armed faults not yet used.
    pub fn clear_faults(&self) {
        let mut w = lock(&self.inner.world);
        w.injections.clear();
        w.armed.clear();
    }

    /// How the next accepted restore ends.
    pub fn end_next_restore(&self, end: RestoreEnd) {
        lock(&self.inner.world).next_restore_end = Some(end);
    }

    /// The next accepted backup ends `error` with this `fail_reason`.
    pub fn fail_next_backup(&self, reason: &str) {
        lock(&self.inner.world).next_backup_failure = Some(reason.into());
    }

    /// Someone else's restore of `backup_id` onto `volume_id` starts now:
    /// the statuses of a real one (at once, whatever `trace_delay`), for
    /// `restore_duration`, ending well; not counted, not recorded.
    pub fn start_foreign_restore(&self, backup_id: &str, volume_id: &str) {
        let duration = self.config().restore_duration;
        world(&self.inner).begin_restore(
            backup_id,
            Target::Existing(volume_id.into()),
            false,
            Duration::ZERO,
            duration,
        );
    }

    /// Someone else's restore of `backup_id` onto `volume_id` that ended
    /// `age` ago: both `available`, with `updated_at` then.
    pub fn foreign_restore_done(&self, backup_id: &str, volume_id: &str, age: Duration) {
        let t = ago(age);
        let mut w = world(&self.inner);
        w.set_backup_status(backup_id, backup_status::AVAILABLE, t);
        w.set_volume_status(volume_id, volume_status::AVAILABLE, t);
    }

    /// Someone else's backup of `volume_id` starts now ("foreign-backup";
    /// the volume `backing-up`; at once, whatever `trace_delay`); `None` if
    /// there is no such volume.
    pub fn start_foreign_backup(&self, volume_id: &str) -> Option<String> {
        let duration = self.config().backup_duration;
        world(&self.inner).begin_backup(
            volume_id,
            Some(FOREIGN_BACKUP_NAME.into()),
            None,
            None,
            None,
            None,
            Duration::ZERO,
            duration,
        )
    }

    /// Someone else's `available` backup of `volume_id`, created `age` ago
    /// (it appears now); `None` if there is no such volume.
    pub fn add_foreign_backup(&self, volume_id: &str, age: Duration) -> Option<String> {
        let mut w = world(&self.inner);
        let size = w.volumes.get(volume_id)?.vol.size;
        let id = new_id();
        w.insert_backup(
            &id,
            volume_id,
            Some(FOREIGN_BACKUP_NAME.into()),
            None,
            None,
            size,
            backup_status::AVAILABLE,
            ago(age),
            None,
        );
        Some(id)
    }

    /// Whether a restore, backup or deletion is still running.
    pub fn busy(&self) -> bool {
        !world(&self.inner).ops.is_empty()
    }

    /// Every restore POST received, in order.
    pub fn restores(&self) -> Vec<ReceivedRestore> {
        lock(&self.inner.world).restores.clone()
    }

    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.inner.counters;
        CounterSnapshot {
            requests: c.requests.load(Ordering::SeqCst),
            restore_submits: c.restore_submits.load(Ordering::SeqCst),
            backup_submits: c.backup_submits.load(Ordering::SeqCst),
            delete_submits: c.delete_submits.load(Ordering::SeqCst),
            volume_polls: c.volume_polls.load(Ordering::SeqCst),
            backup_polls: c.backup_polls.load(Ordering::SeqCst),
            faults: c.faults.load(Ordering::SeqCst),
        }
    }

    /// The seed doc's volume (`2748f2f2-…`, "test_volume", 10 GiB,
    /// available) and backup (`1d1139d8-…`, "backup001", 10 GiB,
    /// available, created a day ago), an in-use 10 GiB volume
    /// ("data_in_use") and an available 1 GiB one ("small_volume").
    pub fn seed_demo(&self) -> DemoIds {
        self.add_volume(DEMO_VOLUME, "test_volume", 10, volume_status::AVAILABLE);
        self.add_volume(
            DEMO_IN_USE_VOLUME,
            "data_in_use",
            10,
            volume_status::AVAILABLE,
        );
        {
            let mut w = lock(&self.inner.world);
            if let Some(v) = w.volumes.get_mut(DEMO_IN_USE_VOLUME) {
                let t = Utc::now();
                v.vol.attachments = vec![attachment(DEMO_IN_USE_VOLUME, DEMO_SERVER, t)];
                v.set_status(volume_status::IN_USE, t);
            }
        }
        self.add_volume(
            DEMO_SMALL_VOLUME,
            "small_volume",
            1,
            volume_status::AVAILABLE,
        );
        self.add_backup_at(
            DEMO_BACKUP,
            DEMO_VOLUME,
            "backup001",
            10,
            ago(Duration::from_secs(86_400)),
        );
        DemoIds {
            project_id: self.project_id(),
            volume_id: DEMO_VOLUME.into(),
            in_use_volume_id: DEMO_IN_USE_VOLUME.into(),
            small_volume_id: DEMO_SMALL_VOLUME.into(),
            backup_id: DEMO_BACKUP.into(),
        }
    }
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route(
            "/v2/{pid}/backups",
            get(list_backups_summary).post(create_backup),
        )
        .route("/v2/{pid}/backups/detail", get(list_backups_detail))
        .route(
            "/v2/{pid}/backups/{id}",
            get(get_backup).delete(delete_backup),
        )
        .route("/v2/{pid}/backups/{id}/restore", post(restore))
        .route("/v2/{pid}/volumes/{id}", get(get_volume))
        .with_state(inner)
}

/// Keystonemiddleware and Cinder's front: the request id, latency, auth,
/// the project check, injections, random faults and armed POST faults.
async fn gateway(State(inner): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    inner.counters.requests.fetch_add(1, Ordering::SeqCst);
    let request_id = format!("req-{}", new_id());
    let mut resp = front(&inner, req, next).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-openstack-request-id", v);
    }
    resp
}

async fn front(inner: &Arc<Inner>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path != "/v2" && !path.starts_with("/v2/") {
        return next.run(req).await;
    }
    let cfg = lock(&inner.cfg).clone();
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    if !inner.keystone.check(req.headers()) {
        return unauthorized("The request you have made requires authentication.");
    }
    if let Some(pid) = path.split('/').nth(2)
        && !pid.is_empty()
        && pid != cfg.project_id
    {
        return bad("Malformed request url");
    }
    let method = req.method().clone();
    let injected = lock(&inner.world).injections.take(&method, &path);
    if let Some(i) = injected {
        let mut f = Fault::new(i.status, i.message.clone());
        if i.status == 413 {
            f.retry_after = i.retry_after.clone();
        }
        return inner.fault(fault_answer(f, i.retry_after.as_deref()));
    }
    let (throttle, error, unavailable) = {
        let mut rng = rand::rng();
        (
            rng.random::<f64>() < cfg.throttle_rate,
            rng.random::<f64>() < cfg.error_rate,
            rng.random::<bool>(),
        )
    };
    if throttle {
        let f = Fault::new(429, default_message(StatusCode::TOO_MANY_REQUESTS));
        return inner.fault(fault_answer(f, Some("1")));
    }
    if error {
        let s = if unavailable {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        return inner.fault(fault_response(s.as_u16(), &default_message(s)));
    }
    let kill = req.extensions().get::<Kill>().cloned();
    if method == Method::POST {
        let reset = lock(&inner.world).armed.take_before_apply(&path);
        if reset {
            inner.counters.faults.fetch_add(1, Ordering::SeqCst);
            return match kill {
                Some(k) => k.now().await,
                None => html_page(StatusCode::BAD_GATEWAY),
            };
        }
    }
    let resp = next.run(req).await;
    if method == Method::POST && resp.status().is_success() {
        let armed = lock(&inner.world).armed.take_after_apply(&path);
        if let Some(f) = armed {
            inner.counters.faults.fetch_add(1, Ordering::SeqCst);
            return after_apply(f, resp, kill.as_ref(), |s| {
                fault_response(s.as_u16(), &default_message(s))
            })
            .await;
        }
    }
    resp
}

async fn create_backup(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    use Kind::{Bool, Str, StrOrNull};
    let fields = [
        ("volume_id", Str),
        ("container", StrOrNull),
        ("description", StrOrNull),
        ("incremental", Bool),
        ("force", Bool),
        ("name", StrOrNull),
        ("snapshot_id", StrOrNull),
    ];
    let b = match validate(&body, "backup", &fields, &["volume_id"], false) {
        Ok(b) => b,
        Err(m) => return bad(&m),
    };
    let volume_id = opt_str(&b, "volume_id").unwrap_or_default();
    let flag = |k: &str| b.get(k).and_then(as_bool).unwrap_or(false);
    let (incremental, force) = (flag("incremental"), flag("force"));
    let (delay, duration, pid) = {
        let c = lock(&inner.cfg);
        (c.trace_delay, c.backup_duration, c.project_id.clone())
    };
    let mut w = world(&inner);
    let Some(vol) = w.volumes.get(&volume_id).map(|v| v.vol.clone()) else {
        return volume_missing(&volume_id);
    };
    if let Some(s) = opt_str(&b, "snapshot_id") {
        return fault_response(404, &format!("Snapshot {s} could not be found."));
    }
    if vol.status != volume_status::AVAILABLE && vol.status != volume_status::IN_USE {
        return bad(&format!(
            "Invalid volume: Volume to be backed up must be available or in-use, but the current status is \"{}\".",
            vol.status
        ));
    }
    if vol.status == volume_status::IN_USE && !force {
        return bad("Invalid volume: Backing up an in-use volume must use the force flag.");
    }
    let parent = if incremental {
        match w.latest_available(&volume_id) {
            Some(p) => Some(p),
            None => {
                return bad("Invalid backup: No backups available to do an incremental backup.");
            }
        }
    } else {
        None
    };
    let fail = w.next_backup_failure.take();
    let name = opt_str(&b, "name");
    let Some(id) = w.begin_backup(
        &volume_id,
        name.clone(),
        opt_str(&b, "description"),
        opt_str(&b, "container"),
        parent,
        fail,
        delay,
        duration,
    ) else {
        return volume_missing(&volume_id);
    };
    drop(w);
    inner.counters.backup_submits.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::ACCEPTED,
        Json(json!({"backup": {
            "id": id,
            "links": backup_links(&inner.base_url, &pid, &id),
            "name": name,
        }})),
    )
        .into_response()
}

/// Newest first: `created_at` then `id`, both descending.
fn newest_first(a: &SimBackup, b: &SimBackup) -> CmpOrdering {
    b.created.cmp(&a.created).then_with(|| b.b.id.cmp(&a.b.id))
}

/// The order of `sort_key`/`sort_dir`, then `created_at` and `id` in the
/// same direction.
fn sorter(key: &str, dir: &str) -> Result<impl Fn(&SimBackup, &SimBackup) -> CmpOrdering, String> {
    let desc = match dir {
        "desc" => true,
        "asc" => false,
        _ => {
            return Err(
                "Invalid input received: Unknown sort direction, must be 'desc' or 'asc'".into(),
            );
        }
    };
    let keys = [
        "created_at",
        "updated_at",
        "id",
        "name",
        "status",
        "size",
        "volume_id",
    ];
    if !keys.contains(&key) {
        return Err(format!("Invalid input received: Invalid sort key {key}"));
    }
    let key = key.to_string();
    Ok(move |a: &SimBackup, b: &SimBackup| {
        let first = match key.as_str() {
            "updated_at" => a.updated.cmp(&b.updated),
            "id" => a.b.id.cmp(&b.b.id),
            "name" => a.b.name.cmp(&b.b.name),
            "status" => a.b.status.cmp(&b.b.status),
            "size" => a.b.size.cmp(&b.b.size),
            "volume_id" => a.b.volume_id.cmp(&b.b.volume_id),
            _ => CmpOrdering::Equal,
        };
        let o = first
            .then_with(|| a.created.cmp(&b.created))
            .then_with(|| a.b.id.cmp(&b.b.id));
        if desc { o.reverse() } else { o }
    })
}

/// `application/x-www-form-urlencoded`, as Python's `urlencode`.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn list_backups_summary(
    State(inner): State<Arc<Inner>>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    list_backups(&inner, q, false)
}

async fn list_backups_detail(
    State(inner): State<Arc<Inner>>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    list_backups(&inner, q, true)
}

fn list_backups(
    inner: &Inner,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
    detail: bool,
) -> Response {
    inner.counters.backup_polls.fetch_add(1, Ordering::SeqCst);
    let Ok(Query(params)) = q else {
        return bad("Malformed request url");
    };
    let param = |k: &str| {
        params
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let max_limit = lock(&inner.cfg).max_limit;
    let limit = match param("limit") {
        None => max_limit,
        Some(l) => match l.trim().parse::<i64>() {
            Err(_) => return bad("limit param must be an integer"),
            Ok(n) if n < 0 => return bad("limit param must be positive"),
            Ok(n) => usize::try_from(n).unwrap_or(usize::MAX).min(max_limit),
        },
    };
    let cmp = match sorter(
        param("sort_key").unwrap_or("created_at"),
        param("sort_dir").unwrap_or("desc"),
    ) {
        Ok(c) => c,
        Err(m) => return bad(&m),
    };
    let pid = inner.pid();
    let base = &inner.base_url;
    let w = world(inner);
    let mut all = w.visible_backups();
    all.sort_by(|a, b| cmp(a, b));
    let start = match param("marker").filter(|m| !m.is_empty()) {
        None => 0,
        Some(m) => match all.iter().position(|b| b.b.id == m) {
            Some(p) => p + 1,
            None => return bad(&format!("Marker {m} could not be found.")),
        },
    };
    let page: Vec<&SimBackup> = all
        .into_iter()
        .skip(start)
        .filter(|b| param("volume_id").is_none_or(|v| v == b.b.volume_id))
        .filter(|b| param("status").is_none_or(|s| s == b.b.status))
        .filter(|b| param("name").is_none_or(|n| n == b.b.name))
        .take(limit)
        .collect();
    let items: Vec<Value> = page
        .iter()
        .map(|b| {
            if detail {
                backup_detail_json(b, base, &pid)
            } else {
                backup_summary_json(b, base, &pid)
            }
        })
        .collect();
    let mut out = Map::new();
    out.insert("backups".into(), Value::Array(items));
    if let Some(last) = page.last()
        && page.len() >= limit
    {
        let mut query: Vec<String> = params
            .iter()
            .filter(|(k, _)| k != "marker")
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect();
        query.push(format!("marker={}", form_encode(&last.b.id)));
        let coll = if detail { "backups/detail" } else { "backups" };
        out.insert(
            "backups_links".into(),
            json!([{
                "href": format!("{base}/v2/{pid}/{coll}?{}", query.join("&")),
                "rel": "next",
            }]),
        );
    }
    Json(Value::Object(out)).into_response()
}

async fn get_backup(
    State(inner): State<Arc<Inner>>,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    inner.counters.backup_polls.fetch_add(1, Ordering::SeqCst);
    let pid = inner.pid();
    let w = world(&inner);
    match w.view_backup(&id) {
        Some(b) => {
            Json(json!({"backup": backup_detail_json(b, &inner.base_url, &pid)})).into_response()
        }
        None => backup_missing(&id),
    }
}

async fn delete_backup(
    State(inner): State<Arc<Inner>>,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    let duration = lock(&inner.cfg).delete_duration;
    let mut w = world(&inner);
    let Some(b) = w.backups.get(&id) else {
        return backup_missing(&id);
    };
    if b.b.status != backup_status::AVAILABLE && b.b.status != backup_status::ERROR {
        return bad("Invalid backup: Backup status must be available or error");
    }
    if b.dependents > 0 {
        return bad("Invalid backup: Incremental backups exist for this backup.");
    }
    w.set_backup_status(&id, backup_status::DELETING, Utc::now());
    w.ops.push(Op {
        work: Work::Delete { backup_id: id },
        ends: Instant::now() + duration,
    });
    drop(w);
    inner.counters.delete_submits.fetch_add(1, Ordering::SeqCst);
    StatusCode::ACCEPTED.into_response()
}

async fn restore(
    State(inner): State<Arc<Inner>>,
    Path((_, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let raw: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (delay, duration) = {
        let c = lock(&inner.cfg);
        (c.trace_delay, c.restore_duration)
    };
    let mut w = world(&inner);
    let resp = restore_in(&inner, &mut w, &id, &body, delay, duration);
    w.restores.push(ReceivedRestore {
        backup_id: id,
        body: raw,
        status: resp.status().as_u16(),
    });
    resp
}

fn restore_in(
    inner: &Inner,
    w: &mut World,
    id: &str,
    body: &[u8],
    delay: Duration,
    duration: Duration,
) -> Response {
    let fields = [("volume_id", Kind::StrOrNull), ("name", Kind::StrOrNull)];
    let r = match validate(body, "restore", &fields, &[], true) {
        Ok(r) => r,
        Err(m) => return bad(&m),
    };
    let Some(b) = w.backups.get(id) else {
        return backup_missing(id);
    };
    if b.b.status != backup_status::AVAILABLE {
        return bad("Invalid backup: Backup status must be available");
    }
    let size = b.b.size;
    let target = match opt_str(&r, "volume_id") {
        Some(vid) => {
            let Some(v) = w.volumes.get(&vid) else {
                return volume_missing(&vid);
            };
            if v.vol.status != volume_status::AVAILABLE {
                return bad("Invalid volume: Volume to be restored to must be available");
            }
            if v.vol.size < size {
                return bad(&format!(
                    "Invalid volume: volume size {} is too small to restore backup of size {size}.",
                    v.vol.size
                ));
            }
            Target::Existing(vid)
        }
        None => Target::New {
            name: opt_str(&r, "name").unwrap_or_else(|| format!("restore_backup_{id}")),
            size,
        },
    };
    let fail = w.next_restore_end.take() == Some(RestoreEnd::Error);
    let (volume_id, volume_name) = w.begin_restore(id, target, fail, delay, duration);
    inner
        .counters
        .restore_submits
        .fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::ACCEPTED,
        Json(RestoreAccepted {
            restore: RestoreInfo {
                backup_id: id.into(),
                volume_id,
                volume_name: Some(volume_name),
            },
        }),
    )
        .into_response()
}

async fn get_volume(
    State(inner): State<Arc<Inner>>,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    inner.counters.volume_polls.fetch_add(1, Ordering::SeqCst);
    let pid = inner.pid();
    let w = world(&inner);
    match w.view_volume(&id) {
        Some(v) => Json(json!({"volume": volume_json(v, &inner.base_url, &pid)})).into_response(),
        None => volume_missing(&id),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn schema_errors_name_the_field() {
        let f = [("volume_id", Kind::StrOrNull), ("name", Kind::StrOrNull)];
        assert!(
            validate(
                br#"{"restore":{"volume_id":"v","name":null}}"#,
                "restore",
                &f,
                &[],
                true
            )
            .is_ok()
        );
        assert!(
            validate(br#"{"restore":null}"#, "restore", &f, &[], true)
                .unwrap()
                .is_empty()
        );
        let e = validate(
            br#"{"restore":{"volume_id":"v","size":1}}"#,
            "restore",
            &f,
            &[],
            true,
        )
        .unwrap_err();
        assert!(e.contains("'size' was unexpected"), "{e}");
        let e = validate(br#"{"restore":{"volume_id":5}}"#, "restore", &f, &[], true).unwrap_err();
        assert!(
            e.starts_with("Invalid input for field/attribute volume_id."),
            "{e}"
        );
        assert_eq!(
            validate(b"{", "restore", &f, &[], true).unwrap_err(),
            "Malformed request body"
        );
        assert_eq!(
            validate(b"{}", "restore", &f, &[], true).unwrap_err(),
            "'restore' is a required property"
        );
    }

    #[test]
    fn form_encoding_is_pythons() {
        assert_eq!(form_encode("a b/c=d&e"), "a+b%2Fc%3Dd%26e");
        assert_eq!(form_encode("1d1139d8-8989"), "1d1139d8-8989");
    }
}
