//! The inbox index: for each user, which managed rooms changed in which
//! epoch, so that `SyncInbox` reads the rooms that changed since a cursor
//! instead of every room of the user.
//!
//! Time is cut into epochs (`rooms.inbox_epoch_ms`). The first commit to a
//! room in an epoch writes one key per member, `(user, epoch, room)`, and
//! deletes the members' keys of the room's previous epoch; later commits in
//! the same epoch write nothing here. So a room costs its member count in
//! writes at most once per epoch, whatever its message rate, and a sync
//! since a cursor scans the user's keys from the cursor's epoch on: the
//! rooms that changed since then, plus those that changed earlier in that
//! one epoch (filtered out by their exact change time).
//!
//! A user who leaves or is removed keeps the key written with the leave,
//! which is how a sync tells the device it left.

use confab_codec::{RoomId, UserId};

use super::{decode_u64, prefixed, scan_after};
use crate::storage::{MetaWrite, RoomLog, StorageError};

const INDEX: u8 = b'i';
const ROOM_EPOCH: u8 = b'I';

fn user_prefix(user: &UserId) -> Vec<u8> {
    prefixed(INDEX, user.as_bytes(), &[])
}

fn index_key(user: &UserId, epoch: u64, room: &RoomId) -> Vec<u8> {
    let mut rest = Vec::with_capacity(8 + room.as_bytes().len());
    rest.extend_from_slice(&epoch.to_be_bytes());
    rest.extend_from_slice(room.as_bytes());
    prefixed(INDEX, user.as_bytes(), &rest)
}

fn room_epoch_key(room: &RoomId) -> Vec<u8> {
    prefixed(ROOM_EPOCH, room.as_bytes(), &[])
}

/// Marks `room` changed for `user` in `epoch`, at `stamp` (µs).
pub(crate) fn put(user: &UserId, epoch: u64, room: &RoomId, stamp: u64) -> MetaWrite {
    MetaWrite {
        key: index_key(user, epoch, room),
        value: Some(stamp.to_be_bytes().to_vec()),
    }
}

/// Removes `user`'s mark of `room` in `epoch`.
pub(crate) fn delete(user: &UserId, epoch: u64, room: &RoomId) -> MetaWrite {
    MetaWrite {
        key: index_key(user, epoch, room),
        value: None,
    }
}

/// The epoch in which `room`'s members were last marked (0: never).
///
/// # Errors
/// If the storage fails.
pub(crate) fn room_epoch(log: &dyn RoomLog, room: &RoomId) -> Result<u64, StorageError> {
    Ok(log
        .meta_get(&room_epoch_key(room))?
        .map_or(0, |v| decode_u64(&v)))
}

/// Stores the epoch in which `room`'s members were last marked.
pub(crate) fn put_room_epoch(room: &RoomId, epoch: u64) -> MetaWrite {
    MetaWrite {
        key: room_epoch_key(room),
        value: Some(epoch.to_be_bytes().to_vec()),
    }
}

/// The rooms marked changed for `user` in `from_epoch` or later, each once
/// with its latest mark's stamp, in no particular order.
///
/// # Errors
/// If the storage fails.
pub(crate) fn changed_since(
    log: &dyn RoomLog,
    user: &UserId,
    from_epoch: u64,
) -> Result<Vec<(RoomId, u64)>, StorageError> {
    let prefix = user_prefix(user);
    let mut found: rustc_hash::FxHashMap<RoomId, u64> = rustc_hash::FxHashMap::default();
    // Keys of earlier epochs are skipped by starting the scan at the
    // first key of `from_epoch`.
    let mut start = prefix.clone();
    start.extend_from_slice(&from_epoch.to_be_bytes());
    scan_after(log, &prefix, Some(start), |rest, value| {
        let Some(room) = rest
            .get(8..)
            .and_then(|r| std::str::from_utf8(r).ok())
            .and_then(|r| RoomId::new(r).ok())
        else {
            return;
        };
        let stamp = decode_u64(value);
        let e = found.entry(room).or_insert(0);
        *e = (*e).max(stamp);
    })?;
    Ok(found.into_iter().collect())
}
