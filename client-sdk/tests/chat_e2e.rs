//! An end-to-end chat through the SDK against the real broker on
//! 127.0.0.1: two users, three devices, a group and a direct room; typing,
//! receipts, edits and reactions folded into a message view, an offline
//! device that comes back and gets everything it missed, a push job for
//! the offline user (and none for the user still online), and retention
//! reported as `HistoryTruncated`.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use confab_broker::config::Config;
use confab_broker::push::{Notifier, NotifyFuture, PushJob};
use confab_broker::{Broker, BrokerHandle};
use confab_client::confab_codec::{DeviceId, Direction, JoinPolicy, ReceiptKind, RoomId, Seq};
use confab_client::{
    BackoffConfig, Client, ClientConfig, ConnectionEvent, Endpoint, FileCursorStore, Message,
    RoomEvent, RoomView, Signal, Subscription,
};
use tokio::sync::{broadcast, mpsc};

const WAIT: Duration = Duration::from_secs(30);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

/// A notifier that hands every job to the test.
struct Collect(mpsc::UnboundedSender<PushJob>);

impl Notifier for Collect {
    fn notify(&self, job: &PushJob) -> NotifyFuture<'_> {
        let _ = self.0.send(job.clone());
        Box::pin(async { Ok(()) })
    }
}

fn broker_config(dir: &Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.listen.tcp = "127.0.0.1:0".parse().unwrap();
    config.listen.tls = None;
    config.listen.quic = None;
    config.rooms.auto_create = false;
    config.push.enabled = true;
    config.push.coalesce_ms = 100;
    config
}

