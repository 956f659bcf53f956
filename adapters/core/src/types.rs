//! The `Backend` trait and the domain types it speaks: resources, operations,
//! remote handles and progress.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::BackendError;

/// The kinds of backend Custos can drive; the wire names are fixed by the
/// config contract (`kind = "cf_v3"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    CfV3,
    CbrV3,
    VbsV2,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::CfV3 => "cf_v3",
            BackendKind::CbrV3 => "cbr_v3",
            BackendKind::VbsV2 => "vbs_v2",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cf_v3" => Ok(BackendKind::CfV3),
            "cbr_v3" => Ok(BackendKind::CbrV3),
            "vbs_v2" => Ok(BackendKind::VbsV2),
            other => Err(format!(
                "unknown backend kind {other:?}: expected one of cf_v3, cbr_v3, vbs_v2"
            )),
        }
    }
}

/// What a backend can do; reported by `ListBackends` and used by the daemon
/// to refuse unsupported requests before they become jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub create_backup: bool,
    pub list_backups: bool,
    pub delete_backup: bool,
    pub restore: bool,
    pub point_in_time_restore: bool,
    pub cross_instance_restore: bool,
    pub restore_mappings: bool,
    /// Whether a backup can be made incremental (`CreateBackup.incremental`).
    #[serde(default)]
    pub incremental_backup: bool,
    /// Whether a running remote operation can be stopped.
    pub cancel_running: bool,
}

/// The collection segment of a target name: `serviceInstances`, `servers`,
/// `volumes` or `resources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    ServiceInstance,
    Server,
    Volume,
    Resource,
}

impl ResourceKind {
    /// The collection name used in resource names.
    pub fn collection(self) -> &'static str {
        match self {
            ResourceKind::ServiceInstance => "serviceInstances",
            ResourceKind::Server => "servers",
            ResourceKind::Volume => "volumes",
            ResourceKind::Resource => "resources",
        }
    }

    pub fn from_collection(s: &str) -> Option<Self> {
        Some(match s {
            "serviceInstances" => ResourceKind::ServiceInstance,
            "servers" => ResourceKind::Server,
            "volumes" => ResourceKind::Volume,
            "resources" => ResourceKind::Resource,
            _ => return None,
        })
    }
}

/// One resource of one backend (the part of a target name after
/// `backends/{backend}/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resource {
    pub kind: ResourceKind,
    pub id: String,
}

/// A disk-level backup restored into one disk (v3 project backups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMapping {
    pub backup_id: String,
    pub volume_id: String,
}

/// The backend-neutral restore parameters, as the client asked for them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSpec {
    pub backup_id: Option<String>,
    pub point_in_time: Option<DateTime<Utc>>,
    pub restore_point: Option<String>,
    /// The source resource of a cross-instance restore, on the same backend.
    pub source: Option<Resource>,
    pub mappings: Vec<VolumeMapping>,
    pub power_on: Option<bool>,
    pub resource_id: Option<String>,
}

/// One mutating operation against a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    CreateBackup {
        resource: Resource,
        /// Only what changed since the resource's last backup, where the
        /// backend can (`Capabilities::incremental_backup`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        incremental: bool,
    },
    DeleteBackup {
        resource: Resource,
        backup_id: String,
    },
    Restore {
        resource: Resource,
        spec: RestoreSpec,
    },
}

impl Operation {
    pub fn resource(&self) -> &Resource {
        match self {
            Operation::CreateBackup { resource, .. }
            | Operation::DeleteBackup { resource, .. }
            | Operation::Restore { resource, .. } => resource,
        }
    }
}

/// What an adapter recorded about the world just before it submitted an
/// operation, so that after a crash it can tell whether the submit reached
/// the backend. Opaque to the daemon, which stores it with the job *before*
/// the submit call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Adapter-private state (JSON, usually).
    pub state: String,
    /// When the daemon stored this intent (set by the daemon, just before
    /// it is written and the submit is sent). A trace on the backend is
    /// this operation's only if it started after this instant (less the
    /// clock skew the adapter allows).
    #[serde(default)]
    pub recorded_at: Option<DateTime<Utc>>,
}

