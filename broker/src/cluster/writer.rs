//! A room's one writer: takes the room over from the stream, appends
//! fenced on its own last chunk, and steps down when JetStream refuses.

use std::collections::VecDeque;
use std::sync::Arc;

use confab_codec::{EventRecord, RoomId, Seq};
use rustc_hash::FxHashMap;
use tracing::{info, warn};

use super::chunk;
use super::log::{ChunkRef, JetStreamLog, PublishFailure};
use super::ClusterError;
use crate::base::sender_key;
use crate::storage::{Append, Original};

/// What an append stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The room's head after it.
    pub head: Seq,
    /// The chunks written, in order (more than one when the records
    /// exceeded `max_chunk_bytes`).
    pub chunks: Vec<ChunkRef>,
}

/// The writer of one room on the node that owns it.
///
/// It holds what the stream said when it took the room over (the head,
/// the stream sequence of the room's last chunk, the originals of the
/// last `window` publishes that carry a client message id) and keeps them
/// up to date with its own appends. Every append is conditional on the
/// room's last chunk being the one it wrote last; when JetStream refuses
/// one, someone else wrote the room, and this writer steps down for good
/// (every later append is refused without asking JetStream). To write the
/// room again, take it over again.
#[derive(Debug)]
pub struct RoomWriter {
    log: Arc<JetStreamLog>,
    room: RoomId,
    /// Written into each chunk: tells this writer's chunks from others'.
    token: String,
    head: Seq,
    last_stream_seq: u64,
    stepped_down: bool,
    window: usize,
    /// Originals by sender (`user \0 device`) and client message id.
    originals: FxHashMap<Arc<str>, FxHashMap<u64, Original>>,
    /// The same, oldest first, to forget beyond `window`.
    order: VecDeque<(Arc<str>, u64)>,
}

impl RoomWriter {
    /// Takes `room` over: reads its last chunk from the stream's leader
    /// (the head, and the stream sequence every append will be fenced on)
    /// and the records of the last `window` sequences, to know the
    /// originals of the publishes a client may retry. `token` names this
    /// writer in its chunks; it must be unique to this takeover (for
    /// example the node id and a fresh random number).
    ///
    /// The head is only a belief until the first append: if another writer
    /// appends after this read, that append is refused and this writer
    /// steps down. So a takeover needs no lock, only the fence.
    ///
    /// # Errors
    /// If JetStream fails, a chunk does not decode, or the replica that
    /// answered the reads is behind the leader (take over again).
    pub async fn take_over(
        log: Arc<JetStreamLog>,
        room: RoomId,
        token: impl Into<String>,
        window: usize,
    ) -> Result<Self, ClusterError> {
        let last = log.last_fetched(&room).await?;
        let (head, last_stream_seq) = last
            .as_ref()
            .map_or((Seq(0), 0), |f| (f.at.last, f.at.stream_seq));
        let mut w = Self {
            log,
            room,
            token: token.into(),
            head,
            last_stream_seq,
            stepped_down: false,
            window,
            originals: FxHashMap::default(),
            order: VecDeque::new(),
        };
        if head.0 > 0 && window > 0 {
            let from = Seq(head.0.saturating_sub(window as u64 - 1).max(1));
            let recs = w
                .log
                .read_range(&w.room, from, head, window, usize::MAX)
                .await?;
            if recs.last().map(|r| r.seq) != Some(head) {
                return Err(ClusterError::Nats(format!(
                    "room {}: the replica read is behind the head {}; take over again",
                    w.room, head.0
                )));
            }
            for r in recs {
                let ev = EventRecord::decode(r.bytes).map_err(|_| ClusterError::Corrupt {
                    room: w.room.to_string(),
                    stream_seq: 0,
                    why: "a record does not decode",
                })?;
                if ev.seq != r.seq {
                    return Err(ClusterError::Corrupt {
                        room: w.room.to_string(),
                        stream_seq: 0,
                        why: "a record's sequence is not its place in the chunk",
                    });
                }
                if ev.client_msg_id != 0 {
                    let sender = sender_key(ev.sender.as_str(), ev.device.as_str());
                    w.learn(
                        sender,
                        ev.client_msg_id,
                        Original {
                            seq: ev.seq,
                            timestamp_us: ev.timestamp_us,
                        },
                    );
                }
            }
        }
        info!(room = %w.room, head = w.head.0, originals = w.order.len(), "room taken over");
        Ok(w)
    }

    /// The room.
    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// The last sequence stored, as far as this writer knows.
    pub fn head(&self) -> Seq {
        self.head
    }

    /// The stream sequence of the room's last chunk, as far as this writer
    /// knows: what its next append is fenced on.
    pub fn last_stream_seq(&self) -> u64 {
        self.last_stream_seq
    }

    /// Whether it may still write the room (it has not stepped down).
    pub fn is_writer(&self) -> bool {
        !self.stepped_down
    }

