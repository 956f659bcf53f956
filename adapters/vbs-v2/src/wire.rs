//! The Cinder v2 backup JSON shapes (`backends.md` §3), shared by the
//! simulator and the adapter. Reading is lenient (absent or null fields
//! default) so that a field a deployment leaves out does not fail a whole
//! answer; optional request fields that are not set are not serialized.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};

/// Backup `status` values (§3.3).
pub mod backup_status {
    pub const CREATING: &str = "creating";
    pub const AVAILABLE: &str = "available";
    pub const DELETING: &str = "deleting";
    pub const ERROR: &str = "error";
    pub const RESTORING: &str = "restoring";
    pub const ERROR_DELETING: &str = "error_deleting";
}

/// Volume `status` values the adapter cares about (§3.3).
pub mod volume_status {
    pub const AVAILABLE: &str = "available";
    pub const IN_USE: &str = "in-use";
    pub const CREATING: &str = "creating";
    /// A restore into the volume is running.
    pub const RESTORING: &str = "restoring-backup";
    /// A restore into an existing volume failed.
    pub const ERROR_RESTORING: &str = "error_restoring";
    /// A restore into a new volume failed (or the volume broke).
    pub const ERROR: &str = "error";
}

/// `null` read as the type's default (Cinder writes `null` for unset
/// strings and lists).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A `links` entry (`rel` is `self`, `bookmark` or `next`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    #[serde(default, deserialize_with = "null_default")]
    pub href: String,
    #[serde(default, deserialize_with = "null_default")]
    pub rel: String,
}

/// `POST /v2/{pid}/backups`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupCreateRequest {
    pub backup: BackupCreate,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupCreate {
    pub volume_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
}

/// The 202 answer to a create: `{"backup":{"id","links","name"}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupCreated {
    pub backup: BackupSummary,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    pub id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub links: Vec<Link>,
}

/// A backup as `GET /backups/{id}` and `GET /backups/detail` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    pub id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub status: String,
    /// GiB.
    #[serde(default, deserialize_with = "null_default")]
    pub size: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub volume_id: String,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub object_count: u64,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub data_timestamp: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub fail_reason: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub is_incremental: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub has_dependent_backups: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub links: Vec<Link>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEnvelope {
    pub backup: Backup,
}

/// `GET /backups/detail`: `backups_links` only when there are more.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupList {
    #[serde(default, deserialize_with = "null_default")]
    pub backups: Vec<Backup>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub backups_links: Vec<Link>,
}

impl BackupList {
    /// The `rel: next` link, if any.
    pub fn next_link(&self) -> Option<&str> {
        self.backups_links
            .iter()
            .find(|l| l.rel == "next" && !l.href.is_empty())
            .map(|l| l.href.as_str())
    }
}

/// `POST /backups/{id}/restore`: `volume_id` and `name` may each be absent
/// or `null` (the schema allows both; nothing else).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub restore: RestoreBody,
}

/// The 202 answer to a restore (VBS adds `volume_name`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreAccepted {
    pub restore: RestoreInfo,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreInfo {
    pub backup_id: String,
    pub volume_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
}

/// A volume as `GET /volumes/{id}` shows it (the fields the adapter reads,
/// plus what the simulator shows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub status: String,
    /// GiB.
    #[serde(default, deserialize_with = "null_default")]
    pub size: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub attachments: Vec<Value>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub bootable: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeEnvelope {
    pub volume: Volume,
}

/// A Cinder fault: `{"<name>": {"code": <int>, "message": "…"}}` (§3.4);
/// `overLimit` adds `retryAfter`. Keystonemiddleware's 401
/// (`{"error": {"code": 401, "title", "message"}}`) reads as one too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `itemNotFound`, `badRequest`, `overLimit`, `computeFault`, ...
    pub name: String,
    pub code: u16,
    pub message: String,
    /// `overLimit`'s `retryAfter` (seconds, as text).
    pub retry_after: Option<String>,
}

