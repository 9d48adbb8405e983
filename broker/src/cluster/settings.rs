//! From `[cluster]` ([`ClusterConfig`], validated with the rest of the
//! configuration) to the parts: the NATS connection, the log's and the
//! membership's settings, the node id.

use std::path::Path;
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

    /// Connects to NATS: any of `nats_urls`, with the authentication
    /// (token, `.creds` file or nkey seed) and TLS settings. Reconnects by
    /// itself afterwards (async-nats does).
    ///
    /// # Errors
    /// [`ClusterError::Config`] if the token, `.creds` or nkey file cannot
    /// be read or does not hold what it should (the message names the key
    /// and the path, never the secret); [`ClusterError::Nats`] if no server
    /// accepts the connection (a refused authentication included).
    pub async fn connect(&self) -> Result<async_nats::Client, ClusterError> {
        let opts = async_nats::ConnectOptions::new().name(format!("confab-{}", self.node_id));
        let mut opts = self.authenticate(opts).await?;
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

    /// Adds the one authentication that is set (validation refuses more
    /// than one) to `opts`. The files are read here, at each connect, so
    /// that a rotated credential is picked up by a restart without a
    /// change of configuration.
    async fn authenticate(
        &self,
        opts: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, ClusterError> {
        if !self.token_file.as_os_str().is_empty() {
            let token = read_secret("cluster.token_file", &self.token_file).await?;
            return Ok(opts.token(token.trim_end_matches(['\r', '\n']).to_owned()));
        }
        if !self.creds_file.as_os_str().is_empty() {
            let creds = read_secret("cluster.creds_file", &self.creds_file).await?;
            // async-nats parses the user JWT and the seed now, and signs
            // the server's nonce with the seed at each (re)connect. Its
            // parse errors name what is missing, not the file's text.
            return opts.credentials(&creds).map_err(|e| {
                ClusterError::Config(format!(
                    "cluster.creds_file {}: not a NATS .creds file (a user JWT, then a user nkey seed): {e}",
                    self.creds_file.display()
                ))
            });
        }
        if !self.nkey_file.as_os_str().is_empty() {
            let seed = read_secret("cluster.nkey_file", &self.nkey_file).await?;
            let seed = seed.trim();
            // Checked here rather than at the handshake, where a bad seed
            // would surface as a failed signature with no file named.
            // nkeys' errors name the kind of fault, not the seed.
            let user = nkeys::KeyPair::from_seed(seed)
                .map(|kp| kp.key_pair_type() == nkeys::KeyPairType::User)
                .map_err(|e| {
                    ClusterError::Config(format!(
                        "cluster.nkey_file {}: not an nkey seed: {e}",
                        self.nkey_file.display()
                    ))
                })?;
            if !user {
                return Err(ClusterError::Config(format!(
                    "cluster.nkey_file {}: not a user nkey seed (one starts with SU)",
                    self.nkey_file.display()
                )));
            }
            return Ok(opts.nkey(seed.to_owned()));
        }
        Ok(opts)
    }
}

/// Reads the file of the credential setting `key`.
///
/// # Errors
/// [`ClusterError::Config`] naming `key` and `path` if it cannot be read.
async fn read_secret(key: &str, path: &Path) -> Result<String, ClusterError> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|e| ClusterError::Config(format!("{key} {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with one NATS URL nobody listens on: every case
    /// below fails before connecting.
    fn with(f: impl FnOnce(&mut ClusterConfig)) -> ClusterConfig {
        let mut c = ClusterConfig {
            nats_urls: vec!["nats://127.0.0.1:9".into()],
            node_id: "n".into(),
            advertised_address: "n:7400".into(),
            ..ClusterConfig::default()
        };
        f(&mut c);
        c
    }

    /// The connect's error, which must be a configuration error naming
    /// `key` and `path` and holding none of `secrets`.
    async fn config_error(c: &ClusterConfig, key: &str, path: &Path, secrets: &[&str]) -> String {
        let e = c.connect().await.expect_err("refused before connecting");
        assert!(matches!(e, ClusterError::Config(_)), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(key), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        for s in secrets {
            assert!(!msg.contains(s), "a secret in the error: {msg}");
        }
        msg
    }

    #[tokio::test]
    async fn unreadable_or_malformed_credentials_are_config_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        for key in ["token_file", "creds_file", "nkey_file"] {
            let c = with(|c| match key {
                "token_file" => c.token_file = missing.clone(),
                "creds_file" => c.creds_file = missing.clone(),
                _ => c.nkey_file = missing.clone(),
            });
            config_error(&c, &format!("cluster.{key}"), &missing, &[]).await;
        }

        // A .creds file with the JWT block but a broken seed block, and
        // one with a seed that is not one.
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().expect("a new key has a seed");
        let jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln";
        let creds = dir.path().join("user.creds");
        for text in [
            format!("-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n"),
            format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
                &seed[..seed.len() - 1]
            ),
            "not a creds file".to_owned(),
        ] {
            std::fs::write(&creds, text).expect("write");
            let c = with(|c| c.creds_file = creds.clone());
            let secrets = [&seed[..seed.len() - 1], jwt];
            let msg = config_error(&c, "cluster.creds_file", &creds, &secrets).await;
            assert!(msg.contains(".creds"), "{msg}");
        }

        // An nkey file with a truncated seed, a public key, an account's
        // seed.
        let nk = dir.path().join("user.nk");
        let account = nkeys::KeyPair::new_account();
        let account_seed = account.seed().expect("a new key has a seed");
        for (text, why) in [
            (seed[..seed.len() - 2].to_owned(), "not an nkey seed"),
            (user.public_key(), "not an nkey seed"),
            (account_seed.clone(), "not a user nkey seed"),
        ] {
            std::fs::write(&nk, &text).expect("write");
            let c = with(|c| c.nkey_file = nk.clone());
            let secrets = [&text[..text.len() - 1], &account_seed[..56]];
            let msg = config_error(&c, "cluster.nkey_file", &nk, &secrets).await;
            assert!(msg.contains(why), "{msg}");
        }
    }
}
