//! The JSON shapes of the CF v3 API, shared by the adapter and the
//! simulator so both speak exactly the same dialect.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `{"errors":[{"code","title","detail"}]}`, the body of every CF error.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    #[serde(default)]
    pub errors: Vec<CfError>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CfError {
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub detail: String,
}

/// `GET /v3/service_instances/{guid}/backups`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackupList {
    #[serde(default)]
    pub backups: Vec<BackupEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEntry {
    pub id: String,
    /// Epoch seconds.
    #[serde(default)]
    pub created_at: i64,
}

/// `POST /v3/service_instances/{guid}/actions/restore`; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreBody {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backup_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub restore_point: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source_service_instance_guid: Option<String>,
}

/// `GET /v3/jobs/{guid}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub guid: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
    #[serde(default)]
    pub operation: String,
    pub state: String,
    #[serde(default)]
    pub errors: Vec<CfError>,
    #[serde(default)]
    pub warnings: Vec<Value>,
    #[serde(default)]
    pub links: Value,
}

/// The part of `GET /v3/service_instances/{guid}` that Custos reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceInstance {
    pub guid: String,
    #[serde(default)]
    pub name: String,
    /// `{type, state: "in progress"|"succeeded"|"failed", description,
    /// created_at, updated_at}`; compared whole to tell whether an operation
    /// started after a snapshot.
    #[serde(default)]
    pub last_operation: Option<Value>,
}

/// `POST /oauth/token` success.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub token_type: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}
