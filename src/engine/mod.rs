//! The job engine: turns accepted requests into durable jobs and drives each
//! one to its end through the `Backend` trait.
//!
//! Invariants:
//! - every change of a job is written and flushed before it is acted on or
//!   reported (`Engine::update`);
//! - the submit is preceded by a stored intent; after a crash between the
//!   two, the job reconciles instead of submitting again;
//! - one job per target runs at a time (`targets::TargetQueues`), in
//!   creation order;
//! - backend calls hold a global and a per-backend permit; waiting (for a
//!   poll, a retry, a turn) holds nothing and costs one timer.

pub mod model;
mod targets;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use chrono::Utc;
use custos_adapter_core::{
    Backend, BackendError, ErrorKind, Operation, Progress, Reconciled, backoff::Backoff,
};
use tokio::sync::{Semaphore, broadcast};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{
    config::BackendTiming,
    store::{Store, StoreError},
};
use model::{JobError, JobKind, JobRecord, JobState, Phase};
use targets::TargetQueues;

/// Why the engine refused a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("request_id {0:?} was already used for a different request (job {1})")]
    RequestIdReused(String, String),
    #[error("job {0} not found")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

/// A configured backend with its limits.
pub struct BackendEntry {
    pub name: String,
    pub backend: Arc<dyn Backend>,
    pub timing: BackendTiming,
    permits: Arc<Semaphore>,
}

impl BackendEntry {
    pub fn new(
        name: String,
        backend: Arc<dyn Backend>,
        timing: BackendTiming,
        limit: usize,
    ) -> Self {
        BackendEntry {
            name,
            backend,
            timing,
            permits: Arc::new(Semaphore::new(limit)),
        }
    }
}

/// A job to create.
pub struct NewJob {
    pub kind: JobKind,
    pub target: String,
    pub backend: String,
    pub op: Operation,
    pub labels: BTreeMap<String, String>,
    pub request_id: Option<String>,
    pub schedule: Option<String>,
}

impl NewJob {
    /// A digest of what the request asks for, to compare retries.
    fn fingerprint(&self) -> String {
        let v = serde_json::json!({
            "kind": self.kind, "target": self.target, "op": self.op, "labels": self.labels,
        });
        v.to_string()
    }
}

/// Limits and clocks of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    pub max_running: usize,
    pub job_history: Duration,
}

pub struct Engine {
    store: Store,
    backends: HashMap<String, BackendEntry>,
    global: Arc<Semaphore>,
    /// Non-terminal jobs, authoritative; a std mutex because it is never
    /// held across an await (the store write under it is in memory).
    live: Mutex<HashMap<Uuid, JobRecord>>,
    /// Serialises the idempotency check with the insert.
    create_lock: Mutex<()>,
    targets: TargetQueues,
    cancels: Mutex<HashMap<Uuid, CancellationToken>>,
    events: broadcast::Sender<JobRecord>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    settings: EngineSettings,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a step of a job ended.
enum Step {
    /// Go on with the (updated) job.
    Continue,
    /// The job reached a terminal state, or the engine is stopping.
    Stop,
}

impl Engine {
    pub fn new(
        store: Store,
        backends: Vec<BackendEntry>,
        settings: EngineSettings,
        shutdown: CancellationToken,
    ) -> Arc<Engine> {
        let (events, _) = broadcast::channel(8192);
        Arc::new(Engine {
            store,
            backends: backends.into_iter().map(|b| (b.name.clone(), b)).collect(),
            global: Arc::new(Semaphore::new(settings.max_running)),
            live: Mutex::new(HashMap::new()),
            create_lock: Mutex::new(()),
            targets: TargetQueues::default(),
            cancels: Mutex::new(HashMap::new()),
            events,
            shutdown,
            tasks: TaskTracker::new(),
            settings,
        })
    }

    pub fn backends(&self) -> impl Iterator<Item = &BackendEntry> {
        self.backends.values()
    }

    pub fn backend(&self, name: &str) -> Option<&BackendEntry> {
        self.backends.get(name)
    }

    /// Every persisted change of any job.
    pub fn subscribe(&self) -> broadcast::Receiver<JobRecord> {
        self.events.subscribe()
    }

