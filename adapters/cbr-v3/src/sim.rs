//! A simulator of the v3 project-backup (CBR) API that Custos uses
//! (`backends.md` §2): servers with attached volumes, backups (a server
//! backup has one child disk backup per attached volume), checkpoints,
//! restores, deletions and operation logs that move through their states
//! over configurable durations, with the service's `{"error_code",
//! "error_msg"}` errors and the restore preconditions of the API reference.
//!
//! Auth is the Keystone simulator of `custos-openstack`, mounted so that
//! `{url}/v3` is the `auth_url`; every CBR request needs a valid
//! `X-Auth-Token`, else 401 with the API gateway's `APIGW.0301` body.
//!
//! Switches ([`SimConfig`]) add latency, 500/503 and 429 (`APIG.0308`)
//! faults; [`Simulator::inject`] forces answers; [`Simulator::arm_post`]
//! makes the next POSTs be applied and then answered with a proxy's HTML
//! page, a 5xx, late, with a huge body or a broken connection (or break
//! before anything is applied); [`Simulator::add_op_log`] leaves someone
//! else's op-log on a resource; `op_log_delay` shows op-logs late; [`Simulator::end_next_restore`] makes the next restore's op-log end
//! `failed`, `timeout` or `skipped`. Counters ([`CounterSnapshot`]) and the
//! record of received restore bodies let tests prove what arrived.
//!
//! Where the API reference is silent, this simulator chooses \[INF\]:
//! - a malformed body or a missing required field: 400 `BackupService.0001`;
//! - a mapping whose `backup_id` is not a child of the backup: 400
//!   `BackupService.6217` (restore point not found);
//! - an unknown vault: 404 `BackupService.6100`; an unknown checkpoint:
//!   404 `BackupService.6217`; an unknown op-log: 404 `BackupService.6500`;
//! - a project id in the path that is not the token's: 403
//!   `BackupService.8600`;
//! - deleting a backup that is not `available`/`error`: 400
//!   `BackupService.6202`;
//! - `GET backups` lists top-level backups only (children are inside their
//!   parent) unless `parent_id` is given; `resource_id` on op-logs matches
//!   `extra_info.resource.id` and `extra_info.restore.target_resource_id`;
//! - an op-log is `waiting` for the first fifth of its duration, then
//!   `running` with a linear `progress`;
//! - a server's system disk is its first attached volume; a data-disk
//!   backup onto a system disk is `2013`; a server DELETED or
//!   SOFT_DELETED is `2007`;
//! - the rates apply to CBR paths only, not to `/v3/auth/tokens`;
//! - `start_time`/`end_time` are RFC 3339, or without an offset (UTC);
//! - a successful server restore leaves the server ACTIVE, or SHUTOFF
//!   with `power_on: false`.

use std::{
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
    extract::{Path, Query, State},
    http::{HeaderValue, Method, Request, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
pub use custos_adapter_core::sim::PostFault;
use custos_adapter_core::sim::{ArmedPosts, Injections, Kill, after_apply, lock, serve};
use custos_openstack::sim::KeystoneSim;
use rand::Rng;
use serde_json::Value;
use tokio::{net::TcpListener, sync::Notify, time::Instant};

use crate::wire::{
    BackupEnvelope, BackupList, BackupResp, CheckpointCreateRequest, CheckpointEnvelope,
    CheckpointExtraInfo, CheckpointResource, CheckpointResp, CheckpointVault, DISK_PROVIDER_ID,
    ErrorBody, OpBackupInfo, OpCommon, OpErrorInfo, OpExtraInfo, OpResource, OpRestoreInfo,
    OperationLog, OperationLogEnvelope, OperationLogList, RestoreRequest, SERVER_PROVIDER_ID,
    SERVER_TYPE, VOLUME_TYPE, backup_status, op_status,
};

/// Behaviour switches; change them at run time with [`Simulator::configure`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The one project; CBR paths must name it.
    pub project_id: String,
    /// The Keystone password user (name, domain, password).
    pub user_name: String,
    pub user_domain: String,
    pub password: String,
    /// Life of tokens issued from start (change later through
    /// [`Simulator::keystone`]).
    pub token_lifetime: Duration,
    /// Added to every answer.
    pub latency: Duration,
    /// How long a restore's op-log takes from `waiting` to its end.
    pub restore_duration: Duration,
    /// How long a checkpoint's backup stays `protecting`.
    pub backup_duration: Duration,
    /// How long a deleted backup stays `deleting`.
    pub delete_duration: Duration,
    /// Share of CBR requests answered 500 `BackupService.0002` or a plain
    /// 503 (not applied).
    pub error_rate: f64,
    /// Share of CBR requests answered 429 `APIG.0308` (not applied).
    pub throttle_rate: f64,
    /// Access keys accepted with AK/SK signing (§2.1 option B; the
    /// signature is not checked).
    pub access_keys: Vec<String>,
    /// An op-log shows in `GET operation-logs` only this long after it was
    /// created (a slow backend); `GET operation-logs/{id}` at once.
    pub op_log_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            project_id: "f841e01fd2b14e7fa41b6ae7aa6b0594".into(),
            user_name: "custos".into(),
            user_domain: "custos-domain".into(),
            password: "custos-password".into(),
            token_lifetime: Duration::from_secs(86_400),
            latency: Duration::ZERO,
            restore_duration: Duration::from_millis(300),
            backup_duration: Duration::from_millis(300),
            delete_duration: Duration::from_millis(200),
            error_rate: 0.0,
            throttle_rate: 0.0,
            access_keys: Vec::new(),
            op_log_delay: Duration::ZERO,
        }
    }
}

/// What the simulator counted; every field only grows.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    restore_submits: AtomicU64,
    checkpoint_submits: AtomicU64,
    delete_submits: AtomicU64,
    op_log_polls: AtomicU64,
    faults: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Every request, Keystone's included.
    pub requests: u64,
    /// Accepted restores (202).
    pub restore_submits: u64,
    /// Accepted checkpoints (200).
    pub checkpoint_submits: u64,
    /// Accepted deletions (204).
    pub delete_submits: u64,
    /// `GET operation-logs` and `GET operation-logs/{id}`.
    pub op_log_polls: u64,
    /// Random, injected and armed faults answered.
    pub faults: u64,
}

