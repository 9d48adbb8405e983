//! The SDK against a fault-injecting mock broker (tests/mock_broker):
//! gaps in the live stream, cut and black-holed connections, lost publish
//! acknowledgements, refused connections, a slow application reader, and
//! application restarts with a file cursor store. Every test runs over
//! TCP, TLS and QUIC.

#![allow(clippy::unwrap_used)]

mod mock_broker;

use std::future::Future;
use std::time::Duration;

use confab_client::confab_codec::{DeviceId, Direction, ErrorCode, RoomId, Seq};
use confab_client::{
    BackoffConfig, Client, ClientConfig, ClientError, ConnectionEvent, DisconnectReason,
    FileCursorStore, Message, RoomEvent, Subscription,
};
use mock_broker::{Mock, Transport};
use tokio::sync::broadcast;

/// Runs `async fn name(t: Transport)` as `name::tcp`, `name::tls` and
/// `name::quic`.
macro_rules! over_transports {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn tcp() {
                super::$name(super::Transport::Tcp).await
            }
            #[tokio::test]
            async fn tls() {
                super::$name(super::Transport::Tls).await
            }
            #[tokio::test]
            async fn quic() {
                super::$name(super::Transport::Quic).await
            }
        }
    )+};
}

over_transports!(
    publish_and_subscribe_in_order,
    subscribe_from_gets_backlog_then_live,
    a_gap_in_the_live_stream_is_filled_before_later_events,
    reconnect_resumes_every_room_without_loss_or_duplicates,
    unacknowledged_publishes_are_retried_and_stored_once,
    publishes_refused_for_a_full_disk_are_retried_and_stored_once,
    publishes_answered_internal_after_being_stored_are_acked_once,
    a_dead_link_is_detected_by_heartbeats,
    a_slow_reader_pauses_its_room_and_loses_nothing,
    a_restarted_app_resumes_from_its_file_cursor,
    a_refused_token_is_fatal,
    the_outbound_queue_is_bounded,
    history_reads_ranges,
    one_subscription_per_room,
    unsupported_requests_are_server_errors,
    read_requests_are_resent_after_a_lost_connection,
    receipts_wait_offline_and_are_resent_after_a_lost_connection,
    subscriptions_refused_with_internal_are_retried,
);

fn config(mock: &Mock, user: &str, device: &str) -> ClientConfig {
    let (endpoint, trust) = mock.endpoint();
    let mut c = ClientConfig::with_endpoint(
        endpoint,
        format!("{user}:{device}"),
        DeviceId::new(device).unwrap(),
    );
    c.trust = trust;
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        multiplier: 2.0,
        max_attempts: None,
    };
    c.heartbeat_interval = Duration::from_millis(200);
    c.dead_link_timeout = Duration::from_millis(800);
    c.connect_timeout = Duration::from_secs(2);
    c.request_timeout = Duration::from_secs(5);
    c
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .expect("timed out")
}

async fn take(sub: &mut Subscription, n: usize) -> Vec<RoomEvent> {
    let mut events = Vec::new();
    while events.len() < n {
        events.push(
            within(sub.next())
                .await
                .expect("stream ended")
                .expect("stream error"),
        );
    }
    events
}

fn seqs(events: &[RoomEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq.0).collect()
}

async fn wait_event(
    rx: &mut broadcast::Receiver<ConnectionEvent>,
    mut pred: impl FnMut(&ConnectionEvent) -> bool,
) -> ConnectionEvent {
    within(async {
        loop {
            let e = rx.recv().await.unwrap();
            if pred(&e) {
                return e;
            }
        }
    })
    .await
}

async fn publish_and_subscribe_in_order(t: Transport) {
    let mock = Mock::start_over(t).await;
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();
    let bob = Client::connect(config(&mock, "bob", "laptop"))
        .await
        .unwrap();
    let mut sub = bob.subscribe("general").await.unwrap();
    for i in 1..=20u64 {
        let ack = alice.publish("general", format!("m{i}")).await.unwrap();
        assert_eq!(ack.seq, Seq(i));
        assert!(!ack.duplicate);
    }
    let events = take(&mut sub, 20).await;
    assert_eq!(seqs(&events), (1..=20).collect::<Vec<_>>());
    assert_eq!(events[4].payload, "m5");
    assert_eq!(events[4].sender.as_str(), "alice");
    assert!(events.iter().all(|e| !e.replayed));
    alice.close().await;
    bob.close().await;
    assert!(
        within(sub.next()).await.is_none(),
        "closed client ends the stream"
    );
}