    /// Loads every non-terminal job and starts driving it again. Jobs that
    /// were running get their target first, so the order survives restarts.
    pub fn resume(self: &Arc<Self>) -> Result<usize, StoreError> {
        let mut jobs = self.store.live_jobs()?;
        jobs.sort_by_key(|j| (j.state != JobState::Running, j.id));
        let n = jobs.len();
        for j in jobs {
            if !self.backends.contains_key(&j.backend) {
                tracing::error!(job = %j.id, backend = %j.backend, "job names a backend that is no longer configured; it stays as it is");
                continue;
            }
            self.targets.enqueue(&j.target, j.id);
            let id = j.id;
            lock(&self.live).insert(id, j);
            self.spawn(id);
        }
        Ok(n)
    }

    /// Creates a job (or returns the one created before with the same
    /// `request_id`), durably, and starts it.
    pub async fn create(self: &Arc<Self>, new: NewJob) -> Result<JobRecord, EngineError> {
        if self.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let fingerprint = new.fingerprint();
        let (rec, fresh) = {
            let _g = lock(&self.create_lock);
            let existing = match &new.request_id {
                Some(r) => self.store.job_for_request(r)?,
                None => None,
            };
            if let Some(id) = existing {
                let old = self
                    .get(&id)?
                    .ok_or_else(|| EngineError::NotFound(id.to_string()))?;
                if old.fingerprint.as_deref() != Some(fingerprint.as_str()) {
                    return Err(EngineError::RequestIdReused(
                        new.request_id.unwrap_or_default(),
                        crate::names::job_name(id),
                    ));
                }
                (old, false)
            } else {
                let mut rec = JobRecord::new(new.kind, new.target, new.backend, new.op, new.labels);
                rec.request_id = new.request_id;
                rec.schedule = new.schedule;
                rec.fingerprint = Some(fingerprint);
                self.store.put_job(&rec)?;
                lock(&self.live).insert(rec.id, rec.clone());
                self.targets.enqueue(&rec.target, rec.id);
                (rec, true)
            }
        };
        // Acknowledge only once durable (grouped with other writers).
        self.store.flush().await?;
        if fresh {
            let _ = self.events.send(rec.clone());
            self.spawn(rec.id);
        }
        Ok(rec)
    }

    pub fn get(&self, id: &Uuid) -> Result<Option<JobRecord>, StoreError> {
        if let Some(j) = lock(&self.live).get(id) {
            return Ok(Some(j.clone()));
        }
        self.store.get_job(id)
    }

    /// Jobs newest first that pass `keep`, after `before`; returns the page
    /// and whether more may follow.
    pub fn list(
        &self,
        before: Option<Uuid>,
        page_size: usize,
        keep: impl Fn(&JobRecord) -> bool,
    ) -> Result<(Vec<JobRecord>, bool), StoreError> {
        let mut out = Vec::new();
        for r in self.store.jobs_newest_first(before) {
            let mut rec = r?;
            if let Some(l) = lock(&self.live).get(&rec.id) {
                rec = l.clone();
            }
            if keep(&rec) {
                if out.len() == page_size {
                    return Ok((out, true));
                }
                out.push(rec);
            }
        }
        Ok((out, false))
    }

    /// Cancels a PENDING job. RUNNING ones only where the backend can stop
    /// them (none yet), so they are refused with the reason.
    pub async fn cancel(&self, id: &Uuid) -> Result<JobRecord, EngineError> {
        let name = crate::names::job_name(*id);
        let current = self
            .get(id)?
            .ok_or_else(|| EngineError::NotFound(name.clone()))?;
        if current.state.is_terminal() {
            return Err(EngineError::FailedPrecondition(format!(
                "job {name} already ended {}",
                current.state.as_str()
            )));
        }
        let mut refusal = None;
        let updated = self
            .update(id, |j| {
                if j.state == JobState::Pending {
                    j.state = JobState::Cancelled;
                    j.phase = Phase::Done;
                    j.end_time = Some(Utc::now());
                    j.message = "cancelled before it started".into();
                    j.next_attempt_time = None;
                    true
                } else {
                    refusal = Some(format!(
                        "job {name} is {}: the remote operation{} cannot be stopped on this backend",
                        j.state.as_str(),
                        j.handle.as_ref().map(|h| format!(" {}", h.display)).unwrap_or_default()
                    ));
                    false
                }
            })
            .await?;
        match updated {
            Some(rec) => {
                if let Some(t) = lock(&self.cancels).get(id) {
                    t.cancel();
                }
                Ok(rec)
            }
            None => {
                let msg = refusal.unwrap_or_else(|| format!("job {name} has already ended"));
                Err(EngineError::FailedPrecondition(msg))
            }
        }
    }

