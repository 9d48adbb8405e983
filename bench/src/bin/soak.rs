//! `confab-soak`: hours of load on the real `confab` binary with a `kill -9`
//! every few minutes and devices reconnecting all the time, checking that
//! nothing is lost or repeated and that the broker's memory and file
//! descriptors stay flat (docs/reliability.md, "Soak").
//!
//! ```sh
//! scripts/soak.sh --minutes 180            # kill -9 every 10 minutes, half load
//! ```
//!
//! What runs: publishers (SDK clients) publish to every room at half of the
//! rate they reach closed-loop in the first seconds (`--load`); subscriber
//! devices (SDK clients) follow every room from its first message. Every
//! `--kill-every` seconds the broker gets `SIGKILL` and is started again on
//! the same data directory; every `--reconnect-every` seconds one device
//! (subscribers and publishers in turn) closes its client and comes back
//! with a new one, resuming each room from the last sequence it took.
//!
//! What is checked, for every message: each payload names its publisher
//! and a counter per (publisher, room), so every subscriber must see, in
//! every room, sequences 1, 2, 3, ... and each publisher's counters 1, 2,
//! 3, ... with nothing missing and nothing twice; every publish must be
//! acknowledged (the SDK retries it across crashes) in counter order, with
//! increasing sequences; a sample of acknowledgements is read back at the
//! end and must hold the acknowledged message. Every 5 s the broker's RSS
//! and open file descriptors are written to `soak.csv`.
//!
//! Exit status 0 only if nothing was lost, repeated, reordered or refused.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use confab_client::confab_codec::{Direction, RoomId, Seq};
use confab_client::{Client, ClientConfig, Message, PendingPublish, Subscription};
use futures_util::stream::{SelectAll, StreamExt};
use tokio::sync::mpsc;
use tokio::time::sleep;

/// Hours of load with kill -9 and reconnecting devices; checks that
/// nothing is lost and that memory stays flat.
#[derive(Debug, Parser)]
struct Args {
    /// How long to run, in minutes (after the calibration).
    #[arg(long, default_value_t = 180.0)]
    minutes: f64,
    /// Seconds between two `kill -9` of the broker (0: never).
    #[arg(long, default_value_t = 600)]
    kill_every: u64,
    /// Seconds between two device reconnections (one device at a time).
    #[arg(long, default_value_t = 15)]
    reconnect_every: u64,
    /// The offered load, as a fraction of what the publishers reach
    /// closed-loop during the calibration.
    #[arg(long, default_value_t = 0.5)]
    load: f64,
    /// A fixed offered rate in messages/s instead of `--load`.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of closed-loop publishing that measure the maximum.
    #[arg(long, default_value_t = 15)]
    calibrate: u64,
    /// Rooms.
    #[arg(long, default_value_t = 16)]
    rooms: usize,
    /// Publisher devices (each publishes to every room).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Subscriber devices (each follows every room).
    #[arg(long, default_value_t = 8)]
    subscribers: usize,
    /// Payload bytes (at least 10).
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// `wal` or `fsync` (`none` loses acknowledged messages on kill -9).
    #[arg(long, default_value = "wal")]
    durability: String,
    /// The confab binary (default: next to this executable). It is copied
    /// into `--out` first, so a rebuild meanwhile changes nothing.
    #[arg(long)]
    bin: Option<PathBuf>,
    /// The broker's data directory (default: a new one under --out).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where soak.csv, broker.log and summary.txt go.
    #[arg(long, default_value = "soak-out")]
    out: PathBuf,
}

/// The checker's shared state.
struct State {
    rooms: Vec<RoomId>,
    publishers: usize,
    /// `acked[p][r]`: the last counter of publisher `p` in room `r` that
    /// was acknowledged (acknowledgements come in counter order).
    acked: Vec<Vec<AtomicU64>>,
    /// `seen[s][p][r]`: the last counter of publisher `p` in room `r` that
    /// subscriber `s` took.
    seen: Vec<Vec<Vec<AtomicU64>>>,
    /// Every broken promise, described.
    violations: Mutex<Vec<String>>,
    violation_count: AtomicU64,
    acked_total: AtomicU64,
    delivered_total: AtomicU64,
    reconnects: AtomicU64,
    /// A sample of acknowledgements, read back at the end: (room, seq) ->
    /// (publisher, counter).
    samples: Mutex<HashMap<(usize, u64), (u16, u64)>>,
    /// Pacing: messages each publisher may send per 10 ms tick (0 = as
    /// fast as the outbox lets it).
    per_tick: AtomicU64,
    stop_publishing: AtomicBool,
    stop: Stop,
}

