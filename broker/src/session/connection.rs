//! One connection: the handshake (`handshake.rs`), then a loop that
//! dispatches requests until the peer leaves, misbehaves, goes silent, or
//! the broker shuts down.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use confab_codec::{
    flags, Ack, Body, ErrorCode, ErrorFrame, Frame, Goodbye, Hello, Notice, NoticeLevel, Pong,
    Publish, RefreshToken, RoomId, Seq, SubscribeAck, SubscribeItem as WireItem, SubscribeResult,
    Typing, Welcome, PROTOCOL_VERSION,
};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::{FrameCodec, WireError};
use super::grant::Grant;
use super::handshake::{handshake, Handshaken};
use super::quic_writer::QuicEgress;
use super::writer::{self, Egress, WriterCtx, WriterEnd};
use super::ConnCtx;
use crate::admission::Ticket;
use crate::auth::authz::{AccessRequest, Action, Denied};
use crate::base::{now_us, sender_key};
use crate::fanout::{subscribe_acks, Outbox, SubscribeCmd, SubscribeItem, Subscription};
use crate::ratelimit::{ConnLimits, Kind, Verdict};
use crate::rooms;
use crate::sequencer::{PublishReq, ReceiptReq, RoomOp, RoomOpReq, SeqMsg};
use crate::shared::Shared;
use crate::storage::LogBounds;

/// How long a closing connection may take to flush its outbox.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a connection cut as a slow consumer waits for the peer to close
/// its side after the `Goodbye`.
const LINGER: Duration = Duration::from_secs(2);

type CloseReason = (ErrorCode, String);

/// Serves one accepted byte-stream connection (TCP, TLS) to its end.
pub(crate) async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    ticket: Ticket,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    serve(rd, Egress::Stream(wr), peer, shared, ticket).await;
}

/// Serves one QUIC connection whose control stream is open.
pub(crate) async fn serve_quic(
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    ticket: Ticket,
) {
    let egress = Egress::<quinn::SendStream>::Quic(QuicEgress {
        conn,
        control: send,
    });
    serve(recv, egress, peer, shared, ticket).await;
}

async fn serve<R, W>(
    rd: R,
    mut egress: Egress<W>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut ticket: Ticket,
) where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    // `ticket` counts this connection against its address until it ends.
    let cfg = &shared.config;
    let Some(Handshaken {
        hello,
        request_id,
        identity,
        mut frames,
        slot: _slot,
    }) = handshake(rd, &mut egress, peer, &shared, &mut ticket).await
    else {
        return;
    };
    let ip = peer.ip();
    let grant = Grant::of(&identity);
    let session_id = shared.session_ids.fetch_add(1, Ordering::Relaxed);
    let outbox = Arc::new(match &egress {
        Egress::Stream(_) => Outbox::new(cfg.delivery.queue_capacity, shared.stats.clone()),
        Egress::Quic(_) => Outbox::split(
            cfg.delivery.queue_capacity,
            cfg.delivery.quic_event_streams,
            shared.stats.clone(),
        ),
    });
    let conn = Arc::new(ConnCtx {
        sender_key: sender_key(identity.user.as_str(), identity.device.as_str()),
        user: identity.user,
        device: identity.device,
        outbox: outbox.clone(),
        inflight: Semaphore::new(cfg.limits.max_inflight_publishes as usize),
        requests: Arc::new(Semaphore::new(cfg.limits.max_pending_requests as usize)),
        system: false,
        direct: None,
    });
    info!(session_id, %peer, user = %conn.user, device = %conn.device, client = %hello.client_name, "connected");
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    let replaced = shared.devices.register(&conn.sender_key, session_id);
    if let Some(push) = &shared.push {
        push.session_started(&conn.user);
    }
    shared.presence.connect(session_id, &conn.user);

    let writer_done = CancellationToken::new();
    let writer = egress.spawn_writer(WriterCtx {
        outbox: outbox.clone(),
        batch_bytes: cfg.delivery.write_batch_bytes,
        slow_timeout: cfg.slow_consumer_timeout(),
        session_id,
        done: writer_done.clone(),
    });

    let welcome = Frame::request(
        request_id,
        Welcome {
            version: PROTOCOL_VERSION,
            session_id,
            user: conn.user.clone(),
            server_time_us: now_us(),
            max_frame_len: cfg.limits.max_frame_len,
            max_payload_len: cfg.limits.max_payload_len,
            max_rooms: cfg.limits.max_rooms_per_connection,
            heartbeat_ms: cfg.limits.heartbeat_ms as u32,
            idle_timeout_ms: cfg.limits.idle_timeout_ms as u32,
        },
    );
    push(&outbox, welcome);

    let mut session = Session {
        conn,
        shared: shared.clone(),
        subs: HashMap::new(),
        grant,
        session_id,
        limits: shared.user_limits.connection(),
        peer: ip,
        watching_presence: false,
    };
    let reason = session
        .run(hello, request_id, &mut frames, &writer_done, &replaced)
        .await;
    session.unsubscribe_all();
    shared
        .devices
        .unregister(&session.conn.sender_key, session_id);
    if let Some(push) = &shared.push {
        push.session_ended(&session.conn.user);
    }
    shared
        .presence
        .disconnect(session_id, &session.conn.user, now_us())
        .await;

    if let Some((code, message)) = &reason {
        if *code != ErrorCode::Normal {
            debug!(session_id, code = code.as_str(), %message, "closing connection");
        }
        push(
            &outbox,
            Frame::new(Goodbye {
                code: *code,
                message: message.clone(),
            }),
        );
    }
    outbox.close();
    let end = writer::join(writer, &outbox, &writer_done, CLOSE_GRACE).await;
    if end == WriterEnd::SlowConsumer {
        // The writer said goodbye and shut its side; let the peer close
        // first, so that ours is no reset (writer.rs).
        writer::linger(frames.get_mut(), LINGER, &shared.shutdown).await;
    }
    shared.stats.connections.fetch_add(-1, Ordering::Relaxed);
    // Sessions ended, by reason (once per disconnect, not per message).
    metrics::counter!("confab_disconnects_total", "reason" => disconnect_reason(reason.as_ref(), end))
        .increment(1);
    info!(session_id, ?end, "disconnected");
}

