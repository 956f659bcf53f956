//! The embedded store. Every call of the storage engine is in this module:
//! `Store` (here) owns the key layout, the indexes and the group-commit
//! flusher, written once; below it, an ordered byte-key map
//! ([`kv::Kv`]) with two engines, sled (`sled_kv.rs`, the default) and
//! redb (`redb_kv.rs`), chosen by [`StoreEngine`] (`store_engine` in the
//! config).
//!
//! One map, keys by prefix; a job and its indexes change in one batch,
//! ordered so that any prefix of it is safe (sled writes a batch key by
//! key; see `add_job`):
//! - `j{uuid}` → the job record (JSON, versioned)
//! - `l{uuid}` → present while the job is not terminal (start-up reads only these)
//! - `r{request_id}` → the job's uuid (idempotency keys)
//! - `e{end millis, BE}{uuid}` → finished jobs by end time (pruning)
//! - `s{state}{uuid}` → finished jobs by end state (`ListJobs` filters)
//! - `k{kind}{uuid}` → jobs by kind
//! - `t{target}\0{uuid}` → jobs by target
//! - `c{schedule id}` → a schedule record (JSON, versioned)
//! - `m…` → metadata (which index layout the store has)
//!
//! Durability: `put_job` writes to the engine without making it durable
//! (sled's memory; a non-durable redb commit); `flush().await` returns
//! once a [`kv::Kv::flush`] that started after the write has finished. One
//! flusher task serves all waiters (group commit), because sled 0.34's
//! `flush_async` hangs with concurrent callers (see `docs/store.md`).

mod kv;
mod redb_kv;
mod sled_kv;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::{
    job::{DecodeError, JobKind, JobRecord, JobState},
    schedule_record::ScheduleRecord,
};
use kv::{AnyKv, Batch, Kv};

/// A way to walk jobs newest first without decoding the whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobIndex {
    All,
    /// Jobs not yet ended.
    Live,
    /// Jobs that ended in this (terminal) state.
    Ended(JobState),
    Kind(JobKind),
    /// The full target name.
    Target(String),
}

/// The key-value engine under the store (`store_engine` in the config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StoreEngine {
    /// sled 0.34 in `data_dir/db` (the default).
    #[default]
    Sled,
    /// redb in `data_dir/custos.redb`.
    Redb,
}

impl StoreEngine {
    pub const ALL: [StoreEngine; 2] = [StoreEngine::Sled, StoreEngine::Redb];

    /// Its name in the config.
    pub fn name(self) -> &'static str {
        match self {
            StoreEngine::Sled => "sled",
            StoreEngine::Redb => "redb",
        }
    }

    pub fn from_name(name: &str) -> Option<StoreEngine> {
        StoreEngine::ALL.into_iter().find(|e| e.name() == name)
    }

    /// Where this engine keeps its data in `data_dir`.
    pub fn location(self, data_dir: &Path) -> PathBuf {
        match self {
            StoreEngine::Sled => sled_kv::location(data_dir),
            StoreEngine::Redb => redb_kv::location(data_dir),
        }
    }
}

impl std::fmt::Display for StoreEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for StoreEngine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StoreEngine::from_name(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "store_engine: unknown engine {s:?}: expected \"sled\" (the default) or \"redb\""
            ))
        })
    }
}

/// Why `engine` must not open `data_dir`: the data of another engine is
/// there (a store is never converted, and an empty one must not silently
/// stand in for it). `None` when nothing of another engine is found.
pub fn engine_conflict(data_dir: &Path, engine: StoreEngine) -> Option<String> {
    StoreEngine::ALL
        .into_iter()
        .filter(|other| *other != engine)
        .map(|other| (other, other.location(data_dir)))
        .find(|(_, found)| found.exists())
        .map(|(other, found)| {
            format!(
                "store_engine is \"{engine}\", but {} holds a {other} store: refusing to start with an empty {engine} store beside it (custos does not convert stores). Set store_engine = \"{other}\" to use it, or move it out of data_dir",
                found.display()
            )
        })
}

/// Marks a store whose `s`/`k`/`t` indexes are complete.
const INDEX_MARK: &[u8] = b"mindex1";

fn state_byte(s: JobState) -> u8 {
    match s {
        JobState::Pending => 0,
        JobState::Running => 1,
        JobState::Succeeded => 2,
        JobState::Failed => 3,
        JobState::Cancelled => 4,
    }
}

fn kind_byte(k: JobKind) -> u8 {
    match k {
        JobKind::Backup => 0,
        JobKind::Restore => 1,
        JobKind::DeleteBackup => 2,
    }
}

/// `{prefix}{uuid}` keys of an index whose prefix is `pre`.
fn index_key(pre: &[u8], id: &Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(pre.len() + 16);
    k.extend_from_slice(pre);
    k.extend_from_slice(id.as_bytes());
    k
}

fn target_prefix(target: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(target.len() + 2);
    k.push(b't');
    k.extend_from_slice(target.as_bytes());
    k.push(0);
    k
}

/// The index entries a record has (besides `l` and `e`).
fn index_keys(rec: &JobRecord) -> Vec<Vec<u8>> {
    let mut v = vec![
        index_key(&[b'k', kind_byte(rec.kind)], &rec.id),
        index_key(&target_prefix(&rec.target), &rec.id),
    ];
    if rec.state.is_terminal() {
        v.push(index_key(&[b's', state_byte(rec.state)], &rec.id));
    }
    v
}

/// A store failure. The daemon answers `UNAVAILABLE` with it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store in {path}: {message}")]
    Open { path: PathBuf, message: String },
    /// `data_dir` holds another engine's store (see [`engine_conflict`]).
    #[error("cannot open the store in {path}: {message}")]
    OtherEngine { path: PathBuf, message: String },
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("a stored record is unreadable: {0}")]
    Corrupt(String),
    #[error("the store is closed")]
    Closed,
}

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// The store handle; cheap to clone.
#[derive(Clone)]
pub struct Store {
    kv: AnyKv,
    flush_tx: mpsc::UnboundedSender<Waiter>,
    stats: Arc<FlushStats>,
    /// Whether the last flush succeeded (false while the store cannot make
    /// writes durable).
    writable: Arc<tokio::sync::watch::Sender<bool>>,
    #[cfg(test)]
    pub(crate) faults: Arc<TestFaults>,
}

/// Fault switches for the daemon's own tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct TestFaults {
    /// The next this-many writes of jobs (`put_job`, `put_jobs`,
    /// `update_job`) fail, after `pass_puts` more have succeeded.
    pub fail_puts: std::sync::atomic::AtomicU32,
    pub pass_puts: std::sync::atomic::AtomicU32,
    /// A write of jobs that `fail_puts` fails is applied first, as sled
    /// can apply an insert and then report an error of its log.
    pub apply_failed_puts: std::sync::atomic::AtomicBool,
    /// The next this-many flushes fail (after running).
    pub fail_flushes: Arc<std::sync::atomic::AtomicU32>,
    /// Held for writing by a test, it stops the flusher before its next
    /// flush.
    pub flush_gate: Arc<tokio::sync::RwLock<()>>,
    /// A `get_job` on a thread named "reader" says on the sender that it
    /// has read, then waits for the receiver.
    pub get_pause:
        std::sync::Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
}

