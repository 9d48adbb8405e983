//! A small in-process broker speaking the Confab protocol, with fault
//! injection: it can skip live deliveries (gaps), cut every connection,
//! black-hole connections (open but silent), refuse connections, lose
//! publish acknowledgements, and refuse publishes as a full disk does. Only what the SDK tests need; the log and the
//! deduplication table live in memory.
//!
//! It serves TCP, TLS or QUIC ([`Transport`]), with a self-signed
//! certificate the clients pin. Over QUIC it maps frames to streams as the
//! protocol says (section 2.1): room events on server-opened unidirectional
//! streams (a few, by room), everything else on the control stream.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use confab_client::confab_codec::{
    flags, Ack, Body, CodecError, Direction, ErrorCode, ErrorFrame, EventBatch, EventRecord, Frame,
    Goodbye, HistoryPage, Pong, PublishAck, Receipt, RoomId, Seq, StartAt, SubscribeAck,
    SubscribeItem, SubscribeResult, UserId, Welcome, DEFAULT_MAX_FRAME_LEN,
};
use confab_client::{Endpoint, Fingerprint, Trust};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

/// The transports the mock serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    Tls,
    Quic,
}

/// Event streams the mock opens per QUIC connection.
const QUIC_EVENT_STREAMS: u64 = 4;

struct Codec;

impl Decoder for Codec {
    type Item = Frame;
    type Error = std::io::Error;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        Frame::decode(src, DEFAULT_MAX_FRAME_LEN).map_err(std::io::Error::other)
    }
}

impl Encoder<Frame> for Codec {
    type Error = std::io::Error;
    fn encode(&mut self, f: Frame, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        f.encode(dst)
            .map_err(|e: CodecError| std::io::Error::other(e))
    }
}

struct Sub {
    conn: u64,
    room: RoomId,
    tx: mpsc::UnboundedSender<Frame>,
}

/// The mock's log and settings, shareable between successive mocks to
/// emulate a restart on the same data.
pub(crate) type Shared = Arc<Mutex<State>>;

#[derive(Default)]
pub(crate) struct State {
    rooms: HashMap<RoomId, Vec<EventRecord>>,
    dedup: HashMap<(String, RoomId, u64), (Seq, u64)>,
    subs: Vec<Sub>,
    /// Live fan-out skips these (room, seq); they stay in the log.
    skip_live: HashSet<(RoomId, u64)>,
    /// The next this-many new publishes are stored, but their ack is lost
    /// and their connection cut.
    lose_acks: usize,
    /// Publishes received, duplicates included.
    received: usize,
    /// The next this-many publishes are refused with `StorageFull` and not
    /// stored (a broker whose disk is full).
    storage_full: usize,
    /// The next this-many new publishes are stored, then answered with
    /// `Internal` (a cluster node whose forward to the room's owner timed
    /// out after the owner stored it).
    stored_then_internal: usize,
    /// The next this-many subscribe items (in `Subscribe`s and `Hello`
    /// resumes) are refused with `Internal` (a storage read that failed).
    refuse_subscribes: usize,
    /// Subscribe items refused so far.
    subscribes_refused: usize,
    /// The next this-many application requests (history, rooms, ...) are
    /// read, left unanswered, and their connection cut.
    cut_on_requests: usize,
    /// The next this-many receipts are lost with their connection (as if
    /// the broker crashed before acting on them).
    lose_receipts: usize,
    /// Receipts acted on, in order.
    receipts: Vec<Receipt>,
}

/// The mock broker.
pub(crate) struct Mock {
    pub(crate) addr: SocketAddr,
    pub(crate) transport: Transport,
    /// The certificate's fingerprint (TLS, QUIC).
    pub(crate) fingerprint: Fingerprint,
    state: Arc<Mutex<State>>,
    refuse: Arc<AtomicBool>,
    blackhole: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    sessions: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.accept.abort();
        self.kill_all();
    }
}

