//! The ground floor: small things every layer of the broker shares. It
//! imports nothing from the rest of the crate, so any module may use it
//! without making an import cycle.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

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

/// Whether `t` is one NATS subject token Confab allows in names it
/// configures (streams, buckets, node ids, subject prefixes): ASCII
/// letters, digits, `-` and `_`, at least one.
pub(crate) fn is_nats_token(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The key a client address is counted under by per-address limits:
/// IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64 network, which is
/// what one subscriber usually gets.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Runs `work` on a blocking thread every `period` (the first time one
/// period from now) until `shutdown`.
pub(crate) async fn every<F>(period: Duration, shutdown: CancellationToken, work: F)
where
    F: Fn() + Clone + Send + 'static,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let _ = tokio::task::spawn_blocking(work.clone()).await;
    }
}
