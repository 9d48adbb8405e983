//! Typing indicators: coalesced, ephemeral, expiring, members only.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use confab_codec::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_coalesced_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rooms.typing_window_ms = 100;
    config.rooms.typing_ttl_ms = 600;
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let r = room("chatter");
    let mut alice = Conn::open(addr, "alice", "a").await;
    let mut bob = Conn::open(addr, "bob", "b").await;
    bob.subscribe(vec![(r.clone(), StartAt::Live)]).await;

    // Many starts inside one window become one event.
    for _ in 0..20 {
        alice
            .send(Typing {
                room: r.clone(),
                active: true,
            })
            .await;
    }
    let sets = typing_sets(&mut bob, Duration::from_millis(350)).await;
    assert_eq!(sets, vec![vec!["alice".to_string()]]);

    // A stop is published; then nothing more.
    alice
        .send(Typing {
            room: r.clone(),
            active: false,
        })
        .await;
    let sets = typing_sets(&mut bob, Duration::from_millis(350)).await;
    assert_eq!(sets, vec![Vec::<String>::new()]);

    // A start that is not refreshed expires by itself.
    alice
        .send(Typing {
            room: r.clone(),
            active: true,
        })
        .await;
    let sets = typing_sets(&mut bob, Duration::from_millis(1200)).await;
    assert_eq!(sets, vec![vec!["alice".to_string()], vec![]]);

    // Typing is never stored.
    let rid = alice
        .send(HistoryRequest {
            room: r.clone(),
            direction: Direction::After,
            anchor: Seq(0),
            limit: 10,
        })
        .await;
    match alice.wait_reply(rid, |_| true).await.body {
        Body::HistoryPage(p) => assert!(p.events.is_empty()),
        other => panic!("{other:?}"),
    }

    // In a managed room only members may type.
    let team = room("team");
    let rid = alice
        .send(CreateRoom {
            kind: RoomKind::Group,
            room: Some(team.clone()),
            peer: None,
            policy: JoinPolicy::InviteOnly,
            meta: RoomMeta {
                name: String::new(),
                topic: String::new(),
                avatar_url: String::new(),
            },
            invite: vec![],
        })
        .await;
    alice
        .wait_reply(rid, |f| matches!(f.body, Body::RoomInfo(_)))
        .await;
    let rid = bob
        .send(Typing {
            room: team.clone(),
            active: true,
        })
        .await;
    let f = bob.wait_reply(rid, |_| true).await;
    assert!(matches!(f.body, Body::Error(e) if e.code == ErrorCode::NotMember));
    broker.shutdown().await;
}
