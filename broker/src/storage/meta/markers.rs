//! Delivered and read markers: "up to" sequences, per device (delivered)
//! and per user (read), that only move forward.

use std::collections::{BTreeMap, HashSet};

use confab_codec::{DeviceId, RoomId, Seq, UserId};

use super::{decode_u64, prefixed, scan};
use crate::storage::{MetaWrite, RoomLog, StorageError};

/// The key of one marker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct MarkerKey(Vec<u8>);

impl MarkerKey {
    /// A device's delivered marker in a room.
    pub(crate) fn delivered(room: &RoomId, user: &UserId, device: &DeviceId) -> Self {
        let mut rest = Vec::with_capacity(1 + user.as_bytes().len() + device.as_bytes().len());
        rest.push(user.as_bytes().len() as u8);
        rest.extend_from_slice(user.as_bytes());
        rest.extend_from_slice(device.as_bytes());
        Self(prefixed(b'd', room.as_bytes(), &rest))
    }

    /// A user's read marker in a room.
    pub(crate) fn read(room: &RoomId, user: &UserId) -> Self {
        Self(prefixed(b'e', room.as_bytes(), user.as_bytes()))
    }
}

/// A marker's stored value (0 if none).
///
/// # Errors
/// If the storage fails.
pub(crate) fn get(log: &dyn RoomLog, key: &MarkerKey) -> Result<u64, StorageError> {
    Ok(log.meta_get(&key.0)?.map_or(0, |v| decode_u64(&v)))
}

/// The write that moves a marker to `seq`.
pub(crate) fn put(key: MarkerKey, seq: u64) -> MetaWrite {
    MetaWrite {
        key: key.0,
        value: Some(seq.to_be_bytes().to_vec()),
    }
}

/// A user's read marker in a room (0 if none).
///
/// # Errors
/// If the storage fails.
pub(crate) fn read_marker(
    log: &dyn RoomLog,
    room: &RoomId,
    user: &UserId,
) -> Result<Seq, StorageError> {
    get(log, &MarkerKey::read(room, user)).map(Seq)
}

/// Users, by id bytes.
pub(crate) type Users = HashSet<Vec<u8>>;

/// Who got how far in `room`: the users with a device whose delivered
/// marker reaches `seq`, and the users whose read marker does. One prefix
/// scan per marker kind, not a look-up per member.
///
/// # Errors
/// If the storage fails.
pub(crate) fn reached(
    log: &dyn RoomLog,
    room: &RoomId,
    seq: Seq,
) -> Result<(Users, Users), StorageError> {
    let mut delivered = HashSet::new();
    scan(log, &prefixed(b'd', room.as_bytes(), &[]), |rest, v| {
        let user = rest.first().and_then(|&len| rest.get(1..1 + len as usize));
        if let Some(user) = user {
            if decode_u64(v) >= seq.0 {
                delivered.insert(user.to_vec());
            }
        }
    })?;
    let mut read = HashSet::new();
    scan(log, &prefixed(b'e', room.as_bytes(), &[]), |user, v| {
        if decode_u64(v) >= seq.0 {
            read.insert(user.to_vec());
        }
    })?;
    Ok((delivered, read))
}

/// Splits `len · bytes` off the front of `key`.
#[cfg_attr(not(feature = "rocksdb"), allow(dead_code))] // for `of_device`
fn take_prefixed(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = key.split_first()?;
    let len = usize::from(len);
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Every marker of a device and its user, by room: (delivered, read).
/// Scans all markers (for offline tools, not the broker).
///
/// # Errors
/// If the storage fails.
#[cfg_attr(not(feature = "rocksdb"), allow(dead_code))] // `confab admin cursors`
pub(crate) fn of_device(
    log: &dyn RoomLog,
    user: &[u8],
    device: &[u8],
) -> Result<BTreeMap<String, (u64, u64)>, StorageError> {
    let mut rows: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    // Delivered: `d` · len(room) · room · len(user) · user · device.
    scan(log, b"d", |k, v| {
        let Some((room, rest)) = take_prefixed(k) else {
            return;
        };
        let Some((u, d)) = take_prefixed(rest) else {
            return;
        };
        if u == user && d == device {
            let room = String::from_utf8_lossy(room).into_owned();
            rows.entry(room).or_default().0 = decode_u64(v);
        }
    })?;
    // Read: `e` · len(room) · room · user.
    scan(log, b"e", |k, v| {
        let Some((room, u)) = take_prefixed(k) else {
            return;
        };
        if u == user {
            let room = String::from_utf8_lossy(room).into_owned();
            rows.entry(room).or_default().1 = decode_u64(v);
        }
    })?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Durability, MemoryLog};

    #[test]
    fn prefixed_fields_split_and_short_keys_do_not_panic() {
        assert_eq!(take_prefixed(b"\x02abcd"), Some((&b"ab"[..], &b"cd"[..])));
        assert_eq!(take_prefixed(b"\x05ab"), None);
        assert_eq!(take_prefixed(b""), None);
    }

    #[test]
    fn markers_are_stored_found_and_counted() {
        let log = MemoryLog::new();
        let room = RoomId::new("r").expect("id");
        let (ann, bo) = (
            UserId::new("ann").expect("id"),
            UserId::new("bo").expect("id"),
        );
        let phone = DeviceId::new("phone").expect("id");
        let writes = [
            put(MarkerKey::delivered(&room, &ann, &phone), 7),
            put(MarkerKey::read(&room, &ann), 5),
            put(MarkerKey::delivered(&room, &bo, &phone), 3),
        ];
        log.commit(&[], &writes, Durability::Wal).expect("commit");
        assert_eq!(read_marker(&log, &room, &ann).expect("read"), Seq(5));
        assert_eq!(read_marker(&log, &room, &bo).expect("read"), Seq(0));
        let (delivered, read) = reached(&log, &room, Seq(4)).expect("reached");
        assert!(delivered.contains(&b"ann"[..]) && !delivered.contains(&b"bo"[..]));
        assert!(read.contains(&b"ann"[..]));
        let rows = of_device(&log, b"ann", b"phone").expect("rows");
        assert_eq!(rows.get("r"), Some(&(7, 5)));
    }
}
