//! Last-seen times: when a user's last device disconnected.

use confab_codec::UserId;

use super::{decode_u64, prefixed};
use crate::storage::{MetaWrite, RoomLog, StorageError};

fn key(user: &UserId) -> Vec<u8> {
    prefixed(b'S', user.as_bytes(), &[])
}

/// A user's stored last-seen time, in microseconds (0 if never seen).
///
/// # Errors
/// If the storage fails.
pub(crate) fn last_seen(log: &dyn RoomLog, user: &UserId) -> Result<u64, StorageError> {
    Ok(log.meta_get(&key(user))?.map_or(0, |v| decode_u64(&v)))
}

/// The write that stores a user's last-seen time.
pub(crate) fn put_last_seen(user: &UserId, at_us: u64) -> MetaWrite {
    MetaWrite {
        key: key(user),
        value: Some(at_us.to_be_bytes().to_vec()),
    }
}
