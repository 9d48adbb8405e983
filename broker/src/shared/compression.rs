//! The broker-wide budget of zstd contexts for compression (protocol 3.6),
//! shared by every session: see `crate::session` (`compression.rs`) for
//! who takes a slot and when.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The broker-wide count of zstd contexts, up to `compression.max_contexts`.
#[derive(Debug)]
pub(crate) struct ContextBudget {
    max: usize,
    live: AtomicUsize,
    /// Contexts asked for when none was free (a grant refused, or a stream
    /// left uncompressed for a batch).
    refused: AtomicUsize,
}

/// One context's slot in the [`ContextBudget`], given back on drop.
#[derive(Debug)]
pub(crate) struct ContextSlot(Arc<ContextBudget>);

impl Drop for ContextSlot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ContextBudget {
    /// A budget of `max` contexts.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            live: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        }
    }

    /// A slot, if fewer than `max` are taken.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<ContextSlot> {
        let taken = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Some(ContextSlot(self.clone())),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Contexts held now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Contexts refused since the start.
    pub(crate) fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_slots_and_gives_them_back() {
        let budget = Arc::new(ContextBudget::new(2));
        let a = budget.try_take();
        let b = budget.try_take();
        assert!(a.is_some() && b.is_some());
        assert!(budget.try_take().is_none());
        assert_eq!((budget.live(), budget.refused()), (2, 1));
        drop(a);
        assert_eq!(budget.live(), 1);
        let c = budget.try_take();
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(budget.live(), 0);
        assert!(Arc::new(ContextBudget::new(0)).try_take().is_none());
    }
}
