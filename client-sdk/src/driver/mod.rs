//! The connection task: the one task that owns the socket.
//!
//! It runs for the client's lifetime: connect (with backoff), handshake
//! (resuming every room from its last delivered sequence + 1), then a
//! session loop that multiplexes the socket, the application's commands,
//! the heartbeat clock and subscription control messages, until the
//! connection ends; then again. Per-room ordering decisions are delegated to
//! the pure [`RoomSync`](crate::sync::RoomSync); this module only performs
//! its actions.
//!
//! Nothing in the session loop waits on the application or on the socket's
//! write side: frames go to a writer task through a small queue, and events
//! go to subscriptions with `try_send` (a full subscription is paused, see
//! [`Subscription`](crate::Subscription)). So a slow reader, or a broker
//! that stops reading, never keeps the loop from reading the socket.

mod command;
mod conn;
mod dispatch;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use confab_codec::{
    Body, ErrorCode, EventRecord, Frame, Goodbye, Hello, Publish, PublishAck, Receipt, ReceiptKind,
    RoomId, Seq, SubscribeItem, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{broadcast, mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::DropGuard;
use tracing::{debug, info, warn};

pub(crate) use self::command::{Command, Outgoing, Parts, ReqMode, SubCtl, SubscribeCmd};
use self::conn::{Conn, OpenError};
use crate::backoff::Backoff;
use crate::config::ClientConfig;
use crate::error::{is_fatal_code, ClientError, DisconnectReason};
use crate::events::{ConnectionEvent, ConnectionState, RoomEvent, Signal};
use crate::subscription::EndSlot;
use crate::sync::RoomSync;

/// The largest `Hello` body the client sends: the smallest limit a server
/// may set on it (protocol 3.4). Rooms whose resume items do not fit are
/// subscribed right after `Welcome`, so a client with many rooms, or long
/// room ids, or a long token, is never refused for its `Hello`'s size.
const HELLO_BUDGET: usize = confab_codec::HELLO_LEN_FLOOR as usize;

/// Runs the connection task to its end.
pub(crate) async fn run(parts: Parts) {
    Driver::new(parts).run().await;
}

/// Where a room's subscription stands on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// Not subscribed on this connection.
    Idle,
    /// Subscribe sent, no answer yet.
    Pending,
    /// Subscribed.
    Active,
}

/// A subscribed room.
struct Room {
    /// Distinguishes successive subscriptions of the same room.
    id: u64,
    sync: RoomSync<EventRecord>,
    tx: mpsc::Sender<RoomEvent>,
    end: Arc<EndSlot>,
    wire: Wire,
    /// QUIC: events (and gaps) that arrived, on their event stream, before
    /// the `SubscribeAck` of the subscription in flight (protocol section
    /// 2.1); applied right after it. At most `max_out_of_order`.
    held: Vec<dispatch::Held>,
    /// Ranges that will never be delivered, reported with the next event
    /// handed to the application (`RoomEvent::gaps`).
    gaps: Vec<crate::events::Gap>,
    /// The `subscribe` call waiting for the broker's first answer.
    ack: Option<oneshot::Sender<Result<(), ClientError>>>,
    /// Stops the task waiting for a paused subscription to drain.
    _drain_watch: Option<DropGuard>,
}

/// A publish not yet acknowledged.
struct PendingPub {
    publish: Publish,
    reply: oneshot::Sender<Result<PublishAck, ClientError>>,
    _permit: Option<OwnedSemaphorePermit>,
    /// Sent on the current connection and not answered yet.
    on_wire: bool,
    /// Times the broker refused it with `RateLimited` when it was the only
    /// publish on the wire (refusals of a burst are the SDK's own doing and
    /// not charged: every pause lets at least one publish through).
    rate_limited: u32,
    /// It was the only publish on the wire when last sent.
    sent_alone: bool,
    /// Times it was sent.
    sends: u32,
}

/// A request waiting for a connection.
struct Deferred {
    body: Body,
    mode: ReqMode,
    reply: oneshot::Sender<Result<Body, ClientError>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

enum SessionEnd {
    /// The application closed the client.
    Stop,
    /// The connection was lost.
    Lost(DisconnectReason),
}

/// One thing that happened during a session.
enum Input {
    Frame(Option<Result<Frame, ClientError>>),
    /// QUIC: every event stream ended (the connection is closing).
    EventsEnded,
    Pushed(bool),
    WriterDone(String),
    Timer,
    Command(Option<Command>),
    Ctl(SubCtl),
}

enum Attempt {
    Connected,
    Failed(OpenError),
    Stop,
}

struct Driver {
    config: Arc<ClientConfig>,
    dialer: Arc<crate::transport::Dialer>,
    /// The endpoint of the next (or current) connection: an index into
    /// `dialer`, moved on by every failed attempt and lost connection.
    endpoint: usize,
    cmds: mpsc::Receiver<Command>,
    cmds_open: bool,
    ctl: mpsc::UnboundedReceiver<SubCtl>,
    ctl_tx: mpsc::UnboundedSender<SubCtl>,
    permits: Arc<Semaphore>,
    conn: Option<Conn>,
    rooms: HashMap<RoomId, Room>,
    /// Unacknowledged publishes in the order they were queued.
    publishes: BTreeMap<u64, PendingPub>,
    next_order: u64,
    deferred: VecDeque<Deferred>,
    /// Receipts to send on the next connection: made while offline, or
    /// not known to have been read on a lost connection. The furthest per
    /// room and marker.
    receipts: HashMap<(RoomId, ReceiptKind), Seq>,
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// The token for the next `Hello` (replaced by `refresh_token`).
    token: String,
    /// After a `RateLimited` or `StorageFull` publish: no publish is sent
    /// before this.
    publish_paused_until: Option<Instant>,
    /// Delays between resends of publishes refused with `StorageFull` or
    /// `Internal`: `backoff` without its attempt limit, reset by an
    /// acknowledgement.
    refused_publish: Backoff,
    /// After a subscription refused with a passing error (`Internal`, ...):
    /// when the rooms waiting for it are subscribed again.
    resubscribe_at: Option<Instant>,
    /// Delays between those attempts: `backoff` without its attempt limit,
    /// reset when the broker accepts a subscription.
    resubscribe: Backoff,
    /// Most publishes on the wire at once: unlimited normally; after a
    /// `RateLimited` refusal 1, doubling with every acknowledgement (a slow
    /// start, so that a long queue does not meet the limit all at once and
    /// look like a flood).
    publish_window: usize,
    /// Per-connection settings the broker forgets, applied on reconnect.
    presence: Option<confab_codec::PresenceStatus>,
    watching_presence: bool,
    events: broadcast::Sender<ConnectionEvent>,
    signals: broadcast::Sender<Signal>,
    state: watch::Sender<ConnectionState>,
    first_connect: Option<oneshot::Sender<Result<(), ClientError>>>,
    stopped: Arc<std::sync::OnceLock<ClientError>>,
    closing: Vec<oneshot::Sender<()>>,
    ever_connected: bool,
    next_rid: u32,
    rng: StdRng,
    /// The automatic inbox sync of the current connection, while its pages
    /// come in.
    inbox: Option<crate::InboxSync>,
}

/// Rooms asked for per page of the automatic inbox sync.
const INBOX_SYNC_PAGE: u16 = 500;

impl Driver {
    fn new(p: Parts) -> Self {
        Self {
            token: p.config.token.clone(),
            publish_paused_until: None,
            publish_window: usize::MAX,
            refused_publish: Backoff::new(crate::backoff::BackoffConfig {
                max_attempts: None,
                ..p.config.backoff.clone()
            }),
            resubscribe_at: None,
            resubscribe: Backoff::new(crate::backoff::BackoffConfig {
                max_attempts: None,
                ..p.config.backoff.clone()
            }),
            config: p.config,
            dialer: p.dialer,
            endpoint: 0,
            cmds: p.cmds,
            cmds_open: true,
            ctl: p.ctl,
            ctl_tx: p.ctl_tx,
            permits: p.permits,
            conn: None,
            rooms: HashMap::new(),
            // What an earlier run left in the outbox store goes first. It
            // was probably sent before: a duplicate acknowledgement of its
            // first send here is no surprise (`sends` 1).
            next_order: p.restored.len() as u64,
            publishes: p
                .restored
                .into_iter()
                .enumerate()
                .map(|(order, o)| {
                    (
                        order as u64,
                        PendingPub {
                            publish: o.publish,
                            reply: o.reply,
                            _permit: o.permit,
                            on_wire: false,
                            rate_limited: 0,
                            sent_alone: false,
                            sends: 1,
                        },
                    )
                })
                .collect(),
            deferred: VecDeque::new(),
            inbox: None,
            receipts: HashMap::new(),
            flush_waiters: Vec::new(),
            presence: None,
            watching_presence: false,
            events: p.events,
            signals: p.signals,
            state: p.state,
            first_connect: p.first_connect,
            stopped: p.stopped,
            closing: Vec::new(),
            ever_connected: false,
            next_rid: 0,
            rng: StdRng::from_entropy(),
        }
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new(self.config.backoff.clone());
        let mut delay = Duration::ZERO;
        // A wait the broker asked for when it refused the last attempt.
        let mut not_before = Duration::ZERO;
        let fatal: Option<ClientError> = loop {
            if !delay.is_zero() && self.idle(delay).await == Flow::Stop {
                break None;
            }
            if self.ever_connected {
                self.set_state(ConnectionState::Reconnecting);
            }
            self.emit(ConnectionEvent::Connecting {
                attempt: backoff.failures().saturating_add(1),
                endpoint: self.dialer.endpoint(self.endpoint).clone(),
            });
            match self.attempt().await {
                Attempt::Stop => break None,
                Attempt::Connected => {
                    backoff.reset();
                    match self.session().await {
                        SessionEnd::Stop => {
                            self.close_conn().await;
                            break None;
                        }
                        SessionEnd::Lost(reason) => {
                            let fatal = match &reason {
                                DisconnectReason::Goodbye { code, message }
                                    if is_fatal_code(*code) =>
                                {
                                    Some(ClientError::Fatal {
                                        code: *code,
                                        message: message.clone(),
                                    })
                                }
                                _ => None,
                            };
                            self.connection_lost(reason);
                            // The node may be gone: the next attempt goes
                            // to the next endpoint of the list.
                            self.next_endpoint();
                            if let Some(err) = fatal {
                                // Session replaced: another instance of this
                                // device took over; never fight it. Others:
                                // wait one backoff delay so a restart loop of
                                // the application cannot hammer the broker.
                                if err.code() != Some(ErrorCode::SessionReplaced) {
                                    let d = backoff.next_delay(&mut self.rng).unwrap_or_default();
                                    if self.idle(d).await == Flow::Stop {
                                        break None;
                                    }
                                }
                                break Some(err);
                            }
                        }
                    }
                }
                Attempt::Failed(OpenError::Refused { code, message, .. })
                    if is_fatal_code(code) =>
                {
                    let err = ClientError::Fatal {
                        code,
                        message: message.clone(),
                    };
                    self.emit(ConnectionEvent::Disconnected {
                        reason: DisconnectReason::Goodbye { code, message },
                    });
                    if self.first_connect.is_none() {
                        let d = backoff.next_delay(&mut self.rng).unwrap_or_default();
                        if self.idle(d).await == Flow::Stop {
                            break None;
                        }
                    }
                    break Some(err);
                }
                Attempt::Failed(failure) => {
                    let reason = match failure {
                        OpenError::Retry(reason) => reason,
                        OpenError::Refused {
                            code,
                            message,
                            retry_after,
                        } => {
                            // The broker said how long to stay away (its
                            // failed-login back-off): at least that long.
                            not_before = retry_after;
                            DisconnectReason::Goodbye { code, message }
                        }
                    };
                    debug!(%reason, endpoint = %self.dialer.endpoint(self.endpoint), "connection attempt failed");
                    let err = attempt_error(&reason);
                    self.emit(ConnectionEvent::Disconnected { reason });
                    self.next_endpoint();
                    if self.first_connect.is_some() && self.endpoint == 0 {
                        // `Client::connect` reports the failure of the
                        // first round (each endpoint tried once) instead
                        // of retrying.
                        break Some(err);
                    }
                }
            }
            match backoff.next_delay(&mut self.rng) {
                Some(d) => delay = d.max(std::mem::take(&mut not_before)),
                None => {
                    break Some(ClientError::ReconnectFailed {
                        attempts: backoff.failures(),
                    })
                }
            }
        };
        self.finish(fatal).await;
    }

