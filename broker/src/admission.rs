//! Admission control before authentication.
//!
//! A connection is *handshaking* from the moment it is accepted (before
//! any TLS or QUIC handshake) until the broker sends `Welcome`. Handshaking
//! connections are limited globally (`admission.max_handshakes`) and per
//! client address (`admission.max_handshakes_per_ip`); open connections are
//! limited per address (`admission.max_connections_per_ip`); sessions (past
//! `Welcome`) are limited by `limits.max_connections`, whose slots only
//! authenticated connections take. So a flood of connections that never
//! authenticate cannot take the slots of the sessions, and sessions at
//! their limit do not make handshakes wait.
//!
//! The slot kept for new clients: when every handshake slot is taken and a
//! connection arrives from an address under its own limits, the *oldest*
//! pending handshake is evicted (closed) and the new one takes its place.
//! A handshake-less flood from one address stops at its per-address limit
//! and never fills the global one; a flood from many addresses only shortens
//! the life of each pending handshake to the time it takes the flood to open
//! `max_handshakes` new connections, while a well-behaved client needs one
//! round trip (plus TLS) to finish. Refusing the newcomer instead would let
//! a flood that keeps the table full lock everyone out until it stops.
//!
//! Every decision is a table look-up under one short lock, taken once when
//! a connection is accepted, once when it is welcomed and once when it
//! ends; nothing here runs per message. The table has one entry per
//! address with an open socket, removed when the last one closes.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::base::address_key;
use crate::config::AdmissionConfig;
use crate::stats::Transport;

/// Why a connection was refused as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Every session slot (`limits.max_connections`) is taken.
    Sessions,
    /// The address has `admission.max_connections_per_ip` open connections.
    AddressConnections,
    /// The address has `admission.max_handshakes_per_ip` pending handshakes.
    AddressHandshakes,
    /// The address opens more than `admission.connects_per_ip_per_sec`.
    AddressRate,
}

impl Refusal {
    /// The `reason` label of `confab_admission_refused_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Sessions => "max_connections",
            Refusal::AddressConnections => "per_ip_connections",
            Refusal::AddressHandshakes => "per_ip_handshakes",
            Refusal::AddressRate => "per_ip_rate",
        }
    }

    /// The text of the `ServerBusy` refusal, where one is sent.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refusal::Sessions => "connection limit reached",
            Refusal::AddressConnections => "too many connections from this address",
            Refusal::AddressHandshakes => "too many handshakes in progress from this address",
            Refusal::AddressRate => "too many new connections from this address",
        }
    }
}

/// Counts a refusal (at accept, or at `Welcome` for `Sessions`).
pub(crate) fn count_refusal(reason: Refusal, transport: Transport) {
    // Connections refused by admission control, by reason and listener.
    metrics::counter!(
        "confab_admission_refused_total",
        "reason" => reason.label(),
        "transport" => transport.label()
    )
    .increment(1);
}

/// A pending handshake in the eviction order.
#[derive(Debug)]
struct Pending {
    key: IpAddr,
    evict: CancellationToken,
    transport: Transport,
}

/// What one address holds.
#[derive(Debug, Default, Clone, Copy)]
struct PerAddress {
    sockets: usize,
    handshakes: usize,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    /// Pending handshakes by admission order: the first is the oldest.
    pending: BTreeMap<u64, Pending>,
    /// Addresses with at least one open socket.
    addresses: HashMap<IpAddr, PerAddress>,
}

/// The broker's admission state, shared by every listener.
#[derive(Debug)]
pub(crate) struct Admission {
    cfg: AdmissionConfig,
    handshake_timeout: Duration,
    /// `limits.max_connections` session slots.
    sessions: Arc<Semaphore>,
    table: Mutex<Table>,
    /// New connections per address (a token bucket each; off at 0).
    connects: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Admissions since the buckets of idle addresses were last dropped.
    since_sweep: AtomicU64,
}

/// Admissions between two sweeps of idle addresses' connection buckets.
const SWEEP_EVERY_ADMISSIONS: u64 = 4096;