/// A forced answer for the next `times` requests whose method matches and
/// whose path contains `path_contains` (nothing is applied).
#[derive(Debug, Clone)]
pub struct Injection {
    pub method: Method,
    pub path_contains: String,
    pub status: u16,
    pub error_code: String,
    pub error_msg: String,
    pub times: u32,
}

/// How the next restore's op-log ends ([`Simulator::end_next_restore`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreEnd {
    Success,
    /// `failed` with this `error_info`.
    Failed {
        code: String,
        message: String,
    },
    Timeout,
    Skipped,
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
    pub vault_id: String,
    pub server_id: String,
    /// 40 GB.
    pub system_volume_id: String,
    /// 100 GB.
    pub data_volume_id: String,
    pub server_backup_id: String,
    /// The server backup's child of the system disk.
    pub system_child_id: String,
    /// The server backup's child of the data disk.
    pub data_child_id: String,
    /// A backup of the data disk alone.
    pub disk_backup_id: String,
}

#[derive(Debug, Clone)]
struct Server {
    name: String,
    status: String,
    volumes: Vec<String>,
}

#[derive(Debug, Clone)]
struct Volume {
    name: String,
    size_gb: u64,
    status: String,
    server: Option<String>,
}

#[derive(Debug, Clone)]
struct SimBackup {
    /// Without `children` (they are backups of their own).
    resp: BackupResp,
    children: Vec<String>,
    seq: u64,
}

#[derive(Debug, Clone)]
enum Work {
    /// Restore of `backup_id` onto `targets` (the server or volume first,
    /// then mapped volumes).
    Restore {
        backup_id: String,
        targets: Vec<String>,
        end: RestoreEnd,
        /// For a server restore: `power_on` (absent = true).
        power_on: Option<bool>,
    },
    /// Backups (with their children) made by `checkpoint_id`.
    Backup {
        backup_id: String,
        checkpoint_id: String,
        resource_ids: Vec<String>,
    },
    Delete {
        backup_id: String,
    },
}

#[derive(Debug, Clone)]
struct SimOp {
    log: OperationLog,
    seq: u64,
    created: DateTime<Utc>,
    started: Instant,
    duration: Duration,
    work: Work,
}

#[derive(Default)]
struct World {
    servers: HashMap<String, Server>,
    volumes: HashMap<String, Volume>,
    vaults: HashMap<String, String>,
    backups: HashMap<String, SimBackup>,
    checkpoints: HashMap<String, CheckpointResp>,
    ops: HashMap<String, SimOp>,
    seq: u64,
    /// Forced answers: status, `error_code`, `error_msg`.
    injections: Injections<(u16, String, String)>,
    armed: ArmedPosts,
    next_restore_end: Option<RestoreEnd>,
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

/// RFC 3339 with milliseconds and `+00:00`, as the API's examples.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, false)
}

