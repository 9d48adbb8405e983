//! The message view: a pure fold of a room's entries into what a chat screen
//! shows, with edits, deletes and reactions applied (docs/protocol.md
//! section 12.3).
//!
//! Edits, deletes and reactions are ordinary entries that refer to an
//! earlier one. [`RoomView::apply`] folds them in, in any order: history
//! read backwards, a gap filled late or a duplicate give the same view as
//! the live stream, because every rule is order-independent:
//!
//! - the edit with the highest sequence wins, and only the original
//!   sender's edits count;
//! - a delete is final: the message stays deleted, later edits are ignored;
//!   deleting a reaction entry withdraws that reaction;
//! - reactions are a set of live reaction entries; one user counts once per
//!   reaction, however many entries they sent.
//!
//! An entry whose target has not arrived yet waits for it (history paged
//! backwards brings edits before their originals); one whose target is no
//! longer retained simply waits forever, as the protocol allows.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use confab_codec::{MessageKind, Seq, UserId};

use crate::events::RoomEvent;

/// One message as the application shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// The original entry's sequence.
    pub seq: Seq,
    /// Who sent it.
    pub sender: UserId,
    /// When it was committed, microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// Its kind (`MESSAGE` or an application kind).
    pub kind: MessageKind,
    /// The message it replies to, if any.
    pub reply_to: Option<Seq>,
    /// Its thread root, if any.
    pub thread: Option<Seq>,
    /// The payload to show: the latest edit's, else the original's; empty
    /// once deleted.
    pub content: Bytes,
    /// The sequence of the edit shown, if it was edited.
    pub edited: Option<Seq>,
    /// Whether it was deleted (a tombstone to show as such).
    pub deleted: bool,
    /// Live reaction entries: entry sequence to (user, reaction).
    reactions: BTreeMap<Seq, (UserId, Bytes)>,
    /// The original payload, kept so that the fold is order-independent.
    original: Bytes,
}

impl MessageView {
    /// Reactions: each reaction (for example an emoji) with the users who
    /// gave it, in byte order.
    pub fn reactions(&self) -> BTreeMap<Bytes, BTreeSet<UserId>> {
        let mut out: BTreeMap<Bytes, BTreeSet<UserId>> = BTreeMap::new();
        if self.deleted {
            return out;
        }
        for (user, reaction) in self.reactions.values() {
            out.entry(reaction.clone())
                .or_default()
                .insert(user.clone());
        }
        out
    }

    /// How many users gave each reaction.
    pub fn reaction_counts(&self) -> BTreeMap<Bytes, usize> {
        self.reactions()
            .into_iter()
            .map(|(r, users)| (r, users.len()))
            .collect()
    }

    fn refresh(&mut self, edit: Option<(Seq, Bytes)>) {
        if self.deleted {
            // Final, whatever the order: no content, no edit shown.
            self.content = Bytes::new();
            self.edited = None;
            return;
        }
        if let Some((seq, payload)) = edit {
            if self.edited.is_none_or(|e| seq > e) {
                self.edited = Some(seq);
                self.content = payload;
            }
        } else if self.edited.is_none() {
            self.content = self.original.clone();
        }
    }
}

/// The folded view of one room's messages.
///
/// ```
/// use confab_client::{RoomEvent, RoomView};
/// # use confab_client::confab_codec::{DeviceId, MessageKind, RoomId, Seq, UserId};
/// # fn ev(seq: u64, kind: MessageKind, target: Option<u64>, who: &str, p: &'static str) -> RoomEvent {
/// #     RoomEvent { room: RoomId::new("r").unwrap(), seq: Seq(seq), timestamp_us: seq,
/// #         sender: UserId::new(who).unwrap(), device: DeviceId::new("d").unwrap(),
/// #         client_msg_id: 0, kind, refers_to: target.map(Seq), thread: None,
/// #         payload: bytes::Bytes::from_static(p.as_bytes()), replayed: false, gaps: Vec::new() }
/// # }
/// let mut view = RoomView::new();
/// view.apply(&ev(1, MessageKind::MESSAGE, None, "alice", "helo"));
/// view.apply(&ev(2, MessageKind::EDIT, Some(1), "alice", "hello"));
/// view.apply(&ev(3, MessageKind::REACTION, Some(1), "bob", "👍"));
/// let msg = view.get(Seq(1)).unwrap();
/// assert_eq!(&msg.content[..], b"hello");
/// assert_eq!(msg.reaction_counts().get("👍".as_bytes()), Some(&1));
/// ```
#[derive(Debug, Clone, Default)]
pub struct RoomView {
    messages: BTreeMap<Seq, MessageView>,
    /// Every target of a `DELETE` seen so far.
    deleted: HashSet<Seq>,
    /// Reaction entries: entry sequence to the message it reacts to.
    reaction_targets: HashMap<Seq, Seq>,
    /// Edits and reactions whose target has not arrived, by target.
    waiting: HashMap<Seq, Vec<RoomEvent>>,
}

