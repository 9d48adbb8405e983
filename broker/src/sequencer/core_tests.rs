//! The sequencer core without threads or sockets: random operation
//! sequences (publishes, retries, group commits that fail before or after
//! the engine wrote them, reads answered late or failing, restarts,
//! retention trims) against the in-memory log, with the invariants checked
//! after every step.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use confab_codec::{DeviceId, EventRecord, MessageKind, RoomId, Seq, UserId};
use proptest::prelude::*;
use tokio::sync::Semaphore;

use super::core::{Core, Outcome};
use super::reads::{read, Loaded, Need};
use super::{PublishReq, SeqMsg};
use crate::base::sender_key;
use crate::config::{RoomsConfig, StorageConfig};
use crate::fanout::ConnCtx;
use crate::fanout::Outbox;
use crate::rooms::RoomRegistry;
use crate::stats::Stats;
#[cfg(feature = "rocksdb")]
use crate::storage::RocksLog;
use crate::storage::{
    idempotency_keys, CommitFault as Fate, FaultyLog, MemoryLog, Original, RoomLog,
};

const ROOMS: [&str; 3] = ["a", "b", "c"];
const DEVICES: usize = 3;

/// One step of a scenario.
#[derive(Debug, Clone)]
enum Op {
    /// Queue a publish; `id` 0 carries no client message id.
    Publish { device: usize, room: usize, id: u64 },
    /// Run the queued publishes (and the parked ones that can go on) as
    /// one group.
    Step { fate: Fate },
    /// Make the reads the core asked for, and give it the answers.
    Answer { fail: bool },
    /// Drop the core (a crash: nothing in memory survives) and start anew.
    Restart,
    /// Retention: keep only the newest `keep` entries of a room.
    Trim { room: usize, keep: u64 },
    /// Drop every idle room from memory, as the driver does between steps
    /// (here with no idle time at all: every room not waited on).
    Evict,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..DEVICES, 0..ROOMS.len(), 0u64..16)
            .prop_map(|(device, room, id)| Op::Publish { device, room, id }),
        4 => prop_oneof![
            6 => Just(Fate::None),
            1 => Just(Fate::Refuse),
            1 => Just(Fate::WriteThenFail),
            1 => Just(Fate::RefuseFirstRoom),
        ]
        .prop_map(|fate| Op::Step { fate }),
        3 => prop::bool::weighted(0.1).prop_map(|fail| Op::Answer { fail }),
        1 => Just(Op::Restart),
        1 => (0..ROOMS.len(), 1u64..6).prop_map(|(room, keep)| Op::Trim { room, keep }),
        2 => Just(Op::Evict),
    ]
}

struct Harness {
    log: Arc<FaultyLog>,
    core: Core,
    conns: Vec<Arc<ConnCtx>>,
    queued: Vec<SeqMsg>,
    clock: u64,
    /// (room, device, id) -> the original every acknowledgement must name.
    acked: HashMap<(usize, usize, u64), Original>,
    /// (room, seq) -> the record ever seen there (a sequence is never
    /// reused for anything else).
    seen: HashMap<(usize, u64), Bytes>,
    /// The oldest sequence each room still retains.
    first: [u64; ROOMS.len()],
    /// Reads asked for and not answered yet.
    needs: Vec<Need>,
    /// Numbers the publishes in the order they are queued.
    next_request: u32,
    /// Per room, the number of the last publish stored: publishes of a
    /// room are stored in the order they came.
    last_stored: [u32; ROOMS.len()],
}

fn new_core(log: &Arc<FaultyLog>) -> Core {
    let storage = StorageConfig {
        dedup_window: 8,
        max_batch: 8,
        ..StorageConfig::default()
    };
    Core::new(
        log.clone(),
        Arc::new(RoomRegistry::default()),
        storage,
        RoomsConfig::default(),
        Arc::new(Stats::default()),
    )
}

impl Harness {
    fn new() -> Self {
        Self::on(Arc::new(MemoryLog::new()))
    }

