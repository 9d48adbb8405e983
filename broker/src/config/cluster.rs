//! `[cluster]`: cluster mode on NATS JetStream (docs/cluster.md). Off while
//! `nats_urls` is empty, the default: single-node mode.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::base::is_nats_token;

/// Cluster mode's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The NATS servers (`nats://host:port` or `tls://host:port`), any of
    /// which the node may connect to. Empty (the default): single-node mode.
    pub nats_urls: Vec<String>,
    /// This node's id, unique in the cluster: 1 to 64 ASCII letters,
    /// digits, `-` or `_`. Required in cluster mode.
    pub node_id: String,
    /// The address devices reach this node at (`host:port` of its TCP
    /// listener as seen from outside), published with its membership.
    /// Required in cluster mode.
    pub advertised_address: String,
    /// A file holding the NATS token (trailing newline removed), or empty
    /// for none. At most one of `token_file`, `creds_file` and `nkey_file`.
    pub token_file: PathBuf,
    /// A NATS `.creds` file (a user JWT and its nkey seed, as `nsc`
    /// writes them) for servers in operator mode (decentralized JWT auth),
    /// or empty for none.
    pub creds_file: PathBuf,
    /// A file holding a user nkey seed (`SU...`, surrounding whitespace
    /// removed) for servers that list the user's public nkey
    /// (`authorization { users = [ { nkey: "U..." } ] }`), or empty for
    /// none.
    pub nkey_file: PathBuf,
    /// CA certificates (PEM) to verify the NATS servers with; setting it
    /// (or a client certificate) requires TLS.
    pub tls_ca_file: PathBuf,
    /// Client certificate (PEM) for NATS mutual TLS, with `tls_key_file`.
    pub tls_cert_file: PathBuf,
    /// Client key (PEM) for NATS mutual TLS, with `tls_cert_file`.
    pub tls_key_file: PathBuf,
    /// The JetStream stream of the room logs.
    pub stream: String,
    /// Room subjects are `<subject_prefix>.<room id in hex>`.
    pub subject_prefix: String,
    /// JetStream republishes each stored chunk on
    /// `<fanout_prefix>.<room id in hex>` for the nodes that follow the
    /// room. Must not overlap `subject_prefix`; two Confab clusters on one
    /// NATS account need different prefixes (and streams).
    pub fanout_prefix: String,
    /// Replicas of the stream and of the node bucket: 1 on one nats-server,
    /// 3 on a three-server NATS cluster (which must run 2.11 or newer).
    pub replicas: usize,
    /// The largest chunk (one room's records of one commit) in bytes; keep
    /// it under the servers' `max_payload` (1 MiB by default).
    pub max_chunk_bytes: usize,
    /// The KV bucket of node heartbeats.
    pub nodes_bucket: String,
    /// How long a node stays live after its last heartbeat, in
    /// milliseconds: whole seconds, at least 1,000. A crashed owner's rooms
    /// wait this long for a new owner.
    pub node_ttl_ms: u64,
    /// How often a node heartbeats, in milliseconds: at most a third of
    /// `node_ttl_ms`.
    pub heartbeat_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats_urls: Vec::new(),
            node_id: String::new(),
            advertised_address: String::new(),
            token_file: PathBuf::new(),
            creds_file: PathBuf::new(),
            nkey_file: PathBuf::new(),
            tls_ca_file: PathBuf::new(),
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            stream: "CONFAB_ROOMS".into(),
            subject_prefix: "confab.room".into(),
            fanout_prefix: "confab.fan".into(),
            replicas: 1,
            max_chunk_bytes: 256 * 1024,
            nodes_bucket: "confab_nodes".into(),
            node_ttl_ms: 3000,
            heartbeat_ms: 1000,
        }
    }
}

impl ClusterConfig {
    /// Whether cluster mode is on (`nats_urls` is not empty).
    pub fn enabled(&self) -> bool {
        !self.nats_urls.is_empty()
    }

    /// Whether any TLS file is set (then NATS connections require TLS).
    pub fn tls(&self) -> bool {
        [&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file]
            .iter()
            .any(|p| !p.as_os_str().is_empty())
    }

