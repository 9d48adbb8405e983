//! Cluster mode's building blocks on NATS JetStream (see docs/cluster.md).
//!
//! Several broker nodes share one replicated engine, JetStream, and write
//! no consensus of their own:
//!
//! - [`JetStreamLog`]: every room's log as one subject of one stream. A
//!   commit of a room is one message (a *chunk* of consecutive records),
//!   published with `Nats-Expected-Last-Subject-Sequence`, so that an
//!   append from a writer that did not see the room's last chunk is
//!   refused by JetStream itself;
//! - [`RoomWriter`]: the one writer of a room on its owner node. It learns
//!   the room's head and recent client message ids from the stream when it
//!   takes the room over, appends fenced on what it last wrote, and steps
//!   down for good when an append is refused;
//! - [`Membership`]: the live nodes, each heartbeating its key in a KV
//!   bucket whose entries expire after a short TTL;
//! - [`owner`]: rendezvous hashing of a room over the live nodes, so every
//!   node that sees the same live set names the same owner;
//! - [`Follower`]: a room followed from another node, from the chunks
//!   JetStream republishes once stored, gaps read from the stream.
//!
//! `confab serve` with `[cluster]` runs a `node::ClusterNode`: the
//! sequencer commits through `room_log::ClusterLog` (each room's part
//! of a group as one fenced chunk), publishes for rooms another node owns
//! are forwarded to it (`forward`), rooms are followed into the local
//! fan-out, and typing (`typing`) and presence (`presence`) reach the
//! devices of every node. Single-node mode does not use this module at
//! all.

mod chunk;
mod error;
mod follow;
mod forward;
mod log;
mod membership;
mod names;
pub(crate) mod node;
mod presence;
mod rendezvous;
mod room_log;
mod settings;
mod status;
mod typing;
mod writer;

pub use error::ClusterError;
pub use follow::{Follower, RoomFeed, Step};
pub use log::{ChunkRef, JetStreamLog, LogConfig};
pub use membership::{LiveNodes, Membership, MembershipConfig, NodeId};
pub use rendezvous::{owner, score};
pub use status::{report, NodeStatus, RoomStatus, MAX_STATUS_ROOMS};
pub use writer::{Appended, RoomWriter};
