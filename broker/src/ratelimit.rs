//! Rate limits: GCRA token buckets (the `governor` crate) per connection
//! and per user, for every kind of request a client sends that costs the
//! broker more than a reply (publishes, typing, room and presence
//! requests, subscribes, receipts and reads), and the flood rule that
//! closes a connection refused too often within a window.
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
    /// Rooms subscribed or unsubscribed (one token per room).
    Subscribe,
    /// `Receipt`.
    Receipt,
    /// Reads: history, room info, message status, room lists, token
    /// refreshes, push registrations.
    Query,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Publish,
        Kind::Typing,
        Kind::RoomOp,
        Kind::Subscribe,
        Kind::Receipt,
        Kind::Query,
    ];

    /// The `kind` label of `confab_rate_limited_total`.
    fn label(self) -> &'static str {
        match self {
            Kind::Publish => "publish",
            Kind::Typing => "typing",
            Kind::RoomOp => "room_op",
            Kind::Subscribe => "subscribe",
            Kind::Receipt => "receipt",
            Kind::Query => "query",
        }
    }

    /// (per connection, per user) quotas.
    fn quotas(self, c: &RateLimitsConfig) -> (Quota, Option<Quota>) {
        let (conn, user) = match self {
            Kind::Publish => (
                (c.publish_per_sec, c.publish_burst),
                Some((c.user_publish_per_sec, c.user_publish_burst)),
            ),
            Kind::Typing => (
                (c.typing_per_sec, c.typing_burst),
                Some((c.user_typing_per_sec, c.user_typing_burst)),
            ),
            Kind::RoomOp => (
                (c.room_ops_per_sec, c.room_ops_burst),
                Some((c.user_room_ops_per_sec, c.user_room_ops_burst)),
            ),
            Kind::Subscribe => (
                (c.subscribe_per_sec, c.subscribe_burst),
                Some((c.user_subscribe_per_sec, c.user_subscribe_burst)),
            ),
            Kind::Receipt => (
                (c.receipt_per_sec, c.receipt_burst),
                Some((c.user_receipt_per_sec, c.user_receipt_burst)),
            ),
            Kind::Query => (
                (c.query_per_sec, c.query_burst),
                Some((c.user_query_per_sec, c.user_query_burst)),
            ),
        };
        (quota(conn.0, conn.1), user.map(|(r, b)| quota(r, b)))
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

/// The per-user buckets, shared by every connection, by [`Kind`].
pub(crate) struct UserLimits {
    cfg: RateLimitsConfig,
    users: [Option<DefaultKeyedRateLimiter<UserId>>; 6],
    /// Connections opened, per user.
    connects: DefaultKeyedRateLimiter<UserId>,
    clock: DefaultClock,
}

impl std::fmt::Debug for UserLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users = self.users[Kind::Publish as usize]
            .as_ref()
            .map_or(0, |l| l.len());
        f.debug_struct("UserLimits")
            .field("users", &users)
            .finish_non_exhaustive()
    }
}

