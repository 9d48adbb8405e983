//! Cluster mode end to end: one real nats-server and three real `confab
//! serve --cluster` processes on 127.0.0.1 (docs/cluster.md, "Status").
//!
//! - devices on nodes A and C in a room owned by B: contiguous sequences,
//!   every message delivered once to each, the same history from every
//!   node;
//! - `kill -9` of the owner under publish load from devices on the other
//!   nodes, each retrying with its client message id until acknowledged:
//!   the whole stream, read afterwards, holds each room as exactly 1..=M,
//!   every acknowledged message once with its acknowledged sequence, and
//!   no client message id twice;
//! - the same with the owner paused (SIGSTOP) past the membership TTL and
//!   resumed while the next owner writes: fenced, nothing doubled.
//!
//! Without a nats-server the tests print `SKIPPED` and pass (except under
//! `CI`, see cluster_support).
#![allow(clippy::unwrap_used)]

mod cluster_support;
mod common;
#[path = "cluster_support/nodes.rs"]
mod nodes;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use confab_broker::cluster::{owner, JetStreamLog, LogConfig, NodeId};
use confab_codec::{Body, ErrorCode, RoomId, Seq, StartAt};

use cluster_support::{bounded, Nats};
use common::{read_all, Conn};
use nodes::{room_owned_by, three_nodes, three_nodes_with, tokens, writers};

