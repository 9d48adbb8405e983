//! Who may see whose presence: users who are both members (not invitees)
//! of at least one managed room. Read from the stored membership on a
//! blocking thread, so that a membership change is honoured at once.
//!
//! Open rooms that were never created have no membership and share no
//! presence.

use std::collections::HashSet;

use confab_codec::{Role, RoomId, UserId};
use rustc_hash::FxHashSet;

use crate::storage::meta::rooms::{all_user_rooms as indexed_rooms, is_member, scan_members};
use crate::storage::{RoomLog, StorageError};

/// Above this many point look-ups (watching users × rooms of the user), the
/// rooms' member lists are scanned instead.
const POINT_LOOKUPS: usize = 4096;

/// The managed rooms `user` is a member of.
fn joined_rooms(log: &dyn RoomLog, user: &UserId) -> Result<Vec<RoomId>, StorageError> {
    let mut joined = Vec::new();
    for room in indexed_rooms(log, user)? {
        if is_member(log, &room, user)? {
            joined.push(room);
        }
    }
    Ok(joined)
}

/// Which of `watching` may see `user`'s presence (`user` sees their own).
///
/// Cost: one scan of `user`'s rooms, then either a point look-up per
/// watching user and room, or one scan of each room's members, whichever
/// is smaller.
pub(super) fn seers(
    log: &dyn RoomLog,
    user: &UserId,
    watching: &[UserId],
) -> Result<Vec<UserId>, StorageError> {
    let mut out: Vec<UserId> = watching.iter().filter(|w| *w == user).cloned().collect();
    let rooms = joined_rooms(log, user)?;
    if rooms.is_empty() {
        return Ok(out);
    }
    if watching.len().saturating_mul(rooms.len()) <= POINT_LOOKUPS {
        for w in watching.iter().filter(|w| *w != user) {
            for room in &rooms {
                if is_member(log, room, w)? {
                    out.push(w.clone());
                    break;
                }
            }
        }
        return Ok(out);
    }
    let wanted: FxHashSet<&UserId> = watching.iter().filter(|w| *w != user).collect();
    let mut found: FxHashSet<UserId> = FxHashSet::default();
    for room in &rooms {
        scan_members(log, room, |u, role| {
            if role != Role::Invited && wanted.contains(&u) {
                found.insert(u);
            }
        })?;
        if found.len() == wanted.len() {
            break;
        }
    }
    out.extend(found);
    Ok(out)
}

/// Which of `users` `caller` may see (those sharing a room with the
/// caller, and the caller), in the order asked, without duplicates. With
/// `only` (a token's rooms claim), only those rooms count as shared.
///
/// # Errors
/// If the storage fails.
pub(crate) fn visible_to(
    log: &dyn RoomLog,
    caller: &UserId,
    users: &[UserId],
    only: Option<&HashSet<RoomId>>,
) -> Result<Vec<UserId>, StorageError> {
    let mine: FxHashSet<RoomId> = joined_rooms(log, caller)?
        .into_iter()
        .filter(|r| only.is_none_or(|o| o.contains(r)))
        .collect();
    let mut seen = FxHashSet::default();
    let mut out = Vec::new();
    for u in users {
        if !seen.insert(u) {
            continue;
        }
        let visible = if u == caller {
            true
        } else {
            let mut shared = false;
            for room in indexed_rooms(log, u)? {
                if mine.contains(&room) && is_member(log, &room, u)? {
                    shared = true;
                    break;
                }
            }
            shared
        };
        if visible {
            out.push(u.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::storage::MemoryLog;

    fn u(s: &str) -> UserId {
        UserId::new(s).expect("id")
    }

    fn put(log: &MemoryLog, room: &str, user: &str, role: Role) {
        let (r, m) = (RoomId::new(room).expect("id"), u(user));
        let writes = crate::storage::meta::rooms::set_role(&r, &m, role);
        log.commit(&[], &writes, Durability::None).expect("commit");
    }

    #[test]
    fn members_share_invitees_and_strangers_do_not() {
        let log = MemoryLog::default();
        put(&log, "g", "alice", Role::Owner);
        put(&log, "g", "bob", Role::Member);
        put(&log, "g", "carol", Role::Invited);
        put(&log, "h", "dave", Role::Owner);
        let all = [u("alice"), u("bob"), u("carol"), u("dave"), u("alice")];
        assert_eq!(
            visible_to(&log, &u("alice"), &all, None).expect("read"),
            vec![u("alice"), u("bob")]
        );
        assert_eq!(
            visible_to(&log, &u("carol"), &all, None).expect("read"),
            vec![u("carol")],
            "an invitee sees nobody"
        );
        let mut s = seers(&log, &u("bob"), &all[..4]).expect("read");
        s.sort();
        assert_eq!(s, vec![u("alice"), u("bob")]);
        assert!(seers(&log, &u("dave"), &[u("alice")])
            .expect("read")
            .is_empty());
        // A rooms claim narrows what counts as shared.
        put(&log, "h", "alice", Role::Member);
        let only: HashSet<RoomId> = [RoomId::new("h").expect("id")].into_iter().collect();
        assert_eq!(
            visible_to(&log, &u("alice"), &all, Some(&only)).expect("read"),
            vec![u("alice"), u("dave")]
        );
    }

    #[test]
    fn scanning_members_finds_the_same_seers() {
        let log = MemoryLog::default();
        // More watchers than the point look-up budget.
        let watching: Vec<UserId> = (0..POINT_LOOKUPS + 10)
            .map(|i| u(&format!("w{i}")))
            .collect();
        put(&log, "big", "target", Role::Member);
        put(&log, "big", "w3", Role::Member);
        put(&log, "big", "w7", Role::Invited);
        put(&log, "other", "w9", Role::Member);
        let mut s = seers(&log, &u("target"), &watching).expect("read");
        s.sort();
        assert_eq!(s, vec![u("w3")]);
    }
}
