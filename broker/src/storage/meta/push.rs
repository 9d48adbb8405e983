//! Push registrations (`RegisterPush`): per device, a provider and a token.

use confab_codec::{DeviceId, UserId};
use serde::{Deserialize, Serialize};

use super::prefixed;
use crate::storage::{MetaWrite, RoomLog, StorageError};

fn user_prefix(user: &UserId) -> Vec<u8> {
    prefixed(b'p', user.as_bytes(), &[])
}

fn key(user: &UserId, device: &DeviceId) -> Vec<u8> {
    prefixed(b'p', user.as_bytes(), device.as_bytes())
}

#[derive(Serialize, Deserialize)]
struct Stored {
    provider: String,
    token: String,
}

/// A stored registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registration {
    pub(crate) device: DeviceId,
    pub(crate) provider: String,
    pub(crate) token: String,
}

/// The write that stores (or, with an empty token, removes) a device's
/// registration.
pub(crate) fn put(user: &UserId, device: &DeviceId, provider: &str, token: &str) -> MetaWrite {
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

/// The registrations of a user's devices (at most `max`); unreadable
/// entries are skipped.
///
/// # Errors
/// If the storage fails.
pub(crate) fn registrations(
    log: &dyn RoomLog,
    user: &UserId,
    max: usize,
) -> Result<Vec<Registration>, StorageError> {
    let prefix = user_prefix(user);
    let entries = log.meta_scan(&prefix, None, max)?;
    Ok(entries
        .into_iter()
        .filter_map(|(k, v)| {
            let device = std::str::from_utf8(k.get(prefix.len()..)?).ok()?;
            let device = DeviceId::new(device).ok()?;
            let stored: Stored = serde_json::from_slice(&v).ok()?;
            Some(Registration {
                device,
                provider: stored.provider,
                token: stored.token,
            })
        })
        .collect())
}
