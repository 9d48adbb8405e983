//! Following a room from a node that does not own it: the chunks JetStream
//! stored, republished on the room's fan-out subject, handed on in room
//! order, with every gap read from the stream first.
//!
//! Only stored chunks are republished (JetStream's RePublish runs when it
//! stores a message), so a refused append never reaches a follower. Core
//! NATS delivers at most once and a leader change may republish a chunk
//! again: [`RoomFeed`] tells a chunk to deliver from a duplicate and a gap.
//! A node must never follow the stream's own subjects instead: a publish
//! reaches their core subscribers whether or not JetStream stores it.

use std::sync::Arc;

use async_nats::Subscriber;
use confab_codec::{RoomId, Seq};
use futures_util::StreamExt;

use super::error::nats;
use super::{ClusterError, JetStreamLog};
use crate::storage::StoredRecord;

/// What to do with a chunk of room sequences `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Deliver its records after the first `skip` (already delivered).
    Deliver {
        /// Records of the chunk delivered before.
        skip: usize,
    },
    /// Everything in it was delivered: drop it.
    Duplicate,
    /// Sequences `from..=to` are missing before it: read them from the
    /// stream, deliver them, then offer the chunk again.
    Gap {
        /// The first missing sequence.
        from: Seq,
        /// The last missing sequence.
        to: Seq,
    },
}

/// The order of one followed room: the last sequence handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomFeed {
    applied: Seq,
}

impl RoomFeed {
    /// A feed that has handed on everything up to `applied`.
    pub fn new(applied: Seq) -> Self {
        Self { applied }
    }

    /// The last sequence handed on.
    pub fn applied(&self) -> Seq {
        self.applied
    }

    /// What to do with a chunk of `first..=last` (`first <= last`).
    pub fn offer(&self, first: Seq, last: Seq) -> Step {
        let next = self.applied.0 + 1;
        if last.0 < next {
            Step::Duplicate
        } else if first.0 > next {
            Step::Gap {
                from: Seq(next),
                to: Seq(first.0 - 1),
            }
        } else {
            Step::Deliver {
                skip: (next - first.0) as usize,
            }
        }
    }

    /// Records that everything up to `to` was handed on.
    pub fn advance(&mut self, to: Seq) {
        self.applied = self.applied.max(to);
    }
}

/// One followed room on this node: its fan-out subscription and feed.
#[derive(Debug)]
pub struct Follower {
    log: Arc<JetStreamLog>,
    room: RoomId,
    sub: Subscriber,
    feed: RoomFeed,
    /// The head read from the stream after subscribing: what is stored
    /// before the first chunk the subscription can see.
    head: Seq,
}

/// Records read from the stream per gap read.
const REPAIR_PAGE: usize = 1024;

impl Follower {
    /// Follows `room` from what is committed now: subscribes to its fan-out
    /// subject first, then reads its head from the stream's leader, so that
    /// every chunk stored after the head is seen (those stored in between
    /// arrive as duplicates and are dropped). Subscriptions of devices are
    /// stamped with [`Self::applied`].
    ///
    /// # Errors
    /// If NATS or JetStream fails.
    pub async fn start(
        client: &async_nats::Client,
        log: Arc<JetStreamLog>,
        room: RoomId,
    ) -> Result<Self, ClusterError> {
        Self::open(client, log, room, None).await
    }

    /// Follows `room` having handed on everything up to `applied` already
    /// (a node that lost its subscription and subscribes again): subscribes,
    /// then reads the head, and the first [`Self::next`] returns what was
    /// stored after `applied` up to that head, read from the stream.
    ///
    /// # Errors
    /// If NATS or JetStream fails.
    pub async fn resume(
        client: &async_nats::Client,
        log: Arc<JetStreamLog>,
        room: RoomId,
        applied: Seq,
    ) -> Result<Self, ClusterError> {
        Self::open(client, log, room, Some(applied)).await
    }

    /// Subscribes, then reads the head; the feed starts after `applied`,
    /// or at the head when there is nothing to hand on from before it.
    async fn open(
        client: &async_nats::Client,
        log: Arc<JetStreamLog>,
        room: RoomId,
        applied: Option<Seq>,
    ) -> Result<Self, ClusterError> {
        let sub = client
            .subscribe(log.fanout_subject(&room))
            .await
            .map_err(|e| nats("subscribe to the fan-out subject", e))?;
        // The read is also a round trip on the connection after the
        // subscription: the server has it before anything is missed.
        let head = log.last_chunk(&room).await?.map_or(Seq(0), |c| c.last);
        Ok(Self {
            log,
            room,
            sub,
            feed: RoomFeed::new(applied.unwrap_or(head)),
            head,
        })
    }

    /// Reads `from..=to` from the stream, page by page.
    async fn read(&self, from: Seq, to: Seq) -> Result<Vec<StoredRecord>, ClusterError> {
        let mut out = Vec::new();
        let mut next = from;
        while next <= to {
            let page = self
                .log
                .read_range(&self.room, next, to, REPAIR_PAGE, usize::MAX)
                .await?;
            let Some(last) = page.last().map(|r| r.seq) else {
                return Err(ClusterError::Nats(format!(
                    "room {}: sequences {}..={} are not readable yet",
                    self.room, next.0, to.0
                )));
            };
            out.extend(page);
            next = last.next();
        }
        Ok(out)
    }

