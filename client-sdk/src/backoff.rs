//! Reconnection delays: exponential backoff with full jitter.
//!
//! After the n-th consecutive failure (counting from 0) the delay is drawn
//! uniformly from `0..=min(max, initial * multiplier^n)` ("full jitter", as
//! in the AWS architecture blog's "Exponential Backoff And Jitter"). Full
//! jitter spreads the reconnects of many clients that lost the same broker
//! at the same instant, instead of having them return in synchronized
//! waves.
//!
//! The type is pure: the caller passes the random source, so tests use a
//! seeded generator.

use std::time::Duration;

use rand::Rng;

/// Backoff settings, part of [`ClientConfig`](crate::ClientConfig).
///
/// ```
/// use std::time::Duration;
/// use confab_client::{BackoffConfig, ClientConfig};
///
/// let mut config = ClientConfig::new("confab://127.0.0.1:7400", "alice", "phone")?;
/// config.backoff = BackoffConfig {
///     initial: Duration::from_millis(500),
///     max: Duration::from_secs(60),
///     multiplier: 2.0,
///     max_attempts: None, // retry forever
/// };
/// assert!(config.validate().is_ok());
/// # Ok::<(), confab_client::ClientError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// Upper bound of the first delay. Default 200 ms.
    pub initial: Duration,
    /// Cap on every delay's upper bound. Default 30 s.
    pub max: Duration,
    /// Growth factor of the upper bound per failed attempt (at least 1).
    /// Default 2.
    pub multiplier: f64,
    /// Consecutive failed attempts after which the client gives up with
    /// [`ClientError::ReconnectFailed`](crate::ClientError::ReconnectFailed).
    /// `None` (the default) retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            max_attempts: None,
        }
    }
}

impl BackoffConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// A message naming the first bad value.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.initial.is_zero() {
            return Err("backoff.initial must be above zero".into());
        }
        if self.max < self.initial {
            return Err("backoff.max must be at least backoff.initial".into());
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err("backoff.multiplier must be a finite number >= 1".into());
        }
        if self.max_attempts == Some(0) {
            return Err("backoff.max_attempts must be at least 1 when set".into());
        }
        Ok(())
    }
}

/// The state of one reconnection sequence: how many attempts failed in a row.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            failures: 0,
        }
    }

    /// Consecutive failures recorded since the last reset.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts over after a success.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The upper bound of the delay after `failures` consecutive failures
    /// (0-based): `min(max, initial * multiplier^failures)`.
    pub(crate) fn ceiling(&self, failures: u32) -> Duration {
        let initial = self.config.initial.as_secs_f64();
        let max = self.config.max.as_secs_f64();
        // powi saturates to +inf for large exponents; min() then caps it.
        let exp = i32::try_from(failures).unwrap_or(i32::MAX);
        let bound = (initial * self.config.multiplier.powi(exp)).min(max);
        if bound.is_finite() && bound >= 0.0 {
            Duration::from_secs_f64(bound)
        } else {
            self.config.max
        }
    }

    /// Records a failure and returns how long to wait before the next
    /// attempt, or `None` once `max_attempts` failures happened in a row.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Option<Duration> {
        let n = self.failures;
        self.failures = self.failures.saturating_add(1);
        if self
            .config
            .max_attempts
            .is_some_and(|max| self.failures >= max)
        {
            return None;
        }
        let ceiling = self.ceiling(n);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(rng.gen_range(0..=nanos)))
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn config(initial_ms: u64, max_ms: u64, multiplier: f64) -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            multiplier,
            max_attempts: None,
        }
    }

    #[test]
    fn ceiling_grows_geometrically_then_caps() {
        let b = Backoff::new(config(100, 1000, 2.0));
        let ms: Vec<u128> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(1000));
    }

    #[test]
    fn delays_stay_under_the_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(config(100, 5000, 3.0));
        for n in 0..50 {
            let ceiling = b.ceiling(n);
            let d = b.next_delay(&mut rng).expect("unlimited attempts");
            assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
        }
        assert_eq!(b.failures(), 50);
    }

    #[test]
    fn same_seed_same_delays() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut b = Backoff::new(BackoffConfig::default());
            (0..20)
                .map(|_| b.next_delay(&mut rng).expect("unlimited"))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn jitter_is_spread_over_the_whole_range() {
        // Full jitter: with the ceiling fixed at max, the mean is about
        // max / 2 and both low and high values occur.
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::new(config(1000, 1000, 1.0));
        let samples: Vec<f64> = (0..2000)
            .map(|_| b.next_delay(&mut rng).expect("unlimited").as_secs_f64())
            .collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
        assert!(samples.iter().any(|&s| s < 0.1));
        assert!(samples.iter().any(|&s| s > 0.9));
    }

    #[test]
    fn reset_starts_over() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = Backoff::new(config(10, 100_000, 10.0));
        for _ in 0..4 {
            b.next_delay(&mut rng);
        }
        b.reset();
        assert_eq!(b.failures(), 0);
        let d = b.next_delay(&mut rng).expect("unlimited");
        assert!(d <= Duration::from_millis(10));
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut b = Backoff::new(BackoffConfig {
            max_attempts: Some(3),
            ..BackoffConfig::default()
        });
        assert!(b.next_delay(&mut rng).is_some());
        assert!(b.next_delay(&mut rng).is_some());
        assert!(b.next_delay(&mut rng).is_none());
        b.reset();
        assert!(b.next_delay(&mut rng).is_some());
    }

    #[test]
    fn validation() {
        assert!(BackoffConfig::default().validate().is_ok());
        assert!(config(0, 10, 2.0).validate().is_err());
        assert!(config(100, 10, 2.0).validate().is_err());
        assert!(config(10, 100, 0.5).validate().is_err());
        assert!(config(10, 100, f64::NAN).validate().is_err());
        let zero = BackoffConfig {
            max_attempts: Some(0),
            ..BackoffConfig::default()
        };
        assert!(zero.validate().is_err());
    }
}
