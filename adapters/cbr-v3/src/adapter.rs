//! The CBR v3 adapter (`backends.md` §2): Keystone tokens (through
//! `custos-openstack`), restores of server and disk backups, backups
//! through checkpoints, list and delete, and the operation logs that
//! stand in for the task id the restore call does not return.
//!
//! # Reconcile
//! A restore answers 202 with no body, so a lost answer is found again in
//! the target's operation logs. `prepare` records the ids of the op-logs
//! the target already has; `reconcile` then takes a restore op-log as ours
//! only if it is new (not in that snapshot), names our backup
//! (`extra_info.restore.backup_id`) and target (`target_resource_id`), and
//! was created within the submit's window (`Intent.recorded_at` less the
//! clock skew, to the request timeout plus 5 min after it). Any other new
//! trace on the target (a matching restore outside the window, two
//! candidates, an operation of another kind) makes a restore `Unknown`;
//! nothing new is `NotSubmitted` (the daemon never resubmits a restore on
//! that). Backups follow the same shape with the `backup` op-logs, and are
//! `NotSubmitted` whenever unsure (a second backup is harmless).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use custos_adapter_core::state::{decode as parse_state, encode as to_json};
use custos_adapter_core::{
    Backend, BackendError, BackendKind, BackupInfo, BackupPage, Capabilities, ErrorDetail,
    ErrorKind, FieldViolation, Intent, Operation, Progress, Reconciled, RemoteHandle, Resource,
    ResourceKind, RestoreSpec, http,
};
use custos_openstack::{
    ErrorDialect, KeystoneAuth, ServiceClient,
    service::{id_violation, valid_id},
};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde::{Deserialize, Serialize};

use crate::wire::{
    BackupEnvelope, BackupList, BackupResp, BackupRestore, CheckpointCreate,
    CheckpointCreateRequest, CheckpointEnvelope, CheckpointParameters, ErrorBody, OperationLog,
    OperationLogEnvelope, OperationLogList, RestoreMapping, RestoreRequest, SERVER_TYPE,
    VOLUME_TYPE, backup_status, op_status,
};

/// Everything the adapter needs; built by the daemon from its config.
#[derive(Clone, Debug)]
pub struct CbrConfig {
    /// `https://cbr.{region}.example.com`, without `/v3`.
    pub endpoint: String,
    pub project_id: String,
    /// The vault backups are made into; without it, no backups.
    pub vault_id: Option<String>,
    pub auth: KeystoneAuth,
    /// One HTTP call.
    pub timeout: Duration,
}

/// The adapter. One per configured backend.
pub struct CbrV3 {
    endpoint: String,
    project_id: String,
    vault_id: Option<String>,
    api: ServiceClient,
    timeout: Duration,
    clock_skew: Duration,
}

impl std::fmt::Debug for CbrV3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CbrV3")
            .field("endpoint", &self.endpoint)
            .field("project_id", &self.project_id)
            .field("vault_id", &self.vault_id)
            .finish_non_exhaustive()
    }
}

/// What `prepare` records before a submit (stored with the job).
#[derive(Debug, Default, Serialize, Deserialize)]
struct IntentState {
    /// Ids of the op-logs the target showed before the submit.
    #[serde(default)]
    op_logs: Vec<String>,
    /// The backup's status before a restore or delete.
    #[serde(default)]
    backup_status: Option<String>,
}

/// What a handle holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "follow", rename_all = "snake_case")]
enum HandleState {
    /// A restore: found in the target's op-logs, then pinned by id.
    Restore {
        backup_id: String,
        target_id: String,
        #[serde(default)]
        recorded_at: Option<DateTime<Utc>>,
        #[serde(default)]
        op_log_id: Option<String>,
    },
    /// A backup: the checkpoint's backup of the resource, until available.
    Backup {
        resource_id: String,
        #[serde(default)]
        checkpoint_id: Option<String>,
        #[serde(default)]
        backup_id: Option<String>,
    },
    /// A deletion: the backup, until it is gone.
    Delete { backup_id: String },
}

/// How long after its intent was stored a submit may still have been sent
/// (the wait for a backend slot), beyond the request timeout.
const SUBMIT_WINDOW: Duration = Duration::from_secs(300);
const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(5);
/// Op-logs read per query (newest first).
const OP_LOG_LIMIT: u32 = 100;

