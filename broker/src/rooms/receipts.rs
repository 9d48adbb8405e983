//! Delivered and read markers: how far a message got (stored by
//! [`crate::storage::meta::markers`]).

use confab_codec::{DeliveryState, MessageStatus, RoomId, Seq, UserId};

use super::membership::RoomState;
use crate::storage::{meta, RoomLog, StorageError};

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
    let (delivered, read) = meta::markers::reached(log, room, seq)?;
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
