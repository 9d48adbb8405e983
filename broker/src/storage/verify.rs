//! `confab admin verify`: reads every byte of a data directory that can be
//! checked and says exactly what is damaged.
//!
//! Three layers:
//!
//! 1. Our own reading of every WAL and MANIFEST file, record by record
//!    (RocksDB's log format: 32 KiB blocks of records, each with a masked
//!    CRC32C of its type and payload, zero padding at block ends): a record
//!    whose checksum fails, a length that overruns its block, padding that
//!    is not zero (RocksDB skips it unread), a file that ends inside a
//!    record (a write cut short, or a truncated file).
//!    The same for every table file's meta blocks (filter, index,
//!    properties and the metaindex that lists them): a damaged filter
//!    block is never reported by a read (RocksDB treats an unreadable
//!    filter as "may match"), so its checksum is computed here.
//! 2. RocksDB's own checks, all on: a read-only open replays the WALs and
//!    reads the MANIFEST and every table file's footer, properties and
//!    filters; then every table file's key range is read with block
//!    checksums verified, and its first and last keys looked up (which
//!    reads its filter).
//! 3. The records themselves: every log key names a room and a sequence
//!    and decodes as a stored event of that sequence, and every room holds
//!    exactly `first..=head`.

use std::fmt::Write as _;
use std::path::Path;

use confab_codec::EventRecord;
use rocksdb::{Direction, IteratorMode, ReadOptions};

use super::rocks::{CF_LOG, CF_META};
use super::RocksLog;

/// RocksDB's log block size.
const BLOCK: usize = 32 * 1024;
/// A log record's header: CRC (4), length (2), type (1).
const HEADER: usize = 7;
/// With the log number (4) of recyclable record types.
const RECYCLABLE_HEADER: usize = 11;

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// WAL files read.
    pub wal_files: usize,
    /// MANIFEST files read.
    pub manifests: usize,
    /// Table (SST) files checked, and their bytes.
    pub table_files: usize,
    /// Bytes of the table files.
    pub table_bytes: u64,
    /// Rooms with a log.
    pub rooms: usize,
    /// Log entries read.
    pub entries: u64,
    /// Everything damaged, one finding each.
    pub damage: Vec<Damage>,
}

/// One damaged thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The file, when one is known (its name in the data directory).
    pub file: Option<String>,
    /// What is wrong, and what it holds.
    pub what: String,
}

impl VerifyReport {
    /// The report as the operator reads it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "checked: {} WAL files, {} MANIFEST files, {} table files ({} bytes), {} rooms, {} log entries",
            self.wal_files, self.manifests, self.table_files, self.table_bytes, self.rooms, self.entries
        );
        for d in &self.damage {
            let _ = writeln!(
                out,
                "DAMAGED {}: {}",
                d.file.as_deref().unwrap_or("(database)"),
                d.what
            );
        }
        if self.damage.is_empty() {
            let _ = writeln!(out, "verdict: ok");
        } else {
            let _ = writeln!(
                out,
                "verdict: damaged ({} findings); see docs/operations.md, \"Verifying a data directory\"",
                self.damage.len()
            );
        }
        out
    }

    fn damaged(&mut self, file: Option<String>, what: impl Into<String>) {
        let d = Damage {
            file,
            what: what.into(),
        };
        if !self.damage.contains(&d) {
            self.damage.push(d);
        }
    }
}

