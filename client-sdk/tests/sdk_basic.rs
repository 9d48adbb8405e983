//! The SDK against the real broker, in process, on 127.0.0.1: publish and
//! subscribe between two clients, backlog then live, and a broker shut down
//! and restarted on the same data directory and port while clients keep
//! working: every message is delivered exactly once and in order, and
//! retried publishes are stored once. Every test runs over TCP, TLS and
//! QUIC: the SDK code above the transport is the same.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use confab_broker::config::Config;
use confab_broker::{Broker, BrokerError, BrokerHandle};
use confab_client::confab_codec::{DeviceId, RoomId, Seq};
use confab_client::{
    BackoffConfig, Client, ClientConfig, ConnectionEvent, Endpoint, Message, RoomEvent,
    Subscription,
};
use support::in_process::{client_config, take, within, Transport};
use tokio::sync::broadcast;

over_transports!(
    publish_and_subscribe_between_two_clients,
    subscribe_from_gets_backlog_then_live,
    clients_survive_a_broker_restart,
    a_restarted_app_resumes_from_its_cursor,
);

/// The addresses of a broker's TCP, TLS and QUIC listeners.
#[derive(Debug, Clone, Copy)]
struct Addrs {
    tcp: SocketAddr,
    tls: SocketAddr,
    quic: SocketAddr,
}

impl Addrs {
    fn any() -> Addrs {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        Addrs {
            tcp: any,
            tls: any,
            quic: any,
        }
    }

    fn of(broker: &BrokerHandle) -> Addrs {
        Addrs {
            tcp: broker.tcp_addr(),
            tls: broker.tls_addr().unwrap(),
            quic: broker.quic_addr().unwrap(),
        }
    }
}

async fn start_broker(dir: &Path, addrs: Addrs) -> BrokerHandle {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.listen.tcp = addrs.tcp;
    config.listen.tls = Some(addrs.tls);
    config.listen.quic = Some(addrs.quic);
    // The port of a broker just shut down may take a moment to free up.
    for _ in 0..100 {
        match Broker::builder(config.clone()).start().await {
            Ok(handle) => return handle,
            Err(BrokerError::Bind { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("broker did not start: {e}"),
        }
    }
    panic!("could not bind {addrs:?} again");
}

/// A client of `broker` over `t` that reconnects quickly and notices a
/// dead link within seconds.
fn config(broker: &BrokerHandle, t: Transport, user: &str, device: &str) -> ClientConfig {
    let mut c = client_config(broker, t, user, device);
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        multiplier: 2.0,
        max_attempts: None,
    };
    c.heartbeat_interval = Duration::from_secs(1);
    c.dead_link_timeout = Duration::from_secs(3);
    c
}

fn seqs(events: &[RoomEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq.0).collect()
}

async fn wait_event(
    rx: &mut broadcast::Receiver<ConnectionEvent>,
    mut pred: impl FnMut(&ConnectionEvent) -> bool,
) {
    within(async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("client closed"),
            }
        }
    })
    .await;
}

/// Nothing more arrives for a while: no duplicate is on its way.
async fn assert_quiet(sub: &mut Subscription) {
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        panic!("unexpected extra item: {extra:?}");
    }
}

async fn publish_and_subscribe_between_two_clients(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), Addrs::any()).await;
    let alice = Client::connect(config(&broker, t, "alice", "phone"))
        .await
        .unwrap();
    let bob = Client::connect(config(&broker, t, "bob", "laptop"))
        .await
        .unwrap();

    let mut sub = bob.subscribe("general").await.unwrap();
    let mut acks = Vec::new();
    for i in 0..50 {
        acks.push(alice.publish("general", format!("m{i}")).await.unwrap());
    }
    let ack_seqs: Vec<u64> = acks.iter().map(|a| a.seq.0).collect();
    assert_eq!(ack_seqs, (1..=50).collect::<Vec<_>>());

    let events = take(&mut sub, 50).await;
    assert_eq!(seqs(&events), (1..=50).collect::<Vec<_>>());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.payload, format!("m{i}"));
        assert_eq!(e.sender.as_str(), "alice");
        assert_eq!(e.device.as_str(), "phone");
        assert_eq!(e.client_msg_id, acks[i].client_msg_id);
    }
    assert_quiet(&mut sub).await;

    alice.close().await;
    bob.close().await;
    broker.shutdown().await;
}

