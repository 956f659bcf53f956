//! The gRPC face of the daemon: `custos.v1.BackupService`. Only this module
//! sees generated proto types. Handlers validate (`validate.rs`), record
//! work through the engine and return; the synchronous `ListBackups` and
//! `validate_only` preflights also go through the engine (for its permits),
//! never straight to an adapter.

pub mod auth;
mod convert;
mod error;
mod filter;
mod page;
mod schedules;
mod validate;

#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, pin::Pin, sync::Arc};

use custos_adapter_core::{Capabilities, FieldViolation, Operation};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub use error::ApiError;

use crate::{
    config::Role,
    engine::{BackendEntry, Engine, EngineError, NewJob},
    job::{JobKind, JobRecord},
    names::{self, Target},
    schedule::Scheduler,
};
use auth::{Caller, require};
use filter::JobFilter;

/// The generated code.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("custos.v1");

    /// The descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("custos_descriptor");
}

use pb::backup_service_server::{BackupService, BackupServiceServer};

/// Sets the health of `custos.v1.BackupService` and of the server as a
/// whole (`""`, what a Kubernetes gRPC probe asks by default).
pub async fn set_serving(h: &tonic_health::server::HealthReporter, serving: bool) {
    use tonic_health::ServingStatus;
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    h.set_service_status("", status).await;
    if serving {
        h.set_serving::<BackupServiceServer<Service>>().await;
    } else {
        h.set_not_serving::<BackupServiceServer<Service>>().await;
    }
}

