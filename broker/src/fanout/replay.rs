//! Catch-up batches shared by the devices of a room that lag together.
//!
//! When a busy room outruns many of its devices at once (one publisher,
//! thousands of subscribers), each of them switches to catch-up and reads
//! the same stretch of the log. Each device reads `catchup_batch`-aligned
//! ranges (see `read_batch`), so devices at about the same place ask for
//! the same ranges, and the encoded batch frame one of them read is handed
//! to the others instead of being read and encoded again: one log read and
//! one buffer per batch instead of one per device.
//!
//! A room remembers its recent batches only *weakly*: an entry lives as
//! long as some device's outbox still holds the frame, and costs nothing
//! once every device has written it. Nothing is kept for a device that is
//! alone in its place, and no memory stays behind after a burst.
//!
//! Retention: once a room is trimmed below `before`, no batch holding a
//! sequence under it is handed out again (and none is remembered), so a
//! shared batch never brings back what retention removed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// Most batches a room remembers.
const REMEMBERED: usize = 16;

/// A room's recent catch-up batches.
#[derive(Debug, Default)]
pub(crate) struct SharedBatches {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: VecDeque<Entry>,
    /// Sequences below this were trimmed.
    floor: u64,
}

#[derive(Debug)]
struct Entry {
    first: u64,
    last: u64,
    frame: Weak<Bytes>,
}

/// A shared frame's owner: the frame is freed when the last handle goes.
struct Owner(Arc<Bytes>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref()
    }
}

fn handle(frame: Arc<Bytes>) -> Bytes {
    Bytes::from_owner(Owner(frame))
}

impl SharedBatches {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain fields, consistent between statements.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A batch starting at `next` that ends at or before `seen` and that
    /// some device still holds: its last sequence and its frame.
    pub(crate) fn get(&self, next: u64, seen: u64) -> Option<(u64, Bytes)> {
        let mut inner = self.lock();
        if next < inner.floor {
            return None;
        }
        let mut found = None;
        inner.entries.retain(|e| {
            let Some(frame) = e.frame.upgrade() else {
                return false;
            };
            if found.is_none() && e.first == next && e.last <= seen {
                found = Some((e.last, handle(frame)));
            }
            true
        });
        found
    }

    /// Remembers the batch `first..=last` (its frame), and returns the
    /// handle to queue in its place.
    pub(crate) fn share(&self, first: u64, last: u64, frame: Bytes) -> Bytes {
        let mut inner = self.lock();
        if first < inner.floor {
            return frame;
        }
        inner
            .entries
            .retain(|e| e.frame.strong_count() > 0 && e.first != first);
        if inner.entries.len() >= REMEMBERED {
            inner.entries.pop_front();
        }
        let frame = Arc::new(frame);
        inner.entries.push_back(Entry {
            first,
            last,
            frame: Arc::downgrade(&frame),
        });
        handle(frame)
    }

    /// The room was trimmed below `before`: forgets the batches holding
    /// any of those sequences, and will not remember such batches again.
    pub(crate) fn forget_below(&self, before: u64) {
        let mut inner = self.lock();
        inner.floor = inner.floor.max(before);
        inner.entries.retain(|e| e.first >= before);
    }

    /// Batches remembered and still held by some device.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.lock()
            .entries
            .iter()
            .filter(|e| e.frame.strong_count() > 0)
            .count()
    }
}

/// The last sequence of the catch-up batch that starts at `next`: batches
/// end on multiples of `batch`, so that devices lagging at about the same
/// place read, and share, the same batches.
pub(crate) fn aligned_end(next: u64, batch: usize) -> u64 {
    let batch = (batch as u64).max(1);
    next.saturating_sub(1) / batch * batch + batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_end_on_multiples_of_the_batch_size() {
        assert_eq!(aligned_end(1, 256), 256);
        assert_eq!(aligned_end(256, 256), 256);
        assert_eq!(aligned_end(257, 256), 512);
        assert_eq!(aligned_end(300, 256), 512);
        assert_eq!(aligned_end(5, 1), 5);
        assert_eq!(aligned_end(0, 0), 1);
    }

    #[test]
    fn a_batch_is_shared_while_a_device_holds_it_and_then_forgotten() {
        let shared = SharedBatches::default();
        let frame = Bytes::from(vec![7u8; 1000]);
        let first = shared.share(1, 256, frame.clone());
        assert_eq!(first, frame);
        let (last, second) = shared.get(1, 300).expect("shared");
        assert_eq!(last, 256);
        assert_eq!(
            second.as_ptr(),
            first.as_ptr(),
            "the same buffer, not a copy"
        );
        assert!(
            shared.get(1, 255).is_none(),
            "past what the device has seen"
        );
        assert!(shared.get(2, 300).is_none(), "another start");
        drop((first, second));
        assert_eq!(shared.live(), 0, "nobody holds it: gone");
        assert!(shared.get(1, 300).is_none());
    }

    #[test]
    fn trimmed_batches_are_never_handed_out_again() {
        let shared = SharedBatches::default();
        let a = shared.share(1, 256, Bytes::from_static(b"a"));
        let b = shared.share(257, 512, Bytes::from_static(b"b"));
        shared.forget_below(300);
        assert!(shared.get(1, 1000).is_none());
        assert!(shared.get(257, 1000).is_none(), "holds 257..=299");
        let c = shared.share(257, 512, Bytes::from_static(b"c"));
        assert!(shared.get(257, 1000).is_none(), "not remembered either");
        let d = shared.share(513, 768, Bytes::from_static(b"d"));
        assert!(shared.get(513, 1000).is_some());
        drop((a, b, c, d));
    }

    #[test]
    fn a_room_remembers_a_bounded_number_of_batches() {
        let shared = SharedBatches::default();
        let held: Vec<Bytes> = (0..40u64)
            .map(|i| shared.share(i * 10 + 1, i * 10 + 10, Bytes::from(vec![0u8; 10])))
            .collect();
        assert_eq!(shared.live(), REMEMBERED);
        assert!(shared.get(391, 400).is_some(), "the newest are kept");
        assert!(shared.get(1, 10).is_none());
        drop(held);
    }
}
