//! One connection: handshake, then a loop that dispatches requests until
//! the peer leaves, misbehaves, goes silent, or the broker shuts down.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use confab_codec::{
    flags, raw, Ack, Body, Direction, ErrorCode, ErrorFrame, Frame, GetPresence, Goodbye, Hello,
    HistoryRequest, ListRooms, Pong, PresenceEvent, Publish, RegisterPush, RoomId, Seq,
    SubscribeItem as WireItem, SubscribeResult, Typing, Welcome, PROTOCOL_VERSION,
};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::{FrameCodec, WireError};
use super::quic_writer::QuicEgress;
use super::writer::{Egress, WriterCtx, WriterEnd};
use super::ConnCtx;
use crate::auth::authz::{AccessRequest, Action, Denied};
use crate::auth::Identity;
use crate::base::{now_us, sender_key};
use crate::fanout::{Outbox, SubscribeCmd, SubscribeItem, Subscription};
use crate::presence;
use crate::ratelimit::{ConnLimits, Kind, Verdict};
use crate::rooms;
use crate::sequencer::{PublishReq, ReceiptReq, RoomOp, RoomOpReq, SeqMsg};
use crate::shared::Shared;
use crate::storage::LogBounds;

/// Most events in one history page.
const MAX_HISTORY_LIMIT: usize = 1000;

/// How long a closing connection may take to flush its outbox.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

type CloseReason = (ErrorCode, String);

/// Serves one accepted byte-stream connection (TCP, TLS) to its end.
pub(crate) async fn serve_connection<S>(stream: S, peer: String, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    serve(rd, Egress::Stream(wr), peer, shared).await;
}

/// Serves one QUIC connection whose control stream is open.
pub(crate) async fn serve_quic(
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    peer: String,
    shared: Arc<Shared>,
) {
    let egress = Egress::<quinn::SendStream>::Quic(QuicEgress {
        conn,
        control: send,
    });
    serve(recv, egress, peer, shared).await;
}

