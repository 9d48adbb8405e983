//! The broker's own threads (sequencer, fan-out) must not end on their own:
//! a broker whose sequencer is gone accepts nothing, and one whose fan-out
//! is gone would acknowledge messages that nobody receives. Each runs under
//! a guard that, if the thread panics or returns an error, records why,
//! turns readiness off and cancels the root shutdown token: listeners stop
//! accepting, sessions say Goodbye, and `confab serve` exits non-zero.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio_util::sync::CancellationToken;
use tracing::error;

/// Watches the broker's threads.
#[derive(Debug)]
pub(crate) struct Supervisor {
    failure: Mutex<Option<String>>,
    shutdown: CancellationToken,
    ready: Arc<AtomicBool>,
}

impl Supervisor {
    pub(crate) fn new(shutdown: CancellationToken, ready: Arc<AtomicBool>) -> Self {
        Self {
            failure: Mutex::new(None),
            shutdown,
            ready,
        }
    }

    /// Stops the broker because of `why` (the first failure is kept).
    pub(crate) fn fail(&self, why: String) {
        error!(reason = %why, "fatal: stopping the broker");
        {
            // Under the lock, so that `mark_ready` cannot undo it.
            let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
            failure.get_or_insert(why);
            self.ready.store(false, Ordering::Release);
        }
        self.shutdown.cancel();
    }

    /// Turns readiness on, unless a thread has already failed.
    pub(crate) fn mark_ready(&self) {
        let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            self.ready.store(true, Ordering::Release);
        }
    }

    /// Why the broker stopped on its own, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts a thread named `name` running `body`; if it panics or returns
    /// an error, the broker stops.
    ///
    /// # Errors
    /// If the thread cannot be started.
    pub(crate) fn spawn<E, F>(
        self: &Arc<Self>,
        name: &str,
        body: F,
    ) -> std::io::Result<JoinHandle<()>>
    where
        E: Display,
        F: FnOnce() -> Result<(), E> + Send + 'static,
    {
        let guard = Guard {
            supervisor: self.clone(),
            name: name.to_owned(),
            done: false,
        };
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut guard = guard;
                match body() {
                    Ok(()) => guard.done = true,
                    Err(e) => {
                        guard.done = true;
                        guard.supervisor.fail(format!("{}: {e}", guard.name));
                    }
                }
            })
    }
}

/// Reports its thread's death unless the thread finished normally.
struct Guard {
    supervisor: Arc<Supervisor>,
    name: String,
    done: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.supervisor
                .fail(format!("the {} thread panicked", self.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_thread_stops_the_broker() {
        let token = CancellationToken::new();
        let ready = Arc::new(AtomicBool::new(true));
        let sup = Arc::new(Supervisor::new(token.clone(), ready.clone()));
        let t = sup
            .spawn("doomed", || -> Result<(), String> { panic!("boom") })
            .expect("spawn");
        assert!(t.join().is_err());
        assert!(token.is_cancelled());
        assert!(!ready.load(Ordering::Acquire));
        assert_eq!(sup.failure().as_deref(), Some("the doomed thread panicked"));
    }

    #[test]
    fn an_error_stops_the_broker_and_a_normal_end_does_not() {
        let token = CancellationToken::new();
        let ready = Arc::new(AtomicBool::new(true));
        let sup = Arc::new(Supervisor::new(token.clone(), ready.clone()));
        sup.spawn("fine", || Ok::<(), String>(()))
            .expect("spawn")
            .join()
            .expect("join");
        assert!(!token.is_cancelled());
        assert!(sup.failure().is_none());
        sup.spawn("broken", || Err::<(), _>("the fan-out thread is gone"))
            .expect("spawn")
            .join()
            .expect("join");
        assert!(token.is_cancelled());
        assert_eq!(
            sup.failure().as_deref(),
            Some("broken: the fan-out thread is gone")
        );
    }
}
