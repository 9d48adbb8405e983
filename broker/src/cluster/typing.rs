//! Typing across nodes: every typing change of a node's devices goes to
//! the other nodes following the room, over core NATS.
//!
//! A room's typing subject is `confab.typing.<stream>.<room id in hex>`
//! ([`typing_subject`]; the stream names the cluster, as in the node
//! subjects of [`super::forward`]). A node subscribes to it while it
//! follows the room (from the moment its sequencer loads the room until it
//! drops it: the rooms its devices subscribe to, and the ones it writes),
//! so NATS routes a room's typing only to the nodes with an interest in
//! it. A change is sent at most once and may be lost; typing is ephemeral
//! and clients refresh it every few seconds (protocol 14.1).
//!
//! One task ([`start_relay`]) takes this node's changes from a bounded
//! queue (filled by [`TypingHub::set`]; a full queue drops the change),
//! groups what is waiting by room and publishes one message per room. A
//! receiving node hands each change to its own [`TypingHub`] as a remote
//! change: it is kept, expired after `rooms.typing_ttl_ms` (counted from
//! its arrival) and published to the node's devices each
//! `rooms.typing_window_ms`, exactly as a local one. So the semantics of
//! a single node hold across the cluster: one set per room, a stop from
//! any device removes the user, a start not refreshed expires.
//!
//! The message (version byte 1, then the sending node id with a u8 length,
//! a u16 count of at most [`MAX_NOTES`], and per change a byte (1 started,
//! 0 stopped) and the user id with a u16 length) is decoded with every
//! length checked; anything else is logged and dropped, never a panic.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use confab_codec::{RoomId, UserId};
use futures_util::StreamExt;
use rustc_hash::FxHashMap;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::names::room_subject;
use super::{ClusterError, NodeId};
use crate::fanout::RoomRegistry;
use crate::rooms::typing::{TypingHub, TypingNote};

/// The message's version byte.
const TYPING_V1: u8 = 1;

/// Most changes in one message (a room's waiting changes beyond it go in
/// more messages): with ids of at most 128 bytes, a message stays under
/// 140 KiB, far below NATS's default 1 MiB payload limit.
pub(crate) const MAX_NOTES: usize = 1000;

/// Most changes the relay takes from its queue at once.
const MAX_BATCH: usize = 4096;

/// Who started (true) or stopped (false) typing, in order.
type Notes = Vec<(UserId, bool)>;

/// How many changes of this node's devices may wait for the relay.
pub(crate) const RELAY_QUEUE: usize = 8192;

/// The typing subject of `room` in the cluster of `stream`.
pub(crate) fn typing_subject(stream: &str, room: &RoomId) -> String {
    room_subject(&format!("confab.typing.{stream}"), room)
}

/// A node's side of typing across nodes: what it needs to receive the
/// changes of the rooms it follows.
#[derive(Debug)]
pub(crate) struct TypingLink {
    client: async_nats::Client,
    stream: String,
    me: NodeId,
    hub: Arc<TypingHub>,
    rooms: Arc<RoomRegistry>,
    runtime: Handle,
}

impl TypingLink {
    /// The link of node `me` (in the cluster of `stream`) to its typing
    /// hub and rooms.
    pub(crate) fn new(
        client: async_nats::Client,
        stream: String,
        me: NodeId,
        hub: Arc<TypingHub>,
        rooms: Arc<RoomRegistry>,
    ) -> Self {
        Self {
            client,
            stream,
            me,
            hub,
            rooms,
            runtime: Handle::current(),
        }
    }

    /// Receives `room`'s typing from the other nodes until `stop`:
    /// subscribes (awaited, so the server has the interest when this
    /// returns) and hands the changes to the hub from a task.
    ///
    /// # Errors
    /// If NATS refuses the subscription.
    pub(crate) async fn follow(
        self: &Arc<Self>,
        room: &RoomId,
        stop: CancellationToken,
    ) -> Result<(), ClusterError> {
        let mut sub = self
            .client
            .subscribe(typing_subject(&self.stream, room))
            .await
            .map_err(|e| super::error::nats("subscribe to a room's typing", e))?;
        let link = self.clone();
        let room = room.clone();
        self.runtime.spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = sub.next() => match m { Some(m) => m, None => return },
                };
                link.receive(&room, msg.payload);
            }
        });
        Ok(())
    }

    fn receive(&self, room: &RoomId, payload: Bytes) {
        let (from, notes) = match decode(payload) {
            Ok(x) => x,
            Err(why) => {
                debug!(%room, error = why, "a bad typing message from another node");
                metrics::counter!("confab_cluster_ignored_total", "kind" => "typing").increment(1);
                return;
            }
        };
        if from == self.me.as_str() {
            return;
        }
        // Without the room in memory no device here follows it.
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let now = Instant::now();
        for (user, active) in notes {
            self.hub.set_remote(r.clone(), user, active, now);
        }
    }
}

/// Starts the task that sends this node's typing changes (taken from
/// `rx`) to the other nodes.
pub(crate) fn start_relay(
    client: async_nats::Client,
    stream: String,
    me: NodeId,
    mut rx: mpsc::Receiver<TypingNote>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) {
    tasks.spawn(async move {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                n = rx.recv() => match n { Some(n) => n, None => return },
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(n) => batch.push(n),
                    Err(_) => break,
                }
            }
            for (room, notes) in by_room(batch) {
                let subject = typing_subject(&stream, &room);
                for part in notes.chunks(MAX_NOTES) {
                    let payload = encode(&me, part);
                    if let Err(e) = client.publish(subject.clone(), payload).await {
                        debug!(%room, error = %e, "cannot send typing to other nodes");
                    }
                }
            }
        }
    });
}

