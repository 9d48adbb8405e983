//! Rate limits and size limits: refused with RateLimited and a retry-after,
//! recovering after it, floods closed, per-user buckets shared by devices;
//! rooms per user, members per room, payload size.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use confab_codec::*;

fn open_group(room: &str) -> CreateRoom {
    CreateRoom {
        kind: RoomKind::Group,
        room: Some(RoomId::new(room).unwrap()),
        peer: None,
        policy: JoinPolicy::Open,
        meta: RoomMeta {
            name: room.into(),
            topic: String::new(),
            avatar_url: String::new(),
        },
        invite: vec![],
    }
}

/// Sends `n` publishes at once and returns each reply, in order.
async fn publish_burst(c: &mut Conn, r: &RoomId, first_cmid: u64, n: u64) -> Vec<Body> {
    let mut rids = Vec::new();
    for i in 0..n {
        let rid = c.request_id();
        c.send_frame(Conn::publish_frame(rid, r, first_cmid + i, b"x"))
            .await;
        rids.push(rid);
    }
    let mut out = Vec::new();
    for rid in rids {
        out.push(c.wait_reply(rid, |_| true).await.body);
    }
    out
}

fn retry_after(b: &Body) -> Option<u32> {
    match b {
        Body::Error(e) if e.code == ErrorCode::RateLimited => Some(e.retry_after_ms),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_over_the_limit_are_refused_then_accepted_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rate_limits.enabled = true;
    config.rate_limits.publish_per_sec = 2;
    config.rate_limits.publish_burst = 3;
    let broker = start(config).await;
    let r = room("busy");
    let mut c = Conn::open(broker.tcp_addr(), "alice", "a").await;

    let replies = publish_burst(&mut c, &r, 1, 6).await;
    let acked = replies
        .iter()
        .filter(|b| matches!(b, Body::PublishAck(_)))
        .count();
    let waits: Vec<u32> = replies.iter().filter_map(retry_after).collect();
    assert_eq!(acked, 3, "{replies:?}");
    assert_eq!(waits.len(), 3, "{replies:?}");
    assert!(waits.iter().all(|w| *w > 0));

    // Waiting as told is enough.
    let wait = *waits.iter().max().unwrap();
    tokio::time::sleep(Duration::from_millis(u64::from(wait) + 20)).await;
    let again = publish_burst(&mut c, &r, 100, 1).await;
    assert!(matches!(again[0], Body::PublishAck(_)), "{again:?}");
    drop(c);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_devices_share_one_bucket_and_typing_is_dropped_silently() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rate_limits.enabled = true;
    config.rate_limits.user_publish_per_sec = 1;
    config.rate_limits.user_publish_burst = 4;
    config.rate_limits.typing_per_sec = 1;
    config.rate_limits.typing_burst = 2;
    config.rate_limits.flood_rejections = 3;
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let r = room("shared");
    let mut phone = Conn::open(addr, "alice", "phone").await;
    let mut laptop = Conn::open(addr, "alice", "laptop").await;
    let mut bob = Conn::open(addr, "bob", "b").await;

    let mut acked = 0;
    for b in publish_burst(&mut phone, &r, 1, 3)
        .await
        .iter()
        .chain(publish_burst(&mut laptop, &r, 1, 3).await.iter())
    {
        match b {
            Body::PublishAck(_) => acked += 1,
            other => assert!(retry_after(other).is_some(), "{other:?}"),
        }
    }
    assert_eq!(acked, 4, "the user's burst is shared by both devices");
    // Another user has a bucket of their own.
    bob.publish(&r, 1, b"mine").await;

    // Typing beyond the limit: no error, no close, even past the flood count.
    let mut typer = Conn::open(addr, "carol", "c").await;
    for _ in 0..20 {
        typer
            .send(Typing {
                room: r.clone(),
                active: true,
            })
            .await;
    }
    let rid = typer.send(Ping { nonce: 7 }).await;
    let pong = typer
        .wait_reply(rid, |f| matches!(f.body, Body::Pong(_)))
        .await;
    assert!(
        matches!(pong.body, Body::Pong(Pong { nonce: 7 })),
        "{pong:?}"
    );
    while let Ok(Some(f)) = typer.recv_timeout(Duration::from_millis(200)).await {
        assert!(
            !matches!(f.body, Body::Error(_) | Body::Goodbye(_)),
            "{f:?}"
        );
    }
    drop((phone, laptop, bob, typer));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_connection_is_closed_and_only_that_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rate_limits.enabled = true;
    config.rate_limits.publish_per_sec = 1;
    config.rate_limits.publish_burst = 1;
    config.rate_limits.flood_rejections = 5;
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let r = room("flood");
    let mut flooder = Conn::open(addr, "mallory", "m1").await;
    let mut other = Conn::open(addr, "mallory", "m2").await;

    // Written in one go: the broker may close the connection before it
    // has read them all, so the write may fail part way.
    let mut spam = Vec::new();
    for i in 0..50 {
        let rid = flooder.request_id();
        spam.extend_from_slice(
            &Conn::publish_frame(rid, &r, i + 1, b"spam")
                .to_bytes()
                .unwrap(),
        );
    }
    let _ = flooder.send_raw(&spam).await;
    let mut refused = 0;
    let goodbye = loop {
        match flooder.recv().await {
            Some(Frame {
                body: Body::Goodbye(g),
                ..
            }) => break g,
            Some(Frame {
                body: Body::Error(e),
                ..
            }) => {
                assert_eq!(e.code, ErrorCode::RateLimited);
                refused += 1;
            }
            Some(_) => {}
            None => panic!("closed without a Goodbye"),
        }
    };
    assert_eq!(goodbye.code, ErrorCode::RateLimited);
    assert!(goodbye.message.contains("flooding"), "{}", goodbye.message);
    assert_eq!(refused, 5);
    // The connection is closed: nothing but the end follows.
    while let Some(f) = flooder.recv().await {
        assert!(!matches!(f.body, Body::PublishAck(_)), "{f:?}");
    }
    // The user's other device is untouched.
    other.publish(&r, 1_000, b"still here").await;
    drop(other);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_requests_are_limited_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rate_limits.enabled = true;
    config.rate_limits.room_ops_per_sec = 1;
    config.rate_limits.room_ops_burst = 2;
    let broker = start(config).await;
    let mut c = Conn::open(broker.tcp_addr(), "alice", "a").await;
    assert!(matches!(
        request(&mut c, open_group("one")).await,
        Body::RoomInfo(_)
    ));
    assert!(matches!(
        request(&mut c, GetPresence { users: vec![] }).await,
        Body::PresenceEvent(_)
    ));
    let refused = request(&mut c, open_group("two")).await;
    assert_eq!(code(&refused), ErrorCode::RateLimited);
    let wait = retry_after(&refused).unwrap();
    assert!(wait > 0);
    tokio::time::sleep(Duration::from_millis(u64::from(wait) + 20)).await;
    assert!(matches!(
        request(&mut c, open_group("two")).await,
        Body::RoomInfo(_)
    ));
    drop(c);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_per_user_members_per_room_and_payload_size_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rooms.max_rooms_per_user = 2;
    config.rooms.max_members = 2;
    config.limits.max_payload_len = 1024;
    let broker = start(config.clone()).await;
    let addr = broker.tcp_addr();
    let mut alice = Conn::open(addr, "alice", "a").await;
    let mut bob = Conn::open(addr, "bob", "b").await;
    let mut carol = Conn::open(addr, "carol", "c").await;

    // Rooms per user: two, then refused.
    for r in ["r1", "r2"] {
        assert!(matches!(
            request(&mut alice, open_group(r)).await,
            Body::RoomInfo(_)
        ));
    }
    assert_eq!(
        code(&request(&mut alice, open_group("r3")).await),
        ErrorCode::TooManyRooms
    );
    assert!(matches!(
        request(&mut bob, open_group("b1")).await,
        Body::RoomInfo(_)
    ));
    assert_eq!(
        code(&request(&mut alice, JoinRoom { room: room("b1") }).await),
        ErrorCode::TooManyRooms
    );
    // Invitations do not count against the invitee.
    assert!(matches!(
        request(
            &mut bob,
            InviteMember {
                room: room("b1"),
                user: user("alice")
            }
        )
        .await,
        Body::Ack(_)
    ));
    // Leaving makes room again; joining (the invitation) now works.
    assert!(matches!(
        request(&mut alice, LeaveRoom { room: room("r2") }).await,
        Body::Ack(_)
    ));
    assert!(matches!(
        request(&mut alice, JoinRoom { room: room("b1") }).await,
        Body::RoomInfo(_)
    ));

    // Members per room: b1 has bob and alice; carol can neither join nor
    // be invited.
    assert_eq!(
        code(&request(&mut carol, JoinRoom { room: room("b1") }).await),
        ErrorCode::RoomFull
    );
    assert_eq!(
        code(
            &request(
                &mut bob,
                InviteMember {
                    room: room("b1"),
                    user: user("carol")
                }
            )
            .await
        ),
        ErrorCode::RoomFull
    );

    // The count survives a restart (it is loaded from storage).
    drop((alice, bob, carol));
    broker.shutdown().await;
    let broker = start(config).await;
    let mut alice = Conn::open(broker.tcp_addr(), "alice", "a").await;
    assert_eq!(
        code(&request(&mut alice, open_group("r4")).await),
        ErrorCode::TooManyRooms
    );

    // Message size: one byte over the limit is refused, the limit is not.
    let r = room("r1");
    let rid = alice.request_id();
    alice
        .send_frame(Conn::publish_frame(rid, &r, 1, &[0u8; 1025]))
        .await;
    assert_eq!(
        code(&alice.wait_reply(rid, |_| true).await.body),
        ErrorCode::PayloadTooLarge
    );
    alice.publish(&r, 2, &[0u8; 1024]).await;
    drop(alice);
    broker.shutdown().await;
}
