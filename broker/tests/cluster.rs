//! Cluster mode's building blocks against real `nats-server` processes on
//! 127.0.0.1: the JetStream room log, fenced appends and step-down,
//! takeover, and node membership with rendezvous ownership.
//!
//! The server binary comes from `CONFAB_NATS_SERVER`, else
//! `$HOME/.cache/confab/peers-venv/bin/nats-server` (what
//! `bench/peers/install.sh` installs), else `PATH`. Without one, each test
//! prints why and passes without running (CI installs it).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use confab_broker::cluster::{
    owner, ClusterError, Follower, JetStreamLog, LiveNodes, LogConfig, Membership,
    MembershipConfig, NodeId, RoomWriter,
};
use confab_broker::storage::{Append, IdemKey, IdemWrite, StoredRecord};
use confab_codec::{DeviceId, EventRecord, MessageKind, RoomId, Seq, UserId};
use futures_util::StreamExt;

// ---------------------------------------------------------------------------
// nats-server processes

fn nats_server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CONFAB_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cache/confab/peers-venv/bin/nats-server");
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A nats-server with JetStream in a temporary directory, killed on drop.
struct Nats {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Starts one, or says why not and returns `None` (the test passes
    /// without running). The server picks its own port and writes it to a
    /// ports file: no race with other tests for a free port.
    fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// [`Self::start`] with more server arguments.
    fn start_with(extra: &[&str]) -> Option<Self> {
        let Some(bin) = nats_server_binary() else {
            eprintln!(
                "SKIPPED: no nats-server (set CONFAB_NATS_SERVER or run bench/peers/install.sh)"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.path().join("store"))
            .arg("--ports_file_dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let ports = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            if let Some(port) = std::fs::read(&ports)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["nats"][0].as_str().map(str::to_owned))
                .and_then(|url| url.rsplit(':').next()?.parse::<u16>().ok())
            {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited: {status}");
            }
            assert!(Instant::now() < deadline, "nats-server wrote no ports file");
            std::thread::sleep(Duration::from_millis(20));
        };
        Some(Self {
            child,
            port,
            _dir: dir,
        })
    }

    async fn client(&self) -> async_nats::Client {
        async_nats::connect(format!("nats://127.0.0.1:{}", self.port))
            .await
            .unwrap()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a test body under a time bound.
async fn bounded<F: Future<Output = ()>>(secs: u64, body: F) {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .expect("the test took too long");
}

// ---------------------------------------------------------------------------
// records

fn room(id: &str) -> RoomId {
    RoomId::new(id).unwrap()
}

/// The encoded record of `seq` in a room, with a payload naming it.
fn record(seq: u64, client_msg_id: u64, payload: &str) -> Vec<u8> {
    let ev = EventRecord {
        seq: Seq(seq),
        timestamp_us: 1_000_000 + seq,
        sender: UserId::new("u").unwrap(),
        device: DeviceId::new("d").unwrap(),
        client_msg_id,
        kind: MessageKind::MESSAGE,
        refers_to: None,
        thread: None,
        payload: Bytes::from(payload.to_owned()),
    };
    let mut out = BytesMut::new();
    ev.encode(&mut out).unwrap();
    out.to_vec()
}

const SENDER: &str = "u\0d";

/// Appends for `records` (seq, client message id, bytes) of `room`.
fn appends<'a>(room: &'a RoomId, records: &'a [(u64, u64, Vec<u8>)]) -> Vec<Append<'a>> {
    records
        .iter()
        .map(|(seq, id, bytes)| Append {
            room,
            seq: Seq(*seq),
            record: bytes,
            idem: (*id != 0).then_some(IdemWrite {
                key: IdemKey {
                    sender: SENDER,
                    client_msg_id: *id,
                },
                fresh: true,
                mark: *id,
            }),
            timestamp_us: 1_000_000 + seq,
        })
        .collect()
}

fn payload_of(r: &StoredRecord) -> String {
    let ev = EventRecord::decode(r.bytes.clone()).unwrap();
    assert_eq!(ev.seq, r.seq, "a record's own sequence is its place");
    String::from_utf8(ev.payload.to_vec()).unwrap()
}

fn test_log_config(stream: &str) -> LogConfig {
    LogConfig {
        stream: stream.into(),
        subject_prefix: format!("t.{}", stream.to_lowercase()),
        fanout_prefix: format!("f.{}", stream.to_lowercase()),
        // Small chunks, so that a commit of 40 records takes several.
        max_chunk_bytes: 1024,
        ..LogConfig::default()
    }
}

async fn open_log(nats: &Nats, stream: &str) -> Arc<JetStreamLog> {
    Arc::new(
        JetStreamLog::open(nats.client().await, test_log_config(stream))
            .await
            .unwrap(),
    )
}

// ---------------------------------------------------------------------------
// the room log

#[tokio::test]
async fn append_and_read_round_trip_with_contiguous_sequences() {
    let Some(nats) = Nats::start() else { return };
    bounded(60, async {
        let log = open_log(&nats, "ROUNDTRIP").await;
        let rooms = [room("general"), room("a.b *>c"), room("x")];
        let mut writers = Vec::new();
        for r in &rooms {
            writers.push(
                RoomWriter::take_over(log.clone(), r.clone(), "w1", 64)
                    .await
                    .unwrap(),
            );
        }
        // Commits of varied sizes, interleaved between the rooms; 40
        // records of ~60 bytes exceed a 1 KiB chunk.
        let mut expected: Vec<BTreeMap<u64, String>> = vec![BTreeMap::new(); rooms.len()];
        for (round, size) in [1usize, 3, 10, 40, 1, 7].into_iter().enumerate() {
            for (i, w) in writers.iter_mut().enumerate() {
                let head = w.head().0;
                let recs: Vec<(u64, u64, Vec<u8>)> = (head + 1..=head + size as u64)
                    .map(|s| {
                        let p = format!("room{i}-round{round}-seq{s}-{}", "x".repeat(30));
                        expected[i].insert(s, p.clone());
                        (s, 0, record(s, 0, &p))
                    })
                    .collect();
                let done = w.append(&appends(&rooms[i], &recs)).await.unwrap();
                assert_eq!(done.head, Seq(head + size as u64));
                if size == 40 {
                    assert!(done.chunks.len() > 1, "split into chunks: {done:?}");
                    for pair in done.chunks.windows(2) {
                        assert_eq!(pair[1].first.0, pair[0].last.0 + 1);
                        assert!(pair[1].stream_seq > pair[0].stream_seq);
                    }
                }
            }
        }
        let n = 62u64;
        for (i, r) in rooms.iter().enumerate() {
            assert_eq!(writers[i].head(), Seq(n));
            let b = log.bounds(r).await.unwrap();
            assert_eq!((b.head, b.first), (Seq(n), Seq(1)));
            let all = log
                .read_range(r, Seq(1), Seq(n), 1000, usize::MAX)
                .await
                .unwrap();
            let seqs: Vec<u64> = all.iter().map(|x| x.seq.0).collect();
            assert_eq!(
                seqs,
                (1..=n).collect::<Vec<_>>(),
                "room {r}: 1..={n}, no gap"
            );
            for rec in &all {
                assert_eq!(payload_of(rec), expected[i][&rec.seq.0]);
            }
            // Windows, limits, and reads past the head.
            let mid = log
                .read_range(r, Seq(13), Seq(17), 100, usize::MAX)
                .await
                .unwrap();
            assert_eq!(
                mid.iter().map(|x| x.seq.0).collect::<Vec<_>>(),
                vec![13, 14, 15, 16, 17]
            );
            let counted = log
                .read_range(r, Seq(5), Seq(n), 4, usize::MAX)
                .await
                .unwrap();
            assert_eq!(
                counted.iter().map(|x| x.seq.0).collect::<Vec<_>>(),
                vec![5, 6, 7, 8]
            );
            let one = log.read_range(r, Seq(5), Seq(n), 100, 1).await.unwrap();
            assert_eq!(one.len(), 1, "at least one record within any byte limit");
            assert!(log
                .read_range(r, Seq(n + 1), Seq(n + 10), 10, usize::MAX)
                .await
                .unwrap()
                .is_empty());
            let before = log.read_before(r, Seq(n + 1), 5, usize::MAX).await.unwrap();
            assert_eq!(
                before.iter().map(|x| x.seq.0).collect::<Vec<_>>(),
                (n - 4..=n).collect::<Vec<_>>()
            );
            let start = log.read_before(r, Seq(3), 10, usize::MAX).await.unwrap();
            assert_eq!(
                start.iter().map(|x| x.seq.0).collect::<Vec<_>>(),
                vec![1, 2]
            );
            let newest = log.read_before(r, Seq(n + 1), 10, 1).await.unwrap();
            assert_eq!(newest.iter().map(|x| x.seq.0).collect::<Vec<_>>(), vec![n]);
        }
        // Another node (a fresh log, nothing remembered) finds any
        // sequence by searching the stream, and reads the same records.
        let other = open_log(&nats, "ROUNDTRIP").await;
        for (i, r) in rooms.iter().enumerate() {
            for (from, to) in [(1, 1), (30, 35), (n, n), (14, 60)] {
                let got = other
                    .read_range(r, Seq(from), Seq(to), 1000, usize::MAX)
                    .await
                    .unwrap();
                assert_eq!(
                    got.iter().map(|x| x.seq.0).collect::<Vec<_>>(),
                    (from..=to).collect::<Vec<_>>()
                );
                for rec in &got {
                    assert_eq!(payload_of(rec), expected[i][&rec.seq.0]);
                }
            }
        }
        let empty = room("never-written");
        let b = log.bounds(&empty).await.unwrap();
        assert_eq!((b.head, b.first), (Seq(0), Seq(1)));
        assert!(log
            .read_range(&empty, Seq(1), Seq(10), 10, usize::MAX)
            .await
            .unwrap()
            .is_empty());
    })
    .await;
}

#[tokio::test]
async fn appends_must_continue_the_head() {
    let Some(nats) = Nats::start() else { return };
    bounded(30, async {
        let log = open_log(&nats, "INVALID").await;
        let r = room("r");
        let mut w = RoomWriter::take_over(log.clone(), r.clone(), "w", 8)
            .await
            .unwrap();
        let gap = vec![(2, 0, record(2, 0, "two"))];
        let err = w.append(&appends(&r, &gap)).await.unwrap_err();
        assert!(matches!(err, ClusterError::InvalidAppend(_)), "{err}");
        let other = room("other");
        let wrong_room = vec![(1, 0, record(1, 0, "one"))];
        let err = w.append(&appends(&other, &wrong_room)).await.unwrap_err();
        assert!(matches!(err, ClusterError::InvalidAppend(_)), "{err}");
        assert!(w.is_writer(), "a refused precondition is not a step-down");
        assert_eq!(
            log.bounds(&r).await.unwrap().head,
            Seq(0),
            "nothing written"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// fencing

#[tokio::test]
async fn a_stale_writer_is_refused_and_steps_down() {
    let Some(nats) = Nats::start() else { return };
    bounded(60, async {
        let log = open_log(&nats, "FENCE").await;
        let r = room("contested");
        let mut a = RoomWriter::take_over(log.clone(), r.clone(), "A", 16)
            .await
            .unwrap();
        let first: Vec<_> = (1..=5)
            .map(|s| (s, 0, record(s, 0, &format!("A{s}"))))
            .collect();
        a.append(&appends(&r, &first)).await.unwrap();

        // B takes the room over (A is paused, say) and writes 6..=8.
        let mut b = RoomWriter::take_over(log.clone(), r.clone(), "B", 16)
            .await
            .unwrap();
        assert_eq!(b.head(), Seq(5));
        let bs: Vec<_> = (6..=8)
            .map(|s| (s, 0, record(s, 0, &format!("B{s}"))))
            .collect();
        b.append(&appends(&r, &bs)).await.unwrap();

        // A wakes up and appends what it believes is 6: refused.
        let stale = vec![(6, 0, record(6, 0, "A6"))];
        let err = a.append(&appends(&r, &stale)).await.unwrap_err();
        assert!(
            matches!(err, ClusterError::Fenced { expected, .. } if expected > 0),
            "{err}"
        );
        assert!(!a.is_writer(), "A stepped down");
        assert_eq!(a.head(), Seq(5), "A stored nothing more");
        // And it stays down, without asking JetStream.
        let err = a.append(&appends(&r, &stale)).await.unwrap_err();
        assert!(
            matches!(err, ClusterError::SteppedDown(_)) && err.is_fenced(),
            "{err}"
        );

        let all = log
            .read_range(&r, Seq(1), Seq(100), 100, usize::MAX)
            .await
            .unwrap();
        let got: Vec<String> = all.iter().map(payload_of).collect();
        assert_eq!(got, ["A1", "A2", "A3", "A4", "A5", "B6", "B7", "B8"]);
    })
    .await;
}

/// Two nodes fight over a room: each takes it over, appends until refused,
/// and takes it over again. Every acknowledged sequence is in the log,
/// written by the writer it was acknowledged to, and no sequence was
/// acknowledged twice.
#[tokio::test]
async fn racing_writers_never_use_a_sequence_twice() {
    let Some(nats) = Nats::start() else { return };
    bounded(120, async {
        let r = room("race");
        const TARGET: u64 = 300;
        let mut tasks = Vec::new();
        for name in ["A", "B"] {
            let log = open_log(&nats, "RACE").await;
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked: Vec<(u64, String)> = Vec::new();
                let (mut takeovers, mut refusals) = (0u32, 0u32);
                'outer: loop {
                    takeovers += 1;
                    let token = format!("{name}{takeovers}");
                    let Ok(mut w) =
                        RoomWriter::take_over(log.clone(), r.clone(), token.clone(), 4).await
                    else {
                        continue;
                    };
                    loop {
                        let seq = w.head().0 + 1;
                        if seq > TARGET {
                            break 'outer;
                        }
                        let p = format!("{token}-{seq}");
                        let recs = vec![(seq, 0, record(seq, 0, &p))];
                        match w.append(&appends(&r, &recs)).await {
                            Ok(done) => {
                                assert_eq!(done.head, Seq(seq));
                                acked.push((seq, p));
                            }
                            Err(e) if e.is_fenced() => {
                                refusals += 1;
                                continue 'outer;
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                (acked, takeovers, refusals)
            }));
        }
        let mut by_seq: HashMap<u64, String> = HashMap::new();
        let mut refusals = 0;
        for t in tasks {
            let (acked, _, refused) = t.await.unwrap();
            refusals += refused;
            for (seq, p) in acked {
                if let Some(prev) = by_seq.insert(seq, p.clone()) {
                    panic!("sequence {seq} acknowledged twice: {prev} and {p}");
                }
            }
        }
        let log = open_log(&nats, "RACE").await;
        let all = log
            .read_range(&r, Seq(1), Seq(TARGET), 1000, usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            all.iter().map(|x| x.seq.0).collect::<Vec<_>>(),
            (1..=TARGET).collect::<Vec<_>>()
        );
        for rec in &all {
            let p = payload_of(rec);
            if let Some(acked) = by_seq.get(&rec.seq.0) {
                assert_eq!(&p, acked, "seq {} holds what was acknowledged", rec.seq.0);
            }
        }
        assert_eq!(
            by_seq.len() as u64,
            TARGET,
            "every stored chunk was acknowledged to its writer"
        );
        eprintln!("racing writers: {TARGET} sequences, {refusals} refused appends");
    })
    .await;
}

// ---------------------------------------------------------------------------
// following a room from another node

/// A follower gets exactly the committed records, in order, never a
/// refused append, and repairs what it missed from the stream; a core
/// subscriber of the stream's own subject does see the refused append
/// (which is why nodes follow the fan-out subject).
#[tokio::test]
async fn a_follower_gets_committed_records_only_and_repairs_gaps() {
    let Some(nats) = Nats::start() else { return };
    bounded(60, async {
        let log = open_log(&nats, "FOLLOW").await;
        let r = room("followed room");
        let client = nats.client().await;
        let mut raw = client.subscribe(log.subject(&r)).await.unwrap();
        let mut a = RoomWriter::take_over(log.clone(), r.clone(), "A", 8)
            .await
            .unwrap();
        let recs = |from: u64, to: u64, w: &str| -> Vec<(u64, u64, Vec<u8>)> {
            (from..=to)
                .map(|s| (s, 0, record(s, 0, &format!("{w}{s}"))))
                .collect()
        };
        a.append(&appends(&r, &recs(1, 3, "A"))).await.unwrap();

        // A node follows the room from now (head 3).
        let follower_log = open_log(&nats, "FOLLOW").await;
        let mut f = Follower::start(&nats.client().await, follower_log.clone(), r.clone())
            .await
            .unwrap();
        assert_eq!(f.applied(), Seq(3));

        a.append(&appends(&r, &recs(4, 5, "A"))).await.unwrap();
        let mut b = RoomWriter::take_over(log.clone(), r.clone(), "B", 8)
            .await
            .unwrap();
        b.append(&appends(&r, &recs(6, 6, "B"))).await.unwrap();
        let refused = a.append(&appends(&r, &recs(6, 7, "A"))).await.unwrap_err();
        assert!(refused.is_fenced(), "{refused}");
        b.append(&appends(&r, &recs(7, 9, "B"))).await.unwrap();

        let mut got = Vec::new();
        while got.last().map(|x: &StoredRecord| x.seq) != Some(Seq(9)) {
            got.extend(f.next().await.unwrap());
        }

        let seqs: Vec<u64> = got.iter().map(|x| x.seq.0).collect();
        assert_eq!(seqs, (4..=9).collect::<Vec<_>>());
        let payloads: Vec<String> = got.iter().map(payload_of).collect();
        assert_eq!(
            payloads,
            ["A4", "A5", "B6", "B7", "B8", "B9"],
            "never the refused A6"
        );

        // The stream's own subject carried the refused chunk too: every
        // publish, stored or not (1-3, 4-5, 6, the refused 6-7, 7-9).
        let mut saw_refused = false;
        for _ in 0..5 {
            let m = tokio::time::timeout(Duration::from_secs(5), raw.next())
                .await
                .unwrap()
                .unwrap();
            let c = String::from_utf8_lossy(&m.payload).into_owned();
            saw_refused |= c.contains("A6") && c.contains("A7");
        }
        assert!(
            saw_refused,
            "a core subscriber of the stream subject saw the refused A6-A7"
        );

        // A node that had handed on up to 3 and lost its subscription
        // comes back: what it missed is read from the stream first, then
        // it follows live.
        let mut late = Follower::resume(&nats.client().await, follower_log, r.clone(), Seq(3))
            .await
            .unwrap();
        let caught = late.next().await.unwrap();
        assert_eq!(
            caught.iter().map(|x| x.seq.0).collect::<Vec<_>>(),
            (4..=9).collect::<Vec<_>>()
        );
        assert_eq!(payload_of(&caught[2]), "B6");
        b.append(&appends(&r, &recs(10, 10, "B"))).await.unwrap();
        let live = late.next().await.unwrap();
        assert_eq!(live.iter().map(|x| x.seq.0).collect::<Vec<_>>(), vec![10]);
        assert_eq!(late.applied(), Seq(10));
    })
    .await;
}

// ---------------------------------------------------------------------------
// takeover

#[tokio::test]
async fn takeover_learns_the_head_and_recent_originals() {
    let Some(nats) = Nats::start() else { return };
    bounded(60, async {
        let log = open_log(&nats, "TAKEOVER").await;
        let r = room("handover");
        let mut old = RoomWriter::take_over(log.clone(), r.clone(), "old", 64)
            .await
            .unwrap();
        // 20 publishes with client message ids 1000..=1019, in two commits.
        let recs: Vec<_> = (1..=20)
            .map(|s| (s, 999 + s, record(s, 999 + s, &format!("m{s}"))))
            .collect();
        old.append(&appends(&r, &recs[..12])).await.unwrap();
        old.append(&appends(&r, &recs[12..])).await.unwrap();
        assert_eq!(old.original(SENDER, 1005).map(|o| o.seq), Some(Seq(6)));

        // The old owner stops (paused, or dead); a new one takes over,
        // remembering the last 10 sequences' originals.
        let log2 = open_log(&nats, "TAKEOVER").await;
        let mut new = RoomWriter::take_over(log2.clone(), r.clone(), "new", 10)
            .await
            .unwrap();
        assert_eq!(new.head(), Seq(20));
        assert_eq!(new.originals_known(), 10);
        let o = new.original(SENDER, 1019).unwrap();
        assert_eq!((o.seq, o.timestamp_us), (Seq(20), 1_000_020));
        assert_eq!(new.original(SENDER, 1010).map(|o| o.seq), Some(Seq(11)));
        assert_eq!(new.original(SENDER, 1009), None, "outside the window");
        assert_eq!(new.original("u\0other", 1019), None, "per sender");

        // A client retries 1015 through the new owner: it gets seq 16, and
        // nothing is appended. A new publish gets 21.
        assert_eq!(new.original(SENDER, 1015).map(|o| o.seq), Some(Seq(16)));
        let fresh = vec![(21, 1020, record(21, 1020, "m21"))];
        new.append(&appends(&r, &fresh)).await.unwrap();
        assert_eq!(new.original(SENDER, 1020).map(|o| o.seq), Some(Seq(21)));
        let all = log2
            .read_range(&r, Seq(1), Seq(100), 100, usize::MAX)
            .await
            .unwrap();
        assert_eq!(all.len(), 21, "the retry stored nothing");

        // The old owner comes back and tries to go on: refused.
        let stale = vec![(21, 2000, record(21, 2000, "stale"))];
        let err = old.append(&appends(&r, &stale)).await.unwrap_err();
        assert!(err.is_fenced(), "{err}");
        assert_eq!(
            payload_of(
                &log.read_range(&r, Seq(21), Seq(21), 1, usize::MAX)
                    .await
                    .unwrap()[0]
            ),
            "m21"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// membership

fn node(id: &str) -> NodeId {
    NodeId::new(id).unwrap()
}

fn ids(live: &LiveNodes) -> Vec<String> {
    live.ids().map(|n| n.as_str().to_owned()).collect()
}

async fn wait_live(m: &Membership, want: &[&str], within: Duration) {
    let mut changes = m.changes();
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    tokio::time::timeout(within, changes.wait_for(|l| ids(l) == want))
        .await
        .unwrap_or_else(|_| panic!("{} sees {:?}, not {want:?}", m.me(), ids(&m.live())))
        .unwrap();
}

#[tokio::test]
async fn a_silent_node_expires_after_the_ttl_and_its_rooms_move() {
    let Some(nats) = Nats::start() else { return };
    bounded(90, async {
        let cfg = MembershipConfig {
            bucket: "members_test".into(),
            ttl: Duration::from_secs(3),
            heartbeat: Duration::from_secs(1),
            replicas: 1,
        };
        let join = |id: &'static str| {
            let cfg = cfg.clone();
            let nats = &nats;
            async move {
                Membership::join(
                    nats.client().await,
                    cfg,
                    node(id),
                    format!("{id}.local:7400"),
                )
                .await
                .unwrap()
            }
        };
        let n1 = join("n1").await;
        let mut n2 = join("n2").await;
        let n3 = join("n3").await;
        let all = ["n1", "n2", "n3"];
        for m in [&n1, &n2, &n3] {
            wait_live(m, &all, Duration::from_secs(5)).await;
        }
        assert_eq!(n1.live().address(&node("n2")), Some("n2.local:7400"));

        let rooms: Vec<RoomId> = (0..300).map(|i| room(&format!("room-{i}"))).collect();
        let before: Vec<NodeId> = rooms.iter().map(|r| n1.owner(r).unwrap()).collect();
        for m in [&n2, &n3] {
            for (r, o) in rooms.iter().zip(&before) {
                assert_eq!(&m.owner(r).unwrap(), o, "every node names the same owner");
            }
        }
        let of_n2 = before.iter().filter(|o| o.as_str() == "n2").count();
        assert!((50..150).contains(&of_n2), "n2 owns {of_n2} of 300");

        // n2 stops heartbeating (a crash or SIGSTOP): its key stays until
        // the TTL runs out.
        n2.halt().await;
        let stopped = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(n1.live().contains(&node("n2")), "still live within its TTL");
        wait_live(&n1, &["n1", "n3"], Duration::from_secs(7)).await;
        wait_live(&n3, &["n1", "n3"], Duration::from_secs(2)).await;
        let gone_after = stopped.elapsed();
        eprintln!("n2 disappeared {gone_after:?} after its heartbeats stopped (ttl 3 s)");
        assert!(
            gone_after >= Duration::from_secs(1),
            "not before its TTL: {gone_after:?}"
        );

        // Its rooms moved, each to the rendezvous winner among n1 and n3;
        // the others stayed where they were; n1 and n3 agree.
        let rest = [node("n1"), node("n3")];
        for (r, was) in rooms.iter().zip(&before) {
            let now = n1.owner(r).unwrap();
            assert_eq!(n3.owner(r).unwrap(), now);
            assert_eq!(Some(&now), owner(r, &rest));
            if was.as_str() != "n2" {
                assert_eq!(&now, was, "{r} did not belong to n2 and stays");
            }
        }

        // n2 comes back: every room returns to its first owner.
        let n2 = join("n2").await;
        wait_live(&n1, &all, Duration::from_secs(5)).await;
        for (r, was) in rooms.iter().zip(&before) {
            assert_eq!(&n1.owner(r).unwrap(), was);
        }
        assert!(n2.owns(&rooms[before.iter().position(|o| o.as_str() == "n2").unwrap()]));

        // A node configured with another TTL is refused: the nodes would
        // disagree on when a node is dead.
        let other_ttl = MembershipConfig {
            ttl: Duration::from_secs(6),
            heartbeat: Duration::from_secs(2),
            ..cfg.clone()
        };
        let refused =
            Membership::join(nats.client().await, other_ttl, node("n9"), "x".into()).await;
        assert!(
            matches!(refused, Err(ClusterError::Config(_))),
            "{refused:?}"
        );

        // A node that leaves in order is gone at once, not after the TTL.
        let left = Instant::now();
        n3.leave().await.unwrap();
        wait_live(&n1, &["n1", "n2"], Duration::from_millis(1500)).await;
        eprintln!("n3 left; seen gone after {:?}", left.elapsed());
    })
    .await;
}

/// The issue's SIGSTOP case, in one process: the owner of a room stops
/// heartbeating (paused) past the TTL; the next owner by rendezvous takes
/// the room over and writes; the first resumes and appends what it had
/// sequenced: refused, it steps down, and no sequence is used twice.
#[tokio::test]
async fn a_paused_owner_is_fenced_when_it_resumes_after_a_takeover() {
    let Some(nats) = Nats::start() else { return };
    bounded(60, async {
        let cfg = MembershipConfig {
            bucket: "paused_test".into(),
            ttl: Duration::from_secs(2),
            heartbeat: Duration::from_millis(500),
            replicas: 1,
        };
        let mut n1 = Membership::join(nats.client().await, cfg.clone(), node("n1"), "a".into())
            .await
            .unwrap();
        let n2 = Membership::join(nats.client().await, cfg.clone(), node("n2"), "b".into())
            .await
            .unwrap();
        wait_live(&n1, &["n1", "n2"], Duration::from_secs(5)).await;
        // A room n1 owns.
        let r = (0..)
            .map(|i| room(&format!("paused-{i}")))
            .find(|r| n1.owns(r))
            .unwrap();
        assert!(!n2.owns(&r));
        let log = open_log(&nats, "PAUSED").await;
        let mut w1 = RoomWriter::take_over(log.clone(), r.clone(), "n1-1", 16)
            .await
            .unwrap();
        let recs = |from: u64, to: u64, w: &str| -> Vec<(u64, u64, Vec<u8>)> {
            (from..=to)
                .map(|s| (s, 0, record(s, 0, &format!("{w}{s}"))))
                .collect()
        };
        w1.append(&appends(&r, &recs(1, 4, "n1-"))).await.unwrap();

        // n1 pauses: no heartbeat. After the TTL n2 owns the room.
        n1.halt().await;
        let mut changes = n2.changes();
        tokio::time::timeout(
            Duration::from_secs(6),
            changes.wait_for(|l| l.owner(&r) == Some(&node("n2"))),
        )
        .await
        .unwrap()
        .unwrap();
        let log2 = open_log(&nats, "PAUSED").await;
        let mut w2 = RoomWriter::take_over(log2.clone(), r.clone(), "n2-1", 16)
            .await
            .unwrap();
        assert_eq!(w2.head(), Seq(4));
        w2.append(&appends(&r, &recs(5, 6, "n2-"))).await.unwrap();

        // n1 resumes with the commit it had in hand.
        let err = w1
            .append(&appends(&r, &recs(5, 7, "n1-")))
            .await
            .unwrap_err();
        assert!(err.is_fenced(), "{err}");
        assert!(!w1.is_writer());
        let all = log2
            .read_range(&r, Seq(1), Seq(100), 100, usize::MAX)
            .await
            .unwrap();
        let got: Vec<String> = all.iter().map(payload_of).collect();
        assert_eq!(got, ["n1-1", "n1-2", "n1-3", "n1-4", "n2-5", "n2-6"]);
    })
    .await;
}

#[test]
fn settings_are_checked() {
    let bad_ttl = MembershipConfig {
        ttl: Duration::from_millis(1500),
        ..MembershipConfig::default()
    };
    assert!(bad_ttl.validate().is_err());
    let slow_heartbeat = MembershipConfig {
        heartbeat: Duration::from_secs(2),
        ..MembershipConfig::default()
    };
    assert!(slow_heartbeat.validate().is_err());
    assert!(MembershipConfig::default().validate().is_ok());
    assert!(LogConfig::default().validate().is_ok());
    for bad in [
        LogConfig {
            stream: "a.b".into(),
            ..LogConfig::default()
        },
        LogConfig {
            subject_prefix: "a.*".into(),
            ..LogConfig::default()
        },
        LogConfig {
            replicas: 0,
            ..LogConfig::default()
        },
        LogConfig {
            max_chunk_bytes: 10,
            ..LogConfig::default()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
    assert!(NodeId::new("node.1").is_err());
    assert!(NodeId::new("").is_err());
}

// ---------------------------------------------------------------------------
// a three-server NATS cluster, R3 stream, leader changes under racing writers

/// Three nats-servers routed into one JetStream cluster on loopback.
struct NatsCluster {
    bin: PathBuf,
    ports: Vec<u16>,
    routes: Vec<u16>,
    dirs: Vec<tempfile::TempDir>,
    servers: Vec<Option<Child>>,
}

impl NatsCluster {
    fn start(n: usize) -> Option<Self> {
        let Some(bin) = nats_server_binary() else {
            eprintln!(
                "SKIPPED: no nats-server (set CONFAB_NATS_SERVER or run bench/peers/install.sh)"
            );
            return None;
        };
        // Routes need every port up front: picked free, then bound by the
        // servers; a port taken in between (another socket of this
        // machine) makes a server exit, and the cluster starts again on
        // other ports.
        for _attempt in 0..5 {
            let mut c = Self {
                bin: bin.clone(),
                ports: (0..n).map(|_| free_port()).collect(),
                routes: (0..n).map(|_| free_port()).collect(),
                dirs: (0..n).map(|_| tempfile::tempdir().unwrap()).collect(),
                servers: (0..n).map(|_| None).collect(),
            };
            for i in 0..n {
                c.spawn(i);
            }
            if (0..n).all(|i| c.wait_listening(i)) {
                return Some(c);
            }
        }
        panic!("the NATS cluster did not start in 5 attempts");
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.ports[i].to_string(), "-js"])
            .args([
                "--server_name",
                &format!("s{i}"),
                "--cluster_name",
                "confabtest",
            ])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", self.routes[i])])
            .args(["--routes", &routes.join(",")])
            .arg("-sd")
            .arg(self.dirs[i].path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.servers[i] = Some(child);
    }

    /// Whether server `i` listens (false if it exited or took too long).
    fn wait_listening(&mut self, i: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.ports[i])).is_err() {
            let exited = match self.servers[i].as_mut() {
                Some(c) => !matches!(c.try_wait(), Ok(None)),
                None => true,
            };
            if exited || Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// `kill -9` of server `i`.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every server's URL, `first` first.
    fn urls(&self, first: usize) -> Vec<String> {
        let n = self.ports.len();
        (0..n)
            .map(|k| format!("nats://127.0.0.1:{}", self.ports[(first + k) % n]))
            .collect()
    }
}

/// A client that knows every server and tries them in order.
async fn connect_all(urls: Vec<String>) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retain_servers_order()
        .connect(urls)
        .await
        .unwrap()
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// Every record of a room, page by page.
async fn read_all(log: &JetStreamLog, r: &RoomId) -> Result<Vec<StoredRecord>, ClusterError> {
    let mut all: Vec<StoredRecord> = Vec::new();
    loop {
        let from = all.last().map_or(Seq(1), |x| x.seq.next());
        let page = log
            .read_range(r, from, Seq(u64::MAX), 4096, usize::MAX)
            .await?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}

/// Opens the R3 room stream once the JetStream cluster has a meta leader.
async fn open_r3_log(client: async_nats::Client, stream: &str) -> Arc<JetStreamLog> {
    let cfg = LogConfig {
        replicas: 3,
        ..test_log_config(stream)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match JetStreamLog::open(client.clone(), cfg.clone()).await {
            Ok(log) => return Arc::new(log),
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the JetStream cluster: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("no JetStream cluster: {e}"),
        }
    }
}

/// The #4320 / #8469 case: two writers race on one room of an R3 stream
/// while its leader is stepped down again and again and once killed with
/// `kill -9` (and restarted). The fence must hold across every leader
/// change: no sequence acknowledged to two writers, the log 1..=head with
/// no gap or fork, every acknowledged record as acknowledged.
#[tokio::test]
async fn the_fence_holds_across_r3_leader_changes() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    bounded(240, async {
        const STREAM: &str = "R3RACE";
        let r = room("r3-race");
        let urls = cluster.lock().unwrap().urls(0);
        let admin = connect_all(urls).await;
        open_r3_log(admin.clone(), STREAM).await;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

        let mut writers = Vec::new();
        for (k, name) in ["A", "B"].into_iter().enumerate() {
            let urls = cluster.lock().unwrap().urls(k + 1);
            let client = connect_all(urls).await;
            let log = open_r3_log(client, STREAM).await;
            let (r, done) = (r.clone(), done.clone());
            writers.push(tokio::spawn(async move {
                let mut acked: Vec<(u64, String)> = Vec::new();
                let (mut takeovers, mut refusals, mut errors) = (0u32, 0u32, 0u32);
                'outer: loop {
                    takeovers += 1;
                    let token = format!("{name}{takeovers}");
                    let mut w = match RoomWriter::take_over(log.clone(), r.clone(), token.clone(), 4).await {
                        Ok(w) => w,
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    loop {
                        let seq = w.head().0 + 1;
                        if done.load(std::sync::atomic::Ordering::Relaxed) {
                            break 'outer;
                        }
                        let p = format!("{token}-{seq}");
                        let recs = vec![(seq, 0, record(seq, 0, &p))];
                        match w.append(&appends(&r, &recs)).await {
                            Ok(_) => acked.push((seq, p)),
                            Err(e) if e.is_fenced() => {
                                refusals += 1;
                                continue 'outer;
                            }
                            // An election in progress, a lost ack that
                            // could not be looked up: the same append
                            // again (fenced on the same chunk).
                            Err(_) => {
                                errors += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                }
                (acked, takeovers, refusals, errors)
            }));
        }

        // Leader changes for 12 s: a step-down request every 400 ms, and a
        // kill -9 of the leader's server after 2 s, restarted 3 s later.
        // Then the writers stop.
        let chaos = {
            let (cluster, done, admin) = (cluster.clone(), done.clone(), admin.clone());
            tokio::spawn(async move {
                let js = async_nats::jetstream::new(admin.clone());
                let (mut stepdowns, mut killed, mut leaders) = (0u32, None, Vec::new());
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(12) {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    let leader = match js.get_stream(STREAM).await {
                        Ok(mut s) => s
                            .info()
                            .await
                            .ok()
                            .and_then(|i| i.cluster.clone())
                            .and_then(|c| c.leader),
                        Err(_) => None,
                    };
                    if let Some(l) = &leader {
                        if leaders.last() != Some(l) {
                            leaders.push(l.clone());
                        }
                    }
                    if killed.is_none() && started.elapsed() > Duration::from_secs(2) {
                        let index = leader
                            .as_deref()
                            .and_then(|l| l.strip_prefix('s'))
                            .and_then(|i| i.parse::<usize>().ok());
                        if let Some(i) = index {
                            cluster.lock().unwrap().kill(i);
                            killed = Some((i, Instant::now()));
                            continue;
                        }
                    }
                    if let Some((i, at)) = killed {
                        let down = cluster.lock().unwrap().servers[i].is_none();
                        if down && at.elapsed() > Duration::from_secs(3) {
                            let c = cluster.clone();
                            tokio::task::spawn_blocking(move || {
                                let mut c = c.lock().unwrap();
                                c.spawn(i);
                                // Its ports were just freed; if another
                                // socket took one, the stream runs on two.
                                if !c.wait_listening(i) {
                                    eprintln!("s{i} did not come back");
                                }
                            })
                            .await
                            .unwrap();
                        }
                    }
                    let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}");
                    if admin.request(subject, Bytes::new()).await.is_ok() {
                        stepdowns += 1;
                    }
                }
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                (stepdowns, killed.map(|(i, _)| i), leaders)
            })
        };

        let mut by_seq: HashMap<u64, String> = HashMap::new();
        let (mut refusals, mut errors, mut takeovers) = (0, 0, 0);
        for w in writers {
            let (acked, took, refused, errs) = w.await.unwrap();
            takeovers += took;
            refusals += refused;
            errors += errs;
            for (seq, p) in acked {
                if let Some(prev) = by_seq.insert(seq, p.clone()) {
                    panic!("sequence {seq} acknowledged twice: {prev} and {p}");
                }
            }
        }
        let (stepdowns, killed, leaders) = chaos.await.unwrap();

        // Every server back, replicas caught up: read the log whole.
        let log = open_r3_log(admin.clone(), STREAM).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let all = loop {
            let all = read_all(&log, &r).await;
            match all {
                Ok(all) if all.len() >= by_seq.len() && !all.is_empty() => break all,
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                other => panic!("the log did not settle: {:?}", other.map(|a| a.len())),
            }
        };
        let head = all.last().unwrap().seq.0;
        assert_eq!(
            all.iter().map(|x| x.seq.0).collect::<Vec<_>>(),
            (1..=head).collect::<Vec<_>>(),
            "no gap, no fork"
        );
        for rec in &all {
            if let Some(acked) = by_seq.get(&rec.seq.0) {
                assert_eq!(&payload_of(rec), acked, "seq {} holds what was acknowledged", rec.seq.0);
            }
        }
        let acked = by_seq.len() as u64;
        let unacked = head - acked;
        eprintln!(
            "R3: {head} sequences, {acked} acknowledged, {unacked} stored without an ack reaching the writer; \
             {takeovers} takeovers, {refusals} refused appends, {errors} errors; \
             {stepdowns} step-downs, killed s{killed:?}, leaders {leaders:?}"
        );
        assert!(stepdowns >= 3 && killed.is_some(), "the leader did change");
        assert!(leaders.len() >= 3, "leaders seen: {leaders:?}");
        assert!(acked >= 50, "the writers made progress: {acked}");
    })
    .await;
}

// ---------------------------------------------------------------------------
// figures (not run by default: `cargo test --test cluster -- --ignored --nocapture`)

/// Fenced appends beside JetStream's own async publish on the same R1 file
/// stream, 128-byte records. Prints; asserts nothing about time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn measure_fenced_appends() {
    let Some(nats) = Nats::start() else { return };
    let payload = "x".repeat(80);
    let rec = |seq: u64| record(seq, 0, &payload);
    assert!((120..=136).contains(&rec(1).len()), "{}", rec(1).len());

    // One room, one record per append: one round trip each.
    let cfg = LogConfig {
        stream: "MEASURE".into(),
        subject_prefix: "t.measure_rooms".into(),
        fanout_prefix: "f.measure_rooms".into(),
        ..LogConfig::default()
    };
    let log = Arc::new(JetStreamLog::open(nats.client().await, cfg).await.unwrap());
    let r = room("one");
    let mut w = RoomWriter::take_over(log.clone(), r.clone(), "m", 0)
        .await
        .unwrap();
    let n = 3000u64;
    let mut lat = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for s in 1..=n {
        let recs = vec![(s, 0, rec(s))];
        let t0 = Instant::now();
        w.append(&appends(&r, &recs)).await.unwrap();
        lat.push(t0.elapsed());
    }
    let el = t.elapsed();
    lat.sort();
    eprintln!(
        "1 room, 1 record per append: {:.0} appends/s, p50 {:?}, p99 {:?}",
        n as f64 / el.as_secs_f64(),
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );

    // One room, a group of records per append (a group commit under load).
    for size in [64u64, 512] {
        let r = room(&format!("grouped-{size}"));
        let mut w = RoomWriter::take_over(log.clone(), r.clone(), "m", 0)
            .await
            .unwrap();
        let t = Instant::now();
        let groups = 64_000 / size;
        for g in 0..groups {
            let recs: Vec<_> = (g * size + 1..=g * size + size)
                .map(|s| (s, 0, rec(s)))
                .collect();
            w.append(&appends(&r, &recs)).await.unwrap();
        }
        eprintln!(
            "1 room, {size} records per append: {:.0} records/s",
            (groups * size) as f64 / t.elapsed().as_secs_f64()
        );
    }

    // 64 rooms at once, one record per append each.
    let t = Instant::now();
    let per_room = 300u64;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let log = log.clone();
        let recs: Vec<Vec<u8>> = (1..=per_room).map(rec).collect();
        tasks.push(tokio::spawn(async move {
            let r = room(&format!("many-{i}"));
            let mut w = RoomWriter::take_over(log, r.clone(), "m", 0).await.unwrap();
            for s in 1..=per_room {
                let one = vec![(s, 0, recs[(s - 1) as usize].clone())];
                w.append(&appends(&r, &one)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "64 rooms, 1 record per append: {:.0} appends/s",
        (64 * per_room) as f64 / t.elapsed().as_secs_f64()
    );

    // Append on one connection to delivery by a follower on another (two
    // nodes' view), one record at a time, at a low rate (~1,000/s).
    let r = room("followed");
    let mut w = RoomWriter::take_over(log.clone(), r.clone(), "m", 0)
        .await
        .unwrap();
    let mut f = Follower::start(&nats.client().await, log.clone(), r.clone())
        .await
        .unwrap();
    let mut lat = Vec::new();
    for s in 1..=2000u64 {
        let recs = vec![(s, 0, rec(s))];
        let t0 = Instant::now();
        w.append(&appends(&r, &recs)).await.unwrap();
        let got = f.next().await.unwrap();
        lat.push(t0.elapsed());
        assert_eq!(got.last().map(|x| x.seq), Some(Seq(s)));
        tokio::time::sleep(Duration::from_micros(800)).await;
    }
    lat.sort();
    eprintln!(
        "append to delivery on another connection: p50 {:?}, p99 {:?}, max {:?}",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        lat[lat.len() - 1]
    );

    // The ceiling: JetStream async publish, 1,024 acks in flight, no fence.
    let js = async_nats::jetstream::new(nats.client().await);
    let body = Bytes::from(rec(1));
    let total = 100_000u32;
    let t = Instant::now();
    let mut inflight = std::collections::VecDeque::new();
    for i in 0..total {
        let ack = js
            .publish(format!("t.measure_rooms.{:x}", i % 64), body.clone())
            .await
            .unwrap();
        inflight.push_back(ack);
        if inflight.len() >= 1024 {
            inflight.pop_front().unwrap().await.unwrap();
        }
    }
    for a in inflight {
        a.await.unwrap();
    }
    eprintln!(
        "JetStream async publish, 1,024 in flight: {:.0} msgs/s",
        f64::from(total) / t.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// the [cluster] section

#[tokio::test]
async fn the_cluster_section_connects_with_its_token_and_builds_the_parts() {
    let Some(nats) = Nats::start_with(&["--auth", "s3cret"]) else {
        return;
    };
    bounded(30, async {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let mut config = confab_broker::config::Config::default();
        config.data_dir = dir.path().join("data");
        config.cluster = confab_broker::config::ClusterConfig {
            nats_urls: vec![format!("nats://127.0.0.1:{}", nats.port)],
            node_id: "n1".into(),
            advertised_address: "n1.local:7400".into(),
            token_file: token.clone(),
            stream: "FROMCONFIG".into(),
            subject_prefix: "t.fromconfig".into(),
            fanout_prefix: "f.fromconfig".into(),
            ..Default::default()
        };
        config.validate().unwrap();
        let c = &config.cluster;
        let client = c.connect().await.unwrap();
        let log = Arc::new(
            JetStreamLog::open(client.clone(), c.log_config())
                .await
                .unwrap(),
        );
        let r = room("configured");
        let mut w = RoomWriter::take_over(log.clone(), r.clone(), "n1", 8)
            .await
            .unwrap();
        let recs = vec![(1, 0, record(1, 0, "hello"))];
        w.append(&appends(&r, &recs)).await.unwrap();
        assert_eq!(log.bounds(&r).await.unwrap().head, Seq(1));
        let m = Membership::join(
            client,
            c.membership_config(),
            c.node().unwrap(),
            c.advertised_address.clone(),
        )
        .await
        .unwrap();
        assert_eq!(m.live().address(&node("n1")), Some("n1.local:7400"));

        // A wrong token is refused.
        std::fs::write(&token, "wrong").unwrap();
        assert!(
            c.connect().await.is_err(),
            "the server refuses a wrong token"
        );

        // And `confab serve` does not run cluster mode yet: it says so
        // rather than start a single node.
        let err = match confab_broker::Broker::builder(config.clone()).start().await {
            Ok(_) => panic!("a broker started with [cluster] set"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("cluster"), "{err}");
    })
    .await;
}