async fn subscribe_from_gets_backlog_then_live(t: Transport) {
    let mock = Mock::start_over(t).await;
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();
    for i in 1..=5 {
        alice.publish("r", format!("m{i}")).await.unwrap();
    }
    let mut sub = alice.subscribe_from("r", Seq(3)).await.unwrap();
    let backlog = take(&mut sub, 3).await;
    assert_eq!(seqs(&backlog), vec![3, 4, 5]);
    assert!(backlog.iter().all(|e| e.replayed));
    alice.publish("r", "m6").await.unwrap();
    alice.publish("r", "m7").await.unwrap();
    let live = take(&mut sub, 2).await;
    assert_eq!(seqs(&live), vec![6, 7]);
}

async fn a_gap_in_the_live_stream_is_filled_before_later_events(t: Transport) {
    let mock = Mock::start_over(t).await;
    for seq in [3, 4, 8, 10] {
        mock.skip_live("r", seq);
    }
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();
    let bob = Client::connect(config(&mock, "bob", "laptop"))
        .await
        .unwrap();
    let mut sub = bob.subscribe("r").await.unwrap();
    for i in 1..=12 {
        alice.publish("r", format!("m{i}")).await.unwrap();
    }
    let events = take(&mut sub, 12).await;
    assert_eq!(seqs(&events), (1..=12).collect::<Vec<_>>());
    assert!(events[2].replayed, "seq 3 came from history");
    assert!(!events[1].replayed);
}

async fn reconnect_resumes_every_room_without_loss_or_duplicates(t: Transport) {
    let mock = Mock::start_over(t).await;
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();
    let bob = Client::connect(config(&mock, "bob", "laptop"))
        .await
        .unwrap();
    let mut events_rx = bob.events();
    let mut r1 = bob.subscribe("one").await.unwrap();
    let mut r2 = bob.subscribe("two").await.unwrap();
    for i in 1..=10 {
        alice.publish("one", format!("a{i}")).await.unwrap();
        alice.publish("two", format!("b{i}")).await.unwrap();
    }
    assert_eq!(seqs(&take(&mut r1, 10).await), (1..=10).collect::<Vec<_>>());

    // Cut everything, keep publishing while both clients reconnect.
    mock.kill_all();
    for i in 11..=30 {
        alice.publish_nowait("one", format!("a{i}")).await.unwrap();
        alice.publish_nowait("two", format!("b{i}")).await.unwrap();
    }
    within(alice.flush()).await.unwrap();
    let e = wait_event(&mut events_rx, |e| {
        matches!(e, ConnectionEvent::Reconnected { .. })
    })
    .await;
    if let ConnectionEvent::Reconnected { resumed, .. } = e {
        assert_eq!(resumed.len(), 2);
    }
    assert_eq!(
        seqs(&take(&mut r1, 20).await),
        (11..=30).collect::<Vec<_>>()
    );
    assert_eq!(seqs(&take(&mut r2, 30).await), (1..=30).collect::<Vec<_>>());
    assert_eq!(mock.stored("one").len(), 30);
    assert_eq!(mock.stored("two").len(), 30);
    // Nothing more is pending: no duplicate shows up later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r1.buffered(), 0);
    assert_eq!(r2.buffered(), 0);
}

async fn unacknowledged_publishes_are_retried_and_stored_once(t: Transport) {
    let mock = Mock::start_over(t).await;
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();
    mock.lose_acks(3);
    let mut pending = Vec::new();
    for i in 1..=8 {
        pending.push(
            alice
                .enqueue(Message::new("r".parse().unwrap(), format!("m{i}")))
                .await
                .unwrap(),
        );
    }
    let mut acks = Vec::new();
    for p in pending {
        acks.push(within(p).await.unwrap());
    }
    let stored = mock.stored("r");
    assert_eq!(stored.len(), 8, "each publish stored exactly once");
    let mut seqs: Vec<u64> = acks.iter().map(|a| a.seq.0).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    assert!(
        acks.iter().any(|a| a.duplicate),
        "a retry of a stored publish was acknowledged as duplicate"
    );
    assert!(mock.received() > 8, "publishes were retried");
    // Acks and stored entries agree on the client message ids.
    for a in &acks {
        assert_eq!(
            stored[(a.seq.0 - 1) as usize].client_msg_id,
            a.client_msg_id
        );
    }
}

