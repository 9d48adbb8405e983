//! Rate limits: GCRA token buckets (the `governor` crate) per connection
//! and per user, for publishes, typing and room requests, and the flood
//! rule that closes a connection refused too often in a row.
//!
//! Per-user buckets live in one sharded, lock-free-read map (`governor`'s
//! keyed limiter over `dashmap`), shared by every connection of the user;
//! one check is a hash, a shard read lock and one compare-and-swap. Users
//! idle for a minute are swept by [`run_sweeper`].

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use confab_codec::UserId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RateLimitsConfig;

/// How often idle users' buckets are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `Publish`.
    Publish,
    /// `Typing`.
    Typing,
    /// Room and presence requests.
    RoomOp,
}

impl Kind {
    /// The `kind` label of `confab_rate_limited_total`.
    fn label(self) -> &'static str {
        match self {
            Kind::Publish => "publish",
            Kind::Typing => "typing",
            Kind::RoomOp => "room_op",
        }
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go ahead.
    Allowed,
    /// Refuse this request; the client may retry after this many ms.
    Limited {
        /// At least 1.
        retry_after_ms: u32,
    },
    /// Refuse, and close the connection: it keeps flooding.
    Flooding {
        /// What the connection did, for the log and the client.
        why: String,
        /// When the refused request could have passed (at least 1 ms), as
        /// in `Limited`: the refusal still says when to retry.
        retry_after_ms: u32,
    },
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let one = NonZeroU32::MIN;
    Quota::per_second(NonZeroU32::new(per_sec).unwrap_or(one))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(one))
}

/// The per-user buckets, shared by every connection.
pub(crate) struct UserLimits {
    cfg: RateLimitsConfig,
    publish: DefaultKeyedRateLimiter<UserId>,
    room_ops: DefaultKeyedRateLimiter<UserId>,
    clock: DefaultClock,
}

impl std::fmt::Debug for UserLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserLimits")
            .field("users", &self.publish.len())
            .finish_non_exhaustive()
    }
}

impl UserLimits {
    pub(crate) fn new(cfg: &RateLimitsConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            publish: RateLimiter::keyed(quota(cfg.user_publish_per_sec, cfg.user_publish_burst)),
            room_ops: RateLimiter::keyed(quota(cfg.user_room_ops_per_sec, cfg.user_room_ops_burst)),
            clock: DefaultClock::default(),
        }
    }

    /// A fresh set of buckets for one connection.
    pub(crate) fn connection(&self) -> ConnLimits {
        let c = &self.cfg;
        ConnLimits {
            publish: RateLimiter::direct(quota(c.publish_per_sec, c.publish_burst)),
            typing: RateLimiter::direct(quota(c.typing_per_sec, c.typing_burst)),
            room_ops: RateLimiter::direct(quota(c.room_ops_per_sec, c.room_ops_burst)),
            streak: 0,
            streak_start: None,
        }
    }

    fn wait_ms(&self, not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> u32 {
        let ms = not_until.wait_time_from(self.clock.now()).as_millis();
        u32::try_from(ms).unwrap_or(u32::MAX).max(1)
    }

    /// Drops the buckets of users idle long enough to be full again.
    fn sweep(&self) {
        self.publish.retain_recent();
        self.room_ops.retain_recent();
        self.publish.shrink_to_fit();
        self.room_ops.shrink_to_fit();
    }
}

/// One connection's buckets and its run of refusals.
pub(crate) struct ConnLimits {
    publish: DefaultDirectRateLimiter,
    typing: DefaultDirectRateLimiter,
    room_ops: DefaultDirectRateLimiter,
    /// Consecutive refusals, and when the run started.
    streak: u32,
    streak_start: Option<Instant>,
}