/// The changes grouped by room, in the order of each room's first change,
/// each room's in their order.
fn by_room(batch: Vec<TypingNote>) -> Vec<(RoomId, Notes)> {
    let mut out: Vec<(RoomId, Notes)> = Vec::new();
    let mut index: FxHashMap<RoomId, usize> = FxHashMap::default();
    for n in batch {
        let i = *index.entry(n.room.clone()).or_insert_with(|| {
            out.push((n.room, Vec::new()));
            out.len() - 1
        });
        out[i].1.push((n.user, n.active));
    }
    out
}

/// One message (see the module docs); `notes` holds at most
/// [`MAX_NOTES`].
fn encode(me: &NodeId, notes: &[(UserId, bool)]) -> Bytes {
    let node = me.as_str().as_bytes();
    let mut b = BytesMut::with_capacity(4 + node.len() + notes.len() * 16);
    b.put_u8(TYPING_V1);
    // A node id is at most 64 bytes; a user id at most 128.
    b.put_u8(node.len() as u8);
    b.put_slice(node);
    b.put_u16(notes.len().min(MAX_NOTES) as u16);
    for (user, active) in notes.iter().take(MAX_NOTES) {
        b.put_u8(u8::from(*active));
        let id = user.as_str().as_bytes();
        b.put_u16(id.len() as u16);
        b.put_slice(id);
    }
    b.freeze()
}

/// The sending node and the changes of one message, every length checked.
fn decode(mut b: Bytes) -> Result<(String, Notes), &'static str> {
    if b.remaining() < 2 || b.get_u8() != TYPING_V1 {
        return Err("unknown version");
    }
    let len = usize::from(b.get_u8());
    if b.remaining() < len {
        return Err("truncated");
    }
    let from = String::from_utf8(b.split_to(len).to_vec()).map_err(|_| "node id not UTF-8")?;
    if b.remaining() < 2 {
        return Err("truncated");
    }
    let count = usize::from(b.get_u16());
    if count > MAX_NOTES {
        return Err("too many changes");
    }
    // Each change takes at least 3 bytes: the count cannot ask for more
    // room than the payload has.
    let mut notes = Vec::with_capacity(count.min(b.remaining() / 3));
    for _ in 0..count {
        if b.remaining() < 3 {
            return Err("truncated");
        }
        let active = match b.get_u8() {
            0 => false,
            1 => true,
            _ => return Err("bad flag"),
        };
        let len = usize::from(b.get_u16());
        if b.remaining() < len {
            return Err("truncated");
        }
        let id = String::from_utf8(b.split_to(len).to_vec()).map_err(|_| "user id not UTF-8")?;
        let user = UserId::new(id).map_err(|_| "bad user id")?;
        notes.push((user, active));
    }
    if b.has_remaining() {
        return Err("trailing bytes");
    }
    Ok((from, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::new(s).expect("id")
    }

    #[test]
    fn messages_round_trip_and_refuse_every_truncation() {
        let me = NodeId::new("node-a").expect("id");
        let notes = vec![(u("alice"), true), (u("bob"), false), (u("c"), true)];
        let whole = encode(&me, &notes);
        assert_eq!(decode(whole.clone()), Ok(("node-a".to_owned(), notes)));
        for n in 0..whole.len() {
            assert!(decode(whole.slice(..n)).is_err(), "prefix {n}");
        }
        let mut longer = BytesMut::from(&whole[..]);
        longer.put_u8(0);
        assert!(decode(longer.freeze()).is_err(), "trailing bytes");
        // A count past the limit, a bad flag, a bad user id, another
        // version: refused.
        let mut b = BytesMut::from(&encode(&me, &[])[..]);
        let at = b.len() - 2;
        b[at..].copy_from_slice(&((MAX_NOTES + 1) as u16).to_be_bytes());
        assert!(decode(b.freeze()).is_err());
        let mut b = BytesMut::from(&encode(&me, &[(u("x"), true)])[..]);
        let flag = b.len() - 4;
        b[flag] = 2;
        assert!(decode(b.clone().freeze()).is_err());
        b[flag] = 1;
        let last = b.len() - 1;
        b[last] = 0;
        assert!(decode(b.clone().freeze()).is_err(), "a control character");
        b[0] = 2;
        assert!(decode(b.freeze()).is_err());
    }

    #[test]
    fn changes_are_grouped_by_room_in_order() {
        let (r, s) = (RoomId::new("r").expect("id"), RoomId::new("s").expect("id"));
        let note = |room: &RoomId, user: &str, active| TypingNote {
            room: room.clone(),
            user: u(user),
            active,
        };
        let batch = vec![
            note(&r, "a", true),
            note(&s, "b", true),
            note(&r, "a", false),
            note(&r, "c", true),
        ];
        assert_eq!(
            by_room(batch),
            vec![
                (r, vec![(u("a"), true), (u("a"), false), (u("c"), true)]),
                (s, vec![(u("b"), true)]),
            ]
        );
    }

    #[test]
    fn the_subject_names_the_cluster_and_the_room_in_hex() {
        let r = RoomId::new("a.b").expect("id");
        assert_eq!(
            typing_subject("CONFAB_ROOMS", &r),
            "confab.typing.CONFAB_ROOMS.612e62"
        );
    }
}
