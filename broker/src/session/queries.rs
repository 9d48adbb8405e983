//! The read side of a session: requests answered from storage on a
//! blocking thread (history, room info, message status, the room list,
//! presence) and the push registration. Each one is a closure run by
//! [`answer`], which turns its outcome into the reply frame.

use confab_codec::{
    raw, Ack, Body, Direction, ErrorCode, Frame, GetPresence, HistoryRequest, ListRooms,
    PresenceEvent, RegisterPush, RoomId, Seq,
};
use tracing::warn;

use super::connection::{error_frame, push, Session};
use crate::base::now_us;
use crate::presence;
use crate::rooms;
use crate::storage::{LogBounds, ReadError, ReadPool, StorageError};

/// Most events in one history page.
const MAX_HISTORY_LIMIT: usize = 1000;

/// Most rooms in one `RoomList`.
const MAX_LIST_LIMIT: usize = 1000;

/// A refusal for the client: its code and message.
type Refusal = (ErrorCode, String);

/// Runs `query` on a blocking thread, in its turn of the broker's read
/// pool, and builds the reply to `rid`: the answer, the refusal as an
/// `Error`, or `Internal` for a storage failure.
async fn answer<T, F>(reads: &ReadPool, rid: u32, query: F) -> Frame
where
    T: Into<Body> + Send + 'static,
    F: FnOnce() -> Result<Result<T, Refusal>, StorageError> + Send + 'static,
{
    match reads.run(query).await {
        Ok(Ok(Ok(reply))) => Frame::request(rid, reply),
        Ok(Ok(Err((code, message)))) => error_frame(rid, code, message),
        Ok(Err(e)) => error_frame(rid, ErrorCode::Internal, e.to_string()),
        Err(ReadError::Closed) => error_frame(rid, ErrorCode::ShuttingDown, "server shutting down"),
        Err(e) => error_frame(rid, ErrorCode::Internal, e.to_string()),
    }
}

/// Whether any entry qualifies for a history page (used for `limit` 0,
/// which asks only that).
fn any_entry(direction: Direction, anchor: Seq, bounds: LogBounds) -> bool {
    let (first, head) = (bounds.first.0.max(1), bounds.head.0);
    match direction {
        // Entries first..=head below the anchor (0 = from the head).
        Direction::Before => {
            let below = if anchor.0 == 0 {
                head
            } else {
                head.min(anchor.0 - 1)
            };
            below >= first
        }
        // Entries first..=head above the anchor.
        Direction::After => head >= first.max(anchor.0.saturating_add(1)),
    }
}

