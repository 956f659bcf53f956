//! The job record: the domain type that the engine changes, the store
//! persists and the API converts. It sits below all three (it imports none
//! of them). Versioned (`v`): [`JobRecord::decode`] migrates older records.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use custos_adapter_core::{ErrorDetail, ErrorKind, Intent, Operation, RemoteHandle};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The record format written by this release. v2: `JobError.reason`
/// (backend-neutral) replaced v1's `JobError.code` (a gRPC code chosen by
/// the engine); v1 records are migrated on read.
pub const RECORD_VERSION: u32 = 2;

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

/// Why a job failed, in the daemon's words; `src/api/error.rs` alone turns
/// it into a gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// The backend refused the operation or reported it failed; the kind
    /// says what kind of refusal.
    Backend(ErrorKind),
    /// The submit may or may not have reached the backend, and the backend
    /// could not tell which: the job stopped rather than risk running twice.
    OutcomeUnknown,
    /// The operation timeout ran out while waiting.
    Timeout,
    /// The daemon lost state it needs (a damaged record or a bug).
    Internal,
}

/// A failed job's error, shaped like `google.rpc.Status` once converted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub reason: Failure,
    pub message: String,
    pub details: Vec<ErrorDetail>,
}

/// One job, as stored. Unset optional fields are left out of the stored
/// JSON (they read back as unset, in this release and the ones before).
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<DateTime<Utc>>,
    /// Failed tries being retried; reset by progress (see the proto).
    pub attempts: u32,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<RemoteHandle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// A digest of the request, to tell a retried request from a different
    /// one that reuses its `request_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<DateTime<Utc>>,
    /// Who asked for it: a client token's name, or `schedules/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// What happened to the job, oldest first: its creation, every change
    /// of state or phase, every retry; at most [`MAX_EVENTS`] (the first
    /// and the newest are kept).
    #[serde(default)]
    pub events: Vec<JobEvent>,
    /// How far the backend says the remote operation is (0–100), where
    /// it reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_percent: Option<u8>,
}

/// The most events a job keeps.
pub const MAX_EVENTS: usize = 32;
/// An event's message is cut after this many characters.
const MAX_EVENT_MESSAGE: usize = 512;

/// One entry of a job's history (short keys: every record carries these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    #[serde(rename = "t")]
    pub time: DateTime<Utc>,
    #[serde(rename = "s")]
    pub state: JobState,
    #[serde(rename = "p")]
    pub phase: Phase,
    #[serde(rename = "m")]
    pub message: String,
}

impl JobRecord {
    /// Adds an event for the job as it is now, at `time`; past
    /// [`MAX_EVENTS`] the oldest after the first is dropped.
    pub fn record_event(&mut self, time: DateTime<Utc>) {
        if self.events.len() >= MAX_EVENTS {
            self.events.remove(1);
        }
        self.events.push(JobEvent {
            time,
            state: self.state,
            phase: self.phase,
            message: if self.message.chars().count() > MAX_EVENT_MESSAGE {
                let mut m: String = self.message.chars().take(MAX_EVENT_MESSAGE).collect();
                m.push('…');
                m
            } else {
                self.message.clone()
            },
        });
    }
}

impl JobRecord {
    pub fn new(
        kind: JobKind,
        target: String,
        backend: String,
        op: Operation,
        labels: BTreeMap<String, String>,
    ) -> JobRecord {
        let mut rec = JobRecord {
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
            created_by: None,
            events: Vec::new(),
            progress_percent: None,
        };
        rec.record_event(rec.create_time);
        rec
    }
}

/// A record that cannot be read back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecodeError {
    #[error("a stored job is unreadable: {0}")]
    Corrupt(String),
    #[error("job {0} was written by a newer release (record version {1})")]
    TooNew(Uuid, u32),
}

impl JobRecord {
    /// Encodes the record for the store.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Decodes a stored record of this or an older version.
    pub fn decode(bytes: &[u8]) -> Result<JobRecord, DecodeError> {
        let mut rec = match serde_json::from_slice::<JobRecord>(bytes) {
            Ok(rec) if rec.v > RECORD_VERSION => return Err(DecodeError::TooNew(rec.id, rec.v)),
            Ok(rec) => rec,
            // Older (or newer) shapes fail the direct parse.
            Err(first) => {
                let mut v: serde_json::Value = serde_json::from_slice(bytes)
                    .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
                match v.get("v").and_then(|x| x.as_u64()) {
                    Some(1) => migrate_v1_error(&mut v),
                    Some(n) if n > u64::from(RECORD_VERSION) => {
                        let id = v["id"]
                            .as_str()
                            .and_then(|s| Uuid::parse_str(s).ok())
                            .unwrap_or_else(Uuid::nil);
                        return Err(DecodeError::TooNew(
                            id,
                            u32::try_from(n).unwrap_or(u32::MAX),
                        ));
                    }
                    _ => return Err(DecodeError::Corrupt(first.to_string())),
                }
                serde_json::from_value(v).map_err(|e| DecodeError::Corrupt(e.to_string()))?
            }
        };
        if rec.v < 2 {
            migrate_v1(&mut rec);
        }
        rec.v = RECORD_VERSION;
        Ok(rec)
    }
}

