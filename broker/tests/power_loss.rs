//! Power cuts under the real `confab` binary on real RocksDB: an LD_PRELOAD
//! shim (tests/powercut) keeps what the broker fsynced; each cycle starts
//! the broker, loads it with pipelined publishes (and the retries of the
//! ones a cut left unanswered, with the same client message ids), kills it
//! at a seeded random moment (sometimes while it recovers, before it
//! listens), and throws away everything it had not fsynced. After every
//! restart the log is audited: in `fsync` mode nothing acknowledged is
//! lost or renumbered, every room is gap-free, no client message id is
//! stored twice. A canary in `wal` mode must lose acknowledged messages,
//! so that the test can fail.
//!
//! `POWER_CUT_CYCLES` (default 12) and `POWER_CUT_SEED` set a longer or
//! another run (scripts/power_loss.sh).
#![allow(clippy::unwrap_used)]

mod common;
mod powercut;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use confab_codec::*;
use powercut::Disk;

const PUBLISHERS: usize = 3;
const ROOMS: usize = 4;
const PIPELINE: usize = 64;

/// What one publisher learned in one cycle.
#[derive(Default)]
struct Outcome {
    /// (room, client message id, seq, duplicate)
    acked: Vec<(RoomId, u64, u64, bool)>,
    /// Sent and not answered: resent, with the same id, next cycle.
    unanswered: BTreeMap<u64, RoomId>,
    next_cmid: u64,
}

fn payload(id: usize, cmid: u64) -> Vec<u8> {
    format!("p{id}-{cmid}-{}", "x".repeat((cmid % 200) as usize)).into_bytes()
}

/// One publisher: first resends what the last cut left unanswered, then
/// pipelines new publishes until the connection dies.
async fn publisher(
    addr: SocketAddr,
    id: usize,
    rooms: Vec<RoomId>,
    resend: BTreeMap<u64, RoomId>,
    mut next_cmid: u64,
) -> Outcome {
    let mut out = Outcome::default();
    let Ok(Ok(stream)) =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await
    else {
        out.unanswered = resend;
        out.next_cmid = next_cmid;
        return out;
    };
    let mut c = Conn::over_tcp(stream);
    // The handshake, tolerating a broker killed meanwhile.
    let hello = Frame::request(
        c.request_id(),
        Hello {
            min_version: 1,
            max_version: 1,
            token: format!("p{id}:d"),
            device: DeviceId::new("d").unwrap(),
            client_name: "power-loss".into(),
            resume: Vec::new(),
            features: Default::default(),
        },
    );
    let welcomed = c.send_raw(&hello.to_bytes().unwrap()).await.is_ok()
        && matches!(
            c.recv_timeout(Duration::from_secs(5)).await,
            Ok(Some(Frame {
                body: Body::Welcome(_),
                ..
            }))
        );
    if !welcomed {
        out.unanswered = resend;
        out.next_cmid = next_cmid;
        return out;
    }
    let mut inflight: HashMap<u32, (RoomId, u64)> = HashMap::new();
    let mut queue: Vec<(u64, RoomId)> = resend.into_iter().collect();
    queue.reverse();
    'run: loop {
        while inflight.len() < PIPELINE {
            let (cmid, r) = queue.pop().unwrap_or_else(|| {
                next_cmid += 1;
                (next_cmid, rooms[(next_cmid as usize) % rooms.len()].clone())
            });
            let rid = c.request_id();
            let frame = Conn::publish_frame(rid, &r, cmid, &payload(id, cmid));
            inflight.insert(rid, (r, cmid));
            if c.send_raw(&frame.to_bytes().unwrap()).await.is_err() {
                break 'run;
            }
        }
        match c.recv_timeout(Duration::from_secs(5)).await {
            Ok(Some(f)) => match (f.body, inflight.remove(&f.request_id)) {
                (Body::PublishAck(a), Some((r, cmid))) => {
                    assert_eq!((&a.room, a.client_msg_id), (&r, cmid));
                    out.acked.push((r, cmid, a.seq.0, a.duplicate));
                }
                (Body::Error(e), Some((r, cmid))) => {
                    panic!("publish {cmid} in {r} refused: {:?} {}", e.code, e.message)
                }
                _ => {}
            },
            _ => break,
        }
    }
    out.unanswered
        .extend(inflight.into_values().map(|(r, c)| (c, r)));
    out.unanswered.extend(queue);
    out.next_cmid = next_cmid;
    out
}

