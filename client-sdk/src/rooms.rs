//! Thin calls for rooms, typing, presence, receipts and token refresh:
//! each sends one request frame and returns the broker's reply, or its
//! `Error` as [`ClientError::Server`] ([`ClientError::RateLimited`] for
//! `RateLimited`).
//!
//! Every call here is cancel-safe in the sense that dropping the future
//! never corrupts the client; but a request already handed to the
//! connection may still be carried out by the broker (creating a room,
//! inviting someone) even though the reply is lost. Requests wait for a
//! connection when offline, within the configured request timeout. A
//! request in flight when the connection drops is sent again on the next
//! connection if it only reads (room info, room list, presence, message
//! status); otherwise it fails with [`ClientError::ConnectionLost`] and is
//! not retried. Receipts are kept by the SDK until the broker has read
//! them.

use confab_codec::{
    Ack, Body, CreateRoom, GetMessageStatus, GetPresence, GetRoomInfo, InviteMember, JoinPolicy,
    JoinRoom, LeaveRoom, ListRooms, MessageStatus, PresenceEntry, PresenceStatus, Receipt,
    ReceiptKind, RefreshToken, RemoveMember, Role, RoomId, RoomInfo, RoomKind, RoomList, RoomMeta,
    Seq, SetPresence, SetRole, SyncInbox, Typing, UpdateRoom, WatchPresence,
};
use confab_codec::{InboxPage, InboxRoom};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::client::{unexpected, Client};
use crate::driver::ReqMode;
use crate::error::ClientError;
use crate::events::Signal;
use crate::ids::{IntoRoomId, IntoUserId};

impl Client {
    /// Creates a room ([`CreateRoom`] as the protocol has it).
    ///
    /// Not cancel-safe: once the request is on its way, dropping the future
    /// loses only the reply; the broker may still carry the request out.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::{CreateRoom, JoinPolicy, RoomKind, RoomMeta};
    ///
    /// let info = client
    ///     .create_room(CreateRoom {
    ///         kind: RoomKind::Group,
    ///         room: None,
    ///         peer: None,
    ///         policy: JoinPolicy::Open,
    ///         meta: RoomMeta { name: "Lunch".into(), topic: String::new(), avatar_url: String::new() },
    ///         invite: Vec::new(),
    ///     })
    ///     .await?;
    /// println!("created {}", info.room);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Server`] (`RoomExists`, `InvalidRequest`,
    /// `TooManyRooms`, `Forbidden`, `Unsupported`), and the common ones.
    pub async fn create_room(&self, request: CreateRoom) -> Result<RoomInfo, ClientError> {
        self.room_info_reply(request).await
    }

    /// Creates an open or invite-only group room with a name, inviting
    /// `invite`. Pass `None` as `room` to let the broker choose the id.
    ///
    /// Not cancel-safe: once the request is on its way, dropping the future
    /// loses only the reply; the broker may still carry the request out.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::{JoinPolicy, UserId};
    ///
    /// let info = client
    ///     .create_group(None, "Project X", JoinPolicy::InviteOnly, vec![UserId::new("bob")?])
    ///     .await?;
    /// let mut sub = client.subscribe(&info.room).await?;
    /// # let _ = sub.next().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::create_room`].
    pub async fn create_group(
        &self,
        room: Option<RoomId>,
        name: &str,
        policy: JoinPolicy,
        invite: Vec<confab_codec::UserId>,
    ) -> Result<RoomInfo, ClientError> {
        self.create_room(CreateRoom {
            kind: RoomKind::Group,
            room,
            peer: None,
            policy,
            meta: RoomMeta {
                name: name.to_owned(),
                topic: String::new(),
                avatar_url: String::new(),
            },
            invite,
        })
        .await
    }

