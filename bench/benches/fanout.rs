//! Fan-out through the broker's public API: an in-process broker
//! (`Durability::None`, so the log costs little) with N subscriber
//! connections in one room; one iteration publishes a batch of M messages
//! (pipelined, 256 in flight) and ends when every subscriber has received
//! all of them. Throughput is in deliveries (N x M per iteration).
//!
//! The fan-out internals (`broker/src/fanout`) are private, so this
//! measures them with the sequencer, the session writers and the loopback
//! sockets around them: compare sizes with each other rather than reading
//! the absolute figures as the cost of the fan-out thread alone.

// The load generator's lean protocol client, shared with the binary.
#[allow(dead_code, unreachable_pub, unused_imports)]
#[path = "../src/client/mod.rs"]
mod client;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::{connect, connect_with, Incoming};
use confab_broker::config::{Config, Durability};
use confab_broker::{Broker, BrokerHandle};
use confab_codec::{RoomId, StartAt};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tokio::sync::Notify;

/// Messages published per iteration.
const BATCH: u64 = 2_000;

/// Deliveries counted by every subscriber, and a wake-up when they grow.
struct Delivered {
    count: AtomicU64,
    changed: Notify,
}

/// A broker with `subs` subscribers in `room`, counting into `delivered`.
async fn setup(
    dir: &std::path::Path,
    subs: usize,
    room: &RoomId,
    delivered: Arc<Delivered>,
) -> BrokerHandle {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.listen.tcp = "127.0.0.1:0".parse().expect("address");
    config.storage.durability = Durability::None;
    config.rate_limits.enabled = false;
    let broker = Broker::builder(config)
        .start()
        .await
        .expect("broker starts");
    let addr = broker.tcp_addr();
    for s in 0..subs {
        let (mut rd, mut wr) = connect_with(&addr.into(), &format!("sub{s}"), "bench", 64 << 10)
            .await
            .expect("subscriber connects");
        wr.queue_subscribe(std::slice::from_ref(room), StartAt::Live)
            .expect("subscribe");
        wr.flush().await.expect("flush");
        rd.wait_subscribed().await.expect("subscribed");
        let delivered = delivered.clone();
        tokio::spawn(async move {
            let _keep = wr;
            while let Ok(Some(msg)) = rd.next().await {
                if let Incoming::Events { stamps, .. } = msg {
                    delivered
                        .count
                        .fetch_add(stamps.len() as u64, Ordering::Relaxed);
                    delivered.changed.notify_one();
                }
            }
        });
    }
    broker
}

fn bench_fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("fanout");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    let payload = Bytes::from(vec![b'x'; 128]);
    for subs in [1usize, 100, 1000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let room = RoomId::new("fan").expect("valid id");
        let delivered = Arc::new(Delivered {
            count: AtomicU64::new(0),
            changed: Notify::new(),
        });
        let broker = rt.block_on(setup(dir.path(), subs, &room, delivered.clone()));
        let addr = broker.tcp_addr();
        let (mut rd, mut wr) = rt
            .block_on(connect(addr, "publisher", "bench"))
            .expect("publisher connects");
        let mut cmid = 0u64;
        group.throughput(Throughput::Elements(BATCH * subs as u64));
        group.bench_function(format!("1_to_{subs}/batch_{BATCH}x128B"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let target = delivered.count.load(Ordering::Relaxed) + BATCH * subs as u64;
                        let (mut sent, mut acked) = (0u64, 0u64);
                        while acked < BATCH {
                            while sent < BATCH && sent - acked < 256 {
                                cmid += 1;
                                sent += 1;
                                wr.queue_publish(&room, cmid, payload.clone())
                                    .expect("publish");
                            }
                            wr.flush().await.expect("flush");
                            match rd.next().await.expect("read") {
                                Some(Incoming::PublishAck) => acked += 1,
                                Some(_) => {}
                                None => panic!("broker closed the publisher"),
                            }
                        }
                        while delivered.count.load(Ordering::Relaxed) < target {
                            let wake = delivered.changed.notified();
                            if delivered.count.load(Ordering::Relaxed) >= target {
                                break;
                            }
                            let _ = tokio::time::timeout(Duration::from_millis(5), wake).await;
                        }
                    }
                    start.elapsed()
                })
            })
        });
        drop((rd, wr));
        rt.block_on(broker.shutdown());
    }
    group.finish();
}

criterion_group!(benches, bench_fanout);
criterion_main!(benches);
