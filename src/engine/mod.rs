//! The job engine's registry: accepts requests as durable jobs, keeps the
//! live ones, answers reads with flushed state only, and supervises one
//! driver per target queue head (`driver.rs` holds what a driver does);
//! the jobs queued behind a head are queue entries, not tasks, and a head
//! waiting for its next poll is a timer entry (`parking.rs`), not a task.
//!
//! Invariants:
//! - a live job is hot (its record in memory, `Live`) or, while parked,
//!   cold (only its version here; every version durable and published,
//!   the record in the store);
//! - every change of a job is written and flushed before it is acted on or
//!   reported (`Engine::update`); readers and watchers see a change only
//!   once it is durable (`Live::published`), in the order it was made;
//! - a job's acceptance does not depend on the RPC that asked for it: the
//!   write, the flush and the start run in a task of their own;
//! - the head of each target's queue, once durable, has exactly one driver
//!   (`Engine::supervise`), running in the job's one task or parked
//!   (`Slot`); the jobs behind it have none until their turn
//!   (`start_if_head`, called when the head ends, a job is accepted or a
//!   queued job is cancelled); a driver that fails on the store or panics
//!   is restarted, and a job that ends always releases its target;
//! - backend calls hold a per-backend and then a global permit, including
//!   the synchronous ones (`list_backups`, `validate`); waiting holds none.

mod driver;
mod parking;
mod targets;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use chrono::Utc;
use custos_adapter_core::{
    Backend, BackendError, BackupInfo, BackupPage, FieldViolation, Operation, Resource,
    backoff::Backoff,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use uuid::Uuid;

pub use crate::store::JobIndex;
use crate::{
    config::BackendTiming,
    job::{JobKind, JobRecord, JobState, Phase},
    store::{Store, StoreError},
};
use parking::{Parking, Resume};
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
    /// A new job was written but its flush failed: it may or may not be
    /// durable. It is kept, and runs once a later flush succeeds (the
    /// engine retries); if the daemon stops first, it runs after the
    /// restart if the store kept it.
    #[error(
        "the outcome is unknown: job {} was written, but the store could not make it durable ({error}); \
         it runs once the store recovers, or after a restart if the store kept it. \
         Do not send this request again with a new request_id: the same request_id gets this job",
        crate::names::job_name(*.job)
    )]
    CreationUnknown { job: Uuid, error: StoreError },
    /// A job whose creation was written but is not durable yet: its
    /// flush failed and is being retried (the caller was told
    /// `CreationUnknown`), or is under way. Readers cannot see it yet,
    /// and it cannot be cancelled yet; it is not gone.
    #[error(
        "job {} was written, but the store has not made it durable yet; \
         it runs once the store recovers, or after a restart if the store kept it: ask again later",
        crate::names::job_name(*.0)
    )]
    NotDurable(Uuid),
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
    /// Who asked (a client token's name, or `schedules/{id}`).
    pub created_by: Option<String>,
}

/// The prefix of a fingerprint kept as a SHA-256 digest.
const DIGEST_PREFIX: &str = "s256:";

impl NewJob {
    /// What the request asks for, canonical JSON: what fingerprints were
    /// before they became digests (records stored then keep it).
    fn fingerprint_json(&self) -> String {
        let mut v = serde_json::json!({
            "kind": self.kind, "target": self.target, "op": self.op, "labels": self.labels,
        });
        // Only where set, so that fingerprints stored before schedules
        // existed still match.
        if let Some(s) = &self.schedule {
            v["schedule"] = serde_json::Value::String(s.clone());
        }
        v.to_string()
    }

