//! Authorization from the token, end to end over TCP: a JWT's `rooms`
//! claim narrows every room-scoped request (protocol 15.1), a configured
//! issuer and audience are required, and a refreshed token with fewer
//! rooms ends the subscriptions it no longer allows.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use confab_broker::config::AuthMode;
use confab_codec::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &[u8] = b"a-test-secret-that-is-long-enough-for-hs256";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn jwt_config(dir: &std::path::Path) -> confab_broker::config::Config {
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut config = test_config(&dir.join("data"));
    config.auth.mode = AuthMode::Jwt;
    config.auth.jwt.hs256_secret_file = secret;
    config
}

/// Connects with `token`; returns the connection and the first reply.
async fn connect(addr: std::net::SocketAddr, token: String, device: &str) -> (Conn, Frame) {
    let mut c = Conn::raw(addr).await;
    c.send(Hello {
        min_version: 1,
        max_version: 1,
        token,
        device: DeviceId::new(device).unwrap(),
        client_name: "authz-test".into(),
        resume: vec![],
        features: Default::default(),
    })
    .await;
    let f = c.recv().await.unwrap();
    (c, f)
}

async fn open(addr: std::net::SocketAddr, claims: serde_json::Value, device: &str) -> Conn {
    let (c, f) = connect(addr, token(claims), device).await;
    assert!(matches!(f.body, Body::Welcome(_)), "{f:?}");
    c
}

fn group(id: &str) -> CreateRoom {
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
        invite: vec![],
    }
}

fn forbidden(b: &Body) -> bool {
    matches!(b, Body::Error(e) if e.code == ErrorCode::Forbidden)
}

