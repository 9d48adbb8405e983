//! The presence state machine: every connected device's status, each
//! user's aggregate, and which aggregates changed since they were last
//! published. Pure: no IO, no clock (times are inputs), unit-tested.
//!
//! Aggregation (protocol section 14.2): `Online` if any connected device
//! is `Online`, else `Away` if any is `Away`, else `Offline` (no device, or
//! every device chose to appear offline).
//!
//! In cluster mode a user's devices may be connected to several nodes.
//! Each node tells the others, per user, the aggregate of the user's
//! devices on it ([`Relayed`], taken with [`PresenceState::take_relayed`]),
//! and keeps what every other node (a *peer*) told it beside its own
//! devices: the aggregate covers both. A peer that leaves the cluster
//! takes everything it said with it ([`PresenceState::drop_peer`]); its
//! users go offline unless they have a device on another node. Nothing of
//! this is tracked in single-node mode.

use std::sync::Arc;

use confab_codec::{PresenceStatus, UserId};
use rustc_hash::{FxHashMap, FxHashSet};

/// Another node of the cluster, by its node id.
pub(crate) type Peer = Arc<str>;

/// What one node says about one user's devices on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// The user.
    pub(crate) user: UserId,
    /// The aggregate of the user's devices on that node (`Offline` when
    /// they all appear offline), or `None` once none is connected there.
    pub(crate) status: Option<PresenceStatus>,
    /// With `None`: when the last of them left, in microseconds (0 if
    /// not known).
    pub(crate) left_at_us: u64,
}

/// A user who is no longer connected anywhere: when they left, to be
/// stored as their last-seen time.
pub(crate) type Departure = (UserId, u64);

/// One user's connected devices (by session id), their aggregates on
/// other nodes, and what watchers and other nodes were last told.
#[derive(Debug)]
struct UserState {
    devices: FxHashMap<u64, PresenceStatus>,
    /// The aggregate of the user's devices on each peer that has some.
    remote: Vec<(Peer, PresenceStatus)>,
    /// The aggregate last published (or `Offline` before the first).
    published: PresenceStatus,
    /// What the other nodes were last told about this node's devices
    /// (cluster mode; `None`: none here).
    relayed: Option<PresenceStatus>,
    /// When this node's last device of the user disconnected.
    local_left_us: u64,
    /// When the user's last device anywhere disconnected, if that
    /// happened since the user was last published.
    left_at_us: Option<u64>,
    /// That departure is not stored yet: the user is kept (and reported
    /// from memory) until [`PresenceState::saved`].
    unsaved: bool,
}

impl UserState {
    fn new() -> Self {
        Self {
            devices: FxHashMap::default(),
            remote: Vec::new(),
            published: PresenceStatus::Offline,
            relayed: None,
            local_left_us: 0,
            left_at_us: None,
            unsaved: false,
        }
    }

    fn aggregate(&self) -> PresenceStatus {
        aggregate(
            self.devices
                .values()
                .copied()
                .chain(self.remote.iter().map(|(_, s)| *s)),
        )
    }

    /// The aggregate of this node's devices (`None` without any).
    fn local(&self) -> Option<PresenceStatus> {
        (!self.devices.is_empty()).then(|| aggregate(self.devices.values().copied()))
    }

    /// Whether a device of the user is connected to this node or another.
    fn present(&self) -> bool {
        !self.devices.is_empty() || !self.remote.is_empty()
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

/// Every user with a connected device (here or, in cluster mode, on a
/// peer), or with a change not yet published.
#[derive(Debug, Default)]
pub(crate) struct PresenceState {
    users: FxHashMap<UserId, UserState>,
    /// Users whose aggregate may differ from the published one.
    dirty: FxHashSet<UserId>,
    /// Cluster mode: users whose local aggregate may differ from the one
    /// relayed to the other nodes. `None` in single-node mode.
    relay: Option<FxHashSet<UserId>>,
    /// Each peer's users.
    peers: FxHashMap<Peer, FxHashSet<UserId>>,
    /// Most users one peer may report; more are ignored.
    max_per_peer: usize,
}

impl PresenceState {
    /// Cluster mode: tracks what to relay to the other nodes from now on,
    /// and accepts at most `max_per_peer` users from each peer.
    pub(crate) fn relay(&mut self, max_per_peer: usize) {
        self.relay.get_or_insert_with(FxHashSet::default);
        self.max_per_peer = max_per_peer;
    }

    fn touched(&mut self, user: &UserId, local: bool) {
        self.dirty.insert(user.clone());
        if local {
            if let Some(relay) = &mut self.relay {
                relay.insert(user.clone());
            }
        }
    }

    /// A device connected; it starts `Online`.
    pub(crate) fn connect(&mut self, session: u64, user: &UserId) {
        let st = self
            .users
            .entry(user.clone())
            .or_insert_with(UserState::new);
        st.devices.insert(session, PresenceStatus::Online);
        st.left_at_us = None;
        self.touched(user, true);
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
                self.touched(user, true);
            }
        }
    }