fn now() -> String {
    ts(Utc::now())
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl World {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Server or volume: (name, type, size GB).
    /// Whether a volume is its server's system disk (the first attached).
    fn is_system_disk(&self, volume_id: &str) -> bool {
        self.volumes
            .get(volume_id)
            .and_then(|v| v.server.as_ref())
            .and_then(|s| self.servers.get(s))
            .is_some_and(|s| s.volumes.first().map(String::as_str) == Some(volume_id))
    }

    /// 400 `2013` if a data-disk backup would land on a system disk.
    fn data_onto_system(&self, backup_volume: &str, target: &str) -> Option<Response> {
        (!self.is_system_disk(backup_volume) && self.is_system_disk(target)).then(|| {
            bad(
                "BackupService.2013",
                "a data disk backup cannot be restored to a system disk",
            )
        })
    }

    fn resource(&self, id: &str) -> Option<(String, &'static str, u64)> {
        if let Some(s) = self.servers.get(id) {
            let size = s
                .volumes
                .iter()
                .filter_map(|v| self.volumes.get(v))
                .map(|v| v.size_gb)
                .sum();
            return Some((s.name.clone(), SERVER_TYPE, size));
        }
        self.volumes
            .get(id)
            .map(|v| (v.name.clone(), VOLUME_TYPE, v.size_gb))
    }

    /// A backup of `resource_id` (children for a server's volumes).
    fn make_backup(
        &mut self,
        resource_id: &str,
        name: &str,
        vault_id: &str,
        checkpoint_id: &str,
        status: &str,
        project_id: &str,
    ) -> Option<String> {
        let (rname, rtype, size) = self.resource(resource_id)?;
        let id = new_id();
        let stamp = now();
        let mut children = Vec::new();
        if rtype == SERVER_TYPE {
            let vols = self
                .servers
                .get(resource_id)
                .map(|s| s.volumes.clone())
                .unwrap_or_default();
            for v in vols {
                let Some(vol) = self.volumes.get(&v).cloned() else {
                    continue;
                };
                let cid = new_id();
                let seq = self.next_seq();
                self.backups.insert(
                    cid.clone(),
                    SimBackup {
                        resp: BackupResp {
                            id: cid.clone(),
                            name: format!("{name}-{}", vol.name),
                            checkpoint_id: checkpoint_id.into(),
                            vault_id: vault_id.into(),
                            project_id: project_id.into(),
                            provider_id: DISK_PROVIDER_ID.into(),
                            parent_id: Some(id.clone()),
                            resource_id: v.clone(),
                            resource_name: vol.name.clone(),
                            resource_type: VOLUME_TYPE.into(),
                            resource_size: vol.size_gb,
                            image_type: Some("backup".into()),
                            status: status.into(),
                            created_at: stamp.clone(),
                            updated_at: stamp.clone(),
                            ..Default::default()
                        },
                        children: Vec::new(),
                        seq,
                    },
                );
                children.push(cid);
            }
        }
        let seq = self.next_seq();
        self.backups.insert(
            id.clone(),
            SimBackup {
                resp: BackupResp {
                    id: id.clone(),
                    name: name.into(),
                    checkpoint_id: checkpoint_id.into(),
                    vault_id: vault_id.into(),
                    project_id: project_id.into(),
                    provider_id: if rtype == SERVER_TYPE {
                        SERVER_PROVIDER_ID
                    } else {
                        DISK_PROVIDER_ID
                    }
                    .into(),
                    resource_id: resource_id.into(),
                    resource_name: rname,
                    resource_type: rtype.into(),
                    resource_size: size,
                    image_type: Some("backup".into()),
                    status: status.into(),
                    created_at: stamp.clone(),
                    updated_at: stamp,
                    ..Default::default()
                },
                children,
                seq,
            },
        );
        Some(id)
    }

    /// The backup and its children with `status`.
    fn set_backup_status(&mut self, id: &str, status: &str) {
        let stamp = now();
        let children = self
            .backups
            .get(id)
            .map(|b| b.children.clone())
            .unwrap_or_default();
        for bid in std::iter::once(id.to_string()).chain(children) {
            if let Some(b) = self.backups.get_mut(&bid) {
                b.resp.status = status.into();
                b.resp.updated_at = stamp.clone();
            }
        }
    }

    /// The backup as the API shows it (children inside).
    fn view(&self, id: &str) -> Option<BackupResp> {
        let b = self.backups.get(id)?;
        let mut r = b.resp.clone();
        r.children = b
            .children
            .iter()
            .filter_map(|c| self.backups.get(c).map(|c| c.resp.clone()))
            .collect();
        Some(r)
    }

    fn live_ops(&self) -> impl Iterator<Item = &SimOp> {
        self.ops
            .values()
            .filter(|o| !op_status::is_terminal(&o.log.status))
    }

    /// Whether a restore is running onto any of `ids`.
    fn restoring(&self, ids: &[&str]) -> bool {
        self.live_ops().any(|o| match &o.work {
            Work::Restore { targets, .. } => targets.iter().any(|t| ids.contains(&t.as_str())),
            _ => false,
        })
    }

    /// Whether a backup is running of any of `ids` (a server's backup
    /// covers its volumes).
    fn backing_up(&self, ids: &[&str]) -> bool {
        self.live_ops().any(|o| match &o.work {
            Work::Backup { resource_ids, .. } => resource_ids.iter().any(|r| {
                ids.contains(&r.as_str())
                    || self
                        .servers
                        .get(r)
                        .is_some_and(|s| s.volumes.iter().any(|v| ids.contains(&v.as_str())))
            }),
            _ => false,
        })
    }

    /// Moves every op-log on to where its time says.
    fn advance(&mut self) {
        let t = Instant::now();
        let mut ended = Vec::new();
        for (id, op) in self.ops.iter_mut() {
            if op_status::is_terminal(&op.log.status) {
                continue;
            }
            let elapsed = t.saturating_duration_since(op.started);
            let stamp = now();
            if elapsed >= op.duration {
                ended.push(id.clone());
            } else if elapsed >= op.duration / 5 {
                if op.log.status != op_status::RUNNING {
                    op.log.status = op_status::RUNNING.into();
                    op.log.started_at = Some(stamp.clone());
                }
                let pct = (elapsed.as_secs_f64() / op.duration.as_secs_f64() * 100.0) as u32;
                if let Some(c) = op.log.extra_info.common.as_mut() {
                    c.progress = pct.min(99);
                }
                op.log.updated_at = stamp;
            }
        }
        for id in ended {
            let Some(op) = self.ops.get(&id).cloned() else {
                continue;
            };
            let stamp = now();
            let (status, error) = match &op.work {
                Work::Restore {
                    backup_id,
                    end,
                    targets,
                    power_on,
                } => {
                    self.set_backup_status(backup_id, backup_status::AVAILABLE);
                    if *end == RestoreEnd::Success
                        && let Some(p) = power_on
                        && let Some(s) = targets.first().and_then(|t| self.servers.get_mut(t))
                    {
                        s.status = if *p { "ACTIVE" } else { "SHUTOFF" }.into();
                    }
                    match end {
                        RestoreEnd::Success => (op_status::SUCCESS, OpErrorInfo::default()),
                        RestoreEnd::Failed { code, message } => (
                            op_status::FAILED,
                            OpErrorInfo {
                                code: code.clone(),
                                message: message.clone(),
                            },
                        ),
                        RestoreEnd::Timeout => (
                            op_status::TIMEOUT,
                            OpErrorInfo {
                                code: String::new(),
                                message: "the restore exceeded its time limit".into(),
                            },
                        ),
                        RestoreEnd::Skipped => (
                            op_status::SKIPPED,
                            OpErrorInfo {
                                code: String::new(),
                                message: "a pre-check of the restore failed".into(),
                            },
                        ),
                    }
                }
                Work::Backup {
                    backup_id,
                    checkpoint_id,
                    ..
                } => {
                    let ids: Vec<String> = self
                        .backups
                        .values()
                        .filter(|b| {
                            b.resp.checkpoint_id == *checkpoint_id && b.resp.parent_id.is_none()
                        })
                        .map(|b| b.resp.id.clone())
                        .collect();
                    let _ = backup_id;
                    for b in ids {
                        self.set_backup_status(&b, backup_status::AVAILABLE);
                    }
                    if let Some(c) = self.checkpoints.get_mut(checkpoint_id) {
                        c.status = "available".into();
                    }
                    (op_status::SUCCESS, OpErrorInfo::default())
                }
                Work::Delete { backup_id } => {
                    if let Some(b) = self.backups.remove(backup_id) {
                        for c in b.children {
                            self.backups.remove(&c);
                        }
                    }
                    (op_status::SUCCESS, OpErrorInfo::default())
                }
            };
            if let Some(op) = self.ops.get_mut(&id) {
                op.log.status = status.into();
                if op.log.started_at.is_none() {
                    op.log.started_at = Some(stamp.clone());
                }
                op.log.ended_at = Some(stamp.clone());
                op.log.updated_at = stamp;
                op.log.error_info = Some(error);
                if status == op_status::SUCCESS
                    && let Some(c) = op.log.extra_info.common.as_mut()
                {
                    c.progress = 100;
                }
            }
        }
    }

    fn start_op(
        &mut self,
        operation_type: &str,
        provider_id: &str,
        backup: &BackupResp,
        duration: Duration,
        extra_info: OpExtraInfo,
        work: Work,
    ) -> String {
        let id = new_id();
        let created = Utc::now();
        let seq = self.next_seq();
        let vault_name = self.vaults.get(&backup.vault_id).cloned();
        let mut extra_info = extra_info;
        extra_info.common = Some(OpCommon {
            progress: 0,
            request_id: Some(format!("req-{}", new_id())),
            task_id: Some(new_id()),
        });
        self.ops.insert(
            id.clone(),
            SimOp {
                log: OperationLog {
                    id: id.clone(),
                    status: op_status::WAITING.into(),
                    operation_type: operation_type.into(),
                    provider_id: provider_id.into(),
                    checkpoint_id: Some(backup.checkpoint_id.clone()),
                    project_id: backup.project_id.clone(),
                    vault_id: Some(backup.vault_id.clone()),
                    vault_name,
                    created_at: ts(created),
                    started_at: None,
                    updated_at: ts(created),
                    ended_at: None,
                    error_info: None,
                    extra_info,
                },
                seq,
                created,
                started: Instant::now(),
                duration,
                work,
            },
        );
        id
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
            .layer(middleware::from_fn_with_state(inner.clone(), gateway));
        let stop = Arc::new(Notify::new());
        serve(listener, app, stop.clone());
        Ok(Simulator { inner, addr, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the value for a backend's `endpoint`.
    pub fn url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// `http://ADDR/v3`, the value for `auth_url`.
    pub fn auth_url(&self) -> String {
        format!("{}/v3", self.inner.base_url)
    }

    /// The adapter's config for this simulator: its endpoint, project and
    /// Keystone password user.
    pub fn adapter_config(&self, vault_id: Option<String>, timeout: Duration) -> crate::CbrConfig {
        let c = self.config();
        crate::CbrConfig {
            endpoint: self.url(),
            project_id: c.project_id,
            vault_id,
            auth: custos_openstack::KeystoneAuth::Keystone {
                auth_url: self.auth_url(),
                credentials: custos_openstack::Credentials::Password {
                    user_name: c.user_name,
                    user_domain_name: c.user_domain,
                    password: c.password.into(),
                },
            },
            timeout,
        }
    }

    pub fn project_id(&self) -> String {
        lock(&self.inner.cfg).project_id.clone()
    }

    /// The Keystone behind the simulator (lifetimes, revocation, static
    /// tokens, its counters).
    pub fn keystone(&self) -> KeystoneSim {
        self.inner.keystone.clone()
    }

    pub fn shutdown(&self) {
        self.stop.notify_one();
    }

    pub fn configure(&self, f: impl FnOnce(&mut SimConfig)) {
        f(&mut lock(&self.inner.cfg));
    }

    pub fn config(&self) -> SimConfig {
        lock(&self.inner.cfg).clone()
    }

    /// Adds (or replaces) a server; `status` e.g. ACTIVE, SHUTOFF, ERROR.
    pub fn add_server(&self, id: &str, name: &str, status: &str, volumes: &[&str]) {
        lock(&self.inner.world).servers.insert(
            id.into(),
            Server {
                name: name.into(),
                status: status.into(),
                volumes: volumes.iter().map(|v| v.to_string()).collect(),
            },
        );
    }

    /// Adds (or replaces) a volume; `status` e.g. available, in-use, error.
    pub fn add_volume(
        &self,
        id: &str,
        name: &str,
        size_gb: u64,
        status: &str,
        server: Option<&str>,
    ) {
        lock(&self.inner.world).volumes.insert(
            id.into(),
            Volume {
                name: name.into(),
                size_gb,
                status: status.into(),
                server: server.map(str::to_string),
            },
        );
    }

    pub fn add_vault(&self, id: &str, name: &str) {
        lock(&self.inner.world)
            .vaults
            .insert(id.into(), name.into());
    }

    /// Adds an `available` backup of a server (with a child per attached
    /// volume) or a volume, in `vault_id`; `None` if the resource is unknown.
    pub fn add_backup(&self, resource_id: &str, name: &str, vault_id: &str) -> Option<String> {
        let project = self.project_id();
        lock(&self.inner.world).make_backup(
            resource_id,
            name,
            vault_id,
            &new_id(),
            backup_status::AVAILABLE,
            &project,
        )
    }

    /// Gives a backup (and its children) another id; for seeding fixed ids.
    pub fn rename_backup(&self, old: &str, new: &str) {
        let mut w = lock(&self.inner.world);
        let Some(mut b) = w.backups.remove(old) else {
            return;
        };
        b.resp.id = new.into();
        for c in &b.children {
            if let Some(c) = w.backups.get_mut(c) {
                c.resp.parent_id = Some(new.into());
            }
        }
        if let Some(p) = b.resp.parent_id.clone()
            && let Some(p) = w.backups.get_mut(&p)
        {
            for c in p.children.iter_mut() {
                if c == old {
                    *c = new.into();
                }
            }
        }
        w.backups.insert(new.into(), b);
    }

    /// A server's status (ACTIVE, SHUTOFF, ERROR, ...).
    pub fn server_status(&self, id: &str) -> Option<String> {
        let mut w = lock(&self.inner.world);
        w.advance();
        w.servers.get(id).map(|s| s.status.clone())
    }

    pub fn set_server_status(&self, id: &str, status: &str) {
        if let Some(s) = lock(&self.inner.world).servers.get_mut(id) {
            s.status = status.into();
        }
    }

    pub fn set_volume_status(&self, id: &str, status: &str) {
        if let Some(v) = lock(&self.inner.world).volumes.get_mut(id) {
            v.status = status.into();
        }
    }

    pub fn set_backup_status(&self, id: &str, status: &str) {
        lock(&self.inner.world).set_backup_status(id, status);
    }

    /// The backup as `GET backups/{id}` shows it.
    pub fn backup(&self, id: &str) -> Option<BackupResp> {
        let mut w = lock(&self.inner.world);
        w.advance();
        w.view(id)
    }

    /// Every op-log, newest first.
    pub fn operation_logs(&self) -> Vec<OperationLog> {
        let mut w = lock(&self.inner.world);
        w.advance();
        let mut ops: Vec<&SimOp> = w.ops.values().collect();
        ops.sort_by_key(|o| std::cmp::Reverse(o.seq));
        ops.into_iter().map(|o| o.log.clone()).collect()
    }

    /// Forces the next matching requests to fail.
    pub fn inject(&self, inj: Injection) {
        lock(&self.inner.world).injections.push(
            inj.method,
            &inj.path_contains,
            inj.times,
            (inj.status, inj.error_code, inj.error_msg),
        );
    }

    /// The next `times` POSTs whose path contains `path_contains` and that
    /// were applied are answered `status` with an HTML page (a proxy that
    /// gave up waiting), so the client cannot know they were applied.
    pub fn arm_apply_then_html(&self, path_contains: &str, status: u16, times: u32) {
        self.arm_post(path_contains, PostFault::ApplyThenHtml(status), times);
    }

    /// The next `times` POSTs whose path contains `path_contains` and that
    /// were applied (2xx) meet `fault`; refused ones are answered as usual.
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

    /// The next accepted restore's op-log ends this way.
    pub fn end_next_restore(&self, end: RestoreEnd) {
        lock(&self.inner.world).next_restore_end = Some(end);
    }

    /// An op-log someone else's work left on `target_id`: a `restore` of
    /// `backup_id` onto it, or a `backup` (of it, making `backup_id`),
    /// created `age` ago and already in `status` (a terminal one).
    pub fn add_op_log(
        &self,
        operation_type: &str,
        backup_id: &str,
        target_id: &str,
        status: &str,
        age: Duration,
    ) -> String {
        let mut w = lock(&self.inner.world);
        w.advance();
        let id = new_id();
        let created = Utc::now() - chrono::Duration::from_std(age).unwrap_or_default();
        let seq = w.next_seq();
        let (name, kind, _) = w
            .resource(target_id)
            .unwrap_or((String::new(), SERVER_TYPE, 0));
        let resource = Some(OpResource {
            id: target_id.into(),
            name: name.clone(),
            kind: kind.into(),
        });
        let extra_info = if operation_type == "restore" {
            OpExtraInfo {
                restore: Some(OpRestoreInfo {
                    backup_id: backup_id.into(),
                    backup_name: String::new(),
                    target_resource_id: target_id.into(),
                    target_resource_name: name,
                }),
                resource,
                ..Default::default()
            }
        } else {
            OpExtraInfo {
                backup: Some(OpBackupInfo {
                    backup_id: backup_id.into(),
                    backup_name: String::new(),
                }),
                resource,
                ..Default::default()
            }
        };
        let project_id = lock(&self.inner.cfg).project_id.clone();
        w.ops.insert(
            id.clone(),
            SimOp {
                log: OperationLog {
                    id: id.clone(),
                    status: status.into(),
                    operation_type: operation_type.into(),
                    project_id,
                    created_at: ts(created),
                    updated_at: ts(created),
                    error_info: Some(OpErrorInfo::default()),
                    extra_info,
                    ..Default::default()
                },
                seq,
                created,
                started: Instant::now(),
                duration: Duration::ZERO,
                work: Work::Delete {
                    backup_id: String::new(),
                },
            },
        );
        id
    }

    /// Whether any op-log is still `waiting` or `running`.
    pub fn busy(&self) -> bool {
        let mut w = lock(&self.inner.world);
        w.advance();
        w.live_ops().next().is_some()
    }

    /// Every restore body received, in order.
    pub fn restores(&self) -> Vec<ReceivedRestore> {
        lock(&self.inner.world).restores.clone()
    }

    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.inner.counters;
        CounterSnapshot {
            requests: c.requests.load(Ordering::SeqCst),
            restore_submits: c.restore_submits.load(Ordering::SeqCst),
            checkpoint_submits: c.checkpoint_submits.load(Ordering::SeqCst),
            delete_submits: c.delete_submits.load(Ordering::SeqCst),
            op_log_polls: c.op_log_polls.load(Ordering::SeqCst),
            faults: c.faults.load(Ordering::SeqCst),
        }
    }

    /// One server (`94eba8b2-…`, the seed's) with a 40 GB system disk
    /// (`eccbcfdd-…`, the seed's mapping target) and a 100 GB data disk; a
    /// vault; a server backup (`a5200268-…`) whose system-disk child is
    /// `5d822633-…` (so the API reference's example restore is accepted);
    /// and a backup of the data disk.
    pub fn seed_demo(&self) -> DemoIds {
        let project_id = self.project_id();
        let server_id = "94eba8b2-acc9-4d82-badc-127144cc5526";
        let system = "eccbcfdd-f843-4bbb-b2c0-a5ce861f9376";
        let data = "7c1d5b0e-3f5a-4a8e-9d0b-2f7e61c4a001";
        let vault_id = "3b5816b5-f29c-4172-9d9a-76c719a659ce";
        let server_backup = "a5200268-74a5-4806-acc6-95793ab0228b";
        let system_child = "5d822633-2bbf-4af8-a16e-5ab1c7705235";
        self.add_vault(vault_id, "vault-be94");
        self.add_volume(
            system,
            "ecs-1f0f-0002-system",
            40,
            "in-use",
            Some(server_id),
        );
        self.add_volume(data, "ecs-1f0f-0002-data", 100, "in-use", Some(server_id));
        self.add_server(server_id, "ecs-1f0f-0002", "ACTIVE", &[system, data]);
        let mut ids = DemoIds {
            project_id,
            vault_id: vault_id.into(),
            server_id: server_id.into(),
            system_volume_id: system.into(),
            data_volume_id: data.into(),
            server_backup_id: server_backup.into(),
            system_child_id: system_child.into(),
            data_child_id: String::new(),
            disk_backup_id: String::new(),
        };
        if let Some(b) = self.add_backup(server_id, "manualbk_server", vault_id) {
            self.rename_backup(&b, server_backup);
        }
        let children: Vec<BackupResp> = self
            .backup(server_backup)
            .map(|b| b.children)
            .unwrap_or_default();
        // Stable ids, so that examples (the README's) can name them.
        let data_child = "a3abe1e0-3486-4d3b-95af-2adec1184c86";
        let disk_backup = "30994307-70a4-4d1e-8c27-7ba06d97f8a5";
        for c in children {
            if c.resource_id == system {
                self.rename_backup(&c.id, system_child);
            } else {
                self.rename_backup(&c.id, data_child);
                ids.data_child_id = data_child.into();
            }
        }
        if let Some(b) = self.add_backup(data, "manualbk_data", vault_id) {
            self.rename_backup(&b, disk_backup);
            ids.disk_backup_id = disk_backup.into();
        }
        ids
    }
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/v3/{pid}/backups", get(list_backups))
        .route(
            "/v3/{pid}/backups/{id}",
            get(get_backup).delete(delete_backup),
        )
        .route("/v3/{pid}/backups/{id}/restore", post(restore))
        .route("/v3/{pid}/checkpoints", post(create_checkpoint))
        .route("/v3/{pid}/checkpoints/{id}", get(get_checkpoint))
        .route("/v3/{pid}/operation-logs", get(list_op_logs))
        .route("/v3/{pid}/operation-logs/{id}", get(get_op_log))
        .with_state(inner)
}

/// The service's error body, with an `X-Request-Id`.
pub fn error_response(status: StatusCode, code: &str, msg: &str) -> Response {
    let mut r = (
        status,
        Json(ErrorBody {
            error_code: code.into(),
            error_msg: msg.into(),
            request_id: None,
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&new_id()) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

fn bad(code: &str, msg: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, code, msg)
}

fn not_found(code: &str, msg: &str) -> Response {
    error_response(StatusCode::NOT_FOUND, code, msg)
}

/// The API gateway's body (it carries `request_id`).
fn gateway_error(status: StatusCode, code: &str, msg: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            error_code: code.into(),
            error_msg: msg.into(),
            request_id: Some(uuid::Uuid::new_v4().simple().to_string()),
        }),
    )
        .into_response()
}

fn fault(inner: &Inner, r: Response) -> Response {
    inner.counters.faults.fetch_add(1, Ordering::SeqCst);
    r
}

/// What the gateway does before and after the service: latency, auth,
/// the project check, injections, random faults, and armed POST faults.
async fn gateway(
    State(inner): State<Arc<Inner>>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    inner.counters.requests.fetch_add(1, Ordering::SeqCst);
    let cfg = lock(&inner.cfg).clone();
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path.starts_with("/v3/auth/") {
        return next.run(req).await;
    }
    if !ak_sk(&cfg, req.headers()) && !inner.keystone.check(req.headers()) {
        return gateway_error(
            StatusCode::UNAUTHORIZED,
            "APIGW.0301",
            "Incorrect IAM authentication information: decrypt token fail",
        );
    }
    let mut segs = path.trim_start_matches('/').split('/');
    if segs.next() == Some("v3")
        && let Some(pid) = segs.next()
        && pid != cfg.project_id
    {
        return error_response(
            StatusCode::FORBIDDEN,
            "BackupService.8600",
            "the project in the path is not the token's project",
        );
    }
    let injected = lock(&inner.world).injections.take(&method, &path);
    if let Some((status, code, msg)) = injected {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return fault(&inner, gateway_error(status, &code, &msg));
    }
    let (throttle, error, plain) = {
        let mut rng = rand::rng();
        (
            rng.random::<f64>() < cfg.throttle_rate,
            rng.random::<f64>() < cfg.error_rate,
            rng.random::<bool>(),
        )
    };
    if throttle {
        return fault(
            &inner,
            gateway_error(
                StatusCode::TOO_MANY_REQUESTS,
                "APIG.0308",
                "The throttling threshold has been reached",
            ),
        );
    }
    if error {
        let r = if plain {
            (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response()
        } else {
            service_busy(StatusCode::INTERNAL_SERVER_ERROR)
        };
        return fault(&inner, r);
    }
    let kill = req.extensions().get::<Kill>().cloned();
    if method == Method::POST
        && lock(&inner.world).armed.take_before_apply(&path)
        && let Some(k) = &kill
    {
        inner.counters.faults.fetch_add(1, Ordering::SeqCst);
        return k.now().await;
    }
    let resp = next.run(req).await;
    let armed = if method == Method::POST && resp.status().is_success() {
        lock(&inner.world).armed.take_after_apply(&path)
    } else {
        None
    };
    match armed {
        Some(f) => {
            inner.counters.faults.fetch_add(1, Ordering::SeqCst);
            after_apply(f, resp, kill.as_ref(), service_busy).await
        }
        None => resp,
    }
}

/// The service's 5xx body (a random error, or an applied POST answered
/// [`PostFault::ApplyThenError`]).
fn service_busy(status: StatusCode) -> Response {
    error_response(
        status,
        "BackupService.0002",
        "resources are being backed up, try again later",
    )
}

/// Option B of §2.1: `Authorization: SDK-HMAC-SHA256 Access=<AK>, …` with
/// a known access key and `X-Project-Id` naming the project. The signature
/// is not verified.
fn ak_sk(cfg: &SimConfig, h: &axum::http::HeaderMap) -> bool {
    let header = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
    let Some(auth) = header("authorization") else {
        return false;
    };
    let Some(params) = auth.strip_prefix("SDK-HMAC-SHA256 ") else {
        return false;
    };
    let access = params
        .split(',')
        .filter_map(|p| p.trim().strip_prefix("Access="))
        .next();
    access.is_some_and(|a| cfg.access_keys.iter().any(|k| k == a))
        && params.contains("Signature=")
        && header("x-sdk-date").is_some()
        && header("x-project-id") == Some(cfg.project_id.as_str())
}

fn world(inner: &Inner) -> MutexGuard<'_, World> {
    let mut w = lock(&inner.world);
    w.advance();
    w
}

fn backup_missing(id: &str) -> Response {
    not_found("BackupService.6200", &format!("backup {id} not found"))
}

fn parse_page(q: &HashMap<String, String>) -> Result<(usize, usize), Box<Response>> {
    let num = |k: &str, default: usize| -> Result<usize, Box<Response>> {
        match q.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| Box::new(bad("BackupService.0001", &format!("invalid {k}: {v:?}")))),
        }
    };
    let limit = num("limit", 1000)?;
    let offset = num("offset", 0)?;
    if !(1..=1000).contains(&limit) {
        return Err(Box::new(bad(
            "BackupService.0001",
            "limit must be between 1 and 1000",
        )));
    }
    Ok((limit, offset))
}

