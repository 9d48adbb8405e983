//! The client side of the simulation: an SDK-like client whose per-room
//! ordering decisions are the SDK's own gap-sync state machine
//! (`confab_client::sync::RoomSync`) and whose cursors live in the SDK's
//! `MemoryCursorStore`. The rest follows the SDK's driver
//! (`client-sdk/src/driver/`): resume every room from its last delivered
//! sequence + 1 after a reconnect, send unacknowledged publishes again with
//! the same client message id, pause a room whose application buffer is
//! full (unsubscribing it) and resubscribe it once half drained, read
//! history to fill a gap, subscribe a room again after a back-off delay
//! when the broker refuses it with a passing error (`Internal`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};
use confab_client::sync::{Action, RoomSync};
use confab_client::{CursorStore, MemoryCursorStore};
use confab_codec::{
    Body, Direction, ErrorCode, EventRecord, Frame, HistoryRequest, MessageKind, Publish, RoomId,
    Seq, StartAt, Subscribe, SubscribeItem, Unsubscribe,
};

use super::net::Conn;
use super::{Failure, Ledger, Trace};

/// A client's settings in a run.
#[derive(Debug, Clone)]
pub(super) struct ClientCfg {
    /// `max_out_of_order`: events held after a gap.
    pub(super) max_out_of_order: usize,
    /// `history_page_size`.
    pub(super) page: u16,
    /// The application's buffer per room (the subscription's channel).
    pub(super) app_capacity: usize,
    /// Most publishes on the wire at once.
    pub(super) window: usize,
    /// Follow rooms live (from the head) instead of from the start.
    pub(super) live: bool,
}

/// A publish not acknowledged yet.
#[derive(Debug)]
struct Pending {
    room: RoomId,
    client_msg_id: u64,
    payload: Bytes,
    on_wire: bool,
    /// Not sent again before (after a `StorageFull` or `Internal` refusal).
    retry_at: u64,
}

/// A request on the wire, by request id.
#[derive(Debug)]
enum Req {
    Publish(u64),
    Subscribe,
    Unsubscribe,
    Fill(RoomId),
}

/// What the application has taken from a room (it survives restarts: it
/// is the application's own database, committed with the cursor).
#[derive(Debug, Default)]
pub(super) struct AppRoom {
    /// The first event it took, and every one since, in order.
    pub(super) taken: Vec<EventRecord>,
}

/// One simulated device.
pub(super) struct SimClient {
    pub(super) index: usize,
    pub(super) user: String,
    pub(super) device: String,
    pub(super) cfg: ClientCfg,
    pub(super) rooms: Vec<RoomId>,
    // The SDK's state, lost when the client restarts.
    syncs: BTreeMap<RoomId, RoomSync<EventRecord>>,
    app_queue: BTreeMap<RoomId, VecDeque<EventRecord>>,
    pending: VecDeque<Pending>,
    pub(super) conn: Option<u64>,
    rbuf: BytesMut,
    out: Vec<Frame>,
    inflight: BTreeMap<u32, Req>,
    next_rid: u32,
    pub(super) reconnect_at: u64,
    backoff: u64,
    // What survives a restart.
    cursors: MemoryCursorStore,
    pub(super) app: BTreeMap<RoomId, AppRoom>,
    /// Client message ids only grow (the SDK takes them from the clock).
    next_id: u64,
    /// Rooms whose (re)subscription the broker refused with `Internal`,
    /// subscribed again at `resubscribe_at` (the SDK's `subscribe_later`).
    refused: BTreeSet<RoomId>,
    resubscribe_at: Option<u64>,
    /// The SDK's delay before the next of those retries.
    resubscribe_backoff: u64,
    /// Subscriptions refused with `Internal` (for the summary).
    pub(super) subscribes_refused: u64,
}

const BACKOFF_MIN_US: u64 = 2_000;
const BACKOFF_MAX_US: u64 = 200_000;

