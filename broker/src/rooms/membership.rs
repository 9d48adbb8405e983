//! Managed rooms in memory: their record, members and roles as the
//! sequencer keeps them (stored by [`crate::storage::meta::rooms`]).

use confab_codec::{Member, Role, RoomId, RoomInfo, Seq, UserId};
use rustc_hash::FxHashMap;

use crate::storage::meta;
pub(crate) use crate::storage::meta::rooms::RoomRecord;
use crate::storage::{MetaWrite, RoomLog, StorageError};

/// A managed room's record and members, in memory.
#[derive(Debug, Clone)]
pub(crate) struct RoomState {
    pub(crate) record: RoomRecord,
    pub(crate) members: FxHashMap<UserId, Role>,
    /// The inbox epoch its members were last marked in (0: never; see
    /// [`crate::storage::meta::inbox`]).
    pub(crate) inbox_epoch: u64,
}

impl RoomState {
    /// Loads a room's state; `None` if the room is not a managed room.
    pub(crate) fn load(
        log: &dyn RoomLog,
        room: &RoomId,
    ) -> Result<Option<RoomState>, StorageError> {
        let Some(record) = meta::rooms::record(log, room)? else {
            return Ok(None);
        };
        let members = meta::rooms::members(log, room)?;
        let inbox_epoch = meta::inbox::room_epoch(log, room)?;
        Ok(Some(RoomState {
            record,
            members,
            inbox_epoch,
        }))
    }

    /// Whether `user` is a member (invitees are not).
    pub(crate) fn is_member(&self, user: &UserId) -> bool {
        self.members.get(user).is_some_and(|r| *r != Role::Invited)
    }

    /// Whether `user` may invite, remove and edit.
    pub(crate) fn is_admin(&self, user: &UserId) -> bool {
        matches!(self.members.get(user), Some(Role::Owner | Role::Admin))
    }

    /// Members that joined (not invitees).
    pub(crate) fn member_count(&self) -> u32 {
        self.members
            .values()
            .filter(|r| **r != Role::Invited)
            .count() as u32
    }

    /// Sets a role in memory and returns the writes that store it.
    pub(crate) fn set_role(&mut self, room: &RoomId, user: &UserId, role: Role) -> [MetaWrite; 2] {
        self.members.insert(user.clone(), role);
        meta::rooms::set_role(room, user, role)
    }

    /// Removes a member in memory and returns the writes that store it.
    pub(crate) fn remove(&mut self, room: &RoomId, user: &UserId) -> [MetaWrite; 2] {
        self.members.remove(user);
        meta::rooms::remove_member(room, user)
    }

    /// The `RoomInfo` reply (members capped at `max_listed`).
    pub(crate) fn info(&self, room: &RoomId, head: Seq, first: Seq, max_listed: usize) -> RoomInfo {
        let mut members: Vec<Member> = self
            .members
            .iter()
            .map(|(user, role)| Member {
                user: user.clone(),
                role: *role,
            })
            .collect();
        members.sort_by(|a, b| (a.role as u8, &a.user).cmp(&(b.role as u8, &b.user)));
        members.truncate(max_listed);
        RoomInfo {
            room: room.clone(),
            kind: self.record.kind(),
            policy: self.record.policy(),
            meta: self.record.meta(),
            created_at_us: self.record.created_at_us,
            head,
            first,
            member_count: self.member_count(),
            members,
        }
    }
}

/// The id of the direct room of two users: the same whichever of them
/// asks. It hashes the two ids (in sorted order, length-prefixed, so no
/// two pairs collide by concatenation) with SHA-256.
pub(crate) fn direct_room_id(a: &UserId, b: &UserId) -> RoomId {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    let mut input = Vec::with_capacity(2 + x.as_bytes().len() + y.as_bytes().len());
    for u in [x, y] {
        input.push(u.as_bytes().len() as u8);
        input.extend_from_slice(u.as_bytes());
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let hex: String = digest.as_ref()[..20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    RoomId::new(format!("dm:{hex}")).expect("43 ASCII characters are a valid room id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_ids_are_symmetric_and_distinct() {
        let u = |s: &str| UserId::new(s).expect("id");
        assert_eq!(
            direct_room_id(&u("alice"), &u("bob")),
            direct_room_id(&u("bob"), &u("alice"))
        );
        assert_ne!(
            direct_room_id(&u("a:b"), &u("c")),
            direct_room_id(&u("a"), &u("b:c"))
        );
        assert_ne!(
            direct_room_id(&u("alice"), &u("bob")),
            direct_room_id(&u("alice"), &u("carol"))
        );
    }
}
