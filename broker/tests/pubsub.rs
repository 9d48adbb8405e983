//! Publish, subscribe and history over real sockets with real RocksDB,
//! each over TCP, TLS and QUIC.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::*;
use confab_codec::*;

over_transports!(
    with_websocket:
    two_devices_see_each_others_messages_in_order,
    many_rooms_on_one_connection,
    history_pages_both_directions,
    subscribe_from_n_during_writes_has_no_gap_or_duplicate,
    publish_validation_errors_keep_the_connection,
    shutdown_says_goodbye_then_closes,
);

async fn two_devices_see_each_others_messages_in_order(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = dial(&broker, t);
    let r = room("general");

    let mut alice = Conn::open(&addr, "alice", "phone").await;
    let mut bob = Conn::open(&addr, "bob", "laptop").await;
    let ack = alice.subscribe(vec![(r.clone(), StartAt::Live)]).await;
    assert_eq!(ack.results[0].code, ErrorCode::Normal);
    assert_eq!(ack.results[0].head, Seq(0));
    bob.subscribe(vec![(r.clone(), StartAt::Live)]).await;

    for i in 0..10u64 {
        let (who, conn) = if i % 2 == 0 {
            ("alice", &mut alice)
        } else {
            ("bob", &mut bob)
        };
        let ack = conn
            .publish(&r, i + 1, format!("{who} {i}").as_bytes())
            .await;
        assert_eq!(ack.seq, Seq(i + 1));
        assert!(!ack.duplicate);
    }
    for conn in [&mut alice, &mut bob] {
        let (events, _) = conn.events(10).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.1).collect();
        assert_contiguous(&seqs, 1, 10);
        for (i, e) in events.iter().enumerate() {
            let who = if i % 2 == 0 { "alice" } else { "bob" };
            assert_eq!(&e.2[..], format!("{who} {i}").as_bytes());
        }
    }
    broker.shutdown().await;
}

async fn many_rooms_on_one_connection(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = dial(&broker, t);
    let rooms: Vec<RoomId> = (0..200).map(|i| room(&format!("room-{i}"))).collect();

    let mut reader = Conn::open(&addr, "reader", "d1").await;
    let ack = reader
        .subscribe(rooms.iter().map(|r| (r.clone(), StartAt::Live)).collect())
        .await;
    assert_eq!(ack.results.len(), 200);
    assert!(ack.results.iter().all(|r| r.code == ErrorCode::Normal));

    let mut writer = Conn::open(&addr, "writer", "d1").await;
    // Pipelined: 3 messages per room, all sent before reading any ack.
    let mut cmid = 0;
    for round in 0..3 {
        for r in &rooms {
            cmid += 1;
            let rid = writer.request_id();
            writer
                .send_frame(Conn::publish_frame(
                    rid,
                    r,
                    cmid,
                    format!("{round}").as_bytes(),
                ))
                .await;
        }
    }
    let mut acks = 0;
    while acks < 600 {
        if let Body::PublishAck(_) = writer.recv().await.unwrap().body {
            acks += 1;
        }
    }
    let (events, _) = reader.events(600).await;
    for r in &rooms {
        let seqs: Vec<u64> = events.iter().filter(|e| &e.0 == r).map(|e| e.1).collect();
        assert_contiguous(&seqs, 1, 3);
    }
    broker.shutdown().await;
}

async fn history_pages_both_directions(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = dial(&broker, t);
    let r = room("history");
    let mut c = Conn::open(&addr, "alice", "phone").await;
    for i in 1..=25u64 {
        c.publish(&r, i, format!("m{i}").as_bytes()).await;
    }
    // Newest first page, then walk back.
    let p = c.history(&r, Direction::Before, 0, 10).await;
    let seqs: Vec<u64> = p.events.iter().map(|e| e.seq.0).collect();
    assert_contiguous(&seqs, 16, 25);
    assert!(p.has_more);
    assert_eq!(p.first, Seq(1));
    let p = c.history(&r, Direction::Before, 16, 10).await;
    assert_contiguous(&p.events.iter().map(|e| e.seq.0).collect::<Vec<_>>(), 6, 15);
    let p = c.history(&r, Direction::Before, 6, 10).await;
    assert_contiguous(&p.events.iter().map(|e| e.seq.0).collect::<Vec<_>>(), 1, 5);
    assert!(!p.has_more);
    // Forward.
    let p = c.history(&r, Direction::After, 0, 10).await;
    assert_contiguous(&p.events.iter().map(|e| e.seq.0).collect::<Vec<_>>(), 1, 10);
    assert!(p.has_more);
    assert_eq!(&p.events[0].payload[..], b"m1");
    assert_eq!(p.events[0].sender.as_str(), "alice");
    assert_eq!(p.events[0].device.as_str(), "phone");
    let p = c.history(&r, Direction::After, 20, 10).await;
    assert_contiguous(
        &p.events.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        21,
        25,
    );
    assert!(!p.has_more);
    // An unknown room is an empty page.
    let p = c
        .history(&room("nothing-here"), Direction::Before, 0, 10)
        .await;
    assert!(p.events.is_empty() && !p.has_more);
    broker.shutdown().await;
}

