//! Backup schedules: cron policies that create backup jobs through the
//! engine (the same path as `CreateBackup`, so target locking, limits and
//! retries apply), stored beside the jobs.
//!
//! - [`cron`]: crontab expressions in a time zone, with DST defined.
//! - `crate::schedule_record`: the stored schedule (below the store, like
//!   `job.rs`).
//! - [`retention`]: which of a schedule's own backups to delete.
//! - this file: [`Scheduler`], the one task that fires due times, and the
//!   operations the API calls.
//!
//! # Firing, exactly once
//! Each schedule keeps `fired_until`: due times up to it were dealt with.
//! The scheduler sleeps until the earliest next due time (or a change, or
//! a minute, to notice clock jumps). A due time's job is created with the
//! request id `custos-schedule/{id}/{due time}`, *then* `fired_until` is
//! stored: a crash between the two finds the same due time again and the
//! engine's idempotency returns the job already made. Creating, updating
//! and resuming set `fired_until` to now, so none of them fires at once.
//!
//! The schedules due at one tick are fired in batches (`FIRE_BATCH`, 256):
//! each decided under its own lock, the batch's jobs written in one store
//! batch and made durable by one flush (`Engine::create_many`), only then
//! the schedules' records written and flushed once more. The order, and so
//! the guarantee above, is the same as one at a time, at two flushes and
//! one sled batch per 256 schedules instead of two flushes and a sled
//! batch each (issue 12, P5).
//!
//! # Overlap and catch-up
//! A due time is *missed* when several fell in the window since
//! `fired_until` or the latest is more than [`MISFIRE_GRACE`] old (the
//! daemon was down). `catch_up = RUN_ONCE` then runs once for the window;
//! `SKIP` runs nothing. With `overlap = SKIP` no run starts while the
//! schedule's last job has not ended. Every due time that did not run is
//! recorded in `last_skip` with its reason.

pub mod cron;
pub mod retention;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use chrono::{DateTime, Utc};
use custos_adapter_core::{FieldViolation, Operation};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use crate::schedule_record::{CatchUp, Overlap, Retention, ScheduleRecord, Skip, SkipReason};
use crate::{
    engine::{Engine, EngineError, NewJob},
    job::{JobKind, JobRecord, JobState},
    names,
    store::{Store, StoreError},
};
use cron::CronSchedule;

/// A due time later than this when the scheduler gets to it counts as
/// missed (the daemon was down or stalled), and `catch_up` decides.
pub const MISFIRE_GRACE: Duration = Duration::from_secs(5);
/// The longest the scheduler sleeps without looking at the clock again.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// How long a due time whose job could not be created waits to be tried
/// again.
const RETRY_FIRE: Duration = Duration::from_secs(5);
/// How often retention looks at every schedule, besides after each run.
pub const RETENTION_SWEEP: Duration = Duration::from_secs(3600);
/// Due schedules fired together: their jobs are made durable with one
/// flush, then their records with one more.
const FIRE_BATCH: usize = 256;
/// Batches fired at once.
const FIRE_BATCHES: usize = 4;
/// Due times counted when a window is looked at (a window longer than this
/// is reported as "at least").
const MAX_WINDOW: usize = 10_000;

