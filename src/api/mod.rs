//! The gRPC face of the daemon: `custos.v1.BackupService`. Only this module
//! sees generated proto types. Handlers validate, record work through the
//! engine and return; they never call a backend except for the synchronous
//! `ListBackups` and `validate_only` preflights.

pub mod auth;
mod convert;
mod error;
mod filter;

use std::{collections::BTreeMap, pin::Pin, sync::Arc};

use custos_adapter_core::{Capabilities, FieldViolation, Operation, RestoreSpec, VolumeMapping};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub use error::ApiError;

use crate::{
    config::Role,
    engine::{
        BackendEntry, Engine, NewJob,
        model::{JobKind, JobRecord},
    },
    names::{self, Target},
};
use auth::require;
use filter::JobFilter;

/// The generated code.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("custos.v1");

    /// The descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("custos_descriptor");
}

use pb::backup_service_server::BackupService;

/// Longest accepted `request_id`.
const MAX_REQUEST_ID: usize = 128;
const MAX_LABELS: usize = 64;
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;

pub struct Service {
    engine: Arc<Engine>,
    /// Ends watch streams when the daemon stops.
    shutdown: CancellationToken,
}

impl Service {
    pub fn new(engine: Arc<Engine>, shutdown: CancellationToken) -> Service {
        Service { engine, shutdown }
    }

    /// Parses a target and checks that its backend exists and serves that
    /// kind of resource; returns the backend with it.
    fn target(&self, field: &str, s: &str) -> Result<(Target, &BackendEntry), ApiError> {
        let t = names::parse_target(s).map_err(|e| ApiError::field(field, e))?;
        let Some(entry) = self.engine.backend(&t.backend) else {
            return Err(ApiError::NotFound(format!(
                "backend {:?} is not configured (ListBackends shows the configured ones)",
                t.backend
            )));
        };
        let kinds = entry.backend.resource_kinds();
        if !kinds.contains(&t.resource.kind) {
            let allowed: Vec<&str> = kinds.iter().map(|k| k.collection()).collect();
            return Err(ApiError::field(
                field,
                format!(
                    "backend {} ({}) has no {}; its targets are {}",
                    t.backend,
                    entry.backend.kind(),
                    t.resource.kind.collection(),
                    allowed.join(", ")
                ),
            ));
        }
        Ok((t, entry))
    }

    async fn create(&self, new: NewJob) -> Result<Response<pb::Job>, Status> {
        let rec = self.engine.create(new).await.map_err(ApiError::from)?;
        Ok(Response::new(convert::job(&rec)))
    }

    fn job_id(name: &str) -> Result<Uuid, ApiError> {
        names::parse_job_name(name).map_err(|e| ApiError::field("name", e))
    }

    fn get_job(&self, name: &str) -> Result<JobRecord, ApiError> {
        let id = Self::job_id(name)?;
        self.engine
            .get(&id)?
            .ok_or_else(|| ApiError::NotFound(format!("job {} not found", names::truncate(name))))
    }
}

/// FAILED_PRECONDITION unless the backend has the capability.
fn capability(
    entry: &BackendEntry,
    what: &str,
    has: impl Fn(&Capabilities) -> bool,
) -> Result<(), ApiError> {
    if has(&entry.backend.capabilities()) {
        Ok(())
    } else {
        Err(ApiError::FailedPrecondition(format!(
            "backend {} ({}) cannot {what}",
            entry.name,
            entry.backend.kind()
        )))
    }
}

/// Adds the adapter's own checks to `v` (without repeating a field already
/// named) and refuses the request if anything was found.
fn check_op(
    entry: &BackendEntry,
    op: &Operation,
    mut v: Vec<FieldViolation>,
) -> Result<(), ApiError> {
    for f in entry.backend.check(op) {
        if !v.iter().any(|x| x.field == f.field) {
            v.push(f);
        }
    }
    if v.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(v))
    }
}

fn request_id(s: &str, v: &mut Vec<FieldViolation>) -> Option<String> {
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
    Some(s.to_string())
}

