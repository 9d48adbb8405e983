//! Cluster mode's building blocks against a real `nats-server` on
//! 127.0.0.1: the JetStream room log, fenced appends and step-down,
//! takeover, following a room from another node, and the `[cluster]`
//! section. (Membership: cluster_nodes.rs; R3 leader changes:
//! cluster_r3.rs; figures: cluster_measure.rs; the server processes:
//! cluster_support.)
#![allow(clippy::unwrap_used)]

mod cluster_support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cluster_support::*;
use confab_broker::cluster::{
    ClusterError, Follower, JetStreamLog, LogConfig, Membership, MembershipConfig, NodeId,
    RoomWriter,
};
use confab_broker::storage::StoredRecord;
use confab_codec::Seq;
use futures_util::StreamExt;

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
        a.append(&appends(&r, &records(1, 3, "A"))).await.unwrap();

        // A node follows the room from now (head 3).
        let follower_log = open_log(&nats, "FOLLOW").await;
        let mut f = Follower::start(&nats.client().await, follower_log.clone(), r.clone())
            .await
            .unwrap();
        assert_eq!(f.applied(), Seq(3));

        a.append(&appends(&r, &records(4, 5, "A"))).await.unwrap();
        let mut b = RoomWriter::take_over(log.clone(), r.clone(), "B", 8)
            .await
            .unwrap();
        b.append(&appends(&r, &records(6, 6, "B"))).await.unwrap();
        let refused = a
            .append(&appends(&r, &records(6, 7, "A")))
            .await
            .unwrap_err();
        assert!(refused.is_fenced(), "{refused}");
        b.append(&appends(&r, &records(7, 9, "B"))).await.unwrap();

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
        b.append(&appends(&r, &records(10, 10, "B"))).await.unwrap();
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

        // And a broker in cluster mode with a token NATS refuses does not
        // start (nor run as a single node): it says why.
        let err = match confab_broker::Broker::builder(config.clone()).start().await {
            Ok(_) => panic!("a broker started with [cluster] set"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("cluster"), "{err}");
    })
    .await;
}
