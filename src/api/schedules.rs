//! The schedule RPCs: request syntax and backend checks → [`ScheduleSpec`],
//! then the [`Scheduler`]; records → `pb::Schedule`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use custos_adapter_core::FieldViolation;

use super::{ApiError, Service, convert, error, page, pb, validate};
use crate::{
    config::parse_duration,
    names,
    schedule::{
        CatchUp, Overlap, Retention, ScheduleError, ScheduleRecord, ScheduleSpec,
        cron::CronSchedule,
    },
};

/// Schedule ids: AIP-122 style.
const ID_RULE: &str =
    "1-63 lower-case letters, digits and '-', starting with a letter and not ending with '-'";

pub fn valid_schedule_id(s: &str) -> bool {
    let mut c = s.chars();
    !s.is_empty()
        && s.len() <= 63
        && c.next().is_some_and(|f| f.is_ascii_lowercase())
        && c.all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == '-')
        && !s.ends_with('-')
}

/// `schedules/{id}` → id.
pub fn schedule_id(field: &str, name: &str) -> Result<String, ApiError> {
    let id = name.strip_prefix("schedules/").ok_or_else(|| {
        ApiError::field(
            field,
            format!(
                "{:?} is not a schedule name (schedules/{{id}})",
                names::truncate(name)
            ),
        )
    })?;
    if !valid_schedule_id(id) {
        return Err(ApiError::field(field, format!("the id: {ID_RULE}")));
    }
    Ok(id.to_string())
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::NotFound(n) => {
                let message = format!("{n} not found");
                ApiError::not_found("schedule", n, message)
            }
            ScheduleError::AlreadyExists(n) => ApiError::AlreadyExists {
                reason: error::ALREADY_EXISTS,
                kind: "schedule",
                message: format!("{n} already exists"),
                name: n,
            },
            ScheduleError::FailedPrecondition(m) => ApiError::FailedPrecondition {
                reason: error::SCHEDULE_UNREADABLE,
                subject: String::new(),
                message: m,
            },
            ScheduleError::Overlap(m) => ApiError::FailedPrecondition {
                reason: error::SCHEDULE_RUN_OVERLAP,
                subject: String::new(),
                message: m,
            },
            ScheduleError::Invalid(v) => ApiError::invalid(v),
            ScheduleError::Store(s) => s.into(),
            ScheduleError::Engine(e) => e.into(),
        }
    }
}

fn overlap_from(v: i32, out: &mut Vec<FieldViolation>) -> Overlap {
    match pb::schedule::OverlapPolicy::try_from(v) {
        Ok(pb::schedule::OverlapPolicy::Unspecified) | Ok(pb::schedule::OverlapPolicy::Skip) => {
            Overlap::Skip
        }
        Ok(pb::schedule::OverlapPolicy::Allow) => Overlap::Allow,
        Err(_) => {
            out.push(FieldViolation::new(
                "schedule.overlap_policy",
                format!("{v} is not SKIP or ALLOW"),
            ));
            Overlap::Skip
        }
    }
}

fn catch_up_from(v: i32, out: &mut Vec<FieldViolation>) -> CatchUp {
    match pb::schedule::CatchUp::try_from(v) {
        Ok(pb::schedule::CatchUp::Unspecified) | Ok(pb::schedule::CatchUp::RunOnce) => {
            CatchUp::RunOnce
        }
        Ok(pb::schedule::CatchUp::Skip) => CatchUp::Skip,
        Err(_) => {
            out.push(FieldViolation::new(
                "schedule.catch_up",
                format!("{v} is not RUN_ONCE or CATCH_UP_SKIP"),
            ));
            CatchUp::RunOnce
        }
    }
}

