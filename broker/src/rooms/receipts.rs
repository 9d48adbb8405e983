//! Delivered and read markers: "up to" sequences, per device (delivered)
//! and per user (read), that only move forward.
//!
//! Keys (in the `meta` column family), values are big-endian u64:
//!
//! | key | marker |
//! |---|---|
//! | `d` · len(room) · room · len(user) · user · device | delivered, per device |
//! | `e` · len(room) · room · user | read, per user |

use confab_codec::{DeliveryState, DeviceId, MessageStatus, RoomId, Seq, UserId};

use super::membership::RoomState;
use crate::storage::{RoomLog, StorageError};

fn room_prefix(tag: u8, room: &RoomId) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + room.as_bytes().len());
    k.push(tag);
    k.push(room.as_bytes().len() as u8);
    k.extend_from_slice(room.as_bytes());
    k
}

/// Key of a device's delivered marker.
pub(crate) fn delivered_key(room: &RoomId, user: &UserId, device: &DeviceId) -> Vec<u8> {
    let mut k = room_prefix(b'd', room);
    k.push(user.as_bytes().len() as u8);
    k.extend_from_slice(user.as_bytes());
    k.extend_from_slice(device.as_bytes());
    k
}

/// Key of a user's read marker.
pub(crate) fn read_key(room: &RoomId, user: &UserId) -> Vec<u8> {
    let mut k = room_prefix(b'e', room);
    k.extend_from_slice(user.as_bytes());
    k
}

/// A stored marker.
pub(crate) fn decode_marker(v: &[u8]) -> u64 {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// A user's read marker in a room (0 if none).
pub(crate) fn read_marker(
    log: &dyn RoomLog,
    room: &RoomId,
    user: &UserId,
) -> Result<Seq, StorageError> {
    Ok(Seq(log
        .meta_get(&read_key(room, user))?
        .map_or(0, |v| decode_marker(&v))))
}

/// Calls `f` with the rest of the key (after `prefix`) and the marker of
/// every entry under `prefix`, page by page.
fn scan_markers(
    log: &dyn RoomLog,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], u64),
) -> Result<(), StorageError> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = log.meta_scan(prefix, after.as_deref(), 4096)?;
        for (k, v) in &page {
            f(&k[prefix.len()..], decode_marker(v));
        }
        match page.last() {
            Some((last, _)) if page.len() == 4096 => after = Some(last.clone()),
            _ => return Ok(()),
        }
    }
}

/// How far a message got: among the room's members other than its sender,
/// how many have a device that received it and how many read it.
pub(crate) fn message_status(
    log: &dyn RoomLog,
    room: &RoomId,
    state: &RoomState,
    seq: Seq,
    sender: &UserId,
) -> Result<MessageStatus, StorageError> {
    let recipients: Vec<&UserId> = state
        .members
        .keys()
        .filter(|u| *u != sender && state.is_member(u))
        .collect();
    // One prefix scan per marker kind, not a lookup per member.
    let mut delivered = std::collections::HashSet::new();
    scan_markers(log, &room_prefix(b'd', room), |rest, marker| {
        let user = rest.first().and_then(|&len| rest.get(1..1 + len as usize));
        if let Some(user) = user {
            if marker >= seq.0 {
                delivered.insert(user.to_vec());
            }
        }
    })?;
    let mut read = std::collections::HashSet::new();
    scan_markers(log, &room_prefix(b'e', room), |user, marker| {
        if marker >= seq.0 {
            read.insert(user.to_vec());
        }
    })?;
    let mut delivered_n = 0u32;
    let mut read_n = 0u32;
    for u in &recipients {
        if read.contains(u.as_bytes()) {
            read_n += 1;
            delivered_n += 1;
        } else if delivered.contains(u.as_bytes()) {
            delivered_n += 1;
        }
    }
    let n = recipients.len() as u32;
    let state = if n > 0 && read_n == n {
        DeliveryState::Read
    } else if n > 0 && delivered_n == n {
        DeliveryState::Delivered
    } else {
        DeliveryState::Sent
    };
    Ok(MessageStatus {
        room: room.clone(),
        seq,
        state,
        recipients: n,
        delivered: delivered_n,
        read: read_n,
    })
}
