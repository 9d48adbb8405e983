//! The broker side of the simulation: the real sequencer (driver and
//! core), the real fan-out, subscriptions, catch-up and outboxes, over the
//! in-memory log behind the fault-injecting wrapper, stepped by the
//! simulation instead of threads. Only the session's glue (frames in,
//! requests to the sequencer, outbox out) is written here, after
//! `session/requests.rs` and `session/queries.rs`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use confab_codec::{
    raw, Body, DeviceId, Direction, ErrorCode, ErrorFrame, Frame, RoomId, Seq, SubscribeResult,
    UserId,
};
use crossbeam_channel::Receiver;
use tokio::sync::Semaphore;

use super::net::Conn;
use super::Failure;
use crate::base::sender_key;
use crate::config::{RoomsConfig, StorageConfig};
use crate::fanout::{
    self, read_batch, CatchupCtx, CatchupStep, ConnCtx, Drained, FanoutMsg, Handoff, Outbox,
    SubscribeCmd, SubscribeItem, Subscription,
};
use crate::rooms::RoomRegistry;
use crate::sequencer::{read, Loaded, Need, PublishReq, SeqMsg, Sequencer};
use crate::server::FANOUT_QUEUE;
use crate::stats::Stats;
use crate::storage::{CommitFault, FaultyLog, LogBounds, RoomLog};

/// The broker's settings in a run.
#[derive(Debug, Clone)]
pub(super) struct BrokerCfg {
    pub(super) storage: StorageConfig,
    pub(super) rooms: RoomsConfig,
    /// `delivery.queue_capacity`.
    pub(super) queue_capacity: usize,
    /// `delivery.catchup_batch`.
    pub(super) catchup_batch: usize,
    /// `delivery.write_batch_bytes`: a lagging room reads ahead this much.
    pub(super) ahead_bytes: usize,
    /// `limits.sequencer_queue`.
    pub(super) sequencer_queue: usize,
    /// Control frames a session may have queued before it stops reading
    /// (`max_inflight_publishes + 256` in the broker).
    pub(super) control_bound: usize,
}

/// A catch-up in progress, stepped as the task in `subscription.rs` runs.
struct Catchup {
    sub: Arc<Subscription>,
    lagged: bool,
    /// The `Lagging` notice is still to be queued.
    notice: bool,
    /// The range to read once the lane has room.
    read: Option<(u64, u64)>,
}

/// A connection as the broker sees it.
struct Session {
    ctx: Arc<ConnCtx>,
    subs: BTreeMap<RoomId, Arc<Subscription>>,
    rbuf: BytesMut,
}

/// One incarnation of the broker (a crash drops it; the log stays).
pub(super) struct SimBroker {
    cfg: BrokerCfg,
    log: Arc<FaultyLog>,
    sequencer: Sequencer,
    fanout: Receiver<FanoutMsg>,
    registry: Arc<RoomRegistry>,
    ctx: Arc<CatchupCtx>,
    stats: Arc<Stats>,
    /// The sequencer's queue.
    queue: VecDeque<SeqMsg>,
    /// Reads the core asked for, not answered yet.
    needs: Vec<Need>,
    catchups: Vec<Catchup>,
    sessions: BTreeMap<u64, Session>,
    /// Requests taken up to now (for the trace).
    pub(super) steps: u64,
}

/// What the simulation decides for one broker tick.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dice {
    /// How the next commit ends.
    pub(super) fault: CommitFault,
    /// Answer each read asked for with this probability (in 1/256).
    pub(super) answer: u8,
    /// The reads answered this tick fail.
    pub(super) read_fault: bool,
    /// The fan-out runs this tick.
    pub(super) fanout: bool,
    /// Catch-ups advance this tick.
    pub(super) catchup: bool,
}

impl SimBroker {
    pub(super) fn start(cfg: BrokerCfg, log: Arc<FaultyLog>) -> Self {
        let registry = Arc::new(RoomRegistry::default());
        let stats = Arc::new(Stats::default());
        let (fan_tx, fan_rx) = crossbeam_channel::unbounded();
        let store: Arc<dyn RoomLog> = log.clone();
        let sequencer = Sequencer::new(
            store.clone(),
            registry.clone(),
            cfg.storage.clone(),
            cfg.rooms.clone(),
            Handoff::new(fan_tx),
            stats.clone(),
        );
        let max_frame_len = confab_codec::DEFAULT_MAX_FRAME_LEN as usize;
        let ctx = Arc::new(CatchupCtx {
            log: store,
            reads: Arc::new(crate::storage::ReadPool::new(1)),
            batch: cfg.catchup_batch,
            max_bytes: max_frame_len.saturating_sub(1024),
            max_frame_len,
            ahead_bytes: cfg.ahead_bytes,
            stats: stats.clone(),
        });
        Self {
            cfg,
            log,
            sequencer,
            fanout: fan_rx,
            registry,
            ctx,
            stats,
            queue: VecDeque::new(),
            needs: Vec::new(),
            catchups: Vec::new(),
            sessions: BTreeMap::new(),
            steps: 0,
        }
    }