/// The backend's handle of a submitted operation: a job URL, an
/// operation-log match, a volume to watch. Stored with the job right after
/// the submit returns; polling resumes from it after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteHandle {
    /// What a person sees in `Job.remote_operation` (e.g. the CF job URL).
    pub display: String,
    /// Adapter-private state needed to poll (JSON, usually).
    pub state: String,
}

/// The outcome of one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Still running; `message` says what the backend reports. A poll may
    /// replace the handle (e.g. once an operation log is found).
    Running {
        message: String,
        handle: Option<RemoteHandle>,
        /// How far the backend says it is (0–100), where it says.
        percent: Option<u8>,
    },
    /// Finished well. `backup_id` is the backup made, for backups.
    Succeeded {
        message: String,
        backup_id: Option<String>,
    },
    /// Finished badly, with the backend's own error.
    Failed(BackendError),
}

/// What reconciliation found after a submit whose outcome was lost (a crash
/// between intent and handle, or a `maybe_applied` error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// The backend shows no trace of the submit, and it is a backend that
    /// would show one: safe to submit again — once the daemon's grace
    /// period is over (see [`Backend::reconcile`]).
    NotSubmitted,
    /// The submit reached the backend; poll this handle to the end.
    Submitted(RemoteHandle),
    /// Nobody can tell; the reason (what to check, on which resource) is
    /// shown to the user and the job fails.
    Unknown(String),
}

/// The most pages of backups the default [`Backend::get_backup`] reads.
pub const GET_BACKUP_MAX_PAGES: usize = 20;

/// A backup as a backend lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub id: String,
    pub created_at: Option<DateTime<Utc>>,
    pub state: String,
}

/// One page of backups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupPage {
    pub backups: Vec<BackupInfo>,
    /// Empty when there are no more pages.
    pub next_page_token: String,
}