async fn subscribe_from_gets_backlog_then_live(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), Addrs::any()).await;
    let alice = Client::connect(config(&broker, t, "alice", "phone"))
        .await
        .unwrap();
    let bob = Client::connect(config(&broker, t, "bob", "laptop"))
        .await
        .unwrap();
    for i in 1..=10 {
        alice.publish("r", format!("m{i}")).await.unwrap();
    }

    let mut sub = bob.subscribe_from("r", Seq(4)).await.unwrap();
    let backlog = take(&mut sub, 7).await;
    assert_eq!(seqs(&backlog), (4..=10).collect::<Vec<_>>());
    assert!(backlog.iter().all(|e| e.replayed));

    for i in 11..=15 {
        alice.publish("r", format!("m{i}")).await.unwrap();
    }
    let live = take(&mut sub, 5).await;
    assert_eq!(seqs(&live), (11..=15).collect::<Vec<_>>());
    assert_quiet(&mut sub).await;

    let history = bob.history("r", 2..=5).await.unwrap();
    assert_eq!(seqs(&history), vec![2, 3, 4, 5]);

    alice.close().await;
    bob.close().await;
    broker.shutdown().await;
}

async fn clients_survive_a_broker_restart(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), Addrs::any()).await;
    let alice = Client::connect(config(&broker, t, "alice", "phone"))
        .await
        .unwrap();
    let bob = Client::connect(config(&broker, t, "bob", "laptop"))
        .await
        .unwrap();
    let mut bob_events = bob.events();
    let mut sub = bob.subscribe("r").await.unwrap();
    let room = RoomId::new("r").unwrap();

    for i in 1..=20 {
        alice.publish("r", format!("m{i}")).await.unwrap();
    }
    assert_eq!(
        seqs(&take(&mut sub, 10).await),
        (1..=10).collect::<Vec<_>>()
    );

    // Queue a burst, then stop the broker while it is being written: some
    // publishes are stored but their acks never arrive, some never reach
    // the broker. All are retried after the restart.
    let mut pending = Vec::new();
    for i in 21..=220 {
        pending.push(
            alice
                .enqueue(Message::new(room.clone(), format!("m{i}")))
                .await
                .unwrap(),
        );
    }
    let addrs = Addrs::of(&broker);
    broker.shutdown().await;
    wait_event(&mut bob_events, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. })
    })
    .await;

    // Published while the broker is down: queued by the SDK.
    for i in 221..=230 {
        alice.publish_nowait("r", format!("m{i}")).await.unwrap();
    }
    let broker = start_broker(dir.path(), addrs).await;
    wait_event(&mut bob_events, |e| {
        matches!(e, ConnectionEvent::Reconnected { .. })
    })
    .await;

    let mut acked = HashSet::new();
    for p in pending {
        let ack = within(p).await.unwrap();
        assert!(acked.insert(ack.seq), "two publishes got seq {}", ack.seq);
    }
    within(alice.flush()).await.unwrap();

    // Bob reads on from 11, everything exactly once and in order.
    let rest = take(&mut sub, 220).await;
    assert_eq!(seqs(&rest), (11..=230).collect::<Vec<_>>());
    assert_quiet(&mut sub).await;

    // Each client message id is stored exactly once, and every message is
    // stored: the retries were deduplicated.
    let log = alice.history("r", ..).await.unwrap();
    assert_eq!(seqs(&log), (1..=230).collect::<Vec<_>>());
    let ids: HashSet<u64> = log.iter().map(|e| e.client_msg_id).collect();
    assert_eq!(ids.len(), 230, "a publish was stored twice");
    let payloads: HashSet<_> = log.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(payloads.len(), 230);

    alice.close().await;
    bob.close().await;
    broker.shutdown().await;
}

