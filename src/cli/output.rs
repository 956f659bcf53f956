//! What the client commands print: `-o table|wide|json|yaml`.
//!
//! - **json / yaml**: the answer message in the proto's canonical JSON
//!   mapping, the one grpcurl and protojson print by default:
//!   lowerCamelCase names, enums by name, Timestamps as RFC 3339 strings,
//!   64-bit integers as strings, fields at their default value left out.
//!   The message is encoded, decoded as a `prost_reflect::DynamicMessage`
//!   with the descriptor set the binary embeds
//!   (`api::pb::FILE_DESCRIPTOR_SET`) and serialized by prost-reflect; no
//!   field is written by hand. Fields come in the proto's declaration
//!   order (as grpcurl shows them), map keys (labels) sorted. Pretty-printed
//!   (two spaces) for JSON; the same document as YAML.
//! - **Lists** print the list response message with every page that was
//!   followed merged into it (`{"jobs": [...]}`, `{"backups": [...]}`, …):
//!   the shape grpcurl shows for one page. Two choices of ours: the list
//!   field is always there (`{"jobs": []}`, where protojson would print
//!   `{}`), so that `jq '.jobs[]'` works on an empty list; and
//!   `nextPageToken` is left out (the hint on stderr says when more exist).
//! - **table / wide**: plain aligned columns (no borders, no colours,
//!   never wrapped), a header row, an `AGE` column. `wide` adds columns and
//!   never shortens anything; `table` may shorten a long message, never a
//!   name. An empty list prints nothing on stdout and `No X found.` on
//!   stderr, like kubectl.

use std::sync::LazyLock;

use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::Value;

use super::Output;
use crate::api::pb;

/// A generated message and its full proto name.
pub trait Proto: prost::Message + Sized {
    const NAME: &'static str;
}

macro_rules! proto {
    ($($t:ident),* $(,)?) => {
        $(impl Proto for pb::$t {
            const NAME: &'static str = concat!("custos.v1.", stringify!($t));
        })*
    };
}

proto!(
    Job,
    Backup,
    Backend,
    Schedule,
    ListJobsResponse,
    ListBackupsResponse,
    ListBackendsResponse,
    ListSchedulesResponse,
    DeleteScheduleResponse,
);

static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()));

fn descriptor(name: &str) -> anyhow::Result<MessageDescriptor> {
    let pool = POOL
        .as_ref()
        .map_err(|e| anyhow!("the embedded descriptor set: {e}"))?;
    pool.get_message_by_name(name)
        .with_context(|| format!("{name} is not in the embedded descriptor set"))
}

/// A JSON value whose objects keep the order they were built in (the
/// proto's field order); serializes to JSON and YAML alike.
#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    Object(Vec<(String, Doc)>),
    Array(Vec<Doc>),
    Scalar(Value),
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Object(fields) => {
                let mut m = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            Doc::Array(items) => items.serialize(s),
            Doc::Scalar(v) => v.serialize(s),
        }
    }
}

/// `m` in the canonical JSON mapping, fields in declaration order.
pub fn doc<M: Proto>(m: &M) -> anyhow::Result<Doc> {
    let desc = descriptor(M::NAME)?;
    let dynamic = DynamicMessage::decode(desc.clone(), m.encode_to_vec().as_slice())
        .with_context(|| format!("decoding {} with its descriptor", M::NAME))?;
    // prost-reflect's `Serialize` is the canonical mapping with protojson's
    // defaults (camelCase names, enum names, defaults left out).
    let value = serde_json::to_value(&dynamic)
        .with_context(|| format!("{} in the JSON mapping", M::NAME))?;
    Ok(order_message(value, &desc))
}

