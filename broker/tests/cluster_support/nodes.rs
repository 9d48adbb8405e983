//! `confab serve --cluster` processes for the tests that run whole nodes
//! (cluster_serve.rs, cluster_sdk.rs), and what they read back from the
//! stream. Included with `#[path]` beside `common` and `cluster_support`.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

use confab_broker::cluster::{owner, JetStreamLog, NodeId};
use confab_codec::{EventRecord, RoomId};

use crate::cluster_support::{self, Nats};
use crate::common;

/// A `confab serve --cluster` process, killed on drop.
pub struct Node {
    pub id: &'static str,
    pub addr: SocketAddr,
    pub child: Child,
    _dir: tempfile::TempDir,
}

impl Node {
    pub fn spawn_with(id: &'static str, nats: &Nats, extra: &[&str]) -> Self {
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
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
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

    pub fn kill(&mut self) {
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
pub async fn three_nodes(nats: &Nats) -> Vec<Node> {
    three_nodes_with(nats, &[]).await
}

/// [`three_nodes`] with more `confab serve` arguments.
pub async fn three_nodes_with(nats: &Nats, extra: &[&str]) -> Vec<Node> {
    let nodes: Vec<Node> = ["a", "b", "c"]
        .into_iter()
        .map(|id| Node::spawn_with(id, nats, extra))
        .collect();
    for n in &nodes {
        common::wait_listening(n.addr).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    nodes
}

/// The first room `<prefix>-<i>` that `want` owns among `live`.
pub fn room_owned_by(prefix: &str, want: &str, live: &[&str]) -> RoomId {
    let ids: Vec<NodeId> = live.iter().map(|n| NodeId::new(*n).unwrap()).collect();
    (0..1000)
        .map(|i| RoomId::new(format!("{prefix}-{i}")).unwrap())
        .find(|r| owner(r, &ids).map(NodeId::as_str) == Some(want))
        .expect("some room is owned by each node")
}

/// The node that wrote each chunk of `room`, in stream order (the node id
/// that starts each chunk's writer token).
pub async fn writers(nats: &Nats, log: &JetStreamLog, room: &RoomId) -> Vec<String> {
    tokens(nats, log, room)
        .await
        .into_iter()
        .map(|t| t.split('-').next().unwrap_or_default().to_owned())
        .collect()
}

/// The writer token of each chunk of `room`, in stream order.
pub async fn tokens(nats: &Nats, log: &JetStreamLog, room: &RoomId) -> Vec<String> {
    let js = async_nats::jetstream::new(nats.client().await);
    let mut stream = js.get_stream("CONFAB_ROOMS").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let subject = log.subject(room);
    let mut out = Vec::new();
    for seq in 1..=last {
        let msg = stream.direct_get(seq).await.unwrap();
        if msg.subject.as_str() != subject {
            continue;
        }
        let token = msg
            .headers
            .get("Confab-Writer")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.push(token);
    }
    out
}

/// The checker of the kill and pause tests: reads the whole of `room`
/// from the stream, as JetStream holds it, and asserts that it is exactly
/// `1..=distinct` (no gap, no fork, and, with `distinct` the number of
/// different publishes, each stored once), that no (sender, client
/// message id) is stored twice, and that every acknowledged publish
/// (`acked`: (user, client message id) to sequence) is stored with its
/// acknowledged sequence. Returns the room's records in order.
pub async fn check_room(
    nats: &Nats,
    room: &RoomId,
    distinct: u64,
    acked: &HashMap<(String, u64), u64>,
) -> Vec<EventRecord> {
    let log = JetStreamLog::open(nats.client().await, Default::default())
        .await
        .unwrap();
    let stored = cluster_support::read_all(&log, room).await.unwrap();
    let seqs: Vec<u64> = stored.iter().map(|r| r.seq.0).collect();
    common::assert_contiguous(&seqs, 1, distinct);
    let mut by_id: HashMap<(String, u64), u64> = HashMap::new();
    let mut records = Vec::with_capacity(stored.len());
    for r in &stored {
        let ev = EventRecord::decode(r.bytes.clone()).unwrap();
        assert_eq!(ev.seq, r.seq);
        let key = (ev.sender.as_str().to_owned(), ev.client_msg_id);
        assert!(
            by_id.insert(key.clone(), ev.seq.0).is_none(),
            "{key:?} stored twice in {room}"
        );
        records.push(ev);
    }
    for (key, seq) in acked {
        assert_eq!(
            by_id.get(key),
            Some(seq),
            "{key:?} stored with its acknowledged sequence in {room}"
        );
    }
    records
}

/// `a a b b b c` as `[(a, 2), (b, 3), (c, 1)]`.
pub fn dedup_runs(v: &[String]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for w in v {
        match out.last_mut() {
            Some((last, n)) if last == w => *n += 1,
            _ => out.push((w.clone(), 1)),
        }
    }
    out
}

/// Sends `sig` (`-STOP`, `-CONT`, `-TERM`) to `child`.
pub fn signal(child: &Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig}");
}

/// Waits up to 20 s for `child` to exit, and returns whether it exited 0.
pub async fn wait_exit(child: &mut Child) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            return exit.success();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
