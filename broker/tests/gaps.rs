//! Exact gaps (protocol 7.8.3): on a connection of version 2 the broker
//! says which entries of a room it will not deliver and why, in the room's
//! delivery order; on version 1 it sends no `Gap`, as before.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use confab_codec::*;

/// Connects and shakes hands as `user:device` offering versions 1..=`max`.
async fn open_version(
    addr: std::net::SocketAddr,
    user: &str,
    device: &str,
    max: u16,
    resume: Vec<SubscribeItem>,
) -> Conn {
    let mut c = Conn::connect(addr).await;
    let welcome = c.handshake_up_to(max, user, device, resume).await;
    assert_eq!(welcome.version, max);
    c
}

/// What a device receives of one room: an entry, or a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Entry(u64),
    Gap(u64, u64, GapReason),
}

/// Reads frames until `done` says the room's deliveries so far are
/// complete; other frames are skipped.
async fn room_frames(c: &mut Conn, r: &RoomId, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let mut got = Vec::new();
    while !done(&got) {
        let f = c.recv().await.expect("connection open");
        match f.body {
            Body::Event(e) if &e.room == r => got.push(Got::Entry(e.event.seq.0)),
            Body::EventBatch(b) if &b.room == r => {
                got.extend(b.events.iter().map(|e| Got::Entry(e.seq.0)))
            }
            Body::Gap(g) if &g.room == r => got.push(Got::Gap(g.from.0, g.to.0, g.reason)),
            _ => {}
        }
    }
    got
}

fn until_entry(seq: u64) -> impl Fn(&[Got]) -> bool {
    move |got| got.last() == Some(&Got::Entry(seq))
}

fn entries(from: u64, to: u64) -> Vec<Got> {
    (from..=to).map(Got::Entry).collect()
}

/// Waits (bounded) until history reports `first`.
async fn wait_first(c: &mut Conn, r: &RoomId, first: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = c.history(r, Direction::Before, 0, 1).await;
        if page.first == Seq(first) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "first is {:?}",
            page.first
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_behind_retention_gets_the_exact_trimmed_range_on_version_2_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.retention.max_count = 5;
    config.retention.sweep_interval_ms = 20;
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let r = room("news");
    let mut alice = Conn::open(addr, "alice", "a1").await;
    for i in 1..=20u64 {
        alice.publish(&r, i, b"m").await;
    }
    wait_first(&mut alice, &r, 16).await;

    // Version 2, Subscribe From(3): the result is still HistoryTruncated,
    // then the gap 3..=15, then the backlog from 16, then live.
    let mut v2 = open_version(addr, "bob", "b2", 2, Vec::new()).await;
    let ack = v2.subscribe(vec![(r.clone(), StartAt::From(Seq(3)))]).await;
    assert_eq!(ack.results[0].code, ErrorCode::HistoryTruncated);
    assert_eq!(
        (ack.results[0].first, ack.results[0].head),
        (Seq(16), Seq(20))
    );
    let got = room_frames(&mut v2, &r, until_entry(20)).await;
    let mut expected = vec![Got::Gap(3, 15, GapReason::Trimmed)];
    expected.extend(entries(16, 20));
    assert_eq!(got, expected);

    // A start inside retention has no gap.
    let ack = v2
        .subscribe(vec![(r.clone(), StartAt::From(Seq(18)))])
        .await;
    assert_eq!(ack.results[0].code, ErrorCode::Normal);
    assert_eq!(
        room_frames(&mut v2, &r, until_entry(20)).await,
        entries(18, 20)
    );

    // History is not a subscription: its page says `first`, no Gap follows.
    let page = v2.history(&r, Direction::After, 2, 100).await;
    assert_eq!(page.first, Seq(16));

    // Hello.resume From(0) is From(1): the gap starts at 1.
    let resume = vec![SubscribeItem {
        room: r.clone(),
        start: StartAt::From(Seq(0)),
    }];
    let mut resumed = open_version(addr, "bob", "b3", 2, resume).await;
    let got = room_frames(&mut resumed, &r, until_entry(20)).await;
    let mut expected = vec![Got::Gap(1, 15, GapReason::Trimmed)];
    expected.extend(entries(16, 20));
    assert_eq!(got, expected);

    // Version 1: the same start, the same result code, no Gap.
    let mut v1 = open_version(addr, "bob", "b1", 1, Vec::new()).await;
    let ack = v1.subscribe(vec![(r.clone(), StartAt::From(Seq(3)))]).await;
    assert_eq!(ack.results[0].code, ErrorCode::HistoryTruncated);
    assert_eq!(
        room_frames(&mut v1, &r, until_entry(20)).await,
        entries(16, 20)
    );

    // The next live entry follows directly on every connection: nothing
    // else (no second Gap) was queued for the room in between.
    alice.publish(&r, 21, b"live").await;
    for c in [&mut v2, &mut resumed, &mut v1] {
        assert_eq!(room_frames(c, &r, until_entry(21)).await, entries(21, 21));
    }
    broker.shutdown().await;
}