async fn list_backups(
    State(inner): State<Arc<Inner>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (limit, offset) = match parse_page(&q) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let w = world(&inner);
    let mut all: Vec<&SimBackup> = w
        .backups
        .values()
        .filter(|b| match q.get("parent_id") {
            Some(p) => b.resp.parent_id.as_deref() == Some(p.as_str()),
            None => b.resp.parent_id.is_none(),
        })
        .filter(|b| {
            q.get("resource_id")
                .is_none_or(|r| *r == b.resp.resource_id)
        })
        .filter(|b| {
            q.get("checkpoint_id")
                .is_none_or(|c| *c == b.resp.checkpoint_id)
        })
        .filter(|b| q.get("vault_id").is_none_or(|v| *v == b.resp.vault_id))
        .filter(|b| q.get("status").is_none_or(|s| *s == b.resp.status))
        .collect();
    all.sort_by_key(|o| std::cmp::Reverse(o.seq));
    let count = all.len() as u64;
    let backups = all
        .into_iter()
        .skip(offset)
        .take(limit)
        .filter_map(|b| w.view(&b.resp.id))
        .collect();
    Json(BackupList {
        backups,
        count,
        offset: offset as u64,
        limit: limit as u64,
    })
    .into_response()
}

async fn get_backup(
    State(inner): State<Arc<Inner>>,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    match world(&inner).view(&id) {
        Some(backup) => Json(BackupEnvelope { backup }).into_response(),
        None => backup_missing(&id),
    }
}

