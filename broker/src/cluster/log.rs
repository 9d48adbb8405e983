//! The room logs on JetStream: one stream, one subject per room, one
//! message (a [chunk](super::chunk)) per commit of a room.
//!
//! JetStream numbers messages across the whole stream; a room's sequences
//! are its own (1, 2, 3...), carried in each chunk. The log finds the
//! chunk that holds a room sequence by a binary search over stream
//! sequences with JetStream's "next message of this subject at or after
//! stream sequence s" direct get (room sequences grow with stream
//! sequences within a subject), and remembers the chunks it has seen per
//! room, so a read near something already read costs one get per chunk.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use confab_codec::{RoomId, Seq};
use rustc_hash::FxHashMap;

use super::chunk::{self, Chunk};
use super::error::nats;
use super::names::{check_name, room_subject};
use super::ClusterError;
use crate::storage::{LogBounds, StoredRecord};

/// The header naming the writer that appended a chunk (its takeover
/// token): after an append whose acknowledgement was lost, a writer finds
/// out from it whether the room's last chunk is its own.
pub(crate) const WRITER_HEADER: &str = "Confab-Writer";

/// Where the room logs live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The JetStream stream holding every room's log.
    pub stream: String,
    /// Room subjects are `<prefix>.<room id in hex>`; the stream captures
    /// `<prefix>.>` and nothing else.
    pub subject_prefix: String,
    /// JetStream republishes every chunk it stores on
    /// `<fanout_prefix>.<room id in hex>` (RePublish), for the nodes that
    /// follow the room ([`crate::cluster::Follower`]).
    pub fanout_prefix: String,
    /// Replicas of the stream: 1 on a single nats-server, 3 on a
    /// three-server NATS cluster.
    pub replicas: usize,
    /// Keep the stream in memory instead of files (tests and benchmarks
    /// only: a nats-server restart loses it).
    pub in_memory: bool,
    /// The largest chunk, in bytes: a commit of a room above it is
    /// appended as several chunks, each fenced on the one before. Must
    /// stay under the server's `max_payload` (1 MiB by default).
    pub max_chunk_bytes: usize,
    /// Chunks remembered per room for reads (about 40 bytes each).
    pub index_per_room: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            stream: "CONFAB_ROOMS".into(),
            subject_prefix: "confab.room".into(),
            fanout_prefix: "confab.fan".into(),
            replicas: 1,
            in_memory: false,
            max_chunk_bytes: 256 * 1024,
            index_per_room: 1024,
        }
    }
}

