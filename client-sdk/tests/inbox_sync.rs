//! Inbox sync (protocol version 2) through the SDK against the real broker
//! in process on 127.0.0.1, with RocksDB in a temp dir: which rooms changed
//! since a cursor, their counts and last entries, paging, leaving,
//! invitations, epochs, a restart, and a version 1 connection.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use confab_broker::config::Config;
use confab_broker::{Broker, BrokerError, BrokerHandle};
use confab_client::confab_codec::{
    Body, DeviceId, ErrorCode, Frame, Hello, InboxRoom, JoinPolicy, Role, RoomId, Seq, SyncInbox,
    UserId, DEFAULT_MAX_FRAME_LEN,
};
use confab_client::{
    BackoffConfig, Client, ClientConfig, CursorStore, Endpoint, InboxSync, MemoryCursorStore,
    Signal,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Short epochs, so that a test crosses a few.
const EPOCH_MS: u64 = 1000;

fn config(dir: &Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.listen.tcp = "127.0.0.1:0".parse().unwrap();
    config.listen.tls = None;
    config.listen.quic = None;
    config.rooms.inbox_epoch_ms = EPOCH_MS;
    config
}

async fn start(config: Config) -> BrokerHandle {
    for _ in 0..100 {
        match Broker::builder(config.clone()).start().await {
            Ok(handle) => return handle,
            Err(BrokerError::Bind { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("broker did not start: {e}"),
        }
    }
    panic!("could not bind");
}

async fn client(broker: &BrokerHandle, user: &str) -> Client {
    Client::connect(client_config(broker, user)).await.unwrap()
}

fn client_config(broker: &BrokerHandle, user: &str) -> ClientConfig {
    let mut c = ClientConfig::with_endpoint(
        Endpoint::tcp(broker.tcp_addr()),
        format!("{user}:d"),
        DeviceId::new("d").unwrap(),
    );
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        multiplier: 2.0,
        max_attempts: None,
    };
    c.request_timeout = Duration::from_secs(20);
    c
}

fn room(i: usize) -> RoomId {
    RoomId::new(format!("r{i:03}")).unwrap()
}

fn by_room(sync: &InboxSync) -> BTreeMap<String, &InboxRoom> {
    sync.rooms
        .iter()
        .map(|r| (r.room.as_str().to_owned(), r))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_reports_exactly_the_rooms_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(config(dir.path())).await;
    let alice = client(&broker, "alice").await;
    let bob = client(&broker, "bob").await;
    let bob_id = UserId::new("bob").unwrap();
    for i in 0..30 {
        alice
            .create_group(
                Some(room(i)),
                "g",
                JoinPolicy::InviteOnly,
                vec![bob_id.clone()],
            )
            .await
            .unwrap();
        bob.join(room(i)).await.unwrap();
    }

    // The first sync: every room, in id order, nothing unread for Bob but
    // the membership entries (2: Alice joined, Bob invited, Bob joined = 3).
    let all = bob.sync_inbox(0).await.unwrap();
    assert_eq!(all.rooms.len(), 30);
    let ids: Vec<_> = all.rooms.iter().map(|r| r.room.clone()).collect();
    assert_eq!(ids, (0..30).map(room).collect::<Vec<_>>());
    for r in &all.rooms {
        assert_eq!(r.code, ErrorCode::Normal);
        assert_eq!(r.role, Role::Member);
        assert_eq!(r.last.len(), 1, "the last entry of {}", r.room);
        assert_eq!(r.last[0].seq, r.head);
        assert_eq!(r.unread, r.head.0 - r.read.0);
    }
    let c0 = all.cursor;
    assert!(c0 > 0);

    // Nothing changed: nothing reported.
    let none = bob.sync_inbox(c0).await.unwrap();
    assert!(none.rooms.is_empty(), "{:?}", none.rooms);

    // Alice posts in five rooms (1, 2, 3, 4 and 5 messages).
    for (n, i) in [3usize, 7, 11, 19, 29].iter().enumerate() {
        for m in 0..=n {
            alice
                .publish(room(*i), format!("m{m} in {i}"))
                .await
                .unwrap();
        }
    }
    let changed = bob.sync_inbox(c0).await.unwrap();
    let got = by_room(&changed);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec!["r003", "r007", "r011", "r019", "r029"]
    );
    for (n, i) in [3usize, 7, 11, 19, 29].iter().enumerate() {
        let r = got[&format!("r{i:03}")];
        let before = all.rooms[*i].head.0;
        assert_eq!(r.head.0, before + n as u64 + 1);
        assert_eq!(r.unread, r.head.0 - r.read.0);
        assert_eq!(r.first_unread, Seq(r.read.0 + 1));
        assert_eq!(
            r.last[0].payload.as_ref(),
            format!("m{n} in {i}").as_bytes(),
            "the last message of {i}"
        );
        assert!(r.stamp > c0);
    }
    let c1 = changed.cursor;
    assert!(c1 >= c0);

    // Bob reads one room; Alice removes Bob from another.
    let read = got["r007"].head;
    bob.mark_read(room(7), read).await.unwrap();
    alice.remove_member(room(11), bob_id.clone()).await.unwrap();
    // A receipt has no reply: wait (bounded) until the broker has it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while bob
        .list_rooms(None, 100)
        .await
        .unwrap()
        .rooms
        .iter()
        .all(|r| r.room != room(7) || r.read != read)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the read marker arrives"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    alice.publish(room(7), "after the read").await.unwrap();
    let later = bob.sync_inbox(c1).await.unwrap();
    let got = by_room(&later);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec!["r007", "r011"]
    );
    assert_eq!(got["r011"].code, ErrorCode::NotMember);
    assert!(got["r011"].last.is_empty());
    let r7 = got["r007"];
    assert_eq!(r7.code, ErrorCode::Normal);
    assert_eq!(r7.unread, 1, "{r7:?}");
    assert_eq!(r7.first_unread, r7.head);

    // Paging: one room per page, same `since`, `after` = the last room.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = bob.sync_inbox_page(c0, after, 1).await.unwrap();
        assert!(page.rooms.len() <= 1);
        after = page.rooms.last().map(|r| r.room.clone());
        paged.extend(page.rooms.into_iter().map(|r| r.room));
        if !page.has_more {
            break;
        }
    }
    let whole: Vec<_> = bob
        .sync_inbox(c0)
        .await
        .unwrap()
        .rooms
        .into_iter()
        .map(|r| r.room)
        .collect();
    assert_eq!(paged, whole);
    assert_eq!(paged.len(), 5);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_epochs_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(config(dir.path())).await;
    let alice = client(&broker, "alice").await;
    let carol = client(&broker, "carol").await;
    let carol_id = UserId::new("carol").unwrap();
    alice
        .create_group(Some(room(1)), "g", JoinPolicy::InviteOnly, vec![])
        .await
        .unwrap();
    alice.publish(room(1), "secret").await.unwrap();
    let c0 = carol.sync_inbox(0).await.unwrap();
    assert!(c0.rooms.is_empty());

    // An invitation shows, without its content.
    alice.invite(room(1), carol_id.clone()).await.unwrap();
    let invited = carol.sync_inbox(c0.cursor).await.unwrap();
    assert_eq!(invited.rooms.len(), 1);
    assert_eq!(invited.rooms[0].role, Role::Invited);
    assert!(invited.rooms[0].last.is_empty());
    carol.join(room(1)).await.unwrap();

    // Across epochs: a room written in several epochs is reported once,
    // and only rooms changed since the cursor are.
    alice
        .create_group(
            Some(room(2)),
            "g",
            JoinPolicy::InviteOnly,
            vec![carol_id.clone()],
        )
        .await
        .unwrap();
    carol.join(room(2)).await.unwrap();
    let mid = carol.sync_inbox(invited.cursor).await.unwrap();
    assert_eq!(mid.rooms.len(), 2);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(EPOCH_MS + 100)).await;
        alice.publish(room(1), "again").await.unwrap();
    }
    let again = carol.sync_inbox(mid.cursor).await.unwrap();
    let names: Vec<_> = again.rooms.iter().map(|r| r.room.clone()).collect();
    assert_eq!(names, vec![room(1)]);
    let head = again.rooms[0].head;
    carol.close().await;
    alice.close().await;
    broker.shutdown().await;

    // The index is stored: after a restart, the same answers.
    let broker = start(config(dir.path())).await;
    let carol = client(&broker, "carol").await;
    let after = carol.sync_inbox(mid.cursor).await.unwrap();
    assert_eq!(after.rooms.len(), 1);
    assert_eq!(after.rooms[0].head, head);
    assert!(carol
        .sync_inbox(again.cursor)
        .await
        .unwrap()
        .rooms
        .is_empty());
    broker.shutdown().await;
}

