//! Retention: per-room maximum age and/or count, enforced by a periodic
//! sweep.
//!
//! The sweep runs as a task that does its reads in `spawn_blocking`: for each
//! room with a log it finds the cut point (the oldest sequence to keep) and
//! asks the sequencer to trim below it. The sequencer deletes the range in
//! one write (a RocksDB range tombstone) and moves the room's `first` bound
//! in the same thread that stamps subscriptions, so what `SubscribeAck`,
//! `RoomInfo`, history and catch-up report never disagrees with the log.
//!
//! The sweep also reads the entries it is about to trim, so that the
//! sequencer deletes their idempotency entries in the same write: a retry
//! is recognised for as long as its message is retained, and the index
//! shrinks with the log. Large cuts go in chunks of 16,384 entries.
//!
//! The head entry of a room is never trimmed: the sequencer learns a room's
//! head from its newest entry after a restart, so deleting it would let
//! sequences be reused.

use std::sync::Arc;
use std::time::Duration;

use confab_codec::{EventRecord, RoomId, Seq};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::base::now_us;
pub use crate::config::{RetentionConfig, RoomRetention};
use crate::sequencer::{SeqMsg, SeqTx};
use crate::storage::{idempotency_keys, LogBounds, RoomLog, StorageError};

/// The limits that apply to one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Policy {
    pub(crate) max_age_us: u64,
    pub(crate) max_count: u64,
}

impl RetentionConfig {
    /// Whether any room can have a limit (otherwise no sweep runs).
    pub(crate) fn enabled(&self) -> bool {
        self.max_age_secs > 0
            || self.max_count > 0
            || self
                .rooms
                .iter()
                .any(|r| r.max_age_secs > 0 || r.max_count > 0)
    }

    /// The policy of `room`: the longest matching prefix, else the default.
    pub(crate) fn policy(&self, room: &RoomId) -> Policy {
        let (age, count) = self
            .rooms
            .iter()
            .filter(|r| room.as_str().starts_with(r.prefix.as_str()))
            .max_by_key(|r| r.prefix.len())
            .map_or((self.max_age_secs, self.max_count), |r| {
                (r.max_age_secs, r.max_count)
            });
        Policy {
            max_age_us: age.saturating_mul(1_000_000),
            max_count: count,
        }
    }

    /// Checks ranges.
    ///
    /// # Errors
    /// A message naming the bad value.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.sweep_interval_ms < 10 {
            return Err("retention.sweep_interval_ms must be at least 10".into());
        }
        Ok(())
    }
}

/// The oldest sequence `room` must keep under `policy`, if that is above
/// `bounds.first` (that is, if something must go). Never above the head.
/// Age is found by binary search over the retained range: log2(n) point
/// reads, assuming commit times ascend with sequences (the sequencer stamps
/// them in order; a clock step backwards only makes it keep a little more).
///
/// # Errors
/// If the log cannot be read.
pub(crate) fn cut_point(
    log: &dyn RoomLog,
    room: &RoomId,
    bounds: LogBounds,
    policy: Policy,
    now_us: u64,
) -> Result<Option<Seq>, StorageError> {
    let (first, head) = (bounds.first.0, bounds.head.0);
    if head == 0 || first >= head {
        return Ok(None);
    }
    let mut keep_from = first;
    if policy.max_count > 0 {
        keep_from = keep_from.max(head.saturating_sub(policy.max_count) + 1);
    }
    if policy.max_age_us > 0 {
        let cutoff = now_us.saturating_sub(policy.max_age_us);
        // Smallest seq in [keep_from, head] committed at or after `cutoff`.
        let (mut lo, mut hi) = (keep_from, head);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match timestamp(log, room, Seq(mid))? {
                Some(ts) if ts >= cutoff => hi = mid,
                _ => lo = mid + 1,
            }
        }
        keep_from = keep_from.max(lo);
    }
    let keep_from = keep_from.min(head);
    Ok((keep_from > first).then_some(Seq(keep_from)))
}

fn timestamp(log: &dyn RoomLog, room: &RoomId, seq: Seq) -> Result<Option<u64>, StorageError> {
    let Some(rec) = log.read_range(room, seq, seq, 1, usize::MAX)?.pop() else {
        return Ok(None);
    };
    match EventRecord::decode(rec.bytes) {
        Ok(ev) => Ok(Some(ev.timestamp_us)),
        Err(_) => Err(StorageError::Corrupt {
            room: room.to_string(),
            seq: seq.0,
        }),
    }
}