impl SimClient {
    pub(super) fn new(index: usize, cfg: ClientCfg, rooms: Vec<RoomId>) -> Self {
        let mut c = Self {
            index,
            user: format!("u{index}"),
            device: "d".into(),
            cfg,
            rooms,
            syncs: BTreeMap::new(),
            app_queue: BTreeMap::new(),
            pending: VecDeque::new(),
            conn: None,
            rbuf: BytesMut::new(),
            out: Vec::new(),
            inflight: BTreeMap::new(),
            next_rid: 1,
            reconnect_at: 0,
            backoff: BACKOFF_MIN_US,
            cursors: MemoryCursorStore::new(),
            app: BTreeMap::new(),
            next_id: 1,
            refused: BTreeSet::new(),
            resubscribe_at: None,
            resubscribe_backoff: BACKOFF_MIN_US,
            subscribes_refused: 0,
        };
        c.restart(0);
        c
    }

    /// The process restarts: the SDK's memory is gone (unacknowledged
    /// publishes with it); cursors and what the application took stay.
    pub(super) fn restart(&mut self, now: u64) {
        self.syncs.clear();
        self.app_queue.clear();
        self.refused.clear();
        self.resubscribe_at = None;
        self.resubscribe_backoff = BACKOFF_MIN_US;
        for room in self.rooms.clone() {
            let sync = RoomSync::new(self.start(&room), self.cfg.max_out_of_order, self.cfg.page);
            self.syncs.insert(room.clone(), sync);
            self.app_queue.insert(room, VecDeque::new());
        }
        self.pending.clear();
        self.conn = None;
        self.rbuf.clear();
        self.out.clear();
        self.inflight.clear();
        self.reconnect_at = now;
        self.backoff = BACKOFF_MIN_US;
    }

    /// Where the application (re)subscribes a room: after its cursor,
    /// else from the start or live.
    fn start(&self, room: &RoomId) -> Option<Seq> {
        match self.cursors.get(room) {
            Some(seq) => Some(seq),
            None if self.cfg.live => None,
            None => Some(Seq(0)),
        }
    }

    /// Connected: resume every room that is not paused, send what waits.
    pub(super) fn connected(&mut self, id: u64) {
        self.conn = Some(id);
        self.backoff = BACKOFF_MIN_US;
        let rooms: Vec<RoomId> = self
            .syncs
            .iter()
            .filter(|(_, s)| !s.is_paused())
            .map(|(r, _)| r.clone())
            .collect();
        self.subscribe(rooms);
    }