/// What v1 lacked besides the error's shape: an intent's `recorded_at`
/// (taken as the job's start, so that reconcile still refuses traces from
/// before it) and GUIDs in lower case (one target, one spelling).
fn migrate_v1(rec: &mut JobRecord) {
    if let Some(i) = rec.intent.as_mut()
        && i.recorded_at.is_none()
    {
        i.recorded_at = Some(rec.start_time.unwrap_or(rec.create_time));
    }
    rec.target = crate::names::normalise_target(&rec.target);
    let r = match &mut rec.op {
        Operation::CreateBackup { resource, .. }
        | Operation::DeleteBackup { resource, .. }
        | Operation::Restore { resource, .. } => resource,
    };
    r.id = crate::names::normalise_id(&r.id);
}

/// v1 stored `error.code`, a `google.rpc.Code` chosen by the engine; v2
/// stores the reason and leaves the code to the API.
fn migrate_v1_error(v: &mut serde_json::Value) {
    let Some(err) = v.get_mut("error").and_then(|e| e.as_object_mut()) else {
        return;
    };
    let code = err.remove("code").and_then(|c| c.as_i64()).unwrap_or(2);
    let reason = match code {
        2 => Failure::OutcomeUnknown,
        4 => Failure::Timeout,
        13 => Failure::Internal,
        16 => Failure::Backend(ErrorKind::Unauthorized),
        7 => Failure::Backend(ErrorKind::Forbidden),
        5 => Failure::Backend(ErrorKind::NotFound),
        3 => Failure::Backend(ErrorKind::Invalid),
        10 => Failure::Backend(ErrorKind::Busy),
        8 => Failure::Backend(ErrorKind::Throttled),
        14 => Failure::Backend(ErrorKind::Transient),
        12 => Failure::Backend(ErrorKind::Unsupported),
        _ => Failure::Backend(ErrorKind::Permanent),
    };
    if let Ok(r) = serde_json::to_value(reason) {
        err.insert("reason".into(), r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: unset fields are not stored (`"start_time":null` and the
    /// like were a sixth of a new job's record), and read back as unset.
    #[test]
    fn unset_fields_are_left_out_and_read_back() {
        let rec = JobRecord::new(
            JobKind::Backup,
            "backends/a/serviceInstances/x".into(),
            "a".into(),
            Operation::CreateBackup {
                resource: custos_adapter_core::Resource {
                    kind: custos_adapter_core::ResourceKind::ServiceInstance,
                    id: "x".into(),
                },
                incremental: false,
            },
            BTreeMap::new(),
        );
        let bytes = rec.encode().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("null"), "{text}");
        assert_eq!(JobRecord::decode(&bytes).unwrap(), rec);
    }

    fn rec() -> JobRecord {
        crate::test_support::record()
    }

    #[test]
    fn round_trip_and_v1_migration() {
        let mut r = rec();
        r.state = JobState::Failed;
        r.error = Some(JobError {
            reason: Failure::Backend(ErrorKind::NotFound),
            message: "gone".into(),
            details: vec![],
        });
        let back = JobRecord::decode(&r.encode().unwrap()).unwrap();
        assert_eq!(back, r);

        // A v1 record as the previous release wrote it.
        let mut v = serde_json::to_value(&r).unwrap();
        v["v"] = 1.into();
        v["error"] = serde_json::json!({"code": 2, "message": "outcome unknown: x", "details": []});
        let old = JobRecord::decode(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(old.v, RECORD_VERSION);
        assert_eq!(old.error.unwrap().reason, Failure::OutcomeUnknown);

        // A v1 job caught while submitting, on an upper-case GUID.
        let mut sub = crate::test_support::record();
        sub.target = "backends/cf/serviceInstances/6B0E2A8C-3F4D-4E5A-9B1C-2D3E4F5A6B7C".into();
        if let Operation::CreateBackup { resource, .. } = &mut sub.op {
            resource.id = "6B0E2A8C-3F4D-4E5A-9B1C-2D3E4F5A6B7C".into();
        }
        sub.phase = Phase::Submitting;
        sub.intent = Some(Intent::default());
        let mut v1_ok = serde_json::to_value(&sub).unwrap();
        v1_ok["v"] = 1.into();
        let m = JobRecord::decode(&serde_json::to_vec(&v1_ok).unwrap()).unwrap();
        assert_eq!(m.intent.unwrap().recorded_at, Some(sub.create_time));
        assert_eq!(
            m.target,
            "backends/cf/serviceInstances/6b0e2a8c-3f4d-4e5a-9b1c-2d3e4f5a6b7c"
        );
        assert_eq!(m.op.resource().id, "6b0e2a8c-3f4d-4e5a-9b1c-2d3e4f5a6b7c");

        let mut newer = serde_json::to_value(rec()).unwrap();
        newer["v"] = 99.into();
        assert!(matches!(
            JobRecord::decode(&serde_json::to_vec(&newer).unwrap()),
            Err(DecodeError::TooNew(_, 99))
        ));
        // A newer release's record of another shape is "too new" too.
        newer["phase"] = "Teleporting".into();
        assert!(matches!(
            JobRecord::decode(&serde_json::to_vec(&newer).unwrap()),
            Err(DecodeError::TooNew(_, 99))
        ));
        assert!(JobRecord::decode(b"{not json").is_err());
    }
}
