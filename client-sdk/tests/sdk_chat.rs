//! The SDK's presence calls, its handling of rate limits and token refresh,
//! against the real broker in process on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use confab_broker::config::{AuthMode, Config};
use confab_broker::{Broker, BrokerError, BrokerHandle};
use confab_client::confab_codec::{
    DeviceId, ErrorCode, JoinPolicy, PresenceEntry, PresenceStatus, RoomId, UserId,
};
use confab_client::{
    BackoffConfig, Client, ClientConfig, ClientError, ConnectionEvent, Endpoint, Message,
};
use futures_util::StreamExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use tokio::sync::broadcast;

const SECRET: &[u8] = b"a-test-secret-that-is-long-enough-for-hs256";

fn base_config(dir: &Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.listen.tcp = "127.0.0.1:0".parse().unwrap();
    config.listen.tls = None;
    config.listen.quic = None;
    config.presence.window_ms = 50;
    config
}

async fn start(config: Config) -> BrokerHandle {
    // The port of a broker just shut down may take a moment to free up.
    for _ in 0..100 {
        match Broker::builder(config.clone()).start().await {
            Ok(handle) => return handle,
            Err(BrokerError::Bind { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("broker did not start: {e}"),
        }
    }
    panic!("could not bind again");
}

fn client_config(broker: &BrokerHandle, token: String, device: &str) -> ClientConfig {
    let mut c = ClientConfig::with_endpoint(
        Endpoint::tcp(broker.tcp_addr()),
        token,
        DeviceId::new(device).unwrap(),
    );
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        multiplier: 2.0,
        max_attempts: None,
    };
    c.request_timeout = Duration::from_secs(10);
    c
}

async fn dev_client(broker: &BrokerHandle, user: &str, device: &str) -> Client {
    Client::connect(client_config(broker, format!("{user}:{device}"), device))
        .await
        .unwrap()
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("timed out")
}

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(base_config(dir.path())).await;
    let alice = dev_client(&broker, "alice", "phone").await;
    let bob = dev_client(&broker, "bob", "laptop").await;
    let carol = dev_client(&broker, "carol", "tablet").await;
    let team = RoomId::new("team").unwrap();
    alice
        .create_group(
            Some(team.clone()),
            "Team",
            JoinPolicy::InviteOnly,
            vec![user("bob")],
        )
        .await
        .unwrap();
    bob.join(team.clone()).await.unwrap();

    let updates = bob.presence_events();
    futures_util::pin_mut!(updates);
    bob.watch_presence(true).await.unwrap();
    alice.set_presence(PresenceStatus::Away).await.unwrap();
    let away = within(async {
        loop {
            let entries: Vec<PresenceEntry> = updates.next().await.expect("stream open");
            if let Some(e) = entries
                .into_iter()
                .find(|e| e.user == user("alice") && e.status == PresenceStatus::Away)
            {
                return e;
            }
        }
    })
    .await;
    assert!(away.last_seen_us > 0);

    let now = bob.get_presence(vec![user("alice")]).await.unwrap();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].status, PresenceStatus::Away);
    // A user who shares no room sees nothing.
    assert!(carol
        .get_presence(vec![user("alice"), user("bob")])
        .await
        .unwrap()
        .is_empty());

    // Alice leaves: Bob's stream says offline.
    alice.close().await;
    within(async {
        loop {
            let entries = updates.next().await.expect("stream open");
            if entries
                .iter()
                .any(|e| e.user == user("alice") && e.status == PresenceStatus::Offline)
            {
                return;
            }
        }
    })
    .await;
    bob.close().await;
    carol.close().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_typed_and_publishes_retry_after_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(dir.path());
    config.rate_limits.publish_per_sec = 10;
    config.rate_limits.publish_burst = 2;
    config.rate_limits.room_ops_per_sec = 1;
    config.rate_limits.room_ops_burst = 1;
    let broker = start(config).await;

    // Automatic retries: every publish of a burst is stored, once each.
    let patient = dev_client(&broker, "alice", "phone").await;
    let mut events = patient.events();
    let mut pending = Vec::new();
    for i in 0..8 {
        let m = Message::new(RoomId::new("busy").unwrap(), format!("m{i}"));
        pending.push(patient.enqueue(m).await.unwrap());
    }
    let mut seqs = Vec::new();
    for p in pending {
        seqs.push(within(p).await.unwrap().seq.0);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    // It never flooded: the connection stayed up.
    loop {
        match events.try_recv() {
            Ok(ConnectionEvent::Disconnected { reason }) => panic!("disconnected: {reason}"),
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }

    // Without retries the refusal reaches the application, typed.
    let mut cfg = client_config(&broker, "bob:laptop".into(), "laptop");
    cfg.rate_limit_retries = 0;
    let hasty = Client::connect(cfg).await.unwrap();
    let results =
        futures_util::future::join_all((0..4).map(|i| hasty.publish("hasty", format!("h{i}"))))
            .await;
    let limited: Vec<_> = results
        .iter()
        .filter_map(|r| match r {
            Err(ClientError::RateLimited { retry_after, .. }) => Some(*retry_after),
            Ok(_) => None,
            Err(e) => panic!("unexpected error {e}"),
        })
        .collect();
    assert!(!limited.is_empty(), "{results:?}");
    assert!(limited.iter().all(|d| !d.is_zero()));

    // Other requests too.
    hasty.join("nowhere-1").await.unwrap_err();
    let e = hasty.join("nowhere-2").await.unwrap_err();
    assert!(matches!(e, ClientError::RateLimited { .. }), "{e}");
    assert_eq!(e.code(), Some(ErrorCode::RateLimited));
    patient.close().await;
    hasty.close().await;
    broker.shutdown().await;
}

fn jwt(sub: &str, exp: u64) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({ "sub": sub, "exp": exp }),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_keeps_the_connection_and_is_used_on_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut config = base_config(&dir.path().join("data"));
    config.auth.mode = AuthMode::Jwt;
    config.auth.jwt.hs256_secret_file = secret;
    config.auth.jwt.leeway_secs = 0;
    let broker = start(config.clone()).await;

    let short = jwt("alice", unix_now() + 2);
    let client = Client::connect(client_config(&broker, short, "phone"))
        .await
        .unwrap();
    let mut events = client.events();
    client
        .refresh_token(jwt("alice", unix_now() + 3600))
        .await
        .unwrap();
    // Past the first token's expiry the connection is still the same one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.publish("notes", "still here").await.unwrap();
    assert!(
        !matches!(events.try_recv(), Ok(ConnectionEvent::Disconnected { .. })),
        "the refreshed connection stayed up"
    );

    // A reconnect (the broker restarts) uses the new token: the first one
    // has expired and would be refused for good.
    let config = Config {
        listen: confab_broker::config::ListenConfig {
            tcp: broker.tcp_addr(),
            ..config.listen.clone()
        },
        ..config
    };
    broker.shutdown().await;
    let broker = start(config).await;
    within(async {
        loop {
            match events.recv().await {
                Ok(ConnectionEvent::Reconnected { .. }) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("client stopped"),
            }
        }
    })
    .await;
    client.publish("notes", "after the restart").await.unwrap();

    // A token of another user is refused and stops the client.
    let e = client
        .refresh_token(jwt("mallory", unix_now() + 3600))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Server {
                code: ErrorCode::Unauthenticated,
                ..
            } | ClientError::Fatal { .. }
                | ClientError::ConnectionLost
        ),
        "{e}"
    );
    // The client stops for good (Unauthenticated is fatal).
    within(async {
        while client.state() != confab_client::ConnectionState::Closed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(matches!(
        client.publish("notes", "x").await,
        Err(ClientError::Closed | ClientError::Fatal { .. })
    ));
    broker.shutdown().await;
}
