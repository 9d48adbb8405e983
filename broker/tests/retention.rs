//! Retention: count limits trim the log with range deletes, the `first`
//! bound moves everywhere at once, a start behind retention is reported as
//! `HistoryTruncated`, and the head survives a restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use confab_codec::*;

/// Waits (bounded) until history reports `first`.
async fn wait_first(c: &mut Conn, r: &RoomId, first: u64) -> HistoryPage {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = c.history(r, Direction::Before, 0, 100).await;
        if page.first == Seq(first) {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "first is still {:?}",
            page.first
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_retention_trims_and_reports_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.retention.max_count = 5;
    config.retention.sweep_interval_ms = 20;
    // A room under a prefix with its own, larger limit.
    config.retention.rooms = vec![confab_broker::retention::RoomRetention {
        prefix: "keep-".into(),
        max_age_secs: 0,
        max_count: 1000,
    }];
    let broker = start(config.clone()).await;
    let addr = broker.tcp_addr();
    let (r, kept) = (room("chat"), room("keep-all"));
    let mut alice = Conn::open(addr, "alice", "a1").await;
    for i in 1..=20u64 {
        alice.publish(&r, i, format!("m{i}").as_bytes()).await;
        alice.publish(&kept, i, b"k").await;
    }

    let page = wait_first(&mut alice, &r, 16).await;
    let seqs: Vec<u64> = page.events.iter().map(|e| e.seq.0).collect();
    assert_eq!(seqs, [16, 17, 18, 19, 20]);
    assert!(!page.has_more);

    // A start behind retention: subscribed, told so, delivered from first.
    let mut bob = Conn::open(addr, "bob", "b1").await;
    let ack = bob
        .subscribe(vec![(r.clone(), StartAt::From(Seq(3)))])
        .await;
    let res = &ack.results[0];
    assert_eq!(res.code, ErrorCode::HistoryTruncated);
    assert_eq!((res.first, res.head), (Seq(16), Seq(20)));
    let (events, _) = bob.events(5).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.1).collect();
    assert_contiguous(&seqs, 16, 20);
    // A start inside retention is normal.
    let ack = bob
        .subscribe(vec![(r.clone(), StartAt::From(Seq(18)))])
        .await;
    assert_eq!(ack.results[0].code, ErrorCode::Normal);

    // History after an anchor behind retention starts at first and says so.
    let page = bob.history(&r, Direction::After, 2, 100).await;
    assert_eq!(page.first, Seq(16));
    assert_eq!(page.events.first().map(|e| e.seq), Some(Seq(16)));

    // An edit of a trimmed message is refused.
    let rid = alice
        .send(Publish {
            room: r.clone(),
            client_msg_id: 100,
            kind: MessageKind::EDIT,
            refers_to: Some(Seq(3)),
            thread: None,
            payload: Bytes::from_static(b"x"),
        })
        .await;
    match alice.wait_reply(rid, |_| true).await.body {
        Body::Error(e) => assert_eq!(e.code, ErrorCode::NoSuchMessage),
        other => panic!("{other:?}"),
    }

    // The prefix override keeps everything in the other room.
    let page = alice.history(&kept, Direction::Before, 0, 100).await;
    assert_eq!(page.first, Seq(1));
    assert_eq!(page.events.len(), 20);

    drop(alice);
    drop(bob);
    broker.shutdown().await;

    // After a restart: the bound is still there and sequences go on.
    config.retention.max_count = 0;
    config.retention.rooms.clear();
    let broker = start(config).await;
    let mut alice = Conn::open(broker.tcp_addr(), "alice", "a1").await;
    let page = alice.history(&r, Direction::Before, 0, 100).await;
    assert_eq!(page.first, Seq(16));
    let ack = alice.publish(&r, 500, b"after restart").await;
    assert_eq!(ack.seq, Seq(21));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_retention_keeps_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.retention.max_age_secs = 1;
    config.retention.sweep_interval_ms = 50;
    let broker = start(config).await;
    let mut alice = Conn::open(broker.tcp_addr(), "alice", "a1").await;
    let r = room("old");
    for i in 1..=4u64 {
        alice.publish(&r, i, b"x").await;
    }
    // Everything ages out but the head, which is kept so that sequences
    // never restart.
    let page = wait_first(&mut alice, &r, 4).await;
    assert_eq!(page.events.len(), 1);
    let ack = alice.publish(&r, 10, b"new").await;
    assert_eq!(ack.seq, Seq(5));
    broker.shutdown().await;
}