/// The `reason` label of `confab_disconnects_total`.
fn disconnect_reason(reason: Option<&CloseReason>, end: WriterEnd) -> &'static str {
    if end == WriterEnd::SlowConsumer {
        return "slow_consumer";
    }
    match reason.map(|(code, _)| *code) {
        None if end == WriterEnd::SocketError => "socket_error",
        None => "peer_closed",
        Some(ErrorCode::Normal) => "goodbye",
        Some(ErrorCode::Timeout) => "idle_timeout",
        Some(ErrorCode::ShuttingDown) => "shutdown",
        Some(ErrorCode::SessionReplaced) => "replaced",
        Some(ErrorCode::TokenExpired | ErrorCode::Unauthenticated) => "auth",
        Some(_) => "protocol_error",
    }
}

fn replaced_reason() -> CloseReason {
    (
        ErrorCode::SessionReplaced,
        "this device connected again; this older connection is closed".into(),
    )
}

pub(super) fn push(outbox: &Outbox, frame: Frame) {
    match frame.to_bytes() {
        Ok(bytes) => outbox.push_control(bytes),
        Err(e) => warn!(error = %e, frame = frame.body.name(), "cannot encode reply"),
    }
}

pub(super) fn error_frame(request_id: u32, code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::request(
        request_id,
        ErrorFrame {
            code,
            retry_after_ms: 0,
            message: message.into(),
        },
    )
}

/// Refuses a whole connection (for example at the connection limit).
pub(crate) async fn refuse<S: AsyncWrite + Unpin>(
    mut stream: S,
    code: ErrorCode,
    message: &'static str,
) {
    reject(
        &mut stream,
        0,
        ErrorFrame {
            code,
            retry_after_ms: 0,
            message: message.into(),
        },
    )
    .await;
}

/// Refuses a connection before the session exists: Error, Goodbye, close.
pub(super) async fn reject<W: AsyncWrite + Unpin>(wr: &mut W, request_id: u32, error: ErrorFrame) {
    let mut buf = bytes::BytesMut::new();
    let goodbye = Goodbye {
        code: error.code,
        message: error.message.clone(),
    };
    let _ = Frame::request(request_id, error).encode(&mut buf);
    let _ = Frame::new(goodbye).encode(&mut buf);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        wr.write_all(&buf).await?;
        wr.shutdown().await
    })
    .await;
}

