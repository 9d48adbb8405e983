//! What the connection task does with each input: application commands,
//! subscription messages, and frames from the broker.

use confab_codec::{
    flags, Ack, Body, Direction, ErrorCode, EventRecord, Frame, GapReason, HistoryRequest, Pong,
    Receipt, RoomId, Seq, StartAt, Subscribe, SubscribeItem, SubscribeResult, Unsubscribe,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use super::conn::Inflight;
use super::{
    Command, Deferred, Driver, Flow, PendingPub, ReqMode, Room, SessionEnd, SubCtl, SubscribeCmd,
    Wire,
};
use crate::error::{is_passing_refusal, ClientError, DisconnectReason};
use crate::events::{ConnectionEvent, Gap, RoomEvent, Signal};
use crate::sync::{Action, RoomSync};

/// Most rooms per `Subscribe` frame.
const SUBSCRIBE_CHUNK: usize = 1000;

/// What a room's event stream carried, held on QUIC until the
/// `SubscribeAck` it follows arrives.
#[derive(Debug)]
pub(super) enum Held {
    /// An entry, and whether it was replayed from the log.
    Event(EventRecord, bool),
    /// A range the broker will not deliver (version 2).
    Gap(confab_codec::Gap),
}

impl Driver {
    // ----- commands ------------------------------------------------------

    /// Handles an application command. Synchronous, so that the select
    /// loops calling it stay cancel-safe.
    pub(super) fn on_command(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Publish(o) => {
                let order = self.next_order;
                self.next_order += 1;
                self.publishes.insert(
                    order,
                    PendingPub {
                        publish: o.publish,
                        reply: o.reply,
                        _permit: o.permit,
                        on_wire: false,
                        rate_limited: 0,
                        sent_alone: false,
                        sends: 0,
                    },
                );
                self.send_publish(order);
            }
            Command::Subscribe(s) => self.on_subscribe(s),
            Command::Unsubscribe { room, id, reply } => self.on_unsubscribe(room, id, Some(reply)),
            Command::Request { body, mode, reply } => self.on_request(body, mode, reply),
            Command::Flush(reply) => {
                if self.publishes.is_empty() {
                    let _ = reply.send(());
                } else {
                    self.flush_waiters.push(reply);
                }
            }
            Command::Close(reply) => {
                self.closing.push(reply);
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    pub(super) fn on_ctl(&mut self, ctl: SubCtl) {
        match ctl {
            SubCtl::Resume { room, id } => {
                let mut out = Vec::new();
                match self.rooms.get_mut(&room) {
                    Some(r) if r.id == id => {
                        r._drain_watch = None;
                        r.sync.resume(&mut out);
                    }
                    _ => return,
                }
                debug!(%room, "subscription drained; resuming");
                self.apply(&room, out, true);
            }
            SubCtl::Dropped { room, id } => self.on_unsubscribe(room, id, None),
        }
    }

    fn on_subscribe(&mut self, s: SubscribeCmd) {
        if self.rooms.get(&s.room).is_some_and(|r| !r.tx.is_closed()) {
            let _ = s
                .reply
                .send(Err(ClientError::AlreadySubscribed(s.room.to_string())));
            return;
        }
        let last = match s.from {
            Some(from) => Some(Seq(from.0.max(1) - 1)),
            None => self.config.cursor_store.get(&s.room),
        };
        let room = Room {
            id: s.id,
            sync: RoomSync::new(
                last,
                self.config.max_out_of_order,
                self.config.history_page_size,
            ),
            tx: s.tx,
            end: s.end,
            wire: Wire::Idle,
            held: Vec::new(),
            gaps: Vec::new(),
            ack: None,
            _drain_watch: None,
        };
        // Replaces a subscription whose application side is already gone.
        self.rooms.insert(s.room.clone(), room);
        if self.conn.is_some() {
            if let Some(r) = self.rooms.get_mut(&s.room) {
                r.ack = Some(s.reply);
            }
            self.send_subscribe(vec![s.room]);
        } else {
            // Subscribed when the connection comes up.
            let _ = s.reply.send(Ok(()));
        }
    }

    fn on_unsubscribe(
        &mut self,
        room: RoomId,
        id: u64,
        reply: Option<tokio::sync::oneshot::Sender<Result<(), ClientError>>>,
    ) {
        let Some(r) = self.rooms.get(&room).filter(|r| r.id == id) else {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
            return;
        };
        let on_wire = r.wire != Wire::Idle;
        self.rooms.remove(&room);
        let rid = self.next_rid();
        match self.conn.as_mut() {
            Some(conn) if on_wire => {
                conn.inflight.insert(rid, Inflight::Unsubscribe(reply));
                conn.send(Frame::request(rid, Unsubscribe { rooms: vec![room] }));
            }
            _ => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    fn on_request(
        &mut self,
        body: Body,
        mode: ReqMode,
        reply: tokio::sync::oneshot::Sender<Result<Body, ClientError>>,
    ) {
        match &body {
            Body::SetPresence(p) => self.presence = Some(p.status),
            Body::WatchPresence(w) => self.watching_presence = w.enabled,
            // Used from the next Hello on; a refused token ends the client
            // (Unauthenticated is fatal), so there is nothing to undo.
            Body::RefreshToken(t) => self.token = t.token.clone(),
            _ => {}
        }
        if let Body::Receipt(receipt) = body {
            // Done once it is the SDK's to deliver: sent now, or on the next
            // connection, and again after a loss until the broker has read
            // it (see `Conn::send_receipt`).
            if self.conn.is_some() {
                self.send_receipt(receipt);
            } else {
                self.keep_receipt(receipt);
            }
            let _ = reply.send(Ok(Body::Ack(Ack {})));
            return;
        }
        if self.conn.is_some() {
            self.send_request(body, mode, reply);
            return;
        }
        // Requests whose caller gave up (timed out, dropped) take no room.
        self.deferred.retain(|d| !d.reply.is_closed());
        match (mode, &body) {
            (ReqMode::Ephemeral, _) => {
                let _ = reply.send(Err(ClientError::NotConnected));
            }
            // Applied by `establish` (or the next Hello) on the next
            // connection.
            (_, Body::SetPresence(_) | Body::WatchPresence(_) | Body::RefreshToken(_)) => {
                let _ = reply.send(Ok(Body::Ack(Ack {})));
            }
            _ if self.deferred.len() >= self.config.outbound_queue_capacity => {
                let _ = reply.send(Err(ClientError::QueueFull));
            }
            _ => self.deferred.push_back(Deferred { body, mode, reply }),
        }
    }

    // ----- sending -------------------------------------------------------

    pub(super) fn send_request(
        &mut self,
        body: Body,
        mode: ReqMode,
        reply: tokio::sync::oneshot::Sender<Result<Body, ClientError>>,
    ) {
        let rid = self.next_rid();
        let Some(conn) = self.conn.as_mut() else {
            let _ = reply.send(Err(ClientError::NotConnected));
            return;
        };
        if !confab_codec::type_in_version(body.frame_type(), conn.welcome.version) {
            // The broker would close the connection for a frame of a later
            // protocol version than it chose.
            let _ = reply.send(Err(ClientError::Server {
                code: ErrorCode::Unsupported,
                message: format!(
                    "{} needs protocol version 2; the broker chose version {}",
                    body.name(),
                    conn.welcome.version
                ),
                retry_after_ms: 0,
            }));
            return;
        }
        let frame = Frame::request(rid, body);
        let max = conn.welcome.max_frame_len;
        match frame.body_len() {
            Ok(len) if len <= max as usize => {}
            Ok(len) => {
                let e = confab_codec::CodecError::FrameTooLarge {
                    len: len as u64,
                    max,
                };
                let _ = reply.send(Err(e.into()));
                return;
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        }
        if mode == ReqMode::Reply {
            let retry = is_read_only(&frame.body).then(|| frame.body.clone());
            conn.inflight
                .insert(rid, Inflight::Request { reply, retry });
        } else {
            conn.remember_no_reply(rid, frame.body.name());
            let _ = reply.send(Ok(Body::Ack(Ack {})));
        }
        conn.send(frame);
    }

    /// Sends a receipt on the current connection, or keeps it for the
    /// next one.
    pub(super) fn send_receipt(&mut self, receipt: Receipt) {
        let rid = self.next_rid();
        match self.conn.as_mut() {
            Some(conn) => conn.send_receipt(rid, receipt),
            None => self.keep_receipt(receipt),
        }
    }

    /// Keeps a receipt for the next connection (the furthest per room and
    /// marker: markers only move forward).
    pub(super) fn keep_receipt(&mut self, receipt: Receipt) {
        let seq = self
            .receipts
            .entry((receipt.room, receipt.kind))
            .or_insert(receipt.seq);
        *seq = (*seq).max(receipt.seq);
    }

    pub(super) fn send_internal(&mut self, body: Body, name: &'static str) {
        let rid = self.next_rid();
        if let Some(conn) = self.conn.as_mut() {
            conn.inflight.insert(rid, Inflight::Internal(name));
            conn.send(Frame::request(rid, body));
        }
    }

    /// Sends a pending publish on the current connection, if any, unless
    /// publishing is paused by a rate limit or a full broker storage (it is
    /// sent when the pause ends, in order).
    pub(super) fn send_publish(&mut self, order: u64) {
        if self
            .publish_paused_until
            .is_some_and(|until| until > tokio::time::Instant::now())
        {
            return;
        }
        if self.publish_window != usize::MAX
            && self.publishes.values().filter(|p| p.on_wire).count() >= self.publish_window
        {
            return;
        }
        let alone = !self.publishes.values().any(|p| p.on_wire);
        let rid = self.next_rid();
        let (Some(conn), Some(p)) = (self.conn.as_mut(), self.publishes.get_mut(&order)) else {
            return;
        };
        let max = conn.welcome.max_payload_len;
        let len = p.publish.payload.len();
        if len > max as usize {
            // Sending it would only earn a refusal; resending it after every
            // reconnect would earn one each time.
            self.complete_publish(order, Err(ClientError::PayloadTooLarge { len, max }));
            return;
        }
        p.on_wire = true;
        p.sent_alone = alone;
        p.sends = p.sends.saturating_add(1);
        conn.inflight.insert(rid, Inflight::Publish(order));
        conn.send(Frame::request(rid, p.publish.clone()));
    }

    /// Ends a pause (rate limit, full storage) that is over: sends, in
    /// order, every pending publish that is not on the wire.
    pub(super) fn resume_publishes(&mut self) {
        match self.publish_paused_until {
            Some(until) if until <= tokio::time::Instant::now() => {}
            _ => return,
        }
        self.publish_paused_until = None;
        debug!(
            window = self.publish_window,
            "publish pause over; sending again"
        );
        self.send_waiting_publishes();
    }

    /// Sends, in order, the pending publishes not on the wire, as far as
    /// the publish window allows.
    fn send_waiting_publishes(&mut self) {
        let orders: Vec<u64> = self
            .publishes
            .iter()
            .filter(|(_, p)| !p.on_wire)
            .map(|(o, _)| *o)
            .collect();
        for order in orders {
            self.send_publish(order);
        }
    }

    /// An acknowledgement after a rate limit: the window doubles (and is
    /// lifted once it reaches the outbound queue's size).
    fn widen_publish_window(&mut self) {
        if self.publish_window == usize::MAX {
            return;
        }
        self.publish_window = self.publish_window.saturating_mul(2);
        if self.publish_window >= self.config.outbound_queue_capacity {
            self.publish_window = usize::MAX;
        }
        self.send_waiting_publishes();
    }

    /// A publish was refused with `RateLimited`: pause publishing for
    /// `retry_after_ms` and send it again then. Refusals of a publish sent
    /// alone count, up to `rate_limit_retries`; refusals of one sent in a
    /// burst (a queue drained after a reconnect) do not, since each pause
    /// lets at least the first publish after it through. With
    /// `rate_limit_retries` 0, no refusal is retried. Returns false when it
    /// is out of retries.
    fn retry_rate_limited(&mut self, order: u64, retry_after_ms: u32) -> bool {
        let max = self.config.rate_limit_retries;
        // From now on one publish at a time, so that the ones behind it are
        // not refused (and charged) in every round.
        self.publish_window = 1;
        let Some(p) = self.publishes.get_mut(&order) else {
            return true;
        };
        p.on_wire = false;
        // With no retries configured, every refusal reaches the application.
        if p.sent_alone || max == 0 {
            if p.rate_limited >= max {
                return false;
            }
            p.rate_limited += 1;
        }
        let until = tokio::time::Instant::now()
            + std::time::Duration::from_millis(u64::from(retry_after_ms.max(1)));
        debug!(room = %p.publish.room, client_msg_id = p.publish.client_msg_id, retry_after_ms, "publish rate limited; retrying later");
        self.publish_paused_until = Some(self.publish_paused_until.map_or(until, |u| u.max(until)));
        true
    }

    /// A publish was refused with `StorageFull` (the broker stored nothing
    /// and will accept writes again once its operator frees space) or
    /// `Internal` (a server-side failure: in a cluster, the room's owner
    /// left or did not answer in time, and the publish may have been
    /// stored). Send it again, with the same client message id, after a
    /// back-off delay (`backoff`, without its attempt limit: publishes have
    /// no timeout, and such a publish is retried until it is acknowledged,
    /// with its original sequence if it was stored, or the client is
    /// closed). Refusals that arrive while a pause is already set (the rest
    /// of a burst) do not lengthen the delay. Meanwhile one publish at a
    /// time, as after a rate limit, so that a long queue is not refused all
    /// over again at every try.
    fn retry_refused_publish(&mut self, order: u64, code: ErrorCode) {
        self.publish_window = 1;
        let Some(p) = self.publishes.get_mut(&order) else {
            return;
        };
        p.on_wire = false;
        let now = tokio::time::Instant::now();
        if self.publish_paused_until.is_some_and(|until| until > now) {
            return;
        }
        let delay = self
            .refused_publish
            .next_delay(&mut self.rng)
            .unwrap_or(self.config.backoff.max)
            .max(std::time::Duration::from_millis(1));
        if self.refused_publish.failures() == 1 && code == ErrorCode::StorageFull {
            warn!(room = %p.publish.room, "the broker's storage is full; publishes wait and are sent again with back-off");
        } else if self.refused_publish.failures() == 1 {
            warn!(room = %p.publish.room, code = code.as_str(), "a publish failed at the broker; it is sent again with the same id, with back-off");
        } else {
            debug!(room = %p.publish.room, client_msg_id = p.publish.client_msg_id, code = code.as_str(), delay_ms = delay.as_millis(), "publish refused again; retrying later");
        }
        self.publish_paused_until = Some(now + delay);
    }

    /// Subscribes rooms on the current connection from their positions.
    pub(super) fn send_subscribe(&mut self, rooms: Vec<RoomId>) {
        if self.conn.is_none() {
            return;
        }
        for chunk in rooms.chunks(SUBSCRIBE_CHUNK) {
            let rid = self.next_rid();
            let mut items = Vec::with_capacity(chunk.len());
            let mut ids = Vec::with_capacity(chunk.len());
            for room in chunk {
                if let Some(r) = self.rooms.get_mut(room) {
                    items.push(SubscribeItem {
                        room: room.clone(),
                        start: r.sync.start_at(),
                    });
                    ids.push((room.clone(), r.id));
                    r.wire = Wire::Pending;
                }
            }
            if let (false, Some(conn)) = (items.is_empty(), self.conn.as_mut()) {
                conn.inflight.insert(rid, Inflight::Subscribe(ids));
                conn.send(Frame::request(rid, Subscribe { items }));
            }
        }
    }

    fn send_fill(&mut self, room: &RoomId, after: Seq, limit: u16) {
        let rid = self.next_rid();
        let Some(id) = self.rooms.get(room).map(|r| r.id) else {
            return;
        };
        match self.conn.as_mut() {
            Some(conn) => {
                conn.inflight.insert(
                    rid,
                    Inflight::Fill {
                        room: room.clone(),
                        id,
                    },
                );
                conn.send(Frame::request(
                    rid,
                    HistoryRequest {
                        room: room.clone(),
                        direction: Direction::After,
                        anchor: after,
                        limit,
                    },
                ));
            }
            None => {
                // Offline: the resumption on reconnect fills the gap.
                let mut out = Vec::new();
                if let Some(r) = self.rooms.get_mut(room) {
                    r.sync.on_fill_failed(&mut out);
                }
            }
        }
    }

    fn complete_publish(
        &mut self,
        order: u64,
        result: Result<confab_codec::PublishAck, ClientError>,
    ) {
        let Some(p) = self.publishes.remove(&order) else {
            return;
        };
        // Acknowledged or refused for good: nothing to send after a restart.
        if let Some(store) = &self.config.outbox_store {
            store.remove(p.publish.client_msg_id);
        }
        match result {
            Ok(ack) => {
                let _ = p.reply.send(Ok(ack));
            }
            Err(error) => {
                debug!(room = %p.publish.room, client_msg_id = p.publish.client_msg_id, %error, "publish refused");
                if let Err(Err(error)) = p.reply.send(Err(error)) {
                    self.emit(ConnectionEvent::PublishFailed {
                        room: p.publish.room,
                        client_msg_id: p.publish.client_msg_id,
                        error,
                    });
                }
            }
        }
        if self.publishes.is_empty() {
            for waiter in self.flush_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    // ----- frames --------------------------------------------------------

    /// Handles one frame from the broker; `Some` ends the session.
    pub(super) fn on_frame(&mut self, frame: Frame) -> Option<SessionEnd> {
        if let Some(conn) = self.conn.as_mut() {
            conn.received();
        }
        let rid = frame.request_id;
        let replayed = frame.flags & flags::REPLAY != 0;
        match frame.body {
            Body::Event(e) => self.on_events(e.room, vec![e.event], replayed),
            Body::EventBatch(b) => self.on_events(b.room, b.events, replayed),
            Body::Gap(g) => self.on_gap(g),
            Body::Ping(p) => {
                if let Some(conn) = self.conn.as_mut() {
                    conn.send(Frame::new(Pong { nonce: p.nonce }));
                }
            }
            Body::Pong(p) => {
                if let Some(conn) = self.conn.as_mut() {
                    conn.on_pong(p.nonce);
                }
            }
            Body::Extension { .. } => {}
            Body::Goodbye(g) => {
                return Some(SessionEnd::Lost(DisconnectReason::Goodbye {
                    code: g.code,
                    message: g.message,
                }))
            }
            Body::Error(e) if rid == 0 => {
                warn!(code = e.code.as_str(), message = %e.message, "connection error from the broker");
                if let Some(conn) = self.conn.as_mut() {
                    conn.conn_error = Some((e.code, e.message));
                }
            }
            Body::Lagging(l) => self.emit(ConnectionEvent::Lagging {
                room: l.room,
                resume_from: l.resume_from,
                head: l.head,
            }),
            Body::CaughtUp(c) => self.emit(ConnectionEvent::CaughtUp {
                room: c.room,
                seq: c.seq,
            }),
            Body::Notice(n) => self.signal(Signal::Notice(n)),
            Body::TypingEvent(t) => self.signal(Signal::Typing {
                room: t.room,
                users: t.users,
            }),
            Body::ReceiptEvent(r) => self.signal(Signal::Receipts {
                room: r.room,
                entries: r.entries,
            }),
            Body::PresenceEvent(p) if rid == 0 => self.signal(Signal::Presence(p.entries)),
            body @ (Body::Ack(_)
            | Body::Error(_)
            | Body::SubscribeAck(_)
            | Body::PublishAck(_)
            | Body::HistoryPage(_)
            | Body::RoomInfo(_)
            | Body::RoomList(_)
            | Body::InboxPage(_)
            | Body::PresenceEvent(_)
            | Body::MessageStatus(_)) => self.on_reply(rid, body),
            other => debug!(frame = other.name(), "ignoring an unexpected frame"),
        }
        None
    }

    fn on_reply(&mut self, rid: u32, body: Body) {
        let Some(inflight) = self.conn.as_mut().and_then(|c| c.inflight.remove(&rid)) else {
            match &body {
                Body::Error(e) => {
                    let name = self.conn.as_ref().and_then(|c| c.no_reply_name(rid));
                    warn!(request = name.unwrap_or("unknown"), code = e.code.as_str(), message = %e.message, "request failed");
                }
                other => debug!(rid, frame = other.name(), "reply to an unknown request"),
            }
            return;
        };
        match inflight {
            Inflight::Publish(order) => {
                if let Body::Error(e) = &body {
                    if e.code == ErrorCode::RateLimited
                        && self.retry_rate_limited(order, e.retry_after_ms)
                    {
                        return;
                    }
                    if matches!(e.code, ErrorCode::StorageFull | ErrorCode::Internal) {
                        self.retry_refused_publish(order, e.code);
                        return;
                    }
                }
                if let (Body::PublishAck(ack), Some(p)) = (&body, self.publishes.get(&order)) {
                    if ack.duplicate && p.sends == 1 {
                        // Never sent before, yet already stored: an earlier
                        // run of this device used the same id (its clock
                        // was set back, see `MsgIds`), and this message was
                        // not stored.
                        warn!(room = %ack.room, client_msg_id = ack.client_msg_id, seq = %ack.seq, "first send of a publish acknowledged as a duplicate: client message id reused");
                    }
                }
                let result = match body {
                    Body::PublishAck(ack) => Ok(ack),
                    Body::Error(e) => Err(ClientError::server(&e)),
                    other => Err(ClientError::UnexpectedReply(other.name())),
                };
                let acked = result.is_ok();
                self.complete_publish(order, result);
                if acked {
                    self.refused_publish.reset();
                    self.widen_publish_window();
                } else if self.publish_window != usize::MAX {
                    // Its place in the window is free again.
                    self.send_waiting_publishes();
                }
            }
            Inflight::Subscribe(items) => match body {
                Body::SubscribeAck(ack) => self.on_subscribe_ack(rid, items, ack.results),
                Body::Error(e) if is_passing_refusal(e.code) => {
                    for (room, id) in items {
                        self.subscribe_later(&room, id, e.code, e.retry_after_ms);
                    }
                }
                other => {
                    let err = match &other {
                        Body::Error(e) => ClientError::server(e),
                        other => ClientError::UnexpectedReply(other.name()),
                    };
                    for (room, id) in items {
                        self.end_room(&room, id, err.clone());
                    }
                }
            },
            Inflight::Unsubscribe(reply) => {
                if let Some(reply) = reply {
                    let _ = reply.send(match body {
                        Body::Error(e) => Err(ClientError::server(&e)),
                        _ => Ok(()),
                    });
                }
            }
            Inflight::Fill { room, id } => {
                let mut out = Vec::new();
                let Some(r) = self.rooms.get_mut(&room).filter(|r| r.id == id) else {
                    return;
                };
                match body {
                    Body::HistoryPage(page) => r.sync.on_history(page.first, page.events, &mut out),
                    _ => r.sync.on_fill_failed(&mut out),
                }
                self.apply(&room, out, true);
            }
            Inflight::Request { reply, .. } => {
                let _ = reply.send(match body {
                    Body::Error(e) => Err(ClientError::server(&e)),
                    other => Ok(other),
                });
            }
            Inflight::Internal(name) => {
                if let Body::Error(e) = body {
                    warn!(request = name, code = e.code.as_str(), message = %e.message, "request failed");
                }
            }
            Inflight::InboxSync => match body {
                Body::InboxPage(page) => self.on_inbox_page(page),
                other => {
                    // The rooms' own subscriptions still deliver everything;
                    // the next connection syncs again from the same cursor.
                    self.inbox = None;
                    match other {
                        Body::Error(e) => {
                            warn!(code = e.code.as_str(), message = %e.message, "inbox sync failed")
                        }
                        other => warn!(frame = other.name(), "unexpected reply to an inbox sync"),
                    }
                }
            },
        }
    }

    fn on_subscribe_ack(
        &mut self,
        rid: u32,
        mut items: Vec<(RoomId, u64)>,
        results: Vec<SubscribeResult>,
    ) {
        // An ack too large for one frame comes in several, with the same
        // request id, in request order (protocol 7.3.2): the rooms past
        // this frame's results wait for the next one.
        if !results.is_empty() && results.len() < items.len() {
            let rest = items.split_off(results.len());
            if let Some(conn) = self.conn.as_mut() {
                conn.inflight.insert(rid, Inflight::Subscribe(rest));
            }
        }
        for (i, (room, id)) in items.into_iter().enumerate() {
            let Some(result) = results.get(i) else {
                self.end_room(&room, id, ClientError::UnexpectedReply("SubscribeAck"));
                continue;
            };
            let accepted = matches!(result.code, ErrorCode::Normal | ErrorCode::HistoryTruncated);
            let Some(r) = self.rooms.get_mut(&room).filter(|r| r.id == id) else {
                if accepted && !self.rooms.contains_key(&room) {
                    // Dropped while the subscribe was in flight.
                    let rid = self.next_rid();
                    if let Some(conn) = self.conn.as_mut() {
                        conn.inflight.insert(rid, Inflight::Unsubscribe(None));
                        conn.send(Frame::request(rid, Unsubscribe { rooms: vec![room] }));
                    }
                }
                continue;
            };
            if !accepted && is_passing_refusal(result.code) {
                self.subscribe_later(&room, id, result.code, 0);
                continue;
            }
            if !accepted {
                let err = ClientError::Server {
                    code: result.code,
                    message: format!("subscription to room {room} refused"),
                    retry_after_ms: 0,
                };
                self.end_room(&room, id, err);
                continue;
            }
            if r.sync.is_paused() {
                // Paused (and unsubscribed) after this subscribe was sent.
                continue;
            }
            if let StartAt::From(next) = r.sync.start_at() {
                if result.head.0.saturating_add(1) < next.0 {
                    // The broker lost entries this client already delivered
                    // (for example its data was restored from an old backup):
                    // new entries reuse delivered sequences and are dropped
                    // as duplicates. Nothing sane can be done silently.
                    warn!(%room, head = %result.head, delivered = next.0 - 1, "room head is behind this client's cursor");
                }
            }
            r.wire = Wire::Active;
            self.resubscribe.reset();
            if let Some(ack) = r.ack.take() {
                let _ = ack.send(Ok(()));
            }
            let mut out = Vec::new();
            let truncated = result.code == ErrorCode::HistoryTruncated;
            r.sync
                .on_subscribed(result.head, result.first, truncated, &mut out);
            let held = std::mem::take(&mut r.held);
            if self.apply(&room, out, true) {
                for item in held {
                    match item {
                        Held::Event(record, replayed) => {
                            self.on_events(room.clone(), vec![record], replayed)
                        }
                        Held::Gap(gap) => self.on_gap(gap),
                    }
                }
            }
        }
    }

    /// The broker refused to (re)subscribe a room with a passing error (a
    /// storage read that failed, ...; protocol section 10): the room stays
    /// subscribed on the client's side and is subscribed again, from its
    /// position, after a back-off delay (`backoff` without its attempt
    /// limit, at least `retry_after_ms`), as after a lost connection. A
    /// `subscribe` call waiting for this answer succeeds: the room is
    /// registered, as when it is subscribed offline.
    fn subscribe_later(&mut self, room: &RoomId, id: u64, code: ErrorCode, retry_after_ms: u32) {
        let Some(r) = self.rooms.get_mut(room).filter(|r| r.id == id) else {
            return;
        };
        if r.wire == Wire::Pending {
            r.wire = Wire::Idle;
        }
        r.held.clear();
        if let Some(ack) = r.ack.take() {
            let _ = ack.send(Ok(()));
        }
        let now = tokio::time::Instant::now();
        if self.resubscribe_at.is_some_and(|at| at > now) {
            // Already waiting: this room goes with the others.
            return;
        }
        let delay = self
            .resubscribe
            .next_delay(&mut self.rng)
            .unwrap_or(self.config.backoff.max)
            .max(std::time::Duration::from_millis(
                u64::from(retry_after_ms).max(1),
            ));
        warn!(%room, code = code.as_str(), delay_ms = delay.as_millis(), "subscription refused by the broker; subscribing again later");
        self.resubscribe_at = Some(now + delay);
    }

    /// Subscribes again, once their delay is over, the rooms a passing
    /// error refused (every room not on the wire and not paused).
    pub(super) fn retry_subscribes(&mut self) {
        match self.resubscribe_at {
            Some(at) if at <= tokio::time::Instant::now() => {}
            _ => return,
        }
        self.resubscribe_at = None;
        let rooms: Vec<RoomId> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.wire == Wire::Idle && !r.sync.is_paused())
            .map(|(room, _)| room.clone())
            .collect();
        debug!(rooms = rooms.len(), "subscribing refused rooms again");
        self.send_subscribe(rooms);
    }

    /// The subscription ended for good: its stream yields `err`, then ends.
    fn end_room(&mut self, room: &RoomId, id: u64, err: ClientError) {
        if self.rooms.get(room).is_none_or(|r| r.id != id) {
            return;
        }
        let Some(r) = self.rooms.remove(room) else {
            return;
        };
        warn!(%room, error = %err, "subscription ended");
        *r.end.lock().unwrap_or_else(|p| p.into_inner()) = Some(err.clone());
        if let Some(ack) = r.ack {
            let _ = ack.send(Err(err));
        }
    }

    // ----- room events ---------------------------------------------------

    fn on_events(&mut self, room: RoomId, records: Vec<EventRecord>, replayed: bool) {
        let split = self.conn.as_ref().is_some_and(|c| c.split_events());
        if let Some(r) = self
            .rooms
            .get_mut(&room)
            .filter(|r| split && r.wire == Wire::Pending)
        {
            // QUIC: the SubscribeAck travels on the control stream and may
            // arrive after the events it precedes. Hold them until then;
            // beyond the bound they are dropped, and the gap they leave is
            // filled from history like any other.
            let room_left = self.config.max_out_of_order.saturating_sub(r.held.len());
            r.held.extend(
                records
                    .into_iter()
                    .take(room_left)
                    .map(|e| Held::Event(e, replayed)),
            );
            return;
        }
        for record in records {
            let Some(r) = self.rooms.get_mut(&room) else {
                return;
            };
            if r.sync.is_paused() {
                return;
            }
            let mut out = Vec::new();
            r.sync.on_event(record, &mut out);
            if !self.apply(&room, out, replayed) {
                return;
            }
        }
    }

    /// A `Gap` from the broker (version 2): entries it will not deliver on
    /// the room's subscription, in the room's delivery order.
    fn on_gap(&mut self, gap: confab_codec::Gap) {
        let split = self.conn.as_ref().is_some_and(|c| c.split_events());
        let Some(r) = self.rooms.get_mut(&gap.room) else {
            return;
        };
        if split && r.wire == Wire::Pending {
            // QUIC: it follows a SubscribeAck still on its way, like the
            // events around it. Beyond the bound it is dropped; the
            // entries after it then look missing, and the resubscription
            // that follows reports the range again.
            if r.held.len() < self.config.max_out_of_order {
                r.held.push(Held::Gap(gap));
            }
            return;
        }
        let mut out = Vec::new();
        r.sync.on_gap(gap.from, gap.to, gap.reason, &mut out);
        self.apply(&gap.room, out, true);
    }

    /// Performs a room's sync actions. Returns false if the room stopped
    /// taking events (paused or gone).
    fn apply(&mut self, room: &RoomId, actions: Vec<Action<EventRecord>>, replayed: bool) -> bool {
        for action in actions {
            match action {
                Action::Deliver(record) => {
                    let Some(r) = self.rooms.get_mut(room) else {
                        return false;
                    };
                    let seq = record.seq;
                    let mut event = RoomEvent::from_record(room.clone(), record, replayed);
                    event.gaps = std::mem::take(&mut r.gaps);
                    match r.tx.try_send(event) {
                        Ok(()) => {}
                        Err(TrySendError::Full(event)) => {
                            // The gaps go with the event after the pause.
                            r.gaps = event.gaps;
                            self.pause_room(room, seq);
                            return false;
                        }
                        Err(TrySendError::Closed(_)) => {
                            let id = r.id;
                            self.on_unsubscribe(room.clone(), id, None);
                            return false;
                        }
                    }
                }
                Action::Duplicate(seq) => trace!(%room, %seq, "duplicate dropped"),
                Action::FetchHistory { after, limit } => {
                    debug!(%room, %after, limit, "gap detected; reading history");
                    self.send_fill(room, after, limit);
                }
                Action::Resubscribe { from } => {
                    debug!(%room, %from, "resubscribing");
                    self.send_subscribe(vec![room.clone()]);
                }
                Action::Gap {
                    from,
                    to,
                    reason: GapReason::AccessLost,
                } => {
                    let Some(r) = self.rooms.get(room) else {
                        return false;
                    };
                    // Ranges still waiting for an event are part of what
                    // was not delivered.
                    let from = r.gaps.first().map_or(from, |g| g.from.min(from));
                    let id = r.id;
                    let err = ClientError::AccessLost {
                        room: room.clone(),
                        from,
                        to,
                    };
                    self.end_room(room, id, err);
                    return false;
                }
                Action::Gap { from, to, reason } => {
                    let Some(r) = self.rooms.get_mut(room) else {
                        return false;
                    };
                    warn!(%room, %from, %to, ?reason, "messages that will not be delivered");
                    match r.gaps.last_mut() {
                        // Adjacent ranges of one reason are one range.
                        Some(last) if last.reason == reason && last.to.next() == from => {
                            last.to = to;
                        }
                        _ => r.gaps.push(Gap {
                            room: room.clone(),
                            from,
                            to,
                            reason,
                        }),
                    }
                    if reason == GapReason::Trimmed {
                        self.emit(ConnectionEvent::HistoryTruncated {
                            room: room.clone(),
                            from,
                            to,
                        });
                    }
                }
            }
        }
        true
    }

    /// The application's buffer for `room` is full at event `blocked`:
    /// stop the room (at the broker too) until the buffer is half drained.
    fn pause_room(&mut self, room: &RoomId, blocked: Seq) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.sync.pause(blocked);
        r.held.clear();
        let on_wire = r.wire != Wire::Idle;
        r.wire = Wire::Idle;
        let id = r.id;
        let tx = r.tx.clone();
        let wanted = (tx.max_capacity() / 2).max(1);
        let cancel = CancellationToken::new();
        r._drain_watch = Some(cancel.clone().drop_guard());
        let ctl = self.ctl_tx.clone();
        let watched = room.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                reserved = tx.reserve_many(wanted) => {
                    if reserved.is_ok() {
                        let _ = ctl.send(SubCtl::Resume { room: watched, id });
                    }
                }
            }
        });
        if on_wire {
            let rid = self.next_rid();
            if let Some(conn) = self.conn.as_mut() {
                conn.inflight.insert(rid, Inflight::Unsubscribe(None));
                conn.send(Frame::request(
                    rid,
                    Unsubscribe {
                        rooms: vec![room.clone()],
                    },
                ));
            }
        }
        debug!(%room, %blocked, "application not reading; room paused");
        self.emit(ConnectionEvent::Paused { room: room.clone() });
    }
}

/// Whether a request only reads, so that sending it again after a lost
/// connection cannot do anything twice.
fn is_read_only(body: &Body) -> bool {
    matches!(
        body,
        Body::HistoryRequest(_)
            | Body::GetRoomInfo(_)
            | Body::ListRooms(_)
            | Body::SyncInbox(_)
            | Body::GetPresence(_)
            | Body::GetMessageStatus(_)
    )
}
