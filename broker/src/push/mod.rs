//! Offline push: when a committed message reaches a member of a managed
//! room who has no device online, a notification job is handed to a
//! [`Notifier`].
//!
//! The pipeline (docs/architecture.md, "Push pipeline"):
//!
//! 1. The sequencer, after a commit, offers one job per offline member to
//!    the queue: a bounded map keyed by (user, room) that
//!    coalesces (a second message for the same pair bumps the pending job's
//!    count and latest sequence) and never blocks; past its capacity a new
//!    pair is dropped and counted.
//! 2. A dispatcher task takes jobs once their coalescing window has passed,
//!    looks up the user's registered devices (`RegisterPush`), skips users
//!    who came online meanwhile, and calls the notifier, a bounded number
//!    at a time, each call under a timeout.
//! 3. A failed job is retried with exponential backoff; after
//!    `push.max_attempts` it is appended to the dead-letter file
//!    (`<data_dir>/push-dead-letter.jsonl` by default), one JSON object per
//!    line.
//!
//! The shipped notifier is [`WebhookNotifier`] (HTTP POST, JSON body). An
//! embedding service supplies its own with
//! [`BrokerBuilder::notifier`](crate::BrokerBuilder::notifier).

mod dispatch;
mod queue;
mod registry;
mod webhook;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use confab_codec::{DeviceId, RoomId, Seq, UserId};

pub use crate::config::{PreviewPolicy, PushConfig};
pub use dispatch::{read_dead_letters, DeadLetter, DeadTarget};
pub(crate) use dispatch::{run as run_dispatcher, Dispatcher, PushHub};
pub(crate) use registry::{registration, validate as validate_registration};
pub use webhook::WebhookNotifier;

impl PushConfig {
    /// Checks ranges (the URL is checked when the webhook is built).
    ///
    /// # Errors
    /// A message naming the bad value.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let checks = [
            (self.timeout_ms >= 1, "push.timeout_ms must be at least 1"),
            (
                (1..=100).contains(&self.max_attempts),
                "push.max_attempts must be between 1 and 100",
            ),
            (
                self.backoff_initial_ms >= 1 && self.backoff_max_ms >= self.backoff_initial_ms,
                "push.backoff_initial_ms must be at least 1 and push.backoff_max_ms at least that",
            ),
            (
                self.queue_capacity >= 1,
                "push.queue_capacity must be at least 1",
            ),
            (
                (1..=1024).contains(&self.concurrency),
                "push.concurrency must be between 1 and 1024",
            ),
            (
                self.max_preview_bytes <= 4096,
                "push.max_preview_bytes must be at most 4096",
            ),
        ];
        for (ok, message) in checks {
            if !ok {
                return Err(message.into());
            }
        }
        Ok(())
    }
}

/// A device registered for push with `RegisterPush`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// The device.
    pub device: DeviceId,
    /// Its push provider (`apns`, `fcm`, `webpush`, ...).
    pub provider: String,
    /// The provider's token for the device.
    pub token: String,
}

/// One notification: new messages in `room` for `user`, who has no device
/// online. Many messages while offline make one job (`count`, latest `seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushJob {
    /// The user to notify.
    pub user: UserId,
    /// The room.
    pub room: RoomId,
    /// The latest message's sequence.
    pub seq: Seq,
    /// How many messages this job stands for.
    pub count: u64,
    /// The latest message's sender, unless the preview policy is `none`.
    pub sender: Option<UserId>,
    /// The latest message's payload (cut to `push.max_preview_bytes`), if
    /// the preview policy is `content`.
    pub content: Option<Bytes>,
    /// The user's registered devices.
    pub targets: Vec<PushTarget>,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
}

/// Why a notifier call failed. Every failure is retried until
/// `push.max_attempts`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotifyError(pub String);

/// A boxed future of a notifier call.
pub type NotifyFuture<'a> = Pin<Box<dyn Future<Output = Result<(), NotifyError>> + Send + 'a>>;

/// Delivers notification jobs (to a push gateway, a webhook, a queue).
///
/// Called from the broker's push dispatcher task, never from the publish
/// path; at most `push.concurrency` calls run at once, each under
/// `push.timeout_ms`. Return an error to have the job retried with backoff
/// and, after `push.max_attempts`, recorded as a dead letter.
pub trait Notifier: Send + Sync + 'static {
    /// Delivers one job.
    fn notify(&self, job: &PushJob) -> NotifyFuture<'_>;
}