async fn delete_backup(
    State(inner): State<Arc<Inner>>,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    let duration = lock(&inner.cfg).delete_duration;
    let mut w = world(&inner);
    let Some(b) = w.view(&id) else {
        return backup_missing(&id);
    };
    if b.status != backup_status::AVAILABLE && b.status != backup_status::ERROR {
        return bad(
            "BackupService.6202",
            &format!("the backup cannot be deleted while it is {}", b.status),
        );
    }
    w.set_backup_status(&id, backup_status::DELETING);
    let extra = OpExtraInfo {
        delete: Some(OpBackupInfo {
            backup_id: b.id.clone(),
            backup_name: b.name.clone(),
        }),
        resource: Some(OpResource {
            id: b.resource_id.clone(),
            name: b.resource_name.clone(),
            kind: b.resource_type.clone(),
        }),
        ..Default::default()
    };
    w.start_op(
        "delete",
        &b.provider_id,
        &b,
        duration,
        extra,
        Work::Delete { backup_id: id },
    );
    inner.counters.delete_submits.fetch_add(1, Ordering::SeqCst);
    StatusCode::NO_CONTENT.into_response()
}

async fn restore(
    State(inner): State<Arc<Inner>>,
    Path((_, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let raw: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let duration = lock(&inner.cfg).restore_duration;
    let mut w = world(&inner);
    let resp = restore_in(&inner, &mut w, &id, &body, duration);
    w.restores.push(ReceivedRestore {
        backup_id: id,
        body: raw,
        status: resp.status().as_u16(),
    });
    resp
}

fn restore_in(inner: &Inner, w: &mut World, id: &str, body: &[u8], duration: Duration) -> Response {
    let Some(b) = w.view(id) else {
        return backup_missing(id);
    };
    let req: RestoreRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad("BackupService.0001", &format!("invalid request body: {e}")),
    };
    let r = req.restore;
    if b.status != backup_status::AVAILABLE {
        return bad(
            "BackupService.2005",
            &format!(
                "restoration is not allowed while the backup is {}",
                b.status
            ),
        );
    }
    // (target id, target name, every resource the restore writes)
    let (target, target_name, touched): (String, String, Vec<String>) =
        if b.resource_type == SERVER_TYPE {
            let Some(server_id) = r.server_id.clone() else {
                return bad(
                    "BackupService.0001",
                    "server_id is required to restore a server backup",
                );
            };
            let mappings = match &r.mappings {
                Some(m) if !m.is_empty() => m.clone(),
                _ => {
                    return bad(
                        "BackupService.0001",
                        "mappings are required to restore a server backup",
                    );
                }
            };
            let Some(server) = w.servers.get(&server_id).cloned() else {
                return not_found(
                    "BackupService.6302",
                    &format!("server {server_id} not found"),
                );
            };
            if server_id != b.resource_id {
                return bad(
                    "BackupService.2003",
                    "restoring to a different server is not allowed",
                );
            }
            if matches!(server.status.as_str(), "DELETED" | "SOFT_DELETED") {
                return bad("BackupService.2007", "the server has been terminated");
            }
            if server.status == "ERROR" {
                return bad(
                    "BackupService.2008",
                    "the server's status does not allow restoration",
                );
            }
            let mut touched = vec![server_id.clone()];
            for m in &mappings {
                let Some(child) = b.children.iter().find(|c| c.id == m.backup_id) else {
                    return bad(
                        "BackupService.6217",
                        &format!("{} is not a disk backup of backup {id}", m.backup_id),
                    );
                };
                let Some(vol) = w.volumes.get(&m.volume_id) else {
                    return not_found(
                        "BackupService.6302",
                        &format!("volume {} not found", m.volume_id),
                    );
                };
                if vol.status == "error" {
                    return bad(
                        "BackupService.2011",
                        "the disk's status does not allow restoration",
                    );
                }
                if vol.size_gb < child.resource_size {
                    return bad("BackupService.2001", "the disk is smaller than the backup");
                }
                if let Some(r) = w.data_onto_system(&child.resource_id, &m.volume_id) {
                    return r;
                }
                touched.push(m.volume_id.clone());
            }
            (server_id, server.name, touched)
        } else {
            let Some(volume_id) = r.volume_id.clone() else {
                return bad(
                    "BackupService.0001",
                    "volume_id is required to restore a disk backup",
                );
            };
            let Some(vol) = w.volumes.get(&volume_id).cloned() else {
                return not_found(
                    "BackupService.6302",
                    &format!("volume {volume_id} not found"),
                );
            };
            if vol.size_gb < b.resource_size {
                return bad("BackupService.2001", "the disk is smaller than the backup");
            }
            if vol.status == "error" {
                return bad(
                    "BackupService.2011",
                    "the disk's status does not allow restoration",
                );
            }
            if let Some(r) = w.data_onto_system(&b.resource_id, &volume_id) {
                return r;
            }
            let mut touched = vec![volume_id.clone()];
            touched.extend(vol.server.clone());
            (volume_id, vol.name, touched)
        };
    let touched_refs: Vec<&str> = touched.iter().map(String::as_str).collect();
    if w.restoring(&touched_refs) {
        return bad(
            "BackupService.2010",
            "the resource is being restored; try again later",
        );
    }
    if w.backing_up(&touched_refs) {
        return bad("BackupService.2002", "the resource is being backed up");
    }
    w.set_backup_status(id, backup_status::RESTORING);
    let end = w.next_restore_end.take().unwrap_or(RestoreEnd::Success);
    let kind = if b.resource_type == SERVER_TYPE {
        SERVER_TYPE
    } else {
        VOLUME_TYPE
    };
    let extra = OpExtraInfo {
        restore: Some(OpRestoreInfo {
            backup_id: b.id.clone(),
            backup_name: b.name.clone(),
            target_resource_id: target.clone(),
            target_resource_name: target_name.clone(),
        }),
        resource: Some(OpResource {
            id: target.clone(),
            name: target_name,
            kind: kind.into(),
        }),
        ..Default::default()
    };
    let mut targets = vec![target];
    targets.extend(touched.into_iter().skip(1));
    w.start_op(
        "restore",
        &b.provider_id,
        &b,
        duration,
        extra,
        Work::Restore {
            backup_id: id.into(),
            targets,
            end,
            power_on: (b.resource_type == SERVER_TYPE).then(|| r.power_on.unwrap_or(true)),
        },
    );
    inner
        .counters
        .restore_submits
        .fetch_add(1, Ordering::SeqCst);
    StatusCode::ACCEPTED.into_response()
}

async fn create_checkpoint(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let req: CheckpointCreateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad("BackupService.0001", &format!("invalid request body: {e}")),
    };
    let (duration, project) = {
        let c = lock(&inner.cfg);
        (c.backup_duration, c.project_id.clone())
    };
    let c = req.checkpoint;
    let mut w = world(&inner);
    let Some(vault_name) = w.vaults.get(&c.vault_id).cloned() else {
        return not_found(
            "BackupService.6100",
            &format!("vault {} not found", c.vault_id),
        );
    };
    if c.parameters.resources.is_empty() {
        return bad("BackupService.0001", "parameters.resources is empty");
    }
    let mut resources = Vec::new();
    for r in &c.parameters.resources {
        let Some((name, kind, size)) = w.resource(r) else {
            return not_found("BackupService.6302", &format!("resource {r} not found"));
        };
        resources.push(CheckpointResource {
            id: r.clone(),
            name,
            kind: kind.into(),
            resource_size: size,
            protect_status: "available".into(),
        });
    }
    let refs: Vec<&str> = c.parameters.resources.iter().map(String::as_str).collect();
    if w.backing_up(&refs) {
        return bad("BackupService.2002", "the resource is being backed up");
    }
    let checkpoint_id = new_id();
    let name = c
        .parameters
        .name
        .clone()
        .unwrap_or_else(|| format!("manualbk_{}", &checkpoint_id[..4]));
    for r in &resources {
        let Some(bid) = w.make_backup(
            &r.id,
            &name,
            &c.vault_id,
            &checkpoint_id,
            backup_status::PROTECTING,
            &project,
        ) else {
            continue;
        };
        let Some(b) = w.view(&bid) else { continue };
        let extra = OpExtraInfo {
            backup: Some(OpBackupInfo {
                backup_id: bid.clone(),
                backup_name: b.name.clone(),
            }),
            resource: Some(OpResource {
                id: r.id.clone(),
                name: r.name.clone(),
                kind: r.kind.clone(),
            }),
            ..Default::default()
        };
        w.start_op(
            "backup",
            &b.provider_id,
            &b,
            duration,
            extra,
            Work::Backup {
                backup_id: bid,
                checkpoint_id: checkpoint_id.clone(),
                resource_ids: vec![r.id.clone()],
            },
        );
    }
    let cp = CheckpointResp {
        id: checkpoint_id.clone(),
        project_id: project,
        status: "protecting".into(),
        created_at: now(),
        vault: CheckpointVault {
            id: c.vault_id.clone(),
            name: vault_name,
            resources,
            skipped_resources: Vec::new(),
        },
        extra_info: CheckpointExtraInfo {
            name,
            description: c.parameters.description.clone().unwrap_or_default(),
            retention_duration: -1,
        },
    };
    w.checkpoints.insert(checkpoint_id, cp.clone());
    inner
        .counters
        .checkpoint_submits
        .fetch_add(1, Ordering::SeqCst);
    Json(CheckpointEnvelope { checkpoint: cp }).into_response()
}

