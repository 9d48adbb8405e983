//! Confab frames over WebSocket, seen as a byte stream.
//!
//! On a WebSocket, one binary message carries exactly one Confab frame, in
//! the same encoding as on TCP (protocol section 2.3). [`WsStream`] turns a
//! [`WebSocketStream`] into an ordered byte stream ([`AsyncRead`] +
//! [`AsyncWrite`]), so the broker's session layer and the SDK's connection
//! code serve WebSocket exactly as they serve TCP:
//!
//! - **Reading** yields the bytes of each binary message in turn, after
//!   checking that the message is one whole frame: its header's length
//!   matches the message's. A text message, or a binary message that is not
//!   exactly one frame, fails the read with an [`io::Error`] that carries a
//!   [`Violation`] (see [`violation`]), which the session answers with the
//!   protocol's `Error` and a close. Pings are answered (by tungstenite) and
//!   pongs are only signs of life.
//! - **Writing** takes bytes that are whole frames one after another (as the
//!   broker's writer and the SDK produce them), cuts them at frame
//!   boundaries and sends each frame as one binary message. A write is
//!   accepted only when the WebSocket's write buffer has room, so a peer
//!   that reads nothing applies backpressure as a TCP socket does.
//! - **Keepalive** (optional, [`WsStream::with_keepalive`]): when nothing
//!   has arrived for the interval, a WebSocket ping goes out; when nothing
//!   at all (not even the pong) has arrived for two intervals, reading fails
//!   with [`io::ErrorKind::TimedOut`].
//!
//! The WebSocket protocol itself (handshake, framing, masking, fragments,
//! close) is tungstenite's; nothing of it is written here.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use confab_codec::{ErrorCode, Header, HEADER_LEN};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
pub use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
pub use tokio_tungstenite::WebSocketStream;

/// The WebSocket subprotocol of Confab protocol version 1. Clients offer
/// it in `Sec-WebSocket-Protocol`; the broker selects it.
pub const SUBPROTOCOL: &str = "confab.v1";

/// The HTTP path of the broker's WebSocket endpoint.
pub const PATH: &str = "/ws";

/// Bytes a WebSocket frame's own header may add to a message: 2 bytes,
/// 8 for the extended length, 4 for the mask.
const WS_HEADER_MAX: usize = 14;

/// A WebSocket configuration sized for Confab frames whose bodies are at
/// most `max_frame_len` bytes: incoming messages (and their fragments) are
/// refused past one frame, and the write buffer holds `write_batch` bytes
/// before it writes to the socket and at most one more frame beyond that,
/// so a peer that reads nothing stops the writer instead of growing a
/// buffer.
pub fn config(max_frame_len: u32, write_batch: usize) -> WebSocketConfig {
    let max_message = HEADER_LEN + max_frame_len as usize;
    WebSocketConfig::default()
        .read_buffer_size(32 * 1024)
        .write_buffer_size(write_batch)
        .max_write_buffer_size(write_batch + max_message + WS_HEADER_MAX)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// A message that breaks the one-frame-per-message rule, or one the
/// protocol does not use (text). Carried inside the [`io::Error`] that
/// reading returns; [`violation`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The protocol's error code for it.
    pub code: ErrorCode,
    /// What was wrong, for the `Error` frame's message.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Violation {}

impl Violation {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

/// The [`Violation`] inside an error returned by a [`WsStream`] read, if
/// that is why it failed.
pub fn violation(err: &io::Error) -> Option<&Violation> {
    err.get_ref().and_then(|e| e.downcast_ref::<Violation>())
}

/// How a binary message measures up against the one-frame rule.
enum Shape {
    /// Exactly one frame.
    OneFrame,
    /// A header that declares more than the message holds: its bytes are
    /// passed on, so that the frame decoder judges the declared length
    /// against its limit first (`FrameTooLarge`, as on TCP), and the
    /// violation follows.
    Short(Violation),
    /// Anything else: refused at once.
    Bad(Violation),
}

/// Checks that `msg` is exactly one frame: a whole header whose length
/// field accounts for every other byte.
fn shape(msg: &[u8]) -> Shape {
    let Some(header) = Header::peek(msg) else {
        return Shape::Bad(Violation::new(
            ErrorCode::MalformedFrame,
            format!(
                "a WebSocket message of {} bytes is shorter than a frame header",
                msg.len()
            ),
        ));
    };
    let frame_len = HEADER_LEN as u64 + u64::from(header.len);
    if frame_len == msg.len() as u64 {
        return Shape::OneFrame;
    }
    let violation = Violation::new(
        ErrorCode::MalformedFrame,
        format!(
            "a WebSocket message must carry exactly one frame: the message has {} bytes, its frame {}",
            msg.len(),
            frame_len
        ),
    );
    if frame_len > msg.len() as u64 {
        Shape::Short(violation)
    } else {
        Shape::Bad(violation)
    }
}

fn ws_to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => Violation::new(
            ErrorCode::FrameTooLarge,
            format!("a WebSocket message of {size} bytes exceeds the limit of {max_size}"),
        )
        .into_io(),
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        WsError::Protocol(p) => {
            Violation::new(ErrorCode::ProtocolViolation, format!("WebSocket: {p}")).into_io()
        }
        other => io::Error::other(other),
    }
}

