//! A device that stops reading must not stall anybody, must not make the
//! broker's memory grow, and must lose nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use confab_codec::*;

const MESSAGES: u64 = 64 * 190;
const PAYLOAD: usize = 2048;

/// Publishes `MESSAGES` messages of `PAYLOAD` bytes, pipelined in windows.
async fn publish_load(addr: std::net::SocketAddr, r: RoomId) {
    let mut w = Conn::open(addr, "writer", "w").await;
    let payload = vec![7u8; PAYLOAD];
    let mut acked = 0u64;
    let mut sent = 0u64;
    while sent < MESSAGES {
        for _ in 0..64 {
            sent += 1;
            let rid = w.request_id();
            w.send_frame(Conn::publish_frame(rid, &r, sent, &payload))
                .await;
        }
        while acked < sent {
            if let Body::PublishAck(_) = w.recv().await.unwrap().body {
                acked += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_device_catches_up_without_stalling_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.delivery.queue_capacity = 32;
    config.delivery.slow_consumer_timeout_ms = 60_000;
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let r = room("big");

    let mut stalled = Conn::open(addr, "stalled", "d").await;
    stalled.subscribe(vec![(r.clone(), StartAt::Live)]).await;
    let mut healthy = Conn::open(addr, "healthy", "d").await;
    healthy.subscribe(vec![(r.clone(), StartAt::Live)]).await;

    // The healthy device reads concurrently; the stalled one reads nothing.
    let healthy_task = tokio::spawn(async move {
        let (events, _) = healthy.events(MESSAGES as usize).await;
        events.iter().map(|e| e.1).collect::<Vec<u64>>()
    });
    let started = Instant::now();
    let mut peak_queued = 0i64;
    let load = tokio::spawn(publish_load(addr, r.clone()));
    while !load.is_finished() {
        peak_queued = peak_queued.max(broker.stats().queued_bytes);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(started.elapsed() < WAIT, "publishing must not stall");
    }
    load.await.unwrap();
    let healthy_seqs = tokio::time::timeout(WAIT, healthy_task)
        .await
        .unwrap()
        .unwrap();
    assert_contiguous(&healthy_seqs, 1, MESSAGES);

    let stats = broker.stats();
    assert!(
        stats.lag_switches >= 1,
        "the stalled device was switched to catch-up: {stats:?}"
    );
    // 24 MB went through; the broker held at most a few queues' worth.
    let published_bytes = (MESSAGES as usize * PAYLOAD) as i64;
    assert!(
        peak_queued < 4 << 20,
        "queued bytes stayed bounded: peak {peak_queued} of {published_bytes} published"
    );

    // Now the stalled device reads: everything, in order, exactly once.
    let (events, others) = stalled.events(MESSAGES as usize).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.1).collect();
    assert_contiguous(&seqs, 1, MESSAGES);
    assert!(
        others.iter().any(|f| matches!(f.body, Body::Lagging(_))),
        "the device was told it lags"
    );
    // And it is live again.
    let mut w = Conn::open(addr, "writer2", "w").await;
    w.publish(&r, 1, b"after").await;
    let (events, others) = stalled.events(1).await;
    assert_eq!(events[0].1, MESSAGES + 1);
    let all_notices: Vec<_> = others.iter().map(|f| f.body.name()).collect();
    assert!(
        all_notices
            .iter()
            .all(|n| *n == "CaughtUp" || *n == "Lagging"),
        "{all_notices:?}"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_device_is_disconnected_and_others_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.delivery.queue_capacity = 32;
    config.delivery.slow_consumer_timeout_ms = 300;
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let r = room("stuck");

    let mut stuck = Conn::open(addr, "stuck", "d").await;
    stuck.subscribe(vec![(r.clone(), StartAt::Live)]).await;
    let mut healthy = Conn::open(addr, "healthy", "d").await;
    healthy.subscribe(vec![(r.clone(), StartAt::Live)]).await;
    let healthy_task = tokio::spawn(async move {
        let (events, _) = healthy.events(MESSAGES as usize).await;
        events.iter().map(|e| e.1).collect::<Vec<u64>>()
    });
    publish_load(addr, r.clone()).await;
    let seqs = tokio::time::timeout(WAIT, healthy_task)
        .await
        .unwrap()
        .unwrap();
    assert_contiguous(&seqs, 1, MESSAGES);

    let deadline = Instant::now() + WAIT;
    while broker.stats().slow_consumer_disconnects == 0 {
        assert!(
            Instant::now() < deadline,
            "the stuck device was never disconnected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its socket is closed by the broker: reading drains and ends.
    let mut n = 0;
    while stuck.recv().await.is_some() {
        n += 1;
    }
    assert!(n > 0);
    // It can come back and resume from where it was, losing nothing.
    let mut back = Conn::open(addr, "stuck", "d").await;
    let ack = back
        .subscribe(vec![(r.clone(), StartAt::From(Seq(1)))])
        .await;
    assert_eq!(ack.results[0].head, Seq(MESSAGES));
    let (events, _) = back.events(MESSAGES as usize).await;
    assert_contiguous(&events.iter().map(|e| e.1).collect::<Vec<_>>(), 1, MESSAGES);
    broker.shutdown().await;
}
