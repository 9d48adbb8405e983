//! Validation of the entries a publish refers to: replies and threads need
//! an earlier entry of the room; edits, deletes and reactions need a target
//! of the right kind, and edits and deletes are restricted by sender.
//!
//! The rules (docs/protocol.md section 12.3):
//!
//! - every reference names a retained entry: `first <= seq <= head`;
//! - `EDIT`: the target is a `MESSAGE` or an application kind (128-255), and
//!   the editor is its sender (not even an admin edits another's words);
//! - `DELETE`: the target is a `MESSAGE`, an application kind or a
//!   `REACTION`, and the deleter is its sender or, in a managed room, an
//!   admin or owner (moderation);
//! - `REACTION`: the target is a `MESSAGE` or an application kind; any
//!   member may react.
//!
//! The target's sender and kind come from the entries sequenced earlier in
//! the same group commit (not yet in the log) or from one point read of the
//! log, on the sequencer thread. Only these three kinds pay for that read.

use confab_codec::{ErrorCode, EventRecord, MessageKind, RoomId, Seq, UserId};
use rustc_hash::FxHashMap;

use crate::rooms::membership::RoomState;
use crate::storage::{RoomLog, StorageError};

/// What validation needs to know about an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) sender: UserId,
    pub(super) kind: MessageKind,
}

/// Entries sequenced in the batch being built, by room and sequence, so an
/// edit may target a message of the same batch.
pub(super) type Pending = FxHashMap<(RoomId, u64), Target>;

/// A refusal: its code and message.
pub(super) type Refusal = (ErrorCode, String);

/// The bounds and state of the room being published to.
pub(super) struct RoomView<'a> {
    pub(super) id: &'a RoomId,
    pub(super) first: u64,
    pub(super) head: u64,
    pub(super) state: Option<&'a RoomState>,
}

fn is_content(kind: MessageKind) -> bool {
    kind == MessageKind::MESSAGE || kind >= MessageKind::FIRST_CUSTOM
}

/// Checks the references of a publish of `kind` by `user`.
///
/// # Errors
/// `Ok(Err(refusal))` for a publish to refuse; `Err` if the log cannot be
/// read.
pub(super) fn check(
    log: &dyn RoomLog,
    pending: &Pending,
    room: &RoomView<'_>,
    user: &UserId,
    kind: MessageKind,
    refers_to: Option<Seq>,
    thread: Option<Seq>,
) -> Result<Result<(), Refusal>, StorageError> {
    for reference in [refers_to, thread].into_iter().flatten() {
        if reference.0 > room.head {
            return Ok(Err((
                ErrorCode::NoSuchMessage,
                format!("room {} has no message {}", room.id, reference.0),
            )));
        }
        if reference.0 < room.first {
            return Ok(Err((
                ErrorCode::NoSuchMessage,
                format!(
                    "message {} of room {} is no longer retained (first is {})",
                    reference.0, room.id, room.first
                ),
            )));
        }
    }
    let Some(target_seq) = refers_to.filter(|_| kind.needs_reference()) else {
        return Ok(Ok(()));
    };
    let target = match pending.get(&(room.id.clone(), target_seq.0)) {
        Some(t) => t.clone(),
        None => match read_target(log, room.id, target_seq)? {
            Some(t) => t,
            None => {
                return Ok(Err((
                    ErrorCode::NoSuchMessage,
                    format!("room {} has no message {}", room.id, target_seq.0),
                )))
            }
        },
    };
    Ok(allowed(room.state, user, kind, &target))
}

/// The permission rules, on a known target.
fn allowed(
    state: Option<&RoomState>,
    user: &UserId,
    kind: MessageKind,
    target: &Target,
) -> Result<(), Refusal> {
    let own = target.sender == *user;
    let moderator = state.is_some_and(|st| st.is_admin(user));
    let bad_target = |what: &str| {
        Err((
            ErrorCode::InvalidRequest,
            format!("{what} cannot target an entry of kind {}", target.kind.0),
        ))
    };
    match kind {
        MessageKind::EDIT if !is_content(target.kind) => bad_target("an edit"),
        MessageKind::EDIT if !own => Err((
            ErrorCode::Forbidden,
            "only the sender may edit a message".into(),
        )),
        MessageKind::DELETE if !is_content(target.kind) && target.kind != MessageKind::REACTION => {
            bad_target("a delete")
        }
        MessageKind::DELETE if !own && !moderator => Err((
            ErrorCode::Forbidden,
            "only the sender or a room admin may delete a message".into(),
        )),
        MessageKind::REACTION if !is_content(target.kind) => bad_target("a reaction"),
        _ => Ok(()),
    }
}

fn read_target(log: &dyn RoomLog, room: &RoomId, seq: Seq) -> Result<Option<Target>, StorageError> {
    let Some(rec) = log.read_range(room, seq, seq, 1, usize::MAX)?.pop() else {
        return Ok(None);
    };
    let ev = EventRecord::decode(rec.bytes).map_err(|_| StorageError::Corrupt {
        room: room.to_string(),
        seq: seq.0,
    })?;
    Ok(Some(Target {
        sender: ev.sender,
        kind: ev.kind,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("id")
    }

    fn target(sender: &str, kind: MessageKind) -> Target {
        Target {
            sender: user(sender),
            kind,
        }
    }

    #[test]
    fn edits_are_for_the_sender_only() {
        let msg = target("alice", MessageKind::MESSAGE);
        assert!(allowed(None, &user("alice"), MessageKind::EDIT, &msg).is_ok());
        let err = allowed(None, &user("bob"), MessageKind::EDIT, &msg).expect_err("refused");
        assert_eq!(err.0, ErrorCode::Forbidden);
        let reaction = target("alice", MessageKind::REACTION);
        let err = allowed(None, &user("alice"), MessageKind::EDIT, &reaction).expect_err("refused");
        assert_eq!(err.0, ErrorCode::InvalidRequest);
    }

    #[test]
    fn deletes_by_sender_and_reactions_by_anyone() {
        let msg = target("alice", MessageKind(200));
        assert!(allowed(None, &user("alice"), MessageKind::DELETE, &msg).is_ok());
        let err = allowed(None, &user("bob"), MessageKind::DELETE, &msg).expect_err("refused");
        assert_eq!(err.0, ErrorCode::Forbidden);
        assert!(allowed(None, &user("bob"), MessageKind::REACTION, &msg).is_ok());
        // A reaction is removed by deleting it; nobody reacts to a reaction.
        let reaction = target("bob", MessageKind::REACTION);
        assert!(allowed(None, &user("bob"), MessageKind::DELETE, &reaction).is_ok());
        let err =
            allowed(None, &user("bob"), MessageKind::REACTION, &reaction).expect_err("refused");
        assert_eq!(err.0, ErrorCode::InvalidRequest);
        let joined = target("bob", MessageKind::MEMBER_JOINED);
        let err = allowed(None, &user("bob"), MessageKind::DELETE, &joined).expect_err("refused");
        assert_eq!(err.0, ErrorCode::InvalidRequest);
    }
}
