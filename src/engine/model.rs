//! The job record: the domain type that the store persists and the API
//! converts. Versioned (`v`) so later releases can migrate old records.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use custos_adapter_core::{ErrorDetail, Intent, Operation, RemoteHandle};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The record format written by this release.
pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobKind {
    Backup,
    Restore,
    DeleteBackup,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "BACKUP",
            JobKind::Restore => "RESTORE",
            JobKind::DeleteBackup => "DELETE_BACKUP",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "PENDING",
            JobState::Running => "RUNNING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }
}

/// Where a job is in its conversation with the backend; what a restart
/// resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Nothing sent that changes anything; safe to (re)start.
    Queued,
    /// The intent is stored and the submit may have been sent: after a
    /// crash, reconcile, never resubmit blindly.
    Submitting,
    /// The remote handle is stored: poll it.
    Polling,
    /// Terminal.
    Done,
}

/// A failed job's error, shaped like `google.rpc.Status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// A `google.rpc.Code` value.
    pub code: i32,
    pub message: String,
    pub details: Vec<ErrorDetail>,
}

/// One job, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub v: u32,
    pub id: Uuid,
    pub kind: JobKind,
    /// The full target name.
    pub target: String,
    pub backend: String,
    pub op: Operation,
    pub state: JobState,
    pub phase: Phase,
    pub create_time: DateTime<Utc>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    /// Backend calls tried for the current step, retries included.
    pub attempts: u32,
    pub message: String,
    pub backup_id: Option<String>,
    pub intent: Option<Intent>,
    pub handle: Option<RemoteHandle>,
    pub error: Option<JobError>,
    pub schedule: Option<String>,
    pub request_id: Option<String>,
    /// A digest of the request, to tell a retried request from a different
    /// one that reuses its `request_id`.
    pub fingerprint: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub next_attempt_time: Option<DateTime<Utc>>,
}

impl JobRecord {
    pub fn new(
        kind: JobKind,
        target: String,
        backend: String,
        op: Operation,
        labels: BTreeMap<String, String>,
    ) -> JobRecord {
        JobRecord {
            v: RECORD_VERSION,
            id: Uuid::now_v7(),
            kind,
            target,
            backend,
            op,
            state: JobState::Pending,
            phase: Phase::Queued,
            create_time: Utc::now(),
            start_time: None,
            end_time: None,
            attempts: 0,
            message: "queued".into(),
            backup_id: None,
            intent: None,
            handle: None,
            error: None,
            schedule: None,
            request_id: None,
            fingerprint: None,
            labels,
            next_attempt_time: None,
        }
    }
}
