//! Typing and presence across nodes: one real nats-server and real
//! `confab serve --cluster` processes on 127.0.0.1 (docs/cluster.md,
//! "Typing and presence across nodes"), `cluster.node_ttl_ms` 1000.
//!
//! - typing from a device on node A reaches the devices following the room
//!   on B and C: a start, a stop, and a start that is not refreshed and
//!   expires after `rooms.typing_ttl_ms`;
//! - presence of a user whose only device is on A is seen on B and C
//!   (pushed and asked); after a `kill -9` of A that user is seen offline
//!   on B and C within the node TTL + 1 s (the bound, with slack
//!   for a loaded machine: see `OFFLINE_BOUND`), while a user with a
//!   device on A and another on B stays online; a node that joins later
//!   learns who is online from the others.
//!
//! In cluster mode nobody shares a managed room yet (room operations are
//! refused), so a user's presence is visible only to that user: the
//! watchers here are the user's own other devices, which appear offline
//! (`SetPresence(Offline)`) so that only the watched devices count.
//!
//! Without a nats-server the tests print `SKIPPED` and pass (except under
//! `CI`, see cluster_support).
#![allow(clippy::unwrap_used)]

mod cluster_support;
mod common;
#[path = "cluster_support/nodes.rs"]
mod nodes;

use std::time::{Duration, Instant};

use confab_codec::{
    Body, GetPresence, PresenceEntry, PresenceStatus, SetPresence, StartAt, Typing, WatchPresence,
};

use cluster_support::{bounded, Nats};
use common::{request, room, typing_sets, user, Conn};
use nodes::{three_nodes_with, Node};

/// The membership TTL the nodes run with (`cluster.node_ttl_ms`, set by
/// `nodes::Node`).
const NODE_TTL: Duration = Duration::from_millis(1000);

/// What is asserted for a dead node's users: seen offline on the other
/// nodes within the node TTL + 1 s (the contract), plus 2 s of
/// slack for a loaded 2-core machine (three nodes, a nats-server and
/// other builds sharing it). Measured from the `kill -9`, which is at
/// most a heartbeat after the node's last one, so this is generous.
const OFFLINE_BOUND: Duration = Duration::from_millis(1000 + 1000 + 2000);

/// The settings of every node here: pushes coalesced over 100 ms.
const SETTINGS: &[&str] = &["--set", "presence.window_ms=100"];

/// Waits (at most `d`) until `c` receives the typing set `want`.
async fn typing_until(c: &mut Conn, want: &[&str], d: Duration) -> bool {
    let end = Instant::now() + d;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match c.recv_timeout(left).await {
            Ok(Some(f)) => {
                if let Body::TypingEvent(t) = f.body {
                    if t.users.iter().map(|u| u.as_str()).eq(want.iter().copied()) {
                        return true;
                    }
                }
            }
            _ => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typing_reaches_devices_following_the_room_on_other_nodes() {
    let Some(nats) = Nats::start() else { return };
    bounded(120, async {
        let nodes = three_nodes_with(
            &nats,
            &[
                "--set",
                "rooms.typing_window_ms=50",
                "--set",
                "rooms.typing_ttl_ms=1500",
            ],
        )
        .await;
        let (a, b, c) = (nodes[0].addr, nodes[1].addr, nodes[2].addr);
        let r = room("typing-across");
        let mut typist = Conn::open(a, "alice", "phone").await;
        let mut on_b = Conn::open(b, "bob", "laptop").await;
        let mut on_c = Conn::open(c, "carol", "tablet").await;
        for conn in [&mut on_b, &mut on_c] {
            let ack = conn.subscribe(vec![(r.clone(), StartAt::Live)]).await;
            assert_eq!(ack.results[0].code, confab_codec::ErrorCode::Normal);
        }
        let typing = |active| Typing {
            room: r.clone(),
            active,
        };

        // A start reaches both other nodes' followers (refreshed every
        // second, as a client does while its user types).
        for conn in [&mut on_b, &mut on_c] {
            let mut seen = false;
            for _ in 0..10 {
                typist.send(typing(true)).await;
                if typing_until(conn, &["alice"], Duration::from_secs(1)).await {
                    seen = true;
                    break;
                }
            }
            assert!(seen, "alice's typing reached the follower");
        }

        // A stop clears the set everywhere.
        typist.send(typing(false)).await;
        for conn in [&mut on_b, &mut on_c] {
            assert!(
                typing_until(conn, &[], Duration::from_secs(5)).await,
                "the stop reached the follower"
            );
        }

        // A start that is not refreshed expires on the receiving nodes
        // too (typing_ttl_ms): one set with alice, then the empty set.
        typist.send(typing(true)).await;
        for conn in [&mut on_b, &mut on_c] {
            assert!(typing_until(conn, &["alice"], Duration::from_secs(5)).await);
            assert!(
                typing_until(conn, &[], Duration::from_secs(10)).await,
                "expired without a refresh"
            );
        }
        // Nothing more comes once it expired.
        let later = typing_sets(&mut on_c, Duration::from_millis(500)).await;
        assert!(later.is_empty(), "nothing after the expiry: {later:?}");
    })
    .await;
}

/// A device of `who` that appears offline and watches `who`'s presence.
async fn watcher(addr: std::net::SocketAddr, who: &str, device: &str) -> Conn {
    let mut c = Conn::open(addr, who, device).await;
    for body in [
        Body::from(SetPresence {
            status: PresenceStatus::Offline,
        }),
        Body::from(WatchPresence { enabled: true }),
    ] {
        match request(&mut c, body).await {
            Body::Ack(_) => {}
            other => panic!("expected Ack, got {other:?}"),
        }
    }
    c
}

/// `who`'s presence as `c`'s node answers it.
async fn presence_of(c: &mut Conn, who: &str) -> PresenceEntry {
    match request(
        c,
        GetPresence {
            users: vec![user(who)],
        },
    )
    .await
    {
        Body::PresenceEvent(p) => p.entries.into_iter().next().expect("one's own presence"),
        other => panic!("expected PresenceEvent, got {other:?}"),
    }
}

/// Waits (at most `d`) for a push saying `who` is `status`; returns when
/// it came, or `None`.
async fn push_until(
    c: &mut Conn,
    who: &str,
    status: PresenceStatus,
    d: Duration,
) -> Option<Instant> {
    let end = Instant::now() + d;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match c.recv_timeout(left).await {
            Ok(Some(f)) => {
                if let (Body::PresenceEvent(p), 0) = (f.body, f.request_id) {
                    if p.entries
                        .iter()
                        .any(|e| e.user.as_str() == who && e.status == status)
                    {
                        return Some(Instant::now());
                    }
                }
            }
            _ => return None,
        }
    }
    None
}

/// Reads and drops what `c` receives until nothing came for 500 ms (at
/// most 10 s): pushes of an earlier phase must not answer a later one.
async fn quiet(c: &mut Conn) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match c.recv_timeout(Duration::from_millis(500)).await {
            Ok(Some(_)) => {}
            _ => return,
        }
    }
}