    /// A device disconnected at `now_us`. Returns true if it was the
    /// user's last connected device, on this node and every other (the
    /// user's last-seen time is then `now_us`, to be stored).
    pub(crate) fn disconnect(&mut self, session: u64, user: &UserId, now_us: u64) -> bool {
        let Some(st) = self.users.get_mut(user) else {
            return false;
        };
        if st.devices.remove(&session).is_none() {
            return false;
        }
        if st.devices.is_empty() {
            st.local_left_us = now_us;
        }
        let gone = !st.present();
        if gone {
            st.left_at_us = Some(now_us);
            st.unsaved = true;
        }
        self.touched(user, true);
        gone
    }

    /// The departure reported by [`PresenceState::disconnect`] (or by a
    /// peer) is stored: the user may be forgotten.
    pub(crate) fn saved(&mut self, user: &UserId) {
        let Some(st) = self.users.get_mut(user) else {
            return;
        };
        st.unsaved = false;
        self.forget_if_idle(user);
    }

    /// Forgets a user nothing is kept for any more: no device anywhere, no
    /// departure to store, nothing to publish or relay.
    fn forget_if_idle(&mut self, user: &UserId) {
        let idle = self
            .users
            .get(user)
            .is_some_and(|st| !st.present() && !st.unsaved)
            && !self.dirty.contains(user)
            && !self.relay.as_ref().is_some_and(|r| r.contains(user));
        if idle {
            self.users.remove(user);
        }
    }

    /// When a user with no connected device left, while it is still known
    /// in memory (None: connected, or ask the storage).
    pub(crate) fn left_at(&self, user: &UserId) -> Option<u64> {
        self.users
            .get(user)
            .filter(|st| !st.present())
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
        let dirty: Vec<UserId> = self.dirty.drain().collect();
        for user in dirty {
            let Some(st) = self.users.get_mut(&user) else {
                continue;
            };
            let now = st.aggregate();
            if now != st.published {
                st.published = now;
                out.push(Change {
                    user: user.clone(),
                    status: now,
                    left_at_us: if st.present() { None } else { st.left_at_us },
                });
            }
            self.forget_if_idle(&user);
        }
        out.sort_by(|a, b| a.user.cmp(&b.user));
        out
    }

    /// Users with a connected device or an unpublished change.
    pub(crate) fn len(&self) -> usize {
        self.users.len()
    }

    /// Cluster mode: what to tell the other nodes about this node's
    /// devices. With `all`, every user with a device here (a snapshot,
    /// which replaces what the peers knew of this node); otherwise the
    /// users whose aggregate here changed since the last call, `None` for
    /// those with no device here any more. Empty in single-node mode.
    pub(crate) fn take_relayed(&mut self, all: bool) -> Vec<Relayed> {
        let Some(pending) = self.relay.as_mut() else {
            return Vec::new();
        };
        let users: Vec<UserId> = if all {
            pending.clear();
            self.users.keys().cloned().collect()
        } else {
            pending.drain().collect()
        };
        let mut out = Vec::new();
        for user in users {
            let Some(st) = self.users.get_mut(&user) else {
                continue;
            };
            let local = st.local();
            if all {
                st.relayed = local;
                if local.is_some() {
                    out.push(Relayed {
                        user: user.clone(),
                        status: local,
                        left_at_us: 0,
                    });
                }
            } else if local != st.relayed {
                st.relayed = local;
                out.push(Relayed {
                    user: user.clone(),
                    status: local,
                    left_at_us: if local.is_none() { st.local_left_us } else { 0 },
                });
            }
            self.forget_if_idle(&user);
        }
        out.sort_by(|a, b| a.user.cmp(&b.user));
        out
    }

