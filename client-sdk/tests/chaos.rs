//! Chaos test: the SDK against the real broker through a fault-injecting
//! TCP proxy (tests/support/proxy.rs) that drops, stalls, delays and
//! truncates connections at random points.
//!
//! Publishers and subscribers work over many rooms while the proxy injects
//! faults, the test cuts every connection a few times, restarts the broker
//! (same data directory and port) and restarts one subscriber application
//! (with a file cursor store) mid-run. One subscriber reads slowly with a
//! tiny buffer, so its rooms are paused and resumed. Then faults stop and
//! the test checks that:
//!
//! - every publish was acknowledged;
//! - each room's log holds sequences `1..=head` without gaps, every
//!   acknowledged publish at its acknowledged sequence, nothing else, and
//!   no `(sender, client_msg_id)` twice (retries were deduplicated);
//! - every subscriber received, for every room it follows, exactly the
//!   log: each sequence `1..=head` once, in order, with the logged content.
//!
//! The random choices (rooms, pacing, faults, cut times) come from one seed,
//! printed at the start; set `CONFAB_FAULT_SEED` to replay a seed's fault
//! plan. Thread scheduling still varies between runs, so a replay follows
//! the same plan but not necessarily the same interleaving.
//!
//! No timing is asserted; every wait is bounded and generous.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use confab_broker::config::Config;
use confab_broker::{Broker, BrokerError, BrokerHandle};
use confab_client::confab_codec::{DeviceId, RoomId, Seq};
use confab_client::{
    BackoffConfig, Client, ClientConfig, ConnectionEvent, Endpoint, FileCursorStore, Message,
    PendingPublish, RoomEvent,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::proxy::{FaultConfig, FaultProxy, FaultStats};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PUBLISHERS: usize = 4;
const SUBSCRIBERS: usize = 4;
const ROOMS: usize = 16;
const PER_PUBLISHER: usize = 750;
const TOTAL: usize = PUBLISHERS * PER_PUBLISHER;
/// Publishes a publisher keeps unacknowledged.
const WINDOW: usize = 32;
/// The subscriber restarted mid-run (with a file cursor store).
const RESTARTED: usize = 3;
/// The subscriber that reads slowly through a tiny buffer.
const SLOW: usize = 1;

/// Most time for the publishing phase, faults and restarts included.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(90);
/// Most time for one acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Most time for subscribers to reach the heads once faults stop.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);

fn seed() -> u64 {
    match std::env::var("CONFAB_FAULT_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("CONFAB_FAULT_SEED must be an unsigned 64-bit integer"),
        Err(_) => rand::random(),
    }
}

fn room(i: usize) -> RoomId {
    RoomId::new(format!("chaos-{i:02}")).unwrap()
}

/// The rooms subscriber `s` follows: all but a quarter, so that every room
/// has three subscribers and every subscriber has rooms it does not follow.
fn followed(s: usize) -> Vec<RoomId> {
    (0..ROOMS).filter(|r| r % 4 != s % 4).map(room).collect()
}

async fn start_broker(dir: &Path, addr: SocketAddr) -> BrokerHandle {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.listen.tcp = addr;
    // QUIC listens on a fixed port by default; not needed here.
    config.listen.quic = None;
    // Faults are the subject here, not rate limits (tested in sdk_chat.rs).
    config.rate_limits.enabled = false;
    // A small per-device queue, so that stalled devices are switched to
    // catch-up from the log (Lagging / CaughtUp) now and then.
    config.delivery.queue_capacity = 32;
    config.delivery.catchup_batch = 64;
    // The port of a broker just shut down may take a moment to free up.
    for _ in 0..200 {
        match Broker::builder(config.clone()).start().await {
            Ok(handle) => return handle,
            Err(BrokerError::Bind { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("broker did not start: {e}"),
        }
    }
    panic!("could not bind {addr} again");
}

fn sdk_config(addr: SocketAddr, user: &str) -> ClientConfig {
    let mut c = ClientConfig::with_endpoint(
        Endpoint::tcp(addr),
        format!("{user}:dev"),
        DeviceId::new("dev").unwrap(),
    );
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(250),
        multiplier: 2.0,
        max_attempts: None,
    };
    // Short enough that proxy stalls longer than a second are detected as
    // dead links; the connect timeout exceeds the longest stall, so a
    // handshake is never abandoned while its Hello is merely stalled.
    c.heartbeat_interval = Duration::from_millis(300);
    c.dead_link_timeout = Duration::from_millis(1000);
    c.connect_timeout = Duration::from_secs(5);
    c.request_timeout = Duration::from_secs(30);
    c
}

/// What a subscriber received, in the order it received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    seq: u64,
    sender: String,
    client_msg_id: u64,
    payload: Bytes,
}

impl From<&RoomEvent> for Got {
    fn from(e: &RoomEvent) -> Self {
        Got {
            seq: e.seq.0,
            sender: e.sender.as_str().to_owned(),
            client_msg_id: e.client_msg_id,
            payload: e.payload.clone(),
        }
    }
}

type Received = Arc<Mutex<HashMap<RoomId, Vec<Got>>>>;
type Problems = Arc<Mutex<Vec<String>>>;

/// Connection events of every client, counted for the summary; a client
/// that stops is a problem.
#[derive(Default)]
struct EventCounts {
    disconnected: AtomicUsize,
    reconnected: AtomicUsize,
    paused: AtomicUsize,
    lagging: AtomicUsize,
}

fn watch_events(client: &Client, name: String, counts: Arc<EventCounts>, problems: Problems) {
    let mut rx = client.events();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ConnectionEvent::Disconnected { .. }) => {
                    counts.disconnected.fetch_add(1, Ordering::Relaxed);
                }
                Ok(ConnectionEvent::Reconnected { .. }) => {
                    counts.reconnected.fetch_add(1, Ordering::Relaxed);
                }
                Ok(ConnectionEvent::Paused { .. }) => {
                    counts.paused.fetch_add(1, Ordering::Relaxed);
                }
                Ok(ConnectionEvent::Lagging { .. }) => {
                    counts.lagging.fetch_add(1, Ordering::Relaxed);
                }
                Ok(ConnectionEvent::HistoryTruncated { room, from, to }) => {
                    problems.lock().unwrap().push(format!(
                        "{name}: history truncated in {room}: {from}..={to}"
                    ));
                }
                Ok(ConnectionEvent::PublishFailed { error, .. }) => {
                    problems
                        .lock()
                        .unwrap()
                        .push(format!("{name}: publish failed: {error}"));
                }
                Ok(ConnectionEvent::Closed { error: Some(e) }) => {
                    problems
                        .lock()
                        .unwrap()
                        .push(format!("{name}: client stopped: {e}"));
                    return;
                }
                Ok(ConnectionEvent::Closed { error: None }) | Err(RecvError::Closed) => return,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
            }
        }
    });
}