/// What an audit of the log found against every acknowledgement so far.
#[derive(Debug, Default)]
struct Audit {
    /// Acknowledged and not in the log.
    missing: usize,
    /// Acknowledged, and another message now holds its sequence.
    renumbered: usize,
    /// Rooms whose sequences are not exactly 1..=head.
    gaps: usize,
    /// Client message ids stored more than once.
    twice: usize,
    /// Entries in the log.
    stored: usize,
}

impl Audit {
    fn clean(&self) -> bool {
        self.missing == 0 && self.renumbered == 0 && self.gaps == 0 && self.twice == 0
    }
}

/// Every acknowledgement so far: (publisher, cmid) -> (room, seq).
type Acks = HashMap<(usize, u64), (RoomId, u64)>;

async fn audit(addr: SocketAddr, rooms: &[RoomId], acks: &Acks) -> Audit {
    let mut c = Conn::open(addr, "auditor", "d").await;
    let mut a = Audit::default();
    let mut stored: HashMap<(RoomId, u64), (String, u64, Bytes)> = HashMap::new();
    for r in rooms {
        let events = read_all(&mut c, r).await;
        a.stored += events.len();
        if events
            .iter()
            .enumerate()
            .any(|(i, e)| e.seq.0 != i as u64 + 1)
        {
            a.gaps += 1;
        }
        let mut seen = HashSet::new();
        for e in events {
            if !seen.insert((e.sender.clone(), e.client_msg_id)) {
                a.twice += 1;
            }
            stored.insert(
                (r.clone(), e.seq.0),
                (e.sender.to_string(), e.client_msg_id, e.payload.clone()),
            );
        }
    }
    for ((id, cmid), (r, seq)) in acks {
        match stored.get(&(r.clone(), *seq)) {
            None => a.missing += 1,
            Some((sender, stored_cmid, body)) => {
                if sender != &format!("p{id}")
                    || stored_cmid != cmid
                    || body.as_ref() != payload(*id, *cmid).as_slice()
                {
                    a.renumbered += 1;
                }
            }
        }
    }
    a
}

/// Waits until the broker listens; false if it exited or did not come up.
async fn listening(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// What a run of cycles found.
#[derive(Debug, Default)]
struct Report {
    cycles: usize,
    /// Cuts while the broker recovered, before it listened.
    early_cuts: usize,
    acked: usize,
    duplicate_acks: usize,
    /// Acks of the same publish naming different sequences.
    conflicting_acks: usize,
    /// Bytes written and not durable at the cuts.
    bytes_lost: u64,
    /// The worst audit after a restart, and the last.
    worst_missing: usize,
    audits: Vec<Audit>,
    /// The broker did not come back on what survived.
    failed_start: bool,
}

/// How the broker ends before each cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGKILL under load: the cut catches it running.
    Kill,
    /// SIGTERM under load, then the cut once it has exited cleanly.
    Clean,
}