    /// A client connected (the handshake is not simulated).
    pub(super) fn accept(&mut self, id: u64, user: &str, device: &str) {
        let user = UserId::new(user).expect("valid user id");
        let device = DeviceId::new(device).expect("valid device id");
        let ctx = Arc::new(ConnCtx {
            sender_key: sender_key(user.as_str(), device.as_str()),
            user,
            device,
            outbox: Arc::new(Outbox::new(self.cfg.queue_capacity, self.stats.clone())),
            inflight: Semaphore::new(0),
            requests: Arc::new(Semaphore::new(0)),
            system: false,
            direct: None,
            version: confab_codec::PROTOCOL_VERSION,
        });
        let session = Session {
            ctx,
            subs: BTreeMap::new(),
            rbuf: BytesMut::new(),
        };
        self.sessions.insert(id, session);
    }

    /// The connection is gone: end its subscriptions, as the session does.
    pub(super) fn disconnect(&mut self, id: u64) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        let subs: Vec<_> = s.subs.into_values().collect();
        for sub in &subs {
            sub.close();
        }
        if !subs.is_empty() {
            self.queue.push_back(SeqMsg::Unsubscribe(subs));
        }
        s.ctx.outbox.close();
    }

    /// One tick: sessions read, the sequencer steps, reads are answered,
    /// the fan-out and catch-ups run, writers write.
    pub(super) fn tick(
        &mut self,
        now: u64,
        dice: Dice,
        rng: &mut impl rand::Rng,
        conns: &mut BTreeMap<u64, Conn>,
    ) -> Result<(), Failure> {
        self.read_sessions(now, conns)?;
        // Answers first, then the group, as the driver's loop does.
        let mut supplied = false;
        let mut i = 0;
        while i < self.needs.len() {
            if rng.gen::<u8>() < dice.answer {
                let need = self.needs.swap_remove(i);
                self.log.set_read_fault(dice.read_fault);
                let answer = read(self.log.as_ref(), &need);
                self.log.set_read_fault(false);
                self.sequencer.supply(Loaded { need, answer });
                supplied = true;
            } else {
                i += 1;
            }
        }
        if supplied || !self.queue.is_empty() {
            let take = self.queue.len().min(self.cfg.storage.max_batch);
            let mut batch: Vec<SeqMsg> = self.queue.drain(..take).collect();
            self.log.set_commit_fault(dice.fault);
            let needs = self.sequencer.step(&mut batch, now);
            self.log.set_commit_fault(CommitFault::None);
            let needs = needs.map_err(|e| Failure::new(format!("sequencer stopped: {e}")))?;
            self.needs.extend(needs);
            self.steps += 1;
        }
        if self.fanout.len() > FANOUT_QUEUE {
            return Err(Failure::new("fan-out queue over its bound"));
        }
        if dice.fanout {
            self.run_fanout();
        }
        if dice.catchup {
            self.run_catchups();
        }
        self.write_sessions(now, conns);
        Ok(())
    }

    /// Drops idle rooms from the sequencer's memory (its once-a-second sweep).
    pub(super) fn sweep(&mut self, now: u64) {
        self.sequencer.sweep(now);
        self.registry.evict_unused();
    }

    /// Nothing queued, parked, unanswered, unfanned or catching up.
    pub(super) fn is_idle(&self) -> bool {
        self.queue.is_empty()
            && self.needs.is_empty()
            && self.sequencer.parked() == 0
            && self.fanout.is_empty()
            && self.catchups.is_empty()
    }

    /// A connection's state, for a failure's report.
    pub(super) fn dump(&self, id: u64) -> String {
        let Some(s) = self.sessions.get(&id) else {
            return format!("no session {id}");
        };
        let subs: Vec<String> = s
            .subs
            .iter()
            .map(|(room, sub)| {
                format!(
                    "{room}: next {}, closed {}, catching up {}",
                    sub.next_seq(),
                    sub.is_closed(),
                    sub.is_catching_up()
                )
            })
            .collect();
        format!(
            "session {id}: subs {subs:?}, outbox {:?}, catch-ups {}",
            s.ctx.outbox.event_lane(0),
            self.catchups.len()
        )
    }

    /// Checks the queues against their bounds.
    pub(super) fn check_bounds(&self, rooms: usize) -> Result<(), Failure> {
        // Requests a session sends wait for a slot; the broker's own
        // (unsubscriptions) go over: one per session at most.
        if self.queue.len() > self.cfg.sequencer_queue + self.sessions.len() + 64 {
            return Err(Failure::new(format!(
                "sequencer queue {} over its bound",
                self.queue.len()
            )));
        }
        for (id, s) in &self.sessions {
            let (frames, bytes) = s.ctx.outbox.event_lane(0);
            // Live pushes stop at the capacity; catch-up batches are read
            // only below it and below `ahead_bytes`; each room adds at most
            // a `CaughtUp` notice.
            let max_frames = self.cfg.queue_capacity + rooms + 1;
            let max_bytes = self.cfg.ahead_bytes + self.ctx.max_bytes + 64 * (rooms + 1);
            let mut over = frames > max_frames;
            if frames > self.cfg.queue_capacity && bytes > max_bytes {
                over = true;
            }
            if over {
                return Err(Failure::new(format!(
                    "connection {id}: event lane holds {frames} frames, {bytes} bytes (bounds {max_frames}, {max_bytes})"
                )));
            }
            let control = s.ctx.outbox.control_len();
            if control > self.cfg.control_bound + 4 * self.cfg.storage.max_batch + 64 {
                return Err(Failure::new(format!(
                    "connection {id}: control lane holds {control} frames"
                )));
            }
        }
        Ok(())
    }

    fn read_sessions(&mut self, now: u64, conns: &mut BTreeMap<u64, Conn>) -> Result<(), Failure> {
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for id in ids {
            let Some(conn) = conns.get_mut(&id) else {
                continue;
            };
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            conn.up.receive(now, &mut s.rbuf);
            loop {
                // Backpressure: a session waits for a slot in the
                // sequencer's queue and for room in its control lane.
                if self.queue.len() >= self.cfg.sequencer_queue
                    || s.ctx.outbox.control_len() >= self.cfg.control_bound
                {
                    break;
                }
                let frame = match Frame::decode(&mut s.rbuf, confab_codec::DEFAULT_MAX_FRAME_LEN) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return Err(Failure::new(format!("broker cannot decode: {e}"))),
                };
                if let Some(msg) = request(s, &self.registry, &self.ctx, frame) {
                    self.queue.push_back(msg);
                }
            }
        }
        Ok(())
    }

    fn write_sessions(&mut self, now: u64, conns: &mut BTreeMap<u64, Conn>) {
        for (id, s) in &self.sessions {
            let Some(conn) = conns.get_mut(id) else {
                continue;
            };
            if !conn.is_open() {
                continue;
            }
            let free = conn.down.free();
            if free == 0 {
                continue;
            }
            let mut buf = BytesMut::new();
            match s.ctx.outbox.drain_into(&mut buf, free) {
                Drained::Frames => conn.down.send(now, conn.latency, buf.freeze()),
                Drained::Empty => {}
                // Closed by the broker (a failed catch-up): the writer
                // finishes and the connection closes.
                Drained::Finished => conn.cut(now, now + conn.latency),
            }
        }
    }

    fn run_fanout(&mut self) {
        let mut to_wake = Vec::new();
        let mut started = Vec::new();
        while let Ok(msg) = self.fanout.try_recv() {
            fanout::handle(
                msg,
                &self.ctx,
                &mut |sub, lagged| started.push((sub, lagged)),
                &mut to_wake,
            );
        }
        for (sub, lagged) in started {
            self.catchups.push(Catchup {
                sub,
                lagged,
                notice: lagged,
                read: None,
            });
        }
    }

    /// Advances every catch-up as far as its lane allows, as the task in
    /// `Subscription::catch_up` does; a failure closes the subscription
    /// and aborts the outbox, as there.
    fn run_catchups(&mut self) {
        let ctx = self.ctx.clone();
        self.catchups.retain_mut(|c| match advance(c, &ctx) {
            Ok(going) => going,
            Err(_) => {
                c.sub.close();
                c.sub.outbox.abort();
                false
            }
        });
    }
}

