//! Applications started without a network (issue 20), against the real
//! broker on 127.0.0.1.
//!
//! Clients are started with `Client::start` while the broker is down. They
//! report their connection attempts, accept subscriptions, publishes,
//! history requests and receipts offline, and once the broker is up every
//! subscriber receives every message exactly once, in sequence order, and
//! every publish is stored once (no client message id twice in the log).
//! The same again through the fault-injecting proxy (tests/support), which
//! cuts, truncates and stalls the connections while the queued publishes
//! drain.
//!
//! No timing is asserted; every wait is bounded.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use confab_broker::config::Config;
use confab_broker::{Broker, BrokerError, BrokerHandle};
use confab_client::confab_codec::{DeviceId, Direction, PublishAck, RoomId, Seq};
use confab_client::{
    BackoffConfig, Client, ClientConfig, ConnectionEvent, ConnectionState, DisconnectReason,
    Endpoint, Message, PendingPublish, RoomEvent, Subscription, Trust,
};
use support::proxy::{FaultConfig, FaultProxy};
use tokio::sync::broadcast;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Tls,
    Quic,
}

mod apps_started_while_the_broker_is_down_catch_up {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp() {
        super::apps_started_while_the_broker_is_down_catch_up(super::Transport::Tcp).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls() {
        super::apps_started_while_the_broker_is_down_catch_up(super::Transport::Tls).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic() {
        super::apps_started_while_the_broker_is_down_catch_up(super::Transport::Quic).await
    }
}

/// The addresses of a broker's TCP, TLS and QUIC listeners.
#[derive(Debug, Clone, Copy)]
struct Addrs {
    tcp: SocketAddr,
    tls: Option<SocketAddr>,
    quic: Option<SocketAddr>,
}

async fn start_broker(dir: &Path, addrs: Addrs, quic: bool) -> BrokerHandle {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.listen.tcp = addrs.tcp;
    config.listen.tls = addrs.tls;
    config.listen.quic = if quic { addrs.quic } else { None };
    // The queued publishes all arrive at once; rate limits are tested in
    // sdk_chat.rs.
    config.rate_limits.enabled = false;
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

/// A broker run that only picks the ports and makes the certificate the
/// clients pin, then goes down: the clients start while nothing listens.
async fn first_run(dir: &Path, quic: bool) -> (Addrs, BrokerHandle) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let broker = start_broker(
        dir,
        Addrs {
            tcp: any,
            tls: Some(any),
            quic: Some(any),
        },
        quic,
    )
    .await;
    let addrs = Addrs {
        tcp: broker.tcp_addr(),
        tls: broker.tls_addr(),
        quic: broker.quic_addr(),
    };
    (addrs, broker)
}

/// A client of `broker` over `t` (TLS trusts the broker's certificate file,
/// QUIC pins its fingerprint), or of `via` over TCP.
fn config(
    broker: &BrokerHandle,
    t: Transport,
    via: Option<SocketAddr>,
    user: &str,
) -> ClientConfig {
    let endpoint = match (t, via) {
        (_, Some(addr)) => Endpoint::tcp(addr),
        (Transport::Tcp, None) => Endpoint::tcp(broker.tcp_addr()),
        (Transport::Tls, None) => Endpoint::tls(broker.tls_addr().unwrap()),
        (Transport::Quic, None) => Endpoint::quic(broker.quic_addr().unwrap()),
    };
    let mut c = ClientConfig::with_endpoint(
        endpoint,
        format!("{user}:dev"),
        DeviceId::new("dev").unwrap(),
    );
    c.trust = match (t, via) {
        (Transport::Tcp, _) | (_, Some(_)) => None,
        (Transport::Tls, None) => Some(Trust::CaFile(broker.cert_path().unwrap().to_path_buf())),
        (Transport::Quic, None) => Some(Trust::Fingerprint(
            broker.cert_fingerprint().unwrap().parse().unwrap(),
        )),
    };
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(300),
        multiplier: 2.0,
        max_attempts: None,
    };
    // Short enough that proxy stalls are caught as dead links; the connect
    // timeout exceeds the proxy's longest stall.
    c.heartbeat_interval = Duration::from_millis(300);
    c.dead_link_timeout = Duration::from_millis(1000);
    c.connect_timeout = Duration::from_secs(3);
    c.request_timeout = Duration::from_secs(60);
    c
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("timed out")
}

async fn wait_event(
    rx: &mut broadcast::Receiver<ConnectionEvent>,
    mut pred: impl FnMut(&ConnectionEvent) -> bool,
) -> ConnectionEvent {
    within(async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("client closed"),
            }
        }
    })
    .await
}

