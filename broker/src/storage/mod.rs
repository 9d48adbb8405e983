//! Storage: the per-room append-only logs, behind a trait that never names
//! RocksDB.
//!
//! Every method here blocks. Callers run them on the sequencer's own thread
//! or through `spawn_blocking`, never on the async reactor.

mod memory;
mod rocks;

use bytes::Bytes;
use confab_codec::{RoomId, Seq};

pub use memory::MemoryLog;
pub use rocks::RocksLog;

use crate::config::Durability;

/// A storage failure. The broker reports it to the client as `Internal`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The underlying engine failed.
    #[error("storage engine: {0}")]
    Engine(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt record in room {room} at seq {seq}")]
    Corrupt {
        /// The room.
        room: String,
        /// The sequence.
        seq: u64,
    },
}

/// One message to append: its room, its sequence and its encoded
/// [`confab_codec::EventRecord`].
#[derive(Debug, Clone)]
pub struct Append<'a> {
    /// The room.
    pub room: &'a RoomId,
    /// Its sequence, assigned by the sequencer.
    pub seq: Seq,
    /// The encoded record.
    pub record: &'a [u8],
}

/// A change to the metadata keyspace (rooms, membership, markers), written
/// atomically with the log entries of the same commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaWrite {
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` to delete the key.
    pub value: Option<Vec<u8>>,
}

/// A metadata key and its value.
pub type MetaEntry = (Vec<u8>, Vec<u8>);

/// The bounds of a room's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogBounds {
    /// The last sequence written (0 if none ever was).
    pub head: Seq,
    /// The oldest retained sequence (head + 1 if the log is empty).
    pub first: Seq,
}

/// A stored record: its sequence and its encoded
/// [`confab_codec::EventRecord`], shared with the storage engine's buffer
/// where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The record's sequence.
    pub seq: Seq,
    /// The encoded record.
    pub bytes: Bytes,
}

/// The per-room logs.
///
/// Appends come from one thread (the sequencer); reads from any thread.
pub trait RoomLog: Send + Sync + 'static {
    /// Appends a group of messages, to any rooms, atomically: after a crash
    /// either all of them are there or none is. Returns once the batch is as
    /// durable as `durability` promises.
    ///
    /// # Errors
    /// If the engine fails; then nothing of the batch may be acknowledged.
    fn append_batch(
        &self,
        batch: &[Append<'_>],
        durability: Durability,
    ) -> Result<(), StorageError> {
        self.commit(batch, &[], durability)
    }

    /// Appends log entries and applies metadata changes in one atomic
    /// write, as durable as `durability` promises.
    ///
    /// # Errors
    /// If the engine fails; then none of it may be acknowledged.
    fn commit(
        &self,
        batch: &[Append<'_>],
        meta: &[MetaWrite],
        durability: Durability,
    ) -> Result<(), StorageError>;

    /// One metadata value.
    ///
    /// # Errors
    /// If the engine fails.
    fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Metadata entries whose key starts with `prefix`, in key order,
    /// starting after `after` (a full key) if given, at most `limit`.
    ///
    /// # Errors
    /// If the engine fails.
    fn meta_scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<MetaEntry>, StorageError>;

    /// The current bounds of a room's log.
    ///
    /// # Errors
    /// If the engine fails.
    fn bounds(&self, room: &RoomId) -> Result<LogBounds, StorageError>;

    /// Records with `from <= seq <= to`, ascending, stopping after `max_count`
    /// records or once `max_bytes` is reached (at least one record is
    /// returned if any is in range).
    ///
    /// # Errors
    /// If the engine fails.
    fn read_range(
        &self,
        room: &RoomId,
        from: Seq,
        to: Seq,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StorageError>;

    /// Up to `max_count` records with `seq < before`, the newest ones,
    /// returned in ascending order.
    ///
    /// # Errors
    /// If the engine fails.
    fn read_before(
        &self,
        room: &RoomId,
        before: Seq,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StorageError>;

    /// Removes every record of `room` with `seq < before` (retention).
    /// Implementations delete the whole range at once (RocksDB: one range
    /// tombstone), never record by record. Callers never trim the head, so
    /// the head stays known after a restart.
    ///
    /// # Errors
    /// If the engine fails; then nothing was removed.
    fn trim(&self, room: &RoomId, before: Seq, durability: Durability) -> Result<(), StorageError>;

    /// Rooms that have a log, in key order, starting after `after`, at most
    /// `limit` (for the retention sweep).
    ///
    /// # Errors
    /// If the engine fails.
    fn log_rooms(&self, after: Option<&RoomId>, limit: usize) -> Result<Vec<RoomId>, StorageError>;

    /// Makes everything appended so far durable (called at shutdown).
    ///
    /// # Errors
    /// If the engine fails.
    fn flush(&self) -> Result<(), StorageError>;

    /// Writes a consistent copy of everything committed so far into `dest`
    /// (a directory that must not exist yet), which can later be restored
    /// as a data directory. Safe while the broker runs.
    ///
    /// # Errors
    /// If the engine fails, `dest` exists, or the storage cannot do it
    /// (the default).
    fn checkpoint(&self, dest: &std::path::Path) -> Result<(), StorageError> {
        let _ = dest;
        Err(StorageError::Engine(
            "this storage cannot write checkpoints".into(),
        ))
    }

    /// Compacts the whole store now, reclaiming the space of overwritten
    /// and deleted entries.
    ///
    /// # Errors
    /// If the engine fails or the storage cannot do it (the default).
    fn compact(&self) -> Result<(), StorageError> {
        Err(StorageError::Engine("this storage cannot compact".into()))
    }
}

/// Storage key of a record: the room id with a one-byte length prefix, then
/// the sequence as a big-endian u64, so that a room's records are contiguous
/// and ordered by sequence.
pub(crate) fn record_key(room: &RoomId, seq: Seq) -> Vec<u8> {
    let id = room.as_bytes();
    let mut key = Vec::with_capacity(1 + id.len() + 8);
    key.push(id.len() as u8);
    key.extend_from_slice(id);
    key.extend_from_slice(&seq.0.to_be_bytes());
    key
}
