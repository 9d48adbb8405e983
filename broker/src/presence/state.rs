//! The presence state machine: every connected device's status, each
//! user's aggregate, and which aggregates changed since they were last
//! published. Pure: no IO, no clock (times are inputs), unit-tested.
//!
//! Aggregation (protocol section 14.2): `Online` if any connected device
//! is `Online`, else `Away` if any is `Away`, else `Offline` (no device, or
//! every device chose to appear offline).

use confab_codec::{PresenceStatus, UserId};
use rustc_hash::{FxHashMap, FxHashSet};

/// One user's connected devices (by session id) and what watchers were
/// last told.
#[derive(Debug)]
struct UserState {
    devices: FxHashMap<u64, PresenceStatus>,
    /// The aggregate last published (or `Offline` before the first).
    published: PresenceStatus,
    /// When the user's last device disconnected, if that happened since
    /// the user was last published.
    left_at_us: Option<u64>,
    /// That departure is not stored yet: the user is kept (and reported
    /// from memory) until [`PresenceState::saved`].
    unsaved: bool,
}

impl UserState {
    fn aggregate(&self) -> PresenceStatus {
        aggregate(self.devices.values().copied())
    }
}

/// The aggregate of some device statuses.
pub(crate) fn aggregate(devices: impl IntoIterator<Item = PresenceStatus>) -> PresenceStatus {
    let mut best = PresenceStatus::Offline;
    for s in devices {
        match s {
            PresenceStatus::Online => return PresenceStatus::Online,
            PresenceStatus::Away => best = PresenceStatus::Away,
            _ => {}
        }
    }
    best
}

/// A published change of one user's aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// The user.
    pub(crate) user: UserId,
    /// The new aggregate.
    pub(crate) status: PresenceStatus,
    /// For `Offline` after the last device left: when it left. `None`
    /// otherwise (online, away, or appearing offline while connected: the
    /// stored last-seen time is reported then).
    pub(crate) left_at_us: Option<u64>,
}

/// Every user with a connected device, or with a change not yet published.
#[derive(Debug, Default)]
pub(crate) struct PresenceState {
    users: FxHashMap<UserId, UserState>,
    /// Users whose aggregate may differ from the published one.
    dirty: FxHashSet<UserId>,
}

impl PresenceState {
    /// A device connected; it starts `Online`.
    pub(crate) fn connect(&mut self, session: u64, user: &UserId) {
        let st = self.users.entry(user.clone()).or_insert_with(|| UserState {
            devices: FxHashMap::default(),
            published: PresenceStatus::Offline,
            left_at_us: None,
            unsaved: false,
        });
        st.devices.insert(session, PresenceStatus::Online);
        st.left_at_us = None;
        self.dirty.insert(user.clone());
    }

    /// A connected device set its status. Unknown sessions are ignored.
    pub(crate) fn set(&mut self, session: u64, user: &UserId, status: PresenceStatus) {
        if let Some(slot) = self
            .users
            .get_mut(user)
            .and_then(|st| st.devices.get_mut(&session))
        {
            if *slot != status {
                *slot = status;
                self.dirty.insert(user.clone());
            }
        }
    }

    /// A device disconnected at `now_us`. Returns true if it was the
    /// user's last connected device (the user's last-seen time is then
    /// `now_us`, to be stored).
    pub(crate) fn disconnect(&mut self, session: u64, user: &UserId, now_us: u64) -> bool {
        let Some(st) = self.users.get_mut(user) else {
            return false;
        };
        if st.devices.remove(&session).is_none() {
            return false;
        }
        self.dirty.insert(user.clone());
        if st.devices.is_empty() {
            st.left_at_us = Some(now_us);
            st.unsaved = true;
            true
        } else {
            false
        }
    }

    /// The departure reported by [`PresenceState::disconnect`] is stored:
    /// the user may be forgotten.
    pub(crate) fn saved(&mut self, user: &UserId) {
        let Some(st) = self.users.get_mut(user) else {
            return;
        };
        st.unsaved = false;
        if st.devices.is_empty() && !self.dirty.contains(user) {
            self.users.remove(user);
        }
    }

