//! What QUIC adds over a byte stream, tested on 127.0.0.1 with real
//! sockets: a room whose event stream is stalled does not hold back other
//! rooms; a client that changes address keeps its session; and through a
//! UDP proxy that drops and reorders packets, every event still arrives
//! exactly once and in order per room, and a lost packet holds back only
//! the rooms of its own stream.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use confab_codec::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// The reference broker's lane of a room (protocol section 2.1): FNV-1a of
/// the room id modulo the number of event streams.
fn lane(room: &RoomId, lanes: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % lanes
}

/// Room events of `frames` as (room, seq), in arrival order.
fn room_seqs(frame: &Frame) -> Vec<(RoomId, u64)> {
    match &frame.body {
        Body::Event(e) => vec![(e.room.clone(), e.event.seq.0)],
        Body::EventBatch(b) => b.events.iter().map(|e| (b.room.clone(), e.seq.0)).collect(),
        _ => Vec::new(),
    }
}

async fn publish_many(c: &mut Conn, room: &RoomId, from_cmid: u64, n: u64, size: usize) {
    let payload = vec![b'x'; size];
    for i in 0..n {
        let rid = c.request_id();
        c.send_frame(Conn::publish_frame(rid, room, from_cmid + i, &payload))
            .await;
    }
    let mut acks = 0;
    while acks < n {
        if let Body::PublishAck(_) = c.recv().await.unwrap().body {
            acks += 1;
        }
    }
}

/// A client that does not read one room's event stream: that stream runs
/// out of flow-control credit and the room falls behind (Lagging), while
/// another room's events and the control stream keep flowing. Once the
/// stalled stream is read again, its room arrives complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_room_stream_does_not_block_other_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.delivery.queue_capacity = 64;
    let lanes = config.delivery.quic_event_streams as u64;
    let broker = start(config).await;
    let d = dial(&broker, Transport::Quic);

    let slow = room("slow-room");
    let fast = (0..100)
        .map(|i| room(&format!("fast-{i}")))
        .find(|r| lane(r, lanes) != lane(&slow, lanes))
        .unwrap();

    // A small per-stream window, so that an unread stream stalls fast.
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(16_384u32.into());
    let config = quic_client(d.cert.as_ref().unwrap(), transport);
    let (_endpoint, conn) = quic_connect(d.addr, config).await;
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let (ctl_tx, mut ctl) = mpsc::unbounded_channel();
    tokio::spawn(forward_frames(recv, ctl_tx));
    let write = |f: Frame| f.to_bytes().unwrap();
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        token: "reader:d".into(),
        device: DeviceId::new("d").unwrap(),
        client_name: "test".into(),
        resume: vec![
            SubscribeItem {
                room: slow.clone(),
                start: StartAt::Live,
            },
            SubscribeItem {
                room: fast.clone(),
                start: StartAt::Live,
            },
        ],
        features: Default::default(),
    };
    send.write_all(&write(Frame::request(1, hello)))
        .await
        .unwrap();
    let mut control = Vec::new();
    while !control
        .iter()
        .any(|f: &Frame| matches!(f.body, Body::SubscribeAck(_)))
    {
        control.push(
            tokio::time::timeout(WAIT, ctl.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(matches!(control[0].body, Body::Welcome(_)));

    let mut publisher = Conn::open(broker.tcp_addr(), "writer", "w").await;
    // The first event of the slow room opens its stream, which is then
    // never read: 1,000 events of 1 KiB against a 16 KiB window.
    publish_many(&mut publisher, &slow, 1, 1, 1024).await;
    let mut slow_stream = tokio::time::timeout(WAIT, conn.accept_uni())
        .await
        .unwrap()
        .unwrap();
    publish_many(&mut publisher, &slow, 2, 999, 1024).await;

    // The fast room's stream opens and delivers everything, in order.
    publish_many(&mut publisher, &fast, 10_000, 200, 1024).await;
    let fast_stream = tokio::time::timeout(WAIT, conn.accept_uni())
        .await
        .unwrap()
        .unwrap();
    let (fast_tx, mut fast_rx) = mpsc::unbounded_channel();
    tokio::spawn(forward_frames(fast_stream, fast_tx));
    let mut fast_seqs = Vec::new();
    while fast_seqs.len() < 200 {
        let f = tokio::time::timeout(WAIT, fast_rx.recv())
            .await
            .expect("the fast room is not held back")
            .unwrap();
        for (r, seq) in room_seqs(&f) {
            assert_eq!(r, fast, "one room per stream here");
            fast_seqs.push(seq);
        }
    }
    assert_contiguous(&fast_seqs, 1, 200);

    // The control stream answers too.
    send.write_all(&write(Frame::request(7, Ping { nonce: 7 })))
        .await
        .unwrap();
    loop {
        let f = tokio::time::timeout(WAIT, ctl.recv())
            .await
            .unwrap()
            .unwrap();
        if f.body == Body::Pong(Pong { nonce: 7 }) {
            break;
        }
    }

    // The slow room really is stalled: nothing of it was read, and the
    // broker had to switch it to catch-up.
    let stats = broker.stats();
    assert!(stats.lag_switches >= 1, "{stats:?}");

    // Reading the stalled stream again yields the room complete and in order.
    let (slow_tx, mut slow_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 1];
        // Read one byte by hand to prove nothing was consumed before.
        slow_stream.read_exact(&mut buf).await.unwrap();
        let mut rest = bytes::BytesMut::from(&buf[..]);
        loop {
            while let Some(f) = Frame::decode(&mut rest, 1 << 24).unwrap() {
                if slow_tx.send(f).is_err() {
                    return;
                }
            }
            match slow_stream.read_chunk(64 << 10, true).await {
                Ok(Some(chunk)) => rest.extend_from_slice(&chunk.bytes),
                _ => return,
            }
        }
    });
    let mut slow_seqs = Vec::new();
    let mut lagging = false;
    while slow_seqs.len() < 1000 {
        let f = tokio::time::timeout(WAIT, slow_rx.recv())
            .await
            .unwrap()
            .unwrap();
        lagging |= matches!(f.body, Body::Lagging(_));
        slow_seqs.extend(room_seqs(&f).into_iter().map(|(_, s)| s));
    }
    assert!(lagging, "the slow room was told it lags");
    assert_contiguous(&slow_seqs, 1, 1000);
    reader.abort();
    broker.shutdown().await;
}

