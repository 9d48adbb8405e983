//! A minimal raw protocol client and broker fixtures for the integration
//! tests. Everything talks to 127.0.0.1 only and every wait is bounded.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::field_reassign_with_default,
    unreachable_pub
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use confab_broker::config::{Config, Durability};
use confab_broker::{Broker, BrokerHandle};
use confab_codec::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub mod ws;

/// Upper bound for any single wait in the tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// The transports a test can run over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Quic,
    /// WebSocket (`ws://`).
    Ws,
    /// WebSocket over TLS (`wss://`).
    Wss,
}

/// Runs `async fn name(t: Transport)` as one test per transport:
/// `name::tcp`, `name::tls`, `name::quic`.
#[allow(unused_macros)]
macro_rules! over_transports {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                super::$name(super::Transport::Tcp).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tls() {
                super::$name(super::Transport::Tls).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn quic() {
                super::$name(super::Transport::Quic).await
            }
        }
    )+};
    // The same, plus `name::ws` and `name::wss`.
    (with_websocket: $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                super::$name(super::Transport::Tcp).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tls() {
                super::$name(super::Transport::Tls).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn quic() {
                super::$name(super::Transport::Quic).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ws() {
                super::$name(super::Transport::Ws).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn wss() {
                super::$name(super::Transport::Wss).await
            }
        }
    )+};
}

/// How to reach a broker over one transport.
#[derive(Debug, Clone)]
pub struct Dial {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// The certificate to trust (TLS, QUIC).
    pub cert: Option<CertificateDer<'static>>,
}

impl From<SocketAddr> for Dial {
    fn from(addr: SocketAddr) -> Dial {
        Dial {
            transport: Transport::Tcp,
            addr,
            cert: None,
        }
    }
}

impl From<&Dial> for Dial {
    fn from(d: &Dial) -> Dial {
        d.clone()
    }
}

/// The broker's listener for `t`, with its certificate.
pub fn dial(broker: &BrokerHandle, t: Transport) -> Dial {
    let cert = broker
        .cert_path()
        .map(|p| CertificateDer::from_pem_file(p).expect("broker certificate"));
    let addr = match t {
        Transport::Tcp => broker.tcp_addr(),
        Transport::Tls => broker.tls_addr().expect("TLS listener on"),
        Transport::Quic => broker.quic_addr().expect("QUIC listener on"),
        Transport::Ws => broker.websocket_addr().expect("WebSocket listener on"),
        Transport::Wss => broker
            .websocket_tls_addr()
            .expect("WebSocket TLS listener on"),
    };
    Dial {
        transport: t,
        addr,
        cert,
    }
}

/// A rustls client configuration trusting exactly `cert` (ring only).
pub fn tls_client(cert: &CertificateDer<'static>, tls13_only: bool) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("a valid certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    };
    let mut config = builder
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![confab_broker::transport::tls::ALPN.to_vec()];
    config
}

/// [`tls_client`] for `wss://`: ALPN `http/1.1`, as browsers offer.
pub fn wss_client(cert: &CertificateDer<'static>) -> rustls::ClientConfig {
    let mut config = tls_client(cert, false);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// A quinn client configuration trusting `cert`, with `transport` settings.
pub fn quic_client(
    cert: &CertificateDer<'static>,
    transport: quinn::TransportConfig,
) -> quinn::ClientConfig {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls_client(cert, true))
        .expect("QUIC TLS config");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    config
}

/// Opens a QUIC connection to `addr` from a fresh loopback endpoint.
pub async fn quic_connect(
    addr: SocketAddr,
    config: quinn::ClientConfig,
) -> (quinn::Endpoint, quinn::Connection) {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint");
    let conn = tokio::time::timeout(
        WAIT,
        endpoint
            .connect_with(config, addr, "localhost")
            .expect("connect"),
    )
    .await
    .expect("QUIC handshake in time")
    .expect("QUIC handshake");
    (endpoint, conn)
}

