//! From `[cluster]` ([`ClusterConfig`], validated with the rest of the
//! configuration) to the parts: the NATS connection, the log's and the
//! membership's settings, the node id.

use std::time::Duration;

use super::error::nats;
use super::{ClusterError, LogConfig, MembershipConfig, NodeId};
use crate::config::ClusterConfig;

impl ClusterConfig {
    /// This node's id.
    ///
    /// # Errors
    /// [`ClusterError::Config`] if it is not a valid node id.
    pub fn node(&self) -> Result<NodeId, ClusterError> {
        NodeId::new(self.node_id.clone())
    }

    /// The room log's settings.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            stream: self.stream.clone(),
            subject_prefix: self.subject_prefix.clone(),
            fanout_prefix: self.fanout_prefix.clone(),
            replicas: self.replicas,
            max_chunk_bytes: self.max_chunk_bytes,
            ..LogConfig::default()
        }
    }

    /// The membership's settings.
    pub fn membership_config(&self) -> MembershipConfig {
        MembershipConfig {
            bucket: self.nodes_bucket.clone(),
            ttl: Duration::from_millis(self.node_ttl_ms),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            replicas: self.replicas,
        }
    }

    /// Connects to NATS: any of `nats_urls`, with the token and TLS
    /// settings. Reconnects by itself afterwards (async-nats does).
    ///
    /// # Errors
    /// [`ClusterError::Config`] if the token file cannot be read;
    /// [`ClusterError::Nats`] if no server accepts the connection.
    pub async fn connect(&self) -> Result<async_nats::Client, ClusterError> {
        let mut opts = async_nats::ConnectOptions::new().name(format!("confab-{}", self.node_id));
        if !self.token_file.as_os_str().is_empty() {
            let token = tokio::fs::read_to_string(&self.token_file)
                .await
                .map_err(|e| {
                    ClusterError::Config(format!(
                        "cluster.token_file {}: {e}",
                        self.token_file.display()
                    ))
                })?;
            opts = opts.token(token.trim_end_matches(['\r', '\n']).to_owned());
        }
        if self.tls() {
            opts = opts.require_tls(true);
            if !self.tls_ca_file.as_os_str().is_empty() {
                opts = opts.add_root_certificates(self.tls_ca_file.clone());
            }
            if !self.tls_cert_file.as_os_str().is_empty() {
                opts = opts
                    .add_client_certificate(self.tls_cert_file.clone(), self.tls_key_file.clone());
            }
        }
        opts.connect(self.nats_urls.clone())
            .await
            .map_err(|e| nats("connect to NATS", e))
    }
}
