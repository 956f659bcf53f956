//! The CBR v3 JSON shapes (`backends.md` §2), shared by the simulator and
//! the adapter. Reading is lenient (absent fields default) so that a field
//! the backend leaves out does not fail a whole answer; optional fields the
//! request bodies do not carry are not serialized.

use serde::{Deserialize, Serialize};

/// Resource types (`resource_type`, `extra_info.resource.type`).
pub const SERVER_TYPE: &str = "OS::Nova::Server";
pub const VOLUME_TYPE: &str = "OS::Cinder::Volume";

/// `provider_id` of server backups and of disk backups (§2.2).
pub const SERVER_PROVIDER_ID: &str = "0daac4c5-6707-4851-97ba-169e36266b66";
pub const DISK_PROVIDER_ID: &str = "d1603440-187d-4516-af25-121250c7cc97";

/// Backup `status` values (§2.2).
pub mod backup_status {
    pub const AVAILABLE: &str = "available";
    pub const PROTECTING: &str = "protecting";
    pub const DELETING: &str = "deleting";
    pub const RESTORING: &str = "restoring";
    pub const ERROR: &str = "error";
}

/// Operation-log `status` values (§2.3).
pub mod op_status {
    pub const WAITING: &str = "waiting";
    pub const RUNNING: &str = "running";
    pub const SUCCESS: &str = "success";
    pub const FAILED: &str = "failed";
    pub const TIMEOUT: &str = "timeout";
    pub const SKIPPED: &str = "skipped";

    /// Whether an op-log in `status` has ended.
    pub fn is_terminal(status: &str) -> bool {
        matches!(status, SUCCESS | FAILED | TIMEOUT | SKIPPED)
    }
}

/// `POST /v3/{pid}/backups/{backup_id}/restore`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub restore: BackupRestore,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRestore {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mappings: Option<Vec<RestoreMapping>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_on: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
}

/// One disk of a whole-server restore: the child (disk) backup and the
/// volume it is restored onto.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreMapping {
    pub backup_id: String,
    pub volume_id: String,
}

/// BackupResp, the fields that matter to Custos (§2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupResp {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub checkpoint_id: String,
    #[serde(default)]
    pub vault_id: String,
    #[serde(default)]
    pub project_id: String,
    #[serde(default)]
    pub provider_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub children: Vec<BackupResp>,
    #[serde(default)]
    pub resource_id: String,
    #[serde(default)]
    pub resource_name: String,
    #[serde(default)]
    pub resource_type: String,
    /// GB.
    #[serde(default)]
    pub resource_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_az: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<String>,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
}

/// `GET /v3/{pid}/backups/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEnvelope {
    pub backup: BackupResp,
}

/// `GET /v3/{pid}/backups`: `count` is the total, not the page's length.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupList {
    #[serde(default)]
    pub backups: Vec<BackupResp>,
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub limit: u64,
}

/// `POST /v3/{pid}/checkpoints`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCreateRequest {
    pub checkpoint: CheckpointCreate,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCreate {
    pub vault_id: String,
    #[serde(default)]
    pub parameters: CheckpointParameters,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointParameters {
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_trigger: Option<bool>,
}

/// `{"checkpoint": …}`, the answer to a create and to a GET.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointEnvelope {
    pub checkpoint: CheckpointResp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointResp {
    pub id: String,
    #[serde(default)]
    pub project_id: String,
    /// available, deleting, protecting, deleted, error-deleting, error.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub vault: CheckpointVault,
    #[serde(default)]
    pub extra_info: CheckpointExtraInfo,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointVault {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub resources: Vec<CheckpointResource>,
    #[serde(default)]
    pub skipped_resources: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointResource {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub resource_size: u64,
    #[serde(default)]
    pub protect_status: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointExtraInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub retention_duration: i64,
}

/// OperationLog (§2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationLog {
    pub id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub operation_type: String,
    #[serde(default)]
    pub provider_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<String>,
    #[serde(default)]
    pub project_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_name: Option<String>,
    #[serde(default)]
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default)]
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_info: Option<OpErrorInfo>,
    #[serde(default)]
    pub extra_info: OpExtraInfo,
}

/// `error_info`; the backend sends empty strings when there was none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpErrorInfo {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpExtraInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<OpRestoreInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<OpBackupInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<OpBackupInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common: Option<OpCommon>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<OpResource>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRestoreInfo {
    #[serde(default)]
    pub backup_id: String,
    #[serde(default)]
    pub backup_name: String,
    #[serde(default)]
    pub target_resource_id: String,
    #[serde(default)]
    pub target_resource_name: String,
}

/// `extra_info.backup` and `extra_info.delete`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpBackupInfo {
    #[serde(default)]
    pub backup_id: String,
    #[serde(default)]
    pub backup_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCommon {
    /// 0–100.
    #[serde(default)]
    pub progress: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResource {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// `GET /v3/{pid}/operation-logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationLogList {
    #[serde(default)]
    pub operation_logs: Vec<OperationLog>,
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub limit: u64,
    #[serde(default)]
    pub offset: u64,
}

/// `GET /v3/{pid}/operation-logs/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationLogEnvelope {
    pub operation_log: OperationLog,
}

/// The error body of the service (`BackupService.NNNN`) and of the API
/// gateway (`APIGW.0301`, `APIG.0308`, which add `request_id`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error_code: String,
    #[serde(default)]
    pub error_msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}