/// A client whose address changes (a phone moving from Wi-Fi to cellular)
/// keeps its QUIC connection and its session: no reconnect, no resume,
/// events keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_migration_keeps_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let r = room("moving");
    let mut phone = Conn::open(dial(&broker, Transport::Quic), "alice", "phone").await;
    let session = phone.welcome.as_ref().unwrap().session_id;
    phone.subscribe(vec![(r.clone(), StartAt::Live)]).await;
    let mut writer = Conn::open(broker.tcp_addr(), "bob", "laptop").await;

    publish_many(&mut writer, &r, 1, 10, 100).await;
    let (events, _) = phone.events(10).await;
    assert_contiguous(&events.iter().map(|e| e.1).collect::<Vec<_>>(), 1, 10);

    let quic = phone.quic.as_ref().unwrap();
    let before = quic.endpoint.local_addr().unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    quic.endpoint.rebind(socket).unwrap();
    let after = quic.endpoint.local_addr().unwrap();
    assert_ne!(before, after, "the client moved");

    publish_many(&mut writer, &r, 11, 10, 100).await;
    let (events, others) = phone.events(10).await;
    assert_contiguous(&events.iter().map(|e| e.1).collect::<Vec<_>>(), 11, 20);
    assert!(
        others.iter().all(|f| !matches!(f.body, Body::Goodbye(_))),
        "{others:?}"
    );
    // Same connection, same session: a request still works on it.
    let rid = phone.send(Ping { nonce: 1 }).await;
    let pong = phone
        .wait_reply(rid, |f| matches!(f.body, Body::Pong(_)))
        .await;
    assert_eq!(pong.body, Body::Pong(Pong { nonce: 1 }));
    assert!(phone.quic.as_ref().unwrap().conn.close_reason().is_none());
    assert_eq!(phone.welcome.as_ref().unwrap().session_id, session);
    assert_eq!(broker.stats().connections, 2, "no second connection");
    broker.shutdown().await;
}

/// Counters of a [`LossyProxy`].
#[derive(Debug, Default)]
struct ProxyStats {
    forwarded: AtomicU64,
    dropped: AtomicU64,
    delayed: AtomicU64,
}

