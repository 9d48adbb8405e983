//! One run: a scenario drawn from the seed, a chaos phase with faults,
//! then a calm phase that must reach quiescence, and the checks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use confab_codec::{RoomId, Seq};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::broker::{BrokerCfg, Dice, SimBroker};
use super::client::{ClientCfg, SimClient};
use super::net::Conn;
use super::{stored, Failure, Ledger, Report, Trace};
use crate::config::{RoomsConfig, StorageConfig};
use crate::storage::{CommitFault, FaultyLog, MemoryLog, RoomLog};

/// One tick of virtual time, in microseconds.
const TICK_US: u64 = 1_000;

/// Most ticks the calm phase may take to settle.
const SETTLE_TICKS: u64 = 300_000;

/// How often faults happen, per tick (in 1/65536), and per commit.
#[derive(Debug, Clone, Copy)]
struct Rates {
    crash: u32,
    cut: u32,
    hold: u32,
    partition: u32,
    restart: u32,
    /// A commit fails (in 1/256).
    commit: u8,
    /// The reads of a tick fail (in 1/256).
    read: u8,
    /// A read asked for is answered in a given tick (in 1/256, at least 1).
    answer: u8,
}

/// A link's shape, drawn per client.
#[derive(Debug, Clone, Copy)]
struct Link {
    capacity: usize,
    bandwidth: usize,
    /// Most latency per write, in microseconds.
    latency: u64,
}

pub(super) struct World {
    seed: u64,
    rng: StdRng,
    trace: Trace,
    ledger: Ledger,
    now: u64,
    ticks: u64,
    rates: Rates,
    /// Publishes per client per tick, in 1/65536.
    publish_rate: u32,
    rooms: Vec<RoomId>,
    memory: Arc<MemoryLog>,
    log: Arc<FaultyLog>,
    broker_cfg: BrokerCfg,
    broker: Option<SimBroker>,
    broker_down_until: u64,
    clients: Vec<SimClient>,
    links: Vec<Link>,
    /// Clients that cannot reach the broker until then.
    partitioned: BTreeMap<usize, u64>,
    conns: BTreeMap<u64, Conn>,
    /// The client of each connection.
    owner: BTreeMap<u64, usize>,
    next_conn: u64,
    /// When the broker next drops its idle rooms.
    next_sweep: u64,
    /// Counters for the summary.
    crashes: u64,
    cuts: u64,
    restarts: u64,
    published: u64,
}

fn pick<T: Copy>(rng: &mut StdRng, xs: &[T]) -> T {
    *xs.choose(rng).expect("a non-empty choice")
}

