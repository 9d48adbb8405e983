//! How the sequencer hands its outcomes to the fan-out.
//!
//! The fan-out thread takes messages off an ordered, bounded channel. At
//! low rates, that hand-over is one thread wake-up per group commit on the
//! path of every message (session, sequencer, fan-out, writer), with its
//! latency. So when the fan-out thread has nothing left to do (every
//! message sent to it is carried out) and a message is small (at most
//! `delivery.inline_fanout` deliveries), the sequencer carries it out on
//! its own thread, with the same [`handle`] the fan-out thread runs.
//!
//! Order is kept: the sequencer is the only sender, and it counts the
//! messages in the channel (`queued`), which the fan-out thread counts
//! down only after carrying one out and waking its writers. A message is
//! carried out inline only when the count is zero: everything handed over
//! before it is done, and nothing can be handed over while the sequencer
//! is busy with it. The count's Release (fan-out thread) and Acquire
//! (sequencer) make the fan-out thread's work visible to the sequencer
//! before it goes on; the channel does the same the other way round. The
//! two threads never carry out messages at the same time.
//!
//! Under load the fan-out thread is busy and every message goes to it, as
//! before: large rooms and bursts never slow down sequencing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, SendError, Sender};
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use super::{handle, CatchupCtx, FanoutMsg, Outbox};

/// Creates the channel to the fan-out thread, holding at most `capacity`
/// messages; the sender blocks while it is full.
pub(crate) fn channel(capacity: usize) -> (Handoff, FanoutRx) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Handoff {
            tx,
            queued: queued.clone(),
            inline: None,
        },
        FanoutRx { rx, queued },
    )
}

/// The sequencer's side: see the module docs.
pub(crate) struct Handoff {
    tx: Sender<FanoutMsg>,
    /// Messages sent to the fan-out thread and not yet carried out.
    queued: Arc<AtomicUsize>,
    /// Set to carry out small messages inline.
    inline: Option<Inline>,
}

/// What carrying out a message on the sequencer's thread needs: what the
/// fan-out thread has.
struct Inline {
    ctx: Arc<CatchupCtx>,
    runtime: Handle,
    tasks: TaskTracker,
    /// Most deliveries (subscribers of the rooms a message reaches, summed
    /// over its runs) of a message carried out inline.
    max_deliveries: usize,
    to_wake: Vec<Arc<Outbox>>,
}

impl Handoff {
    /// A hand-off over `tx` that never carries out a message itself (the
    /// deterministic simulation steps the fan-out on its own).
    #[cfg(test)]
    pub(crate) fn new(tx: Sender<FanoutMsg>) -> Self {
        Self {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            inline: None,
        }
    }

    /// Carries out messages of at most `max_deliveries` deliveries on the
    /// sender's thread while the fan-out thread is idle (0: never); they
    /// are counted in the stats' `fanout_inline`.
    pub(crate) fn inline(
        mut self,
        ctx: Arc<CatchupCtx>,
        runtime: Handle,
        tasks: TaskTracker,
        max_deliveries: usize,
    ) -> Self {
        self.inline = (max_deliveries > 0).then(|| Inline {
            ctx,
            runtime,
            tasks,
            max_deliveries,
            to_wake: Vec::new(),
        });
        self
    }

    /// Hands `msg` on: carries it out now if it is small and the fan-out
    /// thread is idle, else sends it to that thread (waiting while its
    /// channel is full).
    ///
    /// # Errors
    /// If the fan-out thread is gone.
    pub(crate) fn send(&mut self, msg: FanoutMsg) -> Result<(), SendError<FanoutMsg>> {
        if let Some(inline) = &mut self.inline {
            if self.queued.load(Ordering::Acquire) == 0 && inline.fits(&msg) {
                inline.carry_out(msg);
                return Ok(());
            }
        }
        // Counted before it can be received, so the count never goes
        // below zero; the channel orders it before the receiver's
        // decrement.
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.send(msg).inspect_err(|_| {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        })
    }
}

impl Inline {
    /// Whether `msg` is small enough to carry out inline. Only room events
    /// are: subscription changes and evictions go to the fan-out thread.
    fn fits(&self, msg: &FanoutMsg) -> bool {
        match msg {
            FanoutMsg::Committed(events) => {
                let mut deliveries = 0usize;
                let mut last: Option<&Arc<super::Room>> = None;
                for ev in events {
                    if last.is_some_and(|r| Arc::ptr_eq(r, &ev.room)) {
                        continue;
                    }
                    last = Some(&ev.room);
                    deliveries += ev.room.subscribers().len();
                    if deliveries > self.max_deliveries {
                        return false;
                    }
                }
                true
            }
            FanoutMsg::Ephemeral { room, .. } => room.subscribers().len() <= self.max_deliveries,
            _ => false,
        }
    }

    fn carry_out(&mut self, msg: FanoutMsg) {
        let (ctx, runtime, tasks) = (&self.ctx, &self.runtime, &self.tasks);
        let mut catch_up = |sub: Arc<super::Subscription>, lagged: bool| {
            tasks.spawn_on(sub.catch_up(ctx.clone(), lagged), runtime);
        };
        handle(msg, ctx, &mut catch_up, &mut self.to_wake);
        for outbox in self.to_wake.drain(..) {
            outbox.wake();
        }
        self.ctx.stats.fanout_inline.fetch_add(1, Ordering::Relaxed);
    }
}

/// The fan-out thread's side of [`channel`].
pub(crate) struct FanoutRx {
    rx: Receiver<FanoutMsg>,
    queued: Arc<AtomicUsize>,
}

impl FanoutRx {
    /// The next message, waiting for one; `None` once the sender is gone.
    pub(crate) fn recv(&self) -> Option<FanoutMsg> {
        self.rx.recv().ok()
    }

    /// Says that a received message is carried out (its writers woken):
    /// the sequencer may carry out the next small one itself.
    pub(crate) fn done(&self) {
        self.queued.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_idle_fan_out_lets_the_sender_carry_out_messages() {
        // The count alone: two sent, one done, one left.
        let (mut tx, rx) = channel(4);
        tx.send(FanoutMsg::Stop).expect("room in the channel");
        tx.send(FanoutMsg::Stop).expect("room in the channel");
        assert_eq!(tx.queued.load(Ordering::Acquire), 2);
        assert!(rx.recv().is_some());
        rx.done();
        assert_eq!(tx.queued.load(Ordering::Acquire), 1);
        assert!(rx.recv().is_some());
        rx.done();
        assert_eq!(tx.queued.load(Ordering::Acquire), 0);
        drop(rx);
        // A failed send is not counted.
        assert!(tx.send(FanoutMsg::Stop).is_err());
        assert_eq!(tx.queued.load(Ordering::Acquire), 0);
    }
}