/// Publishes until acknowledged, retrying with the same client message id
/// after an error (the owner gone, a takeover under way). Returns the
/// acknowledged sequence and how many attempts were refused.
async fn publish_until_acked(c: &mut Conn, room: &RoomId, cmid: u64, payload: &[u8]) -> (u64, u32) {
    for attempt in 0..100 {
        let rid = c.request_id();
        c.send_frame(Conn::publish_frame(rid, room, cmid, payload))
            .await;
        match c.wait_reply(rid, |_| true).await.body {
            Body::PublishAck(a) => {
                assert_eq!(a.client_msg_id, cmid);
                return (a.seq.0, attempt);
            }
            Body::Error(e) => {
                assert!(
                    matches!(e.code, ErrorCode::Internal | ErrorCode::StorageFull),
                    "a retryable refusal, got {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
    panic!("publish {cmid} not acknowledged after 100 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devices_on_two_nodes_share_a_room_owned_by_a_third() {
    let Some(nats) = Nats::start() else { return };
    bounded(120, async {
        let nodes = three_nodes(&nats).await;
        let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
        let r = room_owned_by("shared", b.id, &["a", "b", "c"]);

        let mut on_a = Conn::open(a.addr, "alice", "phone").await;
        let mut on_c = Conn::open(c.addr, "carol", "laptop").await;
        for conn in [&mut on_a, &mut on_c] {
            let ack = conn
                .subscribe(vec![(r.clone(), StartAt::From(Seq(1)))])
                .await;
            assert_eq!(ack.results[0].code, ErrorCode::Normal, "{ack:?}");
        }

        // Both publish, alternately; every ack names the owner's sequence.
        const EACH: u64 = 60;
        let mut acked: BTreeMap<u64, String> = BTreeMap::new();
        for i in 1..=EACH {
            for (name, conn) in [("a", &mut on_a), ("c", &mut on_c)] {
                let payload = format!("{name}{i}");
                let ack = conn.publish(&r, i, payload.as_bytes()).await;
                assert!(!ack.duplicate);
                assert!(
                    acked.insert(ack.seq.0, payload).is_none(),
                    "sequence {} acknowledged twice",
                    ack.seq.0
                );
            }
        }
        let total = 2 * EACH;
        common::assert_contiguous(&acked.keys().copied().collect::<Vec<_>>(), 1, total);

        // Each device gets every message once, in order, with its payload.
        for conn in [&mut on_a, &mut on_c] {
            let (events, _) = conn.events(total as usize).await;
            let seqs: Vec<u64> = events.iter().map(|e| e.1).collect();
            common::assert_contiguous(&seqs, 1, total);
            for (_, seq, payload) in &events {
                assert_eq!(payload.as_ref(), acked[seq].as_bytes(), "seq {seq}");
            }
            // And nothing more (no duplicate arrives late).
            assert!(
                conn.recv_timeout(Duration::from_millis(300)).await.is_err(),
                "nothing after the last message"
            );
        }

        // History is the same from every node, owner or not.
        for n in &nodes {
            let mut reader = Conn::open(n.addr, "reader", n.id).await;
            let all = read_all(&mut reader, &r).await;
            let seqs: Vec<u64> = all.iter().map(|e| e.seq.0).collect();
            common::assert_contiguous(&seqs, 1, total);
            for e in &all {
                assert_eq!(e.payload.as_ref(), acked[&e.seq.0].as_bytes());
            }
        }

        // Every chunk of the room was written by its owner, B: A's and C's
        // publishes were forwarded.
        let log = JetStreamLog::open(nats.client().await, LogConfig::default())
            .await
            .unwrap();
        let by = writers(&nats, &log, &r).await;
        assert!(!by.is_empty());
        assert!(by.iter().all(|w| w == "b"), "chunk writers {by:?}");
        eprintln!("{total} messages in {} chunks, all written by b", by.len());

        // A retry through another node gets the original sequence.
        let first = acked
            .iter()
            .find(|(_, p)| p.as_str() == "a1")
            .map(|(s, _)| *s)
            .unwrap();
        let mut again = Conn::open(c.addr, "alice", "phone").await;
        let ack = again.publish(&r, 1, b"a1").await;
        assert!(ack.duplicate, "{ack:?}");
        assert_eq!(ack.seq.0, first);

        // What cluster mode does not do yet is refused, not half done.
        let rid = on_a.send(confab_codec::JoinRoom { room: r.clone() }).await;
        match on_a.wait_reply(rid, |_| true).await.body {
            Body::Error(e) => assert_eq!(e.code, ErrorCode::Unsupported),
            other => panic!("room operations refused in cluster mode, got {other:?}"),
        }

        // SIGTERM: a node leaves in order and exits 0.
        drop((on_a, on_c, again));
        nodes::signal(&nodes[0].child, "-TERM");
        let mut nodes = nodes;
        assert!(
            nodes::wait_exit(&mut nodes[0].child).await,
            "node a exited 0"
        );
    })
    .await;
}

/// Rooms idle on a node are dropped from its sequencer (and its writer
/// and follower with them) and taken up again on their next use: the
/// owner continues the sequence, a node that stopped following delivers
/// the backlog and then live again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_rooms_are_dropped_and_taken_up_again() {
    let Some(nats) = Nats::start() else { return };
    bounded(120, async {
        let nodes = three_nodes_with(&nats, &["--set", "rooms.evict_idle_ms=100"]).await;
        let (a, c) = (nodes[0].addr, nodes[2].addr);
        let r = room_owned_by("idle", "b", &["a", "b", "c"]);
        let mut writer = Conn::open(a, "alice", "phone").await;
        let mut reader = Conn::open(c, "carol", "laptop").await;
        let ack = reader.subscribe(vec![(r.clone(), StartAt::Live)]).await;
        assert_eq!(ack.results[0].code, ErrorCode::Normal);
        reader
            .send(confab_codec::Unsubscribe {
                rooms: vec![r.clone()],
            })
            .await;
        let mut cmid = 0;
        let mut publish = async |writer: &mut Conn, n: u64| {
            for _ in 0..n {
                cmid += 1;
                let ack = writer
                    .publish(&r, cmid, format!("m{cmid}").as_bytes())
                    .await;
                assert_eq!(ack.seq.0, cmid, "the sequence continues");
            }
        };
        publish(&mut writer, 10).await;
        // Long enough for every node's sweep (about a second) to drop the
        // room: nobody uses or follows it now.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        publish(&mut writer, 10).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        // C takes the room up again: the backlog, then live.
        let ack = reader
            .subscribe(vec![(r.clone(), StartAt::From(Seq(1)))])
            .await;
        assert_eq!(ack.results[0].code, ErrorCode::Normal);
        let (events, _) = reader.events(20).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.1).collect();
        common::assert_contiguous(&seqs, 1, 20);
        publish(&mut writer, 5).await;
        let (events, _) = reader.events(5).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.1).collect();
        common::assert_contiguous(&seqs, 21, 25);
        // B dropped its writer while the room was idle and took the room
        // over afresh (a new writer token) for messages 11 and 21.
        let log = JetStreamLog::open(nats.client().await, LogConfig::default())
            .await
            .unwrap();
        let t = tokens(&nats, &log, &r).await;
        assert_eq!(t.len(), 25, "one chunk per publish here");
        assert!(t.iter().all(|t| t.starts_with("b-")), "{t:?}");
        assert_eq!(t[0], t[9]);
        assert_ne!(t[9], t[10], "taken over again after the drop");
        assert_ne!(t[19], t[20], "taken over again after the drop");
    })
    .await;
}

/// A retry that reaches a new owner whose sequencer holds the device's
/// mark from before it took the room over (too low: the room's earlier
/// ids were stored by the old owner) still gets its original: the new
/// owner's writer knows the id, refuses the room's commit once, and the
/// device's retry is then looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_with_an_old_mark_on_the_new_owner_gets_its_original() {
    let Some(nats) = Nats::start() else { return };
    bounded(120, async {
        let mut nodes = three_nodes(&nats).await;
        let c = nodes[2].addr;
        // Q is A's; R is B's, and A's once B is gone.
        let q = room_owned_by("mark-q", "a", &["a", "b", "c"]);
        let r = (0..1000)
            .map(|i| room_owned_by(&format!("mark-r{i}"), "b", &["a", "b", "c"]))
            .find(|r| {
                let ids = [NodeId::new("a").unwrap(), NodeId::new("c").unwrap()];
                owner(r, &ids).map(NodeId::as_str) == Some("a")
            })
            .unwrap();
        let mut s = Conn::open(c, "sam", "phone").await;
        // A's sequencer learns sam's mark: 1.
        assert_eq!(s.publish(&q, 1, b"q1").await.seq.0, 1);
        // B stores ids 2..=20 in R.
        let mut originals = HashMap::new();
        for id in 2..=20u64 {
            let ack = s.publish(&r, id, format!("r{id}").as_bytes()).await;
            originals.insert(id, ack.seq.0);
        }
        nodes[1].kill();
        // The retry of 20 (its ack lost, say) goes to A once B has left;
        // refusals meanwhile are retried.
        let mut refused = 0;
        let ack = loop {
            let rid = s.request_id();
            s.send_frame(Conn::publish_frame(rid, &r, 20, b"r20")).await;
            match s.wait_reply(rid, |_| true).await.body {
                Body::PublishAck(a) => break a,
                Body::Error(e) => {
                    assert_eq!(e.code, ErrorCode::Internal, "{e:?}");
                    refused += 1;
                    assert!(refused < 100, "never acknowledged");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!("unexpected {other:?}"),
            }
        };
        assert!(ack.duplicate, "{ack:?}");
        assert_eq!(ack.seq.0, originals[&20]);
        // And a new id continues the room.
        let next = s.publish(&r, 21, b"r21").await;
        assert_eq!(next.seq.0, originals[&20] + 1);
        let log = JetStreamLog::open(nats.client().await, LogConfig::default())
            .await
            .unwrap();
        let stored = cluster_support::read_all(&log, &r).await.unwrap();
        let seqs: Vec<u64> = stored.iter().map(|x| x.seq.0).collect();
        common::assert_contiguous(&seqs, 1, 20);
        eprintln!("retry answered with its original after {refused} refusals");
    })
    .await;
}

/// One publishing device: its node, room and the sequences it was given.
struct Publisher {
    user: String,
    room: RoomId,
    acked: HashMap<u64, u64>,
    /// Attempts refused (and retried).
    refused: u32,
}

/// Cycles of [`kill_cycle`], each with its own nats-server and nodes;
/// `CONFAB_CLUSTER_CYCLES` (default 3) and `CONFAB_CLUSTER_SEED` (default:
/// from the clock, printed) to repeat or replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_owner_under_load_loses_and_doubles_nothing() {
    let cycles: u64 = std::env::var("CONFAB_CLUSTER_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("CONFAB_CLUSTER_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
    for cycle in 0..cycles {
        let Some(nats) = Nats::start() else { return };
        let seed = seed.wrapping_add(cycle);
        eprintln!("cycle {cycle}: CONFAB_CLUSTER_SEED={seed} CONFAB_CLUSTER_CYCLES=1");
        bounded(120, fault_cycle(&nats, seed, Fault::Kill)).await;
    }
}

/// The paused owner: SIGSTOP the owner under load for longer than
/// the membership TTL, let the next owner write, SIGCONT. What the paused
/// node had in flight is refused by the fence (it steps down); the
/// checker finds every room 1..=M with every acknowledged publish once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_owner_is_fenced_and_nothing_is_doubled() {
    let Some(nats) = Nats::start() else { return };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    eprintln!("seed {seed}");
    bounded(150, fault_cycle(&nats, seed, Fault::Pause)).await;
}

/// What happens to the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `kill -9`.
    Kill,
    /// SIGSTOP until the others acknowledged 60 more publishes (through
    /// the next owner), then SIGCONT.
    Pause,
}

