//! Dispatch: every frame a client sends after `Welcome` passes its rate
//! limit and the token's rooms claim here, then goes to the handler of
//! its kind: the state-changing requests (`requests.rs`), the read side
//! (`queries.rs`), or the few answered on the spot (ping, presence
//! settings). Frames a client must not send close the connection.

use confab_codec::{Ack, Body, ErrorCode, ErrorFrame, Frame, Pong, SubscribeAck};
use tracing::info;

use super::connection::{error_frame, push, CloseReason, Session};
use crate::auth::authz::Action;
use crate::ratelimit::{Kind, Verdict};
use crate::rooms;
use crate::sequencer::{ReceiptReq, RoomOp, SeqMsg};

impl Session {
    /// Handles one request frame: rate limits and the token's rooms claim
    /// first, then the request itself. `Some` closes the connection.
    pub(super) async fn handle(&mut self, frame: Frame) -> Option<CloseReason> {
        let rid = frame.request_id;
        let outbox = self.conn.outbox.clone();
        let frame_type = frame.body.frame_type();
        if !confab_codec::type_in_version(frame_type, self.conn.version) {
            // A later version's frame on this connection is an unknown
            // type here (protocol 3.3): fatal.
            let msg = format!(
                "frame type {frame_type:#04x} is not in protocol version {}",
                self.conn.version
            );
            let error = error_frame(0, ErrorCode::UnknownFrameType, msg.clone());
            return self.fail(error, (ErrorCode::UnknownFrameType, msg));
        }
        if let Some((kind, n)) = limited_kind(&frame.body) {
            match self.limits.check_n(
                &self.shared.user_limits,
                &self.conn.user,
                kind,
                n,
                tokio::time::Instant::now(),
            ) {
                Verdict::Allowed => {}
                // Excess typing is dropped silently (protocol 7.6.1).
                Verdict::Limited { .. } if kind == Kind::Typing => return None,
                Verdict::Limited { retry_after_ms } => {
                    push(&outbox, rate_limited(rid, retry_after_ms, None));
                    return None;
                }
                Verdict::Flooding {
                    why,
                    retry_after_ms,
                } => {
                    info!(session_id = self.session_id, user = %self.conn.user, %why, "closing a flooding connection");
                    // The refusal of this request, with its id and a real
                    // wait (protocol 15.2), then the close.
                    let error = rate_limited(rid, retry_after_ms, Some(&why));
                    return self.fail(error, (ErrorCode::RateLimited, format!("flooding: {why}")));
                }
            }
        }
        // The token's rooms claim, before anything looks at the room.
        if let Some(why) = self.grant.refusal(&frame.body, &self.conn.user) {
            push(&outbox, error_frame(rid, ErrorCode::Forbidden, why));
            return None;
        }
        let meta = match &frame.body {
            Body::CreateRoom(c) => Some(&c.meta),
            Body::UpdateRoom(u) => Some(&u.meta),
            _ => None,
        };
        if let Some(why) = meta.and_then(rooms::meta_refusal) {
            push(&outbox, error_frame(rid, ErrorCode::InvalidRequest, why));
            return None;
        }
        match frame.body {
            Body::Ping(p) => push(&outbox, Frame::request(rid, Pong { nonce: p.nonce })),
            Body::Pong(_) | Body::Extension { .. } => {}
            Body::Goodbye(_) => return Some((ErrorCode::Normal, "goodbye".into())),
            Body::Publish(p) => return self.publish(rid, frame.flags, p).await,
            // An empty Subscribe changes nothing (protocol 7.3.1).
            Body::Subscribe(s) if s.items.is_empty() => push(
                &outbox,
                Frame::request(
                    rid,
                    SubscribeAck {
                        results: Vec::new(),
                    },
                ),
            ),
            Body::Subscribe(s) => self.subscribe(rid, s.items).await,
            Body::Unsubscribe(u) => {
                let subs: Vec<_> = u.rooms.iter().filter_map(|r| self.subs.remove(r)).collect();
                self.end_subscriptions(subs);
                push(&outbox, Frame::request(rid, Ack {}));
            }
            Body::CreateRoom(c) => self.room_op(rid, RoomOp::Create(c)).await,
            Body::JoinRoom(j) => self.room_op(rid, RoomOp::Join(j.room)).await,
            Body::LeaveRoom(l) => self.room_op(rid, RoomOp::Leave(l.room)).await,
            Body::InviteMember(i) => self.room_op(rid, RoomOp::Invite(i.room, i.user)).await,
            Body::RemoveMember(r) => self.room_op(rid, RoomOp::Remove(r.room, r.user)).await,
            Body::UpdateRoom(u) => self.room_op(rid, RoomOp::Update(u.room, u.meta)).await,
            Body::SetRole(r) => {
                self.room_op(rid, RoomOp::SetRole(r.room, r.user, r.role))
                    .await
            }
            Body::GetRoomInfo(g) => self.room_info(rid, g.room).await,
            Body::Receipt(_) if self.shared.forward.is_some() => {
                push(
                    &outbox,
                    super::requests::cluster_unsupported(rid, "receipts"),
                );
            }
            Body::Receipt(r) => {
                if let Err(denied) = self.authorize(&r.room, Action::Subscribe).await {
                    push(&outbox, error_frame(rid, denied.code, denied.message));
                } else {
                    let Some(held) = self.hold().await else {
                        return Some((ErrorCode::ShuttingDown, "server shutting down".into()));
                    };
                    let req = ReceiptReq {
                        conn: self.conn.clone(),
                        request_id: rid,
                        receipt: r,
                        held: Some(held),
                    };
                    if !self.to_sequencer(SeqMsg::Receipt(req)).await {
                        return Some((ErrorCode::ShuttingDown, "server shutting down".into()));
                    }
                }
            }
            Body::GetMessageStatus(g) => self.message_status(rid, g.room, g.seq).await,
            Body::SetPresence(p) => {
                self.shared
                    .presence
                    .set(self.session_id, &self.conn.user, p.status);
                push(&outbox, Frame::request(rid, Ack {}));
            }
            Body::WatchPresence(w) => {
                self.watching_presence = w.enabled;
                self.register_watch();
                push(&outbox, Frame::request(rid, Ack {}));
            }
            Body::GetPresence(g) => self.get_presence(rid, g).await,
            Body::Typing(t) => self.typing(rid, t).await,
            Body::ListRooms(l) => self.list_rooms(rid, l).await,
            Body::SyncInbox(s) => self.sync_inbox(rid, s).await,
            Body::HistoryRequest(h) => {
                if let Err(denied) = self.authorize(&h.room, Action::History).await {
                    push(&outbox, error_frame(rid, denied.code, denied.message));
                } else {
                    self.history(rid, h).await;
                }
            }
            Body::RefreshToken(t) => return self.refresh(rid, t),
            Body::RegisterPush(r) if self.shared.push.is_some() => {
                self.register_push(rid, r).await;
            }
            Body::Hello(_) => {
                let msg = "Hello after the handshake".to_owned();
                let error = error_frame(0, ErrorCode::ProtocolViolation, msg.clone());
                return self.fail(error, (ErrorCode::ProtocolViolation, msg));
            }
            Body::Welcome(_)
            | Body::Error(_)
            | Body::Notice(_)
            | Body::Ack(_)
            | Body::SubscribeAck(_)
            | Body::Lagging(_)
            | Body::CaughtUp(_)
            | Body::PublishAck(_)
            | Body::Event(_)
            | Body::EventBatch(_)
            | Body::HistoryPage(_)
            | Body::RoomInfo(_)
            | Body::RoomList(_)
            | Body::TypingEvent(_)
            | Body::PresenceEvent(_)
            | Body::ReceiptEvent(_)
            | Body::MessageStatus(_)
            | Body::InboxPage(_)
            | Body::Gap(_) => {
                // A connection-level failure: request id 0 (protocol 6.3).
                let msg = format!("{} is a server-to-client frame", frame.body.name());
                let error = error_frame(0, ErrorCode::ProtocolViolation, msg.clone());
                return self.fail(error, (ErrorCode::ProtocolViolation, msg));
            }
            other => {
                let msg = format!("{} is not available on this server", other.name());
                push(&outbox, error_frame(rid, ErrorCode::Unsupported, msg));
            }
        }
        None
    }
}