/// The wall clock, so tests can drive time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// What a create or update asks for, already validated by the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    pub target: String,
    pub backend: String,
    pub resource: custos_adapter_core::Resource,
    pub cron: String,
    pub time_zone: String,
    pub paused: bool,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub retention: Option<Retention>,
    pub labels: BTreeMap<String, String>,
    pub incremental: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule {0} not found")]
    NotFound(String),
    #[error("schedule {0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A run refused by the overlap policy.
    #[error("{0}")]
    Overlap(String),
    #[error("invalid schedule")]
    Invalid(Vec<FieldViolation>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

struct Entry {
    rec: ScheduleRecord,
    cron: CronSchedule,
    /// The first due time after `fired_until` (None: never again).
    next: Option<DateTime<Utc>>,
    /// Not before this (a failed fire waits).
    hold_until: Option<DateTime<Utc>>,
    /// When the scheduler first tried to fire the pending due time (kept
    /// across a failed try, so a retry is not judged late because of the
    /// wait before it).
    first_try: Option<DateTime<Utc>>,
}

impl Entry {
    fn new(rec: ScheduleRecord) -> Result<Entry, String> {
        let cron = CronSchedule::parse(&rec.cron, &rec.time_zone).map_err(|e| {
            e.iter()
                .map(|x| format!("{}: {}", x.field, x.reason))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let next = cron.next_after(rec.fired_until);
        Ok(Entry {
            rec,
            cron,
            next,
            hold_until: None,
            first_try: None,
        })
    }

    fn due_at(&self) -> Option<DateTime<Utc>> {
        if self.rec.paused {
            return None;
        }
        match (self.next, self.hold_until) {
            (Some(n), Some(h)) => Some(n.max(h)),
            (n, _) => n,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What firing one schedule calls for, decided under its lock.
struct Plan {
    /// The record with what the firing changes, except `fired_until` and
    /// `last_job` (set once the job exists).
    rec: ScheduleRecord,
    /// The due time dealt with.
    latest: DateTime<Utc>,
    /// The run to start, if any.
    job: Option<NewJob>,
}

/// A schedule and its next five run times.
pub type Listed = (ScheduleRecord, Vec<DateTime<Utc>>);

/// The schedules of one daemon and the task that fires them.
pub struct Scheduler {
    engine: Arc<Engine>,
    store: Store,
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<String, Entry>>,
    /// Schedules whose stored record could not be read or parsed: never
    /// fired; `get` says why, `delete` removes them.
    broken: Mutex<BTreeMap<String, String>>,
    changed: Notify,
    /// One lock per schedule id: the changes of one schedule (API calls,
    /// firing, retention) happen one at a time, different schedules'
    /// in parallel.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Due schedules whose lock was taken when their time came: a task of
    /// their own waits for the lock and fires them (`fire_when_free`).
    waiting: Mutex<HashSet<String>>,
    /// When this scheduler loaded its schedules (its clock). A due time
    /// after it was never dealt with by an earlier daemon (one daemon per
    /// data dir), so its job exists only if this one made it.
    loaded_at: DateTime<Utc>,
    shutdown: CancellationToken,
}

/// The request id of the job for one due time.
fn fire_request_id(id: &str, due: DateTime<Utc>) -> String {
    format!("custos-schedule/{id}/{}", due.timestamp_millis())
}

impl Scheduler {
    /// Loads the stored schedules; call [`Scheduler::run`] to fire them.
    pub fn new(
        engine: Arc<Engine>,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Scheduler>, StoreError> {
        let s = Scheduler {
            store: engine.store().clone(),
            engine,
            entries: Mutex::new(HashMap::new()),
            broken: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            locks: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashSet::new()),
            loaded_at: clock.now(),
            clock,
            shutdown,
        };
        for stored in s.store.schedules()? {
            let loaded = stored.and_then(|rec| {
                let id = rec.id.clone();
                Entry::new(rec)
                    .map(|e| (id.clone(), e))
                    .map_err(|why| (id, why))
            });
            match loaded {
                Ok((id, e)) => {
                    lock(&s.entries).insert(id, e);
                }
                Err((id, why)) => {
                    tracing::error!(schedule = %id, error = %why, "a stored schedule cannot be read; it will not run (delete it, or run the release that wrote it)");
                    lock(&s.broken).insert(id, why);
                }
            }
        }
        Ok(Arc::new(s))
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Waits for the lock of schedule `id` (a lock is made only for a
    /// schedule that exists, or is being created).
    async fn hold(
        &self,
        id: &str,
        creating: bool,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, ScheduleError> {
        let known =
            creating || lock(&self.entries).contains_key(id) || lock(&self.broken).contains_key(id);
        if !known {
            return Err(ScheduleError::NotFound(format!("schedules/{id}")));
        }
        let m = lock(&self.locks).entry(id.to_string()).or_default().clone();
        Ok(m.lock_owned().await)
    }

    /// How many schedules are loaded.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // ---- reading ------------------------------------------------------------

    pub fn get(&self, id: &str) -> Result<Listed, ScheduleError> {
        if let Some(why) = lock(&self.broken).get(id) {
            return Err(ScheduleError::FailedPrecondition(format!(
                "schedules/{id} is stored but cannot be read, so it does not run: {why}; delete it, or run the release that wrote it"
            )));
        }
        let entries = lock(&self.entries);
        let e = entries
            .get(id)
            .ok_or_else(|| ScheduleError::NotFound(format!("schedules/{id}")))?;
        Ok((e.rec.clone(), self.upcoming(e)))
    }

    fn upcoming(&self, e: &Entry) -> Vec<DateTime<Utc>> {
        e.cron.upcoming(e.rec.fired_until.max(self.now()), 5)
    }

    /// Schedules by id after `after`, at most `size`; and whether more follow.
    pub fn list(&self, after: Option<&str>, size: usize) -> (Vec<Listed>, bool) {
        let entries = lock(&self.entries);
        let mut ids: Vec<&String> = entries
            .keys()
            .filter(|k| after.is_none_or(|a| k.as_str() > a))
            .collect();
        ids.sort();
        let more = ids.len() > size;
        let out = ids
            .into_iter()
            .take(size)
            .filter_map(|id| entries.get(id))
            .map(|e| (e.rec.clone(), self.upcoming(e)))
            .collect();
        (out, more)
    }

    // ---- changing -----------------------------------------------------------

    /// Stores a change and makes it durable before it is reported or acted
    /// on.
    async fn save(&self, rec: &ScheduleRecord) -> Result<(), StoreError> {
        self.store.put_schedule(rec)?;
        self.store.flush().await
    }

    pub async fn create(&self, id: String, spec: ScheduleSpec) -> Result<Listed, ScheduleError> {
        let _g = self.hold(&id, true).await?;
        if lock(&self.entries).contains_key(&id)
            || lock(&self.broken).contains_key(&id)
            || self.store.get_schedule(&id)?.is_some()
        {
            return Err(ScheduleError::AlreadyExists(format!("schedules/{id}")));
        }
        let now = self.now();
        let rec = ScheduleRecord {
            v: crate::schedule_record::SCHEDULE_VERSION,
            id: id.clone(),
            target: spec.target,
            backend: spec.backend,
            cron: spec.cron,
            time_zone: spec.time_zone,
            paused: spec.paused,
            overlap: spec.overlap,
            catch_up: spec.catch_up,
            retention: spec.retention,
            labels: spec.labels,
            incremental: spec.incremental,
            create_time: now,
            update_time: now,
            // Never fires at once.
            fired_until: now,
            last_job: None,
            last_skip: None,
        };
        let entry = Entry::new(rec.clone())
            .map_err(|e| ScheduleError::Invalid(vec![FieldViolation::new("schedule.cron", e)]))?;
        self.save(&rec).await?;
        let up = self.upcoming(&entry);
        lock(&self.entries).insert(id.clone(), entry);
        tracing::info!(schedule = %id, target = %rec.target, cron = %rec.cron, time_zone = %rec.time_zone, "schedule created");
        self.changed.notify_one();
        Ok((rec, up))
    }

    /// Applies `change` to the stored schedule under its lock, durably.
    async fn modify<E: From<ScheduleError>>(
        &self,
        id: &str,
        change: impl FnOnce(&mut ScheduleRecord, DateTime<Utc>) -> Result<(), E>,
    ) -> Result<Listed, E> {
        let _g = self.hold(id, false).await?;
        let mut rec = lock(&self.entries)
            .get(id)
            .map(|e| e.rec.clone())
            .ok_or_else(|| ScheduleError::NotFound(format!("schedules/{id}")))?;
        let now = self.now();
        change(&mut rec, now)?;
        rec.update_time = now;
        let mut entry = Entry::new(rec.clone())
            .map_err(|e| ScheduleError::Invalid(vec![FieldViolation::new("schedule.cron", e)]))?;
        self.save(&rec).await.map_err(ScheduleError::from)?;
        let up = self.upcoming(&entry);
        let mut entries = lock(&self.entries);
        if let Some(old) = entries.get(id) {
            entry.first_try = old.first_try;
        }
        entries.insert(id.to_string(), entry);
        drop(entries);
        self.changed.notify_one();
        Ok((rec, up))
    }

    /// Changes the writable fields to what `merge` makes of the current
    /// record (the API applies the update mask there, under this
    /// schedule's lock, so concurrent changes are not lost). Never fires at
    /// once: a new cron or zone counts from now; pending due times of an
    /// unchanged cron stay due.
    pub async fn update<E: From<ScheduleError>>(
        &self,
        id: &str,
        merge: impl FnOnce(&ScheduleRecord) -> Result<ScheduleSpec, E>,
    ) -> Result<Listed, E> {
        let r = self
            .modify::<E>(id, |rec, now| {
                let spec = merge(rec)?;
                let was_paused = rec.paused;
                let new_times = rec.cron != spec.cron || rec.time_zone != spec.time_zone;
                if was_paused && !spec.paused {
                    skip_paused_window(rec, now);
                    rec.fired_until = rec.fired_until.max(now);
                }
                rec.cron = spec.cron;
                rec.time_zone = spec.time_zone;
                rec.overlap = spec.overlap;
                rec.catch_up = spec.catch_up;
                rec.retention = spec.retention;
                rec.labels = spec.labels;
                rec.incremental = spec.incremental;
                rec.paused = spec.paused;
                if new_times {
                    rec.fired_until = rec.fired_until.max(now);
                }
                Ok(())
            })
            .await?;
        tracing::info!(schedule = %id, "schedule updated");
        Ok(r)
    }

    pub async fn pause(&self, id: &str) -> Result<Listed, ScheduleError> {
        let r = self
            .modify::<ScheduleError>(id, |rec, _| {
                rec.paused = true;
                Ok(())
            })
            .await?;
        tracing::info!(schedule = %id, "schedule paused");
        Ok(r)
    }

    /// Runs again from the next due time after now; the due times that
    /// passed while paused are recorded in `last_skip`.
    pub async fn resume(&self, id: &str) -> Result<Listed, ScheduleError> {
        let r = self
            .modify::<ScheduleError>(id, |rec, now| {
                if rec.paused {
                    rec.paused = false;
                    skip_paused_window(rec, now);
                    rec.fired_until = rec.fired_until.max(now);
                }
                Ok(())
            })
            .await?;
        tracing::info!(schedule = %id, "schedule resumed");
        Ok(r)
    }

    /// Deletes the schedule; its jobs and backups stay.
    pub async fn delete(&self, id: &str) -> Result<(), ScheduleError> {
        let _g = self.hold(id, false).await?;
        let known = lock(&self.entries).contains_key(id) || lock(&self.broken).contains_key(id);
        if !known {
            return Err(ScheduleError::NotFound(format!("schedules/{id}")));
        }
        self.store.remove_schedule(id)?;
        self.store.flush().await?;
        lock(&self.entries).remove(id);
        lock(&self.broken).remove(id);
        lock(&self.locks).remove(id);
        tracing::info!(schedule = %id, "schedule deleted");
        self.changed.notify_one();
        Ok(())
    }

    /// Runs the schedule's backup now, outside the cron (also when paused).
    /// With a `request_id` already used, the job made then is returned (by
    /// the engine, which also refuses it for a different request), and
    /// the overlap policy, which that job itself would trip, is not asked.
    pub async fn run_now(
        &self,
        id: &str,
        caller: &str,
        request_id: Option<String>,
    ) -> Result<JobRecord, ScheduleError> {
        let _g = self.hold(id, false).await?;
        let mut rec = lock(&self.entries)
            .get(id)
            .map(|e| e.rec.clone())
            .ok_or_else(|| ScheduleError::NotFound(format!("schedules/{id}")))?;
        let retry = match &request_id {
            Some(r) => self.engine.store().job_for_request(r)?.is_some(),
            None => false,
        };
        if !retry {
            self.check_overlap(&rec)?;
        }
        let mut new = new_backup_job(&rec, None)?;
        new.created_by = Some(caller.to_string());
        new.request_id = request_id;
        let job = self.engine.create(new).await?;
        rec.last_job = Some(job.id);
        self.save(&rec).await?;
        self.set_record(rec);
        tracing::info!(schedule = %id, job = %job.id, "schedule run on request");
        Ok(job)
    }

    /// The job `run_now` would create, without creating it (validate_only).
    pub fn preview_run(&self, id: &str) -> Result<NewJob, ScheduleError> {
        let (rec, _) = self.get(id)?;
        self.check_overlap(&rec)?;
        new_backup_job(&rec, None)
    }

    fn check_overlap(&self, rec: &ScheduleRecord) -> Result<(), ScheduleError> {
        match self.running_job(rec)? {
            Some(job) => Err(ScheduleError::Overlap(format!(
                "the schedule's last job {} has not ended (overlap_policy SKIP); wait for it, or set overlap_policy ALLOW",
                names::job_name(job)
            ))),
            None => Ok(()),
        }
    }

    fn set_record(&self, rec: ScheduleRecord) {
        if let Some(e) = lock(&self.entries).get_mut(&rec.id) {
            e.next = e.cron.next_after(rec.fired_until);
            e.rec = rec;
        }
    }

    /// The schedule's last job, if the overlap policy holds runs back and
    /// it has not ended.
    fn running_job(&self, rec: &ScheduleRecord) -> Result<Option<Uuid>, StoreError> {
        if rec.overlap != Overlap::Skip {
            return Ok(None);
        }
        let Some(id) = rec.last_job else {
            return Ok(None);
        };
        Ok(match self.engine.get(&id)? {
            Some(j) if !j.state.is_terminal() => Some(id),
            _ => None,
        })
    }

    // ---- firing -------------------------------------------------------------

    /// Fires due times until shutdown.
    pub async fn run(self: Arc<Self>) {
        loop {
            let now = self.now();
            let next = self.tick(now).await;
            // A due time that passed during the tick is due now.
            let wait = next
                .map(|t| (t - self.now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.changed.notified() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Deals with every schedule due at `now`; returns the next due time
    /// of any schedule.
    pub async fn tick(self: &Arc<Self>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let due: Vec<String> = lock(&self.entries)
            .iter()
            .filter(|(_, e)| e.due_at().is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        if !due.is_empty() {
            self.fire_all(due, now).await;
        }
        lock(&self.entries).values().filter_map(Entry::due_at).min()
    }

    /// Fires every due schedule, [`FIRE_BATCH`] at a time, up to
    /// [`FIRE_BATCHES`] batches at once (one creates its jobs while
    /// another waits for its flush).
    async fn fire_all(self: &Arc<Self>, due: Vec<String>, now: DateTime<Utc>) {
        let limit = Arc::new(tokio::sync::Semaphore::new(FIRE_BATCHES));
        let mut set = tokio::task::JoinSet::new();
        let mut due = due.into_iter().peekable();
        while due.peek().is_some() {
            let batch: Vec<String> = due.by_ref().take(FIRE_BATCH).collect();
            let me = self.clone();
            let limit = limit.clone();
            set.spawn(async move {
                let _p = limit.acquire_owned().await;
                me.fire_batch(batch, now).await;
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// Fires a batch of due schedules: each is decided under its lock,
    /// their jobs are created together with one flush
    /// ([`Engine::create_many`]), and only then their records (with
    /// `fired_until` moved) are stored together with one more flush. A
    /// schedule whose lock is taken (an API call, retention) is fired on
    /// its own once the lock is free, without holding up the tick.
    async fn fire_batch(self: &Arc<Self>, ids: Vec<String>, now: DateTime<Utc>) {
        let mut busy = Vec::new();
        let mut planned = Vec::new();
        for id in ids {
            let g = match self.try_hold(&id) {
                Ok(Some(g)) => g,
                Ok(None) => {
                    busy.push(id);
                    continue;
                }
                // Deleted since it was found due.
                Err(_) => continue,
            };
            match self.plan(&id, now) {
                Ok(Some(p)) => planned.push((id, g, p)),
                Ok(None) => {}
                Err(e) => self.fire_failed(&id, now, &e),
            }
        }
        let mut news = Vec::new();
        let wants: Vec<bool> = planned
            .iter_mut()
            .map(|(_, _, p)| p.job.take().map(|j| news.push(j)).is_some())
            .collect();
        let mut made = if news.is_empty() {
            Vec::new().into_iter()
        } else {
            self.engine.create_many(news).await.into_iter()
        };
        let mut stored = Vec::new();
        for ((id, g, p), wanted) in planned.into_iter().zip(wants) {
            let made = if wanted { made.next() } else { None };
            let rec = self
                .fired(&id, p, made)
                .and_then(|rec| Ok(self.store.put_schedule(&rec).map(|()| rec)?));
            match rec {
                Ok(rec) => stored.push((id, g, rec)),
                Err(e) => self.fire_failed(&id, now, &e),
            }
        }
        if !stored.is_empty() {
            match self.store.flush().await {
                Ok(()) => {
                    for (id, _g, rec) in stored {
                        self.fired_saved(&id, rec);
                    }
                }
                Err(e) => {
                    let e = ScheduleError::from(e);
                    for (id, ..) in &stored {
                        self.fire_failed(id, now, &e);
                    }
                }
            }
        }
        for id in busy {
            self.fire_when_free(id, now);
        }
    }

    /// A due schedule whose lock is taken fires in a task of its own once
    /// the lock is free: the tick does not wait for it, so a slow
    /// retention or API call on one schedule cannot hold up the others'
    /// due times. Meanwhile ticks pass it by for [`RETRY_FIRE`] at a time
    /// (it is not due at once again, or the run loop would spin); one
    /// task waits per schedule.
    fn fire_when_free(self: &Arc<Self>, id: String, now: DateTime<Utc>) {
        if let Some(en) = lock(&self.entries).get_mut(&id) {
            en.hold_until = chrono::Duration::from_std(RETRY_FIRE)
                .ok()
                .and_then(|d| now.checked_add_signed(d));
        }
        if !lock(&self.waiting).insert(id.clone()) {
            return;
        }
        /// Takes the schedule out of `waiting` however the task ends (a
        /// panic too), so that a later tick can start another waiter.
        struct Waiting(Arc<Scheduler>, String);
        impl Drop for Waiting {
            fn drop(&mut self) {
                lock(&self.0.waiting).remove(&self.1);
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            let waiting = Waiting(me.clone(), id.clone());
            let fired = me.fire(&id, now).await;
            drop(waiting);
            match fired {
                Ok(()) | Err(ScheduleError::NotFound(_)) => {
                    // Nothing was due after all (`fired_saved` clears it
                    // when something was): no longer passed by.
                    if let Some(en) = lock(&me.entries).get_mut(&id) {
                        en.hold_until = None;
                        en.first_try = None;
                    }
                }
                Err(e) => me.fire_failed(&id, now, &e),
            }
            // Its next due time may come before the one the run loop
            // sleeps until.
            me.changed.notify_one();
        });
    }

    /// Schedule `id`'s lock if it is free now (`None` if it is taken).
    fn try_hold(
        &self,
        id: &str,
    ) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>, ScheduleError> {
        if !lock(&self.entries).contains_key(id) {
            return Err(ScheduleError::NotFound(format!("schedules/{id}")));
        }
        let m = lock(&self.locks).entry(id.to_string()).or_default().clone();
        Ok(m.try_lock_owned().ok())
    }

    /// A due time whose run could not be started (or whose record could
    /// not be stored) is tried again after [`RETRY_FIRE`].
    fn fire_failed(&self, id: &str, now: DateTime<Utc>, e: &ScheduleError) {
        tracing::warn!(schedule = %id, error = %e, "a due run could not be started; trying again shortly");
        if let Some(en) = lock(&self.entries).get_mut(id) {
            en.first_try.get_or_insert(now);
            en.hold_until = chrono::Duration::from_std(RETRY_FIRE)
                .ok()
                .and_then(|d| now.checked_add_signed(d));
        }
    }

    /// Deals with the due times of one schedule up to `now`, on its own.
    async fn fire(&self, id: &str, now: DateTime<Utc>) -> Result<(), ScheduleError> {
        let _g = self.hold(id, false).await?;
        let Some(mut p) = self.plan(id, now)? else {
            return Ok(());
        };
        let made = match p.job.take() {
            Some(new) => Some(self.engine.create(new).await),
            None => None,
        };
        let rec = self.fired(id, p, made)?;
        self.save(&rec).await?;
        self.fired_saved(id, rec);
        Ok(())
    }

    /// What the due times of one schedule up to `now` call for (under its
    /// lock): `None` if nothing is due (or it is paused or gone).
    fn plan(&self, id: &str, now: DateTime<Utc>) -> Result<Option<Plan>, ScheduleError> {
        let Some((mut rec, cron, first_try)) = lock(&self.entries)
            .get(id)
            .filter(|e| !e.rec.paused)
            .map(|e| (e.rec.clone(), e.cron.clone(), e.first_try))
        else {
            return Ok(None);
        };
        let (count, first, latest) = window(&cron, rec.fired_until, now);
        let Some(latest) = latest else {
            self.set_record(rec);
            return Ok(None);
        };
        // Its job was made already (before a crash that came before the
        // schedule's record was stored, or by a try whose record could not
        // be stored): it ran, however late this is, and neither missed nor
        // overlapping with itself. Only such a due time is looked up (one
        // store read per schedule fired, 8 % of P5's CPU); a job made
        // anyway would be found by its request id when created.
        let maybe_made = latest <= self.loaded_at || first_try.is_some();
        if maybe_made
            && let Some(made) = self.store.job_for_request(&fire_request_id(id, latest))?
        {
            rec.last_job = Some(made);
            return Ok(Some(Plan {
                rec,
                latest,
                job: None,
            }));
        }
        // Judged from the first try: a retry after a failure is not late
        // because of the wait before it.
        let seen = first_try.map_or(now, |f| f.min(now));
        let late = (seen - latest)
            .to_std()
            .map(|d| d > MISFIRE_GRACE)
            .unwrap_or(false);
        let missed = count > 1 || late;
        let run = !missed || rec.catch_up == CatchUp::RunOnce;
        if missed {
            let n = if count >= MAX_WINDOW {
                format!("at least {count}")
            } else {
                count.to_string()
            };
            let what = if run {
                "catch_up RUN_ONCE: one run for the window"
            } else {
                "catch_up SKIP: not run"
            };
            rec.last_skip = Some(Skip {
                time: latest,
                reason: SkipReason::Missed,
                message: format!(
                    "{n} due time(s) from {} to {} passed while the daemon was not running them ({what})",
                    first.unwrap_or(latest).to_rfc3339(),
                    latest.to_rfc3339()
                ),
            });
            tracing::info!(schedule = %id, missed = count, run, "missed due times");
            if !run {
                crate::telemetry::schedule_skip(id, "missed");
            }
        }
        let mut job = None;
        if run {
            if let Some(last) = self.running_job(&rec)? {
                rec.last_skip = Some(Skip {
                    time: latest,
                    reason: SkipReason::Overlap,
                    message: format!(
                        "the last run {} had not ended (overlap_policy SKIP)",
                        names::job_name(last)
                    ),
                });
                tracing::info!(schedule = %id, job = %last, "due time skipped: the last run has not ended");
                crate::telemetry::schedule_skip(id, "overlap");
            } else {
                job = Some(new_backup_job(&rec, Some(latest))?);
            }
        }
        Ok(Some(Plan { rec, latest, job }))
    }

    /// The schedule's record once its plan was carried out (`made`: the
    /// creation of its job, if it called for one): `fired_until` moves to
    /// the latest due time only if the job exists. Not stored yet.
    fn fired(
        &self,
        id: &str,
        p: Plan,
        made: Option<Result<JobRecord, EngineError>>,
    ) -> Result<ScheduleRecord, ScheduleError> {
        let mut rec = p.rec;
        match made {
            Some(Ok(j)) => {
                tracing::info!(schedule = %id, job = %j.id, due = %p.latest, "scheduled backup started");
                crate::telemetry::schedule_run(id);
                rec.last_job = Some(j.id);
            }
            // The job of this due time exists (made before a crash, and
            // the schedule changed since): it ran.
            Some(Err(EngineError::RequestIdReused(_, name))) => {
                rec.last_job = names::parse_job_name(&name).ok();
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
        rec.fired_until = p.latest;
        Ok(rec)
    }

    /// The fired record is durable: it becomes the schedule's.
    fn fired_saved(&self, id: &str, rec: ScheduleRecord) {
        if let Some(e) = lock(&self.entries).get_mut(id) {
            e.hold_until = None;
            e.first_try = None;
        }
        self.set_record(rec);
    }

    // ---- retention ----------------------------------------------------------

    /// Applies a schedule's retention now: starts the deletions it calls
    /// for (as DELETE_BACKUP jobs tagged with the schedule). Returns them.
    pub async fn apply_retention(&self, id: &str) -> Result<Vec<JobRecord>, ScheduleError> {
        let _g = self.hold(id, false).await?;
        let Some(rec) = lock(&self.entries).get(id).map(|e| e.rec.clone()) else {
            return Ok(Vec::new());
        };
        let Some(ret) = rec.retention.clone().filter(Retention::is_active) else {
            return Ok(Vec::new());
        };
        let name = rec.name();
        // Every job on the target: deletions by anyone count.
        let (jobs, _) = self.engine.list(
            &crate::engine::JobIndex::Target(rec.target.clone()),
            None,
            usize::MAX,
            |_| true,
        )?;
        // What the backend still has: a backup deleted behind Custos' back
        // must not count as one of the kept ones.
        let existing = self.listed_backups(&rec).await?;
        let doomed = retention::to_delete(
            &retention::Inputs {
                jobs: &jobs,
                schedule: &name,
                since: rec.create_time,
                exists: &|id| existing.contains(id),
            },
            &ret,
            self.now(),
        );
        let mut started = Vec::new();
        for backup_id in doomed {
            let job = self
                .engine
                .create(NewJob {
                    kind: JobKind::DeleteBackup,
                    target: rec.target.clone(),
                    backend: rec.backend.clone(),
                    op: Operation::DeleteBackup {
                        resource: resource_of(&rec)?,
                        backup_id: backup_id.clone(),
                    },
                    labels: rec.labels.clone(),
                    request_id: None,
                    schedule: Some(name.clone()),
                    created_by: Some(name.clone()),
                })
                .await?;
            tracing::info!(schedule = %id, backup = %backup_id, job = %job.id, "retention: deleting a backup");
            started.push(job);
        }
        Ok(started)
    }

    /// Every backup id the backend lists for the schedule's target.
    async fn listed_backups(&self, rec: &ScheduleRecord) -> Result<HashSet<String>, ScheduleError> {
        let entry = self.engine.backend(&rec.backend).ok_or_else(|| {
            ScheduleError::FailedPrecondition(format!(
                "backend {:?} is not configured",
                rec.backend
            ))
        })?;
        let resource = resource_of(rec)?;
        let mut ids = std::collections::HashSet::new();
        let mut token = String::new();
        for _ in 0..1000 {
            let page = self
                .engine
                .list_backups(entry, &resource, Some(1000), &token)
                .await
                .map_err(|e| {
                    ScheduleError::FailedPrecondition(format!(
                        "listing the backups of {} failed, so retention waits: {e}",
                        rec.target
                    ))
                })?;
            ids.extend(page.backups.into_iter().map(|b| b.id));
            if page.next_page_token.is_empty() || page.next_page_token == token {
                break;
            }
            token = page.next_page_token;
        }
        Ok(ids)
    }

    /// The schedules whose retention would delete anything (only they are
    /// worth their lock: the others' locks stay free for firing).
    fn with_retention(&self) -> Vec<String> {
        lock(&self.entries)
            .iter()
            .filter(|(_, e)| e.rec.retention.as_ref().is_some_and(Retention::is_active))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Retention after each successful scheduled backup, and a sweep of
    /// every schedule every [`RETENTION_SWEEP`], until shutdown.
    pub async fn run_retention(self: Arc<Self>) {
        let mut events = self.engine.subscribe();
        let mut sweep = tokio::time::interval(RETENTION_SWEEP);
        loop {
            let ids: Vec<String> = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = sweep.tick() => self.with_retention(),
                ev = events.recv() => match ev {
                    Ok(ev) => {
                        let j = &ev.job;
                        match (&j.schedule, j.kind, j.state) {
                            (Some(s), JobKind::Backup, JobState::Succeeded) => {
                                let Some(id) = s.strip_prefix("schedules/") else { continue };
                                let active = lock(&self.entries).get(id).is_some_and(|e| {
                                    e.rec.retention.as_ref().is_some_and(Retention::is_active)
                                });
                                if !active {
                                    continue;
                                }
                                vec![id.to_string()]
                            }
                            _ => continue,
                        }
                    }
                    // Fell behind: look at every schedule with retention.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        self.with_retention()
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            for id in ids {
                if let Err(e) = self.apply_retention(&id).await {
                    tracing::warn!(schedule = %id, error = %e, "retention failed; it runs again after the next backup or sweep");
                }
            }
        }
    }
}

/// Records the due times that passed while the schedule was paused.
fn skip_paused_window(rec: &mut ScheduleRecord, now: DateTime<Utc>) {
    let Ok(cron) = CronSchedule::parse(&rec.cron, &rec.time_zone) else {
        return;
    };
    let (count, _, latest) = window(&cron, rec.fired_until, now);
    if let Some(latest) = latest {
        rec.last_skip = Some(Skip {
            time: latest,
            reason: SkipReason::Paused,
            message: format!("{count} due time(s) passed while the schedule was paused"),
        });
    }
}

/// The due times in `(after, until]`: how many (counted up to
/// [`MAX_WINDOW`]), the first and the latest.
fn window(
    cron: &CronSchedule,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
) -> (usize, Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let mut count = 0;
    let mut first = None;
    let mut latest = None;
    let mut t = after;
    while let Some(n) = cron.next_after(t) {
        if n > until {
            return (count, first, latest);
        }
        count += 1;
        first.get_or_insert(n);
        latest = Some(n);
        t = n;
        if count >= MAX_WINDOW {
            // A huge window (an every-second schedule after a long
            // downtime): the latest due time is what matters.
            return (count, first, latest_due(cron, t, until).or(latest));
        }
    }
    (count, first, latest)
}

/// The latest due time in `(after, until]`, found by looking back from
/// `until` in growing strides.
fn latest_due(
    cron: &CronSchedule,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let mut stride = chrono::Duration::seconds(1);
    loop {
        let from = until.checked_sub_signed(stride)?.max(after);
        let mut best = None;
        let mut t = from;
        while let Some(n) = cron.next_after(t) {
            if n > until {
                break;
            }
            best = Some(n);
            t = n;
        }
        if best.is_some() || from <= after {
            return best;
        }
        stride = stride.checked_mul(4)?;
    }
}

fn resource_of(rec: &ScheduleRecord) -> Result<custos_adapter_core::Resource, ScheduleError> {
    names::parse_target(&rec.target)
        .map(|t| t.resource)
        .map_err(|e| ScheduleError::FailedPrecondition(format!("stored target: {e}")))
}

/// The backup job a schedule makes (for a due time, or run now).
fn new_backup_job(
    rec: &ScheduleRecord,
    due: Option<DateTime<Utc>>,
) -> Result<NewJob, ScheduleError> {
    Ok(NewJob {
        kind: JobKind::Backup,
        target: rec.target.clone(),
        backend: rec.backend.clone(),
        op: Operation::CreateBackup {
            resource: resource_of(rec)?,
            incremental: rec.incremental,
        },
        labels: rec.labels.clone(),
        request_id: due.map(|d| fire_request_id(&rec.id, d)),
        schedule: Some(rec.name()),
        created_by: Some(rec.name()),
    })
}

#[cfg(test)]
mod tests;
