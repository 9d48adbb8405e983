//! Exact gaps through the SDK, against the real broker on 127.0.0.1:
//! entries retention removed while a device was offline come as one range
//! on the next event (`RoomEvent::gaps`), exactly once, across
//! reconnections and application restarts, with a broker of protocol
//! version 2 (its `Gap` frame) and of version 1 (derived from `first`);
//! a user removed from a room gets `ClientError::AccessLost`.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use confab_broker::config::Config;
use confab_broker::{Broker, BrokerHandle};
use confab_client::confab_codec::{
    Body, DeviceId, Direction, ErrorCode, Frame, GapReason, JoinPolicy, MessageKind, RoomId, Seq,
    DEFAULT_MAX_FRAME_LEN,
};
use confab_client::{
    BackoffConfig, Client, ClientConfig, ClientError, ConnectionEvent, Endpoint, FileCursorStore,
    Gap, RoomEvent, Subscription,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

fn broker_config(dir: &Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.listen.tcp = "127.0.0.1:0".parse().unwrap();
    config.listen.tls = None;
    config.listen.quic = None;
    config
}

fn client(addr: SocketAddr, user: &str, device: &str) -> ClientConfig {
    let mut c = ClientConfig::with_endpoint(
        Endpoint::tcp(addr),
        format!("{user}:{device}"),
        DeviceId::new(device).unwrap(),
    );
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        multiplier: 2.0,
        max_attempts: None,
    };
    c.request_timeout = Duration::from_secs(10);
    c
}

async fn take(sub: &mut Subscription, n: usize) -> Vec<RoomEvent> {
    let mut events = Vec::new();
    while events.len() < n {
        events.push(within(sub.next()).await.unwrap().unwrap());
    }
    events
}

fn seqs(events: &[RoomEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq.0).collect()
}

/// A TCP proxy to the broker that can cut every connection, and can make
/// the broker speak protocol version 1: it rewrites the client's `Hello`
/// to offer only version 1 (the SDK offers 1..=2).
struct Proxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr, version_1: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let tasks = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut down_rd, mut down_wr) = down.into_split();
                    let (mut up_rd, mut up_wr) = up.into_split();
                    let to_broker = async move {
                        if version_1 && downgrade_hello(&mut down_rd, &mut up_wr).await.is_none() {
                            return;
                        }
                        let _ = tokio::io::copy(&mut down_rd, &mut up_wr).await;
                    };
                    let to_client = async move {
                        let _ = tokio::io::copy(&mut up_rd, &mut down_wr).await;
                    };
                    tokio::join!(to_broker, to_client);
                });
                tasks.lock().unwrap().push(task);
            }
        });
        Proxy {
            addr,
            conns,
            accept,
        }
    }

    /// Cuts every open connection (the client sees the link drop).
    fn cut_all(&self) {
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

/// Forwards the client's first frame, a `Hello`, offering version 1 only.
async fn downgrade_hello(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
) -> Option<()> {
    let mut buf = BytesMut::new();
    let mut frame = loop {
        if let Some(f) = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN).ok()? {
            break f;
        }
        if rd.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
    };
    if let Body::Hello(h) = &mut frame.body {
        h.max_version = 1;
    }
    wr.write_all(&frame.to_bytes().ok()?).await.ok()?;
    wr.write_all(&buf).await.ok()
}

/// The `HistoryTruncated` notifications received so far.
fn truncations(events: &mut broadcast::Receiver<ConnectionEvent>) -> Vec<(RoomId, Seq, Seq)> {
    let mut seen = Vec::new();
    loop {
        match events.try_recv() {
            Ok(ConnectionEvent::HistoryTruncated { room, from, to }) => seen.push((room, from, to)),
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return seen,
        }
    }
}

