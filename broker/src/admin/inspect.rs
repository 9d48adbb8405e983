//! Read-only commands, on a secondary instance of the database (usable
//! beside a running broker).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use confab_codec::{EventRecord, RoomId, Seq};

use super::AdminError;
use crate::rooms::membership::RoomState;
use crate::rooms::receipts::decode_marker;
use crate::storage::{RocksLog, RoomLog};

/// Metadata entries read per page when scanning markers.
const PAGE: usize = 4096;

/// A secondary instance and its scratch directory, removed when dropped.
struct ReadOnly {
    log: RocksLog,
    scratch: PathBuf,
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Opens `dir` read-only, up to date with a running primary if there is one.
fn open(dir: &Path) -> Result<ReadOnly, AdminError> {
    super::maintain::require_database(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let scratch = std::env::temp_dir().join(format!("confab-admin-{}-{nanos}", std::process::id()));
    let log = RocksLog::open_secondary(dir, &scratch)?;
    log.catch_up()?;
    Ok(ReadOnly { log, scratch })
}

/// `room-stats`.
pub(super) fn room_stats(dir: &Path, room: &RoomId) -> Result<String, AdminError> {
    let db = open(dir)?;
    let bounds = db.log.bounds(room)?;
    let mut out = String::new();
    let retained = (bounds.head.0 + 1).saturating_sub(bounds.first.0);
    let _ = writeln!(out, "room: {room}");
    let _ = writeln!(out, "head: {}", bounds.head.0);
    let _ = writeln!(out, "first: {}", bounds.first.0);
    let _ = writeln!(out, "retained: {retained}");
    let last = db
        .log
        .read_before(room, bounds.head.next(), 1, usize::MAX)?
        .into_iter()
        .next();
    if let Some(rec) = last {
        let ev = decode(room, rec.seq, rec.bytes)?;
        let _ = writeln!(out, "last_timestamp_us: {}", ev.timestamp_us);
    }
    match RoomState::load(&db.log, room)? {
        None => {
            let _ = writeln!(out, "managed: no");
        }
        Some(st) => {
            let invited = st.members.len() as u32 - st.member_count();
            let _ = writeln!(out, "managed: yes");
            let _ = writeln!(out, "kind: {:?}", st.record.kind());
            let _ = writeln!(out, "members: {}", st.member_count());
            let _ = writeln!(out, "invited: {invited}");
        }
    }
    Ok(out)
}

fn decode(room: &RoomId, seq: Seq, bytes: bytes::Bytes) -> Result<EventRecord, AdminError> {
    EventRecord::decode(bytes).map_err(|_| {
        AdminError::Storage(crate::storage::StorageError::Corrupt {
            room: room.to_string(),
            seq: seq.0,
        })
    })
}

/// `tail`: `seq timestamp_us sender/device kind payload`, tab-separated,
/// the payload as text with control characters escaped.
pub(super) fn tail(dir: &Path, room: &RoomId, count: usize) -> Result<String, AdminError> {
    let db = open(dir)?;
    let bounds = db.log.bounds(room)?;
    let records = db
        .log
        .read_before(room, bounds.head.next(), count, usize::MAX)?;
    let mut out = String::new();
    for rec in records {
        let ev = decode(room, rec.seq, rec.bytes)?;
        let payload: String = String::from_utf8_lossy(&ev.payload)
            .escape_debug()
            .collect();
        let _ = writeln!(
            out,
            "{}\t{}\t{}/{}\t{}\t{payload}",
            ev.seq.0, ev.timestamp_us, ev.sender, ev.device, ev.kind.0
        );
    }
    Ok(out)
}

/// Calls `f` with every metadata entry under `prefix`, page by page.
fn scan(
    log: &dyn RoomLog,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]),
) -> Result<(), AdminError> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = log.meta_scan(prefix, after.as_deref(), PAGE)?;
        for (k, v) in &page {
            f(k, v);
        }
        match page.last() {
            Some((k, _)) if page.len() == PAGE => after = Some(k.clone()),
            _ => return Ok(()),
        }
    }
}

/// Splits `len · bytes` off the front of `key`.
fn take_prefixed(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = key.split_first()?;
    let len = usize::from(len);
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// `cursors`: `room delivered read` per room where the device or its user
/// has a marker. Scans every marker (an offline-sized operation).
pub(super) fn cursors(dir: &Path, user: &str, device: &str) -> Result<String, AdminError> {
    let db = open(dir)?;
    let mut rows: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    // Delivered: `d` · len(room) · room · len(user) · user · device.
    scan(&db.log, b"d", |k, v| {
        let Some((room, rest)) = take_prefixed(&k[1..]) else {
            return;
        };
        let Some((u, d)) = take_prefixed(rest) else {
            return;
        };
        if u == user.as_bytes() && d == device.as_bytes() {
            let room = String::from_utf8_lossy(room).into_owned();
            rows.entry(room).or_default().0 = decode_marker(v);
        }
    })?;
    // Read: `e` · len(room) · room · user.
    scan(&db.log, b"e", |k, v| {
        let Some((room, u)) = take_prefixed(&k[1..]) else {
            return;
        };
        if u == user.as_bytes() {
            let room = String::from_utf8_lossy(room).into_owned();
            rows.entry(room).or_default().1 = decode_marker(v);
        }
    })?;
    let mut out = String::from("room\tdelivered\tread\n");
    for (room, (delivered, read)) in rows {
        let _ = writeln!(out, "{room}\t{delivered}\t{read}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::take_prefixed;

    #[test]
    fn prefixed_fields_split_and_short_keys_do_not_panic() {
        assert_eq!(take_prefixed(b"\x02abcd"), Some((&b"ab"[..], &b"cd"[..])));
        assert_eq!(take_prefixed(b"\x05ab"), None);
        assert_eq!(take_prefixed(b""), None);
    }
}
