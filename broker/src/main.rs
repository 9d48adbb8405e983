//! `confab`: run the broker, print its effective configuration, or
//! administer its data directory (`confab admin`, see
//! `confab_broker::admin`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use confab_broker::admin::AdminCommand;
use confab_broker::config::{Config, LogFormat};
use confab_broker::Broker;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than the system allocator: with its background thread
/// it hands freed memory back to the operating system within seconds of a
/// burst (a flood of requests, a wave of reconnects), where glibc's malloc
/// keeps much of it resident, fragmented between live allocations.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(name = "confab", version, about = "Confab chat message broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker until SIGINT or SIGTERM.
    Serve(Settings),
    /// Print the effective configuration (defaults, file, environment, flags) as TOML.
    Config(Settings),
    /// Inspect, compact, back up or restore the data directory of a running
    /// or stopped broker.
    Admin(AdminArgs),
}

/// `confab admin [settings] <command>`: the settings locate the data
/// directory and, for a running broker, its operations endpoint.
#[derive(Args, Debug)]
struct AdminArgs {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: AdminCommand,
}

/// Settings shared by every command. Each flag overrides the config file and
/// the environment.
#[derive(Args, Debug)]
struct Settings {
    /// A TOML config file.
    #[arg(long, short = 'c', env = "CONFAB_CONFIG")]
    config: Option<PathBuf>,
    /// Where the data lives (default ./confab-data).
    #[arg(long)]
    data_dir: Option<String>,
    /// TCP listen address (default 127.0.0.1:7400).
    #[arg(long)]
    listen: Option<String>,
    /// TLS-over-TCP listen address, or `off` (default off).
    #[arg(long)]
    listen_tls: Option<String>,
    /// QUIC (UDP) listen address, or `off` (default 127.0.0.1:7401).
    #[arg(long)]
    listen_quic: Option<String>,
    /// WebSocket listen address (`ws://ADDR/ws`), or `off` (default off).
    #[arg(long)]
    listen_ws: Option<String>,
    /// none, wal or fsync (default wal).
    #[arg(long)]
    durability: Option<String>,
    /// dev or disabled (default dev).
    #[arg(long)]
    auth: Option<String>,
    /// Log filter, for example `info` or `confab_broker=debug`.
    #[arg(long)]
    log_level: Option<String>,
    /// text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// Operations endpoint (/metrics, /healthz, /readyz, /admin), or `off` (default off).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Cluster mode: the NATS servers, comma-separated
    /// (nats://HOST:PORT[,...]); sets cluster.nats_urls. Needs a node id and
    /// an advertised address (--node-id, --advertise, or `[cluster]`).
    #[arg(long, value_name = "URLS")]
    cluster: Option<String>,
    /// This node's id in the cluster (cluster.node_id).
    #[arg(long)]
    node_id: Option<String>,
    /// The address devices reach this node at (cluster.advertised_address).
    #[arg(long)]
    advertise: Option<String>,
    /// Any other setting, as a dotted key: --set limits.max_connections=20000
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl Settings {
    fn load(&self) -> anyhow::Result<Config> {
        let mut overrides = Vec::new();
        let named = [
            ("data_dir", &self.data_dir),
            ("listen.tcp", &self.listen),
            ("listen.tls", &self.listen_tls),
            ("listen.quic", &self.listen_quic),
            ("listen.websocket", &self.listen_ws),
            ("storage.durability", &self.durability),
            ("auth.mode", &self.auth),
            ("log.level", &self.log_level),
            ("log.format", &self.log_format),
            ("metrics.listen", &self.metrics_listen),
            ("cluster.node_id", &self.node_id),
            ("cluster.advertised_address", &self.advertise),
        ];
        for (key, value) in named {
            if let Some(v) = value {
                overrides.push((key.to_owned(), v.clone()));
            }
        }
        if let Some(urls) = &self.cluster {
            // A TOML array of strings, each quoted by TOML itself.
            let list: Vec<String> = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(|u| toml::Value::String(u.to_owned()).to_string())
                .collect();
            overrides.push((
                "cluster.nats_urls".to_owned(),
                format!("[{}]", list.join(",")),
            ));
        }
        for kv in &self.set {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--set expects KEY=VALUE, got `{kv}`"))?;
            overrides.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let env = std::env::vars().filter(|(k, _)| k != "CONFAB_CONFIG");
        Ok(Config::load(self.config.as_deref(), env, &overrides)?)
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("invalid log.level `{}`", config.log.level))?;
    // Standard error, as docs/operations.md says (fmt's default is stdout,
    // where `confab config` prints the configuration).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

/// Connections need file descriptors: raise the soft limit toward the hard
/// one (as nginx's `worker_rlimit_nofile` does), and say so if it is short.
/// Sessions and pending handshakes have separate limits, so both count.
fn raise_fd_limit(max_connections: usize, max_handshakes: usize) {
    let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() else {
        return;
    };
    let need = (max_connections as u64)
        .saturating_add(max_handshakes as u64)
        .saturating_add(256);
    let want = need.min(hard);
    if want > soft && rlimit::Resource::NOFILE.set(want, hard).is_err() {
        tracing::warn!(soft, hard, "could not raise the open-files limit");
    }
    if need > hard {
        tracing::warn!(
            hard,
            max_connections,
            max_handshakes,
            "the open-files hard limit is below limits.max_connections + admission.max_handshakes; connections beyond it will fail"
        );
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(settings) => {
            let config = settings.load()?;
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Admin(mut args) => {
            // An admin command never joins a cluster: it needs the
            // cluster's NATS settings, not a node's id and address.
            args.settings
                .node_id
                .get_or_insert_with(|| "confab-admin".into());
            args.settings.advertise.get_or_insert_with(|| "none".into());
            let config = args.settings.load()?;
            let out = confab_broker::admin::run(&config, args.command)?;
            print!("{out}");
            Ok(())
        }
        Command::Serve(settings) => {
            let config = settings.load()?;
            init_logging(&config)?;
            raise_fd_limit(
                config.limits.max_connections,
                config.admission.max_handshakes,
            );
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("confab-io")
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async move {
                let broker = Broker::builder(config).start().await?;
                tracing::info!(
                    addr = %broker.tcp_addr(),
                    tls = ?broker.tls_addr(),
                    quic = ?broker.quic_addr(),
                    websocket = ?broker.websocket_addr(),
                    websocket_tls = ?broker.websocket_tls_addr(),
                    fingerprint = broker.cert_fingerprint().unwrap_or("-"),
                    "ready"
                );
                let stopped = broker.shutdown_token();
                tokio::select! {
                    r = wait_for_signal() => r?,
                    _ = stopped.cancelled() => {}
                }
                let failure = broker.failure();
                broker.shutdown().await;
                match failure {
                    Some(why) => Err(anyhow::anyhow!("the broker stopped: {why}")),
                    None => Ok(()),
                }
            })
        }
    }
}