/// Puts an object's keys in the order of `desc`'s fields (unknown keys,
/// which the mapping does not make, last as they came).
fn order_message(v: Value, desc: &MessageDescriptor) -> Doc {
    let Value::Object(mut map) = v else {
        return Doc::Scalar(v);
    };
    let mut out = Vec::with_capacity(map.len());
    for f in desc.fields() {
        if let Some(x) = map.remove(f.json_name()) {
            out.push((f.json_name().to_string(), order_field(x, &f)));
        }
    }
    out.extend(map.into_iter().map(|(k, x)| (k, Doc::Scalar(x))));
    Doc::Object(out)
}

fn order_field(v: Value, f: &FieldDescriptor) -> Doc {
    let kind = f.kind();
    if f.is_map() {
        let value_kind = match &kind {
            Kind::Message(entry) => entry.map_entry_value_field().kind(),
            _ => return Doc::Scalar(v),
        };
        return match v {
            // serde_json's map is sorted by key: so are labels.
            Value::Object(m) => Doc::Object(
                m.into_iter()
                    .map(|(k, x)| (k, order_value(x, &value_kind)))
                    .collect(),
            ),
            other => Doc::Scalar(other),
        };
    }
    if f.is_list() {
        return match v {
            Value::Array(items) => {
                Doc::Array(items.into_iter().map(|x| order_value(x, &kind)).collect())
            }
            other => Doc::Scalar(other),
        };
    }
    order_value(v, &kind)
}

fn order_value(v: Value, kind: &Kind) -> Doc {
    match kind {
        // Well-known types have their own JSON forms (a Timestamp is a string).
        Kind::Message(d) if !d.full_name().starts_with("google.protobuf.") => order_message(v, d),
        _ => Doc::Scalar(v),
    }
}

/// A document as printed: pretty JSON, or YAML; ends with a newline.
pub fn render(d: &Doc, out: Output) -> anyhow::Result<String> {
    let mut s = match out {
        Output::Yaml => yaml_serde::to_string(d).context("writing YAML")?,
        _ => serde_json::to_string_pretty(d).context("writing JSON")?,
    };
    if !s.ends_with('\n') {
        s.push('\n');
    }
    Ok(s)
}

/// Prints `m` as the document of `-o json|yaml`.
pub fn print_doc<M: Proto>(m: &M, out: Output) -> anyhow::Result<()> {
    print!("{}", render(&doc(m)?, out)?);
    Ok(())
}

/// Prints a list response message (see the module doc): `key`, its
/// repeated field, is there even when empty.
pub fn print_list<M: Proto>(m: &M, key: &str, out: Output) -> anyhow::Result<()> {
    let mut d = doc(m)?;
    if let Doc::Object(fields) = &mut d
        && !fields.iter().any(|(k, _)| k == key)
    {
        fields.insert(0, (key.to_string(), Doc::Array(Vec::new())));
    }
    print!("{}", render(&d, out)?);
    Ok(())
}

/// Plain aligned columns: a header row, three spaces between columns, no
/// borders, nothing wrapped or cut here, no trailing spaces. Line breaks
/// inside a cell become spaces (one row per item).
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        t.add_row(
            r.into_iter()
                .map(|c| c.replace(['\r', '\n'], " "))
                .collect::<Vec<_>>(),
        );
    }
    let last = header.len().saturating_sub(1);
    for (i, c) in t.column_iter_mut().enumerate() {
        c.set_padding((0, if i == last { 0 } else { 3 }));
    }
    let mut s = t.trim_fmt();
    s.push('\n');
    s
}

/// Prints a list's table, or `No {what} found.` on stderr when empty.
pub fn print_table(what: &str, header: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        eprintln!("No {what} found.");
    } else {
        print!("{}", table(header, rows));
    }
}

/// Most characters of a message in `-o table` (`wide` shows it whole).
pub const MESSAGE_WIDTH: usize = 60;

/// `s` cut to `max` characters, the cut marked with `…`.
pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// A cell's text: `<none>` for nothing, like kubectl.
pub fn cell(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

pub fn time(t: &Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))
}