/// One catch-up, as far as it goes now; false when it is over.
fn advance(c: &mut Catchup, ctx: &CatchupCtx) -> Result<bool, String> {
    let outbox = &c.sub.outbox;
    if c.notice {
        if !outbox.has_event_space(c.sub.lane) {
            return Ok(true);
        }
        c.notice = false;
        if !c.sub.lag_notice()? {
            return Ok(false);
        }
    }
    loop {
        let (next, seen) = match c.read {
            Some(r) => r,
            None => match c.sub.catchup_next(c.lagged)? {
                CatchupStep::Done => return Ok(false),
                CatchupStep::Read { next, seen } => {
                    c.read = Some((next, seen));
                    (next, seen)
                }
            },
        };
        if !outbox.has_catchup_space(c.sub.lane, ctx.ahead_bytes) {
            return Ok(true);
        }
        c.read = None;
        if outbox.is_closed() {
            return Ok(false);
        }
        match c.sub.catchup_shared(ctx, next, seen)? {
            Some(true) => continue,
            Some(false) => return Ok(false),
            None => {}
        }
        let read = read_batch(ctx, &c.sub.room.id, next, seen).map_err(|e| e.to_string())?;
        if !c.sub.catchup_apply(ctx, next, read)? {
            return Ok(false);
        }
    }
}

