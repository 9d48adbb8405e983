//! Idempotency of publishes: a retry of a stored publish gets its original
//! sequence for as long as the message is retained, across restarts, with
//! bounded memory.
//!
//! The source of truth is the storage's idempotency index, written in the
//! same atomic batch as the message (see [`crate::storage::IdemWrite`]).
//! Reading it for every publish would cost a point lookup each, so two
//! bounded caches stand in front of it:
//!
//! - the most recent publishes and their originals (`storage.dedup_window`
//!   of them), which answers most retries (a reconnect re-sends what was in
//!   flight a moment ago) without touching the disk;
//! - per device, an upper bound of the client message ids it has stored
//!   (its *high-water mark*, stored with its publishes and read once, the
//!   first time the device publishes after a start). A device that numbers its
//!   publishes upwards, as the SDK does, only ever sends ids above its mark
//!   unless it retries, so new publishes skip the index altogether.
//!
//! Only a publish at or below its device's mark and not among the recent
//! ones is looked up in the index. The mark may be too high (after a failed
//! commit) but never too low, so a lookup that finds nothing is the truth.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::core::{mismatch, Halt};
use super::reads::{Answer, Need, Reads};
use crate::rooms::Room;
use crate::storage::{IdemKey, Original};

/// Devices whose high-water marks are cached, per generation (two
/// generations are kept: up to twice this many).
const SENDERS_PER_GENERATION: usize = 32_768;

/// (room, sender, client message id). The room is compared by identity: a
/// room reloaded after being dropped is a new `Room`, which only makes the
/// cache miss and the index answer.
#[derive(Debug, Clone)]
pub(crate) struct DedupKey {
    pub(crate) room: Arc<Room>,
    /// `user \0 device`.
    pub(crate) sender: Arc<str>,
    pub(crate) client_msg_id: u64,
}

impl DedupKey {
    /// The storage key of this publish.
    pub(crate) fn idem(&self) -> IdemKey<'_> {
        IdemKey {
            sender: &self.sender,
            client_msg_id: self.client_msg_id,
        }
    }
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

/// The answer of [`Idempotency::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Stored before: answer with the original.
    Duplicate(Original),
    /// Not stored; `fresh` if above every id of its device.
    New { fresh: bool },
}

/// The sequencer's idempotency state.
#[derive(Debug)]
pub(crate) struct Idempotency {
    recent: Recent,
    marks: Marks,
    /// Lookups that had to read the index (for tests and metrics).
    index_reads: u64,
}

impl Idempotency {
    /// Remembers up to `window` recent publishes in memory.
    pub(crate) fn new(window: usize) -> Self {
        Self {
            recent: Recent::new(window),
            marks: Marks::default(),
            index_reads: 0,
        }
    }

    /// Whether a publish under `key` in a room whose first retained
    /// sequence is `first` was stored before (or staged in the group being
    /// built), and if not, whether its id is fresh (above every id its
    /// device stored: see [`crate::storage::IdemWrite::fresh`]). What is
    /// not in memory is asked of `reads`.
    ///
    /// # Errors
    /// [`Halt::Wait`] while the device's mark or the index entry is read;
    /// a refusal if the read failed (the publish must not be stored).
    pub(crate) fn lookup(
        &mut self,
        reads: &mut Reads,
        key: &DedupKey,
        first: u64,
    ) -> Result<Lookup, Halt> {
        if let Some(original) = self.recent.get(key).filter(|o| o.seq.0 >= first) {
            return Ok(Lookup::Duplicate(original));
        }
        let mark = match self.marks.get(&key.sender) {
            Some(mark) => mark,
            None => match reads.take(Need::Mark(key.sender.clone())) {
                None => return Err(Halt::Wait),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Answer::Mark(mark))) => self.marks.raise(&key.sender, mark),
                Some(Ok(other)) => return Err(mismatch(&other)),
            },
        };
        if key.client_msg_id > mark {
            return Ok(Lookup::New { fresh: true });
        }
        let need = Need::Original {
            room: key.room.id.clone(),
            sender: key.sender.clone(),
            client_msg_id: key.client_msg_id,
        };
        let original = match reads.take(need) {
            None => return Err(Halt::Wait),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Answer::Original(original))) => original,
            Some(Ok(other)) => return Err(mismatch(&other)),
        };
        self.index_reads += 1;
        // Retries not answered from memory (and random-id clients).
        metrics::counter!("confab_dedup_index_reads_total").increment(1);
        // An original that retention removed is gone: the publish is new.
        Ok(match original {
            Some(original) if original.seq.0 >= first => Lookup::Duplicate(original),
            _ => Lookup::New { fresh: false },
        })
    }

    /// Remembers a publish staged for the next commit; returns its
    /// device's high-water mark with it (to be stored with it).
    pub(crate) fn record(&mut self, key: DedupKey, original: Original) -> u64 {
        let mark = self.marks.raise(&key.sender, key.client_msg_id);
        self.recent.insert(key, original);
        mark
    }

    /// Forgets a publish whose commit failed. Its device's mark stays: a
    /// mark that is too high only costs an index read.
    pub(crate) fn forget(&mut self, key: &DedupKey) {
        self.recent.remove(key);
    }

    /// Forgets a device's cached mark: it is read again (`high_water`)
    /// before its next publish is judged. For a storage whose mark can be
    /// too low (cluster mode: each node knows the ids of the rooms it
    /// writes) and that refused a commit for it.
    pub(crate) fn forget_mark(&mut self, sender: &Arc<str>) {
        self.marks.current.remove(sender);
        self.marks.previous.remove(sender);
    }

    /// Called after each group: the window goes back to its size.
    pub(crate) fn end_group(&mut self) {
        self.recent.shrink();
    }

    /// How many lookups read the index.
    #[cfg(test)]
    pub(crate) fn index_reads(&self) -> u64 {
        self.index_reads
    }
}

