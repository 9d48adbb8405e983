//! Typing indicators: ephemeral, never stored, coalesced per room.
//!
//! Devices report "started" or "stopped" typing. A ticker publishes, at
//! most once per window (`rooms.typing_window_ms`, default 200 ms) and only
//! for rooms whose set changed, the full set of users typing in the room to
//! the devices following it. A start that is not refreshed expires by
//! itself after `rooms.typing_ttl_ms` (default 5 s). A device whose queue
//! is full misses typing events: they are the first thing dropped.
//!
//! In cluster mode every typing change of this node's devices is also
//! handed to the cluster layer ([`TypingHub::relay_to`]), which sends it to
//! the other nodes following the room; what they send comes back in
//! through [`TypingHub::set_remote`] and is kept, expired and published
//! exactly like a local change. So each node holds the room's whole set.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use confab_codec::{Frame, RoomId, TypingEvent, UserId};
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Room;

/// Most users one `TypingEvent` names.
const MAX_TYPING_LISTED: usize = 1000;

/// Most users typing in one room that changes from other nodes may add
/// (their peers' rate limits bound them already; this bounds memory if a
/// peer misbehaves).
const MAX_REMOTE_TYPING: usize = 10_000;

/// A typing change of one of this node's devices, for the other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypingNote {
    /// The room.
    pub(crate) room: RoomId,
    /// Who started or stopped.
    pub(crate) user: UserId,
    /// Started (or still typing): true; stopped: false.
    pub(crate) active: bool,
}

#[derive(Debug)]
struct RoomTyping {
    room: Arc<Room>,
    /// Who is typing, and until when.
    typing: FxHashMap<UserId, Instant>,
    /// Changed since the last published event.
    dirty: bool,
}

/// The typing state of every room with someone typing.
#[derive(Debug)]
pub(crate) struct TypingHub {
    rooms: Mutex<FxHashMap<RoomId, RoomTyping>>,
    ttl: Duration,
    /// Cluster mode: where this node's devices' changes go.
    relay: OnceLock<mpsc::Sender<TypingNote>>,
}

impl TypingHub {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            rooms: Mutex::new(FxHashMap::default()),
            ttl,
            relay: OnceLock::new(),
        }
    }

    /// Cluster mode: every later change of this node's devices is also
    /// sent to `tx` (if it is full, the change is not relayed: typing is
    /// ephemeral, and the device's next refresh is).
    pub(crate) fn relay_to(&self, tx: mpsc::Sender<TypingNote>) {
        let _ = self.relay.set(tx);
    }

    /// Records that `user`, on one of this node's devices, started (or
    /// stopped) typing in `room`.
    pub(crate) fn set(&self, room: Arc<Room>, user: UserId, active: bool, now: Instant) {
        if let Some(tx) = self.relay.get() {
            let note = TypingNote {
                room: room.id.clone(),
                user: user.clone(),
                active,
            };
            if tx.try_send(note).is_err() {
                // Counted: typing changes not relayed to other nodes.
                metrics::counter!("confab_cluster_typing_dropped_total").increment(1);
            }
        }
        self.record(room, user, active, now, usize::MAX);
    }

    /// Records a change another node relayed: kept and expired like a
    /// local one, not relayed again. A room already holding
    /// [`MAX_REMOTE_TYPING`] users takes no new one this way.
    pub(crate) fn set_remote(&self, room: Arc<Room>, user: UserId, active: bool, now: Instant) {
        self.record(room, user, active, now, MAX_REMOTE_TYPING);
    }

    fn record(&self, room: Arc<Room>, user: UserId, active: bool, now: Instant, most: usize) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let entry = rooms.entry(room.id.clone()).or_insert_with(|| RoomTyping {
            room,
            typing: FxHashMap::default(),
            dirty: false,
        });
        if active {
            if entry.typing.len() >= most && !entry.typing.contains_key(&user) {
                return;
            }
            let was = entry.typing.insert(user, now + self.ttl);
            entry.dirty |= was.is_none();
        } else {
            entry.dirty |= entry.typing.remove(&user).is_some();
        }
    }

    /// Expires stale entries and returns, for every room whose set changed,
    /// its current set. Rooms nobody types in any more are forgotten.
    pub(crate) fn tick(&self, now: Instant) -> Vec<(Arc<Room>, Vec<UserId>)> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        rooms.retain(|_, r| {
            let before = r.typing.len();
            r.typing.retain(|_, until| *until > now);
            if r.typing.len() != before {
                r.dirty = true;
            }
            if r.dirty {
                r.dirty = false;
                let mut users: Vec<UserId> = r.typing.keys().cloned().collect();
                users.sort();
                out.push((r.room.clone(), users));
            }
            !r.typing.is_empty()
        });
        out
    }
}

/// Publishes typing changes every `window` until `shutdown`.
pub(crate) async fn run(hub: Arc<TypingHub>, window: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(window);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (room, mut users) in hub.tick(Instant::now()) {
            // Protocol 7.6.2: at most this many are named (the frame must
            // stay within the smallest frame limit a server may have).
            users.truncate(MAX_TYPING_LISTED);
            let frame = Frame::new(TypingEvent {
                room: room.id.clone(),
                users,
            });
            let Ok(bytes) = frame.to_bytes() else {
                continue;
            };
            for sub in room.subscribers().iter() {
                sub.outbox.try_push_event_now(sub.lane, &bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_and_expires() {
        let hub = TypingHub::new(Duration::from_secs(5));
        let room = Arc::new(Room::new(RoomId::new("r").expect("id")));
        let (a, b) = (UserId::new("a").expect("id"), UserId::new("b").expect("id"));
        let t0 = Instant::now();
        hub.set(room.clone(), a.clone(), true, t0);
        hub.set(room.clone(), a.clone(), true, t0);
        hub.set(room.clone(), b.clone(), true, t0);
        let ev = hub.tick(t0);
        assert_eq!(ev.len(), 1, "one event for many changes");
        assert_eq!(ev[0].1, vec![a.clone(), b.clone()]);
        // A refresh is not a change.
        hub.set(room.clone(), a.clone(), true, t0 + Duration::from_secs(1));
        assert!(hub.tick(t0 + Duration::from_secs(1)).is_empty());
        hub.set(room.clone(), b.clone(), false, t0 + Duration::from_secs(2));
        assert_eq!(hub.tick(t0 + Duration::from_secs(2))[0].1, vec![a.clone()]);
        // a's refresh at t0+1 lasts until t0+6.
        assert!(hub.tick(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(
            hub.tick(t0 + Duration::from_secs(7))[0].1,
            Vec::<UserId>::new()
        );
        assert!(
            hub.tick(t0 + Duration::from_secs(8)).is_empty(),
            "forgotten"
        );
    }
}
