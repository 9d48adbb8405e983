//! Authentication: turning a Hello's token into a user and device.
//!
//! The broker only sees the [`Authenticator`] trait; dev mode is one
//! implementation, JWT verification another.

pub mod authz;
pub(crate) mod backoff;
pub mod jwt;

use std::collections::HashSet;
use std::sync::Arc;

use confab_codec::{DeviceId, ErrorCode, RoomId, UserId};

pub use jwt::JwtAuth;

/// Who a connection is, and what its token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The authenticated user.
    pub user: UserId,
    /// The device, as confirmed by the token.
    pub device: DeviceId,
    /// When the token expires, in microseconds since the Unix epoch; the
    /// connection is closed then unless the token is refreshed.
    pub expires_at_us: Option<u64>,
    /// If set, the only rooms this connection may use.
    pub rooms: Option<Arc<HashSet<RoomId>>>,
}

impl Identity {
    /// Whether the token allows this room.
    pub fn may_use(&self, room: &RoomId) -> bool {
        self.rooms.as_ref().is_none_or(|r| r.contains(room))
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    /// The wire code sent to the client (`Unauthenticated`, `TokenExpired`).
    pub code: ErrorCode,
    /// Detail for the client and the log.
    pub message: String,
}

impl AuthError {
    /// A refusal with code `Unauthenticated`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::Unauthenticated,
            message: message.into(),
        }
    }
}

/// Verifies Hello tokens. Called once per handshake and per token refresh,
/// on the async reactor, so it must not block.
pub trait Authenticator: Send + Sync + 'static {
    /// Checks `token` for the device the client announced.
    ///
    /// # Errors
    /// An [`AuthError`] if the token is not acceptable.
    fn authenticate(&self, token: &str, device: &DeviceId) -> Result<Identity, AuthError>;
}

/// Insecure development authentication: the token is `user` or
/// `user:device`, and is believed. Never use it where untrusted clients can
/// connect.
#[derive(Debug, Default, Clone, Copy)]
pub struct DevAuth;

impl Authenticator for DevAuth {
    fn authenticate(&self, token: &str, device: &DeviceId) -> Result<Identity, AuthError> {
        let (user, token_device) = match token.split_once(':') {
            Some((u, d)) => (u, Some(d)),
            None => (token, None),
        };
        let user = UserId::new(user)
            .map_err(|_| AuthError::unauthenticated("dev token must be `user` or `user:device`"))?;
        if let Some(d) = token_device {
            if d != device.as_str() {
                return Err(AuthError::unauthenticated(format!(
                    "token is for device `{d}` but Hello names device `{device}`"
                )));
            }
        }
        Ok(Identity {
            user,
            device: device.clone(),
            expires_at_us: None,
            rooms: None,
        })
    }
}

/// Refuses every token: used when no authentication method is configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct DenyAll;

impl Authenticator for DenyAll {
    fn authenticate(&self, _: &str, _: &DeviceId) -> Result<Identity, AuthError> {
        Err(AuthError::unauthenticated(
            "no authentication method is enabled on this server",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(token: &str, device: &str) -> Result<Identity, AuthError> {
        DevAuth.authenticate(token, &DeviceId::new(device).expect("device id"))
    }

    #[test]
    fn dev_tokens() {
        let id = dev("alice:phone", "phone").expect("accepted");
        assert_eq!(id.user.as_str(), "alice");
        assert_eq!(id.device.as_str(), "phone");
        assert_eq!(dev("bob", "laptop").expect("accepted").user.as_str(), "bob");
        assert_eq!(
            dev("alice:phone", "laptop").expect_err("mismatch").code,
            ErrorCode::Unauthenticated
        );
        assert!(dev("", "phone").is_err());
        assert!(DenyAll
            .authenticate("alice", &DeviceId::new("x").expect("id"))
            .is_err());
    }
}
