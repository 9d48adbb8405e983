//! The embedding API: server-side publishes, in-process subscriptions, room
//! management as the system principal, and the authorization hook, with
//! socket clients (the SDK and the raw test client) on the same broker.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use confab_broker::config::Config;
use confab_broker::{
    AccessRequest, Action, Authorizer, Broker, BrokerHandle, Denied, RoomChange, SystemMessage,
};
use confab_client::{Client, ClientConfig};
use confab_codec::*;

fn config(dir: &std::path::Path) -> Config {
    let mut c = test_config(dir);
    c.listen.tls = None;
    c.listen.quic = None;
    c
}

async fn sdk(broker: &BrokerHandle, user: &str) -> Client {
    let url = format!("confab://{}", broker.tcp_addr());
    let config = ClientConfig::new(&url, format!("{user}:dev"), "dev").unwrap();
    tokio::time::timeout(WAIT, Client::connect(config))
        .await
        .expect("connects in time")
        .expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_and_sdk_subscribers_see_the_same_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(config(dir.path())).await;
    let r = room("lobby");
    let mut local = broker
        .subscribe(r.clone(), StartAt::From(Seq(1)))
        .await
        .unwrap();
    assert_eq!(local.head_at_start(), Seq(0));

    let alice = sdk(&broker, "alice").await;
    let mut alice_sub = alice.subscribe("lobby").await.unwrap();

    let first = broker
        .publish(SystemMessage::new(r.clone(), "welcome"))
        .await
        .unwrap();
    assert_eq!(first.seq, Seq(1));
    let ack = alice.publish("lobby", "hi all").await.unwrap();
    assert_eq!(ack.seq, Seq(2));
    // A bot, deduplicated on retry like a client.
    let bot = UserId::new("helper-bot").unwrap();
    let msg = SystemMessage::new(r.clone(), "I can help")
        .sender(bot.clone())
        .kind(MessageKind::MESSAGE)
        .client_msg_id(7);
    let third = broker.publish(msg.clone()).await.unwrap();
    let retry = broker.publish(msg).await.unwrap();
    assert_eq!(
        (third.seq, retry.seq, retry.duplicate),
        (Seq(3), Seq(3), true)
    );

    let mut seen_local = Vec::new();
    for _ in 0..3 {
        let ev = tokio::time::timeout(WAIT, local.next())
            .await
            .unwrap()
            .unwrap();
        seen_local.push((ev.seq.0, ev.sender.to_string(), ev.kind, ev.payload));
    }
    let mut seen_sdk = Vec::new();
    for _ in 0..3 {
        let ev = tokio::time::timeout(WAIT, alice_sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen_sdk.push((ev.seq.0, ev.sender.to_string(), ev.kind, ev.payload));
    }
    assert_eq!(seen_local, seen_sdk);
    let senders: Vec<_> = seen_local.iter().map(|e| (e.0, e.1.as_str())).collect();
    assert_eq!(senders, [(1, "system"), (2, "alice"), (3, "helper-bot")]);
    assert_eq!(seen_local[0].2, MessageKind::SYSTEM);

    // Kinds only the broker writes are refused.
    let bad = SystemMessage::new(r.clone(), "x").kind(MessageKind::MEMBER_JOINED);
    assert_eq!(
        broker.publish(bad).await.unwrap_err().code(),
        Some(ErrorCode::InvalidRequest)
    );
    alice.close().await;
    drop(local);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_in_process_subscriber_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.delivery.queue_capacity = 16;
    let broker = start(c).await;
    let r = room("busy");
    let mut local = broker.subscribe(r.clone(), StartAt::Live).await.unwrap();
    // Nobody reads while 300 messages go in: its queue holds 16, the rest
    // stay in the log, and publishers are not held up.
    let mut publisher = Conn::open(broker.tcp_addr(), "alice", "phone").await;
    for i in 1..=300u64 {
        let ack = publisher.publish(&r, i, format!("m{i}").as_bytes()).await;
        assert_eq!(ack.seq, Seq(i));
    }
    assert!(broker.stats().lag_switches >= 1, "{:?}", broker.stats());
    let mut seqs = Vec::new();
    while seqs.len() < 300 {
        let ev = tokio::time::timeout(WAIT, local.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev.payload, format!("m{}", ev.seq.0).as_bytes());
        seqs.push(ev.seq.0);
    }
    assert_contiguous(&seqs, 1, 300);
    // Live again afterwards.
    broker
        .publish(SystemMessage::new(r.clone(), "after"))
        .await
        .unwrap();
    let ev = tokio::time::timeout(WAIT, local.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.seq, Seq(301));
    drop(local);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_manages_rooms_without_being_a_member() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(config(dir.path())).await;
    let r = room("team");
    let info = broker
        .create_room(CreateRoom {
            kind: RoomKind::Group,
            room: Some(r.clone()),
            peer: None,
            policy: JoinPolicy::InviteOnly,
            meta: RoomMeta {
                name: "Team".into(),
                topic: String::new(),
                avatar_url: String::new(),
            },
            invite: vec![],
        })
        .await
        .unwrap();
    assert_eq!((info.room.clone(), info.member_count), (r.clone(), 0));
    broker
        .change_room(
            r.clone(),
            RoomChange::Add(UserId::new("alice").unwrap(), Role::Member),
        )
        .await
        .unwrap();

    let mut alice = Conn::open(broker.tcp_addr(), "alice", "phone").await;
    let mut bob = Conn::open(broker.tcp_addr(), "bob", "phone").await;
    assert_eq!(alice.publish(&r, 1, b"hello").await.seq, Seq(2));
    let rid = bob.request_id();
    bob.send_frame(Conn::publish_frame(rid, &r, 1, b"let me in"))
        .await;
    match bob.wait_reply(rid, |_| true).await.body {
        Body::Error(e) => assert_eq!(e.code, ErrorCode::NotMember),
        other => panic!("expected NotMember, got {other:?}"),
    }
    // The service posts into a room it is not a member of.
    let notice = broker
        .publish(SystemMessage::new(r.clone(), "maintenance at noon"))
        .await
        .unwrap();
    assert_eq!(notice.seq, Seq(3));
    broker
        .change_room(r.clone(), RoomChange::Remove(UserId::new("alice").unwrap()))
        .await
        .unwrap();
    let rid = alice.request_id();
    alice
        .send_frame(Conn::publish_frame(rid, &r, 2, b"still here?"))
        .await;
    match alice.wait_reply(rid, |_| true).await.body {
        Body::Error(e) => assert_eq!(e.code, ErrorCode::NotMember),
        other => panic!("expected NotMember, got {other:?}"),
    }
    // The log tells the story: joined, hello, notice, removed.
    let page = broker_history(&broker, &r).await;
    let kinds: Vec<_> = page.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            MessageKind::MEMBER_JOINED,
            MessageKind::MESSAGE,
            MessageKind::SYSTEM,
            MessageKind::MEMBER_REMOVED
        ]
    );
    // Clients cannot create a direct room through the service's principal,
    // and the service does not join.
    assert!(broker
        .change_room(
            room("nowhere"),
            RoomChange::Invite(UserId::new("x").unwrap())
        )
        .await
        .is_err());
    broker.shutdown().await;
}

