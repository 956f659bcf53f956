//! The driver of one job: waits for the target's turn, then walks the
//! phases `Queued → Submitting → Polling → Done` through the `Backend`
//! trait. The failure policy (retry or end, backoff, `Retry-After`, the
//! attempt count) and the submit/reconcile rule live here, in one place.
//!
//! The submit/reconcile rule (see `ARCHITECTURE.md`):
//! - the intent is stored (`Phase::Submitting`) before the submit is sent;
//! - a submit that failed with `maybe_applied`, or an intent found at
//!   start-up, is reconciled, never sent again blindly;
//! - `Reconciled::NotSubmitted` is believed only after the backend had time
//!   to show the operation: at least `GRACE_CHECKS` answers spread over at
//!   least the backend's request timeout;
//! - `Reconciled::Unknown`, or a reconcile that cannot be completed, ends
//!   the job `FAILED` with `Failure::OutcomeUnknown`.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use custos_adapter_core::{
    BackendError, ErrorDetail, ErrorKind, Operation, Progress, Reconciled, RemoteHandle,
    backoff::Backoff,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::telemetry::timed;

use super::{BackendEntry, Engine, end, parking::Resume, set_message};
use crate::{
    job::{Failure, JobError, JobRecord, JobState, Phase},
    store::StoreError,
};

/// How many "not submitted" answers reconcile needs before it is believed.
const GRACE_CHECKS: u32 = 3;
/// The ceiling of the retry backoff (a `Retry-After` may ask for more, up
/// to the backend's `max_retry_after`).
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The backoff between retries of a job's failed calls, from its
/// backend's `poll_interval`.
pub(super) fn retry_backoff(poll_interval: Duration) -> Backoff {
    Backoff::new(poll_interval.min(Duration::from_secs(1)), RETRY_MAX)
}

/// How a driver stopped without an error.
pub(super) enum Driven {
    /// The job ended, was cancelled, or the engine is stopping.
    Stopped,
    /// The job waits for its next poll until the instant, with no task:
    /// `Engine::wake_parked` starts a driver again with the state.
    Parked(Instant, Resume),
}

/// Drives the job until it ends, is cancelled or the engine stops, or
/// until it waits for its next poll (`Driven`); `Err` when the store
/// failed (the job's task starts the driver again). `resume` is the state
/// of a driver that parked: it goes straight to its poll.
pub(super) async fn drive(
    engine: Arc<Engine>,
    id: Uuid,
    cancel: CancellationToken,
    resume: Option<Resume>,
) -> Result<Driven, StoreError> {
    // A parked job's record is read back here (`Err` if it cannot be:
    // the job's task tries again).
    let Some(job) = engine.current_checked(&id)? else {
        return Ok(Driven::Stopped);
    };
    let Some(entry) = engine.backends.get(&job.backend) else {
        return Ok(Driven::Stopped);
    };
    let timing = entry.timing;
    let woken = resume.is_some();
    // A parked job's schedules go on at the steps it kept.
    let steps = resume.unwrap_or(Resume { retry: 0, poll: 0 });
    let retry = retry_backoff(timing.poll_interval).at_step(steps.retry);
    let poll = Backoff::new(timing.poll_interval, timing.poll_max_interval).at_step(steps.poll);
    let mut d = Driver {
        engine: &engine,
        entry,
        id,
        cancel: &cancel,
        retry,
        poll,
        fresh_intent: false,
        grace: None,
        woken,
    };
    if !Box::pin(d.wait_turn(&job)).await? || !Box::pin(d.start(&job)).await? {
        return Ok(Driven::Stopped);
    }
    d.run().await
}

/// The result of one step.
enum Flow {
    Continue,
    Stop,
}

enum StepError {
    Store(StoreError),
    Backend(BackendError, Doing),
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        StepError::Store(e)
    }
}

/// The step a backend failure happened in.
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

/// "Not submitted" answers seen so far for the current intent.
struct Grace {
    first: Instant,
    checks: u32,
}