/// Per device, an upper bound of the client message ids it has stored, in
/// two generations: when the current one is full it becomes the previous
/// one and the old previous one is dropped (its devices reload their mark
/// from the index when they next publish).
#[derive(Debug, Default)]
struct Marks {
    current: FxHashMap<Arc<str>, u64>,
    previous: FxHashMap<Arc<str>, u64>,
}

impl Marks {
    fn get(&mut self, sender: &Arc<str>) -> Option<u64> {
        if let Some(mark) = self.current.get(sender) {
            return Some(*mark);
        }
        let mark = self.previous.remove(sender)?;
        self.insert(sender.clone(), mark);
        Some(mark)
    }

    /// Raises `sender`'s mark to at least `id`. A device with no mark
    /// cached gets one only when it is known to bound every stored id: the
    /// caller loaded it from the index or it is already cached.
    fn raise(&mut self, sender: &Arc<str>, id: u64) -> u64 {
        if let Some(mark) = self.current.get_mut(sender) {
            *mark = (*mark).max(id);
            return *mark;
        }
        let mark = self.previous.remove(sender).map_or(id, |m| m.max(id));
        self.insert(sender.clone(), mark);
        mark
    }

    fn insert(&mut self, sender: Arc<str>, mark: u64) {
        if self.current.len() >= SENDERS_PER_GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(sender, mark);
    }
}

/// A bounded map from recent publishes to their originals, forgetting the
/// oldest first.
#[derive(Debug)]
struct Recent {
    map: FxHashMap<DedupKey, Original>,
    order: VecDeque<DedupKey>,
    capacity: usize,
}

