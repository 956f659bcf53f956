//! `custos job describe NAME`: every field of a job for a person, in
//! sections like `velero backup describe`: the job, the restore parameters,
//! the error with the backend's own words, and the job's history.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use crate::api::pb;

fn time(t: &Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

/// `2026-11-23T13:05:01Z (4m ago)`, or `<none>`.
fn when(t: &Option<prost_types::Timestamp>, now: DateTime<Utc>) -> String {
    match time(t) {
        Some(d) => format!(
            "{} ({})",
            d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            age(d, now)
        ),
        None => "<none>".into(),
    }
}

/// A short age or distance: `42s ago`, `3m ago`, `in 2h`.
pub fn age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let s = super::output::short_duration(secs.unsigned_abs());
    if secs < 0 {
        format!("in {s}")
    } else {
        format!("{s} ago")
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "<none>" } else { s }
}

fn state(s: i32) -> &'static str {
    pb::job::State::try_from(s)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

/// The whole description, as printed.
pub fn describe(j: &pb::Job, now: DateTime<Utc>) -> String {
    let mut o = String::new();
    let kind = pb::job::Kind::try_from(j.kind)
        .map(|k| k.as_str_name())
        .unwrap_or("UNKNOWN");
    let mut labels: Vec<String> = j.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    let rows = [
        ("Name", j.name.clone()),
        ("Kind", kind.to_string()),
        ("Target", j.target.clone()),
        ("State", state(j.state).to_string()),
        ("Message", or_none(&j.message).to_string()),
        ("Backup", or_none(&j.backup_id).to_string()),
        ("Remote operation", or_none(&j.remote_operation).to_string()),
        ("Created by", or_none(&j.created_by).to_string()),
        ("Schedule", or_none(&j.schedule).to_string()),
        ("Request id", or_none(&j.request_id).to_string()),
        ("Labels", or_none(&labels.join(", ")).to_string()),
        ("Created", when(&j.create_time, now)),
        ("Started", when(&j.start_time, now)),
        ("Ended", when(&j.end_time, now)),
        ("Attempts", j.attempts.to_string()),
        ("Next attempt", when(&j.next_attempt_time, now)),
    ];
    for (k, v) in rows {
        let _ = writeln!(o, "{:<18}{v}", format!("{k}:"));
    }
    if let (Some(s), Some(e)) = (time(&j.start_time), time(&j.end_time)) {
        let _ = writeln!(o, "{:<18}{}s", "Duration:", (e - s).num_seconds());
    }
    if let Some(r) = &j.restore {
        let _ = writeln!(o, "\nRestore parameters:");
        let power_on = r
            .power_on
            .map_or("<default>".to_string(), |b| b.to_string());
        for (k, v) in [
            ("Backup", or_none(&r.backup_id).to_string()),
            ("Point in time", when(&r.point_in_time, now)),
            ("Restore point", or_none(&r.restore_point).to_string()),
            ("Source", or_none(&r.source).to_string()),
            ("Resource", or_none(&r.resource_id).to_string()),
            ("Power on", power_on),
        ] {
            let _ = writeln!(o, "  {:<16}{v}", format!("{k}:"));
        }
        if !r.mappings.is_empty() {
            let _ = writeln!(o, "  Mappings:");
            for m in &r.mappings {
                let _ = writeln!(o, "    {} -> {}", m.backup_id, m.volume_id);
            }
        }
    }
    if let Some(e) = &j.error {
        let _ = writeln!(o, "\nError:");
        let _ = writeln!(o, "  {:<16}{:?}", "Code:", tonic::Code::from(e.code));
        let _ = writeln!(o, "  {:<16}{}", "Message:", e.message);
        if !e.details.is_empty() {
            let _ = writeln!(o, "  The backend said:");
            for d in &e.details {
                let mut parts = Vec::new();
                if d.http_status != 0 {
                    parts.push(format!("HTTP {}", d.http_status));
                }
                for p in [&d.title, &d.code] {
                    if !p.is_empty() {
                        parts.push(p.clone());
                    }
                }
                let _ = writeln!(o, "    {}: {}", parts.join(" "), d.detail);
            }
        }
    }
    let _ = writeln!(o, "\nEvents:");
    if j.events.is_empty() {
        let _ = writeln!(o, "  <none>");
    } else {
        let _ = writeln!(o, "  {:<22}{:<11}{:<12}MESSAGE", "TIME", "STATE", "PHASE");
        for e in &j.events {
            let t = time(&e.time)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  {t:<22}{:<11}{:<12}{}",
                state(e.state),
                e.phase,
                e.message
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    }

    #[test]
    fn every_section_is_shown() {
        let now = DateTime::from_timestamp(1_800_000_100, 0).unwrap();
        let j = pb::Job {
            name: "jobs/x".into(),
            kind: pb::job::Kind::Restore as i32,
            target: "backends/cbr/servers/s".into(),
            state: pb::job::State::Failed as i32,
            create_time: ts(1_800_000_000),
            start_time: ts(1_800_000_001),
            end_time: ts(1_800_000_031),
            created_by: "ops".into(),
            restore: Some(pb::RestoreParameters {
                backup_id: "b1".into(),
                mappings: vec![pb::VolumeMapping {
                    backup_id: "c1".into(),
                    volume_id: "v1".into(),
                }],
                power_on: Some(false),
                ..Default::default()
            }),
            error: Some(pb::JobError {
                code: tonic::Code::FailedPrecondition as i32,
                message: "the backend refused".into(),
                details: vec![pb::BackendErrorDetail {
                    http_status: 400,
                    code: "BackupService.6300".into(),
                    title: String::new(),
                    detail: "volume in use".into(),
                }],
            }),
            events: vec![pb::JobEvent {
                time: ts(1_800_000_000),
                state: pb::job::State::Pending as i32,
                phase: "queued".into(),
                message: "queued".into(),
            }],
            ..Default::default()
        };
        let d = describe(&j, now);
        for want in [
            "Name:             jobs/x",
            "State:            FAILED",
            "Created by:       ops",
            "Created:          2027-01-15T08:00:00Z (100s ago)",
            "Duration:         30s",
            "Restore parameters:",
            "Power on:       false",
            "c1 -> v1",
            "Code:           FailedPrecondition",
            "HTTP 400 BackupService.6300: volume in use",
            "PENDING    queued      queued",
        ] {
            assert!(d.contains(want), "{want:?} missing in:\n{d}");
        }
    }

    #[test]
    fn ages() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let at = |s: i64| DateTime::from_timestamp(1_000_000 - s, 0).unwrap();
        assert_eq!(age(at(5), now), "5s ago");
        assert_eq!(age(at(600), now), "10m ago");
        assert_eq!(age(at(3 * 3600), now), "3h ago");
        assert_eq!(age(at(3 * 86_400), now), "3d ago");
        assert_eq!(age(at(-90), now), "in 90s");
    }
}