/// What the session does with one frame: a request for the sequencer, or
/// a reply of its own (history).
fn request(
    s: &mut Session,
    registry: &RoomRegistry,
    ctx: &CatchupCtx,
    frame: Frame,
) -> Option<SeqMsg> {
    let rid = frame.request_id;
    match frame.body {
        Body::Publish(p) => Some(SeqMsg::Publish(PublishReq::new(
            s.ctx.clone(),
            rid,
            false,
            p,
            Instant::now(),
        ))),
        Body::Subscribe(sub) => {
            s.subs.retain(|_, x| !x.is_closed());
            let mut results = Vec::with_capacity(sub.items.len());
            let mut items = Vec::with_capacity(sub.items.len());
            for (index, item) in sub.items.into_iter().enumerate() {
                results.push(SubscribeResult {
                    room: item.room.clone(),
                    code: ErrorCode::Normal,
                    head: Seq(0),
                    first: Seq(1),
                });
                let room = registry.get_or_create(&item.room);
                let new = Arc::new(Subscription::for_user(
                    room,
                    s.ctx.outbox.clone(),
                    Some(s.ctx.user.clone()),
                ));
                let replaces = s.subs.insert(item.room, new.clone());
                items.push(SubscribeItem {
                    index,
                    sub: new,
                    replaces,
                    start: item.start,
                    bounds: LogBounds::default(),
                    refused: None,
                });
            }
            Some(SeqMsg::Subscribe(SubscribeCmd {
                outbox: s.ctx.outbox.clone(),
                user: s.ctx.user.clone(),
                system: false,
                request_id: rid,
                results,
                items,
                held: None,
            }))
        }
        Body::Unsubscribe(u) => {
            let subs: Vec<_> = u.rooms.iter().filter_map(|r| s.subs.remove(r)).collect();
            for sub in &subs {
                sub.close();
            }
            let ack = Frame::request(rid, confab_codec::Ack {});
            s.ctx
                .outbox
                .push_control(ack.to_bytes().expect("an ack encodes"));
            (!subs.is_empty()).then_some(SeqMsg::Unsubscribe(subs))
        }
        Body::HistoryRequest(h) => {
            let reply = history(ctx, rid, &h);
            s.ctx.outbox.push_control(reply);
            None
        }
        _ => None,
    }
}

/// A history page after an anchor, as `session/queries.rs` reads it.
fn history(ctx: &CatchupCtx, rid: u32, h: &confab_codec::HistoryRequest) -> Bytes {
    let error = |message: String| {
        Frame::request(
            rid,
            ErrorFrame {
                code: ErrorCode::Internal,
                retry_after_ms: 0,
                message,
            },
        )
        .to_bytes()
        .expect("an error frame encodes")
    };
    if h.direction != Direction::After {
        return error("the simulation reads forward only".into());
    }
    let log = ctx.log.as_ref();
    let read = log.bounds(&h.room).and_then(|bounds| {
        log.read_range(
            &h.room,
            h.anchor.next(),
            bounds.head,
            usize::from(h.limit),
            ctx.max_bytes,
        )
        .map(|r| (bounds, r))
    });
    match read {
        Ok((bounds, records)) => {
            let has_more = records.last().is_some_and(|r| r.seq < bounds.head);
            let bytes: Vec<_> = records.into_iter().map(|r| r.bytes).collect();
            raw::history_page_frame(rid, &h.room, has_more, bounds.first, &bytes)
                .unwrap_or_else(|e| error(e.to_string()))
        }
        Err(e) => error(e.to_string()),
    }
}