/// One running instance of a subscriber application.
struct SubscriberApp {
    client: Client,
    stop: CancellationToken,
    readers: Vec<JoinHandle<()>>,
}

struct Subscriber {
    index: usize,
    rooms: Vec<RoomId>,
    received: Received,
    cursor_file: Option<PathBuf>,
    app: Option<SubscriberApp>,
    restarts: usize,
}

impl Subscriber {
    fn name(&self) -> String {
        format!("sub{}", self.index)
    }

    /// Starts the application: a client through the proxy, a subscription
    /// per room (from the cursor if the store has one, else from the first
    /// message), and a reader task per room.
    async fn start(&mut self, proxy: SocketAddr, counts: &Arc<EventCounts>, problems: &Problems) {
        let mut config = sdk_config(proxy, &self.name());
        let slow = self.index == SLOW;
        if slow {
            config.event_buffer_capacity = 8;
        }
        if let Some(path) = &self.cursor_file {
            let store = FileCursorStore::open(path).await.unwrap();
            config = config.cursor_store(store);
        }
        let cursors = config.cursor_store.clone();
        // Offline-first: a fault on the first connection must not fail it.
        let client = Client::start(config).unwrap();
        watch_events(
            &client,
            format!("{}#{}", self.name(), self.restarts),
            counts.clone(),
            problems.clone(),
        );
        let stop = CancellationToken::new();
        let mut readers = Vec::new();
        for room in &self.rooms {
            let sub = match cursors.get(room) {
                Some(_) => client.subscribe(room).await,
                None => client.subscribe_from(room, Seq(1)).await,
            };
            let mut sub = sub.unwrap_or_else(|e| panic!("{}: subscribe {room}: {e}", self.name()));
            let received = self.received.clone();
            let problems = problems.clone();
            let stop = stop.clone();
            let name = self.name();
            let room = room.clone();
            readers.push(tokio::spawn(async move {
                let mut taken = 0u32;
                loop {
                    let item = tokio::select! {
                        _ = stop.cancelled() => break,
                        item = sub.next() => item,
                    };
                    match item {
                        Some(Ok(event)) => {
                            received
                                .lock()
                                .unwrap()
                                .entry(room.clone())
                                .or_default()
                                .push(Got::from(&event));
                            taken += 1;
                            if slow && taken == 16 {
                                taken = 0;
                                tokio::time::sleep(Duration::from_millis(3)).await;
                            }
                        }
                        Some(Err(e)) => {
                            problems
                                .lock()
                                .unwrap()
                                .push(format!("{name}: subscription {room} failed: {e}"));
                            break;
                        }
                        None => break,
                    }
                }
            }));
        }
        self.app = Some(SubscriberApp {
            client,
            stop,
            readers,
        });
    }

