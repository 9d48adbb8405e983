//! What the chat-shaped scenarios share across systems: the room layout of
//! `rooms` (which device is in which room, who publishes where), the
//! sharded latency collector its thousands of subscribers record into, and
//! the per-window collector of `slow`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{now_ns, Knobs};
use crate::peers::{pace, Sender};
use crate::report::{histogram, Latency};
use crate::target::cpu_secs;

/// A small deterministic generator (xorshift64*), so every system gets the
/// same layout in every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The layout of the `rooms` scenario: `devices` connections, each
/// following many rooms of a few members.
#[derive(Debug)]
pub struct RoomsShape {
    /// The devices in each room.
    pub members: Vec<Vec<u32>>,
    /// The rooms of each device.
    pub rooms_of: Vec<Vec<u32>>,
    /// Devices `0..publishers` publish (each to its own rooms, in turn).
    pub publishers: usize,
}

impl RoomsShape {
    /// `rooms` rooms of `min..=max` members drawn from `devices` devices
    /// (the same layout for the same arguments).
    pub fn new(rooms: usize, devices: usize, min: usize, max: usize, publishers: usize) -> Self {
        let devices = devices.max(1);
        let max = max.clamp(1, devices);
        let min = min.clamp(1, max);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut members = Vec::with_capacity(rooms);
        let mut rooms_of = vec![Vec::new(); devices];
        for r in 0..rooms {
            let n = min + rng.below(max - min + 1);
            let mut m: Vec<u32> = Vec::with_capacity(n);
            while m.len() < n {
                let d = rng.below(devices) as u32;
                if !m.contains(&d) {
                    m.push(d);
                }
            }
            for &d in &m {
                rooms_of[d as usize].push(r as u32);
            }
            members.push(m);
        }
        // Publishers must be in at least one room.
        let publishers = publishers.clamp(1, devices);
        RoomsShape {
            members,
            rooms_of,
            publishers,
        }
    }

    /// Device-room memberships in all.
    pub fn memberships(&self) -> usize {
        self.members.iter().map(Vec::len).sum()
    }

    /// Rooms in which at least one publisher is a member.
    pub fn active_rooms(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.iter().any(|&d| (d as usize) < self.publishers))
            .count()
    }

    /// The layout in words, for the row's parameters.
    pub fn describe(&self) -> String {
        let (min, max) = self
            .members
            .iter()
            .map(Vec::len)
            .fold((usize::MAX, 0), |(a, b), n| (a.min(n), b.max(n)));
        format!(
            "{} rooms of {}-{}, {} devices ({} publish)",
            self.members.len(),
            min,
            max,
            self.rooms_of.len(),
            self.publishers
        )
    }
}

/// Turns the paced stream of stamps into (device, room) publishes: message
/// `i` is sent by publisher `i % publishers`, to the next of its rooms in
/// turn. Counts the deliveries expected of the measured messages.
pub struct Dispatch {
    shape: Arc<RoomsShape>,
    collector: Arc<Collector>,
    next: usize,
    turn: Vec<usize>,
    pubs: Vec<u32>,
}

impl Dispatch {
    /// A dispatcher over `shape`'s publishers that have rooms.
    pub fn new(shape: Arc<RoomsShape>, collector: Arc<Collector>) -> Dispatch {
        let pubs: Vec<u32> = (0..shape.publishers)
            .filter(|&d| !shape.rooms_of[d].is_empty())
            .map(|d| d as u32)
            .collect();
        Dispatch {
            turn: vec![0; shape.rooms_of.len()],
            shape,
            collector,
            next: 0,
            pubs,
        }
    }