/// A stop flag that tasks can wait on.
#[derive(Default)]
struct Stop {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Stop {
    fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

const MAX_VIOLATIONS_KEPT: usize = 200;
const SAMPLE_EVERY: u64 = 2048;
const MAX_SAMPLES: usize = 50_000;

impl State {
    fn violation(&self, what: String) {
        self.violation_count.fetch_add(1, Ordering::Relaxed);
        let mut v = self.violations.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < MAX_VIOLATIONS_KEPT {
            eprintln!("VIOLATION: {what}");
            v.push(what);
        }
    }

    /// Publisher `p`'s counter of room `r` acknowledged, and the lowest
    /// every subscriber has taken.
    fn behind(&self) -> u64 {
        let mut lag = 0;
        for p in 0..self.publishers {
            for r in 0..self.rooms.len() {
                let a = self.acked[p][r].load(Ordering::Relaxed);
                for s in &self.seen {
                    lag = lag.max(a.saturating_sub(s[p][r].load(Ordering::Relaxed)));
                }
            }
        }
        lag
    }

    /// Has every subscriber taken everything in `target` (acked counters)?
    fn caught_up_to(&self, target: &[Vec<u64>]) -> bool {
        self.seen.iter().all(|s| {
            (0..self.publishers).all(|p| {
                (0..self.rooms.len()).all(|r| s[p][r].load(Ordering::Relaxed) >= target[p][r])
            })
        })
    }

