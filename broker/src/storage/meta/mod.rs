//! Typed stores over the `meta` keyspace. Every key of it is built here and
//! nowhere else; the rest of the broker reads and writes metadata through
//! these functions. Writes are returned as [`MetaWrite`]s for the
//! sequencer, the keyspace's one writer, to commit with its group.
//!
//! | tag | key | value | store |
//! |---|---|---|---|
//! | `r` | `r` · len(room) · room | a managed room's record (JSON) | [`rooms`] |
//! | `m` | `m` · len(room) · room · user | a membership: the role, one byte | [`rooms`] |
//! | `u` | `u` · len(user) · user · room | empty: the user's room index | [`rooms`] |
//! | `d` | `d` · len(room) · room · len(user) · user · device | delivered marker of a device (u64) | [`markers`] |
//! | `e` | `e` · len(room) · room · user | read marker of a user (u64) | [`markers`] |
//! | `p` | `p` · len(user) · user · device | a device's push registration (JSON) | [`push`] |
//! | `S` | `S` · len(user) · user | a user's last-seen time (u64 µs) | [`presence`] |
//! | `i` | `i` · len(user) · user · epoch (u64) · room | the room changed for the user in that epoch: the stamp (u64 µs) | [`inbox`] |
//! | `I` | `I` · len(room) · room | the epoch the room's members were last marked in (u64) | [`inbox`] |
//!
//! Numbers are big-endian; lengths are one byte (ids are at most 128 bytes).

pub(crate) mod inbox;
pub(crate) mod markers;
pub(crate) mod presence;
pub(crate) mod push;
pub(crate) mod rooms;

use super::{MetaEntry, RoomLog, StorageError};

/// Entries read per page of a prefix scan.
const PAGE: usize = 1024;

/// `tag` · len(first) · first · rest.
fn prefixed(tag: u8, first: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + first.len() + rest.len());
    k.push(tag);
    k.push(first.len() as u8);
    k.extend_from_slice(first);
    k.extend_from_slice(rest);
    k
}

/// A stored big-endian u64 (0 if shorter).
fn decode_u64(v: &[u8]) -> u64 {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Calls `f` with the part of each key after `prefix`, and its value, for
/// every entry under `prefix`, page by page.
fn scan(log: &dyn RoomLog, prefix: &[u8], f: impl FnMut(&[u8], &[u8])) -> Result<(), StorageError> {
    scan_after(log, prefix, None, f)
}

/// As [`scan`], for the entries after the key `after` (which begins with
/// `prefix`; it need not be a stored key).
fn scan_after(
    log: &dyn RoomLog,
    prefix: &[u8],
    mut after: Option<Vec<u8>>,
    mut f: impl FnMut(&[u8], &[u8]),
) -> Result<(), StorageError> {
    loop {
        let page: Vec<MetaEntry> = log.meta_scan(prefix, after.as_deref(), PAGE)?;
        for (k, v) in &page {
            if let Some(rest) = k.get(prefix.len()..) {
                f(rest, v);
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == PAGE => after = Some(last.clone()),
            _ => return Ok(()),
        }
    }
}
