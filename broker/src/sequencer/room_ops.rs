//! Room operations: create, join, leave, invite, remove, update, set role.
//!
//! They run on the sequencer thread, like publishes, so that a room's
//! membership and its log change in one order: a membership change is a
//! log entry (`MEMBER_JOINED`, ...) written in the same atomic batch as the
//! stored membership, and a publish sequenced after a removal is refused.

use std::sync::Arc;

use bytes::Bytes;
use confab_codec::{
    Ack, CreateRoom, ErrorCode, ErrorFrame, Event, EventRecord, Frame, JoinPolicy, MessageKind,
    Role, RoomId, RoomKind, RoomMeta, Seq, UserId,
};
use rustc_hash::FxHashMap;

use super::core::{mismatch, Core, Halt, Outcome};
use super::reads::{Answer, Need};
use crate::fanout::{ConnCtx, Held};
use crate::rooms::membership::{direct_room_id, RoomRecord, RoomState};
use crate::storage::meta::{self, markers::MarkerKey};

/// Most members listed in a `RoomInfo` reply.
const MAX_LISTED_MEMBERS: usize = 1000;

/// A room operation from a connection.
#[derive(Debug)]
pub(crate) struct RoomOpReq {
    pub(crate) conn: Arc<ConnCtx>,
    pub(crate) request_id: u32,
    pub(crate) op: RoomOp,
    pub(crate) held: Held,
}

/// The operations.
#[derive(Debug, Clone)]
pub(crate) enum RoomOp {
    Create(CreateRoom),
    Join(RoomId),
    Leave(RoomId),
    Invite(RoomId, UserId),
    Remove(RoomId, UserId),
    Update(RoomId, RoomMeta),
    SetRole(RoomId, UserId, Role),
    /// Adds a member with a role, or changes it (system principal only).
    Add(RoomId, UserId, Role),
}

/// A receipt from a device.
#[derive(Debug)]
pub(crate) struct ReceiptReq {
    pub(crate) conn: Arc<ConnCtx>,
    pub(crate) request_id: u32,
    pub(crate) receipt: confab_codec::Receipt,
    #[expect(
        dead_code,
        reason = "kept for its Drop: the permit returns when the receipt is done"
    )]
    pub(crate) held: Held,
}

/// A successful operation's reply.
#[derive(Debug)]
pub(crate) enum Reply {
    /// `RoomInfo` of this room, as of the commit.
    Info(RoomId),
    /// `Ack`.
    Ack,
}

type OpResult = Result<Reply, (ErrorCode, String)>;

fn err<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, Halt> {
    Err(Halt::Refuse(code, message.into()))
}

/// The room a room operation acts on, if it names one. A group room
/// created without an id gets its generated id here, so that it keeps the
/// same id while it waits for reads.
pub(super) fn room_of(conn: &ConnCtx, op: &mut RoomOp) -> Option<RoomId> {
    match op {
        RoomOp::Create(c) => match c.kind {
            RoomKind::Direct => c
                .peer
                .as_ref()
                .filter(|peer| **peer != conn.user && !conn.system)
                .map(|peer| direct_room_id(&conn.user, peer)),
            RoomKind::Group => Some(
                c.room
                    .get_or_insert_with(|| generated_room_id(crate::base::now_us(), &conn.user))
                    .clone(),
            ),
        },
        RoomOp::Join(room)
        | RoomOp::Leave(room)
        | RoomOp::Invite(room, _)
        | RoomOp::Remove(room, _)
        | RoomOp::Update(room, _)
        | RoomOp::SetRole(room, _, _)
        | RoomOp::Add(room, _, _) => Some(room.clone()),
    }
}

impl Core {
    /// Applies a room operation; gives it back if it must wait for a read.
    pub(super) fn room_op(
        &mut self,
        req: RoomOpReq,
        now: u64,
        old_heads: &mut Vec<(RoomId, u64)>,
        outcomes: &mut Vec<Outcome>,
    ) -> Option<RoomOpReq> {
        let RoomOpReq {
            conn,
            request_id,
            op,
            held,
        } = req;
        // Everything an operation reads comes before anything it changes,
        // so one that must wait has changed nothing and runs again whole.
        let reply = match self.apply(&conn, op.clone(), now, old_heads, outcomes) {
            Ok(reply) => Ok(reply),
            Err(Halt::Wait) => {
                return Some(RoomOpReq {
                    conn,
                    request_id,
                    op,
                    held,
                })
            }
            Err(Halt::Refuse(code, message)) => Err((code, message)),
        };
        outcomes.push(Outcome::RoomReply {
            conn,
            request_id,
            reply,
        });
        None
    }

