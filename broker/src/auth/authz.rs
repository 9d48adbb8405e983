//! The authorization hook: an embedding service decides who may use which
//! room, instead of Confab's membership tables.

use std::future::Future;
use std::pin::Pin;

use confab_codec::{DeviceId, ErrorCode, RoomId, UserId};

/// What a device wants to do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Follow the room's events (Subscribe, Hello's resume list), and move
    /// its delivered and read markers (Receipt).
    Subscribe,
    /// Publish into the room, and send typing indicators.
    Publish,
    /// Read a page of its history.
    History,
}

/// One access decision to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    /// The authenticated user.
    pub user: UserId,
    /// Their device.
    pub device: DeviceId,
    /// The room.
    pub room: RoomId,
    /// What they want to do.
    pub action: Action,
}

/// A refusal, sent to the device as an `Error` frame (or a refused
/// subscription result) with this code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denied {
    /// The wire code, usually `Forbidden` or `NotMember`.
    pub code: ErrorCode,
    /// Detail for the device.
    pub message: String,
}

impl Denied {
    /// A refusal with code `Forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::Forbidden,
            message: message.into(),
        }
    }
}

/// The future an [`Authorizer`] returns.
pub type AccessFuture = Pin<Box<dyn Future<Output = Result<(), Denied>> + Send + 'static>>;

/// Decides room access for socket clients, replacing Confab's membership
/// checks for subscribe, publish, history, typing and receipts (room
/// management requests and room info still use the membership tables).
///
/// Given with [`crate::BrokerBuilder::authorizer`]. The future runs on the
/// session's task, before the request goes to the sequencer, so a slow
/// answer delays that one connection only (its requests stay in order);
/// it may await the service's own user database. It is called for every
/// publish: keep a cache for hot paths. Its cost is one boxed future and
/// a copy of the three ids per call.
pub trait Authorizer: Send + Sync + 'static {
    /// Allows or denies one request.
    fn authorize(&self, request: AccessRequest) -> AccessFuture;
}
