//! Delivered and read markers, receipt events and message status.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use confab_codec::*;

/// Waits for a ReceiptEvent with this entry, skipping other frames.
async fn receipt_seen(c: &mut Conn, user: &str, kind: ReceiptKind, seq: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no receipt {user} {kind:?} {seq}"
        );
        let f = c.recv().await.unwrap();
        if let Body::ReceiptEvent(e) = f.body {
            if e.entries
                .iter()
                .any(|x| x.user.as_str() == user && x.kind == kind && x.seq == Seq(seq))
            {
                return;
            }
        }
    }
}

async fn status(c: &mut Conn, r: &RoomId, seq: u64) -> MessageStatus {
    match request(
        c,
        GetMessageStatus {
            room: r.clone(),
            seq: Seq(seq),
        },
    )
    .await
    {
        Body::MessageStatus(s) => s,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_events_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = broker.tcp_addr();
    let r = room("crew");
    let mut alice = Conn::open(addr, "alice", "a1").await;
    let mut bob = Conn::open(addr, "bob", "b1").await;
    let mut carol = Conn::open(addr, "carol", "c1").await;
    let mut mallory = Conn::open(addr, "mallory", "m1").await;
    let create = CreateRoom {
        kind: RoomKind::Group,
        room: Some(r.clone()),
        peer: None,
        policy: JoinPolicy::InviteOnly,
        meta: RoomMeta {
            name: "crew".into(),
            topic: String::new(),
            avatar_url: String::new(),
        },
        invite: vec![UserId::new("bob").unwrap(), UserId::new("carol").unwrap()],
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
    alice.subscribe(vec![(r.clone(), StartAt::Live)]).await;
    let msg = alice.publish(&r, 1, b"lunch?").await.seq.0;

    let s = status(&mut alice, &r, msg).await;
    assert_eq!(
        (s.state, s.recipients, s.delivered, s.read),
        (DeliveryState::Sent, 2, 0, 0)
    );

    bob.send(Receipt {
        room: r.clone(),
        kind: ReceiptKind::Delivered,
        seq: Seq(msg),
    })
    .await;
    receipt_seen(&mut alice, "bob", ReceiptKind::Delivered, msg).await;
    carol
        .send(Receipt {
            room: r.clone(),
            kind: ReceiptKind::Read,
            seq: Seq(msg),
        })
        .await;
    receipt_seen(&mut alice, "carol", ReceiptKind::Read, msg).await;
    let s = status(&mut alice, &r, msg).await;
    assert_eq!(
        (s.state, s.delivered, s.read),
        (DeliveryState::Delivered, 2, 1)
    );

    bob.send(Receipt {
        room: r.clone(),
        kind: ReceiptKind::Read,
        seq: Seq(msg),
    })
    .await;
    receipt_seen(&mut alice, "bob", ReceiptKind::Read, msg).await;
    let s = status(&mut alice, &r, msg).await;
    assert_eq!((s.state, s.read), (DeliveryState::Read, 2));

    // Markers never move back, and a marker past the head is refused.
    bob.send(Receipt {
        room: r.clone(),
        kind: ReceiptKind::Read,
        seq: Seq(1),
    })
    .await;
    let rid = bob
        .send(Receipt {
            room: r.clone(),
            kind: ReceiptKind::Read,
            seq: Seq(msg + 10),
        })
        .await;
    let f = bob.wait_reply(rid, |_| true).await;
    assert!(matches!(f.body, Body::Error(e) if e.code == ErrorCode::NoSuchMessage));
    assert!(
        alice
            .recv_timeout(Duration::from_millis(200))
            .await
            .is_err(),
        "no event for a backward marker"
    );

    // Non-members can neither mark nor ask.
    let rid = mallory
        .send(Receipt {
            room: r.clone(),
            kind: ReceiptKind::Read,
            seq: Seq(msg),
        })
        .await;
    let f = mallory.wait_reply(rid, |_| true).await;
    assert!(matches!(f.body, Body::Error(e) if e.code == ErrorCode::NotMember));
    assert!(matches!(
        request(&mut mallory, GetMessageStatus { room: r.clone(), seq: Seq(msg) }).await,
        Body::Error(e) if e.code == ErrorCode::NotMember
    ));

    // The room list shows the read marker and the unread count.
    alice.publish(&r, 2, b"anyone?").await;
    match request(
        &mut carol,
        ListRooms {
            after: None,
            limit: 10,
        },
    )
    .await
    {
        Body::RoomList(l) => {
            let crew = l.rooms.iter().find(|x| x.room == r).unwrap();
            assert_eq!(crew.read, Seq(msg));
            assert_eq!(crew.unread, crew.head.0 - msg);
            assert_eq!(crew.unread, 1);
        }
        other => panic!("{other:?}"),
    }
    // Markers survive a restart.
    drop((alice, bob, carol, mallory));
    broker.shutdown().await;
    let broker = start_on(test_config(dir.path()), addr).await;
    let mut alice = Conn::open(addr, "alice", "a1").await;
    let s = status(&mut alice, &r, msg).await;
    assert_eq!(s.state, DeliveryState::Read);
    broker.shutdown().await;
}