fn labels(
    m: &std::collections::HashMap<String, String>,
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

fn page_size(n: i32, field: &str) -> Result<usize, ApiError> {
    match n {
        0 => Ok(DEFAULT_PAGE),
        n if n < 0 => Err(ApiError::field(field, "must not be negative")),
        n => Ok((n as usize).min(MAX_PAGE)),
    }
}

type JobStream = Pin<Box<dyn Stream<Item = Result<pb::Job, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl BackupService for Service {
    async fn list_backends(
        &self,
        req: Request<pb::ListBackendsRequest>,
    ) -> Result<Response<pb::ListBackendsResponse>, Status> {
        require(&req, Role::Reader)?;
        let mut backends: Vec<pb::Backend> = self
            .engine
            .backends()
            .map(|b| pb::Backend {
                name: format!("backends/{}", b.name),
                kind: b.backend.kind().to_string(),
                endpoint: b.backend.endpoint().to_string(),
                capabilities: Some(convert::capabilities(b.backend.capabilities())),
            })
            .collect();
        backends.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListBackendsResponse { backends }))
    }

    async fn create_backup(
        &self,
        req: Request<pb::CreateBackupRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        require(&req, Role::Operator)?;
        let r = req.into_inner();
        let (t, entry) = self.target("target", &r.target)?;
        capability(entry, "create backups", |c| c.create_backup)?;
        let mut v = Vec::new();
        let request_id = request_id(&r.request_id, &mut v);
        let labels = labels(&r.labels, &mut v);
        let op = Operation::CreateBackup {
            resource: t.resource.clone(),
        };
        check_op(entry, &op, v)?;
        self.create(NewJob {
            kind: JobKind::Backup,
            target: t.name(),
            backend: t.backend,
            op,
            labels,
            request_id,
            schedule: None,
        })
        .await
    }

    async fn list_backups(
        &self,
        req: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        require(&req, Role::Reader)?;
        let r = req.into_inner();
        let (t, entry) = self.target("target", &r.target)?;
        capability(entry, "list backups", |c| c.list_backups)?;
        if r.page_size < 0 {
            return Err(ApiError::field("page_size", "must not be negative").into());
        }
        let limit = (r.page_size > 0).then_some(r.page_size as u32);
        let page = entry
            .backend
            .list_backups(&t.resource, limit, &r.page_token)
            .await
            .map_err(ApiError::Backend)?;
        let name = t.name();
        Ok(Response::new(pb::ListBackupsResponse {
            backups: page
                .backups
                .into_iter()
                .map(|b| convert::backup(b, &name))
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_backup(
        &self,
        req: Request<pb::DeleteBackupRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        require(&req, Role::Operator)?;
        let r = req.into_inner();
        let (t, entry) = self.target("target", &r.target)?;
        let mut v = Vec::new();
        if !names::valid_id(&r.backup_id) {
            v.push(FieldViolation::new(
                "backup_id",
                "required; 1-128 letters, digits or -._~",
            ));
        }
        let request_id = request_id(&r.request_id, &mut v);
        if !v.is_empty() {
            return Err(ApiError::Invalid(v).into());
        }
        capability(entry, "delete backups", |c| c.delete_backup)?;
        let op = Operation::DeleteBackup {
            resource: t.resource.clone(),
            backup_id: r.backup_id,
        };
        check_op(entry, &op, v)?;
        self.create(NewJob {
            kind: JobKind::DeleteBackup,
            target: t.name(),
            backend: t.backend,
            op,
            labels: BTreeMap::new(),
            request_id,
            schedule: None,
        })
        .await
    }

    async fn restore(&self, req: Request<pb::RestoreRequest>) -> Result<Response<pb::Job>, Status> {
        require(&req, Role::Operator)?;
        let r = req.into_inner();
        let (t, entry) = self.target("target", &r.target)?;
        capability(entry, "restore", |c| c.restore)?;
        let caps = entry.backend.capabilities();
        let kind = entry.backend.kind();
        let mut v = Vec::new();
        let unsupported =
            |field: &str| FieldViolation::new(field, format!("not supported by {kind} backends"));
        let backup_id = if r.backup_id.is_empty() {
            None
        } else if !names::valid_id(&r.backup_id) {
            v.push(FieldViolation::new(
                "backup_id",
                "1-128 letters, digits or -._~",
            ));
            None
        } else {
            Some(r.backup_id.clone())
        };
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
                Some(t) if t > chrono::Utc::now() => {
                    v.push(FieldViolation::new(
                        "point_in_time",
                        format!("{} is in the future", t.to_rfc3339()),
                    ));
                    None
                }
                Some(t) => {
                    if !caps.point_in_time_restore {
                        v.push(unsupported("point_in_time"));
                    }
                    Some(t)
                }
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
            } else if !caps.point_in_time_restore {
                v.push(unsupported("restore_point"));
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
                Ok(s) => {
                    if !caps.cross_instance_restore {
                        v.push(unsupported("source"));
                    }
                    Some(s.resource)
                }
            }
        };
        let mut mappings = Vec::new();
        for (i, m) in r.mappings.iter().enumerate() {
            if !names::valid_id(&m.backup_id) {
                v.push(FieldViolation::new(
                    format!("mappings[{i}].backup_id"),
                    "required; 1-128 letters, digits or -._~",
                ));
            }
            if !names::valid_id(&m.volume_id) {
                v.push(FieldViolation::new(
                    format!("mappings[{i}].volume_id"),
                    "required; 1-128 letters, digits or -._~",
                ));
            }
            mappings.push(VolumeMapping {
                backup_id: m.backup_id.clone(),
                volume_id: m.volume_id.clone(),
            });
        }
        if !mappings.is_empty() && !caps.restore_mappings {
            v.push(unsupported("mappings"));
        }
        if r.power_on.is_some() && !caps.restore_mappings {
            v.push(unsupported("power_on"));
        }
        let resource_id = if r.resource_id.is_empty() {
            None
        } else {
            if !names::valid_id(&r.resource_id) {
                v.push(FieldViolation::new(
                    "resource_id",
                    "1-128 letters, digits or -._~",
                ));
            } else if !caps.restore_mappings {
                v.push(unsupported("resource_id"));
            }
            Some(r.resource_id.clone())
        };
        let request_id = request_id(&r.request_id, &mut v);
        let labels = labels(&r.labels, &mut v);
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
        check_op(entry, &op, v)?;
        if r.validate_only {
            let plan = entry
                .backend
                .validate(&op)
                .await
                .map_err(ApiError::Backend)?;
            let mut rec = JobRecord::new(JobKind::Restore, t.name(), t.backend.clone(), op, labels);
            rec.request_id = request_id;
            rec.message = format!("validated; would run: {plan}");
            let mut job = convert::job(&rec);
            job.name = String::new();
            job.validate_only = true;
            return Ok(Response::new(job));
        }
        self.create(NewJob {
            kind: JobKind::Restore,
            target: t.name(),
            backend: t.backend,
            op,
            labels,
            request_id,
            schedule: None,
        })
        .await
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        require(&req, Role::Reader)?;
        let rec = self.get_job(&req.get_ref().name)?;
        Ok(Response::new(convert::job(&rec)))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        require(&req, Role::Reader)?;
        let r = req.into_inner();
        let size = page_size(r.page_size, "page_size")?;
        let filter = JobFilter::parse(&r.filter).map_err(|e| ApiError::field("filter", e))?;
        let before =
            if r.page_token.is_empty() {
                None
            } else {
                Some(Uuid::parse_str(&r.page_token).map_err(|_| {
                    ApiError::field("page_token", "not a token from a previous page")
                })?)
            };
        let (jobs, more) = self
            .engine
            .list(before, size, |j| filter.matches(j))
            .map_err(ApiError::from)?;
        let next_page_token = if more {
            jobs.last().map(|j| j.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(convert::job).collect(),
            next_page_token,
        }))
    }

    type WatchJobStream = JobStream;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        require(&req, Role::Reader)?;
        let id = Self::job_id(&req.get_ref().name)?;
        // Subscribe before reading, so no change falls in between.
        let mut events = self.engine.subscribe();
        let first = self.get_job(&req.get_ref().name)?;
        let (tx, rx) = mpsc::channel(16);
        let engine = self.engine.clone();
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            let mut last = first.clone();
            if tx.send(Ok(convert::job(&first))).await.is_err() || first.state.is_terminal() {
                return;
            }
            loop {
                let ev = tokio::select! {
                    ev = events.recv() => ev,
                    _ = stop.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the daemon is shutting down; watch again after it restarts"))).await;
                        return;
                    }
                };
                let next = match ev {
                    Ok(j) if j.id == id => j,
                    Ok(_) => continue,
                    // Missed some events: send the current state instead.
                    Err(RecvError::Lagged(_)) => match engine.get(&id) {
                        Ok(Some(j)) => j,
                        _ => return,
                    },
                    Err(RecvError::Closed) => return,
                };
                if next == last {
                    continue;
                }
                last = next.clone();
                if tx.send(Ok(convert::job(&next))).await.is_err() || next.state.is_terminal() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchJobsStream = JobStream;

    async fn watch_jobs(
        &self,
        req: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        require(&req, Role::Reader)?;
        let filter =
            JobFilter::parse(&req.get_ref().filter).map_err(|e| ApiError::field("filter", e))?;
        let mut events = self.engine.subscribe();
        // A bounded buffer per watcher; the broadcast never waits for it.
        let (tx, rx) = mpsc::channel(256);
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    ev = events.recv() => ev,
                    _ = stop.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the daemon is shutting down"))).await;
                        return;
                    }
                };
                match ev {
                    Ok(j) if filter.matches(&j) => {
                        if tx.send(Ok(convert::job(&j))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!(
                            missed = n,
                            "a WatchJobs reader is too slow; changes were skipped"
                        );
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        require(&req, Role::Operator)?;
        let id = Self::job_id(&req.get_ref().name)?;
        let rec = self.engine.cancel(&id).await.map_err(ApiError::from)?;
        Ok(Response::new(convert::job(&rec)))
    }
}