    /// The connection is gone (the client noticed).
    pub(super) fn lost(&mut self, now: u64, jitter: u64) {
        self.conn = None;
        self.rbuf.clear();
        self.out.clear();
        self.inflight.clear();
        // The next connection resumes every room.
        self.refused.clear();
        self.resubscribe_at = None;
        for sync in self.syncs.values_mut() {
            sync.on_disconnected();
        }
        for p in &mut self.pending {
            p.on_wire = false;
        }
        self.reconnect_at = now + self.backoff + jitter;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX_US);
    }

    /// A connection attempt failed (broker down, partitioned).
    pub(super) fn refused(&mut self, now: u64, jitter: u64) {
        self.reconnect_at = now + self.backoff + jitter;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX_US);
    }

    /// The application publishes a message.
    pub(super) fn publish(&mut self, room: RoomId, now: u64, trace: &mut Trace) {
        let id = self.next_id;
        self.next_id += 1;
        trace.add(&[1, self.index as u64, id]);
        self.pending.push_back(Pending {
            room,
            client_msg_id: id,
            payload: Bytes::from(format!("{}:{id}", self.user)),
            on_wire: false,
            retry_at: now,
        });
    }

    /// Unacknowledged publishes.
    pub(super) fn unacknowledged(&self) -> usize {
        self.pending.len()
    }

    /// Subscribes again, once their delay is over, the rooms the broker
    /// refused with a passing error and that are not paused.
    fn retry_subscribes(&mut self, now: u64) {
        if self.conn.is_none() || self.resubscribe_at.is_none_or(|at| at > now) {
            return;
        }
        self.resubscribe_at = None;
        let rooms: Vec<RoomId> = std::mem::take(&mut self.refused)
            .into_iter()
            .filter(|r| self.syncs.get(r).is_some_and(|s| !s.is_paused()))
            .collect();
        self.subscribe(rooms);
    }

    /// Sends publishes waiting, within the window, in order.
    fn pump(&mut self, now: u64) {
        if self.conn.is_none() {
            return;
        }
        let mut on_wire = self.pending.iter().filter(|p| p.on_wire).count();
        for i in 0..self.pending.len() {
            if on_wire >= self.cfg.window {
                break;
            }
            let p = &mut self.pending[i];
            if p.on_wire || p.retry_at > now {
                continue;
            }
            p.on_wire = true;
            on_wire += 1;
            let frame = Publish {
                room: p.room.clone(),
                client_msg_id: p.client_msg_id,
                kind: MessageKind::MESSAGE,
                refers_to: None,
                thread: None,
                payload: p.payload.clone(),
            };
            let id = p.client_msg_id;
            self.request(Req::Publish(id), frame);
        }
    }

    fn request(&mut self, req: Req, body: impl Into<Body>) {
        let rid = self.next_rid;
        self.next_rid = self.next_rid.wrapping_add(1).max(1);
        self.inflight.insert(rid, req);
        self.out.push(Frame::request(rid, body));
    }

    fn subscribe(&mut self, rooms: Vec<RoomId>) {
        if self.conn.is_none() || rooms.is_empty() {
            return;
        }
        for room in &rooms {
            self.refused.remove(room);
        }
        let items = rooms
            .into_iter()
            .map(|room| {
                let start = self
                    .syncs
                    .get(&room)
                    .map_or(StartAt::Live, |s| s.start_at());
                SubscribeItem { room, start }
            })
            .collect();
        self.request(Req::Subscribe, Subscribe { items });
    }

    /// Writes what the client has to send, as far as the pipe takes it.
    pub(super) fn flush(&mut self, now: u64, conn: &mut Conn) -> Result<(), Failure> {
        self.retry_subscribes(now);
        self.pump(now);
        if !conn.is_open() {
            return Ok(());
        }
        let mut buf = BytesMut::new();
        let mut sent = 0;
        for frame in &self.out {
            if buf.len() >= conn.up.free() {
                break;
            }
            frame
                .encode(&mut buf)
                .map_err(|e| Failure::new(format!("client cannot encode: {e}")))?;
            sent += 1;
        }
        self.out.drain(..sent);
        conn.up.send(now, conn.latency, buf.freeze());
        Ok(())
    }

    /// Reads what arrived and handles it.
    pub(super) fn receive(
        &mut self,
        now: u64,
        conn: &mut Conn,
        ledger: &mut Ledger,
        trace: &mut Trace,
    ) -> Result<(), Failure> {
        conn.down.receive(now, &mut self.rbuf);
        while let Some(frame) = Frame::decode(&mut self.rbuf, confab_codec::DEFAULT_MAX_FRAME_LEN)
            .map_err(|e| Failure::new(format!("client cannot decode: {e}")))?
        {
            self.on_frame(now, frame, ledger, trace)?;
        }
        Ok(())
    }

    fn on_frame(
        &mut self,
        now: u64,
        frame: Frame,
        ledger: &mut Ledger,
        trace: &mut Trace,
    ) -> Result<(), Failure> {
        let req = match frame.request_id {
            0 => None,
            rid => self.inflight.remove(&rid),
        };
        match (frame.body, req) {
            (Body::PublishAck(ack), Some(Req::Publish(id))) => {
                if ack.client_msg_id != id {
                    return Err(Failure::new(format!(
                        "{}: ack for id {} answers the publish of id {id}",
                        self.user, ack.client_msg_id
                    )));
                }
                let Some(at) = self.pending.iter().position(|p| p.client_msg_id == id) else {
                    return Err(Failure::new(format!(
                        "{}: ack for id {id}, not pending",
                        self.user
                    )));
                };
                let p = self.pending.remove(at).expect("found above");
                trace.add(&[
                    2,
                    self.index as u64,
                    id,
                    ack.seq.0,
                    u64::from(ack.duplicate),
                ]);
                ledger.acked(&p.room, &self.user, &self.device, id, &p.payload, ack.seq)?;
            }
            (Body::Error(e), Some(Req::Publish(id))) => {
                if !matches!(e.code, ErrorCode::Internal | ErrorCode::StorageFull) {
                    return Err(Failure::new(format!(
                        "{}: publish {id} refused with {:?}: {}",
                        self.user, e.code, e.message
                    )));
                }
                trace.add(&[3, self.index as u64, id]);
                // The SDK reports it; the application sends it again with
                // the same id (it may have been stored before the failure).
                if let Some(p) = self.pending.iter_mut().find(|p| p.client_msg_id == id) {
                    p.on_wire = false;
                    p.retry_at = now + 1_000;
                }
            }
            (Body::SubscribeAck(ack), Some(Req::Subscribe)) => {
                for r in ack.results {
                    let truncated = match r.code {
                        ErrorCode::Normal => false,
                        ErrorCode::HistoryTruncated => true,
                        // A storage read failed at the broker. The SDK keeps
                        // the room and subscribes it again from its position
                        // after a back-off delay (rooms refused meanwhile
                        // go with it).
                        ErrorCode::Internal => {
                            trace.add(&[7, self.index as u64]);
                            self.subscribes_refused += 1;
                            self.refused.insert(r.room.clone());
                            if self.resubscribe_at.is_none_or(|at| at <= now) {
                                self.resubscribe_at = Some(now + self.resubscribe_backoff);
                                self.resubscribe_backoff =
                                    (self.resubscribe_backoff * 2).min(BACKOFF_MAX_US);
                            }
                            continue;
                        }
                        code => {
                            return Err(Failure::new(format!(
                                "{}: subscribe to {} refused with {code:?}",
                                self.user, r.room
                            )))
                        }
                    };
                    self.resubscribe_backoff = BACKOFF_MIN_US;
                    let mut out = Vec::new();
                    if let Some(sync) = self.syncs.get_mut(&r.room) {
                        sync.on_subscribed(r.head, r.first, truncated, &mut out);
                    }
                    self.apply(&r.room, out, trace)?;
                }
            }
            (Body::Event(ev), None) => self.on_events(ev.room, vec![ev.event], trace)?,
            (Body::EventBatch(b), None) => self.on_events(b.room, b.events, trace)?,
            (Body::HistoryPage(page), Some(Req::Fill(room))) => {
                let mut out = Vec::new();
                if let Some(sync) = self.syncs.get_mut(&room) {
                    sync.on_history(page.first, page.events, &mut out);
                }
                self.apply(&room, out, trace)?;
            }
            (Body::Error(_), Some(Req::Fill(room))) => {
                let mut out = Vec::new();
                if let Some(sync) = self.syncs.get_mut(&room) {
                    sync.on_fill_failed(&mut out);
                }
                self.apply(&room, out, trace)?;
            }
            (Body::Lagging(_) | Body::CaughtUp(_), None) => trace.add(&[4, self.index as u64]),
            (Body::Ack(_), Some(Req::Unsubscribe)) => {}
            (body, req) => {
                return Err(Failure::new(format!(
                    "{}: unexpected {} (request {req:?})",
                    self.user,
                    body.name()
                )))
            }
        }
        Ok(())
    }

    fn on_events(
        &mut self,
        room: RoomId,
        events: Vec<EventRecord>,
        trace: &mut Trace,
    ) -> Result<(), Failure> {
        for event in events {
            let Some(sync) = self.syncs.get_mut(&room) else {
                return Err(Failure::new(format!(
                    "{}: event of unknown room",
                    self.user
                )));
            };
            if sync.is_paused() {
                return Ok(());
            }
            let mut out = Vec::new();
            sync.on_event(event, &mut out);
            if !self.apply(&room, out, trace)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Performs a room's sync actions; false if the room stopped (paused).
    fn apply(
        &mut self,
        room: &RoomId,
        actions: Vec<Action<EventRecord>>,
        trace: &mut Trace,
    ) -> Result<bool, Failure> {
        for action in actions {
            match action {
                Action::Deliver(record) => {
                    let queue = self.app_queue.entry(room.clone()).or_default();
                    if queue.len() < self.cfg.app_capacity {
                        queue.push_back(record);
                        continue;
                    }
                    // The application is not reading: pause the room, at
                    // the broker too, until it has drained half.
                    trace.add(&[5, self.index as u64, record.seq.0]);
                    if let Some(sync) = self.syncs.get_mut(room) {
                        sync.pause(record.seq);
                    }
                    if self.conn.is_some() {
                        let rooms = vec![room.clone()];
                        self.request(Req::Unsubscribe, Unsubscribe { rooms });
                    }
                    return Ok(false);
                }
                Action::Duplicate(_) => {}
                Action::FetchHistory { after, limit } => {
                    if self.conn.is_some() {
                        let h = HistoryRequest {
                            room: room.clone(),
                            direction: Direction::After,
                            anchor: after,
                            limit,
                        };
                        self.request(Req::Fill(room.clone()), h);
                    } else if let Some(sync) = self.syncs.get_mut(room) {
                        let mut out = Vec::new();
                        sync.on_fill_failed(&mut out);
                    }
                }
                Action::Resubscribe { .. } => self.subscribe(vec![room.clone()]),
                Action::Gap { from, to, reason } => {
                    return Err(Failure::new(format!(
                        "{}: {room} gap {from}..={to} ({reason:?}) without retention",
                        self.user
                    )))
                }
            }
        }
        Ok(true)
    }

    /// The application takes up to `n` events of each room, checks that
    /// each is the next one, and moves its cursor; a paused room half
    /// drained is resumed.
    pub(super) fn app_take(&mut self, n: usize, trace: &mut Trace) -> Result<(), Failure> {
        let rooms: Vec<RoomId> = self.rooms.clone();
        for room in rooms {
            let queue = self.app_queue.entry(room.clone()).or_default();
            for _ in 0..n {
                let Some(ev) = queue.pop_front() else { break };
                let app = self.app.entry(room.clone()).or_default();
                let expected = match app.taken.last() {
                    Some(prev) => Some(prev.seq.0 + 1),
                    None if self.cfg.live => None,
                    None => Some(1),
                };
                if expected.is_some_and(|e| e != ev.seq.0) {
                    return Err(Failure::new(format!(
                        "{}: application got {room} seq {} after {:?}",
                        self.user,
                        ev.seq,
                        app.taken.last().map(|e| e.seq.0)
                    )));
                }
                trace.add(&[6, self.index as u64, ev.seq.0, ev.client_msg_id]);
                self.cursors.set(&room, ev.seq);
                app.taken.push(ev);
            }
            let half = self.cfg.app_capacity.div_ceil(2);
            let drained = self.app_queue.get(&room).map_or(0, VecDeque::len) <= half;
            let Some(sync) = self.syncs.get_mut(&room) else {
                continue;
            };
            if sync.is_paused() && drained {
                let mut out = Vec::new();
                sync.resume(&mut out);
                self.apply(&room, out, trace)?;
            }
        }
        Ok(())
    }

    /// Checks the client's own queues against their bounds.
    pub(super) fn check_bounds(&self) -> Result<(), Failure> {
        for (room, sync) in &self.syncs {
            if sync.buffered() > self.cfg.max_out_of_order {
                return Err(Failure::new(format!(
                    "{}: {room} holds {} events out of order (bound {})",
                    self.user,
                    sync.buffered(),
                    self.cfg.max_out_of_order
                )));
            }
        }
        for (room, q) in &self.app_queue {
            if q.len() > self.cfg.app_capacity {
                return Err(Failure::new(format!(
                    "{}: {room} app queue over",
                    self.user
                )));
            }
        }
        Ok(())
    }

    /// The last sequence the application took in `room`.
    pub(super) fn app_last(&self, room: &RoomId) -> Option<u64> {
        self.app
            .get(room)
            .and_then(|a| a.taken.last())
            .map(|e| e.seq.0)
    }

    /// The client's state, for a failure's report.
    pub(super) fn dump(&self) -> String {
        format!(
            "{}: conn {:?}, reconnect at {}, syncs {:?}, app queues {:?}, refused {:?} (again at {:?}), pending {}, inflight {:?}, out {}",
            self.user,
            self.conn,
            self.reconnect_at,
            self.syncs,
            self.app_queue.iter().map(|(r, q)| (r, q.len())).collect::<Vec<_>>(),
            self.refused,
            self.resubscribe_at,
            self.pending.len(),
            self.inflight,
            self.out.len()
        )
    }

    /// Whether anything is still on its way to the application.
    pub(super) fn app_backlog(&self) -> usize {
        self.app_queue.values().map(VecDeque::len).sum()
    }
}
