//! Hostile and broken peers: each gets an error or a close, and only its
//! own connection is affected. Each test runs over TCP, TLS and QUIC.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use confab_codec::*;

over_transports!(
    bad_frames_close_only_their_connection,
    handshake_rules,
    auth_disabled_refuses_everyone,
    slowloris_and_idle_connections_are_closed,
    connection_limit_answers_server_busy,
    shutdown_says_goodbye,
    a_device_connecting_again_replaces_its_old_session,
    the_hello_has_its_own_size_limit,
);

/// Asserts the server sends an Error with `code` (and maybe a Goodbye), then closes.
async fn expect_error_and_close(c: &mut Conn, code: ErrorCode) {
    let frames = c.until_closed().await;
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.body, Body::Error(e) if e.code == code)),
        "expected an Error {code:?}, got {frames:?}"
    );
}

async fn still_works(addr: &Dial, r: &RoomId, cmid: u64) {
    let mut c = Conn::open(addr, "healthy", "d").await;
    let ack = c.publish(r, cmid, b"still here").await;
    assert!(ack.seq.0 >= 1);
}

async fn bad_frames_close_only_their_connection(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = dial(&broker, t);
    let r = room("calm");
    let mut bystander = Conn::open(&addr, "bystander", "d").await;
    bystander.subscribe(vec![(r.clone(), StartAt::Live)]).await;

    // Oversized length: rejected from the header alone.
    let mut c = Conn::open(&addr, "a", "d").await;
    let mut header = Vec::new();
    Header {
        len: u32::MAX,
        frame_type: frame_type::Publish,
        flags: 0,
        request_id: 1,
    }
    .put(&mut header);
    c.send_raw(&header).await.unwrap();
    expect_error_and_close(&mut c, ErrorCode::FrameTooLarge).await;

    // Unknown mandatory frame type.
    let mut c = Conn::open(&addr, "b", "d").await;
    let mut f = Vec::new();
    Header {
        len: 3,
        frame_type: 0x7F,
        flags: 0,
        request_id: 1,
    }
    .put(&mut f);
    f.extend_from_slice(b"abc");
    c.send_raw(&f).await.unwrap();
    expect_error_and_close(&mut c, ErrorCode::UnknownFrameType).await;

    // Malformed body: a Publish whose room id is not UTF-8.
    let mut c = Conn::open(&addr, "c", "d").await;
    let mut f = Vec::new();
    Header {
        len: 3,
        frame_type: frame_type::Publish,
        flags: 0,
        request_id: 1,
    }
    .put(&mut f);
    f.extend_from_slice(&[2, 0xff, 0xfe]);
    c.send_raw(&f).await.unwrap();
    expect_error_and_close(&mut c, ErrorCode::MalformedFrame).await;

    // A server-to-client frame from a client.
    let mut c = Conn::open(&addr, "d", "d").await;
    c.send(Pong { nonce: 1 }).await; // allowed, ignored
    c.send(Ack {}).await;
    expect_error_and_close(&mut c, ErrorCode::ProtocolViolation).await;

    // An unknown optional extension frame is skipped, the connection lives.
    let mut c = Conn::open(&addr, "e", "d").await;
    let mut f = Vec::new();
    Header {
        len: 2,
        frame_type: 0x90,
        flags: 0,
        request_id: 0,
    }
    .put(&mut f);
    f.extend_from_slice(b"zz");
    c.send_raw(&f).await.unwrap();
    let rid = c.send(Ping { nonce: 9 }).await;
    let pong = c.recv().await.unwrap();
    assert_eq!(
        (pong.request_id, pong.body),
        (rid, Body::Pong(Pong { nonce: 9 }))
    );

    // Garbage before the handshake.
    let mut c = Conn::connect(&addr).await;
    c.send_raw(&[0u8, 0, 0, 1, 0x20, 0, 0, 0, 0, 1, 0xAA])
        .await
        .unwrap();
    let frames = c.until_closed().await;
    assert!(
        frames.iter().any(|f| matches!(&f.body, Body::Error(_))),
        "{frames:?}"
    );

    // The bystander saw nothing bad and still receives.
    still_works(&addr, &r, 1).await;
    let (events, _) = bystander.events(1).await;
    assert_eq!(events[0].1, 1);
    broker.shutdown().await;
}