impl Session {
    pub(super) async fn history(&mut self, rid: u32, h: HistoryRequest) {
        let log = self.shared.log.clone();
        let limit = usize::from(h.limit).min(MAX_HISTORY_LIMIT);
        let max_bytes = (self.shared.config.limits.max_frame_len as usize).saturating_sub(1024);
        let room = h.room.clone();
        let user = self.conn.user.clone();
        let auto_create = self.shared.config.rooms.auto_create;
        // With an authorization hook, it already decided.
        let check_membership = self.shared.authorizer.is_none();
        let read = self
            .shared
            .reads
            .run(move || {
                if check_membership {
                    if let Err(refusal) = rooms::access(log.as_ref(), &room, &user, auto_create)? {
                        return Ok(Err(refusal));
                    }
                }
                let bounds = log.bounds(&room)?;
                if limit == 0 {
                    // Protocol 12.4: an empty page that says whether there is
                    // anything in that direction.
                    let more = any_entry(h.direction, h.anchor, bounds);
                    return Ok(Ok((bounds, Vec::new(), more)));
                }
                let records = match h.direction {
                    Direction::Before => {
                        let before = if h.anchor.0 == 0 {
                            Seq(u64::MAX)
                        } else {
                            h.anchor
                        };
                        log.read_before(&room, before, limit, max_bytes)?
                    }
                    Direction::After => {
                        log.read_range(&room, h.anchor.next(), bounds.head, limit, max_bytes)?
                    }
                };
                let has_more = match h.direction {
                    Direction::Before => records.first().is_some_and(|r| r.seq > bounds.first),
                    Direction::After => records.last().is_some_and(|r| r.seq < bounds.head),
                };
                Ok::<_, StorageError>(Ok((bounds, records, has_more)))
            })
            .await;
        let frame = match read {
            Ok(Ok(Err((code, message)))) => {
                push(&self.conn.outbox, error_frame(rid, code, message));
                return;
            }
            Ok(Ok(Ok((bounds, records, has_more)))) => {
                let bytes: Vec<_> = records.into_iter().map(|r| r.bytes).collect();
                raw::history_page_frame(rid, &h.room, has_more, bounds.first, &bytes)
                    .map_err(|e| e.to_string())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match frame {
            Ok(bytes) => self.conn.outbox.push_control(bytes),
            Err(e) => {
                warn!(room = %h.room, error = %e, "history read failed");
                push(
                    &self.conn.outbox,
                    error_frame(rid, ErrorCode::Internal, "history read failed"),
                );
            }
        }
    }

    pub(super) async fn room_info(&mut self, rid: u32, room: RoomId) {
        let log = self.shared.log.clone();
        let user = self.conn.user.clone();
        let frame = answer(&self.shared.reads, rid, move || {
            rooms::info(log.as_ref(), &room, &user)
        })
        .await;
        push(&self.conn.outbox, frame);
    }

    pub(super) async fn message_status(&mut self, rid: u32, room: RoomId, seq: Seq) {
        let log = self.shared.log.clone();
        let user = self.conn.user.clone();
        let frame = answer(&self.shared.reads, rid, move || {
            rooms::status(log.as_ref(), &room, &user, seq)
        })
        .await;
        push(&self.conn.outbox, frame);
    }

    /// `ListRooms`, narrowed to the token's rooms claim if it has one.
    pub(super) async fn list_rooms(&mut self, rid: u32, l: ListRooms) {
        let log = self.shared.log.clone();
        let user = self.conn.user.clone();
        let limit = usize::from(l.limit).clamp(1, MAX_LIST_LIMIT);
        let only = self.grant.sorted_rooms();
        // Room for the request id besides the list.
        let max_body = (self.shared.config.limits.max_frame_len as usize).saturating_sub(16);
        let frame = answer(&self.shared.reads, rid, move || {
            rooms::list(
                log.as_ref(),
                &user,
                l.after.as_ref(),
                limit,
                only.as_deref(),
                max_body,
            )
            .map(Ok)
        })
        .await;
        push(&self.conn.outbox, frame);
    }

    /// `SyncInbox`: one page of the user's rooms that changed since the
    /// cursor, narrowed to the token's rooms claim if it has one.
    pub(super) async fn sync_inbox(&mut self, rid: u32, s: confab_codec::SyncInbox) {
        let log = self.shared.log.clone();
        let user = self.conn.user.clone();
        let limit = usize::from(s.limit).clamp(1, MAX_LIST_LIMIT);
        let only = self.grant.sorted_rooms();
        let max_body = (self.shared.config.limits.max_frame_len as usize).saturating_sub(16);
        let epoch_us = self.shared.config.rooms.inbox_epoch_ms.saturating_mul(1000);
        // Read before the index: every commit stamped at or before it is
        // already visible to the reads below.
        let watermark = self
            .shared
            .stats
            .committed_us
            .load(std::sync::atomic::Ordering::Acquire);
        let frame = answer(&self.shared.reads, rid, move || {
            rooms::inbox::sync(
                log.as_ref(),
                &rooms::inbox::SyncQuery {
                    user: &user,
                    since: s.since,
                    after: s.after.as_ref(),
                    limit,
                    epoch_us,
                    watermark,
                    only: only.as_deref(),
                    max_body,
                },
            )
            .map(Ok)
        })
        .await;
        push(&self.conn.outbox, frame);
    }

    /// Stores this device's push registration (an empty token removes it).
    pub(super) async fn register_push(&mut self, rid: u32, r: RegisterPush) {
        if let Err(message) = crate::push::validate_registration(&r.provider, &r.token) {
            push(
                &self.conn.outbox,
                error_frame(rid, ErrorCode::InvalidRequest, message),
            );
            return;
        }
        let write =
            crate::push::registration(&self.conn.user, &self.conn.device, &r.provider, &r.token);
        let frame = match crate::sequencer::write_meta(&self.shared.sequencer, vec![write]).await {
            Ok(()) => Frame::request(rid, Ack {}),
            Err(code) => error_frame(rid, code, "the registration was not stored"),
        };
        push(&self.conn.outbox, frame);
    }

    /// Answers with the presence of the asked users who share a room with
    /// this user (and this user's own); the others are left out. With a
    /// rooms claim, only the claimed rooms count as shared.
    pub(super) async fn get_presence(&mut self, rid: u32, g: GetPresence) {
        let max = self.shared.config.presence.max_query_users;
        if g.users.len() > max {
            let msg = format!("at most {max} users per GetPresence");
            push(
                &self.conn.outbox,
                error_frame(rid, ErrorCode::InvalidRequest, msg),
            );
            return;
        }
        let (shared, user) = (self.shared.clone(), self.conn.user.clone());
        let only = self.grant.rooms.clone();
        let frame = answer(&self.shared.reads, rid, move || {
            let visible =
                presence::visible_to(shared.log.as_ref(), &user, &g.users, only.as_deref())?;
            let entries = shared.presence.entries(visible, now_us())?;
            Ok(Ok(PresenceEvent { entries }))
        })
        .await;
        push(&self.conn.outbox, frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(first: u64, head: u64) -> LogBounds {
        LogBounds {
            first: Seq(first),
            head: Seq(head),
        }
    }

    #[test]
    fn limit_zero_says_whether_anything_qualifies() {
        use Direction::{After, Before};
        let b = bounds(3, 10);
        assert!(any_entry(Before, Seq(0), b));
        assert!(any_entry(Before, Seq(4), b));
        assert!(!any_entry(Before, Seq(3), b), "nothing below first");
        assert!(any_entry(After, Seq(9), b));
        assert!(!any_entry(After, Seq(10), b), "nothing above head");
        assert!(any_entry(After, Seq(0), b));
        let empty = bounds(1, 0);
        assert!(!any_entry(Before, Seq(0), empty));
        assert!(!any_entry(After, Seq(0), empty));
    }
}
