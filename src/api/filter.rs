//! The job filter of `ListJobs` and `WatchJobs`: `key=value` terms joined by
//! `AND` (a subset of AIP-160). Keys: state, kind, target, schedule, backend.

use crate::{
    engine::JobIndex,
    job::{JobKind, JobRecord, JobState},
    names,
};

#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    state: Option<JobState>,
    kind: Option<JobKind>,
    target: Option<String>,
    schedule: Option<String>,
    backend: Option<String>,
}

const MAX_FILTER: usize = 2048;

impl JobFilter {
    /// The narrowest index that holds every job this filter can match.
    pub fn index(&self) -> JobIndex {
        if let Some(t) = &self.target {
            return JobIndex::Target(t.clone());
        }
        match self.state {
            Some(s) if s.is_terminal() => return JobIndex::Ended(s),
            Some(_) => return JobIndex::Live,
            None => {}
        }
        match self.kind {
            Some(k) => JobIndex::Kind(k),
            None => JobIndex::All,
        }
    }

    pub fn parse(s: &str) -> Result<JobFilter, String> {
        let mut f = JobFilter::default();
        if s.len() > MAX_FILTER {
            return Err(format!("longer than {MAX_FILTER} characters"));
        }
        if s.trim().is_empty() {
            return Ok(f);
        }
        for term in s.split(" AND ") {
            let (k, v) = term
                .split_once('=')
                .ok_or_else(|| format!("term {:?} is not key=value", term.trim()))?;
            let k = k.trim();
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(v)
                .to_string();
            match k {
                "state" => {
                    f.state = Some(match v.as_str() {
                        "PENDING" => JobState::Pending,
                        "RUNNING" => JobState::Running,
                        "SUCCEEDED" => JobState::Succeeded,
                        "FAILED" => JobState::Failed,
                        "CANCELLED" => JobState::Cancelled,
                        _ => {
                            return Err(format!(
                                "state {v:?} is not one of PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED"
                            ));
                        }
                    })
                }
                "kind" => {
                    f.kind = Some(match v.as_str() {
                        "BACKUP" => JobKind::Backup,
                        "RESTORE" => JobKind::Restore,
                        "DELETE_BACKUP" => JobKind::DeleteBackup,
                        _ => {
                            return Err(format!(
                                "kind {v:?} is not one of BACKUP, RESTORE, DELETE_BACKUP"
                            ));
                        }
                    })
                }
                // In the stored spelling (GUIDs lower case).
                "target" => f.target = Some(names::parse_target(&v).map(|t| t.name()).unwrap_or(v)),
                "schedule" => f.schedule = Some(v),
                "backend" => {
                    f.backend = Some(v.strip_prefix("backends/").unwrap_or(&v).to_string())
                }
                other => {
                    return Err(format!(
                        "unknown key {other:?}; use state, kind, target, schedule or backend"
                    ));
                }
            }
        }
        Ok(f)
    }

    pub fn matches(&self, j: &JobRecord) -> bool {
        self.state.is_none_or(|s| s == j.state)
            && self.kind.is_none_or(|k| k == j.kind)
            && self.target.as_ref().is_none_or(|t| *t == j.target)
            && self.backend.as_ref().is_none_or(|b| *b == j.backend)
            && self
                .schedule
                .as_ref()
                .is_none_or(|s| j.schedule.as_deref() == Some(s.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_terms() {
        let f = JobFilter::parse(r#"state=RUNNING AND target="backends/cf/serviceInstances/x""#)
            .unwrap();
        assert_eq!(f.state, Some(JobState::Running));
        assert_eq!(f.target.as_deref(), Some("backends/cf/serviceInstances/x"));
        assert!(JobFilter::parse("state=DONE").is_err());
        assert!(JobFilter::parse("colour=red").is_err());
        assert!(JobFilter::parse("state").is_err());
        assert!(JobFilter::parse("").unwrap().state.is_none());
    }
}