const LAG_MESSAGES: u64 = 64 * 150;
const LAG_PAYLOAD: usize = 2048;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_over_entries_trimmed_meanwhile_reports_them_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.delivery.queue_capacity = 32;
    config.delivery.slow_consumer_timeout_ms = 120_000;
    config.retention.max_count = 100;
    config.retention.sweep_interval_ms = 20;
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let r = room("flood");

    // A version 2 device subscribes live and then reads nothing while
    // far more than its socket buffers and queue hold is published.
    let mut stalled = open_version(addr, "stalled", "d", 2, Vec::new()).await;
    stalled.subscribe(vec![(r.clone(), StartAt::Live)]).await;
    let mut w = Conn::open(addr, "writer", "w").await;
    let payload = vec![7u8; LAG_PAYLOAD];
    let mut sent = 0u64;
    while sent < LAG_MESSAGES {
        let mut rids = Vec::new();
        for _ in 0..64 {
            sent += 1;
            let rid = w.request_id();
            w.send_frame(Conn::publish_frame(rid, &r, sent, &payload))
                .await;
            rids.push(rid);
        }
        for rid in rids {
            w.wait_reply(rid, |f| matches!(f.body, Body::PublishAck(_)))
                .await;
        }
    }
    // Retention keeps the last 100 only; the device's catch-up is parked
    // behind its full queue, far before them.
    wait_first(&mut w, &r, LAG_MESSAGES - 99).await;
    assert!(broker.stats().lag_switches >= 1, "the device lagged");

    // Now it reads: every sequence 1..=head exactly once, either as an
    // entry or inside a gap, in order; the gaps are retention's.
    let got = tokio::time::timeout(
        WAIT * 2,
        room_frames(&mut stalled, &r, until_entry(LAG_MESSAGES)),
    )
    .await
    .expect("caught up in time");
    let mut next = 1u64;
    let mut gaps = 0;
    for g in &got {
        match *g {
            Got::Entry(seq) => {
                assert_eq!(seq, next, "entries in order, no duplicate, no hole");
                next += 1;
            }
            Got::Gap(from, to, reason) => {
                assert_eq!(from, next, "a gap starts at the next undelivered entry");
                assert!(to >= from && to < LAG_MESSAGES - 99, "{g:?}");
                assert_eq!(reason, GapReason::Trimmed);
                next = to + 1;
                gaps += 1;
            }
        }
    }
    assert_eq!(next, LAG_MESSAGES + 1);
    assert!(gaps >= 1, "the trimmed entries were reported");
    broker.shutdown().await;
}

fn open_group(name: &str) -> CreateRoom {
    CreateRoom {
        kind: RoomKind::Group,
        room: Some(RoomId::new(name).unwrap()),
        peer: None,
        policy: JoinPolicy::Open,
        meta: RoomMeta {
            name: name.into(),
            topic: String::new(),
            avatar_url: String::new(),
        },
        invite: Vec::new(),
    }
}

