//! The v2 VBS adapter (`backends.md` §3): Keystone tokens (through
//! `custos-openstack`), disk restores from a backup into an existing
//! volume, backups (full or incremental), list and delete, on Cinder's
//! native API under `{endpoint}/v2/{project_id}`.
//!
//! # Following a restore
//! The restore call answers `{"restore":{"backup_id","volume_id",
//! "volume_name"}}` and no task: the *volume* is followed. Cinder moves it
//! to `restoring-backup` (and the backup to `restoring`) before it
//! answers; `available` afterwards is success, `error_restoring` (`error`
//! for a new volume) failure. The backup goes back to `available` either
//! way, so it says nothing about the outcome. A volume seen `available`
//! counts as restored only once the restore showed: the volume was seen
//! `restoring-backup`, or its `updated_at` moved since `prepare`.
//!
//! # Reconcile
//! `prepare` records the volume's and the backup's status and `updated_at`.
//! A lost restore answer is then judged by what changed:
//! - the volume is `restoring-backup` and the backup `restoring`, both
//!   changed after the intent (less the clock skew): ours, `Submitted`;
//! - both moved after the intent and the volume is `available` or
//!   `error_restoring` again: the restore ran and ended, `Submitted` (the
//!   poll reports which way it ended);
//! - nothing changed: `NotSubmitted` (the daemon never resubmits a restore
//!   on that; after its grace period the job ends `OUTCOME_UNKNOWN`);
//! - anything else (the volume restoring from another backup, attached,
//!   backing up, changed before the intent, gone): `Unknown`, with what to
//!   check.
//!
//! Backups carry a name made by `prepare` (`custos-<uuid>`), so a lost
//! create answer is found again by that name: exact, not a guess. Deletions
//! are found by the backup being `deleting` or gone.

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
use serde_json::Value;

use crate::wire::{
    Backup, BackupCreate, BackupCreateRequest, BackupCreated, BackupEnvelope, BackupList, Fault,
    RestoreAccepted, RestoreBody, RestoreRequest, Volume, VolumeEnvelope, backup_status,
    parse_time, volume_status,
};

/// Everything the adapter needs; built by the daemon from its config.
#[derive(Clone, Debug)]
pub struct VbsConfig {
    /// `https://vbs.{region}.example.com`, without `/v2`.
    pub endpoint: String,
    pub project_id: String,
    pub auth: KeystoneAuth,
    /// One HTTP call.
    pub timeout: Duration,
}

/// The adapter. One per configured backend.
pub struct VbsV2 {
    endpoint: String,
    project_id: String,
    api: ServiceClient,
    clock_skew: Duration,
}

impl std::fmt::Debug for VbsV2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VbsV2")
            .field("endpoint", &self.endpoint)
            .field("project_id", &self.project_id)
            .finish_non_exhaustive()
    }
}

/// What `prepare` records before a submit (stored with the job).
#[derive(Debug, Default, Serialize, Deserialize)]
struct IntentState {
    /// Restore: the volume as it was.
    #[serde(default)]
    volume_status: Option<String>,
    #[serde(default)]
    volume_updated_at: Option<String>,
    /// Restore and delete: the backup as it was.
    #[serde(default)]
    backup_status: Option<String>,
    #[serde(default)]
    backup_updated_at: Option<String>,
    /// Backup: the name the new backup is given (found again by it).
    #[serde(default)]
    backup_name: Option<String>,
}

/// What a handle holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "follow", rename_all = "snake_case")]
enum HandleState {
    /// A restore: the volume, until it leaves `restoring-backup`.
    Restore {
        backup_id: String,
        volume_id: String,
        /// The volume's `updated_at` before the submit.
        #[serde(default)]
        volume_updated_at: Option<String>,
        /// Whether the volume was seen `restoring-backup` (or the restore
        /// otherwise proven to have started).
        #[serde(default)]
        started: bool,
    },
    /// A backup: until it leaves `creating`.
    Backup { backup_id: String },
    /// A deletion: the backup, until it is gone.
    Delete { backup_id: String },
}

const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(5);
/// Pages read when looking for a backup by name on a server that ignores
/// the `name` filter.
const MAX_NAME_PAGES: usize = 20;
/// The prefix of the names Custos gives backups.
const NAME_PREFIX: &str = "custos-";