/// The room's whole log, read in-process from the start.
async fn broker_history(broker: &BrokerHandle, r: &RoomId) -> Vec<EventRecord> {
    let mut local = broker
        .subscribe(r.clone(), StartAt::From(Seq(1)))
        .await
        .unwrap();
    let head = local.head_at_start().0;
    let mut out = Vec::new();
    while (out.len() as u64) < head {
        out.push(
            tokio::time::timeout(WAIT, local.next())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    out
}

/// Lets users into rooms whose name starts with their own, and records
/// what it was asked.
struct PrefixRule {
    asked: std::sync::Mutex<Vec<(String, Action)>>,
}

impl Authorizer for PrefixRule {
    fn authorize(&self, request: AccessRequest) -> confab_broker::embed::authz::AccessFuture {
        self.asked
            .lock()
            .unwrap()
            .push((request.user.to_string(), request.action));
        Box::pin(async move {
            // An asynchronous lookup, as a service's user database would be.
            tokio::task::yield_now().await;
            if request.room.as_str().starts_with(request.user.as_str()) {
                Ok(())
            } else {
                Err(Denied::forbidden(format!(
                    "{} may not use {}",
                    request.user, request.room
                )))
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_hook_decides_instead_of_membership() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    // Without the hook, unmanaged rooms would be refused outright.
    c.rooms.auto_create = false;
    let rule = Arc::new(PrefixRule {
        asked: Default::default(),
    });
    let broker = Broker::builder(c)
        .authorizer(rule.clone())
        .start()
        .await
        .unwrap();
    let mine = room("alice-notes");
    let theirs = room("bob-notes");
    let mut alice = Conn::open(broker.tcp_addr(), "alice", "phone").await;

    let ack = alice
        .subscribe(vec![
            (mine.clone(), StartAt::Live),
            (theirs.clone(), StartAt::Live),
        ])
        .await;
    let codes: Vec<_> = ack.results.iter().map(|r| r.code).collect();
    assert_eq!(codes, [ErrorCode::Normal, ErrorCode::Forbidden]);

    assert_eq!(alice.publish(&mine, 1, b"allowed").await.seq, Seq(1));
    let rid = alice.request_id();
    alice
        .send_frame(Conn::publish_frame(rid, &theirs, 2, b"denied"))
        .await;
    match alice.wait_reply(rid, |_| true).await.body {
        Body::Error(e) => {
            assert_eq!(e.code, ErrorCode::Forbidden);
            assert!(e.message.contains("may not use"), "{}", e.message);
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    let page = alice.history(&mine, Direction::Before, 0, 10).await;
    assert_eq!(page.events.len(), 1);
    let rid = alice
        .send(HistoryRequest {
            room: theirs.clone(),
            direction: Direction::Before,
            anchor: Seq(0),
            limit: 10,
        })
        .await;
    match alice.wait_reply(rid, |_| true).await.body {
        Body::Error(e) => assert_eq!(e.code, ErrorCode::Forbidden),
        other => panic!("expected Forbidden, got {other:?}"),
    }
    // The live event of the allowed room arrived; nothing of the other.
    let (events, _) = alice.events(1).await;
    assert_eq!(events[0].0, mine);
    let asked = rule.asked.lock().unwrap().clone();
    for action in [Action::Subscribe, Action::Publish, Action::History] {
        assert!(
            asked.iter().any(|(u, a)| u == "alice" && *a == action),
            "{asked:?}"
        );
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_subscription_ends_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(config(dir.path())).await;
    let r = room("closing");
    broker
        .publish(SystemMessage::new(r.clone(), "one"))
        .await
        .unwrap();
    let mut live = broker.subscribe(r.clone(), StartAt::Live).await.unwrap();
    assert_eq!(live.head_at_start(), Seq(1));
    let reader = tokio::spawn(async move { live.next().await });
    broker.shutdown().await;
    let ended = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    assert_eq!(ended, None, "no event after the head, then the end");
}
