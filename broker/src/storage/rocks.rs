//! The RocksDB [`RoomLog`]. See docs/architecture.md for the key layout and
//! the tuning choices.

use std::path::Path;

use bytes::Bytes;
use confab_codec::{RoomId, Seq};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};

use super::idem;
use super::Durability;
use super::{
    record_key, Append, IdemKey, LogBounds, MetaEntry, MetaWrite, Original, RoomLog, SpaceState,
    SpaceStatus, StorageError, StoredRecord,
};

/// Column family of the room logs.
pub(crate) const CF_LOG: &str = "log";
/// Column family of room metadata, membership and cursors.
pub(crate) const CF_META: &str = "meta";
/// Column family of the idempotency index (layout in `storage/idem.rs`).
pub(crate) const CF_IDEM: &str = "idem";

impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        StorageError::from_status(e.into_string())
    }
}

impl StorageError {
    /// The error for a RocksDB status text.
    fn from_status(message: impl Into<String>) -> Self {
        let message = message.into();
        if is_no_space(&message) {
            StorageError::NoSpace(message)
        } else {
            StorageError::Engine(message)
        }
    }
}

/// Whether a RocksDB status says the disk is full. RocksDB reports ENOSPC
/// as an IO error with the `NoSpace` subcode ("IO error: No space left on
/// device: While appending to file: ...") and a full `SstFileManager` quota
/// with `SpaceLimit` ("IO error: Space limit reached"). The crate exposes
/// the code (`ErrorKind::IOError`) but not the subcode, so the text
/// decides. Once a write has failed that way RocksDB stops accepting
/// writes and answers every later one with the same status, and a flush
/// waiting on it wraps it ("Result incomplete: IO error: No space ..."):
/// hence a search, not a prefix match.
fn is_no_space(message: &str) -> bool {
    message.contains("No space left on device") || message.contains("Space limit reached")
}

/// Room logs in a RocksDB database.
pub struct RocksLog {
    db: DB,
    /// Whether writes are refused for lack of space (see `probe_space`).
    space: SpaceState,
}

impl std::fmt::Debug for RocksLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksLog")
            .field("path", &self.db.path())
            .finish()
    }
}

impl RocksLog {
    /// Writes a batch, noting whether the disk is full.
    fn write(&self, wb: WriteBatch, durability: Durability) -> Result<(), StorageError> {
        let written = self
            .db
            .write_opt(wb, &write_options(durability))
            .map_err(StorageError::from);
        self.space.observe(&written);
        written
    }

    /// Opens (or creates) the database in `dir`.
    ///
    /// # Errors
    /// If RocksDB cannot open it (permissions, another process holds its lock,
    /// corruption), or a WAL or the MANIFEST fails our own record checks.
    pub fn open(dir: &Path, block_cache_bytes: usize) -> Result<Self, StorageError> {
        let mut db_opts = Options::default();
        checked(&mut db_opts);
        // The sizes of closed, synced WALs go into the MANIFEST and are
        // checked at recovery: a truncated or missing one is refused (the
        // live WAL is not tracked; `admin verify` reads it record by record).
        db_opts.set_track_and_verify_wals_in_manifest(true);
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_wal_bytes_per_sync(1 << 20);
        db_opts.set_max_total_wal_size(512 << 20);
        db_opts.set_keep_log_file_num(4);

        let cfs = column_families(block_cache_bytes);
        // Our own reading of the logs RocksDB is about to replay.
        let pre = super::verify::pre_open(dir);
        if !pre.damage.is_empty() {
            return Err(StorageError::Engine(format!(
                "refusing to open a damaged database: {} (run `confab admin verify`)",
                pre.damage.join("; ")
            )));
        }
        for tail in pre.torn {
            tracing::warn!(
                %tail,
                "a log ends inside a record: RocksDB drops the record; after a crash or power cut this is a write that was never acknowledged, otherwise the file was damaged (run `confab admin verify`)"
            );
        }
        let db = DB::open_cf_descriptors(&db_opts, dir, cfs)?;
        Ok(Self {
            db,
            space: SpaceState::default(),
        })
    }

