//! The key-value engine under [`Store`](super::Store): an ordered map of
//! byte keys to byte values. `Store` keeps every key layout, index and the
//! group-commit flusher; an engine only stores bytes. Two engines:
//! `sled_kv.rs` (the default) and `redb_kv.rs`, chosen by
//! [`StoreEngine`](super::StoreEngine); [`AnyKv`] is the one `Store` holds
//! (an enum, so calls are a `match`, not a virtual call).
//!
//! What every engine promises:
//! - a write ([`Kv::apply`], [`Kv::put`], [`Kv::remove`]) is visible to
//!   every read that starts after it returns; a batch's operations are
//!   applied in order, and are not atomic on every engine: redb applies
//!   a batch whole or not at all, sled key by key (a reader or a crash
//!   may see a prefix of it), so `Store` orders every batch so that each
//!   prefix is safe (`add_job` in `mod.rs`);
//! - a write that returns an error may have been applied all the same
//!   (sled applies an insert in memory before its log can report an
//!   error): a caller that needs to know reads the key back;
//! - [`Kv::flush`] returns once every write that returned before it was
//!   called is durable (survives `kill -9` of the process);
//! - after a crash the store holds a prefix of the writes, in the order
//!   they were made (at least up to the last completed flush).

use super::StoreError;

/// One change of a [`Batch`].
pub(crate) enum Op {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

/// Puts and removes applied together by [`Kv::apply`], in order.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) ops: Vec<Op>,
}

impl Batch {
    pub(crate) fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(key.into(), value.into()));
    }

    pub(crate) fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Remove(key.into()));
    }
}

/// An ordered byte-key map with ordered batches and a durable flush.
pub(crate) trait Kv: Clone + Send + Sync + 'static {
    /// A stored key or value, without a copy where the engine allows.
    type Bytes: AsRef<[u8]>;
    /// A lazy walk over a key range (it reads as it goes).
    type Range: Iterator<Item = Result<(Self::Bytes, Self::Bytes), StoreError>>;

    fn get(&self, key: &[u8]) -> Result<Option<Self::Bytes>, StoreError>;
    fn contains(&self, key: &[u8]) -> Result<bool, StoreError>;
    /// The batch's operations in order; all or none on redb, a prefix
    /// possible on sled (not yet durable: [`Kv::flush`]).
    fn apply(&self, batch: Batch) -> Result<(), StoreError>;
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Whether the key was there.
    fn remove(&self, key: &[u8]) -> Result<bool, StoreError>;
    /// The keys in `[start, end)`, ascending, or descending when `rev`.
    fn range(&self, start: &[u8], end: &[u8], rev: bool) -> Self::Range;
    /// Blocks until every write that returned before this call is durable.
    fn flush(&self) -> Result<(), StoreError>;
    fn size_on_disk(&self) -> Result<u64, StoreError>;
}

use super::{redb_kv::RedbKv, sled_kv::SledKv};

/// The engine a [`Store`](super::Store) runs on.
#[derive(Clone)]
pub(crate) enum AnyKv {
    Sled(SledKv),
    Redb(RedbKv),
}

pub(crate) enum AnyBytes {
    Sled(<SledKv as Kv>::Bytes),
    Redb(<RedbKv as Kv>::Bytes),
}

impl AsRef<[u8]> for AnyBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            AnyBytes::Sled(b) => b.as_ref(),
            AnyBytes::Redb(b) => b.as_ref(),
        }
    }
}

pub(crate) enum AnyRange {
    Sled(<SledKv as Kv>::Range),
    Redb(<RedbKv as Kv>::Range),
}

impl Iterator for AnyRange {
    type Item = Result<(AnyBytes, AnyBytes), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            AnyRange::Sled(r) => r
                .next()
                .map(|kv| kv.map(|(k, v)| (AnyBytes::Sled(k), AnyBytes::Sled(v)))),
            AnyRange::Redb(r) => r
                .next()
                .map(|kv| kv.map(|(k, v)| (AnyBytes::Redb(k), AnyBytes::Redb(v)))),
        }
    }
}

impl AnyKv {
    /// Whether [`Kv::apply`] writes a batch whole or not at all (redb),
    /// rather than key by key (sled).
    pub(crate) fn atomic_batches(&self) -> bool {
        matches!(self, AnyKv::Redb(_))
    }
}

impl Kv for AnyKv {
    type Bytes = AnyBytes;
    type Range = AnyRange;

    fn get(&self, key: &[u8]) -> Result<Option<AnyBytes>, StoreError> {
        Ok(match self {
            AnyKv::Sled(kv) => kv.get(key)?.map(AnyBytes::Sled),
            AnyKv::Redb(kv) => kv.get(key)?.map(AnyBytes::Redb),
        })
    }

    fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        match self {
            AnyKv::Sled(kv) => kv.contains(key),
            AnyKv::Redb(kv) => kv.contains(key),
        }
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        match self {
            AnyKv::Sled(kv) => kv.apply(batch),
            AnyKv::Redb(kv) => kv.apply(batch),
        }
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        match self {
            AnyKv::Sled(kv) => kv.put(key, value),
            AnyKv::Redb(kv) => kv.put(key, value),
        }
    }

    fn remove(&self, key: &[u8]) -> Result<bool, StoreError> {
        match self {
            AnyKv::Sled(kv) => kv.remove(key),
            AnyKv::Redb(kv) => kv.remove(key),
        }
    }

    fn range(&self, start: &[u8], end: &[u8], rev: bool) -> AnyRange {
        match self {
            AnyKv::Sled(kv) => AnyRange::Sled(kv.range(start, end, rev)),
            AnyKv::Redb(kv) => AnyRange::Redb(kv.range(start, end, rev)),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        match self {
            AnyKv::Sled(kv) => kv.flush(),
            AnyKv::Redb(kv) => kv.flush(),
        }
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        match self {
            AnyKv::Sled(kv) => kv.size_on_disk(),
            AnyKv::Redb(kv) => kv.size_on_disk(),
        }
    }
}