/// Rooms read per page of the sweep.
const SWEEP_PAGE: usize = 1024;

/// Most entries removed by one trim request.
const TRIM_CHUNK: u64 = 16_384;

/// One pass over every room: sends a trim request for each room with
/// entries past its limits. Returns how many were sent.
///
/// # Errors
/// If the log cannot be read.
pub(crate) fn sweep(
    log: &dyn RoomLog,
    cfg: &RetentionConfig,
    sequencer: &SeqTx,
) -> Result<usize, StorageError> {
    let now = now_us();
    let mut after: Option<RoomId> = None;
    let mut sent = 0;
    loop {
        let page = log.log_rooms(after.as_ref(), SWEEP_PAGE)?;
        let done = page.len() < SWEEP_PAGE;
        for room in page {
            let policy = cfg.policy(&room);
            if policy != Policy::default() {
                let bounds = log.bounds(&room)?;
                if let Some(before) = cut_point(log, &room, bounds, policy, now)? {
                    let mut from = bounds.first;
                    while from < before {
                        let to = Seq(before.0.min(from.0.saturating_add(TRIM_CHUNK)));
                        let forget = idempotency_keys(log, &room, from, to)?;
                        let trim = SeqMsg::Trim {
                            room: room.clone(),
                            before: to,
                            forget,
                        };
                        if sequencer.send_now(trim).is_err() {
                            return Ok(sent);
                        }
                        from = to;
                    }
                    sent += 1;
                }
            }
            after = Some(room);
        }
        if done {
            return Ok(sent);
        }
    }
}