    /// Opens the database in `dir` as a secondary instance, whose own
    /// files go to `secondary_dir`: read-only, and usable while a broker
    /// holds `dir` as its primary (RocksDB admits a single writer). It sees
    /// what the primary had written when it opened; see
    /// [`RocksLog::catch_up`].
    ///
    /// # Errors
    /// If RocksDB cannot open it (no database in `dir`, permissions).
    pub fn open_secondary(dir: &Path, secondary_dir: &Path) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.set_max_open_files(-1);
        // A directory that no broker of this version has opened yet has no
        // idempotency index: open what is there (a secondary cannot create).
        let existing = DB::list_cf(&opts, dir)?;
        let cfs = [CF_LOG, CF_META, CF_IDEM]
            .into_iter()
            .filter(|cf| existing.iter().any(|e| e == cf));
        let db = DB::open_cf_as_secondary(&opts, dir, secondary_dir, cfs)?;
        Ok(Self {
            db,
            space: SpaceState::default(),
        })
    }

    /// Opens the database in `dir` read-only, with every check on, to
    /// verify it (`confab admin verify`): it replays the WALs in memory and
    /// writes nothing, so it also works beside a running broker (seeing
    /// what is on disk at that moment).
    ///
    /// # Errors
    /// If RocksDB cannot open it: a missing or damaged MANIFEST, WAL or
    /// table file is refused here, with a message naming it.
    pub fn open_read_only(dir: &Path) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        checked(&mut opts);
        // The broker's own table options, so that the filter blocks are
        // read (and checked) too: a reader without the filter policy the
        // files were written with skips them.
        let existing = DB::list_cf(&opts, dir)?;
        let cfs = column_families(8 << 20)
            .into_iter()
            .filter(|d| existing.iter().any(|e| e == d.name()));
        let db = DB::open_cf_descriptors_read_only(&opts, dir, cfs, false)?;
        Ok(Self {
            db,
            space: SpaceState::default(),
        })
    }

    /// The database, for `storage::verify`.
    pub(super) fn db(&self) -> &DB {
        &self.db
    }

    /// Brings a secondary instance up to date with its primary.
    ///
    /// # Errors
    /// If RocksDB fails.
    pub fn catch_up(&self) -> Result<(), StorageError> {
        Ok(self.db.try_catch_up_with_primary()?)
    }

    fn meta_cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_META)
            .expect("the meta column family is created at open")
    }

    fn log_cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_LOG)
            .expect("the log column family is created at open")
    }

    /// The idempotency index (absent only in a secondary instance opened
    /// on a directory that no broker of this version has opened yet).
    fn idem_cf(&self) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db.cf_handle(CF_IDEM).ok_or_else(|| {
            StorageError::Engine(
                "this data directory has no idempotency index yet; start the broker on it once"
                    .into(),
            )
        })
    }
}

