//! The sled 0.34 engine (the default): one tree in `data_dir/db`.
//!
//! A write is in sled's memory when it returns (sled promises nothing
//! until a flush); a [`Batch`] is applied key by key, not atomically
//! (see `apply`);
//! [`Kv::flush`] is `sled::Db::flush`, which writes with `sync_file_range`
//! (survives `kill -9`, not a power loss: `docs/store.md`). sled 0.34's
//! `flush_async` hangs with concurrent callers, so `Store` never calls it:
//! its flusher task (and, outside it, pruning and the index build at
//! open) calls the blocking `flush`.

use std::path::{Path, PathBuf};

use super::{
    StoreError,
    kv::{Batch, Kv, Op},
};

/// Where the sled store lives in a data dir.
pub(crate) fn location(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

#[derive(Clone)]
pub(crate) struct SledKv {
    db: sled::Db,
}

impl SledKv {
    /// Opens (or creates) the store in `data_dir/db`, its cache capped at
    /// `cache_bytes`.
    pub(crate) fn open(data_dir: &Path, cache_bytes: u64) -> Result<SledKv, String> {
        let db = sled::Config::new()
            .path(location(data_dir))
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| format!("{e} (is another custos using this data_dir?)"))?;
        Ok(SledKv { db })
    }
}

/// sled's range, walked forwards or backwards.
pub(crate) struct SledRange {
    iter: sled::Iter,
    rev: bool,
}

impl Iterator for SledRange {
    type Item = Result<(sled::IVec, sled::IVec), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = if self.rev {
            self.iter.next_back()
        } else {
            self.iter.next()
        };
        next.map(|kv| kv.map_err(StoreError::from))
    }
}

impl Kv for SledKv {
    type Bytes = sled::IVec;
    type Range = SledRange;

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.db.get(key)?)
    }

    fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.db.contains_key(key)?)
    }

    /// Key by key, in order, not as a `sled::Batch`: sled 0.34's
    /// `apply_batch` takes a process-wide lock for writing, and once one
    /// batch has run every `insert` and `get` of the process takes it for
    /// reading (`concurrency_control` in sled's source); with batches the
    /// daemon's P1 ratio was 0.039 against 0.125 without, and its P2
    /// ratio 3.64 against 2.89 (medians of three alternated runs,
    /// `docs/benchmarks.md`, sixth stop). A crash keeps a prefix of the
    /// operations, as of all writes (sled recovers a prefix of its log);
    /// `Store` orders every batch so that any prefix is safe (`add_job`).
    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        for op in batch.ops {
            match op {
                Op::Put(k, v) => {
                    self.db.insert(k, v)?;
                }
                Op::Remove(k) => {
                    self.db.remove(k)?;
                }
            }
        }
        Ok(())
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db.insert(key, value)?;
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.db.remove(key)?.is_some())
    }

    fn range(&self, start: &[u8], end: &[u8], rev: bool) -> SledRange {
        SledRange {
            iter: self.db.range::<&[u8], _>(start..end),
            rev,
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}