    /// Opens (or finds) the direct room with `peer`.
    ///
    /// Not cancel-safe: once the request is on its way, dropping the future
    /// loses only the reply; the broker may still carry the request out.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// let dm = client.create_direct("bob").await?;
    /// client.publish(&dm.room, "hi bob").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::create_room`].
    pub async fn create_direct(&self, peer: impl IntoUserId) -> Result<RoomInfo, ClientError> {
        self.create_room(CreateRoom {
            kind: RoomKind::Direct,
            room: None,
            peer: Some(peer.into_user_id()?),
            policy: JoinPolicy::InviteOnly,
            meta: RoomMeta {
                name: String::new(),
                topic: String::new(),
                avatar_url: String::new(),
            },
            invite: Vec::new(),
        })
        .await
    }

    /// Joins an open room or accepts an invitation.
    ///
    /// Not cancel-safe: once the request is on its way, dropping the future
    /// loses only the reply; the broker may still carry the request out.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// client.join("general").await?;
    /// let mut sub = client.subscribe("general").await?;
    /// # let _ = sub.next().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Server`] (`NoSuchRoom`, `Forbidden`, `RoomFull`,
    /// `TooManyRooms`), and the common ones.
    pub async fn join(&self, room: impl IntoRoomId) -> Result<RoomInfo, ClientError> {
        self.room_info_reply(JoinRoom {
            room: room.into_room_id()?,
        })
        .await
    }

    /// Leaves a room (its subscription, if any, ends at the broker).
    ///
    /// Not cancel-safe: once the request is on its way, dropping the future
    /// loses only the reply; the broker may still carry the request out.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// client.leave("general").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Server`] (`NoSuchRoom`, `NotMember`), and the common ones.
    pub async fn leave(&self, room: impl IntoRoomId) -> Result<(), ClientError> {
        self.ack_reply(LeaveRoom {
            room: room.into_room_id()?,
        })
        .await
    }

    /// Invites a user to a group room (admins and owners).
    ///
    /// Not cancel-safe: once the request is on its way, dropping the future
    /// loses only the reply; the broker may still carry the request out.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// client.invite("project-x", "carol").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Server`] (`NoSuchRoom`, `NotMember`, `Forbidden`,
    /// `RoomFull`), and the common ones.
    pub async fn invite(
        &self,
        room: impl IntoRoomId,
        user: impl IntoUserId,
    ) -> Result<(), ClientError> {
        self.ack_reply(InviteMember {
            room: room.into_room_id()?,
            user: user.into_user_id()?,
        })
        .await
    }

    /// Removes a member or an invitation (admins and owners).
    ///
    /// Not cancel-safe: once the request is on its way, dropping the future
    /// loses only the reply; the broker may still carry the request out.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// client.remove_member("project-x", "mallory").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Server`] (`NoSuchRoom`, `NotMember`, `Forbidden`), and
    /// the common ones.
    pub async fn remove_member(
        &self,
        room: impl IntoRoomId,
        user: impl IntoUserId,
    ) -> Result<(), ClientError> {
        self.ack_reply(RemoveMember {
            room: room.into_room_id()?,
            user: user.into_user_id()?,
        })
        .await
    }

    /// Describes a room.
    ///
    /// Cancel-safe (read-only).
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// let info = client.room_info("general").await?;
    /// println!("{} is at #{}", info.room, info.head);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Server`] (`NoSuchRoom`, `NotMember`, `Forbidden`), and
    /// the common ones.
    pub async fn room_info(&self, room: impl IntoRoomId) -> Result<RoomInfo, ClientError> {
        self.room_info_reply(GetRoomInfo {
            room: room.into_room_id()?,
        })
        .await
    }

