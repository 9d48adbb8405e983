//! Floods before authentication, against the real `confab` binary so that
//! the broker's memory is its own process's: connections that never say
//! `Hello`, `Hello`s too large or trickled, TLS and QUIC connection floods
//! beyond the per-address limits.
//!
//! Each attack asserts that (a) a new well-behaved client, from an address
//! the flood does not use, connects, publishes and receives during the
//! attack; (b) the broker's RSS stays under a budget derived from the
//! admission limits during the attack and comes back near its baseline
//! after it; (c) a connected client's publish-to-deliver p99 during the
//! attack stays under 5x its p99 just before (the best of up to three
//! windows of samples during the attack, against one before it). Client
//! addresses are 127.0.0.x (Linux delivers all of 127/8 to the loopback
//! interface). Counts and waits are bounded; the attacks run one at a
//! time, and on a thread and runtime of their own, so that they do not
//! disturb each other's measurements or the probe's. Each one fails
//! against the broker before admission control (checked by running this
//! file's tests against that binary).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use confab_codec::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// One attack at a time: they measure latency and memory.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Publishes timed for each p99 (and as many before, to warm up).
const SAMPLES: usize = 400;

/// RSS the broker may keep after an attack beyond 10 % of its baseline:
/// the allocator keeps some freed memory in its per-thread caches and
/// arenas (measured: see `assert_memory`).
const AFTER_SLACK_KIB: u64 = 8 << 10;