pub(super) struct Session {
    pub(super) conn: Arc<ConnCtx>,
    pub(super) shared: Arc<Shared>,
    subs: HashMap<RoomId, Arc<Subscription>>,
    pub(super) grant: Grant,
    pub(super) session_id: u64,
    limits: ConnLimits,
    /// The client's address, charged for refused token refreshes.
    peer: IpAddr,
    /// Whether `WatchPresence` is on (re-registered when a refreshed token
    /// changes the rooms claim).
    pub(super) watching_presence: bool,
}

impl Session {
    async fn run<R>(
        &mut self,
        hello: Hello,
        hello_request: u32,
        frames: &mut FramedRead<R, FrameCodec>,
        writer_done: &CancellationToken,
        replaced: &CancellationToken,
    ) -> Option<CloseReason>
    where
        R: AsyncRead + Unpin,
    {
        if !hello.resume.is_empty() {
            let rooms = u32::try_from(hello.resume.len()).unwrap_or(u32::MAX);
            let verdict = self.limits.check_n(
                &self.shared.user_limits,
                &self.conn.user,
                Kind::Subscribe,
                rooms,
                tokio::time::Instant::now(),
            );
            if verdict == Verdict::Allowed {
                self.subscribe(hello_request, hello.resume).await;
            } else {
                // Every room of the resume refused; the client subscribes
                // again later (protocol 15.2).
                let results = hello
                    .resume
                    .into_iter()
                    .map(|item| SubscribeResult {
                        room: item.room,
                        code: ErrorCode::RateLimited,
                        head: Seq(0),
                        first: Seq(1),
                    })
                    .collect();
                let max = self.shared.config.limits.max_frame_len as usize;
                for ack in subscribe_acks(hello_request, results, max) {
                    push(&self.conn.outbox, ack);
                }
            }
        }
        let idle = self.shared.config.idle_timeout();
        let control_cap = self.shared.config.limits.max_inflight_publishes as usize + 256;
        loop {
            // A connection sending more frames than its share waits before
            // its next one is read (TCP backpressure on the client).
            while let Some(wait) = self.limits.pace(&self.shared.user_limits) {
                tokio::select! {
                    biased;
                    _ = self.shared.shutdown.cancelled() => {
                        return Some((ErrorCode::ShuttingDown, "server shutting down".into()));
                    }
                    _ = writer_done.cancelled() => return None,
                    _ = replaced.cancelled() => return Some(replaced_reason()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => {
                    return Some((ErrorCode::ShuttingDown, "server shutting down".into()));
                }
                _ = writer_done.cancelled() => return None,
                _ = replaced.cancelled() => return Some(replaced_reason()),
                _ = self.conn.outbox.wait_control_below(control_cap) => {}
            }
            let next = tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => {
                    return Some((ErrorCode::ShuttingDown, "server shutting down".into()));
                }
                _ = writer_done.cancelled() => return None,
                _ = replaced.cancelled() => return Some(replaced_reason()),
                _ = tokio::time::sleep_until(self.grant.deadline) => {
                    return Some((ErrorCode::TokenExpired, "token expired; refresh it before it expires".into()));
                }
                r = tokio::time::timeout(idle, frames.next()) => r,
            };
            match next {
                Err(_) => return Some((ErrorCode::Timeout, "idle timeout".into())),
                Ok(None) | Ok(Some(Err(WireError::Io(_)))) => return None,
                Ok(Some(Err(WireError::Codec(e)))) => {
                    push(&self.conn.outbox, error_frame(0, e.code(), e.to_string()));
                    return Some((e.code(), e.to_string()));
                }
                Ok(Some(Ok(frame))) => {
                    if let Some(reason) = self.handle(frame).await {
                        return Some(reason);
                    }
                }
            }
        }
    }

    async fn handle(&mut self, frame: Frame) -> Option<CloseReason> {
        let rid = frame.request_id;
        let outbox = self.conn.outbox.clone();
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
                    push(&outbox, rate_limited(rid, retry_after_ms, Some(&why)));
                    return Some((ErrorCode::RateLimited, format!("flooding: {why}")));
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
                push(
                    &outbox,
                    error_frame(0, ErrorCode::ProtocolViolation, msg.clone()),
                );
                return Some((ErrorCode::ProtocolViolation, msg));
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
            | Body::MessageStatus(_) => {
                // A connection-level failure: request id 0 (protocol 6.3).
                let msg = format!("{} is a server-to-client frame", frame.body.name());
                push(
                    &outbox,
                    error_frame(0, ErrorCode::ProtocolViolation, msg.clone()),
                );
                return Some((ErrorCode::ProtocolViolation, msg));
            }
            other => {
                let msg = format!("{} is not available on this server", other.name());
                push(&outbox, error_frame(rid, ErrorCode::Unsupported, msg));
            }
        }
        None
    }