/// A UDP proxy for one client: packets from the broker to the client are
/// dropped with probability `drop` and delayed by 1-20 ms (so that later
/// ones overtake them) with probability `reorder`, decided by a seeded RNG.
/// Packets from the client are forwarded untouched.
struct LossyProxy {
    addr: SocketAddr,
    stats: Arc<ProxyStats>,
    /// While not 0, broker packets longer than this many bytes are dropped
    /// too.
    drop_longer_than: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LossyProxy {
    async fn start(upstream: SocketAddr, seed: u64, drop: f64, reorder: f64) -> LossyProxy {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(upstream).await.unwrap();
        let addr = front.local_addr().unwrap();
        let stats = Arc::new(ProxyStats::default());
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        let drop_longer_than = Arc::new(AtomicU64::new(0));
        let task = {
            let stats = stats.clone();
            let longer = drop_longer_than.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut up = vec![0u8; 65_536];
                let mut down = vec![0u8; 65_536];
                loop {
                    tokio::select! {
                        r = front.recv_from(&mut up) => {
                            let Ok((n, from)) = r else { return };
                            *client.lock().unwrap() = Some(from);
                            let _ = back.send(&up[..n]).await;
                        }
                        r = back.recv(&mut down) => {
                            let Ok(n) = r else { return };
                            let Some(to) = *client.lock().unwrap() else { continue };
                            let roll: f64 = rng.gen();
                            let limit = longer.load(Ordering::Relaxed);
                            if roll < drop || (limit > 0 && n as u64 > limit) {
                                stats.dropped.fetch_add(1, Ordering::Relaxed);
                            } else if roll < drop + reorder {
                                stats.delayed.fetch_add(1, Ordering::Relaxed);
                                let delay = Duration::from_millis(rng.gen_range(1..=20));
                                let (front, packet) = (front.clone(), down[..n].to_vec());
                                tokio::spawn(async move {
                                    tokio::time::sleep(delay).await;
                                    let _ = front.send_to(&packet, to).await;
                                });
                            } else {
                                stats.forwarded.fetch_add(1, Ordering::Relaxed);
                                let _ = front.send_to(&down[..n], to).await;
                            }
                        }
                    }
                }
            })
        };
        LossyProxy {
            addr,
            stats,
            drop_longer_than,
            task,
        }
    }
}

/// Through a proxy that drops 5% and reorders 5% of the broker's packets,
/// events of several rooms published concurrently all arrive, exactly once
/// and in order per room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_loss_and_reordering_every_room_arrives_complete_and_in_order() {
    const ROOMS: usize = 4;
    const PER_ROOM: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let proxy = LossyProxy::start(broker.quic_addr().unwrap(), 0x5eed, 0.05, 0.05).await;
    let mut d = dial(&broker, Transport::Quic);
    d.addr = proxy.addr;

    let rooms: Vec<RoomId> = (0..ROOMS).map(|i| room(&format!("lossy-{i}"))).collect();
    let mut reader = Conn::open(&d, "reader", "d").await;
    reader
        .subscribe(rooms.iter().map(|r| (r.clone(), StartAt::Live)).collect())
        .await;

    let mut writers = Vec::new();
    for (i, r) in rooms.iter().enumerate() {
        let addr = broker.tcp_addr();
        let r = r.clone();
        writers.push(tokio::spawn(async move {
            let mut w = Conn::open(addr, &format!("w{i}"), "d").await;
            for batch in 0..(PER_ROOM / 50) {
                publish_many(&mut w, &r, 1 + batch * 50, 50, 200).await;
            }
        }));
    }
    let (events, _) = reader.events(ROOMS * PER_ROOM as usize).await;
    for w in writers {
        w.await.unwrap();
    }
    let mut per_room: HashMap<RoomId, Vec<u64>> = HashMap::new();
    for (r, seq, _) in events {
        per_room.entry(r).or_default().push(seq);
    }
    for r in &rooms {
        assert_contiguous(&per_room[r], 1, PER_ROOM);
    }
    // Nothing more (no duplicate) is on its way.
    let extra = reader.recv_timeout(Duration::from_millis(300)).await;
    assert!(
        !matches!(&extra, Ok(Some(f)) if !room_seqs(f).is_empty()),
        "{extra:?}"
    );
    let dropped = proxy.stats.dropped.load(Ordering::Relaxed);
    let delayed = proxy.stats.delayed.load(Ordering::Relaxed);
    assert!(
        dropped > 0 && delayed > 0,
        "the proxy did its job: {:?}",
        proxy.stats
    );
    broker.shutdown().await;
}