    /// Applies `change` to a live job; if it returns true, writes the job,
    /// waits for durability and announces it. `None` when the job is not
    /// live or nothing changed.
    async fn update(
        &self,
        id: &Uuid,
        change: impl FnOnce(&mut JobRecord) -> bool,
    ) -> Result<Option<JobRecord>, StoreError> {
        let rec = {
            let mut live = lock(&self.live);
            let Some(j) = live.get_mut(id) else {
                return Ok(None);
            };
            let before = j.clone();
            if !change(j) {
                return Ok(None);
            }
            // Written under the lock so that store order = change order.
            if let Err(e) = self.store.put_job(j) {
                *j = before;
                return Err(e);
            }
            let rec = j.clone();
            if rec.state.is_terminal() {
                live.remove(id);
            }
            rec
        };
        self.store.flush().await?;
        let _ = self.events.send(rec.clone());
        Ok(Some(rec))
    }

    fn spawn(self: &Arc<Self>, id: Uuid) {
        let token = self.shutdown.child_token();
        lock(&self.cancels).insert(id, token.clone());
        let engine = self.clone();
        self.tasks.spawn(async move {
            engine.drive(id, token).await;
            lock(&engine.cancels).remove(&id);
        });
    }

    /// Stops every job task at its next wait, and waits up to `deadline`
    /// for in-flight backend calls to return. Jobs resume on the next start.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "job tasks did not stop within the shutdown deadline; their state is stored and they resume on the next start"
            );
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
    }

    /// Removes finished jobs older than the history period.
    pub fn prune(&self) -> Result<usize, StoreError> {
        let keep = chrono::Duration::from_std(self.settings.job_history)
            .unwrap_or(chrono::Duration::days(30));
        self.store.prune_finished_before(Utc::now() - keep)
    }

    // ---- driving one job ------------------------------------------------

    async fn drive(self: &Arc<Self>, id: Uuid, cancel: CancellationToken) {
        let Some(job) = lock(&self.live).get(&id).cloned() else {
            return;
        };
        let target = job.target.clone();
        let result = self.drive_inner(id, &cancel).await;
        if let Err(e) = result {
            tracing::error!(job = %id, error = %e, "job stopped on a store error; it resumes on the next start");
            return;
        }
        // Release the target unless we are stopping with the job unfinished
        // (then it is re-queued at the next start anyway).
        let finished = lock(&self.live).get(&id).is_none();
        if finished || !self.shutdown.is_cancelled() {
            self.targets.remove(&target, id);
        }
    }

    async fn drive_inner(
        self: &Arc<Self>,
        id: Uuid,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let Some(job) = lock(&self.live).get(&id).cloned() else {
            return Ok(());
        };
        let Some(entry) = self.backends.get(&job.backend) else {
            return Ok(());
        };

        // 1. Wait for our turn on the target.
        let mut said_waiting = false;
        loop {
            let notify = self.targets.notify(&job.target);
            let notified = notify.notified();
            match self.targets.head(&job.target) {
                Some(h) if h == id => break,
                Some(other) => {
                    if !said_waiting && job.state == JobState::Pending {
                        said_waiting = true;
                        let msg = format!(
                            "waiting for {} to finish on the same target",
                            crate::names::job_name(other)
                        );
                        self.update(&id, |j| set_message(j, msg)).await?;
                    }
                }
                None => return Ok(()),
            }
            tokio::select! {
                _ = notified => {}
                _ = cancel.cancelled() => return Ok(()),
            }
        }

        // 2. Start (PENDING → RUNNING) once a backend slot is free.
        if lock(&self.live).get(&id).map(|j| j.state) == Some(JobState::Pending) {
            let permits = tokio::select! {
                p = self.permits(entry) => p,
                _ = cancel.cancelled() => return Ok(()),
            };
            let started = self
                .update(&id, |j| {
                    if j.state != JobState::Pending {
                        return false;
                    }
                    j.state = JobState::Running;
                    j.start_time = Some(Utc::now());
                    j.message = "starting".into();
                    true
                })
                .await?;
            drop(permits);
            if started.is_none() {
                return Ok(()); // cancelled meanwhile
            }
        }

        // 3. Steps until the end.
        let timing = entry.timing;
        let mut retry = Backoff::new(
            timing.poll_interval.min(Duration::from_secs(1)),
            Duration::from_secs(30),
        );
        let mut poll = Backoff::new(timing.poll_interval, timing.poll_max_interval);
        // A submit is "fresh" only if this process recorded its intent;
        // an intent found at start-up means the outcome was lost.
        let mut fresh_intent = false;
        loop {
            let Some(job) = lock(&self.live).get(&id).cloned() else {
                return Ok(());
            };
            if let Some(start) = job.start_time {
                let elapsed = (Utc::now() - start).to_std().unwrap_or_default();
                if elapsed > timing.operation_timeout {
                    let msg = format!(
                        "gave up after the operation timeout of {}; the remote operation{} may still be running",
                        humantime::format_duration(timing.operation_timeout),
                        job.handle
                            .as_ref()
                            .map(|h| format!(" {}", h.display))
                            .unwrap_or_default()
                    );
                    self.fail(&id, rpc_code::DEADLINE_EXCEEDED, msg, vec![])
                        .await?;
                    return Ok(());
                }
            }
            let step = match job.phase {
                Phase::Queued => self.step_prepare(entry, &job, &mut fresh_intent).await,
                Phase::Submitting if fresh_intent => {
                    self.step_submit(entry, &job, &mut fresh_intent).await
                }
                Phase::Submitting => self.step_reconcile(entry, &job).await,
                Phase::Polling => {
                    let wait = poll.next_delay();
                    if !self.wait(wait, cancel).await {
                        return Ok(());
                    }
                    self.step_poll(entry, &job, &mut poll).await
                }
                Phase::Done => return Ok(()),
            };
            match step {
                Ok(Step::Continue) => retry.reset(),
                Ok(Step::Stop) => return Ok(()),
                Err(StepError::Store(e)) => return Err(e),
                Err(StepError::Backend(e, doing)) => {
                    if !self
                        .handle_failure(&id, e, doing, timing.max_retries, &mut retry, cancel)
                        .await?
                    {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Acquires a global and a per-backend permit.
    async fn permits(
        &self,
        entry: &BackendEntry,
    ) -> (
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    ) {
        // Neither semaphore is ever closed.
        let g = self.global.clone().acquire_owned().await;
        let b = entry.permits.clone().acquire_owned().await;
        match (g, b) {
            (Ok(g), Ok(b)) => (g, b),
            _ => unreachable!("semaphores are never closed"),
        }
    }

    /// Sleeps; false if the job was cancelled or the engine is stopping.
    async fn wait(&self, d: Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = cancel.cancelled() => false,
        }
    }

    async fn step_prepare(
        &self,
        entry: &BackendEntry,
        job: &JobRecord,
        fresh_intent: &mut bool,
    ) -> Result<Step, StepError> {
        let intent = {
            let _p = self.permits(entry).await;
            entry
                .backend
                .prepare(&job.op)
                .await
                .map_err(|e| StepError::Backend(e, Doing::Preparing))?
        };
        // The intent is durable before the submit is sent.
        let mut intent = intent;
        intent.recorded_at = Some(Utc::now());
        self.update(&job.id, |j| {
            j.intent = Some(intent);
            j.phase = Phase::Submitting;
            j.message = "submitting to the backend".into();
            true
        })
        .await?;
        *fresh_intent = true;
        Ok(Step::Continue)
    }

    async fn step_submit(
        &self,
        entry: &BackendEntry,
        job: &JobRecord,
        fresh_intent: &mut bool,
    ) -> Result<Step, StepError> {
        let intent = job.intent.clone().unwrap_or_default();
        let result = {
            let _p = self.permits(entry).await;
            self.update(&job.id, |j| {
                j.attempts += 1;
                true
            })
            .await?;
            entry.backend.submit(&job.op, &intent).await
        };
        match result {
            Ok(handle) => {
                self.update(&job.id, |j| {
                    j.message = format!("submitted; waiting for {}", handle.display);
                    j.handle = Some(handle);
                    j.phase = Phase::Polling;
                    j.attempts = 0;
                    true
                })
                .await?;
                Ok(Step::Continue)
            }
            Err(e) if e.maybe_applied => {
                // The request may have reached the backend: find out
                // instead of sending it again.
                *fresh_intent = false;
                tracing::warn!(job = %job.id, error = %e, "submit outcome unknown; reconciling");
                self.update(&job.id, |j| {
                    j.message = format!(
                        "the submit's outcome is unknown ({}); checking with the backend",
                        e.message
                    );
                    true
                })
                .await?;
                Ok(Step::Continue)
            }
            Err(e) => {
                if e.is_retryable() {
                    // Not applied: prepare again later (the snapshot may
                    // change while another operation runs).
                    *fresh_intent = false;
                    self.update(&job.id, |j| {
                        j.phase = Phase::Queued;
                        j.intent = None;
                        true
                    })
                    .await?;
                }
                Err(StepError::Backend(e, Doing::Submitting))
            }
        }
    }

    async fn step_reconcile(
        &self,
        entry: &BackendEntry,
        job: &JobRecord,
    ) -> Result<Step, StepError> {
        let intent = job.intent.clone().unwrap_or_default();
        let r = {
            let _p = self.permits(entry).await;
            entry
                .backend
                .reconcile(&job.op, &intent)
                .await
                .map_err(|e| StepError::Backend(e, Doing::Reconciling))?
        };
        match r {
            Reconciled::NotSubmitted => {
                tracing::info!(job = %job.id, "reconciled: the submit never reached the backend; submitting again");
                self.update(&job.id, |j| {
                    j.phase = Phase::Queued;
                    j.intent = None;
                    j.message =
                        "the earlier submit never reached the backend; submitting again".into();
                    true
                })
                .await?;
                Ok(Step::Continue)
            }
            Reconciled::Submitted(handle) => {
                tracing::info!(job = %job.id, handle = %handle.display, "reconciled: the submit had reached the backend");
                self.update(&job.id, |j| {
                    j.message = format!(
                        "the earlier submit had reached the backend; waiting for {}",
                        handle.display
                    );
                    j.handle = Some(handle);
                    j.phase = Phase::Polling;
                    true
                })
                .await?;
                Ok(Step::Continue)
            }
            Reconciled::Unknown(why) => {
                self.fail(
                    &job.id,
                    rpc_code::UNKNOWN,
                    format!("outcome unknown: {why}"),
                    vec![],
                )
                .await?;
                Ok(Step::Stop)
            }
        }
    }

    async fn step_poll(
        &self,
        entry: &BackendEntry,
        job: &JobRecord,
        poll: &mut Backoff,
    ) -> Result<Step, StepError> {
        let (Some(intent), Some(handle)) = (job.intent.clone(), job.handle.clone()) else {
            self.fail(
                &job.id,
                rpc_code::INTERNAL,
                "the job lost its remote handle".into(),
                vec![],
            )
            .await?;
            return Ok(Step::Stop);
        };
        let progress = {
            let _p = self.permits(entry).await;
            entry
                .backend
                .poll(&job.op, &intent, &handle)
                .await
                .map_err(|e| StepError::Backend(e, Doing::Polling))?
        };
        match progress {
            Progress::Running { message, handle } => {
                if handle.is_some() {
                    poll.reset();
                }
                self.update(&job.id, |j| {
                    let mut changed = false;
                    if let Some(h) = handle {
                        j.handle = Some(h);
                        changed = true;
                    }
                    if j.attempts != 0 {
                        j.attempts = 0;
                        changed = true;
                    }
                    set_message(j, message) || changed
                })
                .await?;
                Ok(Step::Continue)
            }
            Progress::Succeeded { message, backup_id } => {
                self.update(&job.id, |j| {
                    j.state = JobState::Succeeded;
                    j.phase = Phase::Done;
                    j.end_time = Some(Utc::now());
                    j.message = message;
                    j.next_attempt_time = None;
                    if backup_id.is_some() {
                        j.backup_id = backup_id;
                    }
                    true
                })
                .await?;
                Ok(Step::Stop)
            }
            Progress::Failed(e) => {
                let code = code_for(&e);
                self.fail(&job.id, code, e.message.clone(), e.details)
                    .await?;
                Ok(Step::Stop)
            }
        }
    }

    /// Retries a retryable failure after a backoff (honouring
    /// `Retry-After`), or ends the job. False when the job ended or the
    /// engine is stopping.
    async fn handle_failure(
        &self,
        id: &Uuid,
        e: BackendError,
        doing: Doing,
        max_retries: u32,
        retry: &mut Backoff,
        cancel: &CancellationToken,
    ) -> Result<bool, StoreError> {
        let what = doing.as_str();
        let attempts = lock(&self.live).get(id).map(|j| j.attempts).unwrap_or(0);
        if !e.is_retryable() || attempts >= max_retries {
            let mut msg = e.message.clone();
            let mut code = code_for(&e);
            if e.is_retryable() {
                msg = format!("gave up after {attempts} attempts while {what}: {msg}");
            }
            if doing == Doing::Reconciling {
                // The submit may or may not have reached the backend.
                msg = format!(
                    "outcome unknown: the backend could not be asked whether the submit had reached it: {msg}"
                );
                code = rpc_code::UNKNOWN;
            }
            self.fail(id, code, msg, e.details).await?;
            return Ok(false);
        }
        let delay = retry.next_delay_honouring(e.retry_after);
        let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        tracing::debug!(job = %id, error = %e, ?delay, "retryable failure while {what}");
        self.update(id, |j| {
            j.attempts += 1;
            j.message = format!(
                "{what}: {} — retrying in {} (attempt {} of {})",
                e.message,
                humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
                j.attempts,
                max_retries
            );
            j.next_attempt_time = Some(next);
            true
        })
        .await?;
        Ok(self.wait(delay, cancel).await)
    }

    async fn fail(
        &self,
        id: &Uuid,
        code: i32,
        message: String,
        details: Vec<custos_adapter_core::ErrorDetail>,
    ) -> Result<(), StoreError> {
        tracing::info!(job = %id, %message, "job failed");
        self.update(id, |j| {
            j.state = JobState::Failed;
            j.phase = Phase::Done;
            j.end_time = Some(Utc::now());
            j.next_attempt_time = None;
            j.message = message.clone();
            j.error = Some(JobError {
                code,
                message,
                details,
            });
            true
        })
        .await?;
        Ok(())
    }
}

/// Sets the message if it changed; true when it did.
fn set_message(j: &mut JobRecord, msg: String) -> bool {
    if j.message == msg {
        return false;
    }
    j.message = msg;
    true
}

enum StepError {
    Store(StoreError),
    Backend(BackendError, Doing),
}

/// The step a backend failure happened in; decides how an exhausted or
/// permanent failure is worded (and, for reconciling, that the outcome of
/// the submit is unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Doing {
    Preparing,
    Submitting,
    Reconciling,
    Polling,
}

impl Doing {
    fn as_str(self) -> &'static str {
        match self {
            Doing::Preparing => "preparing",
            Doing::Submitting => "submitting",
            Doing::Reconciling => "reconciling",
            Doing::Polling => "polling",
        }
    }
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        StepError::Store(e)
    }
}

/// `google.rpc.Code` values used in `JobError.code` (numbers, so the
/// engine does not depend on tonic).
pub mod rpc_code {
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const ABORTED: i32 = 10;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// The failure class of a backend error, as a `google.rpc.Code`.
fn code_for(e: &BackendError) -> i32 {
    use rpc_code::*;
    match e.kind {
        ErrorKind::Unauthorized => UNAUTHENTICATED,
        ErrorKind::Forbidden => PERMISSION_DENIED,
        ErrorKind::NotFound => NOT_FOUND,
        ErrorKind::Invalid => INVALID_ARGUMENT,
        ErrorKind::Busy => ABORTED,
        ErrorKind::Throttled => RESOURCE_EXHAUSTED,
        ErrorKind::Transient => UNAVAILABLE,
        ErrorKind::Permanent => FAILED_PRECONDITION,
        ErrorKind::Unsupported => UNIMPLEMENTED,
    }
}
