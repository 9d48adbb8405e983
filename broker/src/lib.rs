//! # confab-broker
//!
//! The Confab chat message broker, as a library first: a service can embed
//! it with [`Broker::builder`], and the `confab` binary is a thin wrapper.
//!
//! The parts, in the order a message flows through them:
//!
//! - [`transport`]: listeners (TCP, TLS over TCP, QUIC) that accept
//!   connections and hand the session a byte stream, or a QUIC connection's
//!   control and event streams;
//! - `session`: the handshake and request dispatch of one connection;
//! - `sequencer`: one thread that numbers publishes per room and writes them
//!   by group commit;
//! - [`storage`]: the per-room append-only logs ([`storage::RoomLog`], with
//!   RocksDB and in-memory implementations);
//! - `fanout`: one thread that delivers committed events into per-device
//!   bounded outboxes, switching lagging devices to catch-up from the log;
//! - [`auth`]: token verification behind [`auth::Authenticator`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use confab_broker::{config::Config, Broker};
//!
//! let mut config = Config::default();
//! config.data_dir = "/tmp/confab-example".into();
//! let broker = Broker::builder(config).start().await?;
//! println!("listening on {}", broker.tcp_addr());
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

#[cfg(feature = "rocksdb")]
pub mod admin;
mod admission;
pub mod auth;
mod base;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod config;
pub mod embed;
mod fanout;
mod ops;
mod presence;
pub mod push;
mod ratelimit;
pub mod retention;
mod rooms;
mod sequencer;
mod server;
mod session;
mod shared;
#[cfg(test)]
mod sim;
mod stats;
pub mod storage;
mod supervise;
pub mod transport;

pub use auth::authz::{AccessRequest, Action, Authorizer, Denied};
pub use embed::{EmbedError, LocalSubscription, Published, RoomChange, SystemMessage};
pub use server::{Broker, BrokerBuilder, BrokerError, BrokerHandle};
pub use session::{FrameCodec, WireError};
pub use stats::BrokerStats;