/// Four devices on the two other nodes publish into two rooms owned by
/// one node, which is killed with `kill -9` (or paused) after a seeded
/// number of acknowledgements; then the checker.
async fn fault_cycle(nats: &Nats, seed: u64, fault: Fault) {
    let mut rng = common::Rng(seed);
    let mut nodes = three_nodes(nats).await;
    let victim = rng.below(3) as usize;
    let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let owner_id = nodes[victim].id;
    let rooms = [
        room_owned_by(&format!("load-x{seed}"), owner_id, &["a", "b", "c"]),
        room_owned_by(&format!("load-y{seed}"), owner_id, &["a", "b", "c"]),
    ];
    const PER_DEVICE: u64 = 150;
    let kill_after = 10 + rng.below(200);
    // A device on another node follows the first room throughout.
    let mut follower = Conn::open(nodes[others[1]].addr, "watcher", "tv").await;
    let ack = follower
        .subscribe(vec![(rooms[0].clone(), StartAt::From(Seq(1)))])
        .await;
    assert_eq!(ack.results[0].code, ErrorCode::Normal, "{ack:?}");
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut tasks = Vec::new();
    // Two devices on each of the other nodes, one of each per room.
    for (i, node) in [others[0], others[0], others[1], others[1]]
        .into_iter()
        .enumerate()
    {
        let addr = nodes[node].addr;
        let room = rooms[i % 2].clone();
        let user = format!("user{i}");
        let progress = progress_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr, &user, "dev").await;
            let mut p = Publisher {
                user,
                room,
                acked: HashMap::new(),
                refused: 0,
            };
            for cmid in 1..=PER_DEVICE {
                let payload = format!("{}-{cmid}", p.user);
                let (seq, refused) =
                    publish_until_acked(&mut c, &p.room, cmid, payload.as_bytes()).await;
                p.acked.insert(cmid, seq);
                p.refused += refused;
                let _ = progress.send(());
            }
            p
        }));
    }
    drop(progress_tx);
    // Kill (or pause) the owner once the load is under way.
    for _ in 0..kill_after {
        progress_rx.recv().await.expect("publishers running");
    }
    match fault {
        Fault::Kill => nodes[victim].kill(),
        Fault::Pause => {
            nodes::signal(&nodes[victim].child, "-STOP");
            // The next owner takes the rooms over after the TTL and
            // writes (the devices keep publishing through it).
            for _ in 0..60 {
                progress_rx.recv().await.expect("publishers running");
            }
            nodes::signal(&nodes[victim].child, "-CONT");
        }
    }
    let mut publishers = Vec::new();
    for t in tasks {
        publishers.push(t.await.unwrap());
    }

    // The checker: the whole stream, as JetStream holds it.
    let log = JetStreamLog::open(nats.client().await, LogConfig::default())
        .await
        .unwrap();
    for room in &rooms {
        let mine: Vec<&Publisher> = publishers.iter().filter(|p| p.room == *room).collect();
        let total: u64 = mine.iter().map(|p| p.acked.len() as u64).sum();
        let acked: HashMap<(String, u64), u64> = mine
            .iter()
            .flat_map(|p| p.acked.iter().map(|(c, s)| ((p.user.clone(), *c), *s)))
            .collect();
        for ev in nodes::check_room(nats, room, total, &acked).await {
            assert_eq!(
                ev.payload.as_ref(),
                format!("{}-{}", ev.sender, ev.client_msg_id).as_bytes()
            );
        }
        let by = writers(nats, &log, room).await;
        assert_eq!(by.first().map(String::as_str), Some(owner_id), "{by:?}");
        assert!(
            by.iter().any(|w| w != owner_id),
            "another node took {room} over after the fault: {by:?}"
        );
        let refused: u32 = mine.iter().map(|p| p.refused).sum();
        eprintln!(
            "{room}: 1..={total} intact after {fault:?} of its owner {owner_id} after {kill_after} acks; {} chunks (writers {:?}), {refused} refused attempts retried",
            by.len(),
            nodes::dedup_runs(&by)
        );
    }

    // The following device got the first room exactly once, in order,
    // across the change of owner.
    let total = publishers
        .iter()
        .filter(|p| p.room == rooms[0])
        .map(|p| p.acked.len())
        .sum::<usize>();
    let (events, _) = follower.events(total).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.1).collect();
    common::assert_contiguous(&seqs, 1, total as u64);
}