/// Queues `n` messages to `room` and returns them with their text.
async fn queue(
    client: &Client,
    room: &RoomId,
    tag: &str,
    n: usize,
) -> Vec<(String, PendingPublish)> {
    let mut out = Vec::new();
    for i in 0..n {
        let text = format!("{tag}-{room}-{i}");
        let p = client
            .enqueue(Message::new(room.clone(), text.clone()))
            .await
            .unwrap();
        out.push((text, p));
    }
    out
}

/// What the log holds at each sequence, from the acknowledgements: checks
/// that each publisher's messages were stored in the order it queued them
/// and that every sequence `1..=n` was acknowledged once.
async fn acknowledged(
    queued: Vec<Vec<(String, PendingPublish)>>,
) -> HashMap<u64, (String, PublishAck)> {
    let mut by_seq = HashMap::new();
    for publisher in queued {
        let mut last = 0;
        for (text, pending) in publisher {
            let ack = within(pending).await.unwrap();
            assert!(ack.seq.0 > last, "{text} stored out of its queue order");
            last = ack.seq.0;
            let seq = ack.seq.0;
            assert!(by_seq.insert(seq, (text, ack)).is_none(), "#{seq} twice");
        }
    }
    let n = by_seq.len() as u64;
    assert!((1..=n).all(|s| by_seq.contains_key(&s)), "gap in 1..={n}");
    by_seq
}

/// Reads `expected.len()` events: sequences `1..=n` in order, each with the
/// acknowledged content.
async fn check_delivery(
    who: &str,
    sub: &mut Subscription,
    expected: &HashMap<u64, (String, PublishAck)>,
) {
    for seq in 1..=expected.len() as u64 {
        let e: RoomEvent = within(sub.next())
            .await
            .expect("stream ended")
            .expect("stream error");
        assert_eq!(e.seq.0, seq, "{who}: out of order or duplicated");
        let (text, ack) = &expected[&seq];
        assert_eq!(e.payload, text.as_bytes(), "{who}: #{seq}");
        assert_eq!(e.client_msg_id, ack.client_msg_id, "{who}: #{seq}");
    }
}

/// The room's log, read by a fresh client: exactly the acknowledged
/// messages, each client message id once per sender.
async fn check_storage(
    reader: &Client,
    room: &RoomId,
    expected: &HashMap<u64, (String, PublishAck)>,
) {
    let log = within(reader.history(room, 1..)).await.unwrap();
    assert_eq!(log.len(), expected.len(), "{room}: stored count");
    let mut ids = HashSet::new();
    for e in &log {
        assert!(
            ids.insert((e.sender.clone(), e.client_msg_id)),
            "{room}: {} {} stored twice",
            e.sender,
            e.client_msg_id
        );
        assert_eq!(e.payload, expected[&e.seq.0].0.as_bytes());
    }
}

