//! The schedule record: what the store keeps of a schedule, what the
//! scheduler changes and the API converts. Like `job.rs`, it imports none
//! of the store, the engine or the API. Versioned (`v`).

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const SCHEDULE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overlap {
    /// No new run while the last one has not ended.
    #[default]
    Skip,
    Allow,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatchUp {
    /// One run for the whole missed window.
    #[default]
    RunOnce,
    Skip,
}

/// Which of the schedule's own backups are deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// 0: no count limit.
    pub keep_last: u32,
    /// None: no age limit.
    #[serde(default, with = "opt_secs")]
    pub max_age: Option<Duration>,
    /// At least 1.
    pub min_keep: u32,
}

impl Retention {
    /// Whether it would ever delete anything.
    pub fn is_active(&self) -> bool {
        self.keep_last > 0 || self.max_age.is_some()
    }
}

/// Why a due time did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SkipReason {
    /// The last run had not ended (overlap policy SKIP).
    Overlap,
    /// The schedule was paused.
    Paused,
    /// The daemon was down (or late) past it.
    Missed,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Overlap => "overlap",
            SkipReason::Paused => "paused",
            SkipReason::Missed => "missed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    pub time: DateTime<Utc>,
    pub reason: SkipReason,
    pub message: String,
}

/// One schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub v: u32,
    /// The id in `schedules/{id}`.
    pub id: String,
    pub target: String,
    pub backend: String,
    pub cron: String,
    /// IANA name; "" is UTC.
    pub time_zone: String,
    pub paused: bool,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    #[serde(default)]
    pub retention: Option<Retention>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub incremental: bool,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    /// Due times up to this instant have been dealt with (run, skipped or
    /// recorded as missed); the next run is the first due time after it.
    pub fired_until: DateTime<Utc>,
    #[serde(default)]
    pub last_job: Option<Uuid>,
    #[serde(default)]
    pub last_skip: Option<Skip>,
}

impl ScheduleRecord {
    pub fn name(&self) -> String {
        format!("schedules/{}", self.id)
    }

    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<ScheduleRecord, String> {
        let r: ScheduleRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.v > SCHEDULE_VERSION {
            return Err(format!(
                "schedule {} was written by a newer release (record version {}, this release reads up to {SCHEDULE_VERSION})",
                r.id, r.v
            ));
        }
        Ok(r)
    }
}

mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_round_trip_and_newer_ones_are_refused() {
        let now = Utc::now();
        let r = ScheduleRecord {
            v: SCHEDULE_VERSION,
            id: "nightly".into(),
            target: "backends/vbs/volumes/v".into(),
            backend: "vbs".into(),
            cron: "0 2 * * *".into(),
            time_zone: "Europe/Berlin".into(),
            paused: false,
            overlap: Overlap::Skip,
            catch_up: CatchUp::RunOnce,
            retention: Some(Retention {
                keep_last: 7,
                max_age: Some(Duration::from_secs(86_400 * 30)),
                min_keep: 1,
            }),
            labels: BTreeMap::new(),
            incremental: false,
            create_time: now,
            update_time: now,
            fired_until: now,
            last_job: None,
            last_skip: Some(Skip {
                time: now,
                reason: SkipReason::Overlap,
                message: "x".into(),
            }),
        };
        let back = ScheduleRecord::decode(&r.encode().unwrap()).unwrap();
        assert_eq!(back, r);
        let mut newer = r.clone();
        newer.v = SCHEDULE_VERSION + 1;
        assert!(ScheduleRecord::decode(&newer.encode().unwrap()).is_err());
    }
}
