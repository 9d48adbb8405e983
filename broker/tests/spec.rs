//! The points docs/protocol.md settles that a client written from it alone
//! relies on (issue 14): which request id a fatal `Error` carries, `Error`
//! then `Goodbye`, `Hello` with request id 0, the dev token's device part,
//! publishes sequenced in send order, what `CreateRoom` and membership
//! changes write to the log, `History` limit 0, `Subscribe` `From(0)`, an
//! empty `Subscribe`, the flood close's `retry_after_ms`, and the rules of
//! unmanaged rooms. Real sockets on 127.0.0.1, every wait bounded.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use confab_codec::*;

fn hello(token: &str, device: &str) -> Hello {
    Hello {
        min_version: 1,
        max_version: 1,
        token: token.into(),
        device: DeviceId::new(device).unwrap(),
        client_name: "spec-test".into(),
        resume: vec![],
        features: Default::default(),
    }
}

fn group(id: &str, invite: &[&str]) -> CreateRoom {
    CreateRoom {
        kind: RoomKind::Group,
        room: Some(room(id)),
        peer: None,
        policy: JoinPolicy::Open,
        meta: RoomMeta {
            name: id.into(),
            topic: String::new(),
            avatar_url: String::new(),
        },
        invite: invite.iter().map(|u| user(u)).collect(),
    }
}

/// The frames a closing connection sent: the `Error`s with their request
/// ids, and the `Goodbye` code (the last frame).
async fn close_frames(c: &mut Conn) -> (Vec<(u32, ErrorCode, u32)>, Option<ErrorCode>) {
    let frames = c.until_closed().await;
    let errors = frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Error(e) => Some((f.request_id, e.code, e.retry_after_ms)),
            _ => None,
        })
        .collect();
    let goodbye = match frames.last().map(|f| &f.body) {
        Some(Body::Goodbye(g)) => Some(g.code),
        _ => None,
    };
    (errors, goodbye)
}

fn entries(page: &HistoryPage) -> Vec<(MessageKind, String, String)> {
    page.events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.sender.to_string(),
                String::from_utf8(e.payload.to_vec()).unwrap(),
            )
        })
        .collect()
}

/// 6.2, 6.3, 6.5: a connection-level failure is `Error` with request id 0,
/// then `Goodbye` with the same code, then the close; a refusal that
/// answers a request keeps its id; closes the client did not cause are a
/// `Goodbye` alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_errors_carry_request_id_zero_and_precede_goodbye() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.heartbeat_ms = 100;
    config.limits.idle_timeout_ms = 500;
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let pv = ErrorCode::ProtocolViolation;

    // A server-to-client frame with request id 7.
    let mut c = Conn::open(addr, "a", "d").await;
    c.send_frame(Frame::request(7, Ack {})).await;
    assert_eq!(close_frames(&mut c).await, (vec![(0, pv, 0)], Some(pv)));

    // A second Hello with request id 9.
    let mut c = Conn::open(addr, "b", "d").await;
    c.send_frame(Frame::request(9, hello("b", "d"))).await;
    assert_eq!(close_frames(&mut c).await, (vec![(0, pv, 0)], Some(pv)));

    // Something other than Hello first, with request id 5.
    let mut c = Conn::raw(addr).await;
    c.send_frame(Frame::request(5, Ping { nonce: 1 })).await;
    assert_eq!(close_frames(&mut c).await, (vec![(0, pv, 0)], Some(pv)));

    // Hello with request id 0 (6.1: it MUST be nonzero).
    let mut c = Conn::raw(addr).await;
    c.send_frame(Frame::request(0, hello("c", "d"))).await;
    assert_eq!(close_frames(&mut c).await, (vec![(0, pv, 0)], Some(pv)));

    // A refused Hello answers the Hello: its request id.
    let mut c = Conn::raw(addr).await;
    c.send_frame(Frame::request(3, hello("d:phone", "laptop")))
        .await;
    let un = ErrorCode::Unauthenticated;
    assert_eq!(close_frames(&mut c).await, (vec![(3, un, 0)], Some(un)));

    // The idle timeout: the client sent nothing wrong, so a Goodbye alone.
    let mut c = Conn::open(addr, "e", "d").await;
    let to = ErrorCode::Timeout;
    assert_eq!(close_frames(&mut c).await, (vec![], Some(to)));
    broker.shutdown().await;
}