async fn power_cuts(durability: &str, cycles: usize, seed: u64, stop: Stop) -> Report {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Disk::new(tmp.path());
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rooms: Vec<RoomId> = (0..ROOMS).map(|i| room(&format!("cut-{i}"))).collect();
    let mut rng = Rng(seed);
    let mut acks: Acks = HashMap::new();
    let mut unanswered: Vec<BTreeMap<u64, RoomId>> = vec![BTreeMap::new(); PUBLISHERS];
    let mut next_cmid = [0u64; PUBLISHERS];
    let mut report = Report::default();
    let spawn = |disk: &Disk| {
        let mut command = confab_command(&disk.data, port, durability, &[]);
        command.envs(disk.env());
        command.spawn().expect("the confab binary starts")
    };
    for cycle in 0..=cycles {
        disk.baseline();
        let mut child = spawn(&disk);
        let last = cycle == cycles;
        if !last && rng.below(5) == 0 {
            // Cut while it opens RocksDB and recovers its WAL.
            tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
            report.early_cuts += 1;
        } else {
            if !listening(&mut child, addr).await {
                report.failed_start = true;
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("{durability}: the broker did not start after cut {cycle}");
                break;
            }
            let a = audit(addr, &rooms, &acks).await;
            report.worst_missing = report.worst_missing.max(a.missing);
            eprintln!("{durability} cycle {cycle}: {a:?}");
            report.audits.push(a);
            if last {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            let tasks: Vec<_> = (0..PUBLISHERS)
                .map(|i| {
                    tokio::spawn(publisher(
                        addr,
                        i,
                        rooms.clone(),
                        std::mem::take(&mut unanswered[i]),
                        next_cmid[i],
                    ))
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(200 + rng.below(1000))).await;
            match stop {
                Stop::Kill => child.kill().unwrap(), // the power cut: SIGKILL, then below
                Stop::Clean => {
                    let term = std::process::Command::new("kill")
                        .args(["-TERM", &child.id().to_string()])
                        .status()
                        .unwrap();
                    assert!(term.success());
                }
            }
            let status = child.wait().unwrap();
            if stop == Stop::Clean {
                assert!(status.success(), "a clean stop: {status}");
            }
            for (i, t) in tasks.into_iter().enumerate() {
                let out = tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
                for (r, cmid, seq, duplicate) in out.acked {
                    report.acked += 1;
                    report.duplicate_acks += usize::from(duplicate);
                    if let Some(prev) = acks.insert((i, cmid), (r.clone(), seq)) {
                        if prev != (r, seq) {
                            report.conflicting_acks += 1;
                        }
                    }
                }
                unanswered[i] = out.unanswered;
                next_cmid[i] = out.next_cmid;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        report.bytes_lost += disk.cut();
        report.cycles += 1;
    }
    eprintln!("{durability}: {report:?}");
    report
}

fn cycles() -> usize {
    std::env::var("POWER_CUT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

fn seed() -> u64 {
    std::env::var("POWER_CUT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(17)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_lose_nothing_acknowledged_in_fsync_mode() {
    let started = Instant::now();
    let r = power_cuts("fsync", cycles(), seed(), Stop::Kill).await;
    assert!(!r.failed_start, "the broker comes back after every cut");
    assert!(
        r.acked > 100 * r.cycles.min(10),
        "the load ran: {} acks",
        r.acked
    );
    assert!(r.bytes_lost > 0, "the cuts threw away unsynced writes");
    assert_eq!(
        r.conflicting_acks, 0,
        "every ack of a publish names one seq"
    );
    for (i, a) in r.audits.iter().enumerate() {
        assert!(a.clean(), "audit {i} after a power cut: {a:?}");
    }
    eprintln!(
        "fsync: {} cycles ({} during recovery), {} acks ({} duplicates), {} bytes thrown away, {:.1} s",
        r.cycles,
        r.early_cuts,
        r.acked,
        r.duplicate_acks,
        r.bytes_lost,
        started.elapsed().as_secs_f64()
    );
}

/// The canary: in `wal` mode a power cut loses acknowledged messages (the
/// WAL is written, not synced), which this harness must see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_lose_acknowledged_messages_in_wal_mode() {
    let r = power_cuts("wal", 4, seed(), Stop::Kill).await;
    let lost = r.failed_start || r.audits.iter().any(|a| !a.clean());
    assert!(lost, "a power cut in wal mode lost nothing: {r:?}");
}

/// What `wal` mode does survive: a power cut after the broker stopped
/// cleanly (RocksDB syncs its WAL when the database closes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_mode_survives_a_power_cut_after_a_clean_stop() {
    let r = power_cuts("wal", 4, seed(), Stop::Clean).await;
    assert!(!r.failed_start, "the broker comes back after every cut");
    assert!(r.acked > 100, "the load ran: {} acks", r.acked);
    for (i, a) in r.audits.iter().enumerate() {
        assert!(a.clean(), "audit {i} after a clean stop and a cut: {a:?}");
    }
}