/// Asks `c`'s node until it says `who` is `status` (at most `d`).
async fn eventually(c: &mut Conn, who: &str, status: PresenceStatus, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if presence_of(c, who).await.status == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_is_cluster_wide_and_a_dead_nodes_users_go_offline() {
    let Some(nats) = Nats::start() else { return };
    bounded(150, async {
        let mut nodes = three_nodes_with(&nats, SETTINGS).await;
        let (a, b, c) = (nodes[0].addr, nodes[1].addr, nodes[2].addr);
        use PresenceStatus::{Offline, Online};

        // Alice will be on A only; Dave on A and B. Their watchers appear
        // offline: before anything, both are offline everywhere.
        let mut alice_b = watcher(b, "alice", "watch-b").await;
        let mut alice_c = watcher(c, "alice", "watch-c").await;
        let mut dave_c = watcher(c, "dave", "watch-c").await;
        for (w, who) in [
            (&mut alice_b, "alice"),
            (&mut alice_c, "alice"),
            (&mut dave_c, "dave"),
        ] {
            assert!(eventually(w, who, Offline, Duration::from_secs(10)).await);
        }
        for w in [&mut alice_b, &mut alice_c, &mut dave_c] {
            quiet(w).await;
        }

        // Their devices connect: seen online on the other nodes, pushed
        // and asked.
        let _alice_a = Conn::open(a, "alice", "phone").await;
        let _dave_a = Conn::open(a, "dave", "phone").await;
        let dave_b = Conn::open(b, "dave", "laptop").await;
        for (w, who) in [
            (&mut alice_b, "alice"),
            (&mut alice_c, "alice"),
            (&mut dave_c, "dave"),
        ] {
            assert!(
                push_until(w, who, Online, Duration::from_secs(10))
                    .await
                    .is_some(),
                "{who} pushed online"
            );
            assert!(eventually(w, who, Online, Duration::from_secs(10)).await);
        }
        for w in [&mut alice_b, &mut alice_c, &mut dave_c] {
            quiet(w).await;
        }

        // kill -9 of A: Alice (only on A) goes offline on B and C within
        // the bound; Dave (also on B) stays online.
        let killed = Instant::now();
        nodes[0].kill();
        for (node, w) in [("b", &mut alice_b), ("c", &mut alice_c)] {
            let seen = push_until(w, "alice", Offline, Duration::from_secs(20))
                .await
                .expect("alice pushed offline after her node died");
            let after = seen - killed;
            eprintln!("alice seen offline on {node} {after:?} after the kill");
            assert!(
                after <= OFFLINE_BOUND,
                "offline seen on {node} {after:?} after the kill, over {OFFLINE_BOUND:?} (node TTL {NODE_TTL:?} + 1 s + slack)"
            );
            assert_eq!(presence_of(w, "alice").await.status, Offline);
        }
        // Past the same bound, nothing said Dave went offline.
        let rest = OFFLINE_BOUND.saturating_sub(killed.elapsed());
        assert!(
            push_until(&mut dave_c, "dave", Offline, rest).await.is_none(),
            "dave is still online on b"
        );
        assert_eq!(presence_of(&mut dave_c, "dave").await.status, Online);

        // A node that joins now learns from the others who is online.
        let d = Node::spawn_with("d", &nats, SETTINGS);
        common::wait_listening(d.addr).await;
        let mut dave_d = watcher(d.addr, "dave", "watch-d").await;
        assert!(
            eventually(&mut dave_d, "dave", Online, Duration::from_secs(10)).await,
            "the new node learned that dave is online on b"
        );

        // Dave's last device leaves in order: offline on C and D.
        drop(dave_b);
        assert!(push_until(&mut dave_c, "dave", Offline, Duration::from_secs(10))
            .await
            .is_some());
        assert!(eventually(&mut dave_d, "dave", Offline, Duration::from_secs(10)).await);
    })
    .await;
}