async fn apps_started_while_the_broker_is_down_catch_up(t: Transport) {
    let data = tempfile::tempdir().unwrap();
    let (addrs, broker) = first_run(data.path(), true).await;
    let alice_config = config(&broker, t, None, "alice");
    let bob_config = config(&broker, t, None, "bob");
    let reader_config = config(&broker, t, None, "reader");
    broker.shutdown().await;

    // Started without a broker: no error, and the attempts are reported.
    let alice = Client::start(alice_config).unwrap();
    let bob = Client::start(bob_config).unwrap();
    let mut events = alice.events();
    wait_event(
        &mut events,
        |e| matches!(e, ConnectionEvent::Connecting { attempt, .. } if *attempt >= 2),
    )
    .await;
    wait_event(&mut events, |e| {
        matches!(
            e,
            ConnectionEvent::Disconnected {
                reason: DisconnectReason::ConnectFailed(_)
            }
        )
    })
    .await;
    assert_eq!(alice.state(), ConnectionState::Connecting);

    // Everything an application does at start, offline.
    let room = RoomId::new("lobby").unwrap();
    let mut alice_sub = within(alice.subscribe_from(&room, Seq(1))).await.unwrap();
    let mut bob_sub = within(bob.subscribe_from(&room, Seq(1))).await.unwrap();
    let from_alice = queue(&alice, &room, "alice", 12).await;
    let from_bob = queue(&bob, &room, "bob", 8).await;
    let history = tokio::spawn({
        let bob = bob.clone();
        let room = room.clone();
        async move { bob.history_page(&room, Direction::Before, Seq(0), 5).await }
    });
    within(alice.mark_read(&room, Seq(1))).await.unwrap();
    assert_eq!(alice.state(), ConnectionState::Connecting, "still offline");

    // The broker comes up, on the same ports and data.
    let broker = start_broker(data.path(), addrs, true).await;
    wait_event(&mut events, |e| {
        matches!(e, ConnectionEvent::Connected { .. })
    })
    .await;
    let expected = acknowledged(vec![from_alice, from_bob]).await;
    assert_eq!(expected.len(), 20);
    check_delivery("alice", &mut alice_sub, &expected).await;
    check_delivery("bob", &mut bob_sub, &expected).await;
    // The history request made offline was answered once connected (with
    // whatever the room held when it reached the broker).
    let page = within(history).await.unwrap().unwrap();
    assert!(page.events.len() <= 5);
    assert!(page.events.windows(2).all(|w| w[0].seq < w[1].seq));

    let reader = within(Client::connect(reader_config)).await.unwrap();
    check_storage(&reader, &room, &expected).await;

    for c in [alice, bob, reader] {
        c.close().await;
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_started_offline_catch_up_through_a_faulty_network() {
    const APPS: usize = 3;
    const ROOMS: usize = 2;
    const PER_ROOM: usize = 40;
    let seed = match std::env::var("CONFAB_FAULT_SEED") {
        Ok(s) => s.trim().parse().expect("CONFAB_FAULT_SEED: a u64"),
        Err(_) => rand::random(),
    };
    println!("offline_start: seed {seed} (replay with CONFAB_FAULT_SEED={seed})");

    let data = tempfile::tempdir().unwrap();
    let (addrs, broker) = first_run(data.path(), false).await;
    let proxy = FaultProxy::start(addrs.tcp, seed, FaultConfig::default())
        .await
        .unwrap();
    let configs: Vec<ClientConfig> = (0..APPS)
        .map(|i| {
            config(
                &broker,
                Transport::Tcp,
                Some(proxy.addr()),
                &format!("app{i}"),
            )
        })
        .collect();
    let reader_config = config(&broker, Transport::Tcp, None, "reader");
    broker.shutdown().await;

    // Every application starts, follows every room from the start and
    // queues its messages while the broker is down (the proxy accepts, then
    // cuts each connection when it cannot reach the broker).
    let rooms: Vec<RoomId> = (0..ROOMS)
        .map(|r| RoomId::new(format!("offline-{r}")).unwrap())
        .collect();
    let mut apps = Vec::new();
    let mut subs = Vec::new();
    let mut queued: Vec<Vec<Vec<(String, PendingPublish)>>> =
        (0..ROOMS).map(|_| Vec::new()).collect();
    for (i, c) in configs.into_iter().enumerate() {
        let app = Client::start(c).unwrap();
        let mut mine = Vec::new();
        for room in &rooms {
            mine.push(within(app.subscribe_from(room, Seq(1))).await.unwrap());
        }
        subs.push(mine);
        for (r, room) in rooms.iter().enumerate() {
            queued[r].push(queue(&app, room, &format!("app{i}"), PER_ROOM).await);
        }
        apps.push(app);
    }
    for app in &apps {
        assert_ne!(app.state(), ConnectionState::Closed);
        assert!(!matches!(app.state(), ConnectionState::Connected { .. }));
    }

    // The broker comes up behind the faulty proxy: the queues drain through
    // cuts, truncations and stalls.
    let broker = start_broker(data.path(), addrs, false).await;
    let mut expected = Vec::new();
    for per_room in queued {
        expected.push(acknowledged(per_room).await);
    }
    let stats = proxy.stats();
    println!("offline_start: proxy {stats:?}");
    // Faults off: the subscribers converge on the logs.
    proxy.set_faults(false);
    for (i, mine) in subs.iter_mut().enumerate() {
        for (r, sub) in mine.iter_mut().enumerate() {
            check_delivery(&format!("app{i}"), sub, &expected[r]).await;
        }
    }
    let reader = within(Client::connect(reader_config)).await.unwrap();
    for (r, room) in rooms.iter().enumerate() {
        assert_eq!(expected[r].len(), APPS * PER_ROOM);
        check_storage(&reader, room, &expected[r]).await;
    }

    reader.close().await;
    for app in apps {
        app.close().await;
    }
    broker.shutdown().await;
}

/// What the network cannot fix fails `Client::start` itself. (A refused
/// token is in fault_injection.rs: `a_refused_token_is_fatal`.)
#[test]
fn start_fails_fast_only_for_a_configuration_that_cannot_work() {
    let c = ClientConfig::new("confab://127.0.0.1:9", "alice:dev", "dev").unwrap();
    // No tokio runtime to run in.
    assert!(matches!(
        Client::start(c.clone()),
        Err(confab_client::ClientError::InvalidConfig(_))
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut bad = c.clone();
        bad.dead_link_timeout = bad.heartbeat_interval;
        let tls = ClientConfig::new("confabs://127.0.0.1:9", "alice:dev", "dev").unwrap();
        let missing_ca = tls
            .clone()
            .trust(Trust::CaFile("/nonexistent/confab-ca.pem".into()));
        for config in [bad, tls, missing_ca] {
            let err = Client::start(config).unwrap_err();
            assert!(
                matches!(err, confab_client::ClientError::InvalidConfig(_)),
                "{err}"
            );
        }
        // Nothing listens there, and that is no error.
        let client = Client::start(c).unwrap();
        client.close().await;
    });
}