    /// Moves to the next endpoint of the list (after the last, the first).
    fn next_endpoint(&mut self) {
        self.endpoint = (self.endpoint + 1) % self.dialer.len();
    }

    /// Serves commands until `delay` has passed.
    async fn idle(&mut self, delay: Duration) -> Flow {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Flow::Continue,
                flow = self.next_input() => {
                    if flow == Flow::Stop {
                        return Flow::Stop;
                    }
                }
            }
        }
    }

    /// Waits for one command or subscription message and handles it.
    /// Cancel-safe: the only await points are channel receives.
    async fn next_input(&mut self) -> Flow {
        tokio::select! {
            cmd = self.cmds.recv(), if self.cmds_open => match cmd {
                Some(cmd) => self.on_command(cmd),
                None => {
                    // Every handle and subscription is gone.
                    self.cmds_open = false;
                    Flow::Stop
                }
            },
            Some(ctl) = self.ctl.recv() => {
                self.on_ctl(ctl);
                Flow::Continue
            }
        }
    }

    /// One connection attempt, serving commands meanwhile.
    async fn attempt(&mut self) -> Attempt {
        let hello_rid = self.next_rid();
        let (hello, resumed) = self.hello();
        let (config, dialer) = (self.config.clone(), self.dialer.clone());
        let open = conn::open(&config, &dialer, self.endpoint, hello, hello_rid);
        tokio::pin!(open);
        loop {
            tokio::select! {
                opened = &mut open => {
                    return match opened {
                        Ok(opened) => {
                            let conn = Conn::start(&self.config, opened);
                            self.establish(conn, hello_rid, resumed);
                            Attempt::Connected
                        }
                        Err(e) => Attempt::Failed(e),
                    };
                }
                flow = self.next_input() => {
                    if flow == Flow::Stop {
                        return Attempt::Stop;
                    }
                }
            }
        }
    }

