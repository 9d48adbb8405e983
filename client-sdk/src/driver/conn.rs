//! One live connection: opening it (transport + handshake), its writer
//! task, its in-flight requests and its heartbeat clock.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use confab_codec::{
    Body, ErrorCode, Features, Frame, Hello, Ping, Receipt, ReceiptKind, RoomId, Seq, Welcome,
    DEFAULT_MAX_FRAME_LEN, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::debug;

use crate::codec::FrameCodec;
use crate::config::ClientConfig;
use crate::error::{ClientError, DisconnectReason};
use crate::transport::{BoxByteStream, Dialer, EventStreams, QuicLink};

/// The reason given when the transport or the handshake is too slow.
pub(super) const TIMEOUT: &str = "connect timeout";

/// How long a closing QUIC connection waits for the broker's close, then
/// for its own to be sent.
const QUIC_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Frames handed to the writer task but not yet written.
const WRITER_QUEUE: usize = 64;

/// Remembered request ids of requests without a success reply, to name
/// them if an `Error` comes back.
const NO_REPLY_MEMORY: usize = 64;

pub(super) type Reader = FramedRead<ReadHalf<BoxByteStream>, FrameCodec>;
type Writer = FramedWrite<WriteHalf<BoxByteStream>, FrameCodec>;

/// What a reply (or an `Error`) to a request id completes.
#[derive(Debug)]
pub(super) enum Inflight {
    /// A publish, by its key in the pending map.
    Publish(u64),
    /// A subscribe (or the Hello's resume): rooms and subscription ids in
    /// request order.
    Subscribe(Vec<(RoomId, u64)>),
    /// An unsubscribe, with the caller waiting for it if any.
    Unsubscribe(Option<oneshot::Sender<Result<(), ClientError>>>),
    /// A gap fill of a room's subscription.
    Fill { room: RoomId, id: u64 },
    /// An application request; `retry` holds the request itself when it is
    /// read-only, to be sent again on the next connection if this one is
    /// lost before the reply.
    Request {
        reply: oneshot::Sender<Result<Body, ClientError>>,
        retry: Option<Body>,
    },
    /// A request the SDK made for itself (presence after reconnect); errors
    /// are logged.
    Internal(&'static str),
    /// A page of the automatic inbox sync.
    InboxSync,
}

/// The sending side of a connection.
pub(super) struct Outbound {
    writer: mpsc::Sender<Frame>,
    /// Frames waiting for room in the writer queue. Bounded by its sources:
    /// publishes by the outbound queue, requests by the command channel,
    /// room frames by the number of rooms.
    queue: VecDeque<Frame>,
    last_sent: Instant,
}

impl Outbound {
    pub(super) fn has_pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Waits for room in the writer's channel, then moves as many queued
    /// frames as fit. Cancel-safe: nothing moves before a slot is reserved.
    /// False if the writer is gone.
    pub(super) async fn push(&mut self) -> bool {
        let Ok(permit) = self.writer.reserve().await else {
            return false;
        };
        if let Some(first) = self.queue.pop_front() {
            permit.send(first);
        }
        while !self.queue.is_empty() {
            match self.writer.try_reserve() {
                Ok(p) => {
                    if let Some(f) = self.queue.pop_front() {
                        p.send(f);
                    }
                }
                Err(_) => break,
            }
        }
        self.last_sent = Instant::now();
        true
    }
}

/// A connection that completed its handshake.
pub(super) struct Conn {
    pub(super) reader: Reader,
    /// QUIC: room events from the broker's unidirectional streams, until
    /// they end (the control stream says why the connection ended).
    pub(super) events: Option<EventStreams>,
    /// QUIC: the connection, closed on drop.
    quic: Option<QuicLink>,
    pub(super) out: Outbound,
    pub(super) writer_task: JoinHandle<Result<(), ClientError>>,
    pub(super) inflight: HashMap<u32, Inflight>,
    no_reply: VecDeque<(u32, &'static str)>,
    pub(super) welcome: Welcome,
    /// A connection-level `Error` (request id 0), reported if the broker
    /// closes without a `Goodbye`.
    pub(super) conn_error: Option<(ErrorCode, String)>,
    last_recv: Instant,
    ping_outstanding: bool,
    heartbeat: Duration,
    dead_after: Duration,
    nonce: u64,
    /// Receipts sent on this connection that the broker may not have read
    /// yet, with the nonce of the `Ping` sent after them: the broker
    /// handles a connection's frames in order, so their `Pong` proves they
    /// were read. Whatever is left when the connection is lost is sent
    /// again on the next one (markers only move forward, so a receipt read
    /// twice changes nothing). At most one per room and kind.
    receipts: HashMap<(RoomId, ReceiptKind), (Seq, u64)>,
    /// A receipt was sent since the last `Ping`.
    barrier_due: bool,
}

/// Why opening a connection failed.
#[derive(Debug)]
pub(super) enum OpenError {
    /// Transport, timeout or protocol trouble: try again later.
    Retry(DisconnectReason),
    /// The broker refused the handshake with this code.
    Refused {
        code: ErrorCode,
        message: String,
        /// For `RateLimited` (the broker's failed-login back-off): how long
        /// to wait before the next attempt. Zero otherwise.
        retry_after: Duration,
    },
}

/// A transport that completed the protocol handshake.
pub(super) struct Opened {
    reader: Reader,
    writer: Writer,
    welcome: Welcome,
    quic: Option<QuicLink>,
}

/// Opens the transport, sends `hello` and waits for `Welcome`, all within
/// the connect timeout.
pub(super) async fn open(
    config: &ClientConfig,
    dialer: &Dialer,
    endpoint: usize,
    hello: Hello,
    hello_rid: u32,
) -> Result<Opened, OpenError> {
    let attempt = async {
        let link = dialer
            .connect(endpoint)
            .await
            .map_err(|e| OpenError::Retry(DisconnectReason::ConnectFailed(e.to_string())))?;
        let quic = link.quic;
        let (rd, wr) = tokio::io::split(link.stream);
        let mut reader = FramedRead::new(rd, FrameCodec::new(DEFAULT_MAX_FRAME_LEN));
        let mut writer = FramedWrite::new(wr, FrameCodec::new(DEFAULT_MAX_FRAME_LEN));
        writer
            .send(Frame::request(hello_rid, hello))
            .await
            .map_err(|e| OpenError::Retry(DisconnectReason::ConnectFailed(e.to_string())))?;
        let mut refusal: Option<(ErrorCode, String, Duration)> = None;
        loop {
            let frame = match reader.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    return Err(OpenError::Retry(DisconnectReason::Protocol(e.to_string())))
                }
                None => {
                    return Err(match refusal {
                        Some((code, message, retry_after)) => OpenError::Refused {
                            code,
                            message,
                            retry_after,
                        },
                        None => OpenError::Retry(DisconnectReason::ConnectFailed(
                            "closed during the handshake".into(),
                        )),
                    })
                }
            };
            match frame.body {
                Body::Welcome(w) if frame.request_id == hello_rid => {
                    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&w.version) {
                        return Err(OpenError::Refused {
                            code: ErrorCode::UnsupportedVersion,
                            message: format!("broker chose version {}", w.version),
                            retry_after: Duration::ZERO,
                        });
                    }
                    return Ok(Opened {
                        reader,
                        writer,
                        welcome: w,
                        quic,
                    });
                }
                Body::Error(e) => {
                    let wait = Duration::from_millis(u64::from(e.retry_after_ms));
                    refusal = Some((e.code, e.message, wait));
                }
                Body::Goodbye(g) => {
                    let (code, message, retry_after) =
                        refusal.unwrap_or((g.code, g.message, Duration::ZERO));
                    return Err(OpenError::Refused {
                        code,
                        message,
                        retry_after,
                    });
                }
                Body::Notice(_) | Body::Extension { .. } => {}
                other => {
                    return Err(OpenError::Retry(DisconnectReason::Protocol(format!(
                        "{} before Welcome",
                        other.name()
                    ))))
                }
            }
        }
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(OpenError::Retry(DisconnectReason::ConnectFailed(
            TIMEOUT.into(),
        ))),
    }
}

