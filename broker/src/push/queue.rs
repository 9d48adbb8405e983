//! The push queue: pending jobs keyed by (user, room), coalesced, bounded,
//! ordered by when they are due, with exponential backoff for retries.
//! A plain state machine: inputs are method calls with the time, no IO.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use confab_codec::{RoomId, Seq, UserId};
use tokio::time::Instant;

use super::PushJob;

type Key = (UserId, RoomId);

#[derive(Debug)]
struct Entry {
    seq: Seq,
    count: u64,
    sender: Option<UserId>,
    content: Option<Bytes>,
    /// Failed attempts so far.
    failures: u32,
    due: Instant,
    /// Tie-breaker of the due index.
    id: u64,
}

/// What [`PushQueue::offer`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offered {
    /// A new job.
    Queued,
    /// Merged into the pending job of the same user and room.
    Coalesced,
    /// The queue is full: dropped.
    Dropped,
}

/// Pending notification jobs.
#[derive(Debug)]
pub(crate) struct PushQueue {
    entries: HashMap<Key, Entry>,
    due: BTreeMap<(Instant, u64), Key>,
    next_id: u64,
    capacity: usize,
    coalesce: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    max_attempts: u32,
}

impl PushQueue {
    /// A queue of at most `capacity` jobs; a job is due `coalesce` after its
    /// first message; retry `n` waits `backoff_initial * 2^(n-1)`, at most
    /// `backoff_max`; a job fails for good after `max_attempts` attempts.
    pub(crate) fn new(
        capacity: usize,
        coalesce: Duration,
        backoff_initial: Duration,
        backoff_max: Duration,
        max_attempts: u32,
    ) -> Self {
        Self {
            entries: HashMap::new(),
            due: BTreeMap::new(),
            next_id: 0,
            capacity: capacity.max(1),
            coalesce,
            backoff_initial,
            backoff_max,
            max_attempts: max_attempts.max(1),
        }
    }

    /// A new message for `user` in `room`.
    pub(crate) fn offer(
        &mut self,
        user: &UserId,
        room: &RoomId,
        seq: Seq,
        sender: Option<UserId>,
        content: Option<Bytes>,
        now: Instant,
    ) -> Offered {
        let key = (user.clone(), room.clone());
        if let Some(e) = self.entries.get_mut(&key) {
            e.count += 1;
            if seq > e.seq {
                e.seq = seq;
                e.sender = sender;
                e.content = content;
            }
            return Offered::Coalesced;
        }
        if self.entries.len() >= self.capacity {
            return Offered::Dropped;
        }
        let entry = Entry {
            seq,
            count: 1,
            sender,
            content,
            failures: 0,
            due: now + self.coalesce,
            id: 0,
        };
        self.insert(key, entry);
        Offered::Queued
    }