    /// Asks for one page of the automatic inbox sync, from the stored
    /// cursor.
    fn send_inbox_page(&mut self, after: Option<RoomId>) {
        let since = self.config.cursor_store.inbox_cursor();
        let rid = self.next_rid();
        if let Some(conn) = self.conn.as_mut() {
            conn.inflight.insert(rid, conn::Inflight::InboxSync);
            let body = confab_codec::SyncInbox {
                since,
                after,
                limit: INBOX_SYNC_PAGE,
            };
            conn.send(Frame::request(rid, body));
        }
    }

    /// A page of the automatic inbox sync came in: asks for the next one,
    /// or stores the cursor and hands the rooms to the application.
    fn on_inbox_page(&mut self, page: confab_codec::InboxPage) {
        let Some(acc) = self.inbox.as_mut() else {
            return;
        };
        // The first page's cursor (protocol 7.8.2).
        if acc.rooms.is_empty() && acc.cursor == 0 {
            acc.cursor = page.cursor.max(1);
        }
        let last = page.rooms.last().map(|r| r.room.clone());
        acc.rooms.extend(page.rooms);
        if page.has_more && last.is_some() {
            self.send_inbox_page(last);
            return;
        }
        if let Some(done) = self.inbox.take() {
            self.config.cursor_store.set_inbox_cursor(done.cursor);
            self.signal(Signal::Inbox(done));
        }
    }