impl Mock {
    /// A mock serving plain TCP.
    pub(crate) async fn start() -> Mock {
        Mock::start_over(Transport::Tcp).await
    }

    /// A mock serving `transport` on a loopback port.
    pub(crate) async fn start_over(transport: Transport) -> Mock {
        let addr = "127.0.0.1:0".parse().unwrap();
        Mock::start_on(transport, addr, Shared::default())
            .await
            .unwrap()
    }

    /// The endpoint and trust a client needs to reach this mock.
    pub(crate) fn endpoint(&self) -> (Endpoint, Option<Trust>) {
        let pin = Some(Trust::Fingerprint(self.fingerprint));
        match self.transport {
            Transport::Tcp => (Endpoint::tcp(self.addr), None),
            Transport::Tls => (Endpoint::tls(self.addr), pin),
            Transport::Quic => (Endpoint::quic(self.addr), pin),
        }
    }

    /// A mock listening on `addr` with the log and settings of `state`.
    pub(crate) async fn start_on(
        transport: Transport,
        addr: SocketAddr,
        state: Shared,
    ) -> std::io::Result<Mock> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let fingerprint = Fingerprint::of(certified.cert.der());
        let cert = certified.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = |versions: &[&'static rustls::SupportedProtocolVersion]| {
            let mut c = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.clone()], key.clone_key())
                .unwrap();
            c.alpn_protocols = vec![confab_client::ALPN.to_vec()];
            c
        };
        let listener = match transport {
            Transport::Tcp => Listener::Tcp(TcpListener::bind(addr).await?, None),
            Transport::Tls => {
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls(&[
                    &rustls::version::TLS13,
                    &rustls::version::TLS12,
                ])));
                Listener::Tcp(TcpListener::bind(addr).await?, Some(acceptor))
            }
            Transport::Quic => {
                let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls(&[
                    &rustls::version::TLS13,
                ]))
                .unwrap();
                let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
                Listener::Quic(quinn::Endpoint::server(config, addr)?)
            }
        };
        let addr = listener.local_addr()?;
        let refuse = Arc::new(AtomicBool::new(false));
        let blackhole = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let sessions = Arc::new(AtomicU64::new(0));
        let accept = {
            let (state, refuse, blackhole, conns, sessions) = (
                state.clone(),
                refuse.clone(),
                blackhole.clone(),
                conns.clone(),
                sessions.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let Some(accepted) = listener.accept().await else {
                        return;
                    };
                    if refuse.load(Ordering::SeqCst) {
                        accepted.refuse();
                        continue;
                    }
                    let id = sessions.fetch_add(1, Ordering::SeqCst) + 1;
                    let (state, blackhole) = (state.clone(), blackhole.clone());
                    let task = tokio::spawn(async move {
                        if let Some((reader, out)) = accepted.open().await {
                            serve(reader, out, id, state, blackhole).await;
                        }
                    });
                    conns.lock().unwrap().push(task);
                }
            })
        };
        Ok(Mock {
            addr,
            transport,
            fingerprint,
            state,
            refuse,
            blackhole,
            conns,
            sessions,
            accept,
        })
    }

    /// Closes every connection abruptly (no Goodbye).
    pub(crate) fn kill_all(&self) {
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
        self.state.lock().unwrap().subs.clear();
    }

    /// New connections are closed right away while set.
    pub(crate) fn set_refuse(&self, on: bool) {
        self.refuse.store(on, Ordering::SeqCst);
    }

    /// Connections stop reading and writing (but stay open) while set.
    pub(crate) fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }

    /// Live delivery of `seq` in `room` will be skipped.
    pub(crate) fn skip_live(&self, room: &str, seq: u64) {
        let room = RoomId::new(room).unwrap();
        self.state.lock().unwrap().skip_live.insert((room, seq));
    }

    /// The next `n` publishes are stored but unacknowledged, and their
    /// connection is cut.
    pub(crate) fn lose_acks(&self, n: usize) {
        self.state.lock().unwrap().lose_acks = n;
    }

    /// The next `n` publishes are refused with `StorageFull`, not stored.
    pub(crate) fn storage_full(&self, n: usize) {
        self.state.lock().unwrap().storage_full = n;
    }

    /// The next `n` new publishes are stored, then answered with
    /// `Internal` instead of their acknowledgement.
    pub(crate) fn stored_then_internal(&self, n: usize) {
        self.state.lock().unwrap().stored_then_internal = n;
    }

    /// The next `n` subscribe items are refused with `Internal`.
    pub(crate) fn refuse_subscribes(&self, n: usize) {
        self.state.lock().unwrap().refuse_subscribes = n;
    }

    /// Subscribe items refused so far.
    pub(crate) fn subscribes_refused(&self) -> usize {
        self.state.lock().unwrap().subscribes_refused
    }

    /// The next `n` application requests (history, rooms, ...) are left
    /// unanswered and their connection is cut.
    pub(crate) fn cut_on_requests(&self, n: usize) {
        self.state.lock().unwrap().cut_on_requests = n;
    }

    /// The next `n` receipts are lost and their connection is cut.
    pub(crate) fn lose_receipts(&self, n: usize) {
        self.state.lock().unwrap().lose_receipts = n;
    }

    /// The receipts acted on so far, in order.
    pub(crate) fn receipts(&self) -> Vec<Receipt> {
        self.state.lock().unwrap().receipts.clone()
    }

    /// Entries in a room's log.
    pub(crate) fn stored(&self, room: &str) -> Vec<EventRecord> {
        let room = RoomId::new(room).unwrap();
        self.state
            .lock()
            .unwrap()
            .rooms
            .get(&room)
            .cloned()
            .unwrap_or_default()
    }

    /// Publishes received, duplicates included.
    pub(crate) fn received(&self) -> usize {
        self.state.lock().unwrap().received
    }

    /// Connections accepted so far.
    pub(crate) fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::SeqCst)
    }
}

