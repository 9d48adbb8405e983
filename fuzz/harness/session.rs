//! The session fuzz harness: drives the broker's session state machine
//! with scripts of operations over up to three concurrent connections, and
//! checks what the broker does after every script.
//!
//! Shared by the fuzz target (`fuzz/fuzz_targets/session.rs`) and the
//! regression test (`broker/tests/session_fuzz.rs`), which include this
//! file with `#[path = ...] mod harness;`. Its only entry point is [`run`].
//!
//! One broker is started on first use and kept for the whole process: on
//! `MemoryLog`, dev authentication, small limits, on a current-thread
//! runtime that the harness owns. Connections are served through
//! `BrokerHandle::serve_stream` on `tokio::io::duplex` pipes (no sockets).
//! Every wait is bounded, so no input can hang the fuzzer.
//!
//! Invariants (a panic names the one broken):
//! 1. `decode`: everything the broker sends decodes as whole frames with
//!    the codec's decoder and the broker's `max_frame_len`; its streams do
//!    not end inside a frame (the client always reads).
//! 2. `close`: after an `Error` whose code closes the connection the next
//!    frame is `Goodbye`; nothing follows a `Goodbye`, and the stream ends
//!    within a bounded time.
//! 3. `request-id`: every frame carries 0 or a request id that the client
//!    used (read from the byte stream it sent, as the broker parses it).
//! 4. `canary`: after the script a fresh connection can Hello, publish and
//!    get a `PublishAck`, and read the message back from history.
//! 5. `leak`: once the script's connections are gone, the broker's
//!    connection count returns to its value before the script and its
//!    queued bytes to 0, within a bounded time; a client that closes its
//!    side sees the broker close its side too.
//! 6. `panic`: no task of the broker panicked and the broker did not fail.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arbitrary::Unstructured;
use bytes::{Bytes, BytesMut};
use confab_broker::config::{AuthMode, Config};
use confab_broker::storage::{Durability, MemoryLog, RoomLog};
use confab_broker::{Broker, BrokerHandle};
use confab_codec::{
    flags, Body, CodecError, CreateRoom, DeviceId, Direction, ErrorCode, Frame, GetMessageStatus,
    GetPresence, GetRoomInfo, Goodbye, Header, Hello, HistoryRequest, InviteMember, JoinPolicy,
    JoinRoom, LeaveRoom, ListRooms, MessageKind, Ping, PresenceStatus, Publish, Receipt,
    ReceiptKind, RefreshToken, RegisterPush, RemoveMember, Role, RoomId, RoomKind, RoomMeta, Seq,
    SetPresence, SetRole, StartAt, Subscribe, SubscribeItem, Typing, Unsubscribe, UpdateRoom,
    UserId, WatchPresence, HEADER_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Largest frame body the broker accepts and sends (its minimum).
pub(crate) const MAX_FRAME_LEN: u32 = 256 << 10;
/// Operations per script at most.
const MAX_OPS: usize = 64;
/// Connections per script at most.
const SLOTS: usize = 3;
/// Bytes a pipe buffers in each direction.
const PIPE: usize = 64 << 10;
/// How long one write may wait for the broker to read.
const WRITE_WAIT: Duration = Duration::from_millis(50);
/// How long the broker has to close a stream, answer the canary, or let
/// go of a session. Generous: reached only when something is wrong.
const BOUND: Duration = Duration::from_secs(5);

const ROOMS: [&str; 4] = ["r0", "r1", "r2", "r3"];
const USERS: [&str; 3] = ["alice", "bob", "carol"];
const DEVICES: [&str; 2] = ["d1", "d2"];
const CANARY_ROOM: &str = "canary-room";

/// The broker, its runtime and the canary's message counter.
struct Harness {
    rt: Runtime,
    broker: BrokerHandle,
    canary_msg: AtomicU64,
    /// One script at a time: the connection count is compared before and
    /// after.
    lock: Mutex<()>,
}

/// Set by the panic hook: a panic in a broker task is caught by tokio and
/// would otherwise go unnoticed.
static PANICKED: AtomicBool = AtomicBool::new(false);

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            previous(info);
        }));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let log: Arc<dyn RoomLog> = Arc::new(MemoryLog::new());
        let broker = rt
            .block_on(Broker::builder(config()).storage(log).start())
            .expect("the broker starts");
        Harness {
            rt,
            broker,
            canary_msg: AtomicU64::new(0),
            lock: Mutex::new(()),
        }
    })
}

