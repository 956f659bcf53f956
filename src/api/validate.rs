//! Request validation in one place: each mutating request becomes an
//! `Operation` plus the field violations of its syntax (ids, timestamps,
//! labels, request ids). What a backend supports is not judged here:
//! whether it can do the operation at all is the API's check of
//! `Capabilities` (FAILED_PRECONDITION), and which fields it can honour is
//! the adapter's `check` alone, so an unsupported field is refused once, by
//! the backend that cannot honour it.

use std::collections::{BTreeMap, HashMap};

use custos_adapter_core::{FieldViolation, Operation, RestoreSpec, VolumeMapping};

use super::{ApiError, convert, pb};
use crate::names::{self, Target};

/// Longest accepted `request_id`.
const MAX_REQUEST_ID: usize = 128;
const MAX_LABELS: usize = 64;
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 1000;

const ID_RULE: &str = "1-128 letters, digits or -._~";

/// Refuses the request if anything was found.
pub fn done(v: Vec<FieldViolation>) -> Result<(), ApiError> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(v))
    }
}

pub fn request_id(s: &str, v: &mut Vec<FieldViolation>) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    if s.len() > MAX_REQUEST_ID || !s.chars().all(|c| c.is_ascii_graphic()) {
        v.push(FieldViolation::new(
            "request_id",
            format!("at most {MAX_REQUEST_ID} printable ASCII characters without spaces"),
        ));
        return None;
    }
    if s.starts_with(RESERVED_REQUEST_ID) {
        v.push(FieldViolation::new(
            "request_id",
            format!("ids starting with {RESERVED_REQUEST_ID:?} are the scheduler's"),
        ));
        return None;
    }
    Some(s.to_string())
}

/// The prefix of the request ids the scheduler gives its jobs.
pub const RESERVED_REQUEST_ID: &str = "custos-";

pub fn labels(
    m: &HashMap<String, String>,
    v: &mut Vec<FieldViolation>,
) -> BTreeMap<String, String> {
    if m.len() > MAX_LABELS {
        v.push(FieldViolation::new(
            "labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (k, val) in m {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-./".contains(c));
        if !key_ok {
            v.push(FieldViolation::new(
                format!("labels[{}]", names::truncate(k)),
                "keys are 1-63 lowercase letters, digits or _-./",
            ));
        }
        if val.len() > 256 {
            v.push(FieldViolation::new(
                format!("labels[{}]", names::truncate(k)),
                "values are at most 256 bytes",
            ));
        }
    }
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub fn page_size(n: i32, field: &str) -> Result<usize, ApiError> {
    match n {
        0 => Ok(DEFAULT_PAGE),
        n if n < 0 => Err(ApiError::field(field, "must not be negative")),
        n => Ok(usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE)),
    }
}

/// An optional id field: `None` when empty; a violation when malformed.
fn opt_id(field: &str, s: &str, v: &mut Vec<FieldViolation>) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    if !names::valid_id(s) {
        v.push(FieldViolation::new(field, ID_RULE));
        return None;
    }
    Some(s.to_string())
}

/// A required id field.
pub fn required_id(field: &str, s: &str, v: &mut Vec<FieldViolation>) {
    if !names::valid_id(s) {
        v.push(FieldViolation::new(field, format!("required; {ID_RULE}")));
    }
}

/// A mutating request, checked for syntax.
pub struct Checked {
    pub op: Operation,
    pub request_id: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// The restore a `RestoreRequest` asks for, with its `request_id` and
/// labels; every syntax problem at once.
pub fn restore(r: &pb::RestoreRequest, t: &Target) -> Result<Checked, ApiError> {
    let mut v = Vec::new();
    let backup_id = opt_id("backup_id", &r.backup_id, &mut v);
    let point_in_time = match &r.point_in_time {
        None => None,
        Some(ts) => match convert::from_timestamp(ts) {
            None => {
                v.push(FieldViolation::new(
                    "point_in_time",
                    "not a valid timestamp",
                ));
                None
            }
            Some(at) if at > chrono::Utc::now() => {
                v.push(FieldViolation::new(
                    "point_in_time",
                    format!("{} is in the future", at.to_rfc3339()),
                ));
                None
            }
            Some(at) => Some(at),
        },
    };
    let restore_point = if r.restore_point.is_empty() {
        None
    } else {
        if r.restore_point.len() > 64
            || !r
                .restore_point
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            v.push(FieldViolation::new(
                "restore_point",
                "at most 64 letters, digits or -_.",
            ));
        }
        Some(r.restore_point.clone())
    };
    let source = if r.source.is_empty() {
        None
    } else {
        match names::parse_target(&r.source) {
            Err(e) => {
                v.push(FieldViolation::new("source", e));
                None
            }
            Ok(s) if s.backend != t.backend => {
                v.push(FieldViolation::new(
                    "source",
                    "a cross-instance restore must come from the same backend as the target",
                ));
                None
            }
            Ok(s) => Some(s.resource),
        }
    };
    let mut mappings = Vec::new();
    for (i, m) in r.mappings.iter().enumerate() {
        required_id(&format!("mappings[{i}].backup_id"), &m.backup_id, &mut v);
        required_id(&format!("mappings[{i}].volume_id"), &m.volume_id, &mut v);
        mappings.push(VolumeMapping {
            backup_id: m.backup_id.clone(),
            volume_id: m.volume_id.clone(),
        });
    }
    let resource_id = opt_id("resource_id", &r.resource_id, &mut v);
    let request_id = request_id(&r.request_id, &mut v);
    let labels = labels(&r.labels, &mut v);
    done(v)?;
    let op = Operation::Restore {
        resource: t.resource.clone(),
        spec: RestoreSpec {
            backup_id,
            point_in_time,
            restore_point,
            source,
            mappings,
            power_on: r.power_on,
            resource_id,
        },
    };
    Ok(Checked {
        op,
        request_id,
        labels,
    })
}