    /// A digest of what the request asks for, to compare retries: 69 bytes
    /// on every record, instead of the whole request again.
    fn fingerprint(&self) -> String {
        use std::fmt::Write;
        let d = ring::digest::digest(&ring::digest::SHA256, self.fingerprint_json().as_bytes());
        let mut s = String::with_capacity(DIGEST_PREFIX.len() + 64);
        s.push_str(DIGEST_PREFIX);
        for b in d.as_ref() {
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    /// Whether `stored` (a record's fingerprint, a digest or the JSON of
    /// older records) is this request's.
    fn same_as(&self, stored: Option<&str>) -> bool {
        match stored {
            Some(f) if f.starts_with(DIGEST_PREFIX) => f == self.fingerprint(),
            Some(f) => f == self.fingerprint_json(),
            None => false,
        }
    }
}

/// What `create_many` found for one request: the index of its new job
/// among those written (`Ok(Ok(i))`), the job an earlier request with the
/// same `request_id` made (`Ok(Err(id))`), or why it failed.
type Staged = Result<Result<usize, Uuid>, EngineError>;

/// A `create` waiting for its turn in the intake, with where its answer goes.
type Intake = (
    NewJob,
    tokio::sync::oneshot::Sender<Result<JobRecord, EngineError>>,
);

/// At most this many `create`s share one write (and one task).
const INTAKE_GROUP: usize = 256;

/// How long a retry waits for the creation of its request's job to settle
/// before it is told to try again.
const CREATION_SETTLES: Duration = Duration::from_secs(30);

/// Limits and clocks of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    pub max_running: usize,
    pub job_history: Duration,
}

/// One durable change of a job, as announced to watchers. `seq` grows with
/// every change of the same job (within this process), so a watcher that
/// re-read a snapshot can skip older events.
#[derive(Debug)]
pub struct JobEvent {
    pub seq: u64,
    /// Shared with the live entry: a waiting job's record is held once.
    pub job: Arc<JobRecord>,
}

/// A live (non-terminal, or terminal but not yet published) job.
struct Live {
    /// Authoritative; may hold a change that is not durable yet. Shared
    /// with `published` once that change is durable (one copy per job).
    rec: Arc<JobRecord>,
    /// Bumped by every write of `rec`.
    seq: u64,
    /// The newest durable version: what readers and watchers see. `None`
    /// until the job's creation is flushed.
    published: Option<Arc<JobEvent>>,
    published_seq: u64,
}

pub struct Engine {
    store: Store,
    backends: HashMap<String, BackendEntry>,
    global: Arc<Semaphore>,
    /// Live jobs. The map's lock only finds an entry; each job has its own
    /// lock, under which its changes are encoded and written (so that store
    /// order = change order without serialising all jobs). Std mutexes:
    /// never held across an await. Lock order: a job's, then the map's.
    live: Mutex<HashMap<Uuid, LiveEntry>>,
    /// Serialises the idempotency check with the insert (`stage_many`).
    /// A tokio mutex: a group waiting for another's write yields its
    /// worker, so that watchers, drivers and RPCs keep running during a
    /// burst (with a std mutex both workers could sit in creation, one
    /// writing and one blocked, and a watcher fell 8,192 events behind).
    create_lock: tokio::sync::Mutex<()>,
    /// Where `create` queues its job for the intake task, which writes the
    /// jobs queued meanwhile in one batch (`Engine::intake`).
    intake_tx: tokio::sync::mpsc::UnboundedSender<Intake>,
    /// Taken by the intake task when the first job is created.
    intake_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Intake>>>,
    /// Told (all waiters) each time the new jobs of a write were accepted
    /// (`Engine::existing_settled`).
    settled: tokio::sync::Notify,
    targets: TargetQueues,
    /// One entry per job that has a driver, running or parked.
    drivers: Mutex<HashMap<Uuid, Slot>>,
    /// Jobs waiting for their next poll without a task.
    parking: Arc<Parking>,
    /// Whether the task that wakes parked jobs runs.
    waking: std::sync::atomic::AtomicBool,
    events: broadcast::Sender<Arc<JobEvent>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    settings: EngineSettings,
    /// This engine, for background tasks that must not keep it alive.
    me: std::sync::Weak<Engine>,
}

/// A live job in the engine's map.
enum LiveEntry {
    Hot(Arc<Mutex<Live>>),
    /// A parked job whose record is held only by the store (and sled's
    /// cache): every version is durable and published, the last one with
    /// this `seq`. Made hot again by the first change or driver
    /// (`Engine::entry_checked`); readers read the store without that.
    Cold(u64),
}

/// What `Engine::peek` finds.
enum Peek {
    Hot(Arc<Mutex<Live>>),
    Cold(u64),
    Absent,
}

/// The driver of a job.
enum Slot {
    /// A task drives the job; its wake-up for cancellation.
    Running(CancellationToken),
    /// The job waits for its next poll in `Engine::parking`, with no task.
    Parked,
}

/// The one info line (and the metrics) of a job's state change.
fn log_state(j: &JobRecord) {
    crate::telemetry::job_state(j);
    tracing::info!(
        job = %j.id,
        kind = j.kind.as_str(),
        target = %j.target,
        backend = %j.backend,
        state = j.state.as_str(),
        detail = %j.message,
        "job state"
    );
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Room in the event channel; a watcher further behind is told so.
pub const EVENT_BUFFER: usize = 8192;

impl Engine {
    pub fn new(
        store: Store,
        backends: Vec<BackendEntry>,
        settings: EngineSettings,
        shutdown: CancellationToken,
    ) -> Arc<Engine> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (intake_tx, intake_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new_cyclic(|me| Engine {
            store,
            backends: backends.into_iter().map(|b| (b.name.clone(), b)).collect(),
            global: Arc::new(Semaphore::new(settings.max_running.max(1))),
            live: Mutex::new(HashMap::new()),
            create_lock: tokio::sync::Mutex::new(()),
            intake_tx,
            intake_rx: Mutex::new(Some(intake_rx)),
            settled: tokio::sync::Notify::new(),
            targets: TargetQueues::default(),
            drivers: Mutex::new(HashMap::new()),
            parking: Arc::default(),
            waking: std::sync::atomic::AtomicBool::new(false),
            events,
            shutdown,
            tasks: TaskTracker::new(),
            settings,
            me: me.clone(),
        })
    }

    /// The store the engine writes jobs to (schedules are kept beside them).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn backends(&self) -> impl Iterator<Item = &BackendEntry> {
        self.backends.values()
    }

    pub fn backend(&self, name: &str) -> Option<&BackendEntry> {
        self.backends.get(name)
    }

    /// How many watchers are subscribed (each watch stream holds one).
    pub fn watchers(&self) -> usize {
        self.events.receiver_count()
    }

    /// Every durable change of any job, in the order the changes were made.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<JobEvent>> {
        self.events.subscribe()
    }

    // ---- synchronous backend calls, under the same permits as jobs ------

    /// The adapter's static checks of an operation (no network).
    pub fn check(&self, entry: &BackendEntry, op: &Operation) -> Vec<FieldViolation> {
        entry.backend.check(op)
    }

    pub async fn list_backups(
        &self,
        entry: &BackendEntry,
        resource: &Resource,
        page_size: Option<u32>,
        page_token: &str,
    ) -> Result<BackupPage, BackendError> {
        let _p = self.permits(entry).await;
        crate::telemetry::timed(
            &entry.name,
            "list_backups",
            entry.backend.list_backups(resource, page_size, page_token),
        )
        .await
    }

    /// One backup of `resource` (a synchronous call to the backend).
    pub async fn get_backup(
        &self,
        entry: &BackendEntry,
        resource: &Resource,
        backup_id: &str,
    ) -> Result<Option<BackupInfo>, BackendError> {
        let _p = self.permits(entry).await;
        crate::telemetry::timed(
            &entry.name,
            "get_backup",
            entry.backend.get_backup(resource, backup_id),
        )
        .await
    }

    pub async fn validate(
        &self,
        entry: &BackendEntry,
        op: &Operation,
    ) -> Result<String, BackendError> {
        let _p = self.permits(entry).await;
        crate::telemetry::timed(&entry.name, "validate", entry.backend.validate(op)).await
    }