/// Subscribe-from-N while another connection keeps publishing: the
/// subscriber must see N, N+1, ... with no gap and no duplicate across the
/// switch from backlog to live.
async fn subscribe_from_n_during_writes_has_no_gap_or_duplicate(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = dial(&broker, t);
    let r = room("busy");
    const TOTAL: u64 = 3000;

    let mut writer = Conn::open(&addr, "writer", "w").await;
    for i in 1..=500u64 {
        writer.publish(&r, i, b"before").await;
    }
    let writer_room = r.clone();
    let writer_task = tokio::spawn(async move {
        let mut acked = 0;
        let mut sent = 500u64;
        while sent < TOTAL {
            // Windows of 50 pipelined publishes.
            for _ in 0..50 {
                sent += 1;
                let rid = writer.request_id();
                writer
                    .send_frame(Conn::publish_frame(rid, &writer_room, sent, b"during"))
                    .await;
            }
            while acked < sent - 500 {
                if let Body::PublishAck(_) = writer.recv().await.unwrap().body {
                    acked += 1;
                }
            }
        }
        writer
    });

    let mut subs = Vec::new();
    for (i, from) in [1u64, 100, 450].into_iter().enumerate() {
        tokio::time::sleep(std::time::Duration::from_millis(5 * i as u64)).await;
        let mut c = Conn::open(&addr, &format!("reader{i}"), "d").await;
        let ack = c
            .subscribe(vec![(r.clone(), StartAt::From(Seq(from)))])
            .await;
        assert_eq!(ack.results[0].code, ErrorCode::Normal);
        subs.push((from, c));
    }
    let _writer = writer_task.await.unwrap();
    for (from, mut c) in subs {
        let (events, _) = c.events((TOTAL - from + 1) as usize).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.1).collect();
        assert_contiguous(&seqs, from, TOTAL);
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_publishes_are_stored_once_even_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let broker = start(config.clone()).await;
    let addr = broker.tcp_addr();
    let r = room("dedup");
    let mut c = Conn::open(addr, "alice", "phone").await;
    let first = c.publish(&r, 77, b"hello").await;
    let again = c.publish(&r, 77, b"hello").await;
    assert_eq!(again.seq, first.seq);
    assert!(again.duplicate);
    assert_eq!(again.timestamp_us, first.timestamp_us);
    // Another device may use the same client id.
    let mut other = Conn::open(addr, "alice", "laptop").await;
    assert_eq!(other.publish(&r, 77, b"hi").await.seq, Seq(2));
    drop((c, other));
    broker.shutdown().await;

    let broker = start_on(config, addr).await;
    let mut c = Conn::open(addr, "alice", "phone").await;
    let retry = c.publish(&r, 77, b"hello").await;
    assert!(retry.duplicate, "dedup survives a restart");
    assert_eq!(retry.seq, first.seq);
    // Sequences continue after the restart.
    assert_eq!(c.publish(&r, 78, b"next").await.seq, Seq(3));
    broker.shutdown().await;
}

