//! The ground floor: small things every layer of the broker shares. It
//! imports nothing from the rest of the crate, so any module may use it
//! without making an import cycle.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The deduplication identity of a device: `user \0 device` (ids cannot
/// contain control characters, so this is unambiguous).
pub(crate) fn sender_key(user: &str, device: &str) -> Arc<str> {
    Arc::from(format!("{user}\0{device}"))
}