/// The column families and their tuning, with a block cache of
/// `block_cache_bytes` shared by all three.
fn column_families(block_cache_bytes: usize) -> Vec<ColumnFamilyDescriptor> {
    let cache = Cache::new_lru_cache(block_cache_bytes);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_block_size(16 << 10);
    table.set_cache_index_and_filter_blocks(true);

    // Logs are written once, read mostly near the head, and compress
    // well: LZ4 keeps compaction cheap on 2 cores.
    let mut log_opts = Options::default();
    log_opts.set_compression_type(DBCompressionType::Lz4);
    log_opts.set_write_buffer_size(64 << 20);
    log_opts.set_max_write_buffer_number(4);
    log_opts.set_level_compaction_dynamic_level_bytes(true);
    log_opts.set_block_based_table_factory(&table);

    let mut meta_opts = Options::default();
    meta_opts.set_compression_type(DBCompressionType::Lz4);
    let mut meta_table = BlockBasedOptions::default();
    meta_table.set_block_cache(&cache);
    meta_table.set_bloom_filter(10.0, false);
    meta_opts.set_block_based_table_factory(&meta_table);

    // Point lookups of retries, marks and single entries: whole-key
    // bloom filters answer "never seen" without reading a block.
    // Entries are small and short-lived under retention.
    let mut idem_opts = Options::default();
    idem_opts.set_compression_type(DBCompressionType::Lz4);
    idem_opts.set_write_buffer_size(32 << 20);
    let mut idem_table = BlockBasedOptions::default();
    idem_table.set_block_cache(&cache);
    idem_table.set_bloom_filter(10.0, false);
    idem_table.set_cache_index_and_filter_blocks(true);
    idem_opts.set_block_based_table_factory(&idem_table);

    vec![
        ColumnFamilyDescriptor::new(CF_LOG, log_opts),
        ColumnFamilyDescriptor::new(CF_META, meta_opts),
        ColumnFamilyDescriptor::new(CF_IDEM, idem_opts),
    ]
}

/// The integrity checks every open runs with: RocksDB stops on any
/// inconsistency it finds (`paranoid_checks`, its default, stated), and a
/// WAL record that fails its checksum stops recovery with an error
/// (`TolerateCorruptedTailRecords`: only a record left incomplete at the
/// very end of the last WAL, a write a crash cut short, is dropped; the
/// default, `PointInTime`, would silently drop everything after a damaged
/// record, and the sequences with it). Table blocks are checked against
/// their checksums on every read (`ReadOptions::verify_checksums`, on by
/// default), so a damaged block is an error, never wrong bytes.
fn checked(opts: &mut Options) {
    opts.set_paranoid_checks(true);
    opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
}

fn write_options(durability: Durability) -> WriteOptions {
    let mut opts = WriteOptions::default();
    match durability {
        Durability::None => opts.disable_wal(true),
        Durability::Wal => opts.set_sync(false),
        Durability::Fsync => opts.set_sync(true),
    }
    opts
}

fn decode_seq(key: &[u8], prefix_len: usize) -> Option<Seq> {
    let tail: [u8; 8] = key.get(prefix_len..prefix_len + 8)?.try_into().ok()?;
    Some(Seq(u64::from_be_bytes(tail)))
}