impl VbsV2 {
    pub fn new(cfg: VbsConfig) -> Result<VbsV2, BackendError> {
        let api = ServiceClient::new(
            &cfg.endpoint,
            "v2",
            &cfg.project_id,
            cfg.auth,
            cfg.timeout,
            ErrorDialect {
                map: vbs_error,
                is_envelope: |b| Fault::parse(b).is_some(),
            },
        )?;
        Ok(VbsV2 {
            endpoint: cfg.endpoint.trim_end_matches('/').to_string(),
            project_id: cfg.project_id,
            api,
            clock_skew: DEFAULT_CLOCK_SKEW,
        })
    }

    /// How far the backend's clock may be behind the daemon's (default 5 s).
    pub fn with_clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew;
        self
    }

    async fn backup(&self, id: &str) -> Result<Backup, BackendError> {
        let env: BackupEnvelope = self
            .api
            .get_json(&format!("backups/{id}"), &[], "reading the backup")
            .await?;
        Ok(env.backup)
    }

    async fn volume(&self, id: &str) -> Result<Volume, BackendError> {
        let env: VolumeEnvelope = self
            .api
            .get_json(&format!("volumes/{id}"), &[], "reading the volume")
            .await?;
        Ok(env.volume)
    }

    /// One page of `GET backups/detail` with these filters.
    async fn backups_page(
        &self,
        filters: &[(&str, String)],
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> Result<BackupList, BackendError> {
        let mut q: Vec<(&str, String)> = filters.to_vec();
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(m) = marker {
            q.push(("marker", m.to_string()));
        }
        self.api
            .get_json("backups/detail", &q, "listing backups")
            .await
    }

    /// The backups of `volume_id` named `name` (filtered here too: a server
    /// may ignore the `name` filter).
    async fn backups_named(
        &self,
        volume_id: &str,
        name: &str,
    ) -> Result<Vec<Backup>, BackendError> {
        let filters = [
            ("volume_id", volume_id.to_string()),
            ("name", name.to_string()),
        ];
        let mut found = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_NAME_PAGES {
            let page = self.backups_page(&filters, None, marker.as_deref()).await?;
            found.extend(
                page.backups
                    .iter()
                    .filter(|b| b.name == name && b.volume_id == volume_id)
                    .cloned(),
            );
            match page.next_link().and_then(marker_of) {
                Some(m) if Some(&m) != marker.as_ref() => marker = Some(m),
                _ => return Ok(found),
            }
        }
        Ok(found)
    }

    /// Whether the backend time `t` is at or after the intent (less the
    /// clock skew). Without a recorded time, any change counts.
    fn after_intent(&self, recorded_at: Option<DateTime<Utc>>, t: Option<&str>) -> bool {
        // Without a recorded time nothing can be placed after it: the
        // conservative answer.
        let Some(at) = recorded_at else {
            return false;
        };
        let Some(t) = t.and_then(parse_time) else {
            return false;
        };
        let skew = chrono::Duration::from_std(self.clock_skew.max(Duration::from_secs(1)))
            .unwrap_or_default();
        t >= at.checked_sub_signed(skew).unwrap_or(at)
    }

    fn restore_handle(
        backup_id: &str,
        volume_id: &str,
        volume_name: Option<&str>,
        volume_updated_at: Option<String>,
        started: bool,
    ) -> Result<RemoteHandle, BackendError> {
        let name = volume_name
            .filter(|n| !n.is_empty())
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        Ok(RemoteHandle {
            display: format!("restore of backup {backup_id} into volume {volume_id}{name}"),
            state: to_json(&HandleState::Restore {
                backup_id: backup_id.to_string(),
                volume_id: volume_id.to_string(),
                volume_updated_at,
                started,
            })?,
        })
    }

    fn backup_request(
        volume_id: &str,
        name: &str,
        incremental: bool,
    ) -> Result<Value, BackendError> {
        serde_json::to_value(BackupCreateRequest {
            backup: BackupCreate {
                volume_id: volume_id.to_string(),
                name: Some(name.to_string()),
                description: Some("made by Custos".into()),
                incremental: incremental.then_some(true),
                // A volume attached to a server is backed up as it is
                // (crash-consistent), as VBS does for attached disks.
                force: Some(true),
                ..Default::default()
            },
        })
        .map_err(|e| BackendError::permanent(format!("cannot encode the backup request: {e}")))
    }

    fn restore_request(volume_id: &str) -> Result<Value, BackendError> {
        serde_json::to_value(RestoreRequest {
            restore: RestoreBody {
                volume_id: Some(volume_id.to_string()),
                name: None,
            },
        })
        .map_err(|e| BackendError::permanent(format!("cannot encode the restore: {e}")))
    }

    async fn poll_restore(
        &self,
        backup_id: &str,
        volume_id: &str,
        before: Option<&str>,
        started: bool,
        handle: &RemoteHandle,
    ) -> Result<Progress, BackendError> {
        let v = match self.volume(volume_id).await {
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Ok(Progress::Failed(BackendError::new(
                    ErrorKind::NotFound,
                    format!(
                        "volume {volume_id} disappeared during the restore of backup {backup_id}"
                    ),
                )));
            }
            r => r?,
        };
        let moved = v.updated_at.as_deref() != before;
        match v.status.as_str() {
            volume_status::RESTORING => Ok(Progress::Running {
                message: format!("restoring backup {backup_id} into volume {volume_id}"),
                handle: if started {
                    None
                } else {
                    Some(Self::restore_handle(
                        backup_id,
                        volume_id,
                        Some(&v.name),
                        before.map(str::to_string),
                        true,
                    )?)
                },
                percent: None,
            }),
            volume_status::ERROR_RESTORING | volume_status::ERROR if started || moved => {
                Ok(Progress::Failed(BackendError::permanent(format!(
                    "the restore of backup {backup_id} into volume {volume_id} failed: the volume is {} (VBS gives no reason on the volume; the backup is available again). Check the volume before using it",
                    v.status
                ))
                .with_details(vec![ErrorDetail {
                    http_status: None,
                    code: None,
                    title: Some(v.status.clone()),
                    detail: Some(format!("{} ({volume_id})", handle.display)),
                }])))
            }
            s @ (volume_status::AVAILABLE | volume_status::IN_USE) if started || moved => {
                Ok(Progress::Succeeded {
                message: if s == volume_status::AVAILABLE {
                    format!("backup {backup_id} restored into volume {volume_id}")
                } else {
                    format!(
                        "backup {backup_id} restored into volume {volume_id} (the volume is {s} now)"
                    )
                },
                backup_id: None,
            })
            }
            // Anything else (someone deleting, extending or migrating the
            // volume): wait for it to settle, or for the operation timeout.
            s => Ok(Progress::Running {
                message: format!(
                    "restore of backup {backup_id} accepted; volume {volume_id} is still {s}, waiting for the restore to show"
                ),
                handle: None,
                percent: None,
            }),
        }
    }

    async fn reconcile_restore(
        &self,
        st: &IntentState,
        intent: &Intent,
        backup_id: &str,
        volume_id: &str,
    ) -> Result<Reconciled, BackendError> {
        let when = intent
            .recorded_at
            .map(|t| {
                format!(
                    " (its intent was recorded at {})",
                    t.to_rfc3339_opts(SecondsFormat::Millis, true)
                )
            })
            .unwrap_or_default();
        let check = format!(
            "Check volume {volume_id} (GET /v2/{pid}/volumes/{volume_id}) and backup {backup_id} before restoring again",
            pid = self.project_id
        );
        let unknown = |what: String| {
            Ok(Reconciled::Unknown(format!(
                "the restore of backup {backup_id} into volume {volume_id} may or may not have reached VBS (the answer was lost){when}, and {what}. {check}"
            )))
        };
        let v = match self.volume(volume_id).await {
            Err(e) if e.kind == ErrorKind::NotFound => {
                return unknown(format!("volume {volume_id} no longer exists"));
            }
            r => r?,
        };
        let b = match self.backup(backup_id).await {
            Err(e) if e.kind == ErrorKind::NotFound => {
                return unknown(format!("backup {backup_id} no longer exists"));
            }
            r => r?,
        };
        let volume_moved = v.updated_at != st.volume_updated_at
            || Some(v.status.as_str()) != st.volume_status.as_deref();
        let backup_moved = b.updated_at != st.backup_updated_at
            || Some(b.status.as_str()) != st.backup_status.as_deref();
        if !volume_moved {
            // No trace (yet): the daemon asks again over its grace period.
            return Ok(Reconciled::NotSubmitted);
        }
        let recent = self.after_intent(intent.recorded_at, v.updated_at.as_deref())
            && self.after_intent(intent.recorded_at, b.updated_at.as_deref());
        let was_free = st.volume_status.as_deref() == Some(volume_status::AVAILABLE);
        let handle = |started: bool| {
            Self::restore_handle(
                backup_id,
                volume_id,
                Some(&v.name),
                st.volume_updated_at.clone(),
                started,
            )
            .map(Reconciled::Submitted)
        };
        match v.status.as_str() {
            volume_status::RESTORING
                if b.status == backup_status::RESTORING && backup_moved && recent && was_free =>
            {
                handle(true)
            }
            volume_status::AVAILABLE | volume_status::ERROR_RESTORING | volume_status::ERROR
                if backup_moved && recent && was_free && ended_together(&v, &b) =>
            {
                // The restore ran and ended before this look; the poll
                // reads how.
                handle(true)
            }
            volume_status::RESTORING => unknown(format!(
                "the volume is being restored, but not as this restore would show (backup {backup_id} is {}{})",
                b.status,
                if was_free {
                    ""
                } else {
                    "; the volume was not available before the submit"
                }
            )),
            s => unknown(format!(
                "the volume changed since the submit was prepared (now {s}, updated {}), in a way that cannot be tied to this restore",
                v.updated_at.as_deref().unwrap_or("at an unknown time")
            )),
        }
    }
}

