//! Push registrations (`RegisterPush`), persisted in the metadata keyspace:
//! key `p` · len(user) · user · device, value JSON `{provider, token}`.

use confab_codec::{DeviceId, UserId};
use serde::{Deserialize, Serialize};

use super::PushTarget;
use crate::storage::{MetaWrite, RoomLog, StorageError};

/// Longest provider name accepted.
const MAX_PROVIDER_LEN: usize = 32;
/// Longest token accepted (APNs and FCM tokens are far shorter).
const MAX_TOKEN_LEN: usize = 4096;
/// Most devices of one user read per job.
const MAX_TARGETS: usize = 64;

fn user_prefix(user: &UserId) -> Vec<u8> {
    let id = user.as_bytes();
    let mut k = Vec::with_capacity(2 + id.len());
    k.push(b'p');
    k.push(id.len() as u8);
    k.extend_from_slice(id);
    k
}

fn key(user: &UserId, device: &DeviceId) -> Vec<u8> {
    let mut k = user_prefix(user);
    k.extend_from_slice(device.as_bytes());
    k
}

#[derive(Serialize, Deserialize)]
struct Stored {
    provider: String,
    token: String,
}

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
    let value = (!token.is_empty()).then(|| {
        serde_json::to_vec(&Stored {
            provider: provider.to_owned(),
            token: token.to_owned(),
        })
        .unwrap_or_default()
    });
    MetaWrite {
        key: key(user, device),
        value,
    }
}

/// The registered devices of a user (at most [`MAX_TARGETS`]). Blocking.
///
/// # Errors
/// If the engine fails.
pub(crate) fn targets(log: &dyn RoomLog, user: &UserId) -> Result<Vec<PushTarget>, StorageError> {
    let prefix = user_prefix(user);
    let entries = log.meta_scan(&prefix, None, MAX_TARGETS)?;
    Ok(entries
        .into_iter()
        .filter_map(|(k, v)| {
            let device = std::str::from_utf8(k.get(prefix.len()..)?).ok()?;
            let device = DeviceId::new(device).ok()?;
            let stored: Stored = serde_json::from_slice(&v).ok()?;
            Some(PushTarget {
                device,
                provider: stored.provider,
                token: stored.token,
            })
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