/// Small limits, so that scripts reach them; admission open enough for
/// the fuzzer; no per-user rate limits or login backoff, which would carry
/// state from one script to the next.
#[allow(clippy::field_reassign_with_default)] // one limit a line reads best
fn config() -> Config {
    let mut c = Config::default();
    c.data_dir = std::env::temp_dir().join("confab-session-fuzz-unused");
    c.listen.tcp = "127.0.0.1:0".parse().expect("an address");
    c.listen.quic = None;
    c.metrics.listen = None;
    c.auth.mode = AuthMode::Dev;
    c.auth.login_backoff.enabled = false;
    c.storage.durability = Durability::None;
    c.log.level = "off".into();
    c.limits.max_frame_len = MAX_FRAME_LEN;
    c.limits.max_payload_len = 4 << 10;
    c.limits.max_rooms_per_connection = 3;
    c.limits.handshake_timeout_ms = 100;
    c.limits.heartbeat_ms = 100;
    c.limits.idle_timeout_ms = 200;
    c.limits.max_inflight_publishes = 8;
    c.limits.max_pending_requests = 4;
    c.delivery.queue_capacity = 16;
    c.delivery.slow_consumer_timeout_ms = 100;
    c.delivery.write_batch_bytes = 4 << 10;
    c.delivery.catchup_batch = 8;
    c.rooms.max_members = 4;
    c.rooms.max_rooms_per_user = 3;
    c.rooms.typing_window_ms = 10;
    c.rooms.typing_ttl_ms = 50;
    c.rate_limits.enabled = false;
    c.admission.max_handshakes = 1 << 16;
    c.admission.max_handshakes_per_ip = 0;
    c.admission.max_connections_per_ip = 0;
    c.admission.connects_per_ip_per_sec = 0;
    // The log stays small over hours of scripts.
    c.retention.max_count = 32;
    c.retention.sweep_interval_ms = 100;
    c
}

/// Runs one script, then checks every invariant.
///
/// # Panics
/// With the name of the invariant an input broke.
pub(crate) fn run(data: &[u8]) {
    let h = harness();
    let _one = h.lock.lock().unwrap_or_else(|e| e.into_inner());
    PANICKED.store(false, Ordering::SeqCst);
    h.rt.block_on(script(h, data));
}

/// What the broker sent on one connection, as its reader saw it.
#[derive(Default)]
struct Received {
    frames: Vec<Frame>,
    /// The broker's bytes did not decode.
    error: Option<CodecError>,
    /// The stream ended (end of file).
    ended: bool,
    /// Bytes of an incomplete frame left when the stream ended.
    partial: usize,
}

struct Conn {
    wr: Option<WriteHalf<DuplexStream>>,
    /// Every byte written, as the broker reads them.
    sent: Vec<u8>,
    next_id: u32,
    /// The write side stopped taking bytes (the broker stopped reading).
    stuck: bool,
    received: Arc<Mutex<Received>>,
    reader: JoinHandle<()>,
    /// Dropped by the script: the broker's stream is no longer read.
    dropped: bool,
}

impl Conn {
    fn open(broker: &BrokerHandle, n: u32) -> Conn {
        let (client, server) = tokio::io::duplex(PIPE);
        let octet = u8::try_from(n % 251).unwrap_or(0);
        let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, octet)), 40_000);
        broker.serve_stream(server, peer);
        let (rd, wr) = tokio::io::split(client);
        let received = Arc::new(Mutex::new(Received::default()));
        let reader = tokio::spawn(read_all(rd, received.clone()));
        Conn {
            wr: Some(wr),
            sent: Vec::new(),
            next_id: 1,
            stuck: false,
            received,
            reader,
            dropped: false,
        }
    }

    fn fresh_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Writes what the broker will take within [`WRITE_WAIT`]; records
    /// exactly the bytes written.
    async fn write(&mut self, bytes: &[u8]) {
        let Some(wr) = self.wr.as_mut() else { return };
        if self.stuck {
            return;
        }
        let mut off = 0;
        while off < bytes.len() {
            match timeout(WRITE_WAIT, wr.write(&bytes[off..])).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    self.sent.extend_from_slice(&bytes[off..off + n]);
                    off += n;
                }
                Err(_) => {
                    self.stuck = true;
                    break;
                }
            }
        }
    }

    async fn send(&mut self, frame: Frame) {
        let mut buf = BytesMut::new();
        if frame.encode(&mut buf).is_ok() {
            self.write(&buf).await;
        }
    }

    async fn half_close(&mut self) {
        if let Some(mut wr) = self.wr.take() {
            let _ = timeout(WRITE_WAIT, wr.shutdown()).await;
        }
    }
}

