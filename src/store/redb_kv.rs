//! The redb engine (`store_engine = "redb"`): one table in one file,
//! `data_dir/custos.redb`.
//!
//! Every write is its own write transaction committed with
//! [`Durability::None`]: visible to later reads at once, not fsynced, and
//! all or nothing. [`Kv::flush`] commits an empty transaction with
//! [`Durability::Immediate`], which makes it and every non-durable commit
//! before it durable with one `fsync`. After a crash (`kill -9`, power
//! loss) redb opens at its last durable commit, so the store is what the
//! last completed flush covered, never a part of a batch (redb's
//! `Durability` docs and design doc; `docs/store.md`).
//!
//! redb has one writer at a time: a write waits while another one, or a
//! flush's commit and its `fsync`, is under way. Reads never wait (MVCC);
//! a [`Kv::range`] holds a read transaction until it is dropped, which
//! keeps the pages it sees from being reused meanwhile.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use redb::{Durability, OwnedAccessGuard, ReadableDatabase, TableDefinition};

use super::{
    StoreError,
    kv::{Batch, Kv, Op},
};

/// Where the redb store lives in a data dir.
pub(crate) fn location(data_dir: &Path) -> PathBuf {
    data_dir.join("custos.redb")
}

/// The one table: the same keys as sled's one tree.
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("custos");

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

#[derive(Clone)]
pub(crate) struct RedbKv {
    db: Arc<redb::Database>,
    path: PathBuf,
}

impl RedbKv {
    /// Opens (or creates) `data_dir/custos.redb`, its page cache capped at
    /// `cache_bytes`. After a crash redb repairs the file here (it walks
    /// the whole file), so the open may take a while then.
    pub(crate) fn open(data_dir: &Path, cache_bytes: u64) -> Result<RedbKv, String> {
        let path = location(data_dir);
        let db = redb::Database::builder()
            .set_cache_size(usize::try_from(cache_bytes).unwrap_or(usize::MAX))
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => format!(
                    "{}: {e} (is another custos using this data_dir?)",
                    path.display()
                ),
                e => format!("{}: {e}", path.display()),
            })?;
        // The table exists from here on, so that reads never find it missing.
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(TABLE).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        // redb syncs the file, not the folder that names it: a new file's
        // entry is made durable here, before anything in it is
        // acknowledged.
        std::fs::File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", data_dir.display()))?;
        Ok(RedbKv {
            db: Arc::new(db),
            path,
        })
    }

    /// One non-durable write transaction on the table: `f`'s changes are
    /// committed together, or (an error) none of them.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> Result<T, redb::StorageError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write().map_err(io)?;
        txn.set_durability(Durability::None).map_err(io)?;
        let out = {
            let mut table = txn.open_table(TABLE).map_err(io)?;
            f(&mut table).map_err(io)?
        };
        txn.commit().map_err(io)?;
        Ok(out)
    }

    fn read_table(&self) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        txn.open_table(TABLE).map_err(io)
    }
}

/// A stored key or value; it keeps its read transaction alive.
pub(crate) struct RedbBytes(OwnedAccessGuard<&'static [u8]>);

impl AsRef<[u8]> for RedbBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.value()
    }
}

/// A range over one read transaction (a snapshot: writes made after it
/// began are not seen), walked forwards or backwards.
pub(crate) struct RedbRange {
    range: Option<redb::OwnedRange<&'static [u8], &'static [u8]>>,
    rev: bool,
    /// The range could not begin: this error, once.
    failed: Option<StoreError>,
}

impl Iterator for RedbRange {
    type Item = Result<(RedbBytes, RedbBytes), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let Some(range) = &mut self.range else {
            return self.failed.take().map(Err);
        };
        let next = if self.rev {
            range.next_back()
        } else {
            range.next()
        };
        next.map(|kv| kv.map(|(k, v)| (RedbBytes(k), RedbBytes(v))).map_err(io))
    }
}

impl Kv for RedbKv {
    type Bytes = RedbBytes;
    type Range = RedbRange;

    fn get(&self, key: &[u8]) -> Result<Option<RedbBytes>, StoreError> {
        Ok(self
            .read_table()?
            .get_owned(key)
            .map_err(io)?
            .map(RedbBytes))
    }

    fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get(key)?.is_some())
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        self.write(|t| {
            for op in batch.ops {
                match op {
                    Op::Put(k, v) => {
                        t.insert(k.as_slice(), v.as_slice())?;
                    }
                    Op::Remove(k) => {
                        t.remove(k.as_slice())?;
                    }
                }
            }
            Ok(())
        })
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write(|t| t.insert(key, value).map(|_| ()))
    }

    fn remove(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.write(|t| t.remove(key).map(|old| old.is_some()))
    }

    fn range(&self, start: &[u8], end: &[u8], rev: bool) -> RedbRange {
        match self
            .read_table()
            .and_then(|t| t.range_owned::<&[u8]>(start..end).map_err(io))
        {
            Ok(range) => RedbRange {
                range: Some(range),
                rev,
                failed: None,
            },
            Err(e) => RedbRange {
                range: None,
                rev,
                failed: Some(e),
            },
        }
    }

    /// An empty durable commit: redb writes and fsyncs the state that the
    /// non-durable commits before it left.
    fn flush(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(io)?;
        txn.set_durability(Durability::Immediate).map_err(io)?;
        txn.commit().map_err(io)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|e| StoreError::Io(format!("{}: {e}", self.path.display())))
    }
}