/// Verifies the data directory `dir` (a stopped broker's, for a complete
/// answer: beside a running broker the newest WAL may end inside a record
/// being written).
///
/// # Errors
/// Only if `dir` cannot be listed; every damage is in the report.
pub fn verify(dir: &Path) -> std::io::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in &names {
        if name.ends_with(".sst") {
            match std::fs::read(dir.join(name)) {
                Ok(bytes) => {
                    if let Err(what) = check_table_file(&bytes) {
                        report.damaged(Some(name.clone()), format!("table file: {what}"));
                    }
                }
                Err(e) => report.damaged(Some(name.clone()), format!("cannot read: {e}")),
            }
            continue;
        }
        let kind = if name.ends_with(".log") {
            report.wal_files += 1;
            "WAL"
        } else if name.starts_with("MANIFEST-") {
            report.manifests += 1;
            "MANIFEST"
        } else {
            continue;
        };
        match std::fs::read(dir.join(name)) {
            Ok(bytes) => {
                if let Err(what) = check_log_file(&bytes) {
                    report.damaged(Some(name.clone()), format!("{kind}: {what}"));
                }
            }
            Err(e) => report.damaged(Some(name.clone()), format!("{kind}: cannot read: {e}")),
        }
    }
    let pre = pre_open(dir);
    if !pre.damage.is_empty() {
        // Reported above, file by file; RocksDB may not return from them.
        report.damaged(
            None,
            "RocksDB was not asked to open the database: a WAL or the current MANIFEST is damaged (listed above)",
        );
        return Ok(report);
    }
    match RocksLog::open_read_only(dir) {
        Ok(log) => check_database(&log, &mut report),
        Err(e) => {
            let message = e.to_string();
            let named = file_named(&message);
            // RocksDB blames the MANIFEST for a table file it cannot load
            // ("... The file MANIFEST-... may be corrupted"): if the
            // MANIFEST's own records are intact, find the table file.
            let manifest_intact = named.as_deref().is_some_and(|n| {
                n.starts_with("MANIFEST-")
                    && !report.damage.iter().any(|d| d.file.as_deref() == Some(n))
            });
            let tables = if named.is_none() || manifest_intact {
                damaged_tables(dir)
            } else {
                Vec::new()
            };
            if tables.is_empty() {
                report.damaged(
                    named,
                    format!("RocksDB refuses to open the database: {message}"),
                );
            }
            for t in tables {
                report.damaged(
                    Some(t),
                    format!("table file unreadable; RocksDB refuses to open the database: {message}"),
                );
            }
        }
    }
    Ok(report)
}

