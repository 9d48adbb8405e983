//! Read-only room queries, answered from storage on a blocking thread:
//! access checks for history, `GetRoomInfo` and `ListRooms`.

use confab_codec::{EventRecord, JoinPolicy, RoomId, RoomList, RoomSummary, UserId};

use super::membership::RoomState;
use crate::storage::{meta, RoomLog, StorageError};
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
    if !meta::rooms::exists(log, room)? {
        return Ok(if auto_create {
            Ok(())
        } else {
            Err((ErrorCode::NoSuchRoom, format!("no room {room}")))
        });
    }
    Ok(match meta::rooms::role(log, room, user)? {
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
/// of the index, one look-up per claimed room until the page is full. A
/// page also ends (with `has_more`) before its body would pass `max_body`
/// bytes: names are up to 65,535 bytes each.
pub(crate) fn list(
    log: &dyn RoomLog,
    user: &UserId,
    after: Option<&RoomId>,
    limit: usize,
    only: Option<&[RoomId]>,
    max_body: usize,
) -> Result<RoomList, StorageError> {
    // One more than the page, to learn whether more follow.
    let mut page: Vec<RoomId> = Vec::new();
    match only {
        None => page = meta::rooms::user_rooms(log, user, after, limit + 1)?,
        Some(claimed) => {
            let from = match after {
                Some(a) => claimed.partition_point(|r| r.as_bytes() <= a.as_bytes()),
                None => 0,
            };
            for room in &claimed[from..] {
                if page.len() > limit {
                    break;
                }
                if meta::rooms::in_index(log, user, room)? {
                    page.push(room.clone());
                }
            }
        }
    }
    let mut has_more = page.len() > limit;
    let mut rooms = Vec::with_capacity(page.len().min(limit));
    // The list's count and `has_more`, then each summary.
    let mut used = 2 + 1;
    for room in page.into_iter().take(limit) {
        let Some(record) = meta::rooms::record(log, &room)? else {
            continue;
        };
        let size = 1 + room.as_str().len() + 1 + 2 + record.name.len() + 8 * 4;
        if !rooms.is_empty() && used + size > max_body {
            has_more = true;
            break;
        }
        used += size;
        let bounds = log.bounds(&room)?;
        let last_activity_us = log
            .read_before(&room, bounds.head.next(), 1, usize::MAX)?
            .pop()
            .and_then(|r| EventRecord::decode(r.bytes).ok())
            .map_or(0, |e| e.timestamp_us);
        let read = meta::markers::read_marker(log, &room, user)?;
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