fn lo(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// The broker binary with TCP, TLS, QUIC and the metrics endpoint on
/// loopback ports of its own.
struct Spawned {
    child: Child,
    tcp: SocketAddr,
    tls: SocketAddr,
    quic: SocketAddr,
    metrics: SocketAddr,
    dir: tempfile::TempDir,
}

impl Spawned {
    async fn start(sets: &[&str]) -> Spawned {
        let dir = tempfile::tempdir().unwrap();
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (tcp, tls, metrics) = (local(free_port()), local(free_port()), local(free_port()));
        let quic = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut fixed = vec![
            "rate_limits.enabled=false".to_owned(),
            format!("listen.tls={tls}"),
            format!("metrics.listen={metrics}"),
        ];
        fixed.extend(sets.iter().map(|s| (*s).to_owned()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
        cmd.args(["serve", "--data-dir", dir.path().to_str().unwrap()])
            .args(["--listen", &tcp.to_string()])
            .args(["--listen-quic", &quic.to_string()])
            .args(["--durability", "none", "--log-level", "error"]);
        for s in &fixed {
            cmd.args(["--set", s]);
        }
        // A clean environment, except glibc allocator settings, so that
        // their effect can be tried (`MALLOC_ARENA_MAX=2 cargo test ...`).
        cmd.env_clear();
        for (k, v) in std::env::vars() {
            if k.starts_with("MALLOC_") || k == "GLIBC_TUNABLES" {
                cmd.env(k, v);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the confab binary starts");
        let b = Spawned {
            child,
            tcp,
            tls,
            quic,
            metrics,
            dir,
        };
        for addr in [tcp, tls, metrics] {
            wait_listening(addr).await;
        }
        b
    }

    fn cert(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(self.dir.path().join("tls/cert.pem")).expect("certificate")
    }

    fn dial(&self, t: Transport) -> Dial {
        let addr = match t {
            Transport::Tcp => self.tcp,
            Transport::Tls => self.tls,
            Transport::Quic => self.quic,
            Transport::Ws | Transport::Wss => panic!("this broker has no WebSocket listener"),
        };
        Dial {
            transport: t,
            addr,
            cert: Some(self.cert()),
        }
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    /// The sum of the series of `name` whose labels include every one of
    /// `labels` (`key="value"`), from `/metrics`.
    async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let mut s = TcpStream::connect(self.metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        tokio::time::timeout(WAIT, s.read_to_string(&mut text))
            .await
            .expect("metrics in time")
            .unwrap();
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
                    && labels.iter().all(|lbl| l.contains(lbl))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until no handshake is pending and only `sockets` are open.
    async fn wait_quiet(&self, sockets: f64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let pending = self.metric("confab_handshakes_pending", &[]).await;
            let open = self.metric("confab_connections", &[]).await;
            if pending == 0.0 && open <= sockets {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{pending} handshakes pending, {open} sockets open after the attack"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The highest RSS of a process, sampled every 10 ms on a thread.
struct RssPeak {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        RssPeak { stop, thread }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A publisher and a subscriber of one room, connected before the attack:
/// the clients whose latency the attack must not hurt.
struct Probe {
    publisher: Conn,
    subscriber: Conn,
    room: RoomId,
    cmid: u64,
}

impl Probe {
    async fn open(b: &Spawned) -> Probe {
        let room = room("probe");
        let publisher = Conn::open(b.tcp, "probe", "publisher").await;
        let mut subscriber = Conn::open(b.tcp, "probe", "subscriber").await;
        subscriber
            .subscribe(vec![(room.clone(), StartAt::Live)])
            .await;
        let mut p = Probe {
            publisher,
            subscriber,
            room,
            cmid: 0,
        };
        p.p99().await; // warm-up
        p
    }

    /// The p99 of [`SAMPLES`] publish-to-deliver times, one publish at a
    /// time, 5 ms apart (so that they spread over the attack, and the
    /// p99 is not one scheduling hiccup of a busy machine).
    async fn p99(&mut self) -> Duration {
        let mut samples = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            self.cmid += 1;
            let rid = self.publisher.request_id();
            let frame = Conn::publish_frame(rid, &self.room, self.cmid, b"probe");
            let start = Instant::now();
            self.publisher.send_frame(frame).await;
            let (events, _) = self.subscriber.events(1).await;
            samples.push(start.elapsed());
            assert_eq!(events[0].2.as_ref(), b"probe");
            let ack = self.publisher.wait_reply(rid, |_| true).await;
            assert!(matches!(ack.body, Body::PublishAck(_)), "{ack:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.sort();
        samples[(SAMPLES * 99).div_ceil(100) - 1]
    }
}

/// A new client from `src` connects, subscribes, publishes and receives
/// its own message: the attack did not lock it out.
async fn newcomer_works(b: &Spawned, src: IpAddr, name: &str) {
    let stream = tcp_from(src, b.tcp).await.expect("connect");
    let mut c = Conn::over_tcp(stream);
    c.handshake(name, "d", Vec::new()).await;
    let r = room(name);
    c.subscribe(vec![(r.clone(), StartAt::Live)]).await;
    c.publish(&r, 1, b"made it").await;
    let (events, _) = c.events(1).await;
    assert_eq!(events[0].2.as_ref(), b"made it");
}

/// What an attack's connections saw.
#[derive(Debug, Default)]
struct FloodStats {
    /// Connections (or handshakes, for TLS and QUIC) completed.
    opened: AtomicU64,
    /// Connect or handshake attempts that failed (refused).
    refused: AtomicU64,
    /// Connections the broker closed.
    closed: AtomicU64,
    /// `Error FrameTooLarge` frames received.
    too_large: AtomicU64,
}

impl FloodStats {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// What each flood connection does.
#[derive(Debug, Clone)]
enum Attack {
    /// Connect and say nothing.
    Idle,
    /// Send a `Hello` header declaring `declared` body bytes, then `send`
    /// of them, 4 KiB every 50 ms, and wait.
    Hello { declared: u32, send: usize },
    /// Complete a TLS handshake (if admitted), then say nothing.
    Tls(CertificateDer<'static>),
    /// Complete a QUIC handshake (if admitted), then open no stream.
    Quic(CertificateDer<'static>),
}

/// Connections from `sources` (address, connections at once) kept open
/// on a thread and runtime of their own until stopped: opened at 2,000 a
/// second (a burst beyond the listen backlog would leave connections the
/// client gave up on in the broker's accept queue), then each one that
/// ends is replaced, at most `per_sec` new ones per second in all.
struct Flood {
    stop: CancellationToken,
    stats: Arc<FloodStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(
        attack: Attack,
        target: SocketAddr,
        sources: &[(IpAddr, usize)],
        per_sec: u32,
    ) -> Flood {
        let stop = CancellationToken::new();
        let stats = Arc::new(FloodStats::default());
        let (sources, token, counts) = (sources.to_vec(), stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut first: usize = sources.iter().map(|(_, n)| n).sum();
                let permits = Arc::new(tokio::sync::Semaphore::new(0));
                let refill = permits.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(10));
                    loop {
                        tick.tick().await;
                        if first > 0 {
                            let n = first.min(20);
                            first -= n;
                            refill.add_permits(n);
                        } else if refill.available_permits() < (per_sec / 10) as usize {
                            refill.add_permits((per_sec / 100).max(1) as usize);
                        }
                    }
                });
                for (src, n) in sources {
                    let endpoint = match &attack {
                        Attack::Quic(_) => Some(
                            quinn::Endpoint::client(SocketAddr::new(src, 0)).expect("endpoint"),
                        ),
                        _ => None,
                    };
                    for _ in 0..n {
                        let (attack, stats, stop) = (attack.clone(), counts.clone(), token.clone());
                        let (permits, endpoint) = (permits.clone(), endpoint.clone());
                        tokio::spawn(async move {
                            loop {
                                tokio::select! {
                                    p = permits.acquire() => p.unwrap().forget(),
                                    _ = stop.cancelled() => return,
                                }
                                tokio::select! {
                                    _ = one(&attack, src, target, endpoint.as_ref(), &stats) => {}
                                    _ = stop.cancelled() => return,
                                }
                            }
                        });
                    }
                }
                token.cancelled().await;
                // Time for QUIC to send its closes.
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
            // Dropping the runtime drops every connection.
        });
        Flood {
            stop,
            stats,
            thread: Some(thread),
        }
    }

    /// Waits until `n` connections have been opened.
    async fn opened(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        while FloodStats::get(&self.stats.opened) + FloodStats::get(&self.stats.refused) < n {
            assert!(
                Instant::now() < deadline,
                "flood too slow: {:?}",
                self.stats
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(mut self) -> Arc<FloodStats> {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.stats.clone()
    }
}

/// One flood connection's life, until the broker ends it.
async fn one(
    attack: &Attack,
    src: IpAddr,
    target: SocketAddr,
    endpoint: Option<&quinn::Endpoint>,
    stats: &FloodStats,
) {
    let count = |c: &AtomicU64| {
        c.fetch_add(1, Ordering::Relaxed);
    };
    match attack {
        Attack::Quic(cert) => {
            let config = quic_client(cert, quinn::TransportConfig::default());
            let Ok(connecting) = endpoint.unwrap().connect_with(config, target, "localhost") else {
                return count(&stats.refused);
            };
            match tokio::time::timeout(WAIT, connecting).await {
                Ok(Ok(conn)) => {
                    count(&stats.opened);
                    conn.closed().await;
                    count(&stats.closed);
                }
                _ => count(&stats.refused),
            }
            return;
        }
        Attack::Tls(cert) => {
            let Ok(stream) = tcp_from(src, target).await else {
                return count(&stats.refused);
            };
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client(cert, false)));
            let name = ServerName::IpAddress(target.ip().into());
            match tokio::time::timeout(WAIT, connector.connect(name, stream)).await {
                Ok(Ok(mut tls)) => {
                    count(&stats.opened);
                    let _ = tls.read(&mut [0u8; 1024]).await;
                    count(&stats.closed);
                }
                _ => count(&stats.refused),
            }
            return;
        }
        Attack::Idle | Attack::Hello { .. } => {}
    }
    let Ok(stream) = tcp_from(src, target).await else {
        return count(&stats.refused);
    };
    count(&stats.opened);
    let (mut rd, mut wr) = stream.into_split();
    let read = async {
        let mut buf = BytesMut::new();
        loop {
            match Frame::decode(&mut buf, 1 << 20) {
                Ok(Some(f)) => {
                    if matches!(&f.body, Body::Error(e) if e.code == ErrorCode::FrameTooLarge) {
                        count(&stats.too_large);
                    }
                    continue;
                }
                Ok(None) => {}
                Err(_) => return,
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let write = async {
        if let Attack::Hello { declared, send } = attack {
            let mut header = Vec::new();
            Header {
                len: *declared,
                frame_type: frame_type::Hello,
                flags: 0,
                request_id: 1,
            }
            .put(&mut header);
            if wr.write_all(&header).await.is_err() {
                return std::future::pending().await;
            }
            let chunk = [b'x'; 4096];
            let mut sent = 0;
            while sent < *send {
                let n = chunk.len().min(send - sent);
                if wr.write_all(&chunk[..n]).await.is_err() {
                    return std::future::pending().await;
                }
                sent += n;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = read => {}
        _ = write => {}
    }
    count(&stats.closed);
}

/// Baseline, attack, aftermath: the three measurements every attack test
/// asserts on.
struct Measured {
    base_p99: Duration,
    attack_p99: Duration,
    base_rss: u64,
    peak_rss: u64,
    after_rss: u64,
}

/// Runs the flood `attack` starts (once the baseline is taken) against
/// `b`; once it has opened `warm` connections, runs the checks of
/// `during` and measures the probe's p99. Returns the flood's counts and
/// the measurements, asserted against `budget_kib` above the baseline.
async fn measure<F, Fut>(
    b: &Spawned,
    name: &str,
    budget_kib: u64,
    (attack, warm): (impl FnOnce() -> Flood, u64),
    during: F,
) -> (Arc<FloodStats>, Measured)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut probe = Probe::open(b).await;
    let base_p99 = probe.p99().await;
    let base_rss = b.rss_kib();
    let sockets_before = b.metric("confab_connections", &[]).await;

    let peak = RssPeak::start(b.child.id());
    let flood = attack();
    flood.opened(warm).await;
    during().await;
    // A busy machine's hiccup can spoil one window of samples; a cost of
    // the attack shows in every window. So up to three windows, the best.
    let mut attack_p99 = probe.p99().await;
    for _ in 0..2 {
        if attack_p99 < base_p99 * 5 {
            break;
        }
        attack_p99 = attack_p99.min(probe.p99().await);
    }
    let stats = flood.stop();
    let peak_rss = peak.finish();

    b.wait_quiet(sockets_before).await;
    let after_rss = settle_rss(b, base_rss).await;
    let m = Measured {
        base_p99,
        attack_p99,
        base_rss,
        peak_rss,
        after_rss,
    };
    eprintln!(
        "{name}: p99 {:?} -> {:?} ({:.1}x); RSS {} MiB -> peak {} MiB (budget {} MiB) -> after {} MiB; flood {:?}",
        m.base_p99,
        m.attack_p99,
        m.attack_p99.as_secs_f64() / m.base_p99.as_secs_f64(),
        m.base_rss >> 10,
        m.peak_rss >> 10,
        (m.base_rss + budget_kib) >> 10,
        m.after_rss >> 10,
        stats
    );
    assert!(
        m.attack_p99 < m.base_p99 * 5,
        "{name}: p99 {:?} during the attack, {:?} before",
        m.attack_p99,
        m.base_p99
    );
    assert!(
        m.peak_rss <= m.base_rss + budget_kib,
        "{name}: RSS peaked at {} KiB, baseline {} KiB, budget {budget_kib} KiB",
        m.peak_rss,
        m.base_rss
    );
    assert!(
        m.after_rss <= after_limit(m.base_rss),
        "{name}: RSS {} KiB after the attack, baseline {} KiB",
        m.after_rss,
        m.base_rss
    );
    // The probe's connections survived the attack.
    probe.p99().await;
    (stats, m)
}

/// The RSS an attack may leave behind: 10 % above the baseline, or
/// [`AFTER_SLACK_KIB`] above it, whichever is more.
fn after_limit(base: u64) -> u64 {
    (base + base / 10).max(base + AFTER_SLACK_KIB)
}

/// The broker's RSS once it is back under the limit, or after 10 s.
async fn settle_rss(b: &Spawned, base: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rss = b.rss_kib();
        if rss <= after_limit(base) || Instant::now() > deadline {
            return rss;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `count` addresses 127.0.0.`first`.., `each` connections from each.
fn sources(first: u8, count: u8, each: usize) -> Vec<(IpAddr, usize)> {
    (first..first + count).map(|n| (lo(n), each)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_lock_out_new_clients() {
    let _serial = SERIAL.lock().await;
    // A handshake timeout longer than the test: only eviction can make
    // room, as it must when a flood keeps every slot taken. And fewer
    // session slots than the flood has sockets: handshakes must not take
    // them (before admission control, 1,500 silent sockets locked
    // everyone out with ServerBusy).
    let b = Spawned::start(&[
        "limits.handshake_timeout_ms=60000",
        "limits.max_connections=1500",
    ])
    .await;
    // 2,000 silent connections from 40 addresses (50 each, under the
    // per-address limit of 64), more than the 1,024 handshake slots, so
    // the oldest are evicted and replaced all the time; and 200 from one
    // more address, beyond its limit.
    let mut from = sources(2, 40, 50);
    from.push((lo(42), 200));
    // About 16 KiB per pending handshake (task, buffer, socket), 1,024 of
    // them, and the same again for connections being closed.
    let budget = 2 * 1024 * 16;
    let target = b.tcp;
    let (stats, _) = measure(
        &b,
        "silent",
        budget,
        (|| Flood::start(Attack::Idle, target, &from, 200), 2_200),
        || async {
            // New clients from elsewhere get in at once.
            newcomer_works(&b, lo(200), "newcomer").await;
            let pending = b.metric("confab_handshakes_pending", &[]).await;
            assert!(pending >= 1000.0, "{pending}: the slots stay full");
            let evicted = b.metric("confab_handshakes_evicted_total", &[]).await;
            assert!(evicted > 0.0, "the table is full, the oldest go");
            let refused = b
                .metric(
                    "confab_admission_refused_total",
                    &[r#"reason="per_ip_handshakes""#],
                )
                .await;
            assert!(
                refused >= 136.0,
                "{refused} refused beyond 64 from one address"
            );
            newcomer_works(&b, lo(201), "latecomer").await;
        },
    )
    .await;
    assert!(FloodStats::get(&stats.opened) >= 2_200, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_trickled_hellos_are_bounded() {
    let _serial = SERIAL.lock().await;
    let b = Spawned::start(&["limits.handshake_timeout_ms=60000"]).await;
    let target = b.tcp;
    // 1 MiB Hellos: refused from their header, before any body is read.
    let big = Attack::Hello {
        declared: 1 << 20,
        send: 1 << 20,
    };
    let flood = Flood::start(big, target, &sources(2, 10, 50), 2_000);
    flood.opened(1_000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = flood.stop();
    assert!(
        FloodStats::get(&stats.too_large) >= 500,
        "1 MiB Hellos get FrameTooLarge: {stats:?}"
    );

    // Hellos of the largest size accepted, trickled 4 KiB at a time and
    // never finished, from 30 addresses: 1,500 at once, so the 1,024
    // slots stay full and the oldest are evicted. At most 1,024 buffers
    // of 64 KiB (plus the buffer's growth slack) are held: the budget is
    // 1,024 x 128 KiB.
    let slow = Attack::Hello {
        declared: HELLO_LEN_FLOOR,
        send: HELLO_LEN_FLOOR as usize - 1,
    };
    let budget = 1024 * 128;
    let from = sources(2, 30, 50);
    let (stats, _) = measure(
        &b,
        "trickled hellos",
        budget,
        (|| Flood::start(slow, target, &from, 300), 1_500),
        || async {
            // Long enough for the trickles to fill their buffers.
            tokio::time::sleep(Duration::from_secs(2)).await;
            newcomer_works(&b, lo(200), "newcomer").await;
        },
    )
    .await;
    assert!(FloodStats::get(&stats.opened) >= 1_500, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_floods_are_refused_before_the_handshake() {
    let _serial = SERIAL.lock().await;
    let b = Spawned::start(&[]).await;
    let (target, cert) = (b.tls, b.cert());
    // 8 addresses, 100 connections each: 64 each are admitted (and do
    // their TLS handshake), the others are refused before it.
    let from = sources(2, 8, 100);
    // About 64 KiB per TLS connection (rustls state and buffers), 512 of
    // them, and twice that for safety.
    let budget = 2 * 512 * 64;
    let (stats, _) = measure(
        &b,
        "tls flood",
        budget,
        (
            || Flood::start(Attack::Tls(cert.clone()), target, &from, 200),
            800,
        ),
        || async {
            // A ClientHello from a flooded address gets no ServerHello:
            // the socket is closed without a byte.
            assert_eq!(client_hello_answer(lo(2), target, &cert).await, 0);
            // The TLS listener still serves other addresses.
            assert!(!tls_refused(lo(200), target, &cert).await);
            newcomer_works(&b, lo(200), "newcomer").await;
            let refused = b
                .metric(
                    "confab_admission_refused_total",
                    &[r#"reason="per_ip_handshakes""#, r#"transport="tls""#],
                )
                .await;
            assert!(refused > 0.0, "refusals are counted");
        },
    )
    .await;
    assert!(FloodStats::get(&stats.refused) > 0, "{stats:?}");
    assert!(FloodStats::get(&stats.opened) >= 8 * 64, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_floods_are_refused_before_the_handshake() {
    let _serial = SERIAL.lock().await;
    let b = Spawned::start(&[]).await;
    let (target, cert) = (b.quic, b.cert());
    let from = sources(2, 4, 100);
    // About 128 KiB per QUIC connection (quinn's state, the Hello window,
    // the TLS state), 256 of them, and twice that for safety.
    let budget = 2 * 256 * 128;
    let (stats, _) = measure(
        &b,
        "quic flood",
        budget,
        (
            || Flood::start(Attack::Quic(cert.clone()), target, &from, 200),
            400,
        ),
        || async {
            let refused = b
                .metric(
                    "confab_admission_refused_total",
                    &[r#"reason="per_ip_handshakes""#, r#"transport="quic""#],
                )
                .await;
            assert!(refused > 0.0, "refusals are counted");
            // A QUIC client from another address gets in.
            let mut c = Conn::open(b.dial(Transport::Quic), "quic-newcomer", "d").await;
            c.publish(&room("q"), 1, b"over quic").await;
            newcomer_works(&b, lo(200), "newcomer").await;
        },
    )
    .await;
    assert!(FloodStats::get(&stats.refused) > 0, "{stats:?}");
}

/// Whether a TLS handshake from `src` fails.
async fn tls_refused(src: IpAddr, target: SocketAddr, cert: &CertificateDer<'static>) -> bool {
    let stream = tcp_from(src, target).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client(cert, false)));
    let name = ServerName::IpAddress(target.ip().into());
    tokio::time::timeout(WAIT, connector.connect(name, stream))
        .await
        .expect("an answer in time")
        .is_err()
}

/// Sends a real ClientHello from `src` and returns how many bytes the
/// broker answers before it closes (a ServerHello would be hundreds).
async fn client_hello_answer(
    src: IpAddr,
    target: SocketAddr,
    cert: &CertificateDer<'static>,
) -> usize {
    let name = ServerName::IpAddress(target.ip().into());
    let mut tls = rustls::ClientConnection::new(Arc::new(tls_client(cert, false)), name).unwrap();
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).unwrap();
    let mut stream = tcp_from(src, target).await.expect("connect");
    // The broker may close before the write (then nothing is read either).
    let _ = stream.write_all(&hello).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("closed in time");
    answer.len()
}