/// A broker whose disk is full refuses publishes with `StorageFull`
/// (nothing stored): the SDK sends each again, with the same client message
/// id and back-off, until it is stored; the application sees only the
/// acknowledgements, in order, each message stored once.
async fn publishes_refused_for_a_full_disk_are_retried_and_stored_once(t: Transport) {
    let mock = Mock::start_over(t).await;
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();
    // The first publish is refused alone, then the rest of the queue in a
    // burst, then once more after the pause.
    mock.storage_full(12);
    let mut pending = Vec::new();
    for i in 1..=8 {
        pending.push(
            alice
                .enqueue(Message::new("r".parse().unwrap(), format!("m{i}")))
                .await
                .unwrap(),
        );
    }
    let mut acks = Vec::new();
    for p in pending {
        acks.push(within(p).await.unwrap());
    }
    let stored = mock.stored("r");
    let payloads: Vec<String> = stored
        .iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect();
    let expected: Vec<String> = (1..=8).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, expected, "each stored once, in order");
    assert!(
        mock.received() >= 8 + 12,
        "the refused ones were sent again"
    );
    for (i, a) in acks.iter().enumerate() {
        assert_eq!(a.seq.0, i as u64 + 1);
        assert!(
            !a.duplicate,
            "nothing was stored before it was acknowledged"
        );
        assert_eq!(stored[i].client_msg_id, a.client_msg_id, "the same id");
    }
}

/// A publish answered with `Internal` may have been stored (in a cluster:
/// the owner stored it, the forward's reply was lost): the SDK sends it
/// again with the same id until it is acknowledged, and the application
/// gets one acknowledgement per message, with the sequence it was stored
/// under; nothing is stored twice.
async fn publishes_answered_internal_after_being_stored_are_acked_once(t: Transport) {
    let mock = Mock::start_over(t).await;
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();
    mock.stored_then_internal(3);
    let mut pending = Vec::new();
    for i in 1..=6 {
        pending.push(
            alice
                .enqueue(Message::new("r".parse().unwrap(), format!("m{i}")))
                .await
                .unwrap(),
        );
    }
    let mut acks = Vec::new();
    for p in pending {
        acks.push(within(p).await.unwrap());
    }
    let stored = mock.stored("r");
    let payloads: Vec<String> = stored
        .iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect();
    let expected: Vec<String> = (1..=6).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, expected, "each stored once, in order");
    assert!(mock.received() >= 6 + 3, "the refused ones were sent again");
    for (i, a) in acks.iter().enumerate() {
        assert_eq!(
            a.seq.0,
            i as u64 + 1,
            "acknowledged with its stored sequence"
        );
        assert_eq!(stored[i].client_msg_id, a.client_msg_id, "the same id");
    }
    assert!(
        acks.iter().any(|a| a.duplicate),
        "a retry of a stored publish is answered with its original"
    );
}

async fn a_dead_link_is_detected_by_heartbeats(t: Transport) {
    let mock = Mock::start_over(t).await;
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();
    let bob = Client::connect(config(&mock, "bob", "laptop"))
        .await
        .unwrap();
    let mut sub = bob.subscribe("r").await.unwrap();
    let mut events_rx = bob.events();
    mock.set_blackhole(true);
    let e = wait_event(&mut events_rx, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. })
    })
    .await;
    assert!(matches!(
        e,
        ConnectionEvent::Disconnected {
            reason: DisconnectReason::HeartbeatTimeout
        }
    ));
    mock.set_blackhole(false);
    wait_event(&mut events_rx, |e| {
        matches!(e, ConnectionEvent::Reconnected { .. })
    })
    .await;
    within(alice.wait_connected()).await.unwrap();
    within(alice.publish("r", "after")).await.unwrap();
    let got = take(&mut sub, 1).await;
    assert_eq!(got[0].payload, "after");
}

async fn a_slow_reader_pauses_its_room_and_loses_nothing(t: Transport) {
    let mock = Mock::start_over(t).await;
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();
    let mut slow = config(&mock, "bob", "laptop");
    slow.event_buffer_capacity = 4;
    let bob = Client::connect(slow).await.unwrap();
    let mut events_rx = bob.events();
    let mut sub = bob.subscribe("r").await.unwrap();
    let mut other = bob.subscribe("other").await.unwrap();
    for i in 1..=40 {
        alice.publish("r", format!("m{i}")).await.unwrap();
    }
    wait_event(&mut events_rx, |e| {
        matches!(e, ConnectionEvent::Paused { .. })
    })
    .await;
    // Other rooms keep flowing while "r" is paused.
    alice.publish("other", "x").await.unwrap();
    assert_eq!(take(&mut other, 1).await[0].payload, "x");
    let events = take(&mut sub, 40).await;
    assert_eq!(seqs(&events), (1..=40).collect::<Vec<_>>());
    for i in 41..=45 {
        alice.publish("r", format!("m{i}")).await.unwrap();
    }
    assert_eq!(
        seqs(&take(&mut sub, 5).await),
        (41..=45).collect::<Vec<_>>()
    );
}