    async fn publish(&mut self, rid: u32, frame_flags: u8, p: Publish) -> Option<CloseReason> {
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
        let req = PublishReq {
            conn: self.conn.clone(),
            request_id: rid,
            no_reply: frame_flags & flags::NO_REPLY != 0,
            room: p.room,
            client_msg_id: p.client_msg_id,
            kind: p.kind,
            refers_to: p.refers_to,
            thread: p.thread,
            payload: p.payload,
            received: received_at,
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

    async fn subscribe(&mut self, rid: u32, items: Vec<WireItem>) {
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
            let sub = Arc::new(Subscription::for_user(
                room,
                self.conn.outbox.clone(),
                Some(self.conn.user.clone()),
            ));
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

    async fn room_op(&mut self, rid: u32, op: RoomOp) {
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
    async fn typing(&mut self, rid: u32, t: Typing) {
        let log = self.shared.log.clone();
        let (room, user) = (t.room.clone(), self.conn.user.clone());
        let auto_create = self.shared.config.rooms.auto_create;
        let allowed = if self.shared.authorizer.is_some() {
            let decided = self.authorize(&t.room, Action::Publish).await;
            Ok(Ok(decided.map_err(|d| (d.code, d.message))))
        } else {
            tokio::task::spawn_blocking(move || {
                rooms::access(log.as_ref(), &room, &user, auto_create)
            })
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
    fn refresh(&mut self, rid: u32, t: RefreshToken) -> Option<CloseReason> {
        let outbox = self.conn.outbox.clone();
        let refused = |code: ErrorCode, msg: String| {
            push(&outbox, error_frame(rid, code, msg.clone()));
            Some((code, msg))
        };
        let id = match self.shared.auth.authenticate(&t.token, &self.conn.device) {
            Ok(id) => id,
            Err(e) => {
                metrics::counter!("confab_auth_failures_total").increment(1);
                self.shared
                    .login_backoff
                    .failed(self.peer, std::time::Instant::now());
                return refused(e.code, e.message);
            }
        };
        if id.user != self.conn.user {
            return refused(
                ErrorCode::Unauthenticated,
                "the new token is for another user".into(),
            );
        }
        if id.expires_at_us.is_some_and(|exp| exp <= now_us()) {
            return refused(
                ErrorCode::TokenExpired,
                "the new token has already expired".into(),
            );
        }
        self.grant = Grant::of(&id);
        let ended: Vec<RoomId> = self
            .subs
            .keys()
            .filter(|r| !self.grant.may_use(r))
            .cloned()
            .collect();
        if !ended.is_empty() {
            let subs = ended.iter().filter_map(|r| self.subs.remove(r)).collect();
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
    fn register_watch(&self) {
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
    async fn hold(&self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            p = self.conn.requests.clone().acquire_owned() => p.ok(),
            _ = self.shared.shutdown.cancelled() => None,
        }
    }

    /// Hands a request to the sequencer, waiting for room in its queue;
    /// `false` when the broker is stopping.
    async fn to_sequencer(&self, msg: SeqMsg) -> bool {
        tokio::select! {
            sent = self.shared.sequencer.send(msg) => sent.is_ok(),
            _ = self.shared.shutdown.cancelled() => false,
        }
    }

    fn end_subscriptions(&mut self, subs: Vec<Arc<Subscription>>) {
        for s in &subs {
            s.close();
        }
        if !subs.is_empty() {
            let _ = self.shared.sequencer.send_now(SeqMsg::Unsubscribe(subs));
        }
    }

    fn unsubscribe_all(&mut self) {
        let subs: Vec<_> = self.subs.drain().map(|(_, s)| s).collect();
        self.end_subscriptions(subs);
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