async fn handshake_rules(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.handshake_timeout_ms = 300;
    let broker = start(config).await;
    let addr = dial(&broker, t);

    // Silence after connect. A QUIC stream exists for the server only once
    // the client sends on it, so there the broker can only close the
    // connection, without a frame.
    let mut c = Conn::connect(&addr).await;
    if t == Transport::Quic {
        assert_eq!(c.until_closed().await, vec![]);
    } else {
        expect_error_and_close(&mut c, ErrorCode::Timeout).await;
    }

    // Something other than Hello first.
    let mut c = Conn::connect(&addr).await;
    c.send(Ping { nonce: 1 }).await;
    expect_error_and_close(&mut c, ErrorCode::ProtocolViolation).await;

    // No common version (the broker speaks 1 and 2).
    let mut c = Conn::connect(&addr).await;
    c.send(Hello {
        min_version: 3,
        max_version: 4,
        token: "alice".into(),
        device: DeviceId::new("d").unwrap(),
        client_name: "future".into(),
        resume: vec![],
        features: Default::default(),
    })
    .await;
    expect_error_and_close(&mut c, ErrorCode::UnsupportedVersion).await;

    // Token for another device.
    let mut c = Conn::connect(&addr).await;
    c.send(Hello {
        min_version: 1,
        max_version: 1,
        token: "alice:phone".into(),
        device: DeviceId::new("laptop").unwrap(),
        client_name: "t".into(),
        resume: vec![],
        features: Default::default(),
    })
    .await;
    expect_error_and_close(&mut c, ErrorCode::Unauthenticated).await;

    // A good Hello gets the limits.
    let c = Conn::open(&addr, "alice", "phone").await;
    let w = c.welcome.unwrap();
    assert_eq!(w.user.as_str(), "alice");
    assert_eq!(w.max_rooms, 10_000);
    assert_eq!(w.max_frame_len, DEFAULT_MAX_FRAME_LEN);
    broker.shutdown().await;
}

async fn auth_disabled_refuses_everyone(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.mode = confab_broker::config::AuthMode::Disabled;
    let broker = start(config).await;
    let mut c = Conn::connect(dial(&broker, t)).await;
    c.send(Hello {
        min_version: 1,
        max_version: 1,
        token: "alice".into(),
        device: DeviceId::new("d").unwrap(),
        client_name: "t".into(),
        resume: vec![],
        features: Default::default(),
    })
    .await;
    expect_error_and_close(&mut c, ErrorCode::Unauthenticated).await;
    broker.shutdown().await;
}

async fn slowloris_and_idle_connections_are_closed(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.heartbeat_ms = 100;
    config.limits.idle_timeout_ms = 400;
    let broker = start(config).await;
    let addr = dial(&broker, t);

    // Half a frame, then silence.
    let mut c = Conn::open(&addr, "slow", "d").await;
    c.send_raw(&[0, 0, 0, 50, frame_type::Publish, 0, 0, 0])
        .await
        .unwrap();
    let frames = c.until_closed().await;
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.body, Body::Goodbye(g) if g.code == ErrorCode::Timeout)),
        "{frames:?}"
    );

    // Heartbeats keep a quiet connection open past the idle timeout.
    let mut c = Conn::open(&addr, "alive", "d").await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.send(Ping { nonce: 1 }).await;
        assert!(matches!(c.recv().await.unwrap().body, Body::Pong(_)));
    }
    broker.shutdown().await;
}

