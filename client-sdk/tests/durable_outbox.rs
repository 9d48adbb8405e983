//! The durable outbox (issue 19): publishes accepted by the SDK survive
//! the application process being killed (`SIGKILL`), and are sent once
//! after it restarts, against the real broker on 127.0.0.1.
//!
//! The application is this test binary run again as a child process
//! (`app_process`, which does nothing unless `OUTBOX_APP_MODE` is set):
//! it publishes through a `FileOutboxStore` and prints `OUTBOX queued N`
//! after each publishing call returns; the parent kills it with `SIGKILL`,
//! starts it again on the same store, and reads the room back.
//!
//! No timing is asserted; every wait is bounded.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use confab_broker::config::Config;
use confab_broker::{Broker, BrokerError, BrokerHandle};
use confab_client::confab_codec::RoomId;
use confab_client::{Client, ClientConfig, FileOutboxStore, Message};

const ROOM: &str = "outbox-room";
const WAIT: Duration = Duration::from_secs(60);

/// The application, when run as a child by the tests below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_process() {
    let Ok(mode) = std::env::var("OUTBOX_APP_MODE") else {
        return; // A normal test run: nothing to do.
    };
    let url = std::env::var("OUTBOX_APP_URL").unwrap();
    let store = std::env::var("OUTBOX_APP_STORE").unwrap();
    let store = FileOutboxStore::open(store).await.unwrap();
    let config = ClientConfig::new(&url, "app:phone", "phone")
        .unwrap()
        .outbox_store(store);
    let client = Client::start(config).unwrap();
    let room = RoomId::new(ROOM).unwrap();
    if let Some(n) = mode.strip_prefix("publish:") {
        let n: u64 = n.parse().unwrap();
        for i in 1..=n {
            // Durable once this returns; the acknowledgement is not awaited.
            let _fire_and_forget = client
                .enqueue(Message::new(room.clone(), format!("m{i}")))
                .await
                .unwrap();
            println!("OUTBOX queued {i}");
        }
        println!("OUTBOX all queued");
        // Waits to be killed.
        tokio::time::sleep(WAIT * 10).await;
    } else if mode == "drain" {
        let restored = client.restored_publishes();
        println!("OUTBOX restored {}", restored.len());
        for p in restored {
            let ack = p.await.unwrap();
            println!("OUTBOX acked {} dup {}", ack.seq, ack.duplicate);
        }
        client.flush().await.unwrap();
        client.close().await;
        println!("OUTBOX drained");
    }
}

/// Runs the application as a child process.
fn spawn_app(mode: &str, url: &str, store: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "app_process", "--nocapture", "--test-threads=1"])
        .env("OUTBOX_APP_MODE", mode)
        .env("OUTBOX_APP_URL", url)
        .env("OUTBOX_APP_STORE", store)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Reads the child's `OUTBOX` lines until `until` returns true on one (or
/// the output ends); returns every line read.
fn read_until(child: &mut Child, until: impl Fn(&str) -> bool) -> Vec<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            // The test harness's own `test app_process ... ` may start the line.
            if let Some((_, l)) = line.split_once("OUTBOX ") {
                if tx.send(l.to_owned()).is_err() {
                    break;
                }
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let done = until(&line);
        lines.push(line);
        if done {
            // What is already in the pipe is read too, after a kill.
            child.kill().ok();
            child.wait().ok();
            while let Ok(more) = rx.recv_timeout(Duration::from_secs(2)) {
                lines.push(more);
            }
            return lines;
        }
    }
    panic!("the application never printed what was expected; it printed {lines:?}");
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn start_broker(dir: &Path, addr: SocketAddr) -> BrokerHandle {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.listen.tcp = addr;
    config.listen.tls = None;
    config.listen.quic = None;
    config.rate_limits.enabled = false;
    for _ in 0..100 {
        match Broker::builder(config.clone()).start().await {
            Ok(handle) => return handle,
            Err(BrokerError::Bind { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("broker did not start: {e}"),
        }
    }
    panic!("could not bind {addr}");
}

/// The room's messages from the application: (index, client message id),
/// in sequence order.
async fn room_contents(url: &str) -> Vec<(u64, u64)> {
    let config = ClientConfig::new(url, "reader:r", "r").unwrap();
    let client = Client::connect(config).await.unwrap();
    let events = client.history(ROOM, 1..).await.unwrap();
    client.close().await;
    events
        .into_iter()
        .map(|e| {
            let text = std::str::from_utf8(&e.payload).unwrap();
            (text[1..].parse().unwrap(), e.client_msg_id)
        })
        .collect()
}

/// Runs the application again on the store until it has sent everything
/// it finds there; returns how many publishes it restored.
fn drain(url: &str, store: &Path) -> usize {
    let mut app = spawn_app("drain", url, store);
    let lines = read_until(&mut app, |l| l == "drained");
    lines
        .iter()
        .find_map(|l| l.strip_prefix("restored ").map(|n| n.parse().unwrap()))
        .unwrap_or_else(|| panic!("the application did not say what it restored: {lines:?}"))
}

/// Every index 1..=n once, in order, each with its own client message id.
fn assert_exactly(contents: &[(u64, u64)], n: u64) {
    let indexes: Vec<u64> = contents.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        indexes,
        (1..=n).collect::<Vec<_>>(),
        "stored once each, in order"
    );
    let ids: HashSet<u64> = contents.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), contents.len(), "no client message id twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_made_offline_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("outbox");
    let addr = free_addr();
    let url = format!("confab://{addr}");

    // The broker is down: everything waits in the outbox.
    let mut app = spawn_app("publish:200", &url, &store);
    let lines = read_until(&mut app, |l| l == "all queued");
    assert!(lines.iter().any(|l| l == "queued 200"), "{lines:?}");

    let broker = start_broker(&dir.path().join("data"), addr).await;
    let restored = drain(&url, &store);
    assert_eq!(restored, 200);
    assert_exactly(&room_contents(&url).await, 200);

    // Nothing is left to send.
    assert_eq!(drain(&url, &store), 0);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_in_the_middle_of_a_stream_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("outbox");
    let addr = free_addr();
    let url = format!("confab://{addr}");
    let broker = start_broker(&dir.path().join("data"), addr).await;

    // Killed while publishing: some acknowledged, some on the wire, some
    // only in the outbox.
    let mut app = spawn_app("publish:3000", &url, &store);
    let lines = read_until(&mut app, |l| l == "queued 1500");
    let queued = lines
        .iter()
        .filter_map(|l| l.strip_prefix("queued ").map(|n| n.parse::<u64>().unwrap()))
        .max()
        .unwrap();
    assert!(queued >= 1500);

    let restored = drain(&url, &store);
    let contents = room_contents(&url).await;
    // Everything whose publishing call returned is stored, and possibly the
    // next one (durable, killed before it returned); each once, in order.
    let n = contents.len() as u64;
    assert!(
        n == queued || n == queued + 1,
        "stored {n}, queued {queued}"
    );
    assert_exactly(&contents, n);
    eprintln!("killed after {queued} queued; {restored} restored from the outbox; {n} stored");
    broker.shutdown().await;
}
