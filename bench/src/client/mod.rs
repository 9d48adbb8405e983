//! A lean Confab protocol client for load generation, over any transport
//! ([`Dial`]): pipelined writes, and a reader that counts events without
//! decoding them fully, so the load generator spends its CPU on load, not
//! on allocations.
//!
//! With [`set_compression`] on, connections over a byte stream (TCP, TLS,
//! WebSocket) offer `ZSTD` (protocol 3.6) and, when the broker grants it,
//! compress what they send and inflate what they receive. Every reader
//! counts the bytes it takes off the wire ([`wire_bytes_read`]).

mod dial;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use confab_codec::{
    flags, frame_type, Body, DeviceId, Features, Frame, Header, Hello, MessageKind, Publish,
    RoomId, Seq, StartAt, Subscribe, SubscribeItem, HEADER_LEN,
};
use confab_compress::{Compressor, Decompressor};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use self::dial::{open, Source};
pub use self::dial::{tls_client, Dial};

/// Whether new connections offer compression.
static COMPRESSION: AtomicBool = AtomicBool::new(false);

/// Bytes every reader took off the wire (frames as sent, compressed or not).
static WIRE_BYTES: AtomicU64 = AtomicU64::new(0);

/// Makes the connections opened from now on offer `ZSTD` (byte-stream
/// transports only: the QUIC source merges streams, which are compressed
/// each on its own).
pub fn set_compression(on: bool) {
    COMPRESSION.store(on, Ordering::Relaxed);
}

/// Whether connections offer compression.
pub fn compression() -> bool {
    COMPRESSION.load(Ordering::Relaxed)
}

/// Bytes all readers have read from their transports so far.
pub fn wire_bytes_read() -> u64 {
    WIRE_BYTES.load(Ordering::Relaxed)
}

/// zstd level and threshold of what the bench sends compressed: the SDK's.
const LEVEL: i32 = 1;
const MIN_BYTES: usize = 128;

/// Largest body a compressed frame may inflate to.
const MAX_INFLATED: u32 = 16 << 20;

/// Read side of a connection.
pub struct Reader {
    src: Source,
    buf: BytesMut,
    inflate: Option<Decompressor>,
}

/// Write side of a connection.
pub struct Writer {
    wr: Box<dyn AsyncWrite + Send + Unpin>,
    out: BytesMut,
    next_request: u32,
    deflate: Option<Compressor>,
}

/// What the light parser extracts from a server frame.
#[derive(Debug)]
pub enum Incoming {
    /// One or more room events; the first 8 payload bytes of each (the
    /// bench's timestamp) are returned.
    Events { stamps: Vec<u64>, last_seq: u64 },
    /// A publish was acknowledged.
    PublishAck,
    /// Anything else (decoded).
    Other(Frame),
}

/// Connects over TCP and completes the handshake.
pub async fn connect(
    addr: SocketAddr,
    user: &str,
    device: &str,
) -> anyhow::Result<(Reader, Writer)> {
    connect_via(&Dial::Tcp(addr), user, device).await
}

/// Connects over any transport and completes the handshake.
pub async fn connect_via(
    dial: &Dial,
    user: &str,
    device: &str,
) -> anyhow::Result<(Reader, Writer)> {
    connect_with(dial, user, device, 256 << 10).await
}

/// Like [`connect_via`], with a read buffer of `read_buf` bytes to start
/// with (it grows for larger frames): small for runs with thousands of
/// connections, so the load generator's memory stays modest.
pub async fn connect_with(
    dial: &Dial,
    user: &str,
    device: &str,
    read_buf: usize,
) -> anyhow::Result<(Reader, Writer)> {
    let (src, wr) = open(dial)
        .await
        .with_context(|| format!("connecting to {dial:?}"))?;
    start(src, wr, user, device, read_buf).await
}

/// Completes the handshake on a connected TCP `stream` (see
/// [`connect_with`]).
pub async fn handshake(
    stream: TcpStream,
    user: &str,
    device: &str,
    read_buf: usize,
) -> anyhow::Result<(Reader, Writer)> {
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    start(
        Source::Stream(Box::new(rd)),
        Box::new(wr),
        user,
        device,
        read_buf,
    )
    .await
}

async fn start(
    src: Source,
    wr: Box<dyn AsyncWrite + Send + Unpin>,
    user: &str,
    device: &str,
    read_buf: usize,
) -> anyhow::Result<(Reader, Writer)> {
    let offer = compression() && matches!(src, Source::Stream(_));
    let mut reader = Reader {
        src,
        buf: BytesMut::with_capacity(read_buf),
        inflate: None,
    };
    let mut writer = Writer {
        wr,
        out: BytesMut::with_capacity(read_buf.min(64 << 10)),
        next_request: 1,
        deflate: None,
    };
    writer.queue(Hello {
        min_version: 1,
        max_version: 1,
        token: format!("{user}:{device}"),
        device: DeviceId::new(device)?,
        client_name: "confab-bench".into(),
        resume: vec![],
        features: if offer {
            Features::ZSTD
        } else {
            Features::NONE
        },
    })?;
    writer.flush().await?;
    match reader.next().await? {
        Some(Incoming::Other(Frame {
            body: Body::Welcome(w),
            ..
        })) => {
            if w.features.contains(Features::ZSTD) {
                reader.inflate = Some(Decompressor::new());
                writer.deflate = Some(Compressor::new(LEVEL, MIN_BYTES, w.max_frame_len)?);
            }
            Ok((reader, writer))
        }
        other => bail!("handshake failed: {other:?}"),
    }
}