impl CbrV3 {
    pub fn new(cfg: CbrConfig) -> Result<CbrV3, BackendError> {
        if let Some(v) = &cfg.vault_id
            && !valid_id(v)
        {
            return Err(BackendError::permanent(format!(
                "vault_id {v:?} is not an id (letters, digits, '-', '_')"
            )));
        }
        let api = ServiceClient::new(
            &cfg.endpoint,
            "v3",
            &cfg.project_id,
            cfg.auth,
            cfg.timeout,
            ErrorDialect {
                map: cbr_error,
                is_envelope: |b| error_body(b).is_some(),
            },
        )?;
        Ok(CbrV3 {
            endpoint: cfg.endpoint.trim_end_matches('/').to_string(),
            project_id: cfg.project_id,
            vault_id: cfg.vault_id,
            api,
            timeout: cfg.timeout,
            clock_skew: DEFAULT_CLOCK_SKEW,
        })
    }

    /// How far CBR's clock may be behind the daemon's (default 5 s).
    pub fn with_clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew;
        self
    }

    async fn backup(&self, id: &str) -> Result<BackupResp, BackendError> {
        let env: BackupEnvelope = self
            .api
            .get_json(&format!("backups/{id}"), &[], "reading the backup")
            .await?;
        Ok(env.backup)
    }

    /// The newest op-logs of `resource_id` (of one type, if given).
    async fn op_logs(
        &self,
        resource_id: &str,
        operation_type: Option<&str>,
    ) -> Result<Vec<OperationLog>, BackendError> {
        let mut q = vec![
            ("resource_id", resource_id.to_string()),
            ("limit", OP_LOG_LIMIT.to_string()),
        ];
        if let Some(t) = operation_type {
            q.push(("operation_type", t.to_string()));
        }
        let list: OperationLogList = self
            .api
            .get_json("operation-logs", &q, "listing operation logs")
            .await?;
        Ok(list.operation_logs)
    }

    async fn op_log(&self, id: &str) -> Result<OperationLog, BackendError> {
        let env: OperationLogEnvelope = self
            .api
            .get_json(
                &format!("operation-logs/{id}"),
                &[],
                "reading the operation log",
            )
            .await?;
        Ok(env.operation_log)
    }

    /// Whether `t` falls in the submit's window after `recorded_at`.
    fn in_window(&self, recorded_at: Option<DateTime<Utc>>, log: &OperationLog) -> bool {
        let Some(at) = recorded_at else {
            // An intent without a time: the change since `prepare` is all
            // there is to go by.
            return true;
        };
        let Some(t) = parse_time(&log.created_at) else {
            return false;
        };
        let skew = chrono::Duration::from_std(self.clock_skew.max(Duration::from_secs(1)))
            .unwrap_or_default();
        let late = chrono::Duration::from_std(self.timeout + SUBMIT_WINDOW).unwrap_or_default();
        let from = at.checked_sub_signed(skew).unwrap_or(at);
        let until = at.checked_add_signed(late + skew).unwrap_or(at);
        t >= from && t <= until
    }

    fn restore_request(resource: &Resource, spec: &RestoreSpec) -> RestoreRequest {
        let mut r = BackupRestore {
            resource_id: spec.resource_id.clone(),
            ..Default::default()
        };
        match resource.kind {
            ResourceKind::Server => {
                r.server_id = Some(resource.id.clone());
                r.mappings = Some(
                    spec.mappings
                        .iter()
                        .map(|m| RestoreMapping {
                            backup_id: m.backup_id.clone(),
                            volume_id: m.volume_id.clone(),
                        })
                        .collect(),
                );
                r.power_on = Some(spec.power_on.unwrap_or(true));
            }
            _ => r.volume_id = Some(resource.id.clone()),
        }
        RestoreRequest { restore: r }
    }

    fn checkpoint_request(
        &self,
        resource: &Resource,
    ) -> Result<CheckpointCreateRequest, BackendError> {
        let vault_id = self.vault_id.clone().ok_or_else(|| {
            BackendError::new(
                ErrorKind::Invalid,
                "this backend has no vault_id configured, so it cannot make backups",
            )
        })?;
        Ok(CheckpointCreateRequest {
            checkpoint: CheckpointCreate {
                vault_id,
                parameters: CheckpointParameters {
                    resources: vec![resource.id.clone()],
                    ..Default::default()
                },
            },
        })
    }

    /// What a found restore op-log says.
    fn restore_progress(log: &OperationLog, pin: Option<RemoteHandle>) -> Progress {
        let progress = log.extra_info.common.as_ref().map(|c| c.progress.min(100));
        match log.status.as_str() {
            op_status::SUCCESS => Progress::Succeeded {
                message: format!("restore finished (operation log {})", log.id),
                backup_id: None,
            },
            op_status::FAILED | op_status::TIMEOUT | op_status::SKIPPED => {
                Progress::Failed(op_log_error(log, "the restore"))
            }
            s => Progress::Running {
                message: format!(
                    "restore {}{}, operation log {}",
                    if s.is_empty() { "in progress" } else { s },
                    progress.map(|p| format!(" ({p}%)")).unwrap_or_default(),
                    log.id
                ),
                handle: pin,
                percent: progress.and_then(|p| u8::try_from(p).ok()),
            },
        }
    }

    async fn poll_restore(
        &self,
        intent: &IntentState,
        handle: &RemoteHandle,
        backup_id: &str,
        target_id: &str,
        recorded_at: Option<DateTime<Utc>>,
        op_log_id: Option<&str>,
    ) -> Result<Progress, BackendError> {
        if let Some(id) = op_log_id {
            let log = self.op_log(id).await?;
            return Ok(Self::restore_progress(&log, None));
        }
        let logs = self.op_logs(target_id, Some("restore")).await?;
        let mut found: Vec<&OperationLog> = logs
            .iter()
            .filter(|l| is_restore_of(l, backup_id, target_id))
            .filter(|l| !intent.op_logs.contains(&l.id))
            .filter(|l| self.in_window(recorded_at, l))
            .collect();
        // Two candidates (someone else restored the same backup onto the
        // same target meanwhile): which one is ours cannot be told, and
        // reporting theirs as ours would be a lie.
        if found.len() > 1 {
            found.sort_by_key(|l| parse_time(&l.created_at));
            let ids: Vec<&str> = found.iter().map(|l| l.id.as_str()).collect();
            return Ok(Progress::Failed(BackendError::new(
                ErrorKind::OutcomeUnknown,
                format!(
                    "outcome unknown: {} restores of backup {backup_id} onto {target_id} appeared since this one was submitted (operation logs {}), and which one is this job's cannot be told; check the target and those operation logs",
                    found.len(),
                    ids.join(", ")
                ),
            )));
        }
        let Some(log) = found.first() else {
            return Ok(Progress::Running {
                message: format!(
                    "restore of backup {backup_id} onto {target_id} accepted; waiting for its operation log to show"
                ),
                handle: None,
                percent: None,
            });
        };
        let pin = RemoteHandle {
            display: format!("{} (operation log {})", handle.display, log.id),
            state: to_json(&HandleState::Restore {
                backup_id: backup_id.to_string(),
                target_id: target_id.to_string(),
                recorded_at,
                op_log_id: Some(log.id.clone()),
            })?,
        };
        Ok(Self::restore_progress(log, Some(pin)))
    }

    async fn poll_backup(
        &self,
        resource_id: &str,
        checkpoint_id: Option<&str>,
        backup_id: Option<&str>,
    ) -> Result<Progress, BackendError> {
        let (backup, pin) = match backup_id {
            Some(id) => (self.backup(id).await?, None),
            None => {
                let Some(cp) = checkpoint_id else {
                    return Err(BackendError::permanent(
                        "the stored backup handle names neither a checkpoint nor a backup",
                    ));
                };
                let list: BackupList = self
                    .api
                    .get_json(
                        "backups",
                        &[
                            ("checkpoint_id", cp.to_string()),
                            ("resource_id", resource_id.to_string()),
                        ],
                        "finding the checkpoint's backup",
                    )
                    .await?;
                let Some(b) = list.backups.into_iter().next() else {
                    return Ok(Progress::Running {
                        message: format!("checkpoint {cp}: waiting for its backup to show"),
                        handle: None,
                        percent: None,
                    });
                };
                let pin = RemoteHandle {
                    display: format!("backup {}", b.id),
                    state: to_json(&HandleState::Backup {
                        resource_id: resource_id.to_string(),
                        checkpoint_id: Some(cp.to_string()),
                        backup_id: Some(b.id.clone()),
                    })?,
                };
                (b, Some(pin))
            }
        };
        Ok(match backup.status.as_str() {
            backup_status::AVAILABLE => Progress::Succeeded {
                message: format!("backup {} is available", backup.id),
                backup_id: Some(backup.id),
            },
            backup_status::ERROR => Progress::Failed(BackendError::permanent(format!(
                "backup {} of {resource_id} ended in status error",
                backup.id
            ))),
            s => Progress::Running {
                message: format!("backup {} is {s}", backup.id),
                handle: pin,
                percent: None,
            },
        })
    }
}

