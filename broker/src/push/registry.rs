//! Push registrations (`RegisterPush`): checked here, stored by
//! [`crate::storage::meta::push`].

use confab_codec::{DeviceId, UserId};

use super::PushTarget;
use crate::storage::{meta, MetaWrite, RoomLog, StorageError};

/// Longest provider name accepted.
const MAX_PROVIDER_LEN: usize = 32;
/// Longest token accepted (APNs and FCM tokens are far shorter).
const MAX_TOKEN_LEN: usize = 4096;
/// Most devices of one user read per job.
const MAX_TARGETS: usize = 64;

/// Checks a registration from the wire.
///
/// # Errors
/// The refusal's message (answered as `InvalidRequest`).
pub(crate) fn validate(provider: &str, token: &str) -> Result<(), String> {
    if provider.is_empty()
        || provider.len() > MAX_PROVIDER_LEN
        || !provider
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "provider must be 1 to {MAX_PROVIDER_LEN} letters, digits, '-' or '_'"
        ));
    }
    if token.len() > MAX_TOKEN_LEN || token.chars().any(char::is_control) {
        return Err(format!(
            "token must be at most {MAX_TOKEN_LEN} bytes without control characters"
        ));
    }
    Ok(())
}

/// The write that stores (or, with an empty token, removes) a device's
/// registration; the sequencer commits it.
pub(crate) fn registration(
    user: &UserId,
    device: &DeviceId,
    provider: &str,
    token: &str,
) -> MetaWrite {
    meta::push::put(user, device, provider, token)
}

/// The registered devices of a user (at most [`MAX_TARGETS`]). Blocking.
///
/// # Errors
/// If the engine fails.
pub(crate) fn targets(log: &dyn RoomLog, user: &UserId) -> Result<Vec<PushTarget>, StorageError> {
    Ok(meta::push::registrations(log, user, MAX_TARGETS)?
        .into_iter()
        .map(|r| PushTarget {
            device: r.device,
            provider: r.provider,
            token: r.token,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Durability, MemoryLog};

    fn register(
        log: &MemoryLog,
        user: &UserId,
        device: &DeviceId,
        provider: &str,
        token: &str,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let write = registration(user, device, provider, token);
        log.commit(&[], &[write], durability)
    }

    #[test]
    fn register_list_and_unregister() {
        let log = MemoryLog::new();
        let (alice, al) = (
            UserId::new("al").expect("id"),
            UserId::new("alice").expect("id"),
        );
        let phone = DeviceId::new("phone").expect("id");
        let laptop = DeviceId::new("laptop").expect("id");
        register(&log, &alice, &phone, "fcm", "t1", Durability::Wal).expect("register");
        register(&log, &alice, &laptop, "webpush", "t2", Durability::Wal).expect("register");
        // A user whose id extends another's does not see its devices.
        register(&log, &al, &phone, "apns", "t3", Durability::Wal).expect("register");
        let mut t = targets(&log, &alice).expect("targets");
        t.sort_by(|a, b| a.device.as_str().cmp(b.device.as_str()));
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].provider.as_str(), t[0].token.as_str()),
            ("webpush", "t2")
        );
        register(&log, &alice, &laptop, "webpush", "", Durability::Wal).expect("unregister");
        let t = targets(&log, &alice).expect("targets");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].device, phone);
        assert!(validate("fcm", "x").is_ok());
        assert!(validate("", "x").is_err());
        assert!(validate("f cm", "x").is_err());
    }
}
