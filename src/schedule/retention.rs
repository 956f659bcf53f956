//! Which of a schedule's own backups its retention deletes. Pure: the
//! scheduler hands in the jobs the schedule made and starts the deletions.
//!
//! A backup counts if a BACKUP job of the schedule (made since the
//! schedule was created: not a deleted namesake's) SUCCEEDED with its id,
//! and the backend still lists it. It is gone (or going) if any
//! DELETE_BACKUP job for it, whoever made it, is not FAILED, or FAILED
//! because the backend no longer has it; one that failed otherwise is not
//! tried again for [`RETRY_FAILED_DELETE`]. Of the rest,
//! newest first, the newest `min_keep` (at least 1) always stay; the others
//! go when beyond `keep_last` or older than `max_age`. Backups made by
//! anything else are never looked at.

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, Utc};
use custos_adapter_core::{ErrorKind, Operation};

use crate::job::{Failure, JobKind, JobRecord, JobState};
use crate::schedule_record::Retention;

/// How long a deletion that failed (other than "not found") is not
/// tried again: a refusal such as "incremental backups depend on it" does
/// not change by itself.
pub const RETRY_FAILED_DELETE: Duration = Duration::from_secs(24 * 3600);

/// What retention looks at.
pub struct Inputs<'a> {
    /// Every job on the schedule's target, whoever made it.
    pub jobs: &'a [JobRecord],
    /// `schedules/{id}`.
    pub schedule: &'a str,
    /// The schedule's creation: jobs of an earlier schedule with the same
    /// name are not its own.
    pub since: DateTime<Utc>,
    /// Whether the backend still lists a backup (None: not known).
    pub exists: &'a dyn Fn(&str) -> bool,
}