/// The table files that RocksDB's repair cannot read, each on its own: it
/// runs on copies of them in a scratch directory (never on `dir`) and
/// moves every file it cannot read entirely into `lost/`.
fn damaged_tables(dir: &Path) -> Vec<String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let scratch =
        std::env::temp_dir().join(format!("confab-verify-{}-{nanos}", std::process::id()));
    let mut lost = Vec::new();
    if std::fs::create_dir_all(&scratch).is_ok() {
        let copied = std::fs::read_dir(dir).into_iter().flatten().flatten().all(|e| {
            let name = e.file_name();
            !name.to_string_lossy().ends_with(".sst")
                || std::fs::copy(e.path(), scratch.join(&name)).is_ok()
        });
        if copied && rocksdb::DB::repair(&rocksdb::Options::default(), &scratch).is_ok() {
            lost = std::fs::read_dir(scratch.join("lost"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".sst"))
                .collect();
            lost.sort();
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    lost
}

/// What the logs RocksDB is about to replay look like, read with our own
/// record checks before it opens the database (`RocksLog::open`).
#[derive(Debug, Default)]
pub(crate) struct PreOpen {
    /// Damage that must stop the open: a WAL or the current MANIFEST
    /// whose records fail their checksums or lengths. RocksDB 11.8 can
    /// loop forever on some of these (a record whose type byte turned
    /// into a "recyclable" one), instead of refusing.
    pub(crate) damage: Vec<String>,
    /// Logs that end inside a record: a write cut short by a crash or
    /// power loss (never acknowledged in `fsync` mode), or a truncated
    /// file (which loses acknowledged writes, and which nothing can tell
    /// from the former). RocksDB drops such a tail silently.
    pub(crate) torn: Vec<String>,
}

/// Reads every WAL and the current MANIFEST of `dir` record by record.
pub(crate) fn pre_open(dir: &Path) -> PreOpen {
    let mut out = PreOpen::default();
    let current = std::fs::read_to_string(dir.join("CURRENT")).unwrap_or_default();
    let current = current.trim();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log") || (n.starts_with("MANIFEST-") && n == current))
        .collect();
    names.sort();
    for name in names {
        let Ok(bytes) = std::fs::read(dir.join(&name)) else {
            continue;
        };
        match check_log_file(&bytes) {
            Ok(()) => {}
            Err(what) if what.starts_with("ends inside") => out.torn.push(format!("{name}: {what}")),
            Err(what) => out.damage.push(format!("{name}: {what}")),
        }
    }
    out
}

/// Reads a WAL or MANIFEST file record by record.
fn check_log_file(bytes: &[u8]) -> Result<(), String> {
    let mut at = 0usize;
    while at < bytes.len() {
        let block_left = BLOCK - at % BLOCK;
        if block_left < HEADER {
            // The writer pads a block's last bytes with zeros.
            let end = (at + block_left).min(bytes.len());
            if bytes[at..end].iter().any(|b| *b != 0) {
                return Err(format!("non-zero padding at offset {at}"));
            }
            at = end;
            continue;
        }
        let Some(header) = bytes.get(at..at + HEADER) else {
            return Err(format!(
                "ends inside a record header at offset {at} (a write cut short, or a truncated file)"
            ));
        };
        let crc = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let len = usize::from(u16::from_le_bytes([header[4], header[5]]));
        let kind = header[6];
        if kind == 0 && len == 0 && crc == 0 {
            // Preallocated space: zeros to the end of the file.
            if bytes[at..].iter().any(|b| *b != 0) {
                return Err(format!("data after a zeroed region at offset {at}"));
            }
            return Ok(());
        }
        let header_len = if matches!(kind, 5..=8 | 11 | 131) {
            RECYCLABLE_HEADER
        } else {
            HEADER
        };
        if header_len + len > block_left {
            return Err(format!(
                "record at offset {at} declares {len} bytes, more than its block holds"
            ));
        }
        let Some(body) = bytes.get(at + HEADER..at + header_len + len) else {
            return Err(format!(
                "ends inside a record at offset {at} ({} of its {} bytes; a write cut short, or a truncated file)",
                bytes.len() - at,
                header_len + len
            ));
        };
        let mut c = crc32c(0, &[kind]);
        c = crc32c(c, body);
        if mask(c) != crc {
            return Err(format!("record checksum mismatch at offset {at}"));
        }
        at += header_len + len;
    }
    Ok(())
}

/// The magic number at the end of a block-based table file.
const TABLE_MAGIC: u64 = 0x88e2_41b7_85f4_cff7;
/// The footer of format versions 1 and later.
const FOOTER: usize = 53;
/// A table block's trailer: compression type (1), checksum (4).
const TRAILER: usize = 5;

/// Checks a table file's footer and the checksums of its metaindex block
/// and of every meta block it lists (format version 6 and later; older
/// files are left to RocksDB's checks).
fn check_table_file(bytes: &[u8]) -> Result<(), String> {
    let n = bytes.len();
    let Some(footer) = n.checked_sub(FOOTER).map(|at| &bytes[at..]) else {
        return Err(format!("{n} bytes, shorter than a table footer"));
    };
    let fixed32 = |at: usize| u32::from_le_bytes([footer[at], footer[at + 1], footer[at + 2], footer[at + 3]]);
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&footer[FOOTER - 8..]);
    if u64::from_le_bytes(magic) != TABLE_MAGIC {
        return Err("no table magic number at its end (truncated or damaged)".into());
    }
    let format_version = fixed32(FOOTER - 12);
    if format_version < 6 {
        return Ok(());
    }
    let checksum_type = footer[0];
    let base = fixed32(9);
    let metaindex_size = fixed32(13) as usize;
    let metaindex_end = (n - FOOTER)
        .checked_sub(TRAILER)
        .ok_or("no room for a metaindex block")?;
    let metaindex_at = metaindex_end
        .checked_sub(metaindex_size)
        .ok_or("the footer's metaindex size overruns the file")?;
    let metaindex = check_block(bytes, checksum_type, base, metaindex_at, metaindex_size)?;
    for (name, at, size) in block_handles(metaindex)? {
        let size = usize::try_from(size).map_err(|_| "a meta block size overflows")?;
        let at = usize::try_from(at).map_err(|_| "a meta block offset overflows")?;
        check_block(bytes, checksum_type, base, at, size)
            .map_err(|e| format!("meta block {name}: {e}"))?;
    }
    Ok(())
}

