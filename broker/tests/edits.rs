//! Edits, deletes and reactions: the broker checks their targets and who
//! may send them; history delivers them for the SDK to fold.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use confab_codec::*;

/// Publishes `kind` at `target`; the ack's sequence or the error code.
async fn refer(
    c: &mut Conn,
    r: &RoomId,
    kind: MessageKind,
    target: Seq,
    payload: &'static [u8],
) -> Result<Seq, ErrorCode> {
    let publish = Publish {
        room: r.clone(),
        client_msg_id: 0,
        kind,
        refers_to: Some(target),
        thread: None,
        payload: Bytes::from_static(payload),
    };
    match request(c, publish).await {
        Body::PublishAck(a) => Ok(a.seq),
        Body::Error(e) => Err(e.code),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_and_permissions_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rooms.auto_create = false;
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let r = room("crew");
    let mut alice = Conn::open(addr, "alice", "a1").await;
    let mut bob = Conn::open(addr, "bob", "b1").await;
    let mut carol = Conn::open(addr, "carol", "c1").await;
    let create = CreateRoom {
        kind: RoomKind::Group,
        room: Some(r.clone()),
        peer: None,
        policy: JoinPolicy::Open,
        meta: RoomMeta {
            name: "crew".into(),
            topic: String::new(),
            avatar_url: String::new(),
        },
        invite: Vec::new(),
    };
    assert!(matches!(
        request(&mut alice, create).await,
        Body::RoomInfo(_)
    ));
    for c in [&mut bob, &mut carol] {
        assert!(matches!(
            request(c, JoinRoom { room: r.clone() }).await,
            Body::RoomInfo(_)
        ));
    }
    // Alice owns the room; carol becomes an admin.
    let set = SetRole {
        room: r.clone(),
        user: UserId::new("carol").unwrap(),
        role: Role::Admin,
    };
    assert!(matches!(request(&mut alice, set).await, Body::Ack(_)));

    let bobs = bob.publish(&r, 1, b"hello").await.seq;
    let joined = Seq(1); // alice's MEMBER_JOINED entry

    // Edits: the sender only, content only.
    assert_eq!(
        refer(&mut alice, &r, MessageKind::EDIT, bobs, b"x").await,
        Err(ErrorCode::Forbidden)
    );
    assert_eq!(
        refer(&mut carol, &r, MessageKind::EDIT, bobs, b"x").await,
        Err(ErrorCode::Forbidden)
    );
    let edit = refer(&mut bob, &r, MessageKind::EDIT, bobs, b"hello!")
        .await
        .unwrap();
    assert_eq!(
        refer(&mut bob, &r, MessageKind::EDIT, edit, b"x").await,
        Err(ErrorCode::InvalidRequest)
    );
    assert_eq!(
        refer(&mut bob, &r, MessageKind::EDIT, joined, b"x").await,
        Err(ErrorCode::InvalidRequest)
    );
    assert_eq!(
        refer(&mut bob, &r, MessageKind::EDIT, Seq(999), b"x").await,
        Err(ErrorCode::NoSuchMessage)
    );

    // Reactions: anyone, to content only.
    let reaction = refer(&mut alice, &r, MessageKind::REACTION, bobs, b"+1")
        .await
        .unwrap();
    assert_eq!(
        refer(&mut bob, &r, MessageKind::REACTION, reaction, b"+1").await,
        Err(ErrorCode::InvalidRequest)
    );

    // Deletes: the sender, or an admin or owner; a member may not delete
    // another's reaction.
    assert_eq!(
        refer(&mut bob, &r, MessageKind::DELETE, reaction, b"").await,
        Err(ErrorCode::Forbidden)
    );
    refer(&mut alice, &r, MessageKind::DELETE, reaction, b"")
        .await
        .unwrap();
    let second = bob.publish(&r, 2, b"oops").await.seq;
    refer(&mut carol, &r, MessageKind::DELETE, second, b"")
        .await
        .unwrap();
    let third = bob.publish(&r, 3, b"mine").await.seq;
    refer(&mut bob, &r, MessageKind::DELETE, third, b"")
        .await
        .unwrap();

    // History delivers every entry, refusals left nothing behind.
    let page = alice.history(&r, Direction::After, bobs.0 - 1, 100).await;
    let kinds: Vec<(MessageKind, Option<Seq>)> =
        page.events.iter().map(|e| (e.kind, e.refers_to)).collect();
    assert_eq!(
        kinds,
        [
            (MessageKind::MESSAGE, None),
            (MessageKind::EDIT, Some(bobs)),
            (MessageKind::REACTION, Some(bobs)),
            (MessageKind::DELETE, Some(reaction)),
            (MessageKind::MESSAGE, None),
            (MessageKind::DELETE, Some(second)),
            (MessageKind::MESSAGE, None),
            (MessageKind::DELETE, Some(third)),
        ]
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_may_target_a_message_of_the_same_batch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = Conn::open(broker.tcp_addr(), "alice", "a1").await;
    let r = room("quick");
    // Both frames in one write: they usually reach the sequencer together.
    let first = c.request_id();
    let second = c.request_id();
    c.send_frame(Conn::publish_frame(first, &r, 1, b"typo"))
        .await;
    c.send_frame(Frame::request(
        second,
        Publish {
            room: r.clone(),
            client_msg_id: 2,
            kind: MessageKind::EDIT,
            refers_to: Some(Seq(1)),
            thread: None,
            payload: Bytes::from_static(b"fixed"),
        },
    ))
    .await;
    for rid in [first, second] {
        let f = c.wait_reply(rid, |_| true).await;
        assert!(matches!(f.body, Body::PublishAck(_)), "{f:?}");
    }
    broker.shutdown().await;
}
