//! Offline push: registration, jobs only for members with no device
//! online, coalescing, webhook retries with backoff, dead letters.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use confab_broker::config::Config;
use confab_broker::push::{read_dead_letters, Notifier, NotifyFuture, PreviewPolicy, PushJob};
use confab_broker::Broker;
use confab_codec::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn push_config(dir: &std::path::Path) -> Config {
    let mut c = test_config(dir);
    c.push.enabled = true;
    c.push.coalesce_ms = 100;
    c.push.backoff_initial_ms = 20;
    c.push.backoff_max_ms = 100;
    c.push.timeout_ms = 5_000;
    c
}

/// An open group `room` created by alice and joined by `others`.
async fn group(alice: &mut Conn, others: &mut [&mut Conn], r: &RoomId) {
    let create = CreateRoom {
        kind: RoomKind::Group,
        room: Some(r.clone()),
        peer: None,
        policy: JoinPolicy::Open,
        meta: RoomMeta {
            name: "crew".into(),
            topic: String::new(),
            avatar_url: String::new(),
        },
        invite: Vec::new(),
    };
    assert!(matches!(request(alice, create).await, Body::RoomInfo(_)));
    for c in others {
        let joined = request(c, JoinRoom { room: r.clone() }).await;
        assert!(matches!(joined, Body::RoomInfo(_)), "{joined:?}");
    }
}

async fn register(c: &mut Conn, provider: &str, token: &str) -> Body {
    request(
        c,
        RegisterPush {
            provider: provider.into(),
            token: token.into(),
        },
    )
    .await
}

/// A notifier that hands every job to the test.
struct Collect(mpsc::UnboundedSender<PushJob>);

impl Notifier for Collect {
    fn notify(&self, job: &PushJob) -> NotifyFuture<'_> {
        let _ = self.0.send(job.clone());
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_offline_members_get_a_coalesced_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = push_config(dir.path());
    config.push.preview = PreviewPolicy::Content;
    let (tx, mut jobs) = mpsc::unbounded_channel();
    let broker = Broker::builder(config)
        .notifier(Arc::new(Collect(tx)))
        .start()
        .await
        .unwrap();
    let addr = broker.tcp_addr();
    let r = room("crew");
    let mut alice = Conn::open(addr, "alice", "a1").await;
    let mut bob = Conn::open(addr, "bob", "b1").await;
    let mut carol = Conn::open(addr, "carol", "c1").await;
    group(&mut alice, &mut [&mut bob, &mut carol], &r).await;
    assert!(matches!(
        register(&mut bob, "fcm", "bob-token").await,
        Body::Ack(_)
    ));
    assert!(matches!(
        register(&mut carol, "apns", "carol-token").await,
        Body::Ack(_)
    ));
    // Refused registrations.
    match register(&mut carol, "not a provider", "t").await {
        Body::Error(e) => assert_eq!(e.code, ErrorCode::InvalidRequest),
        other => panic!("{other:?}"),
    }
    carol
        .send(Goodbye {
            code: ErrorCode::Normal,
            message: String::new(),
        })
        .await;
    carol.until_closed().await;

    // Bob is online, carol is not: three messages, jobs for carol only.
    let mut last = Seq(0);
    for i in 1..=3u64 {
        last = alice
            .publish(&r, i, format!("hello {i}").as_bytes())
            .await
            .seq;
    }
    let mut count = 0;
    while count < 3 {
        let job = tokio::time::timeout(WAIT, jobs.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job.user.as_str(), "carol", "{job:?}");
        assert_eq!(job.room, r);
        assert_eq!(job.sender.as_ref().map(|s| s.as_str()), Some("alice"));
        assert_eq!(job.targets.len(), 1);
        assert_eq!(job.targets[0].token, "carol-token");
        count += job.count;
        if count == 3 {
            assert_eq!(job.seq, last);
            assert_eq!(job.content.as_deref(), Some(&b"hello 3"[..]));
        }
    }
    assert_eq!(count, 3);

    // Bob goes offline too: the next message makes a job for each, and
    // bob's only job is that one message.
    bob.send(Goodbye {
        code: ErrorCode::Normal,
        message: String::new(),
    })
    .await;
    bob.until_closed().await;
    last = alice.publish(&r, 10, b"are you there").await.seq;
    let mut bob_jobs = Vec::new();
    let mut carol_seen = false;
    while bob_jobs.is_empty() || !carol_seen {
        let job = tokio::time::timeout(WAIT, jobs.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job.seq, last, "{job:?}");
        match job.user.as_str() {
            "bob" => bob_jobs.push(job),
            "carol" => carol_seen = true,
            other => panic!("a job for {other}"),
        }
    }
    assert_eq!(bob_jobs.len(), 1);
    assert_eq!(bob_jobs[0].count, 1);
    assert_eq!(bob_jobs[0].targets[0].token, "bob-token");
    broker.shutdown().await;
}