    /// When a user with no connected device left, while it is still known
    /// in memory (None: connected, or ask the storage).
    pub(crate) fn left_at(&self, user: &UserId) -> Option<u64> {
        self.users
            .get(user)
            .filter(|st| st.devices.is_empty())
            .and_then(|st| st.left_at_us)
    }

    /// A user's current aggregate (`Offline` if not connected).
    pub(crate) fn status(&self, user: &UserId) -> PresenceStatus {
        self.users
            .get(user)
            .map_or(PresenceStatus::Offline, UserState::aggregate)
    }

    /// The changes since the last call: one per user whose aggregate now
    /// differs from the one last published, however many device events
    /// happened in between. Users with no device left are forgotten.
    pub(crate) fn take_changes(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        for user in self.dirty.drain() {
            let Some(st) = self.users.get_mut(&user) else {
                continue;
            };
            let now = st.aggregate();
            if now != st.published {
                st.published = now;
                out.push(Change {
                    user: user.clone(),
                    status: now,
                    left_at_us: if st.devices.is_empty() {
                        st.left_at_us
                    } else {
                        None
                    },
                });
            }
            if st.devices.is_empty() && !st.unsaved {
                self.users.remove(&user);
            }
        }
        out.sort_by(|a, b| a.user.cmp(&b.user));
        out
    }

    /// Users with a connected device or an unpublished change.
    pub(crate) fn len(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PresenceStatus::{Away, Offline, Online};

    fn u(s: &str) -> UserId {
        UserId::new(s).expect("id")
    }

    #[test]
    fn aggregates_over_devices() {
        assert_eq!(aggregate([]), Offline);
        assert_eq!(aggregate([Away, Online, Offline]), Online);
        assert_eq!(aggregate([Away, Offline]), Away);
        assert_eq!(aggregate([Offline, Offline]), Offline);
    }

    #[test]
    fn coalesces_device_events_into_one_change() {
        let mut s = PresenceState::default();
        let a = u("alice");
        s.connect(1, &a);
        s.connect(2, &a);
        s.set(1, &a, Away);
        s.set(2, &a, Away);
        s.set(2, &a, Online);
        let changes = s.take_changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].status, Online);
        assert!(s.take_changes().is_empty(), "nothing new");

        // All devices away -> away; one appears offline -> still away.
        s.set(2, &a, Away);
        s.set(1, &a, Offline);
        assert_eq!(s.take_changes()[0].status, Away);
        // A change and its undo inside one window publish nothing.
        s.set(2, &a, Online);
        s.set(2, &a, Away);
        assert!(s.take_changes().is_empty());
        // Every device appears offline: offline, with no departure time.
        s.set(2, &a, Offline);
        let c = s.take_changes();
        assert_eq!((c[0].status, c[0].left_at_us), (Offline, None));
        assert_eq!(s.status(&a), Offline);
        assert_eq!(s.len(), 1, "still connected");
    }

    #[test]
    fn last_device_leaving_goes_offline_and_is_forgotten() {
        let mut s = PresenceState::default();
        let (a, b) = (u("alice"), u("bob"));
        s.connect(1, &a);
        s.connect(2, &a);
        s.connect(3, &b);
        assert_eq!(s.take_changes().len(), 2);
        assert!(!s.disconnect(1, &a, 100), "another device is connected");
        assert!(s.take_changes().is_empty(), "still online");
        assert!(s.disconnect(2, &a, 200));
        assert!(!s.disconnect(2, &a, 300), "already gone");
        assert_eq!(
            s.take_changes(),
            vec![Change {
                user: a.clone(),
                status: Offline,
                left_at_us: Some(200)
            }]
        );
        assert_eq!(s.left_at(&a), Some(200), "known until stored");
        assert_eq!(s.len(), 2);
        s.saved(&a);
        assert_eq!(s.left_at(&a), None);
        assert_eq!(s.len(), 1, "alice forgotten");
        // Unknown sessions change nothing.
        s.set(9, &b, Away);
        s.set(1, &a, Away);
        assert!(s.take_changes().is_empty());
        // A quick reconnect inside one window publishes nothing.
        s.disconnect(3, &b, 400);
        s.connect(4, &b);
        assert!(s.take_changes().is_empty());
        assert_eq!(s.status(&b), Online);
    }
}
