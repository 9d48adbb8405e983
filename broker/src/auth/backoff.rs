//! Failed-login back-off per client address.
//!
//! Every refused token (at `Hello` or `RefreshToken`) counts against the
//! address it came from. After `free_failures` of them, the address must
//! wait before its next `Hello` is even looked at: `base_delay_ms` after
//! the failure that crossed the line, doubling with each further failure up
//! to `max_delay_ms`. A `Hello` that arrives too early is refused with
//! `RateLimited` and the time left, without verifying its token, so a flood
//! of bad tokens costs the broker a table look-up each, not a signature
//! check. Refusals do not count as failures (a client that retries too
//! early is not punished further), and a successful handshake clears the
//! address (so that one broken client behind a shared address does not
//! lock the others out for long).
//!
//! The table is bounded: at most `max_tracked` addresses. Addresses without
//! a failure for `forget_after_secs` are purged (at most once a second,
//! when the table is full, and by [`LoginBackoff::sweep`]); if it is still
//! full, the stalest of a small sample is dropped. IPv6 addresses count per
//! /64 network, which is what one subscriber usually gets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::base::address_key as key;
use crate::config::LoginBackoffConfig;

/// How often forgotten addresses are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How many entries are looked at to choose one to drop from a full table.
const EVICTION_SAMPLE: usize = 32;

/// One address's record.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Failures not yet forgotten.
    failures: u32,
    /// When the last one happened.
    last: Instant,
}

#[derive(Debug)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    last_purge: Option<Instant>,
}

/// The back-off state of the whole broker.
#[derive(Debug)]
pub(crate) struct LoginBackoff {
    cfg: LoginBackoffConfig,
    table: Mutex<Table>,
}