fn is_restore_of(l: &OperationLog, backup_id: &str, target_id: &str) -> bool {
    l.operation_type == "restore"
        && l.extra_info
            .restore
            .as_ref()
            .is_some_and(|r| r.backup_id == backup_id && r.target_resource_id == target_id)
}

/// An op-log time: RFC 3339, or without an offset (UTC).
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}

fn describe(l: &OperationLog) -> String {
    let what = match (&l.extra_info.restore, &l.extra_info.backup) {
        (Some(r), _) => format!(" of backup {} onto {}", r.backup_id, r.target_resource_id),
        (None, Some(b)) => format!(" making backup {}", b.backup_id),
        _ => String::new(),
    };
    format!(
        "{} operation log {}{what}, {}, created {}",
        if l.operation_type.is_empty() {
            "an"
        } else {
            &l.operation_type
        },
        l.id,
        l.status,
        l.created_at
    )
}

/// A failed/timeout/skipped op-log as an error, `error_info` kept.
fn op_log_error(log: &OperationLog, what: &str) -> BackendError {
    let info = log.error_info.clone().unwrap_or_default();
    let why = match log.status.as_str() {
        op_status::TIMEOUT => "timed out",
        op_status::SKIPPED => "was skipped (a pre-check failed)",
        _ => "failed",
    };
    let msg = if info.message.is_empty() {
        String::new()
    } else {
        format!(": {}", info.message)
    };
    let code = if info.code.is_empty() {
        String::new()
    } else {
        format!(" ({})", info.code)
    };
    BackendError::permanent(format!(
        "{what} {why}{msg}{code} (operation log {})",
        log.id
    ))
    .with_details(vec![ErrorDetail {
        http_status: None,
        code: (!info.code.is_empty()).then_some(info.code),
        title: Some(log.status.clone()),
        detail: (!info.message.is_empty()).then_some(info.message),
    }])
}