async fn publish_validation_errors_keep_the_connection(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_payload_len = 1024;
    let broker = start(config).await;
    let mut c = Conn::open(dial(&broker, t), "alice", "phone").await;
    let r = room("v");

    let rid = c.request_id();
    c.send_frame(Conn::publish_frame(rid, &r, 1, &[0u8; 2000]))
        .await;
    match c.recv().await.unwrap().body {
        Body::Error(e) => assert_eq!(e.code, ErrorCode::PayloadTooLarge),
        other => panic!("{other:?}"),
    }
    let rid = c
        .send(Publish {
            room: r.clone(),
            client_msg_id: 2,
            kind: MessageKind::EDIT,
            refers_to: Some(Seq(5)),
            thread: None,
            payload: bytes::Bytes::from_static(b"x"),
        })
        .await;
    let f = c.recv().await.unwrap();
    assert_eq!(f.request_id, rid);
    match f.body {
        Body::Error(e) => assert_eq!(e.code, ErrorCode::NoSuchMessage),
        other => panic!("{other:?}"),
    }
    c.send(Publish {
        room: r.clone(),
        client_msg_id: 3,
        kind: MessageKind::SYSTEM,
        refers_to: None,
        thread: None,
        payload: bytes::Bytes::from_static(b"x"),
    })
    .await;
    match c.recv().await.unwrap().body {
        Body::Error(e) => assert_eq!(e.code, ErrorCode::InvalidRequest),
        other => panic!("{other:?}"),
    }
    // Still usable; an edit of an existing message works.
    let ack = c.publish(&r, 4, b"original").await;
    c.send(Publish {
        room: r.clone(),
        client_msg_id: 5,
        kind: MessageKind::EDIT,
        refers_to: Some(ack.seq),
        thread: None,
        payload: bytes::Bytes::from_static(b"edited"),
    })
    .await;
    match c.recv().await.unwrap().body {
        Body::PublishAck(a) => assert_eq!(a.seq, Seq(2)),
        other => panic!("{other:?}"),
    }
    // Ping works.
    let rid = c.send(Ping { nonce: 42 }).await;
    let f = c.recv().await.unwrap();
    assert_eq!(f.request_id, rid);
    assert_eq!(f.body, Body::Pong(Pong { nonce: 42 }));
    broker.shutdown().await;
}

/// Shutdown: the client reads `Goodbye(ShuttingDown)`, then the transport
/// closes (for QUIC: the connection, after its streams were finished).
async fn shutdown_says_goodbye_then_closes(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = Conn::open(dial(&broker, t), "alice", "phone").await;
    c.subscribe(vec![(room("r"), StartAt::Live)]).await;
    c.publish(&room("r"), 1, b"x").await;
    let reader = tokio::spawn(async move { c.until_closed().await });
    tokio::time::timeout(WAIT, broker.shutdown())
        .await
        .expect("shutdown in time");
    let frames = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.body, Body::Goodbye(g) if g.code == ErrorCode::ShuttingDown)),
        "{frames:?}"
    );
}

/// Many devices that subscribe from the start of a long backlog at once
/// read it in aligned batches and share them: each gets every entry once,
/// in order, and fewer batches are read from the log than were delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_replaying_together_share_catch_up_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.delivery.catchup_batch = 64;
    // One read at a time: the devices queue behind it and find its batch.
    config.limits.max_concurrent_reads = 1;
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let r = room("backlog");
    const TOTAL: u64 = 1000;
    const DEVICES: usize = 20;
    let mut writer = Conn::open(addr, "writer", "w").await;
    for i in 1..=TOTAL {
        let rid = writer.request_id();
        writer
            .send_frame(Conn::publish_frame(rid, &r, i, b"entry"))
            .await;
    }
    let mut acked = 0;
    while acked < TOTAL {
        if let Body::PublishAck(_) = writer.recv().await.unwrap().body {
            acked += 1;
        }
    }
    let mut devices = Vec::new();
    for d in 0..DEVICES {
        let mut c = Conn::open(addr, &format!("reader{d}"), "d").await;
        let rid = c.request_id();
        c.send_frame(Frame::request(
            rid,
            Subscribe {
                items: vec![SubscribeItem {
                    room: r.clone(),
                    start: StartAt::From(Seq(1)),
                }],
            },
        ))
        .await;
        devices.push(c);
    }
    let readers: Vec<_> = devices
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let (events, _) = c.events(TOTAL as usize).await;
                events.iter().map(|e| e.1).collect::<Vec<u64>>()
            })
        })
        .collect();
    for reader in readers {
        assert_contiguous(&reader.await.unwrap(), 1, TOTAL);
    }
    let stats = broker.stats();
    let batches = TOTAL.div_ceil(64) * DEVICES as u64;
    assert_eq!(
        stats.catchup_batches_read + stats.catchup_batches_shared,
        batches,
        "every device got the backlog in aligned batches"
    );
    assert!(
        stats.catchup_batches_shared > 0,
        "no batch was shared: {stats:?}"
    );
    broker.shutdown().await;
}