impl UserLimits {
    pub(crate) fn new(cfg: &RateLimitsConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            users: Kind::ALL.map(|k| k.quotas(cfg).1.map(RateLimiter::keyed)),
            connects: RateLimiter::keyed(quota(cfg.user_connects_per_sec, cfg.user_connects_burst)),
            clock: DefaultClock::default(),
        }
    }

    /// Charges a new connection of `user`; `Err` holds the milliseconds
    /// until one is allowed again.
    pub(crate) fn connect(&self, user: &UserId) -> Result<(), u32> {
        if !self.cfg.enabled {
            return Ok(());
        }
        self.connects.check_key(user).map_err(|nu| {
            metrics::counter!("confab_rate_limited_total", "kind" => "connect").increment(1);
            self.wait_ms(&nu)
        })
    }

    /// A fresh set of buckets for one connection.
    pub(crate) fn connection(&self) -> ConnLimits {
        ConnLimits {
            buckets: Kind::ALL.map(|k| RateLimiter::direct(k.quotas(&self.cfg).0)),
            frames: RateLimiter::direct(quota(self.cfg.frames_per_sec, self.cfg.frames_burst)),
            refusals: 0,
            window_start: None,
        }
    }

    fn wait_ms(&self, not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> u32 {
        let ms = not_until.wait_time_from(self.clock.now()).as_millis();
        u32::try_from(ms).unwrap_or(u32::MAX).max(1)
    }

    /// Drops the buckets of users idle long enough to be full again.
    fn sweep(&self) {
        for limiter in self.users.iter().flatten().chain([&self.connects]) {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// One connection's buckets and its count of recent refusals.
pub(crate) struct ConnLimits {
    buckets: [DefaultDirectRateLimiter; 6],
    /// Every frame read, whatever its kind (pacing, not refusal).
    frames: DefaultDirectRateLimiter,
    /// Refusals since `window_start`.
    refusals: u32,
    window_start: Option<Instant>,
}

impl ConnLimits {
    /// Takes a token for the next frame read from the connection, or says
    /// how long to wait before reading it.
    pub(crate) fn pace(&self, users: &UserLimits) -> Option<Duration> {
        if !users.cfg.enabled {
            return None;
        }
        match self.frames.check() {
            Ok(()) => None,
            Err(nu) => Some(nu.wait_time_from(users.clock.now())),
        }
    }

    /// Charges one request of `kind` by `user` to this connection's and the
    /// user's buckets. A refused `Typing` is never counted towards flooding
    /// (it is dropped silently).
    #[cfg(test)]
    pub(crate) fn check(
        &mut self,
        users: &UserLimits,
        user: &UserId,
        kind: Kind,
        now: Instant,
    ) -> Verdict {
        self.check_n(users, user, kind, 1, now)
    }

    /// Charges `n` tokens (a `Subscribe` of `n` rooms); `n` of 0 is free.
    /// More than a bucket's burst can never pass: it is refused like any
    /// request over the limit, with the time the burst takes to refill.
    pub(crate) fn check_n(
        &mut self,
        users: &UserLimits,
        user: &UserId,
        kind: Kind,
        n: u32,
        now: Instant,
    ) -> Verdict {
        let Some(n) = NonZeroU32::new(n) else {
            return Verdict::Allowed;
        };
        if !users.cfg.enabled {
            return Verdict::Allowed;
        }
        // More than a bucket's burst: the time the whole burst takes to
        // refill (only this rare refusal needs the quotas themselves).
        let too_many = |per_user: bool| {
            let (conn, user) = kind.quotas(&users.cfg);
            let q = if per_user { user.unwrap_or(conn) } else { conn };
            let per_token = q.replenish_interval().as_millis().max(1);
            let ms = per_token.saturating_mul(u128::from(q.burst_size().get()));
            u32::try_from(ms).unwrap_or(u32::MAX).max(1)
        };
        let refused = match self.buckets[kind as usize].check_n(n) {
            Err(_) => Some(too_many(false)),
            Ok(Err(nu)) => Some(users.wait_ms(&nu)),
            Ok(Ok(())) => match &users.users[kind as usize] {
                Some(shared) => match shared.check_key_n(user, n) {
                    Err(_) => Some(too_many(true)),
                    Ok(Err(nu)) => Some(users.wait_ms(&nu)),
                    Ok(Ok(())) => None,
                },
                None => None,
            },
        };
        let Some(retry_after_ms) = refused else {
            return Verdict::Allowed;
        };
        // Counted: every request refused by a rate limit, by kind.
        metrics::counter!("confab_rate_limited_total", "kind" => kind.label()).increment(1);
        if kind == Kind::Typing {
            return Verdict::Limited { retry_after_ms };
        }
        // Refusals are counted within a window, whatever passed in
        // between: a client that slips one accepted request in among its
        // refused ones is still flooding.
        let window = Duration::from_millis(users.cfg.flood_window_ms);
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) <= window => self.refusals += 1,
            _ => {
                self.refusals = 1;
                self.window_start = Some(now);
            }
        }
        if self.refusals >= users.cfg.flood_rejections {
            return Verdict::Flooding {
                why: format!(
                    "{} requests refused by rate limits within {} ms",
                    self.refusals, users.cfg.flood_window_ms
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
    fn a_flood_is_detected_even_with_accepted_requests_in_between() {
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
        // One refusal, an accepted request of another kind, and three
        // more refusals: the fourth refusal in the window closes.
        let mut d = users.connection();
        let v = UserId::new("victor").expect("id");
        for _ in 0..3 {
            assert_eq!(d.check(&users, &v, Kind::Publish, now), Verdict::Allowed);
        }
        assert!(matches!(
            d.check(&users, &v, Kind::Publish, now),
            Verdict::Limited { .. }
        ));
        assert_eq!(d.check(&users, &v, Kind::RoomOp, now), Verdict::Allowed);
        assert!(matches!(
            d.check(&users, &v, Kind::Publish, now),
            Verdict::Limited { .. }
        ));
        assert!(matches!(
            d.check(&users, &v, Kind::Publish, now),
            Verdict::Limited { .. }
        ));
        assert!(matches!(
            d.check(&users, &v, Kind::Publish, now),
            Verdict::Flooding { .. }
        ));
        // After the window, the count starts again.
        let later = now + Duration::from_millis(cfg().flood_window_ms + 1);
        assert!(matches!(
            d.check(&users, &v, Kind::Publish, later),
            Verdict::Limited { .. }
        ));
        // Typing refusals never count as flooding.
        let mut t = users.connection();
        let floods = (0..100)
            .map(|_| t.check(&users, &u, Kind::Typing, now))
            .filter(|v| matches!(v, Verdict::Flooding { .. }))
            .count();
        assert_eq!(floods, 0);
    }

    #[test]
    fn subscribes_are_charged_per_room() {
        let users = UserLimits::new(&RateLimitsConfig {
            subscribe_per_sec: 1,
            subscribe_burst: 10,
            ..cfg()
        });
        let mut c = users.connection();
        let u = UserId::new("alice").expect("id");
        let now = Instant::now();
        assert_eq!(
            c.check_n(&users, &u, Kind::Subscribe, 0, now),
            Verdict::Allowed
        );
        assert_eq!(
            c.check_n(&users, &u, Kind::Subscribe, 6, now),
            Verdict::Allowed
        );
        assert!(matches!(
            c.check_n(&users, &u, Kind::Subscribe, 6, now),
            Verdict::Limited { .. }
        ));
        // More than the burst can never pass, and says so with a wait.
        let mut fresh = users.connection();
        match fresh.check_n(&users, &u, Kind::Subscribe, 11, now) {
            Verdict::Limited { retry_after_ms } => assert!(retry_after_ms >= 1000),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.check_n(&users, &u, Kind::Subscribe, 4, now),
            Verdict::Allowed
        );
    }

    #[test]
    fn frames_are_paced_not_refused() {
        let users = UserLimits::new(&RateLimitsConfig {
            frames_per_sec: 10,
            frames_burst: 3,
            ..cfg()
        });
        let c = users.connection();
        assert!((0..3).all(|_| c.pace(&users).is_none()));
        let wait = c.pace(&users).expect("paced");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
    }

    #[test]
    fn connections_per_user_are_limited() {
        let users = UserLimits::new(&RateLimitsConfig {
            user_connects_per_sec: 1,
            user_connects_burst: 2,
            ..cfg()
        });
        let (a, b) = (UserId::new("a").expect("id"), UserId::new("b").expect("id"));
        assert!(users.connect(&a).is_ok() && users.connect(&a).is_ok());
        let wait = users.connect(&a).expect_err("third in a burst of 2");
        assert!((1..=1000).contains(&wait), "{wait}");
        assert!(users.connect(&b).is_ok(), "per user");
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