    /// Splits `stamps` into one batch of (room, stamp) per publishing
    /// device, calling `each(device, batch)`.
    pub fn split(&mut self, stamps: &[u64], mut each: impl FnMut(usize, Vec<(u32, u64)>)) {
        if self.pubs.is_empty() {
            return;
        }
        let from = self.collector.from.load(Ordering::Relaxed);
        let mut expected = 0u64;
        let mut batches: Vec<(usize, Vec<(u32, u64)>)> = Vec::new();
        for &s in stamps {
            let d = self.pubs[self.next % self.pubs.len()] as usize;
            self.next += 1;
            let rooms = &self.shape.rooms_of[d];
            let room = rooms[self.turn[d] % rooms.len()];
            self.turn[d] += 1;
            if s >= from {
                expected += self.shape.members[room as usize].len() as u64;
            }
            match batches.iter_mut().find(|(bd, _)| *bd == d) {
                Some((_, b)) => b.push((room, s)),
                None => batches.push((d, vec![(room, s)])),
            }
        }
        self.collector
            .expected
            .fetch_add(expected, Ordering::Relaxed);
        for (d, b) in batches {
            each(d, b);
        }
    }
}

/// A device's publishing task's inbox: batches of (room, stamp).
pub type DeviceTx = tokio::sync::mpsc::UnboundedSender<Vec<(u32, u64)>>;

/// Hands each device's batch to that device's publishing task.
pub struct ChannelSender {
    /// The dispatcher.
    pub dispatch: Dispatch,
    /// One channel per device (`None` for devices that do not publish).
    pub outs: Vec<Option<DeviceTx>>,
}

impl Sender for ChannelSender {
    async fn send(&mut self, stamps: &[u64]) -> anyhow::Result<()> {
        let outs = &self.outs;
        let mut closed = false;
        self.dispatch.split(stamps, |d, batch| {
            if let Some(Some(tx)) = outs.get(d) {
                closed |= tx.send(batch).is_err();
            }
        });
        anyhow::ensure!(!closed, "a publishing device stopped");
        Ok(())
    }
}

/// Latency of many subscribers, recorded into a few shared histograms (a
/// histogram per subscriber would cost ~200 KiB each).
pub struct Collector {
    shards: Vec<Mutex<Histogram<u64>>>,
    from: AtomicU64,
    /// Deliveries seen (all, warm-up included).
    pub delivered: AtomicU64,
    /// Deliveries recorded (of messages sent after the warm-up).
    pub recorded: AtomicU64,
    /// Deliveries expected of the messages sent after the warm-up.
    pub expected: AtomicU64,
}

impl Collector {
    /// A collector that records nothing until [`Collector::start_at`].
    pub fn new() -> Arc<Collector> {
        Arc::new(Collector {
            shards: (0..16).map(|_| Mutex::new(histogram())).collect(),
            from: AtomicU64::new(u64::MAX),
            delivered: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            expected: AtomicU64::new(0),
        })
    }

    /// Records messages stamped at `from` or later.
    pub fn start_at(&self, from: u64) {
        self.from.store(from, Ordering::Relaxed);
    }

    /// Records the latency of messages stamped `stamps` that arrived now,
    /// at subscriber `who`.
    pub fn record(&self, who: usize, stamps: impl IntoIterator<Item = u64>) {
        let now = now_ns();
        let from = self.from.load(Ordering::Relaxed);
        let (mut seen, mut n) = (0u64, 0u64);
        let Ok(mut h) = self.shards[who % self.shards.len()].lock() else {
            return;
        };
        for s in stamps {
            seen += 1;
            if s >= from {
                h.saturating_record(now.saturating_sub(s).max(1));
                n += 1;
            }
        }
        drop(h);
        self.delivered.fetch_add(seen, Ordering::Relaxed);
        self.recorded.fetch_add(n, Ordering::Relaxed);
    }

    /// The latency recorded so far.
    pub fn latency(&self) -> Latency {
        let mut all = histogram();
        for s in &self.shards {
            if let Ok(h) = s.lock() {
                all.add(&*h).ok();
            }
        }
        Latency::from_ns(&all)
    }
}

