//! The requests that change state: publish, subscribe and unsubscribe,
//! room operations, typing and token refreshes. Each holds a permit of the
//! connection (publishes their own) and waits for a place in the
//! sequencer's queue, so that a client sending faster than the broker
//! works is slowed down by TCP rather than served from memory.

use std::sync::Arc;

use confab_codec::{
    flags, Ack, ErrorCode, Frame, Notice, NoticeLevel, Publish, RefreshToken, RoomId, Seq,
    SubscribeItem as WireItem, SubscribeResult, Typing,
};
use tokio::sync::OwnedSemaphorePermit;

use super::connection::{error_frame, push, CloseReason, Session};
use super::grant::Grant;
use crate::auth::authz::{AccessRequest, Action, Denied};
use crate::base::now_us;
use crate::fanout::{SubscribeCmd, SubscribeItem, Subscription};
use crate::rooms;
use crate::sequencer::{PublishReq, RoomOp, RoomOpReq, SeqMsg};
use crate::storage::LogBounds;

impl Session {
    pub(super) async fn publish(
        &mut self,
        rid: u32,
        frame_flags: u8,
        p: Publish,
    ) -> Option<CloseReason> {
        let received_at = std::time::Instant::now();
        let limits = &self.shared.config.limits;
        let reject = |code, msg: String| {
            push(&self.conn.outbox, error_frame(rid, code, msg));
            None
        };
        if let Err(denied) = self.authorize(&p.room, Action::Publish).await {
            return reject(denied.code, denied.message);
        }
        if p.payload.len() > limits.max_payload_len as usize {
            return reject(
                ErrorCode::PayloadTooLarge,
                format!(
                    "payload of {} bytes exceeds {}",
                    p.payload.len(),
                    limits.max_payload_len
                ),
            );
        }
        if !p.kind.client_publishable() {
            return reject(
                ErrorCode::InvalidRequest,
                format!("clients cannot publish kind {}", p.kind.0),
            );
        }
        if p.kind.needs_reference() && p.refers_to.is_none() {
            return reject(
                ErrorCode::InvalidRequest,
                "edits, deletes and reactions need refers_to".into(),
            );
        }
        let permit = tokio::select! {
            p = self.conn.inflight.acquire() => p,
            _ = self.shared.shutdown.cancelled() => {
                return Some((ErrorCode::ShuttingDown, "server shutting down".into()));
            }
        };
        match permit {
            Ok(p) => p.forget(),
            Err(_) => return Some((ErrorCode::Internal, "publish permits closed".into())),
        }
        let no_reply = frame_flags & flags::NO_REPLY != 0;
        let req = PublishReq::new(self.conn.clone(), rid, no_reply, p, received_at);
        // Cluster mode: a room another node owns is its business. The
        // forwarder keeps the order of the calls, as the sequencer does.
        let req = match &self.shared.forward {
            None => req,
            Some(f) => match f.forward(req) {
                None => return None,
                Some(req) => req,
            },
        };
        // The session hands publishes to the sequencer one at a time, in
        // the order they arrived, and the sequencer keeps that order: this
        // is what makes a connection's publishes to one room sequenced in
        // send order (protocol 12.1).
        if !self.to_sequencer(SeqMsg::Publish(req)).await {
            self.conn.inflight.add_permits(1);
            return Some((ErrorCode::ShuttingDown, "server shutting down".into()));
        }
        None
    }

