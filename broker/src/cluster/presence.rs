//! Presence across nodes: a user is online if any of their devices is
//! connected to any live node.
//!
//! Each node tells the others, over core NATS, the aggregate of each
//! user's devices *on it* (a [`Relayed`]: the status, or "none here any
//! more" with the time the last one left), and keeps what each other node
//! (a *peer*) told it beside its own devices in the [`PresenceHub`], which
//! merges them (`presence::state`). Pushes to watchers and `GetPresence`
//! work from that merged state as on a single node.
//!
//! - **Subjects.** A node publishes on `confab.presence.<stream>.<node>`
//!   ([`presence_subject`]) and every node subscribes to
//!   `confab.presence.<stream>.*`: presence is needed everywhere (any
//!   device may ask about any user), so it is not routed by interest. A
//!   node answers snapshot requests on `confab.presence.<stream>.<node>.sync`.
//! - **Messages.** Each carries the node's *incarnation* (random, chosen
//!   at start) and a sequence number that grows by one per message. A
//!   *delta* lists the users whose aggregate on the node changed since the
//!   last one (sent at most every [`relay_tick`], coalesced: a device that
//!   comes and goes in between is not sent at all); a *snapshot* (one or
//!   more parts, back to back) lists every user with a device on the node
//!   and replaces what the receiver knew of it. With nothing to say, a node
//!   sends an empty delta every `cluster.heartbeat_ms` (a *beat*).
//! - **Loss and joins.** Core NATS delivers at most once. A receiver that
//!   sees a gap in a peer's sequence, a new incarnation, or a peer it did
//!   not know (it just joined, or the peer did) asks that peer for a
//!   snapshot and applies deltas meanwhile; the beat makes a lost last
//!   delta show within a heartbeat. [`Feeds`] is that decision, pure and
//!   unit-tested.
//! - **Leaving.** When a node leaves the live set (its membership key
//!   expired, or it left in order), every node drops everything that node
//!   said: its users go offline unless online elsewhere, so devices on
//!   other nodes see them offline within the node TTL (plus at most one
//!   `presence.window_ms`, the push coalescing). Messages from a node
//!   that is not live are ignored, so a dead node's late message cannot
//!   bring its users back.
//! - **Bounds.** A message holds at most [`MAX_ENTRIES`] users and is
//!   decoded with every length checked (a bad one is logged, counted and
//!   dropped); a peer may list at most `limits.max_connections` users (it
//!   cannot have more online than it has connections, with the same
//!   settings); the NATS subscriptions' own queues are bounded (a slow
//!   node loses messages, sees the gap and asks for a snapshot).
//!
//! The last-seen time of a user who left through another node is stored in
//! this node's memory like a local departure (cluster mode keeps
//! last-seen times per node), so `GetPresence` answers it on every node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use confab_codec::{PresenceStatus, UserId};
use futures_util::StreamExt;
use rustc_hash::FxHashMap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::{ClusterError, LiveNodes, NodeId};
use crate::base::now_us;
use crate::presence::{Departure, Peer, PresenceHub, Relayed};

/// The message's version byte.
const PRESENCE_V1: u8 = 1;

/// Message kinds.
const DELTA: u8 = 1;
const SNAPSHOT: u8 = 2;

/// Snapshot part flags.
const FIRST: u8 = 1;
const LAST: u8 = 2;

/// Most users in one message: with ids of at most 128 bytes a message
/// stays under 150 KiB, far below NATS's default 1 MiB payload limit.
pub(crate) const MAX_ENTRIES: usize = 1024;

/// The smallest encoded entry: status, time, a one-byte id's length.
const MIN_ENTRY: usize = 1 + 8 + 2;

/// A peer that does not finish a snapshot this long after it was asked is
/// asked again.
const ASK_AGAIN: Duration = Duration::from_secs(1);

/// The longest a change of this node's devices waits before it is sent.
const MAX_RELAY_TICK: Duration = Duration::from_millis(250);

/// How often a node sends its changes: every `presence.window_ms`, at most
/// [`MAX_RELAY_TICK`].
pub(crate) fn relay_tick(window: Duration) -> Duration {
    window.min(MAX_RELAY_TICK)
}

/// The subject node `node` publishes its presence on.
pub(crate) fn presence_subject(stream: &str, node: &NodeId) -> String {
    format!("confab.presence.{stream}.{node}")
}

