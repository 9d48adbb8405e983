//! The push hub (who is online, the job queue) and the dispatcher task that
//! hands due jobs to the notifier, retries them and records dead letters.

use std::collections::hash_map::Entry;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use confab_codec::{RoomId, Seq, UserId};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::queue::{Offered, PushQueue};
use super::{registry, Notifier, PreviewPolicy, PushConfig, PushJob, PushTarget};
use crate::base::now_us;
use crate::storage::RoomLog;

/// What the sequencer and the sessions share with the dispatcher.
pub(crate) struct PushHub {
    preview: PreviewPolicy,
    max_preview: usize,
    queue: Mutex<PushQueue>,
    wake: Notify,
    /// Open sessions per user.
    online: Mutex<FxHashMap<UserId, u32>>,
}

impl std::fmt::Debug for PushHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushHub").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PushHub {
    /// A hub for this configuration.
    pub(crate) fn new(cfg: &PushConfig) -> Self {
        Self {
            preview: cfg.preview,
            max_preview: cfg.max_preview_bytes,
            queue: Mutex::new(PushQueue::new(
                cfg.queue_capacity,
                Duration::from_millis(cfg.coalesce_ms),
                Duration::from_millis(cfg.backoff_initial_ms),
                Duration::from_millis(cfg.backoff_max_ms),
                cfg.max_attempts,
            )),
            wake: Notify::new(),
            online: Mutex::new(FxHashMap::default()),
        }
    }

    /// A session of `user` started.
    pub(crate) fn session_started(&self, user: &UserId) {
        *lock(&self.online).entry(user.clone()).or_insert(0) += 1;
    }

    /// A session of `user` ended.
    pub(crate) fn session_ended(&self, user: &UserId) {
        if let Entry::Occupied(mut e) = lock(&self.online).entry(user.clone()) {
            *e.get_mut() = e.get().saturating_sub(1);
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Whether `user` has a device online.
    pub(crate) fn is_online(&self, user: &UserId) -> bool {
        lock(&self.online).contains_key(user)
    }

    /// A message was committed in a managed room: offers a job for every
    /// member other than the sender who has no device online. Called on the
    /// sequencer thread; takes two short locks and never waits otherwise.
    pub(crate) fn message_committed<'a>(
        &self,
        room: &RoomId,
        seq: Seq,
        sender: &UserId,
        payload: &Bytes,
        members: impl Iterator<Item = &'a UserId>,
    ) {
        let offline: Vec<&UserId> = {
            let online = lock(&self.online);
            members
                .filter(|m| *m != sender && !online.contains_key(*m))
                .collect()
        };
        if offline.is_empty() {
            return;
        }
        let who = (self.preview != PreviewPolicy::None).then(|| sender.clone());
        let content = (self.preview == PreviewPolicy::Content)
            .then(|| payload.slice(..payload.len().min(self.max_preview)));
        let now = Instant::now();
        let (mut queued, mut coalesced, mut dropped) = (0u64, 0u64, 0u64);
        {
            let mut queue = lock(&self.queue);
            for user in offline {
                match queue.offer(user, room, seq, who.clone(), content.clone(), now) {
                    Offered::Queued => queued += 1,
                    Offered::Coalesced => coalesced += 1,
                    Offered::Dropped => dropped += 1,
                }
            }
        }
        // Jobs made, merged into a pending job, or dropped for a full queue.
        metrics::counter!("confab_push_jobs_total", "outcome" => "queued").increment(queued);
        metrics::counter!("confab_push_jobs_total", "outcome" => "coalesced").increment(coalesced);
        metrics::counter!("confab_push_jobs_total", "outcome" => "dropped").increment(dropped);
        if queued > 0 {
            self.wake.notify_one();
        }
    }
}

/// One dead letter, as a line of the dead-letter file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When it was given up, microseconds since the Unix epoch.
    pub time_us: u64,
    /// The user.
    pub user: String,
    /// The room.
    pub room: String,
    /// The latest message's sequence.
    pub seq: u64,
    /// How many messages the job stood for.
    pub count: u64,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub error: String,
    /// The devices it was for.
    pub targets: Vec<DeadTarget>,
}

/// A device of a [`DeadLetter`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadTarget {
    /// The device id.
    pub device: String,
    /// Its push provider.
    pub provider: String,
    /// Its provider token.
    pub token: String,
}

impl From<PushTarget> for DeadTarget {
    fn from(t: PushTarget) -> Self {
        DeadTarget {
            device: t.device.to_string(),
            provider: t.provider,
            token: t.token,
        }
    }
}

/// What the dispatcher needs.
pub(crate) struct Dispatcher {
    pub(crate) hub: Arc<PushHub>,
    pub(crate) log: Arc<dyn RoomLog>,
    pub(crate) notifier: Arc<dyn Notifier>,
    pub(crate) timeout: Duration,
    pub(crate) concurrency: usize,
    pub(crate) dead_letters: PathBuf,
}

