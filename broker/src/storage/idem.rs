//! The layout of the idempotency index in RocksDB (column family `idem`).
//!
//! One entry per published message would double the entries of every
//! commit (measured: a quarter off durable publish throughput). Instead a
//! commit writes, per (sender, room), one **run** holding all the fresh ids
//! it stores there, and per sender one **mark**:
//!
//! | key | value |
//! |---|---|
//! | `M` · sender | the sender's highest stored id (u64) |
//! | `R` · sender · room · max id (u64) | a run: min id, max seq, base timestamp, then (id, seq, timestamp) deltas as varints |
//! | `S` · sender · room · id (u64) | a single entry: seq, timestamp (u64 each) |
//!
//! (sender: `len : u16` · bytes; room: `len : u8` · bytes; numbers
//! big-endian.) An id is *fresh* when it is above every id its sender had
//! stored: fresh ids only grow, so the runs of one (sender, room) never
//! overlap and are sorted by their max id, and the one run that may hold an
//! id is the first whose max is at or above it: one seek. Ids that are not
//! fresh (a client that picks random ids, or reuses an id in another room)
//! get a single entry each: one point read.
//!
//! Retention deletes single entries by key and runs by range (every run of
//! a (sender, room) whose max id is at or below the highest trimmed id of
//! that sender there holds only trimmed messages). A run that straddles
//! the cut stays until a later trim; lookups ignore originals below the
//! room's first retained sequence.

// Only RocksDB stores this layout; without it only `idempotency_keys` is used.
#![cfg_attr(not(feature = "rocksdb"), allow(dead_code))]

use std::sync::Arc;

use confab_codec::{EventRecord, RoomId, Seq};
use rustc_hash::FxHashMap;

use super::{Append, IdemKey, Original, RoomLog, StorageError};
use crate::base::sender_key;

const MARK: u8 = b'M';
const RUN: u8 = b'R';
const SINGLE: u8 = b'S';

fn sender_part(out: &mut Vec<u8>, tag: u8, sender: &str) {
    let s = sender.as_bytes();
    out.push(tag);
    // Senders are two ids of at most 255 bytes each and a separator.
    out.extend_from_slice(&(s.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn room_part(out: &mut Vec<u8>, room: &RoomId) {
    let id = room.as_bytes();
    out.push(id.len() as u8);
    out.extend_from_slice(id);
}

/// The key of a sender's mark.
pub(crate) fn mark_key(sender: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + sender.len());
    sender_part(&mut out, MARK, sender);
    out
}

/// The prefix of every run of (sender, room).
pub(crate) fn run_prefix(sender: &str, room: &RoomId) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + sender.len() + 1 + room.as_bytes().len() + 8);
    sender_part(&mut out, RUN, sender);
    room_part(&mut out, room);
    out
}

/// The key of the run of (sender, room) whose highest id is `max_id`.
pub(crate) fn run_key(sender: &str, room: &RoomId, max_id: u64) -> Vec<u8> {
    let mut out = run_prefix(sender, room);
    out.extend_from_slice(&max_id.to_be_bytes());
    out
}

/// The key of a single entry.
pub(crate) fn single_key(room: &RoomId, key: IdemKey<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + key.sender.len() + 1 + room.as_bytes().len() + 8);
    sender_part(&mut out, SINGLE, key.sender);
    room_part(&mut out, room);
    out.extend_from_slice(&key.client_msg_id.to_be_bytes());
    out
}

/// A big-endian u64 at `at`.
fn u64_at(v: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = v.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// The value of a mark or of the id at the end of a run key.
pub(crate) fn decode_u64(v: &[u8]) -> Option<u64> {
    u64_at(v, 0)
}

/// The value of a single entry.
pub(crate) fn encode_single(o: Original) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&o.seq.0.to_be_bytes());
    v[8..].copy_from_slice(&o.timestamp_us.to_be_bytes());
    v
}

/// Decodes [`encode_single`]'s output.
pub(crate) fn decode_single(v: &[u8]) -> Option<Original> {
    Some(Original {
        seq: Seq(u64_at(v, 0)?),
        timestamp_us: u64_at(v, 8)?,
    })
}

fn put_varint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

fn get_varint(v: &[u8], at: &mut usize) -> Option<u64> {
    let mut x = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *v.get(*at)?;
        *at += 1;
        x |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(x);
        }
    }
    None
}