impl Admission {
    pub(crate) fn new(
        cfg: &AdmissionConfig,
        max_connections: usize,
        handshake_timeout: Duration,
    ) -> Self {
        Self {
            cfg: cfg.clone(),
            handshake_timeout,
            sessions: Arc::new(Semaphore::new(max_connections)),
            table: Mutex::new(Table::default()),
            connects: NonZeroU32::new(cfg.connects_per_ip_per_sec).map(|per_sec| {
                let burst = NonZeroU32::new(per_sec.get().saturating_mul(4)).unwrap_or(per_sec);
                RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst))
            }),
            since_sweep: AtomicU64::new(0),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection just accepted from `ip`, before any TLS or QUIC
    /// handshake, evicting the oldest pending handshake if every slot is
    /// taken. Counts refusals and evictions.
    ///
    /// # Errors
    /// The [`Refusal`] if the connection must be closed now.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        transport: Transport,
    ) -> Result<Ticket, Refusal> {
        let admitted = self.try_admit(ip, transport);
        match &admitted {
            Ok((_, Some(evicted))) => {
                // Pending handshakes closed to make room for a new one.
                metrics::counter!("confab_handshakes_evicted_total", "transport" => evicted.label())
                    .increment(1);
            }
            Ok((_, None)) => {}
            Err(reason) => count_refusal(*reason, transport),
        }
        admitted.map(|(ticket, _)| ticket)
    }

    /// [`Admission::admit`] without the metrics: the ticket, and the
    /// transport of the handshake evicted for it, if one was.
    fn try_admit(
        self: &Arc<Self>,
        ip: IpAddr,
        transport: Transport,
    ) -> Result<(Ticket, Option<Transport>), Refusal> {
        if self.sessions.available_permits() == 0 {
            return Err(Refusal::Sessions);
        }
        let key = address_key(ip);
        if let Some(connects) = &self.connects {
            if self.since_sweep.fetch_add(1, Ordering::Relaxed) >= SWEEP_EVERY_ADMISSIONS {
                self.since_sweep.store(0, Ordering::Relaxed);
                connects.retain_recent();
                connects.shrink_to_fit();
            }
            if connects.check_key(&key).is_err() {
                return Err(Refusal::AddressRate);
            }
        }
        let mut table = self.table();
        let mine = table.addresses.get(&key).copied().unwrap_or_default();
        let over = |count: usize, max: usize| max != 0 && count >= max;
        if over(mine.sockets, self.cfg.max_connections_per_ip) {
            return Err(Refusal::AddressConnections);
        }
        if over(mine.handshakes, self.cfg.max_handshakes_per_ip) {
            return Err(Refusal::AddressHandshakes);
        }
        let mut evicted = None;
        if table.pending.len() >= self.cfg.max_handshakes {
            if let Some((_, oldest)) = table.pending.pop_first() {
                if let Some(a) = table.addresses.get_mut(&oldest.key) {
                    a.handshakes = a.handshakes.saturating_sub(1);
                }
                oldest.evict.cancel();
                evicted = Some(oldest.transport);
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let evict = CancellationToken::new();
        table.pending.insert(
            id,
            Pending {
                key,
                evict: evict.clone(),
                transport,
            },
        );
        let entry = table.addresses.entry(key).or_default();
        entry.sockets += 1;
        entry.handshakes += 1;
        drop(table);
        let ticket = Ticket {
            admission: self.clone(),
            id,
            key,
            handshaking: true,
            evicted: evict,
            deadline: deadline_after(self.handshake_timeout),
            transport,
        };
        Ok((ticket, evicted))
    }

    /// A session slot, if one is free; held for the session's life.
    pub(crate) fn session_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.sessions.clone().try_acquire_owned().ok()
    }

    /// Connections accepted and not yet welcomed.
    pub(crate) fn pending(&self) -> usize {
        self.table().pending.len()
    }

    /// Addresses with at least one open connection.
    pub(crate) fn addresses(&self) -> usize {
        self.table().addresses.len()
    }

    /// The largest `Hello` body accepted.
    pub(crate) fn max_hello_len(&self) -> u32 {
        self.cfg.max_hello_len
    }

    /// Ends a ticket's handshake; whether it was still pending (not evicted).
    fn finish_handshake(&self, id: u64, key: IpAddr) -> bool {
        let mut table = self.table();
        if table.pending.remove(&id).is_none() {
            return false;
        }
        if let Some(a) = table.addresses.get_mut(&key) {
            a.handshakes = a.handshakes.saturating_sub(1);
        }
        true
    }

    fn release(&self, id: u64, key: IpAddr, handshaking: bool) {
        let mut table = self.table();
        let was_pending = handshaking && table.pending.remove(&id).is_some();
        let now_empty = match table.addresses.get_mut(&key) {
            Some(a) => {
                if was_pending {
                    a.handshakes = a.handshakes.saturating_sub(1);
                }
                a.sockets = a.sockets.saturating_sub(1);
                a.sockets == 0
            }
            None => false,
        };
        if now_empty {
            table.addresses.remove(&key);
        }
    }
}

/// `timeout` from now; a timeout too long for the clock is as good as none.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(u64::from(u32::MAX)))
}

/// One admitted connection: its place among the pending handshakes until
/// [`Ticket::handshake_done`], and its address's socket count until it is
/// dropped (when the connection's task ends).
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    key: IpAddr,
    handshaking: bool,
    evicted: CancellationToken,
    deadline: Instant,
    transport: Transport,
}

