//! `confab admin`: inspection, compaction, backup and restore of a broker's
//! data directory, whether the broker runs or not.
//!
//! RocksDB admits one writer process. So:
//!
//! - read-only commands (`room-stats`, `tail`, `cursors`) open the
//!   database as a *secondary* instance, which works beside a running
//!   broker and on a stopped one alike;
//! - commands that need the writer (`backup`, `compact`) open the database
//!   themselves when the broker is stopped, and otherwise ask the running
//!   broker through its operations endpoint (`metrics.listen`, or
//!   `--url`), protected by `admin.token_file` or loopback-only;
//! - `restore` needs the broker stopped.

mod inspect;
mod maintain;

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::config::Config;
use crate::storage::StorageError;

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The storage failed, or holds something unexpected.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The running broker refused or failed the request.
    #[error("the broker answered: {0}")]
    Remote(String),
    /// The command cannot run in this situation.
    #[error("{0}")]
    Usage(String),
    /// `verify` found damage: the whole report.
    #[error("{0}")]
    Damaged(String),
}

/// The admin subcommands.
#[derive(Subcommand, Debug, Clone)]
#[non_exhaustive]
pub enum AdminCommand {
    /// A room's log bounds, size and membership.
    RoomStats {
        /// The room id.
        room: String,
    },
    /// A room's latest messages, oldest first, one per line.
    Tail {
        /// The room id.
        room: String,
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        count: usize,
    },
    /// A device's delivered markers and its user's read markers, per room.
    Cursors {
        /// The user id.
        user: String,
        /// The device id.
        device: String,
    },
    /// Compacts the whole database now.
    Compact(Remote),
    /// Writes a consistent checkpoint of the database into a new directory.
    Backup {
        /// The directory to create (absolute when the broker runs).
        dest: PathBuf,
        /// How to reach a running broker.
        #[command(flatten)]
        remote: Remote,
    },
    /// Reads every WAL, MANIFEST and table file and every log record, and
    /// says exactly what is damaged (exit status 1 if anything is). Run it
    /// on a stopped broker for a complete answer.
    Verify,
    /// Cluster mode: the nodes (advertised address, time since their last
    /// heartbeat, their view of the live set), the rooms each writes and
    /// follows, and how far each is behind the stream. Needs the cluster's
    /// NATS settings (`--cluster URLS` or `[cluster]`).
    Cluster,
    /// Replaces the (stopped) broker's data directory with a backup. The
    /// old directory is kept beside it as `<data_dir>.before-restore-<time>`.
    Restore {
        /// A directory written by `backup`.
        backup: PathBuf,
    },
}

/// How to reach a running broker's admin endpoints.
#[derive(Args, Debug, Clone, Default)]
pub struct Remote {
    /// The operations endpoint, for example `127.0.0.1:9400` (default:
    /// `metrics.listen` when the database is locked by a running broker).
    #[arg(long)]
    pub url: Option<String>,
    /// File with the admin bearer token (default: `admin.token_file`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// Runs one command against `config.data_dir` and returns what to print.
///
/// # Errors
/// If the storage cannot be opened or read, the running broker refuses, or
/// the command does not apply (for example `restore` with the broker up).
pub fn run(config: &Config, command: AdminCommand) -> Result<String, AdminError> {
    let dir = &config.data_dir;
    match command {
        AdminCommand::RoomStats { room } => inspect::room_stats(dir, &parse_room(&room)?),
        AdminCommand::Tail { room, count } => inspect::tail(dir, &parse_room(&room)?, count),
        AdminCommand::Cursors { user, device } => inspect::cursors(dir, &user, &device),
        AdminCommand::Compact(remote) => maintain::compact(config, &remote),
        AdminCommand::Backup { dest, remote } => maintain::backup(config, &dest, &remote),
        AdminCommand::Restore { backup } => maintain::restore(config, &backup),
        AdminCommand::Verify => verify(dir),
        AdminCommand::Cluster => cluster(config),
    }
}

/// `cluster`: asks the nodes over NATS (see `cluster::report`).
#[cfg(feature = "cluster")]
fn cluster(config: &Config) -> Result<String, AdminError> {
    if !config.cluster.enabled() {
        return Err(AdminError::Usage(
            "not a cluster: give the NATS servers with --cluster URLS or cluster.nats_urls".into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AdminError::Io {
            what: "starting the async runtime".into(),
            source,
        })?;
    runtime
        .block_on(crate::cluster::report(&config.cluster))
        .map_err(|e| AdminError::Remote(e.to_string()))
}

#[cfg(not(feature = "cluster"))]
fn cluster(_config: &Config) -> Result<String, AdminError> {
    Err(AdminError::Usage(
        "this build has no cluster mode (cargo feature `cluster`)".into(),
    ))
}

/// `verify`: the report, or [`AdminError::Damaged`] with it.
fn verify(dir: &std::path::Path) -> Result<String, AdminError> {
    maintain::require_database(dir)?;
    let report = crate::storage::verify(dir).map_err(|source| AdminError::Io {
        what: format!("listing {}", dir.display()),
        source,
    })?;
    if report.damage.is_empty() {
        Ok(report.render())
    } else {
        Err(AdminError::Damaged(report.render()))
    }
}

fn parse_room(room: &str) -> Result<confab_codec::RoomId, AdminError> {
    confab_codec::RoomId::new(room).map_err(|e| AdminError::Usage(format!("room `{room}`: {e}")))
}