    /// The `Hello`, resuming every room not paused from its position, as
    /// far as they fit in [`HELLO_BUDGET`].
    fn hello(&self) -> (Hello, Vec<(RoomId, u64)>) {
        let mut hello = Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            token: self.token.clone(),
            device: self.config.device.clone(),
            client_name: self.config.client_name.clone(),
            resume: Vec::new(),
            features: self.config.features(),
        };
        if self.config.inbox_sync {
            // The rooms are subscribed after the handshake, behind the
            // inbox sync (see `establish`).
            return (hello, Vec::new());
        }
        let candidates = self
            .rooms
            .iter()
            .filter(|(_, r)| !r.sync.is_paused())
            .map(|(room, r)| {
                let item = SubscribeItem {
                    room: room.clone(),
                    start: r.sync.start_at(),
                };
                (item, (room.clone(), r.id))
            });
        let ids = fill_resume(&mut hello, candidates);
        (hello, ids)
    }

    /// A connection is up: resume rooms, resend publishes and queued
    /// requests, restore per-connection settings.
    fn establish(&mut self, mut conn: Conn, hello_rid: u32, resumed: Vec<(RoomId, u64)>) {
        let welcome = conn.welcome.clone();
        let mut resumed_rooms = Vec::new();
        for (room, id) in &resumed {
            if let Some(r) = self.rooms.get_mut(room).filter(|r| r.id == *id) {
                r.wire = Wire::Pending;
                resumed_rooms.push(room.clone());
            }
        }
        if !resumed.is_empty() {
            conn.inflight
                .insert(hello_rid, conn::Inflight::Subscribe(resumed));
        }
        self.conn = Some(conn);

        // The inbox sync goes first: its reply arrives before the
        // subscriptions' acknowledgements and backlogs.
        self.inbox = None;
        if self.config.inbox_sync && welcome.version >= 2 {
            self.inbox = Some(crate::InboxSync {
                rooms: Vec::new(),
                cursor: 0,
            });
            self.send_inbox_page(None);
        }
        let idle: Vec<RoomId> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.wire == Wire::Idle && !r.sync.is_paused())
            .map(|(room, _)| room.clone())
            .collect();
        self.send_subscribe(idle);
        if let Some(status) = self.presence {
            self.send_internal(confab_codec::SetPresence { status }.into(), "SetPresence");
        }
        if self.watching_presence {
            self.send_internal(
                confab_codec::WatchPresence { enabled: true }.into(),
                "WatchPresence",
            );
        }
        let orders: Vec<u64> = self.publishes.keys().copied().collect();
        for order in orders {
            self.send_publish(order);
        }
        for d in std::mem::take(&mut self.deferred) {
            if !d.reply.is_closed() {
                self.send_request(d.body, d.mode, d.reply);
            }
        }
        let receipts: Vec<Receipt> = self
            .receipts
            .drain()
            .map(|((room, kind), seq)| Receipt { room, kind, seq })
            .collect();
        for receipt in receipts {
            self.send_receipt(receipt);
        }

        info!(user = %welcome.user, session_id = welcome.session_id, rooms = resumed_rooms.len(), publishes = self.publishes.len(), "connected");
        self.set_state(ConnectionState::Connected {
            user: welcome.user.clone(),
            session_id: welcome.session_id,
        });
        if self.ever_connected {
            self.emit(ConnectionEvent::Reconnected {
                session_id: welcome.session_id,
                resumed: resumed_rooms,
            });
        } else {
            self.ever_connected = true;
            self.emit(ConnectionEvent::Connected {
                user: welcome.user,
                session_id: welcome.session_id,
            });
        }
        if let Some(first) = self.first_connect.take() {
            let _ = first.send(Ok(()));
        }
    }

    /// The session loop of one connection.
    async fn session(&mut self) -> SessionEnd {
        loop {
            let input = {
                let Some(conn) = self.conn.as_mut() else {
                    return SessionEnd::Lost(DisconnectReason::Io("no connection".into()));
                };
                // One Ping after the receipts of the last round confirms
                // them all.
                conn.send_barrier();
                let timer = [self.publish_paused_until, self.resubscribe_at]
                    .into_iter()
                    .flatten()
                    .fold(conn.next_timer(), Instant::min);
                let has_out = conn.out.has_pending();
                let has_events = conn.events.is_some();
                tokio::select! {
                    frame = futures_util::StreamExt::next(&mut conn.reader) => Input::Frame(frame),
                    event = next_event(&mut conn.events), if has_events => match event {
                        Some(frame) => Input::Frame(Some(frame)),
                        None => Input::EventsEnded,
                    },
                    pushed = conn.out.push(), if has_out => Input::Pushed(pushed),
                    done = &mut conn.writer_task => Input::WriterDone(match done {
                        Ok(Ok(())) => "writer closed".to_owned(),
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => format!("writer task failed: {e}"),
                    }),
                    _ = tokio::time::sleep_until(timer) => Input::Timer,
                    cmd = self.cmds.recv(), if self.cmds_open => Input::Command(cmd),
                    Some(ctl) = self.ctl.recv() => Input::Ctl(ctl),
                }
            };
            match input {
                Input::Frame(Some(Ok(frame))) => {
                    if let Some(end) = self.on_frame(frame) {
                        return end;
                    }
                }
                Input::Frame(Some(Err(e))) => {
                    let reason = match e {
                        ClientError::Io(e) => DisconnectReason::Io(e.to_string()),
                        other => DisconnectReason::Protocol(other.to_string()),
                    };
                    return SessionEnd::Lost(reason);
                }
                Input::Frame(None) => return SessionEnd::Lost(self.closed_reason()),
                Input::EventsEnded => {
                    // The control stream tells why (a Goodbye, or its end).
                    if let Some(conn) = self.conn.as_mut() {
                        conn.events = None;
                    }
                }
                Input::Pushed(true) => {}
                Input::Pushed(false) => {
                    return SessionEnd::Lost(DisconnectReason::Io("writer stopped".into()))
                }
                Input::WriterDone(why) => return SessionEnd::Lost(DisconnectReason::Io(why)),
                Input::Timer => {
                    if let Some(Err(reason)) = self.conn.as_mut().map(Conn::on_timer) {
                        return SessionEnd::Lost(reason);
                    }
                    self.resume_publishes();
                    self.retry_subscribes();
                }
                Input::Command(Some(cmd)) => {
                    if self.on_command(cmd) == Flow::Stop {
                        return SessionEnd::Stop;
                    }
                }
                Input::Command(None) => {
                    // Every handle and subscription is gone.
                    self.cmds_open = false;
                    return SessionEnd::Stop;
                }
                Input::Ctl(ctl) => self.on_ctl(ctl),
            }
        }
    }

    /// Why the broker closed the transport.
    fn closed_reason(&self) -> DisconnectReason {
        match self.conn.as_ref().and_then(|c| c.conn_error.clone()) {
            Some((code, message)) => DisconnectReason::Goodbye { code, message },
            None => DisconnectReason::Io("connection closed by the broker".into()),
        }
    }

    /// Cleans up after a lost connection; everything that must survive
    /// (rooms, publishes) is kept for the next one.
    fn connection_lost(&mut self, reason: DisconnectReason) {
        // Every room is resumed by the next connection.
        self.resubscribe_at = None;
        for p in self.publishes.values_mut() {
            p.on_wire = false;
        }
        if let Some(mut conn) = self.conn.take() {
            for receipt in conn.take_receipts() {
                self.keep_receipt(receipt);
            }
            // Read-only requests are sent again, in their original order,
            // on the next connection; the others may have been carried out.
            let mut retried = Vec::new();
            for (rid, inflight) in conn.inflight.drain() {
                match inflight {
                    conn::Inflight::Request {
                        reply,
                        retry: Some(body),
                    } if !reply.is_closed() => retried.push((rid, body, reply)),
                    conn::Inflight::Request { reply, retry: None } => {
                        let _ = reply.send(Err(ClientError::ConnectionLost));
                    }
                    conn::Inflight::Unsubscribe(Some(reply)) => {
                        // The connection's subscriptions ended with it.
                        let _ = reply.send(Ok(()));
                    }
                    // Publishes are resent, rooms resumed, fills redone by
                    // the resumption; a read-only request whose caller gave
                    // up is dropped.
                    _ => {}
                }
            }
            retried.sort_by_key(|(rid, _, _)| *rid);
            for (_, body, reply) in retried.into_iter().rev() {
                self.deferred.push_front(Deferred {
                    body,
                    mode: ReqMode::Reply,
                    reply,
                });
            }
        }
        for r in self.rooms.values_mut() {
            r.wire = Wire::Idle;
            // Replayed by the next connection's resumption.
            r.held.clear();
            r.sync.on_disconnected();
            if let Some(ack) = r.ack.take() {
                // Registered; it is resumed on the next connection.
                let _ = ack.send(Ok(()));
            }
        }
        info!(%reason, "disconnected");
        self.set_state(ConnectionState::Reconnecting);
        self.emit(ConnectionEvent::Disconnected { reason });
    }

    /// Says goodbye on the current connection, if any.
    async fn close_conn(&mut self) {
        if let Some(conn) = self.conn.take() {
            let goodbye = Frame::new(Goodbye {
                code: ErrorCode::Normal,
                message: "client closing".into(),
            });
            conn.close(goodbye).await;
        }
    }

    /// The client stops: everything still waiting gets `fatal` (or
    /// `Closed`), subscriptions end, the cursor store is flushed.
    async fn finish(mut self, fatal: Option<ClientError>) {
        self.close_conn().await;
        if let Some(e) = &fatal {
            // Before anything is answered, so that every later call on a
            // handle reports it too.
            let _ = self.stopped.set(e.clone());
        }
        let err = fatal.clone().unwrap_or(ClientError::Closed);
        self.permits.close();
        if let Some(first) = self.first_connect.take() {
            let _ = first.send(Err(err.clone()));
        }
        for (_, p) in std::mem::take(&mut self.publishes) {
            let _ = p.reply.send(Err(err.clone()));
        }
        for d in std::mem::take(&mut self.deferred) {
            let _ = d.reply.send(Err(err.clone()));
        }
        for (_, r) in self.rooms.drain() {
            if let Some(e) = &fatal {
                *r.end.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
            }
            if let Some(ack) = r.ack {
                let _ = ack.send(Err(err.clone()));
            }
        }
        self.cmds.close();
        while let Ok(cmd) = self.cmds.try_recv() {
            if let Command::Close(reply) = cmd {
                self.closing.push(reply);
            }
        }
        if let Err(e) = self.config.cursor_store.flush().await {
            warn!(error = %e, "cannot flush the cursor store");
        }
        // Unacknowledged publishes stay in the outbox store for the next
        // run; the removals of the acknowledged ones are written.
        if let Some(store) = &self.config.outbox_store {
            if let Err(e) = store.flush().await {
                warn!(error = %e, "cannot flush the outbox store");
            }
        }
        if let Some(e) = &fatal {
            warn!(error = %e, "client stopped");
        }
        self.set_state(ConnectionState::Closed);
        self.emit(ConnectionEvent::Closed { error: fatal });
        for reply in self.closing.drain(..) {
            let _ = reply.send(());
        }
    }

    fn next_rid(&mut self) -> u32 {
        // A counter that wraps and skips 0 (protocol section 6.2).
        self.next_rid = self.next_rid.wrapping_add(1);
        if self.next_rid == 0 {
            self.next_rid = 1;
        }
        self.next_rid
    }

    fn emit(&self, event: ConnectionEvent) {
        // No receiver is not an error.
        let _ = self.events.send(event);
    }

    fn signal(&self, signal: Signal) {
        let _ = self.signals.send(signal);
    }

    fn set_state(&self, state: ConnectionState) {
        self.state.send_replace(state);
    }
}

