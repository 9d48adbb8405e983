//! Managed rooms: their record, members and roles, as stored in the
//! metadata keyspace and as the sequencer keeps them in memory.
//!
//! Keys (all in the `meta` column family):
//!
//! | key | value |
//! |---|---|
//! | `r` · len(room) · room | the room's record (JSON) |
//! | `m` · len(room) · room · user | the member's role (one byte) |
//! | `u` · len(user) · user · room | empty: the user's rooms, for `ListRooms` |

use confab_codec::{JoinPolicy, Member, Role, RoomId, RoomInfo, RoomKind, RoomMeta, Seq, UserId};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::storage::{MetaWrite, RoomLog, StorageError};

fn prefixed(tag: u8, first: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + first.len() + rest.len());
    k.push(tag);
    k.push(first.len() as u8);
    k.extend_from_slice(first);
    k.extend_from_slice(rest);
    k
}

/// Key of a room's record.
pub(crate) fn room_key(room: &RoomId) -> Vec<u8> {
    prefixed(b'r', room.as_bytes(), &[])
}

/// Key of a membership.
pub(crate) fn member_key(room: &RoomId, user: &UserId) -> Vec<u8> {
    prefixed(b'm', room.as_bytes(), user.as_bytes())
}

/// Prefix of a room's memberships.
pub(crate) fn member_prefix(room: &RoomId) -> Vec<u8> {
    prefixed(b'm', room.as_bytes(), &[])
}

/// Key of a user's room index entry.
pub(crate) fn user_room_key(user: &UserId, room: &RoomId) -> Vec<u8> {
    prefixed(b'u', user.as_bytes(), room.as_bytes())
}

/// Prefix of a user's room index.
pub(crate) fn user_prefix(user: &UserId) -> Vec<u8> {
    prefixed(b'u', user.as_bytes(), &[])
}

/// A managed room's stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RoomRecord {
    pub(crate) kind: u8,
    pub(crate) policy: u8,
    pub(crate) name: String,
    pub(crate) topic: String,
    pub(crate) avatar_url: String,
    pub(crate) created_at_us: u64,
    pub(crate) created_by: String,
}

impl RoomRecord {
    pub(crate) fn kind(&self) -> RoomKind {
        if self.kind == RoomKind::Direct as u8 {
            RoomKind::Direct
        } else {
            RoomKind::Group
        }
    }

    pub(crate) fn policy(&self) -> JoinPolicy {
        if self.policy == JoinPolicy::Open as u8 {
            JoinPolicy::Open
        } else {
            JoinPolicy::InviteOnly
        }
    }

    pub(crate) fn meta(&self) -> RoomMeta {
        RoomMeta {
            name: self.name.clone(),
            topic: self.topic.clone(),
            avatar_url: self.avatar_url.clone(),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn decode(room: &RoomId, bytes: &[u8]) -> Result<Self, StorageError> {
        serde_json::from_slice(bytes).map_err(|_| StorageError::Corrupt {
            room: room.to_string(),
            seq: 0,
        })
    }
}

/// A role from its stored byte.
pub(crate) fn role_from(b: u8) -> Option<Role> {
    Role::ALL.iter().copied().find(|r| *r as u8 == b)
}

/// A managed room's record and members, in memory.
#[derive(Debug, Clone)]
pub(crate) struct RoomState {
    pub(crate) record: RoomRecord,
    pub(crate) members: FxHashMap<UserId, Role>,
}

impl RoomState {
    /// Loads a room's state; `None` if the room is not a managed room.
    pub(crate) fn load(
        log: &dyn RoomLog,
        room: &RoomId,
    ) -> Result<Option<RoomState>, StorageError> {
        let Some(bytes) = log.meta_get(&room_key(room))? else {
            return Ok(None);
        };
        let record = RoomRecord::decode(room, &bytes)?;
        let prefix = member_prefix(room);
        let mut members = FxHashMap::default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = log.meta_scan(&prefix, after.as_deref(), 4096)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (k, v) in &page {
                let user = std::str::from_utf8(&k[prefix.len()..])
                    .ok()
                    .and_then(|u| UserId::new(u).ok());
                let role = v.first().copied().and_then(role_from);
                if let (Some(user), Some(role)) = (user, role) {
                    members.insert(user, role);
                }
            }
            if page.len() < 4096 {
                break;
            }
        }
        Ok(Some(RoomState { record, members }))
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
        [
            MetaWrite {
                key: member_key(room, user),
                value: Some(vec![role as u8]),
            },
            MetaWrite {
                key: user_room_key(user, room),
                value: Some(Vec::new()),
            },
        ]
    }

    /// Removes a member in memory and returns the writes that store it.
    pub(crate) fn remove(&mut self, room: &RoomId, user: &UserId) -> [MetaWrite; 2] {
        self.members.remove(user);
        [
            MetaWrite {
                key: member_key(room, user),
                value: None,
            },
            MetaWrite {
                key: user_room_key(user, room),
                value: None,
            },
        ]
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