impl Conn {
    /// Starts the writer task (and, for QUIC, the event stream readers) of
    /// a handshaken connection.
    pub(super) fn start(config: &ClientConfig, opened: Opened) -> Self {
        let Opened {
            mut reader,
            mut writer,
            welcome,
            quic,
        } = opened;
        // Accept what the broker may send us; never less than the default.
        let max_frame_len = welcome.max_frame_len.max(DEFAULT_MAX_FRAME_LEN);
        reader.decoder_mut().set_max_frame_len(max_frame_len);
        // Compression (protocol 3.6), only once the Welcome granted it.
        let zstd = config.compression && welcome.features.contains(Features::ZSTD);
        if zstd {
            reader.decoder_mut().enable_decompression();
            let limit = welcome.max_frame_len;
            if let Err(e) = writer
                .encoder_mut()
                .enable_compression(config.compression_min_bytes, limit)
            {
                // Sending compressed frames is optional.
                debug!(error = %e, "cannot compress; sending uncompressed frames");
            }
        }
        let events = quic
            .as_ref()
            .map(|q| EventStreams::start(q.conn.clone(), max_frame_len, zstd));
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let writer_task = tokio::spawn(write_loop(writer, rx));
        let mut heartbeat = config.heartbeat_interval;
        if welcome.heartbeat_ms > 0 {
            heartbeat = heartbeat.min(Duration::from_millis(u64::from(welcome.heartbeat_ms)));
        }
        let now = Instant::now();
        Self {
            reader,
            events,
            quic,
            out: Outbound {
                writer: tx,
                queue: VecDeque::new(),
                last_sent: now,
            },
            writer_task,
            inflight: HashMap::new(),
            no_reply: VecDeque::new(),
            welcome,
            conn_error: None,
            last_recv: now,
            ping_outstanding: false,
            heartbeat,
            dead_after: config.dead_link_timeout,
            nonce: 0,
            receipts: HashMap::new(),
            barrier_due: false,
        }
    }