impl RoomView {
    /// An empty view.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one room entry in. Entries may come in any order and more than
    /// once; kinds other than messages, edits, deletes and reactions
    /// (membership, system) are ignored.
    pub fn apply(&mut self, event: &RoomEvent) {
        match event.kind {
            MessageKind::EDIT | MessageKind::REACTION => {
                let Some(target) = event.refers_to else {
                    return;
                };
                if event.kind == MessageKind::REACTION {
                    if self.deleted.contains(&event.seq) {
                        return;
                    }
                    self.reaction_targets.insert(event.seq, target);
                }
                match self.messages.get_mut(&target) {
                    Some(msg) => apply_to(msg, event),
                    None => {
                        let waiting = self.waiting.entry(target).or_default();
                        if !waiting.iter().any(|w| w.seq == event.seq) {
                            waiting.push(event.clone());
                        }
                    }
                }
            }
            MessageKind::DELETE => {
                let Some(target) = event.refers_to else {
                    return;
                };
                self.deleted.insert(target);
                if let Some(msg) = self.messages.get_mut(&target) {
                    msg.deleted = true;
                    msg.refresh(None);
                }
                if let Some(message) = self.reaction_targets.get(&target) {
                    if let Some(msg) = self.messages.get_mut(message) {
                        msg.reactions.remove(&target);
                    }
                }
                for waiting in self.waiting.values_mut() {
                    waiting.retain(|e| e.seq != target);
                }
            }
            kind if kind == MessageKind::MESSAGE || kind >= MessageKind::FIRST_CUSTOM => {
                if self.messages.contains_key(&event.seq) {
                    return;
                }
                let mut msg = MessageView {
                    seq: event.seq,
                    sender: event.sender.clone(),
                    timestamp_us: event.timestamp_us,
                    kind,
                    reply_to: event.refers_to,
                    thread: event.thread,
                    content: event.payload.clone(),
                    edited: None,
                    deleted: self.deleted.contains(&event.seq),
                    reactions: BTreeMap::new(),
                    original: event.payload.clone(),
                };
                msg.refresh(None);
                for op in self.waiting.remove(&event.seq).unwrap_or_default() {
                    apply_to(&mut msg, &op);
                }
                self.messages.insert(event.seq, msg);
            }
            _ => {}
        }
    }

    /// Folds many entries in.
    pub fn extend<'a>(&mut self, events: impl IntoIterator<Item = &'a RoomEvent>) {
        for e in events {
            self.apply(e);
        }
    }

    /// The message at `seq`, if it arrived.
    pub fn get(&self, seq: Seq) -> Option<&MessageView> {
        self.messages.get(&seq)
    }

    /// Every message that arrived, in sequence order (deleted ones
    /// included, flagged).
    pub fn messages(&self) -> impl Iterator<Item = &MessageView> {
        self.messages.values()
    }

    /// How many messages the view holds.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the view holds no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// Applies an edit or a reaction to its (present) target.
fn apply_to(msg: &mut MessageView, op: &RoomEvent) {
    match op.kind {
        MessageKind::EDIT if op.sender == msg.sender => {
            msg.refresh(Some((op.seq, op.payload.clone())));
        }
        MessageKind::REACTION => {
            msg.reactions
                .insert(op.seq, (op.sender.clone(), op.payload.clone()));
        }
        _ => {}
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