fn client(broker: &BrokerHandle, user: &str, device: &str) -> ClientConfig {
    let mut c = ClientConfig::with_endpoint(
        Endpoint::tcp(broker.tcp_addr()),
        format!("{user}:{device}"),
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

async fn signal(rx: &mut broadcast::Receiver<Signal>, mut pred: impl FnMut(&Signal) -> bool) {
    within(async {
        loop {
            match rx.recv().await {
                Ok(s) if pred(&s) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("client closed"),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_three_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut jobs) = mpsc::unbounded_channel();
    let broker = Broker::builder(broker_config(dir.path()))
        .notifier(Arc::new(Collect(tx)))
        .start()
        .await
        .unwrap();
    let app = tempfile::tempdir().unwrap();
    let bob_cursors = app.path().join("bob-phone");

    let phone = Client::connect(client(&broker, "alice", "phone"))
        .await
        .unwrap();
    let laptop = Client::connect(client(&broker, "alice", "laptop"))
        .await
        .unwrap();
    let store = FileCursorStore::open(&bob_cursors).await.unwrap();
    let bob = Client::connect(client(&broker, "bob", "phone").cursor_store(store))
        .await
        .unwrap();

    // A group and a direct room.
    let team = RoomId::new("team").unwrap();
    phone
        .create_group(Some(team.clone()), "Team", JoinPolicy::Open, Vec::new())
        .await
        .unwrap();
    bob.join(&team).await.unwrap();
    let dm = phone.create_direct("bob").await.unwrap().room;
    assert_eq!(bob.create_direct("alice").await.unwrap().room, dm);

    let mut phone_team = phone.subscribe(&team).await.unwrap();
    let mut laptop_team = laptop.subscribe(&team).await.unwrap();
    let mut bob_team = bob.subscribe(&team).await.unwrap();
    let mut bob_dm = bob.subscribe(&dm).await.unwrap();
    bob.register_push("fcm", "bob-phone-token").await.unwrap();
    // A first direct message, so that bob's phone has a cursor there.
    phone.publish(&dm, "dm 0").await.unwrap();
    assert_eq!(&take(&mut bob_dm, 1).await[0].payload[..], b"dm 0");
    laptop
        .register_push("apns", "alice-laptop-token")
        .await
        .unwrap();

    // Typing reaches the other user.
    let mut bob_signals = bob.signals();
    phone.typing(&team, true).await.unwrap();
    signal(&mut bob_signals, |s| {
        matches!(s, Signal::Typing { room, users } if *room == team && users.iter().any(|u| u.as_str() == "alice"))
    })
    .await;

    // A message, an edit and a reaction reach every device; the view folds
    // them; bob's read receipt reaches alice.
    let hello = phone.publish(&team, "helo team").await.unwrap().seq;
    phone
        .publish_message(Message::edit(team.clone(), hello, "hello team"))
        .await
        .unwrap();
    bob.publish_message(Message::reaction(team.clone(), hello, "👍"))
        .await
        .unwrap();
    // Bob may not edit alice's message.
    assert!(bob
        .publish_message(Message::edit(team.clone(), hello, "hacked"))
        .await
        .is_err());
    let mut views = Vec::new();
    for sub in [&mut phone_team, &mut laptop_team, &mut bob_team] {
        // Subscribed live after bob joined: the three entries.
        let events = take(sub, 3).await;
        let mut view = RoomView::new();
        view.extend(&events);
        views.push(view);
    }
    for view in &views {
        let msg = view.get(hello).unwrap();
        assert_eq!(&msg.content[..], b"hello team");
        assert_eq!(msg.reaction_counts().get("👍".as_bytes()), Some(&1));
    }
    let mut phone_signals = phone.signals();
    let last = Seq(hello.0 + 2);
    bob.mark_read(&team, last).await.unwrap();
    signal(&mut phone_signals, |s| {
        matches!(s, Signal::Receipts { room, entries } if *room == team
            && entries.iter().any(|e| e.user.as_str() == "bob" && e.kind == ReceiptKind::Read && e.seq == last))
    })
    .await;

    // Bob goes offline; alice writes in both rooms from her phone while
    // her laptop stays online.
    drop((bob_team, bob_dm));
    bob.close().await;
    // The broker has ended bob's session (it counts connections after).
    within(async {
        while broker.stats().connections > 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for i in 1..=3 {
        phone.publish(&team, format!("team {i}")).await.unwrap();
        phone.publish(&dm, format!("dm {i}")).await.unwrap();
    }
    // Bob gets push jobs (coalesced per room: 3 messages each); alice, who
    // is online, gets none.
    let (mut team_count, mut dm_count) = (0, 0);
    while team_count < 3 || dm_count < 3 {
        let job = within(jobs.recv()).await.unwrap();
        assert_eq!(job.user.as_str(), "bob", "{job:?}");
        assert_eq!(job.targets[0].token, "bob-phone-token");
        if job.room == team {
            team_count += job.count;
        } else {
            assert_eq!(job.room, dm);
            dm_count += job.count;
        }
    }
    assert_eq!((team_count, dm_count), (3, 3));

    // Bob's phone comes back: it resumes both rooms from its cursors and
    // gets exactly what it missed.
    let store = FileCursorStore::open(&bob_cursors).await.unwrap();
    let bob = Client::connect(client(&broker, "bob", "phone").cursor_store(store))
        .await
        .unwrap();
    let mut bob_team = bob.subscribe(&team).await.unwrap();
    let mut bob_dm = bob.subscribe(&dm).await.unwrap();
    let missed = take(&mut bob_team, 3).await;
    assert_eq!(seqs(&missed), [last.0 + 1, last.0 + 2, last.0 + 3]);
    assert!(missed.iter().all(|e| e.replayed));
    let missed_dm = take(&mut bob_dm, 3).await;
    let texts: Vec<&[u8]> = missed_dm.iter().map(|e| &e.payload[..]).collect();
    assert_eq!(texts, [&b"dm 1"[..], b"dm 2", b"dm 3"]);
    // Alice's laptop saw everything live, in order.
    let live = take(&mut laptop_team, 3).await;
    assert_eq!(seqs(&live), seqs(&missed));

    phone.close().await;
    laptop.close().await;
    bob.close().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_behind_retention_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker_config(dir.path());
    config.rooms.auto_create = true;
    config.push.enabled = false;
    config.retention.max_count = 3;
    config.retention.sweep_interval_ms = 20;
    let broker = Broker::builder(config).start().await.unwrap();
    let app = tempfile::tempdir().unwrap();
    let cursors = app.path().join("bob");
    let alice = Client::connect(client(&broker, "alice", "phone"))
        .await
        .unwrap();
    let store = FileCursorStore::open(&cursors).await.unwrap();
    let bob = Client::connect(client(&broker, "bob", "phone").cursor_store(store))
        .await
        .unwrap();
    let mut sub = bob.subscribe("news").await.unwrap();
    alice.publish("news", "n1").await.unwrap();
    assert_eq!(seqs(&take(&mut sub, 1).await), [1]);
    drop(sub);
    bob.close().await;

    for i in 2..=10 {
        alice.publish("news", format!("n{i}")).await.unwrap();
    }
    // Wait (bounded) until retention kept only 8..=10.
    let room = RoomId::new("news").unwrap();
    within(async {
        loop {
            let page = alice
                .history_page(&room, Direction::Before, Seq(0), 10)
                .await
                .unwrap();
            if page.first == Seq(8) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let store = FileCursorStore::open(&cursors).await.unwrap();
    let bob = Client::connect(client(&broker, "bob", "phone").cursor_store(store))
        .await
        .unwrap();
    let mut events = bob.events();
    let mut sub = bob.subscribe("news").await.unwrap();
    assert_eq!(seqs(&take(&mut sub, 3).await), [8, 9, 10]);
    let truncated = within(async {
        loop {
            match events.recv().await {
                Ok(ConnectionEvent::HistoryTruncated { room, from, to }) => {
                    return (room, from, to)
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("client closed"),
            }
        }
    })
    .await;
    assert_eq!(truncated, (room, Seq(2), Seq(7)));
    alice.close().await;
    bob.close().await;
    broker.shutdown().await;
}
