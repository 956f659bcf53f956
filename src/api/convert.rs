//! Hand-written mapping between generated proto types and domain types.
//! Stored records are never prost messages.

use chrono::{DateTime, TimeZone, Utc};
use custos_adapter_core::{BackupInfo, Capabilities, Operation};

use super::pb;
use crate::job::{JobKind, JobRecord, JobState};

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A proto timestamp as a time, or `None` when it is out of range.
pub fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    Utc.timestamp_opt(t.seconds, t.nanos as u32).single()
}

pub fn kind(k: JobKind) -> pb::job::Kind {
    match k {
        JobKind::Backup => pb::job::Kind::Backup,
        JobKind::Restore => pb::job::Kind::Restore,
        JobKind::DeleteBackup => pb::job::Kind::DeleteBackup,
    }
}

pub fn state(s: JobState) -> pb::job::State {
    match s {
        JobState::Pending => pb::job::State::Pending,
        JobState::Running => pb::job::State::Running,
        JobState::Succeeded => pb::job::State::Succeeded,
        JobState::Failed => pb::job::State::Failed,
        JobState::Cancelled => pb::job::State::Cancelled,
    }
}

pub fn capabilities(c: Capabilities) -> pb::Capabilities {
    pb::Capabilities {
        create_backup: c.create_backup,
        list_backups: c.list_backups,
        delete_backup: c.delete_backup,
        restore: c.restore,
        point_in_time_restore: c.point_in_time_restore,
        cross_instance_restore: c.cross_instance_restore,
        restore_mappings: c.restore_mappings,
        cancel_running: c.cancel_running,
        incremental_backup: c.incremental_backup,
    }
}

pub fn backup(b: BackupInfo, target: &str) -> pb::Backup {
    pb::Backup {
        name: crate::names::backup_name(target, &b.id),
        id: b.id,
        target: target.to_string(),
        create_time: b.created_at.map(timestamp),
        state: b.state,
    }
}

/// A job for a list or a stream of many: without its events unless `full`
/// (AIP-157: a page of 1000 jobs with 32 events each would pass the 4 MiB
/// message size clients accept by default).
pub fn job_view(j: &JobRecord, full: bool) -> pb::Job {
    let mut p = job(j);
    if !full {
        p.events.clear();
    }
    p
}

pub fn job(j: &JobRecord) -> pb::Job {
    let restore = match &j.op {
        Operation::Restore { spec, .. } => Some(pb::RestoreParameters {
            backup_id: spec.backup_id.clone().unwrap_or_default(),
            point_in_time: spec.point_in_time.map(timestamp),
            restore_point: spec.restore_point.clone().unwrap_or_default(),
            source: spec
                .source
                .as_ref()
                .map(|s| format!("backends/{}/{}/{}", j.backend, s.kind.collection(), s.id))
                .unwrap_or_default(),
            mappings: spec
                .mappings
                .iter()
                .map(|m| pb::VolumeMapping {
                    backup_id: m.backup_id.clone(),
                    volume_id: m.volume_id.clone(),
                })
                .collect(),
            power_on: spec.power_on,
            resource_id: spec.resource_id.clone().unwrap_or_default(),
        }),
        _ => None,
    };
    let backup_id = j.backup_id.clone().or_else(|| match &j.op {
        Operation::DeleteBackup { backup_id, .. } => Some(backup_id.clone()),
        Operation::Restore { spec, .. } => spec.backup_id.clone(),
        Operation::CreateBackup { .. } => None,
    });
    pb::Job {
        name: crate::names::job_name(j.id),
        kind: kind(j.kind) as i32,
        target: j.target.clone(),
        state: state(j.state) as i32,
        create_time: Some(timestamp(j.create_time)),
        start_time: j.start_time.map(timestamp),
        end_time: j.end_time.map(timestamp),
        attempts: j.attempts.min(i32::MAX as u32) as i32,
        message: j.message.clone(),
        backup_id: backup_id.unwrap_or_default(),
        remote_operation: j
            .handle
            .as_ref()
            .map(|h| h.display.clone())
            .unwrap_or_default(),
        error: j.error.as_ref().map(|e| pb::JobError {
            code: super::error::failure_code(e.reason) as i32,
            message: e.message.clone(),
            details: e
                .details
                .iter()
                .map(|d| pb::BackendErrorDetail {
                    http_status: d.http_status.map(i32::from).unwrap_or_default(),
                    code: d.code.clone().unwrap_or_default(),
                    title: d.title.clone().unwrap_or_default(),
                    detail: d.detail.clone().unwrap_or_default(),
                })
                .collect(),
        }),
        schedule: j.schedule.clone().unwrap_or_default(),
        request_id: j.request_id.clone().unwrap_or_default(),
        labels: j.labels.clone().into_iter().collect(),
        restore,
        next_attempt_time: j.next_attempt_time.map(timestamp),
        validate_only: false,
        created_by: j.created_by.clone().unwrap_or_default(),
        progress_percent: j.progress_percent.map(i32::from),
        events: j
            .events
            .iter()
            .map(|e| pb::JobEvent {
                time: Some(timestamp(e.time)),
                state: state(e.state) as i32,
                phase: phase(e.phase).into(),
                message: e.message.clone(),
            })
            .collect(),
    }
}

fn phase(p: crate::job::Phase) -> &'static str {
    use crate::job::Phase;
    match p {
        Phase::Queued => "queued",
        Phase::Submitting => "submitting",
        Phase::Polling => "polling",
        Phase::Done => "done",
    }
}