async fn serve<R, W>(rd: R, mut egress: Egress<W>, peer: String, shared: Arc<Shared>)
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let cfg = &shared.config;
    let mut frames =
        FramedRead::with_capacity(rd, FrameCodec::new(cfg.limits.max_frame_len), 16 << 10);

    let first = tokio::select! {
        r = tokio::time::timeout(cfg.handshake_timeout(), frames.next()) => r,
        _ = shared.shutdown.cancelled() => {
            egress.reject(0, ErrorCode::ShuttingDown, "server shutting down").await;
            return;
        }
    };
    let frame = match first {
        Err(_) => {
            debug!(%peer, "handshake timeout");
            egress
                .reject(
                    0,
                    ErrorCode::Timeout,
                    "no Hello within the handshake timeout",
                )
                .await;
            return;
        }
        Ok(None) | Ok(Some(Err(WireError::Io(_)))) => return,
        Ok(Some(Err(WireError::Codec(e)))) => {
            debug!(%peer, error = %e, "bad first frame");
            egress.reject(0, e.code(), &e.to_string()).await;
            return;
        }
        Ok(Some(Ok(frame))) => frame,
    };
    let request_id = frame.request_id;
    let Body::Hello(hello) = frame.body else {
        egress
            .reject(
                request_id,
                ErrorCode::ProtocolViolation,
                "the first frame must be Hello",
            )
            .await;
        return;
    };
    if hello.min_version > PROTOCOL_VERSION || hello.max_version < PROTOCOL_VERSION {
        let msg = format!(
            "server speaks version {PROTOCOL_VERSION}, client {}..={}",
            hello.min_version, hello.max_version
        );
        egress
            .reject(request_id, ErrorCode::UnsupportedVersion, &msg)
            .await;
        return;
    }
    let identity = match shared.auth.authenticate(&hello.token, &hello.device) {
        Ok(id) => id,
        Err(e) => {
            // Tokens refused at the handshake or on refresh.
            metrics::counter!("confab_auth_failures_total").increment(1);
            info!(%peer, device = %hello.device, reason = %e, "authentication refused");
            egress.reject(request_id, e.code, &e.message).await;
            return;
        }
    };

    if identity.expires_at_us.is_some_and(|exp| exp <= now_us()) {
        egress
            .reject(request_id, ErrorCode::TokenExpired, "token expired")
            .await;
        return;
    }
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
    let end = match tokio::time::timeout(CLOSE_GRACE, writer).await {
        Ok(Ok(end)) => end,
        _ => {
            outbox.abort();
            WriterEnd::SocketError
        }
    };
    if end == WriterEnd::SlowConsumer {
        shared
            .stats
            .slow_consumer_disconnects
            .fetch_add(1, Ordering::Relaxed);
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

fn push(outbox: &Outbox, frame: Frame) {
    match frame.to_bytes() {
        Ok(bytes) => outbox.push_control(bytes),
        Err(e) => warn!(error = %e, frame = frame.body.name(), "cannot encode reply"),
    }
}

fn error_frame(request_id: u32, code: ErrorCode, message: impl Into<String>) -> Frame {
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
    reject(&mut stream, 0, code, message).await;
}

/// Refuses a whole QUIC connection on its control stream, then closes it.
pub(crate) async fn refuse_quic(
    conn: quinn::Connection,
    control: quinn::SendStream,
    code: ErrorCode,
    message: &'static str,
) {
    let mut egress = Egress::<quinn::SendStream>::Quic(QuicEgress { conn, control });
    egress.reject(0, code, message).await;
}

/// Refuses a connection before the session exists: Error, Goodbye, close.
pub(super) async fn reject<W: AsyncWrite + Unpin>(
    wr: &mut W,
    request_id: u32,
    code: ErrorCode,
    message: &str,
) {
    let mut buf = bytes::BytesMut::new();
    let _ = error_frame(request_id, code, message).encode(&mut buf);
    let _ = Frame::new(Goodbye {
        code,
        message: message.to_owned(),
    })
    .encode(&mut buf);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        wr.write_all(&buf).await?;
        wr.shutdown().await
    })
    .await;
}

struct Session {
    conn: Arc<ConnCtx>,
    shared: Arc<Shared>,
    subs: HashMap<RoomId, Arc<Subscription>>,
    grant: Grant,
    session_id: u64,
    limits: ConnLimits,
}

/// What the connection's current token allows, and until when.
struct Grant {
    /// When the token expires (far in the future for tokens without expiry).
    deadline: tokio::time::Instant,
    rooms: Option<Arc<HashSet<RoomId>>>,
}

impl Grant {
    fn of(identity: &Identity) -> Grant {
        let now = tokio::time::Instant::now();
        let deadline = match identity.expires_at_us {
            Some(exp) => now + Duration::from_micros(exp.saturating_sub(now_us())),
            // About thirty years: effectively never, without overflow.
            None => now + Duration::from_secs(1 << 30),
        };
        Grant {
            deadline,
            rooms: identity.rooms.clone(),
        }
    }