    pub(super) async fn subscribe(&mut self, rid: u32, items: Vec<WireItem>) {
        let max_rooms = self.shared.config.limits.max_rooms_per_connection as usize;
        // Subscriptions the broker refused or ended since the last
        // Subscribe count for nothing and hold no room in memory.
        self.subs.retain(|_, s| !s.is_closed());
        let mut results = Vec::with_capacity(items.len());
        let mut stamped = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let mut result = SubscribeResult {
                room: item.room.clone(),
                code: ErrorCode::Normal,
                head: Seq(0),
                first: Seq(1),
            };
            if !self.grant.may_use(&item.room) {
                result.code = ErrorCode::Forbidden;
                results.push(result);
                continue;
            }
            if let Err(denied) = self.authorize(&item.room, Action::Subscribe).await {
                result.code = denied.code;
                results.push(result);
                continue;
            }
            let replaces = self.subs.get(&item.room).cloned();
            if replaces.is_none() && self.subs.len() >= max_rooms {
                result.code = ErrorCode::TooManyRooms;
                results.push(result);
                continue;
            }
            results.push(result);
            let room = self.shared.rooms.get_or_create(&item.room);
            let sub = Arc::new(
                Subscription::for_user(
                    room,
                    self.conn.outbox.clone(),
                    Some(self.conn.user.clone()),
                )
                // `Gap` is a version 2 frame.
                .with_gaps(self.conn.version >= 2),
            );
            self.subs.insert(item.room, sub.clone());
            stamped.push(SubscribeItem {
                index,
                sub,
                replaces,
                start: item.start,
                bounds: LogBounds::default(),
                refused: None,
            });
        }
        let held = self.hold().await;
        let cmd = SubscribeCmd {
            outbox: self.conn.outbox.clone(),
            user: self.conn.user.clone(),
            system: false,
            request_id: rid,
            results,
            items: stamped,
            held,
        };
        if cmd.held.is_none() || !self.to_sequencer(SeqMsg::Subscribe(cmd)).await {
            push(
                &self.conn.outbox,
                error_frame(rid, ErrorCode::ShuttingDown, "server shutting down"),
            );
        }
    }

    pub(super) async fn room_op(&mut self, rid: u32, op: RoomOp) {
        if self.shared.forward.is_some() {
            push(
                &self.conn.outbox,
                cluster_unsupported(rid, "room operations"),
            );
            return;
        }
        let held = self.hold().await;
        let req = RoomOpReq {
            conn: self.conn.clone(),
            request_id: rid,
            op,
            held,
        };
        if req.held.is_none() || !self.to_sequencer(SeqMsg::RoomOp(req)).await {
            push(
                &self.conn.outbox,
                error_frame(rid, ErrorCode::ShuttingDown, "server shutting down"),
            );
        }
    }

    /// Typing has no reply unless it fails; members only.
    pub(super) async fn typing(&mut self, rid: u32, t: Typing) {
        let log = self.shared.log.clone();
        let (room, user) = (t.room.clone(), self.conn.user.clone());
        let auto_create = self.shared.config.rooms.auto_create;
        let allowed = if self.shared.authorizer.is_some() {
            let decided = self.authorize(&t.room, Action::Publish).await;
            Ok(Ok(decided.map_err(|d| (d.code, d.message))))
        } else {
            self.shared
                .reads
                .run(move || rooms::access(log.as_ref(), &room, &user, auto_create))
                .await
        };
        match allowed {
            Ok(Ok(Ok(()))) => {
                let room = self.shared.rooms.get_or_create(&t.room);
                self.shared.typing.set(
                    room,
                    self.conn.user.clone(),
                    t.active,
                    tokio::time::Instant::now(),
                );
            }
            Ok(Ok(Err((code, message)))) => {
                push(&self.conn.outbox, error_frame(rid, code, message))
            }
            _ => push(
                &self.conn.outbox,
                error_frame(rid, ErrorCode::Internal, "typing failed"),
            ),
        }
    }

    /// `RefreshToken`: the same user's new token replaces the grant; a
    /// narrower `rooms` claim ends the subscriptions it no longer allows.
    pub(super) fn refresh(&mut self, rid: u32, t: RefreshToken) -> Option<CloseReason> {
        let outbox = self.conn.outbox.clone();
        let refused =
            |code: ErrorCode, msg: String| (error_frame(rid, code, msg.clone()), (code, msg));
        let id = match self.shared.auth.authenticate(&t.token, &self.conn.device) {
            Ok(id) => id,
            Err(e) => {
                metrics::counter!("confab_auth_failures_total").increment(1);
                self.shared
                    .login_backoff
                    .failed(self.peer, std::time::Instant::now());
                let (error, reason) = refused(e.code, e.message);
                return self.fail(error, reason);
            }
        };
        if id.user != self.conn.user {
            let (error, reason) = refused(
                ErrorCode::Unauthenticated,
                "the new token is for another user".into(),
            );
            return self.fail(error, reason);
        }
        if id.expires_at_us.is_some_and(|exp| exp <= now_us()) {
            let (error, reason) = refused(
                ErrorCode::TokenExpired,
                "the new token has already expired".into(),
            );
            return self.fail(error, reason);
        }
        self.grant = Grant::of(&id);
        let ended: Vec<RoomId> = self
            .subs
            .keys()
            .filter(|r| !self.grant.may_use(r))
            .cloned()
            .collect();
        if !ended.is_empty() {
            let subs: Vec<_> = ended.iter().filter_map(|r| self.subs.remove(r)).collect();
            // Access lost: a version 2 device gets a `Gap` per room.
            for s in &subs {
                s.end_access_lost();
            }
            self.end_subscriptions(subs);
            let mut text = format!(
                "the refreshed token does not allow {} subscribed room(s); their subscriptions ended:",
                ended.len()
            );
            for room in ended.iter().take(20) {
                text.push(' ');
                text.push_str(room.as_str());
            }
            push(
                &outbox,
                Frame::new(Notice {
                    level: NoticeLevel::Warning,
                    code: ErrorCode::Forbidden,
                    text,
                }),
            );
        }
        if self.watching_presence {
            self.register_watch();
        }
        push(&outbox, Frame::request(rid, Ack {}));
        None
    }

    /// Registers (or removes) this connection's presence watch, with the
    /// token's rooms claim.
    pub(super) fn register_watch(&self) {
        let target = self
            .watching_presence
            .then(|| (self.conn.outbox.clone(), self.grant.rooms.clone()));
        self.shared
            .presence
            .watch(self.session_id, &self.conn.user, target);
    }

    /// Asks the embedding service's authorization hook, if there is one.
    pub(super) async fn authorize(&self, room: &RoomId, action: Action) -> Result<(), Denied> {
        match &self.shared.authorizer {
            None => Ok(()),
            Some(hook) => {
                hook.authorize(AccessRequest {
                    user: self.conn.user.clone(),
                    device: self.conn.device.clone(),
                    room: room.clone(),
                    action,
                })
                .await
            }
        }
    }

    /// Waits for one of the connection's request permits (backpressure:
    /// meanwhile nothing more is read from the client); `None` when the
    /// broker is stopping.
    pub(super) async fn hold(&self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            p = self.conn.requests.clone().acquire_owned() => p.ok(),
            _ = self.shared.shutdown.cancelled() => None,
        }
    }

    /// Hands a request to the sequencer, waiting for room in its queue;
    /// `false` when the broker is stopping.
    pub(super) async fn to_sequencer(&self, msg: SeqMsg) -> bool {
        tokio::select! {
            sent = self.shared.sequencer.send(msg) => sent.is_ok(),
            _ = self.shared.shutdown.cancelled() => false,
        }
    }

    pub(super) fn end_subscriptions(&mut self, subs: Vec<Arc<Subscription>>) {
        for s in &subs {
            s.close();
        }
        if !subs.is_empty() {
            let _ = self.shared.sequencer.send_now(SeqMsg::Unsubscribe(subs));
        }
    }

    pub(super) fn unsubscribe_all(&mut self) {
        let subs: Vec<_> = self.subs.drain().map(|(_, s)| s).collect();
        self.end_subscriptions(subs);
    }
}

/// The reply to a request that cluster mode does not serve yet
/// (docs/cluster.md, "Status"): refused, never half done.
pub(super) fn cluster_unsupported(rid: u32, what: &str) -> Frame {
    error_frame(
        rid,
        ErrorCode::Unsupported,
        format!("{what} are not available in cluster mode yet"),
    )
}
