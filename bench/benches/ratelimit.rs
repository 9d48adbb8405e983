//! Cost of the broker's rate-limit check on the publish path: `governor`
//! GCRA buckets exactly as `broker/src/ratelimit.rs` builds them (the
//! broker's types are private, so this drives the same limiters directly):
//! a per-connection direct limiter (one atomic) and a per-user keyed
//! limiter over a sharded `dashmap`, keyed by `UserId`.
//!
//! Run with `cargo bench -p confab-bench --bench ratelimit`. Benchmark ids:
//! `ratelimit/user/10k_users` (one keyed check, users rotating over
//! 10,000), `ratelimit/conn_and_user/10k_users` (the two checks one
//! publish makes), `ratelimit/user/2_threads_same_user` (two threads
//! checking one user's bucket at once: the contended case, one user's
//! devices publishing on both cores).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_codec::UserId;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

const USERS: usize = 10_000;

/// A quota that is never exhausted: the benchmark measures the check.
fn roomy() -> Quota {
    Quota::per_second(NonZeroU32::MAX).allow_burst(NonZeroU32::MAX)
}

fn users() -> Vec<UserId> {
    (0..USERS)
        .map(|i| UserId::new(format!("user:{i:08}")).expect("valid user id"))
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    let ids = users();
    let keyed: DefaultKeyedRateLimiter<UserId> = RateLimiter::keyed(roomy());
    for u in &ids {
        let _ = keyed.check_key(u);
    }
    let direct: DefaultDirectRateLimiter = RateLimiter::direct(roomy());

    let mut i = 0usize;
    g.bench_function("user/10k_users", |b| {
        b.iter(|| {
            i = (i + 1) % USERS;
            black_box(keyed.check_key(&ids[i]).is_ok())
        })
    });
    g.bench_function("conn_and_user/10k_users", |b| {
        b.iter(|| {
            i = (i + 1) % USERS;
            black_box(direct.check().is_ok() && keyed.check_key(&ids[i]).is_ok())
        })
    });

    let shared = Arc::new(keyed);
    let one = Arc::new(ids[0].clone());
    g.bench_function("user/2_threads_same_user", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let other = {
                let (shared, one) = (shared.clone(), one.clone());
                std::thread::spawn(move || {
                    for _ in 0..iters {
                        black_box(shared.check_key(&one).is_ok());
                    }
                })
            };
            for _ in 0..iters {
                black_box(shared.check_key(&one).is_ok());
            }
            other.join().expect("bench thread");
            // Two checks per iteration ran in this time, in parallel.
            start.elapsed() / 2
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
