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
//! log by a reader thread (the publish waits for it). Only these three
//! kinds pay for that read.

use confab_codec::{ErrorCode, MessageKind, RoomId, UserId};
use rustc_hash::FxHashMap;

use super::core::{mismatch, Core, Halt};
use super::reads::{Answer, Need};
use super::PublishReq;
use crate::rooms::membership::RoomState;

/// What validation needs to know about an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) sender: UserId,
    pub(crate) kind: MessageKind,
}

/// Entries sequenced in the batch being built, by room and sequence, so an
/// edit may target a message of the same batch.
pub(super) type Pending = FxHashMap<(RoomId, u64), Target>;

/// A refusal: its code and message.
pub(super) type Refusal = (ErrorCode, String);

fn is_content(kind: MessageKind) -> bool {
    kind == MessageKind::MESSAGE || kind >= MessageKind::FIRST_CUSTOM
}

/// Checks the references of a publish to a loaded room. A target that is
/// neither in the group being built nor read yet is asked for.
///
/// # Errors
/// [`Halt::Refuse`] for a publish to refuse, [`Halt::Wait`] if it must wait
/// for the target to be read.
pub(super) fn check(core: &mut Core, req: &PublishReq) -> Result<(), Halt> {
    let Some(r) = core.rooms.get(&req.room) else {
        return Err(Halt::Refuse(
            ErrorCode::Internal,
            "room state unavailable".into(),
        ));
    };
    let (first, head) = (r.first.max(1), r.head);
    for reference in [req.refers_to, req.thread].into_iter().flatten() {
        if reference.0 > head {
            return Err(Halt::Refuse(
                ErrorCode::NoSuchMessage,
                format!("room {} has no message {}", req.room, reference.0),
            ));
        }
        if reference.0 < first {
            return Err(Halt::Refuse(
                ErrorCode::NoSuchMessage,
                format!(
                    "message {} of room {} is no longer retained (first is {first})",
                    reference.0, req.room
                ),
            ));
        }
    }
    let Some(target_seq) = req.refers_to.filter(|_| req.kind.needs_reference()) else {
        return Ok(());
    };
    let target = match core.pending.get(&(req.room.clone(), target_seq.0)) {
        Some(t) => Some(t.clone()),
        None => {
            let need = Need::Target {
                room: req.room.clone(),
                seq: target_seq.0,
            };
            match core.reads.take(need) {
                None => return Err(Halt::Wait),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Answer::Target(t))) => t,
                Some(Ok(other)) => return Err(mismatch(&other)),
            }
        }
    };
    let Some(target) = target else {
        return Err(Halt::Refuse(
            ErrorCode::NoSuchMessage,
            format!("room {} has no message {}", req.room, target_seq.0),
        ));
    };
    let state = core.rooms.get(&req.room).and_then(|r| r.state.as_ref());
    allowed(state, &req.conn.user, req.kind, &target).map_err(Halt::from)
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