/// Counts flushes and the writes they covered, for benchmarks, logs and
/// tests.
#[derive(Debug, Default)]
pub struct FlushStats {
    pub flushes: std::sync::atomic::AtomicU64,
    pub waiters: std::sync::atomic::AtomicU64,
    /// Groups of jobs written (`put_jobs`, `create_jobs`; final versions).
    pub batches: std::sync::atomic::AtomicU64,
}

const CACHE_BYTES: u64 = 64 * 1024 * 1024;

fn key(prefix: u8, id: &Uuid) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = prefix;
    k[1..].copy_from_slice(id.as_bytes());
    k
}

fn end_key(end: DateTime<Utc>, id: &Uuid) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = b'e';
    let ms = end.timestamp_millis().max(0) as u64;
    k[1..9].copy_from_slice(&ms.to_be_bytes());
    k[9..].copy_from_slice(id.as_bytes());
    k
}

fn request_key(request_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(request_id.len() + 1);
    k.push(b'r');
    k.extend_from_slice(request_id.as_bytes());
    k
}

/// A job and its index entries, into `batch`, in an order whose every
/// prefix a reader copes with: sled applies a batch key by key (its
/// batches cost a process-wide lock: `sled_kv.rs`), so a crash can keep a
/// prefix of it, and a reader in the same process can see one.
/// - The entries that point at the record (indexes, the live mark, the
///   request id, the end time) come before it: one whose record is
///   missing is skipped by lists and by `live_jobs`, and a request id
///   without its record is no job (`job_for_request`); the creation was
///   never acknowledged (that waits for a flush after the whole batch).
/// - An ended job's state and end-time entries come before its final
///   record: lists check the record against the filter, pruning checks
///   that the record has ended at that time.
/// - The live mark goes after the final record: a start drops a mark
///   whose record has ended (`live_jobs`).
fn add_job(batch: &mut Batch, rec: &JobRecord) -> Result<(), StoreError> {
    let bytes = rec.encode().map_err(|e| StoreError::Io(e.to_string()))?;
    // Kind and target never change: indexed before the job starts
    // (its first writes); the end state once it has ended.
    if rec.start_time.is_none() || rec.state.is_terminal() {
        for k in index_keys(rec) {
            batch.put(k, []);
        }
    }
    if rec.state.is_terminal() {
        if let Some(end) = rec.end_time {
            batch.put(end_key(end, &rec.id), []);
        }
    } else {
        batch.put(key(b'l', &rec.id), []);
    }
    if let Some(r) = &rec.request_id {
        batch.put(request_key(r), rec.id.as_bytes().as_slice());
    }
    batch.put(key(b'j', &rec.id), bytes);
    if rec.state.is_terminal() {
        batch.remove(key(b'l', &rec.id));
    }
    Ok(())
}

fn decode(bytes: &[u8]) -> Result<JobRecord, StoreError> {
    JobRecord::decode(bytes).map_err(StoreError::from)
}

impl From<DecodeError> for StoreError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Corrupt(m) => StoreError::Corrupt(m),
            too_new @ DecodeError::TooNew(..) => StoreError::Corrupt(too_new.to_string()),
        }
    }
}