/// Reads and decodes the broker's stream until it ends or fails to decode.
async fn read_all(mut rd: ReadHalf<DuplexStream>, into: Arc<Mutex<Received>>) {
    let mut buf = BytesMut::with_capacity(8 << 10);
    loop {
        loop {
            match Frame::decode(&mut buf, MAX_FRAME_LEN) {
                Ok(Some(frame)) => lock(&into).frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    lock(&into).error = Some(e);
                    return;
                }
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                let mut r = lock(&into);
                r.ended = true;
                r.partial = buf.len();
                return;
            }
            Ok(_) => {}
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fuzz input, read a byte at a time (past its end: zeros).
struct Input<'a>(Unstructured<'a>);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        self.0.arbitrary::<u8>().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }
    fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = usize::from(self.byte()).min(max);
        let b = self.0.bytes(n.min(self.0.len())).unwrap_or(&[]);
        b.to_vec()
    }
    /// One of [`ROOMS`]; never the canary's, which a script could make
    /// invite-only.
    fn room(&mut self) -> RoomId {
        RoomId::new(ROOMS[self.below(ROOMS.len())]).expect("a valid room id")
    }
    fn user(&mut self) -> UserId {
        UserId::new(USERS[self.below(USERS.len())]).expect("a valid user id")
    }
    fn seq(&mut self) -> Seq {
        // Small sequences mostly, sometimes the extremes.
        match self.byte() {
            250 => Seq(0),
            251..=255 => Seq(u64::MAX - u64::from(self.byte())),
            b => Seq(u64::from(b % 40)),
        }
    }
    fn start(&mut self) -> StartAt {
        if self.bool() {
            StartAt::Live
        } else {
            StartAt::From(self.seq())
        }
    }
    fn opt_seq(&mut self) -> Option<Seq> {
        self.bool().then(|| self.seq())
    }
    fn meta(&mut self) -> RoomMeta {
        let name = String::from_utf8_lossy(&self.bytes(16)).into_owned();
        RoomMeta {
            name,
            topic: String::new(),
            avatar_url: String::new(),
        }
    }
}