impl Writer {
    /// Queues a frame (sent on the next flush) and returns its request id.
    pub fn queue(&mut self, body: impl Into<Body>) -> anyhow::Result<u32> {
        let rid = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(1);
        let frame = Frame::request(rid, body);
        match &mut self.deflate {
            Some(z) => z.encode(&frame, &mut self.out)?,
            None => frame.encode(&mut self.out)?,
        }
        Ok(rid)
    }

    /// Queues a publish of `payload`.
    pub fn queue_publish(
        &mut self,
        room: &RoomId,
        client_msg_id: u64,
        payload: Bytes,
    ) -> anyhow::Result<u32> {
        self.queue(Publish {
            room: room.clone(),
            client_msg_id,
            kind: MessageKind::MESSAGE,
            refers_to: None,
            thread: None,
            payload,
        })
    }

    /// Queues a subscription to `rooms`.
    pub fn queue_subscribe(&mut self, rooms: &[RoomId], start: StartAt) -> anyhow::Result<u32> {
        self.queue(Subscribe {
            items: rooms
                .iter()
                .map(|r| SubscribeItem {
                    room: r.clone(),
                    start,
                })
                .collect(),
        })
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.wr.write_all(&self.out).await?;
            // TLS may hold the tail in its session buffer until flushed.
            self.wr.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Queues already-encoded frames (sent on the next flush), compressed
    /// if the connection compresses.
    pub fn queue_raw(&mut self, frames: &[u8]) -> anyhow::Result<()> {
        match &mut self.deflate {
            Some(z) => z.push_frames(frames, &mut self.out)?,
            None => self.out.extend_from_slice(frames),
        }
        Ok(())
    }
}

fn get_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses one EventRecord at `at`; returns (seq, first 8 payload bytes, end).
fn record(b: &[u8], at: usize) -> Option<(u64, u64, usize)> {
    let seq = get_u64(b, at)?;
    let mut p = at + 16;
    let sender = *b.get(p)? as usize;
    p += 1 + sender;
    let device = *b.get(p)? as usize;
    p += 1 + device;
    p += 8 + 1 + 8 + 8;
    let len = u32::from_be_bytes(b.get(p..p + 4)?.try_into().ok()?) as usize;
    p += 4;
    let stamp = if len >= 8 { get_u64(b, p)? } else { 0 };
    Some((seq, stamp, p + len))
}

impl Reader {
    /// The next frame, lightly parsed; None when the server closed.
    pub async fn next(&mut self) -> anyhow::Result<Option<Incoming>> {
        loop {
            if let Some(h) = Header::peek(&self.buf) {
                let total = HEADER_LEN + h.len as usize;
                if self.buf.len() >= total {
                    let mut frame = self.buf.split_to(total).freeze();
                    if h.flags & flags::COMPRESSED != 0 {
                        let inflate = self
                            .inflate
                            .as_mut()
                            .context("a compressed frame without ZSTD")?;
                        let body = inflate.decompress(&frame[HEADER_LEN..], MAX_INFLATED)?;
                        let mut plain = BytesMut::with_capacity(HEADER_LEN + body.len());
                        Header {
                            len: u32::try_from(body.len())?,
                            flags: h.flags & !flags::COMPRESSED,
                            ..h
                        }
                        .put(&mut plain);
                        plain.extend_from_slice(&body);
                        frame = plain.freeze();
                    }
                    let body = &frame[HEADER_LEN..];
                    return Ok(Some(match h.frame_type {
                        frame_type::PublishAck => Incoming::PublishAck,
                        frame_type::Event => {
                            let room_len = *body.first().context("short event")? as usize;
                            let (seq, stamp, _) =
                                record(body, 1 + room_len).context("bad event")?;
                            Incoming::Events {
                                stamps: vec![stamp],
                                last_seq: seq,
                            }
                        }
                        frame_type::EventBatch => {
                            let room_len = *body.first().context("short batch")? as usize;
                            let mut p = 1 + room_len;
                            let count = u16::from_be_bytes(
                                body.get(p..p + 2).context("short batch")?.try_into()?,
                            );
                            p += 2;
                            let mut stamps = Vec::with_capacity(count as usize);
                            let mut last_seq = 0;
                            for _ in 0..count {
                                let (seq, stamp, end) = record(body, p).context("bad batch")?;
                                stamps.push(stamp);
                                last_seq = seq;
                                p = end;
                            }
                            Incoming::Events { stamps, last_seq }
                        }
                        _ => {
                            let mut b = BytesMut::from(&frame[..]);
                            match Frame::decode(&mut b, u32::MAX)? {
                                Some(f) => Incoming::Other(f),
                                None => bail!("incomplete frame"),
                            }
                        }
                    }));
                }
                self.buf.reserve(total - self.buf.len());
            }
            match &mut self.src {
                Source::Stream(rd) => {
                    let n = rd.read_buf(&mut self.buf).await?;
                    if n == 0 {
                        return Ok(None);
                    }
                    WIRE_BYTES.fetch_add(n as u64, Ordering::Relaxed);
                }
                Source::Chunks { rx, .. } => match rx.recv().await {
                    Some(chunk) => {
                        WIRE_BYTES.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        self.buf.extend_from_slice(&chunk);
                    }
                    None => return Ok(None),
                },
            }
        }
    }

    /// Reads until a SubscribeAck arrives; returns the head of the first room.
    pub async fn wait_subscribed(&mut self) -> anyhow::Result<Seq> {
        loop {
            match self.next().await? {
                Some(Incoming::Other(Frame {
                    body: Body::SubscribeAck(a),
                    ..
                })) => return Ok(a.results.first().map(|r| r.head).unwrap_or_default()),
                Some(_) => {}
                None => bail!("closed before SubscribeAck"),
            }
        }
    }
}