    /// Moves a marker forward (never back); answers only on failure. Gives
    /// the receipt back if it must wait for a read.
    pub(super) fn receipt(
        &mut self,
        req: ReceiptReq,
        outcomes: &mut Vec<Outcome>,
    ) -> Option<ReceiptReq> {
        let key = match req.receipt.kind {
            confab_codec::ReceiptKind::Delivered => {
                MarkerKey::delivered(&req.receipt.room, &req.conn.user, &req.conn.device)
            }
            confab_codec::ReceiptKind::Read => MarkerKey::read(&req.receipt.room, &req.conn.user),
        };
        let current = match self.check_receipt(&req, &key) {
            Ok(current) => current,
            Err(Halt::Wait) => return Some(req),
            Err(Halt::Refuse(code, message)) => {
                outcomes.push(Outcome::RoomReply {
                    conn: req.conn,
                    request_id: req.request_id,
                    reply: Err((code, message)),
                });
                return None;
            }
        };
        let ReceiptReq { conn, receipt, .. } = req;
        if receipt.seq.0 <= current {
            return None;
        }
        self.markers.insert(key.clone(), receipt.seq.0);
        self.meta.push(meta::markers::put(key, receipt.seq.0));
        if let Some(r) = self.rooms.get(&receipt.room) {
            outcomes.push(Outcome::Receipt {
                room: r.room.clone(),
                entry: confab_codec::ReceiptEntry {
                    user: conn.user.clone(),
                    device: conn.device.clone(),
                    kind: receipt.kind,
                    seq: receipt.seq,
                },
            });
        }
        None
    }