/// A stream that refuses to read more than a budget of bytes until it is
/// lifted: a server wraps its socket in one, so that before the client's
/// first message (its `Hello`) arrives whole, tungstenite buffers no more
/// than the budget, however large a message the WebSocket header declares.
/// [`Capped::set_budget`] gives a new budget (after the HTTP upgrade);
/// [`WsStream::lift_after_first_message`] lifts it.
pub struct Capped<S> {
    inner: S,
    left: usize,
    lifted: Arc<AtomicBool>,
}

impl<S> Capped<S> {
    /// Wraps `inner` with `budget` bytes to read.
    pub fn new(inner: S, budget: usize) -> Self {
        Self {
            inner,
            left: budget,
            lifted: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Allows `budget` more bytes from now (until lifted).
    pub fn set_budget(&mut self, budget: usize) {
        self.left = budget;
    }

    /// The switch that lifts the budget.
    pub fn lift_switch(&self) -> Arc<AtomicBool> {
        self.lifted.clone()
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.lifted.load(Ordering::Relaxed) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.left == 0 {
            return Poll::Ready(Err(Violation::new(
                ErrorCode::FrameTooLarge,
                "the first message (the Hello) is larger than the handshake allows",
            )
            .into_io()));
        }
        let n = if buf.remaining() <= this.left {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            buf.filled().len() - before
        } else {
            // Only what the budget allows; this copy happens only before
            // the lift, on the handshake's few reads.
            let mut small = vec![0; this.left];
            let mut limited = ReadBuf::new(&mut small);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
            buf.put_slice(limited.filled());
            limited.filled().len()
        };
        this.left -= n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Keepalive state: when to ping, and whether the peer has gone quiet.
struct Keepalive {
    interval: Duration,
    timer: Pin<Box<Sleep>>,
    last_rx: Instant,
    /// A ping went out since the last sign of life.
    pinged: bool,
}

/// A WebSocket carrying Confab frames, as a byte stream (see the crate
/// documentation).
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The rest of the binary message being read.
    reading: Bytes,
    /// Bytes written but not yet sent: at most the start of one frame
    /// after [`WsStream::send_whole_frames`] ran.
    pending: BytesMut,
    keepalive: Option<Keepalive>,
    /// Set once the first binary message has been read whole.
    lift: Option<Arc<AtomicBool>>,
    /// A violation to report once `reading` has been read.
    violation: Option<Violation>,
    /// The peer's close or the end of the stream was seen.
    eof: bool,
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Wraps an established WebSocket (after the handshake).
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            reading: Bytes::new(),
            pending: BytesMut::new(),
            keepalive: None,
            lift: None,
            violation: None,
            eof: false,
        }
    }

    /// Sets `switch` (see [`Capped::lift_switch`]) once the first binary
    /// message has been read whole and checked.
    pub fn lift_after_first_message(mut self, switch: Arc<AtomicBool>) -> Self {
        self.lift = Some(switch);
        self
    }

    /// Pings the peer when nothing arrived for `interval`, and fails reads
    /// with [`io::ErrorKind::TimedOut`] when nothing arrived for twice that.
    /// Must be called within a tokio runtime.
    pub fn with_keepalive(mut self, interval: Duration) -> Self {
        let now = Instant::now();
        self.keepalive = Some(Keepalive {
            interval,
            timer: Box::pin(tokio::time::sleep_until(now + interval)),
            last_rx: now,
            pinged: false,
        });
        self
    }

    /// The WebSocket underneath.
    pub fn get_ref(&self) -> &WebSocketStream<S> {
        &self.ws
    }

    fn saw_traffic(&mut self) {
        if let Some(k) = &mut self.keepalive {
            k.last_rx = Instant::now();
            k.pinged = false;
        }
    }

    /// Runs the keepalive timer: pings when it is due, fails when the peer
    /// has been silent for two intervals. Pending means "nothing to do".
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(k) = &mut self.keepalive else {
            return Poll::Pending;
        };
        loop {
            let ping_at = k.last_rx + k.interval;
            let dead_at = k.last_rx + k.interval * 2;
            let now = Instant::now();
            if now >= dead_at {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the WebSocket peer answered no ping",
                ));
            }
            let next = if now >= ping_at {
                if !k.pinged {
                    // Best effort: a full write buffer means the peer is
                    // not reading; the writer's own timeout deals with it.
                    let mut ws = Pin::new(&mut self.ws);
                    if let Poll::Ready(Ok(())) = ws.as_mut().poll_ready(cx) {
                        let _ = ws.as_mut().start_send(Message::Ping(Bytes::new()));
                        let _ = ws.poll_flush(cx);
                    }
                    k.pinged = true;
                }
                dead_at
            } else {
                ping_at
            };
            k.timer.as_mut().reset(next);
            if k.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// Sends every whole frame at the front of `pending`, one message each.
    /// Ready once no whole frame is left; pending while the WebSocket's
    /// write buffer is full.
    fn send_whole_frames(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(header) = Header::peek(&self.pending) {
            let len = HEADER_LEN + header.len as usize;
            if self.pending.len() < len {
                break;
            }
            let mut ws = Pin::new(&mut self.ws);
            ready!(ws.as_mut().poll_ready(cx)).map_err(ws_to_io)?;
            let frame = self.pending.split_to(len).freeze();
            ws.start_send(Message::Binary(frame)).map_err(ws_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.reading.is_empty() {
                let n = this.reading.len().min(buf.remaining());
                buf.put_slice(&this.reading[..n]);
                this.reading.advance(n);
                return Poll::Ready(Ok(()));
            }
            if let Some(v) = this.violation.take() {
                return Poll::Ready(Err(v.into_io()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let next = match Pin::new(&mut this.ws).poll_next(cx) {
                Poll::Ready(next) => next,
                Poll::Pending => {
                    return match this.poll_keepalive(cx) {
                        Poll::Ready(e) => Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    };
                }
            };
            this.saw_traffic();
            match next {
                None | Some(Ok(Message::Close(_))) => this.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(ws_to_io(e))),
                Some(Ok(Message::Binary(msg))) => {
                    match shape(&msg) {
                        Shape::OneFrame => {
                            if let Some(switch) = this.lift.take() {
                                switch.store(true, Ordering::Relaxed);
                            }
                        }
                        Shape::Short(v) => this.violation = Some(v),
                        Shape::Bad(v) => return Poll::Ready(Err(v.into_io())),
                    }
                    this.reading = msg;
                }
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(Violation::new(
                        ErrorCode::ProtocolViolation,
                        "text WebSocket messages are not part of the protocol; send each frame as one binary message",
                    )
                    .into_io()));
                }
                Some(Ok(Message::Ping(_))) => {
                    // tungstenite queued the pong; send it now if the
                    // buffer lets us (else it goes with the next write).
                    let _ = Pin::new(&mut this.ws).poll_flush(cx);
                }
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Nothing more is taken while a whole frame still waits for room.
        ready!(this.send_whole_frames(cx))?;
        this.pending.extend_from_slice(buf);
        // What does not go now goes with the next write or flush.
        if let Poll::Ready(Err(e)) = this.send_whole_frames(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.send_whole_frames(cx))?;
        Pin::new(&mut this.ws).poll_flush(cx).map_err(ws_to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.send_whole_frames(cx))?;
        Pin::new(&mut this.ws).poll_close(cx).map_err(ws_to_io)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use confab_codec::{Frame, Ping};
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    fn encoded(nonce: u64) -> Vec<u8> {
        let mut buf = BytesMut::new();
        Frame::new(Ping { nonce }).encode(&mut buf).unwrap();
        buf.to_vec()
    }

    async fn pair() -> (
        WsStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server =
            WebSocketStream::from_raw_socket(a, Role::Server, Some(config(1 << 16, 4096))).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        (WsStream::new(server), client)
    }

    #[tokio::test]
    async fn writes_are_cut_into_one_message_per_frame() {
        let (mut ws, mut peer) = pair().await;
        let mut bytes = encoded(1);
        bytes.extend(encoded(2));
        bytes.extend(encoded(3));
        // Split across writes in the middle of a frame.
        ws.write_all(&bytes[..5]).await.unwrap();
        ws.write_all(&bytes[5..]).await.unwrap();
        ws.flush().await.unwrap();
        for nonce in 1..=3 {
            let msg = peer.next().await.unwrap().unwrap();
            assert_eq!(msg, Message::Binary(encoded(nonce).into()));
        }
    }

    #[tokio::test]
    async fn reads_whole_frames_and_refuses_others() {
        let (mut ws, mut peer) = pair().await;
        peer.send(Message::Binary(encoded(7).into())).await.unwrap();
        let mut got = vec![0; encoded(7).len()];
        ws.read_exact(&mut got).await.unwrap();
        assert_eq!(got, encoded(7));

        // Two frames in one message.
        let mut two = encoded(1);
        two.extend(encoded(2));
        peer.send(Message::Binary(two.into())).await.unwrap();
        let err = ws.read_u8().await.unwrap_err();
        assert_eq!(violation(&err).unwrap().code, ErrorCode::MalformedFrame);
    }

    #[tokio::test]
    async fn a_short_message_is_passed_on_then_refused() {
        let (mut ws, mut peer) = pair().await;
        let ping = encoded(3);
        peer.send(Message::Binary(ping[..HEADER_LEN + 2].to_vec().into()))
            .await
            .unwrap();
        // The decoder sees the header (and judges its length) first.
        let mut got = vec![0; HEADER_LEN + 2];
        ws.read_exact(&mut got).await.unwrap();
        assert_eq!(got, ping[..HEADER_LEN + 2]);
        let err = ws.read_u8().await.unwrap_err();
        assert_eq!(violation(&err).unwrap().code, ErrorCode::MalformedFrame);
    }

    #[tokio::test]
    async fn text_and_short_messages_are_violations() {
        let (mut ws, mut peer) = pair().await;
        peer.send(Message::text("hello")).await.unwrap();
        let err = ws.read_u8().await.unwrap_err();
        assert_eq!(violation(&err).unwrap().code, ErrorCode::ProtocolViolation);

        let (mut ws, mut peer) = pair().await;
        peer.send(Message::Binary(vec![0, 0, 0].into()))
            .await
            .unwrap();
        let err = ws.read_u8().await.unwrap_err();
        assert_eq!(violation(&err).unwrap().code, ErrorCode::MalformedFrame);
    }

    #[tokio::test]
    async fn oversized_messages_are_refused() {
        let (mut ws, mut peer) = pair().await;
        // The reader refuses on the header and reads no more: send aside.
        tokio::spawn(async move {
            let _ = peer
                .send(Message::Binary(vec![0; (1 << 16) + 100].into()))
                .await;
        });
        let err = ws.read_u8().await.unwrap_err();
        assert_eq!(violation(&err).unwrap().code, ErrorCode::FrameTooLarge);
    }

    #[tokio::test]
    async fn close_is_end_of_stream() {
        let (mut ws, mut peer) = pair().await;
        peer.close(None).await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(ws.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_pings_then_gives_up_on_a_silent_peer() {
        let (ws, mut peer) = pair().await;
        let mut ws = ws.with_keepalive(Duration::from_secs(10));
        let reader = tokio::spawn(async move { ws.read_u8().await });
        // The peer sees the ping (and its stream answers with a pong, which
        // counts as life): keep it from answering by not polling after it.
        let msg = peer.next().await.unwrap().unwrap();
        assert!(matches!(msg, Message::Ping(_)));
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_peer_that_reads_nothing_stops_the_writer() {
        let (a, _b) = tokio::io::duplex(4096);
        let server =
            WebSocketStream::from_raw_socket(a, Role::Server, Some(config(1 << 16, 4096))).await;
        let mut ws = WsStream::new(server);
        let frame = encoded(9);
        let mut accepted = 0usize;
        let stalled = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                accepted += ws.write(&frame).await.unwrap();
            }
        })
        .await;
        assert!(stalled.is_err(), "the writer never blocked");
        // The duplex buffer, the write buffer and one message's slack.
        assert!(
            accepted < 4096 + 4096 + (1 << 16) + 100,
            "{accepted} bytes buffered"
        );
    }

    #[tokio::test]
    async fn the_budget_holds_until_the_first_message() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let capped = Capped::new(a, 100);
        let switch = capped.lift_switch();
        let server =
            WebSocketStream::from_raw_socket(capped, Role::Server, Some(config(1 << 16, 4096)))
                .await;
        let mut ws = WsStream::new(server).lift_after_first_message(switch);
        let mut peer = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        // A first message under the budget, then one far over it.
        peer.send(Message::Binary(encoded(1).into())).await.unwrap();
        // (The frame checks look at lengths only: the body may be zeros.)
        let big = {
            let mut buf = BytesMut::new();
            Header {
                len: 2000,
                frame_type: 0x04,
                flags: 0,
                request_id: 0,
            }
            .put(&mut buf);
            buf.extend_from_slice(&[0; 2000]);
            buf.to_vec()
        };
        peer.send(Message::Binary(big.clone().into()))
            .await
            .unwrap();
        let mut got = vec![0; encoded(1).len()];
        ws.read_exact(&mut got).await.unwrap();
        let mut got = vec![0; big.len()];
        ws.read_exact(&mut got).await.unwrap();

        // Without the lift, a first message over the budget fails.
        let (a, b) = tokio::io::duplex(1 << 20);
        let server = WebSocketStream::from_raw_socket(
            Capped::new(a, 100),
            Role::Server,
            Some(config(1 << 16, 4096)),
        )
        .await;
        let mut ws = WsStream::new(server);
        let mut peer = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        peer.send(Message::Binary(vec![0; 4000].into()))
            .await
            .unwrap();
        let err = ws.read_u8().await.unwrap_err();
        assert_eq!(violation(&err).unwrap().code, ErrorCode::FrameTooLarge);
    }
}