    /// Whether room events arrive apart from replies (QUIC), so that a
    /// room's events may precede its `SubscribeAck`.
    pub(super) fn split_events(&self) -> bool {
        self.quic.is_some()
    }

    /// Queues a frame for the writer.
    pub(super) fn send(&mut self, frame: Frame) {
        self.out.queue.push_back(frame);
    }

    /// Remembers a request that has no success reply.
    pub(super) fn remember_no_reply(&mut self, rid: u32, name: &'static str) {
        if self.no_reply.len() == NO_REPLY_MEMORY {
            self.no_reply.pop_front();
        }
        self.no_reply.push_back((rid, name));
    }

    /// The name of a remembered no-reply request.
    pub(super) fn no_reply_name(&self, rid: u32) -> Option<&'static str> {
        self.no_reply
            .iter()
            .find(|(r, _)| *r == rid)
            .map(|(_, n)| *n)
    }

    /// Sends a receipt with request id `rid`, unless one at least as far
    /// for the same room and marker is still unconfirmed (the broker would
    /// ignore it). Confirmed by the next `Ping` ([`Conn::send_barrier`]).
    pub(super) fn send_receipt(&mut self, rid: u32, receipt: Receipt) {
        let key = (receipt.room.clone(), receipt.kind);
        if self
            .receipts
            .get(&key)
            .is_some_and(|(seq, _)| *seq >= receipt.seq)
        {
            return;
        }
        // Confirmed by the next Ping's Pong, whoever sends that Ping.
        self.receipts
            .insert(key, (receipt.seq, self.nonce.wrapping_add(1)));
        self.barrier_due = true;
        self.remember_no_reply(rid, "Receipt");
        self.send(Frame::request(rid, receipt));
    }

    /// Sends the `Ping` that confirms the receipts sent since the last one.
    pub(super) fn send_barrier(&mut self) {
        if self.barrier_due {
            self.barrier_due = false;
            self.nonce = self.nonce.wrapping_add(1);
            self.send(Frame::new(Ping { nonce: self.nonce }));
        }
    }

    /// A `Pong`: the receipts sent before its `Ping` were read.
    pub(super) fn on_pong(&mut self, nonce: u64) {
        self.receipts.retain(|_, (_, n)| *n > nonce);
    }

    /// The receipts the broker may not have read, to send again on the next
    /// connection.
    pub(super) fn take_receipts(&mut self) -> impl Iterator<Item = Receipt> + '_ {
        self.receipts
            .drain()
            .map(|((room, kind), (seq, _))| Receipt { room, kind, seq })
    }

    /// A frame arrived: the link is alive.
    pub(super) fn received(&mut self) {
        self.last_recv = Instant::now();
        self.ping_outstanding = false;
    }

    /// When [`Conn::on_timer`] must run next.
    pub(super) fn next_timer(&self) -> Instant {
        let dead = self.last_recv + self.dead_after;
        if self.ping_outstanding {
            return dead;
        }
        let idle_since = self.out.last_sent.min(self.last_recv);
        dead.min(idle_since + self.heartbeat)
    }

    /// Heartbeat duty: a `Ping` when nothing was sent or received for the
    /// heartbeat interval (so that a silent broker is probed even while we
    /// keep sending), and an error when nothing was received for the
    /// dead-link timeout.
    pub(super) fn on_timer(&mut self) -> Result<(), DisconnectReason> {
        let now = Instant::now();
        if now.duration_since(self.last_recv) >= self.dead_after {
            return Err(DisconnectReason::HeartbeatTimeout);
        }
        let idle_since = self.out.last_sent.min(self.last_recv);
        if !self.ping_outstanding && now.duration_since(idle_since) >= self.heartbeat {
            self.nonce = self.nonce.wrapping_add(1);
            self.send(Frame::new(Ping { nonce: self.nonce }));
            self.ping_outstanding = true;
            // Counts as sending even before the writer takes it, so the
            // timer does not spin while the frame waits in the queue.
            self.out.last_sent = now;
        }
        Ok(())
    }

    /// Says goodbye and waits (briefly) for everything queued to be written.
    pub(super) async fn close(mut self, goodbye: Frame) {
        self.out.queue.push_back(goodbye);
        let drain = async {
            while let Some(frame) = self.out.queue.pop_front() {
                if self.out.writer.send(frame).await.is_err() {
                    break;
                }
            }
            // Closing the channel makes the writer flush and shut down the
            // socket's write side.
            let (closed, _) = mpsc::channel(1);
            drop(std::mem::replace(&mut self.out.writer, closed));
            let _ = (&mut self.writer_task).await;
        };
        if tokio::time::timeout(Duration::from_secs(2), drain)
            .await
            .is_err()
        {
            debug!("connection did not close in time");
            self.writer_task.abort();
        }
        if let Some(q) = self.quic.take() {
            // The broker closes the connection once it has read the
            // Goodbye; then let the close reach it before the socket goes.
            let _ = tokio::time::timeout(QUIC_CLOSE_GRACE, q.conn.closed()).await;
            q.conn.close(0u32.into(), b"goodbye");
            let _ = tokio::time::timeout(QUIC_CLOSE_GRACE, q.endpoint.wait_idle()).await;
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.writer_task.abort();
        if let Some(q) = &self.quic {
            q.conn.close(0u32.into(), b"");
        }
    }
}

/// Writes frames until the channel closes or the socket fails; batches
/// whatever is queued into one flush.
async fn write_loop(mut sink: Writer, mut rx: mpsc::Receiver<Frame>) -> Result<(), ClientError> {
    while let Some(frame) = rx.recv().await {
        sink.feed(frame).await?;
        while let Ok(frame) = rx.try_recv() {
            sink.feed(frame).await?;
        }
        sink.flush().await?;
    }
    sink.close().await
}