/// Whether the broker refuses a TLS or QUIC connection to `dial` before
/// its handshake: the handshake fails (TLS: the socket closes without a
/// ServerHello; QUIC: `CONNECTION_REFUSED`) instead of completing.
pub async fn handshake_refused(dial: &Dial) -> bool {
    let cert = dial.cert.as_ref().expect("a certificate to trust");
    match dial.transport {
        Transport::Tcp => panic!("plain TCP has no handshake to refuse"),
        Transport::Tls => {
            let stream = TcpStream::connect(dial.addr).await.expect("connect");
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client(cert, false)));
            let name = ServerName::IpAddress(dial.addr.ip().into());
            tokio::time::timeout(WAIT, connector.connect(name, stream))
                .await
                .expect("an answer in time")
                .is_err()
        }
        Transport::Ws => {
            let stream = TcpStream::connect(dial.addr).await.expect("connect");
            let host = dial.addr.to_string();
            tokio::time::timeout(WAIT, ws::upgrade(stream, &host, &Default::default()))
                .await
                .expect("an answer in time")
                .is_err()
        }
        Transport::Wss => {
            let stream = TcpStream::connect(dial.addr).await.expect("connect");
            let connector = tokio_rustls::TlsConnector::from(Arc::new(wss_client(cert)));
            let name = ServerName::IpAddress(dial.addr.ip().into());
            let Ok(Ok(stream)) = tokio::time::timeout(WAIT, connector.connect(name, stream)).await
            else {
                return true;
            };
            let host = dial.addr.to_string();
            tokio::time::timeout(WAIT, ws::upgrade(stream, &host, &Default::default()))
                .await
                .expect("an answer in time")
                .is_err()
        }
        Transport::Quic => {
            let endpoint =
                quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint");
            let config = quic_client(cert, quinn::TransportConfig::default());
            let connecting = endpoint
                .connect_with(config, dial.addr, "localhost")
                .expect("connect");
            tokio::time::timeout(WAIT, connecting)
                .await
                .expect("an answer in time")
                .is_err()
        }
    }
}