/// How far apart the volume's and the backup's `updated_at` may be for
/// both to be the end of one restore (Cinder writes them moments apart).
const ENDED_TOGETHER: Duration = Duration::from_secs(10);

/// Whether the volume and the backup last changed at about the same time,
/// as the end of one restore leaves them (someone else's restore of the
/// backup into another volume, plus an unrelated change of this volume,
/// would not).
fn ended_together(v: &Volume, b: &Backup) -> bool {
    let (Some(vt), Some(bt)) = (
        v.updated_at.as_deref().and_then(parse_time),
        b.updated_at.as_deref().and_then(parse_time),
    ) else {
        return false;
    };
    (vt - bt).abs().to_std().is_ok_and(|d| d <= ENDED_TOGETHER)
}

/// The `marker` of a `backups_links` next link (the link itself may point
/// at an internal endpoint, so only its marker is used).
fn marker_of(href: &str) -> Option<String> {
    let u = url::Url::parse(href)
        .or_else(|_| url::Url::parse("http://x/").and_then(|b| b.join(href)))
        .ok()?;
    u.query_pairs()
        .find(|(k, _)| k == "marker")
        .map(|(_, v)| v.into_owned())
        .filter(|m| !m.is_empty())
}

/// Maps a Cinder error answer, keeping the fault's name, code and message.
fn vbs_error(status: StatusCode, headers: &HeaderMap, body: &[u8], what: &str) -> BackendError {
    let code = status.as_u16();
    let fault = Fault::parse(body);
    let mut retry_after = http::retry_after(headers, SystemTime::now()).or_else(|| {
        fault
            .as_ref()
            .and_then(|f| f.retry_after.as_deref())
            .and_then(|r| http::parse_retry_after(r, SystemTime::now()))
    });
    let kind = match code {
        400 => ErrorKind::Invalid,
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::Forbidden,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Busy,
        // overLimit: with a wait, a rate limit; with none (Retry-After: 0),
        // a quota, which waiting does not fix.
        413 if retry_after.is_some_and(|d| !d.is_zero()) => ErrorKind::Throttled,
        413 => ErrorKind::Permanent,
        429 => ErrorKind::Throttled,
        408 | 500..=599 => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    };
    if kind == ErrorKind::Permanent {
        retry_after = None;
    }
    let request_id = headers
        .get("x-openstack-request-id")
        .and_then(|v| v.to_str().ok())
        .map(|r| format!(" (request {r})"))
        .unwrap_or_default();
    let detail = match &fault {
        Some(f) => ErrorDetail {
            http_status: Some(code),
            code: Some(f.code.to_string()),
            title: Some(f.name.clone()),
            detail: Some(f.message.clone()),
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
    let summary = match &fault {
        Some(f) => format!("{}: {}", f.name, f.message),
        None => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let advice = match kind {
        ErrorKind::Unauthorized => " — the credentials were refused",
        ErrorKind::Forbidden => " — the credentials lack permission for this",
        ErrorKind::NotFound => " — it does not exist",
        ErrorKind::Busy => " — a conflicting request is in progress; will retry",
        ErrorKind::Throttled => " — rate limited; will retry",
        ErrorKind::Transient => " — will retry",
        ErrorKind::Permanent if code == 413 => " — a quota is exhausted; not retried",
        _ => "",
    };
    let mut e = BackendError::new(
        kind,
        format!("{what}: VBS answered {code} {summary}{advice}{request_id}"),
    )
    .with_details(vec![detail]);
    e.retry_after = retry_after;
    e
}

fn invalid<T>(m: String) -> Result<T, BackendError> {
    Err(BackendError::new(ErrorKind::Invalid, m))
}

fn backup_id_of(spec: &RestoreSpec) -> Result<&str, BackendError> {
    spec.backup_id
        .as_deref()
        .ok_or_else(|| BackendError::new(ErrorKind::Invalid, "backup_id is required"))
}

#[async_trait]
impl Backend for VbsV2 {
    fn kind(&self) -> BackendKind {
        BackendKind::VbsV2
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_backup: true,
            list_backups: true,
            delete_backup: true,
            restore: true,
            point_in_time_restore: false,
            cross_instance_restore: false,
            restore_mappings: false,
            incremental_backup: true,
            cancel_running: false,
        }
    }

    fn resource_kinds(&self) -> &'static [ResourceKind] {
        &[ResourceKind::Volume]
    }

    fn check(&self, op: &Operation) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        let r = op.resource();
        if r.kind != ResourceKind::Volume {
            v.push(FieldViolation::new(
                "target",
                "vbs_v2 backends take volumes/{volume_id}",
            ));
        }
        id_violation(&mut v, "target", &r.id);
        match op {
            Operation::CreateBackup { .. } => {}
            Operation::DeleteBackup { backup_id, .. } => {
                id_violation(&mut v, "backup_id", backup_id)
            }
            Operation::Restore { spec, .. } => {
                match &spec.backup_id {
                    None => v.push(FieldViolation::new("backup_id", "required")),
                    Some(b) => id_violation(&mut v, "backup_id", b),
                }
                let unsupported = [
                    (
                        "point_in_time",
                        spec.point_in_time.is_some(),
                        "vbs_v2 backends restore backups, not points in time",
                    ),
                    (
                        "restore_point",
                        spec.restore_point.is_some(),
                        "not supported by vbs_v2 backends",
                    ),
                    (
                        "source",
                        spec.source.is_some(),
                        "vbs_v2 backends restore a backup into a volume; name the backup with backup_id",
                    ),
                    (
                        "mappings",
                        !spec.mappings.is_empty(),
                        "only for server restores (cbr_v3); a volume is restored from one disk backup",
                    ),
                    (
                        "power_on",
                        spec.power_on.is_some(),
                        "only for server restores (cbr_v3)",
                    ),
                    (
                        "resource_id",
                        spec.resource_id.is_some(),
                        "not supported by vbs_v2 backends",
                    ),
                ];
                for (field, set, why) in unsupported {
                    if set {
                        v.push(FieldViolation::new(field, why));
                    }
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
            Ok(b) if b.volume_id == resource.id => Ok(Some(BackupInfo {
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
        let marker = if page_token.is_empty() {
            None
        } else if valid_id(page_token) {
            Some(page_token)
        } else {
            return invalid(format!(
                "page token {page_token:?} is not one this backend gave"
            ));
        };
        let page = self
            .backups_page(
                &[("volume_id", resource.id.clone())],
                page_size.map(|l| l.clamp(1, 1000)),
                marker,
            )
            .await?;
        let next = page.next_link().and_then(marker_of).unwrap_or_default();
        Ok(BackupPage {
            backups: page
                .backups
                .into_iter()
                // A server that ignores the filter lists other volumes'.
                .filter(|b| b.volume_id.is_empty() || b.volume_id == resource.id)
                .map(|b| BackupInfo {
                    created_at: parse_time(&b.created_at),
                    id: b.id,
                    state: b.status,
                })
                .collect(),
            next_page_token: if Some(next.as_str()) == marker {
                String::new()
            } else {
                next
            },
        })
    }

    async fn validate(&self, op: &Operation) -> Result<String, BackendError> {
        match op {
            Operation::CreateBackup {
                resource,
                incremental,
            } => {
                let v = self.volume(&resource.id).await?;
                if !matches!(
                    v.status.as_str(),
                    volume_status::AVAILABLE | volume_status::IN_USE
                ) {
                    return invalid(format!(
                        "volume {} is {}, so it cannot be backed up now (it must be available or in-use)",
                        resource.id, v.status
                    ));
                }
                if *incremental {
                    let full = self
                        .backups_page(
                            &[
                                ("volume_id", resource.id.clone()),
                                ("status", backup_status::AVAILABLE.to_string()),
                            ],
                            Some(1),
                            None,
                        )
                        .await?;
                    if full.backups.is_empty() {
                        return invalid(format!(
                            "volume {} has no available backup to make an incremental backup from; make a full backup first",
                            resource.id
                        ));
                    }
                }
                let body = Self::backup_request(&resource.id, "custos-<generated>", *incremental)?;
                Ok(format!("POST {} {body}", self.api.url("backups")))
            }
            Operation::DeleteBackup { backup_id, .. } => {
                let b = self.backup(backup_id).await?;
                if !matches!(
                    b.status.as_str(),
                    backup_status::AVAILABLE | backup_status::ERROR
                ) {
                    return invalid(format!(
                        "backup {backup_id} is {}, so it cannot be deleted now (it must be available or error)",
                        b.status
                    ));
                }
                if b.has_dependent_backups {
                    return invalid(format!(
                        "backup {backup_id} has incremental backups that depend on it; delete those first"
                    ));
                }
                Ok(format!(
                    "DELETE {} (backup {} of volume {}, {}, {} GiB)",
                    self.api.url(&format!("backups/{backup_id}")),
                    b.name,
                    b.volume_id,
                    b.status,
                    b.size
                ))
            }
            Operation::Restore { resource, spec } => {
                let bid = backup_id_of(spec)?;
                let b = self.backup(bid).await?;
                if b.status != backup_status::AVAILABLE {
                    return invalid(format!(
                        "backup {bid} is {}, not available, so it cannot be restored now",
                        b.status
                    ));
                }
                let v = self.volume(&resource.id).await?;
                if v.status != volume_status::AVAILABLE {
                    return invalid(format!(
                        "volume {} is {}, not available: a restore needs a volume that is not attached or busy",
                        resource.id, v.status
                    ));
                }
                if v.size < b.size {
                    return invalid(format!(
                        "volume {} is {} GiB, smaller than backup {bid} ({} GiB)",
                        resource.id, v.size, b.size
                    ));
                }
                Ok(format!(
                    "POST {} {} (backup {} of volume {}, {} GiB, into volume {} {:?}, {} GiB)",
                    self.api.url(&format!("backups/{bid}/restore")),
                    Self::restore_request(&resource.id)?,
                    b.name,
                    b.volume_id,
                    b.size,
                    resource.id,
                    v.name,
                    v.size
                ))
            }
        }
    }

    async fn prepare(&self, op: &Operation) -> Result<Intent, BackendError> {
        let mut st = IntentState::default();
        match op {
            Operation::CreateBackup { .. } => {
                st.backup_name = Some(format!("{NAME_PREFIX}{}", uuid::Uuid::new_v4()));
            }
            Operation::Restore { resource, spec } => {
                let v = self.volume(&resource.id).await?;
                st.volume_status = Some(v.status);
                st.volume_updated_at = v.updated_at;
                let b = self.backup(backup_id_of(spec)?).await?;
                st.backup_status = Some(b.status);
                st.backup_updated_at = b.updated_at;
            }
            Operation::DeleteBackup { backup_id, .. } => {
                let b = self.backup(backup_id).await?;
                st.backup_status = Some(b.status);
                st.backup_updated_at = b.updated_at;
            }
        }
        Ok(Intent {
            state: to_json(&st)?,
            recorded_at: None,
        })
    }

    async fn submit(&self, op: &Operation, intent: &Intent) -> Result<RemoteHandle, BackendError> {
        let st: IntentState = parse_state(&intent.state)?;
        match op {
            Operation::Restore { resource, spec } => {
                let bid = backup_id_of(spec)?;
                let body = Self::restore_request(&resource.id)?;
                let reply = self
                    .api
                    .call(
                        Method::POST,
                        &format!("backups/{bid}/restore"),
                        &[],
                        Some(&body),
                        "starting the restore",
                    )
                    .await?;
                // The answer names the volume; an answer that cannot be read
                // is still an accepted restore, followed on our volume.
                let name = serde_json::from_slice::<RestoreAccepted>(&reply.body)
                    .ok()
                    .and_then(|a| a.restore.volume_name);
                Self::restore_handle(
                    bid,
                    &resource.id,
                    name.as_deref(),
                    st.volume_updated_at,
                    false,
                )
            }
            Operation::CreateBackup {
                resource,
                incremental,
            } => {
                let name = st.backup_name.ok_or_else(|| {
                    BackendError::permanent(
                        "the stored intent names no backup (prepare was skipped?)",
                    )
                })?;
                let body = Self::backup_request(&resource.id, &name, *incremental)?;
                let reply = self
                    .api
                    .call(
                        Method::POST,
                        "backups",
                        &[],
                        Some(&body),
                        "creating the backup",
                    )
                    .await?;
                let created: BackupCreated = serde_json::from_slice(&reply.body).map_err(|e| {
                    let mut err = BackendError::transient(format!(
                        "creating the backup: VBS accepted it ({}) but its answer is not usable: {e}",
                        reply.status.as_u16()
                    ));
                    // Accepted, but which backup is unknown: reconcile
                    // finds it by its name.
                    err.maybe_applied = true;
                    err
                })?;
                Ok(RemoteHandle {
                    display: format!("backup {} ({name})", created.backup.id),
                    state: to_json(&HandleState::Backup {
                        backup_id: created.backup.id,
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
        _intent: &Intent,
        handle: &RemoteHandle,
    ) -> Result<Progress, BackendError> {
        let hs: HandleState = serde_json::from_str(&handle.state)
            .map_err(|e| BackendError::permanent(format!("stored handle is unreadable: {e}")))?;
        match hs {
            HandleState::Restore {
                backup_id,
                volume_id,
                volume_updated_at,
                started,
            } => {
                self.poll_restore(
                    &backup_id,
                    &volume_id,
                    volume_updated_at.as_deref(),
                    started,
                    handle,
                )
                .await
            }
            HandleState::Backup { backup_id } => {
                let b = self.backup(&backup_id).await?;
                Ok(match b.status.as_str() {
                    backup_status::AVAILABLE => Progress::Succeeded {
                        message: format!(
                            "backup {backup_id} of volume {} is available ({} GiB{})",
                            b.volume_id,
                            b.size,
                            if b.is_incremental {
                                ", incremental"
                            } else {
                                ""
                            }
                        ),
                        backup_id: Some(backup_id),
                    },
                    backup_status::ERROR => {
                        let reason = b.fail_reason.clone().filter(|r| !r.is_empty());
                        Progress::Failed(
                            BackendError::permanent(format!(
                                "backup {backup_id} of volume {} ended in status error: {}",
                                b.volume_id,
                                reason.as_deref().unwrap_or("VBS gives no fail_reason")
                            ))
                            .with_details(vec![ErrorDetail {
                                http_status: None,
                                code: None,
                                title: Some("fail_reason".into()),
                                detail: reason,
                            }]),
                        )
                    }
                    s => Progress::Running {
                        message: format!("backup {backup_id} is {s}"),
                        handle: None,
                        percent: None,
                    },
                })
            }
            HandleState::Delete { backup_id } => match self.backup(&backup_id).await {
                Err(e) if e.kind == ErrorKind::NotFound => Ok(Progress::Succeeded {
                    message: format!("backup {backup_id} deleted"),
                    backup_id: None,
                }),
                Err(e) => Err(e),
                Ok(b) if b.status == backup_status::ERROR_DELETING => {
                    Ok(Progress::Failed(BackendError::permanent(format!(
                        "deleting backup {backup_id} failed: the backup is error_deleting{}",
                        b.fail_reason.map(|r| format!(" ({r})")).unwrap_or_default()
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
        match op {
            Operation::Restore { resource, spec } => {
                self.reconcile_restore(&st, intent, backup_id_of(spec)?, &resource.id)
                    .await
            }
            Operation::CreateBackup { resource, .. } => {
                let Some(name) = &st.backup_name else {
                    return Ok(Reconciled::NotSubmitted);
                };
                let mut found = self.backups_named(&resource.id, name).await?;
                found.sort_by_key(|b| parse_time(&b.created_at));
                // Our name is ours alone: one found is ours. (Two would
                // mean it was submitted twice; follow the first.)
                let Some(b) = found.into_iter().next() else {
                    return Ok(Reconciled::NotSubmitted);
                };
                Ok(Reconciled::Submitted(RemoteHandle {
                    display: format!("backup {} ({name})", b.id),
                    state: to_json(&HandleState::Backup { backup_id: b.id })?,
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
                    Ok(b)
                        if matches!(
                            b.status.as_str(),
                            backup_status::DELETING | backup_status::ERROR_DELETING
                        ) =>
                    {
                        handle()
                    }
                    // A second deletion is harmless.
                    Ok(_) => Ok(Reconciled::NotSubmitted),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn faults_are_kept_and_classified() {
        let mut h = HeaderMap::new();
        h.insert("x-openstack-request-id", HeaderValue::from_static("req-1"));
        let body = br#"{"itemNotFound":{"message":"Backup 592a could not be found.","code":404}}"#;
        let e = vbs_error(StatusCode::NOT_FOUND, &h, body, "reading");
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(e.details[0].title.as_deref(), Some("itemNotFound"));
        assert_eq!(
            e.details[0].detail.as_deref(),
            Some("Backup 592a could not be found.")
        );
        assert!(e.message.contains("req-1"), "{e}");

        // Quota: 413 with Retry-After: 0 is not retried.
        let mut q = HeaderMap::new();
        q.insert("retry-after", HeaderValue::from_static("0"));
        let body = br#"{"overLimit":{"code":413,"message":"VolumeSizeExceedsAvailableQuota","retryAfter":"0"}}"#;
        let e = vbs_error(StatusCode::PAYLOAD_TOO_LARGE, &q, body, "x");
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(!e.is_retryable());
        assert!(e.message.contains("quota"), "{e}");
        // A 413 that says when to come back is a rate limit.
        let body = br#"{"overLimit":{"code":413,"message":"slow down","retryAfter":"7"}}"#;
        let e = vbs_error(StatusCode::PAYLOAD_TOO_LARGE, &HeaderMap::new(), body, "x");
        assert_eq!(e.kind, ErrorKind::Throttled);
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));

        for s in [429u16, 500, 502, 503, 504] {
            let st = StatusCode::from_u16(s).unwrap();
            let body = Fault::new(s, "x").to_json().to_string();
            assert!(
                vbs_error(st, &h, body.as_bytes(), "x").is_retryable(),
                "{s}"
            );
        }
        let e = vbs_error(StatusCode::BAD_GATEWAY, &h, b"<html>", "x");
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(e.details[0].title.is_none());
        let e = vbs_error(StatusCode::BAD_REQUEST, &h, br#"{"badRequest":{"code":400,"message":"Invalid volume: Volume to be restored to must be available"}}"#, "x");
        assert_eq!(e.kind, ErrorKind::Invalid);
    }

    #[test]
    fn markers_come_from_next_links() {
        assert_eq!(
            marker_of("http://internal:8776/v2/p/backups/detail?volume_id=v&limit=2&marker=abc-1")
                .as_deref(),
            Some("abc-1")
        );
        assert_eq!(
            marker_of("/v2/p/backups/detail?marker=m2").as_deref(),
            Some("m2")
        );
        assert_eq!(marker_of("http://x/v2/p/backups/detail?limit=2"), None);
    }
}
