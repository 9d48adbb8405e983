//! Group commit: how the size of a RocksDB write batch changes the cost per
//! message, for the `none` and `wal` durability modes (fsync is measured by
//! the load generator, where batches form by themselves).

use std::time::Duration;

use bytes::BytesMut;
use confab_broker::config::Durability;
use confab_broker::storage::{Append, RocksLog, RoomLog};
use confab_codec::{DeviceId, EventRecord, MessageKind, RoomId, Seq, UserId};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn record(seq: u64) -> Vec<u8> {
    let r = EventRecord {
        seq: Seq(seq),
        timestamp_us: 1_700_000_000_000_000,
        sender: UserId::new("alice").expect("valid id"),
        device: DeviceId::new("phone").expect("valid id"),
        client_msg_id: seq,
        kind: MessageKind::MESSAGE,
        refers_to: None,
        thread: None,
        payload: bytes::Bytes::from(vec![b'x'; 128]),
    };
    let mut b = BytesMut::new();
    r.encode(&mut b).expect("encodes");
    b.to_vec()
}

fn bench_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = RocksLog::open(dir.path(), 64 << 20).expect("opens");
    let rooms: Vec<RoomId> = (0..16)
        .map(|i| RoomId::new(format!("room-{i}")).expect("valid id"))
        .collect();
    let mut next_seq = vec![0u64; rooms.len()];
    let mut group = c.benchmark_group("log_append");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for durability in [Durability::None, Durability::Wal] {
        for size in [1usize, 64, 512, 4096] {
            group.throughput(Throughput::Elements(size as u64));
            let name = format!("{durability:?}/batch_{size}").to_lowercase();
            group.bench_function(name, |b| {
                b.iter_batched(
                    || {
                        (0..size)
                            .map(|i| {
                                let r = i % rooms.len();
                                next_seq[r] += 1;
                                (r, next_seq[r], record(next_seq[r]))
                            })
                            .collect::<Vec<_>>()
                    },
                    |batch| {
                        let appends: Vec<Append<'_>> = batch
                            .iter()
                            .map(|(r, seq, rec)| Append {
                                room: &rooms[*r],
                                seq: Seq(*seq),
                                record: rec,
                                idem: None,
                                timestamp_us: 0,
                            })
                            .collect();
                        log.append_batch(&appends, durability).expect("append");
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
