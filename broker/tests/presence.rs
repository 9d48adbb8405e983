//! Presence: aggregated over devices, pushed (coalesced) to watchers who
//! share a room, hidden from everyone else, last seen persisted.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use confab_codec::*;

fn group(room: &str, policy: JoinPolicy, invite: Vec<UserId>) -> CreateRoom {
    CreateRoom {
        kind: RoomKind::Group,
        room: Some(RoomId::new(room).unwrap()),
        peer: None,
        policy,
        meta: RoomMeta {
            name: room.into(),
            topic: String::new(),
            avatar_url: String::new(),
        },
        invite,
    }
}

/// The next pushed presence entries (request id 0), skipping other frames.
async fn next_push(c: &mut Conn) -> Vec<PresenceEntry> {
    loop {
        let f = c.recv().await.expect("connection open");
        if let (Body::PresenceEvent(p), 0) = (f.body, f.request_id) {
            return p.entries;
        }
    }
}

/// Pushed presence entries about `who` until one has `status`.
async fn push_until(c: &mut Conn, who: &str, status: PresenceStatus) -> PresenceEntry {
    loop {
        for e in next_push(c).await {
            if e.user.as_str() == who && e.status == status {
                return e;
            }
        }
    }
}

/// Any presence push within `d` about someone else than `me` (a watcher
/// also hears about its own user).
async fn any_push(c: &mut Conn, me: &str, d: Duration) -> Option<Vec<PresenceEntry>> {
    let end = tokio::time::Instant::now() + d;
    loop {
        let left = end.checked_duration_since(tokio::time::Instant::now())?;
        match c.recv_timeout(left).await {
            Ok(Some(f)) => {
                if let Body::PresenceEvent(p) = f.body {
                    if p.entries.iter().any(|e| e.user.as_str() != me) {
                        return Some(p.entries);
                    }
                }
            }
            _ => return None,
        }
    }
}

async fn get(c: &mut Conn, users: &[&str]) -> Vec<PresenceEntry> {
    let users = users.iter().map(|u| user(u)).collect();
    match request(c, GetPresence { users }).await {
        Body::PresenceEvent(p) => p.entries,
        other => panic!("expected PresenceEvent, got {other:?}"),
    }
}