impl RoomLog for RocksLog {
    fn commit(
        &self,
        batch: &[Append<'_>],
        meta: &[MetaWrite],
        durability: Durability,
    ) -> Result<(), StorageError> {
        let cf = self.log_cf();
        let icf = self.idem_cf()?;
        let mut wb = WriteBatch::default();
        for a in batch {
            wb.put_cf(cf, record_key(a.room, a.seq), a.record);
        }
        for (key, value) in idem::commit_writes(batch) {
            wb.put_cf(icf, key, value);
        }
        if !meta.is_empty() {
            let mcf = self.meta_cf();
            for w in meta {
                match &w.value {
                    Some(v) => wb.put_cf(mcf, &w.key, v),
                    None => wb.delete_cf(mcf, &w.key),
                }
            }
        }
        self.write(wb, durability)
    }

    fn bounds(&self, room: &RoomId) -> Result<LogBounds, StorageError> {
        let cf = self.log_cf();
        let prefix_len = 1 + room.as_bytes().len();
        let lower = record_key(room, Seq(0));
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(lower.clone());
        let mut it = self.db.raw_iterator_cf_opt(cf, opts);
        it.seek_for_prev(record_key(room, Seq(u64::MAX)));
        let head = match it.key() {
            Some(k) if k.len() == prefix_len + 8 && k[..prefix_len] == lower[..prefix_len] => {
                decode_seq(k, prefix_len)
            }
            _ => None,
        };
        it.status()?;
        let Some(head) = head else {
            return Ok(LogBounds {
                head: Seq(0),
                first: Seq(1),
            });
        };
        it.seek(&lower);
        let first = match it.key() {
            Some(k) if k.len() == prefix_len + 8 && k[..prefix_len] == lower[..prefix_len] => {
                decode_seq(k, prefix_len).unwrap_or(head)
            }
            _ => head,
        };
        it.status()?;
        Ok(LogBounds { head, first })
    }

    fn read_range(
        &self,
        room: &RoomId,
        from: Seq,
        to: Seq,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        let mut out = Vec::new();
        if from > to || max_count == 0 {
            return Ok(out);
        }
        let cf = self.log_cf();
        let prefix_len = 1 + room.as_bytes().len();
        let end = record_key(room, to);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(record_key(room, Seq(u64::MAX)));
        let mut it = self.db.raw_iterator_cf_opt(cf, opts);
        it.seek(record_key(room, from));
        let mut bytes = 0usize;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k > end.as_slice() || out.len() >= max_count {
                break;
            }
            if !out.is_empty() && bytes + v.len() > max_bytes {
                break;
            }
            let seq = decode_seq(k, prefix_len).ok_or_else(|| StorageError::Corrupt {
                room: room.to_string(),
                seq: 0,
            })?;
            bytes += v.len();
            out.push(StoredRecord {
                seq,
                bytes: Bytes::copy_from_slice(v),
            });
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    fn read_before(
        &self,
        room: &RoomId,
        before: Seq,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        let mut out = Vec::new();
        if before.0 <= 1 || max_count == 0 {
            return Ok(out);
        }
        let cf = self.log_cf();
        let prefix_len = 1 + room.as_bytes().len();
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(record_key(room, Seq(0)));
        let mut it = self.db.raw_iterator_cf_opt(cf, opts);
        it.seek_for_prev(record_key(room, Seq(before.0 - 1)));
        let mut bytes = 0usize;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if out.len() >= max_count || (!out.is_empty() && bytes + v.len() > max_bytes) {
                break;
            }
            let seq = decode_seq(k, prefix_len).ok_or_else(|| StorageError::Corrupt {
                room: room.to_string(),
                seq: 0,
            })?;
            bytes += v.len();
            out.push(StoredRecord {
                seq,
                bytes: Bytes::copy_from_slice(v),
            });
            it.prev();
        }
        it.status()?;
        out.reverse();
        Ok(out)
    }

    fn trim(
        &self,
        room: &RoomId,
        before: Seq,
        forget: &[IdemKey<'_>],
        durability: Durability,
    ) -> Result<(), StorageError> {
        if before.0 <= 1 {
            return Ok(());
        }
        // One range tombstone; compaction reclaims the space later.
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(
            self.log_cf(),
            record_key(room, Seq(0)),
            record_key(room, before),
        );
        let icf = self.idem_cf()?;
        let (singles, runs) = idem::trim_deletes(room, forget);
        for key in singles {
            wb.delete_cf(icf, key);
        }
        for (from, to) in runs {
            wb.delete_range_cf(icf, from, to);
        }
        self.write(wb, durability)
    }

    fn original(&self, room: &RoomId, key: IdemKey<'_>) -> Result<Option<Original>, StorageError> {
        let icf = self.idem_cf()?;
        let corrupt = || StorageError::Corrupt {
            room: room.to_string(),
            seq: 0,
        };
        if let Some(v) = self.db.get_pinned_cf(icf, idem::single_key(room, key))? {
            return idem::decode_single(&v).map(Some).ok_or_else(corrupt);
        }
        // The one run that may hold the id: the first whose max is at or
        // above it.
        let prefix = idem::run_prefix(key.sender, room);
        let mut opts = ReadOptions::default();
        if let Some(upper) = idem::successor(&prefix) {
            opts.set_iterate_upper_bound(upper);
        }
        let mut it = self.db.raw_iterator_cf_opt(icf, opts);
        it.seek(idem::run_key(key.sender, room, key.client_msg_id));
        let found = match it.value() {
            Some(v) => match idem::run_min_id(v) {
                Some(min) if min <= key.client_msg_id => idem::find_in_run(v, key.client_msg_id),
                Some(_) => None,
                None => return Err(corrupt()),
            },
            None => None,
        };
        it.status()?;
        Ok(found)
    }

    fn high_water(&self, sender: &str) -> Result<u64, StorageError> {
        let v = self
            .db
            .get_pinned_cf(self.idem_cf()?, idem::mark_key(sender))?;
        Ok(v.and_then(|v| idem::decode_u64(&v)).unwrap_or(0))
    }

    fn log_rooms(&self, after: Option<&RoomId>, limit: usize) -> Result<Vec<RoomId>, StorageError> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.log_cf());
        match after {
            // The key after every record of `after`.
            Some(room) => {
                let mut k = record_key(room, Seq(u64::MAX));
                k.push(0);
                it.seek(k);
            }
            None => it.seek_to_first(),
        }
        while out.len() < limit {
            let Some(key) = it.key() else { break };
            let len = key.first().map_or(0, |&b| usize::from(b));
            let id = key
                .get(1..1 + len)
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| RoomId::new(s).ok())
                .ok_or_else(|| StorageError::Corrupt {
                    room: String::from_utf8_lossy(key).into_owned(),
                    seq: 0,
                })?;
            let mut next = record_key(&id, Seq(u64::MAX));
            next.push(0);
            out.push(id);
            it.seek(next);
        }
        it.status()?;
        Ok(out)
    }

    fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.meta_cf(), key)?)
    }

    fn meta_scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<MetaEntry>, StorageError> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.meta_cf());
        it.seek(after.unwrap_or(prefix));
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            if Some(k) != after {
                out.push((k.to_vec(), v.to_vec()));
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        let cfs: Vec<&rocksdb::ColumnFamily> = [CF_LOG, CF_META, CF_IDEM]
            .iter()
            .filter_map(|name| self.db.cf_handle(name))
            .collect();
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }

    fn checkpoint(&self, dest: &Path) -> Result<(), StorageError> {
        if dest.exists() {
            return Err(StorageError::Engine(format!(
                "{} already exists",
                dest.display()
            )));
        }
        // A checkpoint hard-links the immutable table files (copies them
        // across file systems) and copies the WAL tail: consistent as of one
        // instant, while writes go on.
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(dest)?;
        Ok(())
    }

    fn compact(&self) -> Result<(), StorageError> {
        for cf in [self.log_cf(), self.meta_cf(), self.idem_cf()?] {
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    fn space(&self) -> SpaceStatus {
        self.space.status()
    }

    /// An empty batch without the WAL: it stores and writes nothing, but
    /// goes through the check that refuses every write while RocksDB is
    /// stopped by a background error. After a full disk RocksDB lifts that
    /// stop by itself (see docs/operations.md, "Disk full"); this only
    /// notices.
    fn probe_space(&self) -> Result<(), StorageError> {
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        let written = self
            .db
            .write_opt(WriteBatch::default(), &opts)
            .map_err(StorageError::from);
        self.space.observe(&written);
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_apart_from_other_failures() {
        for full in [
            "IO error: No space left on device: While appending to file: /d/000012.log: No space left on device",
            "IO error: Space limit reached",
            "Result incomplete: IO error: No space left on device: While appending to file: x",
        ] {
            assert!(StorageError::from_status(full).is_no_space(), "{full}");
        }
        for other in [
            "IO error: While open a file for appending: /d/LOCK: Permission denied",
            "Corruption: block checksum mismatch",
        ] {
            assert!(!StorageError::from_status(other).is_no_space(), "{other}");
        }
    }
}