async fn park() {
    std::future::pending::<()>().await;
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

enum Listener {
    Tcp(TcpListener, Option<tokio_rustls::TlsAcceptor>),
    Quic(quinn::Endpoint),
}

impl Listener {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Listener::Tcp(l, _) => l.local_addr(),
            Listener::Quic(e) => e.local_addr(),
        }
    }

    async fn accept(&self) -> Option<Accepted> {
        match self {
            Listener::Tcp(l, tls) => {
                let (stream, _) = l.accept().await.ok()?;
                Some(Accepted::Tcp(stream, tls.clone()))
            }
            Listener::Quic(e) => e.accept().await.map(|i| Accepted::Quic(Box::new(i))),
        }
    }
}

/// A connection before its transport handshake.
enum Accepted {
    Tcp(tokio::net::TcpStream, Option<tokio_rustls::TlsAcceptor>),
    Quic(Box<quinn::Incoming>),
}

impl Accepted {
    /// Closes it right away.
    fn refuse(self) {
        match self {
            Accepted::Tcp(..) => {}
            Accepted::Quic(incoming) => incoming.refuse(),
        }
    }

    /// Completes the transport handshake.
    async fn open(self) -> Option<(FramedRead<BoxRead, Codec>, Out)> {
        let (rd, out): (BoxRead, Out) = match self {
            Accepted::Tcp(stream, None) => {
                let (rd, wr) = stream.into_split();
                (
                    Box::new(rd),
                    Out::Stream(FramedWrite::new(Box::new(wr), Codec)),
                )
            }
            Accepted::Tcp(stream, Some(acceptor)) => {
                let (rd, wr) = tokio::io::split(acceptor.accept(stream).await.ok()?);
                (
                    Box::new(rd),
                    Out::Stream(FramedWrite::new(Box::new(wr), Codec)),
                )
            }
            Accepted::Quic(incoming) => {
                let conn = (*incoming).await.ok()?;
                let (send, recv) = conn.accept_bi().await.ok()?;
                let out = Out::Quic {
                    conn,
                    control: FramedWrite::new(send, Codec),
                    events: HashMap::new(),
                };
                (Box::new(recv), out)
            }
        };
        Some((FramedRead::new(rd, Codec), out))
    }
}