    /// Applies what `peer` says about one user. Returns the user's
    /// departure if that was their last device anywhere. A user beyond the
    /// peer's `max_per_peer` is ignored (returns `None`, and `false` in
    /// the second place); otherwise the second place is `true`.
    pub(crate) fn apply_peer(
        &mut self,
        peer: &Peer,
        update: Relayed,
        now_us: u64,
    ) -> (Option<Departure>, bool) {
        let Some(status) = update.status else {
            let left = match update.left_at_us {
                0 => now_us,
                t => t.min(now_us),
            };
            return (self.remove_from_peer(peer, &update.user, left), true);
        };
        let listed = self.peers.entry(peer.clone()).or_default();
        if !listed.contains(&update.user) {
            if listed.len() >= self.max_per_peer {
                return (None, false);
            }
            listed.insert(update.user.clone());
        }
        let st = self
            .users
            .entry(update.user.clone())
            .or_insert_with(UserState::new);
        match st.remote.iter_mut().find(|(p, _)| p == peer) {
            Some((_, s)) if *s == status => return (None, true),
            Some((_, s)) => *s = status,
            None => {
                st.remote.push((peer.clone(), status));
                st.left_at_us = None;
            }
        }
        self.touched(&update.user, false);
        (None, true)
    }

    /// Everything `peer` said is replaced by `users` (a snapshot of its
    /// devices). Returns the departures: users it listed before and not
    /// now, with no device anywhere else. The second value counts users
    /// ignored beyond `max_per_peer`.
    pub(crate) fn replace_peer(
        &mut self,
        peer: &Peer,
        users: Vec<Relayed>,
        now_us: u64,
    ) -> (Vec<Departure>, usize) {
        let listed: FxHashSet<&UserId> = users
            .iter()
            .filter(|r| r.status.is_some())
            .map(|r| &r.user)
            .collect();
        let stale: Vec<UserId> = self
            .peers
            .get(peer)
            .map(|had| {
                had.iter()
                    .filter(|u| !listed.contains(u))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut departures: Vec<Departure> = stale
            .iter()
            .filter_map(|u| self.remove_from_peer(peer, u, now_us))
            .collect();
        let mut ignored = 0;
        for r in users.into_iter().filter(|r| r.status.is_some()) {
            let (gone, kept) = self.apply_peer(peer, r, now_us);
            departures.extend(gone);
            ignored += usize::from(!kept);
        }
        (departures, ignored)
    }

    /// `peer` left the cluster: everything it said is dropped. Returns the
    /// departures (at `now_us`) of the users it was the last node of.
    pub(crate) fn drop_peer(&mut self, peer: &Peer, now_us: u64) -> Vec<Departure> {
        let Some(users) = self.peers.remove(peer) else {
            return Vec::new();
        };
        users
            .iter()
            .filter_map(|u| self.remove_from_peer(peer, u, now_us))
            .collect()
    }

    /// The peers that reported users, and how many each.
    #[cfg(test)]
    pub(crate) fn peers(&self) -> Vec<(Peer, usize)> {
        let mut out: Vec<(Peer, usize)> = self
            .peers
            .iter()
            .map(|(p, u)| (p.clone(), u.len()))
            .collect();
        out.sort();
        out
    }

    fn remove_from_peer(
        &mut self,
        peer: &Peer,
        user: &UserId,
        left_at_us: u64,
    ) -> Option<Departure> {
        if let Some(listed) = self.peers.get_mut(peer) {
            listed.remove(user);
            if listed.is_empty() {
                self.peers.remove(peer);
            }
        }
        let st = self.users.get_mut(user)?;
        let before = st.remote.len();
        st.remote.retain(|(p, _)| p != peer);
        if st.remote.len() == before {
            return None;
        }
        let gone = !st.present();
        if gone {
            st.left_at_us = Some(left_at_us);
            st.unsaved = true;
        }
        self.touched(user, false);
        gone.then(|| (user.clone(), left_at_us))
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

    fn peer(s: &str) -> Peer {
        Peer::from(s)
    }

    fn says(user: &UserId, status: Option<PresenceStatus>, left_at_us: u64) -> Relayed {
        Relayed {
            user: user.clone(),
            status,
            left_at_us,
        }
    }

    fn cluster() -> PresenceState {
        let mut s = PresenceState::default();
        s.relay(100);
        s
    }

    #[test]
    fn devices_on_other_nodes_count_in_the_aggregate() {
        let mut s = cluster();
        let (a, b) = (u("alice"), u("bob"));
        s.connect(1, &a);
        assert_eq!(s.take_relayed(false), vec![says(&a, Some(Online), 0)]);
        assert_eq!(
            s.apply_peer(&peer("n2"), says(&a, Some(Away), 0), 10),
            (None, true)
        );
        s.take_changes();
        // Her device here leaves: she is still away on n2, nothing to store.
        assert!(!s.disconnect(1, &a, 100));
        assert_eq!(s.status(&a), Away);
        assert_eq!(s.take_changes()[0].status, Away);
        assert_eq!(s.left_at(&a), None, "connected elsewhere");
        // n2 says her last device there left at 150: that is her departure.
        let (gone, _) = s.apply_peer(&peer("n2"), says(&a, None, 150), 200);
        assert_eq!(gone, Some((a.clone(), 150)));
        assert_eq!(
            s.take_changes(),
            vec![Change {
                user: a.clone(),
                status: Offline,
                left_at_us: Some(150)
            }]
        );
        s.saved(&a);
        assert_eq!(s.take_relayed(false), vec![says(&a, None, 100)]);
        assert_eq!(s.len(), 0, "forgotten once stored and relayed");
        // A peer's time in the future is not believed; 0 means now.
        s.apply_peer(&peer("n2"), says(&b, Some(Online), 0), 300);
        assert_eq!(
            s.apply_peer(&peer("n2"), says(&b, None, 9_999), 400).0,
            Some((b.clone(), 400))
        );
        s.apply_peer(&peer("n2"), says(&b, Some(Online), 0), 500);
        assert_eq!(
            s.apply_peer(&peer("n2"), says(&b, None, 0), 600).0,
            Some((b.clone(), 600))
        );
        // Saying what is known changes nothing; gone from a peer that never
        // had the user is no departure.
        s.take_changes();
        s.apply_peer(&peer("n3"), says(&a, Some(Online), 0), 700);
        s.take_changes();
        s.apply_peer(&peer("n3"), says(&a, Some(Online), 0), 710);
        assert!(s.take_changes().is_empty());
        assert_eq!(s.apply_peer(&peer("n4"), says(&a, None, 0), 720).0, None);
        assert_eq!(s.status(&a), Online);
    }

    #[test]
    fn a_peer_leaving_takes_its_users_offline_unless_they_are_elsewhere() {
        let mut s = cluster();
        let (a, b, c, d) = (u("alice"), u("bob"), u("carol"), u("dave"));
        let (n2, n3) = (peer("n2"), peer("n3"));
        s.apply_peer(&n2, says(&a, Some(Online), 0), 1);
        s.apply_peer(&n2, says(&b, Some(Online), 0), 1);
        s.apply_peer(&n3, says(&b, Some(Away), 0), 1);
        s.apply_peer(&n2, says(&c, Some(Online), 0), 1);
        s.connect(7, &c);
        s.apply_peer(&n2, says(&d, Some(Offline), 0), 1);
        assert_eq!(s.take_changes().len(), 3, "alice, bob and carol online");
        assert_eq!(s.peers(), vec![(n2.clone(), 4), (n3.clone(), 1)]);
        let mut gone = s.drop_peer(&n2, 50);
        gone.sort();
        // Alice was only on n2; so was Dave, who appeared offline.
        assert_eq!(gone, vec![(a.clone(), 50), (d.clone(), 50)]);
        let changes = s.take_changes();
        assert_eq!(
            changes,
            vec![
                Change {
                    user: a.clone(),
                    status: Offline,
                    left_at_us: Some(50)
                },
                Change {
                    user: b.clone(),
                    status: Away,
                    left_at_us: None
                },
            ],
            "Bob is still away on n3, Carol online here, Dave was offline already"
        );
        assert_eq!((s.status(&b), s.status(&c)), (Away, Online));
        assert!(s.drop_peer(&n2, 60).is_empty(), "dropped once");
        assert_eq!(s.peers(), vec![(n3.clone(), 1)]);
        for user in [&a, &d] {
            s.saved(user);
        }
        assert_eq!(s.len(), 2, "bob and carol");
    }

    #[test]
    fn a_snapshot_replaces_what_a_peer_said() {
        let mut s = cluster();
        let (a, b, c) = (u("alice"), u("bob"), u("carol"));
        let n2 = peer("n2");
        s.apply_peer(&n2, says(&a, Some(Online), 0), 1);
        s.apply_peer(&n2, says(&b, Some(Online), 0), 1);
        s.take_changes();
        let (gone, ignored) = s.replace_peer(
            &n2,
            vec![
                says(&b, Some(Away), 0),
                says(&c, Some(Online), 0),
                says(&a, None, 0),
            ],
            20,
        );
        assert_eq!((gone, ignored), (vec![(a.clone(), 20)], 0));
        let got: Vec<_> = s
            .take_changes()
            .into_iter()
            .map(|c| (c.user, c.status))
            .collect();
        assert_eq!(got, vec![(a, Offline), (b, Away), (c, Online)]);
        assert_eq!(s.peers(), vec![(n2, 2)]);
    }

    #[test]
    fn a_peer_is_held_to_its_share() {
        let mut s = PresenceState::default();
        s.relay(2);
        let n2 = peer("n2");
        let users: Vec<UserId> = (0..4).map(|i| u(&format!("u{i}"))).collect();
        let kept: Vec<bool> = users
            .iter()
            .map(|x| s.apply_peer(&n2, says(x, Some(Online), 0), 1).1)
            .collect();
        assert_eq!(kept, vec![true, true, false, false]);
        assert_eq!(s.status(&users[2]), Offline);
        // A listed user may still change, and one leaving makes room.
        assert!(s.apply_peer(&n2, says(&users[0], Some(Away), 0), 2).1);
        s.apply_peer(&n2, says(&users[1], None, 0), 3);
        assert!(s.apply_peer(&n2, says(&users[3], Some(Online), 0), 4).1);
        let (_, ignored) = s.replace_peer(
            &n2,
            users.iter().map(|x| says(x, Some(Online), 0)).collect(),
            5,
        );
        assert_eq!(ignored, 2);
    }

    #[test]
    fn this_nodes_devices_are_relayed_coalesced() {
        let mut s = cluster();
        let (a, b) = (u("alice"), u("bob"));
        s.connect(1, &a);
        s.connect(2, &a);
        s.set(1, &a, Away);
        s.connect(3, &b);
        s.disconnect(3, &b, 40);
        // Bob came and went within one relay: nothing to say about him.
        assert_eq!(s.take_relayed(false), vec![says(&a, Some(Online), 0)]);
        assert!(s.take_relayed(false).is_empty());
        s.set(2, &a, Offline);
        s.apply_peer(&peer("n2"), says(&a, Some(Online), 0), 50);
        // Only this node's devices are relayed, not what peers said.
        assert_eq!(s.take_relayed(false), vec![says(&a, Some(Away), 0)]);
        s.connect(4, &b);
        assert_eq!(
            s.take_relayed(true),
            vec![says(&a, Some(Away), 0), says(&b, Some(Online), 0)],
            "a snapshot lists every user with a device here"
        );
        assert!(s.take_relayed(false).is_empty(), "the snapshot covered it");
        s.disconnect(1, &a, 60);
        assert!(!s.disconnect(2, &a, 70), "still online on n2");
        assert_eq!(s.take_relayed(false), vec![says(&a, None, 70)]);
        assert_eq!(s.take_relayed(true), vec![says(&b, Some(Online), 0)]);
        // Single-node mode relays nothing.
        let mut single = PresenceState::default();
        single.connect(1, &a);
        assert!(single.take_relayed(true).is_empty());
        assert_eq!(single.take_changes().len(), 1);
    }

    #[test]
    fn users_are_forgotten_only_once_relayed_published_and_stored() {
        let mut s = cluster();
        let a = u("alice");
        s.connect(1, &a);
        assert!(s.disconnect(1, &a, 10));
        s.saved(&a);
        s.take_changes();
        assert_eq!(s.len(), 1, "kept until the other nodes are told");
        s.take_relayed(false);
        assert_eq!(s.len(), 0);
    }
}
