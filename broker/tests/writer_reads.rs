//! The sequencer's writer thread never reads storage: rooms used for the
//! first time, retries, edit targets, receipt markers and room counts are
//! read by reader threads, and a slow read holds up only the requests of
//! its own room.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use confab_broker::storage::{FaultyLog, MemoryLog, ReadSeen, RocksLog, RoomLog};
use confab_broker::{Broker, BrokerHandle};
use confab_codec::*;

/// Reads made on the writer thread, by method.
#[derive(Default)]
struct WriterReads {
    count: AtomicUsize,
    methods: Mutex<Vec<&'static str>>,
}

fn on_writer_thread() -> bool {
    std::thread::current().name() == Some("confab-sequencer")
}

fn group(r: &RoomId, invite: Vec<UserId>) -> CreateRoom {
    CreateRoom {
        kind: RoomKind::Group,
        room: Some(r.clone()),
        peer: None,
        policy: JoinPolicy::Open,
        meta: RoomMeta {
            name: r.to_string(),
            topic: String::new(),
            avatar_url: String::new(),
        },
        invite,
    }
}

async fn react(c: &mut Conn, r: &RoomId, target: Seq) -> Body {
    request(
        c,
        Publish {
            room: r.clone(),
            client_msg_id: 0,
            kind: MessageKind::REACTION,
            refers_to: Some(target),
            thread: None,
            payload: Bytes::from_static(b"+1"),
        },
    )
    .await
}

async fn start_with(config: confab_broker::config::Config, log: &Arc<FaultyLog>) -> BrokerHandle {
    Broker::builder(config)
        .storage(log.clone() as Arc<dyn RoomLog>)
        .start()
        .await
        .unwrap()
}

