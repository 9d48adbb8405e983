//! Damaged files between restarts of the real `confab` binary: a seeded
//! set of bit flips and truncations in WAL, table (SST) and MANIFEST
//! files. `confab admin verify` must report every one, naming the file;
//! the broker must refuse to start, or start and never serve a wrong byte
//! nor give a stored sequence to a new message (except where a truncation
//! of the newest WAL looks exactly like a write cut short by a crash; see
//! docs/reliability.md, "Corruption").
//!
//! `CORRUPTION_INJECTIONS` (default 90) and `CORRUPTION_SEED` set another
//! run (scripts/corruption.sh).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use confab_codec::*;

const ROOMS: usize = 4;

/// Publishes `count` messages, pipelined, spread over the rooms.
async fn load(addr: SocketAddr, rooms: &[RoomId], round: u64, count: u64) {
    let mut c = Conn::open(addr, "writer", "d").await;
    let mut inflight = 0usize;
    let mut sent = 0u64;
    let mut acked = 0u64;
    while acked < count {
        while inflight < 64 && sent < count {
            sent += 1;
            let cmid = round * 1_000_000 + sent;
            let r = &rooms[(sent as usize) % rooms.len()];
            let body = format!("r{round}-{sent}-{}", "y".repeat((sent % 300) as usize));
            let rid = c.request_id();
            c.send_frame(Conn::publish_frame(rid, r, cmid, body.as_bytes()))
                .await;
            inflight += 1;
        }
        let f = c.recv().await.expect("an ack");
        if let Body::PublishAck(_) = f.body {
            inflight -= 1;
            acked += 1;
        }
    }
}

fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Runs `confab admin verify`: (exit status success, everything printed).
fn verify(dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["admin", "--data-dir", dir.to_str().unwrap(), "verify"])
        .env_clear()
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every room's content: (room, seq) -> (sender, client message id, payload).
type Content = HashMap<(RoomId, u64), (String, u64, Bytes)>;

/// The damaged files' kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Wal,
    Table,
    Manifest,
}

/// Where the records of a WAL or MANIFEST file end (RocksDB's log
/// format: 32 KiB blocks, 7-byte record headers, zero padding): a file cut
/// exactly there is a shorter valid log, which no checksum can tell from
/// one that was never written further.
fn record_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = vec![0];
    let mut at = 0;
    while at + 7 <= bytes.len() {
        let left = 32768 - at % 32768;
        if left < 7 {
            at += left;
            ends.push(at.min(bytes.len()));
            continue;
        }
        let len = usize::from(u16::from_le_bytes([bytes[at + 4], bytes[at + 5]]));
        at += 7 + len;
        ends.push(at);
        // The padding after a record ends is just as silent.
        let left = 32768 - at % 32768;
        if left < 7 {
            ends.extend(at + 1..at + left);
        }
    }
    ends
}

fn files_of(dir: &Path, kind: Kind) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let size = std::fs::metadata(p).unwrap().len();
            size > 0
                && match kind {
                    Kind::Wal => name.ends_with(".log"),
                    Kind::Table => name.ends_with(".sst"),
                    Kind::Manifest => name.starts_with("MANIFEST-"),
                }
        })
        .collect();
    v.sort();
    v
}

/// What the broker did on one damaged directory.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    /// It would not start.
    Refused,
    /// It started; reads that failed, and rooms whose head went back.
    Started {
        read_errors: usize,
        heads_back: usize,
    },
}