/// The ids of the backups to delete now, oldest first.
pub fn to_delete(i: &Inputs<'_>, ret: &Retention, now: DateTime<Utc>) -> Vec<String> {
    let recently = |t: Option<DateTime<Utc>>| {
        t.and_then(|t| (now - t).to_std().ok())
            .is_some_and(|age| age < RETRY_FAILED_DELETE)
    };
    // Deleted, being deleted, or refused lately: by anyone.
    let gone: HashSet<&str> = i
        .jobs
        .iter()
        .filter(|j| j.kind == JobKind::DeleteBackup)
        .filter(|j| {
            j.state != JobState::Failed
                || j.error
                    .as_ref()
                    .is_some_and(|e| e.reason == Failure::Backend(ErrorKind::NotFound))
                || recently(j.end_time)
        })
        .filter_map(|j| match &j.op {
            Operation::DeleteBackup { backup_id, .. } => Some(backup_id.as_str()),
            _ => None,
        })
        .collect();
    let mut made: Vec<(&str, DateTime<Utc>)> = i
        .jobs
        .iter()
        .filter(|j| j.schedule.as_deref() == Some(i.schedule) && j.create_time >= i.since)
        .filter(|j| j.kind == JobKind::Backup && j.state == JobState::Succeeded)
        .filter_map(|j| {
            let id = j.backup_id.as_deref().filter(|b| !b.is_empty())?;
            Some((id, j.end_time.unwrap_or(j.create_time)))
        })
        .filter(|(id, _)| !gone.contains(id) && (i.exists)(id))
        .collect();
    // Newest first; one entry per backup id.
    made.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(a.0)));
    let mut seen = HashSet::new();
    made.retain(|(id, _)| seen.insert(*id));
    // A deletion refused lately stays protected only from being retried;
    // it still counts as one of the backups that exist.
    let protect = ret.min_keep.max(1) as usize;
    let mut out: Vec<String> = made
        .iter()
        .enumerate()
        .filter(|(i, _)| *i >= protect)
        .filter(|(i, (_, at))| {
            let beyond_count = ret.keep_last > 0 && *i >= ret.keep_last as usize;
            let too_old = ret
                .max_age
                .is_some_and(|max| (now - *at).to_std().map(|age| age > max).unwrap_or(false));
            beyond_count || too_old
        })
        .map(|(_, (id, _))| id.to_string())
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::{collections::BTreeMap, time::Duration};

    use custos_adapter_core::{Resource, ResourceKind};

    use super::*;
    use crate::job::JobError;

    fn vol() -> Resource {
        Resource {
            kind: ResourceKind::Volume,
            id: "v".into(),
        }
    }

    fn backup(id: &str, age_h: i64, state: JobState, now: DateTime<Utc>) -> JobRecord {
        let mut j = JobRecord::new(
            JobKind::Backup,
            "backends/b/volumes/v".into(),
            "b".into(),
            Operation::CreateBackup {
                resource: vol(),
                incremental: false,
            },
            BTreeMap::new(),
        );
        j.state = state;
        j.backup_id = (state == JobState::Succeeded).then(|| id.to_string());
        j.end_time = Some(now - chrono::Duration::hours(age_h));
        j.create_time = now - chrono::Duration::hours(age_h);
        j.schedule = Some("schedules/s".into());
        j
    }

    fn delete(id: &str, state: JobState, reason: Option<Failure>) -> JobRecord {
        let mut j = JobRecord::new(
            JobKind::DeleteBackup,
            "backends/b/volumes/v".into(),
            "b".into(),
            Operation::DeleteBackup {
                resource: vol(),
                backup_id: id.into(),
            },
            BTreeMap::new(),
        );
        j.state = state;
        j.end_time = Some(Utc::now() - chrono::Duration::hours(48));
        j.error = reason.map(|r| JobError {
            reason: r,
            message: "x".into(),
            details: vec![],
        });
        j
    }

    /// Retention over `jobs`, every backup still listed.
    fn to_delete(jobs: &[JobRecord], r: &Retention, now: DateTime<Utc>) -> Vec<String> {
        super::to_delete(
            &Inputs {
                jobs,
                schedule: "schedules/s",
                since: DateTime::UNIX_EPOCH,
                exists: &|_| true,
            },
            r,
            now,
        )
    }

    fn ret(keep_last: u32, max_age_h: Option<u64>, min_keep: u32) -> Retention {
        Retention {
            keep_last,
            max_age: max_age_h.map(|h| Duration::from_secs(h * 3600)),
            min_keep,
        }
    }

    #[test]
    fn keeps_the_newest_keep_last() {
        let now = Utc::now();
        let jobs: Vec<JobRecord> = (0..5)
            .map(|i| backup(&format!("b{i}"), i, JobState::Succeeded, now))
            .collect();
        // b0 newest … b4 oldest.
        assert_eq!(to_delete(&jobs, &ret(3, None, 1), now), ["b4", "b3"]);
        assert!(to_delete(&jobs, &ret(0, None, 1), now).is_empty());
    }

    #[test]
    fn max_age_but_never_the_last_good_backup() {
        let now = Utc::now();
        // All older than a day; only failed runs since.
        let jobs = vec![
            backup("new-failed", 1, JobState::Failed, now),
            backup("b1", 30, JobState::Succeeded, now),
            backup("b2", 40, JobState::Succeeded, now),
            backup("b3", 50, JobState::Succeeded, now),
        ];
        assert_eq!(to_delete(&jobs, &ret(0, Some(24), 0), now), ["b3", "b2"]);
        assert_eq!(to_delete(&jobs, &ret(0, Some(24), 2), now), ["b3"]);
        // keep_last 1 and min_keep 3: min_keep wins.
        assert!(to_delete(&jobs, &ret(1, None, 3), now).is_empty());
    }

    #[test]
    fn deletions_under_way_or_done_are_not_repeated_but_failed_ones_are() {
        let now = Utc::now();
        let mut jobs: Vec<JobRecord> = (0..4)
            .map(|i| backup(&format!("b{i}"), i, JobState::Succeeded, now))
            .collect();
        jobs.push(delete("b3", JobState::Running, None));
        jobs.push(delete("b2", JobState::Failed, Some(Failure::Timeout)));
        // b3 is being deleted; b2's deletion failed: it stays a candidate.
        assert_eq!(to_delete(&jobs, &ret(1, None, 1), now), ["b2", "b1"]);
        // A deletion that failed because the backup is gone counts as done.
        jobs.push(delete(
            "b1",
            JobState::Failed,
            Some(Failure::Backend(ErrorKind::NotFound)),
        ));
        assert_eq!(to_delete(&jobs, &ret(1, None, 1), now), ["b2"]);
    }

    #[test]
    fn a_backup_gone_from_the_backend_or_deleted_by_hand_does_not_count() {
        let now = Utc::now();
        // b0 (newest) was deleted outside Custos, b1 by a DeleteBackup
        // call of a user: b2 is the last good backup and stays.
        let mut jobs = vec![
            backup("b0", 1, JobState::Succeeded, now),
            backup("b1", 30, JobState::Succeeded, now),
            backup("b2", 40, JobState::Succeeded, now),
        ];
        let mut by_hand = delete("b1", JobState::Succeeded, None);
        by_hand.schedule = None;
        jobs.push(by_hand);
        let gone_b0 = super::to_delete(
            &Inputs {
                jobs: &jobs,
                schedule: "schedules/s",
                since: DateTime::UNIX_EPOCH,
                exists: &|id| id != "b0",
            },
            &ret(0, Some(24), 1),
            now,
        );
        assert!(gone_b0.is_empty(), "{gone_b0:?}");
    }

    #[test]
    fn a_namesakes_backups_and_lately_refused_deletions_are_left_alone() {
        let now = Utc::now();
        let jobs: Vec<JobRecord> = (0..4)
            .map(|i| backup(&format!("b{i}"), i, JobState::Succeeded, now))
            .collect();
        // Made by an earlier schedule of the same name (before `since`).
        let since = now - chrono::Duration::minutes(90);
        let mine = super::to_delete(
            &Inputs {
                jobs: &jobs,
                schedule: "schedules/s",
                since,
                exists: &|_| true,
            },
            &ret(1, None, 1),
            now,
        );
        assert_eq!(mine, ["b1"], "b2 and b3 were the namesake's");
        // A deletion refused an hour ago is not tried again yet.
        let mut jobs = jobs;
        let mut refused = delete(
            "b3",
            JobState::Failed,
            Some(Failure::Backend(ErrorKind::Invalid)),
        );
        refused.end_time = Some(now - chrono::Duration::hours(1));
        jobs.push(refused);
        assert_eq!(to_delete(&jobs, &ret(1, None, 1), now), ["b2", "b1"]);
    }
}