    /// The last sequence handed on.
    pub fn applied(&self) -> Seq {
        self.feed.applied()
    }

    /// Waits for the room's next committed records and returns them in
    /// order, starting right after [`Self::applied`]: a republished chunk,
    /// preceded by whatever was missing before it, read from the stream.
    ///
    /// # Errors
    /// If the subscription ends (NATS closed), a message is not a chunk, or
    /// a gap cannot be read.
    pub async fn next(&mut self) -> Result<Vec<StoredRecord>, ClusterError> {
        if self.feed.applied() < self.head {
            let missed = self.read(self.feed.applied().next(), self.head).await?;
            self.feed.advance(self.head);
            return Ok(missed);
        }
        loop {
            let msg = self
                .sub
                .next()
                .await
                .ok_or_else(|| ClusterError::Nats("the fan-out subscription ended".into()))?;
            let stream_seq = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Sequence"))
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .ok_or_else(|| {
                    ClusterError::Nats(format!(
                        "room {}: a fan-out message without Nats-Sequence",
                        self.room
                    ))
                })?;
            let chunk = self.log.decode_chunk(&self.room, stream_seq, msg.payload)?;
            let mut out = Vec::new();
            if let Step::Gap { from, to } = self.feed.offer(chunk.first, chunk.last()) {
                out = self.read(from, to).await?;
                self.feed.advance(to);
            }
            let last = chunk.last();
            if let Step::Deliver { skip } = self.feed.offer(chunk.first, last) {
                let first = chunk.first.0;
                out.extend(
                    chunk
                        .records
                        .into_iter()
                        .enumerate()
                        .skip(skip)
                        .map(|(i, bytes)| StoredRecord {
                            seq: Seq(first + i as u64),
                            bytes,
                        }),
                );
                self.feed.advance(last);
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_in_order_duplicates_and_gaps() {
        let mut f = RoomFeed::new(Seq(3));
        assert_eq!(f.offer(Seq(4), Seq(6)), Step::Deliver { skip: 0 });
        f.advance(Seq(6));
        assert_eq!(f.offer(Seq(1), Seq(6)), Step::Duplicate);
        assert_eq!(
            f.offer(Seq(5), Seq(8)),
            Step::Deliver { skip: 2 },
            "overlap"
        );
        assert_eq!(
            f.offer(Seq(10), Seq(12)),
            Step::Gap {
                from: Seq(7),
                to: Seq(9)
            }
        );
        f.advance(Seq(9));
        assert_eq!(f.offer(Seq(10), Seq(12)), Step::Deliver { skip: 0 });
        f.advance(Seq(4));
        assert_eq!(f.applied(), Seq(9), "never goes back");
        assert_eq!(
            RoomFeed::new(Seq(0)).offer(Seq(1), Seq(1)),
            Step::Deliver { skip: 0 }
        );
    }
    use proptest::prelude::*;

    proptest! {
        /// Chunks of a log arrive lost, repeated (also late, after newer
        /// ones) or in order; following the feed's steps, with gaps read
        /// from the log, hands on every sequence exactly once, in order,
        /// up to the newest chunk that arrived.
        #[test]
        fn every_sequence_once_in_order(
            sizes in proptest::collection::vec(1u64..5, 1..40),
            fates in proptest::collection::vec(0u8..4, 40),
            start in 0usize..3,
        ) {
            // The chunks: consecutive (first, last) ranges.
            let mut chunks = Vec::new();
            let mut next = 1;
            for n in &sizes {
                chunks.push((next, next + n - 1));
                next += n;
            }
            let start = start.min(chunks.len() - 1);
            let applied0 = if start == 0 { 0 } else { chunks[start - 1].1 };
            let mut feed = RoomFeed::new(Seq(applied0));
            let mut out: Vec<u64> = Vec::new();
            let mut newest = applied0;
            let offer = |(first, last): (u64, u64), feed: &mut RoomFeed, out: &mut Vec<u64>| {
                if let Step::Gap { from, to } = feed.offer(Seq(first), Seq(last)) {
                    out.extend(from.0..=to.0);
                    feed.advance(to);
                }
                if let Step::Deliver { skip } = feed.offer(Seq(first), Seq(last)) {
                    out.extend(first + skip as u64..=last);
                    feed.advance(Seq(last));
                }
            };
            for (i, c) in chunks.iter().enumerate().skip(start) {
                match fates[i % fates.len()] {
                    0 => {} // lost
                    1 => {
                        offer(*c, &mut feed, &mut out);
                        offer(*c, &mut feed, &mut out);
                        newest = c.1;
                    }
                    2 if i > 0 => {
                        offer(*c, &mut feed, &mut out);
                        offer(chunks[i - 1], &mut feed, &mut out); // a late repeat
                        newest = c.1;
                    }
                    _ => {
                        offer(*c, &mut feed, &mut out);
                        newest = c.1;
                    }
                }
            }
            let want: Vec<u64> = (applied0 + 1..=newest).collect();
            prop_assert_eq!(out, want);
            prop_assert_eq!(feed.applied(), Seq(newest));
        }
    }
}
