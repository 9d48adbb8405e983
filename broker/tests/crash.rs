//! `kill -9` of the real `confab` binary during a publish load: after a
//! restart every acknowledged message is in the log, sequences are
//! contiguous, and nothing was stored twice.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use confab_codec::*;

/// One publisher: pipelines publishes with cmid-derived payloads and
/// records every ack until the connection dies.
async fn publisher(
    addr: SocketAddr,
    id: usize,
    rooms: Vec<RoomId>,
    connected: tokio::sync::mpsc::Sender<()>,
) -> Vec<(RoomId, u64, u64)> {
    let mut c = Conn::open(addr, &format!("p{id}"), "d").await;
    let _ = connected.send(()).await;
    let mut acked = Vec::new();
    let mut inflight: HashMap<u32, (RoomId, u64)> = HashMap::new();
    let mut cmid = 0u64;
    loop {
        while inflight.len() < 128 {
            cmid += 1;
            let r = rooms[(cmid as usize) % rooms.len()].clone();
            let rid = c.request_id();
            let payload = format!("p{id}-{cmid}");
            let frame = Conn::publish_frame(rid, &r, cmid, payload.as_bytes());
            // A dead socket (the broker was killed) ends the run.
            if c.send_raw(&frame.to_bytes().unwrap()).await.is_err() {
                return acked;
            }
            inflight.insert(rid, (r, cmid));
        }
        match c.recv_timeout(Duration::from_secs(5)).await {
            Ok(Some(f)) => {
                if let Body::PublishAck(a) = f.body {
                    let (r, cmid) = inflight.remove(&f.request_id).unwrap();
                    assert_eq!((a.room.clone(), a.client_msg_id), (r, cmid));
                    acked.push((a.room, a.seq.0, cmid));
                }
            }
            _ => return acked,
        }
    }
}

async fn kill_during_load(durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rooms: Vec<RoomId> = (0..8).map(|i| room(&format!("crash-{i}"))).collect();

    let mut child = spawn_confab(dir.path(), port, durability);
    wait_listening(addr).await;
    let (connected, mut handshakes) = tokio::sync::mpsc::channel(4);
    let tasks: Vec<_> = (0..4)
        .map(|i| tokio::spawn(publisher(addr, i, rooms.clone(), connected.clone())))
        .collect();
    // The load runs for 1.5 s once every publisher is connected (on a busy
    // machine the handshakes alone can take a while).
    for _ in 0..4 {
        tokio::time::timeout(WAIT, handshakes.recv())
            .await
            .expect("every publisher connects")
            .expect("a publisher connected");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(tokio::time::timeout(WAIT, t).await.unwrap().unwrap());
    }
    assert!(
        acked.len() > 100,
        "the load ran before the kill ({} acks)",
        acked.len()
    );

    let mut child = spawn_confab(dir.path(), port, durability);
    wait_listening(addr).await;
    let mut c = Conn::open(addr, "auditor", "d").await;
    let mut stored: HashMap<(RoomId, u64), Vec<u8>> = HashMap::new();
    for r in &rooms {
        let events = read_all(&mut c, r).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.seq.0).collect();
        if let Some(&last) = seqs.last() {
            assert_contiguous(&seqs, 1, last);
        }
        let mut seen = HashSet::new();
        for e in events {
            assert!(
                seen.insert((e.sender.clone(), e.client_msg_id)),
                "a publish was stored twice"
            );
            stored.insert((r.clone(), e.seq.0), e.payload.to_vec());
        }
    }
    for (r, seq, cmid) in &acked {
        let payload = stored
            .get(&(r.clone(), *seq))
            .unwrap_or_else(|| panic!("acknowledged {r} #{seq} is missing after kill -9"));
        assert!(payload.ends_with(format!("-{cmid}").as_bytes()));
    }
    // Sequences continue where they were.
    let head = read_all(&mut c, &rooms[0]).await.len() as u64;
    assert_eq!(
        c.publish(&rooms[0], 1, b"after restart").await.seq,
        Seq(head + 1)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_message_wal() {
    kill_during_load("wal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_message_fsync() {
    kill_during_load("fsync").await;
}