    fn acked_snapshot(&self) -> Vec<Vec<u64>> {
        self.acked
            .iter()
            .map(|rs| rs.iter().map(|a| a.load(Ordering::Relaxed)).collect())
            .collect()
    }
}

/// The payload: publisher (2 bytes), counter (8 bytes), padding.
fn payload(publisher: u16, counter: u64, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len.max(10));
    b.put_u16(publisher);
    b.put_u64(counter);
    b.resize(len.max(10), b'x');
    b.freeze()
}

fn parse_payload(p: &[u8]) -> Option<(u16, u64)> {
    let publisher = u16::from_be_bytes(p.get(0..2)?.try_into().ok()?);
    let counter = u64::from_be_bytes(p.get(2..10)?.try_into().ok()?);
    Some((publisher, counter))
}

fn config(url: &str, user: &str) -> anyhow::Result<ClientConfig> {
    let mut c = ClientConfig::new(url, format!("{user}:d"), "d")?;
    c.connect_timeout = Duration::from_secs(5);
    c.request_timeout = Duration::from_secs(20);
    Ok(c)
}

/// Connects, retrying while the broker is down (for at most 5 minutes),
/// unless the soak stops meanwhile.
async fn connect(url: &str, user: &str, stop: Option<&Stop>) -> anyhow::Result<Client> {
    let start = Instant::now();
    loop {
        if stop.is_some_and(Stop::is_set) {
            bail!("stopping");
        }
        match Client::connect(config(url, user)?).await {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() > Duration::from_secs(300) => {
                bail!("{user} cannot connect for 5 minutes: {e}")
            }
            Err(_) => sleep(Duration::from_millis(200)).await,
        }
    }
}

/// One publisher device: publishes to every room in turn, paced; a new
/// client (the same device) every time `reconnect` fires.
async fn publisher(
    p: usize,
    url: String,
    state: Arc<State>,
    mut reconnect: mpsc::Receiver<()>,
    payload_len: usize,
) {
    let user = format!("soak-pub-{p}");
    let mut counters = vec![0u64; state.rooms.len()];
    let mut next_room = 0usize;
    'clients: loop {
        let client = match connect(&url, &user, None).await {
            Ok(c) => c,
            Err(e) => {
                state.violation(format!("publisher {p}: {e}"));
                return;
            }
        };
        // Acknowledgements in order, checked by a task of their own.
        let (acks_tx, mut acks_rx) = mpsc::channel::<(usize, u64, PendingPublish)>(4096);
        let st = state.clone();
        let acker = tokio::spawn(async move {
            let mut last_seq = vec![0u64; st.rooms.len()];
            while let Some((r, counter, pending)) = acks_rx.recv().await {
                match pending.await {
                    Ok(ack) => {
                        let prev = st.acked[p][r].load(Ordering::Relaxed);
                        if counter != prev + 1 {
                            st.violation(format!(
                                "publisher {p} room {r}: counter {counter} acknowledged after {prev}"
                            ));
                        }
                        if ack.seq.0 <= last_seq[r] {
                            st.violation(format!(
                                "publisher {p} room {r}: counter {counter} got #{} after #{}",
                                ack.seq.0, last_seq[r]
                            ));
                        }
                        last_seq[r] = ack.seq.0;
                        st.acked[p][r].store(counter, Ordering::Relaxed);
                        let n = st.acked_total.fetch_add(1, Ordering::Relaxed);
                        if n.is_multiple_of(SAMPLE_EVERY) {
                            let mut s = st.samples.lock().unwrap_or_else(|e| e.into_inner());
                            if s.len() < MAX_SAMPLES {
                                s.insert((r, ack.seq.0), (p as u16, counter));
                            }
                        }
                    }
                    Err(e) => st.violation(format!(
                        "publisher {p} room {r}: counter {counter} failed: {e}"
                    )),
                }
            }
        });
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut replace = false;
        loop {
            if state.stop_publishing.load(Ordering::Relaxed) {
                break;
            }
            let per_tick = state.per_tick.load(Ordering::Relaxed);
            let burst = if per_tick == 0 { 64 } else { per_tick };
            for _ in 0..burst {
                let r = next_room;
                next_room = (next_room + 1) % state.rooms.len();
                let counter = counters[r] + 1;
                let message = Message::new(
                    state.rooms[r].clone(),
                    payload(p as u16, counter, payload_len),
                );
                match client.enqueue(message).await {
                    Ok(pending) => {
                        counters[r] = counter;
                        if acks_tx.send((r, counter, pending)).await.is_err() {
                            state.violation(format!("publisher {p}: the ack checker stopped"));
                            return;
                        }
                    }
                    Err(e) => {
                        state.violation(format!("publisher {p}: enqueue failed: {e}"));
                        return;
                    }
                }
            }
            if per_tick != 0 {
                tokio::select! {
                    _ = tick.tick() => {}
                    Some(()) = reconnect.recv() => replace = true,
                }
            } else if let Ok(()) = reconnect.try_recv() {
                replace = true;
            }
            if replace {
                break;
            }
        }
        // Everything queued is acknowledged before the client goes.
        if let Err(e) = client.flush().await {
            state.violation(format!("publisher {p}: flush failed: {e}"));
        }
        drop(acks_tx);
        let _ = acker.await;
        client.close().await;
        if replace && !state.stop_publishing.load(Ordering::Relaxed) {
            state.reconnects.fetch_add(1, Ordering::Relaxed);
            continue 'clients;
        }
        return;
    }
}

