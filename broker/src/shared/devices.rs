//! Which session each device has open. A device that connects again
//! replaces its older session, which is closed with `SessionReplaced`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The open session of every connected device, keyed by `user \0 device`.
/// Touched once per connect and disconnect, never per message.
#[derive(Debug, Default)]
pub(crate) struct DeviceRegistry {
    sessions: Mutex<HashMap<Arc<str>, (u64, CancellationToken)>>,
}

impl DeviceRegistry {
    /// Registers a new session of a device and returns the token that is
    /// cancelled when a later session replaces it. Cancels the token of the
    /// session it replaces, if any.
    pub(crate) fn register(&self, device: &Arc<str>, session_id: u64) -> CancellationToken {
        let token = CancellationToken::new();
        let old = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device.clone(), (session_id, token.clone()));
        if let Some((_, old)) = old {
            old.cancel();
        }
        token
    }

    /// Forgets a session when it ends, unless a newer one took its place.
    pub(crate) fn unregister(&self, device: &Arc<str>, session_id: u64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions
            .get(device)
            .is_some_and(|(id, _)| *id == session_id)
        {
            sessions.remove(device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_session_replaces_the_first() {
        let reg = DeviceRegistry::default();
        let dev: Arc<str> = Arc::from("alice\0phone");
        let first = reg.register(&dev, 1);
        assert!(!first.is_cancelled());
        let second = reg.register(&dev, 2);
        assert!(first.is_cancelled());
        // The replaced session ending does not remove the newer one.
        reg.unregister(&dev, 1);
        let third = reg.register(&dev, 3);
        assert!(second.is_cancelled());
        reg.unregister(&dev, 3);
        assert!(!third.is_cancelled());
    }
}
