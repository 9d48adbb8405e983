//! An in-memory [`RoomLog`], for tests and simulation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use confab_codec::{RoomId, Seq};

use super::Durability;
use super::{
    Append, IdemKey, LogBounds, MetaEntry, MetaWrite, Original, RoomLog, StorageError, StoredRecord,
};

/// Keeps every room's log in a `BTreeMap`. Nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryLog {
    rooms: Mutex<HashMap<RoomId, BTreeMap<u64, Bytes>>>,
    meta: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// The idempotency index: every entry on its own, and the marks.
    idem: Mutex<Idem>,
}

#[derive(Debug, Default)]
struct Idem {
    entries: HashMap<(String, RoomId, u64), Original>,
    marks: HashMap<String, u64>,
}

impl MemoryLog {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, BTreeMap<u64, Bytes>>> {
        // A poisoned lock only means another thread panicked mid-operation;
        // the maps themselves are always consistent between statements.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn idem(&self) -> std::sync::MutexGuard<'_, Idem> {
        self.idem.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn room_order(id: &RoomId) -> (usize, &[u8]) {
    (id.as_bytes().len(), id.as_bytes())
}

impl RoomLog for MemoryLog {
    fn commit(
        &self,
        batch: &[Append<'_>],
        meta: &[MetaWrite],
        _: Durability,
    ) -> Result<(), StorageError> {
        let mut rooms = self.lock();
        let mut m = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        for w in meta {
            match &w.value {
                Some(v) => m.insert(w.key.clone(), v.clone()),
                None => m.remove(&w.key),
            };
        }
        let mut idem = self.idem();
        for a in batch {
            rooms
                .entry(a.room.clone())
                .or_default()
                .insert(a.seq.0, Bytes::copy_from_slice(a.record));
            if let Some(w) = a.idem {
                let key = w.key;
                let original = Original {
                    seq: a.seq,
                    timestamp_us: a.timestamp_us,
                };
                idem.entries.insert(
                    (key.sender.to_owned(), a.room.clone(), key.client_msg_id),
                    original,
                );
                let mark = idem.marks.entry(key.sender.to_owned()).or_insert(0);
                *mark = (*mark).max(w.mark);
            }
        }
        Ok(())
    }

    fn bounds(&self, room: &RoomId) -> Result<LogBounds, StorageError> {
        let rooms = self.lock();
        let Some(log) = rooms.get(room) else {
            return Ok(LogBounds {
                head: Seq(0),
                first: Seq(1),
            });
        };
        let head = log.keys().next_back().copied().unwrap_or(0);
        let first = log.keys().next().copied().unwrap_or(head + 1);
        Ok(LogBounds {
            head: Seq(head),
            first: Seq(first),
        })
    }

    fn read_range(
        &self,
        room: &RoomId,
        from: Seq,
        to: Seq,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        let rooms = self.lock();
        let mut out = Vec::new();
        let mut bytes = 0;
        if from > to {
            return Ok(out);
        }
        if let Some(log) = rooms.get(room) {
            for (seq, rec) in log.range(from.0..=to.0) {
                if out.len() >= max_count || (!out.is_empty() && bytes + rec.len() > max_bytes) {
                    break;
                }
                bytes += rec.len();
                out.push(StoredRecord {
                    seq: Seq(*seq),
                    bytes: rec.clone(),
                });
            }
        }
        Ok(out)
    }

    fn read_before(
        &self,
        room: &RoomId,
        before: Seq,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        let rooms = self.lock();
        let mut out = Vec::new();
        let mut bytes = 0;
        if let Some(log) = rooms.get(room) {
            for (seq, rec) in log.range(..before.0).rev() {
                if out.len() >= max_count || (!out.is_empty() && bytes + rec.len() > max_bytes) {
                    break;
                }
                bytes += rec.len();
                out.push(StoredRecord {
                    seq: Seq(*seq),
                    bytes: rec.clone(),
                });
            }
        }
        out.reverse();
        Ok(out)
    }

    fn trim(
        &self,
        room: &RoomId,
        before: Seq,
        forget: &[IdemKey<'_>],
        _: Durability,
    ) -> Result<(), StorageError> {
        if let Some(log) = self.lock().get_mut(room) {
            let kept = log.split_off(&before.0);
            *log = kept;
        }
        let mut idem = self.idem();
        for key in forget {
            idem.entries
                .remove(&(key.sender.to_owned(), room.clone(), key.client_msg_id));
        }
        Ok(())
    }

    fn original(&self, room: &RoomId, key: IdemKey<'_>) -> Result<Option<Original>, StorageError> {
        Ok(self
            .idem()
            .entries
            .get(&(key.sender.to_owned(), room.clone(), key.client_msg_id))
            .copied())
    }

    fn high_water(&self, sender: &str) -> Result<u64, StorageError> {
        Ok(self.idem().marks.get(sender).copied().unwrap_or(0))
    }

    fn log_rooms(&self, after: Option<&RoomId>, limit: usize) -> Result<Vec<RoomId>, StorageError> {
        let rooms = self.lock();
        // Same order as the RocksDB keys: by length, then bytes.
        let mut ids: Vec<&RoomId> = rooms
            .keys()
            .filter(|id| after.is_none_or(|a| room_order(id) > room_order(a)))
            .collect();
        ids.sort_by(|a, b| room_order(a).cmp(&room_order(b)));
        Ok(ids.into_iter().take(limit).cloned().collect())
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .meta
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned())
    }

    fn meta_scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<MetaEntry>, StorageError> {
        let m = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        let start = after.map(<[u8]>::to_vec).unwrap_or_else(|| prefix.to_vec());
        Ok(m.range(start..)
            .filter(|(k, _)| Some(k.as_slice()) != after)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