    /// Checks the settings when cluster mode is on (nothing when off).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad value.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !cfg!(feature = "cluster") {
            return bad("cluster.nats_urls is set, but this build has no cluster mode (cargo feature `cluster`)".into());
        }
        for url in &self.nats_urls {
            let hostport = url
                .strip_prefix("nats://")
                .or_else(|| url.strip_prefix("tls://"));
            let ok = hostport.is_some_and(|hp| {
                hp.rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            });
            if !ok {
                return bad(format!(
                    "cluster.nats_urls: {url:?} is not nats://host:port or tls://host:port"
                ));
            }
        }
        if self.node_id.len() > 64 || !is_nats_token(&self.node_id) {
            return bad(format!(
                "cluster.node_id {:?}: 1 to 64 ASCII letters, digits, '-' or '_' (required in cluster mode)",
                self.node_id
            ));
        }
        if self.advertised_address.is_empty() {
            return bad("cluster.advertised_address is required in cluster mode".into());
        }
        let auth: Vec<&str> = [
            ("cluster.token_file", &self.token_file),
            ("cluster.creds_file", &self.creds_file),
            ("cluster.nkey_file", &self.nkey_file),
        ]
        .into_iter()
        .filter(|(_, p)| !p.as_os_str().is_empty())
        .map(|(key, _)| key)
        .collect();
        if auth.len() > 1 {
            return bad(format!(
                "{}: set at most one NATS authentication (a token, a .creds file or an nkey seed)",
                auth.join(" and ")
            ));
        }
        if self.tls_cert_file.as_os_str().is_empty() != self.tls_key_file.as_os_str().is_empty() {
            return bad(
                "cluster.tls_cert_file and cluster.tls_key_file must be set together".into(),
            );
        }
        if !is_nats_token(&self.stream) || self.stream.len() > 64 {
            return bad(format!(
                "cluster.stream {:?}: one token of ASCII letters, digits, '-' or '_'",
                self.stream
            ));
        }
        if !self
            .subject_prefix
            .split('.')
            .all(|t| is_nats_token(t) && t.len() <= 64)
        {
            return bad(format!(
                "cluster.subject_prefix {:?}: '.'-separated tokens of ASCII letters, digits, '-' or '_'",
                self.subject_prefix
            ));
        }
        let (a, b) = (&self.subject_prefix, &self.fanout_prefix);
        if !b.split('.').all(|t| is_nats_token(t) && t.len() <= 64)
            || a == b
            || a.starts_with(&format!("{b}."))
            || b.starts_with(&format!("{a}."))
        {
            return bad(format!(
                "cluster.fanout_prefix {b:?}: '.'-separated tokens of ASCII letters, digits, '-' or '_', not overlapping cluster.subject_prefix"
            ));
        }
        if !is_nats_token(&self.nodes_bucket) || self.nodes_bucket.len() > 64 {
            return bad(format!(
                "cluster.nodes_bucket {:?}: one token of ASCII letters, digits, '-' or '_'",
                self.nodes_bucket
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return bad("cluster.replicas must be between 1 and 5".into());
        }
        if !(1024..=8 * 1024 * 1024).contains(&self.max_chunk_bytes) {
            return bad("cluster.max_chunk_bytes must be between 1024 and 8388608".into());
        }
        if self.node_ttl_ms < 1000 || !self.node_ttl_ms.is_multiple_of(1000) {
            return bad("cluster.node_ttl_ms must be whole seconds, at least 1000".into());
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 3 > self.node_ttl_ms {
            return bad(
                "cluster.heartbeat_ms must be above 0 and at most a third of cluster.node_ttl_ms"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn on() -> ClusterConfig {
        ClusterConfig {
            nats_urls: vec!["nats://127.0.0.1:4222".into(), "tls://nats-2:4222".into()],
            node_id: "node-1".into(),
            advertised_address: "10.0.0.1:7400".into(),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn off_by_default_and_checked_when_on() {
        let off = ClusterConfig::default();
        assert!(!off.enabled());
        assert!(off.validate().is_ok());
        assert!(on().enabled());
        if cfg!(feature = "cluster") {
            on().validate().expect("valid");
        }
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn any_one_nats_authentication_is_valid() {
        let mut c = on();
        c.token_file = "token".into();
        c.validate().expect("a token");
        let mut c = on();
        c.creds_file = "user.creds".into();
        c.tls_ca_file = "ca.pem".into();
        c.validate().expect("a .creds file, with TLS");
        let mut c = on();
        c.nkey_file = "user.nk".into();
        c.validate().expect("an nkey seed");
        let mut c = on();
        c.token_file = "token".into();
        c.nkey_file = "user.nk".into();
        let e = c.validate().expect_err("two").to_string();
        assert!(
            e.contains("cluster.token_file and cluster.nkey_file"),
            "{e}"
        );
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn each_bad_value_is_named() {
        type Break = Box<dyn Fn(&mut ClusterConfig)>;
        let cases: Vec<(&str, Break)> = vec![
            (
                "nats_urls",
                Box::new(|c| c.nats_urls = vec!["127.0.0.1:4222".into()]),
            ),
            (
                "nats_urls",
                Box::new(|c| c.nats_urls = vec!["nats://host".into()]),
            ),
            ("node_id", Box::new(|c| c.node_id = String::new())),
            ("node_id", Box::new(|c| c.node_id = "a.b".into())),
            ("node_id", Box::new(|c| c.node_id = "x".repeat(65))),
            (
                "advertised_address",
                Box::new(|c| c.advertised_address = String::new()),
            ),
            (
                "tls_cert_file",
                Box::new(|c| c.tls_cert_file = "c.pem".into()),
            ),
            (
                "creds_file",
                Box::new(|c| {
                    c.token_file = "token".into();
                    c.creds_file = "user.creds".into();
                }),
            ),
            (
                "nkey_file",
                Box::new(|c| {
                    c.creds_file = "user.creds".into();
                    c.nkey_file = "user.nk".into();
                }),
            ),
            ("stream", Box::new(|c| c.stream = "a.b".into())),
            (
                "subject_prefix",
                Box::new(|c| c.subject_prefix = "a.>".into()),
            ),
            ("nodes_bucket", Box::new(|c| c.nodes_bucket = "a b".into())),
            (
                "fanout_prefix",
                Box::new(|c| c.fanout_prefix = "confab.room.x".into()),
            ),
            (
                "fanout_prefix",
                Box::new(|c| c.fanout_prefix = "confab".into()),
            ),
            ("replicas", Box::new(|c| c.replicas = 0)),
            ("max_chunk_bytes", Box::new(|c| c.max_chunk_bytes = 100)),
            ("node_ttl_ms", Box::new(|c| c.node_ttl_ms = 2500)),
            ("heartbeat_ms", Box::new(|c| c.heartbeat_ms = 1500)),
        ];
        for (key, break_it) in cases {
            let mut c = on();
            break_it(&mut c);
            let e = c.validate().expect_err(key);
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn layers_reach_the_section_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[cluster]\nnode_id = \"b\"\nadvertised_address = \"b:7400\"\nreplicas = 3\n",
        )
        .expect("write");
        let env = vec![(
            "CONFAB_CLUSTER__NATS_URLS".to_owned(),
            "[\"nats://n1:4222\", \"nats://n2:4222\"]".to_owned(),
        )];
        let loaded = Config::load(Some(&file), env, &[]);
        if cfg!(feature = "cluster") {
            let c = loaded.expect("valid").cluster;
            assert_eq!(c.nats_urls, ["nats://n1:4222", "nats://n2:4222"]);
            assert_eq!((c.node_id.as_str(), c.replicas), ("b", 3));
        } else {
            let e = loaded.expect_err("no cluster mode in this build");
            assert!(e.to_string().contains("feature"), "{e}");
        }
        let typo = vec![("cluster.node".to_owned(), "x".to_owned())];
        let e = Config::load(None, Vec::new(), &typo).expect_err("unknown key");
        assert!(e.to_string().contains("node"), "{e}");
        // The printed configuration has the section, and reads back.
        let printed = Config::default().to_toml();
        assert!(printed.contains("[cluster]"), "{printed}");
        let back: Config = toml::from_str(&printed).expect("reads back");
        assert_eq!(back.cluster, ClusterConfig::default());
    }
}