fn users_in(b: &Body) -> Vec<String> {
    match b {
        Body::PresenceEvent(p) => p.entries.iter().map(|e| e.user.to_string()).collect(),
        other => panic!("expected a PresenceEvent, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rooms_claim_narrows_every_room_request() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(jwt_config(dir.path())).await;
    let addr = broker.tcp_addr();
    let exp = now() + 600;
    let (ok, secret) = (room("ok"), room("secret"));

    // Alice, unrestricted, owns both rooms; bob is in "secret" only,
    // carol in "ok".
    let mut full = open(addr, json!({"sub": "alice", "exp": exp}), "desk").await;
    for r in ["ok", "secret"] {
        let b = request(&mut full, group(r)).await;
        assert!(matches!(b, Body::RoomInfo(_)), "{b:?}");
    }
    full.publish(&secret, 1, b"private").await;
    full.publish(&ok, 2, b"public").await;
    for (u, r) in [("bob", &secret), ("carol", &ok)] {
        let mut c = open(addr, json!({"sub": u, "exp": exp}), "d").await;
        let b = request(&mut c, JoinRoom { room: r.clone() }).await;
        assert!(matches!(b, Body::RoomInfo(_)), "{b:?}");
    }

    // The same user with a token for "ok" only.
    let mut c = open(
        addr,
        json!({"sub": "alice", "exp": exp, "rooms": ["ok"]}),
        "kiosk",
    )
    .await;
    let refused: Vec<(&str, Body)> = vec![
        (
            "GetRoomInfo",
            GetRoomInfo {
                room: secret.clone(),
            }
            .into(),
        ),
        (
            "GetMessageStatus",
            GetMessageStatus {
                room: secret.clone(),
                seq: Seq(1),
            }
            .into(),
        ),
        ("CreateRoom with an id", group("elsewhere").into()),
        (
            "CreateRoom without an id",
            CreateRoom {
                room: None,
                ..group("x")
            }
            .into(),
        ),
        (
            "CreateRoom direct",
            CreateRoom {
                kind: RoomKind::Direct,
                room: None,
                peer: Some(user("bob")),
                ..group("x")
            }
            .into(),
        ),
        (
            "UpdateRoom",
            UpdateRoom {
                room: secret.clone(),
                meta: group("secret").meta,
            }
            .into(),
        ),
        (
            "InviteMember",
            InviteMember {
                room: secret.clone(),
                user: user("dave"),
            }
            .into(),
        ),
        (
            "RemoveMember",
            RemoveMember {
                room: secret.clone(),
                user: user("bob"),
            }
            .into(),
        ),
        (
            "SetRole",
            SetRole {
                room: secret.clone(),
                user: user("bob"),
                role: Role::Admin,
            }
            .into(),
        ),
        (
            "JoinRoom",
            JoinRoom {
                room: secret.clone(),
            }
            .into(),
        ),
        (
            "LeaveRoom",
            LeaveRoom {
                room: secret.clone(),
            }
            .into(),
        ),
        (
            "HistoryRequest",
            HistoryRequest {
                room: secret.clone(),
                direction: Direction::Before,
                anchor: Seq(0),
                limit: 10,
            }
            .into(),
        ),
        (
            "Publish",
            Publish {
                room: secret.clone(),
                client_msg_id: 9,
                kind: MessageKind::MESSAGE,
                refers_to: None,
                thread: None,
                payload: Bytes::from_static(b"leak"),
            }
            .into(),
        ),
        (
            "Typing",
            Typing {
                room: secret.clone(),
                active: true,
            }
            .into(),
        ),
        (
            "Receipt",
            Receipt {
                room: secret.clone(),
                kind: ReceiptKind::Read,
                seq: Seq(1),
            }
            .into(),
        ),
        (
            "RegisterPush",
            RegisterPush {
                provider: "fcm".into(),
                token: "t".into(),
            }
            .into(),
        ),
        // Rooms that do not exist are refused the same way: the answer
        // says nothing about the room.
        (
            "GetRoomInfo of a missing room",
            GetRoomInfo {
                room: room("nowhere"),
            }
            .into(),
        ),
    ];
    assert_eq!(refused.len(), 17);
    for (what, body) in refused {
        let b = request(&mut c, body).await;
        assert!(forbidden(&b), "{what}: {b:?}");
    }
    let ack = c
        .subscribe(vec![
            (secret.clone(), StartAt::From(Seq(1))),
            (ok.clone(), StartAt::Live),
        ])
        .await;
    assert_eq!(ack.results[0].code, ErrorCode::Forbidden);
    assert_eq!(ack.results[1].code, ErrorCode::Normal);

    // Filtered, not refused: the room list and presence.
    match request(
        &mut c,
        ListRooms {
            after: None,
            limit: 100,
        },
    )
    .await
    {
        Body::RoomList(l) => {
            let rooms: Vec<_> = l.rooms.iter().map(|s| s.room.to_string()).collect();
            assert_eq!(rooms, ["ok"]);
            assert!(!l.has_more);
        }
        other => panic!("{other:?}"),
    }
    let asked = GetPresence {
        users: vec![user("alice"), user("bob"), user("carol")],
    };
    let seen = users_in(&request(&mut c, asked.clone()).await);
    assert_eq!(
        seen,
        ["alice", "carol"],
        "bob shares only a room outside the claim"
    );
    let seen = users_in(&request(&mut full, asked).await);
    assert_eq!(seen, ["alice", "bob", "carol"]);

    // What the claim allows still works.
    assert!(matches!(
        request(&mut c, GetRoomInfo { room: ok.clone() }).await,
        Body::RoomInfo(_)
    ));
    c.publish(&ok, 3, b"from the kiosk").await;
    let page = c.history(&ok, Direction::After, 0, 10).await;
    assert!(page.events.iter().all(|e| e.seq.0 >= 1));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_with_fewer_rooms_ends_their_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(jwt_config(dir.path())).await;
    let addr = broker.tcp_addr();
    let exp = now() + 600;
    let (a, b) = (room("a"), room("b"));
    let mut writer = open(addr, json!({"sub": "wendy", "exp": exp}), "w").await;
    let mut c = open(
        addr,
        json!({"sub": "rita", "exp": exp, "rooms": ["a", "b"]}),
        "r",
    )
    .await;
    let ack = c
        .subscribe(vec![(a.clone(), StartAt::Live), (b.clone(), StartAt::Live)])
        .await;
    assert!(ack.results.iter().all(|r| r.code == ErrorCode::Normal));

    let rid = c
        .send(RefreshToken {
            token: token(json!({"sub": "rita", "exp": exp, "rooms": ["a"]})),
        })
        .await;
    let reply = c.wait_reply(rid, |f| matches!(f.body, Body::Ack(_))).await;
    assert!(matches!(reply.body, Body::Ack(_)));

    // Room b is no longer delivered; a still is. The notice said so.
    writer.publish(&b, 1, b"hidden").await;
    writer.publish(&a, 2, b"visible").await;
    let (events, others) = c.events(1).await;
    assert_eq!(events[0].0, a);
    assert_eq!(&events[0].2[..], b"visible");
    assert!(
        others.iter().any(|f| matches!(
            &f.body,
            Body::Notice(n) if n.code == ErrorCode::Forbidden && n.text.contains(" b")
        )),
        "{others:?}"
    );
    let b2 = request(&mut c, GetRoomInfo { room: b.clone() }).await;
    assert!(forbidden(&b2), "{b2:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_with_fewer_rooms_tells_a_version_2_device_access_lost() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(jwt_config(dir.path())).await;
    let addr = broker.tcp_addr();
    let exp = now() + 600;
    let (a, b) = (room("a"), room("b"));
    let mut writer = open(addr, json!({"sub": "wendy", "exp": exp}), "w").await;
    writer.publish(&b, 1, b"one").await;
    let mut c = Conn::raw(addr).await;
    c.send(Hello {
        min_version: 1,
        max_version: 2,
        token: token(json!({"sub": "rita", "exp": exp, "rooms": ["a", "b"]})),
        device: DeviceId::new("r").unwrap(),
        client_name: "authz-test".into(),
        resume: vec![],
        features: Default::default(),
    })
    .await;
    let f = c.recv().await.unwrap();
    assert!(
        matches!(&f.body, Body::Welcome(w) if w.version == 2),
        "{f:?}"
    );
    let ack = c
        .subscribe(vec![
            (a.clone(), StartAt::Live),
            (b.clone(), StartAt::From(Seq(1))),
        ])
        .await;
    assert!(ack.results.iter().all(|r| r.code == ErrorCode::Normal));
    let (events, _) = c.events(1).await;
    assert_eq!((&events[0].0, events[0].1), (&b, 1));

    let rid = c
        .send(RefreshToken {
            token: token(json!({"sub": "rita", "exp": exp, "rooms": ["a"]})),
        })
        .await;
    let reply = c.wait_reply(rid, |f| matches!(f.body, Body::Ack(_))).await;
    assert!(matches!(reply.body, Body::Ack(_)));
    // Room b ends with a Gap: everything up to its head (1) was sent, so
    // the range is empty; nothing more of it comes.
    let gap = loop {
        let f = c.recv().await.expect("open");
        match f.body {
            Body::Gap(g) => break g,
            Body::Event(_) | Body::EventBatch(_) => panic!("{f:?}"),
            _ => {}
        }
    };
    assert_eq!(
        (gap.room, gap.from, gap.to, gap.reason),
        (b.clone(), Seq(2), Seq(1), GapReason::AccessLost)
    );
    writer.publish(&b, 2, b"hidden").await;
    writer.publish(&a, 3, b"visible").await;
    let (events, _) = c.events(1).await;
    assert_eq!((&events[0].0, &events[0].2[..]), (&a, &b"visible"[..]));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_issuer_and_audience_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = jwt_config(dir.path());
    config.auth.jwt.issuer = "https://id.example".into();
    config.auth.jwt.audience = "confab".into();
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let exp = now() + 600;
    let full = json!({"sub": "ann", "exp": exp, "iss": "https://id.example", "aud": "confab"});
    let (_c, f) = connect(addr, token(full), "d").await;
    assert!(matches!(f.body, Body::Welcome(_)), "{f:?}");
    for claims in [
        json!({"sub": "ann", "exp": exp, "aud": "confab"}),
        json!({"sub": "ann", "exp": exp, "iss": "https://id.example"}),
        json!({"sub": "ann", "exp": exp}),
    ] {
        let (mut c, f) = connect(addr, token(claims.clone()), "d").await;
        assert!(
            matches!(&f.body, Body::Error(e) if e.code == ErrorCode::Unauthenticated),
            "{claims}: {f:?}"
        );
        c.until_closed().await;
    }
    broker.shutdown().await;
}
