//! Storage: the per-room append-only logs, behind a trait that never names
//! RocksDB.
//!
//! Every method here blocks. Callers run them on the sequencer's own thread
//! or through `spawn_blocking`, never on the async reactor.

mod faulty;
mod idem;
mod memory;
pub(crate) mod meta;
mod read_pool;
#[cfg(feature = "rocksdb")]
mod rocks;
mod space;
#[cfg(feature = "rocksdb")]
mod verify;

use bytes::Bytes;
use confab_codec::{ErrorCode, RoomId, Seq};

pub use faulty::{CommitFault, FaultyLog, ReadHook, ReadSeen};
pub(crate) use idem::idempotency_keys;
pub use memory::MemoryLog;
pub(crate) use read_pool::{ReadError, ReadPool};
#[cfg(feature = "rocksdb")]
pub use rocks::RocksLog;
pub use space::SpaceStatus;
pub(crate) use space::{watch as watch_space, SpaceState};
#[cfg(feature = "rocksdb")]
pub use verify::{verify, Damage, VerifyReport};

use serde::{Deserialize, Serialize};

/// How durable an acknowledged publish is. See docs/operations.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// No write-ahead log: acknowledged messages live in memory until the
    /// next flush. Survives a clean shutdown only. For benchmarks.
    None,
    /// Write-ahead log without fsync: survives a process crash or
    /// `kill -9`, not a power loss or kernel crash.
    Wal,
    /// Write-ahead log fsynced before each group commit is acknowledged:
    /// survives power loss.
    Fsync,
}

/// A storage failure. The broker reports it to the client as `Internal`,
/// or as `StorageFull` when the disk is full ([`StorageError::wire_code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The underlying engine failed.
    #[error("storage engine: {0}")]
    Engine(String),
    /// The disk (or the engine's space limit) is full: the write was
    /// refused and nothing of it is stored. Writes are accepted again once
    /// space is freed (see [`RoomLog::space`]); reads keep working.
    #[error("storage full: {0}")]
    NoSpace(String),
    /// A commit that writes each room on its own (cluster mode: one
    /// fenced chunk per room) stored every room of it except `failed`:
    /// nothing of those rooms' entries may be acknowledged, the other
    /// rooms' entries and the metadata are stored.
    #[error("commit failed for {} room(s): {message}", failed.len())]
    Rooms {
        /// The rooms whose entries are not (all) stored.
        failed: Vec<RoomId>,
        /// Why (the first failure).
        message: String,
    },
    /// Stored bytes could not be decoded.
    #[error("corrupt record in room {room} at seq {seq}")]
    Corrupt {
        /// The room.
        room: String,
        /// The sequence.
        seq: u64,
    },
}

impl StorageError {
    /// Whether the write was refused because the disk is full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StorageError::NoSpace(_))
    }

    /// The code a client is answered with when a request fails with this
    /// error: `StorageFull` (retryable, nothing was stored) for a full
    /// disk, `Internal` otherwise.
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            StorageError::NoSpace(_) => ErrorCode::StorageFull,
            _ => ErrorCode::Internal,
        }
    }
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
    /// For a publish that carries a client message id: its idempotency
    /// identity, recorded in the same atomic write so that a retry finds
    /// the original for as long as the message is retained.
    pub idem: Option<IdemWrite<'a>>,
    /// The record's timestamp (returned with the original to a retry).
    pub timestamp_us: u64,
}

/// The idempotency identity of a publish within a room: the sending device
/// (`user \0 device`) and the client's message id (never 0: publishes
/// without one are not deduplicated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdemKey<'a> {
    /// `user \0 device`.
    pub sender: &'a str,
    /// The client message id.
    pub client_msg_id: u64,
}

/// How a publish enters the idempotency index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdemWrite<'a> {
    /// Its identity.
    pub key: IdemKey<'a>,
    /// The id is above every id this sender had stored (in any room), and
    /// above the sender's earlier ids in the same commit: storage may pack
    /// it with its neighbours instead of writing an entry of its own.
    pub fresh: bool,
    /// The sender's high-water mark with this publish: an upper bound of
    /// every id it has stored, this one included, that
    /// [`RoomLog::high_water`] returns from then on.
    pub mark: u64,
}