/// A webhook on 127.0.0.1 that answers 503 to the first `fail_first`
/// requests and 200 after, reporting each JSON body.
async fn webhook(fail_first: u32) -> (SocketAddr, mpsc::UnboundedReceiver<serde_json::Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tx, seen) = (tx.clone(), seen.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (tx, seen) = (tx.clone(), seen.clone());
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let _ = tx.send(serde_json::from_slice(&body).unwrap());
                            let n = seen.fetch_add(1, Ordering::SeqCst);
                            let status = if n < fail_first {
                                StatusCode::SERVICE_UNAVAILABLE
                            } else {
                                StatusCode::OK
                            };
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                            *resp.status_mut() = status;
                            Ok::<_, Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// Alice and bob in a room; bob registers and goes offline; alice sends
/// one message.
async fn one_job_for_bob(config: Config) -> confab_broker::BrokerHandle {
    let broker = start(config).await;
    let addr = broker.tcp_addr();
    let r = room("pair");
    let mut alice = Conn::open(addr, "alice", "a1").await;
    let mut bob = Conn::open(addr, "bob", "b1").await;
    group(&mut alice, &mut [&mut bob], &r).await;
    assert!(matches!(
        register(&mut bob, "fcm", "bob-token").await,
        Body::Ack(_)
    ));
    bob.send(Goodbye {
        code: ErrorCode::Normal,
        message: String::new(),
    })
    .await;
    bob.until_closed().await;
    // The broker ended bob's session before closing it: he is offline.
    alice.publish(&r, 1, b"ping").await;
    broker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_is_retried_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, mut bodies) = webhook(2).await;
    let mut config = push_config(dir.path());
    config.push.webhook_url = format!("http://{hook}/push");
    config.push.max_attempts = 5;
    config.push.preview = PreviewPolicy::None;
    let broker = one_job_for_bob(config).await;
    let mut attempts = Vec::new();
    while attempts.last() != Some(&3) {
        let body = tokio::time::timeout(WAIT, bodies.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body["user"], "bob");
        assert_eq!(body["room"], "pair");
        assert_eq!(body["sender"], serde_json::Value::Null);
        assert_eq!(body["targets"][0]["token"], "bob-token");
        attempts.push(body["attempt"].as_u64().unwrap());
    }
    assert_eq!(attempts, [1, 2, 3]);
    broker.shutdown().await;
    assert!(
        !dir.path().join("push-dead-letter.jsonl").exists(),
        "a delivered job is no dead letter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_always_fails_becomes_a_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, mut bodies) = webhook(u32::MAX).await;
    let mut config = push_config(dir.path());
    config.push.webhook_url = format!("http://{hook}/push");
    config.push.max_attempts = 3;
    let broker = one_job_for_bob(config).await;
    for attempt in 1..=3u64 {
        let body = tokio::time::timeout(WAIT, bodies.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body["attempt"], attempt);
        assert_eq!(body["sender"], "alice");
    }
    let path = dir.path().join("push-dead-letter.jsonl");
    let deadline = tokio::time::Instant::now() + WAIT;
    let letters = loop {
        let letters = read_dead_letters(&path).unwrap_or_default();
        if !letters.is_empty() {
            break letters;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!((l.user.as_str(), l.room.as_str()), ("bob", "pair"));
    assert_eq!(l.attempts, 3);
    assert!(l.error.contains("503"), "{}", l.error);
    assert_eq!(l.targets[0].token, "bob-token");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_push_is_unsupported_when_push_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let mut c = Conn::open(broker.tcp_addr(), "alice", "a1").await;
    match register(&mut c, "fcm", "t").await {
        Body::Error(e) => assert_eq!(e.code, ErrorCode::Unsupported),
        other => panic!("{other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_without_a_webhook_or_notifier_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.push.enabled = true;
    for url in ["", "https://push.internal/x", "ftp://x"] {
        config.push.webhook_url = url.into();
        match Broker::builder(config.clone()).start().await {
            Err(confab_broker::BrokerError::Push(msg)) => {
                assert!(msg.contains("webhook_url"), "{msg}")
            }
            other => panic!("{url:?}: {other:?}"),
        }
    }
}