/// Checks the block at `at` (`size` bytes, then its trailer) against its
/// checksum and returns its contents.
fn check_block(
    bytes: &[u8],
    checksum_type: u8,
    base: u32,
    at: usize,
    size: usize,
) -> Result<&[u8], String> {
    let end = at
        .checked_add(size)
        .and_then(|e| e.checked_add(TRAILER))
        .filter(|e| *e <= bytes.len())
        .ok_or_else(|| format!("block at offset {at} ({size} bytes) overruns the file"))?;
    let with_type = &bytes[at..end - 4];
    let stored = u32::from_le_bytes([bytes[end - 4], bytes[end - 3], bytes[end - 2], bytes[end - 1]]);
    let computed = match checksum_type {
        0 => return Ok(&bytes[at..at + size]),
        1 => mask(crc32c(0, with_type)),
        2 => xxhash_rust::xxh32::xxh32(with_type, 0),
        3 => xxhash_rust::xxh64::xxh64(with_type, 0) as u32,
        4 => {
            let (data, last) = with_type.split_at(size);
            let v = xxhash_rust::xxh3::xxh3_64(data) as u32;
            v ^ u32::from(last[0]).wrapping_mul(0x6b90_83d9)
        }
        other => return Err(format!("unknown checksum type {other}")),
    };
    // Format version 6 ties each checksum to the block's offset.
    let offset = at as u64;
    let modifier = if base == 0 {
        0
    } else {
        base ^ (offset as u32).wrapping_add((offset >> 32) as u32)
    };
    if stored.wrapping_sub(modifier) != computed {
        return Err(format!("block checksum mismatch at offset {at} ({size} bytes)"));
    }
    Ok(&bytes[at..at + size])
}

/// The entries of a metaindex block: (name, offset, size) of each block.
fn block_handles(block: &[u8]) -> Result<Vec<(String, u64, u64)>, String> {
    let bad = || "malformed metaindex block".to_owned();
    let n = block.len();
    let restarts = n
        .checked_sub(4)
        .map(|at| u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]))
        .ok_or_else(bad)?;
    let restarts = (restarts & 0x7fff_ffff) as usize;
    let end = restarts
        .checked_mul(4)
        .and_then(|r| n.checked_sub(4 + r))
        .ok_or_else(bad)?;
    let mut out = Vec::new();
    let mut at = 0;
    let mut key: Vec<u8> = Vec::new();
    while at < end {
        let shared = varint(block, &mut at).ok_or_else(bad)? as usize;
        let unshared = varint(block, &mut at).ok_or_else(bad)? as usize;
        let value_len = varint(block, &mut at).ok_or_else(bad)? as usize;
        let suffix = block.get(at..at + unshared).ok_or_else(bad)?;
        if shared > key.len() {
            return Err(bad());
        }
        key.truncate(shared);
        key.extend_from_slice(suffix);
        at += unshared;
        let value = block.get(at..at + value_len).ok_or_else(bad)?;
        at += value_len;
        let mut v = 0;
        let offset = varint(value, &mut v).ok_or_else(bad)?;
        let size = varint(value, &mut v).ok_or_else(bad)?;
        out.push((String::from_utf8_lossy(&key).into_owned(), offset, size));
    }
    Ok(out)
}