    fn may_use(&self, room: &RoomId) -> bool {
        self.rooms.as_ref().is_none_or(|r| r.contains(room))
    }
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
            self.subscribe(hello_request, hello.resume).await;
        }
        let idle = self.shared.config.idle_timeout();
        let control_cap = self.shared.config.limits.max_inflight_publishes as usize + 256;
        loop {
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
        if let Some(kind) = limited_kind(&frame.body) {
            match self.limits.check(
                &self.shared.user_limits,
                &self.conn.user,
                kind,
                tokio::time::Instant::now(),
            ) {
                Verdict::Allowed => {}
                // Excess typing is dropped silently (protocol 7.6.1).
                Verdict::Limited { .. } if kind == Kind::Typing => return None,
                Verdict::Limited { retry_after_ms } => {
                    push(
                        &outbox,
                        Frame::request(
                            rid,
                            ErrorFrame {
                                code: ErrorCode::RateLimited,
                                retry_after_ms,
                                message: format!("rate limited; retry in {retry_after_ms} ms"),
                            },
                        ),
                    );
                    return None;
                }
                Verdict::Flooding(why) => {
                    info!(session_id = self.session_id, user = %self.conn.user, %why, "closing a flooding connection");
                    push(
                        &outbox,
                        error_frame(rid, ErrorCode::RateLimited, why.clone()),
                    );
                    return Some((ErrorCode::RateLimited, format!("flooding: {why}")));
                }
            }
        }
        match frame.body {
            Body::Ping(p) => push(&outbox, Frame::request(rid, Pong { nonce: p.nonce })),
            Body::Pong(_) | Body::Extension { .. } => {}
            Body::Goodbye(_) => return Some((ErrorCode::Normal, "goodbye".into())),
            Body::Publish(p) => return self.publish(rid, frame.flags, p).await,
            Body::Subscribe(s) => self.subscribe(rid, s.items).await,
            Body::Unsubscribe(u) => {
                let subs: Vec<_> = u.rooms.iter().filter_map(|r| self.subs.remove(r)).collect();
                for s in &subs {
                    s.close();
                }
                if !subs.is_empty() {
                    let _ = self.shared.sequencer.send(SeqMsg::Unsubscribe(subs));
                }
                push(&outbox, Frame::request(rid, Ack {}));
            }
            Body::CreateRoom(c) => self.room_op(rid, RoomOp::Create(c)),
            Body::JoinRoom(j) => self.room_op(rid, RoomOp::Join(j.room)),
            Body::LeaveRoom(l) => self.room_op(rid, RoomOp::Leave(l.room)),
            Body::InviteMember(i) => self.room_op(rid, RoomOp::Invite(i.room, i.user)),
            Body::RemoveMember(r) => self.room_op(rid, RoomOp::Remove(r.room, r.user)),
            Body::UpdateRoom(u) => self.room_op(rid, RoomOp::Update(u.room, u.meta)),
            Body::SetRole(r) => self.room_op(rid, RoomOp::SetRole(r.room, r.user, r.role)),
            Body::GetRoomInfo(g) => self.room_info(rid, g.room).await,
            Body::Receipt(r) => {
                if !self.grant.may_use(&r.room) {
                    push(
                        &outbox,
                        error_frame(
                            rid,
                            ErrorCode::Forbidden,
                            "the token does not allow this room",
                        ),
                    );
                } else if let Err(denied) = self.authorize(&r.room, Action::Subscribe).await {
                    push(&outbox, error_frame(rid, denied.code, denied.message));
                } else {
                    let req = ReceiptReq {
                        conn: self.conn.clone(),
                        request_id: rid,
                        receipt: r,
                    };
                    if self.shared.sequencer.send(SeqMsg::Receipt(req)).is_err() {
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
                let target = w.enabled.then(|| outbox.clone());
                self.shared
                    .presence
                    .watch(self.session_id, &self.conn.user, target);
                push(&outbox, Frame::request(rid, Ack {}));
            }
            Body::GetPresence(g) => self.get_presence(rid, g).await,
            Body::Typing(t) => self.typing(rid, t).await,
            Body::ListRooms(l) => self.list_rooms(rid, l).await,
            Body::HistoryRequest(h) => {
                if !self.grant.may_use(&h.room) {
                    push(
                        &outbox,
                        error_frame(
                            rid,
                            ErrorCode::Forbidden,
                            "the token does not allow this room",
                        ),
                    );
                } else if let Err(denied) = self.authorize(&h.room, Action::History).await {
                    push(&outbox, error_frame(rid, denied.code, denied.message));
                } else {
                    self.history(rid, h).await;
                }
            }
            Body::RefreshToken(t) => {
                match self.shared.auth.authenticate(&t.token, &self.conn.device) {
                    Ok(id) if id.user == self.conn.user => {
                        if id.expires_at_us.is_some_and(|exp| exp <= now_us()) {
                            let msg = "the new token has already expired".to_owned();
                            push(
                                &outbox,
                                error_frame(rid, ErrorCode::TokenExpired, msg.clone()),
                            );
                            return Some((ErrorCode::TokenExpired, msg));
                        }
                        self.grant = Grant::of(&id);
                        push(&outbox, Frame::request(rid, Ack {}));
                    }
                    Ok(_) => {
                        let msg = "the new token is for another user".to_owned();
                        push(
                            &outbox,
                            error_frame(rid, ErrorCode::Unauthenticated, msg.clone()),
                        );
                        return Some((ErrorCode::Unauthenticated, msg));
                    }
                    Err(e) => {
                        metrics::counter!("confab_auth_failures_total").increment(1);
                        push(&outbox, error_frame(rid, e.code, e.message.clone()));
                        return Some((e.code, e.message));
                    }
                }
            }
            Body::RegisterPush(r) if self.shared.push.is_some() => {
                self.register_push(rid, r).await;
            }
            Body::Hello(_) => {
                return Some((
                    ErrorCode::ProtocolViolation,
                    "Hello after the handshake".into(),
                ))
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
                let msg = format!("{} is a server-to-client frame", frame.body.name());
                push(
                    &outbox,
                    error_frame(rid, ErrorCode::ProtocolViolation, msg.clone()),
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
        if !self.grant.may_use(&p.room) {
            return reject(
                ErrorCode::Forbidden,
                format!("the token does not allow room {}", p.room),
            );
        }
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
        if self.shared.sequencer.send(SeqMsg::Publish(req)).is_err() {
            self.conn.inflight.add_permits(1);
            return Some((ErrorCode::ShuttingDown, "server shutting down".into()));
        }
        None
    }

    async fn subscribe(&mut self, rid: u32, items: Vec<WireItem>) {
        let max_rooms = self.shared.config.limits.max_rooms_per_connection as usize;
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
        let cmd = SubscribeCmd {
            outbox: self.conn.outbox.clone(),
            user: self.conn.user.clone(),
            system: false,
            request_id: rid,
            results,
            items: stamped,
        };
        if self.shared.sequencer.send(SeqMsg::Subscribe(cmd)).is_err() {
            push(
                &self.conn.outbox,
                error_frame(rid, ErrorCode::ShuttingDown, "server shutting down"),
            );
        }
    }

    async fn history(&mut self, rid: u32, h: HistoryRequest) {
        let log = self.shared.log.clone();
        let limit = usize::from(h.limit).clamp(1, MAX_HISTORY_LIMIT);
        let max_bytes = (self.shared.config.limits.max_frame_len as usize).saturating_sub(1024);
        let room = h.room.clone();
        let user = self.conn.user.clone();
        let auto_create = self.shared.config.rooms.auto_create;
        // With an authorization hook, it already decided.
        let check_membership = self.shared.authorizer.is_none();
        let read = tokio::task::spawn_blocking(move || {
            if check_membership {
                if let Err(refusal) = rooms::access(log.as_ref(), &room, &user, auto_create)? {
                    return Ok(Err(refusal));
                }
            }
            let bounds = log.bounds(&room)?;
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
            Ok::<_, crate::storage::StorageError>(Ok((bounds, records, has_more)))
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

    fn room_op(&mut self, rid: u32, op: RoomOp) {
        let req = RoomOpReq {
            conn: self.conn.clone(),
            request_id: rid,
            op,
        };
        if self.shared.sequencer.send(SeqMsg::RoomOp(req)).is_err() {
            push(
                &self.conn.outbox,
                error_frame(rid, ErrorCode::ShuttingDown, "server shutting down"),
            );
        }
    }

    async fn room_info(&mut self, rid: u32, room: RoomId) {
        let log = self.shared.log.clone();
        let user = self.conn.user.clone();
        let read =
            tokio::task::spawn_blocking(move || rooms::info(log.as_ref(), &room, &user)).await;
        let frame = match read {
            Ok(Ok(Ok(info))) => Frame::request(rid, info),
            Ok(Ok(Err((code, message)))) => error_frame(rid, code, message),
            Ok(Err(e)) => error_frame(rid, ErrorCode::Internal, e.to_string()),
            Err(e) => error_frame(rid, ErrorCode::Internal, e.to_string()),
        };
        push(&self.conn.outbox, frame);
    }

    /// Typing has no reply unless it fails; members only.
    async fn typing(&mut self, rid: u32, t: Typing) {
        if !self.grant.may_use(&t.room) {
            push(
                &self.conn.outbox,
                error_frame(
                    rid,
                    ErrorCode::Forbidden,
                    "the token does not allow this room",
                ),
            );
            return;
        }
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

    async fn message_status(&mut self, rid: u32, room: RoomId, seq: Seq) {
        let log = self.shared.log.clone();
        let user = self.conn.user.clone();
        let read =
            tokio::task::spawn_blocking(move || rooms::status(log.as_ref(), &room, &user, seq))
                .await;
        let frame = match read {
            Ok(Ok(Ok(status))) => Frame::request(rid, status),
            Ok(Ok(Err((code, message)))) => error_frame(rid, code, message),
            Ok(Err(e)) => error_frame(rid, ErrorCode::Internal, e.to_string()),
            Err(e) => error_frame(rid, ErrorCode::Internal, e.to_string()),
        };
        push(&self.conn.outbox, frame);
    }

    async fn list_rooms(&mut self, rid: u32, l: ListRooms) {
        let log = self.shared.log.clone();
        let user = self.conn.user.clone();
        let limit = usize::from(l.limit).clamp(1, 1000);
        let read = tokio::task::spawn_blocking(move || {
            rooms::list(log.as_ref(), &user, l.after.as_ref(), limit)
        })
        .await;
        let frame = match read {
            Ok(Ok(list)) => Frame::request(rid, list),
            Ok(Err(e)) => error_frame(rid, ErrorCode::Internal, e.to_string()),
            Err(e) => error_frame(rid, ErrorCode::Internal, e.to_string()),
        };
        push(&self.conn.outbox, frame);
    }

    /// Asks the embedding service's authorization hook, if there is one.
    async fn authorize(&self, room: &RoomId, action: Action) -> Result<(), Denied> {
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

    /// Stores this device's push registration (an empty token removes it).
    async fn register_push(&mut self, rid: u32, r: RegisterPush) {
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
    /// this user (and this user's own); the others are left out.
    async fn get_presence(&mut self, rid: u32, g: GetPresence) {
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
        let read = tokio::task::spawn_blocking(move || {
            let visible = presence::visible_to(shared.log.as_ref(), &user, &g.users)?;
            shared.presence.entries(visible, now_us())
        })
        .await;
        let frame = match read {
            Ok(Ok(entries)) => Frame::request(rid, PresenceEvent { entries }),
            Ok(Err(e)) => error_frame(rid, ErrorCode::Internal, e.to_string()),
            Err(e) => error_frame(rid, ErrorCode::Internal, e.to_string()),
        };
        push(&self.conn.outbox, frame);
    }

    fn unsubscribe_all(&mut self) {
        let subs: Vec<_> = self.subs.drain().map(|(_, s)| s).collect();
        for s in &subs {
            s.close();
        }
        if !subs.is_empty() {
            let _ = self.shared.sequencer.send(SeqMsg::Unsubscribe(subs));
        }
    }
}

/// Which rate-limit bucket a client frame is charged to, if any.
fn limited_kind(body: &Body) -> Option<Kind> {
    match body {
        Body::Publish(_) => Some(Kind::Publish),
        Body::Typing(_) => Some(Kind::Typing),
        Body::CreateRoom(_)
        | Body::JoinRoom(_)
        | Body::LeaveRoom(_)
        | Body::InviteMember(_)
        | Body::RemoveMember(_)
        | Body::UpdateRoom(_)
        | Body::SetRole(_)
        | Body::SetPresence(_)
        | Body::WatchPresence(_)
        | Body::GetPresence(_) => Some(Kind::RoomOp),
        _ => None,
    }
}