/// Sends `frame` and reads one frame back.
async fn exchange(s: &mut tokio::net::TcpStream, buf: &mut BytesMut, frame: Frame) -> Frame {
    let mut out = BytesMut::new();
    frame.encode(&mut out).unwrap();
    s.write_all(&out).await.unwrap();
    read(s, buf).await
}

async fn read(s: &mut tokio::net::TcpStream, buf: &mut BytesMut) -> Frame {
    loop {
        if let Some(f) = Frame::decode(buf, DEFAULT_MAX_FRAME_LEN).unwrap() {
            return f;
        }
        assert!(s.read_buf(buf).await.unwrap() > 0, "closed");
    }
}

fn hello(max_version: u16) -> Frame {
    Frame::request(
        1,
        Hello {
            min_version: 1,
            max_version,
            token: "dave:d".into(),
            device: DeviceId::new("d").unwrap(),
            client_name: "raw".into(),
            resume: Vec::new(),
            features: Default::default(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_connections_do_not_have_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(config(dir.path())).await;
    let sync = || {
        Frame::request(
            2,
            SyncInbox {
                since: 0,
                after: None,
                limit: 10,
            },
        )
    };
    // Version 2 offered: chosen, and the request answered.
    let mut s = tokio::net::TcpStream::connect(broker.tcp_addr())
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    match exchange(&mut s, &mut buf, hello(2)).await.body {
        Body::Welcome(w) => assert_eq!(w.version, 2),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        exchange(&mut s, &mut buf, sync()).await.body,
        Body::InboxPage(_)
    ));
    // Version 1 only: chosen, and the frame is an unknown type there.
    let mut s = tokio::net::TcpStream::connect(broker.tcp_addr())
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    match exchange(&mut s, &mut buf, hello(1)).await.body {
        Body::Welcome(w) => assert_eq!(w.version, 1),
        other => panic!("{other:?}"),
    }
    match exchange(&mut s, &mut buf, sync()).await.body {
        Body::Error(e) => assert_eq!(e.code, ErrorCode::UnknownFrameType),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        read(&mut s, &mut buf).await.body,
        Body::Goodbye(_)
    ));
    broker.shutdown().await;
}

/// Waits (bounded) for the next `Signal::Inbox`.
async fn next_inbox(signals: &mut tokio::sync::broadcast::Receiver<Signal>) -> InboxSync {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Signal::Inbox(sync) = signals.recv().await.unwrap() {
                return sync;
            }
        }
    })
    .await
    .expect("an inbox signal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_syncs_the_inbox_on_each_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(config(dir.path())).await;
    let alice = client(&broker, "alice").await;
    for i in 0..5 {
        alice
            .create_group(Some(room(i)), "g", JoinPolicy::Open, vec![])
            .await
            .unwrap();
    }
    let store = Arc::new(MemoryCursorStore::new());
    let dave_config = || {
        let mut c = client_config(&broker, "dave");
        c.inbox_sync = true;
        c.cursor_store = store.clone();
        c
    };
    // The first run: Dave joins the five rooms and follows room 0.
    let dave = Client::start(dave_config()).unwrap();
    let mut signals = dave.signals();
    let first = next_inbox(&mut signals).await;
    assert!(first.rooms.is_empty(), "not a member of anything yet");
    for i in 0..5 {
        dave.join(room(i)).await.unwrap();
    }
    dave.close().await;
    assert_eq!(store.inbox_cursor(), first.cursor);

    // While Dave is away, Alice writes in rooms 0 and 3.
    alice.publish(room(0), "while you were away").await.unwrap();
    alice.publish(room(3), "in three").await.unwrap();

    // The next run reports the rooms that changed since the first run's
    // cursor: the five he joined (after that cursor), with 0 and 3 holding
    // Alice's messages as their last entries.
    let dave = Client::start(dave_config()).unwrap();
    let mut signals = dave.signals();
    let second = next_inbox(&mut signals).await;
    let names: Vec<_> = second.rooms.iter().map(|r| r.room.clone()).collect();
    assert_eq!(names, (0..5).map(room).collect::<Vec<_>>());
    assert_eq!(
        second.rooms[0].last[0].payload.as_ref(),
        b"while you were away"
    );
    assert_eq!(second.rooms[3].last[0].payload.as_ref(), b"in three");
    assert_eq!(store.inbox_cursor(), second.cursor);
    // Followed rooms still deliver everything from where they start.
    let mut followed = dave.subscribe_from(room(0), Seq(1)).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(20), followed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.seq, Seq(1));
    dave.close().await;

    // One more change: the third run reports just that room.
    alice.publish(room(4), "four").await.unwrap();
    let dave = Client::start(dave_config()).unwrap();
    let mut signals = dave.signals();
    let third = next_inbox(&mut signals).await;
    let names: Vec<_> = third.rooms.iter().map(|r| r.room.clone()).collect();
    assert_eq!(names, vec![room(4)]);
    dave.close().await;
    alice.close().await;
    broker.shutdown().await;
}
