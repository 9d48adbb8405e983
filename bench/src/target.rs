//! Starting the systems under test: the `confab` binary in a temp dir,
//! optionally pinned to CPUs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How to start a broker.
#[derive(Debug, Clone)]
pub struct BrokerOpts {
    /// The `confab` binary.
    pub bin: PathBuf,
    /// `none`, `wal` or `fsync`.
    pub durability: String,
    /// CPU list for `taskset -c`, if pinning.
    pub cpus: Option<String>,
    /// Extra `--set key=value` settings.
    pub set: Vec<String>,
}

/// A running `confab` process with its own data directory.
pub struct BrokerProc {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The `confab` binary next to this executable (cargo builds both into the
/// same directory).
pub fn default_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("confab")))
        .unwrap_or_else(|| PathBuf::from("confab"))
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something accepts on `addr`.
pub async fn wait_port(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if start.elapsed() > limit {
            bail!("nothing listens on {addr} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A command, under `taskset -c cpus` when pinning is asked for.
pub fn pinned(program: &std::path::Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

impl BrokerProc {
    /// Starts a broker and waits until it accepts connections.
    pub async fn start(opts: &BrokerOpts) -> anyhow::Result<BrokerProc> {
        if !opts.bin.exists() {
            bail!(
                "{} not found: build it with `cargo build --release -p confab-broker` or pass --confab-bin",
                opts.bin.display()
            );
        }
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut cmd = pinned(&opts.bin, opts.cpus.as_deref());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg(addr.to_string())
            // Not the fixed default UDP port (scenarios that measure QUIC
            // set their own).
            .arg("--listen-quic")
            .arg("off")
            .arg("--durability")
            .arg(&opts.durability)
            .arg("--log-level")
            .arg("warn")
            .arg("--set")
            .arg("limits.max_connections=30000")
            // Every load-generator connection comes from one address, and
            // connection-rate scenarios open thousands at once.
            .arg("--set")
            .arg("admission.max_connections_per_ip=0")
            .arg("--set")
            .arg("admission.max_handshakes_per_ip=0")
            .arg("--set")
            .arg("admission.connects_per_ip_per_sec=0")
            .arg("--set")
            .arg("admission.max_handshakes=30000")
            .arg("--set")
            .arg("limits.idle_timeout_ms=600000")
            .arg("--set")
            .arg("limits.heartbeat_ms=300000")
            // The load generator measures capacity, far above per-user
            // rate limits.
            .arg("--set")
            .arg("rate_limits.enabled=false");
        for s in &opts.set {
            cmd.arg("--set").arg(s);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", opts.bin.display()))?;
        let proc = BrokerProc {
            child,
            addr,
            _dir: dir,
        };
        wait_port(addr, Duration::from_secs(30)).await?;
        Ok(proc)
    }

    /// Resident memory of the broker process, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.child.id())
    }

    /// CPU seconds the broker process has used.
    pub fn cpu_secs(&self) -> Option<f64> {
        cpu_secs(&self.child.id().to_string())
    }
}

/// CPU time (user + system) a process has used, in seconds, from /proc
/// (`self` for this process).
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state is
    // field 3, utime and stime are fields 14 and 15, in clock ticks.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
}

/// Resident memory of a process, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