impl Store {
    /// Opens (or creates, mode 0700) the store with the default engine
    /// (sled). Must run inside a tokio runtime: it starts the flusher task.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, StoreEngine::default())
    }

    /// Opens (or creates, mode 0700) the store in `dir` with `engine`;
    /// refuses a `dir` that holds another engine's store. Must run inside
    /// a tokio runtime: it starts the flusher task.
    pub fn open_with(dir: &Path, engine: StoreEngine) -> Result<Store, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: dir.to_path_buf(),
            message,
        };
        if let Some(message) = engine_conflict(dir, engine) {
            return Err(StoreError::OtherEngine {
                path: dir.to_path_buf(),
                message,
            });
        }
        if !dir.exists() {
            create_private_dir(dir).map_err(|e| open_err(e.to_string()))?;
        }
        let kv = match engine {
            StoreEngine::Sled => {
                AnyKv::Sled(sled_kv::SledKv::open(dir, CACHE_BYTES).map_err(open_err)?)
            }
            StoreEngine::Redb => {
                AnyKv::Redb(redb_kv::RedbKv::open(dir, CACHE_BYTES).map_err(open_err)?)
            }
        };
        let (flush_tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(FlushStats::default());
        #[cfg(test)]
        let faults = Arc::new(TestFaults::default());
        #[cfg(test)]
        let gate = Some((faults.flush_gate.clone(), faults.fail_flushes.clone()));
        #[cfg(not(test))]
        let gate = None;
        let writable = Arc::new(tokio::sync::watch::Sender::new(true));
        tokio::spawn(flusher(
            kv.clone(),
            rx,
            stats.clone(),
            writable.clone(),
            gate,
        ));
        let store = Store {
            kv,
            flush_tx,
            stats,
            writable,
            #[cfg(test)]
            faults,
        };
        store
            .build_indexes()
            .map_err(|e| open_err(format!("indexing the stored jobs failed: {e}")))?;
        Ok(store)
    }

    /// Follows whether the store can make writes durable: false after a
    /// flush failed, true again after one succeeded.
    pub fn writable(&self) -> tokio::sync::watch::Receiver<bool> {
        self.writable.subscribe()
    }

    /// The store's size on disk, in bytes.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.kv.size_on_disk()
    }

    pub fn flush_stats(&self) -> &FlushStats {
        &self.stats
    }

    /// Writes a job and its index entries in one batch (not yet durable:
    /// await [`Store::flush`]; see [`Store::put_jobs`]).
    pub fn put_job(&self, rec: &JobRecord) -> Result<(), StoreError> {
        self.put_jobs(std::slice::from_ref(rec))
    }

    /// Writes several jobs and their index entries in one batch (not yet
    /// durable: await [`Store::flush`]), ordered so that any prefix of it
    /// is safe (`add_job`): on sled, a failure or a crash can leave a
    /// prefix; on redb all of them or none.
    pub fn put_jobs(&self, recs: &[JobRecord]) -> Result<(), StoreError> {
        self.write_jobs(recs)?;
        self.count_batch();
        Ok(())
    }

    fn write_jobs(&self, recs: &[JobRecord]) -> Result<(), StoreError> {
        let injected = self.injected_put_failure();
        if injected.is_err() && !self.applies_failed_puts() {
            return injected;
        }
        let mut batch = Batch::default();
        for rec in recs {
            add_job(&mut batch, rec)?;
        }
        self.kv.apply(batch)?;
        injected
    }

    /// Whether a test asked that a failed write be applied all the same
    /// (`TestFaults::apply_failed_puts`).
    fn applies_failed_puts(&self) -> bool {
        #[cfg(test)]
        {
            self.faults
                .apply_failed_puts
                .load(std::sync::atomic::Ordering::SeqCst)
        }
        #[cfg(not(test))]
        false
    }

    /// Writes new jobs (never stored before) and their index entries (not
    /// yet durable: await [`Store::flush`]). If a write fails, the error
    /// says how many of them were written whole (on sled, the failing one
    /// too when its record is there: sled can apply an insert and then
    /// report an error of its log); the others are no job (a prefix of a
    /// creation without its record is none: `add_job`).
    /// On redb, one batch: all or none. On sled one job after the other,
    /// which costs nothing more: sled writes a batch key by key anyway.
    pub fn create_jobs(&self, recs: &[JobRecord]) -> Result<(), (usize, StoreError)> {
        if self.kv.atomic_batches() {
            return self.put_jobs(recs).map_err(|e| (0, e));
        }
        for (i, rec) in recs.iter().enumerate() {
            if let Err(e) = self.write_jobs(std::slice::from_ref(rec)) {
                // A write that failed may have been applied all the same
                // (sled makes an insert visible before its log reports an
                // error; review finding: that job was answered "failed"
                // and dropped by the engine, and a retry with its request
                // id was answered with it, undriven). Its record is
                // written last, so a record that can be read is the whole
                // creation: it counts as written. Nothing after it was
                // written.
                let applied = matches!(self.kv.contains(&key(b'j', &rec.id)), Ok(true));
                return Err((i + usize::from(applied), e));
            }
        }
        self.count_batch();
        Ok(())
    }

    /// Writes a new version of a job that is already in the store (not yet
    /// durable: await [`Store::flush`]). A version that has not ended
    /// changes only the record, whose index entries were written with the
    /// job: one key, not a batch. (sled takes a global write lock for a
    /// batch and seals and syncs its log buffer once for each: five times a
    /// job when every version was a batch.) A version that has ended goes
    /// with its index changes in one batch, like [`Store::put_job`].
    pub fn update_job(&self, rec: &JobRecord) -> Result<(), StoreError> {
        if rec.state.is_terminal() {
            return self.put_job(rec);
        }
        self.injected_put_failure()?;
        let bytes = rec.encode().map_err(|e| StoreError::Io(e.to_string()))?;
        self.kv.put(&key(b'j', &rec.id), &bytes)
    }

    fn count_batch(&self) {
        (self.stats.batches).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes the first `n` operations of the batch that `put_job(rec)`
    /// writes (what a crash, or a failed write, can leave on sled);
    /// returns how many operations that batch has.
    #[cfg(test)]
    pub(crate) fn put_job_prefix(&self, rec: &JobRecord, n: usize) -> usize {
        let mut batch = Batch::default();
        add_job(&mut batch, rec).unwrap();
        self.apply_prefix(batch, n)
    }

    /// Applies the first `n` operations of `batch`, one by one; returns
    /// how many it has.
    #[cfg(test)]
    fn apply_prefix(&self, batch: Batch, n: usize) -> usize {
        let len = batch.ops.len();
        for op in batch.ops.into_iter().take(n) {
            match op {
                kv::Op::Put(k, v) => self.kv.put(&k, &v).unwrap(),
                kv::Op::Remove(k) => {
                    self.kv.remove(&k).unwrap();
                }
            }
        }
        len
    }

    /// Applies the first `n` operations of what pruning does for the
    /// end-time key of `rec` (what a crash, or a failed write, can leave
    /// on sled); returns how many operations that batch has.
    #[cfg(test)]
    pub(crate) fn prune_prefix(&self, rec: &JobRecord, n: usize) -> usize {
        let k = end_key(rec.end_time.unwrap(), &rec.id);
        let batch = self.pruning(&k).unwrap().unwrap();
        self.apply_prefix(batch, n)
    }

    /// A write failure a test asked for (`TestFaults::fail_puts`).
    fn injected_put_failure(&self) -> Result<(), StoreError> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering;
            let pass = &self.faults.pass_puts;
            if pass.load(Ordering::SeqCst) > 0 {
                pass.fetch_sub(1, Ordering::SeqCst);
                return Ok(());
            }
            let f = &self.faults.fail_puts;
            if f.load(Ordering::SeqCst) > 0 {
                f.fetch_sub(1, Ordering::SeqCst);
                return Err(StoreError::Io("injected write failure".into()));
            }
        }
        Ok(())
    }

    /// Waits until everything written before this call is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.flush_tx.send(tx).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub fn get_job(&self, id: &Uuid) -> Result<Option<JobRecord>, StoreError> {
        let r = self
            .kv
            .get(&key(b'j', id))?
            .map(|v| decode(v.as_ref()))
            .transpose();
        // A test stops a reader here, after its read (engine tests).
        #[cfg(test)]
        if std::thread::current().name() == Some("reader") {
            let pause = self.faults.get_pause.lock().ok().and_then(|mut p| p.take());
            if let Some((read, go)) = pause {
                let _ = read.send(());
                let _ = go.recv();
            }
        }
        r
    }

    /// The job created with this `request_id`, if it is still kept. A
    /// request id whose record is not there is no job: its creation was
    /// cut short after the id was written (a crash, on sled; a failed
    /// write), and never acknowledged (see `add_job`).
    pub fn job_for_request(&self, request_id: &str) -> Result<Option<Uuid>, StoreError> {
        let Some(v) = self.kv.get(&request_key(request_id))? else {
            return Ok(None);
        };
        // Unreadable is an error, not "no job": a retried request must not
        // make a second job (a restore run twice).
        let id = Uuid::from_slice(v.as_ref()).map_err(|e| {
            StoreError::Corrupt(format!(
                "the job of request_id {request_id:?} is stored unreadably: {e}"
            ))
        })?;
        Ok(self.kv.contains(&key(b'j', &id))?.then_some(id))
    }

    /// All non-terminal jobs, oldest first. A live mark whose record is
    /// missing or has ended (a creation or an end cut short: `add_job`) is
    /// removed (not flushed: it is removed again by the next start if it
    /// comes back). For the start only, before any job is created or
    /// changed: a creation being written has its mark before its record.
    pub fn live_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for kv in self.kv.range(b"l", b"m", false) {
            let (k, _) = kv?;
            let id = Uuid::from_slice(&k.as_ref()[1..])
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            match self.get_job(&id)? {
                Some(rec) if !rec.state.is_terminal() => out.push(rec),
                _ => stale.push(id),
            }
        }
        for id in stale {
            tracing::info!(job = %id, "removing the live mark of a job that has no record or has ended");
            self.kv.remove(&key(b'l', &id))?;
        }
        Ok(out)
    }

    /// Job ids of `index`, newest first, after `before` (exclusive).
    pub fn job_ids(
        &self,
        index: &JobIndex,
        before: Option<Uuid>,
    ) -> impl Iterator<Item = Result<Uuid, StoreError>> + '_ {
        let prefix: Vec<u8> = match index {
            JobIndex::All => vec![b'j'],
            JobIndex::Live => vec![b'l'],
            JobIndex::Ended(st) => vec![b's', state_byte(*st)],
            JobIndex::Kind(k) => vec![b'k', kind_byte(*k)],
            JobIndex::Target(t) => target_prefix(t),
        };
        let end = match before {
            Some(id) => index_key(&prefix, &id),
            None => {
                let mut e = prefix.clone();
                e.extend_from_slice(&[0xff; 17]);
                e
            }
        };
        let n = prefix.len();
        self.kv.range(&prefix, &end, true).map(move |kv| {
            let (k, _) = kv?;
            Uuid::from_slice(&k.as_ref()[n..]).map_err(|e| StoreError::Corrupt(e.to_string()))
        })
    }

    /// Jobs newest first, starting after `before` (exclusive) when given.
    pub fn jobs_newest_first(
        &self,
        before: Option<Uuid>,
    ) -> impl Iterator<Item = Result<JobRecord, StoreError>> + '_ {
        let end = match before {
            Some(id) => key(b'j', &id).to_vec(),
            None => vec![b'j' + 1],
        };
        self.kv
            .range(b"j", &end, true)
            .map(|kv| kv.and_then(|(_, v)| decode(v.as_ref())))
    }

    /// Writes the `s`/`k`/`t` indexes of every job once, for a store made
    /// by a release that had none.
    fn build_indexes(&self) -> Result<(), StoreError> {
        if self.kv.contains(INDEX_MARK)? {
            return Ok(());
        }
        let mut n = 0u64;
        for kv in self.kv.range(b"j", b"k", false) {
            let (k, v) = kv?;
            // One unreadable record must not keep the daemon from starting:
            // it stays where it is (GetJob reports it) and is not indexed.
            let rec = match decode(v.as_ref()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(key = ?k.as_ref(), error = %e, "skipping an unreadable job record while indexing");
                    continue;
                }
            };
            let mut batch = Batch::default();
            for k in index_keys(&rec) {
                batch.put(k, []);
            }
            self.kv.apply(batch)?;
            n += 1;
        }
        self.kv.put(INDEX_MARK, &[])?;
        self.kv.flush()?;
        if n > 0 {
            tracing::info!(jobs = n, "indexed the stored jobs for ListJobs filters");
        }
        Ok(())
    }

    /// Deletes finished jobs that ended before `cutoff`, with their
    /// idempotency keys. Returns how many went.
    ///
    /// In chunks of [`PRUNE_CHUNK`] jobs, each read with a range that is
    /// dropped before the chunk is deleted, and flushed after it: redb
    /// reuses the pages of deleted records only after a durable commit
    /// and once no read transaction sees them, so one range over
    /// everything and no flush grew its file by what was pruned. Blocking:
    /// run it on a blocking thread.
    pub fn prune_finished_before(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        let end = end_key(cutoff, &Uuid::nil());
        let mut n = 0;
        // Keys left in place are passed over: each chunk starts after
        // the last key of the one before.
        let mut from = b"e".to_vec();
        loop {
            let chunk = self
                .kv
                .range(&from, &end, false)
                .take(PRUNE_CHUNK)
                .map(|kv| kv.map(|(k, _)| k.as_ref().to_vec()))
                .collect::<Result<Vec<_>, _>>()?;
            let Some(last) = chunk.last() else {
                return Ok(n);
            };
            from = last.clone();
            from.push(0);
            for k in chunk {
                if let Some(batch) = self.pruning(&k)? {
                    self.kv.apply(batch)?;
                    n += 1;
                }
            }
            self.kv.flush()?;
        }
    }
}