async fn a_restarted_app_resumes_from_its_file_cursor(t: Transport) {
    let mock = Mock::start_over(t).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cursors");
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();

    let store = FileCursorStore::open(&path).await.unwrap();
    let bob = Client::connect(config(&mock, "bob", "laptop").cursor_store(store))
        .await
        .unwrap();
    let mut sub = bob.subscribe("r").await.unwrap();
    for i in 1..=5 {
        alice.publish("r", format!("m{i}")).await.unwrap();
    }
    assert_eq!(seqs(&take(&mut sub, 5).await), vec![1, 2, 3, 4, 5]);
    drop(sub);
    bob.close().await;

    // Offline for a while: others keep talking.
    for i in 6..=9 {
        alice.publish("r", format!("m{i}")).await.unwrap();
    }
    let store = FileCursorStore::open(&path).await.unwrap();
    let bob = Client::connect(config(&mock, "bob", "laptop").cursor_store(store))
        .await
        .unwrap();
    let mut sub = bob.subscribe("r").await.unwrap();
    let missed = take(&mut sub, 4).await;
    assert_eq!(seqs(&missed), vec![6, 7, 8, 9]);
    assert!(missed.iter().all(|e| e.replayed));
    alice.publish("r", "m10").await.unwrap();
    assert_eq!(seqs(&take(&mut sub, 1).await), vec![10]);
}

async fn a_refused_token_is_fatal(t: Transport) {
    let mock = Mock::start_over(t).await;
    let mut c = config(&mock, "x", "phone");
    c.token = "bad".into();
    let err = Client::connect(c.clone()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err}");

    let client = Client::start(c).unwrap();
    let mut events_rx = client.events();
    let e = wait_event(&mut events_rx, |e| {
        matches!(e, ConnectionEvent::Closed { .. })
    })
    .await;
    assert!(matches!(
        e,
        ConnectionEvent::Closed {
            error: Some(ClientError::Fatal { .. })
        }
    ));
    // Every later call says why the client stopped.
    let err = client.publish("r", "x").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err}");
    let err = within(client.wait_connected()).await.unwrap_err();
    assert!(matches!(err, ClientError::Fatal { .. }), "{err}");
    assert_eq!(mock.sessions(), 2, "no reconnection loop");
}

async fn the_outbound_queue_is_bounded(t: Transport) {
    let mock = Mock::start_over(t).await;
    mock.set_refuse(true);
    let mut c = config(&mock, "alice", "phone");
    c.outbound_queue_capacity = 2;
    let alice = Client::start(c).unwrap();
    let room: RoomId = "r".parse().unwrap();
    let p1 = alice.try_publish(Message::new(room.clone(), "1")).unwrap();
    let p2 = alice.try_publish(Message::new(room.clone(), "2")).unwrap();
    assert!(matches!(
        alice.try_publish(Message::new(room.clone(), "3")),
        Err(ClientError::QueueFull)
    ));
    // A waiting publish gets through once the broker is back.
    let third = alice.publish(room.clone(), "3");
    mock.set_refuse(false);
    let ack3 = within(third).await.unwrap();
    let (a1, a2) = (within(p1).await.unwrap(), within(p2).await.unwrap());
    assert_eq!((a1.seq, a2.seq, ack3.seq), (Seq(1), Seq(2), Seq(3)));
}

async fn history_reads_ranges(t: Transport) {
    let mock = Mock::start_over(t).await;
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();
    for i in 1..=30 {
        alice.publish("r", format!("m{i}")).await.unwrap();
    }
    let events = alice.history("r", 5..=25).await.unwrap();
    assert_eq!(seqs(&events), (5..=25).collect::<Vec<_>>());
    let tail = alice.history("r", 28..).await.unwrap();
    assert_eq!(seqs(&tail), vec![28, 29, 30]);
    let page = alice
        .history_page("r", Direction::Before, Seq(0), 3)
        .await
        .unwrap();
    let got: Vec<u64> = page.events.iter().map(|e| e.seq.0).collect();
    assert_eq!(got, vec![28, 29, 30]);
    assert!(page.has_more);
}

async fn one_subscription_per_room(t: Transport) {
    let mock = Mock::start_over(t).await;
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();
    let first = alice.subscribe("r").await.unwrap();
    assert!(matches!(
        alice.subscribe("r").await,
        Err(ClientError::AlreadySubscribed(_))
    ));
    drop(first);
    let mut second = alice.subscribe("r").await.unwrap();
    alice.publish("r", "x").await.unwrap();
    assert_eq!(take(&mut second, 1).await[0].payload, "x");
    second.unsubscribe().await.unwrap();
}

