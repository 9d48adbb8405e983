//! The deduplication window for publish retries.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use confab_codec::Seq;
use rustc_hash::FxHashMap;

use crate::rooms::Room;

/// (room, sender, client message id). The room is compared by identity:
/// the sequencer holds every `Room` it has seen for the process lifetime.
#[derive(Debug, Clone)]
pub(crate) struct DedupKey {
    pub(crate) room: Arc<Room>,
    /// `user \0 device`.
    pub(crate) sender: Arc<str>,
    pub(crate) client_msg_id: u64,
}

impl PartialEq for DedupKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.room, &other.room)
            && self.client_msg_id == other.client_msg_id
            && self.sender == other.sender
    }
}

impl Eq for DedupKey {}

impl Hash for DedupKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.room) as usize).hash(state);
        self.sender.hash(state);
        self.client_msg_id.hash(state);
    }
}

/// What a remembered publish got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Original {
    pub(crate) seq: Seq,
    pub(crate) timestamp_us: u64,
}

/// A bounded map from recent publishes to their sequence, forgetting the
/// oldest first.
#[derive(Debug)]
pub(crate) struct Dedup {
    map: FxHashMap<DedupKey, Original>,
    order: VecDeque<DedupKey>,
    capacity: usize,
}

impl Dedup {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: FxHashMap::default(),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub(crate) fn get(&self, key: &DedupKey) -> Option<Original> {
        self.map.get(key).copied()
    }

    pub(crate) fn insert(&mut self, key: DedupKey, original: Original) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(key.clone(), original).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    /// Forgets a key inserted by a batch whose commit failed.
    pub(crate) fn remove(&mut self, key: &DedupKey) {
        if self.map.remove(key).is_some() {
            if let Some(pos) = self.order.iter().rposition(|k| k == key) {
                self.order.remove(pos);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_codec::RoomId;

    #[test]
    fn bounded_fifo() {
        let room = Arc::new(Room::new(RoomId::new("r").expect("id")));
        let sender: Arc<str> = Arc::from("u\0d");
        let key = |id| DedupKey {
            room: room.clone(),
            sender: sender.clone(),
            client_msg_id: id,
        };
        let mut d = Dedup::new(2);
        let o = |s| Original {
            seq: Seq(s),
            timestamp_us: 0,
        };
        d.insert(key(1), o(1));
        d.insert(key(2), o(2));
        assert_eq!(d.get(&key(1)), Some(o(1)));
        d.insert(key(3), o(3));
        assert_eq!(d.get(&key(1)), None, "oldest forgotten");
        assert_eq!(d.len(), 2);
        d.remove(&key(3));
        assert_eq!(d.get(&key(3)), None);
        assert_eq!(d.get(&key(2)), Some(o(2)));
    }
}