/// 15.1: a dev token's device part must equal `Hello.device`; without one,
/// any device is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_tokens_device_part_must_match_hello_device() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = broker.tcp_addr();
    for (token, device, welcome) in [
        ("alice:phone", "phone", true),
        ("alice", "anything", true),
        ("alice:phone", "laptop", false),
    ] {
        let mut c = Conn::raw(addr).await;
        c.send(hello(token, device)).await;
        let f = c.recv().await.unwrap();
        match f.body {
            Body::Welcome(w) => {
                assert!(welcome, "{token} from {device}");
                assert_eq!(w.user.as_str(), "alice");
            }
            Body::Error(e) => {
                assert!(!welcome, "{token} from {device}");
                assert_eq!(e.code, ErrorCode::Unauthenticated);
            }
            other => panic!("{other:?}"),
        }
    }
    broker.shutdown().await;
}

/// 12.1 and 15.2: one connection's stored publishes to a room are
/// sequenced in the order they were sent, and a refusal (answered at once)
/// neither takes a sequence nor disturbs the others; replies are matched
/// by request id, whatever order they arrive in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connections_publishes_are_sequenced_in_send_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_payload_len = 1024;
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let (r1, r2) = (room("one"), room("two"));
    let mut c = Conn::open(addr, "alice", "d").await;
    // Another writer in between, so the sequences interleave.
    let mut other = Conn::open(addr, "bob", "d").await;

    let mut sent = Vec::new();
    for i in 0..300u64 {
        let r = if i % 3 == 0 { &r2 } else { &r1 };
        let payload: &[u8] = if i % 50 == 7 { &[0u8; 2000] } else { b"m" };
        let rid = c.request_id();
        c.send_frame(Conn::publish_frame(rid, r, i + 1, payload))
            .await;
        sent.push((rid, r.clone(), payload.len() > 1024));
        if i % 10 == 0 {
            other.publish(&r1, i + 1, b"bob").await;
        }
    }
    let mut last: std::collections::HashMap<RoomId, u64> = Default::default();
    for (rid, r, too_large) in sent {
        match c.wait_reply(rid, |_| true).await.body {
            Body::PublishAck(a) => {
                assert!(!too_large);
                assert_eq!(a.room, r);
                let prev = last.insert(r.clone(), a.seq.0).unwrap_or(0);
                assert!(a.seq.0 > prev, "send order kept in {r}");
            }
            Body::Error(e) => {
                assert!(too_large, "{e:?}");
                assert_eq!(e.code, ErrorCode::PayloadTooLarge);
            }
            other => panic!("{other:?}"),
        }
    }
    broker.shutdown().await;
}