/// Starts the broker on `dir` and checks what it serves against
/// `expected`. Panics on a wrong byte, or (unless `may_lose_tail`) on a
/// sequence given to a new message that was already stored.
async fn serve(
    dir: &Path,
    rooms: &[RoomId],
    expected: &Content,
    heads: &HashMap<RoomId, u64>,
    may_lose_tail: bool,
    what: &str,
) -> Served {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = confab_command(dir, port, "fsync", &[])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return Served::Refused;
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "{what}: neither up nor down");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = Conn::open(addr, "auditor", "d").await;
    let mut read_errors = 0;
    let mut heads_back = 0;
    for r in rooms {
        let mut anchor = 0;
        let mut last = 0;
        loop {
            let rid = c
                .send(HistoryRequest {
                    room: r.clone(),
                    direction: Direction::After,
                    anchor: Seq(anchor),
                    limit: 1000,
                })
                .await;
            let page = match c.wait_reply(rid, |_| true).await.body {
                Body::HistoryPage(p) => p,
                Body::Error(e) => {
                    assert_eq!(e.code, ErrorCode::Internal, "{what}: {e:?}");
                    read_errors += 1;
                    break;
                }
                other => panic!("{what}: {other:?}"),
            };
            for e in &page.events {
                let want = expected.get(&(r.clone(), e.seq.0));
                let got = (e.sender.to_string(), e.client_msg_id, e.payload.clone());
                assert_eq!(
                    want,
                    Some(&got),
                    "{what}: {r} #{} served wrong bytes",
                    e.seq
                );
                last = e.seq.0;
            }
            if let Some(e) = page.events.last() {
                anchor = e.seq.0;
            }
            if !page.has_more {
                break;
            }
        }
        let head = heads[r];
        if last < head {
            heads_back += 1;
        }
        // A new message never takes a stored sequence.
        let rid = c.request_id();
        c.send_frame(Conn::publish_frame(rid, r, 9_999_999, b"after the damage"))
            .await;
        match c.wait_reply(rid, |_| true).await.body {
            Body::PublishAck(a) => {
                if !may_lose_tail {
                    assert!(
                        a.seq.0 > head,
                        "{what}: {r} renumbered: a new message got #{} (head was {head})",
                        a.seq
                    );
                }
            }
            Body::Error(e) => assert_eq!(e.code, ErrorCode::Internal, "{what}: {e:?}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    kill(child);
    Served::Started {
        read_errors,
        heads_back,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_injected_corruption_is_detected() {
    let started = Instant::now();
    let injections: usize = std::env::var("CORRUPTION_INJECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(90);
    let seed: u64 = std::env::var("CORRUPTION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(17);
    // Replays one injection and keeps its directory.
    let only: Option<usize> = std::env::var("CORRUPTION_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    std::fs::create_dir_all(&pristine).unwrap();
    let rooms: Vec<RoomId> = (0..ROOMS).map(|i| room(&format!("c-{i}"))).collect();

    // Three rounds of load, each ended by kill -9: the restarts flush the
    // WAL into table files and write the MANIFEST; the last round's WAL
    // stays.
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for round in 1..=3 {
        let child = spawn_confab(&pristine, port, "fsync");
        wait_listening(addr).await;
        load(addr, &rooms, round, 3000).await;
        kill(child);
    }
    // The expected content, read back once.
    let child = {
        let work = tmp.path().join("read");
        copy_dir(&pristine, &work);
        let child = spawn_confab(&work, port, "fsync");
        wait_listening(addr).await;
        child
    };
    let mut c = Conn::open(addr, "auditor", "d").await;
    let mut expected = Content::new();
    let mut heads = HashMap::new();
    for r in &rooms {
        let events = read_all(&mut c, r).await;
        heads.insert(r.clone(), events.len() as u64);
        for e in events {
            expected.insert(
                (r.clone(), e.seq.0),
                (e.sender.to_string(), e.client_msg_id, e.payload),
            );
        }
    }
    kill(child);
    assert_eq!(expected.len(), 9000);

    // No false alarm on the undamaged directory.
    let (ok, report) = verify(&pristine);
    assert!(ok, "verify on an undamaged directory: {report}");
    assert!(report.contains("verdict: ok"), "{report}");

    let kinds = [Kind::Wal, Kind::Table, Kind::Manifest];
    for k in kinds {
        assert!(
            !files_of(&pristine, k).is_empty(),
            "no {k:?} file to damage"
        );
    }
    let mut rng = Rng(seed);
    let mut detected = 0;
    let mut refused = 0;
    let mut tails_lost = 0;
    let mut failed_reads = 0;
    let mut keep = false;
    let mut silent = 0;
    for i in 0..injections {
        let kind = kinds[i % kinds.len()];
        let flip = (i / kinds.len()).is_multiple_of(2);
        let work = tmp.path().join(format!("inj-{i}"));
        copy_dir(&pristine, &work);
        let files = files_of(&work, kind);
        let file = &files[rng.below(files.len() as u64) as usize];
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut bytes = std::fs::read(file).unwrap();
        let mut at_record_end = false;
        let what = if flip {
            let at = rng.below(bytes.len() as u64) as usize;
            let bit = rng.below(8);
            bytes[at] ^= 1 << bit;
            format!(
                "injection {i}: bit {bit} of byte {at} of {name} ({kind:?}, {} bytes)",
                bytes.len()
            )
        } else {
            let len = rng.below(bytes.len() as u64) as usize;
            at_record_end = kind != Kind::Table && record_ends(&bytes).contains(&len);
            let what = format!(
                "injection {i}: {name} ({kind:?}) cut from {} to {len} bytes",
                bytes.len()
            );
            bytes.truncate(len);
            what
        };
        std::fs::write(file, &bytes).unwrap();
        if only.is_some_and(|o| o != i) {
            std::fs::remove_dir_all(&work).unwrap();
            continue;
        }

        let (ok, report) = verify(&work);
        let found = !ok && report.contains(&name);
        if at_record_end {
            // Not counted, either way; the broker is still checked.
            silent += 1;
        } else if found {
            detected += 1;
        } else {
            eprintln!("{report}");
        }
        let may_lose_tail = kind == Kind::Wal && !flip;
        let served = serve(&work, &rooms, &expected, &heads, may_lose_tail, &what).await;
        eprintln!(
            "{what}: {}, broker {served:?}",
            if at_record_end {
                "cut at a record end (not counted)"
            } else if found {
                "detected"
            } else {
                "MISSED"
            }
        );
        match served {
            Served::Refused => refused += 1,
            Served::Started {
                heads_back,
                read_errors,
            } => {
                failed_reads += usize::from(read_errors > 0);
                if heads_back > 0 && read_errors == 0 {
                    tails_lost += 1;
                }
            }
        }
        if only.is_some() || !(found || at_record_end) {
            // Kept for a look (with the undamaged directory beside it).
            eprintln!("kept: {}", work.display());
            keep = true;
        } else {
            std::fs::remove_dir_all(&work).unwrap();
        }
    }
    if keep {
        let _ = tmp.keep();
    }
    eprintln!(
        "{detected} of {} corruptions detected by verify ({silent} cuts at a record end not counted); the broker refused to start on {refused}, failed reads (Internal) on {failed_reads}, started without a WAL tail on {tails_lost}; {:.1} s",
        injections - silent,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        detected,
        injections - silent,
        "every injected corruption is detected"
    );
}

/// Found by this test: RocksDB 11.8 loops forever, at 100 % CPU, opening a
/// database whose WAL (or MANIFEST) holds a record whose type byte turned
/// into a "recyclable" one (one bit: 1 -> 5), in every WAL recovery mode.
/// The broker reads its logs itself first and refuses to start, naming the
/// file; `verify` reports it and returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_record_turned_recyclable_is_refused_not_looped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let rooms = vec![room("hang")];
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = spawn_confab(&dir, port, "fsync");
    wait_listening(addr).await;
    load(addr, &rooms, 1, 50).await;
    kill(child);
    let wal = files_of(&dir, Kind::Wal).pop().expect("a WAL");
    let name = wal.file_name().unwrap().to_string_lossy().into_owned();
    let mut bytes = std::fs::read(&wal).unwrap();
    // The first record's type: full (1) becomes recyclable full (5).
    assert_eq!(bytes[6], 1);
    bytes[6] ^= 4;
    std::fs::write(&wal, &bytes).unwrap();

    let started = Instant::now();
    let (ok, report) = verify(&dir);
    assert!(!ok && report.contains(&name), "{report}");
    let out = confab_command(&dir, port, "fsync", &[])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let waited = tokio::task::spawn_blocking(move || out.wait_with_output().unwrap());
    let out = tokio::time::timeout(WAIT, waited)
        .await
        .expect("the broker refuses instead of looping")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&name), "names the file: {stderr}");
    assert!(started.elapsed() < WAIT);
}
