//! What the cluster tests share: nats-server processes (one, or a
//! three-server JetStream cluster) on 127.0.0.1, records and appends.
//!
//! The server binary comes from `CONFAB_NATS_SERVER`, else
//! `$HOME/.cache/confab/peers-venv/bin/nats-server` (what
//! `bench/peers/install.sh` installs), else `PATH`. Without one, each test
//! prints why and passes without running, except under `CI` (which
//! installs it), where that is a failure.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::future::Future;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use confab_broker::cluster::{
    ClusterError, JetStreamLog, LiveNodes, LogConfig, Membership, NodeId,
};
use confab_broker::storage::{Append, IdemKey, IdemWrite, StoredRecord};
use confab_codec::{DeviceId, EventRecord, MessageKind, RoomId, Seq, UserId};

// ---------------------------------------------------------------------------
// nats-server processes

pub fn nats_server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CONFAB_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cache/confab/peers-venv/bin/nats-server");
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    })
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A nats-server with JetStream in a temporary directory, killed on drop.
pub struct Nats {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Starts one, or says why not and returns `None` (the test passes
    /// without running). The server picks its own port and writes it to a
    /// ports file: no race with other tests for a free port.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// [`Self::start`] with more server arguments.
    pub fn start_with(extra: &[&str]) -> Option<Self> {
        let Some(bin) = nats_server_binary() else {
            // CI installs it (.ci/run): there a missing server is a failure,
            // not a skip.
            assert!(
                std::env::var_os("CI").is_none(),
                "no nats-server under CI=true: .ci/run installs one (bench/peers/install.sh)"
            );
            eprintln!(
                "SKIPPED: no nats-server (set CONFAB_NATS_SERVER or run bench/peers/install.sh)"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.path().join("store"))
            .arg("--ports_file_dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let ports = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            if let Some(port) = std::fs::read(&ports)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["nats"][0].as_str().map(str::to_owned))
                .and_then(|url| url.rsplit(':').next()?.parse::<u16>().ok())
            {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited: {status}");
            }
            assert!(Instant::now() < deadline, "nats-server wrote no ports file");
            std::thread::sleep(Duration::from_millis(20));
        };
        Some(Self {
            child,
            port,
            _dir: dir,
        })
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(format!("nats://127.0.0.1:{}", self.port))
            .await
            .unwrap()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a test body under a time bound.
pub async fn bounded<F: Future<Output = ()>>(secs: u64, body: F) {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .expect("the test took too long");
}

// ---------------------------------------------------------------------------
// records

pub fn room(id: &str) -> RoomId {
    RoomId::new(id).unwrap()
}

/// The encoded record of `seq` in a room, with a payload naming it.
pub fn record(seq: u64, client_msg_id: u64, payload: &str) -> Vec<u8> {
    let ev = EventRecord {
        seq: Seq(seq),
        timestamp_us: 1_000_000 + seq,
        sender: UserId::new("u").unwrap(),
        device: DeviceId::new("d").unwrap(),
        client_msg_id,
        kind: MessageKind::MESSAGE,
        refers_to: None,
        thread: None,
        payload: Bytes::from(payload.to_owned()),
    };
    let mut out = BytesMut::new();
    ev.encode(&mut out).unwrap();
    out.to_vec()
}

pub const SENDER: &str = "u\0d";

/// Records `from..=to` without client message ids, each payload `<w><seq>`.
pub fn records(from: u64, to: u64, w: &str) -> Vec<(u64, u64, Vec<u8>)> {
    (from..=to)
        .map(|s| (s, 0, record(s, 0, &format!("{w}{s}"))))
        .collect()
}

/// Appends for `records` (seq, client message id, bytes) of `room`.
pub fn appends<'a>(room: &'a RoomId, records: &'a [(u64, u64, Vec<u8>)]) -> Vec<Append<'a>> {
    records
        .iter()
        .map(|(seq, id, bytes)| Append {
            room,
            seq: Seq(*seq),
            record: bytes,
            idem: (*id != 0).then_some(IdemWrite {
                key: IdemKey {
                    sender: SENDER,
                    client_msg_id: *id,
                },
                fresh: true,
                mark: *id,
            }),
            timestamp_us: 1_000_000 + seq,
        })
        .collect()
}

pub fn payload_of(r: &StoredRecord) -> String {
    let ev = EventRecord::decode(r.bytes.clone()).unwrap();
    assert_eq!(ev.seq, r.seq, "a record's own sequence is its place");
    String::from_utf8(ev.payload.to_vec()).unwrap()
}

pub fn test_log_config(stream: &str) -> LogConfig {
    LogConfig {
        stream: stream.into(),
        subject_prefix: format!("t.{}", stream.to_lowercase()),
        fanout_prefix: format!("f.{}", stream.to_lowercase()),
        // Small chunks, so that a commit of 40 records takes several.
        max_chunk_bytes: 1024,
        ..LogConfig::default()
    }
}

pub async fn open_log(nats: &Nats, stream: &str) -> Arc<JetStreamLog> {
    Arc::new(
        JetStreamLog::open(nats.client().await, test_log_config(stream))
            .await
            .unwrap(),
    )
}

// ---------------------------------------------------------------------------
// membership

pub fn node(id: &str) -> NodeId {
    NodeId::new(id).unwrap()
}

pub fn ids(live: &LiveNodes) -> Vec<String> {
    live.ids().map(|n| n.as_str().to_owned()).collect()
}

pub async fn wait_live(m: &Membership, want: &[&str], within: Duration) {
    let mut changes = m.changes();
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    tokio::time::timeout(within, changes.wait_for(|l| ids(l) == want))
        .await
        .unwrap_or_else(|_| panic!("{} sees {:?}, not {want:?}", m.me(), ids(&m.live())))
        .unwrap();
}

// ---------------------------------------------------------------------------
// a three-server NATS cluster, R3 stream, leader changes under racing writers

/// Three nats-servers routed into one JetStream cluster on loopback.
pub struct NatsCluster {
    bin: PathBuf,
    ports: Vec<u16>,
    routes: Vec<u16>,
    dirs: Vec<tempfile::TempDir>,
    pub servers: Vec<Option<Child>>,
}

impl NatsCluster {
    pub fn start(n: usize) -> Option<Self> {
        let Some(bin) = nats_server_binary() else {
            // CI installs it (.ci/run): there a missing server is a failure,
            // not a skip.
            assert!(
                std::env::var_os("CI").is_none(),
                "no nats-server under CI=true: .ci/run installs one (bench/peers/install.sh)"
            );
            eprintln!(
                "SKIPPED: no nats-server (set CONFAB_NATS_SERVER or run bench/peers/install.sh)"
            );
            return None;
        };
        // Routes need every port up front: picked free, then bound by the
        // servers; a port taken in between (another socket of this
        // machine) makes a server exit, and the cluster starts again on
        // other ports.
        for _attempt in 0..5 {
            let mut c = Self {
                bin: bin.clone(),
                ports: (0..n).map(|_| free_port()).collect(),
                routes: (0..n).map(|_| free_port()).collect(),
                dirs: (0..n).map(|_| tempfile::tempdir().unwrap()).collect(),
                servers: (0..n).map(|_| None).collect(),
            };
            for i in 0..n {
                c.spawn(i);
            }
            if (0..n).all(|i| c.wait_listening(i)) {
                return Some(c);
            }
        }
        panic!("the NATS cluster did not start in 5 attempts");
    }

    pub fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.ports[i].to_string(), "-js"])
            .args([
                "--server_name",
                &format!("s{i}"),
                "--cluster_name",
                "confabtest",
            ])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", self.routes[i])])
            .args(["--routes", &routes.join(",")])
            .arg("-sd")
            .arg(self.dirs[i].path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.servers[i] = Some(child);
    }

    /// Whether server `i` listens (false if it exited or took too long).
    pub fn wait_listening(&mut self, i: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.ports[i])).is_err() {
            let exited = match self.servers[i].as_mut() {
                Some(c) => !matches!(c.try_wait(), Ok(None)),
                None => true,
            };
            if exited || Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// `kill -9` of server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every server's URL, `first` first.
    pub fn urls(&self, first: usize) -> Vec<String> {
        let n = self.ports.len();
        (0..n)
            .map(|k| format!("nats://127.0.0.1:{}", self.ports[(first + k) % n]))
            .collect()
    }
}

/// A client that knows every server and tries them in order.
pub async fn connect_all(urls: Vec<String>) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retain_servers_order()
        .connect(urls)
        .await
        .unwrap()
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// Every record of a room, page by page.
pub async fn read_all(log: &JetStreamLog, r: &RoomId) -> Result<Vec<StoredRecord>, ClusterError> {
    let mut all: Vec<StoredRecord> = Vec::new();
    loop {
        let from = all.last().map_or(Seq(1), |x| x.seq.next());
        let page = log
            .read_range(r, from, Seq(u64::MAX), 4096, usize::MAX)
            .await?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}

/// Opens the R3 room stream once the JetStream cluster has a meta leader.
pub async fn open_r3_log(client: async_nats::Client, stream: &str) -> Arc<JetStreamLog> {
    let cfg = LogConfig {
        replicas: 3,
        ..test_log_config(stream)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match JetStreamLog::open(client.clone(), cfg.clone()).await {
            Ok(log) => return Arc::new(log),
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the JetStream cluster: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("no JetStream cluster: {e}"),
        }
    }
}