/// One script, then the checks.
async fn script(h: &Harness, data: &[u8]) {
    let broker = &h.broker;
    let before = broker.stats().connections;
    let mut input = Input(Unstructured::new(data));
    let mut slots: [Option<Conn>; SLOTS] = [None, None, None];
    let mut retired: Vec<Conn> = Vec::new();
    let mut opened = 0u32;

    for _ in 0..MAX_OPS {
        if input.0.is_empty() {
            break;
        }
        let op = input.byte();
        let slot = usize::from(op >> 5) % SLOTS;
        // Opening is its own operation; every other one needs a connection
        // and opens one (with a Hello) if the slot is empty, so that most
        // inputs get past the handshake.
        if slots[slot].is_none() && !matches!(op % 32, 0 | 2) {
            opened += 1;
            let mut c = Conn::open(broker, opened);
            hello(&mut c, &mut input, true).await;
            slots[slot] = Some(c);
        }
        match op % 32 {
            0 => {
                opened += 1;
                if let Some(old) = slots[slot].replace(Conn::open(broker, opened)) {
                    retired.push(old);
                }
            }
            1 => {
                if let Some(c) = slots[slot].as_mut() {
                    hello(c, &mut input, false).await;
                }
            }
            2 => {
                // Wait for the broker to answer: 0 to 3 ms.
                let ms = u64::from(input.byte() % 4);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            3 => {
                if let Some(c) = slots[slot].as_mut() {
                    c.half_close().await;
                }
            }
            4 => {
                if let Some(mut c) = slots[slot].take() {
                    c.reader.abort();
                    c.wr = None;
                    c.dropped = true;
                    retired.push(c);
                }
            }
            5 => {
                let bytes = input.bytes(64);
                if let Some(c) = slots[slot].as_mut() {
                    c.write(&bytes).await;
                }
            }
            6 => {
                // A header with fuzz-chosen fields, then some body bytes.
                let len = match input.byte() % 4 {
                    0 => u32::from(input.byte()),
                    1 => MAX_FRAME_LEN + u32::from(input.byte()),
                    2 => confab_codec::HELLO_LEN_FLOOR + u32::from(input.byte()),
                    _ => input.u32(),
                };
                let header = Header {
                    len,
                    frame_type: input.byte(),
                    flags: input.byte(),
                    request_id: u32::from(input.byte()),
                };
                let mut bytes = Vec::with_capacity(HEADER_LEN + 64);
                header.put(&mut bytes);
                bytes.extend_from_slice(&input.bytes(64));
                if let Some(c) = slots[slot].as_mut() {
                    c.write(&bytes).await;
                }
            }
            request => {
                if let Some(c) = slots[slot].as_mut() {
                    let (rid, body_flags, frame) = build_request(c, request, &mut input);
                    let mut frame = Frame::request(rid, frame);
                    frame.flags = body_flags;
                    c.send(frame).await;
                }
            }
        }
    }

    let mut all: Vec<Conn> = retired;
    all.extend(slots.into_iter().flatten());
    finish(&mut all).await;
    for c in &all {
        check_stream(c);
    }
    drop(all);
    settle(broker, before, "the script's connections").await;
    canary(h).await;
    settle(broker, before, "the canary's connection").await;
    if PANICKED.load(Ordering::SeqCst) {
        panic!("invariant `panic`: a task panicked while serving this input");
    }
    if let Some(failure) = broker.failure() {
        panic!("invariant `panic`: the broker failed: {failure}");
    }
}

/// Sends a `Hello`: well-formed with `valid`, otherwise with fuzz-chosen
/// versions, token, request id and resume list.
async fn hello(c: &mut Conn, input: &mut Input<'_>, valid: bool) {
    let user = USERS[input.below(USERS.len())];
    let device = DEVICES[input.below(DEVICES.len())];
    let (min_version, max_version, token, rid) = if valid {
        (1, 1, format!("{user}:{device}"), c.fresh_id())
    } else {
        let token = match input.byte() % 4 {
            0 => format!("{user}:{device}"),
            1 => user.to_string(),
            2 => format!("{user}:other"),
            _ => String::from_utf8_lossy(&input.bytes(24)).into_owned(),
        };
        let rid = if input.bool() {
            c.fresh_id()
        } else {
            u32::from(input.byte() % 4)
        };
        (
            u16::from(input.byte() % 3),
            u16::from(input.byte() % 3),
            token,
            rid,
        )
    };
    let mut resume = Vec::new();
    for _ in 0..input.below(3) {
        resume.push(SubscribeItem {
            room: input.room(),
            start: input.start(),
        });
    }
    let device = DeviceId::new(device).expect("a valid device id");
    c.send(Frame::request(
        rid,
        Hello {
            min_version,
            max_version,
            token,
            device,
            client_name: "fuzz".into(),
            resume,
            features: Default::default(),
        },
    ))
    .await;
}

/// A client request of kind `op` (7..32) with fuzz-chosen fields: its
/// request id, flags and body.
fn build_request(c: &mut Conn, op: u8, input: &mut Input<'_>) -> (u32, u8, Body) {
    // Mostly a fresh id; sometimes 0 or a small reused one.
    let rid = match input.byte() % 8 {
        0 => 0,
        1 => u32::from(input.byte() % 4),
        _ => c.fresh_id(),
    };
    let mut fl = 0;
    let body: Body = match op {
        7..=9 => {
            // One publish in four without a reply.
            if input.byte() & 3 == 0 {
                fl = flags::NO_REPLY;
            }
            let kind = match input.byte() % 6 {
                0 => MessageKind::EDIT,
                1 => MessageKind::DELETE,
                2 => MessageKind::REACTION,
                3 => MessageKind(input.byte()),
                _ => MessageKind::MESSAGE,
            };
            let len = match input.byte() {
                255 => 4 << 10 | 1,
                254 => 4 << 10,
                b => usize::from(b),
            };
            Publish {
                room: input.room(),
                client_msg_id: u64::from(input.byte() % 16),
                kind,
                refers_to: input.opt_seq(),
                thread: input.opt_seq(),
                payload: Bytes::from(vec![b'x'; len]),
            }
            .into()
        }
        10 | 11 => {
            let mut items = Vec::new();
            for _ in 0..input.below(5) {
                items.push(SubscribeItem {
                    room: input.room(),
                    start: input.start(),
                });
            }
            Subscribe { items }.into()
        }
        12 => {
            let mut rooms = Vec::new();
            for _ in 0..input.below(4) {
                rooms.push(input.room());
            }
            Unsubscribe { rooms }.into()
        }
        13 => HistoryRequest {
            room: input.room(),
            direction: if input.bool() {
                Direction::Before
            } else {
                Direction::After
            },
            anchor: input.seq(),
            limit: u16::from(input.byte() % 64),
        }
        .into(),
        14 => Receipt {
            room: input.room(),
            kind: if input.bool() {
                ReceiptKind::Read
            } else {
                ReceiptKind::Delivered
            },
            seq: input.seq(),
        }
        .into(),
        15 => GetMessageStatus {
            room: input.room(),
            seq: input.seq(),
        }
        .into(),
        16 => Typing {
            room: input.room(),
            active: input.bool(),
        }
        .into(),
        17 => SetPresence {
            status: match input.byte() % 3 {
                0 => PresenceStatus::Online,
                1 => PresenceStatus::Away,
                _ => PresenceStatus::Offline,
            },
        }
        .into(),
        18 => WatchPresence {
            enabled: input.bool(),
        }
        .into(),
        19 => {
            let mut users = Vec::new();
            for _ in 0..input.below(4) {
                users.push(input.user());
            }
            GetPresence { users }.into()
        }
        20 => {
            let direct = input.bool();
            let mut invite = Vec::new();
            for _ in 0..input.below(3) {
                invite.push(input.user());
            }
            CreateRoom {
                kind: if direct {
                    RoomKind::Direct
                } else {
                    RoomKind::Group
                },
                room: input.bool().then(|| input.room()),
                peer: input.bool().then(|| input.user()),
                policy: if input.bool() {
                    JoinPolicy::Open
                } else {
                    JoinPolicy::InviteOnly
                },
                meta: input.meta(),
                invite,
            }
            .into()
        }
        21 => JoinRoom { room: input.room() }.into(),
        22 => LeaveRoom { room: input.room() }.into(),
        23 => InviteMember {
            room: input.room(),
            user: input.user(),
        }
        .into(),
        24 => RemoveMember {
            room: input.room(),
            user: input.user(),
        }
        .into(),
        25 => GetRoomInfo { room: input.room() }.into(),
        26 => UpdateRoom {
            room: input.room(),
            meta: input.meta(),
        }
        .into(),
        27 => SetRole {
            room: input.room(),
            user: input.user(),
            role: match input.byte() % 4 {
                0 => Role::Owner,
                1 => Role::Admin,
                2 => Role::Member,
                _ => Role::Invited,
            },
        }
        .into(),
        28 => ListRooms {
            after: input.bool().then(|| input.room()),
            limit: u16::from(input.byte()),
        }
        .into(),
        29 => {
            let user = USERS[input.below(USERS.len())];
            let token = match input.byte() % 3 {
                0 => user.to_string(),
                1 => format!("{user}:{}", DEVICES[input.below(DEVICES.len())]),
                _ => String::from_utf8_lossy(&input.bytes(24)).into_owned(),
            };
            RefreshToken { token }.into()
        }
        30 => match input.byte() % 4 {
            0 => RegisterPush {
                provider: "fcm".into(),
                token: "t".into(),
            }
            .into(),
            1 => Goodbye {
                code: ErrorCode::Normal,
                message: String::new(),
            }
            .into(),
            // Frames only the server sends: a protocol violation.
            2 => confab_codec::Ack {}.into(),
            _ => confab_codec::Pong {
                nonce: u64::from(input.byte()),
            }
            .into(),
        },
        _ => Ping {
            nonce: u64::from(input.byte()),
        }
        .into(),
    };
    (rid, fl, body)
}

/// Ends the script: first lets every connection that the broker is closing
/// end by itself, then closes the client side of the others and waits for
/// the broker to close its side.
async fn finish(conns: &mut [Conn]) {
    let deadline = tokio::time::Instant::now() + BOUND;
    for c in conns.iter_mut().filter(|c| !c.dropped) {
        if closing(&lock(&c.received)) {
            wait_end(c, deadline, "close").await;
        }
    }
    for c in conns.iter_mut().filter(|c| !c.dropped) {
        c.half_close().await;
    }
    for c in conns.iter_mut().filter(|c| !c.dropped) {
        wait_end(c, deadline, "leak").await;
    }
}

/// Whether the broker said it closes the connection.
fn closing(r: &Received) -> bool {
    r.frames.iter().any(|f| {
        matches!(&f.body, Body::Goodbye(_)) || matches!(&f.body, Body::Error(e) if closes(e.code))
    })
}

/// Codes whose `Error` is followed by `Goodbye` and a close (protocol
/// section 10).
fn closes(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::MalformedFrame
            | ErrorCode::FrameTooLarge
            | ErrorCode::UnsupportedVersion
            | ErrorCode::UnknownFrameType
            | ErrorCode::ProtocolViolation
            | ErrorCode::Unauthenticated
            | ErrorCode::TokenExpired
            | ErrorCode::Timeout
            | ErrorCode::ShuttingDown
            | ErrorCode::ServerBusy
            | ErrorCode::SessionReplaced
            | ErrorCode::SlowConsumer
    )
}

