//! Scenarios. Each measures one thing against one system and returns rows.

pub mod confab;
pub mod inbox;
pub(crate) mod proxy;
pub mod resume;
pub mod shape;
pub mod transports;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Whether payloads are chat-like text (see [`set_text_payloads`]).
static TEXT_PAYLOADS: AtomicBool = AtomicBool::new(false);

/// Makes [`payload`] fill payloads with words instead of one repeated
/// byte: compression then meets something like chat text (a repeated byte
/// compresses far better than any real message).
pub fn set_text_payloads(on: bool) {
    TEXT_PAYLOADS.store(on, Ordering::Relaxed);
}

/// Words for text payloads: common English words, so that zstd finds
/// about what it finds in chat.
const WORDS: [&str; 64] = [
    "the", "be", "to", "of", "and", "a", "in", "that", "have", "I", "it", "for", "not", "on",
    "with", "he", "as", "you", "do", "at", "this", "but", "his", "by", "from", "they", "we", "say",
    "her", "she", "or", "an", "will", "my", "one", "all", "would", "there", "their", "what", "so",
    "up", "out", "if", "about", "who", "get", "which", "go", "me", "when", "make", "can", "like",
    "time", "no", "just", "him", "know", "take", "people", "into", "year", "see",
];

/// `size` bytes of words chosen by a generator seeded with `seed` and a
/// process-wide counter, so that no two payloads are alike even when their
/// stamps are (the replay publishes with stamp 0).
fn text(size: usize, seed: u64) -> Vec<u8> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut x = (seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
    let mut p = Vec::with_capacity(size + 8);
    while p.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.extend_from_slice(WORDS[(x % 64) as usize].as_bytes());
        p.push(b' ');
    }
    p.truncate(size);
    p
}

/// Monotonic nanoseconds since the first call in this process: the clock
/// that publishers stamp into payloads and subscribers read back.
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A payload of `size` bytes (at least 8) starting with `stamp`: one
/// repeated byte, or words (see [`set_text_payloads`]).
pub fn payload(size: usize, stamp: u64) -> bytes::Bytes {
    let mut p = if TEXT_PAYLOADS.load(Ordering::Relaxed) {
        text(size.max(8), stamp)
    } else {
        vec![0x61u8; size.max(8)]
    };
    p[..8].copy_from_slice(&stamp.to_be_bytes());
    bytes::Bytes::from(p)
}

/// How many messages of a paced schedule fall in its first `warmup_ns`
/// (message k is stamped `start + (k * interval_ns) as u64`, as
/// [`paced_publishes`] and the peers' pacer stamp it): the ones the
/// subscribers do not record. Rounded as the stamps are, so that a run
/// that delivers everything is never counted one short.
pub fn warmup_messages(warmup_ns: u64, interval_ns: f64) -> u64 {
    let stamp = |k: u64| (k as f64 * interval_ns) as u64;
    let mut k = (warmup_ns as f64 / interval_ns).ceil() as u64;
    while k > 0 && stamp(k - 1) >= warmup_ns {
        k -= 1;
    }
    while stamp(k) < warmup_ns {
        k += 1;
    }
    k
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

#[cfg(test)]
mod warmup_tests {
    use super::warmup_messages;

    #[test]
    fn the_warm_up_count_matches_the_stamps() {
        // 20k/s for 1 s: messages 0..20,000 are stamped before the end.
        assert_eq!(warmup_messages(1_000_000_000, 50_000.0), 20_000);
        for rate in [36_555.3_f64, 188_007.9, 100.0, 357_214.6] {
            let interval = 1e9 / rate;
            let n = warmup_messages(1_000_000_000, interval);
            let stamp = |k: u64| (k as f64 * interval) as u64;
            assert!(stamp(n - 1) < 1_000_000_000, "{rate}");
            assert!(stamp(n) >= 1_000_000_000, "{rate}");
        }
    }
}
