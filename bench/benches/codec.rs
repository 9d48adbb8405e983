//! Codec micro-benchmarks: encoding and decoding of the frames that dominate
//! a broker's traffic, a single `Event` and an `EventBatch`.
//!
//! Run with `cargo bench -p confab-bench --bench codec`. Throughput is the
//! encoded frame size, so criterion reports GiB/s next to the time per frame.
//! Benchmark ids: `codec/encode/event_64B`, `codec/encode/event_batch_64x64B`,
//! `codec/decode/event_64B`, `codec/decode/event_batch_64x64B`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use confab_codec::{
    DeviceId, Event, EventBatch, EventRecord, Frame, MessageKind, RoomId, Seq, UserId,
    DEFAULT_MAX_FRAME_LEN,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// Events per batch.
const BATCH: u64 = 64;
/// Payload bytes per event: a short chat message in JSON.
const PAYLOAD_LEN: usize = 64;

fn room() -> RoomId {
    RoomId::new("org:acme/eng-platform").expect("valid room id")
}

fn record(seq: u64) -> EventRecord {
    let payload = format!("{{\"text\":\"deploy {seq:06} finished, all checks green\",\"v\":1}}");
    let mut payload = payload.into_bytes();
    assert!(payload.len() <= PAYLOAD_LEN);
    // Pad with JSON whitespace to exactly PAYLOAD_LEN bytes.
    payload.resize(PAYLOAD_LEN, b' ');
    EventRecord {
        seq: Seq(1_000_000 + seq),
        timestamp_us: 1_700_000_000_000_000 + seq * 1_250,
        sender: UserId::new("user:7f3a9c2e-alice").expect("valid user id"),
        device: DeviceId::new("ios-5F2B8C1D-9E4A").expect("valid device id"),
        client_msg_id: 0x0001_8c3f_0000_0000 + seq,
        kind: MessageKind::MESSAGE,
        refers_to: None,
        thread: None,
        payload: Bytes::from(payload),
    }
}

fn event_frame() -> Frame {
    Frame::new(Event {
        room: room(),
        event: record(1),
    })
}

fn event_batch_frame() -> Frame {
    Frame::new(EventBatch {
        room: room(),
        events: (0..BATCH).map(record).collect(),
    })
}

fn encode(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf).expect("frame encodes");
    buf.freeze()
}

fn bench_frame(c: &mut Criterion, name: &str, frame: &Frame) {
    let encoded = encode(frame);
    // Sanity check outside the measurement: the frame round trips.
    let mut check = BytesMut::from(&encoded[..]);
    assert_eq!(
        Frame::decode(&mut check, DEFAULT_MAX_FRAME_LEN).expect("decodes"),
        Some(frame.clone())
    );
    let bytes = u64::try_from(encoded.len()).expect("frame size fits in u64");

    let mut group = c.benchmark_group("codec/encode");
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function(name, |b| {
        let mut buf = BytesMut::with_capacity(encoded.len());
        b.iter(|| {
            buf.clear();
            black_box(frame).encode(&mut buf).expect("frame encodes");
            black_box(buf.len())
        });
    });
    group.finish();

    let mut group = c.benchmark_group("codec/decode");
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function(name, |b| {
        b.iter_batched_ref(
            || BytesMut::from(&encoded[..]),
            |buf| {
                Frame::decode(black_box(buf), DEFAULT_MAX_FRAME_LEN)
                    .expect("frame decodes")
                    .expect("frame is complete")
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench_frame(c, "event_64B", &event_frame());
    bench_frame(c, "event_batch_64x64B", &event_batch_frame());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = codec
}
criterion_main!(benches);