async fn wait_end(c: &mut Conn, deadline: tokio::time::Instant, invariant: &str) {
    if c.reader.is_finished() {
        return;
    }
    if tokio::time::timeout_at(deadline, &mut c.reader)
        .await
        .is_err()
    {
        let r = lock(&c.received);
        let last: Vec<&str> = r
            .frames
            .iter()
            .rev()
            .take(4)
            .map(|f| f.body.name())
            .collect();
        panic!(
            "invariant `{invariant}`: the broker's stream did not end within {BOUND:?} \
             (client side {}; last frames, newest first: {last:?})",
            if c.wr.is_some() { "open" } else { "closed" }
        );
    }
}

/// Invariants `decode`, `close` and `request-id` on one connection.
fn check_stream(c: &Conn) {
    let r = lock(&c.received);
    if let Some(e) = &r.error {
        panic!("invariant `decode`: the broker sent bytes that do not decode: {e}");
    }
    if r.ended && r.partial > 0 {
        panic!(
            "invariant `decode`: the broker's stream ended inside a frame ({} bytes left)",
            r.partial
        );
    }
    for (i, f) in r.frames.iter().enumerate() {
        let next = r.frames.get(i + 1);
        match &f.body {
            Body::Goodbye(_) => {
                if let Some(n) = next {
                    panic!("invariant `close`: {} after Goodbye", n.body.name());
                }
            }
            Body::Error(e) if closes(e.code) => match next.map(|n| &n.body) {
                Some(Body::Goodbye(g)) if g.code == e.code => {}
                None if c.dropped => {}
                other => panic!(
                    "invariant `close`: Error {:?} followed by {:?}, not Goodbye with its code",
                    e.code,
                    other.map(|b| b.name())
                ),
            },
            _ => {}
        }
    }
    let used = request_ids(&c.sent);
    for f in &r.frames {
        if f.request_id != 0 && !used.contains(&f.request_id) {
            panic!(
                "invariant `request-id`: {} carries request id {} that the client never used \
                 (used: {used:?})",
                f.body.name(),
                f.request_id
            );
        }
    }
}