/// The next frame of a QUIC connection's event streams.
async fn next_event(
    events: &mut Option<crate::transport::EventStreams>,
) -> Option<Result<Frame, ClientError>> {
    match events {
        Some(e) => e.next().await,
        None => std::future::pending().await,
    }
}

/// Appends to `hello.resume` the items of `candidates`, in order, that fit
/// within [`HELLO_BUDGET`] (skipping the ones that do not), and returns
/// their tags. Counts bytes, not rooms: room ids are 1 to 128 bytes.
fn fill_resume<T>(
    hello: &mut Hello,
    candidates: impl IntoIterator<Item = (SubscribeItem, T)>,
) -> Vec<T> {
    // A Hello whose other fields do not even encode gets no resume items
    // (and fails to encode on its own, reported when it is sent).
    let base = Frame::new(hello.clone()).body_len().unwrap_or(HELLO_BUDGET);
    let mut room_left = HELLO_BUDGET.saturating_sub(base);
    let mut tags = Vec::new();
    for (item, tag) in candidates {
        let Some(left) = room_left.checked_sub(resume_item_len(&item.room)) else {
            continue;
        };
        room_left = left;
        hello.resume.push(item);
        tags.push(tag);
    }
    tags
}

/// Encoded bytes of one `SubscribeItem` (protocol 8.1): the room id with
/// its length byte, and a `StartAt` (9 bytes, 4.4).
fn resume_item_len(room: &RoomId) -> usize {
    1 + room.as_str().len() + 9
}

