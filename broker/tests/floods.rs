//! One authenticated client floods a request kind; everyone else must not
//! notice. Each test runs the real `confab` binary (so that its memory can
//! be read from /proc), with the default rate limits and bounds, and
//! checks, during and after a bounded attack on loopback:
//! - the broker's resident memory stays under a stated budget during the
//!   attack and comes back near its baseline after it;
//! - the rooms the attack touched leave memory (the broker's own gauges);
//! - a well-behaved publisher and subscriber keep their publish-to-deliver
//!   median under 3x its baseline and their p99 under 5x its baseline
//!   (each with a floor for the scheduler noise of a shared 2-core machine);
//! - a new client connects and publishes during the attack;
//! - the flooding connections are refused and then closed.
#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use confab_codec::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

/// How long each attack lasts.
const ATTACK: Duration = Duration::from_secs(5);
/// Most memory an attack may add to the broker while it runs.
const BUDGET_KIB: u64 = 200 << 10;
/// Publishes of the well-behaved pair per measurement.
const SAMPLES: usize = 150;

/// A `confab` process with the default limits, rooms dropped after 1 s
/// idle, and metrics on.
struct Confab {
    child: std::process::Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Confab {
    async fn start() -> Confab {
        let dir = tempfile::tempdir().unwrap();
        let (port, mport) = (free_port(), free_port());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(["serve", "--data-dir", dir.path().to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--listen-quic", "127.0.0.1:0", "--durability", "wal"])
            .args(["--log-level", "error"])
            .args(["--set", &format!("metrics.listen=127.0.0.1:{mport}")])
            .args(["--set", "rooms.evict_idle_ms=1000"])
            // Default limits for every kind: the well-behaved pair's 150
            // publishes per measurement fit in one connection's burst.
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("the confab binary starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr).await;
        Confab {
            child,
            addr,
            metrics: format!("127.0.0.1:{mport}").parse().unwrap(),
            _dir: dir,
        }
    }

    /// Resident anonymous memory (the heap and stacks, not the pages of
    /// the executable and of files mapped in), in KiB.
    fn rss_kib(&self) -> u64 {
        self.status_kib("RssAnon:")
    }

    /// A `/proc/<pid>/status` field in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the broker is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a status field")
    }

    /// A gauge or counter from `/metrics` (summed over its label sets).
    async fn metric(&self, name: &str) -> f64 {
        let mut s = TcpStream::connect(self.metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits (bounded) until `metric` is at most `max`; returns its value.
    async fn settle(&self, name: &str, max: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.metric(name).await;
            if v <= max || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Confab {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publish-to-deliver latencies of a paced publisher and a subscriber of
/// one room, both well-behaved.
async fn victim_latencies(addr: SocketAddr, tag: &str) -> Vec<Duration> {
    let room = RoomId::new(format!("victim-{tag}")).unwrap();
    let mut sub = Conn::open(addr, &format!("vsub-{tag}"), "d").await;
    let ack = sub.subscribe(vec![(room.clone(), StartAt::Live)]).await;
    assert_eq!(ack.results[0].code, ErrorCode::Normal);
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut publ = Conn::open(addr, &format!("vpub-{tag}"), "d").await;
    let receiver = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut out = Vec::with_capacity(SAMPLES);
            while out.len() < SAMPLES {
                let (events, _) = sub.events(1).await;
                let now = Instant::now();
                for (_, _, payload) in events {
                    let i = u64::from_be_bytes(payload[..8].try_into().unwrap());
                    let at = sent.lock().unwrap().get(&i).copied().unwrap();
                    out.push(now - at);
                }
            }
            out
        })
    };
    for i in 0..SAMPLES as u64 {
        sent.lock().unwrap().insert(i, Instant::now());
        publ.publish(&room, i + 1, &i.to_be_bytes()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::timeout(WAIT, receiver)
        .await
        .expect("every message delivered in time")
        .unwrap()
}

/// The median and the p99 of `v` (not empty).
fn quantiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let at = |q: usize| v[(v.len() * q / 100).min(v.len() - 1)];
    (at(50), at(99))
}

/// What an attacker saw.
#[derive(Debug, Default)]
struct Attack {
    bytes: AtomicU64,
    refusals: AtomicU64,
    closes: AtomicU64,
}

/// Frames the attacker sends, encoded once: writing them costs the
/// attacker a copy, so that on a small machine the broker, not the test's
/// own encoding, is what the attack loads.
fn encoded(make: impl Fn(u64) -> Body) -> Vec<u8> {
    let mut out = BytesMut::new();
    for n in 0..20_000u64 {
        if out.len() > 1 << 20 {
            break;
        }
        Frame::request(n as u32 + 2, make(n))
            .encode(&mut out)
            .unwrap();
    }
    out.to_vec()
}

/// Opens connections as `user` one after the other, each writing
/// `frames` over and over as fast as the broker takes them, until `stop`.
/// A task per connection reads (and counts) what comes back.
async fn flood(
    addr: SocketAddr,
    source: std::net::IpAddr,
    user: &'static str,
    stop: Arc<AtomicBool>,
    seen: Arc<Attack>,
    frames: Arc<Vec<u8>>,
) {
    while !stop.load(Ordering::Relaxed) {
        // From an address of its own (127.0.0.0/8 is all loopback), as an
        // attacker elsewhere on the network: the per-address limits apply
        // to it, not to the well-behaved clients on 127.0.0.1.
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
            continue;
        };
        if socket.bind(SocketAddr::new(source, 0)).is_err() {
            continue;
        }
        let Ok(mut stream) = socket.connect(addr).await else {
            continue;
        };
        // Closing resets the connection: the broker drops what it has not
        // read yet instead of reading a backlog the client left behind.
        let _ = stream.set_zero_linger();
        let mut buf = BytesMut::new();
        Frame::request(
            1,
            Hello {
                min_version: 1,
                max_version: 1,
                token: format!("{user}:d"),
                device: DeviceId::new("d").unwrap(),
                client_name: "flood".into(),
                resume: Vec::new(),
                features: Default::default(),
            },
        )
        .encode(&mut buf)
        .unwrap();
        if stream.write_all(&buf).await.is_err() {
            continue;
        }
        let (mut rd, mut wr) = stream.into_split();
        let mut reader = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut inbuf = BytesMut::with_capacity(64 << 10);
                loop {
                    match Frame::decode(&mut inbuf, 1 << 20) {
                        Ok(Some(f)) => match f.body {
                            Body::Error(e) if e.code == ErrorCode::RateLimited => {
                                seen.refusals.fetch_add(1, Ordering::Relaxed);
                            }
                            Body::Goodbye(_) => {
                                seen.closes.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            _ => {}
                        },
                        Ok(None) => match rd.read_buf(&mut inbuf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        },
                        Err(_) => return,
                    }
                }
            })
        };
        // One pass over the frames per connection (the broker closes a
        // refused flood well before), then a reset: a client that left
        // leaves no backlog for the broker to read.
        for chunk in frames.chunks(32 << 10) {
            if reader.is_finished() || stop.load(Ordering::Relaxed) {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(500), wr.write_all(chunk)).await {
                Ok(Ok(())) => {
                    seen.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                // Closed by the broker, or held back: next connection.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), &mut reader).await;
        reader.abort();
    }
}

/// Runs one attack with the checks listed at the top of the file.
///
/// `refused`: whether the attack's requests get `RateLimited` and its
/// connections closed (typing over the limit is dropped silently instead).
/// `stored`: whether it stores messages; then the deduplication window
/// (`storage.dedup_window` recent publishes) keeps their rooms' subscriber
/// lists, empty, until newer publishes push them out, so only the
/// sequencer's rooms must leave memory.
async fn attack(
    name: &str,
    refused: bool,
    stored: bool,
    make: impl Fn(u64) -> Body + Send + Sync + Copy + 'static,
) {
    // One attack at a time: each measures latency against its own load.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let broker = Confab::start().await;
    let addr = broker.addr;
    // Warm up (first connections, first room), then the baselines.
    victim_latencies(addr, "warm").await;
    let baseline_rss = broker.rss_kib();
    let baseline_total = broker.status_kib("VmRSS:");
    let (baseline_p50, baseline_p99) = quantiles(victim_latencies(addr, "base").await);
    let rooms_before = broker.metric("confab_sequencer_rooms").await;

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Attack::default());
    let frames = Arc::new(encoded(make));
    let attackers: Vec<_> = [("mallory", [127, 0, 0, 2]), ("trudy", [127, 0, 0, 3])]
        .into_iter()
        .map(|(user, ip)| {
            let source = std::net::IpAddr::from(ip);
            tokio::spawn(flood(
                addr,
                source,
                user,
                stop.clone(),
                seen.clone(),
                frames.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // During the attack: a new client, the pair's latencies, memory.
    let mut newcomer = tokio::time::timeout(WAIT, Conn::open(addr, "newcomer", "d"))
        .await
        .expect("a new client connects during the attack");
    let ack = newcomer
        .publish(&RoomId::new("newcomer-room").unwrap(), 1, b"hi")
        .await;
    assert_eq!(ack.seq, Seq(1));
    let mut peak_rss = broker.rss_kib();
    let during = tokio::spawn(victim_latencies(addr, "during"));
    while started.elapsed() < ATTACK {
        peak_rss = peak_rss.max(broker.rss_kib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (during_p50, during_p99) = quantiles(during.await.unwrap());
    for a in attackers {
        let _ = tokio::time::timeout(WAIT, a).await;
    }
    peak_rss = peak_rss.max(broker.rss_kib());

    // After: the rooms leave memory, and so does most of what they took.
    let rooms_after = broker
        .settle("confab_sequencer_rooms", rooms_before + 4.0)
        .await;
    let registry_after = broker.settle("confab_rooms", rooms_before + 4.0).await;
    // The newcomer is still connected; the attackers' sessions are gone.
    let sessions = broker.settle("confab_sessions", 1.0).await;
    assert!(sessions <= 1.0, "{sessions} sessions left");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_rss = broker.rss_kib();
    let after_total = broker.status_kib("VmRSS:");
    let sent = seen.bytes.load(Ordering::Relaxed);
    eprintln!(
        "{name}: {} MiB sent, {} refused, {} closes; anonymous RSS baseline {baseline_rss} KiB, peak {peak_rss} KiB, after {after_rss} KiB (all RSS {baseline_total} -> {after_total} KiB); rooms {rooms_before} -> {rooms_after} (registry {registry_after}); victim p50 {:?} -> {:?}, p99 {:?} -> {:?}",
        sent >> 20,
        seen.refusals.load(Ordering::Relaxed),
        seen.closes.load(Ordering::Relaxed),
        baseline_p50,
        during_p50,
        baseline_p99,
        during_p99,
    );
    assert!(sent > 1 << 20, "the attack ran ({sent} bytes)");
    if refused {
        assert!(
            seen.refusals.load(Ordering::Relaxed) > 0 && seen.closes.load(Ordering::Relaxed) > 0,
            "the flood was refused and its connections closed"
        );
    }
    assert!(
        peak_rss <= baseline_rss + BUDGET_KIB,
        "RSS {peak_rss} KiB during the attack, budget {baseline_rss} + {BUDGET_KIB} KiB"
    );
    assert!(
        rooms_after <= rooms_before + 4.0 && (stored || registry_after <= rooms_before + 4.0),
        "idle rooms dropped: {rooms_after} (registry {registry_after}), before {rooms_before}"
    );
    // Within 10 % of the baseline, or 8 MiB on a small baseline: what the
    // allocator keeps for the next burst of a shared machine's threads.
    let slack = (baseline_rss / 10).max(8 << 10);
    assert!(
        after_rss <= baseline_rss + slack,
        "RSS {after_rss} KiB after the attack, baseline {baseline_rss} KiB"
    );
    // The typical message: 3x the baseline median, with a floor of 2 ms
    // (the baseline is tens of microseconds to a millisecond here).
    let bound_p50 = (baseline_p50 * 3).max(Duration::from_millis(2));
    assert!(
        during_p50 <= bound_p50,
        "victim median {during_p50:?} during the attack, baseline {baseline_p50:?}"
    );
    // The tail: 5x the baseline p99, with a floor of 20 ms. The p99 of 150
    // samples is the second slowest, so one descheduling of the test's own
    // threads on a shared 2-core machine sets it (6 ms has been seen with
    // no attack-related cause); a broker stalled by a flood shows hundreds
    // of milliseconds, or every delivery slow, which the median catches.
    let bound_p99 = (baseline_p99 * 5).max(Duration::from_millis(20));
    assert!(
        during_p99 <= bound_p99,
        "victim p99 {during_p99:?} during the attack, baseline {baseline_p99:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_flood_to_new_rooms() {
    attack("receipts", true, false, |n| {
        Body::Receipt(Receipt {
            room: RoomId::new(format!("r{n}")).unwrap(),
            kind: ReceiptKind::Read,
            seq: Seq(1),
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_flood_to_new_rooms() {
    attack("subscribes", true, false, |n| {
        Body::Subscribe(Subscribe {
            items: (0..50)
                .map(|i| SubscribeItem {
                    room: RoomId::new(format!("s{n}-{i}")).unwrap(),
                    start: StartAt::Live,
                })
                .collect(),
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_query_flood() {
    attack("queries", true, false, |n| {
        Body::GetRoomInfo(GetRoomInfo {
            room: RoomId::new(format!("q{n}")).unwrap(),
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_flood_to_new_rooms() {
    attack("typing", false, false, |n| {
        Body::Typing(Typing {
            room: RoomId::new(format!("t{n}")).unwrap(),
            active: true,
        })
    })
    .await;
}

/// A Subscribe as large as the frame limit allows gets its results in
/// several SubscribeAck frames, each within the limit (protocol 7.3.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_subscribe_ack_is_split_within_the_frame_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_frame_len = confab_broker::config::MIN_FRAME_LEN;
    let max = config.limits.max_frame_len as usize;
    let broker = start(config).await;
    let mut c = Conn::open(broker.tcp_addr(), "alice", "d").await;
    // Rooms with 128-byte ids, as many as one request can carry.
    let items: Vec<SubscribeItem> = (0..1_890)
        .map(|i| {
            let mut id = format!("room-{i:05}-");
            id.extend(std::iter::repeat_n('x', 128 - id.len()));
            SubscribeItem {
                room: RoomId::new(id).unwrap(),
                start: StartAt::Live,
            }
        })
        .collect();
    let request = Frame::request(
        7,
        Subscribe {
            items: items.clone(),
        },
    );
    assert!(request.encoded_len().unwrap() - HEADER_LEN <= max);
    c.send_frame(request).await;
    let mut results = Vec::new();
    let mut frames = 0;
    while results.len() < items.len() {
        let f = tokio::time::timeout(WAIT, c.recv())
            .await
            .expect("acks in time")
            .expect("connection open");
        let len = f.encoded_len().unwrap() - HEADER_LEN;
        assert!(len <= max, "a frame of {len} bytes, limit {max}");
        if let Body::SubscribeAck(a) = f.body {
            assert_eq!(f.request_id, 7);
            frames += 1;
            results.extend(a.results);
        }
    }
    assert!(frames >= 2, "split into {frames} frames");
    let rooms: Vec<_> = results.iter().map(|r| r.room.clone()).collect();
    let asked: Vec<_> = items.iter().map(|i| i.room.clone()).collect();
    assert_eq!(rooms, asked, "results in request order");
    assert!(results.iter().all(|r| r.code == ErrorCode::Normal));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_flood_to_new_rooms() {
    attack("publishes", true, true, |n| {
        Body::Publish(Publish {
            room: RoomId::new(format!("p{n}")).unwrap(),
            client_msg_id: n + 1,
            kind: MessageKind::MESSAGE,
            refers_to: None,
            thread: None,
            payload: bytes::Bytes::from_static(b"spam"),
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_op_flood() {
    attack("room ops", true, false, |n| {
        if n % 2 == 0 {
            Body::JoinRoom(JoinRoom {
                room: RoomId::new(format!("j{n}")).unwrap(),
            })
        } else {
            Body::SetPresence(SetPresence {
                status: PresenceStatus::Away,
            })
        }
    })
    .await;
}