/// The outcome of an open-loop `rooms` run.
#[derive(Debug)]
pub struct RoomsOutcome {
    /// Publishes per second achieved (measured part).
    pub achieved: f64,
    /// Deliveries per second (of the measured publishes).
    pub deliveries: f64,
    /// Deliveries per second the measured publishes should have made.
    pub offered_deliveries: f64,
    /// Publish-to-deliver latency, from the intended send time.
    pub latency: Latency,
    /// Seconds it took to connect and subscribe every device.
    pub setup_s: f64,
    /// Server CPU time per delivery while publishing (warm-up included), us.
    pub server_us: Option<f64>,
    /// The load generator's CPU time per delivery, over the same time, us.
    pub bench_us: Option<f64>,
    /// Bytes the devices read off the wire per delivery (Confab only).
    pub wire_bytes: Option<f64>,
    /// Loss or lateness, if any.
    pub notes: Option<String>,
}

/// Publishes at `rate` msgs/s through `sender` (a dispatcher over the
/// devices), waits up to 2 s for the tail, and sums up. The subscribers
/// record into `collector`.
pub async fn rooms_open_loop<S: Sender>(
    rate: f64,
    k: &Knobs,
    collector: &Arc<Collector>,
    sender: &mut S,
    setup_s: f64,
    server_cpu: &(dyn Fn() -> Option<f64> + Sync),
) -> anyhow::Result<RoomsOutcome> {
    let c = collector.clone();
    let cpu = || (server_cpu(), cpu_secs("self"));
    let (cpu0, d0) = (cpu(), collector.delivered.load(Ordering::Relaxed));
    let sched = pace(rate, k, sender, move |from| c.start_at(from)).await?;
    let (cpu1, d1) = (cpu(), collector.delivered.load(Ordering::Relaxed));
    let per = |a: Option<f64>, b: Option<f64>| {
        let d = d1.saturating_sub(d0);
        Some((b? - a?) * 1e6 / d as f64).filter(|_| d > 0)
    };
    // The tail: until every expected delivery has arrived, 2 s at most.
    let expected = collector.expected.load(Ordering::Relaxed);
    for _ in 0..40 {
        if collector.recorded.load(Ordering::Relaxed) >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let latency = collector.latency();
    let secs = k.duration.as_secs_f64();
    let notes = (latency.count < expected).then(|| {
        format!(
            "LATE/LOST: {} of {expected} deliveries missing 2 s after the last publish",
            expected - latency.count
        )
    });
    Ok(RoomsOutcome {
        achieved: sched.measured() as f64 / secs,
        deliveries: latency.count as f64 / secs,
        offered_deliveries: expected as f64 / secs,
        latency,
        setup_s,
        server_us: per(cpu0.0, cpu1.0),
        bench_us: per(cpu0.1, cpu1.1),
        wire_bytes: None,
        notes,
    })
}

/// Per-window latency of many subscribers, by intended send time: window
/// `i` holds the messages stamped in `[t0 + i * width, t0 + (i + 1) * width)`.
pub struct Windows {
    t0: u64,
    width: u64,
    hists: Vec<Mutex<Histogram<u64>>>,
}

impl Windows {
    /// `count` windows of `width` from `t0` (ns, [`now_ns`] clock).
    pub fn new(t0: u64, width: Duration, count: usize) -> Arc<Windows> {
        Arc::new(Windows {
            t0,
            width: width.as_nanos().max(1) as u64,
            hists: (0..count).map(|_| Mutex::new(histogram())).collect(),
        })
    }

    /// Records messages stamped `stamps` that arrived now.
    pub fn record(&self, stamps: &[u64]) {
        let now = now_ns();
        let mut i = 0;
        while i < stamps.len() {
            let w = stamps[i].saturating_sub(self.t0) / self.width;
            let mut j = i + 1;
            while j < stamps.len() && stamps[j].saturating_sub(self.t0) / self.width == w {
                j += 1;
            }
            if stamps[i] >= self.t0 {
                if let Some(Ok(mut h)) = self.hists.get(w as usize).map(|m| m.lock()) {
                    for &s in &stamps[i..j] {
                        h.saturating_record(now.saturating_sub(s).max(1));
                    }
                }
            }
            i = j;
        }
    }

    /// The latency of each window.
    pub fn latencies(&self) -> Vec<Latency> {
        self.hists
            .iter()
            .map(|m| match m.lock() {
                Ok(h) => Latency::from_ns(&h),
                Err(_) => Latency::from_ns(&histogram()),
            })
            .collect()
    }
}