    /// A per-backend permit, then a global one: a backend at its limit
    /// queues its own jobs without holding global slots that other
    /// backends could use.
    async fn permits(&self, entry: &BackendEntry) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
        let b = entry.permits.clone().acquire_owned().await;
        let g = self.global.clone().acquire_owned().await;
        match (b, g) {
            (Ok(b), Ok(g)) => (b, g),
            _ => unreachable!("the engine never closes its semaphores"),
        }
    }

    // ---- start-up ---------------------------------------------------------

    /// Loads every non-terminal job and starts driving it again. Jobs that
    /// were running get their target first, so the order survives restarts.
    /// Jobs of a backend no longer configured stay listed and cancellable
    /// (while PENDING), with a message saying why they do not run.
    pub async fn resume(self: &Arc<Self>) -> Result<usize, StoreError> {
        let store = self.store.clone();
        let mut jobs = tokio::task::spawn_blocking(move || store.live_jobs())
            .await
            .map_err(|e| StoreError::Io(format!("reading live jobs failed: {e}")))??;
        jobs.sort_by_key(|j| (j.state != JobState::Running, j.id));
        let n = jobs.len();
        let mut orphans = Vec::new();
        for j in jobs {
            let id = j.id;
            let target = j.target.clone();
            let configured = self.backends.contains_key(&j.backend);
            let backend = j.backend.clone();
            let j = Arc::new(j);
            let published = Arc::new(JobEvent {
                seq: 1,
                job: j.clone(),
            });
            // Into `live` before the queue: a head that ends meanwhile and
            // looks for the next must find it live (review finding).
            lock(&self.live).insert(
                id,
                LiveEntry::Hot(Arc::new(Mutex::new(Live {
                    rec: j,
                    seq: 1,
                    published: Some(published),
                    published_seq: 1,
                }))),
            );
            if configured {
                self.targets.enqueue(&target, id);
            } else {
                orphans.push((id, backend));
            }
            // Only the head of each target's queue gets a driver now; the
            // others get theirs when their turn comes.
            if configured && self.targets.head(&target) == Some(id) {
                self.supervise(id, target.clone());
            }
        }
        for (id, backend) in orphans {
            tracing::error!(job = %id, %backend, "job names a backend that is no longer configured; it waits (cancel it if PENDING, or configure the backend again)");
            let msg = format!(
                "backend {backend:?} is no longer configured: this job cannot run until it is configured again (a PENDING job can be cancelled)"
            );
            self.update(&id, |j| set_message(j, msg)).await?;
        }
        Ok(n)
    }

    // ---- creating -----------------------------------------------------------

    /// Creates a job (or returns the one created before with the same
    /// `request_id`), durably, and starts it. The work runs in the intake
    /// task and its group's task (`Engine::intake`), not the caller's: a
    /// caller that goes away (deadline, reset) cannot leave a stored job
    /// without a driver.
    pub async fn create(self: &Arc<Self>, new: NewJob) -> Result<JobRecord, EngineError> {
        if self.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        if let Some(rx) = lock(&self.intake_rx).take() {
            tokio::spawn(Engine::intake(self.me.clone(), rx));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lost = || {
            EngineError::Store(StoreError::Io(
                "creating the job failed: the engine's intake stopped".into(),
            ))
        };
        self.intake_tx.send((new, tx)).map_err(|_| lost())?;
        rx.await.map_err(|_| lost())?
    }

    /// Group commit for `create`: the jobs queued while the last group
    /// was being written are written together, in one batch, then flushed and
    /// answered in a task of their own while the next group is written.
    /// A caller that goes away does not stop its job's creation.
    /// It holds no strong reference to the engine while it waits.
    async fn intake(
        me: std::sync::Weak<Engine>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Intake>,
    ) {
        while let Some(first) = rx.recv().await {
            let mut group = vec![first];
            while group.len() < INTAKE_GROUP {
                match rx.try_recv() {
                    Ok(x) => group.push(x),
                    Err(_) => break,
                }
            }
            let Some(engine) = me.upgrade() else { return };
            let (news, answers): (Vec<NewJob>, Vec<_>) = group.into_iter().unzip();
            // This task creates every job: a panic while writing one
            // group must not end it (its callers get an error).
            let held = engine.create_lock.lock().await;
            let staged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                engine.stage_many(&news, &held)
            }));
            drop(held);
            let Ok(staged) = staged else {
                tracing::error!(jobs = news.len(), "writing new jobs panicked");
                continue;
            };
            tokio::spawn(async move {
                // Each caller is answered as soon as its own answer is
                // known: a retry that waits for another creation to
                // settle holds up no one else in its group.
                let mut answers: Vec<_> = answers.into_iter().map(Some).collect();
                engine
                    .finish_many(&news, staged, |i, r| {
                        if let Some(a) = answers.get_mut(i).and_then(Option::take) {
                            let _ = a.send(r);
                        }
                    })
                    .await;
            });
        }
    }

    /// The job an earlier request with the same `request_id` made (after
    /// a flush, so it is durable), if it asked for the same.
    fn existing(&self, new: &NewJob, id: Uuid) -> Result<JobRecord, EngineError> {
        let old = match self.get(&id)? {
            Some(j) => j,
            // Created a moment ago and flushed by our flush; not yet
            // published by its creator.
            None => self
                .store
                .get_job(&id)?
                .ok_or_else(|| EngineError::NotFound(crate::names::job_name(id)))?,
        };
        if !new.same_as(old.fingerprint.as_deref()) {
            return Err(EngineError::RequestIdReused(
                new.request_id.clone().unwrap_or_default(),
                crate::names::job_name(id),
            ));
        }
        Ok(old)
    }

    /// New jobs are durable: each is published, a retry waiting for one
    /// of them is woken, and each target's head is started (each target
    /// once, after all of its new jobs were published).
    fn accept_all(self: &Arc<Self>, fresh: &[JobRecord]) {
        if fresh.is_empty() {
            return;
        }
        let mut targets = std::collections::HashSet::new();
        for rec in fresh {
            log_state(rec);
            if let Some(shared) = self.entry(&rec.id).map(|e| lock(&e).rec.clone()) {
                self.publish(shared, 1);
            }
            targets.insert(rec.target.clone());
        }
        self.settled.notify_waiters();
        for t in &targets {
            self.start_if_head(t);
        }
    }

    /// Creates several jobs, each as [`Engine::create`] would, with one
    /// flush for all of them (a scheduler tick's due runs): the answers
    /// come in the order of `news`. Each job is published and started
    /// only after that flush; if it fails, none of the new ones is
    /// accepted. Runs in a task of its own, like `create`.
    pub async fn create_many(
        self: &Arc<Self>,
        news: Vec<NewJob>,
    ) -> Vec<Result<JobRecord, EngineError>> {
        let n = news.len();
        if self.shutdown.is_cancelled() {
            return (0..n).map(|_| Err(EngineError::ShuttingDown)).collect();
        }
        let me = self.clone();
        match tokio::spawn(async move { me.create_many_detached(news).await }).await {
            Ok(r) => r,
            Err(e) => {
                let e = StoreError::Io(format!("creating the jobs failed: {e}"));
                (0..n).map(|_| Err(EngineError::Store(e.clone()))).collect()
            }
        }
    }

    async fn create_many_detached(
        self: Arc<Self>,
        news: Vec<NewJob>,
    ) -> Vec<Result<JobRecord, EngineError>> {
        // On this task's worker, like `create`'s write. Moved to a
        // blocking thread (tried), the batches' writes lost the CPU to the
        // drivers and readers, and P5 got slower (median of 3: 1.77 s
        // against 1.46 s).
        let held = self.create_lock.lock().await;
        let staged = self.stage_many(&news, &held);
        drop(held);
        let mut results: Vec<Option<Result<JobRecord, EngineError>>> =
            (0..news.len()).map(|_| None).collect();
        self.finish_many(&news, staged, |i, r| {
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(r);
            }
        })
        .await;
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(EngineError::Store(StoreError::Io(
                        "creating the job failed: no answer was made for it".into(),
                    )))
                })
            })
            .collect()
    }

    /// The second half of creating jobs after `stage_many`: one flush,
    /// then each new job is accepted (or, if the flush failed, held until
    /// one succeeds), and each request's answer is given to `answer` with
    /// its index in `news`, as soon as it is known. A retry of a job that
    /// another write is still creating waits for that creation to settle
    /// (up to `CREATION_SETTLES`); such retries wait together, and no
    /// other answer waits for them (review finding: they were awaited one
    /// after the other, before any answer of the group was sent, so that
    /// 40 retries of held jobs could keep a whole group waiting 20
    /// minutes).
    async fn finish_many(
        self: &Arc<Self>,
        news: &[NewJob],
        (staged, fresh): (Vec<Staged>, Vec<JobRecord>),
        mut answer: impl FnMut(usize, Result<JobRecord, EngineError>),
    ) {
        // Nothing written and nothing to look up: no flush to wait for.
        if staged.iter().all(Result::is_err) {
            for (i, s) in staged.into_iter().enumerate() {
                if let Err(e) = s {
                    answer(i, Err(e));
                }
            }
            return;
        }
        let flushed = self.store.flush().await;
        match &flushed {
            Ok(()) => self.accept_all(&fresh),
            // Written, durable or not: nothing can take them back out for
            // sure (redb refuses writes after a failed commit; a crash
            // loses sled's unflushed removal), so they are kept, not
            // started, and accepted once a flush succeeds.
            Err(e) if !fresh.is_empty() => {
                tracing::error!(jobs = fresh.len(), error = %e, "the store could not make new jobs durable; they start once a flush succeeds");
                self.accept_once_durable(fresh.clone());
            }
            Err(_) => {}
        }
        let mut settling = futures_util::stream::FuturesUnordered::new();
        for (i, (new, staged)) in news.iter().zip(staged).enumerate() {
            let r = match (staged, &flushed) {
                (Err(e), _) => Err(e),
                (Ok(Ok(f)), Ok(())) => Ok(fresh[f].clone()),
                (Ok(Ok(f)), Err(e)) => Err(EngineError::CreationUnknown {
                    job: fresh[f].id,
                    error: e.clone(),
                }),
                // The same request twice in this group.
                (Ok(Err(id)), Err(e)) if fresh.iter().any(|r| r.id == id) => {
                    Err(EngineError::CreationUnknown {
                        job: id,
                        error: e.clone(),
                    })
                }
                (Ok(Err(id)), _) => {
                    settling.push(async move { (i, self.existing_settled(new, id).await) });
                    continue;
                }
            };
            answer(i, r);
        }
        while let Some((i, r)) = futures_util::StreamExt::next(&mut settling).await {
            answer(i, r);
        }
    }

    /// [`Engine::existing`], once the creation of that job has settled:
    /// a job that another write is still creating (written, not yet
    /// durable, or held after its flush failed) is waited for, so that a
    /// retry is answered with the job once it is durable, never before
    /// (review finding), or told to send the request again.
    async fn existing_settled(&self, new: &NewJob, id: Uuid) -> Result<JobRecord, EngineError> {
        let retry = |why: &str| {
            EngineError::Store(StoreError::Io(format!(
                "the job {} of an earlier request with request_id {:?} {why}; send the request again",
                crate::names::job_name(id),
                new.request_id.as_deref().unwrap_or_default()
            )))
        };
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let creating = matches!(self.peek(&id), Peek::Hot(e) if lock(&e).published.is_none());
            if !creating {
                break;
            }
            if tokio::time::timeout(CREATION_SETTLES, settled)
                .await
                .is_err()
            {
                return Err(retry("is still being made durable"));
            }
        }
        match self.existing(new, id) {
            Err(EngineError::NotFound(_)) => Err(retry("is not in the store")),
            r => r,
        }
    }

    /// Under the create lock: for each request the job made before with
    /// its request id (`Err(id)`), or a new one (`Ok(i)`: `fresh[i]`),
    /// `live` but unpublished, queued on its target; the new ones are
    /// written (not yet durable: `Store::create_jobs`). If a write fails,
    /// the jobs written before it go on as any new job (never taken back
    /// out of the store), and each of the others is that error.
    fn stage_many(
        &self,
        news: &[NewJob],
        _held: &tokio::sync::MutexGuard<'_, ()>,
    ) -> (Vec<Staged>, Vec<JobRecord>) {
        let fingerprints: Vec<String> = news.iter().map(NewJob::fingerprint).collect();
        let mut staged = Vec::with_capacity(news.len());
        let mut fresh: Vec<JobRecord> = Vec::new();
        // Request ids made in this batch (not in the store yet).
        let mut made: HashMap<&str, Uuid> = HashMap::new();
        for (new, fingerprint) in news.iter().zip(fingerprints) {
            let before = match new.request_id.as_deref() {
                Some(r) => match made.get(r) {
                    Some(id) => Ok(Some(*id)),
                    None => self.store.job_for_request(r),
                },
                None => Ok(None),
            };
            staged.push(match before {
                Ok(Some(id)) => Ok(Err(id)),
                Ok(None) => {
                    let rec = self.go_live(new, fingerprint);
                    if let Some(r) = new.request_id.as_deref() {
                        made.insert(r, rec.id);
                    }
                    fresh.push(rec);
                    Ok(Ok(fresh.len() - 1))
                }
                Err(e) => Err(e.into()),
            });
        }
        if let Err((written, e)) = self.store.create_jobs(&fresh) {
            // The jobs written before the failure are in the store like
            // any new job (never taken back out: flushed, then accepted,
            // or held if the flush fails); the others are not, and their
            // requests get the error.
            {
                let mut live = lock(&self.live);
                for rec in &fresh[written..] {
                    live.remove(&rec.id);
                }
            }
            staged = staged
                .into_iter()
                .map(|s| match s {
                    Ok(Ok(i)) if i >= written => Err(e.clone().into()),
                    other => other,
                })
                .collect();
            fresh.truncate(written);
        }
        for rec in &fresh {
            self.targets.enqueue(&rec.target, rec.id);
        }
        (staged, fresh)
    }

    /// A new job's record, put in `live` (unpublished) before it is
    /// written, so that a reader that finds the record in the store also
    /// finds it there (and sees it only once published).
    fn go_live(&self, new: &NewJob, fingerprint: String) -> JobRecord {
        let mut rec = JobRecord::new(
            new.kind,
            new.target.clone(),
            new.backend.clone(),
            new.op.clone(),
            new.labels.clone(),
        );
        rec.request_id = new.request_id.clone();
        rec.schedule = new.schedule.clone();
        rec.created_by = new.created_by.clone();
        rec.fingerprint = Some(fingerprint);
        // Into `live` before the store, so a reader that finds the record
        // in the store also finds it here (and sees it only once
        // published).
        lock(&self.live).insert(
            rec.id,
            LiveEntry::Hot(Arc::new(Mutex::new(Live {
                rec: Arc::new(rec.clone()),
                seq: 1,
                published: None,
                published_seq: 0,
            }))),
        );
        rec
    }

    /// Retries a failed flush until one succeeds, then accepts the new
    /// jobs whose own flush had failed (written, kept unpublished and not
    /// started meanwhile). Stops at shutdown: the next start runs the ones
    /// the store kept.
    fn accept_once_durable(self: &Arc<Self>, held: Vec<JobRecord>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = me.shutdown.cancelled() => return,
                }
                match me.store.flush().await {
                    Ok(()) => break,
                    Err(e) => tracing::warn!(error = %e, "store flush failed; retrying"),
                }
            }
            me.accept_all(&held);
        });
    }

    // ---- reading ------------------------------------------------------------

    /// The job as last made durable.
    pub fn get(&self, id: &Uuid) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.snapshot(id)?.map(|(_, j)| j))
    }

    /// [`Engine::snapshot`], or why the job is not there: its creation is
    /// written but not durable yet (`NotDurable`: held after a failed
    /// flush, or flushing), or there is no such job (review finding: a
    /// job held after a failed flush, which its caller had been told runs
    /// once the store recovers, was NOT_FOUND). A job that changed between
    /// the read and the look (made durable, ended) is read again.
    pub fn snapshot_or_missing(&self, id: &Uuid) -> Result<(u64, JobRecord), EngineError> {
        for _ in 0..3 {
            if let Some(s) = self.snapshot(id)? {
                return Ok(s);
            }
            match self.peek(id) {
                Peek::Hot(e) if lock(&e).published.is_none() => {
                    return Err(EngineError::NotDurable(*id));
                }
                Peek::Absent if self.store.get_job(id)?.is_none() => break,
                _ => continue,
            }
        }
        Err(EngineError::NotFound(crate::names::job_name(*id)))
    }

    /// The job as last made durable, with the `seq` of that version
    /// (`u64::MAX` for a job that has ended: no event follows it).
    pub fn snapshot(&self, id: &Uuid) -> Result<Option<(u64, JobRecord)>, StoreError> {
        let published = |e: &Mutex<Live>| {
            let l = lock(e);
            l.published.as_ref().map(|p| {
                let mut j = (*p.job).clone();
                self.note_waiting(&mut j);
                (p.seq, j)
            })
        };
        let before = match self.peek(id) {
            Peek::Hot(e) => return Ok(published(&e)),
            Peek::Cold(seq) => Some(seq),
            Peek::Absent => None,
        };
        let stored = self.store.get_job(id)?;
        match (self.peek(id), before) {
            // Created (or made hot) between the two looks: only its
            // published state counts.
            (Peek::Hot(e), _) => Ok(published(&e)),
            // Cold throughout, unchanged: what the store holds is durable.
            (Peek::Cold(seq), Some(b)) if seq == b => Ok(stored.map(|mut j| {
                self.note_waiting(&mut j);
                (seq, j)
            })),
            // Changed and parked again, or ended and gone, in between:
            // what was read may be older; read once more (review finding:
            // a cold job's old version was returned as its last).
            (Peek::Cold(_), _) | (Peek::Absent, Some(_)) => self.snapshot(id),
            (Peek::Absent, None) => Ok(stored.map(|j| (u64::MAX, j))),
        }
    }

    /// A PENDING job queued behind another job on its target says so. The
    /// wait is derived here, never stored: queueing costs no write. Applied
    /// to every job the API shows; a change of the job ahead publishes
    /// nothing, so a watcher sees the message as of the job's last change.
    pub fn note_waiting(&self, j: &mut JobRecord) {
        if let Some(m) = self.waiting_message(j) {
            j.message = m;
        }
    }

    /// What a PENDING job queued behind another waits for, if it is.
    pub fn waiting_message(&self, j: &JobRecord) -> Option<String> {
        if j.state != JobState::Pending {
            return None;
        }
        let h = self.targets.head(&j.target).filter(|h| *h != j.id)?;
        Some(format!(
            "waiting for {} to finish on the same target",
            crate::names::job_name(h)
        ))
    }

    /// Jobs of `index` newest first that pass `keep`, after `before`;
    /// returns the page and whether more may follow. Only the index's jobs
    /// are read, each as last made durable.
    pub fn list(
        &self,
        index: &JobIndex,
        before: Option<Uuid>,
        page_size: usize,
        keep: impl Fn(&JobRecord) -> bool,
    ) -> Result<(Vec<JobRecord>, bool), StoreError> {
        let mut out = Vec::new();
        for id in self.store.job_ids(index, before) {
            let Some(rec) = self.get(&id?)? else {
                continue;
            };
            if keep(&rec) {
                if out.len() == page_size {
                    return Ok((out, true));
                }
                out.push(rec);
            }
        }
        Ok((out, false))
    }

    // ---- changing -----------------------------------------------------------

    /// Cancels a job that has sent nothing to its backend yet: PENDING, or
    /// RUNNING but waiting to (re)try before its submit. A job whose remote
    /// operation exists (or may exist) is refused with the reason.
    pub async fn cancel(&self, id: &Uuid) -> Result<JobRecord, EngineError> {
        let name = crate::names::job_name(*id);
        let (_, current) = self.snapshot_or_missing(id)?;
        if current.state.is_terminal() {
            return Err(EngineError::FailedPrecondition(format!(
                "job {name} already ended {}",
                current.state.as_str()
            )));
        }
        let mut refusal = None;
        let updated = self
            .update(id, |j| {
                let nothing_sent = j.state == JobState::Pending
                    || (j.state == JobState::Running && j.phase == Phase::Queued);
                if nothing_sent {
                    let msg = if j.state == JobState::Pending {
                        "cancelled before it started"
                    } else {
                        "cancelled before anything was sent to the backend"
                    };
                    end(j, JobState::Cancelled, msg.into());
                    true
                } else {
                    refusal = Some(match j.phase {
                        Phase::Submitting => format!(
                            "job {name} is {}: its submit may have reached the backend and is being checked, so it cannot be cancelled now",
                            j.state.as_str()
                        ),
                        _ => format!(
                            "job {name} is {}: the remote operation{} cannot be stopped on this backend",
                            j.state.as_str(),
                            j.handle
                                .as_ref()
                                .map(|h| format!(" {}", h.display))
                                .unwrap_or_default()
                        ),
                    });
                    false
                }
            })
            .await?;
        match updated {
            Some(rec) => {
                let driver = match lock(&self.drivers).get(id) {
                    Some(Slot::Running(t)) => Some(Some(t.clone())),
                    // Only a polling job parks, and it cannot be cancelled.
                    Some(Slot::Parked) => Some(None),
                    None => None,
                };
                match driver {
                    Some(Some(t)) => t.cancel(),
                    Some(None) => {}
                    // Queued without a driver: the queue moves on.
                    None => {
                        if let Some(me) = self.me.upgrade() {
                            me.start_if_head(&rec.target);
                        }
                    }
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
    /// waits for durability and publishes it. `None` when the job is not
    /// live, has ended, or nothing changed. Every change of a job goes
    /// through here.
    async fn update(
        &self,
        id: &Uuid,
        change: impl FnOnce(&mut JobRecord) -> bool,
    ) -> Result<Option<JobRecord>, StoreError> {
        let Some(entry) = self.entry_checked(id)? else {
            return Ok(None);
        };
        let (rec, seq, was) = {
            let mut l = lock(&entry);
            if l.rec.state.is_terminal() {
                return Ok(None);
            }
            let was = l.rec.state;
            let mut rec = (*l.rec).clone();
            if !change(&mut rec) {
                return Ok(None);
            }
            // The history: changes of state or phase, and retries.
            if rec.state != l.rec.state || rec.phase != l.rec.phase || rec.attempts > l.rec.attempts
            {
                rec.record_event(Utc::now());
            }
            // Written under the lock so that store order = change order.
            self.store.update_job(&rec)?;
            let rec = Arc::new(rec);
            l.rec = rec.clone();
            l.seq += 1;
            (rec, l.seq, was)
        };
        if rec.state != was {
            log_state(&rec);
        }
        if let Err(e) = self.store.flush().await {
            // Written but not yet durable: publish it once a flush
            // succeeds, so readers never see a state older than the store's
            // for good (the caller still gets the error).
            self.publish_when_durable(rec, seq);
            return Err(e);
        }
        self.publish(rec.clone(), seq);
        Ok(Some((*rec).clone()))
    }

    /// Retries the flush in the background until one succeeds, then
    /// publishes `rec` (unless a newer version was published meanwhile).
    fn publish_when_durable(&self, rec: Arc<JobRecord>, seq: u64) {
        let me = self.me.clone();
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.cancelled() => return,
                }
                let Some(engine) = me.upgrade() else { return };
                match engine.store.flush().await {
                    Ok(()) => {
                        engine.publish(rec, seq);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(job = %rec.id, error = %e, "store flush failed; retrying")
                    }
                }
            }
        });
    }

    /// Makes a durable version visible, unless a newer one already is;
    /// announces it in the same order. A published terminal job leaves
    /// `live`.
    fn publish(&self, rec: Arc<JobRecord>, seq: u64) {
        let Some(entry) = self.entry(&rec.id) else {
            return;
        };
        let mut l = lock(&entry);
        if seq <= l.published_seq {
            return;
        }
        l.published_seq = seq;
        let p = Arc::new(JobEvent {
            seq,
            job: rec.clone(),
        });
        l.published = Some(p.clone());
        if rec.state.is_terminal() && seq == l.seq {
            lock(&self.live).remove(&rec.id);
        }
        // Under the job's lock, so its events leave in publication order.
        let _ = self.events.send(p);
    }

    /// A live job's entry, made hot if it was cold; the map's lock is
    /// released on return. `None` also when a cold job's record cannot be
    /// read (see `entry_checked`).
    fn entry(&self, id: &Uuid) -> Option<Arc<Mutex<Live>>> {
        self.entry_checked(id).ok().flatten()
    }

    /// A live job's entry; a cold one is read back from the store first
    /// (outside the map's lock), its version the one it was cooled with.
    fn entry_checked(&self, id: &Uuid) -> Result<Option<Arc<Mutex<Live>>>, StoreError> {
        let seq = match self.peek(id) {
            Peek::Absent => return Ok(None),
            Peek::Hot(e) => return Ok(Some(e)),
            Peek::Cold(seq) => seq,
        };
        let rec = self
            .store
            .get_job(id)?
            .ok_or_else(|| StoreError::Io(format!("live job {id} is missing from the store")))?;
        let mut m = lock(&self.live);
        match m.get(id) {
            // Still cold and unchanged (a change makes it hot first): what
            // was read is that version.
            Some(LiveEntry::Cold(s)) if *s == seq => {}
            // Made hot (or ended) meanwhile by another caller.
            _ => {
                drop(m);
                return self.entry_checked(id);
            }
        }
        let rec = Arc::new(rec);
        let e = Arc::new(Mutex::new(Live {
            rec: rec.clone(),
            seq,
            published: Some(Arc::new(JobEvent { seq, job: rec })),
            published_seq: seq,
        }));
        m.insert(*id, LiveEntry::Hot(e.clone()));
        Ok(Some(e))
    }

    /// A live job's entry as it is, hot or cold.
    fn peek(&self, id: &Uuid) -> Peek {
        match lock(&self.live).get(id) {
            None => Peek::Absent,
            Some(LiveEntry::Hot(e)) => Peek::Hot(e.clone()),
            Some(LiveEntry::Cold(seq)) => Peek::Cold(*seq),
        }
    }

    /// Drops the record of a parked job from memory if every version of
    /// it is durable and published and nobody else holds its entry; it
    /// stays hot otherwise.
    fn cool(&self, id: &Uuid) {
        let mut m = lock(&self.live);
        let Some(LiveEntry::Hot(e)) = m.get(id) else {
            return;
        };
        // Entries are cloned out only under the map's lock, held here: a
        // count of one proves no caller is about to change it through
        // this entry (review finding: a lock free "now" did not). Nobody
        // can hold its lock either, so taking it cannot wait.
        if Arc::strong_count(e) != 1 {
            return;
        }
        let seq = {
            let l = lock(e);
            if l.seq != l.published_seq || l.rec.state.is_terminal() {
                return;
            }
            l.seq
        };
        m.insert(*id, LiveEntry::Cold(seq));
    }

    /// Whether the job still has to be driven (a cold job is: only
    /// non-terminal jobs are cooled).
    fn is_live(&self, id: &Uuid) -> bool {
        match self.peek(id) {
            Peek::Hot(e) => !lock(&e).rec.state.is_terminal(),
            Peek::Cold(_) => true,
            Peek::Absent => false,
        }
    }

    /// A copy of the authoritative record of a live job.
    fn current(&self, id: &Uuid) -> Option<Arc<JobRecord>> {
        self.entry(id).map(|e| lock(&e).rec.clone())
    }

    /// The same, with the store error of a cold job that cannot be read.
    fn current_checked(&self, id: &Uuid) -> Result<Option<Arc<JobRecord>>, StoreError> {
        Ok(self.entry_checked(id)?.map(|e| lock(&e).rec.clone()))
    }

    // ---- supervision ----------------------------------------------------------

    /// Starts the one driver of a job, unless it has one (running or
    /// parked).
    fn supervise(self: &Arc<Self>, id: Uuid, target: String) {
        let token = self.shutdown.child_token();
        {
            let mut d = lock(&self.drivers);
            if d.contains_key(&id) {
                return;
            }
            d.insert(id, Slot::Running(token.clone()));
        }
        self.spawn_driver(id, target, token, None);
    }

    /// The job's one task: runs its driver, restarts a driver that stopped
    /// on a store error or panicked (after a backoff), parks the job when
    /// its driver waits for a poll, and releases the job's target once the
    /// job has ended. The caller has put `Slot::Running(token)` in place.
    fn spawn_driver(
        self: &Arc<Self>,
        id: Uuid,
        target: String,
        token: CancellationToken,
        resume: Option<Resume>,
    ) {
        use futures_util::FutureExt;
        // Every line the job's task logs carries the job, its target and
        // its backend.
        let backend = self
            .current(&id)
            .map(|j| j.backend.clone())
            .unwrap_or_default();
        let span = tracing::info_span!("job", job = %id, target = %target, backend = %backend);
        let engine = self.clone();
        let task = async move {
            let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
            let mut resume = resume;
            loop {
                // Caught here rather than by a second task: one task a job.
                let run = std::panic::AssertUnwindSafe(driver::drive(
                    engine.clone(),
                    id,
                    token.clone(),
                    resume.take(),
                ))
                .catch_unwind()
                .await;
                let why = match run {
                    Ok(Ok(driver::Driven::Parked(at, r))) if !token.is_cancelled() => {
                        // The slot first, so that the waker finds it;
                        // cooled before the waker can start it again.
                        lock(&engine.drivers).insert(id, Slot::Parked);
                        engine.cool(&id);
                        engine.park(id, at, r);
                        return;
                    }
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(panic) => Some(format!(
                        "the job's driver panicked: {}",
                        panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default()
                    )),
                };
                if engine.shutdown.is_cancelled() || token.is_cancelled() || !engine.is_live(&id) {
                    break;
                }
                let Some(why) = why else { break };
                let delay = backoff.next_delay();
                tracing::error!(job = %id, error = %why, ?delay, "job driver stopped; restarting it");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = token.cancelled() => break,
                }
            }
            lock(&engine.drivers).remove(&id);
            if !engine.is_live(&id) {
                engine.targets.remove(&target, id);
                engine.start_if_head(&target);
            }
        };
        self.tasks.spawn(task.instrument(span));
    }

    /// Parks a job until `at`; starts the task that wakes parked jobs
    /// the first time.
    fn park(self: &Arc<Self>, id: Uuid, at: tokio::time::Instant, resume: Resume) {
        self.parking.park(id, at, resume);
        if !self.waking.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let (me, parking) = (self.me.clone(), self.parking.clone());
            let stop = self.shutdown.clone();
            self.tasks.spawn(Engine::wake_parked(me, parking, stop));
        }
    }

    /// The one task that starts the drivers of parked jobs when their
    /// wait is over. Parked jobs stay parked when the engine stops: they
    /// resume from the store on the next start.
    /// It holds no strong reference to the engine while it waits.
    async fn wake_parked(
        me: std::sync::Weak<Engine>,
        parking: Arc<Parking>,
        stop: CancellationToken,
    ) {
        loop {
            let next = parking.next();
            tokio::select! {
                _ = async {
                    match next {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = parking.earlier() => continue,
                _ = stop.cancelled() => return,
            }
            let Some(engine) = me.upgrade() else { return };
            for (id, resume) in parking.take_due(tokio::time::Instant::now()) {
                // This task wakes every parked job: a panic in one must
                // not end it (review finding).
                let woke = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    engine.unpark(id, resume)
                }));
                if woke.is_err() {
                    tracing::error!(job = %id, "starting a waiting job's driver panicked; it waits until the next start");
                }
            }
        }
    }

    /// Starts the driver of a parked job whose wait is over.
    fn unpark(self: &Arc<Self>, id: Uuid, mut resume: Resume) {
        let target = match self.current_checked(&id) {
            Ok(j) => j.map(|j| j.target.clone()),
            Err(e) => {
                // Its record could not be read back: try again after the
                // retry backoff, which grows, so that an outage of the
                // store does not log every parked job every second.
                // Its backend is not known here: the schedule of a
                // backend polled every second or more (the default).
                let mut retry = driver::retry_backoff(Duration::from_secs(1)).at_step(resume.retry);
                let delay = retry.next_delay();
                resume.retry = retry.step();
                tracing::error!(job = %id, error = %e, ?delay, "cannot read a waiting job's record; retrying");
                self.park(id, tokio::time::Instant::now() + delay, resume);
                return;
            }
        };
        let token = self.shutdown.child_token();
        {
            let mut d = lock(&self.drivers);
            if !matches!(d.get(&id), Some(Slot::Parked)) {
                return;
            }
            match &target {
                Some(_) => d.insert(id, Slot::Running(token.clone())),
                // No longer live (cannot happen while parked: only its
                // driver changes a polling job).
                None => d.remove(&id),
            };
        }
        match target {
            Some(target) => self.spawn_driver(id, target, token, Some(resume)),
            // As a job's task does when its job has ended: the queue it
            // heads (its target is not known here) moves on.
            None => {
                for target in self.targets.headed_by(id) {
                    self.targets.remove(&target, id);
                    self.start_if_head(&target);
                }
            }
        }
    }

    /// Gives the head of `target`'s queue its driver, once its creation is
    /// durable. A job queued behind another costs a queue entry, not a
    /// task: it is started here when the job before it ends (and by
    /// `finish_many` if it is the head already; whichever comes second starts
    /// it, `supervise` ignoring the other).
    fn start_if_head(self: &Arc<Self>, target: &str) {
        loop {
            let Some(head) = self.targets.head(target) else {
                return;
            };
            let seen = match self.peek(&head) {
                Peek::Hot(e) => {
                    let l = lock(&e);
                    Some((l.published.is_some(), l.rec.state.is_terminal()))
                }
                Peek::Cold(_) => Some((true, false)),
                Peek::Absent => None,
            };
            match seen {
                Some((true, false)) => {
                    self.supervise(head, target.to_string());
                    return;
                }
                // Being created: `finish_many` starts it once it is durable.
                Some((false, _)) => return,
                // Ended without a driver (cancelled while queued): it
                // leaves the queue here; one with a driver leaves when
                // its driver stops.
                Some((true, true)) | None => {
                    if lock(&self.drivers).contains_key(&head) {
                        return;
                    }
                    self.targets.remove(target, head);
                }
            }
        }
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

    /// Removes finished jobs older than the history period, on a blocking
    /// thread (it reads and deletes many records).
    pub async fn prune(&self) -> Result<usize, StoreError> {
        // A history too long for the calendar means "keep everything".
        let Some(cutoff) = chrono::Duration::from_std(self.settings.job_history)
            .ok()
            .and_then(|keep| Utc::now().checked_sub_signed(keep))
        else {
            return Ok(0);
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.prune_finished_before(cutoff))
            .await
            .map_err(|e| StoreError::Io(format!("pruning failed: {e}")))?
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

/// Ends a job in `state` with `message`.
fn end(j: &mut JobRecord, state: JobState, message: String) {
    j.state = state;
    j.phase = Phase::Done;
    j.end_time = Some(Utc::now());
    j.next_attempt_time = None;
    j.message = message;
}

#[cfg(test)]
mod tests;