async fn ack(c: &mut Conn, body: impl Into<Body>) {
    match request(c, body).await {
        Body::Ack(_) => {}
        other => panic!("expected Ack, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_aggregated_pushed_to_roommates_and_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.presence.window_ms = 50;
    let broker = start(config.clone()).await;
    let addr = broker.tcp_addr();

    let mut alice1 = Conn::open(addr, "alice", "a1").await;
    let mut bob = Conn::open(addr, "bob", "b1").await;
    let mut carol = Conn::open(addr, "carol", "c1").await;
    let mut dave = Conn::open(addr, "dave", "d1").await;
    assert!(matches!(
        request(
            &mut alice1,
            group(
                "team",
                JoinPolicy::InviteOnly,
                vec![user("bob"), user("dave")]
            )
        )
        .await,
        Body::RoomInfo(_)
    ));
    assert!(matches!(
        request(&mut bob, JoinRoom { room: room("team") }).await,
        Body::RoomInfo(_)
    ));
    // Carol uses an open unmanaged room with Alice: that shares nothing.
    alice1.publish(&room("lobby"), 1, b"hi").await;
    carol.publish(&room("lobby"), 1, b"hi").await;
    for c in [&mut bob, &mut carol, &mut dave] {
        ack(c, WatchPresence { enabled: true }).await;
    }

    // Bob sees his roommate and himself; not Carol (no shared room) nor
    // Dave (only invited).
    let seen = get(&mut bob, &["alice", "carol", "dave", "bob", "nobody"]).await;
    let who: Vec<_> = seen.iter().map(|e| e.user.as_str()).collect();
    assert_eq!(who, vec!["alice", "bob"]);
    assert!(seen.iter().all(|e| e.status == PresenceStatus::Online));
    // Non-members see nothing of Alice.
    assert!(get(&mut carol, &["alice", "bob"]).await.is_empty());
    assert!(get(&mut dave, &["alice"]).await.is_empty());

    // One device away: away.
    ack(
        &mut alice1,
        SetPresence {
            status: PresenceStatus::Away,
        },
    )
    .await;
    push_until(&mut bob, "alice", PresenceStatus::Away).await;
    // A second device, online: online.
    let mut alice2 = Conn::open(addr, "alice", "a2").await;
    push_until(&mut bob, "alice", PresenceStatus::Online).await;
    // That device appears offline: back to away (the other one is away).
    ack(
        &mut alice2,
        SetPresence {
            status: PresenceStatus::Offline,
        },
    )
    .await;
    push_until(&mut bob, "alice", PresenceStatus::Away).await;
    // Both devices leave: offline, with the time she left.
    drop(alice1);
    drop(alice2);
    let gone = push_until(&mut bob, "alice", PresenceStatus::Offline).await;
    assert!(gone.last_seen_us > 0);

    // Neither the stranger nor the invitee was ever told anything.
    assert_eq!(
        any_push(&mut carol, "carol", Duration::from_millis(300)).await,
        None
    );
    assert_eq!(
        any_push(&mut dave, "dave", Duration::from_millis(100)).await,
        None
    );

    // Watching off: no more pushes to Bob.
    ack(&mut bob, WatchPresence { enabled: false }).await;
    let alice3 = Conn::open(addr, "alice", "a3").await;
    assert_eq!(
        any_push(&mut bob, "bob", Duration::from_millis(300)).await,
        None
    );
    drop(alice3);
    let after = loop {
        let e = get(&mut bob, &["alice"]).await;
        if e[0].status == PresenceStatus::Offline {
            break e[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(after.last_seen_us >= gone.last_seen_us);

    // The last-seen time survives a restart.
    drop((bob, carol, dave));
    broker.shutdown().await;
    let broker = start(config).await;
    let mut bob = Conn::open(broker.tcp_addr(), "bob", "b1").await;
    let e = get(&mut bob, &["alice"]).await;
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].status, PresenceStatus::Offline);
    assert_eq!(e[0].last_seen_us, after.last_seen_us);
    drop(bob);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_within_a_window_are_coalesced_and_membership_is_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // A long window: every status change below lands in one or two.
    config.presence.window_ms = 1_000;
    config.rate_limits.room_ops_burst = 1_000;
    config.rate_limits.user_room_ops_burst = 1_000;
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let mut alice = Conn::open(addr, "alice", "a1").await;
    let mut bob = Conn::open(addr, "bob", "b1").await;
    assert!(matches!(
        request(&mut alice, group("open", JoinPolicy::Open, vec![])).await,
        Body::RoomInfo(_)
    ));
    assert!(matches!(
        request(&mut bob, JoinRoom { room: room("open") }).await,
        Body::RoomInfo(_)
    ));
    ack(&mut bob, WatchPresence { enabled: true }).await;
    // Wait for any push about the connections above to be out of the way.
    while any_push(&mut bob, "bob", Duration::from_millis(1_500))
        .await
        .is_some()
    {}

    for i in 0..40 {
        let status = if i % 2 == 0 {
            PresenceStatus::Online
        } else {
            PresenceStatus::Away
        };
        alice.send(SetPresence { status }).await;
    }
    let mut pushes = 0;
    while let Some(entries) = any_push(&mut bob, "bob", Duration::from_millis(2_500)).await {
        pushes += 1;
        assert!(entries.iter().all(|e| e.user.as_str() == "alice"));
        if entries
            .iter()
            .any(|e| e.status == PresenceStatus::Away && e.user.as_str() == "alice")
        {
            break;
        }
    }
    assert!(
        (1..=3).contains(&pushes),
        "40 changes in about one window gave {pushes} pushes"
    );

    // Bob leaves the only shared room: he sees Alice no more.
    assert!(matches!(
        request(&mut bob, LeaveRoom { room: room("open") }).await,
        Body::Ack(_)
    ));
    assert!(get(&mut bob, &["alice"]).await.is_empty());
    ack(
        &mut alice,
        SetPresence {
            status: PresenceStatus::Online,
        },
    )
    .await;
    assert_eq!(
        any_push(&mut bob, "bob", Duration::from_millis(2_500)).await,
        None
    );

    // Asking about too many users at once is refused.
    let many: Vec<UserId> = (0..1001).map(|i| user(&format!("u{i}"))).collect();
    match request(&mut bob, GetPresence { users: many }).await {
        Body::Error(e) => assert_eq!(e.code, ErrorCode::InvalidRequest),
        other => panic!("expected an Error, got {other:?}"),
    }
    drop((alice, bob));
    broker.shutdown().await;
}