async fn get_checkpoint(
    State(inner): State<Arc<Inner>>,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    match world(&inner).checkpoints.get(&id) {
        Some(c) => Json(CheckpointEnvelope {
            checkpoint: c.clone(),
        })
        .into_response(),
        None => not_found("BackupService.6217", &format!("checkpoint {id} not found")),
    }
}

async fn list_op_logs(
    State(inner): State<Arc<Inner>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    inner.counters.op_log_polls.fetch_add(1, Ordering::SeqCst);
    let (limit, offset) = match parse_page(&q) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let time = |k: &str| -> Result<Option<DateTime<FixedOffset>>, Box<Response>> {
        q.get(k)
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .or_else(|_| {
                        chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f")
                            .map(|n| n.and_utc().fixed_offset())
                    })
                    .map_err(|_| {
                        Box::new(bad("BackupService.0001", &format!("invalid {k}: {v:?}")))
                    })
            })
            .transpose()
    };
    let (start, end) = match (time("start_time"), time("end_time")) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    let delay = lock(&inner.cfg).op_log_delay;
    let shown = Instant::now();
    let w = world(&inner);
    let mut all: Vec<&SimOp> = w
        .ops
        .values()
        .filter(|o| {
            q.get("operation_type")
                .is_none_or(|t| *t == o.log.operation_type)
        })
        .filter(|o| q.get("status").is_none_or(|s| *s == o.log.status))
        .filter(|o| {
            q.get("resource_id").is_none_or(|r| {
                let e = &o.log.extra_info;
                e.resource.as_ref().is_some_and(|x| x.id == *r)
                    || e.restore
                        .as_ref()
                        .is_some_and(|x| x.target_resource_id == *r)
            })
        })
        .filter(|o| start.is_none_or(|s| o.created >= s))
        .filter(|o| end.is_none_or(|e| o.created <= e))
        .filter(|o| shown.saturating_duration_since(o.started) >= delay)
        .collect();
    all.sort_by_key(|o| std::cmp::Reverse(o.seq));
    let count = all.len() as u64;
    let operation_logs = all
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|o| o.log.clone())
        .collect();
    Json(OperationLogList {
        operation_logs,
        count,
        limit: limit as u64,
        offset: offset as u64,
    })
    .into_response()
}

async fn get_op_log(
    State(inner): State<Arc<Inner>>,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    inner.counters.op_log_polls.fetch_add(1, Ordering::SeqCst);
    match world(&inner).ops.get(&id) {
        Some(o) => Json(OperationLogEnvelope {
            operation_log: o.log.clone(),
        })
        .into_response(),
        None => not_found(
            "BackupService.6500",
            &format!("operation log {id} not found"),
        ),
    }
}
