//! Node membership against a real `nats-server`: heartbeats, expiry after
//! the TTL, deterministic ownership, and a paused owner fenced after a
//! takeover.
#![allow(clippy::unwrap_used)]

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::*;
use confab_broker::cluster::{
    owner, ClusterError, Membership, MembershipConfig, NodeId, RoomWriter,
};
use confab_codec::{RoomId, Seq};

#[tokio::test]
async fn a_silent_node_expires_after_the_ttl_and_its_rooms_move() {
    let Some(nats) = Nats::start() else { return };
    bounded(90, async {
        let cfg = MembershipConfig {
            bucket: "members_test".into(),
            ttl: Duration::from_secs(3),
            heartbeat: Duration::from_secs(1),
            replicas: 1,
        };
        let join = |id: &'static str| {
            let cfg = cfg.clone();
            let nats = &nats;
            async move {
                Membership::join(
                    nats.client().await,
                    cfg,
                    node(id),
                    format!("{id}.local:7400"),
                )
                .await
                .unwrap()
            }
        };
        let n1 = join("n1").await;
        let mut n2 = join("n2").await;
        let n3 = join("n3").await;
        let all = ["n1", "n2", "n3"];
        for m in [&n1, &n2, &n3] {
            wait_live(m, &all, Duration::from_secs(5)).await;
        }
        assert_eq!(n1.live().address(&node("n2")), Some("n2.local:7400"));

        let rooms: Vec<RoomId> = (0..300).map(|i| room(&format!("room-{i}"))).collect();
        let before: Vec<NodeId> = rooms.iter().map(|r| n1.owner(r).unwrap()).collect();
        for m in [&n2, &n3] {
            for (r, o) in rooms.iter().zip(&before) {
                assert_eq!(&m.owner(r).unwrap(), o, "every node names the same owner");
            }
        }
        let of_n2 = before.iter().filter(|o| o.as_str() == "n2").count();
        assert!((50..150).contains(&of_n2), "n2 owns {of_n2} of 300");

        // n2 stops heartbeating (a crash or SIGSTOP): its key stays until
        // the TTL runs out.
        n2.halt().await;
        let stopped = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(n1.live().contains(&node("n2")), "still live within its TTL");
        wait_live(&n1, &["n1", "n3"], Duration::from_secs(7)).await;
        wait_live(&n3, &["n1", "n3"], Duration::from_secs(2)).await;
        let gone_after = stopped.elapsed();
        eprintln!("n2 disappeared {gone_after:?} after its heartbeats stopped (ttl 3 s)");
        assert!(
            gone_after >= Duration::from_secs(1),
            "not before its TTL: {gone_after:?}"
        );

        // Its rooms moved, each to the rendezvous winner among n1 and n3;
        // the others stayed where they were; n1 and n3 agree.
        let rest = [node("n1"), node("n3")];
        for (r, was) in rooms.iter().zip(&before) {
            let now = n1.owner(r).unwrap();
            assert_eq!(n3.owner(r).unwrap(), now);
            assert_eq!(Some(&now), owner(r, &rest));
            if was.as_str() != "n2" {
                assert_eq!(&now, was, "{r} did not belong to n2 and stays");
            }
        }

        // n2 comes back: every room returns to its first owner.
        let n2 = join("n2").await;
        wait_live(&n1, &all, Duration::from_secs(5)).await;
        for (r, was) in rooms.iter().zip(&before) {
            assert_eq!(&n1.owner(r).unwrap(), was);
        }
        assert!(n2.owns(&rooms[before.iter().position(|o| o.as_str() == "n2").unwrap()]));

        // A node configured with another TTL is refused: the nodes would
        // disagree on when a node is dead.
        let other_ttl = MembershipConfig {
            ttl: Duration::from_secs(6),
            heartbeat: Duration::from_secs(2),
            ..cfg.clone()
        };
        let refused =
            Membership::join(nats.client().await, other_ttl, node("n9"), "x".into()).await;
        assert!(
            matches!(refused, Err(ClusterError::Config(_))),
            "{refused:?}"
        );

        // A node that leaves in order is gone at once, not after the TTL.
        let left = Instant::now();
        n3.leave().await.unwrap();
        wait_live(&n1, &["n1", "n2"], Duration::from_millis(1500)).await;
        eprintln!("n3 left; seen gone after {:?}", left.elapsed());
    })
    .await;
}

/// The SIGSTOP case, in one process: the owner of a room stops
/// heartbeating (paused) past the TTL; the next owner by rendezvous takes
/// the room over and writes; the first resumes and appends what it had
/// sequenced: refused, it steps down, and no sequence is used twice.
#[tokio::test]
async fn a_paused_owner_is_fenced_when_it_resumes_after_a_takeover() {
    let Some(nats) = Nats::start() else { return };
    bounded(60, async {
        let cfg = MembershipConfig {
            bucket: "paused_test".into(),
            ttl: Duration::from_secs(2),
            heartbeat: Duration::from_millis(500),
            replicas: 1,
        };
        let mut n1 = Membership::join(nats.client().await, cfg.clone(), node("n1"), "a".into())
            .await
            .unwrap();
        let n2 = Membership::join(nats.client().await, cfg.clone(), node("n2"), "b".into())
            .await
            .unwrap();
        wait_live(&n1, &["n1", "n2"], Duration::from_secs(5)).await;
        // A room n1 owns.
        let r = (0..)
            .map(|i| room(&format!("paused-{i}")))
            .find(|r| n1.owns(r))
            .unwrap();
        assert!(!n2.owns(&r));
        let log = open_log(&nats, "PAUSED").await;
        let mut w1 = RoomWriter::take_over(log.clone(), r.clone(), "n1-1", 16)
            .await
            .unwrap();
        w1.append(&appends(&r, &records(1, 4, "n1-")))
            .await
            .unwrap();

        // n1 pauses: no heartbeat. After the TTL n2 owns the room.
        n1.halt().await;
        let mut changes = n2.changes();
        tokio::time::timeout(
            Duration::from_secs(6),
            changes.wait_for(|l| l.owner(&r) == Some(&node("n2"))),
        )
        .await
        .unwrap()
        .unwrap();
        let log2 = open_log(&nats, "PAUSED").await;
        let mut w2 = RoomWriter::take_over(log2.clone(), r.clone(), "n2-1", 16)
            .await
            .unwrap();
        assert_eq!(w2.head(), Seq(4));
        w2.append(&appends(&r, &records(5, 6, "n2-")))
            .await
            .unwrap();

        // n1 resumes with the commit it had in hand.
        let err = w1
            .append(&appends(&r, &records(5, 7, "n1-")))
            .await
            .unwrap_err();
        assert!(err.is_fenced(), "{err}");
        assert!(!w1.is_writer());
        let all = log2
            .read_range(&r, Seq(1), Seq(100), 100, usize::MAX)
            .await
            .unwrap();
        let got: Vec<String> = all.iter().map(payload_of).collect();
        assert_eq!(got, ["n1-1", "n1-2", "n1-3", "n1-4", "n2-5", "n2-6"]);
    })
    .await;
}
