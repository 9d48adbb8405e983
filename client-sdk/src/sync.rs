//! Per-room gap sync: the pure state machine behind exactly-once, in-order
//! delivery.
//!
//! The broker promises a gap-free stream per subscription, but the SDK does
//! not rely on it: every room event goes through a [`RoomSync`], which
//! knows the last sequence handed to the application and decides, event by
//! event, what to do:
//!
//! - `seq == last + 1`: deliver it, then everything buffered that now follows;
//! - `seq <= last`: a duplicate (a replay overlapping what was seen), drop it;
//! - `seq > last + 1`: a gap. Buffer the event and ask for the missing range
//!   from history (`HistoryRequest After last`). Further out-of-order events
//!   are buffered too, up to a bound; past it the buffer is dropped and the
//!   room is resubscribed from `last + 1`, which makes the broker replay
//!   everything in order.
//!
//! Entries the broker will never deliver are skipped, never fetched: those
//! before the `first` it reports (retention), and the ranges of its `Gap`
//! frames (protocol version 2), which say the range and the reason. Each
//! range is reported once, as an [`Action::Gap`], and `last` moves past it,
//! so that no resubscription asks for it again.
//!
//! No IO, no clock, no channels: inputs are method calls, outputs are
//! [`Action`]s pushed to a vector. The connection task performs them.
//!
//! With the `sim` feature the module is public (hidden from the docs), so
//! that the broker's deterministic simulation runs this very code.
#![cfg_attr(not(feature = "sim"), allow(unreachable_pub))]
#![cfg_attr(feature = "sim", allow(missing_docs))]

use std::collections::BTreeMap;

use confab_codec::{EventRecord, GapReason, Seq, StartAt};

/// Anything with a room sequence number.
pub trait Sequenced {
    fn seq(&self) -> Seq;
}

impl Sequenced for EventRecord {
    fn seq(&self) -> Seq {
        self.seq
    }
}

/// What the connection task must do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<E> {
    /// Hand this event to the application; it is the next one in order.
    Deliver(E),
    /// This sequence was already delivered; it was dropped.
    Duplicate(Seq),
    /// Read history after `after` (exclusive), at most `limit` events, and
    /// feed the page to [`RoomSync::on_history`].
    FetchHistory { after: Seq, limit: u16 },
    /// Subscribe again from this sequence (the broker restarts delivery
    /// there), then report the result to [`RoomSync::on_subscribed`].
    Resubscribe { from: Seq },
    /// These sequences will never be delivered, and why: retention removed
    /// them (`Trimmed`: reported by the broker's `Gap`, or derived from its
    /// `first`), they were deleted, or the user lost access to the room
    /// (`AccessLost`: the subscription is over; nothing more is delivered
    /// and `from` may be `to + 1` when nothing was missing).
    Gap {
        from: Seq,
        to: Seq,
        reason: GapReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Events are delivered, gaps are filled from history.
    Normal,
    /// A resubscription is on its way: in-order events are still delivered,
    /// later ones are dropped because the new subscription replays them.
    Resyncing,
    /// The application is not reading: nothing is delivered until
    /// [`RoomSync::resume`].
    Paused,
    /// The user lost access to the room: nothing is delivered any more.
    Ended,
}

/// The sync state of one room.
#[derive(Debug, Clone)]
pub struct RoomSync<E> {
    /// Last sequence delivered; `None` for a live subscription whose head is
    /// not known yet.
    last: Option<Seq>,
    /// Events after a gap, by sequence. All keys are above `last + 1`.
    buffer: BTreeMap<Seq, E>,
    /// The anchor of the history request in flight, if any.
    fill: Option<Seq>,
    mode: Mode,
    max_buffer: usize,
    page: u16,
}

impl<E: Sequenced> RoomSync<E> {
    /// A room whose last delivered sequence is `last` (`None`: start live).
    /// At most `max_buffer` out-of-order events are held; history is read
    /// `page` events at a time.
    pub fn new(last: Option<Seq>, max_buffer: usize, page: u16) -> Self {
        Self {
            last,
            buffer: BTreeMap::new(),
            fill: None,
            mode: Mode::Normal,
            max_buffer: max_buffer.max(1),
            page: page.max(1),
        }
    }

    /// The last delivered sequence.
    #[cfg(any(test, feature = "sim"))]
    pub fn last_delivered(&self) -> Option<Seq> {
        self.last
    }