impl Store {
    /// What pruning does for one end-time key `k` that has come of age:
    /// the batch that removes its job (ordered so that any prefix of it
    /// is safe: `docs/store.md`), or `None` when only the key went, or
    /// nothing (done here).
    fn pruning(&self, k: &[u8]) -> Result<Option<Batch>, StoreError> {
        let Some(id) = k.get(9..).and_then(|id| Uuid::from_slice(id).ok()) else {
            // It names no job: it goes, so that one bad key cannot stop
            // pruning for good (each run would end at it).
            tracing::warn!(key = ?k, "removing an unreadable end-time key while pruning");
            self.kv.remove(k)?;
            return Ok(None);
        };
        let mut batch = Batch::default();
        match self.get_job(&id) {
            // The end-time key is written before the job's final record
            // (`add_job`): that record is being written now, or a crash
            // kept the key without it and the job's end will be written
            // again. It stays.
            Ok(Some(rec)) if !rec.state.is_terminal() => return Ok(None),
            // Such a key, and the job ended at another time, with a key
            // of its own: only this key goes.
            Ok(Some(rec)) if rec.end_time.map(|e| end_key(e, &id).to_vec()) != Some(k.to_vec()) => {
                self.kv.remove(k)?;
                return Ok(None);
            }
            Ok(Some(rec)) => {
                // The request id only while it still names this job
                // (review finding: a pruning cut short after it had
                // removed the key let a new job take the request id, and
                // the next pruning of the old job removed the new job's
                // key, so that a retry made a second job). No new job can
                // take it between this read and the removal: while this
                // record is kept, the request id finds this job.
                if let Some(r) = &rec.request_id
                    && self
                        .kv
                        .get(&request_key(r))?
                        .is_some_and(|v| v.as_ref() == id.as_bytes())
                {
                    batch.remove(request_key(r));
                }
                for k in index_keys(&rec) {
                    batch.remove(k);
                }
                // The state key of an end cut short by a crash, after
                // which the job ended in another state.
                for s in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
                    let other = index_key(&[b's', state_byte(s)], &id);
                    if s != rec.state && self.kv.contains(&other)? {
                        batch.remove(other);
                    }
                }
            }
            Ok(None) => {}
            // Unreadable (damaged, or written by a newer version): whether
            // its job ended is unknown, so the record stays for an
            // operator (review finding: it was removed, even when its job
            // was live with an end-time key left by a cut-short end).
            // Only the key goes, so that it cannot stop pruning for good.
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "keeping an unreadable job record while pruning; removing its end-time key");
                self.kv.remove(k)?;
                return Ok(None);
            }
        }
        batch.remove(key(b'j', &id));
        batch.remove(k.to_vec());
        Ok(Some(batch))
    }
}

