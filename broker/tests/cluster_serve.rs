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
//!   no client message id twice.
//!
//! Without a nats-server the tests print `SKIPPED` and pass (except under
//! `CI`, see cluster_support).
#![allow(clippy::unwrap_used)]

mod cluster_support;
mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

use confab_broker::cluster::{owner, JetStreamLog, LogConfig, NodeId};
use confab_codec::{Body, ErrorCode, EventRecord, RoomId, Seq, StartAt};

use cluster_support::{bounded, Nats};
use common::{read_all, Conn};

/// A `confab serve --cluster` process, killed on drop.
struct Node {
    id: &'static str,
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Node {
    fn spawn(id: &'static str, nats: &Nats) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let urls = format!("nats://127.0.0.1:{}", nats.port);
        let child = common::confab_command(
            dir.path(),
            port,
            "wal",
            &[
                "--cluster",
                &urls,
                "--node-id",
                id,
                "--advertise",
                &addr.to_string(),
                // A dead node is noticed within a second.
                "--set",
                "cluster.node_ttl_ms=1000",
                "--set",
                "cluster.heartbeat_ms=300",
            ],
        )
        .spawn()
        .expect("the confab binary starts");
        Self {
            id,
            addr,
            child,
            _dir: dir,
        }
    }

    fn kill(&mut self) {
        // SIGKILL: no goodbye, no leave; its key expires after the TTL.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts nodes a, b and c and waits until each listens and has seen the
/// others join (each joins before it listens; a node's view of the others
/// follows within a heartbeat).
async fn three_nodes(nats: &Nats) -> Vec<Node> {
    let nodes: Vec<Node> = ["a", "b", "c"]
        .into_iter()
        .map(|id| Node::spawn(id, nats))
        .collect();
    for n in &nodes {
        common::wait_listening(n.addr).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    nodes
}

/// The first room `<prefix>-<i>` that `want` owns among `live`.
fn room_owned_by(prefix: &str, want: &str, live: &[&str]) -> RoomId {
    let ids: Vec<NodeId> = live.iter().map(|n| NodeId::new(*n).unwrap()).collect();
    (0..1000)
        .map(|i| RoomId::new(format!("{prefix}-{i}")).unwrap())
        .find(|r| owner(r, &ids).map(NodeId::as_str) == Some(want))
        .expect("some room is owned by each node")
}

/// Publishes until acknowledged, retrying with the same client message id
/// after an error (the owner gone, a takeover under way). Returns the
/// acknowledged sequence.
async fn publish_until_acked(c: &mut Conn, room: &RoomId, cmid: u64, payload: &[u8]) -> u64 {
    for _attempt in 0..100 {
        let rid = c.request_id();
        c.send_frame(Conn::publish_frame(rid, room, cmid, payload))
            .await;
        match c.wait_reply(rid, |_| true).await.body {
            Body::PublishAck(a) => {
                assert_eq!(a.client_msg_id, cmid);
                return a.seq.0;
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
    })
    .await;
}

/// One publishing device: its node, room and the sequences it was given.
struct Publisher {
    user: String,
    room: RoomId,
    acked: HashMap<u64, u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_owner_under_load_loses_and_doubles_nothing() {
    let Some(nats) = Nats::start() else { return };
    bounded(240, async {
        let mut nodes = three_nodes(&nats).await;
        let rooms = [
            room_owned_by("load-x", "b", &["a", "b", "c"]),
            room_owned_by("load-y", "b", &["a", "b", "c"]),
        ];
        const PER_DEVICE: u64 = 150;
        const KILL_AFTER: u64 = 40;
        let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut tasks = Vec::new();
        // Two devices on A and two on C, one of each per room.
        for (i, node) in [0usize, 0, 2, 2].into_iter().enumerate() {
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
                };
                for cmid in 1..=PER_DEVICE {
                    let payload = format!("{}-{cmid}", p.user);
                    let seq = publish_until_acked(&mut c, &p.room, cmid, payload.as_bytes()).await;
                    p.acked.insert(cmid, seq);
                    let _ = progress.send(());
                }
                p
            }));
        }
        drop(progress_tx);
        // Kill the owner once the load is under way.
        let mut seen = 0;
        while seen < KILL_AFTER {
            progress_rx.recv().await.expect("publishers running");
            seen += 1;
        }
        nodes[1].kill();
        let mut publishers = Vec::new();
        for t in tasks {
            publishers.push(t.await.unwrap());
        }

        // The checker: the whole stream, as JetStream holds it.
        let log = JetStreamLog::open(nats.client().await, LogConfig::default())
            .await
            .unwrap();
        for room in &rooms {
            let stored = cluster_support::read_all(&log, room).await.unwrap();
            let seqs: Vec<u64> = stored.iter().map(|r| r.seq.0).collect();
            let mine: Vec<&Publisher> = publishers.iter().filter(|p| p.room == *room).collect();
            let total: u64 = mine.iter().map(|p| p.acked.len() as u64).sum();
            // Exactly 1..=M: no gap, no fork, and (every publish stored
            // once) M is the number of distinct publishes.
            common::assert_contiguous(&seqs, 1, total);
            let mut by_id: HashMap<(String, u64), u64> = HashMap::new();
            for r in &stored {
                let ev = EventRecord::decode(r.bytes.clone()).unwrap();
                assert_eq!(ev.seq, r.seq);
                let key = (ev.sender.as_str().to_owned(), ev.client_msg_id);
                assert!(
                    by_id.insert(key.clone(), ev.seq.0).is_none(),
                    "{key:?} stored twice in {room}"
                );
                assert_eq!(
                    ev.payload.as_ref(),
                    format!("{}-{}", key.0, key.1).as_bytes()
                );
            }
            for p in mine {
                for (cmid, seq) in &p.acked {
                    assert_eq!(
                        by_id.get(&(p.user.clone(), *cmid)),
                        Some(seq),
                        "{}'s {cmid} stored with its acknowledged sequence",
                        p.user
                    );
                }
            }
            eprintln!("{room}: 1..={total} intact after kill -9 of its owner");
        }
    })
    .await;
}