/// A LEB128 varint (at most 64 bits) at `*at`, advancing it.
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(value);
        }
    }
    None
}

/// RocksDB's CRC mask (it never stores a CRC of data that holds CRCs).
fn mask(crc: u32) -> u32 {
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli), continuing `crc`.
fn crc32c(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// RocksDB's checks of every table file, and ours of every record.
fn check_database(log: &RocksLog, report: &mut VerifyReport) {
    let db = log.db();
    let files = match db.live_files() {
        Ok(f) => f,
        Err(e) => {
            let message = e.into_string();
            report.damaged(file_named(&message), message);
            return;
        }
    };
    for f in &files {
        report.table_files += 1;
        report.table_bytes += f.size as u64;
        let name = f.name.trim_start_matches('/').to_owned();
        let Some(cf) = db.cf_handle(&f.column_family_name) else {
            continue;
        };
        let held = describe_range(&f.column_family_name, &f.start_key, &f.end_key);
        let mut fail = |message: String| {
            let file = file_named(&message).or_else(|| Some(name.clone()));
            report.damaged(
                file,
                format!(
                    "table file of column family {}, level {}, {held}: {message}",
                    f.column_family_name, f.level
                ),
            );
        };
        // Its key range, every block read and checked.
        let mut opts = unchecked_cache_options();
        if let Some(start) = &f.start_key {
            opts.set_iterate_lower_bound(start.clone());
        }
        let mut it = db.raw_iterator_cf_opt(&cf, opts);
        match &f.start_key {
            Some(start) => it.seek(start),
            None => it.seek_to_first(),
        }
        while let Some(k) = it.key() {
            if f.end_key.as_deref().is_some_and(|end| k > end) {
                break;
            }
            it.next();
        }
        if let Err(e) = it.status() {
            fail(e.into_string());
            continue;
        }
        // Point lookups read its filter block.
        for key in [&f.start_key, &f.end_key].into_iter().flatten() {
            if let Err(e) = db.get_cf_opt(&cf, key, &unchecked_cache_options()) {
                fail(e.into_string());
                break;
            }
        }
    }
    check_records(log, report);
    // The other column families, whole.
    for cf_name in [CF_META, super::rocks::CF_IDEM] {
        let Some(cf) = db.cf_handle(cf_name) else {
            continue;
        };
        let mut it = db.raw_iterator_cf_opt(&cf, unchecked_cache_options());
        it.seek_to_first();
        while it.valid() {
            it.next();
        }
        if let Err(e) = it.status() {
            let message = e.into_string();
            report.damaged(
                file_named(&message),
                format!("column family {cf_name}: {message}"),
            );
        }
    }
}

/// Reads that verify block checksums and leave the block cache alone.
fn unchecked_cache_options() -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_verify_checksums(true);
    opts.fill_cache(false);
    opts
}

/// Every log entry: its key, its record, and each room's sequences.
fn check_records(log: &RocksLog, report: &mut VerifyReport) {
    let db = log.db();
    let Some(cf) = db.cf_handle(CF_LOG) else {
        report.damaged(None, "the log column family is missing");
        return;
    };
    // The room being read and its last sequence.
    let mut room: Option<(String, u64)> = None;
    for item in db.iterator_cf_opt(
        &cf,
        unchecked_cache_options(),
        IteratorMode::From(&[], Direction::Forward),
    ) {
        let (key, value) = match item {
            Ok(kv) => kv,
            Err(e) => {
                let message = e.into_string();
                report.damaged(
                    file_named(&message),
                    format!("reading the room logs: {message}"),
                );
                return;
            }
        };
        report.entries += 1;
        let Some((id, seq)) = split_log_key(&key) else {
            report.damaged(None, format!("a log key of the wrong shape: {key:02x?}"));
            continue;
        };
        match EventRecord::decode(bytes::Bytes::from(value.into_vec())) {
            Ok(ev) if ev.seq.0 == seq => {}
            Ok(ev) => report.damaged(
                None,
                format!("room {id} seq {seq}: the record says seq {}", ev.seq.0),
            ),
            Err(e) => report.damaged(None, format!("room {id} seq {seq}: record does not decode: {e}")),
        }
        match &mut room {
            Some((r, last)) if *r == id => {
                if seq != *last + 1 {
                    report.damaged(
                        None,
                        format!("room {id}: seqs {}..={} missing", *last + 1, seq - 1),
                    );
                }
                *last = seq;
            }
            _ => {
                report.rooms += 1;
                room = Some((id, seq));
            }
        }
    }
}