impl Fault {
    /// The fault name Cinder gives a status (`wsgi.py`).
    pub fn name_for(status: u16) -> &'static str {
        match status {
            400 => "badRequest",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "itemNotFound",
            405 => "badMethod",
            409 => "conflictingRequest",
            413 => "overLimit",
            415 => "badMediaType",
            501 => "notImplemented",
            503 => "serviceUnavailable",
            _ => "computeFault",
        }
    }

    pub fn new(status: u16, message: impl Into<String>) -> Fault {
        Fault {
            name: Fault::name_for(status).into(),
            code: status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Reads a fault body; `None` for anything else (a proxy's page, JSON
    /// of another shape or with a name Cinder does not use).
    pub fn parse(body: &[u8]) -> Option<Fault> {
        const NAMES: [&str; 12] = [
            "badRequest",
            "unauthorized",
            "forbidden",
            "itemNotFound",
            "badMethod",
            "conflictingRequest",
            "overLimit",
            "badMediaType",
            "notImplemented",
            "serviceUnavailable",
            "computeFault",
            // keystonemiddleware's 401.
            "error",
        ];
        let v: Value = serde_json::from_slice(body).ok()?;
        let obj = v.as_object()?;
        if obj.len() != 1 {
            return None;
        }
        let (name, inner) = obj.iter().next()?;
        if !NAMES.contains(&name.as_str()) {
            return None;
        }
        let inner = inner.as_object()?;
        let code = u16::try_from(inner.get("code")?.as_u64()?).ok()?;
        let message = inner.get("message")?.as_str()?.to_string();
        let retry_after = inner.get("retryAfter").and_then(|r| match r {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        Some(Fault {
            name: name.clone(),
            code,
            message,
            retry_after,
        })
    }

    /// The body Cinder sends.
    pub fn to_json(&self) -> Value {
        let mut inner = Map::new();
        inner.insert("code".into(), json!(self.code));
        inner.insert("message".into(), json!(self.message));
        if let Some(r) = &self.retry_after {
            inner.insert("retryAfter".into(), json!(r));
        }
        let mut outer = Map::new();
        outer.insert(self.name.clone(), Value::Object(inner));
        Value::Object(outer)
    }
}

/// Cinder's time format: `2013-04-02T10:35:27.000000`, UTC without an
/// offset.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// A Cinder time: without an offset (UTC), or RFC 3339.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|n| n.and_utc())
        .ok()
        .or_else(|| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .ok()
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_seed_restore_round_trips() {
        let req: RestoreRequest = serde_json::from_str(
            r#"{"restore":{"volume_id":"2748f2f2-4394-4e6e-af8d-8dd34496c024"}}"#,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"restore":{"volume_id":"2748f2f2-4394-4e6e-af8d-8dd34496c024"}}"#
        );
        // What openstacksdk sends: name null beside volume_id.
        let req: RestoreRequest =
            serde_json::from_str(r#"{"restore":{"volume_id":"v","name":null}}"#).unwrap();
        assert_eq!(req.restore.volume_id.as_deref(), Some("v"));
        assert!(serde_json::from_str::<RestoreRequest>(r#"{"restore":{"size":1}}"#).is_err());
        let ans: RestoreAccepted = serde_json::from_str(
            r#"{"restore":{"backup_id":"1d1139d8-8989-49d3-8aa1-83eb691e6db2","volume_id":"2748f2f2-4394-4e6e-af8d-8dd34496c024","volume_name":"test_volume"}}"#,
        )
        .unwrap();
        assert_eq!(ans.restore.volume_name.as_deref(), Some("test_volume"));
    }

    #[test]
    fn the_doc_backup_reads() {
        let b: BackupEnvelope = serde_json::from_str(
            r#"{"backup":{"availability_zone":"az1","container":"volumebackups","created_at":"2013-04-02T10:35:27.000000","description":null,
 "fail_reason":null,"id":"2ef47aee-8844-490c-804d-2a8efe561c65","links":[{"href":"http://localhost:8776/v2/c95fc3e4afe248a49a28828f286a7b38/backups/2ef47aee-8844-490c-804d-2a8efe561c65","rel":"self"}],
 "name":"backup001","object_count":22,"size":1,"status":"available","volume_id":"e5185058-943a-4cb4-96d9-72c184c337d6",
 "is_incremental":true,"has_dependent_backups":false}}"#,
        )
        .unwrap();
        assert_eq!(b.backup.size, 1);
        assert!(b.backup.is_incremental);
        assert_eq!(
            parse_time(&b.backup.created_at).map(format_time).as_deref(),
            Some("2013-04-02T10:35:27.000000")
        );
    }

    #[test]
    fn faults_parse_and_print() {
        let f = Fault::parse(
            br#"{"itemNotFound":{"message":"Backup 592a0c4d-65a3-4051-8d51-1e2b6401b2d8 could not be found.","code":404}}"#,
        )
        .unwrap();
        assert_eq!(f.name, "itemNotFound");
        assert_eq!(f.code, 404);
        let mut o = Fault::new(413, "VolumeLimitExceeded");
        o.retry_after = Some("0".into());
        assert_eq!(Fault::parse(o.to_json().to_string().as_bytes()), Some(o));
        assert!(Fault::parse(b"<html>502</html>").is_none());
        assert!(Fault::parse(br#"{"a":{"code":1,"message":"x"},"b":{}}"#).is_none());
        assert!(
            Fault::parse(br#"{"proxyError":{"code":404,"message":"no route"}}"#).is_none(),
            "a name Cinder does not use"
        );
        assert!(
            Fault::parse(br#"{"error":{"code":401,"title":"Unauthorized","message":"x"}}"#)
                .is_some()
        );
    }
}