/// The request ids of the headers in `sent`, walked as the broker frames
/// it.
fn request_ids(sent: &[u8]) -> HashSet<u32> {
    let mut ids = HashSet::new();
    let mut at = 0usize;
    while let Some(h) = sent.get(at..).and_then(Header::peek) {
        ids.insert(h.request_id);
        let Some(next) = usize::try_from(h.len)
            .ok()
            .and_then(|l| at.checked_add(HEADER_LEN)?.checked_add(l))
        else {
            break;
        };
        at = next;
    }
    ids
}

/// Invariant `leak`: the connection count back to `before`, queued bytes
/// to 0.
async fn settle(broker: &BrokerHandle, before: i64, whose: &str) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let s = broker.stats();
        if s.connections == before && s.queued_bytes == 0 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "invariant `leak`: after {whose} closed, {} connections (before: {before}) \
                 and {} queued bytes remain after {BOUND:?}",
                s.connections, s.queued_bytes
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Invariant `canary`: a fresh client can still Hello, publish and read
/// its message back.
async fn canary(h: &Harness) {
    let n = h.canary_msg.fetch_add(1, Ordering::Relaxed) + 1;
    // 10.0.0.250: no script connection has that address.
    let mut c = Conn::open(&h.broker, 250);
    let room = RoomId::new(CANARY_ROOM).expect("a valid room id");
    let device = DeviceId::new("c1").expect("a valid device id");
    c.send(Frame::request(
        1,
        Hello {
            min_version: 1,
            max_version: 1,
            token: "canary:c1".into(),
            device,
            client_name: "canary".into(),
            resume: Vec::new(),
            features: Default::default(),
        },
    ))
    .await;
    expect(&c, "Welcome", |f| {
        matches!(f.body, Body::Welcome(_)) && f.request_id == 1
    })
    .await;
    let payload = Bytes::from(format!("canary {n}"));
    c.send(Frame::request(
        2,
        Publish {
            room: room.clone(),
            client_msg_id: n,
            kind: MessageKind::MESSAGE,
            refers_to: None,
            thread: None,
            payload: payload.clone(),
        },
    ))
    .await;
    let ack = expect(&c, "PublishAck", |f| {
        matches!(f.body, Body::PublishAck(_)) && f.request_id == 2
    })
    .await;
    let Body::PublishAck(ack) = ack.body else {
        unreachable!("matched above")
    };
    c.send(Frame::request(
        3,
        HistoryRequest {
            room,
            direction: Direction::Before,
            anchor: Seq(ack.seq.0.saturating_add(1)),
            limit: 1,
        },
    ))
    .await;
    let page = expect(&c, "HistoryPage", |f| {
        matches!(f.body, Body::HistoryPage(_)) && f.request_id == 3
    })
    .await;
    let Body::HistoryPage(page) = page.body else {
        unreachable!("matched above")
    };
    let found = page
        .events
        .iter()
        .any(|e| e.seq == ack.seq && e.payload == payload);
    if !found {
        panic!(
            "invariant `canary`: history does not hold the canary's message {:?}",
            ack.seq
        );
    }
    c.send(Frame::new(Goodbye {
        code: ErrorCode::Normal,
        message: String::new(),
    }))
    .await;
    c.half_close().await;
    let deadline = tokio::time::Instant::now() + BOUND;
    wait_end(&mut c, deadline, "canary").await;
    check_stream(&c);
}

/// Waits for a frame that `want` accepts; panics (invariant `canary`) if
/// an error comes first, the stream ends or [`BOUND`] passes.
async fn expect(c: &Conn, what: &str, want: impl Fn(&Frame) -> bool) -> Frame {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        {
            let r = lock(&c.received);
            if let Some(f) = r.frames.iter().find(|f| want(f)) {
                return f.clone();
            }
            if let Some(f) = r
                .frames
                .iter()
                .find(|f| matches!(f.body, Body::Error(_) | Body::Goodbye(_)))
            {
                panic!("invariant `canary`: waiting for {what}, got {f:?}");
            }
            if r.ended {
                panic!("invariant `canary`: the stream ended before {what}");
            }
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("invariant `canary`: no {what} within {BOUND:?}");
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}