/// Opens RocksDB, waiting while the previous broker's threads let go of it.
async fn open_rocks(dir: &std::path::Path) -> RocksLog {
    for _ in 0..200 {
        match RocksLog::open(dir, 1 << 20) {
            Ok(log) => return log,
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    panic!("RocksDB at {} stays locked", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_thread_never_reads_storage() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(WriterReads::default());
    let watch = {
        let seen = seen.clone();
        Arc::new(move |read: ReadSeen<'_>| {
            if on_writer_thread() {
                seen.count.fetch_add(1, Ordering::SeqCst);
                seen.methods.lock().unwrap().push(read.method);
            }
        })
    };
    let mut config = test_config(dir.path());
    // A small window, so that a retry is answered by the index.
    config.storage.max_batch = 16;
    config.storage.dedup_window = 16;
    config.rooms.max_rooms_per_user = 50;
    let data = dir.path().join("data");

    for run in 0..2 {
        let log = Arc::new(FaultyLog::new(Arc::new(open_rocks(&data).await)));
        log.set_read_hook(Some(watch.clone()));
        let broker = start_with(config.clone(), &log).await;
        let addr = broker.tcp_addr();
        let mut alice = Conn::open(addr, "alice", "phone").await;
        let mut bob = Conn::open(addr, "bob", "laptop").await;
        let open = room("open-room");
        let managed = room(&format!("managed-{run}"));

        // Rooms used for the first time (unmanaged and managed), a room
        // count, a join.
        let first = alice.publish(&open, 1_000 * (run + 1), b"hello").await.seq;
        assert!(matches!(
            request(&mut alice, group(&managed, vec![user("bob")])).await,
            Body::RoomInfo(_)
        ));
        assert!(matches!(
            request(
                &mut bob,
                JoinRoom {
                    room: managed.clone()
                }
            )
            .await,
            Body::RoomInfo(_)
        ));
        // Subscriptions to rooms not in memory (after the restart: all).
        let ack = bob
            .subscribe(vec![
                (open.clone(), StartAt::Live),
                (managed.clone(), StartAt::Live),
                (room("never-used"), StartAt::Live),
            ])
            .await;
        assert_eq!(ack.results.len(), 3);

        // Enough publishes to push the first out of the window, then a
        // retry of it (a mark read and an index read).
        for i in 0..40u64 {
            alice
                .publish(&open, 1_000 * (run + 1) + 1 + i, b"more")
                .await;
        }
        let retry = alice.publish(&open, 1_000 * (run + 1), b"hello").await;
        assert!(retry.duplicate);
        assert_eq!(retry.seq, first);

        // An edit target and a receipt marker.
        let m = bob.publish(&managed, 7, b"in the room").await.seq;
        assert!(matches!(
            react(&mut alice, &managed, m).await,
            Body::PublishAck(_)
        ));
        bob.send(Receipt {
            room: managed.clone(),
            kind: ReceiptKind::Read,
            seq: m,
        })
        .await;
        // A request behind the receipt, so that the receipt was handled.
        bob.publish(&managed, 8, b"after the receipt").await;

        tokio::time::timeout(WAIT, broker.shutdown()).await.unwrap();
    }

    let methods = seen.methods.lock().unwrap().clone();
    assert_eq!(
        seen.count.load(Ordering::SeqCst),
        0,
        "the writer thread read storage: {methods:?}"
    );
}

/// Holds up reads of one room until released.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    held: AtomicUsize,
}

impl Gate {
    fn wait(&self) {
        self.held.fetch_add(1, Ordering::SeqCst);
        let open = self.open.lock().unwrap();
        // Bounded: a test that forgets to open the gate fails, not hangs.
        let _ = self
            .opened
            .wait_timeout_while(open, Duration::from_secs(60), |open| !*open)
            .unwrap();
    }

    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_read_holds_up_only_its_room() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(FaultyLog::new(Arc::new(MemoryLog::new())));
    let gate = Arc::new(Gate::default());
    let cold = room("cold");
    {
        let (gate, cold) = (gate.clone(), cold.clone());
        log.set_read_hook(Some(Arc::new(move |read: ReadSeen<'_>| {
            if read.room == Some(&cold) && !on_writer_thread() && read.method == "bounds" {
                gate.wait();
            }
        })));
    }
    let broker = start_with(test_config(dir.path()), &log).await;
    let addr = broker.tcp_addr();
    let mut a = Conn::open(addr, "alice", "phone").await;
    let mut b = Conn::open(addr, "bob", "phone").await;
    let hot = room("hot");

    // Two publishes to the cold room: the first waits for its room's read.
    let first = a.request_id();
    a.send_frame(Conn::publish_frame(first, &cold, 1, b"one"))
        .await;
    let second = a.request_id();
    a.send_frame(Conn::publish_frame(second, &cold, 2, b"two"))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while gate.held.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cold read never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Meanwhile another room is served: its publishes are committed and
    // acknowledged while the cold room's read is still held.
    for i in 1..=50u64 {
        assert_eq!(b.publish(&hot, i, b"hot").await.seq, Seq(i));
    }
    assert!(
        a.recv_timeout(Duration::from_millis(100)).await.is_err(),
        "nothing of the cold room is answered before its read"
    );

    // Released: the cold room's publishes are stored in the order sent.
    gate.release();
    let one = a.wait_reply(first, |_| true).await;
    let two = a.wait_reply(second, |_| true).await;
    match (one.body, two.body) {
        (Body::PublishAck(one), Body::PublishAck(two)) => {
            assert_eq!((one.seq, two.seq), (Seq(1), Seq(2)));
        }
        other => panic!("{other:?}"),
    }
    tokio::time::timeout(WAIT, broker.shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_refuses_its_requests_and_the_next_ones_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(FaultyLog::new(Arc::new(MemoryLog::new())));
    let broker = start_with(test_config(dir.path()), &log).await;
    let addr = broker.tcp_addr();
    let mut a = Conn::open(addr, "alice", "phone").await;
    let r = room("flaky");

    log.set_read_fault(true);
    let rid = a.request_id();
    a.send_frame(Conn::publish_frame(rid, &r, 1, b"lost")).await;
    let reply = a.wait_reply(rid, |_| true).await;
    assert_eq!(code(&reply.body), ErrorCode::Internal, "{reply:?}");
    log.set_read_fault(false);

    // The same id again: it was never stored, so it is stored now, once.
    let ack = a.publish(&r, 1, b"kept").await;
    assert_eq!((ack.seq, ack.duplicate), (Seq(1), false));
    let again = a.publish(&r, 1, b"kept").await;
    assert_eq!((again.seq, again.duplicate), (Seq(1), true));
    assert!(broker.failure().is_none());
    tokio::time::timeout(WAIT, broker.shutdown()).await.unwrap();
}