/// The subject node `node` answers snapshot requests on.
fn sync_subject(stream: &str, node: &NodeId) -> String {
    format!("confab.presence.{stream}.{node}.sync")
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Changes since the previous message (none: a beat).
    Delta,
    /// A part of a snapshot.
    Snapshot {
        /// The snapshot's first part.
        first: bool,
        /// Its last part.
        last: bool,
    },
}

/// One presence message of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// The node's incarnation (chosen at its start).
    pub(crate) incarnation: u64,
    /// Its sequence number: one more than the node's previous message.
    pub(crate) seq: u64,
    /// Delta or snapshot part.
    pub(crate) kind: Kind,
    /// At most [`MAX_ENTRIES`] users.
    pub(crate) entries: Vec<Relayed>,
}

impl Message {
    /// The encoded message.
    pub(crate) fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(24 + self.entries.len() * 24);
        b.put_u8(PRESENCE_V1);
        match self.kind {
            Kind::Delta => {
                b.put_u8(DELTA);
                b.put_u8(0);
            }
            Kind::Snapshot { first, last } => {
                b.put_u8(SNAPSHOT);
                b.put_u8((u8::from(first) * FIRST) | (u8::from(last) * LAST));
            }
        }
        b.put_u64(self.incarnation);
        b.put_u64(self.seq);
        let entries = &self.entries[..self.entries.len().min(MAX_ENTRIES)];
        b.put_u16(entries.len() as u16);
        for e in entries {
            b.put_u8(e.status.map_or(0, |s| s as u8));
            b.put_u64(e.left_at_us);
            let id = e.user.as_str().as_bytes();
            // A user id is at most 128 bytes.
            b.put_u16(id.len() as u16);
            b.put_slice(id);
        }
        b.freeze()
    }

    /// Decodes one message, every length checked.
    ///
    /// # Errors
    /// What is wrong with it.
    pub(crate) fn decode(mut b: Bytes) -> Result<Self, &'static str> {
        if b.remaining() < 3 + 16 + 2 {
            return Err("truncated");
        }
        if b.get_u8() != PRESENCE_V1 {
            return Err("unknown version");
        }
        let kind = match (b.get_u8(), b.get_u8()) {
            (DELTA, 0) => Kind::Delta,
            (SNAPSHOT, flags) if flags & !(FIRST | LAST) == 0 => Kind::Snapshot {
                first: flags & FIRST != 0,
                last: flags & LAST != 0,
            },
            _ => return Err("unknown kind"),
        };
        let incarnation = b.get_u64();
        let seq = b.get_u64();
        let count = usize::from(b.get_u16());
        if count > MAX_ENTRIES {
            return Err("too many entries");
        }
        let mut entries = Vec::with_capacity(count.min(b.remaining() / MIN_ENTRY));
        for _ in 0..count {
            if b.remaining() < MIN_ENTRY {
                return Err("truncated");
            }
            let status = match b.get_u8() {
                0 => None,
                1 => Some(PresenceStatus::Online),
                2 => Some(PresenceStatus::Away),
                3 => Some(PresenceStatus::Offline),
                _ => return Err("unknown status"),
            };
            let left_at_us = b.get_u64();
            let len = usize::from(b.get_u16());
            if b.remaining() < len {
                return Err("truncated");
            }
            let id = String::from_utf8(b.split_to(len).to_vec()).map_err(|_| "id not UTF-8")?;
            let user = UserId::new(id).map_err(|_| "bad user id")?;
            entries.push(Relayed {
                user,
                status,
                left_at_us,
            });
        }
        if b.has_remaining() {
            return Err("trailing bytes");
        }
        Ok(Self {
            incarnation,
            seq,
            kind,
            entries,
        })
    }
}

/// This node's outgoing messages: its incarnation and next sequence.
#[derive(Debug)]
pub(crate) struct Outgoing {
    incarnation: u64,
    next: u64,
}

impl Outgoing {
    /// A node's first message.
    pub(crate) fn new(incarnation: u64) -> Self {
        Self {
            incarnation,
            next: 1,
        }
    }

    /// The messages of a delta (one, with no entry, for a beat).
    pub(crate) fn delta(&mut self, entries: Vec<Relayed>) -> Vec<Message> {
        split(entries)
            .into_iter()
            .map(|entries| self.message(Kind::Delta, entries))
            .collect()
    }

    /// The parts of a snapshot of every user in `entries` (at least one
    /// part, empty if nobody is connected here).
    pub(crate) fn snapshot(&mut self, entries: Vec<Relayed>) -> Vec<Message> {
        let parts = split(entries);
        let n = parts.len();
        parts
            .into_iter()
            .enumerate()
            .map(|(i, entries)| {
                let kind = Kind::Snapshot {
                    first: i == 0,
                    last: i + 1 == n,
                };
                self.message(kind, entries)
            })
            .collect()
    }