/// What a publish got when it was first stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Original {
    /// Its sequence.
    pub seq: Seq,
    /// Its timestamp.
    pub timestamp_us: u64,
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
    /// If the engine fails; then none of it may be acknowledged. An engine
    /// that writes each room on its own (cluster mode) returns
    /// [`StorageError::Rooms`] when only some rooms failed: the others and
    /// the metadata are stored.
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

    /// Removes every record of `room` with `seq < before` (retention),
    /// and, in the same atomic write, the idempotency entries `forget` of
    /// those records (the caller read them). Implementations delete the
    /// records at once (RocksDB: one range tombstone), never record by
    /// record. Callers never trim the head, so the head stays known after
    /// a restart.
    ///
    /// # Errors
    /// If the engine fails; then nothing was removed.
    fn trim(
        &self,
        room: &RoomId,
        before: Seq,
        forget: &[IdemKey<'_>],
        durability: Durability,
    ) -> Result<(), StorageError>;

    /// The original of a publish recorded in `room` under `key`, if any.
    /// Retention removes index entries lazily: the original may be below
    /// the room's first retained sequence, and callers must treat it then
    /// as absent.
    ///
    /// # Errors
    /// If the engine fails.
    fn original(&self, room: &RoomId, key: IdemKey<'_>) -> Result<Option<Original>, StorageError>;

    /// An upper bound of the client message ids recorded for `sender` in
    /// any room (0 if none): every id above it is new.
    ///
    /// # Errors
    /// If the engine fails.
    fn high_water(&self, sender: &str) -> Result<u64, StorageError>;

    /// Rooms that have a log, in key order, starting after `after`, at most
    /// `limit` (for the retention sweep).
    ///
    /// # Errors
    /// If the engine fails.
    fn log_rooms(&self, after: Option<&RoomId>, limit: usize) -> Result<Vec<RoomId>, StorageError>;

    /// The sequencer dropped `room` from memory (idle, nobody follows it
    /// on this broker): whatever the storage keeps in memory for writing or
    /// following it may go. The next use of the room reads it again
    /// (`bounds`). Called on the sequencer's thread between steps, with no
    /// commit in flight. The default keeps nothing and does nothing.
    fn room_dropped(&self, room: &RoomId) {
        let _ = room;
    }

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

    /// Whether writes are refused because the disk is full, as of the last
    /// write or [`RoomLog::probe_space`], and how many were. The default
    /// (a storage that never reports a full disk): never.
    fn space(&self) -> SpaceStatus {
        SpaceStatus::default()
    }

    /// Checks, without storing anything, whether the storage accepts writes
    /// again after it refused one for lack of space, and updates
    /// [`RoomLog::space`]. The broker calls it about once a second while
    /// the storage is full, so that the state (and its metric) ends when
    /// space is back even if no client writes. The default does nothing.
    ///
    /// # Errors
    /// The error a write would get now ([`StorageError::NoSpace`] while the
    /// disk is still full).
    fn probe_space(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Storage key of a record: the room id with a one-byte length prefix, then
/// the sequence as a big-endian u64, so that a room's records are contiguous
/// and ordered by sequence.
#[cfg_attr(not(feature = "rocksdb"), allow(dead_code))] // RocksDB's key layout
pub(crate) fn record_key(room: &RoomId, seq: Seq) -> Vec<u8> {
    let id = room.as_bytes();
    let mut key = Vec::with_capacity(1 + id.len() + 8);
    key.push(id.len() as u8);
    key.extend_from_slice(id);
    key.extend_from_slice(&seq.0.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The idempotency index behaves the same in both engines: written with
    /// the messages (runs of fresh ids, single entries of the others),
    /// found by (room, sender, id), a sender's mark one read away, and
    /// deleted with the messages that retention trims.
    fn idempotency_index(log: &dyn RoomLog) {
        let a = RoomId::new("a").expect("id");
        let b = RoomId::new("b").expect("id");
        let (me, other) = ("me\0phone", "me\0phonf");
        let append = |room, seq, sender, id, fresh| Append {
            room,
            seq: Seq(seq),
            record: b"r",
            idem: Some(IdemWrite {
                key: IdemKey {
                    sender,
                    client_msg_id: id,
                },
                fresh,
                mark: id.max(if fresh { 0 } else { 20 }),
            }),
            timestamp_us: seq * 100,
        };
        log.append_batch(
            &[
                append(&a, 1, me, 7, true),
                append(&a, 2, other, u64::MAX, true),
                append(&b, 1, me, 9, true),
                append(&a, 3, me, 11, true),
                append(&a, 4, me, 3, false),
            ],
            Durability::Wal,
        )
        .expect("append");
        log.append_batch(&[append(&a, 5, me, 20, true)], Durability::Wal)
            .expect("append");
        let key = |sender, id| IdemKey {
            sender,
            client_msg_id: id,
        };
        let orig = |seq: u64| Original {
            seq: Seq(seq),
            timestamp_us: seq * 100,
        };
        let found = |room, sender, id| log.original(room, key(sender, id)).expect("get");
        assert_eq!(found(&a, me, 7), Some(orig(1)));
        assert_eq!(found(&a, me, 11), Some(orig(3)));
        assert_eq!(found(&a, me, 3), Some(orig(4)));
        assert_eq!(found(&a, me, 20), Some(orig(5)));
        assert_eq!(found(&b, me, 9), Some(orig(1)));
        assert_eq!(found(&a, other, u64::MAX), Some(orig(2)));
        for absent in [0, 2, 8, 9, 10, 12, 19, 21, u64::MAX] {
            assert_eq!(found(&a, me, absent), None, "id {absent}");
        }
        assert_eq!(found(&b, me, 7), None, "per room");
        assert_eq!(log.high_water(me).expect("mark"), 20);
        assert_eq!(log.high_water(other).expect("mark"), u64::MAX);
        assert_eq!(
            log.high_water("me\0pho").expect("mark"),
            0,
            "a prefix is not a sender"
        );
        // Retention trims seqs 1..=4 of room a.
        log.trim(
            &a,
            Seq(5),
            &[key(me, 7), key(me, 11), key(me, 3)],
            Durability::Wal,
        )
        .expect("trim");
        for gone in [7, 11, 3] {
            assert_eq!(found(&a, me, gone), None, "id {gone} trimmed");
        }
        assert_eq!(found(&a, me, 20), Some(orig(5)));
        assert_eq!(found(&b, me, 9), Some(orig(1)), "other rooms keep theirs");
        assert_eq!(log.bounds(&a).expect("bounds").first, Seq(5));
    }

    #[test]
    fn idempotency_index_in_memory() {
        idempotency_index(&MemoryLog::new());
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn idempotency_index_in_rocksdb() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = RocksLog::open(dir.path(), 1 << 20).expect("open");
        idempotency_index(&log);
        drop(log);
        // And after reopening.
        let log = RocksLog::open(dir.path(), 1 << 20).expect("open");
        assert_eq!(log.high_water("me\0phone").expect("mark"), 20);
        assert_eq!(
            log.original(
                &RoomId::new("a").expect("id"),
                IdemKey {
                    sender: "me\0phone",
                    client_msg_id: 20,
                }
            )
            .expect("get")
            .map(|o| o.seq),
            Some(Seq(5))
        );
    }

    /// `confab admin` opens a data directory as a secondary instance; one
    /// written before the idempotency index existed has no `idem` column
    /// family, and the secondary (which cannot create it) still opens.
    #[cfg(feature = "rocksdb")]
    #[test]
    fn a_secondary_opens_a_directory_without_the_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let old = rocksdb::DB::open_cf(&opts, dir.path(), ["log", "meta"]).expect("old layout");
        drop(old);
        let second = tempfile::tempdir().expect("tempdir");
        let log = RocksLog::open_secondary(dir.path(), second.path()).expect("secondary");
        let room = RoomId::new("r").expect("id");
        assert_eq!(log.bounds(&room).expect("bounds").head, Seq(0));
        assert!(
            log.high_water("u\0d").is_err(),
            "a clear error, not a panic"
        );
    }
}