/// Where a connection's frames go.
enum Out {
    Stream(FramedWrite<BoxWrite, Codec>),
    Quic {
        conn: quinn::Connection,
        control: FramedWrite<quinn::SendStream, Codec>,
        events: HashMap<u64, FramedWrite<quinn::SendStream, Codec>>,
    },
}

impl Out {
    async fn send(&mut self, frame: Frame) -> std::io::Result<()> {
        match self {
            Out::Stream(w) => w.send(frame).await,
            Out::Quic {
                conn,
                control,
                events,
            } => {
                let room = match &frame.body {
                    Body::Event(e) => Some(&e.room),
                    Body::EventBatch(b) => Some(&b.room),
                    Body::Lagging(l) => Some(&l.room),
                    Body::CaughtUp(c) => Some(&c.room),
                    _ => None,
                };
                let Some(room) = room else {
                    return control.send(frame).await;
                };
                let lane = room.as_str().bytes().map(u64::from).sum::<u64>() % QUIC_EVENT_STREAMS;
                let stream = match events.entry(lane) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let stream = conn.open_uni().await.map_err(std::io::Error::other)?;
                        v.insert(FramedWrite::new(stream, Codec))
                    }
                };
                stream.send(frame).await
            }
        }
    }

    /// Ends the connection after what was sent reached the client (QUIC
    /// would otherwise drop it with the connection).
    async fn finish(self) {
        match self {
            Out::Stream(mut w) => {
                let _ = w.close().await;
            }
            Out::Quic {
                conn,
                control,
                events,
            } => {
                for mut s in std::iter::once(control.into_inner())
                    .chain(events.into_values().map(FramedWrite::into_inner))
                {
                    let _ = s.finish();
                    let _ = tokio::time::timeout(Duration::from_secs(2), s.stopped()).await;
                }
                conn.close(0u32.into(), b"");
            }
        }
    }
}