/// One subscriber device: follows every room from its first message and
/// checks every event; a new client every time `reconnect` fires, resuming
/// each room after the last sequence it took.
async fn subscriber(s: usize, url: String, state: Arc<State>, mut reconnect: mpsc::Receiver<()>) {
    let user = format!("soak-sub-{s}");
    let nrooms = state.rooms.len();
    let mut last_seq = vec![0u64; nrooms];
    let room_index: HashMap<RoomId, usize> = state
        .rooms
        .iter()
        .enumerate()
        .map(|(i, r)| (r.clone(), i))
        .collect();
    loop {
        let client = match connect(&url, &user, Some(&state.stop)).await {
            Ok(c) => c,
            Err(e) => {
                if !state.stop.is_set() {
                    state.violation(format!("subscriber {s}: {e}"));
                }
                return;
            }
        };
        let mut subs: SelectAll<Subscription> = SelectAll::new();
        for (r, room) in state.rooms.iter().enumerate() {
            loop {
                match client
                    .subscribe_from(room.clone(), Seq(last_seq[r] + 1))
                    .await
                {
                    Ok(sub) => {
                        subs.push(sub);
                        break;
                    }
                    Err(e) if state.stop.is_set() => {
                        eprintln!("subscriber {s}: {e} while stopping");
                        return;
                    }
                    Err(_) => sleep(Duration::from_millis(200)).await,
                }
            }
        }
        loop {
            tokio::select! {
                item = subs.next() => match item {
                    Some(Ok(ev)) => {
                        let Some(&r) = room_index.get(&ev.room) else {
                            state.violation(format!("subscriber {s}: an event of an unknown room {}", ev.room));
                            continue;
                        };
                        if ev.seq.0 != last_seq[r] + 1 {
                            state.violation(format!(
                                "subscriber {s} room {r}: #{} after #{}", ev.seq.0, last_seq[r]
                            ));
                        }
                        last_seq[r] = last_seq[r].max(ev.seq.0);
                        match parse_payload(&ev.payload) {
                            Some((p, counter)) if usize::from(p) < state.publishers => {
                                let seen = &state.seen[s][usize::from(p)][r];
                                let prev = seen.load(Ordering::Relaxed);
                                if counter != prev + 1 {
                                    state.violation(format!(
                                        "subscriber {s} room {r} #{}: publisher {p} counter {counter} after {prev} ({})",
                                        ev.seq.0,
                                        if counter <= prev { "twice or out of order" } else { "missing" }
                                    ));
                                }
                                seen.store(prev.max(counter), Ordering::Relaxed);
                                state.delivered_total.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => state.violation(format!(
                                "subscriber {s} room {r} #{}: a payload this soak did not write",
                                ev.seq.0
                            )),
                        }
                    }
                    Some(Err(e)) => {
                        state.violation(format!("subscriber {s}: a subscription ended: {e}"));
                        break;
                    }
                    None => break,
                },
                Some(()) = reconnect.recv() => break,
                _ = state.stop.wait() => {
                    drop(subs);
                    client.close().await;
                    return;
                }
            }
        }
        drop(subs);
        client.close().await;
        state.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// The broker process, restarted on the same data directory.
struct Broker {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    durability: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Broker {
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(["serve", "--data-dir"])
            .arg(&self.dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--listen-quic", "127.0.0.1:0"])
            .args(["--durability", &self.durability])
            .args(["--log-level", "warn"])
            .args(["--set", "rate_limits.enabled=false"])
            .args(["--set", "admission.connects_per_ip_per_sec=0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_listening(&mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(start.elapsed());
            }
            if let Some(c) = &mut self.child {
                if let Some(status) = c.try_wait()? {
                    bail!("the broker exited: {status}; see {}", self.log.display());
                }
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!("the broker does not listen after 120 s");
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// How many of `pid`'s open descriptors are RocksDB table files (they
/// grow with the data: RocksDB keeps every table file open).
fn table_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.extension().is_some_and(|x| x == "sst"))
                })
                .count() as u64
        })
        .unwrap_or(0)
}

/// VmRSS in KiB and the number of open descriptors of `pid`.
fn proc_usage(pid: u32) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (rss, fds)
}

/// One broker lifetime, as sampled.
#[derive(Debug, Default, Clone)]
struct Lifetime {
    /// RSS (KiB) one minute in, and at its end.
    rss_after_1min: Option<u64>,
    rss_end: u64,
    rss_max: u64,
    fds_min: u64,
    fds_max: u64,
    /// From kill -9 to listening, and to every device caught up with what
    /// was acknowledged before the kill.
    restart: Option<Duration>,
    caught_up: Option<Duration>,
    seconds: f64,
}

fn default_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("confab")))
        .unwrap_or_else(|| PathBuf::from("confab"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.payload < 10 {
        bail!("--payload must be at least 10 bytes");
    }
    std::fs::create_dir_all(&args.out)?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| args.out.join("data"));
    if dir.exists() {
        bail!(
            "{} exists: the soak starts from an empty data directory",
            dir.display()
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // A copy of the broker binary: a rebuild during the soak must not
    // change what is restarted after each kill.
    let bin = args.out.join("confab");
    let source = args.bin.clone().unwrap_or_else(default_bin);
    std::fs::copy(&source, &bin).with_context(|| format!("copying {}", source.display()))?;
    let mut broker = Broker {
        bin,
        dir: dir.clone(),
        port,
        durability: args.durability.clone(),
        log: args.out.join("broker.log"),
        child: None,
    };
    broker.start()?;
    broker.wait_listening().await?;
    let url = format!("confab://127.0.0.1:{port}");

    let rooms: Vec<RoomId> = (0..args.rooms)
        .map(|i| RoomId::new(format!("soak-{i}")))
        .collect::<Result<_, _>>()?;
    let counters = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
    let state = Arc::new(State {
        rooms: rooms.clone(),
        publishers: args.publishers,
        acked: (0..args.publishers).map(|_| counters(args.rooms)).collect(),
        seen: (0..args.subscribers)
            .map(|_| (0..args.publishers).map(|_| counters(args.rooms)).collect())
            .collect(),
        violations: Mutex::new(Vec::new()),
        violation_count: AtomicU64::new(0),
        acked_total: AtomicU64::new(0),
        delivered_total: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        samples: Mutex::new(HashMap::new()),
        per_tick: AtomicU64::new(0),
        stop_publishing: AtomicBool::new(false),
        stop: Default::default(),
    });

    // Devices, each with a channel that asks it to reconnect.
    let mut reconnectors = Vec::new();
    let mut subscribers = Vec::new();
    for s in 0..args.subscribers {
        let (tx, rx) = mpsc::channel(1);
        reconnectors.push(tx);
        subscribers.push(tokio::spawn(subscriber(s, url.clone(), state.clone(), rx)));
    }
    let mut publishers = Vec::new();
    for p in 0..args.publishers {
        let (tx, rx) = mpsc::channel(1);
        reconnectors.push(tx);
        publishers.push(tokio::spawn(publisher(
            p,
            url.clone(),
            state.clone(),
            rx,
            args.payload,
        )));
    }

    // Calibration: closed loop.
    eprintln!("soak: calibrating for {} s (closed loop)", args.calibrate);
    let t0 = Instant::now();
    let a0 = state.acked_total.load(Ordering::Relaxed);
    sleep(Duration::from_secs(args.calibrate)).await;
    let max_rate =
        (state.acked_total.load(Ordering::Relaxed) - a0) as f64 / t0.elapsed().as_secs_f64();
    let rate = args.rate.unwrap_or(max_rate * args.load);
    let per_tick = ((rate / 100.0 / args.publishers as f64).round() as u64).max(1);
    state.per_tick.store(per_tick, Ordering::Relaxed);
    let offered = per_tick as f64 * 100.0 * args.publishers as f64;
    eprintln!(
        "soak: closed loop reached {max_rate:.0} msgs/s; offering {offered:.0} msgs/s for {} min, kill -9 every {} s, a reconnection every {} s",
        args.minutes, args.kill_every, args.reconnect_every
    );
    // Let the backlog of the closed loop drain.
    let drain = Instant::now();
    while state.behind() > 0 && drain.elapsed() < Duration::from_secs(60) {
        sleep(Duration::from_millis(100)).await;
    }

    let mut csv = std::fs::File::create(args.out.join("soak.csv"))?;
    writeln!(
        csv,
        "elapsed_s,lifetime,broker_rss_kib,broker_fds,broker_table_fds,soak_rss_kib,acked_total,delivered_total,acked_per_s,delivered_per_s,max_lag_msgs,reconnects"
    )?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.minutes * 60.0);
    let kill_every = (args.kill_every > 0).then(|| Duration::from_secs(args.kill_every));
    let mut next_kill = kill_every.map(|k| start + k);
    let reconnect_every = Duration::from_secs(args.reconnect_every.max(1));
    let mut next_reconnect = start + reconnect_every;
    let mut next_device = 0usize;
    let mut next_sample = start;
    let mut lifetimes = vec![Lifetime {
        fds_min: u64::MAX,
        ..Lifetime::default()
    }];
    let mut lifetime_start = start;
    let mut pending_catch_up: Option<(Instant, Vec<Vec<u64>>)> = None;
    let (mut last_acked, mut last_delivered, mut last_t) = (
        state.acked_total.load(Ordering::Relaxed),
        state.delivered_total.load(Ordering::Relaxed),
        Instant::now(),
    );
    while Instant::now() < end {
        let now = Instant::now();
        if next_kill.is_some_and(|k| now >= k) {
            let before = state.acked_snapshot();
            let killed_at = Instant::now();
            broker.kill();
            if let Some(l) = lifetimes.last_mut() {
                l.seconds = killed_at.duration_since(lifetime_start).as_secs_f64();
            }
            broker.start()?;
            let restart = broker.wait_listening().await?;
            eprintln!(
                "soak: {:.0} s: kill -9, listening again after {} ms",
                start.elapsed().as_secs_f64(),
                restart.as_millis()
            );
            lifetimes.push(Lifetime {
                restart: Some(killed_at.elapsed()),
                fds_min: u64::MAX,
                ..Lifetime::default()
            });
            lifetime_start = killed_at;
            pending_catch_up = Some((killed_at, before));
            next_kill = kill_every.map(|k| now + k);
        }
        if let Some((at, target)) = &pending_catch_up {
            if state.caught_up_to(target) {
                if let Some(l) = lifetimes.last_mut() {
                    l.caught_up = Some(at.elapsed());
                }
                pending_catch_up = None;
            }
        }
        if now >= next_reconnect && !reconnectors.is_empty() {
            let _ = reconnectors[next_device % reconnectors.len()].try_send(());
            next_device += 1;
            next_reconnect = now + reconnect_every;
        }
        if now >= next_sample {
            next_sample = now + Duration::from_secs(5);
            let (rss, fds) = broker.pid().map(proc_usage).unwrap_or((0, 0));
            let tables = broker.pid().map(table_fds).unwrap_or(0);
            let (own_rss, _) = proc_usage(std::process::id());
            let acked = state.acked_total.load(Ordering::Relaxed);
            let delivered = state.delivered_total.load(Ordering::Relaxed);
            let dt = last_t.elapsed().as_secs_f64().max(1e-3);
            let l = lifetimes.len() - 1;
            let life = &mut lifetimes[l];
            if now.duration_since(lifetime_start) >= Duration::from_secs(60)
                && life.rss_after_1min.is_none()
            {
                life.rss_after_1min = Some(rss);
            }
            life.rss_end = rss;
            life.rss_max = life.rss_max.max(rss);
            // Table files aside: RocksDB keeps each open, and there are
            // more as the data grows.
            let other = fds.saturating_sub(tables);
            if fds > 0 {
                life.fds_min = life.fds_min.min(other);
                life.fds_max = life.fds_max.max(other);
            }
            writeln!(
                csv,
                "{:.1},{l},{rss},{fds},{tables},{own_rss},{acked},{delivered},{:.0},{:.0},{},{}",
                start.elapsed().as_secs_f64(),
                (acked - last_acked) as f64 / dt,
                (delivered - last_delivered) as f64 / dt,
                state.behind(),
                state.reconnects.load(Ordering::Relaxed),
            )?;
            csv.flush()?;
            if l == 0 || now.duration_since(lifetime_start).as_secs() % 60 < 5 {
                eprintln!(
                    "soak: {:>6.0} s  broker {} MiB, {fds} fds ({tables} table files)  {:.0} acks/s  {:.0} deliveries/s  lag {}  violations {}",
                    start.elapsed().as_secs_f64(),
                    rss / 1024,
                    (acked - last_acked) as f64 / dt,
                    (delivered - last_delivered) as f64 / dt,
                    state.behind(),
                    state.violation_count.load(Ordering::Relaxed),
                );
            }
            (last_acked, last_delivered, last_t) = (acked, delivered, Instant::now());
        }
        sleep(Duration::from_millis(50)).await;
    }
    if let Some(l) = lifetimes.last_mut() {
        l.seconds = lifetime_start.elapsed().as_secs_f64();
    }

    // The end: publishers flush and stop; subscribers take everything.
    eprintln!("soak: stopping the publishers");
    state.stop_publishing.store(true, Ordering::Relaxed);
    for p in publishers {
        let _ = p.await;
    }
    let target = state.acked_snapshot();
    let settle = Instant::now();
    while !state.caught_up_to(&target) {
        if settle.elapsed() > Duration::from_secs(300) {
            state.violation(format!(
                "subscribers did not take everything acknowledged within 300 s (lag {})",
                state.behind()
            ));
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    let settled_in = settle.elapsed();
    state.stop.set();
    for s in subscribers {
        let _ = s.await;
    }
    // The sample of acknowledgements, read back.
    let samples: Vec<((usize, u64), (u16, u64))> = state
        .samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect();
    let auditor = connect(&url, "soak-auditor", None).await?;
    let mut heads = Vec::new();
    for room in &rooms {
        let page = auditor
            .history_page(room.clone(), Direction::Before, Seq(0), 1)
            .await?;
        heads.push(page.events.last().map_or(0, |e| e.seq.0));
    }
    for ((r, seq), (p, counter)) in &samples {
        let page = auditor
            .history_page(rooms[*r].clone(), Direction::After, Seq(seq - 1), 1)
            .await?;
        match page.events.first() {
            Some(e) if e.seq.0 == *seq && parse_payload(&e.payload) == Some((*p, *counter)) => {}
            other => state.violation(format!(
                "room {r} #{seq} was acknowledged to publisher {p} counter {counter}, holds {:?}",
                other.map(|e| (e.seq.0, parse_payload(&e.payload)))
            )),
        }
    }
    auditor.close().await;
    broker.kill();

    // The report.
    let acked = state.acked_total.load(Ordering::Relaxed);
    let delivered = state.delivered_total.load(Ordering::Relaxed);
    let stored: u64 = heads.iter().sum();
    let acked_by_counters: u64 = target.iter().flatten().sum();
    if stored != acked_by_counters {
        state.violation(format!(
            "the rooms hold {stored} messages; {acked_by_counters} were acknowledged (every publish was)"
        ));
    }
    let violations = state.violation_count.load(Ordering::Relaxed);
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "confab-soak: {:.1} min, durability {}, {} rooms, {} publishers, {} subscribers, {} B payloads",
        args.minutes, args.durability, args.rooms, args.publishers, args.subscribers, args.payload
    );
    let _ = writeln!(
        out,
        "load: closed loop {max_rate:.0} msgs/s, offered {offered:.0} msgs/s ({:.0} % of it)",
        100.0 * offered / max_rate.max(1.0)
    );
    let _ = writeln!(
        out,
        "acknowledged {acked} (stored {stored}), delivered {delivered} to {} subscribers (expected {}), {} kill -9, {} device reconnections; settled {} ms after the last publish",
        args.subscribers,
        stored * args.subscribers as u64,
        lifetimes.len() - 1,
        state.reconnects.load(Ordering::Relaxed),
        settled_in.as_millis()
    );
    let _ = writeln!(out, "sampled acknowledgements read back: {}", samples.len());
    let _ = writeln!(
        out,
        "lifetime | seconds | restart ms | caught up ms | RSS MiB at 1 min | RSS MiB at end | RSS MiB max | fds other than table files, min-max"
    );
    for (i, l) in lifetimes.iter().enumerate() {
        let _ = writeln!(
            out,
            "{i} | {:.0} | {} | {} | {} | {} | {} | {}-{}",
            l.seconds,
            l.restart.map_or("-".into(), |d| d.as_millis().to_string()),
            l.caught_up
                .map_or("-".into(), |d| d.as_millis().to_string()),
            l.rss_after_1min
                .map_or("-".into(), |r| (r / 1024).to_string()),
            l.rss_end / 1024,
            l.rss_max / 1024,
            if l.fds_min == u64::MAX { 0 } else { l.fds_min },
            l.fds_max
        );
    }
    let _ = writeln!(
        out,
        "violations: {violations}{}",
        if violations == 0 {
            " (nothing lost, repeated, reordered or refused)"
        } else {
            ""
        }
    );
    for v in state
        .violations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let _ = writeln!(out, "  {v}");
    }
    print!("{out}");
    write_summary(&args.out.join("summary.txt"), &out)?;
    if violations > 0 {
        bail!("{violations} violations");
    }
    Ok(())
}

fn write_summary(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