    /// Replaces a group room's metadata (admins and owners).
    ///
    /// Not cancel-safe: once the request is on its way, dropping the future
    /// loses only the reply; the broker may still carry the request out.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::RoomMeta;
    ///
    /// let meta = RoomMeta { name: "Project X".into(), topic: "ship it".into(), avatar_url: String::new() };
    /// client.update_room("project-x", meta).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Server`] (`NoSuchRoom`, `NotMember`, `Forbidden`), and
    /// the common ones.
    pub async fn update_room(
        &self,
        room: impl IntoRoomId,
        meta: RoomMeta,
    ) -> Result<RoomInfo, ClientError> {
        self.room_info_reply(UpdateRoom {
            room: room.into_room_id()?,
            meta,
        })
        .await
    }

    /// Changes a member's role (owners).
    ///
    /// Not cancel-safe: once the request is on its way, dropping the future
    /// loses only the reply; the broker may still carry the request out.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::Role;
    ///
    /// client.set_role("project-x", "bob", Role::Admin).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Server`] (`NoSuchRoom`, `NotMember`, `Forbidden`,
    /// `InvalidRequest`), and the common ones.
    pub async fn set_role(
        &self,
        room: impl IntoRoomId,
        user: impl IntoUserId,
        role: Role,
    ) -> Result<(), ClientError> {
        self.ack_reply(SetRole {
            room: room.into_room_id()?,
            user: user.into_user_id()?,
            role,
        })
        .await
    }

    /// One page of the user's rooms, in id order, starting after `after`.
    ///
    /// Cancel-safe (read-only).
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// // Every room of the user, page by page.
    /// let mut after = None;
    /// loop {
    ///     let page = client.list_rooms(after.clone(), 100).await?;
    ///     for room in &page.rooms {
    ///         println!("{}", room.room);
    ///     }
    ///     match page.rooms.last() {
    ///         Some(last) if page.has_more => after = Some(last.room.clone()),
    ///         _ => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The common ones.
    pub async fn list_rooms(
        &self,
        after: Option<RoomId>,
        limit: u16,
    ) -> Result<RoomList, ClientError> {
        match self
            .request(ListRooms { after, limit }, ReqMode::Reply)
            .await?
        {
            Body::RoomList(list) => Ok(list),
            other => Err(unexpected(&other)),
        }
    }

    /// One page of an inbox sync (protocol 7.8.1): the user's rooms that
    /// changed since `since` (a cursor from an earlier sync, or 0 for every
    /// room), in id order after `after`. Most callers want
    /// [`Client::sync_inbox`], which reads every page.
    ///
    /// # Errors
    /// The common ones; [`ClientError::Server`] with `Unsupported` when
    /// the broker speaks only protocol version 1 (the request is not sent).
    pub async fn sync_inbox_page(
        &self,
        since: u64,
        after: Option<RoomId>,
        limit: u16,
    ) -> Result<InboxPage, ClientError> {
        let body = SyncInbox {
            since,
            after,
            limit,
        };
        match self.request(body, ReqMode::Reply).await? {
            Body::InboxPage(page) => Ok(page),
            other => Err(unexpected(&other)),
        }
    }

