//! Registration of this device for offline push notifications
//! (`RegisterPush`, docs/protocol.md section 7.2.10).

use confab_codec::{Ack, Body, RegisterPush};

use crate::client::{unexpected, Client};
use crate::driver::ReqMode;
use crate::error::ClientError;

impl Client {
    /// Registers this device for push notifications through `provider`
    /// (`apns`, `fcm`, `webpush`, ...) with the provider's device `token`.
    /// The broker keeps the registration across restarts and, while none
    /// of the user's devices is connected, hands new messages of the
    /// user's rooms to its notifier, which reaches the device through the
    /// provider. Registering again replaces the token.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// client.register_push("fcm", "token-from-the-fcm-sdk").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Server`] with `Unsupported` (push is off on this
    /// broker) or `InvalidRequest` (a bad provider name or token), and the
    /// common ones.
    pub async fn register_push(&self, provider: &str, token: &str) -> Result<(), ClientError> {
        let body = RegisterPush {
            provider: provider.to_owned(),
            token: token.to_owned(),
        };
        match self.request(body, ReqMode::Reply).await? {
            Body::Ack(Ack {}) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes this device's push registration (an empty token).
    ///
    /// # Errors
    /// As [`Client::register_push`].
    pub async fn unregister_push(&self, provider: &str) -> Result<(), ClientError> {
        self.register_push(provider, "").await
    }
}