/// `2026-11-23T13:05:01Z`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A timestamp as a cell: RFC 3339, or `<none>`.
pub fn time_cell(t: &Option<prost_types::Timestamp>) -> String {
    time(t).map(rfc3339).unwrap_or_else(|| "<none>".into())
}

/// A duration as kubectl's AGE column shows one: `42s`, `3m`, `5h`, `2d`.
pub fn short_duration(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// The AGE cell of something created at `t` (`<unknown>` without a time;
/// a time ahead of this clock counts as 0s).
pub fn age_cell(t: &Option<prost_types::Timestamp>, now: DateTime<Utc>) -> String {
    match time(t) {
        Some(t) => short_duration(u64::try_from((now - t).num_seconds()).unwrap_or(0)),
        None => "<unknown>".into(),
    }
}

/// The backend of a resource name `backends/{b}/…`.
pub fn backend_of(name: &str) -> &str {
    name.strip_prefix("backends/")
        .and_then(|r| r.split('/').next())
        .unwrap_or("")
}

pub fn job_state(s: i32) -> &'static str {
    pb::job::State::try_from(s)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

pub fn job_kind(k: i32) -> &'static str {
    pb::job::Kind::try_from(k)
        .map(|k| k.as_str_name())
        .unwrap_or("UNKNOWN")
}

/// `job list`'s rows.
pub fn jobs_table(
    jobs: &[pb::Job],
    wide: bool,
    now: DateTime<Utc>,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut header = vec!["NAME", "KIND", "TARGET", "STATE", "AGE"];
    if wide {
        header.extend(["BACKEND", "BACKUP", "CREATED BY", "REQUEST ID"]);
    }
    header.push("MESSAGE");
    let rows = jobs
        .iter()
        .map(|j| {
            let mut r = vec![
                j.name.clone(),
                job_kind(j.kind).to_string(),
                j.target.clone(),
                job_state(j.state).to_string(),
                age_cell(&j.create_time, now),
            ];
            if wide {
                r.extend([
                    cell(backend_of(&j.target)),
                    cell(&j.backup_id),
                    cell(&j.created_by),
                    cell(&j.request_id),
                ]);
                r.push(cell(&j.message));
            } else {
                r.push(cell(&shorten(&j.message, MESSAGE_WIDTH)));
            }
            r
        })
        .collect();
    (header, rows)
}

/// `backup list`'s rows.
pub fn backups_table(
    backups: &[pb::Backup],
    wide: bool,
    now: DateTime<Utc>,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut header = vec!["ID", "STATE", "CREATED", "AGE"];
    if wide {
        header.push("NAME");
    }
    let rows = backups
        .iter()
        .map(|b| {
            let mut r = vec![
                b.id.clone(),
                cell(&b.state),
                time_cell(&b.create_time),
                age_cell(&b.create_time, now),
            ];
            if wide {
                r.push(cell(&b.name));
            }
            r
        })
        .collect();
    (header, rows)
}

/// `backends`' rows.
pub fn backends_table(
    backends: &[pb::Backend],
    wide: bool,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut header = vec!["NAME", "KIND", "ENDPOINT"];
    if wide {
        header.push("CAPABILITIES");
    }
    let rows = backends
        .iter()
        .map(|b| {
            let mut r = vec![b.name.clone(), b.kind.clone(), cell(&b.endpoint)];
            if wide {
                let c = b.capabilities.unwrap_or_default();
                let caps: Vec<&str> = [
                    (c.create_backup, "create_backup"),
                    (c.list_backups, "list_backups"),
                    (c.delete_backup, "delete_backup"),
                    (c.restore, "restore"),
                    (c.point_in_time_restore, "point_in_time_restore"),
                    (c.cross_instance_restore, "cross_instance_restore"),
                    (c.restore_mappings, "restore_mappings"),
                    (c.cancel_running, "cancel_running"),
                    (c.incremental_backup, "incremental_backup"),
                ]
                .into_iter()
                .filter_map(|(on, name)| on.then_some(name))
                .collect();
                r.push(cell(&caps.join(",")));
            }
            r
        })
        .collect();
    (header, rows)
}