/// Reads one room's frames until the membership entry `seq`, then checks
/// what follows it.
async fn entries_until(c: &mut Conn, r: &RoomId, seq: u64) -> Vec<Got> {
    room_frames(c, r, until_entry(seq)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_and_leave_end_the_subscription_with_access_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rooms.auto_create = false;
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let team = room("team");

    let mut alice = Conn::open(addr, "alice", "a1").await;
    assert!(matches!(
        request(&mut alice, open_group("team")).await,
        Body::RoomInfo(_)
    ));
    // Bob follows the room on a version 2 device and a version 1 device.
    let mut b2 = open_version(addr, "bob", "b2", 2, Vec::new()).await;
    let mut b1 = open_version(addr, "bob", "b1", 1, Vec::new()).await;
    assert!(matches!(
        request(&mut b2, JoinRoom { room: team.clone() }).await,
        Body::RoomInfo(_)
    ));
    let ack = b2
        .subscribe(vec![(team.clone(), StartAt::From(Seq(1)))])
        .await;
    let head = ack.results[0].head.0;
    b1.subscribe(vec![(team.clone(), StartAt::From(Seq(1)))])
        .await;
    let _ = entries_until(&mut b2, &team, head).await;
    let _ = entries_until(&mut b1, &team, head).await;
    let m = alice.publish(&team, 1, b"hello").await.seq.0;

    // Alice removes Bob: the MEMBER_REMOVED entry is the room's head when
    // access ends; both devices got everything up to it, so the version 2
    // device is told with an empty range that nothing more comes.
    assert!(matches!(
        request(
            &mut alice,
            RemoveMember {
                room: team.clone(),
                user: user("bob")
            }
        )
        .await,
        Body::Ack(_)
    ));
    let removed = m + 1;
    let got = room_frames(&mut b2, &team, |got| {
        matches!(got.last(), Some(Got::Gap(..)))
    })
    .await;
    assert_eq!(
        got,
        [
            Got::Entry(m),
            Got::Entry(removed),
            Got::Gap(removed + 1, removed, GapReason::AccessLost)
        ]
    );
    assert_eq!(
        entries_until(&mut b1, &team, removed).await,
        entries(m, removed)
    );

    // Nothing of the room reaches either device any more. Carol, a
    // member, receives the next entry; Bob's devices then answer a ping
    // with nothing of the room before or after it.
    let mut carol = Conn::open(addr, "carol", "c1").await;
    assert!(matches!(
        request(&mut carol, JoinRoom { room: team.clone() }).await,
        Body::RoomInfo(_)
    ));
    let ack = carol.subscribe(vec![(team.clone(), StartAt::Live)]).await;
    let after = alice.publish(&team, 2, b"after").await.seq.0;
    assert_eq!(ack.results[0].head.0 + 1, after);
    assert_eq!(
        entries_until(&mut carol, &team, after).await,
        entries(after, after)
    );
    for c in [&mut b2, &mut b1] {
        let rid = c.send(Ping { nonce: 7 }).await;
        let _ = rid;
        loop {
            let f = c.recv().await.expect("open");
            match f.body {
                Body::Pong(_) => break,
                Body::Event(_) | Body::EventBatch(_) | Body::Gap(_) => panic!("{f:?}"),
                _ => {}
            }
        }
        match c.recv_timeout(Duration::from_millis(200)).await {
            Err(()) => {}
            Ok(f) => panic!("nothing more expected, got {f:?}"),
        }
    }

    // Carol leaves by herself: the same, after her MEMBER_LEFT entry.
    let mut c2 = open_version(addr, "carol", "c2", 2, Vec::new()).await;
    let ack = c2.subscribe(vec![(team.clone(), StartAt::Live)]).await;
    let head = ack.results[0].head.0;
    assert!(matches!(
        request(&mut carol, LeaveRoom { room: team.clone() }).await,
        Body::Ack(_)
    ));
    let got = room_frames(&mut c2, &team, |got| {
        matches!(got.last(), Some(Got::Gap(..)))
    })
    .await;
    assert_eq!(
        got,
        [
            Got::Entry(head + 1),
            Got::Gap(head + 2, head + 1, GapReason::AccessLost)
        ]
    );
    broker.shutdown().await;
}