/// A log key's room and sequence (layout: `storage::record_key`).
fn split_log_key(key: &[u8]) -> Option<(String, u64)> {
    let len = usize::from(*key.first()?);
    let id = key.get(1..1 + len)?;
    let seq: [u8; 8] = key.get(1 + len..)?.try_into().ok()?;
    Some((
        String::from_utf8_lossy(id).into_owned(),
        u64::from_be_bytes(seq),
    ))
}

/// What a table file's key range holds, for the operator.
fn describe_range(cf: &str, start: &Option<Vec<u8>>, end: &Option<Vec<u8>>) -> String {
    if cf != CF_LOG {
        return "metadata".into();
    }
    match (
        start.as_deref().and_then(split_log_key),
        end.as_deref().and_then(split_log_key),
    ) {
        (Some((a, s)), Some((b, e))) if a == b => format!("room {a} seqs {s}..={e}"),
        (Some((a, s)), Some((b, e))) => format!("rooms {a} seq {s} to {b} seq {e}"),
        _ => "room logs".into(),
    }
}

/// The data-directory file a RocksDB message names, if any.
fn file_named(message: &str) -> Option<String> {
    message
        .split(|c: char| c.is_whitespace() || matches!(c, ':' | ',' | '(' | ')' | '\''))
        .filter(|t| {
            t.ends_with(".sst")
                || t.ends_with(".log")
                || t.contains("MANIFEST-")
                || t.ends_with("CURRENT")
                || t.contains("OPTIONS-")
        })
        .map(|t| t.rsplit('/').next().unwrap_or(t).to_owned())
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(0, b"123456789"), 0xe306_9283);
    }

    /// A log file as RocksDB's writer lays it out.
    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let crc = mask(crc32c(crc32c(0, &[kind]), payload));
        let mut out = crc.to_le_bytes().to_vec();
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.push(kind);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn log_files_are_read_record_by_record() {
        let mut file = record(1, b"hello");
        file.extend(record(1, &[7u8; 300]));
        assert_eq!(check_log_file(&file), Ok(()));
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x10;
            assert!(check_log_file(&bad).is_err(), "flip at {i}");
        }
        for len in 1..file.len() {
            if len == 12 {
                continue; // a record boundary: the first record alone
            }
            assert!(check_log_file(&file[..len]).is_err(), "cut at {len}");
        }
        assert_eq!(check_log_file(&file[..12]), Ok(()));
    }

    #[test]
    fn block_padding_must_be_zero() {
        // A record that leaves 3 bytes in the block, then padding.
        let mut file = record(1, &vec![1u8; BLOCK - HEADER - 3]);
        file.extend([0, 0, 0]);
        file.extend(record(1, b"next block"));
        assert_eq!(check_log_file(&file), Ok(()));
        file[BLOCK - 2] = 1;
        assert!(check_log_file(&file).unwrap_err().contains("padding"));
    }

    #[test]
    fn messages_name_their_file() {
        assert_eq!(
            file_named("Corruption: block checksum mismatch: stored = 1, computed = 2, type = 4  in /d/data/000012.sst offset 0 size 3909").as_deref(),
            Some("000012.sst")
        );
        assert_eq!(
            file_named("Corruption: checksum mismatch in file /d/000009.log").as_deref(),
            Some("000009.log")
        );
        assert_eq!(file_named("IO error: nothing"), None);
    }
}
