//! One connection's life: the handshake (`handshake.rs`), the session
//! it opens, a loop that reads frames and hands each to `dispatch.rs`
//! until the peer leaves, misbehaves, goes silent, or the broker shuts
//! down, and the end (subscriptions, presence, the `Goodbye`, the writer).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use confab_codec::{
    ErrorCode, ErrorFrame, Features, Frame, Goodbye, Hello, RoomId, Seq, SubscribeResult, Welcome,
    MIN_PROTOCOL_VERSION,
};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::FrameCodec;
use super::compression::Compression;
use super::grant::Grant;
use super::handshake::{handshake, Handshaken};
use super::quic_writer::QuicEgress;
use super::writer::{self, Egress, WriterCtx, WriterEnd};
use super::ConnCtx;
use crate::admission::Ticket;
use crate::base::{now_us, sender_key};
use crate::fanout::{subscribe_acks, Outbox, Subscription};
use crate::ratelimit::{ConnLimits, Kind, Verdict};
use crate::shared::Shared;

/// How long a closing connection may take to flush its outbox.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a connection cut as a slow consumer waits for the peer to close
/// its side after the `Goodbye`.
const LINGER: Duration = Duration::from_secs(2);

/// Why the session closes the connection: the `Goodbye`'s code and text.
pub(super) type CloseReason = (ErrorCode, String);

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
        version: super::handshake::chosen_version(&hello).unwrap_or(MIN_PROTOCOL_VERSION),
    });
    info!(session_id, %peer, user = %conn.user, device = %conn.device, client = %hello.client_name, "connected");
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    let replaced = shared.devices.register(&conn.sender_key, session_id);
    if let Some(push) = &shared.push {
        push.session_started(&conn.user);
    }
    shared.presence.connect(session_id, &conn.user);

    // Compression (protocol 3.6) when the client offered it, it is on, and
    // the broker-wide budget of zstd contexts has a slot for this
    // connection's decompressor: frames after the Welcome may come
    // compressed from now on, and the writer may compress what follows the
    // Welcome (each of its compressors takes a slot of its own, or sends
    // uncompressed while none is free).
    let offered = cfg.compression.enabled && hello.features.contains(Features::ZSTD);
    let features = match offered.then(|| shared.compression.try_take()).flatten() {
        Some(slot) => {
            frames
                .decoder_mut()
                .enable_decompression(shared.stats.clone(), slot);
            Features::ZSTD
        }
        None => Features::NONE,
    };
    let writer_done = CancellationToken::new();
    let writer = egress.spawn_writer(WriterCtx {
        outbox: outbox.clone(),
        batch_bytes: cfg.delivery.write_batch_bytes,
        slow_timeout: cfg.slow_consumer_timeout(),
        session_id,
        done: writer_done.clone(),
        compression: features.contains(Features::ZSTD).then(|| Compression {
            level: cfg.compression.level,
            min_bytes: cfg.compression.min_bytes as usize,
            max_frame_len: cfg.limits.max_frame_len,
            budget: shared.compression.clone(),
        }),
    });

    let welcome = Frame::request(
        request_id,
        Welcome {
            version: conn.version,
            session_id,
            user: conn.user.clone(),
            server_time_us: now_us(),
            max_frame_len: cfg.limits.max_frame_len,
            max_payload_len: cfg.limits.max_payload_len,
            max_rooms: cfg.limits.max_rooms_per_connection,
            heartbeat_ms: cfg.limits.heartbeat_ms as u32,
            idle_timeout_ms: cfg.limits.idle_timeout_ms as u32,
            features,
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
        fatal: None,
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
        let goodbye = Frame::new(Goodbye {
            code: *code,
            message: message.clone(),
        });
        // The Error (if this close has one) and the Goodbye in one push
        // that also closes the outbox, so that no reply finishing
        // meanwhile comes between them or after them (protocol 6.3, 6.5).
        let farewell: Vec<Frame> = session.fatal.take().into_iter().chain([goodbye]).collect();
        push_last(&outbox, &farewell);
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

/// Queues `frames` as the connection's last control entry and closes the
/// outbox (see [`Outbox::push_last`]).
fn push_last(outbox: &Outbox, frames: &[Frame]) {
    let mut buf = bytes::BytesMut::new();
    for frame in frames {
        if let Err(e) = frame.encode(&mut buf) {
            warn!(error = %e, frame = frame.body.name(), "cannot encode reply");
        }
    }
    outbox.push_last(buf.freeze());
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
    pub(super) subs: HashMap<RoomId, Arc<Subscription>>,
    pub(super) grant: Grant,
    pub(super) session_id: u64,
    pub(super) limits: ConnLimits,
    /// The client's address, charged for refused token refreshes.
    pub(super) peer: IpAddr,
    /// Whether `WatchPresence` is on (re-registered when a refreshed token
    /// changes the rooms claim).
    pub(super) watching_presence: bool,
    /// The `Error` that a connection-level failure sends right before its
    /// `Goodbye` (see [`Session::fail`]).
    pub(super) fatal: Option<Frame>,
}

impl Session {
    /// Ends the session for a connection-level failure that the client is
    /// told about with `error` (protocol 6.3). The `Error` is sent with the
    /// `Goodbye`, after the replies already on their way (a `PublishAck`
    /// of a message that was stored still reaches the client), so that the
    /// client sees `Error`, `Goodbye`, then the end of the stream.
    pub(super) fn fail(&mut self, error: Frame, reason: CloseReason) -> Option<CloseReason> {
        self.fatal = Some(error);
        Some(reason)
    }

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
            // Before the next frame is read (TCP backpressure on the client
            // meanwhile): the connection's share of frames, and room in its
            // queue of replies.
            let ready = async {
                while let Some(wait) = self.limits.pace(&self.shared.user_limits) {
                    tokio::time::sleep(wait).await;
                }
                self.conn.outbox.wait_control_below(control_cap).await;
            };
            tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => {
                    return Some((ErrorCode::ShuttingDown, "server shutting down".into()));
                }
                _ = writer_done.cancelled() => return None,
                _ = replaced.cancelled() => return Some(replaced_reason()),
                _ = ready => {}
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
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    let (code, message) = e.refusal()?;
                    return self.fail(error_frame(0, code, message.clone()), (code, message));
                }
                Ok(Some(Ok(frame))) => {
                    if let Some(reason) = self.handle(frame).await {
                        return Some(reason);
                    }
                }
            }
        }
    }
}