/// CBR's (or its gateway's) own error body, if `body` is one.
fn error_body(body: &[u8]) -> Option<ErrorBody> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .filter(|e| !e.error_code.is_empty())
}

/// The code without its `BackupService.` prefix.
fn short_code(code: &str) -> &str {
    code.rsplit('.').next().unwrap_or(code)
}

/// Maps a CBR error answer, keeping `error_code`/`error_msg`.
fn cbr_error(status: StatusCode, headers: &HeaderMap, body: &[u8], what: &str) -> BackendError {
    let code = status.as_u16();
    let env = error_body(body);
    let ecode = env.as_ref().map(|e| e.error_code.as_str()).unwrap_or("");
    let service = ecode.starts_with("BackupService.");
    let kind = if service && matches!(short_code(ecode), "2002" | "2010" | "0002") {
        ErrorKind::Busy
    } else if code == 429 || ecode == "APIG.0308" {
        ErrorKind::Throttled
    } else {
        match code {
            401 => ErrorKind::Unauthorized,
            403 => ErrorKind::Forbidden,
            404 => ErrorKind::NotFound,
            408 | 500..=599 => ErrorKind::Transient,
            400 if service && short_code(ecode).starts_with("20") => ErrorKind::Permanent,
            400 | 422 => ErrorKind::Invalid,
            _ => ErrorKind::Permanent,
        }
    };
    let detail = match &env {
        Some(e) => ErrorDetail {
            http_status: Some(code),
            code: Some(e.error_code.clone()),
            title: None,
            detail: Some(e.error_msg.clone()),
        },
        None => {
            let text: String = String::from_utf8_lossy(body).chars().take(300).collect();
            ErrorDetail {
                http_status: Some(code),
                code: None,
                title: None,
                detail: (!text.trim().is_empty()).then_some(text),
            }
        }
    };
    let summary = match &env {
        Some(e) => format!("{} ({})", e.error_msg, e.error_code),
        None => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let advice = match kind {
        ErrorKind::Unauthorized => " — the credentials were refused",
        ErrorKind::Forbidden => " — the credentials lack permission for this",
        ErrorKind::NotFound => " — it does not exist",
        ErrorKind::Busy => " — the resource is busy; will retry",
        ErrorKind::Throttled => " — rate limited; will retry",
        ErrorKind::Transient => " — will retry",
        _ => "",
    };
    let mut e = BackendError::new(
        kind,
        format!("{what}: CBR answered {code} {summary}{advice}"),
    )
    .with_details(vec![detail]);
    e.retry_after = http::retry_after(headers, SystemTime::now());
    e
}

#[async_trait]
impl Backend for CbrV3 {
    fn kind(&self) -> BackendKind {
        BackendKind::CbrV3
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_backup: self.vault_id.is_some(),
            list_backups: true,
            delete_backup: true,
            restore: true,
            point_in_time_restore: false,
            cross_instance_restore: false,
            restore_mappings: true,
            incremental_backup: false,
            cancel_running: false,
        }
    }

    fn resource_kinds(&self) -> &'static [ResourceKind] {
        &[ResourceKind::Server, ResourceKind::Volume]
    }

    fn check(&self, op: &Operation) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        let r = op.resource();
        if !matches!(r.kind, ResourceKind::Server | ResourceKind::Volume) {
            v.push(FieldViolation::new(
                "target",
                "cbr_v3 backends take servers/{id} or volumes/{id}",
            ));
        }
        id_violation(&mut v, "target", &r.id);
        match op {
            Operation::CreateBackup { .. } => {
                if self.vault_id.is_none() {
                    v.push(FieldViolation::new(
                        "target",
                        "this backend has no vault_id configured, so it cannot make backups",
                    ));
                }
            }
            Operation::DeleteBackup { backup_id, .. } => {
                id_violation(&mut v, "backup_id", backup_id);
            }
            Operation::Restore { spec, .. } => {
                if spec.point_in_time.is_some() {
                    v.push(FieldViolation::new(
                        "point_in_time",
                        "cbr_v3 backends restore backups, not points in time",
                    ));
                }
                if spec.restore_point.is_some() {
                    v.push(FieldViolation::new(
                        "restore_point",
                        "not supported by cbr_v3 backends",
                    ));
                }
                if spec.source.is_some() {
                    v.push(FieldViolation::new(
                        "source",
                        "cbr_v3 backends restore onto the backed-up resource only",
                    ));
                }
                match &spec.backup_id {
                    None => v.push(FieldViolation::new("backup_id", "required")),
                    Some(b) => id_violation(&mut v, "backup_id", b),
                }
                if let Some(rid) = &spec.resource_id {
                    id_violation(&mut v, "resource_id", rid);
                }
                match r.kind {
                    ResourceKind::Server => {
                        if spec.mappings.is_empty() {
                            v.push(FieldViolation::new(
                                "mappings",
                                "required for a server restore: one BACKUP_ID=VOLUME_ID per disk",
                            ));
                        }
                        let mut seen = std::collections::HashSet::new();
                        for m in &spec.mappings {
                            id_violation(&mut v, "mappings", &m.backup_id);
                            id_violation(&mut v, "mappings", &m.volume_id);
                            if !seen.insert(m.volume_id.as_str()) {
                                v.push(FieldViolation::new(
                                    "mappings",
                                    format!("volume {} is named twice", m.volume_id),
                                ));
                            }
                        }
                    }
                    ResourceKind::Volume => {
                        if !spec.mappings.is_empty() {
                            v.push(FieldViolation::new(
                                "mappings",
                                "only for a server restore; a volume target is restored from a disk backup",
                            ));
                        }
                        if spec.power_on.is_some() {
                            v.push(FieldViolation::new("power_on", "only for a server restore"));
                        }
                    }
                    _ => {}
                }
            }
        }
        v
    }

    async fn get_backup(
        &self,
        resource: &Resource,
        backup_id: &str,
    ) -> Result<Option<BackupInfo>, BackendError> {
        if !valid_id(backup_id) {
            return Ok(None);
        }
        match self.backup(backup_id).await {
            Ok(b) if b.resource_id == resource.id => Ok(Some(BackupInfo {
                created_at: parse_time(&b.created_at),
                id: b.id,
                state: b.status,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_backups(
        &self,
        resource: &Resource,
        page_size: Option<u32>,
        page_token: &str,
    ) -> Result<BackupPage, BackendError> {
        let offset: u64 = if page_token.is_empty() {
            0
        } else {
            page_token.parse().map_err(|_| {
                BackendError::new(
                    ErrorKind::Invalid,
                    format!("page token {page_token:?} is not one this backend gave"),
                )
            })?
        };
        let mut q = vec![
            ("resource_id", resource.id.clone()),
            ("offset", offset.to_string()),
        ];
        if let Some(l) = page_size {
            q.push(("limit", l.clamp(1, 1000).to_string()));
        }
        let list: BackupList = self.api.get_json("backups", &q, "listing backups").await?;
        let n = list.backups.len() as u64;
        let next = offset.saturating_add(n);
        Ok(BackupPage {
            next_page_token: if n == 0 || next >= list.count {
                String::new()
            } else {
                next.to_string()
            },
            backups: list
                .backups
                .into_iter()
                .map(|b| BackupInfo {
                    created_at: parse_time(&b.created_at),
                    id: b.id,
                    state: b.status,
                })
                .collect(),
        })
    }

    async fn validate(&self, op: &Operation) -> Result<String, BackendError> {
        match op {
            Operation::CreateBackup { resource, .. } => {
                let body = self.checkpoint_request(resource)?;
                Ok(format!(
                    "POST {} {}",
                    self.api.url("checkpoints"),
                    to_json(&body)?
                ))
            }
            Operation::DeleteBackup { backup_id, .. } => {
                let b = self.backup(backup_id).await?;
                Ok(format!(
                    "DELETE {} (backup {} of {}, {})",
                    self.api.url(&format!("backups/{backup_id}")),
                    b.name,
                    b.resource_id,
                    b.status
                ))
            }
            Operation::Restore { resource, spec } => {
                let Some(bid) = &spec.backup_id else {
                    return Err(BackendError::new(
                        ErrorKind::Invalid,
                        "backup_id is required",
                    ));
                };
                let b = self.backup(bid).await?;
                let invalid = |m: String| Err(BackendError::new(ErrorKind::Invalid, m));
                if b.status != backup_status::AVAILABLE {
                    return invalid(format!(
                        "backup {bid} is {}, not available, so it cannot be restored now",
                        b.status
                    ));
                }
                let want = match resource.kind {
                    ResourceKind::Server => SERVER_TYPE,
                    _ => VOLUME_TYPE,
                };
                if b.resource_type != want {
                    return invalid(format!(
                        "backup {bid} is a backup of a {} ({}); a {} target needs a {} backup",
                        b.resource_type,
                        b.resource_id,
                        resource.kind.collection(),
                        if want == SERVER_TYPE {
                            "server"
                        } else {
                            "disk"
                        }
                    ));
                }
                if resource.kind == ResourceKind::Server && b.resource_id != resource.id {
                    return invalid(format!(
                        "backup {bid} is of server {}, not {}: restoring to a different server is not allowed",
                        b.resource_id, resource.id
                    ));
                }
                let mut seen = std::collections::HashSet::new();
                for m in &spec.mappings {
                    if !b.children.iter().any(|c| c.id == m.backup_id) {
                        return invalid(format!(
                            "mapping {}={}: {} is not a disk backup of backup {bid} (its children: {})",
                            m.backup_id,
                            m.volume_id,
                            m.backup_id,
                            b.children
                                .iter()
                                .map(|c| format!("{} of {}", c.id, c.resource_id))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    if !seen.insert(m.volume_id.as_str()) {
                        return invalid(format!("volume {} is named twice", m.volume_id));
                    }
                }
                Ok(format!(
                    "POST {} {}",
                    self.api.url(&format!("backups/{bid}/restore")),
                    to_json(&Self::restore_request(resource, spec))?
                ))
            }
        }
    }

    async fn prepare(&self, op: &Operation) -> Result<Intent, BackendError> {
        let r = op.resource();
        let mut st = IntentState::default();
        match op {
            Operation::CreateBackup { .. } => {
                self.checkpoint_request(r)?;
                st.op_logs = self
                    .op_logs(&r.id, Some("backup"))
                    .await?
                    .into_iter()
                    .map(|l| l.id)
                    .collect();
            }
            Operation::Restore { spec, .. } => {
                st.op_logs = self
                    .op_logs(&r.id, None)
                    .await?
                    .into_iter()
                    .map(|l| l.id)
                    .collect();
                if let Some(b) = &spec.backup_id {
                    st.backup_status = Some(self.backup(b).await?.status);
                }
            }
            Operation::DeleteBackup { backup_id, .. } => {
                st.backup_status = Some(self.backup(backup_id).await?.status);
            }
        }
        Ok(Intent {
            state: to_json(&st)?,
            recorded_at: None,
        })
    }

    async fn submit(&self, op: &Operation, intent: &Intent) -> Result<RemoteHandle, BackendError> {
        match op {
            Operation::Restore { resource, spec } => {
                let Some(bid) = &spec.backup_id else {
                    return Err(BackendError::new(
                        ErrorKind::Invalid,
                        "backup_id is required",
                    ));
                };
                let body =
                    serde_json::to_value(Self::restore_request(resource, spec)).map_err(|e| {
                        BackendError::permanent(format!("cannot encode the restore: {e}"))
                    })?;
                let path = format!("backups/{bid}/restore");
                self.api
                    .call(
                        Method::POST,
                        &path,
                        &[],
                        Some(&body),
                        "starting the restore",
                    )
                    .await?;
                Ok(RemoteHandle {
                    display: format!(
                        "restore of backup {bid} onto {} {}",
                        resource.kind.collection(),
                        resource.id
                    ),
                    state: to_json(&HandleState::Restore {
                        backup_id: bid.clone(),
                        target_id: resource.id.clone(),
                        recorded_at: intent.recorded_at,
                        op_log_id: None,
                    })?,
                })
            }
            Operation::CreateBackup { resource, .. } => {
                let body =
                    serde_json::to_value(self.checkpoint_request(resource)?).map_err(|e| {
                        BackendError::permanent(format!("cannot encode the checkpoint: {e}"))
                    })?;
                let reply = self
                    .api
                    .call(
                        Method::POST,
                        "checkpoints",
                        &[],
                        Some(&body),
                        "creating the backup",
                    )
                    .await?;
                let cp: CheckpointEnvelope = serde_json::from_slice(&reply.body).map_err(|e| {
                    let mut err = BackendError::transient(format!(
                        "creating the backup: CBR accepted the checkpoint ({}) but its answer is not usable: {e}",
                        reply.status.as_u16()
                    ));
                    // Accepted, but which checkpoint is unknown: reconcile.
                    err.maybe_applied = true;
                    err
                })?;
                Ok(RemoteHandle {
                    display: format!("checkpoint {}", cp.checkpoint.id),
                    state: to_json(&HandleState::Backup {
                        resource_id: resource.id.clone(),
                        checkpoint_id: Some(cp.checkpoint.id),
                        backup_id: None,
                    })?,
                })
            }
            Operation::DeleteBackup { backup_id, .. } => {
                self.api.delete_backup(backup_id).await?;
                Ok(RemoteHandle {
                    display: format!("deletion of backup {backup_id}"),
                    state: to_json(&HandleState::Delete {
                        backup_id: backup_id.clone(),
                    })?,
                })
            }
        }
    }

    async fn poll(
        &self,
        _op: &Operation,
        intent: &Intent,
        handle: &RemoteHandle,
    ) -> Result<Progress, BackendError> {
        let st: IntentState = parse_state(&intent.state)?;
        let hs: HandleState = serde_json::from_str(&handle.state)
            .map_err(|e| BackendError::permanent(format!("stored handle is unreadable: {e}")))?;
        match hs {
            HandleState::Restore {
                backup_id,
                target_id,
                recorded_at,
                op_log_id,
            } => {
                self.poll_restore(
                    &st,
                    handle,
                    &backup_id,
                    &target_id,
                    recorded_at.or(intent.recorded_at),
                    op_log_id.as_deref(),
                )
                .await
            }
            HandleState::Backup {
                resource_id,
                checkpoint_id,
                backup_id,
            } => {
                self.poll_backup(&resource_id, checkpoint_id.as_deref(), backup_id.as_deref())
                    .await
            }
            HandleState::Delete { backup_id } => match self.backup(&backup_id).await {
                Err(e) if e.kind == ErrorKind::NotFound => Ok(Progress::Succeeded {
                    message: format!("backup {backup_id} deleted"),
                    backup_id: None,
                }),
                Err(e) => Err(e),
                Ok(b) if b.status == backup_status::ERROR => {
                    Ok(Progress::Failed(BackendError::permanent(format!(
                        "deleting backup {backup_id}: the backup is in status error"
                    ))))
                }
                Ok(b) => Ok(Progress::Running {
                    message: format!("backup {backup_id} is {}", b.status),
                    handle: None,
                    percent: None,
                }),
            },
        }
    }

    async fn reconcile(&self, op: &Operation, intent: &Intent) -> Result<Reconciled, BackendError> {
        let st: IntentState = parse_state(&intent.state)?;
        let r = op.resource();
        match op {
            Operation::Restore { spec, .. } => {
                let Some(bid) = &spec.backup_id else {
                    return Ok(Reconciled::NotSubmitted);
                };
                let logs = self.op_logs(&r.id, None).await?;
                let new: Vec<&OperationLog> = logs
                    .iter()
                    .filter(|l| !st.op_logs.contains(&l.id))
                    .collect();
                let matching: Vec<&&OperationLog> = new
                    .iter()
                    .filter(|l| is_restore_of(l, bid, &r.id))
                    .collect();
                let ours: Vec<&&&OperationLog> = matching
                    .iter()
                    .filter(|l| self.in_window(intent.recorded_at, l))
                    .collect();
                let when = intent
                    .recorded_at
                    .map(|t| {
                        format!(
                            " (this restore's intent was recorded at {})",
                            t.to_rfc3339_opts(SecondsFormat::Millis, true)
                        )
                    })
                    .unwrap_or_default();
                if ours.len() == 1 && matching.len() == 1 {
                    let log = ours[0];
                    return Ok(Reconciled::Submitted(RemoteHandle {
                        display: format!(
                            "restore of backup {bid} onto {} {} (operation log {})",
                            r.kind.collection(),
                            r.id,
                            log.id
                        ),
                        state: to_json(&HandleState::Restore {
                            backup_id: bid.clone(),
                            target_id: r.id.clone(),
                            recorded_at: intent.recorded_at,
                            op_log_id: Some(log.id.clone()),
                        })?,
                    }));
                }
                if new.is_empty() {
                    // No trace (yet): the daemon re-asks over its grace
                    // period, and never resubmits a restore on this.
                    return Ok(Reconciled::NotSubmitted);
                }
                let traces = new
                    .iter()
                    .map(|l| describe(l))
                    .collect::<Vec<_>>()
                    .join("; ");
                Ok(Reconciled::Unknown(format!(
                    "the restore of backup {bid} onto {} {} may or may not have reached CBR (the answer was lost), and the target shows operations that cannot be told apart from it: {traces}{when}. Check the target's operation logs (GET /v3/{}/operation-logs?resource_id={}) and the target itself before restoring again",
                    r.kind.collection(),
                    r.id,
                    self.project_id,
                    r.id
                )))
            }
            Operation::CreateBackup { .. } => {
                let logs = self.op_logs(&r.id, Some("backup")).await?;
                let ours: Vec<&OperationLog> = logs
                    .iter()
                    .filter(|l| !st.op_logs.contains(&l.id))
                    .filter(|l| l.extra_info.resource.as_ref().is_none_or(|x| x.id == r.id))
                    .filter(|l| self.in_window(intent.recorded_at, l))
                    .collect();
                // One new backup op-log in the window is ours; none, or
                // several (someone else's too), and a second backup is
                // harmless.
                let [log] = ours.as_slice() else {
                    return Ok(Reconciled::NotSubmitted);
                };
                let backup_id = log
                    .extra_info
                    .backup
                    .as_ref()
                    .map(|b| b.backup_id.clone())
                    .filter(|b| !b.is_empty());
                if backup_id.is_none() && log.checkpoint_id.is_none() {
                    return Ok(Reconciled::NotSubmitted);
                }
                Ok(Reconciled::Submitted(RemoteHandle {
                    display: format!("backup of {} (operation log {})", r.id, log.id),
                    state: to_json(&HandleState::Backup {
                        resource_id: r.id.clone(),
                        checkpoint_id: log.checkpoint_id.clone(),
                        backup_id,
                    })?,
                }))
            }
            Operation::DeleteBackup { backup_id, .. } => {
                let handle = || -> Result<Reconciled, BackendError> {
                    Ok(Reconciled::Submitted(RemoteHandle {
                        display: format!("deletion of backup {backup_id}"),
                        state: to_json(&HandleState::Delete {
                            backup_id: backup_id.clone(),
                        })?,
                    }))
                };
                match self.backup(backup_id).await {
                    Err(e) if e.kind == ErrorKind::NotFound => handle(),
                    Err(e) => Err(e),
                    Ok(b) if b.status == backup_status::DELETING => handle(),
                    // A second deletion is harmless.
                    Ok(_) => Ok(Reconciled::NotSubmitted),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_the_body_and_classify() {
        let h = HeaderMap::new();
        let body = br#"{"error_code":"BackupService.2010","error_msg":"being restored"}"#;
        let e = cbr_error(StatusCode::BAD_REQUEST, &h, body, "x");
        assert_eq!(e.kind, ErrorKind::Busy);
        assert_eq!(e.details[0].code.as_deref(), Some("BackupService.2010"));
        assert_eq!(e.details[0].detail.as_deref(), Some("being restored"));
        let body = br#"{"error_code":"BackupService.2001","error_msg":"too small"}"#;
        assert_eq!(
            cbr_error(StatusCode::BAD_REQUEST, &h, body, "x").kind,
            ErrorKind::Permanent
        );
        let body = br#"{"error_code":"APIG.0308","error_msg":"throttled","request_id":"r"}"#;
        assert_eq!(
            cbr_error(StatusCode::TOO_MANY_REQUESTS, &h, body, "x").kind,
            ErrorKind::Throttled
        );
        let body = br#"{"error_code":"BackupService.6200","error_msg":"gone"}"#;
        assert_eq!(
            cbr_error(StatusCode::NOT_FOUND, &h, body, "x").kind,
            ErrorKind::NotFound
        );
        let e = cbr_error(StatusCode::BAD_GATEWAY, &h, b"<html>", "x");
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(error_body(b"<html>").is_none());
        assert!(error_body(br#"{"error_code":"","error_msg":""}"#).is_none());
    }

    #[test]
    fn times_parse_with_and_without_offset() {
        assert!(parse_time("2019-05-23T14:31:36.039+00:00").is_some());
        assert!(parse_time("2019-05-23T14:31:36.039").is_some());
        assert!(parse_time("yesterday").is_none());
    }
}
