//! Scenarios. Each measures one thing against one system and returns rows.

pub mod confab;
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

/// Common knobs.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// Measured time per run.
    pub duration: Duration,
    /// Warm-up before measuring.
    pub warmup: Duration,
}