    /// Stops the application cleanly: readers stop taking events, then the
    /// client closes (which persists the cursors).
    async fn stop(&mut self) {
        let Some(app) = self.app.take() else { return };
        app.stop.cancel();
        for reader in app.readers {
            tokio::time::timeout(Duration::from_secs(10), reader)
                .await
                .expect("a reader did not stop")
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), app.client.close())
            .await
            .expect("close did not finish");
    }

    /// The last sequence received in `room`.
    fn last(&self, room: &RoomId) -> u64 {
        self.received
            .lock()
            .unwrap()
            .get(room)
            .and_then(|v| v.last())
            .map_or(0, |g| g.seq)
    }
}

/// An acknowledged publish.
#[derive(Debug, Clone)]
struct Acked {
    room: RoomId,
    seq: u64,
    client_msg_id: u64,
    sender: String,
    payload: Bytes,
}

struct Sent {
    index: usize,
    room: RoomId,
    payload: Bytes,
    pending: PendingPublish,
}

async fn settle(sent: Sent, sender: &str) -> Result<Acked, String> {
    let id = sent.pending.client_msg_id();
    let ack = match tokio::time::timeout(ACK_TIMEOUT, sent.pending).await {
        Err(_) => {
            return Err(format!(
                "{sender}: message {} not acknowledged within {ACK_TIMEOUT:?}",
                sent.index
            ))
        }
        Ok(Err(e)) => return Err(format!("{sender}: message {} failed: {e}", sent.index)),
        Ok(Ok(ack)) => ack,
    };
    if ack.room != sent.room || ack.client_msg_id != id || ack.seq.0 == 0 {
        return Err(format!(
            "{sender}: message {} got a mismatched ack {ack:?}",
            sent.index
        ));
    }
    Ok(Acked {
        room: sent.room,
        seq: ack.seq.0,
        client_msg_id: id,
        sender: sender.to_owned(),
        payload: sent.payload,
    })
}