async fn unsupported_requests_are_server_errors(t: Transport) {
    let mock = Mock::start_over(t).await;
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();
    let err = alice.join("r").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unsupported));
    alice.typing("r", true).await.unwrap();
    alice.mark_read("r", Seq(1)).await.unwrap();
}

async fn read_requests_are_resent_after_a_lost_connection(t: Transport) {
    let mock = Mock::start_over(t).await;
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();
    for i in 1..=3 {
        alice.publish("r", format!("m{i}")).await.unwrap();
    }
    let mut events = alice.events();
    // The connection is cut while the history request is in flight: it only
    // reads, so it is sent again on the next connection.
    mock.cut_on_requests(1);
    let got = within(alice.history("r", 1..=3)).await.unwrap();
    assert_eq!(seqs(&got), vec![1, 2, 3]);
    wait_event(&mut events, |e| {
        matches!(e, ConnectionEvent::Reconnected { .. })
    })
    .await;
    // A request that changes something may have been carried out: it fails
    // with a typed error instead of being sent twice.
    mock.cut_on_requests(1);
    let err = within(alice.join("r")).await.unwrap_err();
    assert!(matches!(err, ClientError::ConnectionLost), "{err}");
    // And the client goes on.
    let got = within(alice.history("r", 2..)).await.unwrap();
    assert_eq!(seqs(&got), vec![2, 3]);
}

async fn receipts_wait_offline_and_are_resent_after_a_lost_connection(t: Transport) {
    let mock = Mock::start_over(t).await;
    mock.set_refuse(true);
    let alice = Client::start(config(&mock, "alice", "phone")).unwrap();
    // Offline, a receipt is accepted at once and kept (the furthest per
    // room and marker) for the connection.
    within(alice.mark_read("r", Seq(3))).await.unwrap();
    within(alice.mark_read("r", Seq(5))).await.unwrap();
    within(alice.mark_read("r", Seq(4))).await.unwrap();
    within(alice.mark_delivered("r", Seq(5))).await.unwrap();
    // The first receipt to arrive is lost with its connection; the SDK has
    // no proof the broker read it, so it sends it again.
    mock.lose_receipts(1);
    mock.set_refuse(false);
    within(async {
        loop {
            let got = mock.receipts();
            if got.len() >= 2 {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut got: Vec<(String, u64)> = mock
        .receipts()
        .iter()
        .map(|r| (format!("{}/{:?}", r.room, r.kind), r.seq.0))
        .collect();
    got.sort();
    got.dedup();
    assert_eq!(
        got,
        vec![("r/Delivered".to_owned(), 5), ("r/Read".to_owned(), 5)]
    );
}

/// A resumption after a reconnect, and a first subscribe, refused with
/// `Internal` (a storage read that failed at the broker) are retried from
/// the room's position: the stream neither ends nor loses anything.
async fn subscriptions_refused_with_internal_are_retried(t: Transport) {
    let mock = Mock::start_over(t).await;
    let alice = Client::connect(config(&mock, "alice", "phone"))
        .await
        .unwrap();
    let bob = Client::connect(config(&mock, "bob", "laptop"))
        .await
        .unwrap();
    let mut r1 = bob.subscribe_from("one", Seq(1)).await.unwrap();
    for i in 1..=5 {
        alice.publish("one", format!("a{i}")).await.unwrap();
    }
    assert_eq!(seqs(&take(&mut r1, 5).await), (1..=5).collect::<Vec<_>>());

    // A first subscribe refused twice: `subscribe` succeeds, the room
    // comes once the broker accepts it.
    mock.refuse_subscribes(2);
    let mut r2 = within(bob.subscribe_from("two", Seq(1))).await.unwrap();
    alice.publish("two", "b1").await.unwrap();
    assert_eq!(seqs(&take(&mut r2, 1).await), vec![1]);
    assert_eq!(mock.subscribes_refused(), 2);

    // Both resumptions refused, three times in all, after a cut.
    mock.refuse_subscribes(3);
    mock.kill_all();
    for i in 6..=15 {
        alice.publish_nowait("one", format!("a{i}")).await.unwrap();
    }
    alice.publish_nowait("two", "b2").await.unwrap();
    within(alice.flush()).await.unwrap();
    assert_eq!(seqs(&take(&mut r1, 10).await), (6..=15).collect::<Vec<_>>());
    assert_eq!(seqs(&take(&mut r2, 1).await), vec![2]);
    assert_eq!(mock.subscribes_refused(), 5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r1.buffered(), 0, "nothing twice");
    assert_eq!(r2.buffered(), 0, "nothing twice");
}