struct Driver<'a> {
    engine: &'a Engine,
    entry: &'a BackendEntry,
    id: Uuid,
    cancel: &'a CancellationToken,
    /// Backoff between retries of failed calls; reset only by progress (a
    /// handle stored, a poll answered), not by a successful prepare.
    retry: Backoff,
    poll: Backoff,
    /// True only between storing an intent and sending its submit, in this
    /// process; an intent found otherwise was (maybe) used: reconcile.
    fresh_intent: bool,
    grace: Option<Grace>,
    /// True when this driver was started by the end of a parked wait: its
    /// first poll is due now.
    woken: bool,
}

impl Driver<'_> {
    /// Waits until the job is the head of its target's queue. False when
    /// the job was cancelled or the engine is stopping, or when its target
    /// has no queue any more (the job left it: it cannot get a turn). Nothing is written
    /// meanwhile: readers are told what the job waits for
    /// (`Engine::snapshot`).
    async fn wait_turn(&self, job: &JobRecord) -> Result<bool, StoreError> {
        // The usual case, and without a wake-up: the job heads its queue.
        if self.engine.targets.head(&job.target) == Some(self.id) {
            return Ok(true);
        }
        loop {
            let Some(notify) = self.engine.targets.notify(&job.target) else {
                return Ok(false);
            };
            let notified = notify.notified();
            match self.engine.targets.head(&job.target) {
                Some(h) if h == self.id => return Ok(true),
                Some(_) => {}
                None => return Ok(false),
            }
            tokio::select! {
                _ = notified => {}
                _ = self.cancel.cancelled() => return Ok(false),
            }
        }
    }

    /// PENDING → RUNNING once a backend slot is free. False when the job
    /// was cancelled meanwhile or the engine is stopping.
    async fn start(&self, job: &JobRecord) -> Result<bool, StoreError> {
        if job.state != JobState::Pending {
            return Ok(true);
        }
        let permits = tokio::select! {
            p = self.engine.permits(self.entry) => p,
            _ = self.cancel.cancelled() => return Ok(false),
        };
        let started = self
            .engine
            .update(&self.id, |j| {
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
        Ok(started.is_some())
    }

    async fn run(&mut self) -> Result<Driven, StoreError> {
        loop {
            let Some(job) = self.engine.current(&self.id) else {
                return Ok(Driven::Stopped);
            };
            if job.state.is_terminal() || self.cancel.is_cancelled() {
                return Ok(Driven::Stopped);
            }
            if let Some(msg) = self.timed_out(&job) {
                // In Submitting the submit may have reached the backend:
                // say so, with the code that tells the operator to check.
                let reason = if job.phase == Phase::Submitting && !self.fresh_intent {
                    Failure::OutcomeUnknown
                } else {
                    Failure::Timeout
                };
                Box::pin(self.fail(reason, msg, vec![])).await?;
                return Ok(Driven::Stopped);
            }
            // Each step is boxed: a job's task then holds only the step it
            // is in, not room for the largest one (issue 12).
            let step = match job.phase {
                Phase::Queued => Box::pin(self.prepare(&job)).await,
                Phase::Submitting if self.fresh_intent => Box::pin(self.submit(&job)).await,
                Phase::Submitting => Box::pin(self.reconcile(&job)).await,
                // Most of a job's life is the wait between polls: it
                // parks (no task) instead of sleeping in one.
                Phase::Polling if !std::mem::take(&mut self.woken) => {
                    let wait = self.poll.next_delay();
                    let wait = self.within_deadline(wait, &job);
                    let resume = Resume::of(&self.retry, &self.poll);
                    return Ok(Driven::Parked(Instant::now() + wait, resume));
                }
                Phase::Polling => Box::pin(self.poll(&job)).await,
                Phase::Done => return Ok(Driven::Stopped),
            };
            match step {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => return Ok(Driven::Stopped),
                Err(StepError::Store(e)) => return Err(e),
                Err(StepError::Backend(e, doing)) => {
                    if !Box::pin(self.on_failure(e, doing)).await? {
                        return Ok(Driven::Stopped);
                    }
                }
            }
        }
    }

    /// The operation timeout, counted from the job's start.
    fn deadline(&self, job: &JobRecord) -> Option<chrono::DateTime<Utc>> {
        let t = chrono::Duration::from_std(self.entry.timing.operation_timeout).ok()?;
        job.start_time?.checked_add_signed(t)
    }

    fn timed_out(&self, job: &JobRecord) -> Option<String> {
        let deadline = self.deadline(job)?;
        if Utc::now() <= deadline {
            return None;
        }
        if job.phase == Phase::Submitting && !self.fresh_intent {
            return Some(format!(
                "outcome unknown: gave up after the operation timeout of {} while checking whether the submit had reached the backend; check {} on the backend before trying again",
                humantime::format_duration(self.entry.timing.operation_timeout),
                job.target
            ));
        }
        Some(format!(
            "gave up after the operation timeout of {}; the remote operation{} may still be running",
            humantime::format_duration(self.entry.timing.operation_timeout),
            job.handle
                .as_ref()
                .map(|h| format!(" {}", h.display))
                .unwrap_or_default()
        ))
    }

    /// `d`, but not past the operation deadline (just after it, so that
    /// the next look finds the job timed out).
    fn within_deadline(&self, d: Duration, job: &JobRecord) -> Duration {
        let left = self
            .deadline(job)
            .map(|t| (t - Utc::now()).to_std().unwrap_or_default())
            .map(|l| l + Duration::from_millis(10));
        left.map_or(d, |l| d.min(l))
    }

    /// Sleeps `d`, but not past the operation deadline; false if the job
    /// was cancelled or the engine is stopping.
    async fn sleep(&self, d: Duration, job: &JobRecord) -> bool {
        let d = self.within_deadline(d, job);
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.cancel.cancelled() => false,
        }
    }

    async fn prepare(&mut self, job: &JobRecord) -> Result<Flow, StepError> {
        let mut intent = {
            let _p = self.engine.permits(self.entry).await;
            timed(
                &self.entry.name,
                "prepare",
                self.entry.backend.prepare(&job.op),
            )
            .await
            .map_err(|e| StepError::Backend(e, Doing::Preparing))?
        };
        intent.recorded_at = Some(Utc::now());
        // The intent is durable before the submit is sent; a job cancelled
        // meanwhile is not submitted.
        let stored = self
            .engine
            .update(&self.id, |j| {
                if j.state != JobState::Running || j.phase != Phase::Queued {
                    return false;
                }
                j.intent = Some(intent);
                j.phase = Phase::Submitting;
                j.message = "submitting to the backend".into();
                true
            })
            .await?;
        if stored.is_none() {
            return Ok(Flow::Stop);
        }
        self.fresh_intent = true;
        self.grace = None;
        Ok(Flow::Continue)
    }

    async fn submit(&mut self, job: &JobRecord) -> Result<Flow, StepError> {
        let intent = job.intent.clone().unwrap_or_default();
        let result = {
            let _p = self.engine.permits(self.entry).await;
            timed(
                &self.entry.name,
                "submit",
                self.entry.backend.submit(&job.op, &intent),
            )
            .await
        };
        // Whatever happened, this intent has been used.
        self.fresh_intent = false;
        match result {
            Ok(handle) => {
                let msg = format!("submitted; waiting for {}", handle.display);
                self.follow(handle, msg).await
            }
            Err(e) if e.maybe_applied => {
                // The request may have reached the backend: find out
                // instead of sending it again.
                tracing::warn!(job = %self.id, error = %e, "submit outcome unknown; reconciling");
                self.engine
                    .update(&self.id, |j| {
                        j.message = format!(
                            "the submit's outcome is unknown ({}); checking with the backend",
                            e.message
                        );
                        // Reconciling gets its own retry budget.
                        j.attempts = 0;
                        true
                    })
                    .await?;
                Ok(Flow::Continue)
            }
            Err(e) => {
                if e.is_retryable() {
                    // Not applied: prepare again later (what the adapter
                    // records may change while another operation runs).
                    self.engine
                        .update(&self.id, |j| {
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

    /// Stores the remote handle: from now on the job polls it. The handle
    /// exists only in this task until it is stored, so a store failure is
    /// retried here (with backoff) rather than handed to the supervisor,
    /// whose fresh driver could only reconcile.
    async fn follow(&mut self, handle: RemoteHandle, message: String) -> Result<Flow, StepError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            let (h, m) = (handle.clone(), message.clone());
            let stored = self
                .engine
                .update(&self.id, |j| {
                    j.message = m;
                    j.handle = Some(h);
                    j.phase = Phase::Polling;
                    j.attempts = 0;
                    j.next_attempt_time = None;
                    true
                })
                .await;
            match stored {
                Ok(_) => break,
                Err(e) => {
                    let d = backoff.next_delay();
                    tracing::error!(job = %self.id, error = %e, handle = %handle.display, ?d, "cannot store the remote handle; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        // Stopping: the job resumes in Submitting and
                        // reconciles, the best that can be done.
                        _ = self.cancel.cancelled() => return Ok(Flow::Stop),
                    }
                }
            }
        }
        self.retry.reset();
        Ok(Flow::Continue)
    }

    async fn reconcile(&mut self, job: &JobRecord) -> Result<Flow, StepError> {
        let intent = job.intent.clone().unwrap_or_default();
        let r = {
            let _p = self.engine.permits(self.entry).await;
            timed(
                &self.entry.name,
                "reconcile",
                self.entry.backend.reconcile(&job.op, &intent),
            )
            .await
            .map_err(|e| StepError::Backend(e, Doing::Reconciling))?
        };
        crate::telemetry::reconcile(
            &self.entry.name,
            match &r {
                Reconciled::NotSubmitted => "not_submitted",
                Reconciled::Submitted(_) => "submitted",
                Reconciled::Unknown(_) => "unknown",
            },
        );
        match r {
            Reconciled::NotSubmitted => {
                let timing = self.entry.timing;
                let g = self.grace.get_or_insert_with(|| Grace {
                    first: Instant::now(),
                    checks: 0,
                });
                g.checks += 1;
                if g.checks < GRACE_CHECKS || g.first.elapsed() < timing.timeout {
                    let wait = (timing.timeout / 2).max(timing.poll_interval);
                    let n = g.checks;
                    let msg = format!(
                        "no trace of the earlier submit on the backend yet (check {n}); checking again in {}",
                        humantime::format_duration(wait)
                    );
                    self.engine
                        .update(&self.id, |j| set_message(j, msg))
                        .await?;
                    if !self.sleep(wait, job).await {
                        return Ok(Flow::Stop);
                    }
                    return Ok(Flow::Continue);
                }
                let waited = self
                    .grace
                    .take()
                    .map(|g| g.first.elapsed())
                    .unwrap_or_default();
                // A restore is never sent a second time on "no trace": the
                // first may still land late (queued behind a proxy) and the
                // backend would then run both. The operator decides.
                if matches!(job.op, Operation::Restore { .. }) {
                    let msg = format!(
                        "outcome unknown: the restore's submit may have been sent, and after {} the backend shows no trace of it; to be safe it is not sent again: check {} and restore again if it did not run",
                        humantime::format_duration(Duration::from_secs(waited.as_secs())),
                        job.target
                    );
                    self.fail(Failure::OutcomeUnknown, msg, vec![]).await?;
                    return Ok(Flow::Stop);
                }
                tracing::info!(job = %self.id, "reconciled: the submit never reached the backend; submitting again");
                self.engine
                    .update(&self.id, |j| {
                        j.phase = Phase::Queued;
                        j.intent = None;
                        j.message =
                            "the earlier submit never reached the backend; submitting again".into();
                        true
                    })
                    .await?;
                Ok(Flow::Continue)
            }
            Reconciled::Submitted(handle) => {
                self.grace = None;
                tracing::info!(job = %self.id, handle = %handle.display, "reconciled: the submit had reached the backend");
                let msg = format!(
                    "the earlier submit had reached the backend; waiting for {}",
                    handle.display
                );
                self.follow(handle, msg).await
            }
            Reconciled::Unknown(why) => {
                self.fail(
                    Failure::OutcomeUnknown,
                    format!("outcome unknown: {why}"),
                    vec![],
                )
                .await?;
                Ok(Flow::Stop)
            }
        }
    }

    async fn poll(&mut self, job: &JobRecord) -> Result<Flow, StepError> {
        let (Some(intent), Some(handle)) = (job.intent.clone(), job.handle.clone()) else {
            self.fail(
                Failure::Internal,
                "the job lost its remote handle".into(),
                vec![],
            )
            .await?;
            return Ok(Flow::Stop);
        };
        let progress = {
            let _p = self.engine.permits(self.entry).await;
            timed(
                &self.entry.name,
                "poll",
                self.entry.backend.poll(&job.op, &intent, &handle),
            )
            .await
            .map_err(|e| StepError::Backend(e, Doing::Polling))?
        };
        self.retry.reset();
        match progress {
            Progress::Running {
                message,
                handle,
                percent,
            } => {
                if handle.is_some() {
                    self.poll.reset();
                }
                self.engine
                    .update(&self.id, |j| {
                        let mut changed = false;
                        if percent.is_some() && j.progress_percent != percent {
                            j.progress_percent = percent;
                            changed = true;
                        }
                        if let Some(h) = handle {
                            j.handle = Some(h);
                            changed = true;
                        }
                        if j.attempts != 0 || j.next_attempt_time.is_some() {
                            j.attempts = 0;
                            j.next_attempt_time = None;
                            changed = true;
                        }
                        set_message(j, message) || changed
                    })
                    .await?;
                Ok(Flow::Continue)
            }
            Progress::Succeeded { message, backup_id } => {
                self.engine
                    .update(&self.id, |j| {
                        end(j, JobState::Succeeded, message);
                        if j.progress_percent.is_some() {
                            j.progress_percent = Some(100);
                        }
                        if backup_id.is_some() {
                            j.backup_id = backup_id;
                        }
                        true
                    })
                    .await?;
                Ok(Flow::Stop)
            }
            Progress::Failed(e) => {
                let reason = match e.kind {
                    ErrorKind::OutcomeUnknown => Failure::OutcomeUnknown,
                    k => Failure::Backend(k),
                };
                self.fail(reason, e.message, e.details).await?;
                Ok(Flow::Stop)
            }
        }
    }

    /// The one failure policy. A retryable failure is retried after a
    /// backoff (honouring a capped `Retry-After`) until `max_retries`
    /// failed tries, or, for "operation in progress", until the operation
    /// timeout; anything else ends the job. False when the job ended or
    /// the wait was interrupted.
    async fn on_failure(&mut self, e: BackendError, doing: Doing) -> Result<bool, StoreError> {
        let timing = self.entry.timing;
        let what = doing.as_str();
        let Some(job) = self.engine.current(&self.id) else {
            return Ok(false);
        };
        let attempts = job.attempts.saturating_add(1);
        let exhausted = e.kind != ErrorKind::Busy && attempts > timing.max_retries;
        if !e.is_retryable() || exhausted {
            let mut msg = e.message.clone();
            let mut reason = Failure::Backend(e.kind);
            if exhausted {
                msg = format!("gave up after {attempts} attempts while {what}: {msg}");
            }
            if doing == Doing::Reconciling {
                msg = format!(
                    "outcome unknown: the backend could not be asked whether the submit had reached it: {msg}"
                );
                reason = Failure::OutcomeUnknown;
            }
            self.fail(reason, msg, e.details).await?;
            return Ok(false);
        }
        let delay = self.retry_delay(e.retry_after);
        let next = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d));
        tracing::debug!(job = %self.id, error = %e, ?delay, "retryable failure while {what}");
        crate::telemetry::retry(&self.entry.name);
        let of = if e.kind == ErrorKind::Busy {
            "until the operation timeout".to_string()
        } else {
            format!("of {}", timing.max_retries.saturating_add(1))
        };
        self.engine
            .update(&self.id, |j| {
                j.attempts = attempts;
                j.message = format!(
                    "{what}: {} — retrying in {} (attempt {attempts} {of})",
                    e.message,
                    humantime::format_duration(Duration::from_millis(
                        u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
                    )),
                );
                j.next_attempt_time = next;
                true
            })
            .await?;
        Ok(self.sleep(delay, &job).await)
    }

    /// The backoff's next delay, or the backend's `Retry-After` cut to
    /// `max_retry_after`, plus jitter so that jobs throttled together do
    /// not all come back in the same second.
    fn retry_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        self.retry
            .next_delay_honouring_capped(retry_after, self.entry.timing.max_retry_after)
    }

    async fn fail(
        &self,
        reason: Failure,
        message: String,
        details: Vec<ErrorDetail>,
    ) -> Result<(), StoreError> {
        tracing::info!(job = %self.id, %message, "job failed");
        self.engine
            .update(&self.id, |j| {
                end(j, JobState::Failed, message.clone());
                j.error = Some(JobError {
                    reason,
                    message,
                    details,
                });
                true
            })
            .await?;
        Ok(())
    }
}