async fn serve(
    mut reader: FramedRead<BoxRead, Codec>,
    mut writer: Out,
    conn: u64,
    state: Arc<Mutex<State>>,
    blackhole: Arc<AtomicBool>,
) {
    let Some(Ok(first)) = reader.next().await else {
        return;
    };
    let rid = first.request_id;
    let Body::Hello(hello) = first.body else {
        return;
    };
    if hello.token == "bad" {
        let _ = writer
            .send(Frame::request(
                rid,
                ErrorFrame {
                    code: ErrorCode::Unauthenticated,
                    retry_after_ms: 0,
                    message: "bad token".into(),
                },
            ))
            .await;
        let _ = writer
            .send(Frame::new(Goodbye {
                code: ErrorCode::Unauthenticated,
                message: "bad token".into(),
            }))
            .await;
        writer.finish().await;
        return;
    }
    let user = UserId::new(hello.token.split(':').next().unwrap_or("anon")).unwrap();
    let device = hello.device.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let hole = blackhole.clone();
    let write = async move {
        while let Some(frame) = rx.recv().await {
            if hole.load(Ordering::SeqCst) {
                park().await;
            }
            if writer.send(frame).await.is_err() {
                return;
            }
        }
    };
    tx.send(Frame::request(
        rid,
        Welcome {
            version: 1,
            session_id: conn,
            user: user.clone(),
            server_time_us: 0,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_payload_len: 64 << 10,
            max_rooms: 1000,
            heartbeat_ms: 10_000,
            idle_timeout_ms: 60_000,
            features: Default::default(),
        },
    ))
    .unwrap();
    if !hello.resume.is_empty() {
        subscribe(&state, conn, &tx, rid, hello.resume);
    }
    let read = async {
        while let Some(Ok(frame)) = reader.next().await {
            if blackhole.load(Ordering::SeqCst) {
                park().await;
            }
            let rid = frame.request_id;
            let lost = {
                let mut st = state.lock().unwrap();
                match &frame.body {
                    Body::Receipt(_) if st.lose_receipts > 0 => {
                        st.lose_receipts -= 1;
                        true
                    }
                    Body::Ping(_)
                    | Body::Pong(_)
                    | Body::Subscribe(_)
                    | Body::Unsubscribe(_)
                    | Body::Publish(_)
                    | Body::Receipt(_)
                    | Body::Typing(_)
                    | Body::Goodbye(_) => false,
                    _ if st.cut_on_requests > 0 => {
                        st.cut_on_requests -= 1;
                        true
                    }
                    _ => false,
                }
            };
            if lost {
                state.lock().unwrap().subs.retain(|s| s.conn != conn);
                return;
            }
            match frame.body {
                Body::Ping(p) => tx
                    .send(Frame::request(rid, Pong { nonce: p.nonce }))
                    .unwrap(),
                Body::Subscribe(s) => subscribe(&state, conn, &tx, rid, s.items),
                Body::Unsubscribe(u) => {
                    state
                        .lock()
                        .unwrap()
                        .subs
                        .retain(|s| !(s.conn == conn && u.rooms.contains(&s.room)));
                    tx.send(Frame::request(rid, Ack {})).unwrap();
                }
                Body::Publish(p) => {
                    let mut st = state.lock().unwrap();
                    st.received += 1;
                    if st.storage_full > 0 {
                        st.storage_full -= 1;
                        let refusal = ErrorFrame {
                            code: ErrorCode::StorageFull,
                            retry_after_ms: 0,
                            message: "storage full".into(),
                        };
                        tx.send(Frame::request(rid, refusal)).unwrap();
                        continue;
                    }
                    let key = (device.to_string(), p.room.clone(), p.client_msg_id);
                    if let Some(&(seq, ts)) = st.dedup.get(&key) {
                        let ack = PublishAck {
                            room: p.room,
                            client_msg_id: p.client_msg_id,
                            seq,
                            timestamp_us: ts,
                            duplicate: true,
                        };
                        tx.send(Frame::request(rid, ack)).unwrap();
                        continue;
                    }
                    let log = st.rooms.entry(p.room.clone()).or_default();
                    let seq = Seq(log.len() as u64 + 1);
                    let record = EventRecord {
                        seq,
                        timestamp_us: 1_700_000_000_000_000 + seq.0,
                        sender: user.clone(),
                        device: device.clone(),
                        client_msg_id: p.client_msg_id,
                        kind: p.kind,
                        refers_to: p.refers_to,
                        thread: p.thread,
                        payload: p.payload,
                    };
                    log.push(record.clone());
                    st.dedup.insert(key, (seq, record.timestamp_us));
                    if !st.skip_live.contains(&(p.room.clone(), seq.0)) {
                        for s in st.subs.iter().filter(|s| s.room == p.room) {
                            let _ =
                                s.tx.send(Frame::new(record.clone().in_room(p.room.clone())));
                        }
                    }
                    if st.lose_acks > 0 {
                        st.lose_acks -= 1;
                        st.subs.retain(|s| s.conn != conn);
                        return;
                    }
                    if st.stored_then_internal > 0 {
                        st.stored_then_internal -= 1;
                        let refusal = ErrorFrame {
                            code: ErrorCode::Internal,
                            retry_after_ms: 0,
                            message: "the room's owner did not answer in time".into(),
                        };
                        tx.send(Frame::request(rid, refusal)).unwrap();
                        continue;
                    }
                    let ack = PublishAck {
                        room: p.room,
                        client_msg_id: p.client_msg_id,
                        seq,
                        timestamp_us: record.timestamp_us,
                        duplicate: false,
                    };
                    tx.send(Frame::request(rid, ack)).unwrap();
                }
                Body::HistoryRequest(h) => {
                    let st = state.lock().unwrap();
                    let log = st.rooms.get(&h.room).cloned().unwrap_or_default();
                    let head = log.len() as u64;
                    let limit = u64::from(h.limit.max(1));
                    let (lo, hi) = match h.direction {
                        Direction::After => (h.anchor.0 + 1, (h.anchor.0 + limit).min(head)),
                        Direction::Before => {
                            let top = if h.anchor.0 == 0 {
                                head
                            } else {
                                h.anchor.0 - 1
                            };
                            (top.saturating_sub(limit - 1).max(1), top)
                        }
                    };
                    let events: Vec<_> = if lo <= hi && hi >= 1 {
                        log[(lo - 1) as usize..hi as usize].to_vec()
                    } else {
                        Vec::new()
                    };
                    let has_more = match h.direction {
                        Direction::After => hi < head,
                        Direction::Before => lo > 1,
                    };
                    let page = HistoryPage {
                        room: h.room,
                        has_more,
                        first: Seq(1),
                        events,
                    };
                    tx.send(Frame::request(rid, page)).unwrap();
                }
                Body::Goodbye(_) => return,
                Body::Receipt(r) => state.lock().unwrap().receipts.push(r),
                Body::Typing(_) => {}
                other => {
                    let e = ErrorFrame {
                        code: ErrorCode::Unsupported,
                        retry_after_ms: 0,
                        message: format!("{} unsupported", other.name()),
                    };
                    tx.send(Frame::request(rid, e)).unwrap();
                }
            }
        }
    };
    tokio::select! {
        _ = read => {}
        _ = write => {}
    }
    state.lock().unwrap().subs.retain(|s| s.conn != conn);
}