/// The error `Client::connect` reports for a failed first attempt.
fn attempt_error(reason: &DisconnectReason) -> ClientError {
    match reason {
        DisconnectReason::Goodbye { code, message } => ClientError::Server {
            code: *code,
            message: message.clone(),
            retry_after_ms: 0,
        },
        DisconnectReason::ConnectFailed(m) if m == conn::TIMEOUT => ClientError::Timeout,
        other => ClientError::Io(Arc::new(std::io::Error::other(other.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use confab_codec::{DeviceId, StartAt};

    use super::*;

    fn hello(token_len: usize) -> Hello {
        Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            token: "t".repeat(token_len),
            device: DeviceId::new("phone").expect("device id"),
            client_name: "test/1".into(),
            resume: Vec::new(),
            features: Default::default(),
        }
    }

    fn rooms(count: usize, id_len: usize) -> Vec<(SubscribeItem, usize)> {
        (0..count)
            .map(|i| {
                let id = format!("{i:0>id_len$}");
                let item = SubscribeItem {
                    room: RoomId::new(&id).expect("room id"),
                    start: StartAt::From(Seq(u64::MAX)),
                };
                (item, i)
            })
            .collect()
    }

    /// The encoded Hello's body length, checked against the budget.
    fn body_len(h: &Hello) -> usize {
        let len = Frame::new(h.clone()).body_len().expect("encodes");
        assert!(len <= HELLO_BUDGET, "{len} bytes");
        len
    }

    #[test]
    fn the_hello_stays_under_the_floor_whatever_the_room_ids() {
        for (count, id_len, token_len) in
            [(10_000, 128, 4096), (10_000, 1, 100), (600, 128, 60_000)]
        {
            let mut h = hello(token_len);
            let tags = fill_resume(&mut h, rooms(count, id_len));
            let len = body_len(&h);
            // Rooms in order, as many as fit: the next would not have.
            assert_eq!(tags, (0..tags.len()).collect::<Vec<_>>());
            assert_eq!(h.resume.len(), tags.len());
            let item = 1 + id_len + 9;
            if tags.len() < count {
                assert!(len + item > HELLO_BUDGET, "{len} + {item} would fit");
            }
        }
        // 128-byte ids: about 470 rooms, not the 4,096 a room count allowed.
        let mut h = hello(1000);
        let n = fill_resume(&mut h, rooms(4096, 128)).len();
        assert!((400..=470).contains(&n), "{n} rooms");
    }

    #[test]
    fn a_hello_that_cannot_fit_resumes_nothing() {
        let mut h = hello(65_535);
        assert!(fill_resume(&mut h, rooms(10, 8)).is_empty());
        assert!(h.resume.is_empty());
        // A few rooms fit entirely.
        let mut h = hello(10);
        assert_eq!(fill_resume(&mut h, rooms(10, 8)).len(), 10);
        body_len(&h);
    }
}