/// One (id, seq, timestamp) of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunEntry {
    pub(crate) id: u64,
    pub(crate) seq: u64,
    pub(crate) timestamp_us: u64,
}

/// Encodes a run; `entries` ascend by id (and by seq).
pub(crate) fn encode_run(entries: &[RunEntry]) -> Vec<u8> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Vec::new();
    };
    let base_ts = entries.iter().map(|e| e.timestamp_us).min().unwrap_or(0);
    let mut out = Vec::with_capacity(24 + entries.len() * 4);
    out.extend_from_slice(&first.id.to_be_bytes());
    out.extend_from_slice(&last.seq.to_be_bytes());
    out.extend_from_slice(&base_ts.to_be_bytes());
    let (mut id, mut seq) = (first.id, 0);
    for e in entries {
        put_varint(&mut out, e.id.wrapping_sub(id));
        put_varint(&mut out, e.seq.wrapping_sub(seq));
        put_varint(&mut out, e.timestamp_us.wrapping_sub(base_ts));
        (id, seq) = (e.id, e.seq);
    }
    out
}

/// The lowest id of a run.
pub(crate) fn run_min_id(v: &[u8]) -> Option<u64> {
    u64_at(v, 0)
}

/// The entries of a run, in order (stops at the first malformed byte).
pub(crate) fn run_entries(v: &[u8]) -> impl Iterator<Item = RunEntry> + '_ {
    let mut at = 24;
    let mut id = u64_at(v, 0).unwrap_or(0);
    let mut seq = 0u64;
    let base_ts = u64_at(v, 16).unwrap_or(0);
    let valid = v.len() >= 24;
    std::iter::from_fn(move || {
        if !valid || at >= v.len() {
            return None;
        }
        id = id.wrapping_add(get_varint(v, &mut at)?);
        seq = seq.wrapping_add(get_varint(v, &mut at)?);
        let ts = base_ts.wrapping_add(get_varint(v, &mut at)?);
        Some(RunEntry {
            id,
            seq,
            timestamp_us: ts,
        })
    })
}

/// The original of `id` in a run, if the run holds it.
pub(crate) fn find_in_run(v: &[u8], id: u64) -> Option<Original> {
    run_entries(v)
        .take_while(|e| e.id <= id)
        .find(|e| e.id == id)
        .map(|e| Original {
            seq: Seq(e.seq),
            timestamp_us: e.timestamp_us,
        })
}