impl World {
    pub(super) fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let room_count = rng.gen_range(1..=4);
        let rooms: Vec<RoomId> = (0..room_count)
            .map(|i| RoomId::new(format!("r{i}")).expect("valid room id"))
            .collect();
        let client_count = rng.gen_range(3..=20);
        let ticks = rng.gen_range(400..=1_500);
        // Some runs are calm, most are not.
        let calm = rng.gen_ratio(1, 10);
        let rate = |rng: &mut StdRng, max: u32| if calm { 0 } else { rng.gen_range(0..=max) };
        let rates = Rates {
            crash: rate(&mut rng, 150),
            cut: rate(&mut rng, 600),
            hold: rate(&mut rng, 1_000),
            partition: rate(&mut rng, 300),
            restart: rate(&mut rng, 300),
            commit: if calm { 0 } else { rng.gen_range(0..=24) },
            read: if calm { 0 } else { rng.gen_range(0..=16) },
            answer: rng.gen_range(24..=255),
        };
        let publishes: u32 = rng.gen_range(50..=500);
        let publish_rate =
            (u64::from(publishes) * 65_536 / (client_count as u64 * ticks)).max(1) as u32;
        let max_batch = pick(&mut rng, &[1, 2, 4, 16, 64]);
        let broker_cfg = BrokerCfg {
            storage: StorageConfig {
                max_batch,
                dedup_window: max_batch.max(pick(&mut rng, &[1, 8, 64, 32_768])),
                ..StorageConfig::default()
            },
            rooms: RoomsConfig {
                evict_idle_ms: pick(&mut rng, &[1, 20, 30_000]),
                ..RoomsConfig::default()
            },
            queue_capacity: pick(&mut rng, &[1, 2, 4, 16, 4_096]),
            catchup_batch: pick(&mut rng, &[1, 3, 16, 256]),
            ahead_bytes: pick(&mut rng, &[1, 300, 4_096, 65_536]),
            sequencer_queue: pick(&mut rng, &[2, 16, 16_384]),
            control_bound: pick(&mut rng, &[4, 64, 4_352]),
        };
        let mut clients = Vec::with_capacity(client_count);
        let mut links = Vec::with_capacity(client_count);
        for i in 0..client_count {
            let cfg = ClientCfg {
                max_out_of_order: pick(&mut rng, &[1, 4, 64, 4_096]),
                page: pick(&mut rng, &[1, 5, 500]),
                app_capacity: pick(&mut rng, &[2, 16, 1_024]),
                window: pick(&mut rng, &[1, 4, 64]),
                live: rng.gen_ratio(1, 5),
            };
            // Each client follows a non-empty subset of the rooms.
            let mut followed: Vec<RoomId> = rooms
                .iter()
                .filter(|_| rng.gen_bool(0.7))
                .cloned()
                .collect();
            if followed.is_empty() {
                followed.push(rooms[rng.gen_range(0..rooms.len())].clone());
            }
            clients.push(SimClient::new(i, cfg, followed));
            // A slow link buffers at most 200 ticks' worth.
            let bandwidth = pick(&mut rng, &[64, 2_048, 1 << 20]);
            let capacity = pick(&mut rng, &[64, 1_024, 1 << 20]).min(bandwidth * 200);
            links.push(Link {
                capacity,
                bandwidth,
                latency: pick(&mut rng, &[0, 500, 5_000, 30_000]),
            });
        }
        let memory = Arc::new(MemoryLog::new());
        let log = Arc::new(FaultyLog::new(memory.clone()));
        let mut trace = Trace::default();
        trace.add(&[seed, room_count as u64, client_count as u64, ticks]);
        Self {
            seed,
            rng,
            trace,
            ledger: Ledger::default(),
            now: 1_000_000,
            ticks,
            rates,
            publish_rate,
            rooms,
            memory,
            broker: Some(SimBroker::start(broker_cfg.clone(), log.clone())),
            log,
            broker_cfg,
            broker_down_until: 0,
            clients,
            links,
            partitioned: BTreeMap::new(),
            conns: BTreeMap::new(),
            owner: BTreeMap::new(),
            next_conn: 1,
            next_sweep: 0,
            crashes: 0,
            cuts: 0,
            restarts: 0,
            published: 0,
        }
    }

    pub(super) fn run(mut self) -> Result<Report, (Failure, Trace)> {
        match self.run_inner() {
            Ok(summary) => Ok(Report {
                trace: self.trace,
                summary,
            }),
            Err(f) => Err((
                Failure::new(format!(
                    "seed {} at t={} ms: {f}",
                    self.seed,
                    self.now / 1000
                )),
                self.trace,
            )),
        }
    }

    fn run_inner(&mut self) -> Result<String, Failure> {
        for _ in 0..self.ticks {
            self.faults();
            self.tick(true)?;
        }
        // Calm: every fault heals; the run must settle.
        self.partitioned.clear();
        let mut settled = false;
        for _ in 0..SETTLE_TICKS {
            self.tick(false)?;
            if self.settled()? {
                settled = true;
                break;
            }
        }
        if !settled {
            return Err(Failure::new(format!(
                "no quiescence after the faults healed: {}",
                self.progress()
            )));
        }
        self.check_final()?;
        let heads: Vec<u64> = self.rooms.iter().map(|r| self.head(r)).collect();
        self.trace.add(&heads);
        let refused: u64 = self.clients.iter().map(|c| c.subscribes_refused).sum();
        Ok(format!(
            "{} clients, {} rooms, heads {heads:?}, {} published, {} crashes, {} cuts, {} client restarts, {refused} resumes refused, settled at t={} ms",
            self.clients.len(),
            self.rooms.len(),
            self.published,
            self.crashes,
            self.cuts,
            self.restarts,
            self.now / 1000
        ))
    }

    fn chance(&mut self, per_65536: u32) -> bool {
        per_65536 > 0 && self.rng.gen_range(0..65_536) < per_65536
    }

    /// Draws this tick's faults.
    fn faults(&mut self) {
        let now = self.now;
        if self.broker.is_some() && self.chance(self.rates.crash) {
            // The process dies: its memory is gone, the log stays (every
            // commit it reported is in it, as `wal` promises on a crash).
            self.broker = None;
            self.broker_down_until = now + self.rng.gen_range(1..=200) * TICK_US;
            self.crashes += 1;
            self.trace.add(&[10, now]);
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            for id in ids {
                self.cut(id, 0);
            }
        }
        let open: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_open())
            .map(|(id, _)| *id)
            .collect();
        if !open.is_empty() && self.chance(self.rates.cut) {
            let id = pick(&mut self.rng, &open);
            self.cuts += 1;
            self.trace.add(&[11, id]);
            let delay = self.rng.gen_range(0..=100) * TICK_US;
            self.cut(id, delay);
        }
        if !open.is_empty() && self.chance(self.rates.hold) {
            let id = pick(&mut self.rng, &open);
            let until = now + self.rng.gen_range(1..=300) * TICK_US;
            self.trace.add(&[12, id, until]);
            if let Some(c) = self.conns.get_mut(&id) {
                c.up.hold(until);
                c.down.hold(until);
            }
        }
        if self.chance(self.rates.partition) {
            let client = self.rng.gen_range(0..self.clients.len());
            let until = now + self.rng.gen_range(1..=500) * TICK_US;
            self.trace.add(&[13, client as u64, until]);
            self.partitioned.insert(client, until);
            if let Some(id) = self.clients[client].conn {
                let delay = self.rng.gen_range(0..=100) * TICK_US;
                self.cut(id, delay);
            }
        }
        if self.chance(self.rates.restart) {
            let client = self.rng.gen_range(0..self.clients.len());
            self.restarts += 1;
            self.trace.add(&[14, client as u64]);
            if let Some(id) = self.clients[client].conn {
                // The socket closes with the process: the broker learns soon.
                self.cut(id, 0);
                self.owner.remove(&id);
            }
            self.clients[client].restart(now);
        }
    }

    /// Cuts a connection; the client learns after `delay`, the broker
    /// after the latency.
    fn cut(&mut self, id: u64, delay: u64) {
        let now = self.now;
        if let Some(c) = self.conns.get_mut(&id) {
            let latency = c.latency;
            c.cut(now + latency, now + latency + delay);
        }
    }

    fn tick(&mut self, chaos: bool) -> Result<(), Failure> {
        self.now += TICK_US;
        let now = self.now;
        self.partitioned.retain(|_, until| *until > now);
        if self.broker.is_none() && now >= self.broker_down_until {
            self.broker = Some(SimBroker::start(self.broker_cfg.clone(), self.log.clone()));
            self.trace.add(&[20, now]);
        }
        self.notice_cuts();
        self.connect();
        // The applications publish.
        if chaos {
            for i in 0..self.clients.len() {
                if self.chance(self.publish_rate) {
                    let rooms = &self.clients[i].rooms;
                    let room = rooms[self.rng.gen_range(0..rooms.len())].clone();
                    self.clients[i].publish(room, now, &mut self.trace);
                    self.published += 1;
                }
            }
        }
        self.flush_clients()?;
        if let Some(broker) = &mut self.broker {
            let fault = if chaos && self.rng.gen_range(0..256) < u32::from(self.rates.commit) {
                pick(
                    &mut self.rng,
                    &[
                        CommitFault::Refuse,
                        CommitFault::WriteThenFail,
                        CommitFault::NoSpace,
                    ],
                )
            } else {
                CommitFault::None
            };
            let dice = Dice {
                fault,
                answer: if chaos { self.rates.answer } else { 255 },
                read_fault: chaos && self.rng.gen_range(0..256) < u32::from(self.rates.read),
                fanout: !chaos || self.rng.gen_ratio(4, 5),
                catchup: !chaos || self.rng.gen_ratio(3, 4),
            };
            broker.tick(now, dice, &mut self.rng, &mut self.conns)?;
            if now >= self.next_sweep {
                self.next_sweep = now + 50 * TICK_US;
                broker.sweep(now);
            }
            self.trace.add(&[21, broker.steps]);
            broker.check_bounds(self.rooms.len())?;
        }
        for i in 0..self.clients.len() {
            if let Some(id) = self.clients[i].conn {
                if let Some(conn) = self.conns.get_mut(&id) {
                    self.clients[i].receive(now, conn, &mut self.ledger, &mut self.trace)?;
                }
            }
            // Applications read at their own pace; some stall for a while.
            let n = if chaos {
                pick(&mut self.rng, &[0, 0, 1, 2, 8])
            } else {
                pick(&mut self.rng, &[4, 64])
            };
            self.clients[i].app_take(n, &mut self.trace)?;
            self.clients[i].check_bounds()?;
        }
        self.flush_clients()
    }

    fn flush_clients(&mut self) -> Result<(), Failure> {
        for c in &mut self.clients {
            if let Some(conn) = c.conn.and_then(|id| self.conns.get_mut(&id)) {
                c.flush(self.now, conn)?;
            }
        }
        Ok(())
    }

    /// Each side of a cut connection learns of it in its time.
    fn notice_cuts(&mut self) {
        let now = self.now;
        let mut gone = Vec::new();
        for (id, c) in &self.conns {
            let broker_knows = c.broker_knows_at.is_some_and(|t| t <= now);
            let client_knows = c.client_knows_at.is_some_and(|t| t <= now);
            if broker_knows {
                if let Some(b) = &mut self.broker {
                    b.disconnect(*id);
                }
            }
            if client_knows {
                if let Some(&i) = self.owner.get(id) {
                    if self.clients[i].conn == Some(*id) {
                        let jitter = self.rng.gen_range(0..=5) * TICK_US;
                        self.clients[i].lost(now, jitter);
                    }
                }
            }
            if broker_knows && client_knows {
                gone.push(*id);
            }
        }
        for id in gone {
            self.conns.remove(&id);
            self.owner.remove(&id);
        }
    }

    /// Clients due to (re)connect try.
    fn connect(&mut self) {
        let now = self.now;
        for i in 0..self.clients.len() {
            let c = &self.clients[i];
            if c.conn.is_some() || c.reconnect_at > now {
                continue;
            }
            let jitter = self.rng.gen_range(0..=5) * TICK_US;
            let reachable = self.broker.is_some() && !self.partitioned.contains_key(&i);
            if !reachable {
                self.clients[i].refused(now, jitter);
                continue;
            }
            let id = self.next_conn;
            self.next_conn += 1;
            let link = self.links[i];
            let latency = self.rng.gen_range(0..=link.latency);
            self.conns
                .insert(id, Conn::new(link.capacity, link.bandwidth, latency));
            self.owner.insert(id, i);
            if let Some(b) = &mut self.broker {
                let c = &self.clients[i];
                b.accept(id, &c.user.clone(), &c.device.clone());
            }
            self.clients[i].connected(id);
            self.trace.add(&[22, i as u64, id]);
        }
    }

    fn head(&self, room: &RoomId) -> u64 {
        self.memory.bounds(room).map_or(0, |b| b.head.0)
    }

    /// Every publish acknowledged, every application at every head,
    /// nothing left anywhere.
    fn settled(&self) -> Result<bool, Failure> {
        if !self.broker.as_ref().is_some_and(SimBroker::is_idle) {
            return Ok(false);
        }
        if self
            .conns
            .values()
            .any(|c| c.up.in_flight() > 0 || c.down.in_flight() > 0)
        {
            return Ok(false);
        }
        for c in &self.clients {
            if c.conn.is_none() || c.unacknowledged() > 0 || c.app_backlog() > 0 {
                return Ok(false);
            }
            for room in &c.rooms {
                let head = self.head(room);
                let last = c.app_last(room);
                if head > 0 && last != Some(head) && !(c.cfg.live && last.is_none()) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn progress(&self) -> String {
        let mut behind = Vec::new();
        for c in &self.clients {
            for room in &c.rooms {
                let head = self.head(room);
                if c.app_last(room) != Some(head) {
                    behind.push(format!("{}@{room}:{:?}/{head}", c.user, c.app_last(room)));
                }
            }
            if c.unacknowledged() > 0 {
                behind.push(format!("{}: {} unacked", c.user, c.unacknowledged()));
            }
        }
        let idle = self.broker.as_ref().map(SimBroker::is_idle);
        let mut detail = String::new();
        if let Some(c) = self.clients.iter().find(|c| {
            c.rooms.iter().any(|r| c.app_last(r) != Some(self.head(r))) || c.unacknowledged() > 0
        }) {
            detail = c.dump();
            if let (Some(b), Some(id)) = (&self.broker, c.conn) {
                detail.push('\n');
                detail.push_str(&b.dump(id));
                if let Some(conn) = self.conns.get(&id) {
                    detail.push_str(&format!("\n{conn:?}"));
                }
            }
        }
        format!(
            "broker idle {idle:?}; behind: {}\n{detail}",
            behind.join(", ")
        )
    }

    /// The checks at the end of a run.
    fn check_final(&self) -> Result<(), Failure> {
        let log: &dyn RoomLog = self.memory.as_ref();
        // Every room gap-free, no publish stored twice.
        let mut ids = BTreeSet::new();
        for room in &self.rooms {
            let b = log
                .bounds(room)
                .map_err(|e| Failure::new(format!("bounds: {e}")))?;
            let recs = log
                .read_range(room, Seq(1), b.head, usize::MAX, usize::MAX)
                .map_err(|e| Failure::new(format!("read: {e}")))?;
            for (i, r) in recs.iter().enumerate() {
                if r.seq.0 != i as u64 + 1 {
                    return Err(Failure::new(format!(
                        "{room} has {} at position {} (head {})",
                        r.seq,
                        i + 1,
                        b.head
                    )));
                }
            }
            if recs.len() as u64 != b.head.0 {
                return Err(Failure::new(format!(
                    "{room}: {} records, head {}",
                    recs.len(),
                    b.head
                )));
            }
            for r in recs {
                let rec = confab_codec::EventRecord::decode(r.bytes)
                    .map_err(|e| Failure::new(e.to_string()))?;
                let key = (room.clone(), rec.sender.clone(), rec.client_msg_id);
                if !ids.insert(key) {
                    return Err(Failure::new(format!(
                        "{} id {} stored twice in {room}",
                        rec.sender, rec.client_msg_id
                    )));
                }
            }
        }
        self.ledger.check_store(log)?;
        // Every application took what the store holds.
        for c in &self.clients {
            for (room, app) in &c.app {
                for ev in &app.taken {
                    let rec = stored(log, room, ev.seq)?;
                    if rec != *ev {
                        return Err(Failure::new(format!(
                            "{} took {room} {} unlike the store's",
                            c.user, ev.seq
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}