/// How far room `b` gets ahead of room `a` while every broker packet that
/// carries `a`'s data is lost. One writer publishes to `a` and `b` in
/// lockstep (`a`'s k-th message is committed before `b`'s k-th); `a`'s
/// messages are large and `b`'s tiny, so the proxy can tell their packets
/// apart by size: for a stretch of the run it drops every packet longer
/// than 1,000 bytes. Returns the largest `k - (a's last seq seen)` at the
/// arrival of `b`'s k-th message, after checking that both rooms arrived
/// complete and in order.
async fn lead_while_a_is_lost(event_streams: usize) -> i64 {
    const PAIRS: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.delivery.quic_event_streams = event_streams;
    let broker = start(config).await;
    let proxy = LossyProxy::start(broker.quic_addr().unwrap(), 0x1055, 0.0, 0.0).await;
    let mut d = dial(&broker, Transport::Quic);
    d.addr = proxy.addr;

    let lanes = event_streams as u64;
    let b = room("hol-b");
    let a = (0..)
        .map(|i| room(&format!("hol-a-{i}")))
        .find(|a| lanes == 1 || lane(a, lanes) != lane(&b, lanes))
        .unwrap();
    let mut reader = Conn::open(&d, "reader", "d").await;
    reader
        .subscribe(vec![(a.clone(), StartAt::Live), (b.clone(), StartAt::Live)])
        .await;
    let reading = tokio::spawn(async move { reader.events(2 * PAIRS as usize).await.0 });

    let published = Arc::new(AtomicU64::new(0));
    let writer = {
        let (addr, a, b, published) = (broker.tcp_addr(), a.clone(), b.clone(), published.clone());
        tokio::spawn(async move {
            let mut w = Conn::open(addr, "writer", "d").await;
            let big = vec![b'a'; 3_000];
            for k in 1..=PAIRS {
                assert_eq!(w.publish(&a, k, &big).await.seq.0, k);
                assert_eq!(w.publish(&b, k, b"b").await.seq.0, k);
                published.store(k, Ordering::Relaxed);
            }
        })
    };
    // The lossy stretch: from the 50th pair to the 350th, as the writer
    // (acknowledged over TCP, not through the proxy) sees them.
    let wait_for = |k: u64| {
        let published = published.clone();
        async move {
            while published.load(Ordering::Relaxed) < k {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    tokio::time::timeout(WAIT, wait_for(50)).await.unwrap();
    proxy.drop_longer_than.store(1_000, Ordering::Relaxed);
    tokio::time::timeout(WAIT, wait_for(350)).await.unwrap();
    proxy.drop_longer_than.store(0, Ordering::Relaxed);
    writer.await.unwrap();
    let events = tokio::time::timeout(WAIT, reading).await.unwrap().unwrap();

    let (mut a_seqs, mut b_seqs) = (Vec::new(), Vec::new());
    let mut lead = i64::MIN;
    for (r, seq, _) in events {
        if r == a {
            a_seqs.push(seq);
        } else {
            assert_eq!(r, b);
            let a_seen = a_seqs.last().copied().unwrap_or(0);
            lead = lead.max(seq as i64 - a_seen as i64);
            b_seqs.push(seq);
        }
    }
    assert_contiguous(&a_seqs, 1, PAIRS);
    assert_contiguous(&b_seqs, 1, PAIRS);
    assert!(proxy.stats.dropped.load(Ordering::Relaxed) > 0);
    broker.shutdown().await;
    lead
}

/// A lost packet holds back only the rooms of its own stream: while
/// room `a`'s packets are being lost, room `b`, on another event stream,
/// keeps arriving, far ahead of `a`. With a single event stream (what one
/// ordered byte stream would give), `b` can never get ahead of `a`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_packet_holds_back_only_its_own_rooms() {
    let shared_stream = lead_while_a_is_lost(1).await;
    assert!(
        shared_stream <= 0,
        "on one stream, b's k-th message never arrives before a's k-th: lead {shared_stream}"
    );
    let own_streams = lead_while_a_is_lost(8).await;
    eprintln!("lead of b over a: {own_streams} on separate streams, {shared_stream} on one");
    assert!(
        own_streams >= 50,
        "b kept arriving while a's packets were lost: lead {own_streams}"
    );
}