/// Makes the next open of the store in `dir` quick; for a graceful stop,
/// once every handle of the store is gone. sled 0.34 writes its page-table
/// snapshot only while it opens a store, and each open reads and checks
/// every log message written since the last snapshot: ~3 s at the first
/// start after 1,000,000 jobs were written (P4), and a daemon that ran for
/// a month would read all it wrote. Opening the store once more at the
/// stop moves that cost from the next start to the stop. After a crash the
/// next start still pays it. redb needs nothing: each durable commit is a
/// consistent tree, and an open reads its header. Returns whether a
/// checkpoint was made: none for redb, nor where there is no sled store
/// (it would make an empty one). sled's own threads may hold its lock for
/// a moment after the last handle is dropped: the open is tried again
/// for up to [`CHECKPOINT_LOCK_WAIT`].
pub fn checkpoint(dir: &Path, engine: StoreEngine) -> Result<bool, StoreError> {
    if engine != StoreEngine::Sled || !sled_kv::location(dir).join("db").is_file() {
        return Ok(false);
    }
    let deadline = std::time::Instant::now() + CHECKPOINT_LOCK_WAIT;
    loop {
        match sled_kv::SledKv::open(dir, CACHE_BYTES) {
            Ok(kv) => {
                drop(kv);
                return Ok(true);
            }
            Err(message) if std::time::Instant::now() >= deadline => {
                return Err(StoreError::Open {
                    path: dir.to_path_buf(),
                    message,
                });
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// How long [`checkpoint`] waits for sled's lock.
pub const CHECKPOINT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How many jobs [`Store::prune_finished_before`] deletes between flushes.
const PRUNE_CHUNK: usize = 1000;

/// A stored schedule, or its id and why it cannot be read.
pub type StoredSchedule = Result<ScheduleRecord, (String, String)>;

fn schedule_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.push(b'c');
    k.extend_from_slice(id.as_bytes());
    k
}

/// Schedules: one key each, no index (they are few enough to read whole).
impl Store {
    /// Writes a schedule (not yet durable: await [`Store::flush`]).
    pub fn put_schedule(&self, rec: &ScheduleRecord) -> Result<(), StoreError> {
        let bytes = rec.encode().map_err(|e| StoreError::Io(e.to_string()))?;
        self.kv.put(&schedule_key(&rec.id), &bytes)
    }

    pub fn get_schedule(&self, id: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        self.kv
            .get(&schedule_key(id))?
            .map(|v| ScheduleRecord::decode(v.as_ref()).map_err(StoreError::Corrupt))
            .transpose()
    }

    /// Whether it existed (not yet durable: await [`Store::flush`]).
    pub fn remove_schedule(&self, id: &str) -> Result<bool, StoreError> {
        self.kv.remove(&schedule_key(id))
    }

    /// Every schedule, by id; one that cannot be read comes as its id and
    /// the reason, so that one bad record cannot hide the others.
    pub fn schedules(&self) -> Result<Vec<StoredSchedule>, StoreError> {
        let mut out = Vec::new();
        for kv in self.kv.range(b"c", b"d", false) {
            let (k, v) = kv?;
            out.push(
                ScheduleRecord::decode(v.as_ref())
                    .map_err(|why| (String::from_utf8_lossy(&k.as_ref()[1..]).into_owned(), why)),
            );
        }
        Ok(out)
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Group commit: take every waiter queued so far, run one `flush()` on a
/// blocking thread, answer them all. Waiters that arrive during a flush are
/// served by the next one, so each waiter's writes are covered.
async fn flusher(
    kv: AnyKv,
    mut rx: mpsc::UnboundedReceiver<Waiter>,
    stats: Arc<FlushStats>,
    writable: Arc<tokio::sync::watch::Sender<bool>>,
    gate: Option<(
        Arc<tokio::sync::RwLock<()>>,
        Arc<std::sync::atomic::AtomicU32>,
    )>,
) {
    use std::sync::atomic::Ordering;
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let _held = match &gate {
            Some((g, _)) => Some(g.read().await),
            None => None,
        };
        let kv2 = kv.clone();
        let began = std::time::Instant::now();
        let r = match tokio::task::spawn_blocking(move || kv2.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(StoreError::Io(format!("flush task failed: {e}"))),
        };
        let r = match &gate {
            Some((_, fail)) if fail.load(Ordering::SeqCst) > 0 => {
                fail.fetch_sub(1, Ordering::SeqCst);
                Err(StoreError::Io("injected flush failure".into()))
            }
            _ => r,
        };
        let ok = r.is_ok();
        writable.send_if_modified(|w| {
            let changed = *w != ok;
            *w = ok;
            changed
        });
        if !ok {
            tracing::error!(error = ?r.as_ref().err(), "the store could not make writes durable");
        }
        crate::telemetry::store_flush(waiters.len(), began.elapsed(), ok);
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats
            .waiters
            .fetch_add(waiters.len() as u64, Ordering::Relaxed);
        for w in waiters {
            let _ = w.send(r.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobKind, JobState};

    fn rec(request_id: Option<&str>) -> JobRecord {
        let mut r = crate::test_support::record();
        r.request_id = request_id.map(str::to_string);
        r
    }

    /// Every test of the store, once per engine (`store::tests::sled::…`
    /// and `store::tests::redb::…`).
    macro_rules! for_each_engine {
        ($($test:ident),* $(,)?) => {
            mod sled {
                $(#[tokio::test]
                async fn $test() {
                    super::$test(super::StoreEngine::Sled).await
                })*
            }
            mod redb {
                $(#[tokio::test]
                async fn $test() {
                    super::$test(super::StoreEngine::Redb).await
                })*
            }
        };
    }

    for_each_engine!(
        writability_follows_the_flushes,
        live_index_idempotency_and_pruning,
        indexes_serve_filters_and_are_built_for_old_stores,
        put_jobs_writes_every_job_and_its_keys_or_none,
        concurrent_flush_waiters_all_complete,
        updates_keep_the_indexes_and_the_end_changes_them,
        an_unreadable_request_index_is_an_error_not_no_job,
        an_unreadable_end_time_key_does_not_stop_pruning,
        schedules_are_written_read_and_removed,
        acknowledged_writes_survive_reopening,
        refuses_a_data_dir_of_the_other_engine,
        pruning_goes_through_every_chunk,
        every_prefix_of_a_creation_is_the_job_or_no_job,
        every_prefix_of_an_end_is_the_running_job_or_the_ended_one,
        every_prefix_of_a_pruning_leaves_a_new_jobs_request_id,
        pruning_removes_the_state_key_of_an_end_cut_short,
        pruning_keeps_an_unreadable_record,
    );

    /// A job ended 40 days ago, with a request id.
    fn ended_long_ago(request_id: &str) -> JobRecord {
        let mut r = rec(Some(request_id));
        r.state = JobState::Succeeded;
        r.start_time = Some(Utc::now() - chrono::Duration::days(41));
        r.end_time = Some(Utc::now() - chrono::Duration::days(40));
        r
    }

    fn prune_old(store: &Store) -> usize {
        store
            .prune_finished_before(Utc::now() - chrono::Duration::days(30))
            .unwrap()
    }

    /// Review finding: any prefix of a pruning can be left (on sled, by a
    /// crash or a failed write). One that had removed the request id let
    /// a new request with that id make a new job, and the next pruning of
    /// the old job removed the new job's key: a retry of the new request
    /// then made a second job (a restore run twice).
    async fn every_prefix_of_a_pruning_leaves_a_new_jobs_request_id(engine: StoreEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        let probe = ended_long_ago("probe");
        store.put_job(&probe).unwrap();
        let len = store.prune_prefix(&probe, 0);
        assert!(len >= 5, "request id, kind, target, state, record, end");
        for n in 0..=len {
            let req = format!("req-{n}");
            let old = ended_long_ago(&req);
            store.put_job(&old).unwrap();
            store.prune_prefix(&old, n);
            let new = match store.job_for_request(&req).unwrap() {
                // The old job, or what is left of it, still holds it.
                Some(id) => {
                    assert_eq!(id, old.id, "prefix {n}");
                    None
                }
                None => {
                    let new = rec(Some(&req));
                    store.put_job(&new).unwrap();
                    Some(new)
                }
            };
            prune_old(&store);
            assert!(store.get_job(&old.id).unwrap().is_none(), "prefix {n}");
            assert_eq!(
                store.job_for_request(&req).unwrap(),
                new.as_ref().map(|j| j.id),
                "prefix {n} of {len}: the new job keeps its request id"
            );
        }
    }

    /// A crash cut a job's end after its state key (FAILED); after the
    /// restart the job ended in another state. Pruning it leaves no state
    /// key behind (review finding: the first one stayed forever).
    async fn pruning_removes_the_state_key_of_an_end_cut_short(engine: StoreEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        let mut job = rec(None);
        store.put_job(&job).unwrap();
        job.state = JobState::Running;
        job.start_time = Some(Utc::now() - chrono::Duration::days(41));
        store.update_job(&job).unwrap();
        let mut failed = job.clone();
        failed.state = JobState::Failed;
        failed.end_time = Some(Utc::now() - chrono::Duration::days(40));
        let failed_key = index_key(&[b's', state_byte(JobState::Failed)], &job.id);
        let len = store.put_job_prefix(&failed, 0);
        let cut = (0..=len)
            .find(|n| {
                store.put_job_prefix(&failed, *n);
                store.kv.contains(&failed_key).unwrap()
            })
            .unwrap();
        assert!(cut < len, "the state key comes before the record");
        assert_eq!(
            store.get_job(&job.id).unwrap().unwrap().state,
            JobState::Running
        );
        store.put_job(&ended_like(&job)).unwrap();
        assert_eq!(prune_old(&store), 1);
        let left: Vec<_> = store
            .kv
            .range(b"s", b"t", false)
            .map(|kv| kv.unwrap().0.as_ref().to_vec())
            .filter(|k| k.ends_with(job.id.as_bytes()))
            .collect();
        assert!(left.is_empty(), "state keys left: {left:?}");
    }

    /// `job`, ended SUCCEEDED 40 days ago.
    fn ended_like(job: &JobRecord) -> JobRecord {
        let mut j = job.clone();
        j.state = JobState::Succeeded;
        j.end_time = Some(Utc::now() - chrono::Duration::days(40));
        j
    }

    /// Review finding: a record that cannot be read (damaged, or written
    /// by a newer version) was removed by pruning when an end-time key
    /// of its id had come of age, although whether its job had ended was
    /// unknown. Now only the key goes.
    async fn pruning_keeps_an_unreadable_record(engine: StoreEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        let old = ended_long_ago("r");
        store.put_job(&old).unwrap();
        store
            .kv
            .put(&key(b'j', &old.id), b"\xff not a record")
            .unwrap();
        assert!(store.get_job(&old.id).is_err());
        assert_eq!(prune_old(&store), 0);
        assert!(
            store.kv.contains(&key(b'j', &old.id)).unwrap(),
            "the record stays"
        );
        assert!(
            !store
                .kv
                .contains(&end_key(old.end_time.unwrap(), &old.id))
                .unwrap(),
            "its end-time key went, so it does not stop pruning"
        );
    }

    /// sled writes a batch key by key, so a crash (or a failed write) can
    /// leave any prefix of a creation's batch: each is either the whole
    /// job or no job at all. No live mark or request id is left that
    /// makes a start resume nothing or a retry find nothing forever.
    async fn every_prefix_of_a_creation_is_the_job_or_no_job(engine: StoreEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        let len = store.put_job_prefix(&rec(Some("probe")), 0);
        assert!(len >= 5, "record, live mark, request id, kind, target");
        for n in 0..=len {
            let r = rec(Some(&format!("req-{n}")));
            store.put_job_prefix(&r, n);
            let whole = store.get_job(&r.id).unwrap().is_some();
            // The record goes last: only the whole batch is a job.
            assert_eq!(whole, n == len, "prefix {n} of {len}");
            let expected = whole.then_some(r.id);
            assert_eq!(
                store.job_for_request(&format!("req-{n}")).unwrap(),
                expected,
                "prefix {n}: a request id without its record is no job"
            );
            let live: Vec<Uuid> = store.live_jobs().unwrap().iter().map(|j| j.id).collect();
            assert_eq!(live.contains(&r.id), whole, "prefix {n}");
            assert_eq!(
                store.kv.contains(&key(b'l', &r.id)).unwrap(),
                whole,
                "prefix {n}: a start drops a live mark without its record"
            );
            store.flush().await.unwrap();
        }
    }

    /// The same for the batch of a job's end: any prefix of it is the
    /// job as it was (still resumed at a start, not pruned) or the ended
    /// job (not resumed, pruned in its time).
    async fn every_prefix_of_an_end_is_the_running_job_or_the_ended_one(engine: StoreEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        let mut probe = rec(None);
        probe.state = JobState::Succeeded;
        probe.end_time = Some(Utc::now());
        let len = store.put_job_prefix(&probe, 0);
        for n in 0..=len {
            let mut r = rec(Some(&format!("req-{n}")));
            store.put_job(&r).unwrap();
            r.state = JobState::Running;
            r.start_time = Some(Utc::now());
            store.update_job(&r).unwrap();
            let mut ended = r.clone();
            ended.state = JobState::Succeeded;
            ended.end_time = Some(Utc::now() - chrono::Duration::days(40));
            store.put_job_prefix(&ended, n);
            let stored = store.get_job(&r.id).unwrap().unwrap();
            let done = stored.state.is_terminal();
            let live: Vec<Uuid> = store.live_jobs().unwrap().iter().map(|j| j.id).collect();
            assert_eq!(live.contains(&r.id), !done, "prefix {n} of {len}");
            assert_eq!(
                store.kv.contains(&key(b'l', &r.id)).unwrap(),
                !done,
                "prefix {n}: a start drops the live mark of an ended job"
            );
            let prune = || {
                store
                    .prune_finished_before(Utc::now() - chrono::Duration::days(30))
                    .unwrap()
            };
            assert_eq!(prune(), usize::from(done), "prefix {n}");
            assert_eq!(
                store.get_job(&r.id).unwrap().is_some(),
                !done,
                "prefix {n}: pruning never takes a job that has not ended"
            );
            if !done {
                // Its end, written again (by its driver after a start),
                // is pruned in its time.
                store.put_job(&ended).unwrap();
                assert_eq!(prune(), 1, "prefix {n}");
                assert!(store.get_job(&r.id).unwrap().is_none(), "prefix {n}");
            }
            // No end-time key is left behind either way.
            assert_eq!(
                store
                    .kv
                    .range(b"e", b"f", false)
                    .filter(|kv| kv.as_ref().unwrap().0.as_ref()[9..] == *r.id.as_bytes())
                    .count(),
                0,
                "prefix {n}"
            );
        }
    }

    /// The names of sled's page-table snapshots in `dir`.
    fn snapshots(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(sled_kv::location(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("snap.") && !n.ends_with(".generating"))
            .collect();
        v.sort();
        v
    }

    /// sled writes its page-table snapshot only while it opens a store:
    /// a checkpoint (a graceful stop's) writes one that covers every
    /// write made before it, so the next open reads only what follows.
    #[tokio::test]
    async fn a_checkpoint_writes_a_snapshot_of_everything_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), StoreEngine::Sled).unwrap();
        let jobs: Vec<JobRecord> = (0..200).map(|_| rec(None)).collect();
        store.put_jobs(&jobs).unwrap();
        store.flush().await.unwrap();
        drop(store);
        let before = snapshots(dir.path());
        // On a blocking thread, as the daemon does it: it waits for the
        // flusher task (on this runtime) to let go of the store.
        let path = dir.path().to_path_buf();
        let made = tokio::task::spawn_blocking(move || checkpoint(&path, StoreEngine::Sled));
        assert!(made.await.unwrap().unwrap());
        let after = snapshots(dir.path());
        assert!(
            after.last() > before.last(),
            "a newer snapshot: {before:?} then {after:?}"
        );
        let store = Store::open_with(dir.path(), StoreEngine::Sled).unwrap();
        assert_eq!(store.live_jobs().unwrap().len(), 200);
        let dir = tempfile::tempdir().unwrap();
        drop(crate::test_support::open_store(dir.path(), StoreEngine::Redb).await);
        assert!(
            !checkpoint(dir.path(), StoreEngine::Redb).unwrap(),
            "redb needs none"
        );
        // Where there is no sled store, none is made (`serve --dev`'s
        // data dir is gone by then, for one).
        let gone = dir.path().join("gone");
        assert!(!checkpoint(&gone, StoreEngine::Sled).unwrap());
        assert!(!gone.exists());
    }

    async fn writability_follows_the_flushes(engine: StoreEngine) {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        let mut w = store.writable();
        assert!(*w.borrow());
        store.faults.fail_flushes.store(1, Ordering::SeqCst);
        let changed = |w: &mut tokio::sync::watch::Receiver<bool>| {
            let mut w = w.clone();
            async move {
                tokio::time::timeout(std::time::Duration::from_secs(5), w.changed())
                    .await
                    .expect("no change announced")
                    .unwrap();
                *w.borrow()
            }
        };
        assert!(store.flush().await.is_err());
        assert!(!changed(&mut w).await, "a failed flush makes it unwritable");
        w.borrow_and_update();
        store.flush().await.unwrap();
        assert!(changed(&mut w).await, "and a good one writable again");
    }

    async fn live_index_idempotency_and_pruning(engine: StoreEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        let mut a = rec(Some("req-1"));
        let b = rec(None);
        store.put_job(&a).unwrap();
        store.put_job(&b).unwrap();
        store.flush().await.unwrap();
        assert_eq!(store.live_jobs().unwrap().len(), 2);
        assert_eq!(store.job_for_request("req-1").unwrap(), Some(a.id));

        a.state = JobState::Succeeded;
        a.end_time = Some(Utc::now() - chrono::Duration::days(40));
        store.put_job(&a).unwrap();
        store.flush().await.unwrap();
        let live = store.live_jobs().unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].id, b.id);

        let newest: Vec<Uuid> = store
            .jobs_newest_first(None)
            .map(|r| r.unwrap().id)
            .collect();
        assert_eq!(newest, vec![b.id, a.id]);
        let after_b: Vec<Uuid> = store
            .jobs_newest_first(Some(b.id))
            .map(|r| r.unwrap().id)
            .collect();
        assert_eq!(after_b, vec![a.id]);

        let pruned = store
            .prune_finished_before(Utc::now() - chrono::Duration::days(30))
            .unwrap();
        assert_eq!(pruned, 1);
        assert!(store.get_job(&a.id).unwrap().is_none());
        assert!(store.job_for_request("req-1").unwrap().is_none());
        assert!(store.get_job(&b.id).unwrap().is_some());
    }

    async fn indexes_serve_filters_and_are_built_for_old_stores(engine: StoreEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        let mut a = rec(None);
        let mut b = rec(None);
        b.target = "backends/cf/serviceInstances/y".into();
        b.kind = JobKind::Restore;
        let c = rec(None);
        for r in [&a, &b, &c] {
            store.put_job(r).unwrap();
        }
        a.start_time = Some(Utc::now());
        a.state = JobState::Succeeded;
        a.end_time = Some(Utc::now());
        store.put_job(&a).unwrap();
        let ids =
            |i: JobIndex| -> Vec<Uuid> { store.job_ids(&i, None).map(|r| r.unwrap()).collect() };
        let all = || {
            (
                ids(JobIndex::All),
                ids(JobIndex::Live),
                ids(JobIndex::Ended(JobState::Succeeded)),
                ids(JobIndex::Kind(JobKind::Restore)),
                ids(JobIndex::Target("backends/cf/serviceInstances/x".into())),
            )
        };
        let want = (
            vec![c.id, b.id, a.id],
            vec![c.id, b.id],
            vec![a.id],
            vec![b.id],
            vec![c.id, a.id],
        );
        assert_eq!(all(), want);
        let after_c: Vec<Uuid> = store
            .job_ids(
                &JobIndex::Target("backends/cf/serviceInstances/x".into()),
                Some(c.id),
            )
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(after_c, vec![a.id]);

        // A store written before the indexes existed gets them at open.
        let keys: Vec<Vec<u8>> = store
            .kv
            .range(&[], &[0xff], false)
            .map(|kv| kv.unwrap().0.as_ref().to_vec())
            .collect();
        for k in keys {
            if [b's', b'k', b't', b'm'].contains(&k[0]) {
                assert!(store.kv.remove(&k).unwrap());
            }
        }
        assert!(ids(JobIndex::Kind(JobKind::Restore)).is_empty());
        store.build_indexes().unwrap();
        assert_eq!(all(), want);

        // Pruning takes the index entries with the job.
        store
            .prune_finished_before(Utc::now() + chrono::Duration::days(1))
            .unwrap();
        assert!(ids(JobIndex::Ended(JobState::Succeeded)).is_empty());
        assert_eq!(
            ids(JobIndex::Target("backends/cf/serviceInstances/x".into())),
            vec![c.id]
        );
    }

    /// Issue 12 (P5): many jobs in one batch: all of them with all their
    /// keys, or (a failed write) none.
    async fn put_jobs_writes_every_job_and_its_keys_or_none(engine: StoreEngine) {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        let recs: Vec<JobRecord> = (0..3).map(|i| rec(Some(&format!("req-{i}")))).collect();
        store.put_jobs(&recs).unwrap();
        store.flush().await.unwrap();
        assert_eq!(store.live_jobs().unwrap(), recs);
        let target = JobIndex::Target(recs[0].target.clone());
        let ids: Vec<Uuid> = store.job_ids(&target, None).map(|r| r.unwrap()).collect();
        assert_eq!(ids, recs.iter().rev().map(|r| r.id).collect::<Vec<_>>());
        for (i, r) in recs.iter().enumerate() {
            let found = store.job_for_request(&format!("req-{i}")).unwrap();
            assert_eq!(found, Some(r.id));
        }
        store.faults.fail_puts.store(1, Ordering::SeqCst);
        let more = vec![rec(Some("req-x")), rec(None)];
        assert!(store.put_jobs(&more).is_err());
        assert_eq!(store.job_for_request("req-x").unwrap(), None);
        assert!(more.iter().all(|r| store.get_job(&r.id).unwrap().is_none()));
    }

    /// Issue 12: a version that has not ended is one key; the job keeps
    /// its index entries, and its end changes them.
    async fn updates_keep_the_indexes_and_the_end_changes_them(engine: StoreEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        let mut a = rec(Some("req-a"));
        store.put_job(&a).unwrap();
        let keys = |s: &Store| -> Vec<Vec<u8>> {
            s.kv.range(&[], &[0xff], false)
                .map(|kv| kv.unwrap().0.as_ref().to_vec())
                .filter(|k| k[0] != b'j' && k[0] != b'm')
                .collect()
        };
        let at_creation = keys(&store);
        let batches = || {
            store
                .flush_stats()
                .batches
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        let before = batches();
        a.state = JobState::Running;
        a.start_time = Some(Utc::now());
        a.message = "polling".into();
        store.update_job(&a).unwrap();
        assert_eq!(keys(&store), at_creation, "a running version adds no key");
        assert_eq!(batches(), before, "and is one key, not a batch");
        assert_eq!(store.get_job(&a.id).unwrap().as_ref(), Some(&a));
        assert_eq!(store.live_jobs().unwrap(), vec![a.clone()]);

        a.state = JobState::Failed;
        a.end_time = Some(Utc::now());
        store.update_job(&a).unwrap();
        store.flush().await.unwrap();
        assert!(store.live_jobs().unwrap().is_empty());
        let failed: Vec<Uuid> = store
            .job_ids(&JobIndex::Ended(JobState::Failed), None)
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(failed, vec![a.id]);
        assert_eq!(store.job_for_request("req-a").unwrap(), Some(a.id));
        let pruned = store
            .prune_finished_before(Utc::now() + chrono::Duration::days(1))
            .unwrap();
        assert_eq!(pruned, 1, "the end is indexed for pruning");
    }

    /// Finding (review of the store trait): an unreadable job id under a
    /// request id read as "no job", so a retry of that request made a
    /// second job.
    async fn an_unreadable_request_index_is_an_error_not_no_job(engine: StoreEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        store
            .kv
            .put(&request_key("req-bad"), b"not a uuid")
            .unwrap();
        let found = store.job_for_request("req-bad");
        assert!(matches!(found, Err(StoreError::Corrupt(_))), "{found:?}");
        assert_eq!(store.job_for_request("req-none").unwrap(), None);
    }

    /// Review finding: one unreadable end-time key ended every pruning
    /// run with an error at that key, so nothing after it was pruned again.
    async fn an_unreadable_end_time_key_does_not_stop_pruning(engine: StoreEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        store.kv.put(b"e\0\0\0", b"").unwrap();
        let mut old = rec(Some("req-old"));
        old.state = JobState::Succeeded;
        old.end_time = Some(Utc::now() - chrono::Duration::days(40));
        store.put_job(&old).unwrap();
        let cutoff = Utc::now() - chrono::Duration::days(30);
        assert_eq!(store.prune_finished_before(cutoff).unwrap(), 1);
        assert!(store.get_job(&old.id).unwrap().is_none());
        assert!(
            store.kv.get(b"e\0\0\0").unwrap().is_none(),
            "the bad key went"
        );
        assert_eq!(store.prune_finished_before(cutoff).unwrap(), 0);
    }

    async fn concurrent_flush_waiters_all_complete(engine: StoreEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let r = rec(None);
                s.put_job(&r).unwrap();
                s.flush().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let flushes = store
            .flush_stats()
            .flushes
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!((1..=64).contains(&flushes));
        assert_eq!(store.live_jobs().unwrap().len(), 64);
    }

    fn schedule(id: &str) -> ScheduleRecord {
        let now = Utc::now();
        ScheduleRecord {
            v: crate::schedule_record::SCHEDULE_VERSION,
            id: id.into(),
            target: "backends/cf/serviceInstances/x".into(),
            backend: "cf".into(),
            cron: "0 0 * * * *".into(),
            time_zone: String::new(),
            paused: false,
            overlap: Default::default(),
            catch_up: Default::default(),
            retention: None,
            labels: Default::default(),
            incremental: false,
            create_time: now,
            update_time: now,
            fired_until: now,
            last_job: None,
            last_skip: None,
        }
    }

    async fn schedules_are_written_read_and_removed(engine: StoreEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        let (a, mut b) = (schedule("a"), schedule("b"));
        store.put_schedule(&a).unwrap();
        store.put_schedule(&b).unwrap();
        b.paused = true;
        store.put_schedule(&b).unwrap();
        // A job record does not show up among the schedules.
        store.put_job(&rec(None)).unwrap();
        assert_eq!(store.get_schedule("b").unwrap(), Some(b.clone()));
        let all: Vec<ScheduleRecord> = store
            .schedules()
            .unwrap()
            .into_iter()
            .map(|s| s.unwrap())
            .collect();
        assert_eq!(all, vec![a.clone(), b]);
        assert!(store.remove_schedule("b").unwrap());
        assert!(!store.remove_schedule("b").unwrap(), "already gone");
        assert_eq!(store.get_schedule("b").unwrap(), None);
        assert_eq!(store.schedules().unwrap().len(), 1);
    }

    /// What a flush acknowledged is there after the store is closed and
    /// opened again: jobs, their indexes, request ids and a schedule. A clean close persists even without a flush, so this does
    /// not test the flush's durability: the kill -9 tests of
    /// `tests/it/crash.rs` do (on both engines).
    async fn acknowledged_writes_survive_reopening(engine: StoreEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        let recs: Vec<JobRecord> = (0..50).map(|i| rec(Some(&format!("req-{i}")))).collect();
        for r in &recs[..10] {
            store.put_job(r).unwrap();
        }
        store.put_jobs(&recs[10..]).unwrap();
        let mut done = recs[3].clone();
        done.state = JobState::Succeeded;
        done.start_time = Some(Utc::now());
        done.end_time = Some(Utc::now());
        store.put_job(&done).unwrap();
        store.put_schedule(&schedule("s")).unwrap();
        store.flush().await.unwrap();
        let size = store.size_on_disk().unwrap();
        assert!(size > 0);
        drop(store);

        let store = crate::test_support::open_store(dir.path(), engine).await;
        let live: Vec<Uuid> = store.live_jobs().unwrap().iter().map(|r| r.id).collect();
        let want: Vec<Uuid> = recs
            .iter()
            .filter(|r| r.id != recs[3].id)
            .map(|r| r.id)
            .collect();
        assert_eq!(live, want);
        assert_eq!(store.get_job(&done.id).unwrap(), Some(done.clone()));
        assert_eq!(store.job_for_request("req-3").unwrap(), Some(done.id));
        let ended: Vec<Uuid> = store
            .job_ids(&JobIndex::Ended(JobState::Succeeded), None)
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(ended, vec![done.id]);
        assert_eq!(store.jobs_newest_first(None).count(), 50);
        assert!(store.get_schedule("s").unwrap().is_some());
    }

    /// A data dir with the other engine's store is refused with a message
    /// naming `store_engine`, the path found and why; nothing is created.
    async fn refuses_a_data_dir_of_the_other_engine(engine: StoreEngine) {
        let other = match engine {
            StoreEngine::Sled => StoreEngine::Redb,
            StoreEngine::Redb => StoreEngine::Sled,
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), other).unwrap();
        let r = rec(None);
        store.put_job(&r).unwrap();
        store.flush().await.unwrap();
        drop(store);
        let e = Store::open_with(dir.path(), engine).err().expect("refused");
        let msg = e.to_string();
        assert!(matches!(e, StoreError::OtherEngine { .. }), "{msg}");
        assert!(msg.contains("store_engine"), "{msg}");
        assert!(msg.contains(&format!("\"{engine}\"")), "{msg}");
        let found = other.location(dir.path());
        assert!(msg.contains(&found.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("holds a {other} store")), "{msg}");
        assert!(!engine.location(dir.path()).exists(), "nothing created");
        // The other engine still opens it, with the job.
        let store = crate::test_support::open_store(dir.path(), other).await;
        assert!(store.get_job(&r.id).unwrap().is_some());
    }

    /// More finished jobs than one chunk of pruning: all of them go, with
    /// their keys; a job that ended later stays.
    async fn pruning_goes_through_every_chunk(engine: StoreEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), engine).unwrap();
        let old = Utc::now() - chrono::Duration::days(40);
        let ended = |i: usize, end: DateTime<Utc>| {
            let mut r = rec(Some(&format!("req-{i}")));
            r.state = JobState::Succeeded;
            r.start_time = Some(end);
            r.end_time = Some(end);
            r
        };
        let n = 2 * PRUNE_CHUNK + 7;
        let recs: Vec<JobRecord> = (0..n).map(|i| ended(i, old)).collect();
        store.put_jobs(&recs).unwrap();
        let recent = ended(n, Utc::now());
        store.put_job(&recent).unwrap();
        store.flush().await.unwrap();
        let cutoff = Utc::now() - chrono::Duration::days(30);
        assert_eq!(store.prune_finished_before(cutoff).unwrap(), n);
        let left: Vec<Uuid> = store
            .job_ids(&JobIndex::All, None)
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(left, vec![recent.id]);
        assert_eq!(store.job_for_request("req-0").unwrap(), None);
        assert_eq!(
            store.job_for_request(&format!("req-{n}")).unwrap(),
            Some(recent.id)
        );
        let ended_ids: Vec<Uuid> = store
            .job_ids(&JobIndex::Ended(JobState::Succeeded), None)
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(ended_ids, vec![recent.id]);
        assert_eq!(store.prune_finished_before(cutoff).unwrap(), 0);
    }
}
