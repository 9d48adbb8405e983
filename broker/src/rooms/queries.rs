//! Read-only room queries, answered from storage on a blocking thread:
//! access checks for history, `GetRoomInfo` and `ListRooms`.

use confab_codec::{EventRecord, JoinPolicy, RoomId, RoomList, RoomSummary, UserId};

use super::membership::{member_key, role_from, room_key, user_prefix, RoomRecord, RoomState};
use crate::storage::{RoomLog, StorageError};
use confab_codec::{ErrorCode, Role, RoomInfo};

/// A refusal: the code and message for the client.
pub(crate) type Refusal = (ErrorCode, String);

/// Whether `user` may read `room`: a member of a managed room, or anyone
/// for an unmanaged room when `auto_create` is on.
pub(crate) fn access(
    log: &dyn RoomLog,
    room: &RoomId,
    user: &UserId,
    auto_create: bool,
) -> Result<Result<(), Refusal>, StorageError> {
    if log.meta_get(&room_key(room))?.is_none() {
        return Ok(if auto_create {
            Ok(())
        } else {
            Err((ErrorCode::NoSuchRoom, format!("no room {room}")))
        });
    }
    let role = log
        .meta_get(&member_key(room, user))?
        .and_then(|v| v.first().copied())
        .and_then(role_from);
    Ok(match role {
        Some(r) if r != Role::Invited => Ok(()),
        _ => Err((
            ErrorCode::NotMember,
            format!("{user} is not a member of {room}"),
        )),
    })
}

/// `GetRoomInfo`: members, and anyone for open rooms, may look.
pub(crate) fn info(
    log: &dyn RoomLog,
    room: &RoomId,
    user: &UserId,
) -> Result<Result<RoomInfo, Refusal>, StorageError> {
    let Some(st) = RoomState::load(log, room)? else {
        return Ok(Err((
            ErrorCode::NoSuchRoom,
            format!("no managed room {room}"),
        )));
    };
    if !st.members.contains_key(user) && st.record.policy() != JoinPolicy::Open {
        return Ok(Err((
            ErrorCode::NotMember,
            format!("{user} is not a member of {room}"),
        )));
    }
    let bounds = log.bounds(room)?;
    Ok(Ok(st.info(room, bounds.head, bounds.first, 1000)))
}

/// `ListRooms`: the user's rooms in id order, with head, read marker and
/// unread count, from the user's room index (no log scan: the head is the
/// last key of each room's log). With `only` (a token's rooms claim, sorted
/// byte-wise), just those of the user's rooms: the claim is walked instead
/// of the index, one look-up per claimed room until the page is full.
pub(crate) fn list(
    log: &dyn RoomLog,
    user: &UserId,
    after: Option<&RoomId>,
    limit: usize,
    only: Option<&[RoomId]>,
) -> Result<RoomList, StorageError> {
    let prefix = user_prefix(user);
    let index_key = |r: &RoomId| {
        let mut k = prefix.clone();
        k.extend_from_slice(r.as_bytes());
        k
    };
    // One more than the page, to learn whether more follow.
    let mut page: Vec<RoomId> = Vec::new();
    match only {
        None => {
            let after_key = after.map(index_key);
            for (k, _) in log.meta_scan(&prefix, after_key.as_deref(), limit + 1)? {
                if let Some(room) = std::str::from_utf8(&k[prefix.len()..])
                    .ok()
                    .and_then(|r| RoomId::new(r).ok())
                {
                    page.push(room);
                }
            }
        }
        Some(claimed) => {
            let from = match after {
                Some(a) => claimed.partition_point(|r| r.as_bytes() <= a.as_bytes()),
                None => 0,
            };
            for room in &claimed[from..] {
                if page.len() > limit {
                    break;
                }
                if log.meta_get(&index_key(room))?.is_some() {
                    page.push(room.clone());
                }
            }
        }
    }
    let has_more = page.len() > limit;
    let mut rooms = Vec::with_capacity(page.len().min(limit));
    for room in page.into_iter().take(limit) {
        let Some(bytes) = log.meta_get(&room_key(&room))? else {
            continue;
        };
        let record = RoomRecord::decode(&room, &bytes)?;
        let bounds = log.bounds(&room)?;
        let last_activity_us = log
            .read_before(&room, bounds.head.next(), 1, usize::MAX)?
            .pop()
            .and_then(|r| EventRecord::decode(r.bytes).ok())
            .map_or(0, |e| e.timestamp_us);
        let read = super::receipts::read_marker(log, &room, user)?;
        rooms.push(RoomSummary {
            room,
            kind: record.kind(),
            name: record.name.clone(),
            head: bounds.head,
            read,
            unread: bounds.head.0.saturating_sub(read.0),
            last_activity_us,
        });
    }
    Ok(RoomList { rooms, has_more })
}

/// `GetMessageStatus`: members of a managed room may ask how far one of
/// its messages got.
pub(crate) fn status(
    log: &dyn RoomLog,
    room: &RoomId,
    user: &UserId,
    seq: confab_codec::Seq,
) -> Result<Result<confab_codec::MessageStatus, Refusal>, StorageError> {
    let Some(st) = RoomState::load(log, room)? else {
        return Ok(Err((
            ErrorCode::NoSuchRoom,
            format!("message status needs a managed room; {room} is not one"),
        )));
    };
    if !st.is_member(user) {
        return Ok(Err((
            ErrorCode::NotMember,
            format!("{user} is not a member of {room}"),
        )));
    }
    let Some(rec) = log.read_range(room, seq, seq, 1, usize::MAX)?.pop() else {
        return Ok(Err((
            ErrorCode::NoSuchMessage,
            format!("room {room} has no message {seq}"),
        )));
    };
    let Ok(event) = EventRecord::decode(rec.bytes) else {
        return Err(StorageError::Corrupt {
            room: room.to_string(),
            seq: seq.0,
        });
    };
    Ok(Ok(super::receipts::message_status(
        log,
        room,
        &st,
        seq,
        &event.sender,
    )?))
}