/// Answers a Subscribe (or a Hello's resume): ack, backlog, then live, all
/// under the state lock so that nothing slips between backlog and live.
fn subscribe(
    state: &Mutex<State>,
    conn: u64,
    tx: &mpsc::UnboundedSender<Frame>,
    rid: u32,
    items: Vec<SubscribeItem>,
) {
    let mut st = state.lock().unwrap();
    let mut results = Vec::new();
    let mut batches = Vec::new();
    for item in items {
        if st.refuse_subscribes > 0 {
            st.refuse_subscribes -= 1;
            st.subscribes_refused += 1;
            results.push(SubscribeResult {
                room: item.room.clone(),
                code: ErrorCode::Internal,
                head: Seq(0),
                first: Seq(0),
            });
            continue;
        }
        let head = st.rooms.get(&item.room).map_or(0, |l| l.len() as u64);
        results.push(SubscribeResult {
            room: item.room.clone(),
            code: ErrorCode::Normal,
            head: Seq(head),
            first: Seq(1),
        });
        st.subs.retain(|s| !(s.conn == conn && s.room == item.room));
        st.subs.push(Sub {
            conn,
            room: item.room.clone(),
            tx: tx.clone(),
        });
        if let StartAt::From(from) = item.start {
            let from = from.0.max(1);
            if from <= head {
                let log = &st.rooms[&item.room];
                for chunk in log[(from - 1) as usize..].chunks(7) {
                    batches.push(EventBatch {
                        room: item.room.clone(),
                        events: chunk.to_vec(),
                    });
                }
            }
        }
    }
    // Acks of more than two rooms come in several frames, as a broker
    // sends one too large for a frame (protocol 7.3.2), so that every SDK
    // test against the mock covers the SDK's joining of them.
    if results.is_empty() {
        tx.send(Frame::request(
            rid,
            SubscribeAck {
                results: Vec::new(),
            },
        ))
        .unwrap();
    }
    for part in results.chunks(2) {
        let results = part.to_vec();
        tx.send(Frame::request(rid, SubscribeAck { results }))
            .unwrap();
    }
    for b in batches {
        tx.send(Frame::new(b).with_flags(flags::REPLAY)).unwrap();
    }
}