fn retention_from(r: &pb::Retention, out: &mut Vec<FieldViolation>) -> Option<Retention> {
    let mut bad = |f: &str, m: String| out.push(FieldViolation::new(f, m));
    let keep_last = u32::try_from(r.keep_last).unwrap_or_else(|_| {
        bad(
            "schedule.retention.keep_last",
            "must not be negative".into(),
        );
        0
    });
    let min_keep = u32::try_from(r.min_keep).unwrap_or_else(|_| {
        bad("schedule.retention.min_keep", "must not be negative".into());
        1
    });
    let max_age = if r.max_age.trim().is_empty() {
        None
    } else {
        match parse_duration(&r.max_age) {
            Ok(d) if d.is_zero() => {
                bad(
                    "schedule.retention.max_age",
                    "must be longer than 0 (leave it empty for no age limit)".into(),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                bad("schedule.retention.max_age", e);
                None
            }
        }
    };
    let ret = Retention {
        keep_last,
        max_age,
        min_keep: min_keep.max(1),
    };
    ret.is_active().then_some(ret)
}

impl Service {
    /// Checks a schedule as given and turns it into a spec (`target` is
    /// taken from `fixed_target` on updates, where it cannot change).
    fn schedule_spec(&self, s: &pb::Schedule) -> Result<ScheduleSpec, ApiError> {
        let (t, entry) = self.target("schedule.target", &s.target)?;
        let caps = entry.backend.capabilities();
        if !caps.create_backup {
            return Err(ApiError::FailedPrecondition {
                reason: error::CAPABILITY_MISSING,
                subject: format!("backends/{}", entry.name),
                message: format!(
                    "backend {} ({}) cannot make backups, so it cannot be scheduled",
                    entry.name,
                    entry.backend.kind()
                ),
            });
        }
        let mut v = Vec::new();
        if let Err(errs) = CronSchedule::parse(&s.cron, &s.time_zone) {
            for e in errs {
                v.push(FieldViolation::new(
                    format!("schedule.{}", e.field),
                    e.reason,
                ));
            }
        }
        let overlap = overlap_from(s.overlap_policy, &mut v);
        let catch_up = catch_up_from(s.catch_up, &mut v);
        let retention = s.retention.as_ref().and_then(|r| retention_from(r, &mut v));
        if retention.is_some() && !caps.delete_backup {
            v.push(FieldViolation::new(
                "schedule.retention",
                format!(
                    "backend {} ({}) cannot delete backups, so retention cannot be applied",
                    entry.name,
                    entry.backend.kind()
                ),
            ));
        }
        if s.incremental && !caps.incremental_backup {
            v.push(FieldViolation::new(
                "schedule.incremental",
                format!(
                    "backend {} ({}) cannot make incremental backups",
                    entry.name,
                    entry.backend.kind()
                ),
            ));
        }
        let mut lv = Vec::new();
        let labels = validate::labels(&s.labels, &mut lv);
        v.extend(lv.into_iter().map(|f| FieldViolation {
            field: format!("schedule.{}", f.field),
            description: f.description,
        }));
        // What the backend itself would refuse (the target's kind, ...).
        let op = custos_adapter_core::Operation::CreateBackup {
            resource: t.resource.clone(),
            incremental: s.incremental,
        };
        v.extend(
            self.engine
                .check(entry, &op)
                .into_iter()
                .map(|f| FieldViolation {
                    field: format!("schedule.{}", f.field),
                    description: f.description,
                }),
        );
        validate::done(v)?;
        Ok(ScheduleSpec {
            target: t.name(),
            backend: t.backend.clone(),
            resource: t.resource,
            cron: s.cron.trim().to_string(),
            time_zone: s.time_zone.trim().to_string(),
            paused: s.paused,
            overlap,
            catch_up,
            retention,
            labels,
            incremental: s.incremental,
        })
    }

    pub(super) async fn do_create_schedule(
        &self,
        r: pb::CreateScheduleRequest,
    ) -> Result<pb::Schedule, ApiError> {
        let id = if r.schedule_id.is_empty() {
            format!("s-{}", uuid::Uuid::now_v7().simple())
        } else if valid_schedule_id(&r.schedule_id) {
            r.schedule_id.clone()
        } else {
            return Err(ApiError::field("schedule_id", ID_RULE));
        };
        let s = r
            .schedule
            .ok_or_else(|| ApiError::field("schedule", "required"))?;
        let spec = self.schedule_spec(&s)?;
        if r.validate_only {
            let cron = CronSchedule::parse(&spec.cron, &spec.time_zone)
                .map_err(|_| ApiError::field("schedule.cron", "could not be read again"))?;
            let now = self.schedules.now();
            let mut out = spec_view(&id, &spec, now);
            out.next_run_times = cron
                .upcoming(now, 5)
                .into_iter()
                .map(convert::timestamp)
                .collect();
            return Ok(out);
        }
        let (rec, next) = self.schedules.create(id, spec).await?;
        Ok(schedule(&rec, &next))
    }

    pub(super) async fn do_update_schedule(
        &self,
        r: pb::UpdateScheduleRequest,
    ) -> Result<pb::Schedule, ApiError> {
        let given = r
            .schedule
            .ok_or_else(|| ApiError::field("schedule", "required"))?;
        let id = schedule_id("schedule.name", &given.name)?;
        let mask = update_mask(&r.update_mask, &given)?;
        if r.validate_only {
            let (current, next) = self.schedules.get(&id)?;
            let merged = merge(&current, &given, &mask);
            self.schedule_spec(&merged)?;
            let mut out = merged;
            out.next_run_times = next.iter().copied().map(convert::timestamp).collect();
            return Ok(out);
        }
        // Merged under the schedule's lock: a change that lands meanwhile
        // (a pause) is not overwritten.
        let (rec, next) = self
            .schedules
            .update(&id, |current| {
                let merged = merge(current, &given, &mask);
                self.schedule_spec(&merged)
            })
            .await?;
        Ok(schedule(&rec, &next))
    }

    /// The schedule as `ResumeSchedule` would leave it (validate_only):
    /// unpaused, with the next runs after now.
    pub(super) fn preview_resume(&self, id: &str) -> Result<pb::Schedule, ApiError> {
        let (mut rec, _) = self.schedules.get(id)?;
        rec.paused = false;
        let cron = CronSchedule::parse(&rec.cron, &rec.time_zone)
            .map_err(|_| ApiError::field("name", "the stored cron could not be read again"))?;
        let next = cron.upcoming(self.schedules.now(), 5);
        Ok(schedule(&rec, &next))
    }

    pub(super) fn do_list_schedules(
        &self,
        r: pb::ListSchedulesRequest,
    ) -> Result<pb::ListSchedulesResponse, ApiError> {
        let size = validate::page_size(r.page_size, "page_size")?;
        let binding = page::Binding {
            method: "ListSchedules",
            fields: &[],
        };
        let after = binding.decode(&r.page_token)?;
        if let Some(a) = &after
            && !valid_schedule_id(a)
        {
            return Err(ApiError::invalid_with(
                page::REASON_INVALID,
                "page_token",
                "not a page token of ListSchedules",
            ));
        }
        let (items, more) = self.schedules.list(after.as_deref(), size);
        let next_page_token = if more {
            items
                .last()
                .map(|(r, _)| binding.encode(&r.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListSchedulesResponse {
            schedules: items.iter().map(|(r, n)| schedule(r, n)).collect(),
            next_page_token,
        })
    }
}

/// The fields an update changes: the mask as given, or (AIP-134) when it
/// is empty, every field the request sets.
fn update_mask(mask: &[String], given: &pb::Schedule) -> Result<Vec<String>, ApiError> {
    const KNOWN: [&str; 11] = [
        "cron",
        "time_zone",
        "overlap_policy",
        "catch_up",
        "retention",
        "retention.keep_last",
        "retention.max_age",
        "retention.min_keep",
        "labels",
        "incremental",
        "paused",
    ];
    let mut v = Vec::new();
    for path in mask {
        if path == "target" {
            v.push(FieldViolation::new(
                "update_mask",
                "target cannot change; create another schedule",
            ));
        } else if !KNOWN.contains(&path.as_str()) {
            v.push(FieldViolation::new(
                "update_mask",
                format!("unknown field {:?}", names::truncate(path)),
            ));
        }
    }
    validate::done(v)?;
    if !mask.is_empty() {
        return Ok(mask.to_vec());
    }
    let set = [
        ("cron", !given.cron.is_empty()),
        ("time_zone", !given.time_zone.is_empty()),
        ("overlap_policy", given.overlap_policy != 0),
        ("catch_up", given.catch_up != 0),
        ("retention", given.retention.is_some()),
        ("labels", !given.labels.is_empty()),
        ("incremental", given.incremental),
        ("paused", given.paused),
    ];
    let implied: Vec<String> = set
        .iter()
        .filter(|(_, on)| *on)
        .map(|(p, _)| p.to_string())
        .collect();
    if implied.is_empty() {
        return Err(ApiError::field(
            "update_mask",
            "nothing to change: set the fields to change (and name them in update_mask)",
        ));
    }
    Ok(implied)
}

/// `current` with the fields of `mask` taken from `given`.
fn merge(current: &ScheduleRecord, given: &pb::Schedule, mask: &[String]) -> pb::Schedule {
    let mut merged = schedule(current, &[]);
    let has = |p: &str| mask.iter().any(|m| m == p);
    if has("cron") {
        merged.cron = given.cron.clone();
    }
    if has("time_zone") {
        merged.time_zone = given.time_zone.clone();
    }
    if has("overlap_policy") {
        merged.overlap_policy = given.overlap_policy;
    }
    if has("catch_up") {
        merged.catch_up = given.catch_up;
    }
    if has("labels") {
        merged.labels = given.labels.clone();
    }
    if has("incremental") {
        merged.incremental = given.incremental;
    }
    if has("paused") {
        merged.paused = given.paused;
    }
    if has("retention") {
        merged.retention = given.retention.clone();
    } else {
        let g = given.retention.clone().unwrap_or_default();
        let m = merged.retention.get_or_insert_with(Default::default);
        if has("retention.keep_last") {
            m.keep_last = g.keep_last;
        }
        if has("retention.max_age") {
            m.max_age = g.max_age;
        }
        if has("retention.min_keep") {
            m.min_keep = g.min_keep;
        }
    }
    merged
}

/// What a validated, not yet created schedule would look like.
fn spec_view(id: &str, s: &ScheduleSpec, now: DateTime<Utc>) -> pb::Schedule {
    let rec = ScheduleRecord {
        v: crate::schedule_record::SCHEDULE_VERSION,
        id: id.to_string(),
        target: s.target.clone(),
        backend: s.backend.clone(),
        cron: s.cron.clone(),
        time_zone: s.time_zone.clone(),
        paused: s.paused,
        overlap: s.overlap,
        catch_up: s.catch_up,
        retention: s.retention.clone(),
        labels: s.labels.clone(),
        incremental: s.incremental,
        create_time: now,
        update_time: now,
        fired_until: now,
        last_job: None,
        last_skip: None,
    };
    let mut out = schedule(&rec, &[]);
    out.create_time = None;
    out.update_time = None;
    out
}

/// A record as the API shows it.
pub fn schedule(r: &ScheduleRecord, next: &[DateTime<Utc>]) -> pb::Schedule {
    let labels: HashMap<String, String> = r.labels.clone().into_iter().collect();
    pb::Schedule {
        name: r.name(),
        target: r.target.clone(),
        cron: r.cron.clone(),
        time_zone: if r.time_zone.is_empty() {
            "UTC".into()
        } else {
            r.time_zone.clone()
        },
        paused: r.paused,
        overlap_policy: match r.overlap {
            Overlap::Skip => pb::schedule::OverlapPolicy::Skip,
            Overlap::Allow => pb::schedule::OverlapPolicy::Allow,
        } as i32,
        catch_up: match r.catch_up {
            CatchUp::RunOnce => pb::schedule::CatchUp::RunOnce,
            CatchUp::Skip => pb::schedule::CatchUp::Skip,
        } as i32,
        retention: r.retention.as_ref().map(|x| pb::Retention {
            keep_last: i32::try_from(x.keep_last).unwrap_or(i32::MAX),
            max_age: x
                .max_age
                .map(|d| humantime::format_duration(d).to_string())
                .unwrap_or_default(),
            min_keep: i32::try_from(x.min_keep).unwrap_or(i32::MAX),
        }),
        labels,
        incremental: r.incremental,
        next_run_times: if r.paused {
            Vec::new()
        } else {
            next.iter().copied().map(convert::timestamp).collect()
        },
        last_job: r.last_job.map(names::job_name).unwrap_or_default(),
        last_skip: r.last_skip.as_ref().map(|s| pb::Skip {
            time: Some(convert::timestamp(s.time)),
            reason: s.reason.as_str().into(),
            message: s.message.clone(),
        }),
        create_time: Some(convert::timestamp(r.create_time)),
        update_time: Some(convert::timestamp(r.update_time)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_ids() {
        assert!(valid_schedule_id("nightly-db"));
        assert!(valid_schedule_id("a"));
        for bad in ["", "1abc", "Nightly", "a_b", "a/b", "a-", &"a".repeat(64)] {
            assert!(!valid_schedule_id(bad), "{bad:?}");
        }
        assert!(schedule_id("name", "schedules/x").is_ok());
        assert!(schedule_id("name", "jobs/x").is_err());
    }
}
