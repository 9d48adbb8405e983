//! Managed rooms as stored: each room's record, its memberships, and each
//! user's room index (for `ListRooms`, presence sharing and the per-user
//! room limit).

use confab_codec::{JoinPolicy, Role, RoomId, RoomKind, RoomMeta, UserId};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{prefixed, scan};
use crate::storage::{MetaWrite, RoomLog, StorageError};

fn record_key(room: &RoomId) -> Vec<u8> {
    prefixed(b'r', room.as_bytes(), &[])
}

fn member_key(room: &RoomId, user: &UserId) -> Vec<u8> {
    prefixed(b'm', room.as_bytes(), user.as_bytes())
}

fn member_prefix(room: &RoomId) -> Vec<u8> {
    prefixed(b'm', room.as_bytes(), &[])
}

fn index_key(user: &UserId, room: &RoomId) -> Vec<u8> {
    prefixed(b'u', user.as_bytes(), room.as_bytes())
}

fn index_prefix(user: &UserId) -> Vec<u8> {
    prefixed(b'u', user.as_bytes(), &[])
}

/// A role from its stored byte.
fn role_from(v: &[u8]) -> Option<Role> {
    let b = *v.first()?;
    Role::ALL.iter().copied().find(|r| *r as u8 == b)
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

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(room: &RoomId, bytes: &[u8]) -> Result<Self, StorageError> {
        serde_json::from_slice(bytes).map_err(|_| StorageError::Corrupt {
            room: room.to_string(),
            seq: 0,
        })
    }
}

/// A room's record; `None` if it is not a managed room.
///
/// # Errors
/// If the storage fails or the record does not decode.
pub(crate) fn record(log: &dyn RoomLog, room: &RoomId) -> Result<Option<RoomRecord>, StorageError> {
    log.meta_get(&record_key(room))?
        .map(|bytes| RoomRecord::decode(room, &bytes))
        .transpose()
}

/// Whether `room` is a managed room.
///
/// # Errors
/// If the storage fails.
pub(crate) fn exists(log: &dyn RoomLog, room: &RoomId) -> Result<bool, StorageError> {
    Ok(log.meta_get(&record_key(room))?.is_some())
}

/// Every membership of a room (invitations included).
///
/// # Errors
/// If the storage fails.
pub(crate) fn members(
    log: &dyn RoomLog,
    room: &RoomId,
) -> Result<FxHashMap<UserId, Role>, StorageError> {
    let mut members = FxHashMap::default();
    scan_members(log, room, |user, role| {
        members.insert(user, role);
    })?;
    Ok(members)
}

/// Calls `f` with every membership of a room (invitations included).
///
/// # Errors
/// If the storage fails.
pub(crate) fn scan_members(
    log: &dyn RoomLog,
    room: &RoomId,
    mut f: impl FnMut(UserId, Role),
) -> Result<(), StorageError> {
    scan(log, &member_prefix(room), |rest, v| {
        let user = std::str::from_utf8(rest)
            .ok()
            .and_then(|u| UserId::new(u).ok());
        if let (Some(user), Some(role)) = (user, role_from(v)) {
            f(user, role);
        }
    })
}

/// A user's role in a room, if any (an invitation is `Role::Invited`).
///
/// # Errors
/// If the storage fails.
pub(crate) fn role(
    log: &dyn RoomLog,
    room: &RoomId,
    user: &UserId,
) -> Result<Option<Role>, StorageError> {
    Ok(log
        .meta_get(&member_key(room, user))?
        .and_then(|v| role_from(&v)))
}

/// Whether `user` is a member, not an invitee, of `room`.
///
/// # Errors
/// If the storage fails.
pub(crate) fn is_member(
    log: &dyn RoomLog,
    room: &RoomId,
    user: &UserId,
) -> Result<bool, StorageError> {
    Ok(role(log, room, user)?.is_some_and(|r| r != Role::Invited))
}

/// One page of a user's room index (invitations included), in id order,
/// after `after`, at most `limit` rooms.
///
/// # Errors
/// If the storage fails.
pub(crate) fn user_rooms(
    log: &dyn RoomLog,
    user: &UserId,
    after: Option<&RoomId>,
    limit: usize,
) -> Result<Vec<RoomId>, StorageError> {
    let prefix = index_prefix(user);
    let after_key = after.map(|r| index_key(user, r));
    Ok(log
        .meta_scan(&prefix, after_key.as_deref(), limit)?
        .into_iter()
        .filter_map(|(k, _)| {
            let r = std::str::from_utf8(k.get(prefix.len()..)?).ok()?;
            RoomId::new(r).ok()
        })
        .collect())
}