/// Decodes frames from `rd` into `tx` until the stream ends.
pub async fn forward_frames<R: AsyncRead + Unpin>(mut rd: R, tx: mpsc::UnboundedSender<Frame>) {
    let mut buf = BytesMut::new();
    loop {
        while let Some(f) = Frame::decode(&mut buf, 1 << 24).expect("server frames are valid") {
            if tx.send(f).is_err() {
                return;
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.data_dir = dir.to_path_buf();
    c.listen.tcp = "127.0.0.1:0".parse().unwrap();
    c.listen.tls = Some("127.0.0.1:0".parse().unwrap());
    c.listen.quic = Some("127.0.0.1:0".parse().unwrap());
    c.listen.websocket = Some("127.0.0.1:0".parse().unwrap());
    c.listen.websocket_tls = Some("127.0.0.1:0".parse().unwrap());
    c.storage.durability = Durability::Wal;
    c.log.level = "warn".into();
    // Tests publish far faster than people; the limit tests turn it on.
    c.rate_limits.enabled = false;
    // Tests connect many clients from one address in a burst.
    c.admission.connects_per_ip_per_sec = 0;
    c
}

pub async fn start(config: Config) -> BrokerHandle {
    Broker::builder(config)
        .start()
        .await
        .expect("broker starts")
}

/// Restarts on the same port (retrying while the old socket lingers).
pub async fn start_on(mut config: Config, addr: SocketAddr) -> BrokerHandle {
    config.listen.tcp = addr;
    for _ in 0..100 {
        match Broker::builder(config.clone()).start().await {
            Ok(h) => return h,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("could not restart the broker on {addr}");
}

/// Sends a request and returns the body of its reply.
pub async fn request(c: &mut Conn, body: impl Into<Body>) -> Body {
    let rid = c.send(body).await;
    c.wait_reply(rid, |_| true).await.body
}

/// The code of an `Error` reply (panics on any other body).
pub fn code(b: &Body) -> ErrorCode {
    match b {
        Body::Error(e) => e.code,
        other => panic!("expected an Error, got {other:?}"),
    }
}

pub fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

pub fn room(s: &str) -> RoomId {
    RoomId::new(s).unwrap()
}

/// Where a connection's frames come from.
enum Inbound {
    /// One byte stream (TCP, TLS).
    Stream {
        rd: Box<dyn AsyncRead + Send + Unpin>,
        buf: BytesMut,
    },
    /// Frames decoded by tasks reading the QUIC control stream and every
    /// event stream. Ends when all of them ended.
    Frames(mpsc::UnboundedReceiver<Frame>),
}

/// The QUIC connection behind a [`Conn`].
pub struct QuicSide {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for QuicSide {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// A raw protocol connection over any transport.
pub struct Conn {
    wr: Box<dyn AsyncWrite + Send + Unpin>,
    rd: Inbound,
    pub quic: Option<QuicSide>,
    next_request: u32,
    pub welcome: Option<Welcome>,
    /// Frames read while waiting for a specific reply, returned first by `recv`.
    pending: std::collections::VecDeque<Frame>,
}

impl Conn {
    /// A plain TCP connection, no handshake.
    pub async fn raw(addr: SocketAddr) -> Conn {
        Conn::connect(addr).await
    }

    /// A connection over any transport, no protocol handshake.
    pub async fn connect(dial: impl Into<Dial>) -> Conn {
        let dial = dial.into();
        let (wr, rd, quic): (Box<dyn AsyncWrite + Send + Unpin>, _, _) = match dial.transport {
            Transport::Tcp => {
                let stream = TcpStream::connect(dial.addr).await.expect("connect");
                stream.set_nodelay(true).unwrap();
                let (rd, wr) = tokio::io::split(stream);
                (Box::new(wr), stream_inbound(rd), None)
            }
            Transport::Tls => {
                let stream = TcpStream::connect(dial.addr).await.expect("connect");
                stream.set_nodelay(true).unwrap();
                let cert = dial.cert.as_ref().expect("a certificate to trust");
                let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client(cert, false)));
                let name = ServerName::IpAddress(dial.addr.ip().into());
                let stream = tokio::time::timeout(WAIT, connector.connect(name, stream))
                    .await
                    .expect("TLS handshake in time")
                    .expect("TLS handshake");
                let (rd, wr) = tokio::io::split(stream);
                (Box::new(wr), stream_inbound(rd), None)
            }
            Transport::Quic => {
                let cert = dial.cert.as_ref().expect("a certificate to trust");
                let config = quic_client(cert, quinn::TransportConfig::default());
                let (endpoint, conn) = quic_connect(dial.addr, config).await;
                let (send, recv) = conn.open_bi().await.expect("control stream");
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(forward_frames(recv, tx.clone()));
                let events = conn.clone();
                let acceptor = tokio::spawn(async move {
                    while let Ok(stream) = events.accept_uni().await {
                        tokio::spawn(forward_frames(stream, tx.clone()));
                    }
                });
                let side = QuicSide {
                    endpoint,
                    conn,
                    acceptor,
                };
                (Box::new(send), Inbound::Frames(rx), Some(side))
            }
            Transport::Ws => {
                let stream = TcpStream::connect(dial.addr).await.expect("connect");
                stream.set_nodelay(true).unwrap();
                let ws = ws::upgrade(stream, &dial.addr.to_string(), &Default::default())
                    .await
                    .expect("WebSocket upgrade");
                let (wr, rx) = ws::split(ws);
                (Box::new(wr), Inbound::Frames(rx), None)
            }
            Transport::Wss => {
                let stream = TcpStream::connect(dial.addr).await.expect("connect");
                stream.set_nodelay(true).unwrap();
                let cert = dial.cert.as_ref().expect("a certificate to trust");
                let connector = tokio_rustls::TlsConnector::from(Arc::new(wss_client(cert)));
                let name = ServerName::IpAddress(dial.addr.ip().into());
                let stream = tokio::time::timeout(WAIT, connector.connect(name, stream))
                    .await
                    .expect("TLS handshake in time")
                    .expect("TLS handshake");
                let ws = ws::upgrade(stream, &dial.addr.to_string(), &Default::default())
                    .await
                    .expect("WebSocket upgrade");
                let (wr, rx) = ws::split(ws);
                (Box::new(wr), Inbound::Frames(rx), None)
            }
        };
        Conn {
            wr,
            rd,
            quic,
            next_request: 1,
            welcome: None,
            pending: Default::default(),
        }
    }

    /// Connects and completes the handshake as `user:device`.
    pub async fn open(dial: impl Into<Dial>, user: &str, device: &str) -> Conn {
        Self::open_with_resume(dial, user, device, Vec::new()).await
    }

    pub async fn open_with_resume(
        dial: impl Into<Dial>,
        user: &str,
        device: &str,
        resume: Vec<SubscribeItem>,
    ) -> Conn {
        let mut c = Conn::connect(dial).await;
        c.handshake(user, device, resume).await;
        c
    }

    /// A connection whose frames go to `wr` and come from `rx` (for
    /// example a WebSocket a test upgraded itself), no handshake.
    pub fn over_parts(
        wr: Box<dyn AsyncWrite + Send + Unpin>,
        rx: mpsc::UnboundedReceiver<Frame>,
    ) -> Conn {
        Conn {
            wr,
            rd: Inbound::Frames(rx),
            quic: None,
            next_request: 1,
            welcome: None,
            pending: Default::default(),
        }
    }

    /// A plain TCP connection over `stream`, no handshake.
    pub fn over_tcp(stream: TcpStream) -> Conn {
        stream.set_nodelay(true).unwrap();
        let (rd, wr) = tokio::io::split(stream);
        Conn {
            wr: Box::new(wr),
            rd: stream_inbound(rd),
            quic: None,
            next_request: 1,
            welcome: None,
            pending: Default::default(),
        }
    }

    /// Sends `Hello` as `user:device` and waits for `Welcome`.
    pub async fn handshake(&mut self, user: &str, device: &str, resume: Vec<SubscribeItem>) {
        self.handshake_up_to(1, user, device, resume).await;
    }

    /// Sends `Hello` offering versions 1 to `max_version` and waits for
    /// `Welcome`, which it returns.
    pub async fn handshake_up_to(
        &mut self,
        max_version: u16,
        user: &str,
        device: &str,
        resume: Vec<SubscribeItem>,
    ) -> Welcome {
        let c = self;
        let rid = c
            .send(Hello {
                min_version: 1,
                max_version,
                token: format!("{user}:{device}"),
                device: DeviceId::new(device).unwrap(),
                client_name: "test".into(),
                resume,
                features: Default::default(),
            })
            .await;
        let f = c.recv().await.expect("welcome");
        assert_eq!(f.request_id, rid);
        match f.body {
            Body::Welcome(w) => {
                c.welcome = Some(w.clone());
                w
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    pub fn request_id(&mut self) -> u32 {
        let r = self.next_request;
        self.next_request += 1;
        r
    }

    /// Sends a request with a fresh request id, returned.
    pub async fn send(&mut self, body: impl Into<Body>) -> u32 {
        let rid = self.request_id();
        self.send_frame(Frame::request(rid, body)).await;
        rid
    }

    pub async fn send_frame(&mut self, frame: Frame) {
        let bytes = frame.to_bytes().unwrap();
        self.wr.write_all(&bytes).await.expect("write");
        self.wr.flush().await.expect("flush");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.wr.write_all(bytes).await?;
        self.wr.flush().await
    }

    /// The next frame, or None on a clean close. Panics after [`WAIT`].
    pub async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("a frame within the wait bound")
    }

    pub async fn recv_timeout(&mut self, d: Duration) -> Result<Option<Frame>, ()> {
        tokio::time::timeout(d, self.recv_inner())
            .await
            .map_err(|_| ())
    }

    async fn recv_inner(&mut self) -> Option<Frame> {
        if let Some(f) = self.pending.pop_front() {
            return Some(f);
        }
        self.recv_wire().await
    }

    /// The next frame from the transport, ignoring stashed ones.
    async fn recv_wire(&mut self) -> Option<Frame> {
        match &mut self.rd {
            Inbound::Frames(rx) => rx.recv().await,
            Inbound::Stream { rd, buf } => loop {
                if let Some(f) = Frame::decode(buf, 1 << 24).expect("server frames are valid") {
                    return Some(f);
                }
                match rd.read_buf(buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            },
        }
    }

    pub async fn subscribe(&mut self, items: Vec<(RoomId, StartAt)>) -> SubscribeAck {
        let rid = self
            .send(Subscribe {
                items: items
                    .into_iter()
                    .map(|(room, start)| SubscribeItem { room, start })
                    .collect(),
            })
            .await;
        let f = self
            .wait_reply(rid, |f| matches!(f.body, Body::SubscribeAck(_)))
            .await;
        match f.body {
            Body::SubscribeAck(a) => a,
            other => panic!("subscribe failed: {other:?}"),
        }
    }

    pub fn publish_frame(rid: u32, room: &RoomId, cmid: u64, payload: &[u8]) -> Frame {
        Frame::request(
            rid,
            Publish {
                room: room.clone(),
                client_msg_id: cmid,
                kind: MessageKind::MESSAGE,
                refers_to: None,
                thread: None,
                payload: Bytes::copy_from_slice(payload),
            },
        )
    }

    /// Publishes and waits for the ack, skipping other frames.
    pub async fn publish(&mut self, room: &RoomId, cmid: u64, payload: &[u8]) -> PublishAck {
        let rid = self.request_id();
        self.send_frame(Self::publish_frame(rid, room, cmid, payload))
            .await;
        match self.wait_reply(rid, |_| true).await.body {
            Body::PublishAck(a) => a,
            other => panic!("publish failed: {other:?}"),
        }
    }

    /// Waits for the reply to `rid` (an Error, or a frame `accept` takes),
    /// stashing every other frame for later `recv` calls.
    pub async fn wait_reply(&mut self, rid: u32, accept: impl Fn(&Frame) -> bool) -> Frame {
        let is_reply = |f: &Frame| {
            f.request_id == rid
                && (matches!(f.body, Body::Error(_)) || accept(f))
                && !matches!(f.body, Body::Event(_) | Body::EventBatch(_))
        };
        if let Some(pos) = self.pending.iter().position(&is_reply) {
            return self.pending.remove(pos).expect("position is in range");
        }
        let mut stash = Vec::new();
        let reply = tokio::time::timeout(WAIT, async {
            loop {
                let f = self
                    .recv_wire()
                    .await
                    .expect("connection open while waiting for a reply");
                if is_reply(&f) {
                    return f;
                }
                stash.push(f);
            }
        })
        .await
        .expect("a reply within the wait bound");
        self.pending.extend(stash);
        reply
    }

    /// Collects room events until `count` have arrived (Event and EventBatch
    /// alike), returning (room, seq, payload) and the other frames seen.
    pub async fn events(&mut self, count: usize) -> (Vec<(RoomId, u64, Bytes)>, Vec<Frame>) {
        let mut events = Vec::new();
        let mut others = Vec::new();
        while events.len() < count {
            let f = self
                .recv()
                .await
                .expect("connection open while waiting for events");
            match f.body {
                Body::Event(e) => events.push((e.room, e.event.seq.0, e.event.payload)),
                Body::EventBatch(b) => {
                    for e in b.events {
                        events.push((b.room.clone(), e.seq.0, e.payload));
                    }
                }
                _ => others.push(f),
            }
        }
        (events, others)
    }

    pub async fn history(
        &mut self,
        room: &RoomId,
        direction: Direction,
        anchor: u64,
        limit: u16,
    ) -> HistoryPage {
        let rid = self
            .send(HistoryRequest {
                room: room.clone(),
                direction,
                anchor: Seq(anchor),
                limit,
            })
            .await;
        match self.wait_reply(rid, |_| true).await.body {
            Body::HistoryPage(p) => p,
            other => panic!("history failed: {other:?}"),
        }
    }

    /// Reads until the server closes, returning the frames seen.
    pub async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.recv().await {
            frames.push(f);
        }
        frames
    }
}

fn stream_inbound<R: AsyncRead + Send + Unpin + 'static>(rd: R) -> Inbound {
    Inbound::Stream {
        rd: Box::new(rd),
        buf: BytesMut::new(),
    }
}

/// Asserts `seqs` are exactly `from..=to` in order.
pub fn assert_contiguous(seqs: &[u64], from: u64, to: u64) {
    let expected: Vec<u64> = (from..=to).collect();
    assert_eq!(seqs.len(), expected.len(), "count of sequences");
    assert_eq!(
        seqs,
        expected.as_slice(),
        "sequences contiguous and in order"
    );
}

/// A free TCP port on 127.0.0.1 (for a `confab` process that must come
/// back on the same address).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    // Below Linux's ephemeral range (32768-60999): a port handed to a
    // broker process to bind later must not be taken in between as the
    // local port of some client connection, which the floods' thousands of
    // connections made likely ("Address already in use"). Pseudo-random,
    // so that parallel test binaries rarely pick the same one.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32)
        ^ NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let mut x = seed | 1;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the real `confab` binary on `dir`, TCP on `port`, rate limits
/// off.
pub fn spawn_confab(dir: &Path, port: u16, durability: &str) -> std::process::Child {
    spawn_confab_with(dir, port, durability, &[])
}

/// [`spawn_confab`] with more command-line arguments (`--set k=v`, ...).
pub fn spawn_confab_with(
    dir: &Path,
    port: u16,
    durability: &str,
    extra: &[&str],
) -> std::process::Child {
    confab_command(dir, port, durability, extra)
        .spawn()
        .expect("the confab binary starts")
}

/// The command [`spawn_confab_with`] runs (to add environment variables).
pub fn confab_command(
    dir: &Path,
    port: u16,
    durability: &str,
    extra: &[&str],
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_confab"));
    command
        .args([
            "serve",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            // Not the default fixed UDP port: tests run in parallel.
            "--listen-quic",
            "127.0.0.1:0",
            "--durability",
            durability,
            "--log-level",
            "error",
            "--set",
            "rate_limits.enabled=false",
            "--set",
            "admission.connects_per_ip_per_sec=0",
        ])
        .args(extra)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    command
}

/// A TCP connection to `addr` from the loopback address `src` (Linux
/// delivers all of 127.0.0.0/8 to the loopback interface, so tests can
/// play many client addresses).
pub async fn tcp_from(src: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(src, 0))?;
    socket.connect(addr).await
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "broker did not come up on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every retained event of a room, through history pages.
pub async fn read_all(c: &mut Conn, r: &RoomId) -> Vec<EventRecord> {
    let mut all = Vec::new();
    let mut anchor = 0;
    loop {
        let page = c.history(r, Direction::After, anchor, 1000).await;
        if let Some(last) = page.events.last() {
            anchor = last.seq.0;
        }
        all.extend(page.events);
        if !page.has_more {
            return all;
        }
    }
}

/// A small seeded random source (splitmix64), for tests that replay a run
/// from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The typing sets (user ids) that `c` receives within `d`, in order.
pub async fn typing_sets(c: &mut Conn, d: Duration) -> Vec<Vec<String>> {
    let end = std::time::Instant::now() + d;
    let mut sets = Vec::new();
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        match c.recv_timeout(left).await {
            Ok(Some(f)) => {
                if let Body::TypingEvent(t) = f.body {
                    sets.push(t.users.iter().map(|u| u.to_string()).collect());
                }
            }
            _ => break,
        }
    }
    sets
}