async fn connection_limit_answers_server_busy(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_connections = 2;
    let broker = start(config).await;
    let addr = dial(&broker, t);
    let _a = Conn::open(&addr, "a", "d").await;
    let _b = Conn::open(&addr, "b", "d").await;
    if t == Transport::Tcp {
        let mut c = Conn::connect(&addr).await;
        expect_error_and_close(&mut c, ErrorCode::ServerBusy).await;
    } else {
        // Refused before the TLS or QUIC handshake it would cost (15.3).
        assert!(
            handshake_refused(&addr).await,
            "refused before the handshake"
        );
    }
    drop(_a);
    // The slot frees up once the first connection is gone.
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if t != Transport::Tcp && handshake_refused(&addr).await {
            continue;
        }
        let mut c = Conn::connect(&addr).await;
        c.send(Hello {
            min_version: 1,
            max_version: 1,
            token: "c".into(),
            device: DeviceId::new("d").unwrap(),
            client_name: "t".into(),
            resume: vec![],
            features: Default::default(),
        })
        .await;
        if let Some(f) = c.recv().await {
            if matches!(f.body, Body::Welcome(_)) {
                ok = true;
                break;
            }
        }
    }
    assert!(ok, "a freed slot admits a new connection");
    broker.shutdown().await;
}

async fn shutdown_says_goodbye(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = Conn::open(dial(&broker, t), "a", "d").await;
    let shutdown = tokio::spawn(broker.shutdown());
    let frames = c.until_closed().await;
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.body, Body::Goodbye(g) if g.code == ErrorCode::ShuttingDown)),
        "{frames:?}"
    );
    tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
}

async fn a_device_connecting_again_replaces_its_old_session(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = dial(&broker, t);
    let mut old = Conn::open(&addr, "alice", "phone").await;
    let _other_device = Conn::open(&addr, "alice", "laptop").await;
    let mut new = Conn::open(&addr, "alice", "phone").await;
    let frames = old.until_closed().await;
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.body, Body::Goodbye(g) if g.code == ErrorCode::SessionReplaced)),
        "{frames:?}"
    );
    // The new session works; the other device was not affected.
    new.publish(&room("r"), 1, b"hi").await;
    let mut other = _other_device;
    let rid = other.send(Ping { nonce: 3 }).await;
    assert_eq!(other.recv().await.unwrap().request_id, rid);
    broker.shutdown().await;
}

/// `count` resume items with 128-byte room ids (138 bytes each).
fn long_rooms(count: usize) -> Vec<SubscribeItem> {
    (0..count)
        .map(|i| SubscribeItem {
            room: room(&format!("{i:0>128}")),
            start: StartAt::Live,
        })
        .collect()
}

async fn the_hello_has_its_own_size_limit(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = dial(&broker, t);

    // A Hello declaring one byte more than 64 KiB is refused from its
    // header: Error FrameTooLarge with request id 0, Goodbye, close.
    let mut c = Conn::connect(&addr).await;
    let mut header = Vec::new();
    Header {
        len: HELLO_LEN_FLOOR + 1,
        frame_type: frame_type::Hello,
        flags: 0,
        request_id: 1,
    }
    .put(&mut header);
    c.send_raw(&header).await.unwrap();
    let frames = c.until_closed().await;
    assert!(
        frames.iter().any(|f| f.request_id == 0
            && matches!(&f.body, Body::Error(e) if e.code == ErrorCode::FrameTooLarge)),
        "{frames:?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.body, Body::Goodbye(g) if g.code == ErrorCode::FrameTooLarge)),
        "{frames:?}"
    );

    // A Hello just under the limit is welcome (470 rooms resumed), and
    // after Welcome the limit is max_frame_len: a Subscribe of 82 KB.
    let resume = long_rooms(470);
    let hello_len = Frame::request(
        1,
        Hello {
            min_version: 1,
            max_version: 1,
            token: "big:d".into(),
            device: DeviceId::new("d").unwrap(),
            client_name: "test".into(),
            resume: resume.clone(),
            features: Default::default(),
        },
    )
    .body_len()
    .unwrap();
    assert!(hello_len > 64_000 && hello_len <= HELLO_LEN_FLOOR as usize);
    let mut c = Conn::open_with_resume(&addr, "big", "d", resume).await;
    let f = c
        .wait_reply(1, |f| matches!(f.body, Body::SubscribeAck(_)))
        .await;
    assert!(matches!(&f.body, Body::SubscribeAck(a) if a.results.len() == 470));
    let ack = c
        .subscribe(
            long_rooms(600)
                .into_iter()
                .map(|i| (i.room, i.start))
                .collect(),
        )
        .await;
    assert_eq!(ack.results.len(), 600);
    broker.shutdown().await;
}