/// A user's whole room index (invitations included).
///
/// # Errors
/// If the storage fails.
pub(crate) fn all_user_rooms(
    log: &dyn RoomLog,
    user: &UserId,
) -> Result<Vec<RoomId>, StorageError> {
    let mut rooms = Vec::new();
    scan(log, &index_prefix(user), |rest, _| {
        if let Some(room) = std::str::from_utf8(rest)
            .ok()
            .and_then(|r| RoomId::new(r).ok())
        {
            rooms.push(room);
        }
    })?;
    Ok(rooms)
}

/// Whether `room` is in `user`'s room index.
///
/// # Errors
/// If the storage fails.
pub(crate) fn in_index(
    log: &dyn RoomLog,
    user: &UserId,
    room: &RoomId,
) -> Result<bool, StorageError> {
    Ok(log.meta_get(&index_key(user, room))?.is_some())
}

/// How many managed rooms `user` is a member of (invitations do not
/// count).
///
/// # Errors
/// If the storage fails.
pub(crate) fn joined_count(log: &dyn RoomLog, user: &UserId) -> Result<usize, StorageError> {
    let mut n = 0;
    for room in all_user_rooms(log, user)? {
        if is_member(log, &room, user)? {
            n += 1;
        }
    }
    Ok(n)
}

/// The write that stores a room's record.
pub(crate) fn put_record(room: &RoomId, record: &RoomRecord) -> MetaWrite {
    MetaWrite {
        key: record_key(room),
        value: Some(record.encode()),
    }
}

/// The writes that give `user` a role in `room` (and index the room).
pub(crate) fn set_role(room: &RoomId, user: &UserId, role: Role) -> [MetaWrite; 2] {
    [
        MetaWrite {
            key: member_key(room, user),
            value: Some(vec![role as u8]),
        },
        MetaWrite {
            key: index_key(user, room),
            value: Some(Vec::new()),
        },
    ]
}

/// The writes that end `user`'s membership of `room`.
pub(crate) fn remove_member(room: &RoomId, user: &UserId) -> [MetaWrite; 2] {
    [
        MetaWrite {
            key: member_key(room, user),
            value: None,
        },
        MetaWrite {
            key: index_key(user, room),
            value: None,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Durability, MemoryLog};

    fn id(s: &str) -> UserId {
        UserId::new(s).expect("id")
    }

    #[test]
    fn records_memberships_and_the_user_index() {
        let log = MemoryLog::new();
        let (g, h) = (RoomId::new("g").expect("id"), RoomId::new("h").expect("id"));
        let stored = RoomRecord {
            kind: RoomKind::Group as u8,
            policy: JoinPolicy::Open as u8,
            name: "g".into(),
            topic: String::new(),
            avatar_url: String::new(),
            created_at_us: 1,
            created_by: "ann".into(),
        };
        let mut writes = vec![put_record(&g, &stored)];
        writes.extend(set_role(&g, &id("ann"), Role::Owner));
        writes.extend(set_role(&g, &id("bo"), Role::Invited));
        writes.extend(set_role(&h, &id("ann"), Role::Member));
        // A user whose id extends another's has an index of its own.
        writes.extend(set_role(&h, &id("anna"), Role::Member));
        log.commit(&[], &writes, Durability::Wal).expect("commit");

        assert_eq!(record(&log, &g).expect("read"), Some(stored.clone()));
        assert!(exists(&log, &g).expect("read") && !exists(&log, &h).expect("read"));
        let members = members(&log, &g).expect("members");
        assert_eq!(members.len(), 2);
        assert_eq!(
            role(&log, &g, &id("bo")).expect("role"),
            Some(Role::Invited)
        );
        assert!(!is_member(&log, &g, &id("bo")).expect("member"));
        assert_eq!(
            all_user_rooms(&log, &id("ann")).expect("rooms"),
            [g.clone(), h.clone()]
        );
        assert_eq!(
            user_rooms(&log, &id("ann"), Some(&g), 10).expect("page"),
            std::slice::from_ref(&h)
        );
        assert!(in_index(&log, &id("bo"), &g).expect("index"));
        assert_eq!(joined_count(&log, &id("ann")).expect("count"), 2);
        assert_eq!(joined_count(&log, &id("bo")).expect("count"), 0);

        log.commit(&[], &remove_member(&h, &id("ann")), Durability::Wal)
            .expect("commit");
        assert_eq!(all_user_rooms(&log, &id("ann")).expect("rooms"), [g]);
        assert_eq!(role(&log, &h, &id("ann")).expect("role"), None);
    }
}