    fn on(storage: Arc<dyn RoomLog>) -> Self {
        let log = Arc::new(FaultyLog::new(storage));
        let stats = Arc::new(Stats::default());
        let conns = (0..DEVICES)
            .map(|d| {
                let user = UserId::new(format!("u{d}")).expect("id");
                let device = DeviceId::new("phone").expect("id");
                Arc::new(ConnCtx {
                    sender_key: sender_key(user.as_str(), device.as_str()),
                    user,
                    device,
                    outbox: Arc::new(Outbox::new(16, stats.clone())),
                    inflight: Semaphore::new(0),
                    requests: Arc::new(Semaphore::new(0)),
                    system: false,
                    direct: None,
                    version: confab_codec::PROTOCOL_VERSION,
                })
            })
            .collect();
        Self {
            core: new_core(&log),
            log,
            conns,
            queued: Vec::new(),
            clock: 1_000,
            acked: HashMap::new(),
            seen: HashMap::new(),
            first: [1; ROOMS.len()],
            needs: Vec::new(),
            next_request: 0,
            last_stored: [0; ROOMS.len()],
        }
    }

    fn room(i: usize) -> RoomId {
        RoomId::new(ROOMS[i]).expect("id")
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Publish { device, room, id } => {
                self.next_request += 1;
                self.queued.push(SeqMsg::Publish(PublishReq {
                    conn: self.conns[device].clone(),
                    request_id: self.next_request,
                    no_reply: false,
                    room: Self::room(room),
                    client_msg_id: id,
                    kind: MessageKind::MESSAGE,
                    refers_to: None,
                    thread: None,
                    payload: Bytes::from(format!("{device}/{id}")),
                    received: Instant::now(),
                }));
            }
            Op::Step { fate } => self.step(fate),
            Op::Evict => {
                self.core.evict_idle(self.clock, 0);
            }
            Op::Answer { fail } => self.answer(fail),
            Op::Restart => {
                self.queued.clear();
                self.needs.clear();
                self.core = new_core(&self.log);
            }
            Op::Trim { room, keep } => {
                // Alone in its group, so that what the group acknowledged
                // can be checked against the log after it.
                self.settle();
                let id = Self::room(room);
                let b = self.log.bounds(&id).expect("bounds");
                let before = Seq(b.head.0.saturating_sub(keep) + 1);
                if before <= b.first || b.head.0 == 0 {
                    return;
                }
                let forget =
                    idempotency_keys(self.log.as_ref(), &id, b.first, before).expect("keys");
                self.queued.push(SeqMsg::Trim {
                    room: id,
                    before,
                    forget,
                });
                self.step(Fate::None);
                assert_eq!(
                    self.core.parked(),
                    0,
                    "a trim of an idle room is not parked"
                );
                self.first[room] = self.log.bounds(&Self::room(room)).expect("bounds").first.0;
                // Retries of trimmed messages may be stored anew.
                let first = self.first;
                self.acked
                    .retain(|(r, _, _), original| original.seq.0 >= first[*r]);
            }
        }
    }

    /// Makes every read asked for (failing them all if `fail`) and hands
    /// the answers to the core, in an order that varies.
    fn answer(&mut self, fail: bool) {
        self.log.set_read_fault(fail);
        let mut needs = std::mem::take(&mut self.needs);
        if self.clock.is_multiple_of(3) {
            needs.reverse();
        }
        for need in needs {
            let answer = read(self.log.as_ref(), &need);
            self.core.supply(Loaded { need, answer });
        }
        self.log.set_read_fault(false);
    }

    /// Steps with `fate` (answering reads in between) until nothing waits:
    /// the queued requests meet the fate in the step that commits them.
    fn step_ready(&mut self, fate: Fate) {
        for _ in 0..100 {
            self.step(fate);
            if self.core.idle() {
                return;
            }
            self.answer(false);
        }
        panic!("requests still wait after 100 rounds of reads");
    }

    /// Steps and answers until nothing waits. A parked request always
    /// has a read on its way, or waits behind one that has.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            self.step(Fate::None);
            if self.core.idle() {
                return;
            }
            assert!(
                !self.needs.is_empty(),
                "{} requests wait for no read",
                self.core.parked()
            );
            self.answer(false);
        }
        panic!("requests still wait after 10,000 rounds of reads");
    }

    fn step(&mut self, fate: Fate) {
        self.log.set_commit_fault(fate);
        self.clock += 10;
        let mut batch = std::mem::take(&mut self.queued);
        let outcomes = self.core.step(&mut batch, self.clock);
        // The room a per-room refusal hit: the first one the group wrote,
        // whose outcomes, all refusals, come last.
        let refused = outcomes.iter().rev().find_map(|o| match o {
            Outcome::Rejected { req, .. } if fate == Fate::RefuseFirstRoom => {
                Some(req.room.clone())
            }
            _ => None,
        });
        self.log.set_commit_fault(Fate::None);
        // Reads are made after the commit, as the driver does.
        self.needs.extend(self.core.take_needs());
        self.check_log();
        for outcome in outcomes {
            let (req, original, stored) = match outcome {
                Outcome::Stored { req, seq, .. } => (
                    req,
                    Original {
                        seq,
                        timestamp_us: self.clock,
                    },
                    true,
                ),
                Outcome::Duplicate { req, original } => (req, original, false),
                Outcome::Rejected { .. } => continue,
                // An entry of a failed commit that was stored after all:
                // fanned out as the log holds it.
                Outcome::Recovered { room, seq, frame } => {
                    let held = self
                        .log
                        .read_range(&room.id, seq, seq, 1, usize::MAX)
                        .expect("read");
                    let record =
                        &frame[confab_codec::raw::event_record_range(&room.id, frame.len())];
                    assert_eq!(
                        held.first().map(|r| &r.bytes[..]),
                        Some(record),
                        "recovered {seq}"
                    );
                    continue;
                }
                other => panic!("unexpected outcome {other:?}"),
            };
            // A duplicate of an earlier commit may be acknowledged whatever
            // this group's fate; nothing of a failed group may, and of a
            // group that failed for one room (cluster mode's fenced room),
            // nothing of that room.
            if stored && fate == Fate::RefuseFirstRoom {
                assert_ne!(
                    Some(&req.room),
                    refused.as_ref(),
                    "acknowledged a publish of the refused room"
                );
            } else if stored {
                assert_eq!(fate, Fate::None, "acknowledged a failed commit");
            }
            let room = ROOMS
                .iter()
                .position(|r| *r == req.room.as_str())
                .expect("room");
            let device = self
                .conns
                .iter()
                .position(|c| Arc::ptr_eq(c, &req.conn))
                .expect("device");
            if stored {
                assert!(
                    req.request_id > self.last_stored[room],
                    "publish {} of room {room} stored after publish {}",
                    req.request_id,
                    self.last_stored[room]
                );
                self.last_stored[room] = req.request_id;
            }
            // The acknowledged entry is in the log, committed, and is this
            // publish (or the one it retries).
            let rec = self
                .log
                .read_range(&req.room, original.seq, original.seq, 1, usize::MAX)
                .expect("read")
                .pop()
                .unwrap_or_else(|| panic!("acked {original:?} in {room} is not in the log"));
            let ev = EventRecord::decode(rec.bytes).expect("decode");
            assert_eq!(ev.sender, req.conn.user);
            assert_eq!(ev.client_msg_id, req.client_msg_id);
            assert_eq!(ev.timestamp_us, original.timestamp_us);
            if req.client_msg_id == 0 {
                assert!(stored, "a publish without an id is never a duplicate");
                continue;
            }
            let key = (room, device, req.client_msg_id);
            match self.acked.get(&key) {
                Some(first) => assert_eq!(
                    *first, original,
                    "a retry must get the original's sequence and timestamp"
                ),
                None => {
                    self.acked.insert(key, original);
                }
            }
        }
    }

    /// Every room is `first..=head` without a gap, no sequence ever held
    /// two records, and no (device, id) is stored twice in a room.
    fn check_log(&mut self) {
        for (r, name) in ROOMS.iter().enumerate() {
            let id = RoomId::new(*name).expect("id");
            let b = self.log.bounds(&id).expect("bounds");
            let recs = self
                .log
                .read_range(&id, Seq(0), Seq(u64::MAX), usize::MAX, usize::MAX)
                .expect("read");
            let seqs: Vec<u64> = recs.iter().map(|r| r.seq.0).collect();
            let expected: Vec<u64> = (b.first.0..=b.head.0).collect();
            if b.head.0 > 0 {
                assert_eq!(seqs, expected, "room {name} has a gap");
            }
            let mut ids = BTreeMap::new();
            for rec in recs {
                if let Some(before) = self.seen.insert((r, rec.seq.0), rec.bytes.clone()) {
                    assert_eq!(before, rec.bytes, "seq {} of {name} was reused", rec.seq);
                }
                let ev = EventRecord::decode(rec.bytes).expect("decode");
                if ev.client_msg_id != 0 {
                    let dup = ids.insert((ev.sender.clone(), ev.client_msg_id), ev.seq);
                    assert!(
                        dup.is_none(),
                        "{}/{} stored twice in {name}: {dup:?} and {}",
                        ev.sender,
                        ev.client_msg_id,
                        ev.seq
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        max_shrink_iters: 10_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn invariants_hold_under_failing_commits_and_restarts(ops in prop::collection::vec(op(), 1..120)) {
        let mut h = Harness::new();
        for op in ops {
            h.apply(op);
        }
        h.settle();
    }
}

#[cfg(feature = "rocksdb")]
proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    /// The same on RocksDB, whose index packs fresh ids into runs.
    #[test]
    fn invariants_hold_on_rocksdb(ops in prop::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = RocksLog::open(dir.path(), 1 << 20).expect("open");
        let mut h = Harness::on(Arc::new(log));
        for op in ops {
            h.apply(op);
        }
        h.settle();
    }
}

/// The bug the property test found first: a retry in the same group as its
/// original, when the group's commit fails, was acknowledged with the
/// sequence that the failure gave back.
#[test]
fn a_retry_in_a_failed_group_is_not_acknowledged() {
    let mut h = Harness::new();
    for _ in 0..2 {
        h.apply(Op::Publish {
            device: 0,
            room: 0,
            id: 7,
        });
    }
    h.step_ready(Fate::Refuse);
    h.apply(Op::Publish {
        device: 1,
        room: 0,
        id: 1,
    });
    h.settle();
    let b = h.log.bounds(&Harness::room(0)).expect("bounds");
    assert_eq!(b.head, Seq(1), "the next publish takes seq 1");
}

/// A commit that the engine wrote before failing is not written over: the
/// room's head is read again, and the retry finds the original.
#[test]
fn a_commit_written_before_failing_is_neither_reused_nor_duplicated() {
    let mut h = Harness::new();
    h.apply(Op::Publish {
        device: 0,
        room: 0,
        id: 3,
    });
    h.step_ready(Fate::WriteThenFail);
    h.apply(Op::Publish {
        device: 1,
        room: 0,
        id: 4,
    });
    h.apply(Op::Publish {
        device: 0,
        room: 0,
        id: 3,
    });
    h.settle();
    let b = h.log.bounds(&Harness::room(0)).expect("bounds");
    assert_eq!(b.head, Seq(2));
    assert_eq!(
        h.acked[&(0, 0, 3)].seq,
        Seq(1),
        "the retry got the original"
    );
    assert_eq!(h.acked[&(0, 1, 4)].seq, Seq(2));
}

/// The index, not memory, answers a retry after many other publishes and a
/// restart.
#[test]
fn a_retry_after_a_long_gap_and_a_restart_gets_its_original() {
    let mut h = Harness::new();
    h.apply(Op::Publish {
        device: 0,
        room: 1,
        id: 5,
    });
    h.settle();
    for i in 0..3_000u64 {
        h.apply(Op::Publish {
            device: (i % 2) as usize + 1,
            room: (i % 3) as usize,
            id: 100 + i,
        });
        if i % 8 == 7 {
            h.settle();
        }
    }
    h.settle();
    h.apply(Op::Restart);
    h.apply(Op::Publish {
        device: 0,
        room: 1,
        id: 5,
    });
    h.settle();
    assert_eq!(h.acked[&(1, 0, 5)].seq, Seq(1));
}

/// A group refused for a full disk: each of its publishes is answered
/// `StorageFull` (retryable, not `Internal`), nothing is stored, and their
/// retries with the same ids, once space is back, are stored once each,
/// without a gap.
#[test]
fn a_full_disk_refuses_with_storage_full_and_retries_are_stored_once() {
    use confab_codec::ErrorCode;

    let mut h = Harness::new();
    let publish = |h: &mut Harness, id| {
        h.apply(Op::Publish {
            device: 0,
            room: 0,
            id,
        })
    };
    for id in 1..=3 {
        publish(&mut h, id);
    }
    h.log.set_commit_fault(Fate::NoSpace);
    let mut group = std::mem::take(&mut h.queued);
    let mut outcomes = Vec::new();
    // The room and the device's mark are read first; the group then
    // meets the full disk.
    for _ in 0..10 {
        outcomes.extend(h.core.step(&mut group, 2_000));
        h.needs.extend(h.core.take_needs());
        if h.core.idle() {
            break;
        }
        h.answer(false);
    }
    h.log.set_commit_fault(Fate::None);
    let codes: Vec<ErrorCode> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Rejected { code, .. } => *code,
            other => panic!("not refused: {other:?}"),
        })
        .collect();
    assert_eq!(codes, [ErrorCode::StorageFull; 3]);
    assert!(h.log.space().full);
    assert_eq!(
        h.log.bounds(&Harness::room(0)).expect("bounds").head,
        Seq(0)
    );
    for id in 1..=3 {
        publish(&mut h, id);
    }
    h.settle();
    assert!(!h.log.space().full, "a commit that goes through ends it");
    for id in 1..=3 {
        assert_eq!(h.acked[&(0, 0, id)].seq, Seq(id), "stored once, in order");
    }
}

/// Idle rooms leave memory and come back from storage with the same
/// head: the next publish continues the sequence.
#[test]
fn an_evicted_room_is_read_again_and_continues_its_sequence() {
    let mut h = Harness::new();
    for id in 1..=3 {
        h.apply(Op::Publish {
            device: 0,
            room: 0,
            id,
        });
    }
    h.settle();
    assert_eq!(h.core.rooms.len(), 1);
    // Not idle long enough: kept.
    assert_eq!(h.core.evict_idle(h.clock, 1_000_000), 0);
    assert_eq!(h.core.evict_idle(h.clock + 1_000_000, 1_000_000), 1);
    assert!(h.core.rooms.is_empty());
    h.apply(Op::Publish {
        device: 1,
        room: 0,
        id: 1,
    });
    h.settle();
    let b = h.log.bounds(&Harness::room(0)).expect("bounds");
    assert_eq!(b.head, Seq(4), "the sequence continues after the reload");
}

/// Found by the property test with per-room refusals (cluster mode). u1's
/// publish of id 3 in `a` asked for its index entry (its mark was 10). The
/// group's refusal of `b` made u1's mark be read again (0), which judged
/// the publish fresh: it was stored at 2 and the index answer "not stored"
/// stayed behind. The retry of id 3 at the end took that answer and was
/// stored again at 7. A staged publish now drops such answers.
#[test]
fn a_retry_after_another_room_was_refused_gets_its_original() {
    let p = |device, room, id| Op::Publish { device, room, id };
    let ops = vec![
        p(0, 1, 9),
        p(1, 1, 10),
        p(2, 0, 1),
        p(1, 0, 3),
        p(1, 2, 9),
        Op::Step { fate: Fate::None },
        p(0, 0, 1),
        Op::Answer { fail: false },
        p(1, 0, 4),
        p(0, 0, 2),
        p(0, 2, 1),
        p(0, 0, 3),
        Op::Step { fate: Fate::None },
        p(0, 2, 4),
        Op::Answer { fail: false },
        Op::Step {
            fate: Fate::RefuseFirstRoom,
        },
        p(1, 0, 3),
        p(0, 1, 2),
        p(0, 1, 1),
    ];
    let mut h = Harness::new();
    for op in ops {
        h.apply(op);
    }
    h.settle();
}