/// Publishes `PER_PUBLISHER` messages to seeded random rooms, keeping up to
/// `WINDOW` unacknowledged, pausing briefly now and then so that the run
/// spans the faults.
async fn publish_all(
    client: Client,
    index: usize,
    seed: u64,
    progress: Arc<AtomicUsize>,
) -> Result<Vec<Acked>, String> {
    let sender = format!("pub{index}");
    let mut rng = StdRng::seed_from_u64(seed ^ (0xA5A5_0000 + index as u64));
    let mut window = VecDeque::new();
    let mut acked = Vec::with_capacity(PER_PUBLISHER);
    for k in 0..PER_PUBLISHER {
        let room = room(rng.gen_range(0..ROOMS));
        let payload = Bytes::from(format!("p{index}-{k}"));
        let message = Message::new(room.clone(), payload.clone());
        let pending = tokio::time::timeout(ACK_TIMEOUT, client.enqueue(message))
            .await
            .map_err(|_| format!("{sender}: no queue space for message {k}"))?
            .map_err(|e| format!("{sender}: enqueue {k}: {e}"))?;
        window.push_back(Sent {
            index: k,
            room,
            payload,
            pending,
        });
        if window.len() >= WINDOW {
            if let Some(sent) = window.pop_front() {
                acked.push(settle(sent, &sender).await?);
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }
        if k % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(10..70))).await;
        }
    }
    while let Some(sent) = window.pop_front() {
        acked.push(settle(sent, &sender).await?);
        progress.fetch_add(1, Ordering::Relaxed);
    }
    Ok(acked)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chaos {
    CutAll,
    RestartBroker,
    RestartSubscriber,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_message_reaches_every_subscriber_exactly_once() {
    let seed = seed();
    let started = Instant::now();
    println!("chaos: seed {seed} (replay with CONFAB_FAULT_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let data = tempfile::tempdir().unwrap();
    let app_dir = tempfile::tempdir().unwrap();
    let mut broker = start_broker(data.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = broker.tcp_addr();
    let proxy = FaultProxy::start(addr, seed, FaultConfig::default())
        .await
        .unwrap();
    let counts = Arc::new(EventCounts::default());
    let problems: Problems = Arc::default();

    // Subscribers first, from sequence 1, so they must see everything.
    let mut subscribers = Vec::new();
    for index in 0..SUBSCRIBERS {
        let mut s = Subscriber {
            index,
            rooms: followed(index),
            received: Arc::default(),
            cursor_file: (index == RESTARTED).then(|| app_dir.path().join("sub-cursors")),
            app: None,
            restarts: 0,
        };
        s.start(proxy.addr(), &counts, &problems).await;
        subscribers.push(s);
    }

    let progress = Arc::new(AtomicUsize::new(0));
    let mut publishers = Vec::new();
    let mut publisher_clients = Vec::new();
    for index in 0..PUBLISHERS {
        let client = Client::start(sdk_config(proxy.addr(), &format!("pub{index}"))).unwrap();
        watch_events(
            &client,
            format!("pub{index}"),
            counts.clone(),
            problems.clone(),
        );
        publisher_clients.push(client.clone());
        publishers.push(tokio::spawn(publish_all(
            client,
            index,
            seed,
            progress.clone(),
        )));
    }

    // The chaos schedule, by publishing progress: forced cuts of every
    // connection, one broker restart and one application restart, plus
    // cuts at seeded random times.
    let mut milestones = VecDeque::from([
        (0.10, Chaos::CutAll),
        (0.25, Chaos::CutAll),
        (0.40, Chaos::CutAll),
        (0.50, Chaos::RestartBroker),
        (0.62, Chaos::RestartSubscriber),
        (0.75, Chaos::CutAll),
        (0.90, Chaos::CutAll),
    ]);
    let mut fired = Vec::new();
    let publish_deadline = Instant::now() + PUBLISH_DEADLINE;
    let mut next_cut = Instant::now() + Duration::from_millis(rng.gen_range(300..1200));
    while !publishers.iter().all(JoinHandle::is_finished) {
        let done = progress.load(Ordering::Relaxed) as f64 / TOTAL as f64;
        while let Some(&(at, what)) = milestones.front() {
            if done < at {
                break;
            }
            milestones.pop_front();
            fired.push(format!("{what:?} at {:.0}%", done * 100.0));
            match what {
                Chaos::CutAll => proxy.cut_all(),
                Chaos::RestartBroker => {
                    broker.shutdown().await;
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
                    broker = start_broker(data.path(), addr).await;
                }
                Chaos::RestartSubscriber => {
                    let s = &mut subscribers[RESTARTED];
                    s.stop().await;
                    s.restarts += 1;
                    s.start(proxy.addr(), &counts, &problems).await;
                }
            }
        }
        if Instant::now() >= next_cut {
            proxy.cut_all();
            fired.push(format!("random cut at {:.0}%", done * 100.0));
            next_cut = Instant::now() + Duration::from_millis(rng.gen_range(300..1200));
        }
        assert!(
            Instant::now() < publish_deadline,
            "seed {seed}: publishing did not finish within {PUBLISH_DEADLINE:?} \
             ({} of {TOTAL} acknowledged); problems: {:?}",
            progress.load(Ordering::Relaxed),
            problems.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publish_time = started.elapsed();
    for needed in ["RestartBroker", "RestartSubscriber"] {
        assert!(
            fired.iter().any(|f| f.starts_with(needed)),
            "seed {seed}: {needed} never happened: {fired:?}"
        );
    }

    let mut acked = Vec::with_capacity(TOTAL);
    for p in publishers {
        match p.await.unwrap() {
            Ok(a) => acked.extend(a),
            Err(e) => panic!("seed {seed}: {e}"),
        }
    }
    assert_eq!(acked.len(), TOTAL, "seed {seed}");

    // Calm: no more random faults. Subscribers must now converge.
    proxy.set_faults(false);

    // The logs, read directly from the broker.
    let verifier = Client::connect(sdk_config(addr, "verifier")).await.unwrap();
    let mut logs: HashMap<RoomId, Vec<RoomEvent>> = HashMap::new();
    for r in 0..ROOMS {
        let room = room(r);
        let log = verifier.history(&room, ..).await.unwrap();
        logs.insert(room, log);
    }
    check_logs(seed, &logs, &acked);

    // Wait until every subscriber has received up to every head.
    let converge_deadline = Instant::now() + CONVERGE_DEADLINE;
    loop {
        let behind: Vec<String> = subscribers
            .iter()
            .flat_map(|s| {
                s.rooms.iter().filter_map(|room| {
                    let head = logs[room].len() as u64;
                    let last = s.last(room);
                    (last < head).then(|| format!("{} {room}: {last}/{head}", s.name()))
                })
            })
            .collect();
        if behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < converge_deadline,
            "seed {seed}: subscribers did not catch up within {CONVERGE_DEADLINE:?}: \
             {behind:?}; problems: {:?}",
            problems.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything extra (a duplicate) would arrive now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in &mut subscribers {
        s.stop().await;
    }

    let problems = problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "seed {seed}: {problems:#?}");
    for s in &subscribers {
        let received = s.received.lock().unwrap();
        for room in &s.rooms {
            let expected: Vec<Got> = logs[room].iter().map(Got::from).collect();
            let got = received.get(room).map(Vec::as_slice).unwrap_or_default();
            check_delivery(seed, &s.name(), room, got, &expected);
        }
        // Nothing from rooms it does not follow.
        for room in received.keys() {
            assert!(
                s.rooms.contains(room),
                "seed {seed}: {} got {room}",
                s.name()
            );
        }
    }

    let stats = proxy.stats();
    summary(seed, started, publish_time, &fired, &counts, stats);
    assert!(
        stats.injected() > 0 && stats.forced_cuts > 0,
        "seed {seed}: the proxy injected no faults: {stats:?}"
    );

    for c in publisher_clients {
        c.close().await;
    }
    verifier.close().await;
    drop(proxy);
    broker.shutdown().await;
}

/// Each room's log is `1..=head` without gaps, holds every acknowledged
/// publish at its acknowledged sequence and nothing else, and no
/// `(sender, client_msg_id)` twice.
fn check_logs(seed: u64, logs: &HashMap<RoomId, Vec<RoomEvent>>, acked: &[Acked]) {
    let mut by_seq: HashMap<(RoomId, u64), &Acked> = HashMap::new();
    for a in acked {
        if let Some(other) = by_seq.insert((a.room.clone(), a.seq), a) {
            panic!(
                "seed {seed}: two publishes acknowledged as {} #{}: {other:?} and {a:?}",
                a.room, a.seq
            );
        }
    }
    let mut stored = 0;
    for (room, log) in logs {
        let seqs: Vec<u64> = log.iter().map(|e| e.seq.0).collect();
        let contiguous: Vec<u64> = (1..=log.len() as u64).collect();
        assert_eq!(seqs, contiguous, "seed {seed}: {room}'s log has gaps");
        let mut ids = HashSet::new();
        for e in log {
            assert!(
                ids.insert((e.sender.as_str().to_owned(), e.client_msg_id)),
                "seed {seed}: {room} #{}: ({}, {}) stored twice",
                e.seq,
                e.sender,
                e.client_msg_id
            );
            let Some(a) = by_seq.get(&(room.clone(), e.seq.0)) else {
                panic!(
                    "seed {seed}: {room} #{} ({}: {:?}) was stored but never acknowledged \
                     at that sequence",
                    e.seq, e.sender, e.payload
                );
            };
            assert!(
                e.sender.as_str() == a.sender
                    && e.client_msg_id == a.client_msg_id
                    && e.payload == a.payload,
                "seed {seed}: {room} #{} holds {e:?}, acknowledged as {a:?}",
                e.seq
            );
            stored += 1;
        }
    }
    // With the checks above: every acknowledged publish is stored, once.
    assert_eq!(stored, acked.len(), "seed {seed}: stored vs acknowledged");
}

/// A subscriber received exactly the log: each sequence once, in order.
fn check_delivery(seed: u64, name: &str, room: &RoomId, got: &[Got], expected: &[Got]) {
    if got == expected {
        return;
    }
    let mut seen = HashSet::new();
    let dups: Vec<u64> = got
        .iter()
        .filter(|g| !seen.insert(g.seq))
        .map(|g| g.seq)
        .collect();
    let out_of_order = got.windows(2).find(|w| w[1].seq != w[0].seq + 1);
    let missing: Vec<u64> = expected
        .iter()
        .filter(|e| !seen.contains(&e.seq))
        .map(|e| e.seq)
        .take(20)
        .collect();
    let wrong = got.iter().find(|g| {
        let at = usize::try_from(g.seq).unwrap_or(usize::MAX).checked_sub(1);
        at.and_then(|i| expected.get(i)).is_some_and(|e| e != *g)
    });
    panic!(
        "seed {seed}: {name} {room}: received {} events, expected {}; duplicates {dups:?}; \
         first out of order {out_of_order:?}; missing (first 20) {missing:?}; \
         first differing content {wrong:?}",
        got.len(),
        expected.len()
    );
}

fn summary(
    seed: u64,
    started: Instant,
    publish_time: Duration,
    fired: &[String],
    counts: &EventCounts,
    stats: FaultStats,
) {
    println!(
        "chaos: seed {seed}: {TOTAL} messages, {PUBLISHERS} publishers, {SUBSCRIBERS} subscribers, \
         {ROOMS} rooms; published in {publish_time:.1?}, verified in {:.1?}",
        started.elapsed()
    );
    println!("chaos: schedule: {}", fired.join(", "));
    println!(
        "chaos: clients saw {} disconnects, {} reconnects, {} paused rooms, {} lagging rooms",
        counts.disconnected.load(Ordering::Relaxed),
        counts.reconnected.load(Ordering::Relaxed),
        counts.paused.load(Ordering::Relaxed),
        counts.lagging.load(Ordering::Relaxed)
    );
    println!("chaos: proxy: {stats:?}");
}
