//! What a connection's token allows: until when, and which rooms.
//!
//! A token may carry a `rooms` claim (docs/operations.md, "Authentication"):
//! the only rooms the connection may use. [`Grant::refusal`] applies it to
//! every room-scoped request before anything else looks at the request, so
//! a refused request says nothing about the room (whether it exists, who
//! is in it) and costs no storage read. Requests that name several rooms
//! or none are narrowed where they are served: `Subscribe` per item,
//! `ListRooms` and presence by filtering, `RegisterPush` refused (push
//! covers all of the user's rooms).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use confab_codec::{Body, RoomId, RoomKind, UserId};

use crate::auth::Identity;
use crate::base::now_us;
use crate::rooms::membership::direct_room_id;

/// What the connection's current token allows, and until when.
#[derive(Debug)]
pub(super) struct Grant {
    /// When the token expires (far in the future for tokens without expiry).
    pub(super) deadline: tokio::time::Instant,
    /// The token's `rooms` claim, if it has one.
    pub(super) rooms: Option<Arc<HashSet<RoomId>>>,
}

impl Grant {
    pub(super) fn of(identity: &Identity) -> Grant {
        let now = tokio::time::Instant::now();
        let deadline = match identity.expires_at_us {
            Some(exp) => now + Duration::from_micros(exp.saturating_sub(now_us())),
            // About thirty years: effectively never, without overflow.
            None => now + Duration::from_secs(1 << 30),
        };
        Grant {
            deadline,
            rooms: identity.rooms.clone(),
        }
    }

    /// Whether the token allows `room`.
    pub(super) fn may_use(&self, room: &RoomId) -> bool {
        self.rooms.as_ref().is_none_or(|r| r.contains(room))
    }

    /// The claimed rooms in id order (byte-wise), if the token limits them.
    pub(super) fn sorted_rooms(&self) -> Option<Vec<RoomId>> {
        self.rooms.as_ref().map(|set| {
            let mut rooms: Vec<RoomId> = set.iter().cloned().collect();
            rooms.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            rooms
        })
    }

    /// Why the token does not allow this request (`Forbidden`), or `None`.
    ///
    /// Covers every request about one room; see the module doc for the
    /// others.
    pub(super) fn refusal(&self, body: &Body, user: &UserId) -> Option<String> {
        let rooms = self.rooms.as_ref()?;
        let room = match body {
            Body::Publish(p) => &p.room,
            Body::HistoryRequest(h) => &h.room,
            Body::JoinRoom(j) => &j.room,
            Body::LeaveRoom(l) => &l.room,
            Body::InviteMember(i) => &i.room,
            Body::RemoveMember(r) => &r.room,
            Body::GetRoomInfo(g) => &g.room,
            Body::UpdateRoom(u) => &u.room,
            Body::SetRole(s) => &s.room,
            Body::Typing(t) => &t.room,
            Body::Receipt(r) => &r.room,
            Body::GetMessageStatus(g) => &g.room,
            Body::CreateRoom(c) => {
                let id = match (c.kind, &c.room, &c.peer) {
                    (RoomKind::Direct, _, Some(peer)) => direct_room_id(user, peer),
                    // Refused by the room service as InvalidRequest.
                    (RoomKind::Direct, _, None) => return None,
                    (RoomKind::Group, Some(room), _) => room.clone(),
                    (RoomKind::Group, None, _) => {
                        return Some(
                            "the token limits its rooms, so a group room needs an id it allows"
                                .into(),
                        )
                    }
                };
                return (!rooms.contains(&id))
                    .then(|| format!("the token does not allow room {id}"));
            }
            Body::RegisterPush(_) => {
                return Some(
                    "push notifications cover all of a user's rooms; \
                     a token limited to some rooms cannot register for them"
                        .into(),
                )
            }
            _ => return None,
        };
        (!rooms.contains(room)).then(|| format!("the token does not allow room {room}"))
    }
}

#[cfg(test)]
mod tests {
    use confab_codec::{CreateRoom, GetRoomInfo, JoinPolicy, ListRooms, RoomMeta};

    use super::*;

    fn grant(rooms: Option<&[&str]>) -> Grant {
        Grant {
            deadline: tokio::time::Instant::now(),
            rooms: rooms.map(|r| {
                Arc::new(
                    r.iter()
                        .map(|r| RoomId::new(*r).expect("room id"))
                        .collect(),
                )
            }),
        }
    }

    fn create(kind: RoomKind, room: Option<&str>, peer: Option<&str>) -> Body {
        Body::CreateRoom(CreateRoom {
            kind,
            room: room.map(|r| RoomId::new(r).expect("room id")),
            peer: peer.map(|p| UserId::new(p).expect("user id")),
            policy: JoinPolicy::Open,
            meta: RoomMeta {
                name: String::new(),
                topic: String::new(),
                avatar_url: String::new(),
            },
            invite: Vec::new(),
        })
    }

    #[test]
    fn the_rooms_claim_narrows_room_requests() {
        let alice = UserId::new("alice").expect("id");
        let bob = UserId::new("bob").expect("id");
        let dm = direct_room_id(&alice, &bob);
        let g = grant(Some(&["ok", dm.as_str()]));
        let info = |r: &str| {
            Body::GetRoomInfo(GetRoomInfo {
                room: RoomId::new(r).expect("id"),
            })
        };
        assert!(g.refusal(&info("ok"), &alice).is_none());
        assert!(g.refusal(&info("other"), &alice).is_some());
        assert!(g
            .refusal(&create(RoomKind::Group, Some("ok"), None), &alice)
            .is_none());
        assert!(g
            .refusal(&create(RoomKind::Group, Some("new"), None), &alice)
            .is_some());
        assert!(g
            .refusal(&create(RoomKind::Group, None, None), &alice)
            .is_some());
        assert!(g
            .refusal(&create(RoomKind::Direct, None, Some("bob")), &alice)
            .is_none());
        assert!(g
            .refusal(&create(RoomKind::Direct, None, Some("carol")), &alice)
            .is_some());
        let list = Body::ListRooms(ListRooms {
            after: None,
            limit: 10,
        });
        assert!(g.refusal(&list, &alice).is_none(), "filtered, not refused");
        // No claim: nothing is refused.
        assert!(grant(None)
            .refusal(&create(RoomKind::Group, None, None), &alice)
            .is_none());
    }
}