/// A `RateLimited` refusal of request `rid` (`why` for a flood close).
fn rate_limited(rid: u32, retry_after_ms: u32, why: Option<&str>) -> Frame {
    let message = match why {
        Some(why) => format!("{why}; closing. Retry in {retry_after_ms} ms"),
        None => format!("rate limited; retry in {retry_after_ms} ms"),
    };
    Frame::request(
        rid,
        ErrorFrame {
            code: ErrorCode::RateLimited,
            retry_after_ms: retry_after_ms.max(1),
            message,
        },
    )
}

/// Which rate-limit bucket a client frame is charged to, and how many
/// tokens it takes, if any.
fn limited_kind(body: &Body) -> Option<(Kind, u32)> {
    let rooms = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let one = |kind| Some((kind, 1));
    match body {
        Body::Publish(_) => one(Kind::Publish),
        Body::Typing(_) => one(Kind::Typing),
        Body::Subscribe(s) => Some((Kind::Subscribe, rooms(s.items.len()))),
        Body::Unsubscribe(u) => Some((Kind::Subscribe, rooms(u.rooms.len()))),
        Body::Receipt(_) => one(Kind::Receipt),
        Body::HistoryRequest(_)
        | Body::GetRoomInfo(_)
        | Body::GetMessageStatus(_)
        | Body::ListRooms(_)
        | Body::SyncInbox(_)
        | Body::RefreshToken(_)
        | Body::RegisterPush(_) => one(Kind::Query),
        Body::CreateRoom(_)
        | Body::JoinRoom(_)
        | Body::LeaveRoom(_)
        | Body::InviteMember(_)
        | Body::RemoveMember(_)
        | Body::UpdateRoom(_)
        | Body::SetRole(_)
        | Body::SetPresence(_)
        | Body::WatchPresence(_)
        | Body::GetPresence(_) => one(Kind::RoomOp),
        _ => None,
    }
}