async fn a_restarted_app_resumes_from_its_cursor(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), Addrs::any()).await;
    let app_dir = tempfile::tempdir().unwrap();
    let cursors = app_dir.path().join("bob-cursors");
    let alice = Client::connect(config(&broker, t, "alice", "phone"))
        .await
        .unwrap();

    let store = confab_client::FileCursorStore::open(&cursors)
        .await
        .unwrap();
    let bob = Client::connect(config(&broker, t, "bob", "laptop").cursor_store(store))
        .await
        .unwrap();
    let mut sub = bob.subscribe("r").await.unwrap();
    for i in 1..=5 {
        alice.publish("r", format!("m{i}")).await.unwrap();
    }
    assert_eq!(seqs(&take(&mut sub, 5).await), vec![1, 2, 3, 4, 5]);
    drop(sub);
    bob.close().await;

    for i in 6..=12 {
        alice.publish("r", format!("m{i}")).await.unwrap();
    }
    let store = confab_client::FileCursorStore::open(&cursors)
        .await
        .unwrap();
    let bob = Client::connect(config(&broker, t, "bob", "laptop").cursor_store(store))
        .await
        .unwrap();
    let mut sub = bob.subscribe("r").await.unwrap();
    assert_eq!(seqs(&take(&mut sub, 7).await), (6..=12).collect::<Vec<_>>());
    assert_quiet(&mut sub).await;

    alice.close().await;
    bob.close().await;
    broker.shutdown().await;
}

/// A broker whose failed-login back-off refuses this address answers the
/// SDK's Hello with `RateLimited` and a wait: the SDK waits that long
/// instead of its own (much shorter) backoff, so one refusal is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_back_off_refusal_is_waited_out() {
    use confab_client::confab_codec::{Body, Frame, Hello};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let mut broker_config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    broker_config.listen.tcp = "127.0.0.1:0".parse().unwrap();
    broker_config.listen.tls = None;
    broker_config.listen.quic = None;
    broker_config.auth.login_backoff.free_failures = 1;
    broker_config.auth.login_backoff.base_delay_ms = 3_000;
    let broker = Broker::builder(broker_config).start().await.unwrap();
    let addr = broker.tcp_addr();

    // Two refused tokens from this address start the back-off.
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let hello = Frame::request(
            1,
            Hello {
                min_version: 1,
                max_version: 1,
                token: "mallory:phone".into(),
                device: DeviceId::new("laptop").unwrap(),
                client_name: "t".into(),
                resume: vec![],
                features: Default::default(),
            },
        );
        s.write_all(&hello.to_bytes().unwrap()).await.unwrap();
        let mut reply = Vec::new();
        within(s.read_to_end(&mut reply)).await.unwrap();
        let mut buf = bytes::BytesMut::from(&reply[..]);
        let first = Frame::decode(&mut buf, 1 << 20).unwrap().unwrap();
        assert!(matches!(first.body, Body::Error(_)), "{first:?}");
    }

    let mut config = ClientConfig::with_endpoint(
        Endpoint::tcp(addr),
        "alice:phone".to_owned(),
        DeviceId::new("phone").unwrap(),
    );
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(20),
        multiplier: 2.0,
        max_attempts: None,
    };
    let client = Client::start(config).unwrap();
    let mut events = client.events();
    let mut attempts = 0;
    within(async {
        loop {
            match events.recv().await {
                Ok(ConnectionEvent::Connecting { attempt, .. }) => attempts = attempt,
                Ok(ConnectionEvent::Connected { .. }) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("client closed"),
            }
        }
    })
    .await;
    // The SDK's own backoff would have tried every 20 ms for seconds; it
    // tried again only after the broker's wait.
    assert!(attempts <= 2, "{attempts} attempts");
    client.close().await;
    broker.shutdown().await;
}