/// Every gRPC service the daemon serves: the API behind the token
/// interceptor, health, and reflection (v1 and v1alpha).
pub fn router(
    svc: Service,
    auth: auth::Auth,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> anyhow::Result<tonic::transport::server::Router> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection().build_v1()?;
    let v1alpha = reflection().build_v1alpha()?;
    let svc = BackupServiceServer::with_interceptor(svc, move |req| auth.check(req));
    Ok(tonic::transport::Server::builder()
        // Clients that vanished without a reset (watch streams included)
        // are dropped within about a minute.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(svc))
}

pub struct Service {
    engine: Arc<Engine>,
    schedules: Arc<Scheduler>,
    /// Ends watch streams when the daemon stops.
    shutdown: CancellationToken,
}

impl Service {
    pub fn new(
        engine: Arc<Engine>,
        schedules: Arc<Scheduler>,
        shutdown: CancellationToken,
    ) -> Service {
        Service {
            engine,
            schedules,
            shutdown,
        }
    }

    /// Parses a target and checks that its backend exists and serves that
    /// kind of resource; returns the backend with it.
    fn target(&self, field: &str, s: &str) -> Result<(Target, &BackendEntry), ApiError> {
        let t = names::parse_target(s).map_err(|e| ApiError::field(field, e))?;
        let entry = self.entry(field, &t)?;
        Ok((t, entry))
    }

    /// The configured backend of `t`, which must have `t`'s kind of
    /// resource; else the error names `field`.
    fn entry(&self, field: &str, t: &Target) -> Result<&BackendEntry, ApiError> {
        let Some(entry) = self.engine.backend(&t.backend) else {
            return Err(ApiError::not_found(
                "backend",
                format!("backends/{}", t.backend),
                format!(
                    "backend {:?} is not configured (ListBackends shows the configured ones)",
                    t.backend
                ),
            ));
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
        Ok(entry)
    }

    /// Creates a job for `caller` and writes the audit line.
    async fn create(
        &self,
        caller: &Caller,
        method: &str,
        mut new: NewJob,
    ) -> Result<Response<pb::Job>, Status> {
        new.created_by = Some(caller.name.clone());
        let target = new.target.clone();
        let rec = self.engine.create(new).await.map_err(ApiError::from)?;
        auth::audit(caller, method, &target, Some(&names::job_name(rec.id)));
        Ok(Response::new(convert::job(&rec)))
    }

    /// The adapter's checks of an operation: the one capability gate.
    fn check(&self, entry: &BackendEntry, op: &Operation) -> Result<(), ApiError> {
        validate::done(self.engine.check(entry, op))
    }

    fn job_id(name: &str) -> Result<Uuid, ApiError> {
        names::parse_job_name(name).map_err(|e| ApiError::field("name", e))
    }

    fn get_job(&self, name: &str) -> Result<JobRecord, ApiError> {
        let id = Self::job_id(name)?;
        self.job_snapshot(&id, name).map(|(_, j)| j)
    }

    /// `Engine::snapshot_or_missing`: NOT_FOUND as `job_not_found` (the
    /// name as given), or UNAVAILABLE for a job whose creation is written
    /// but not durable yet.
    fn job_snapshot(&self, id: &Uuid, name: &str) -> Result<(u64, JobRecord), ApiError> {
        self.engine.snapshot_or_missing(id).map_err(|e| match e {
            EngineError::NotFound(_) => job_not_found(name),
            e => e.into(),
        })
    }
}

/// The answer of a `validate_only` request: the job that would run, not
/// created (no name).
impl Service {
    /// The answer of a `validate_only` request that would create a job:
    /// the backend's preflight, then the job that would run (no name).
    async fn validated(
        &self,
        entry: &BackendEntry,
        kind: JobKind,
        t: &Target,
        op: Operation,
        labels: BTreeMap<String, String>,
        request_id: Option<String>,
    ) -> Result<Response<pb::Job>, Status> {
        let plan = self
            .engine
            .validate(entry, &op)
            .await
            .map_err(|e| ApiError::backend(&entry.name, e))?;
        let mut rec = JobRecord::new(kind, t.name(), t.backend.clone(), op, labels);
        rec.request_id = request_id;
        Ok(Response::new(preview(
            &rec,
            format!("validated; would run: {plan}"),
        )))
    }
}

fn preview(rec: &JobRecord, message: String) -> pb::Job {
    let mut job = convert::job(rec);
    job.name = String::new();
    job.message = message;
    job.validate_only = true;
    job
}

fn job_not_found(name: &str) -> ApiError {
    let name = names::truncate(name).to_string();
    let message = format!("job {name} not found");
    ApiError::not_found("job", name, message)
}

/// What `Engine::cancel` would refuse, without changing the job
/// (`CancelJob` with validate_only): a job that ended, or one that may have
/// sent something to its backend.
fn cancellable(j: &JobRecord) -> Result<(), ApiError> {
    let refuse = |message: String| ApiError::FailedPrecondition {
        reason: error::JOB_NOT_CANCELLABLE,
        subject: names::job_name(j.id),
        message,
    };
    let name = names::job_name(j.id);
    if j.state.is_terminal() {
        return Err(refuse(format!(
            "job {name} already ended {}",
            j.state.as_str()
        )));
    }
    let nothing_sent = j.state == crate::job::JobState::Pending
        || (j.state == crate::job::JobState::Running && j.phase == crate::job::Phase::Queued);
    if nothing_sent {
        Ok(())
    } else {
        Err(refuse(format!(
            "job {name} is {}: its remote operation may exist and cannot be stopped on this backend",
            j.state.as_str()
        )))
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
        Err(ApiError::FailedPrecondition {
            reason: error::CAPABILITY_MISSING,
            subject: format!("backends/{}", entry.name),
            message: format!(
                "backend {} ({}) cannot {what}",
                entry.name,
                entry.backend.kind()
            ),
        })
    }
}

type JobStream = Pin<Box<dyn Stream<Item = Result<pb::Job, Status>> + Send + 'static>>;

/// Changes a `WatchJobs` client may have unread before it is cut off: as
/// many as the engine keeps (`EVENT_BUFFER`), so a burst (a schedule
/// firing thousands of jobs) does not cut off a reader that keeps up. The
/// buffer holds the engine's shared events (a pointer each), converted to
/// messages only as they are sent.
const WATCH_BUFFER: usize = crate::engine::EVENT_BUFFER;

/// Ends a `WatchJobs` stream whose reader fell behind with a status that
/// says what to do. Only the watch task sends, and it keeps one slot free,
/// so this never waits.
fn fell_behind<T>(tx: &mpsc::Sender<Result<T, Status>>) {
    tracing::info!("a WatchJobs reader fell behind; ending its stream with ABORTED");
    let status = ApiError::Aborted {
        reason: error::WATCH_FELL_BEHIND,
        message: "this watcher fell behind and changes were dropped; resync with ListJobs, then watch again".into(),
    };
    let _ = tx.try_send(Err(status.into()));
}

#[tonic::async_trait]
impl BackupService for Service {
    async fn list_backends(
        &self,
        req: Request<pb::ListBackendsRequest>,
    ) -> Result<Response<pb::ListBackendsResponse>, Status> {
        require(&req, Role::Reader)?;
        let r = req.into_inner();
        // 0: every backend, as before ListBackends was paged (clients of
        // the older proto know no next_page_token; the list is the
        // config's, so it is short).
        let size = match r.page_size {
            0 => usize::MAX,
            n => validate::page_size(n, "page_size")?,
        };
        let binding = page::Binding {
            method: "ListBackends",
            fields: &[],
        };
        let after = binding.decode(&r.page_token)?;
        if let Some(a) = &after
            && !names::valid_backend_name(a)
        {
            return Err(ApiError::invalid_with(
                page::REASON_INVALID,
                "page_token",
                "not a page token of ListBackends",
            )
            .into());
        }
        let mut backends: Vec<pb::Backend> = self
            .engine
            .backends()
            .filter(|b| after.as_ref().is_none_or(|a| b.name > *a))
            .map(|b| pb::Backend {
                name: format!("backends/{}", b.name),
                kind: b.backend.kind().to_string(),
                endpoint: b.backend.endpoint().to_string(),
                capabilities: Some(convert::capabilities(b.backend.capabilities())),
            })
            .collect();
        backends.sort_by(|a, b| a.name.cmp(&b.name));
        let next_page_token = if backends.len() > size {
            backends.truncate(size);
            backends
                .last()
                .and_then(|b| b.name.strip_prefix("backends/"))
                .map(|n| binding.encode(n))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListBackendsResponse {
            backends,
            next_page_token,
        }))
    }

    async fn create_backup(
        &self,
        req: Request<pb::CreateBackupRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = require(&req, Role::Operator)?;
        let r = req.into_inner();
        let (t, entry) = self.target("target", &r.target)?;
        capability(entry, "create backups", |c| c.create_backup)?;
        let mut v = Vec::new();
        let request_id = validate::request_id(&r.request_id, &mut v);
        let labels = validate::labels(&r.labels, &mut v);
        if r.incremental && !entry.backend.capabilities().incremental_backup {
            v.push(FieldViolation::new(
                "incremental",
                format!(
                    "backend {} ({}) cannot make incremental backups",
                    entry.name,
                    entry.backend.kind()
                ),
            ));
        }
        validate::done(v)?;
        let op = Operation::CreateBackup {
            resource: t.resource.clone(),
            incremental: r.incremental,
        };
        self.check(entry, &op)?;
        if r.validate_only {
            return self
                .validated(entry, JobKind::Backup, &t, op, labels, request_id)
                .await;
        }
        self.create(
            &caller,
            "CreateBackup",
            NewJob {
                kind: JobKind::Backup,
                target: t.name(),
                backend: t.backend,
                op,
                labels,
                request_id,
                schedule: None,
                created_by: None,
            },
        )
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
        // 0: the backend's own default page.
        let limit = u32::try_from(r.page_size)
            .ok()
            .filter(|n| *n > 0)
            .map(|n| n.min(validate::MAX_PAGE as u32));
        let name = t.name();
        let fields = [name.as_str()];
        let binding = page::Binding {
            method: "ListBackups",
            fields: &fields,
        };
        // The backend's own token (or marker, or offset) inside ours.
        let backend_token = binding.decode(&r.page_token)?.unwrap_or_default();
        let page = self
            .engine
            .list_backups(entry, &t.resource, limit, &backend_token)
            .await
            .map_err(|e| ApiError::backend(&entry.name, e))?;
        let next_page_token = if page.next_page_token.is_empty() {
            String::new()
        } else {
            binding.encode(&page.next_page_token)
        };
        Ok(Response::new(pb::ListBackupsResponse {
            backups: page
                .backups
                .into_iter()
                .map(|b| convert::backup(b, &name))
                .collect(),
            next_page_token,
        }))
    }

    async fn get_backup(
        &self,
        req: Request<pb::GetBackupRequest>,
    ) -> Result<Response<pb::Backup>, Status> {
        require(&req, Role::Reader)?;
        let r = req.into_inner();
        let (t, backup_id) =
            names::parse_backup_name(&r.name).map_err(|e| ApiError::field("name", e))?;
        let entry = self.entry("name", &t)?;
        capability(entry, "list backups", |c| c.list_backups)?;
        let name = t.name();
        match self
            .engine
            .get_backup(entry, &t.resource, &backup_id)
            .await
            .map_err(|e| ApiError::backend(&entry.name, e))?
        {
            Some(b) => Ok(Response::new(convert::backup(b, &name))),
            None => {
                let backup = names::backup_name(&name, &backup_id);
                Err(
                    ApiError::not_found("backup", backup.clone(), format!("{backup} not found"))
                        .into(),
                )
            }
        }
    }

    async fn delete_backup(
        &self,
        req: Request<pb::DeleteBackupRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = require(&req, Role::Operator)?;
        let mut r = req.into_inner();
        // `name` stands for `target` and `backup_id`.
        if !r.name.is_empty() {
            let (t, id) =
                names::parse_backup_name(&r.name).map_err(|e| ApiError::field("name", e))?;
            let same = |given: &str, from_name: &str| given.is_empty() || given == from_name;
            if !same(&names::normalise_target(&r.target), &t.name()) || !same(&r.backup_id, &id) {
                return Err(ApiError::field(
                    "name",
                    "names another backup than target and backup_id; give one or the other",
                )
                .into());
            }
            r.target = t.name();
            r.backup_id = id;
        }
        let (t, entry) = self.target("target", &r.target)?;
        let mut v: Vec<FieldViolation> = Vec::new();
        validate::required_id("backup_id", &r.backup_id, &mut v);
        let request_id = validate::request_id(&r.request_id, &mut v);
        validate::done(v)?;
        capability(entry, "delete backups", |c| c.delete_backup)?;
        let op = Operation::DeleteBackup {
            resource: t.resource.clone(),
            backup_id: r.backup_id,
        };
        self.check(entry, &op)?;
        if r.validate_only {
            return self
                .validated(
                    entry,
                    JobKind::DeleteBackup,
                    &t,
                    op,
                    BTreeMap::new(),
                    request_id,
                )
                .await;
        }
        self.create(
            &caller,
            "DeleteBackup",
            NewJob {
                kind: JobKind::DeleteBackup,
                target: t.name(),
                backend: t.backend,
                op,
                labels: BTreeMap::new(),
                request_id,
                schedule: None,
                created_by: None,
            },
        )
        .await
    }

    async fn restore(&self, req: Request<pb::RestoreRequest>) -> Result<Response<pb::Job>, Status> {
        let caller = require(&req, Role::Operator)?;
        let r = req.into_inner();
        let (t, entry) = self.target("target", &r.target)?;
        capability(entry, "restore", |c| c.restore)?;
        let validate::Checked {
            op,
            request_id,
            labels,
        } = validate::restore(&r, &t)?;
        self.check(entry, &op)?;
        if r.validate_only {
            return self
                .validated(entry, JobKind::Restore, &t, op, labels, request_id)
                .await;
        }
        self.create(
            &caller,
            "Restore",
            NewJob {
                kind: JobKind::Restore,
                target: t.name(),
                backend: t.backend,
                op,
                labels,
                request_id,
                schedule: None,
                created_by: None,
            },
        )
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
        let size = validate::page_size(r.page_size, "page_size")?;
        let filter = JobFilter::parse(&r.filter)
            .map_err(|e| ApiError::invalid_with(error::FILTER_INVALID, "filter", e))?;
        let fields = [r.filter.as_str()];
        let binding = page::Binding {
            method: "ListJobs",
            fields: &fields,
        };
        let before = match binding.decode(&r.page_token)? {
            None => None,
            Some(p) => Some(Uuid::parse_str(&p).map_err(|_| {
                ApiError::invalid_with(
                    page::REASON_INVALID,
                    "page_token",
                    "not a page token of ListJobs",
                )
            })?),
        };
        // Reading and decoding a page of records is blocking work.
        let engine = self.engine.clone();
        let (jobs, more) = tokio::task::spawn_blocking(move || {
            engine.list(&filter.index(), before, size, |j| filter.matches(j))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("listing jobs failed: {e}")))?
        .map_err(ApiError::from)?;
        let next_page_token = if more {
            jobs.last()
                .map(|j| binding.encode(&j.id.to_string()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let full = r.view == pb::JobView::Full as i32;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(|j| convert::job_view(j, full)).collect(),
            next_page_token,
        }))
    }

    type WatchJobStream = JobStream;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        require(&req, Role::Reader)?;
        let name = req.get_ref().name.clone();
        let id = Self::job_id(&name)?;
        // Subscribe before reading, so no change falls in between.
        let mut events = self.engine.subscribe();
        let (mut last, first) = self.job_snapshot(&id, &name)?;
        let (tx, rx) = mpsc::channel(16);
        let engine = self.engine.clone();
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            let _open = crate::telemetry::WatchStream::open();
            if tx.send(Ok(convert::job(&first))).await.is_err() || first.state.is_terminal() {
                return;
            }
            loop {
                let ev = tokio::select! {
                    ev = events.recv() => ev,
                    // The client went away: stop at once.
                    _ = tx.closed() => return,
                    _ = stop.cancelled() => {
                        let e = ApiError::shutting_down("the daemon is shutting down; watch again after it restarts");
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let (seq, next) = match ev {
                    Ok(e) if e.job.id == id => {
                        let mut j = (*e.job).clone();
                        engine.note_waiting(&mut j);
                        (e.seq, j)
                    }
                    Ok(_) => continue,
                    // Missed some events: the current state replaces them.
                    Err(RecvError::Lagged(_)) => match engine.snapshot(&id) {
                        Ok(Some(s)) => s,
                        _ => {
                            let _ = tx
                                .send(Err(ApiError::store_unavailable(
                                    "the job could not be read again; watch again",
                                )
                                .into()))
                                .await;
                            return;
                        }
                    },
                    Err(RecvError::Closed) => return,
                };
                // Never older than what was sent (events buffered before a
                // re-read snapshot).
                if seq <= last {
                    continue;
                }
                last = seq;
                let done = next.state.is_terminal();
                if tx.send(Ok(convert::job(&next))).await.is_err() || done {
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
        let filter = JobFilter::parse(&req.get_ref().filter)
            .map_err(|e| ApiError::invalid_with(error::FILTER_INVALID, "filter", e))?;
        let full = req.get_ref().view == pb::JobView::Full as i32;
        let mut events = self.engine.subscribe();
        let engine = self.engine.clone();
        // A bounded buffer per watcher; the engine never waits for it. A
        // watcher that falls behind is told so, rather than silently
        // missing changes.
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            let _open = crate::telemetry::WatchStream::open();
            loop {
                let ev = tokio::select! {
                    ev = events.recv() => ev,
                    _ = tx.closed() => return,
                    _ = stop.cancelled() => {
                        let e = ApiError::shutting_down("the daemon is shutting down; watch again after it restarts");
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                match ev {
                    Ok(e) if filter.matches(&e.job) => {
                        // The last slot is kept for the ABORTED status.
                        if tx.capacity() <= 1 {
                            fell_behind(&tx);
                            return;
                        }
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        fell_behind(&tx);
                        return;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        let shown = ReceiverStream::new(rx).map(move |item| {
            item.map(|e| {
                let mut shown = convert::job_view(&e.job, full);
                if let Some(m) = engine.waiting_message(&e.job) {
                    shown.message = m;
                }
                shown
            })
        });
        Ok(Response::new(Box::pin(shown)))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = require(&req, Role::Operator)?;
        let id = Self::job_id(&req.get_ref().name)?;
        if req.get_ref().validate_only {
            let rec = self.get_job(&req.get_ref().name)?;
            cancellable(&rec)?;
            let mut job = convert::job(&rec);
            job.validate_only = true;
            return Ok(Response::new(job));
        }
        let rec = self.engine.cancel(&id).await.map_err(ApiError::from)?;
        auth::audit(
            &caller,
            "CancelJob",
            &rec.target,
            Some(&names::job_name(id)),
        );
        Ok(Response::new(convert::job(&rec)))
    }

    async fn create_schedule(
        &self,
        req: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let caller = require(&req, Role::Operator)?;
        let s = self.do_create_schedule(req.into_inner()).await?;
        auth::audit(&caller, "CreateSchedule", &s.name, None);
        Ok(Response::new(s))
    }

    async fn get_schedule(
        &self,
        req: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        require(&req, Role::Reader)?;
        let id = schedules::schedule_id("name", &req.get_ref().name)?;
        let (rec, next) = self.schedules.get(&id).map_err(ApiError::from)?;
        Ok(Response::new(schedules::schedule(&rec, &next)))
    }

    async fn list_schedules(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        require(&req, Role::Reader)?;
        Ok(Response::new(self.do_list_schedules(req.into_inner())?))
    }

    async fn update_schedule(
        &self,
        req: Request<pb::UpdateScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let caller = require(&req, Role::Operator)?;
        let s = self.do_update_schedule(req.into_inner()).await?;
        auth::audit(&caller, "UpdateSchedule", &s.name, None);
        Ok(Response::new(s))
    }

    async fn delete_schedule(
        &self,
        req: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let caller = require(&req, Role::Operator)?;
        let id = schedules::schedule_id("name", &req.get_ref().name)?;
        if req.get_ref().validate_only {
            self.schedules.get(&id).map_err(ApiError::from)?;
            return Ok(Response::new(pb::DeleteScheduleResponse {}));
        }
        self.schedules.delete(&id).await.map_err(ApiError::from)?;
        auth::audit(&caller, "DeleteSchedule", &req.get_ref().name, None);
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }

    async fn pause_schedule(
        &self,
        req: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let caller = require(&req, Role::Operator)?;
        let id = schedules::schedule_id("name", &req.get_ref().name)?;
        if req.get_ref().validate_only {
            let (mut rec, _) = self.schedules.get(&id).map_err(ApiError::from)?;
            rec.paused = true;
            return Ok(Response::new(schedules::schedule(&rec, &[])));
        }
        let (rec, next) = self.schedules.pause(&id).await.map_err(ApiError::from)?;
        auth::audit(&caller, "PauseSchedule", &rec.name(), None);
        Ok(Response::new(schedules::schedule(&rec, &next)))
    }

    async fn resume_schedule(
        &self,
        req: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let caller = require(&req, Role::Operator)?;
        let id = schedules::schedule_id("name", &req.get_ref().name)?;
        if req.get_ref().validate_only {
            return Ok(Response::new(self.preview_resume(&id)?));
        }
        let (rec, next) = self.schedules.resume(&id).await.map_err(ApiError::from)?;
        auth::audit(&caller, "ResumeSchedule", &rec.name(), None);
        Ok(Response::new(schedules::schedule(&rec, &next)))
    }

    async fn run_schedule(
        &self,
        req: Request<pb::RunScheduleRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = require(&req, Role::Operator)?;
        let id = schedules::schedule_id("name", &req.get_ref().name)?;
        let mut v = Vec::new();
        let request_id = validate::request_id(&req.get_ref().request_id, &mut v);
        validate::done(v)?;
        if req.get_ref().validate_only {
            let new = self.schedules.preview_run(&id).map_err(ApiError::from)?;
            let mut rec = JobRecord::new(new.kind, new.target, new.backend, new.op, new.labels);
            rec.schedule = new.schedule;
            rec.created_by = Some(caller.name.clone());
            return Ok(Response::new(preview(
                &rec,
                "validated; would start a backup now".into(),
            )));
        }
        let job = self
            .schedules
            .run_now(&id, &caller.name, request_id)
            .await
            .map_err(ApiError::from)?;
        auth::audit(
            &caller,
            "RunSchedule",
            &req.get_ref().name,
            Some(&names::job_name(job.id)),
        );
        Ok(Response::new(convert::job(&job)))
    }
}