/// Publishes of a device on each of `from`, each keeping `window`
/// publishes in flight for `secs` seconds, into `room` (with client
/// message ids or without); a device on `to` follows the room. Returns (acknowledged publishes per second,
/// publish-to-deliver p50 and p99 in microseconds at the follower).
async fn measure(
    from: &[SocketAddr],
    to: SocketAddr,
    room: &RoomId,
    window: usize,
    secs: u64,
    with_ids: bool,
) -> (f64, u64, u64) {
    let epoch = std::time::Instant::now();
    let mut follower = Conn::open(to, "measure", "follower").await;
    let ack = follower
        .subscribe(vec![(room.clone(), StartAt::Live)])
        .await;
    assert_eq!(ack.results[0].code, ErrorCode::Normal);
    let stop = epoch + Duration::from_secs(secs);
    // The follower reads as the events come (its latency is measured at
    // arrival), until the publishers say how many there were.
    let (count_tx, count_rx) = tokio::sync::oneshot::channel::<u64>();
    let reader = tokio::spawn(async move {
        let mut lat: Vec<u64> = Vec::new();
        let mut count_rx = count_rx;
        let mut total = None;
        loop {
            if total.is_some_and(|t| lat.len() as u64 >= t) {
                return lat;
            }
            if total.is_none() {
                if let Ok(t) = count_rx.try_recv() {
                    total = Some(t);
                    continue;
                }
            }
            let Ok(f) = follower.recv_timeout(Duration::from_millis(50)).await else {
                continue;
            };
            let f = f.expect("open");
            let now = epoch.elapsed().as_micros() as u64;
            let mut one = |p: &[u8]| {
                if let Ok(b) = <[u8; 8]>::try_from(p) {
                    lat.push(now.saturating_sub(u64::from_be_bytes(b)));
                }
            };
            match f.body {
                Body::Event(e) => one(&e.event.payload),
                Body::EventBatch(b) => b.events.iter().for_each(|e| one(&e.payload)),
                _ => {}
            }
        }
    });
    let mut tasks = Vec::new();
    for (i, addr) in from.iter().enumerate() {
        let (addr, room) = (*addr, room.clone());
        tasks.push(tokio::spawn(async move {
            // A device of its own per run: its ids start at 1.
            let mut c = Conn::open(addr, &format!("pub{i}-{room}"), "dev").await;
            let (mut cmid, mut in_flight, mut acked) = (0u64, 0usize, 0u64);
            loop {
                while in_flight < window && std::time::Instant::now() < stop {
                    cmid += 1;
                    let sent = epoch.elapsed().as_micros() as u64;
                    let rid = c.request_id();
                    let id = if with_ids { cmid } else { 0 };
                    c.send_frame(Conn::publish_frame(rid, &room, id, &sent.to_be_bytes()))
                        .await;
                    in_flight += 1;
                }
                if in_flight == 0 {
                    return acked;
                }
                match c.recv().await.expect("open").body {
                    Body::PublishAck(_) => {
                        acked += 1;
                        in_flight -= 1;
                    }
                    Body::Error(e) => panic!("refused: {e:?}"),
                    _ => {}
                }
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let elapsed = epoch.elapsed().as_secs_f64();
    let _ = count_tx.send(total);
    let mut lat = reader.await.unwrap();
    lat.sort_unstable();
    let q = |x: f64| lat[((lat.len() as f64 * x) as usize).min(lat.len() - 1)];
    (total as f64 / elapsed, q(0.5), q(0.99))
}

/// By hand: `cargo test --release -p confab-broker --test cluster_serve --
/// --ignored --nocapture`. Closed loop (a fixed number of publishes in
/// flight per device), so read ratios within a run, not absolutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn measure_publish_through_the_owner_and_forwarded() {
    let Some(nats) = Nats::start() else { return };
    bounded(120, async {
        let nodes = three_nodes(&nats).await;
        let (a, b, c) = (nodes[0].addr, nodes[1].addr, nodes[2].addr);
        for (window, ids) in [(1usize, true), (16, true), (16, false)] {
            let local = room_owned_by(&format!("m-local-{window}-{ids}"), "b", &["a", "b", "c"]);
            let (rate, p50, p99) = measure(&[b, b], c, &local, window, 3, ids).await;
            eprintln!(
                "2 devices on the owner, {window} in flight each, ids {ids}: {rate:.0} publishes/s; deliver on another node p50 {p50} us, p99 {p99} us"
            );
            let remote = room_owned_by(&format!("m-fwd-{window}-{ids}"), "b", &["a", "b", "c"]);
            let (rate, p50, p99) = measure(&[a, c], c, &remote, window, 3, ids).await;
            eprintln!(
                "2 devices on other nodes (forwarded), {window} in flight each, ids {ids}: {rate:.0} publishes/s; deliver on another node p50 {p50} us, p99 {p99} us"
            );
        }
    })
    .await;
}

/// `confab admin cluster` through the real binary: every node with its
/// address, alive, and its view of the live set; the room's owner as its
/// writer and every node that follows it, each with the stream's head and
/// no lag once the devices have everything; a stopped node answers no
/// more and leaves the others' view.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_cluster_shows_nodes_rooms_and_lag() {
    let Some(nats) = Nats::start() else { return };
    bounded(120, async {
        let nodes = three_nodes(&nats).await;
        let r = room_owned_by("admin", "b", &["a", "b", "c"]);
        let mut on_a = Conn::open(nodes[0].addr, "alice", "phone").await;
        let mut on_c = Conn::open(nodes[2].addr, "carol", "laptop").await;
        for conn in [&mut on_a, &mut on_c] {
            let ack = conn
                .subscribe(vec![(r.clone(), StartAt::From(Seq(1)))])
                .await;
            assert_eq!(ack.results[0].code, ErrorCode::Normal);
        }
        for i in 1..=10u64 {
            on_a.publish(&r, i, format!("m{i}").as_bytes()).await;
        }
        for conn in [&mut on_a, &mut on_c] {
            let (events, _) = conn.events(10).await;
            assert_eq!(events.last().map(|e| e.1), Some(10));
        }

        let out = admin_cluster(&nats).await;
        eprintln!("{out}");
        let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
        for n in &nodes {
            let row = lines
                .iter()
                .find(|l| l.len() == 7 && l[0] == n.id)
                .unwrap_or_else(|| panic!("node {} listed:\n{out}", n.id));
            assert_eq!(row[1], n.addr.to_string());
            assert_eq!(row[3], "alive");
            assert_eq!(row[4], "a,b,c");
        }
        let room_rows: Vec<&Vec<&str>> = lines.iter().filter(|l| l[0] == r.as_str()).collect();
        let row = |node: &str| {
            room_rows
                .iter()
                .find(|l| l[1] == node)
                .unwrap_or_else(|| panic!("{r} on {node} listed:\n{out}"))
        };
        // room, node, role, writer_head, applied, stream_head, lag
        assert_eq!(row("b")[2], "owner,writer");
        assert_eq!(row("b")[3], "10");
        for n in ["a", "c"] {
            assert_eq!(row(n)[2], "follower");
            assert_eq!(row(n)[3], "-");
            assert_eq!(row(n)[4], "10", "{n} handed everything to its devices");
        }
        for n in ["a", "b", "c"] {
            assert_eq!(row(n)[5], "10", "the stream's head");
            assert_eq!(row(n)[6], "0", "no lag on {n}");
        }

        // C stops answering (SIGSTOP): it drops out of the others' view
        // after the TTL, and while its key is listed it shows no answer.
        nodes::signal(&nodes[2].child, "-STOP");
        let mut tries = 0;
        let out = loop {
            let out = admin_cluster(&nats).await;
            let gone = out
                .lines()
                .filter(|l| l.starts_with("a\t") || l.starts_with("b\t"))
                .all(|l| l.split('\t').nth(4) == Some("a,b"));
            if gone {
                break out;
            }
            tries += 1;
            assert!(tries < 20, "c never left the others' view:\n{out}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        eprintln!("{out}");
        if let Some(c) = out.lines().find(|l| l.starts_with("c\t")) {
            assert!(c.contains("no answer"), "{c}");
        }
        nodes::signal(&nodes[2].child, "-CONT");

        // Not a cluster: refused with a message, exit status 1.
        let plain = tokio::task::spawn_blocking(|| {
            std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
                .args(["admin", "cluster"])
                .env_clear()
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        assert!(!plain.status.success());
        assert!(String::from_utf8_lossy(&plain.stderr).contains("not a cluster"));
    })
    .await;
}

/// Runs `confab admin --cluster <nats> cluster` (off the reactor) and
/// returns what it printed.
async fn admin_cluster(nats: &Nats) -> String {
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(["admin", "--cluster", &url, "cluster"])
            .env_clear()
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "confab admin cluster: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
