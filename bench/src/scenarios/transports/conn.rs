//! The load generator's client over any transport: TCP, TLS or QUIC
//! ([`Dial`]). The same lean design as `crate::client` (pipelined writes,
//! a reader that counts events without decoding them fully), with the
//! byte stream boxed; QUIC's control and event streams are merged by
//! helper tasks into one reader.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use confab_codec::{
    frame_type, Body, DeviceId, Frame, Header, Hello, MessageKind, Publish, RoomId, Seq, StartAt,
    Subscribe, SubscribeItem, HEADER_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How to reach the broker.
#[derive(Clone)]
pub enum Dial {
    /// Plain TCP.
    Tcp(SocketAddr),
    /// TLS over TCP, trusting what the connector trusts.
    Tls(SocketAddr, tokio_rustls::TlsConnector),
    /// QUIC: a control stream, and the broker's event streams.
    Quic(SocketAddr, quinn::ClientConfig),
}

impl From<SocketAddr> for Dial {
    fn from(addr: SocketAddr) -> Dial {
        Dial::Tcp(addr)
    }
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dial::Tcp(a) => write!(f, "tcp {a}"),
            Dial::Tls(a, _) => write!(f, "tls {a}"),
            Dial::Quic(a, _) => write!(f, "quic {a}"),
        }
    }
}

/// Where a reader's bytes come from.
enum Source {
    /// One byte stream (TCP, TLS).
    Stream(Box<dyn AsyncRead + Send + Unpin>),
    /// QUIC: runs of whole frames, read from the control stream and every
    /// event stream by helper tasks. The connection lives as long as this.
    Chunks {
        rx: mpsc::Receiver<Bytes>,
        _conn: QuicConn,
    },
}

/// A QUIC connection, closed (and its stream readers stopped) on drop.
struct QuicConn {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for QuicConn {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.conn.close(0u32.into(), b"");
    }
}

/// Read side of a connection.
pub struct Reader {
    src: Source,
    buf: BytesMut,
}

/// Write side of a connection.
pub struct Writer {
    wr: Box<dyn AsyncWrite + Send + Unpin>,
    out: BytesMut,
    next_request: u32,
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

/// Connects over any transport and completes the handshake.
pub async fn connect_via(
    dial: &Dial,
    user: &str,
    device: &str,
) -> anyhow::Result<(Reader, Writer)> {
    let (src, wr) = open(dial)
        .await
        .with_context(|| format!("connecting to {dial:?}"))?;
    let mut reader = Reader {
        src,
        buf: BytesMut::with_capacity(256 << 10),
    };
    let mut writer = Writer {
        wr,
        out: BytesMut::with_capacity(64 << 10),
        next_request: 1,
    };
    writer.queue(Hello {
        min_version: 1,
        max_version: 1,
        token: format!("{user}:{device}"),
        device: DeviceId::new(device)?,
        client_name: "confab-bench".into(),
        resume: vec![],
    })?;
    writer.flush().await?;
    match reader.next().await? {
        Some(Incoming::Other(Frame {
            body: Body::Welcome(_),
            ..
        })) => Ok((reader, writer)),
        other => bail!("handshake failed: {other:?}"),
    }
}

async fn tcp(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn open(dial: &Dial) -> anyhow::Result<(Source, Box<dyn AsyncWrite + Send + Unpin>)> {
    Ok(match dial {
        Dial::Tcp(addr) => {
            let (rd, wr) = tcp(*addr).await?.into_split();
            (Source::Stream(Box::new(rd)), Box::new(wr))
        }
        Dial::Tls(addr, connector) => {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let stream = connector.connect(name, tcp(*addr).await?).await?;
            let (rd, wr) = tokio::io::split(stream);
            (Source::Stream(Box::new(rd)), Box::new(wr))
        }
        Dial::Quic(addr, config) => {
            let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            let conn = endpoint
                .connect_with(config.clone(), *addr, "localhost")?
                .await?;
            let (send, recv) = conn.open_bi().await?;
            let (tx, rx) = mpsc::channel(1024);
            let events = conn.clone();
            let acceptor = tokio::spawn(async move {
                let mut readers = tokio::task::JoinSet::new();
                readers.spawn(forward_frames(recv, tx.clone()));
                while let Ok(stream) = events.accept_uni().await {
                    readers.spawn(forward_frames(stream, tx.clone()));
                }
                while readers.join_next().await.is_some() {}
            });
            let conn = QuicConn {
                _endpoint: endpoint,
                conn,
                acceptor,
            };
            (Source::Chunks { rx, _conn: conn }, Box::new(send))
        }
    })
}

/// Reads a QUIC stream and forwards its bytes in runs of whole frames, so
/// that runs from different streams can be appended to one buffer.
async fn forward_frames(mut stream: quinn::RecvStream, tx: mpsc::Sender<Bytes>) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut whole = 0;
        while let Some(h) = Header::peek(&buf[whole..]) {
            let total = HEADER_LEN + h.len as usize;
            if buf.len() - whole < total {
                break;
            }
            whole += total;
        }
        if whole > 0 && tx.send(buf.split_to(whole).freeze()).await.is_err() {
            return;
        }
    }
}

/// A rustls client configuration trusting exactly `cert` (ring only), for
/// QUIC (TLS 1.3) or TCP.
pub fn tls_client(
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![confab_broker::transport::tls::ALPN.to_vec()];
    Ok(config)
}

impl Writer {
    /// Queues a frame (sent on the next flush) and returns its request id.
    pub fn queue(&mut self, body: impl Into<Body>) -> anyhow::Result<u32> {
        let rid = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(1);
        Frame::request(rid, body).encode(&mut self.out)?;
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

    /// Queues already-encoded frames (sent on the next flush).
    pub fn queue_raw(&mut self, frames: &[u8]) {
        self.out.extend_from_slice(frames);
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
                    let frame = self.buf.split_to(total).freeze();
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
                    if rd.read_buf(&mut self.buf).await? == 0 {
                        return Ok(None);
                    }
                }
                Source::Chunks { rx, .. } => match rx.recv().await {
                    Some(chunk) => self.buf.extend_from_slice(&chunk),
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