/// The index writes of one commit, as (key, value): a single entry for
/// every id that is not fresh, one run per (sender, room) for the fresh
/// ones, and one mark per sender.
pub(crate) fn commit_writes(batch: &[Append<'_>]) -> Vec<KeyValue> {
    let mut out = Vec::new();
    // Grouped by address first (cheap: the sequencer hands out shared ids;
    // (address, length) of the sender, address of the room), then merged
    // by content, so that a (sender, room) has one run per commit.
    let mut runs: Vec<(&str, &RoomId, Vec<RunEntry>)> = Vec::new();
    let mut run_of: FxHashMap<(usize, usize, usize), usize> = FxHashMap::default();
    let mut marks_at: FxHashMap<(usize, usize), (&str, u64)> = FxHashMap::default();
    for a in batch {
        let Some(w) = a.idem else { continue };
        let key = w.key;
        let mark = marks_at
            .entry((key.sender.as_ptr() as usize, key.sender.len()))
            .or_insert((key.sender, 0));
        mark.1 = mark.1.max(w.mark);
        if !w.fresh {
            let original = Original {
                seq: a.seq,
                timestamp_us: a.timestamp_us,
            };
            out.push((single_key(a.room, key), encode_single(original).to_vec()));
            continue;
        }
        let entry = RunEntry {
            id: key.client_msg_id,
            seq: a.seq.0,
            timestamp_us: a.timestamp_us,
        };
        let at = (
            key.sender.as_ptr() as usize,
            key.sender.len(),
            a.room as *const RoomId as usize,
        );
        match run_of.get(&at) {
            Some(&i) => runs[i].2.push(entry),
            None => {
                run_of.insert(at, runs.len());
                runs.push((key.sender, a.room, vec![entry]));
            }
        }
    }
    let mut merged: FxHashMap<(&str, &RoomId), Vec<RunEntry>> = FxHashMap::default();
    for (sender, room, entries) in runs {
        merged.entry((sender, room)).or_default().extend(entries);
    }
    for ((sender, room), mut entries) in merged {
        // Fresh ids ascend in commit order; merged runs are sorted again.
        entries.sort_unstable_by_key(|e| e.id);
        if let Some(last) = entries.last() {
            out.push((run_key(sender, room, last.id), encode_run(&entries)));
        }
    }
    let mut marks: FxHashMap<&str, u64> = FxHashMap::default();
    for (sender, mark) in marks_at.into_values() {
        let m = marks.entry(sender).or_insert(0);
        *m = (*m).max(mark);
    }
    for (sender, mark) in marks {
        out.push((mark_key(sender), mark.to_be_bytes().to_vec()));
    }
    out
}

/// A key and its value.
pub(crate) type KeyValue = (Vec<u8>, Vec<u8>);

/// What a trim deletes: single keys, and `from..to` key ranges of runs.
pub(crate) type TrimDeletes = (Vec<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>);

/// What a trim of `room` deletes from the index, given the identities of
/// the trimmed messages: their single entries by key, and per sender the
/// key range of the runs whose max id is at most its highest trimmed id.
pub(crate) fn trim_deletes(room: &RoomId, forget: &[IdemKey<'_>]) -> TrimDeletes {
    let mut highest: FxHashMap<&str, u64> = FxHashMap::default();
    let singles = forget
        .iter()
        .map(|key| {
            let h = highest.entry(key.sender).or_insert(0);
            *h = (*h).max(key.client_msg_id);
            single_key(room, *key)
        })
        .collect();
    let runs = highest
        .into_iter()
        .map(|(sender, h)| {
            let from = run_prefix(sender, room);
            let to = match h.checked_add(1) {
                Some(next) => run_key(sender, room, next),
                None => successor(&from).unwrap_or_default(),
            };
            (from, to)
        })
        .collect();
    (singles, runs)
}

/// The smallest key above every key that starts with `prefix`, if any.
pub(crate) fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < u8::MAX {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// The (sender, client message id) of every entry of `room` in
/// `from..before` that carries an id: the idempotency entries to delete
/// with them.
///
/// # Errors
/// If the log cannot be read or holds a record that does not decode.
pub(crate) fn idempotency_keys(
    log: &dyn RoomLog,
    room: &RoomId,
    from: Seq,
    before: Seq,
) -> Result<Vec<(Arc<str>, u64)>, StorageError> {
    let mut out = Vec::new();
    let mut next = from;
    while next < before {
        let page = log.read_range(room, next, Seq(before.0 - 1), 1024, 1 << 20)?;
        let Some(last) = page.last() else { break };
        next = last.seq.next();
        for rec in page {
            let ev = EventRecord::decode(rec.bytes).map_err(|_| StorageError::Corrupt {
                room: room.to_string(),
                seq: rec.seq.0,
            })?;
            if ev.client_msg_id != 0 {
                out.push((
                    sender_key(ev.sender.as_str(), ev.device.as_str()),
                    ev.client_msg_id,
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip() {
        let entries: Vec<RunEntry> = [(5u64, 10u64, 1_000u64), (6, 12, 1_000), (900, 13, 1_007)]
            .iter()
            .map(|&(id, seq, timestamp_us)| RunEntry {
                id,
                seq,
                timestamp_us,
            })
            .collect();
        let v = encode_run(&entries);
        assert_eq!(run_min_id(&v), Some(5));
        assert_eq!(run_entries(&v).collect::<Vec<_>>(), entries);
        assert_eq!(
            find_in_run(&v, 900),
            Some(Original {
                seq: Seq(13),
                timestamp_us: 1_007
            })
        );
        assert_eq!(find_in_run(&v, 7), None);
        assert_eq!(find_in_run(&v, u64::MAX), None);
        // Truncated values decode as far as they go, never panic.
        for cut in 0..v.len() {
            let _ = find_in_run(&v[..cut], 900);
        }
    }

    #[test]
    fn keys_sort_runs_by_max_id_within_sender_and_room() {
        let r = RoomId::new("r").expect("id");
        assert!(run_key("a", &r, 9) < run_key("a", &r, 10));
        assert!(run_key("a", &r, u64::MAX).starts_with(&run_prefix("a", &r)));
        assert!(!run_key("ab", &r, 1).starts_with(&run_prefix("a", &r)));
    }
}