    /// The room (loaded), access, the sequence and the marker's current
    /// value, for a receipt.
    fn check_receipt(&mut self, req: &ReceiptReq, key: &MarkerKey) -> Result<u64, Halt> {
        let head = self.room(&req.receipt.room)?.head;
        self.access(
            &self.rooms[&req.receipt.room],
            &req.conn.user,
            req.conn.system,
        )?;
        if req.receipt.seq.0 > head {
            return Err(Halt::Refuse(
                ErrorCode::NoSuchMessage,
                format!(
                    "room {} has no message {}",
                    req.receipt.room, req.receipt.seq
                ),
            ));
        }
        if let Some(v) = self.markers.get(key) {
            return Ok(*v);
        }
        match self.reads.take(Need::Marker(key.clone())) {
            None => Err(Halt::Wait),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(Answer::Marker(v))) => Ok(v),
            Some(Ok(other)) => Err(mismatch(&other)),
        }
    }

    fn apply(
        &mut self,
        conn: &Arc<ConnCtx>,
        op: RoomOp,
        now: u64,
        old_heads: &mut Vec<(RoomId, u64)>,
        outcomes: &mut Vec<Outcome>,
    ) -> Result<Reply, Halt> {
        let me = &conn.user;
        // The embedding service's system principal manages rooms without
        // being a member: role checks pass, joining and leaving make no
        // sense for it.
        let sys = conn.system;
        match op {
            RoomOp::Create(c) => self.create(conn, c, now, old_heads, outcomes),
            RoomOp::Join(_) | RoomOp::Leave(_) if sys => err(
                ErrorCode::InvalidRequest,
                "the system principal does not join or leave rooms",
            ),
            RoomOp::Add(..) if !sys => err(
                ErrorCode::Forbidden,
                "only the embedding service adds members directly",
            ),
            RoomOp::Add(room, user, role) => {
                let st = self.managed(&room)?;
                if role == Role::Invited {
                    return err(ErrorCode::InvalidRequest, "use Invite to invite");
                }
                let current = st.members.get(&user).copied();
                if current == Some(role) {
                    return Ok(Reply::Ack);
                }
                if current.is_none() {
                    self.check_capacity(&room, 1)?;
                }
                self.change(&room, &user, Some(role));
                if matches!(current, None | Some(Role::Invited)) {
                    let payload = Bytes::copy_from_slice(user.as_bytes());
                    self.internal_payload(
                        conn,
                        &room,
                        MessageKind::MEMBER_JOINED,
                        payload,
                        now,
                        old_heads,
                        outcomes,
                    );
                }
                Ok(Reply::Ack)
            }
            RoomOp::Join(room) => {
                let st = self.managed(&room)?;
                // An invitee already holds a place (invitations count
                // towards rooms.max_members).
                let more = match st.members.get(me) {
                    Some(Role::Invited) => 0,
                    Some(_) => return Ok(Reply::Info(room)),
                    None if st.record.policy() == JoinPolicy::Open => 1,
                    None => return err(ErrorCode::Forbidden, "the room is invite-only"),
                };
                self.check_capacity(&room, more)?;
                self.check_user_rooms(me)?;
                self.change(&room, me, Some(Role::Member));
                self.internal(
                    conn,
                    &room,
                    MessageKind::MEMBER_JOINED,
                    me,
                    now,
                    old_heads,
                    outcomes,
                );
                Ok(Reply::Info(room))
            }
            RoomOp::Leave(room) => {
                let st = self.managed(&room)?;
                if !st.members.contains_key(me) {
                    return err(ErrorCode::NotMember, "not a member");
                }
                if st.members.get(me) == Some(&Role::Owner)
                    && !st.members.iter().any(|(u, r)| *r == Role::Owner && u != me)
                    && st.member_count() > 1
                {
                    return err(
                        ErrorCode::Forbidden,
                        "the last owner cannot leave; give the role to another member first",
                    );
                }
                self.internal(
                    conn,
                    &room,
                    MessageKind::MEMBER_LEFT,
                    me,
                    now,
                    old_heads,
                    outcomes,
                );
                self.change(&room, me, None);
                self.evict(&room, me, outcomes);
                Ok(Reply::Ack)
            }
            RoomOp::Invite(room, user) => {
                let st = self.managed(&room)?;
                let allowed = sys
                    || st.is_admin(me)
                    || (st.record.policy() == JoinPolicy::Open && st.is_member(me));
                if !allowed {
                    return err(ErrorCode::Forbidden, "only admins and owners may invite");
                }
                if st.members.contains_key(&user) {
                    return Ok(Reply::Ack);
                }
                self.check_capacity(&room, 1)?;
                self.change(&room, &user, Some(Role::Invited));
                self.internal(
                    conn,
                    &room,
                    MessageKind::MEMBER_INVITED,
                    &user,
                    now,
                    old_heads,
                    outcomes,
                );
                Ok(Reply::Ack)
            }
            RoomOp::Remove(room, user) => {
                let st = self.managed(&room)?;
                if !sys && !st.is_admin(me) {
                    return err(
                        ErrorCode::Forbidden,
                        "only admins and owners may remove members",
                    );
                }
                match st.members.get(&user) {
                    None => return err(ErrorCode::NotMember, format!("{user} is not a member")),
                    Some(Role::Owner) if !sys && st.members.get(me) != Some(&Role::Owner) => {
                        return err(ErrorCode::Forbidden, "only an owner may remove an owner")
                    }
                    _ => {}
                }
                self.internal(
                    conn,
                    &room,
                    MessageKind::MEMBER_REMOVED,
                    &user,
                    now,
                    old_heads,
                    outcomes,
                );
                self.change(&room, &user, None);
                self.evict(&room, &user, outcomes);
                Ok(Reply::Ack)
            }
            RoomOp::Update(room, meta) => {
                let st = self.managed(&room)?;
                if !sys && !st.is_admin(me) {
                    return err(
                        ErrorCode::Forbidden,
                        "only admins and owners may edit the room",
                    );
                }
                let mut record = st.record.clone();
                record.name = meta.name;
                record.topic = meta.topic;
                record.avatar_url = meta.avatar_url;
                self.put_record(&room, record);
                let payload = serde_json::json!({"name": "updated"}).to_string();
                self.internal_payload(
                    conn,
                    &room,
                    MessageKind::ROOM_UPDATED,
                    Bytes::from(payload),
                    now,
                    old_heads,
                    outcomes,
                );
                Ok(Reply::Info(room))
            }
            RoomOp::SetRole(room, user, role) => {
                let st = self.managed(&room)?;
                if !sys && st.members.get(me) != Some(&Role::Owner) {
                    return err(ErrorCode::Forbidden, "only owners may change roles");
                }
                if role == Role::Invited || !st.is_member(&user) {
                    return err(
                        ErrorCode::InvalidRequest,
                        "the target must be a member and the role not Invited",
                    );
                }
                self.change(&room, &user, Some(role));
                Ok(Reply::Ack)
            }
        }
    }

    fn create(
        &mut self,
        conn: &Arc<ConnCtx>,
        c: CreateRoom,
        now: u64,
        old_heads: &mut Vec<(RoomId, u64)>,
        outcomes: &mut Vec<Outcome>,
    ) -> Result<Reply, Halt> {
        let me = conn.user.clone();
        let (room, members, policy) = match c.kind {
            RoomKind::Direct if conn.system => {
                return err(
                    ErrorCode::InvalidRequest,
                    "the system principal creates group rooms and adds members",
                );
            }
            RoomKind::Direct => {
                let Some(peer) = c.peer else {
                    return err(ErrorCode::InvalidRequest, "a direct room needs a peer");
                };
                if peer == me {
                    return err(
                        ErrorCode::InvalidRequest,
                        "a direct room needs another user",
                    );
                }
                let room = direct_room_id(&me, &peer);
                (
                    room,
                    vec![(me.clone(), Role::Member), (peer, Role::Member)],
                    JoinPolicy::InviteOnly,
                )
            }
            RoomKind::Group => {
                // `room_of` gave it an id if it came without one.
                let room = match c.room {
                    Some(r) => r,
                    None => generated_room_id(now, &me),
                };
                // The system principal manages the room without being in it.
                let mut members = if conn.system {
                    Vec::new()
                } else {
                    vec![(me.clone(), Role::Owner)]
                };
                for u in c.invite {
                    if u != me && !members.iter().any(|(m, _)| *m == u) {
                        members.push((u, Role::Invited));
                    }
                }
                (room, members, c.policy)
            }
        };
        if members.len() > self.rooms_cfg.max_members {
            return err(ErrorCode::RoomFull, "too many members");
        }
        let existing = self.room(&room)?;
        if existing.state.is_some() {
            if c.kind == RoomKind::Direct {
                // Both users find the same room: creating it again is a lookup.
                return Ok(Reply::Info(room));
            }
            return err(ErrorCode::RoomExists, format!("room {room} exists"));
        }
        if existing.head > 0 {
            return err(
                ErrorCode::RoomExists,
                format!("room {room} is already in use as an unmanaged room"),
            );
        }
        self.check_user_rooms(&me)?;
        let record = RoomRecord {
            kind: c.kind as u8,
            policy: policy as u8,
            name: c.meta.name,
            topic: c.meta.topic,
            avatar_url: c.meta.avatar_url,
            created_at_us: now,
            created_by: me.to_string(),
        };
        self.touched.push(room.clone());
        let r = self.rooms.get_mut(&room).expect("loaded above");
        r.state = Some(RoomState {
            record: record.clone(),
            members: FxHashMap::default(),
            inbox_epoch: 0,
        });
        self.meta.push(meta::rooms::put_record(&room, &record));
        for (user, role) in &members {
            self.change(&room, user, Some(*role));
        }
        for (user, role) in &members {
            let kind = if *role == Role::Invited {
                MessageKind::MEMBER_INVITED
            } else {
                MessageKind::MEMBER_JOINED
            };
            self.internal(conn, &room, kind, user, now, old_heads, outcomes);
        }
        Ok(Reply::Info(room))
    }

    /// A loaded managed room's state.
    fn managed(&mut self, room: &RoomId) -> Result<&RoomState, Halt> {
        let r = self.room(room)?;
        r.state
            .as_ref()
            .ok_or_else(|| Halt::Refuse(ErrorCode::NoSuchRoom, format!("no managed room {room}")))
    }

    fn check_capacity(&self, room: &RoomId, more: usize) -> Result<(), Halt> {
        let n = self.rooms[room]
            .state
            .as_ref()
            .map_or(0, |s| s.members.len());
        if n + more > self.rooms_cfg.max_members {
            return err(ErrorCode::RoomFull, "the room is full");
        }
        Ok(())
    }

    /// Sets or removes a membership, in memory and in the batch's writes.
    fn change(&mut self, room: &RoomId, user: &UserId, role: Option<Role>) {
        if !self.touched.contains(room) {
            self.touched.push(room.clone());
        }
        let was = self
            .rooms
            .get(room)
            .and_then(|r| r.state.as_ref())
            .map(|st| st.members.get(user).copied());
        let Some(was) = was else {
            return;
        };
        self.count_membership(user, was, role);
        let Some(st) = self.rooms.get_mut(room).and_then(|r| r.state.as_mut()) else {
            return;
        };
        let writes = match role {
            Some(role) => st.set_role(room, user, role),
            None => st.remove(room, user),
        };
        self.meta.extend(writes);
        // The user's inbox learns of the change now: a member who joins
        // after the room was marked in this epoch, and a member who leaves
        // (the room is not marked for former members any more).
        let epoch = self.inbox_epoch();
        self.meta
            .push(meta::inbox::put(user, epoch, room, self.now()));
    }

    fn put_record(&mut self, room: &RoomId, record: RoomRecord) {
        if !self.touched.contains(room) {
            self.touched.push(room.clone());
        }
        self.meta.push(meta::rooms::put_record(room, &record));
        if let Some(st) = self.rooms.get_mut(room).and_then(|r| r.state.as_mut()) {
            st.record = record;
        }
    }

    fn evict(&mut self, room: &RoomId, user: &UserId, outcomes: &mut Vec<Outcome>) {
        if let Some(r) = self.rooms.get(room) {
            outcomes.push(Outcome::Evict {
                room: r.room.clone(),
                user: user.clone(),
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn internal(
        &mut self,
        conn: &Arc<ConnCtx>,
        room: &RoomId,
        kind: MessageKind,
        subject: &UserId,
        now: u64,
        old_heads: &mut Vec<(RoomId, u64)>,
        outcomes: &mut Vec<Outcome>,
    ) {
        let payload = Bytes::copy_from_slice(subject.as_bytes());
        self.internal_payload(conn, room, kind, payload, now, old_heads, outcomes);
    }

    /// Stages a server-written log entry, sent by the acting user's device.
    #[allow(clippy::too_many_arguments)]
    fn internal_payload(
        &mut self,
        conn: &Arc<ConnCtx>,
        room: &RoomId,
        kind: MessageKind,
        payload: Bytes,
        now: u64,
        old_heads: &mut Vec<(RoomId, u64)>,
        outcomes: &mut Vec<Outcome>,
    ) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if !old_heads.iter().any(|(id, _)| id == room) {
            old_heads.push((room.clone(), r.head));
        }
        r.head += 1;
        let seq = Seq(r.head);
        let frame = Frame::new(Event {
            room: room.clone(),
            event: EventRecord {
                seq,
                timestamp_us: now,
                sender: conn.user.clone(),
                device: conn.device.clone(),
                client_msg_id: 0,
                kind,
                refers_to: None,
                thread: None,
                payload,
            },
        })
        .to_bytes();
        match frame {
            Ok(frame) => outcomes.push(Outcome::Internal {
                room: r.room.clone(),
                seq,
                frame,
                received: std::time::Instant::now(),
            }),
            Err(_) => r.head -= 1,
        }
    }

    /// The reply frame of a room operation, built after the commit.
    pub(super) fn room_reply(&self, request_id: u32, reply: OpResult) -> Frame {
        match reply {
            Ok(Reply::Ack) => Frame::request(request_id, Ack {}),
            Ok(Reply::Info(room)) => match self.rooms.get(&room) {
                Some(r) if r.state.is_some() => {
                    let first = Seq(r.first.min(r.head + 1).max(1));
                    let info = r
                        .state
                        .as_ref()
                        .map(|st| st.info(&room, Seq(r.head), first, MAX_LISTED_MEMBERS));
                    match info {
                        Some(info) => Frame::request(request_id, info),
                        None => Frame::request(request_id, Ack {}),
                    }
                }
                _ => error(request_id, ErrorCode::Internal, "room state unavailable"),
            },
            Err((code, message)) => error(request_id, code, message),
        }
    }
}

fn error(request_id: u32, code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::request(
        request_id,
        ErrorFrame {
            code,
            retry_after_ms: 0,
            message: message.into(),
        },
    )
}

/// A fresh group room id: `g-` and 24 hex digits from the clock and the
/// creator (unique in practice; a clash is refused as `RoomExists`).
fn generated_room_id(now: u64, creator: &UserId) -> RoomId {
    let mut x = now ^ 0x9E37_79B9_7F4A_7C15;
    for b in creator.as_bytes() {
        x = (x ^ u64::from(*b)).wrapping_mul(0x100_0000_01B3);
    }
    let r: u32 = rand::random();
    RoomId::new(format!("g-{x:016x}{r:08x}")).expect("26 ASCII characters are a valid room id")
}