    fn message(&mut self, kind: Kind, entries: Vec<Relayed>) -> Message {
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        Message {
            incarnation: self.incarnation,
            seq,
            kind,
            entries,
        }
    }
}

/// `entries` in pieces of at most [`MAX_ENTRIES`]; one empty piece if
/// there are none.
fn split(entries: Vec<Relayed>) -> Vec<Vec<Relayed>> {
    let mut parts: Vec<Vec<Relayed>> = Vec::new();
    let mut it = entries.into_iter().peekable();
    while it.peek().is_some() {
        parts.push(it.by_ref().take(MAX_ENTRIES).collect());
    }
    if parts.is_empty() {
        parts.push(Vec::new());
    }
    parts
}

/// What to do with a peer's presence in the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Forget everything the peer said (an earlier incarnation).
    Drop,
    /// Apply these changes.
    Apply(Vec<Relayed>),
    /// Everything the peer has now: replaces what it said.
    Replace(Vec<Relayed>),
}

/// Where this node is with one peer's messages.
#[derive(Debug)]
struct Feed {
    incarnation: u64,
    /// The sequence expected next.
    next: u64,
    /// Whether a whole snapshot and every message since arrived.
    synced: bool,
    /// The parts of a snapshot received so far.
    assembling: Option<Vec<Relayed>>,
    /// When a snapshot was last asked for.
    asked: Option<Instant>,
}

/// Every peer's feed: which messages to apply, and which peers to ask for
/// a snapshot. Pure.
#[derive(Debug, Default)]
pub(crate) struct Feeds {
    feeds: FxHashMap<NodeId, Feed>,
}

impl Feeds {
    /// A message from live peer `from`: what to do with its presence, in
    /// order. A snapshot holds at most `max_users` users (more are left
    /// out).
    pub(crate) fn receive(&mut self, from: &NodeId, msg: Message, max_users: usize) -> Vec<Op> {
        let mut ops = Vec::new();
        let known = self.feeds.get(from).map(|f| f.incarnation);
        if known != Some(msg.incarnation) {
            if known.is_some() {
                // The peer restarted: what its last life said is void.
                ops.push(Op::Drop);
            }
            self.feeds.insert(
                from.clone(),
                Feed {
                    incarnation: msg.incarnation,
                    next: msg.seq,
                    synced: false,
                    assembling: None,
                    asked: None,
                },
            );
        }
        let Some(feed) = self.feeds.get_mut(from) else {
            return ops;
        };
        if msg.seq < feed.next {
            // Stale (NATS does not repeat messages; this is defensive).
            return ops;
        }
        if msg.seq > feed.next {
            // Something was lost: what was assembled is incomplete, and
            // only a snapshot makes this peer's state whole again.
            feed.synced = false;
            feed.assembling = None;
        }
        feed.next = msg.seq.wrapping_add(1);
        match msg.kind {
            // Changes are true whatever came before: applied at once.
            Kind::Delta if msg.entries.is_empty() => {}
            Kind::Delta => ops.push(Op::Apply(msg.entries)),
            Kind::Snapshot { first, last } => {
                if first {
                    feed.assembling = Some(Vec::new());
                }
                if let Some(acc) = &mut feed.assembling {
                    let room = max_users.saturating_sub(acc.len());
                    acc.extend(msg.entries.into_iter().take(room));
                    if last {
                        ops.push(Op::Replace(std::mem::take(acc)));
                        feed.assembling = None;
                        feed.synced = true;
                        feed.asked = None;
                    }
                }
            }
        }
        ops
    }

    /// The peers to ask for a snapshot now: those not in sync, not asked
    /// within [`ASK_AGAIN`].
    pub(crate) fn due_for_snapshot(&mut self, now: Instant) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = self
            .feeds
            .iter_mut()
            .filter(|(_, f)| !f.synced)
            .filter(|(_, f)| f.asked.is_none_or(|t| now.duration_since(t) >= ASK_AGAIN))
            .map(|(id, f)| {
                f.asked = Some(now);
                id.clone()
            })
            .collect();
        out.sort();
        out
    }

    /// Forgets the peers `live` does not list; returns them (everything
    /// they said is to be dropped).
    pub(crate) fn retain_live(&mut self, live: impl Fn(&NodeId) -> bool) -> Vec<NodeId> {
        let mut gone: Vec<NodeId> = self.feeds.keys().filter(|n| !live(n)).cloned().collect();
        for n in &gone {
            self.feeds.remove(n);
        }
        gone.sort();
        gone
    }
}

