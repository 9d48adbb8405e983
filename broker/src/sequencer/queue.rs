//! The queue into the sequencer, bounded for client requests.
//!
//! Sessions and the embedding API wait for a slot before they send
//! ([`SeqTx::send`]); the sequencer gives the slots back as it takes
//! requests off the queue, one call per group. A session that waits stops
//! reading from its socket, so a flood of any request kind ends as TCP
//! backpressure on the client that sends it, not as memory in the broker.
//! The broker's own messages (stop, unsubscribe, retention trims) never
//! wait ([`SeqTx::send_now`]): they take a free slot if there is one and
//! go over the bound otherwise, which is safe because each is bounded at
//! its source (a stop, a connection's subscriptions, one trim per room and
//! chunk).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::Semaphore;

use super::SeqMsg;

/// The sequencer is gone (the broker is stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone;

/// What both ends share.
#[derive(Debug)]
struct Slots {
    free: Semaphore,
    /// Messages sent over the bound by [`SeqTx::send_now`] and not yet
    /// matched by the receiver: they took no slot, so taking them off the
    /// queue gives none back.
    unslotted: AtomicUsize,
}

/// The sending end, cloned by everything that talks to the sequencer.
#[derive(Debug, Clone)]
pub(crate) struct SeqTx {
    tx: Sender<SeqMsg>,
    slots: Arc<Slots>,
}

/// The sequencer's end.
#[derive(Debug)]
pub(crate) struct SeqRx {
    rx: Receiver<SeqMsg>,
    slots: Arc<Slots>,
}

/// A queue that holds at most `capacity` client requests.
pub(crate) fn queue(capacity: usize) -> (SeqTx, SeqRx) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let slots = Arc::new(Slots {
        free: Semaphore::new(capacity.min(Semaphore::MAX_PERMITS)),
        unslotted: AtomicUsize::new(0),
    });
    (
        SeqTx {
            tx,
            slots: slots.clone(),
        },
        SeqRx { rx, slots },
    )
}

impl SeqTx {
    /// Sends a client request, waiting first for a free slot (FIFO among
    /// the waiters).
    ///
    /// # Errors
    /// [`Gone`] if the sequencer has stopped.
    pub(crate) async fn send(&self, msg: SeqMsg) -> Result<(), Gone> {
        let permit = match self.slots.free.try_acquire() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Gone),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                metrics::counter!("confab_sequencer_queue_waits_total").increment(1);
                self.slots.free.acquire().await.map_err(|_| Gone)?
            }
        };
        permit.forget();
        self.tx.send(msg).map_err(|_| {
            self.slots.free.add_permits(1);
            Gone
        })
    }

    /// Sends one of the broker's own messages without waiting.
    ///
    /// # Errors
    /// [`Gone`] if the sequencer has stopped.
    pub(crate) fn send_now(&self, msg: SeqMsg) -> Result<(), Gone> {
        match self.slots.free.try_acquire() {
            Ok(p) => p.forget(),
            Err(_) => {
                self.slots.unslotted.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.tx.send(msg).map_err(|_| Gone)
    }
}

impl SeqRx {
    /// The channel, for `select!`.
    pub(crate) fn receiver(&self) -> &Receiver<SeqMsg> {
        &self.rx
    }

    /// Requests queued and not yet taken.
    pub(crate) fn len(&self) -> usize {
        self.rx.len()
    }

    /// Gives back the slots of `taken` messages just taken off the queue.
    pub(crate) fn release(&self, taken: usize) {
        if taken == 0 {
            return;
        }
        let mut slotted = taken;
        let _ = self
            .slots
            .unslotted
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                let matched = u.min(taken);
                slotted = taken - matched;
                Some(u - matched)
            });
        if slotted > 0 {
            self.slots.free.add_permits(slotted);
        }
    }
}

impl Drop for SeqRx {
    /// Senders waiting for a slot learn that the sequencer is gone.
    fn drop(&mut self) {
        self.slots.free.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn stop() -> SeqMsg {
        SeqMsg::Stop
    }

    #[tokio::test]
    async fn senders_wait_for_slots_and_get_them_back_on_release() {
        let (tx, rx) = queue(2);
        tx.send(stop()).await.expect("first");
        tx.send(stop()).await.expect("second");
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(stop()).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the third waits for a slot");
        assert_eq!(rx.len(), 2);
        let _ = rx.receiver().try_recv();
        rx.release(1);
        let sent = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(sent.expect("woken").expect("task"), Ok(()));
        assert_eq!(rx.len(), 2);
    }

    #[tokio::test]
    async fn the_brokers_own_messages_go_over_the_bound_without_taking_slots() {
        let (tx, rx) = queue(1);
        tx.send(stop()).await.expect("slot");
        tx.send_now(stop()).expect("over the bound");
        tx.send_now(stop()).expect("over the bound");
        assert_eq!(rx.len(), 3);
        while rx.receiver().try_recv().is_ok() {}
        rx.release(3);
        // Exactly one slot again: the two messages over the bound gave
        // none back.
        tx.send(stop()).await.expect("slot");
        let blocked = tokio::time::timeout(Duration::from_millis(50), tx.send(stop())).await;
        assert!(blocked.is_err(), "the bound is still 1");
    }

    #[tokio::test]
    async fn waiters_learn_when_the_sequencer_is_gone() {
        let (tx, rx) = queue(1);
        tx.send(stop()).await.expect("slot");
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(stop()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        let sent = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(sent.expect("woken").expect("task"), Err(Gone));
        assert_eq!(tx.send_now(stop()), Err(Gone));
    }
}