impl Ticket {
    /// The listener the connection came in on.
    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    /// When the handshake (TLS or QUIC, then a complete `Hello`) must be
    /// done: `limits.handshake_timeout_ms` after accept.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Resolves when a newer connection evicted this pending handshake.
    pub(crate) async fn evicted(&self) {
        self.evicted.cancelled().await;
    }

    /// Leaves the pending handshakes (the connection is being welcomed).
    /// False if it was evicted first: the connection must then be closed.
    pub(crate) fn handshake_done(&mut self) -> bool {
        if !self.handshaking {
            return true;
        }
        self.handshaking = false;
        self.admission.finish_handshake(self.id, self.key)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.id, self.key, self.handshaking);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_handshakes: usize, per_ip_hs: usize, per_ip_conns: usize) -> Arc<Admission> {
        let cfg = AdmissionConfig {
            max_handshakes,
            max_handshakes_per_ip: per_ip_hs,
            max_connections_per_ip: per_ip_conns,
            ..AdmissionConfig::default()
        };
        Arc::new(Admission::new(&cfg, 100, Duration::from_secs(10)))
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_address_is_refused_at_its_limit_and_others_still_get_in() {
        let a = admission(8, 3, 0);
        let flood: Vec<Ticket> = (0..3)
            .map(|_| a.admit(ip(1), Transport::Tcp).expect("under the limit"))
            .collect();
        assert_eq!(
            a.admit(ip(1), Transport::Tcp).err(),
            Some(Refusal::AddressHandshakes)
        );
        let fresh = a.admit(ip(2), Transport::Tcp).expect("another address");
        assert!(!fresh.evicted.is_cancelled());
        assert!(flood.iter().all(|t| !t.evicted.is_cancelled()));
        assert_eq!(a.pending(), 4);
    }

    #[test]
    fn a_full_table_evicts_the_oldest_handshake() {
        let a = admission(3, 0, 0);
        let mut old: Vec<Ticket> = (1..=3)
            .map(|i| a.admit(ip(i), Transport::Tcp).expect("room"))
            .collect();
        let mut fresh = a.admit(ip(9), Transport::Tls).expect("evicts");
        assert!(old[0].evicted.is_cancelled(), "the oldest goes");
        assert!(!old[1].evicted.is_cancelled() && !old[2].evicted.is_cancelled());
        assert_eq!(a.pending(), 3);
        assert!(
            !old[0].handshake_done(),
            "an evicted handshake cannot finish"
        );
        assert!(fresh.handshake_done());
        assert_eq!(a.pending(), 2);
        // The evicted one still holds its socket until its task ends.
        assert_eq!(a.addresses(), 4);
        old.remove(0);
        assert_eq!(a.addresses(), 3);
    }

    #[test]
    fn sessions_and_connections_per_address() {
        let a = admission(8, 0, 2);
        let mut first = a.admit(ip(1), Transport::Tcp).expect("first");
        assert!(first.handshake_done());
        let _second = a.admit(ip(1), Transport::Quic).expect("second");
        assert_eq!(
            a.admit(ip(1), Transport::Tcp).err(),
            Some(Refusal::AddressConnections)
        );
        drop(first);
        let _third = a.admit(ip(1), Transport::Tcp).expect("a socket closed");

        let cfg = AdmissionConfig::default();
        let full = Arc::new(Admission::new(&cfg, 1, Duration::from_secs(1)));
        let _slot = full.session_slot().expect("one slot");
        assert_eq!(
            full.admit(ip(1), Transport::Tcp).err(),
            Some(Refusal::Sessions)
        );
    }

    #[test]
    fn any_configured_timeout_gives_a_deadline() {
        let soon = deadline_after(Duration::from_secs(10));
        assert!(soon > Instant::now());
        assert!(deadline_after(Duration::MAX) > soon);
    }

    #[test]
    fn the_table_forgets_addresses_without_sockets() {
        let a = admission(4, 2, 0);
        for round in 0..50u8 {
            let tickets: Vec<Ticket> = (0..6)
                .filter_map(|i| a.admit(ip(round.wrapping_add(i)), Transport::Tcp).ok())
                .collect();
            assert!(a.pending() <= 4);
            drop(tickets);
            assert_eq!(a.pending(), 0);
            assert_eq!(a.addresses(), 0, "round {round}");
        }
        // IPv6 addresses of one /64 count together.
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        let _t = [
            a.admit(v6(1), Transport::Quic).expect("first"),
            a.admit(v6(2), Transport::Quic).expect("second"),
        ];
        assert_eq!(
            a.admit(v6(3), Transport::Quic).err(),
            Some(Refusal::AddressHandshakes)
        );
        assert_eq!(a.addresses(), 1);
    }
}