/// Sweeps every `sweep_interval_ms` until shutdown.
pub(crate) async fn run(
    log: Arc<dyn RoomLog>,
    cfg: RetentionConfig,
    sequencer: SeqTx,
    shutdown: CancellationToken,
) {
    let interval = Duration::from_millis(cfg.sweep_interval_ms);
    let cfg = Arc::new(cfg);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        let (log, cfg, tx) = (log.clone(), cfg.clone(), sequencer.clone());
        match tokio::task::spawn_blocking(move || sweep(log.as_ref(), &cfg, &tx)).await {
            Ok(Ok(n)) => debug!(rooms = n, "retention sweep"),
            Ok(Err(e)) => warn!(error = %e, "retention sweep failed"),
            Err(e) => warn!(error = %e, "retention sweep panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use confab_codec::{DeviceId, MessageKind, UserId};

    use super::*;
    use crate::config::Durability;
    use crate::storage::{Append, MemoryLog};

    fn room() -> RoomId {
        RoomId::new("r").expect("id")
    }

    /// A log with entries 1..=n committed at `ts(seq)`.
    fn log_with(n: u64, ts: impl Fn(u64) -> u64) -> MemoryLog {
        let log = MemoryLog::new();
        let room = room();
        let records: Vec<Vec<u8>> = (1..=n)
            .map(|seq| {
                let mut buf = BytesMut::new();
                EventRecord {
                    seq: Seq(seq),
                    timestamp_us: ts(seq),
                    sender: UserId::new("u").expect("id"),
                    device: DeviceId::new("d").expect("id"),
                    client_msg_id: 0,
                    kind: MessageKind::MESSAGE,
                    refers_to: None,
                    thread: None,
                    payload: Bytes::from_static(b"x"),
                }
                .encode(&mut buf)
                .expect("encode");
                buf.to_vec()
            })
            .collect();
        let appends: Vec<Append<'_>> = records
            .iter()
            .zip(1..)
            .map(|(r, seq)| Append {
                room: &room,
                seq: Seq(seq),
                record: r,
                idem: None,
                timestamp_us: 0,
            })
            .collect();
        log.append_batch(&appends, Durability::Wal).expect("append");
        log
    }

    fn cut(log: &MemoryLog, policy: Policy, now: u64) -> Option<Seq> {
        let bounds = log.bounds(&room()).expect("bounds");
        cut_point(log, &room(), bounds, policy, now).expect("cut")
    }

    #[test]
    fn count_keeps_the_newest() {
        let log = log_with(10, |s| s);
        let p = Policy {
            max_count: 3,
            ..Policy::default()
        };
        assert_eq!(cut(&log, p, 100), Some(Seq(8)));
        log.trim(&room(), Seq(8), &[], Durability::Wal)
            .expect("trim");
        let b = log.bounds(&room()).expect("bounds");
        assert_eq!((b.first, b.head), (Seq(8), Seq(10)));
        // Nothing more to do.
        assert_eq!(cut(&log, p, 100), None);
    }

    #[test]
    fn age_finds_the_first_recent_entry() {
        // Entry s committed at s * 10 us; now = 100, max age 35: keep ts >= 65.
        let log = log_with(10, |s| s * 10);
        let p = Policy {
            max_age_us: 35,
            ..Policy::default()
        };
        assert_eq!(cut(&log, p, 100), Some(Seq(7)));
        // Age and count together: the stricter wins.
        let both = Policy {
            max_age_us: 35,
            max_count: 2,
        };
        assert_eq!(cut(&log, both, 100), Some(Seq(9)));
    }

    #[test]
    fn the_head_is_always_kept() {
        let log = log_with(5, |s| s);
        let p = Policy {
            max_age_us: 1,
            ..Policy::default()
        };
        assert_eq!(cut(&log, p, 1_000_000), Some(Seq(5)));
        let one = Policy {
            max_count: 1,
            ..Policy::default()
        };
        assert_eq!(cut(&log, one, 0), Some(Seq(5)));
    }

    #[test]
    fn the_longest_prefix_wins() {
        let cfg = RetentionConfig {
            max_count: 100,
            rooms: vec![
                RoomRetention {
                    prefix: "g-".into(),
                    max_age_secs: 0,
                    max_count: 10,
                },
                RoomRetention {
                    prefix: "g-big".into(),
                    max_age_secs: 7,
                    max_count: 0,
                },
            ],
            ..RetentionConfig::default()
        };
        let id = |s: &str| RoomId::new(s).expect("id");
        assert_eq!(cfg.policy(&id("dm")).max_count, 100);
        assert_eq!(cfg.policy(&id("g-x")).max_count, 10);
        let big = cfg.policy(&id("g-big1"));
        assert_eq!((big.max_count, big.max_age_us), (0, 7_000_000));
        assert!(cfg.enabled());
        assert!(!RetentionConfig::default().enabled());
    }

    #[test]
    fn retention_and_push_load_from_toml_and_env() {
        use crate::config::Config;
        use crate::push::PreviewPolicy;

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("confab.toml");
        std::fs::write(
            &file,
            "[retention]\nmax_age_secs = 60\n\n[[retention.rooms]]\nprefix = \"g-\"\nmax_count = 5\n\n[push]\nenabled = true\nwebhook_url = \"http://127.0.0.1:9/x\"\n",
        )
        .expect("write");
        let env = [("CONFAB_PUSH__PREVIEW".to_owned(), "content".to_owned())];
        let c = Config::load(Some(&file), env, &[]).expect("loads");
        assert_eq!(c.retention.max_age_secs, 60);
        assert_eq!(c.retention.rooms[0].prefix, "g-");
        let g = c.retention.policy(&RoomId::new("g-1").expect("id"));
        assert_eq!((g.max_count, g.max_age_us), (5, 0));
        assert!(c.push.enabled);
        assert_eq!(c.push.preview, PreviewPolicy::Content);

        let bad = [("retention.sweep_interval_ms".to_owned(), "1".to_owned())];
        let err = Config::load(None, [], &bad).expect_err("too short");
        assert!(
            err.to_string().contains("retention.sweep_interval_ms"),
            "{err}"
        );
        let bad = [("push.max_attempts".to_owned(), "0".to_owned())];
        let err = Config::load(None, [], &bad).expect_err("no attempts");
        assert!(err.to_string().contains("push.max_attempts"), "{err}");
        let typo = [("push.enabeld".to_owned(), "true".to_owned())];
        assert!(Config::load(None, [], &typo).is_err());
    }

    #[test]
    fn log_rooms_pages_in_key_order() {
        let log = MemoryLog::new();
        for name in ["bb", "a", "c"] {
            let id = RoomId::new(name).expect("id");
            log.append_batch(
                &[Append {
                    room: &id,
                    seq: Seq(1),
                    record: b"x",
                    idem: None,
                    timestamp_us: 0,
                }],
                Durability::Wal,
            )
            .expect("append");
        }
        let first = log.log_rooms(None, 2).expect("rooms");
        let names: Vec<&str> = first.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        let rest = log.log_rooms(first.last(), 10).expect("rooms");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].as_str(), "bb");
    }
}