    /// Where a (re)subscription must start so that nothing is missed.
    pub fn start_at(&self) -> StartAt {
        match self.last {
            Some(last) => StartAt::From(last.next()),
            None => StartAt::Live,
        }
    }

    pub fn is_paused(&self) -> bool {
        self.mode == Mode::Paused
    }

    /// Events held after a gap.
    #[cfg(any(test, feature = "sim"))]
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// A room event arrived (live or replayed).
    pub fn on_event(&mut self, event: E, out: &mut Vec<Action<E>>) {
        if matches!(self.mode, Mode::Paused | Mode::Ended) {
            return;
        }
        let Some(last) = self.last else {
            // Live subscription not anchored yet: keep the event until the
            // SubscribeAck tells the head (the broker sends the ack first, so
            // this is defensive).
            if self.buffer.len() < self.max_buffer {
                self.buffer.insert(event.seq(), event);
            }
            return;
        };
        let seq = event.seq();
        if seq <= last {
            out.push(Action::Duplicate(seq));
        } else if seq == last.next() {
            self.deliver(event, out);
        } else if self.mode == Mode::Resyncing {
            // The resubscription will replay it in order.
        } else if self.buffer.len() >= self.max_buffer && !self.buffer.contains_key(&seq) {
            self.resync(out);
        } else {
            self.buffer.insert(seq, event);
            self.request_fill(out);
        }
    }

    /// The page answering the outstanding [`Action::FetchHistory`]:
    /// `first` is the room's oldest retained sequence, `events` ascending.
    /// While a gap remains, the next page is requested as long as each page
    /// moves delivery forward; a page that does not falls back to a
    /// resubscription, so a disagreeing broker cannot cause a request loop.
    pub fn on_history(&mut self, first: Seq, events: Vec<E>, out: &mut Vec<Action<E>>) {
        let Some(anchor) = self.fill.take() else {
            return;
        };
        if matches!(self.mode, Mode::Paused | Mode::Ended) || self.last.is_none() {
            return;
        }
        self.skip_truncated(first, out);
        for event in events {
            let Some(last) = self.last else { break };
            let seq = event.seq();
            if seq <= last {
                out.push(Action::Duplicate(seq));
            } else if seq == last.next() {
                self.deliver(event, out);
            } else if self.buffer.len() < self.max_buffer {
                // A hole inside the page itself: keep what fits; the next
                // request starts at the hole.
                self.buffer.insert(seq, event);
            }
        }
        if self.buffer.is_empty() || self.mode != Mode::Normal {
            return;
        }
        if self.last > Some(anchor) {
            self.request_fill(out);
        } else {
            // History has nothing between `last` and the buffered events:
            // the broker's view disagrees with ours. Start over from the log.
            self.resync(out);
        }
    }

    /// The outstanding history request failed (error reply or lost
    /// connection). Falls back to a resubscription if a gap remains.
    pub fn on_fill_failed(&mut self, out: &mut Vec<Action<E>>) {
        if self.fill.take().is_some() && !self.buffer.is_empty() && self.mode == Mode::Normal {
            self.resync(out);
        }
    }

    /// The broker accepted a (re)subscription: `head` is the room's last
    /// sequence, `first` its oldest retained one, `truncated` whether the
    /// requested start was older than `first`.
    pub fn on_subscribed(
        &mut self,
        head: Seq,
        first: Seq,
        truncated: bool,
        out: &mut Vec<Action<E>>,
    ) {
        if matches!(self.mode, Mode::Paused | Mode::Ended) {
            return;
        }
        self.mode = Mode::Normal;
        if self.last.is_none() {
            self.last = Some(head);
        }
        if truncated {
            self.skip_truncated(first, out);
        }
        self.drain_buffer(out);
        if !self.buffer.is_empty() {
            self.request_fill(out);
        }
    }

