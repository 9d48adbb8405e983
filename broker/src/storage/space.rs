//! Whether the storage refuses writes for lack of space: entered when a
//! write fails with [`StorageError::NoSpace`], left when a write or a probe
//! succeeds again. Each transition is logged once, however many requests
//! are refused in between, and the state is exported as metrics
//! (`confab_storage_full`, `confab_storage_full_refusals_total`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::{RoomLog, StorageError};

/// How often a full storage is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a storage refuses writes because its disk is full, as of its
/// last write or probe ([`RoomLog::space`](super::RoomLog::space)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpaceStatus {
    /// The last write (or probe) was refused for lack of space.
    pub full: bool,
    /// Writes refused for lack of space since the storage was opened: a
    /// group commit (of up to `storage.max_batch` requests), a retention
    /// trim, a marker or registration write each count once.
    pub refused_writes: u64,
}

/// The full/not-full state of one storage, shared by its writers.
#[derive(Debug, Default)]
pub(crate) struct SpaceState {
    full: AtomicBool,
    refused: AtomicU64,
    /// When the current full stretch began, and the refusals before it.
    since: Mutex<Option<(Instant, u64)>>,
}

impl SpaceState {
    /// Records the outcome of a write (or probe). Failures other than a
    /// full disk say nothing about space and leave the state alone. On the
    /// hot path (every commit) this is one relaxed load.
    pub(crate) fn observe<T>(&self, result: &Result<T, StorageError>) {
        match result {
            Ok(_) => {
                if self.full.load(Ordering::Relaxed) {
                    self.leave();
                }
            }
            Err(e) if e.is_no_space() => self.enter(e),
            Err(_) => {}
        }
    }

    fn enter(&self, e: &StorageError) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed);
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        if since.is_none() {
            *since = Some((Instant::now(), refused));
            self.full.store(true, Ordering::Relaxed);
            error!(
                error = %e,
                "storage full: writes are refused (clients get StorageFull) until space is \
                 freed on the data directory's file system; reads go on"
            );
        }
    }

    fn leave(&self) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((start, before)) = since.take() {
            self.full.store(false, Ordering::Relaxed);
            let refused = self.refused.load(Ordering::Relaxed).saturating_sub(before);
            warn!(
                full_for_secs = start.elapsed().as_secs(),
                refused_writes = refused,
                "storage has space again: writes are accepted"
            );
        }
    }

    /// The current state.
    pub(crate) fn status(&self) -> SpaceStatus {
        SpaceStatus {
            full: self.full.load(Ordering::Relaxed),
            refused_writes: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// Probes the storage about once a second while it refuses writes for lack
/// of space (on a blocking thread), so that the state, its metric and its
/// log line end when space is back even if no client writes. Otherwise it
/// costs one atomic load a second. Returns at shutdown.
pub(crate) async fn watch(log: Arc<dyn RoomLog>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
        if log.space().full {
            let log = log.clone();
            // The storage records the outcome itself (and logs the end).
            let _ = tokio::task::spawn_blocking(move || log.probe_space()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_from_a_no_space_failure_to_the_next_success() {
        let s = SpaceState::default();
        let full: Result<(), _> = Err(StorageError::NoSpace("disk".into()));
        let other: Result<(), _> = Err(StorageError::Engine("io".into()));
        s.observe(&other);
        assert_eq!(s.status(), SpaceStatus::default(), "not about space");
        s.observe(&full);
        s.observe(&full);
        s.observe(&other);
        assert_eq!(
            s.status(),
            SpaceStatus {
                full: true,
                refused_writes: 2
            }
        );
        s.observe(&Ok(()));
        assert_eq!(
            s.status(),
            SpaceStatus {
                full: false,
                refused_writes: 2
            }
        );
        s.observe(&full);
        assert!(s.status().full, "and again");
    }
}