/// 7.5.1 and 13.3: what `CreateRoom` and membership changes write to the
/// log, and the membership payloads (the subject's user id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_room_and_membership_log_entries() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = broker.tcp_addr();
    let mut alice = Conn::open(addr, "alice", "d").await;
    let mut bob = Conn::open(addr, "bob", "d").await;
    let (joined, left, invited) = (
        MessageKind::MEMBER_JOINED,
        MessageKind::MEMBER_LEFT,
        MessageKind::MEMBER_INVITED,
    );
    let s = |x: &str| x.to_owned();

    let g = room("g");
    assert!(matches!(
        request(&mut alice, group("g", &["carol", "alice", "carol", "dan"])).await,
        Body::RoomInfo(_)
    ));
    assert!(matches!(
        request(&mut bob, JoinRoom { room: g.clone() }).await,
        Body::RoomInfo(_)
    ));
    assert!(matches!(
        request(&mut bob, LeaveRoom { room: g.clone() }).await,
        Body::Ack(_)
    ));
    let page = alice.history(&g, Direction::After, 0, 100).await;
    assert_eq!(
        entries(&page),
        [
            (joined, s("alice"), s("alice")),
            (invited, s("alice"), s("carol")),
            (invited, s("alice"), s("dan")),
            (joined, s("bob"), s("bob")),
            (left, s("bob"), s("bob")),
        ]
    );
    assert!(page.events.iter().all(|e| e.client_msg_id == 0));

    // A direct room: both members joined, the creator first; creating it
    // again writes nothing.
    let direct = CreateRoom {
        kind: RoomKind::Direct,
        room: None,
        peer: Some(user("bob")),
        ..group("x", &[])
    };
    let id = match request(&mut alice, direct.clone()).await {
        Body::RoomInfo(i) => i.room,
        other => panic!("{other:?}"),
    };
    let again = CreateRoom {
        peer: Some(user("alice")),
        ..direct
    };
    assert!(matches!(request(&mut bob, again).await, Body::RoomInfo(i) if i.room == id));
    let page = alice.history(&id, Direction::After, 0, 100).await;
    assert_eq!(
        entries(&page),
        [
            (joined, s("alice"), s("alice")),
            (joined, s("alice"), s("bob")),
        ]
    );
    broker.shutdown().await;
}

/// 12.4: `limit` 0 is an empty page that says whether anything qualifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_limit_zero_is_an_empty_page() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = Conn::open(broker.tcp_addr(), "alice", "d").await;
    let r = room("h");
    let empty = c.history(&r, Direction::Before, 0, 0).await;
    assert!(empty.events.is_empty() && !empty.has_more);
    for i in 1..=3 {
        c.publish(&r, i, b"x").await;
    }
    for (direction, anchor, more) in [
        (Direction::Before, 0, true),
        (Direction::Before, 1, false),
        (Direction::After, 2, true),
        (Direction::After, 3, false),
    ] {
        let page = c.history(&r, direction, anchor, 0).await;
        assert!(page.events.is_empty());
        assert_eq!(page.has_more, more, "{direction:?} {anchor}");
        assert_eq!(page.first, Seq(1));
    }
    broker.shutdown().await;
}

/// 4.4 and 11.2: `From(0)` is `From(1)`; a room whose first retained
/// sequence is 1 lost nothing, so the result is `Normal`. An empty
/// `Subscribe` is answered with an empty `SubscribeAck`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_from_zero_and_an_empty_subscribe() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = Conn::open(broker.tcp_addr(), "alice", "d").await;
    let (r, fresh) = (room("s"), room("fresh"));
    for i in 1..=3 {
        c.publish(&r, i, b"x").await;
    }
    let ack = c
        .subscribe(vec![
            (r.clone(), StartAt::From(Seq(0))),
            (fresh.clone(), StartAt::From(Seq(0))),
        ])
        .await;
    let codes: Vec<_> = ack.results.iter().map(|x| x.code).collect();
    assert_eq!(codes, [ErrorCode::Normal, ErrorCode::Normal]);
    assert_eq!(
        (ack.results[0].head, ack.results[0].first),
        (Seq(3), Seq(1))
    );
    let (events, _) = c.events(3).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.1).collect();
    assert_contiguous(&seqs, 1, 3);

    let rid = c.send(Subscribe { items: vec![] }).await;
    match c.wait_reply(rid, |_| true).await.body {
        Body::SubscribeAck(a) => assert!(a.results.is_empty()),
        other => panic!("{other:?}"),
    }
    broker.shutdown().await;
}

