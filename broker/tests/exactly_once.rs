//! Exactly-once publishing through the real `confab` binary: a busy room
//! with deep pipelines, killed with `kill -9` again and again while every
//! publisher retries what was not acknowledged and re-sends some of what
//! was; and a retry after a million other publishes and a restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use confab_codec::*;
use rand::{Rng, SeedableRng};

/// What one device knows across broker lifetimes.
#[derive(Debug, Default)]
struct Device {
    id: usize,
    next: u64,
    /// Sent, outcome unknown: retried first in the next lifetime.
    unacked: BTreeSet<u64>,
    /// Acknowledged: id -> seq.
    acked: HashMap<u64, u64>,
    /// Acknowledgements with `duplicate` set.
    duplicates: u64,
}

const PIPELINE: usize = 512;

/// Publishes until the connection dies: first every unacknowledged id
/// again, then up to 32 acknowledged ones again (each must come back with
/// its original sequence), then new ids, keeping `PIPELINE` in flight.
async fn run_device(addr: SocketAddr, room: RoomId, mut d: Device, seed: u64) -> Device {
    let Ok(Ok(mut c)) = tokio::time::timeout(WAIT, async {
        Ok::<_, ()>(Conn::open(addr, &format!("busy{}", d.id), "phone").await)
    })
    .await
    else {
        return d;
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut queue: Vec<u64> = d.unacked.iter().copied().collect();
    let acked: Vec<u64> = d.acked.keys().copied().collect();
    for _ in 0..acked.len().min(32) {
        queue.push(acked[rng.gen_range(0..acked.len())]);
    }
    queue.reverse();
    let mut inflight: HashMap<u32, u64> = HashMap::new();
    loop {
        while inflight.len() < PIPELINE {
            let id = queue.pop().unwrap_or_else(|| {
                d.next += 1;
                d.next
            });
            if !d.acked.contains_key(&id) {
                d.unacked.insert(id);
            }
            let rid = c.request_id();
            let payload = format!("busy{}-{id}", d.id);
            let frame = Conn::publish_frame(rid, &room, id, payload.as_bytes());
            if c.send_raw(&frame.to_bytes().unwrap()).await.is_err() {
                return d;
            }
            inflight.insert(rid, id);
        }
        match c.recv_timeout(Duration::from_secs(5)).await {
            Ok(Some(f)) => {
                let Some(id) = inflight.remove(&f.request_id) else {
                    continue;
                };
                match f.body {
                    Body::PublishAck(a) => {
                        assert_eq!(a.client_msg_id, id);
                        if a.duplicate {
                            d.duplicates += 1;
                        }
                        if let Some(before) = d.acked.insert(id, a.seq.0) {
                            assert_eq!(
                                before, a.seq.0,
                                "busy{}/{id} acknowledged at {before}, then at {}",
                                d.id, a.seq
                            );
                        }
                        d.unacked.remove(&id);
                    }
                    // Refused (it was not stored): retried later.
                    Body::Error(_) => {}
                    _ => {}
                }
            }
            _ => return d,
        }
    }
}

async fn busy_room_cycles(durability: &str, cycles: usize) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let room = room("busy");
    let mut devices: Vec<Device> = (0..8)
        .map(|id| Device {
            id,
            ..Device::default()
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC0FFEE);
    for cycle in 0..cycles {
        let mut child = spawn_confab(dir.path(), port, durability);
        wait_listening(addr).await;
        let tasks: Vec<_> = devices
            .drain(..)
            .map(|d| {
                let seed = rng.gen();
                tokio::spawn(run_device(addr, room.clone(), d, seed))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..900))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for t in tasks {
            devices.push(tokio::time::timeout(WAIT, t).await.unwrap().unwrap());
        }
        let inflight: usize = devices.iter().map(|d| d.unacked.len()).sum();
        eprintln!("{durability} cycle {cycle}: {inflight} publishes in flight at the kill");
    }

    // A last lifetime without a kill: every outstanding id is retried to
    // its end, then the room is audited.
    let mut child = spawn_confab(dir.path(), port, durability);
    wait_listening(addr).await;
    let mut c = Conn::open(addr, "auditor", "d").await;
    for d in &mut devices {
        let mut dev = Conn::open(addr, &format!("busy{}", d.id), "phone").await;
        for id in std::mem::take(&mut d.unacked) {
            let ack = dev
                .publish(&room, id, format!("busy{}-{id}", d.id).as_bytes())
                .await;
            if let Some(before) = d.acked.insert(id, ack.seq.0) {
                assert_eq!(before, ack.seq.0);
            }
        }
    }
    let events = read_all(&mut c, &room).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq.0).collect();
    assert_contiguous(&seqs, 1, seqs.len() as u64);
    let mut seen = HashSet::new();
    let mut by_seq = HashMap::new();
    for e in &events {
        assert!(
            seen.insert((e.sender.clone(), e.client_msg_id)),
            "{}/{} stored twice",
            e.sender,
            e.client_msg_id
        );
        by_seq.insert(e.seq.0, (e.sender.to_string(), e.client_msg_id));
    }
    let mut acked = 0;
    let mut duplicates = 0;
    for d in &devices {
        duplicates += d.duplicates;
        for (id, seq) in &d.acked {
            acked += 1;
            assert_eq!(
                by_seq.get(seq),
                Some(&(format!("busy{}", d.id), *id)),
                "acknowledged busy{}/{id} is not at its seq {seq}",
                d.id
            );
        }
    }
    assert_eq!(acked, events.len(), "every stored message was acknowledged");
    assert!(
        duplicates > 0,
        "retries of stored publishes were recognised"
    );
    eprintln!(
        "{durability}: {cycles} kills, {} stored once each, {duplicates} duplicate acks",
        events.len()
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_room_kill_9_stores_each_publish_once_fsync() {
    busy_room_cycles("fsync", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_room_kill_9_stores_each_publish_once_wal() {
    busy_room_cycles("wal", 20).await;
}

/// A retry after a million publishes of other devices and a restart is
/// answered with its original sequence: the index on disk, not a window in
/// memory, recognises it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_million_publishes_and_a_restart_gets_its_original() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let room = room("long");
    let mut child = spawn_confab(dir.path(), port, "wal");
    wait_listening(addr).await;
    let mut me = Conn::open(addr, "me", "phone").await;
    let original = me.publish(&room, 42, b"the original").await;
    assert!(!original.duplicate);

    // A million publishes by other devices, pipelined without replies, in
    // the same room; then one with a reply marks the end.
    const OTHERS: u64 = 1_000_000;
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr, &format!("other{w}"), "d").await;
            let mut buf = bytes::BytesMut::new();
            for i in 1..=OTHERS / 4 {
                let rid = c.request_id();
                let mut f = Conn::publish_frame(rid, &room, i, b"filler");
                f.flags |= flags::NO_REPLY;
                f.encode(&mut buf).unwrap();
                if buf.len() > 64 << 10 {
                    c.send_raw(&buf.split()).await.unwrap();
                }
            }
            c.send_raw(&buf.split()).await.unwrap();
            c.publish(&room, OTHERS, b"done").await
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(300), t)
            .await
            .unwrap()
            .unwrap();
    }
    let retry = me.publish(&room, 42, b"the original").await;
    assert!(retry.duplicate);
    assert_eq!(
        (retry.seq, retry.timestamp_us),
        (original.seq, original.timestamp_us)
    );

    // And after a restart.
    drop(me);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn_confab(dir.path(), port, "wal");
    wait_listening(addr).await;
    let mut me = Conn::open(addr, "me", "phone").await;
    let retry = me.publish(&room, 42, b"the original").await;
    assert!(retry.duplicate, "recognised after a restart");
    assert_eq!(
        (retry.seq, retry.timestamp_us),
        (original.seq, original.timestamp_us)
    );
    let head = me.publish(&room, 43, b"new").await;
    assert_eq!(head.seq.0, OTHERS + 4 + 2, "nothing was stored twice");
    child.kill().unwrap();
    child.wait().unwrap();
}