impl Recent {
    fn new(capacity: usize) -> Self {
        Self {
            map: FxHashMap::default(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn get(&self, key: &DedupKey) -> Option<Original> {
        self.map.get(key).copied()
    }

    /// Remembers a publish. Nothing is forgotten until [`Recent::shrink`],
    /// so that the publishes of the group being built are all found,
    /// however large the group.
    fn insert(&mut self, key: DedupKey, original: Original) {
        if self.map.insert(key.clone(), original).is_none() {
            self.order.push_back(key);
        }
    }

    /// Forgets the oldest publishes beyond the capacity.
    fn shrink(&mut self) {
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    fn remove(&mut self, key: &DedupKey) {
        if self.map.remove(key).is_some() {
            if let Some(pos) = self.order.iter().rposition(|k| k == key) {
                self.order.remove(pos);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use confab_codec::{RoomId, Seq};

    use super::*;
    use crate::config::Durability;
    use crate::storage::{Append, IdemWrite, MemoryLog, RoomLog};

    fn o(s: u64) -> Original {
        Original {
            seq: Seq(s),
            timestamp_us: s * 10,
        }
    }

    #[test]
    fn recent_is_a_bounded_fifo() {
        let room = Arc::new(Room::new(RoomId::new("r").expect("id")));
        let sender: Arc<str> = Arc::from("u\0d");
        let key = |id| DedupKey {
            room: room.clone(),
            sender: sender.clone(),
            client_msg_id: id,
        };
        let mut d = Recent::new(2);
        d.insert(key(1), o(1));
        d.insert(key(2), o(2));
        assert_eq!(d.get(&key(1)), Some(o(1)));
        d.insert(key(3), o(3));
        assert_eq!(d.get(&key(1)), Some(o(1)), "kept until the group ends");
        d.shrink();
        assert_eq!(d.get(&key(1)), None, "oldest forgotten");
        assert_eq!(d.map.len(), 2);
        d.remove(&key(3));
        assert_eq!(d.get(&key(3)), None);
        assert_eq!(d.get(&key(2)), Some(o(2)));
    }

    #[test]
    fn marks_keep_two_generations() {
        let mut m = Marks::default();
        let a: Arc<str> = Arc::from("a");
        m.raise(&a, 5);
        m.raise(&a, 3);
        assert_eq!(m.get(&a), Some(5), "a mark never goes down");
        for i in 0..SENDERS_PER_GENERATION {
            m.raise(&Arc::from(format!("s{i}")), 1);
        }
        assert_eq!(m.get(&a), Some(5), "kept in the previous generation");
        for i in 0..2 * SENDERS_PER_GENERATION {
            m.raise(&Arc::from(format!("t{i}")), 1);
        }
        assert_eq!(m.get(&a), None, "dropped after two generations");
    }

    /// A lookup, with the reads it asks for made at once.
    fn look(d: &mut Idempotency, log: &MemoryLog, key: &DedupKey, first: u64) -> Lookup {
        let mut reads = Reads::default();
        for _ in 0..3 {
            match d.lookup(&mut reads, key, first) {
                Ok(found) => return found,
                Err(Halt::Wait) => {
                    for need in reads.take_wanted() {
                        let answer = crate::sequencer::reads::read(log, &need);
                        reads.supply(crate::sequencer::reads::Loaded { need, answer });
                    }
                }
                Err(Halt::Refuse(code, message)) => panic!("refused: {code:?} {message}"),
            }
        }
        panic!("a lookup needs at most two reads");
    }

    #[test]
    fn the_index_answers_what_the_window_forgot() {
        let log = MemoryLog::new();
        let room = Arc::new(Room::new(RoomId::new("r").expect("id")));
        let sender: Arc<str> = Arc::from("u\0d");
        let key = |id| DedupKey {
            room: room.clone(),
            sender: sender.clone(),
            client_msg_id: id,
        };
        let appends: Vec<Append<'_>> = (1..=10u64)
            .map(|i| Append {
                room: &room.id,
                seq: Seq(i),
                record: b"x",
                idem: Some(IdemWrite {
                    key: IdemKey {
                        sender: &sender,
                        client_msg_id: 100 + i,
                    },
                    fresh: true,
                    mark: 100 + i,
                }),
                timestamp_us: i * 10,
            })
            .collect();
        log.append_batch(&appends, Durability::Wal).expect("append");

        // A fresh state (a restart) with a window of one.
        let mut d = Idempotency::new(1);
        assert_eq!(look(&mut d, &log, &key(104), 1), Lookup::Duplicate(o(4)));
        assert_eq!(d.index_reads(), 1);
        // Above the mark: new, without reading the index.
        assert_eq!(
            look(&mut d, &log, &key(111), 1),
            Lookup::New { fresh: true }
        );
        assert_eq!(d.index_reads(), 1);
        // Below the mark but never stored: the index says so.
        assert_eq!(
            look(&mut d, &log, &key(50), 1),
            Lookup::New { fresh: false }
        );
        assert_eq!(d.index_reads(), 2);
        // Staged publishes are found in the window.
        d.record(key(111), o(11));
        assert_eq!(look(&mut d, &log, &key(111), 1), Lookup::Duplicate(o(11)));
        d.forget(&key(111));
        // Forgotten (failed commit): the mark stays high, the index decides.
        assert_eq!(
            look(&mut d, &log, &key(111), 1),
            Lookup::New { fresh: false }
        );
        assert_eq!(d.index_reads(), 3);
        // Retention removed seq 4: a retry of it is new.
        assert_eq!(
            look(&mut d, &log, &key(104), 5),
            Lookup::New { fresh: false }
        );
    }
}