/// Retention trims while a device is offline: one gap with the exact
/// range on the first event after it, then the rest once, in order; not
/// reported again after a reconnection or an application restart.
async fn retention_while_offline(version_1: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker_config(dir.path());
    config.retention.max_count = 3;
    config.retention.sweep_interval_ms = 20;
    let broker: BrokerHandle = Broker::builder(config).start().await.unwrap();
    let proxy = Proxy::start(broker.tcp_addr(), version_1).await;
    let app = tempfile::tempdir().unwrap();
    let cursors = app.path().join("bob");
    let room = RoomId::new("news").unwrap();

    let alice = Client::connect(client(broker.tcp_addr(), "alice", "phone"))
        .await
        .unwrap();
    let open_bob = || async {
        let store = FileCursorStore::open(&cursors).await.unwrap();
        Client::connect(client(proxy.addr, "bob", "phone").cursor_store(store))
            .await
            .unwrap()
    };
    let bob = open_bob().await;
    let mut sub = bob.subscribe(&room).await.unwrap();
    alice.publish(&room, "n1").await.unwrap();
    let first = take(&mut sub, 1).await;
    assert_eq!(seqs(&first), [1]);
    assert!(first[0].gaps.is_empty());
    drop(sub);
    bob.close().await;

    // Offline, 2..=10 are published and retention keeps 8..=10.
    for i in 2..=10 {
        alice.publish(&room, format!("n{i}")).await.unwrap();
    }
    within(async {
        loop {
            let page = alice
                .history_page(&room, Direction::Before, Seq(0), 1)
                .await
                .unwrap();
            if page.first == Seq(8) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let bob = open_bob().await;
    let mut notes = bob.events();
    let mut sub = bob.subscribe(&room).await.unwrap();
    let got = take(&mut sub, 3).await;
    assert_eq!(seqs(&got), [8, 9, 10]);
    assert_eq!(
        got[0].gaps,
        [Gap {
            room: room.clone(),
            from: Seq(2),
            to: Seq(7),
            reason: GapReason::Trimmed,
        }]
    );
    assert!(got[1].gaps.is_empty() && got[2].gaps.is_empty());

    // The link drops; the room resumes after 10 and the gap is not
    // reported again.
    proxy.cut_all();
    let mut truncated = within(async {
        let mut truncated = Vec::new();
        loop {
            match notes.recv().await {
                Ok(ConnectionEvent::Reconnected { .. }) => return truncated,
                Ok(ConnectionEvent::HistoryTruncated { room, from, to }) => {
                    truncated.push((room, from, to))
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("client closed"),
            }
        }
    })
    .await;
    alice.publish(&room, "n11").await.unwrap();
    let got = take(&mut sub, 1).await;
    assert_eq!(seqs(&got), [11]);
    assert!(got[0].gaps.is_empty());
    // The notification came once too.
    truncated.extend(truncations(&mut notes));
    assert_eq!(truncated, [(room.clone(), Seq(2), Seq(7))]);
    drop(sub);
    bob.close().await;

    // The application restarts from its cursor: nothing reported either.
    alice.publish(&room, "n12").await.unwrap();
    let bob = open_bob().await;
    let mut notes = bob.events();
    let mut sub = bob.subscribe(&room).await.unwrap();
    let got = take(&mut sub, 1).await;
    assert_eq!(seqs(&got), [12]);
    assert!(got[0].gaps.is_empty());
    assert!(truncations(&mut notes).is_empty());

    bob.close().await;
    alice.close().await;
    drop(proxy);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_while_offline_is_one_exact_gap_with_a_version_2_broker() {
    retention_while_offline(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_while_offline_is_one_exact_gap_with_a_version_1_broker() {
    retention_while_offline(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_from_a_room_ends_the_subscription_with_access_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker_config(dir.path());
    config.rooms.auto_create = false;
    let broker = Broker::builder(config).start().await.unwrap();
    let addr = broker.tcp_addr();
    let alice = Client::connect(client(addr, "alice", "phone"))
        .await
        .unwrap();
    let bob = Client::connect(client(addr, "bob", "phone")).await.unwrap();
    let info = alice
        .create_group(
            Some(RoomId::new("team").unwrap()),
            "team",
            JoinPolicy::Open,
            Vec::new(),
        )
        .await
        .unwrap();
    let room = info.room;
    bob.join(&room).await.unwrap();
    let mut sub = bob.subscribe_from(&room, Seq(1)).await.unwrap();
    let hello = alice.publish(&room, "hello").await.unwrap().seq;
    let got = take(&mut sub, hello.0 as usize).await;
    assert_eq!(&got.last().unwrap().payload[..], b"hello");

    alice.remove_member(&room, "bob").await.unwrap();
    // The removal entry is delivered, then the subscription ends: nothing
    // was missing, so the range is empty.
    let removed = take(&mut sub, 1).await;
    assert_eq!(removed[0].kind, MessageKind::MEMBER_REMOVED);
    let removed = removed[0].seq;
    match within(sub.next()).await {
        Some(Err(ClientError::AccessLost { room: r, from, to })) => {
            assert_eq!(r, room);
            assert_eq!((from, to), (removed.next(), removed));
        }
        other => panic!("expected AccessLost, got {other:?}"),
    }
    assert!(within(sub.next()).await.is_none());

    // Later entries do not reach Bob; a new subscription is refused.
    alice.publish(&room, "after").await.unwrap();
    match bob.subscribe(&room).await {
        Err(ClientError::Server { code, .. }) => {
            assert_eq!(code, ErrorCode::NotMember)
        }
        Ok(_) => panic!("subscribed after removal"),
        Err(e) => panic!("unexpected {e}"),
    }

    bob.close().await;
    alice.close().await;
    broker.shutdown().await;
}
