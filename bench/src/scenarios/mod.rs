//! Scenarios. Each measures one thing against one system and returns rows.

pub mod confab;
pub mod inbox;
pub(crate) mod proxy;
pub mod resume;
pub mod shape;
pub mod transports;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Monotonic nanoseconds since the first call in this process: the clock
/// that publishers stamp into payloads and subscribers read back.
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A payload of `size` bytes (at least 8) starting with `stamp`.
pub fn payload(size: usize, stamp: u64) -> bytes::Bytes {
    let mut p = vec![0x61u8; size.max(8)];
    p[..8].copy_from_slice(&stamp.to_be_bytes());
    bytes::Bytes::from(p)
}

/// The open-loop schedule of a latency publisher, on the calling (OS)
/// thread: message k (from 0) is due at `start + k * interval_ns`. The
/// thread sleeps until messages are due (instead of spinning, which would
/// steal a core from the broker on a 2-core machine), then encodes every
/// due message as a `Publish` to `room`, stamped with its *intended* send
/// time, and hands the frames to `send`. Returns how many it sent before
/// `end`.
///
/// # Errors
/// What `send` or the encoder returns.
pub fn paced_publishes(
    room: &confab_codec::RoomId,
    size: usize,
    start: u64,
    end: u64,
    interval_ns: f64,
    mut send: impl FnMut(&mut bytes::BytesMut) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    use confab_codec::{Frame, MessageKind, Publish};

    let mut out = bytes::BytesMut::new();
    let mut sent = 0u64;
    loop {
        let now = now_ns();
        if now >= end {
            break;
        }
        if now < start {
            std::thread::sleep(Duration::from_nanos(start - now));
            continue;
        }
        // Message k is due at start + k * interval: 0..=k are due then.
        let due = ((now - start) as f64 / interval_ns) as u64 + 1;
        while sent < due {
            let intended = start + (sent as f64 * interval_ns) as u64;
            sent += 1;
            Frame::request(
                (sent as u32).max(2),
                Publish {
                    room: room.clone(),
                    client_msg_id: sent,
                    kind: MessageKind::MESSAGE,
                    refers_to: None,
                    thread: None,
                    payload: payload(size, intended),
                },
            )
            .encode(&mut out)?;
        }
        if !out.is_empty() {
            send(&mut out)?;
            out.clear();
        }
        let next = start + (sent as f64 * interval_ns) as u64;
        let wait = next.saturating_sub(now_ns());
        if wait > 20_000 {
            std::thread::sleep(Duration::from_nanos(wait - 10_000));
        } else {
            std::thread::yield_now();
        }
    }
    Ok(sent)
}

/// Common knobs.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// Measured time per run.
    pub duration: Duration,
    /// Warm-up before measuring.
    pub warmup: Duration,
}