    /// The original of a publish of `sender` (`user \0 device`) with this
    /// client message id, among the last `window` sequences at takeover
    /// and everything this writer stored since (the newest `window`).
    pub fn original(&self, sender: &str, client_msg_id: u64) -> Option<Original> {
        self.originals.get(sender)?.get(&client_msg_id).copied()
    }

    /// The highest client message id of `sender` among the originals it
    /// knows.
    pub fn highest(&self, sender: &str) -> Option<u64> {
        self.originals.get(sender)?.keys().max().copied()
    }

    /// How many originals it knows.
    pub fn originals_known(&self) -> usize {
        self.order.len()
    }

    fn learn(&mut self, sender: Arc<str>, id: u64, original: Original) {
        self.originals
            .entry(sender.clone())
            .or_default()
            .insert(id, original);
        self.order.push_back((sender, id));
        while self.order.len() > self.window {
            let Some((s, id)) = self.order.pop_front() else {
                break;
            };
            if let Some(ids) = self.originals.get_mut(&s) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.originals.remove(&s);
                }
            }
        }
    }

    /// Appends `batch` (this room's entries, numbered from `head + 1` with
    /// no gap) as one chunk, or several in order if they exceed
    /// `max_chunk_bytes`, each fenced on the chunk before it.
    ///
    /// On any error, [`Self::head`] says what is stored: the chunks
    /// before the failing one are. A chunk whose acknowledgement is lost
    /// is looked up in the stream: stored by this writer, it counts as
    /// appended; another writer's chunk in its place means this writer was
    /// fenced.
    ///
    /// # Errors
    /// [`ClusterError::Fenced`] when JetStream refused the append (this
    /// writer stepped down), [`ClusterError::SteppedDown`] if it had
    /// before, [`ClusterError::InvalidAppend`] for a batch not numbered
    /// from the head, [`ClusterError::Nats`] when JetStream failed and the
    /// chunk is not stored (the writer may try again).
    pub async fn append(&mut self, batch: &[Append<'_>]) -> Result<Appended, ClusterError> {
        if self.stepped_down {
            return Err(ClusterError::SteppedDown(self.room.to_string()));
        }
        for (i, a) in batch.iter().enumerate() {
            if *a.room != self.room || a.seq.0 != self.head.0 + 1 + i as u64 {
                return Err(ClusterError::InvalidAppend(format!(
                    "entry {i} is {}/{}, expected {}/{}",
                    a.room,
                    a.seq.0,
                    self.room,
                    self.head.0 + 1 + i as u64
                )));
            }
        }
        let records: Vec<&[u8]> = batch.iter().map(|a| a.record).collect();
        let mut chunks = Vec::new();
        for run in chunk::split(&records, self.log.config().max_chunk_bytes) {
            let first = self.head.next();
            let expected = self.last_stream_seq;
            let published = self
                .log
                .publish_chunk(
                    &self.room,
                    expected,
                    first,
                    &records[run.clone()],
                    &self.token,
                )
                .await;
            let at = match published {
                Ok(at) => at,
                Err(PublishFailure::Refused) => return Err(self.step_down(expected)),
                Err(PublishFailure::Unknown(e)) => {
                    let last = Seq(first.0 + run.len() as u64 - 1);
                    self.reconcile(expected, first, last, e).await?
                }
            };
            self.head = at.last;
            self.last_stream_seq = at.stream_seq;
            for a in &batch[run] {
                if let Some(w) = a.idem {
                    self.learn(
                        Arc::from(w.key.sender),
                        w.key.client_msg_id,
                        Original {
                            seq: a.seq,
                            timestamp_us: a.timestamp_us,
                        },
                    );
                }
            }
            chunks.push(at);
        }
        Ok(Appended {
            head: self.head,
            chunks,
        })
    }

    fn step_down(&mut self, expected: u64) -> ClusterError {
        self.stepped_down = true;
        warn!(room = %self.room, expected, "append refused: another writer appended; stepping down");
        ClusterError::Fenced {
            room: self.room.to_string(),
            expected,
        }
    }

    /// After an append whose outcome is unknown: the room's last chunk
    /// says. Unchanged: not stored. This writer's chunk `first..=last`:
    /// stored. Anything else: another writer appended; step down.
    async fn reconcile(
        &mut self,
        expected: u64,
        first: Seq,
        last: Seq,
        cause: ClusterError,
    ) -> Result<ChunkRef, ClusterError> {
        let now = match self.log.last_fetched(&self.room).await {
            Ok(now) => now,
            // Not known either way: the next append (fenced on the same
            // chunk) settles it.
            Err(_) => return Err(cause),
        };
        match now {
            None if expected == 0 => Err(cause),
            Some(f) if f.at.stream_seq == expected => Err(cause),
            Some(f)
                if f.writer.as_deref() == Some(self.token.as_str())
                    && f.at.first == first
                    && f.at.last == last =>
            {
                Ok(f.at)
            }
            _ => Err(self.step_down(expected)),
        }
    }
}