/// 15.2: the refusal that closes a flooding connection carries the request
/// id and a `retry_after_ms` above 0, then `Goodbye(RateLimited)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flood_close_says_when_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rate_limits.enabled = true;
    config.rate_limits.publish_per_sec = 1;
    config.rate_limits.publish_burst = 1;
    config.rate_limits.flood_rejections = 5;
    let broker = start(config).await;
    let mut c = Conn::open(broker.tcp_addr(), "flood", "d").await;
    let r = room("f");
    let mut last_rid = 0;
    for i in 0..6 {
        last_rid = c.request_id();
        c.send_frame(Conn::publish_frame(last_rid, &r, i + 1, b"x"))
            .await;
    }
    let (errors, goodbye) = close_frames(&mut c).await;
    assert_eq!(errors.len(), 5, "{errors:?}");
    assert!(errors
        .iter()
        .all(|(rid, code, wait)| *rid != 0 && *code == ErrorCode::RateLimited && *wait > 0));
    assert_eq!(errors.last().unwrap().0, last_rid);
    assert_eq!(goodbye, Some(ErrorCode::RateLimited));
    broker.shutdown().await;
}

/// 13.4: what works in a room that was never created. With
/// `rooms.auto_create` on: publish, subscribe, history, typing and
/// receipts, for anyone; `GetRoomInfo`, `GetMessageStatus` and membership
/// requests answer `NoSuchRoom`. With it off, everything does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_of_unmanaged_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = broker.tcp_addr();
    let r = room("loose");
    let mut a = Conn::open(addr, "alice", "d").await;
    let mut b = Conn::open(addr, "bob", "d").await;
    b.subscribe(vec![(r.clone(), StartAt::Live)]).await;
    a.publish(&r, 1, b"hi").await;
    a.send(Typing {
        room: r.clone(),
        active: true,
    })
    .await;
    a.send(Receipt {
        room: r.clone(),
        kind: ReceiptKind::Read,
        seq: Seq(1),
    })
    .await;
    let (mut typing, mut receipt) = (false, false);
    while !(typing && receipt) {
        let f = b.recv().await.expect("bob's connection is open");
        match f.body {
            Body::TypingEvent(t) => typing |= t.users.iter().any(|u| u.as_str() == "alice"),
            Body::ReceiptEvent(e) => receipt |= e.entries.iter().any(|x| x.seq == Seq(1)),
            _ => {}
        }
    }
    let no_such = |b: &Body| matches!(b, Body::Error(e) if e.code == ErrorCode::NoSuchRoom);
    for body in [
        Body::from(GetRoomInfo { room: r.clone() }),
        GetMessageStatus {
            room: r.clone(),
            seq: Seq(1),
        }
        .into(),
        JoinRoom { room: r.clone() }.into(),
        LeaveRoom { room: r.clone() }.into(),
    ] {
        let reply = request(&mut a, body).await;
        assert!(no_such(&reply), "{reply:?}");
    }
    broker.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rooms.auto_create = false;
    let broker = start(config).await;
    let mut a = Conn::open(broker.tcp_addr(), "alice", "d").await;
    let publish = Publish {
        room: r.clone(),
        client_msg_id: 1,
        kind: MessageKind::MESSAGE,
        refers_to: None,
        thread: None,
        payload: Bytes::from_static(b"x"),
    };
    for body in [
        Body::from(publish),
        Typing {
            room: r.clone(),
            active: true,
        }
        .into(),
        Receipt {
            room: r.clone(),
            kind: ReceiptKind::Read,
            seq: Seq(1),
        }
        .into(),
        HistoryRequest {
            room: r.clone(),
            direction: Direction::Before,
            anchor: Seq(0),
            limit: 1,
        }
        .into(),
    ] {
        let reply = request(&mut a, body).await;
        assert!(no_such(&reply), "{reply:?}");
    }
    let ack = a.subscribe(vec![(r.clone(), StartAt::Live)]).await;
    assert_eq!(ack.results[0].code, ErrorCode::NoSuchRoom);
    // Nothing else is pending: a Ping is answered next.
    let rid = a.send(Ping { nonce: 3 }).await;
    let f = a.wait_reply(rid, |f| matches!(f.body, Body::Pong(_))).await;
    assert!(matches!(f.body, Body::Pong(_)));
    broker.shutdown().await;
}