/// Takes due jobs and delivers them until shutdown. Jobs still queued at
/// shutdown are not kept (the messages themselves are in the log).
pub(crate) async fn run(d: Dispatcher, tasks: TaskTracker, shutdown: CancellationToken) {
    let d = Arc::new(d);
    let permits = Arc::new(Semaphore::new(d.concurrency));
    loop {
        let next = lock(&d.hub.queue).next_due();
        let sleep = tokio::time::sleep_until(next.unwrap_or_else(far_future));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = d.hub.wake.notified() => {}
            _ = sleep => {}
        }
        let jobs = lock(&d.hub.queue).take_due(Instant::now());
        for job in jobs {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p,
                _ = shutdown.cancelled() => return,
            };
            let Ok(permit) = permit else { return };
            let d = d.clone();
            tasks.spawn(async move {
                deliver(&d, job).await;
                drop(permit);
            });
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

async fn deliver(d: &Dispatcher, mut job: PushJob) {
    if d.hub.is_online(&job.user) {
        // Back online: the device gets the messages by sync.
        metrics::counter!("confab_push_jobs_total", "outcome" => "online").increment(1);
        return;
    }
    let (log, user) = (d.log.clone(), job.user.clone());
    let targets =
        match tokio::task::spawn_blocking(move || registry::targets(log.as_ref(), &user)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                warn!(error = %e, "push: cannot read registrations");
                Vec::new()
            }
            Err(e) => {
                warn!(error = %e, "push: registration lookup panicked");
                Vec::new()
            }
        };
    if targets.is_empty() {
        // No device of the user registered for push.
        metrics::counter!("confab_push_jobs_total", "outcome" => "no_device").increment(1);
        return;
    }
    job.targets = targets;
    let outcome = match tokio::time::timeout(d.timeout, d.notifier.notify(&job)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.0),
        Err(_) => Err(format!("no answer within {} ms", d.timeout.as_millis())),
    };
    let error = match outcome {
        Ok(()) => {
            metrics::counter!("confab_push_jobs_total", "outcome" => "delivered").increment(1);
            debug!(user = %job.user, room = %job.room, seq = job.seq.0, "push delivered");
            return;
        }
        Err(e) => e,
    };
    // A notifier call that failed (error or timeout).
    metrics::counter!("confab_push_failures_total").increment(1);
    debug!(user = %job.user, room = %job.room, attempt = job.attempt, error = %error, "push failed");
    let dead = lock(&d.hub.queue).failed(job, Instant::now());
    d.hub.wake.notify_one();
    let Some(dead) = dead else {
        metrics::counter!("confab_push_jobs_total", "outcome" => "retried").increment(1);
        return;
    };
    metrics::counter!("confab_push_jobs_total", "outcome" => "dead_letter").increment(1);
    warn!(user = %dead.user, room = %dead.room, seq = dead.seq.0, attempts = dead.attempt, %error, "push job given up; recorded as a dead letter");
    let letter = DeadLetter {
        time_us: now_us(),
        user: dead.user.to_string(),
        room: dead.room.to_string(),
        seq: dead.seq.0,
        count: dead.count,
        attempts: dead.attempt,
        error,
        targets: dead.targets.into_iter().map(DeadTarget::from).collect(),
    };
    let path = d.dead_letters.clone();
    let written = tokio::task::spawn_blocking(move || append_line(&path, &letter)).await;
    if !matches!(written, Ok(Ok(()))) {
        warn!(path = %d.dead_letters.display(), "cannot write the push dead-letter file");
    }
}

/// Appends one JSON line and syncs it.
fn append_line(path: &std::path::Path, letter: &DeadLetter) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(letter).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(&line)?;
    f.sync_data()
}

/// Reads a dead-letter file (for operators and tests); unparsable lines
/// are skipped.
///
/// # Errors
/// If the file cannot be read.
pub fn read_dead_letters(path: &std::path::Path) -> std::io::Result<Vec<DeadLetter>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_offline_members_but_the_sender_get_jobs() {
        let cfg = PushConfig {
            coalesce_ms: 0,
            preview: PreviewPolicy::Content,
            max_preview_bytes: 4,
            ..PushConfig::default()
        };
        let hub = PushHub::new(&cfg);
        let id = |s: &str| UserId::new(s).expect("id");
        let (alice, bob, carol) = (id("alice"), id("bob"), id("carol"));
        hub.session_started(&bob);
        hub.session_started(&bob);
        hub.session_ended(&bob);
        assert!(hub.is_online(&bob));
        let room = RoomId::new("r").expect("id");
        let members = [alice.clone(), bob.clone(), carol.clone()];
        hub.message_committed(
            &room,
            Seq(7),
            &alice,
            &Bytes::from_static(b"hello"),
            members.iter(),
        );
        let jobs = lock(&hub.queue).take_due(Instant::now());
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].user, carol);
        assert_eq!(jobs[0].sender.as_ref(), Some(&alice));
        assert_eq!(jobs[0].content.as_deref(), Some(&b"hell"[..]));
        hub.session_ended(&bob);
        assert!(!hub.is_online(&bob));
    }
}