/// `schedule list`'s rows.
pub fn schedules_table(
    schedules: &[pb::Schedule],
    wide: bool,
    now: DateTime<Utc>,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut header = vec!["NAME", "TARGET", "CRON", "NEXT RUN", "AGE"];
    if wide {
        header.extend(["TIME ZONE", "OVERLAP", "CATCH UP", "RETENTION", "LAST JOB"]);
    }
    let rows = schedules
        .iter()
        .map(|s| {
            let next = if s.paused {
                "<paused>".to_string()
            } else {
                time_cell(&s.next_run_times.first().copied())
            };
            let mut r = vec![
                s.name.clone(),
                s.target.clone(),
                s.cron.clone(),
                next,
                age_cell(&s.create_time, now),
            ];
            if wide {
                let overlap = pb::schedule::OverlapPolicy::try_from(s.overlap_policy)
                    .map(|x| x.as_str_name())
                    .unwrap_or("UNKNOWN");
                let catch_up = pb::schedule::CatchUp::try_from(s.catch_up)
                    .map(|x| x.as_str_name())
                    .unwrap_or("UNKNOWN");
                let retention = s
                    .retention
                    .as_ref()
                    .map(|r| {
                        let mut p = Vec::new();
                        if r.keep_last != 0 {
                            p.push(format!("keep_last={}", r.keep_last));
                        }
                        if !r.max_age.is_empty() {
                            p.push(format!("max_age={}", r.max_age));
                        }
                        if r.min_keep != 0 {
                            p.push(format!("min_keep={}", r.min_keep));
                        }
                        p.join(",")
                    })
                    .unwrap_or_default();
                r.extend([
                    cell(&s.time_zone),
                    overlap.to_string(),
                    catch_up.to_string(),
                    cell(&retention),
                    cell(&s.last_job),
                ]);
            }
            r
        })
        .collect();
    (header, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos })
    }

    fn json(d: &Doc) -> Value {
        serde_json::to_value(d).unwrap()
    }

    #[test]
    fn every_printed_message_is_in_the_descriptor_set() {
        for name in [
            pb::Job::NAME,
            pb::Backup::NAME,
            pb::Backend::NAME,
            pb::Schedule::NAME,
            pb::ListJobsResponse::NAME,
            pb::ListBackupsResponse::NAME,
            pb::ListBackendsResponse::NAME,
            pb::ListSchedulesResponse::NAME,
            pb::DeleteScheduleResponse::NAME,
        ] {
            descriptor(name).unwrap();
        }
    }

    /// The canonical mapping as protojson/grpcurl print it by default.
    #[test]
    fn a_job_in_the_canonical_json_mapping() {
        let j = pb::Job {
            name: "jobs/x".into(),
            kind: pb::job::Kind::Restore as i32,
            target: "backends/b/volumes/v".into(),
            state: pb::job::State::Succeeded as i32,
            create_time: ts(1_800_000_000, 0),
            end_time: ts(1_800_000_001, 500_000_000),
            backup_id: "b1".into(),
            labels: [("z".into(), "1".into()), ("a".into(), "2".into())].into(),
            restore: Some(pb::RestoreParameters {
                backup_id: "b1".into(),
                power_on: Some(false),
                ..Default::default()
            }),
            error: Some(pb::JobError {
                code: 14,
                message: "m".into(),
                details: vec![pb::BackendErrorDetail {
                    http_status: 503,
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        let d = doc(&j).unwrap();
        assert_eq!(
            json(&d),
            serde_json::json!({
                "name": "jobs/x",
                "kind": "RESTORE",
                "target": "backends/b/volumes/v",
                "state": "SUCCEEDED",
                "createTime": "2027-01-15T08:00:00Z",
                "endTime": "2027-01-15T08:00:01.500Z",
                "backupId": "b1",
                "error": {"code": 14, "message": "m", "details": [{"httpStatus": 503}]},
                "labels": {"a": "2", "z": "1"},
                // An `optional` field set to its default is printed.
                "restore": {"backupId": "b1", "powerOn": false},
            })
        );
        // Declaration order (as grpcurl), labels sorted.
        let text = render(&d, Output::Json).unwrap();
        let at = |k: &str| text.find(k).unwrap();
        assert!(at("\"name\"") < at("\"kind\"") && at("\"kind\"") < at("\"createTime\""));
        assert!(at("\"a\": \"2\"") < at("\"z\": \"1\""), "{text}");
        assert!(
            text.starts_with("{\n  \"name\": \"jobs/x\",\n"),
            "pretty: {text}"
        );
        // Nothing at its default: no attempts, no validateOnly, no events.
        for k in [
            "attempts",
            "validateOnly",
            "events",
            "startTime",
            "schedule",
        ] {
            assert!(!text.contains(k), "{k} in {text}");
        }
    }

    #[test]
    fn yaml_is_the_same_document() {
        let j = pb::Job {
            name: "jobs/x".into(),
            state: pb::job::State::Failed as i32,
            attempts: 2,
            create_time: ts(1_800_000_000, 0),
            ..Default::default()
        };
        let d = doc(&j).unwrap();
        let y = render(&d, Output::Yaml).unwrap();
        assert!(y.starts_with("name: jobs/x\n"), "{y}");
        let back: Value = yaml_serde::from_str(&y).unwrap();
        assert_eq!(back, json(&d));
    }

    #[test]
    fn tables_are_plain_aligned_columns() {
        let t = table(
            &["NAME", "AGE"],
            vec![
                vec!["jobs/a-long-name".into(), "3m".into()],
                vec!["jobs/b".into(), "two\nlines".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME               AGE\njobs/a-long-name   3m\njobs/b             two lines\n"
        );
    }

    #[test]
    fn wide_adds_columns_and_never_shortens() {
        let now = DateTime::from_timestamp(1_800_000_300, 0).unwrap();
        let long = "x".repeat(200);
        let j = pb::Job {
            name: "jobs/0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee".into(),
            target: "backends/cf/serviceInstances/i".into(),
            create_time: ts(1_800_000_000, 0),
            message: long.clone(),
            request_id: "rid-1".into(),
            ..Default::default()
        };
        let (h, rows) = jobs_table(std::slice::from_ref(&j), false, now);
        assert_eq!(h, ["NAME", "KIND", "TARGET", "STATE", "AGE", "MESSAGE"]);
        assert_eq!(rows[0][0], j.name);
        assert_eq!(rows[0][4], "5m");
        assert_eq!(rows[0][5].chars().count(), MESSAGE_WIDTH);
        let (h, rows) = jobs_table(&[j], true, now);
        assert!(h.contains(&"BACKEND") && h.contains(&"REQUEST ID"));
        assert_eq!(rows[0][5], "cf");
        assert_eq!(rows[0].last(), Some(&long));
    }

    #[test]
    fn ages_and_cells() {
        assert_eq!(short_duration(5), "5s");
        assert_eq!(short_duration(600), "10m");
        assert_eq!(short_duration(3 * 3600), "3h");
        assert_eq!(short_duration(3 * 86_400), "3d");
        let now = DateTime::from_timestamp(1_000, 0).unwrap();
        assert_eq!(age_cell(&ts(2_000, 0), now), "0s", "clock skew");
        assert_eq!(age_cell(&None, now), "<unknown>");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
        assert_eq!(backend_of("backends/cf-dev/serviceInstances/x"), "cf-dev");
        assert_eq!(backend_of("jobs/x"), "");
    }
}
