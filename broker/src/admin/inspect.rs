//! Read-only commands, on a secondary instance of the database (usable
//! beside a running broker).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use confab_codec::{EventRecord, RoomId, Seq};

use super::AdminError;
use crate::rooms::membership::RoomState;
use crate::storage::{meta, RocksLog, RoomLog};

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

/// `cursors`: `room delivered read` per room where the device or its user
/// has a marker. Scans every marker (an offline-sized operation).
pub(super) fn cursors(dir: &Path, user: &str, device: &str) -> Result<String, AdminError> {
    let db = open(dir)?;
    let rows = meta::markers::of_device(&db.log, user.as_bytes(), device.as_bytes())?;
    let mut out = String::from("room\tdelivered\tread\n");
    for (room, (delivered, read)) in rows {
        let _ = writeln!(out, "{room}\t{delivered}\t{read}");
    }
    Ok(out)
}