/// A field of a request that the backend cannot honour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// One backend kind's adapter.
///
/// The daemon calls `prepare` → (persist intent) → `submit` → (persist
/// handle) → `poll` until the operation ends. After a crash between the
/// intent and the handle, or after a submit failed with `maybe_applied`, it
/// calls `reconcile` instead of submitting again.
///
/// # The submit rule (every adapter)
///
/// **A non-idempotent request whose outcome is unknown is never blindly
/// repeated.** Adapters never retry a submit themselves (the one exception:
/// a refresh-and-retry after a 401 that the backend's own error envelope
/// says was an expired token, which proves nothing was applied). They
/// report a failed submit as a [`BackendError`], and set `maybe_applied`
/// unless the answer *proves* nothing happened:
///
/// - `maybe_applied = true`: any 5xx (500, 502, 503, 504 — a load balancer
///   may answer 504 to a request the backend accepted), 408, a body that is
///   not the backend's error envelope (an HTML page from a proxy, garbage,
///   an over-long body), a connection broken or timed out after the request
///   was sent, and a success the adapter cannot use;
/// - `maybe_applied = false` only for: the backend's own error envelope on a
///   status it documents as a refusal (CF: 401/403 auth, 404, 409
///   operation in progress, 422 and other 4xx validation, 429 rate limit
///   before processing), or a connection that was never made.
///
/// Adapters apply this with [`crate::http::classify_submit_failure`] (for
/// answers) and [`crate::http::transport_error`] / [`crate::http::send`] (for
/// transport failures and over-long bodies); they do not decide it again.
///
/// A success whose handle cannot be used as given (CF: a 202 whose
/// `Location` is missing, unparsable, or on another origin, where the
/// bearer token must not go) is still a submitted operation: the adapter
/// returns a handle that follows it another way (CF: the instance's
/// `last_operation`), never an error.
///
/// # The reconcile rule
///
/// `reconcile` is a pure read: no writes, no sleeping, no retries of its
/// own beyond an idempotent GET's. The daemon calls it repeatedly over a
/// grace period (at least the request timeout, since a request still in
/// flight may be applied late, and a backend may show the trace late)
/// before it accepts `NotSubmitted`.
///
/// - [`Reconciled::Submitted`] only for a trace on the backend that matches
///   the operation (its kind: backup vs restore) *and* started after
///   [`Intent::recorded_at`] less a small allowance for clock skew (when
///   `recorded_at` is set). A trace of someone else's operation is never
///   taken for ours.
/// - [`Reconciled::NotSubmitted`] when the backend, which would show a trace
///   of this operation, shows none (nothing changed since `prepare`); and,
///   for operations whose duplicate is harmless (a backup), also when the
///   trace that changed is not ours.
/// - [`Reconciled::Unknown`] when a duplicate would do harm (a restore) and
///   the backend cannot tell: it keeps no trace, or the trace that changed
///   is not ours (it may have replaced ours). The message says what to check
///   on which resource.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;
    fn endpoint(&self) -> &str;
    fn capabilities(&self) -> Capabilities;
    /// The resource kinds a target of this backend may name.
    fn resource_kinds(&self) -> &'static [ResourceKind];

    /// Static checks of an operation against what this backend supports:
    /// fields it cannot honour, wrong resource kinds. No network.
    fn check(&self, op: &Operation) -> Vec<FieldViolation>;

    /// Lists backups of a resource; `page_size` maps to the backend's limit.
    async fn list_backups(
        &self,
        resource: &Resource,
        page_size: Option<u32>,
        page_token: &str,
    ) -> Result<BackupPage, BackendError>;

    /// One backup of `resource`; `None` when the resource has no backup
    /// with this id (including one that exists but belongs to another
    /// resource). The default looks through [`Backend::list_backups`], up
    /// to [`GET_BACKUP_MAX_PAGES`] pages; backends that can read a single
    /// backup override it.
    async fn get_backup(
        &self,
        resource: &Resource,
        backup_id: &str,
    ) -> Result<Option<BackupInfo>, BackendError> {
        let mut token = String::new();
        for _ in 0..GET_BACKUP_MAX_PAGES {
            let page = self.list_backups(resource, Some(1000), &token).await?;
            if let Some(b) = page.backups.into_iter().find(|b| b.id == backup_id) {
                return Ok(Some(b));
            }
            if page.next_page_token.is_empty() || page.next_page_token == token {
                return Ok(None);
            }
            token = page.next_page_token;
        }
        Err(BackendError::permanent(format!(
            "backup {backup_id:?} not among the first {GET_BACKUP_MAX_PAGES} pages of backups; list them instead"
        )))
    }

    /// Preflight with the backend (target and backup exist, ...) without
    /// changing anything. Returns a description of what would run.
    async fn validate(&self, op: &Operation) -> Result<String, BackendError>;

    /// Reads what is needed to recognise this operation's effect later.
    async fn prepare(&self, op: &Operation) -> Result<Intent, BackendError>;

    /// Starts the operation. Not idempotent: called once per recorded intent.
    /// A failure follows the submit rule above (`maybe_applied`).
    async fn submit(&self, op: &Operation, intent: &Intent) -> Result<RemoteHandle, BackendError>;

    /// Reads the progress of a submitted operation.
    async fn poll(
        &self,
        op: &Operation,
        intent: &Intent,
        handle: &RemoteHandle,
    ) -> Result<Progress, BackendError>;

    /// Decides whether a submit whose outcome was lost reached the backend;
    /// follows the reconcile rule above. A pure read, called repeatedly.
    async fn reconcile(&self, op: &Operation, intent: &Intent) -> Result<Reconciled, BackendError>;

    /// Stops a running remote operation, where `capabilities().cancel_running`.
    async fn cancel(&self, _handle: &RemoteHandle) -> Result<(), BackendError> {
        Err(BackendError::unsupported(
            "this backend cannot stop a running operation",
        ))
    }
}