/// What the presence task needs.
pub(crate) struct PresenceLink {
    /// The node's NATS connection.
    pub(crate) client: async_nats::Client,
    /// The stream (names the cluster in the subjects).
    pub(crate) stream: String,
    /// This node.
    pub(crate) me: NodeId,
    /// The node's presence.
    pub(crate) hub: Arc<PresenceHub>,
    /// The live set.
    pub(crate) live: watch::Receiver<Arc<LiveNodes>>,
    /// Beats every this long (`cluster.heartbeat_ms`).
    pub(crate) beat: Duration,
    /// Sends changes every this long ([`relay_tick`]).
    pub(crate) tick: Duration,
    /// Most users one peer may list (`limits.max_connections`).
    pub(crate) max_per_peer: usize,
}

/// Starts presence across nodes: subscribes to the peers' messages and to
/// this node's snapshot requests, and spawns the task that sends this
/// node's presence and applies the peers'.
///
/// # Errors
/// If NATS refuses a subscription.
pub(crate) async fn start_presence(
    link: PresenceLink,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<(), ClusterError> {
    let peers = link
        .client
        .subscribe(format!("confab.presence.{}.*", link.stream))
        .await
        .map_err(|e| super::error::nats("subscribe to the nodes' presence", e))?;
    let asks = link
        .client
        .subscribe(sync_subject(&link.stream, &link.me))
        .await
        .map_err(|e| super::error::nats("subscribe to presence snapshot requests", e))?;
    link.hub.relay(link.max_per_peer);
    tasks.spawn(run(link, peers, asks, stop));
    Ok(())
}

async fn run(
    link: PresenceLink,
    mut peers: async_nats::Subscriber,
    mut asks: async_nats::Subscriber,
    stop: CancellationToken,
) {
    let PresenceLink {
        client,
        stream,
        me,
        hub,
        mut live,
        beat,
        tick: every,
        max_per_peer,
    } = link;
    let subject = presence_subject(&stream, &me);
    let mut out = Outgoing::new(rand::random());
    let mut feeds = Feeds::default();
    let mut snapshot_wanted = true;
    let mut last_sent = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let messages = if std::mem::take(&mut snapshot_wanted) {
                    out.snapshot(hub.take_relayed(true))
                } else {
                    let changes = hub.take_relayed(false);
                    if changes.is_empty() && last_sent.elapsed() < beat {
                        Vec::new()
                    } else {
                        out.delta(changes)
                    }
                };
                if !messages.is_empty() {
                    last_sent = Instant::now();
                }
                for m in messages {
                    if let Err(e) = client.publish(subject.clone(), m.encode()).await {
                        debug!(error = %e, "cannot send presence to other nodes");
                    }
                }
                for peer in feeds.due_for_snapshot(Instant::now()) {
                    metrics::counter!("confab_cluster_presence_syncs_total").increment(1);
                    if let Err(e) = client.publish(sync_subject(&stream, &peer), Bytes::new()).await {
                        debug!(%peer, error = %e, "cannot ask a node for its presence");
                    }
                }
            }
            m = asks.next() => {
                if m.is_none() {
                    return;
                }
                // Coalesced: one snapshot at the next tick answers every
                // request until then.
                snapshot_wanted = true;
            }
            m = peers.next() => {
                let Some(m) = m else { return };
                let Some(from) = m.subject.rsplit('.').next().and_then(|t| NodeId::new(t).ok()) else {
                    continue;
                };
                // Our own messages, and a node not (or no longer) live:
                // ignored (a dead node's late message brings nobody back).
                if from == me || !live.borrow().contains(&from) {
                    continue;
                }
                let msg = match Message::decode(m.payload) {
                    Ok(msg) => msg,
                    Err(why) => {
                        debug!(node = %from, error = why, "a bad presence message from another node");
                        metrics::counter!("confab_cluster_ignored_total", "kind" => "presence")
                            .increment(1);
                        continue;
                    }
                };
                let peer = Peer::from(from.as_str());
                let mut departures: Vec<Departure> = Vec::new();
                let mut ignored = 0;
                for op in feeds.receive(&from, msg, max_per_peer) {
                    let (gone, over) = match op {
                        Op::Drop => (hub.drop_peer(&peer, now_us()), 0),
                        Op::Apply(entries) => hub.apply_peer(&peer, entries, now_us()),
                        Op::Replace(entries) => hub.replace_peer(&peer, entries, now_us()),
                    };
                    departures.extend(gone);
                    ignored += over;
                }
                if ignored > 0 {
                    metrics::counter!("confab_cluster_ignored_total", "kind" => "presence_user")
                        .increment(ignored as u64);
                }
                if !departures.is_empty() {
                    hub.store_departures(departures).await;
                }
            }
            changed = live.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = live.borrow_and_update().clone();
                for gone in feeds.retain_live(|n| now.contains(n)) {
                    let departures = hub.drop_peer(&Peer::from(gone.as_str()), now_us());
                    info!(node = %gone, offline = departures.len(), "a node left: its presence is dropped");
                    if !departures.is_empty() {
                        hub.store_departures(departures).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PresenceStatus::{Away, Offline, Online};

    fn u(s: &str) -> UserId {
        UserId::new(s).expect("id")
    }

    fn n(s: &str) -> NodeId {
        NodeId::new(s).expect("id")
    }

    fn says(user: &str, status: Option<PresenceStatus>, left_at_us: u64) -> Relayed {
        Relayed {
            user: u(user),
            status,
            left_at_us,
        }
    }

    #[test]
    fn messages_round_trip_and_refuse_every_truncation() {
        let msg = Message {
            incarnation: 0x0102_0304_0506_0708,
            seq: 42,
            kind: Kind::Snapshot {
                first: true,
                last: false,
            },
            entries: vec![
                says("alice", Some(Online), 0),
                says("bob", Some(Away), 0),
                says("carol", Some(Offline), 0),
                says("dave", None, 1_700_000_000_000_000),
            ],
        };
        let whole = msg.encode();
        assert_eq!(Message::decode(whole.clone()), Ok(msg));
        for n in 0..whole.len() {
            assert!(Message::decode(whole.slice(..n)).is_err(), "prefix {n}");
        }
        let mut longer = BytesMut::from(&whole[..]);
        longer.put_u8(0);
        assert!(Message::decode(longer.freeze()).is_err(), "trailing bytes");
        let beat = Message {
            incarnation: 1,
            seq: 1,
            kind: Kind::Delta,
            entries: Vec::new(),
        };
        assert_eq!(Message::decode(beat.encode()), Ok(beat.clone()));
        // Another version, kind, flag, status, or a count past the limit.
        let edits: [(usize, u8); 5] = [(0, 2), (1, 3), (2, 4), (21, 9), (19, 0xff)];
        for (at, value) in edits {
            let mut b = BytesMut::from(&whole[..]);
            b[at] = value;
            assert!(Message::decode(b.freeze()).is_err(), "byte {at} = {value}");
        }
        let mut b = BytesMut::from(&beat.encode()[..]);
        b[2] = 1;
        assert!(Message::decode(b.freeze()).is_err(), "a delta has no flags");
    }

    #[test]
    fn deltas_and_snapshots_are_cut_into_numbered_messages() {
        let mut out = Outgoing::new(9);
        let many: Vec<Relayed> = (0..MAX_ENTRIES + 1)
            .map(|i| says(&format!("u{i}"), Some(Online), 0))
            .collect();
        let d = out.delta(many.clone());
        assert_eq!(
            d.iter()
                .map(|m| (m.seq, m.entries.len()))
                .collect::<Vec<_>>(),
            vec![(1, MAX_ENTRIES), (2, 1)]
        );
        let beat = out.delta(Vec::new());
        assert_eq!((beat.len(), beat[0].seq), (1, 3));
        let s = out.snapshot(many);
        let kinds: Vec<_> = s.iter().map(|m| (m.seq, m.kind.clone())).collect();
        assert_eq!(
            kinds,
            vec![
                (
                    4,
                    Kind::Snapshot {
                        first: true,
                        last: false
                    }
                ),
                (
                    5,
                    Kind::Snapshot {
                        first: false,
                        last: true
                    }
                ),
            ]
        );
        let empty = out.snapshot(Vec::new());
        assert_eq!(
            empty[0].kind,
            Kind::Snapshot {
                first: true,
                last: true
            }
        );
        assert!(d.iter().chain(&s).all(|m| m.incarnation == 9));
    }

    /// What a receiver does with a peer's messages, through lost,
    /// reordered and restarted streams of them.
    #[test]
    fn feeds_apply_in_order_and_ask_for_a_snapshot_after_any_loss() {
        let b = n("b");
        let mut feeds = Feeds::default();
        let mut out = Outgoing::new(7);
        let t0 = Instant::now();
        // A peer first heard mid-stream: its deltas apply, and it is asked.
        let d1 = out.delta(vec![says("alice", Some(Online), 0)]).remove(0);
        assert_eq!(
            feeds.receive(&b, d1.clone(), 100),
            vec![Op::Apply(d1.entries.clone())]
        );
        assert_eq!(feeds.due_for_snapshot(t0), vec![b.clone()]);
        assert!(
            feeds
                .due_for_snapshot(t0 + Duration::from_millis(100))
                .is_empty(),
            "asked already"
        );
        assert_eq!(
            feeds.due_for_snapshot(t0 + ASK_AGAIN),
            vec![b.clone()],
            "asked again"
        );
        // The snapshot (two parts) arrives: it replaces all; in sync.
        let big: Vec<Relayed> = (0..MAX_ENTRIES + 2)
            .map(|i| says(&format!("u{i}"), Some(Online), 0))
            .collect();
        let parts = out.snapshot(big.clone());
        assert!(feeds.receive(&b, parts[0].clone(), 5000).is_empty());
        assert_eq!(
            feeds.receive(&b, parts[1].clone(), 5000),
            vec![Op::Replace(big.clone())]
        );
        assert!(
            feeds.due_for_snapshot(t0 + ASK_AGAIN * 3).is_empty(),
            "in sync"
        );
        // A beat is nothing to apply; a stale message is ignored.
        let beat = out.delta(Vec::new()).remove(0);
        assert!(feeds.receive(&b, beat, 100).is_empty());
        assert!(feeds.receive(&b, parts[1].clone(), 100).is_empty());
        // A lost message: the next one still applies, and a snapshot is
        // asked for.
        let _lost = out.delta(vec![says("bob", Some(Online), 0)]);
        let d = out.delta(vec![says("carol", Some(Away), 0)]).remove(0);
        assert_eq!(
            feeds.receive(&b, d.clone(), 100),
            vec![Op::Apply(d.entries)]
        );
        assert_eq!(feeds.due_for_snapshot(t0 + ASK_AGAIN * 4), vec![b.clone()]);
        // A snapshot missing a part is not used; the next whole one is, cut
        // to the peer's share.
        let parts = out.snapshot(big.clone());
        assert!(
            feeds.receive(&b, parts[1].clone(), 100).is_empty(),
            "no first part"
        );
        let parts = out.snapshot(big.clone());
        assert!(feeds.receive(&b, parts[0].clone(), 100).is_empty());
        assert_eq!(
            feeds.receive(&b, parts[1].clone(), 100),
            vec![Op::Replace(big[..100].to_vec())]
        );
        // The peer restarts: what it said is dropped before its new words.
        let mut reborn = Outgoing::new(8);
        let first = reborn.delta(vec![says("dave", Some(Online), 0)]).remove(0);
        assert_eq!(
            feeds.receive(&b, first.clone(), 100),
            vec![Op::Drop, Op::Apply(first.entries)]
        );
        assert_eq!(feeds.due_for_snapshot(t0 + ASK_AGAIN * 9), vec![b.clone()]);
        // A peer that leaves the live set is forgotten; heard again, it
        // is new (asked for a snapshot, nothing to drop).
        let c = n("c");
        let beat = Outgoing::new(3).delta(Vec::new()).remove(0);
        assert!(feeds.receive(&c, beat.clone(), 100).is_empty());
        assert_eq!(feeds.retain_live(|x| *x == c), vec![b.clone()]);
        assert!(feeds.retain_live(|x| *x == c).is_empty());
        let again = reborn.delta(Vec::new()).remove(0);
        assert!(feeds.receive(&b, again, 100).is_empty());
        assert_eq!(feeds.due_for_snapshot(t0 + ASK_AGAIN * 20), vec![b, c]);
    }

    #[test]
    fn subjects_name_the_cluster_and_the_node() {
        let a = n("a");
        assert_eq!(
            presence_subject("CONFAB_ROOMS", &a),
            "confab.presence.CONFAB_ROOMS.a"
        );
        assert_eq!(
            sync_subject("CONFAB_ROOMS", &a),
            "confab.presence.CONFAB_ROOMS.a.sync"
        );
        assert_eq!(relay_tick(Duration::from_secs(1)), MAX_RELAY_TICK);
        assert_eq!(
            relay_tick(Duration::from_millis(50)),
            Duration::from_millis(50)
        );
    }
}
