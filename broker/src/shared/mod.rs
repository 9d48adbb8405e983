//! The state every task of a running broker shares: configuration,
//! storage, the channel to the sequencer, the hubs of the ephemeral
//! features, and the registry of connected devices. The server builds it;
//! sessions, transports, the embedding API and the ops endpoints use it.

mod compression;
mod devices;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub(crate) use compression::{ContextBudget, ContextSlot};
pub(crate) use devices::DeviceRegistry;

use crate::admission::Admission;
use crate::auth::authz::Authorizer;
use crate::auth::backoff::LoginBackoff;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::fanout::RoomRegistry;
use crate::presence::PresenceHub;
use crate::push::PushHub;
use crate::ratelimit::UserLimits;
use crate::rooms::typing::TypingHub;
use crate::sequencer::{PublishReq, SeqTx};
use crate::stats::Stats;
use crate::storage::{ReadPool, RoomLog};

/// State shared by every task of a running broker.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) log: Arc<dyn RoomLog>,
    pub(crate) rooms: Arc<RoomRegistry>,
    pub(crate) sequencer: SeqTx,
    pub(crate) auth: Arc<dyn Authenticator>,
    /// Failed-login back-off per client address.
    pub(crate) login_backoff: Arc<LoginBackoff>,
    pub(crate) session_ids: AtomicU64,
    pub(crate) shutdown: CancellationToken,
    pub(crate) stats: Arc<Stats>,
    pub(crate) devices: DeviceRegistry,
    pub(crate) typing: Arc<TypingHub>,
    pub(crate) presence: Arc<PresenceHub>,
    /// Per-user rate-limit buckets, shared by the user's connections.
    pub(crate) user_limits: Arc<UserLimits>,
    /// Admission control: pending handshakes, per-address limits and the
    /// `limits.max_connections` session slots, shared by every listener.
    pub(crate) admission: Arc<Admission>,
    /// The embedding service's access decisions, replacing membership.
    pub(crate) authorizer: Option<Arc<dyn Authorizer>>,
    /// Offline push, when `push.enabled`.
    pub(crate) push: Option<Arc<PushHub>>,
    /// The zstd contexts of compressed connections, at most
    /// `compression.max_contexts`.
    pub(crate) compression: Arc<ContextBudget>,
    /// Storage reads made for clients (queries, history, catch-up), at
    /// most `limits.max_concurrent_reads` at a time.
    pub(crate) reads: Arc<ReadPool>,
    /// Cluster mode: sends publishes for rooms another node owns to that
    /// node. `None` in single-node mode.
    pub(crate) forward: Option<Arc<dyn Forward>>,
}

/// Cluster mode's routing of publishes (docs/cluster.md, "The seam in the
/// broker"): a publish for a room this node owns goes to the local
/// sequencer, any other to the room's owner.
pub(crate) trait Forward: Send + Sync + std::fmt::Debug {
    /// Takes `req` if another node owns its room (`None`): it is
    /// forwarded, and the owner's reply (with the request id of `req`)
    /// reaches the device's outbox and gives its publish permit back.
    /// Gives `req` back if this node owns the room. Never blocks: it hands
    /// the request to a task, in the order of the calls.
    fn forward(&self, req: PublishReq) -> Option<PublishReq>;
}
