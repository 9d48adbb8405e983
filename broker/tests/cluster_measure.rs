//! Figures of fenced appends and following, beside JetStream's own async
//! publish (not run by default:
//! `cargo test --release -p confab-broker --test cluster_measure -- --ignored --nocapture`).
#![allow(clippy::unwrap_used)]

mod cluster_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_support::*;
use confab_broker::cluster::{Follower, JetStreamLog, LogConfig, RoomWriter};
use confab_codec::Seq;

/// Fenced appends beside JetStream's own async publish on the same R1 file
/// stream, 128-byte records. Prints; asserts nothing about time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn measure_fenced_appends() {
    let Some(nats) = Nats::start() else { return };
    let payload = "x".repeat(80);
    let rec = |seq: u64| record(seq, 0, &payload);
    assert!((120..=136).contains(&rec(1).len()), "{}", rec(1).len());

    // One room, one record per append: one round trip each.
    let cfg = LogConfig {
        stream: "MEASURE".into(),
        subject_prefix: "t.measure_rooms".into(),
        fanout_prefix: "f.measure_rooms".into(),
        ..LogConfig::default()
    };
    let log = Arc::new(JetStreamLog::open(nats.client().await, cfg).await.unwrap());
    let r = room("one");
    let mut w = RoomWriter::take_over(log.clone(), r.clone(), "m", 0)
        .await
        .unwrap();
    let n = 3000u64;
    let mut lat = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for s in 1..=n {
        let recs = vec![(s, 0, rec(s))];
        let t0 = Instant::now();
        w.append(&appends(&r, &recs)).await.unwrap();
        lat.push(t0.elapsed());
    }
    let el = t.elapsed();
    lat.sort();
    eprintln!(
        "1 room, 1 record per append: {:.0} appends/s, p50 {:?}, p99 {:?}",
        n as f64 / el.as_secs_f64(),
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );

    // One room, a group of records per append (a group commit under load).
    for size in [64u64, 512] {
        let r = room(&format!("grouped-{size}"));
        let mut w = RoomWriter::take_over(log.clone(), r.clone(), "m", 0)
            .await
            .unwrap();
        let t = Instant::now();
        let groups = 64_000 / size;
        for g in 0..groups {
            let recs: Vec<_> = (g * size + 1..=g * size + size)
                .map(|s| (s, 0, rec(s)))
                .collect();
            w.append(&appends(&r, &recs)).await.unwrap();
        }
        eprintln!(
            "1 room, {size} records per append: {:.0} records/s",
            (groups * size) as f64 / t.elapsed().as_secs_f64()
        );
    }

    // 64 rooms at once, one record per append each.
    let t = Instant::now();
    let per_room = 300u64;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let log = log.clone();
        let recs: Vec<Vec<u8>> = (1..=per_room).map(rec).collect();
        tasks.push(tokio::spawn(async move {
            let r = room(&format!("many-{i}"));
            let mut w = RoomWriter::take_over(log, r.clone(), "m", 0).await.unwrap();
            for s in 1..=per_room {
                let one = vec![(s, 0, recs[(s - 1) as usize].clone())];
                w.append(&appends(&r, &one)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "64 rooms, 1 record per append: {:.0} appends/s",
        (64 * per_room) as f64 / t.elapsed().as_secs_f64()
    );

    // Append on one connection to delivery by a follower on another (two
    // nodes' view), one record at a time, at a low rate (~1,000/s).
    let r = room("followed");
    let mut w = RoomWriter::take_over(log.clone(), r.clone(), "m", 0)
        .await
        .unwrap();
    let mut f = Follower::start(&nats.client().await, log.clone(), r.clone())
        .await
        .unwrap();
    let mut lat = Vec::new();
    for s in 1..=2000u64 {
        let recs = vec![(s, 0, rec(s))];
        let t0 = Instant::now();
        w.append(&appends(&r, &recs)).await.unwrap();
        let got = f.next().await.unwrap();
        lat.push(t0.elapsed());
        assert_eq!(got.last().map(|x| x.seq), Some(Seq(s)));
        tokio::time::sleep(Duration::from_micros(800)).await;
    }
    lat.sort();
    eprintln!(
        "append to delivery on another connection: p50 {:?}, p99 {:?}, max {:?}",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        lat[lat.len() - 1]
    );

    // The ceiling: JetStream async publish, 1,024 acks in flight, no fence.
    let js = async_nats::jetstream::new(nats.client().await);
    let body = Bytes::from(rec(1));
    let total = 100_000u32;
    let t = Instant::now();
    let mut inflight = std::collections::VecDeque::new();
    for i in 0..total {
        let ack = js
            .publish(format!("t.measure_rooms.{:x}", i % 64), body.clone())
            .await
            .unwrap();
        inflight.push_back(ack);
        if inflight.len() >= 1024 {
            inflight.pop_front().unwrap().await.unwrap();
        }
    }
    for a in inflight {
        a.await.unwrap();
    }
    eprintln!(
        "JetStream async publish, 1,024 in flight: {:.0} msgs/s",
        f64::from(total) / t.elapsed().as_secs_f64()
    );
}