    /// Which of the user's rooms changed since `since`, with each one's
    /// head, read marker, unread count, first unread sequence and last
    /// entry, in one round trip per page of up to 500 rooms. Pass 0 the
    /// first time; keep the returned [`InboxSync::cursor`] (for example
    /// beside the room cursors) and pass it next time. The broker's work
    /// is proportional to the rooms that changed, not to all the user's
    /// rooms (except for `since` 0).
    ///
    /// A room can be reported in two consecutive syncs (a change right at
    /// the cursor); its fields then describe its latest state.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// let sync = client.sync_inbox(0).await?;
    /// for room in &sync.rooms {
    ///     println!("{}: {} unread", room.room, room.unread);
    /// }
    /// let later = client.sync_inbox(sync.cursor).await?; // only what changed since
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::sync_inbox_page`].
    pub async fn sync_inbox(&self, since: u64) -> Result<InboxSync, ClientError> {
        let mut rooms: Vec<InboxRoom> = Vec::new();
        let mut cursor = None;
        let mut after = None;
        loop {
            let page = self.sync_inbox_page(since, after, INBOX_PAGE).await?;
            // The first page's cursor: a change while the later pages are
            // read is after it, and found by the next sync.
            cursor.get_or_insert(page.cursor);
            after = page.rooms.last().map(|r| r.room.clone());
            rooms.extend(page.rooms);
            if !page.has_more || after.is_none() {
                break;
            }
        }
        Ok(InboxSync {
            rooms,
            cursor: cursor.unwrap_or(since),
        })
    }

    /// Tells the room the user started (`true`) or stopped typing. Returns
    /// once handed to the connection; the broker does not answer.
    ///
    /// Not cancel-safe: once the request is on its way, dropping the future
    /// loses only the reply; the broker may still carry the request out.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// client.typing("general", true).await.ok(); // best effort
    /// // ... the user sends or clears the draft ...
    /// client.typing("general", false).await.ok();
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::NotConnected`] when offline: a stale typing
    /// notification is worthless, so it is not queued.
    pub async fn typing(&self, room: impl IntoRoomId, active: bool) -> Result<(), ClientError> {
        let body = Typing {
            room: room.into_room_id()?,
            active,
        };
        self.request(body, ReqMode::Ephemeral).await.map(drop)
    }

    /// Sets this device's availability. Remembered and set again after
    /// every reconnection.
    ///
    /// Not cancel-safe: once the request is on its way, dropping the future
    /// loses only the reply; the broker may still carry the request out.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::PresenceStatus;
    ///
    /// client.set_presence(PresenceStatus::Away).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The common ones.
    pub async fn set_presence(&self, status: PresenceStatus) -> Result<(), ClientError> {
        self.ack_reply(SetPresence { status }).await
    }

    /// Turns presence pushes ([`Signal::Presence`](crate::Signal::Presence))
    /// on or off. Remembered and applied again after every reconnection.
    ///
    /// Not cancel-safe: once the request is on its way, dropping the future
    /// loses only the reply; the broker may still carry the request out.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// client.watch_presence(true).await?;
    /// let mut signals = client.signals(); // Signal::Presence from now on
    /// # let _ = signals.recv().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The common ones.
    pub async fn watch_presence(&self, enabled: bool) -> Result<(), ClientError> {
        self.ack_reply(WatchPresence { enabled }).await
    }

    /// The current presence of some users (those sharing a room with this
    /// user; others are left out).
    ///
    /// Cancel-safe (read-only).
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::UserId;
    ///
    /// for entry in client.get_presence(vec![UserId::new("bob")?]).await? {
    ///     println!("{:?}", entry);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The common ones.
    pub async fn get_presence(
        &self,
        users: Vec<confab_codec::UserId>,
    ) -> Result<Vec<PresenceEntry>, ClientError> {
        match self.request(GetPresence { users }, ReqMode::Reply).await? {
            Body::PresenceEvent(p) => Ok(p.entries),
            other => Err(unexpected(&other)),
        }
    }

    /// The presence changes pushed from now on, after
    /// [`Client::watch_presence`]`(true)`: each item holds the users whose
    /// aggregated presence changed in one broker window. A consumer that
    /// falls far behind skips the oldest items; [`Client::get_presence`]
    /// tells the current state. Ends when the client is closed.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use futures_util::StreamExt;
    ///
    /// let updates = client.presence_events();
    /// client.watch_presence(true).await?;
    /// futures_util::pin_mut!(updates);
    /// while let Some(entries) = updates.next().await {
    ///     for e in entries {
    ///         println!("{} is {:?}", e.user, e.status);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn presence_events(&self) -> impl Stream<Item = Vec<PresenceEntry>> + Send + 'static {
        futures_util::stream::unfold(self.signals(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(Signal::Presence(entries)) => return Some((entries, rx)),
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                }
            }
        })
    }

    /// Replaces the connection's token before it expires: sends
    /// `RefreshToken` on the live connection (the broker answers `Ack` and
    /// moves the connection's expiry), and uses `token` for every later
    /// connection. While offline it only replaces the token for the next
    /// connection. [`Client::config`] keeps showing the original token.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client, fresh_jwt: String) -> Result<(), confab_client::ClientError> {
    /// client.refresh_token(fresh_jwt).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// If the broker refuses the token (`Unauthenticated` for a bad one or
    /// one of another user, `TokenExpired`) it closes the connection, and
    /// the client stops with [`ClientError::Fatal`]; this call then fails
    /// with that error or [`ClientError::ConnectionLost`]. Otherwise the
    /// common ones.
    pub async fn refresh_token(&self, token: impl Into<String>) -> Result<(), ClientError> {
        self.ack_reply(RefreshToken {
            token: token.into(),
        })
        .await
    }

    /// Moves the user's read marker in a room up to `seq`. Returns at once,
    /// online or offline: the SDK sends the receipt now or on the next
    /// connection, and again after a lost connection until the broker has
    /// read it (markers only move forward, so a repeat changes nothing).
    /// Offline, only the furthest marker per room is kept. The broker
    /// answers only failures, which are logged.
    ///
    /// Cancel-safe in effect: once the call has started, the receipt may
    /// be delivered.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::Seq;
    ///
    /// // The user has seen everything up to #42.
    /// client.mark_read("general", Seq(42)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Closed`] (or the error that stopped the client), an
    /// invalid room id.
    pub async fn mark_read(&self, room: impl IntoRoomId, seq: Seq) -> Result<(), ClientError> {
        self.receipt(room, ReceiptKind::Read, seq).await
    }

    /// Moves this device's delivered marker in a room up to `seq`. As
    /// [`Client::mark_read`].
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::Seq;
    ///
    /// client.mark_delivered("general", Seq(42)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::mark_read`].
    pub async fn mark_delivered(&self, room: impl IntoRoomId, seq: Seq) -> Result<(), ClientError> {
        self.receipt(room, ReceiptKind::Delivered, seq).await
    }

    /// How far a message got: stored, delivered to or read by the other
    /// members.
    ///
    /// Cancel-safe (read-only).
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::Seq;
    ///
    /// let status = client.message_status("general", Seq(42)).await?;
    /// println!("{status:?}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Server`] (`NoSuchRoom`, `NotMember`, `NoSuchMessage`),
    /// and the common ones.
    pub async fn message_status(
        &self,
        room: impl IntoRoomId,
        seq: Seq,
    ) -> Result<MessageStatus, ClientError> {
        let body = GetMessageStatus {
            room: room.into_room_id()?,
            seq,
        };
        match self.request(body, ReqMode::Reply).await? {
            Body::MessageStatus(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    async fn receipt(
        &self,
        room: impl IntoRoomId,
        kind: ReceiptKind,
        seq: Seq,
    ) -> Result<(), ClientError> {
        let body = Receipt {
            room: room.into_room_id()?,
            kind,
            seq,
        };
        self.request(body, ReqMode::NoReply).await.map(drop)
    }

    async fn room_info_reply(&self, body: impl Into<Body>) -> Result<RoomInfo, ClientError> {
        match self.request(body, ReqMode::Reply).await? {
            Body::RoomInfo(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    async fn ack_reply(&self, body: impl Into<Body>) -> Result<(), ClientError> {
        match self.request(body, ReqMode::Reply).await? {
            Body::Ack(Ack {}) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

/// Rooms asked for per inbox sync page.
const INBOX_PAGE: u16 = 500;

/// The answer of [`Client::sync_inbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxSync {
    /// The rooms that changed, in id order: `code` `Normal` for a room the
    /// user is in (`role` `Invited` for an invitation), `NotMember` for one
    /// the user left or was removed from.
    pub rooms: Vec<InboxRoom>,
    /// Pass it as `since` to the next sync.
    pub cursor: u64,
}
