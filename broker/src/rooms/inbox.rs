//! `SyncInbox`: which of a user's managed rooms changed since a cursor,
//! each with its head, read marker, unread count and last entry. Answered
//! from storage on a blocking thread; the work is proportional to the
//! rooms that changed (read from the inbox index,
//! [`crate::storage::meta::inbox`]), not to the user's rooms, except for
//! the first sync (cursor 0), which pages through all of them.

use confab_codec::{ErrorCode, EventRecord, InboxPage, InboxRoom, Role, RoomId, Seq, UserId};

use crate::storage::{meta, RoomLog, StorageError};

/// What one sync page is asked for.
#[derive(Debug)]
pub(crate) struct SyncQuery<'a> {
    pub(crate) user: &'a UserId,
    /// The cursor (µs); 0 for every room.
    pub(crate) since: u64,
    /// Continue after this room.
    pub(crate) after: Option<&'a RoomId>,
    /// Most rooms in the page (at least 1).
    pub(crate) limit: usize,
    /// The inbox epoch, in microseconds.
    pub(crate) epoch_us: u64,
    /// Every commit stamped at or before it is visible (the cursor to give).
    pub(crate) watermark: u64,
    /// A token's rooms claim (sorted byte-wise): only these rooms.
    pub(crate) only: Option<&'a [RoomId]>,
    /// Largest page body, in bytes.
    pub(crate) max_body: usize,
}

/// One page of a sync.
///
/// # Errors
/// If the storage fails.
pub(crate) fn sync(log: &dyn RoomLog, q: &SyncQuery<'_>) -> Result<InboxPage, StorageError> {
    let claimed = |room: &RoomId| {
        q.only.is_none_or(|c| {
            c.binary_search_by(|r| r.as_bytes().cmp(room.as_bytes()))
                .is_ok()
        })
    };
    // Candidates in id order, after `after`, each with the stamp of its
    // index mark (0 when listed from the room index).
    let candidates: Vec<(RoomId, u64)> = if q.since == 0 {
        // Every room: one page of the user's room index at a time (one
        // more than asked, to learn whether more follow; a claim can
        // leave rooms out, so read on until the page is full).
        let mut out = Vec::new();
        let mut after = q.after.cloned();
        loop {
            let page = meta::rooms::user_rooms(log, q.user, after.as_ref(), q.limit + 1)?;
            let full = page.len() == q.limit + 1;
            after = page.last().cloned();
            out.extend(page.into_iter().filter(|r| claimed(r)).map(|r| (r, 0)));
            if out.len() > q.limit || !full {
                break;
            }
        }
        out
    } else {
        let mut changed = meta::inbox::changed_since(log, q.user, q.since / q.epoch_us.max(1))?;
        changed.retain(|(r, _)| claimed(r) && q.after.is_none_or(|a| r.as_bytes() > a.as_bytes()));
        changed.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        changed
    };

    let mut rooms = Vec::new();
    let mut has_more = false;
    // The list's count, `has_more` and the cursor.
    let mut used = 2 + 1 + 8;
    for (room, marked) in candidates {
        let Some(entry) = describe(log, q.user, &room, marked)? else {
            continue;
        };
        if entry.stamp <= q.since {
            continue;
        }
        if rooms.len() == q.limit {
            has_more = true;
            break;
        }
        let size = inbox_room_len(&entry);
        if !rooms.is_empty() && used + size > q.max_body {
            has_more = true;
            break;
        }
        used += size;
        rooms.push(entry);
    }
    Ok(InboxPage {
        rooms,
        has_more,
        cursor: q.watermark.max(q.since),
    })
}

/// The room as the user's inbox shows it, with its change stamp; `None`
/// if it is not a managed room (nothing to report).
fn describe(
    log: &dyn RoomLog,
    user: &UserId,
    room: &RoomId,
    marked: u64,
) -> Result<Option<InboxRoom>, StorageError> {
    let Some(record) = meta::rooms::record(log, room)? else {
        return Ok(None);
    };
    let bounds = log.bounds(room)?;
    let role = meta::rooms::role(log, room, user)?;
    let Some(role) = role else {
        // Left or removed: reported at the time of the mark the change
        // wrote, with nothing else.
        return Ok(Some(InboxRoom {
            room: room.clone(),
            code: ErrorCode::NotMember,
            role: Role::Member,
            stamp: marked,
            head: Seq(0),
            first: Seq(0),
            read: Seq(0),
            unread: 0,
            first_unread: Seq(0),
            last: Vec::new(),
        }));
    };
    let last = if bounds.head.0 >= bounds.first.0.max(1) {
        log.read_range(room, bounds.head, bounds.head, 1, usize::MAX)?
            .pop()
            .and_then(|r| EventRecord::decode(r.bytes).ok())
    } else {
        None
    };
    let stamp = last
        .as_ref()
        .map_or(record.created_at_us, |e| e.timestamp_us)
        .max(marked);
    if role == Role::Invited {
        return Ok(Some(InboxRoom {
            room: room.clone(),
            code: ErrorCode::Normal,
            role,
            stamp,
            head: bounds.head,
            first: bounds.first,
            read: Seq(0),
            unread: 0,
            first_unread: Seq(0),
            last: Vec::new(),
        }));
    }
    let read = meta::markers::read_marker(log, room, user)?;
    let unread = bounds.head.0.saturating_sub(read.0);
    let first_unread = if unread == 0 {
        Seq(0)
    } else {
        Seq((read.0 + 1).max(bounds.first.0))
    };
    Ok(Some(InboxRoom {
        room: room.clone(),
        code: ErrorCode::Normal,
        role,
        stamp,
        head: bounds.head,
        first: bounds.first,
        read,
        unread,
        first_unread: if first_unread.0 > bounds.head.0 {
            Seq(0)
        } else {
            first_unread
        },
        last: last.into_iter().collect(),
    }))
}

/// Encoded size of one `InboxRoom` (protocol 8.x).
fn inbox_room_len(r: &InboxRoom) -> usize {
    let fixed = 1 + r.room.as_bytes().len() + 2 + 1 + 8 * 7 + 2;
    fixed + r.last.iter().map(event_len).sum::<usize>()
}

fn event_len(e: &EventRecord) -> usize {
    8 + 8
        + 1
        + e.sender.as_bytes().len()
        + 1
        + e.device.as_bytes().len()
        + 8
        + 1
        + 8
        + 8
        + 4
        + e.payload.len()
}
