//! The broker-wide bound on storage reads made for clients.
//!
//! History pages, room queries, access checks and catch-up from the log
//! all read storage on blocking threads. Without a bound, thousands of
//! devices that lag at once (a burst in a big room) or send queries at
//! once would each take one of the runtime's blocking threads (tokio
//! starts up to 512), and every such thread costs its stack and its
//! allocator caches: a 10,000-device room in catch-up took over 1 GiB.
//! With it, at most `limits.max_concurrent_reads` run at a time; the
//! others wait their turn, in order, as small futures.

use tokio::sync::{Semaphore, SemaphorePermit};

/// At most a configured number of storage reads at a time.
#[derive(Debug)]
pub(crate) struct ReadPool {
    permits: Semaphore,
    max: usize,
}

/// The pool is closed only when the broker is dropped; a read that finds
/// it closed is refused as the broker shutting down.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The read panicked or the runtime is going away.
    #[error("storage read failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The pool was closed.
    #[error("the broker is shutting down")]
    Closed,
}

impl ReadPool {
    /// A pool that runs at most `max` reads at a time (at least one).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            permits: Semaphore::new(max.max(1)),
            max: max.max(1),
        }
    }

    /// Waits for a turn to read (first come, first served).
    ///
    /// # Errors
    /// [`ReadError::Closed`] if the pool was closed.
    pub(crate) async fn turn(&self) -> Result<SemaphorePermit<'_>, ReadError> {
        self.permits.acquire().await.map_err(|_| ReadError::Closed)
    }

    /// Runs `read` on a blocking thread once it is its turn.
    ///
    /// # Errors
    /// If the pool was closed or the read panicked.
    pub(crate) async fn run<T, F>(&self, read: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let _turn = self.turn().await?;
        Ok(tokio::task::spawn_blocking(read).await?)
    }

    /// Reads running now.
    pub(crate) fn busy(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn no_more_than_the_bound_run_at_once() {
        let pool = Arc::new(ReadPool::new(3));
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let reads: Vec<_> = (0..40)
            .map(|_| {
                let (pool, now, most) = (pool.clone(), now.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        now.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for r in reads {
            r.await.expect("joined").expect("read");
        }
        assert!(most.load(Ordering::SeqCst) <= 3);
        assert_eq!(pool.busy(), 0);
    }
}