/// A live device gets a commit's consecutive entries of a room as one
/// `EventBatch` without `REPLAY` (protocol 7.4.4), and every entry once,
/// in order, across single events and batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_runs_of_a_commit_arrive_as_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = broker.tcp_addr();
    let r = room("runs");
    const TOTAL: u64 = 2000;
    let mut reader = Conn::open(addr, "reader", "d").await;
    let ack = reader.subscribe(vec![(r.clone(), StartAt::Live)]).await;
    assert_eq!(ack.results[0].code, ErrorCode::Normal);
    let mut writer = Conn::open(addr, "writer", "w").await;
    // Pipelined: the sequencer commits many of them at a time.
    for i in 1..=TOTAL {
        let rid = writer.request_id();
        writer
            .send_frame(Conn::publish_frame(rid, &r, i, b"x"))
            .await;
    }
    let mut seqs = Vec::new();
    let mut live_batches = 0;
    while (seqs.len() as u64) < TOTAL {
        let f = reader.recv().await.expect("open");
        match f.body {
            Body::Event(e) => seqs.push(e.event.seq.0),
            Body::EventBatch(b) => {
                assert_eq!(f.flags & flags::REPLAY, 0, "live, not replayed");
                assert!(b.events.len() > 1, "a run of one goes as an Event");
                live_batches += 1;
                seqs.extend(b.events.iter().map(|e| e.seq.0));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_contiguous(&seqs, 1, TOTAL);
    assert!(live_batches > 0, "no commit carried a run");
    assert_eq!(broker.stats().lag_switches, 0);
    broker.shutdown().await;
}

/// A commit of a room with few subscribers is delivered by the sequencer
/// thread itself while the fan-out thread is idle (`delivery.inline_fanout`);
/// one of a room with more subscribers than that goes through the fan-out
/// thread. Either way, with a subscription registered from 1 between
/// commits, every device gets every entry once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_commits_are_delivered_by_the_sequencer_in_order() {
    for inline in [0usize, 8] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(dir.path());
        cfg.delivery.inline_fanout = inline;
        let broker = start(cfg).await;
        let addr = broker.tcp_addr();
        let (small, big) = (room("small"), room("big"));
        let mut crowd = Vec::new();
        for i in 0..10 {
            let mut c = Conn::open(addr, &format!("member{i}"), "d").await;
            c.subscribe(vec![(big.clone(), StartAt::Live)]).await;
            crowd.push(c);
        }
        let mut reader = Conn::open(addr, "reader", "d").await;
        reader.subscribe(vec![(small.clone(), StartAt::Live)]).await;
        let mut writer = Conn::open(addr, "writer", "w").await;
        let mut late: Option<Conn> = None;
        let mut seqs = Vec::new();
        for i in 1..=40u64 {
            assert_eq!(writer.publish(&small, i, b"s").await.seq, Seq(i));
            let (events, _) = reader.events(1).await;
            seqs.extend(events.iter().map(|e| e.1));
            if i == 20 {
                let mut c = Conn::open(addr, "late", "d").await;
                c.subscribe(vec![(small.clone(), StartAt::From(Seq(1)))])
                    .await;
                late = Some(c);
            }
        }
        assert_contiguous(&seqs, 1, 40);
        let (events, _) = late.unwrap().events(40).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.1).collect();
        assert_contiguous(&seqs, 1, 40);

        let inline_small = broker.stats().fanout_inline;
        for i in 1..=20u64 {
            assert_eq!(writer.publish(&big, 100 + i, b"b").await.seq, Seq(i));
        }
        for c in &mut crowd {
            let (events, _) = c.events(20).await;
            let seqs: Vec<u64> = events.iter().map(|e| e.1).collect();
            assert_contiguous(&seqs, 1, 20);
        }
        let inline_big = broker.stats().fanout_inline - inline_small;
        if inline == 0 {
            assert_eq!(inline_small, 0, "off");
        } else {
            // At least the first commit after the subscription found the
            // fan-out thread idle (the device was acknowledged first).
            assert!(inline_small >= 1, "no commit was delivered inline");
        }
        assert_eq!(inline_big, 0, "10 subscribers is over the limit of 8");
        broker.shutdown().await;
    }
}