impl LoginBackoff {
    pub(crate) fn new(cfg: &LoginBackoffConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            table: Mutex::new(Table {
                entries: HashMap::new(),
                last_purge: None,
            }),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget_after(&self) -> Duration {
        Duration::from_secs(self.cfg.forget_after_secs)
    }

    /// How long an address with `failures` failures waits after the last.
    fn delay(&self, failures: u32) -> Duration {
        let over = failures.saturating_sub(self.cfg.free_failures);
        if over == 0 {
            return Duration::ZERO;
        }
        let doublings = (over - 1).min(40);
        let ms = self
            .cfg
            .base_delay_ms
            .saturating_mul(1u64 << doublings)
            .min(self.cfg.max_delay_ms);
        Duration::from_millis(ms)
    }

    /// Whether a `Hello` from `ip` may be checked now; if not, the
    /// milliseconds it must still wait (at least 1).
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u32> {
        if !self.cfg.enabled {
            return Ok(());
        }
        let table = self.table();
        let Some(e) = table.entries.get(&key(ip)) else {
            return Ok(());
        };
        if now.saturating_duration_since(e.last) > self.forget_after() {
            return Ok(());
        }
        let until = e.last + self.delay(e.failures);
        match until.checked_duration_since(now) {
            Some(left) if !left.is_zero() => {
                // Rounded up: a client that waits as told is let in.
                let ms = left.as_micros().div_ceil(1000);
                Err(u32::try_from(ms).unwrap_or(u32::MAX).max(1))
            }
            _ => Ok(()),
        }
    }

    /// Records a refused token from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) {
        if !self.cfg.enabled {
            return;
        }
        let forget = self.forget_after();
        let mut table = self.table();
        let k = key(ip);
        if !table.entries.contains_key(&k) && table.entries.len() >= self.cfg.max_tracked {
            make_room(&mut table, now, forget);
        }
        let e = table.entries.entry(k).or_insert(Entry {
            failures: 0,
            last: now,
        });
        if now.saturating_duration_since(e.last) > forget {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        // Addresses remembered after a failed login.
        metrics::gauge!("confab_login_backoff_addresses").set(table.entries.len() as f64);
    }

    /// A handshake from `ip` succeeded: its record is cleared.
    pub(crate) fn succeeded(&self, ip: IpAddr) {
        if !self.cfg.enabled {
            return;
        }
        let mut table = self.table();
        if table.entries.remove(&key(ip)).is_some() {
            metrics::gauge!("confab_login_backoff_addresses").set(table.entries.len() as f64);
        }
    }

    /// Drops the addresses without a failure for `forget_after_secs`.
    pub(crate) fn sweep(&self, now: Instant) {
        let forget = self.forget_after();
        let mut table = self.table();
        purge(&mut table, now, forget);
        metrics::gauge!("confab_login_backoff_addresses").set(table.entries.len() as f64);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table().entries.len()
    }
}

/// Drops forgotten addresses every minute, on a blocking thread, until
/// `shutdown`.
pub(crate) async fn run_sweeper(backoff: Arc<LoginBackoff>, shutdown: CancellationToken) {
    crate::base::every(SWEEP_EVERY, shutdown, move || backoff.sweep(Instant::now())).await;
}

fn purge(table: &mut Table, now: Instant, forget: Duration) {
    table
        .entries
        .retain(|_, e| now.saturating_duration_since(e.last) <= forget);
    table
        .entries
        .shrink_to(table.entries.len().saturating_mul(2));
    table.last_purge = Some(now);
}

/// Frees one place in a full table: forgotten entries first (a full scan,
/// at most once a second), else the stalest of a sample.
fn make_room(table: &mut Table, now: Instant, forget: Duration) {
    let may_purge = table
        .last_purge
        .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
    if may_purge {
        let before = table.entries.len();
        purge(table, now, forget);
        if table.entries.len() < before {
            return;
        }
    }
    let stalest = table
        .entries
        .iter()
        .take(EVICTION_SAMPLE)
        .min_by_key(|(_, e)| e.last)
        .map(|(k, _)| *k);
    if let Some(k) = stalest {
        table.entries.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LoginBackoffConfig {
        LoginBackoffConfig {
            free_failures: 2,
            base_delay_ms: 100,
            max_delay_ms: 1_000,
            forget_after_secs: 60,
            max_tracked: 4,
            ..LoginBackoffConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn delays_start_after_the_free_failures_and_double_up_to_the_cap() {
        let b = LoginBackoff::new(&cfg());
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        b.failed(a, t0);
        b.failed(a, t0);
        assert_eq!(b.check(a, t0), Ok(()), "two failures are free");
        let mut waits = Vec::new();
        for _ in 0..6 {
            b.failed(a, t0);
            waits.push(b.check(a, t0).expect_err("backing off"));
        }
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.check(a, t0 + Duration::from_millis(999)), Err(1));
        assert_eq!(b.check(a, t0 + Duration::from_millis(1000)), Ok(()));
        // Other addresses are not affected; a success clears the address.
        assert_eq!(b.check(ip("192.0.2.2"), t0), Ok(()));
        b.succeeded(a);
        assert_eq!(b.check(a, t0), Ok(()));
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_period() {
        let b = LoginBackoff::new(&cfg());
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        for _ in 0..3 {
            b.failed(a, t0);
        }
        assert!(b.check(a, t0).is_err());
        let later = t0 + Duration::from_secs(61);
        b.failed(a, later);
        assert_eq!(b.check(a, later), Ok(()), "counting starts again");
        b.sweep(later + Duration::from_secs(61));
        assert_eq!(b.tracked(), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let b = LoginBackoff::new(&cfg());
        let t0 = Instant::now();
        for i in 1..=3 {
            b.failed(ip(&format!("2001:db8:1:2::{i}")), t0);
        }
        assert!(b.check(ip("2001:db8:1:2:ffff::9"), t0).is_err());
        assert_eq!(b.check(ip("2001:db8:1:3::1"), t0), Ok(()));
        for _ in 0..3 {
            b.failed(ip("::ffff:192.0.2.7"), t0);
        }
        assert!(b.check(ip("192.0.2.7"), t0).is_err());
    }

    #[test]
    fn the_table_is_bounded() {
        let b = LoginBackoff::new(&cfg());
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let a = IpAddr::from(i.to_be_bytes());
            b.failed(a, t0 + Duration::from_millis(u64::from(i)));
            assert!(b.tracked() <= 4);
        }
        // The newest address is tracked.
        let newest = IpAddr::from(999u32.to_be_bytes());
        b.failed(newest, t0 + Duration::from_secs(1));
        b.failed(newest, t0 + Duration::from_secs(1));
        assert!(b.check(newest, t0 + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn disabled_never_refuses() {
        let b = LoginBackoff::new(&LoginBackoffConfig {
            enabled: false,
            ..cfg()
        });
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        for _ in 0..100 {
            b.failed(a, t0);
        }
        assert_eq!(b.check(a, t0), Ok(()));
    }
}