    /// Removes and returns every job due at `now`, oldest first.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<PushJob> {
        let mut out = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some(e) = self.entries.remove(&key) {
                out.push(PushJob {
                    user: key.0,
                    room: key.1,
                    seq: e.seq,
                    count: e.count,
                    sender: e.sender,
                    content: e.content,
                    targets: Vec::new(),
                    attempt: e.failures + 1,
                });
            }
        }
        out
    }

    /// When the next job is due, if any is pending.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.keys().next().map(|(t, _)| *t)
    }

    /// A job's attempt failed. Returns it if that was the last attempt (a
    /// dead letter); otherwise it is queued again after its backoff, merged
    /// with any newer job of the same user and room.
    pub(crate) fn failed(&mut self, job: PushJob, now: Instant) -> Option<PushJob> {
        let failures = job.attempt;
        if failures >= self.max_attempts {
            return Some(job);
        }
        let shift = failures.saturating_sub(1).min(30);
        let delay = self
            .backoff_initial
            .saturating_mul(1u32 << shift)
            .min(self.backoff_max);
        let due = now + delay;
        let key = (job.user.clone(), job.room.clone());
        if let Some(mut e) = self.entries.remove(&key) {
            // Newer messages arrived meanwhile: one job for all of them.
            self.due.remove(&(e.due, e.id));
            e.count += job.count;
            e.failures = e.failures.max(failures);
            e.due = e.due.max(due);
            self.insert(key, e);
            return None;
        }
        // A retry keeps its place even when the queue is full of new jobs.
        let entry = Entry {
            seq: job.seq,
            count: job.count,
            sender: job.sender,
            content: job.content,
            failures,
            due,
            id: 0,
        };
        self.insert(key, entry);
        None
    }

    /// Jobs pending.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn insert(&mut self, key: Key, mut entry: Entry) {
        self.next_id += 1;
        entry.id = self.next_id;
        self.due.insert((entry.due, entry.id), key.clone());
        self.entries.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("id")
    }

    fn room(s: &str) -> RoomId {
        RoomId::new(s).expect("id")
    }

    fn queue(capacity: usize) -> PushQueue {
        PushQueue::new(
            capacity,
            Duration::from_millis(100),
            Duration::from_millis(10),
            Duration::from_millis(35),
            4,
        )
    }

    #[test]
    fn coalesces_per_user_and_room() {
        let mut q = queue(10);
        let t = Instant::now();
        let (bob, r) = (user("bob"), room("r"));
        assert_eq!(
            q.offer(&bob, &r, Seq(1), Some(user("a")), None, t),
            Offered::Queued
        );
        assert_eq!(
            q.offer(&bob, &r, Seq(3), Some(user("c")), None, t),
            Offered::Coalesced
        );
        // Out of order: counted, but the latest stays.
        q.offer(&bob, &r, Seq(2), Some(user("b")), None, t);
        q.offer(&user("carol"), &r, Seq(3), None, None, t);
        assert_eq!(q.len(), 2);
        assert!(q.take_due(t).is_empty(), "not due before the window");
        let jobs = q.take_due(t + Duration::from_millis(100));
        assert_eq!(jobs.len(), 2);
        let job = jobs.iter().find(|j| j.user == bob).expect("bob's job");
        assert_eq!((job.seq, job.count, job.attempt), (Seq(3), 3, 1));
        assert_eq!(job.sender, Some(user("c")));
        assert_eq!(q.len(), 0);
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn drops_new_pairs_when_full() {
        let mut q = queue(1);
        let t = Instant::now();
        q.offer(&user("a"), &room("r"), Seq(1), None, None, t);
        assert_eq!(
            q.offer(&user("b"), &room("r"), Seq(1), None, None, t),
            Offered::Dropped
        );
        assert_eq!(
            q.offer(&user("a"), &room("r"), Seq(2), None, None, t),
            Offered::Coalesced
        );
    }

    #[test]
    fn retries_back_off_then_dead_letter() {
        let mut q = queue(10);
        let mut t = Instant::now();
        q.offer(&user("a"), &room("r"), Seq(1), None, None, t);
        t += Duration::from_millis(100);
        let mut delays = Vec::new();
        let mut job = q.take_due(t).pop().expect("due");
        loop {
            match q.failed(job, t) {
                Some(dead) => {
                    assert_eq!(dead.attempt, 4);
                    break;
                }
                None => {
                    let due = q.next_due().expect("queued again");
                    delays.push(due - t);
                    t = due;
                    job = q.take_due(t).pop().expect("due");
                }
            }
        }
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [10, 20, 35]);
    }

    #[test]
    fn a_failed_job_merges_with_newer_messages() {
        let mut q = queue(10);
        let t = Instant::now() + Duration::from_millis(100);
        q.offer(&user("a"), &room("r"), Seq(1), None, None, t);
        let job = q
            .take_due(t + Duration::from_millis(100))
            .pop()
            .expect("due");
        q.offer(&user("a"), &room("r"), Seq(2), None, None, t);
        assert!(q.failed(job, t).is_none());
        assert_eq!(q.len(), 1);
        let merged = q.take_due(t + Duration::from_secs(1)).pop().expect("due");
        assert_eq!((merged.seq, merged.count, merged.attempt), (Seq(2), 2, 2));
    }
}
