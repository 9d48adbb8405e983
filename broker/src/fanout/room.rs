//! Rooms as the running broker knows them: each room's subscriber
//! snapshot, shared by the sequencer (which hands committed events to the
//! fan-out) and the fan-out (the only writer of the snapshots).

use std::sync::Arc;

use arc_swap::ArcSwap;
use confab_codec::RoomId;

use super::replay::SharedBatches;
use super::Subscription;

/// One room as the running broker knows it.
///
/// The subscriber set is a copy-on-write snapshot: the fan-out thread, the
/// only writer, swaps in a new vector on subscribe and unsubscribe; readers
/// load the current one without taking any lock.
#[derive(Debug)]
pub(crate) struct Room {
    pub(crate) id: RoomId,
    subscribers: ArcSwap<Vec<Arc<Subscription>>>,
    /// Catch-up batches that lagging devices share.
    pub(crate) replay: SharedBatches,
}

impl Room {
    pub(crate) fn new(id: RoomId) -> Self {
        Self {
            id,
            subscribers: ArcSwap::from_pointee(Vec::new()),
            replay: SharedBatches::default(),
        }
    }

    /// The current subscribers (lock-free).
    pub(crate) fn subscribers(&self) -> arc_swap::Guard<Arc<Vec<Arc<Subscription>>>> {
        self.subscribers.load()
    }

    /// Adds a subscriber, replacing `replaces` if given.
    pub(crate) fn add_subscriber(
        &self,
        sub: &Arc<Subscription>,
        replaces: Option<&Arc<Subscription>>,
    ) {
        self.subscribers.rcu(|current| {
            let mut next: Vec<Arc<Subscription>> = current
                .iter()
                .filter(|s| replaces.is_none_or(|r| !Arc::ptr_eq(s, r)))
                .cloned()
                .collect();
            next.push(sub.clone());
            next
        });
    }

    /// Removes a subscriber.
    pub(crate) fn remove_subscriber(&self, sub: &Arc<Subscription>) {
        self.subscribers.rcu(|current| {
            current
                .iter()
                .filter(|s| !Arc::ptr_eq(s, sub))
                .cloned()
                .collect::<Vec<_>>()
        });
    }
}

/// Every room the running broker has touched, by id.
///
/// Looked up when a device subscribes; the publish path never touches it
/// (the sequencer keeps its own map).
#[derive(Debug, Default)]
pub(crate) struct RoomRegistry {
    rooms: std::sync::RwLock<std::collections::HashMap<RoomId, Arc<Room>>>,
}

impl RoomRegistry {
    /// The room with this id, created on first use.
    pub(crate) fn get_or_create(&self, id: &RoomId) -> Arc<Room> {
        if let Some(room) = self.get(id) {
            return room;
        }
        self.rooms
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_insert_with(|| Arc::new(Room::new(id.clone())))
            .clone()
    }

    /// The room with this id, if it was touched since start.
    pub(crate) fn get(&self, id: &RoomId) -> Option<Arc<Room>> {
        self.rooms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Drops the rooms nothing else holds: no subscription, no typing
    /// state, not the sequencer's (which drops its idle rooms first).
    /// Returns how many are left.
    ///
    /// Under the write lock nobody can take a new reference out of the
    /// map, so a count of one is final: the room is dropped, and the next
    /// lookup makes a new one.
    pub(crate) fn evict_unused(&self) -> usize {
        let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
        rooms.retain(|_, room| Arc::strong_count(room) > 1);
        if rooms.capacity() > 1024 && rooms.len() < rooms.capacity() / 4 {
            rooms.shrink_to_fit();
        }
        rooms.len()
    }

    /// Every room touched since start (for the metrics scrape, not the
    /// message path: it copies the list under the read lock).
    pub(crate) fn all(&self) -> Vec<Arc<Room>> {
        self.rooms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