impl LogConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`ClusterError::Config`] naming the setting.
    pub fn validate(&self) -> Result<(), ClusterError> {
        check_name("stream", &self.stream, false)?;
        check_name("subject_prefix", &self.subject_prefix, true)?;
        check_name("fanout_prefix", &self.fanout_prefix, true)?;
        let (a, b) = (&self.subject_prefix, &self.fanout_prefix);
        if a == b || a.starts_with(&format!("{b}.")) || b.starts_with(&format!("{a}.")) {
            return Err(ClusterError::Config(format!(
                "fanout_prefix {b:?} must not overlap subject_prefix {a:?}"
            )));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(ClusterError::Config(format!(
                "replicas {}: JetStream allows 1 to 5",
                self.replicas
            )));
        }
        if !(1024..=8 * 1024 * 1024).contains(&self.max_chunk_bytes) {
            return Err(ClusterError::Config(format!(
                "max_chunk_bytes {}: use 1 KiB to 8 MiB (and under the server's max_payload)",
                self.max_chunk_bytes
            )));
        }
        if self.index_per_room == 0 {
            return Err(ClusterError::Config(
                "index_per_room must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Where a chunk is: its stream sequence and the room sequences it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    /// Its JetStream stream sequence.
    pub stream_seq: u64,
    /// The room sequence of its first record.
    pub first: Seq,
    /// The room sequence of its last record.
    pub last: Seq,
}

/// A chunk read from the stream, with who wrote it.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) at: ChunkRef,
    pub(crate) chunk: Chunk,
    pub(crate) writer: Option<String>,
}

/// How an append failed.
#[derive(Debug)]
pub(crate) enum PublishFailure {
    /// JetStream refused it: the room's last chunk is not the expected
    /// one. Nothing of it is stored.
    Refused,
    /// Anything else. It may or may not be stored (a lost
    /// acknowledgement): the writer must look.
    Unknown(ClusterError),
}

/// JetStream's "wrong last sequence" without the sequence: what a
/// replicated stream answers when the condition fails against a publish
/// still in flight on the subject (async-nats maps only 10071).
const WRONG_LAST_SEQUENCE_IN_FLIGHT: jetstream::ErrorCode = jetstream::ErrorCode(10164);

/// Whether JetStream refused an append because the subject's last message
/// is not the expected one (nothing of it stored): error 10071, or 10164
/// on a replicated stream when another conditional publish on the subject
/// is in flight (which, one writer having one append in flight per room,
/// is another writer's).
fn is_refusal(e: &jetstream::context::PublishError) -> bool {
    if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence {
        return true;
    }
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| j.error_code() == WRONG_LAST_SEQUENCE_IN_FLIGHT)
}

/// Every room's log in one JetStream stream.
pub struct JetStreamLog {
    js: jetstream::Context,
    stream: stream::Stream,
    cfg: LogConfig,
    /// Chunks seen, per room, by first room sequence.
    index: Mutex<FxHashMap<RoomId, BTreeMap<u64, ChunkRef>>>,
}

/// Rooms whose chunks are remembered; beyond it the index starts over.
const INDEXED_ROOMS: usize = 65_536;

impl std::fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLog")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl JetStreamLog {
    /// Opens the room stream on `client`'s server, creating it if it does
    /// not exist.
    ///
    /// # Errors
    /// [`ClusterError::Config`] for invalid settings or an existing stream
    /// that does not fit them; [`ClusterError::Nats`] if JetStream fails.
    pub async fn open(client: async_nats::Client, cfg: LogConfig) -> Result<Self, ClusterError> {
        cfg.validate()?;
        let js = jetstream::new(client);
        let wanted = format!("{}.>", cfg.subject_prefix);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: cfg.stream.clone(),
                subjects: vec![wanted.clone()],
                storage: if cfg.in_memory {
                    stream::StorageType::Memory
                } else {
                    stream::StorageType::File
                },
                num_replicas: cfg.replicas,
                // Reads go to any replica through the direct get API
                // instead of the leader's JetStream API queue.
                allow_direct: true,
                // Nobody deletes single records: the log has no holes.
                // Retention purges a room's oldest chunks instead.
                deny_delete: true,
                // What it stores, and only that, goes out to the nodes
                // that follow the room.
                republish: Some(stream::Republish {
                    source: wanted.clone(),
                    destination: format!("{}.>", cfg.fanout_prefix),
                    headers_only: false,
                }),
                ..Default::default()
            })
            .await
            .map_err(|e| nats("create or get the room stream", e))?;
        let have = &stream.cached_info().config;
        let fanout = format!("{}.>", cfg.fanout_prefix);
        let republishes = have
            .republish
            .as_ref()
            .is_some_and(|r| r.source == wanted && r.destination == fanout && !r.headers_only);
        if have.subjects != [wanted.clone()] || !have.allow_direct || !republishes {
            return Err(ClusterError::Config(format!(
                "stream {} exists with subjects {:?}, direct get {}, republish {:?}; cluster mode needs exactly [{wanted:?}], direct get, and republish to {fanout:?}",
                cfg.stream, have.subjects, have.allow_direct, have.republish
            )));
        }
        Ok(Self {
            js,
            stream,
            cfg,
            index: Mutex::new(FxHashMap::default()),
        })
    }

    /// The settings.
    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    /// The subject of `room`'s log.
    pub fn subject(&self, room: &RoomId) -> String {
        room_subject(&self.cfg.subject_prefix, room)
    }

    /// The subject JetStream republishes `room`'s stored chunks on.
    pub fn fanout_subject(&self, room: &RoomId) -> String {
        room_subject(&self.cfg.fanout_prefix, room)
    }

    /// Decodes a chunk received from the fan-out subject (or anywhere).
    pub(crate) fn decode_chunk(
        &self,
        room: &RoomId,
        stream_seq: u64,
        payload: Bytes,
    ) -> Result<Chunk, ClusterError> {
        let chunk = chunk::decode(payload).map_err(|why| ClusterError::Corrupt {
            room: room.to_string(),
            stream_seq,
            why,
        })?;
        self.remember(
            room,
            ChunkRef {
                stream_seq,
                first: chunk.first,
                last: chunk.last(),
            },
        );
        Ok(chunk)
    }

    /// Appends one chunk to `room`, on condition that the room's last chunk
    /// is at stream sequence `expected` (0: the room has none). JetStream
    /// checks the condition and stores the chunk in one step, so two
    /// writers can never both append after the same chunk.
    pub(crate) async fn publish_chunk(
        &self,
        room: &RoomId,
        expected: u64,
        first: Seq,
        records: &[&[u8]],
        writer: &str,
    ) -> Result<ChunkRef, PublishFailure> {
        let payload = chunk::encode(first, records);
        let last = Seq(first.0 + records.len() as u64 - 1);
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .header(WRITER_HEADER, writer)
            .expected_last_subject_sequence(expected);
        let ack = match self.js.send_publish(self.subject(room), publish).await {
            Ok(future) => future.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => {
                let at = ChunkRef {
                    stream_seq: ack.sequence,
                    first,
                    last,
                };
                self.remember(room, at);
                Ok(at)
            }
            Err(e) if is_refusal(&e) => Err(PublishFailure::Refused),
            Err(e) => Err(PublishFailure::Unknown(nats("append", e))),
        }
    }

    /// `room`'s last chunk, read from the stream's leader (so it is the
    /// last one JetStream acknowledged), or `None` if the room has none.
    ///
    /// # Errors
    /// If JetStream fails or the chunk does not decode.
    pub async fn last_chunk(&self, room: &RoomId) -> Result<Option<ChunkRef>, ClusterError> {
        Ok(self.last_fetched(room).await?.map(|f| f.at))
    }

    /// [`Self::last_chunk`] with its records and writer.
    pub(crate) async fn last_fetched(
        &self,
        room: &RoomId,
    ) -> Result<Option<Fetched>, ClusterError> {
        let got = self
            .stream
            .raw_message_builder()
            .last_by_subject(self.subject(room))
            .send()
            .await;
        match got {
            Ok(msg) => Ok(Some(self.fetched(
                room,
                msg.sequence,
                &msg.headers,
                msg.payload,
            )?)),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(nats("read the last chunk", e)),
        }
    }

    /// The first chunk of `room` at or after stream sequence `from`.
    async fn chunk_at_or_after(
        &self,
        room: &RoomId,
        subject: &str,
        from: u64,
    ) -> Result<Option<Fetched>, ClusterError> {
        let got = self
            .stream
            .direct_get_builder()
            .next_by_subject(subject)
            .sequence(from.max(1))
            .send()
            .await;
        match got {
            Ok(msg) => Ok(Some(self.fetched(
                room,
                msg.sequence,
                &msg.headers,
                msg.payload,
            )?)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(nats("read a chunk", e)),
        }
    }

    fn fetched(
        &self,
        room: &RoomId,
        stream_seq: u64,
        headers: &HeaderMap,
        payload: Bytes,
    ) -> Result<Fetched, ClusterError> {
        let chunk = self.decode_chunk(room, stream_seq, payload)?;
        Ok(Fetched {
            at: ChunkRef {
                stream_seq,
                first: chunk.first,
                last: chunk.last(),
            },
            chunk,
            writer: headers.get(WRITER_HEADER).map(|v| v.as_str().to_owned()),
        })
    }

    fn remember(&self, room: &RoomId, at: ChunkRef) {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if index.len() >= INDEXED_ROOMS && !index.contains_key(room) {
            index.clear();
        }
        let chunks = index.entry(room.clone()).or_default();
        chunks.insert(at.first.0, at);
        while chunks.len() > self.cfg.index_per_room {
            chunks.pop_first();
        }
    }

    /// What the index knows around room sequence `seq`: a chunk that holds
    /// it, else the stream sequences between which it must be.
    fn indexed(&self, room: &RoomId, seq: u64) -> Result<ChunkRef, (u64, Option<u64>)> {
        let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let Some(chunks) = index.get(room) else {
            return Err((1, None));
        };
        let below = chunks.range(..=seq).next_back().map(|(_, c)| *c);
        if let Some(c) = below.filter(|c| c.last.0 >= seq) {
            return Ok(c);
        }
        let above = chunks.range(seq + 1..).next().map(|(_, c)| c.stream_seq);
        Err((below.map_or(1, |c| c.stream_seq + 1), above))
    }

    /// The chunk of `room` that holds room sequence `seq`, or the first one
    /// after it (`seq` was trimmed), or `None` if `seq` is above the head.
    async fn locate(
        &self,
        room: &RoomId,
        subject: &str,
        seq: u64,
    ) -> Result<Option<Fetched>, ClusterError> {
        let (mut lo, above) = match self.indexed(room, seq) {
            Ok(at) => return self.chunk_at_or_after(room, subject, at.stream_seq).await,
            Err(range) => range,
        };
        let mut hi = match above {
            Some(stream_seq) => stream_seq,
            None => match self.last_fetched(room).await? {
                None => return Ok(None),
                Some(last) if last.at.last.0 < seq => return Ok(None),
                Some(last) if last.at.first.0 <= seq => return Ok(Some(last)),
                Some(last) => last.at.stream_seq,
            },
        };
        // The smallest stream sequence whose next chunk of the room ends at
        // or after `seq`; that chunk is the answer.
        let mut best = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            match self.chunk_at_or_after(room, subject, mid).await? {
                Some(f) if f.at.last.0 < seq => lo = f.at.stream_seq + 1,
                found => {
                    if found.is_some() {
                        best = found;
                    }
                    if mid == 0 {
                        break;
                    }
                    hi = mid - 1;
                }
            }
        }
        Ok(best)
    }

    /// The bounds of `room`'s log: its head (the last record's sequence, 0
    /// if none) and its first retained record.
    ///
    /// # Errors
    /// If JetStream fails or a chunk does not decode.
    pub async fn bounds(&self, room: &RoomId) -> Result<LogBounds, ClusterError> {
        let subject = self.subject(room);
        let Some(last) = self.last_fetched(room).await? else {
            return Ok(LogBounds {
                head: Seq(0),
                first: Seq(1),
            });
        };
        let first = match self.chunk_at_or_after(room, &subject, 1).await? {
            Some(f) => f.at.first,
            None => last.at.first,
        };
        Ok(LogBounds {
            head: last.at.last,
            first,
        })
    }

    /// Records of `room` with `from <= seq <= to`, ascending, stopping
    /// after `max_count` records or once `max_bytes` is reached (at least
    /// one record if any is in range), as [`crate::storage::RoomLog::read_range`].
    ///
    /// # Errors
    /// If JetStream fails, a chunk does not decode, or two consecutive
    /// chunks of the room are not consecutive in room sequences (which a
    /// fenced log never holds).
    pub async fn read_range(
        &self,
        room: &RoomId,
        from: Seq,
        to: Seq,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, ClusterError> {
        let mut out = Vec::new();
        if from > to || max_count == 0 {
            return Ok(out);
        }
        let subject = self.subject(room);
        let Some(mut f) = self.locate(room, &subject, from.0.max(1)).await? else {
            return Ok(out);
        };
        let mut bytes = 0usize;
        loop {
            for (i, rec) in f.chunk.records.iter().enumerate() {
                let seq = f.at.first.0 + i as u64;
                if seq < from.0 {
                    continue;
                }
                if seq > to.0
                    || out.len() >= max_count
                    || (!out.is_empty() && bytes.saturating_add(rec.len()) > max_bytes)
                {
                    return Ok(out);
                }
                bytes = bytes.saturating_add(rec.len());
                out.push(StoredRecord {
                    seq: Seq(seq),
                    bytes: rec.clone(),
                });
            }
            if f.at.last >= to {
                return Ok(out);
            }
            let Some(next) = self
                .chunk_at_or_after(room, &subject, f.at.stream_seq + 1)
                .await?
            else {
                return Ok(out);
            };
            if next.at.first.0 != f.at.last.0 + 1 {
                return Err(ClusterError::Corrupt {
                    room: room.to_string(),
                    stream_seq: next.at.stream_seq,
                    why: "room sequences do not follow the chunk before",
                });
            }
            f = next;
        }
    }

    /// Up to `max_count` records of `room` with `seq < before`, the newest
    /// ones, ascending, within `max_bytes` (at least one), as
    /// [`crate::storage::RoomLog::read_before`].
    ///
    /// # Errors
    /// As [`Self::read_range`].
    pub async fn read_before(
        &self,
        room: &RoomId,
        before: Seq,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, ClusterError> {
        if before.0 <= 1 || max_count == 0 {
            return Ok(Vec::new());
        }
        // Room sequences have no holes: the newest `max_count` below
        // `before` are exactly this range (less what retention removed).
        let to = before.0 - 1;
        let from = to.saturating_sub(max_count as u64 - 1).max(1);
        let mut recs = self
            .read_range(room, Seq(from), Seq(to), max_count, usize::MAX)
            .await?;
        let mut bytes = 0usize;
        let mut keep = 0;
        for r in recs.iter().rev() {
            if keep > 0 && bytes.saturating_add(r.bytes.len()) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(r.bytes.len());
            keep += 1;
        }
        recs.drain(..recs.len() - keep);
        Ok(recs)
    }
}