impl ConnLimits {
    /// Charges one request of `kind` by `user` to this connection's and the
    /// user's buckets. A refused `Typing` is never counted towards flooding
    /// (it is dropped silently).
    pub(crate) fn check(
        &mut self,
        users: &UserLimits,
        user: &UserId,
        kind: Kind,
        now: Instant,
    ) -> Verdict {
        if !users.cfg.enabled {
            return Verdict::Allowed;
        }
        let conn = match kind {
            Kind::Publish => &self.publish,
            Kind::Typing => &self.typing,
            Kind::RoomOp => &self.room_ops,
        };
        let refused = match conn.check() {
            Err(nu) => Some(users.wait_ms(&nu)),
            Ok(()) => {
                let shared = match kind {
                    Kind::Publish => Some(&users.publish),
                    Kind::RoomOp => Some(&users.room_ops),
                    Kind::Typing => None,
                };
                match shared.map(|s| s.check_key(user)) {
                    Some(Err(nu)) => Some(users.wait_ms(&nu)),
                    _ => None,
                }
            }
        };
        let Some(retry_after_ms) = refused else {
            self.streak = 0;
            self.streak_start = None;
            return Verdict::Allowed;
        };
        // Counted: every request refused by a rate limit, by kind.
        metrics::counter!("confab_rate_limited_total", "kind" => kind.label()).increment(1);
        if kind == Kind::Typing {
            return Verdict::Limited { retry_after_ms };
        }
        let window = Duration::from_millis(users.cfg.flood_window_ms);
        match self.streak_start {
            Some(start) if now.saturating_duration_since(start) <= window => self.streak += 1,
            _ => {
                self.streak = 1;
                self.streak_start = Some(now);
            }
        }
        if self.streak >= users.cfg.flood_rejections {
            return Verdict::Flooding {
                why: format!(
                    "{} requests refused by rate limits within {} ms",
                    self.streak, users.cfg.flood_window_ms
                ),
                retry_after_ms,
            };
        }
        Verdict::Limited { retry_after_ms }
    }
}

/// Sweeps idle users' buckets every minute, on a blocking thread, until
/// `shutdown`.
pub(crate) async fn run_sweeper(users: Arc<UserLimits>, shutdown: CancellationToken) {
    crate::base::every(SWEEP_EVERY, shutdown, move || users.sweep()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RateLimitsConfig {
        RateLimitsConfig {
            publish_per_sec: 1,
            publish_burst: 3,
            user_publish_per_sec: 1,
            user_publish_burst: 5,
            flood_rejections: 4,
            ..RateLimitsConfig::default()
        }
    }

    #[test]
    fn connection_burst_then_refusal_with_retry_after() {
        let users = UserLimits::new(&cfg());
        let mut c = users.connection();
        let u = UserId::new("alice").expect("id");
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(c.check(&users, &u, Kind::Publish, now), Verdict::Allowed);
        }
        match c.check(&users, &u, Kind::Publish, now) {
            Verdict::Limited { retry_after_ms } => {
                assert!((1..=1000).contains(&retry_after_ms), "{retry_after_ms}")
            }
            other => panic!("{other:?}"),
        }
        // Other kinds have their own buckets.
        assert_eq!(c.check(&users, &u, Kind::RoomOp, now), Verdict::Allowed);
    }

    #[test]
    fn user_bucket_is_shared_by_connections() {
        let users = UserLimits::new(&cfg());
        let (mut a, mut b) = (users.connection(), users.connection());
        let u = UserId::new("alice").expect("id");
        let other = UserId::new("bob").expect("id");
        let now = Instant::now();
        let allowed = (0..3)
            .map(|_| a.check(&users, &u, Kind::Publish, now))
            .chain((0..3).map(|_| b.check(&users, &u, Kind::Publish, now)))
            .filter(|v| *v == Verdict::Allowed)
            .count();
        assert_eq!(allowed, 5, "the user's burst of 5 is shared");
        let mut c = users.connection();
        assert_eq!(
            c.check(&users, &other, Kind::Publish, now),
            Verdict::Allowed
        );
    }

    #[test]
    fn a_flood_is_detected_and_an_accepted_request_resets_it() {
        let users = UserLimits::new(&cfg());
        let mut c = users.connection();
        let u = UserId::new("alice").expect("id");
        let now = Instant::now();
        let verdicts: Vec<_> = (0..7)
            .map(|_| c.check(&users, &u, Kind::Publish, now))
            .collect();
        assert!(matches!(verdicts[3], Verdict::Limited { .. }));
        assert!(
            matches!(verdicts[6], Verdict::Flooding { retry_after_ms, .. } if retry_after_ms >= 1),
            "{verdicts:?}"
        );
        // Typing refusals never count as flooding.
        let mut t = users.connection();
        let floods = (0..100)
            .map(|_| t.check(&users, &u, Kind::Typing, now))
            .filter(|v| matches!(v, Verdict::Flooding { .. }))
            .count();
        assert_eq!(floods, 0);
    }

    #[test]
    fn disabled_allows_everything() {
        let users = UserLimits::new(&RateLimitsConfig {
            enabled: false,
            ..cfg()
        });
        let mut c = users.connection();
        let u = UserId::new("alice").expect("id");
        let now = Instant::now();
        assert!((0..100).all(|_| c.check(&users, &u, Kind::Publish, now) == Verdict::Allowed));
    }
}
