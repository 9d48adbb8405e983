//! JWT authentication end to end: handshake, expiry, refresh, room limits.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

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

async fn jwt_broker(dir: &std::path::Path) -> confab_broker::BrokerHandle {
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut config = test_config(&dir.join("data"));
    config.auth.mode = AuthMode::Jwt;
    config.auth.jwt.hs256_secret_file = secret;
    config.auth.jwt.leeway_secs = 0;
    start(config).await
}

async fn hello(c: &mut Conn, token: String, device: &str) -> Frame {
    c.send(Hello {
        min_version: 1,
        max_version: 1,
        token,
        device: DeviceId::new(device).unwrap(),
        client_name: "jwt-test".into(),
        resume: vec![],
        features: Default::default(),
    })
    .await;
    c.recv().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_handshake_expiry_refresh_and_room_limits() {
    let dir = tempfile::tempdir().unwrap();
    let broker = jwt_broker(dir.path()).await;
    let addr = broker.tcp_addr();

    // A valid token: the user comes from `sub`.
    let mut c = Conn::raw(addr).await;
    let f = hello(
        &mut c,
        token(json!({"sub": "alice", "exp": now() + 600, "rooms": ["ok"]})),
        "phone",
    )
    .await;
    match f.body {
        Body::Welcome(w) => assert_eq!(w.user.as_str(), "alice"),
        other => panic!("{other:?}"),
    }
    // Room limits from the token.
    let ack = c
        .subscribe(vec![
            (room("ok"), StartAt::Live),
            (room("secret"), StartAt::Live),
        ])
        .await;
    assert_eq!(ack.results[0].code, ErrorCode::Normal);
    assert_eq!(ack.results[1].code, ErrorCode::Forbidden);
    let rid = c.request_id();
    c.send_frame(Conn::publish_frame(rid, &room("secret"), 1, b"x"))
        .await;
    let f = c.wait_reply(rid, |_| true).await;
    assert!(matches!(f.body, Body::Error(e) if e.code == ErrorCode::Forbidden));
    c.publish(&room("ok"), 2, b"fine").await;

    // A refresh for another user is refused and closes the connection.
    let rid = c
        .send(RefreshToken {
            token: token(json!({"sub": "mallory", "exp": now() + 600})),
        })
        .await;
    let f = c.wait_reply(rid, |_| true).await;
    assert!(matches!(f.body, Body::Error(e) if e.code == ErrorCode::Unauthenticated));
    assert!(c
        .until_closed()
        .await
        .iter()
        .any(|f| matches!(f.body, Body::Goodbye(_))));

    // Expired, malformed and wrongly signed tokens are refused at Hello.
    for (bad, code) in [
        (
            token(json!({"sub": "alice", "exp": now() - 5})),
            ErrorCode::TokenExpired,
        ),
        ("garbage".to_owned(), ErrorCode::Unauthenticated),
        (
            encode(
                &Header::new(Algorithm::HS256),
                &json!({"sub": "alice", "exp": now() + 600}),
                &EncodingKey::from_secret(b"not-the-secret-not-the-secret-not-the"),
            )
            .unwrap(),
            ErrorCode::Unauthenticated,
        ),
    ] {
        let mut c = Conn::raw(addr).await;
        let f = hello(&mut c, bad, "phone").await;
        assert!(matches!(&f.body, Body::Error(e) if e.code == code), "{f:?}");
        c.until_closed().await;
    }

    // A token that expires soon closes the connection with TokenExpired...
    let mut c = Conn::raw(addr).await;
    let f = hello(
        &mut c,
        token(json!({"sub": "bob", "exp": now() + 2})),
        "laptop",
    )
    .await;
    assert!(matches!(f.body, Body::Welcome(_)));
    let frames = c.until_closed().await;
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.body, Body::Goodbye(g) if g.code == ErrorCode::TokenExpired)),
        "{frames:?}"
    );

    // ...unless it is refreshed in time.
    let mut c = Conn::raw(addr).await;
    let f = hello(
        &mut c,
        token(json!({"sub": "carol", "exp": now() + 2})),
        "tablet",
    )
    .await;
    assert!(matches!(f.body, Body::Welcome(_)));
    let rid = c
        .send(RefreshToken {
            token: token(json!({"sub": "carol", "exp": now() + 600})),
        })
        .await;
    let f = c.wait_reply(rid, |f| matches!(f.body, Body::Ack(_))).await;
    assert!(matches!(f.body, Body::Ack(_)));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rid = c.send(Ping { nonce: 5 }).await;
    let f = c.wait_reply(rid, |f| matches!(f.body, Body::Pong(_))).await;
    assert_eq!(f.body, Body::Pong(Pong { nonce: 5 }));
    broker.shutdown().await;
}