    /// The broker will not deliver `from..=to` on this subscription
    /// (protocol 7.8.3, version 2). It is sent in delivery order, so the
    /// next entry is `to + 1`; the range is skipped for good, never read
    /// from history. A range already behind `last` (it was derived from a
    /// `first` before) is ignored; one that starts after `last + 1` means
    /// entries before it were lost on the way here, and the room is
    /// resubscribed (the broker then reports the range again).
    ///
    /// `AccessLost` ends the room whatever its state: everything after
    /// `last` up to `to` is reported as not delivered (an empty range,
    /// `from == to + 1`, when nothing was missing), and nothing more is.
    pub fn on_gap(&mut self, from: Seq, to: Seq, reason: GapReason, out: &mut Vec<Action<E>>) {
        if self.mode == Mode::Ended {
            return;
        }
        if reason == GapReason::AccessLost {
            let from = self.last.map_or(from, |last| last.next());
            let to = Seq(to.0.max(from.0.saturating_sub(1)));
            self.buffer.clear();
            self.fill = None;
            self.mode = Mode::Ended;
            out.push(Action::Gap { from, to, reason });
            return;
        }
        if self.mode == Mode::Paused {
            // Delivery restarts after `last` on resume; a range still
            // missing then is reported by the new subscription.
            return;
        }
        let Some(last) = self.last else { return };
        if to <= last {
            return;
        }
        if from > last.next() {
            if self.mode == Mode::Normal {
                self.resync(out);
            }
            return;
        }
        out.push(Action::Gap {
            from: last.next(),
            to,
            reason,
        });
        self.last = Some(to);
        self.drain_buffer(out);
        if !self.buffer.is_empty() && self.mode == Mode::Normal {
            self.request_fill(out);
        }
    }

    /// The connection was lost. The next connection resubscribes from
    /// `last + 1`, which replays everything buffered here, so the buffer and
    /// any history request are dropped.
    pub fn on_disconnected(&mut self) {
        self.buffer.clear();
        self.fill = None;
        if self.mode == Mode::Resyncing {
            self.mode = Mode::Normal;
        }
    }

    /// The application stopped reading: delivery of the event with sequence
    /// `blocked` failed. Everything from `blocked` on is forgotten and will
    /// be replayed after [`RoomSync::resume`].
    pub fn pause(&mut self, blocked: Seq) {
        self.last = Some(Seq(blocked.0.saturating_sub(1)));
        self.buffer.clear();
        self.fill = None;
        self.mode = Mode::Paused;
    }

    /// The application drained its buffer: resubscribe from where delivery
    /// stopped.
    pub fn resume(&mut self, out: &mut Vec<Action<E>>) {
        if self.mode == Mode::Paused {
            self.mode = Mode::Resyncing;
            if let Some(last) = self.last {
                out.push(Action::Resubscribe { from: last.next() });
            }
        }
    }

    fn deliver(&mut self, event: E, out: &mut Vec<Action<E>>) {
        self.last = Some(event.seq());
        out.push(Action::Deliver(event));
        self.drain_buffer(out);
    }

    /// Delivers buffered events that now follow `last`; drops stale ones.
    fn drain_buffer(&mut self, out: &mut Vec<Action<E>>) {
        let Some(mut last) = self.last else { return };
        while let Some(entry) = self.buffer.first_entry() {
            let seq = *entry.key();
            if seq <= last {
                entry.remove();
                out.push(Action::Duplicate(seq));
            } else if seq == last.next() {
                out.push(Action::Deliver(entry.remove()));
                last = seq;
            } else {
                break;
            }
        }
        self.last = Some(last);
    }

    /// Everything before `first` is gone from the broker: skip it.
    fn skip_truncated(&mut self, first: Seq, out: &mut Vec<Action<E>>) {
        let Some(last) = self.last else { return };
        if first.0 > last.0.saturating_add(1) {
            out.push(Action::Gap {
                from: last.next(),
                to: Seq(first.0 - 1),
                reason: GapReason::Trimmed,
            });
            self.last = Some(Seq(first.0 - 1));
            self.drain_buffer(out);
        }
    }

    /// Asks for the events between `last` and the first buffered one,
    /// unless a request is already out.
    fn request_fill(&mut self, out: &mut Vec<Action<E>>) {
        let (Some(last), Some(next_buffered)) = (self.last, self.buffer.keys().next()) else {
            return;
        };
        if self.fill.is_some() {
            return;
        }
        let missing = next_buffered.0.saturating_sub(last.0).saturating_sub(1);
        let limit = u16::try_from(missing)
            .unwrap_or(u16::MAX)
            .clamp(1, self.page);
        self.fill = Some(last);
        out.push(Action::FetchHistory { after: last, limit });
    }

    /// Drops the buffer and resubscribes from `last + 1`.
    fn resync(&mut self, out: &mut Vec<Action<E>>) {
        self.buffer.clear();
        self.fill = None;
        self.mode = Mode::Resyncing;
        if let Some(last) = self.last {
            out.push(Action::Resubscribe { from: last.next() });
        }
    }
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
