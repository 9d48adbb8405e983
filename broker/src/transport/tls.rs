//! The broker's certificate, shared by the TLS and QUIC listeners: loaded
//! from PEM files, or self-signed and kept in the data directory.
//!
//! Every rustls configuration here is built from the *ring* provider
//! explicitly, so no process-wide default provider is needed and aws-lc-rs
//! is never linked.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::info;

use crate::config::Config;

/// The ALPN protocol id of Confab protocol version 1, on TLS and QUIC.
pub const ALPN: &[u8] = b"confab/1";

/// Where a generated certificate lives, under the data directory.
const GENERATED_DIR: &str = "tls";

/// A certificate chain and its private key.
pub(crate) struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf certificate, lowercase hex.
    pub(crate) fingerprint: String,
    /// The PEM file the leaf certificate was read from (or written to).
    pub(crate) cert_path: PathBuf,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 fingerprint of a DER certificate, as 64 lowercase hex digits.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads the configured certificate, or the self-signed one of the data
/// directory, generating it on first use. Blocking (file IO).
///
/// # Errors
/// A message naming the file that cannot be read, parsed or written.
pub(crate) fn load_or_generate(config: &Config) -> Result<Identity, String> {
    let (cert_path, key_path) = match (&config.tls.cert_path, &config.tls.key_path) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let dir = config.data_dir.join(GENERATED_DIR);
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            match (cert.exists(), key.exists()) {
                (true, true) => {}
                (false, false) => generate(&dir, &cert, &key, &names(config))?,
                _ => {
                    return Err(format!(
                        "{} holds only one of cert.pem and key.pem; remove it to generate a new certificate",
                        dir.display()
                    ))
                }
            }
            (cert, key)
        }
    };
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert_path.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("no certificate in {}", cert_path.display()));
    };
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key_path.display()))?;
    Ok(Identity {
        fingerprint: fingerprint(leaf),
        chain,
        key,
        cert_path,
    })
}

/// The names a generated certificate is valid for: loopback, plus the
/// specific addresses the secure listeners are bound to.
fn names(config: &Config) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ips = [
        config.listen.tls,
        config.listen.quic,
        config.listen.websocket_tls,
    ]
    .into_iter()
    .flatten()
    .map(|a: SocketAddr| a.ip())
    .filter(|ip: &IpAddr| !ip.is_unspecified() && !ip.is_loopback());
    for ip in ips {
        let ip = ip.to_string();
        if !names.contains(&ip) {
            names.push(ip);
        }
    }
    names
}

fn generate(dir: &Path, cert: &Path, key: &Path, names: &[String]) -> Result<(), String> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| format!("cannot build a certificate for {names:?}: {e}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Confab broker (self-signed)");
    let key_pair = rcgen::KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let signed = params
        .self_signed(&key_pair)
        .map_err(|e| format!("cannot sign the certificate: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // The key first: a crash between the two writes leaves no certificate
    // without its key, and the next start reports the half-written state.
    write_file(key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_file(cert, signed.pem().as_bytes(), 0o644)?;
    info!(path = %cert.display(), names = ?names, "generated a self-signed certificate");
    Ok(())
}

/// Writes a file with Unix permissions `mode`, through a temporary file.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// The rustls configuration of the TLS-over-TCP listener (TLS 1.2 and 1.3).
///
/// # Errors
/// If the key does not match the certificate or is of an unsupported type.
pub(crate) fn tcp_server_config(id: &Identity) -> Result<Arc<rustls::ServerConfig>, String> {
    server_config(id, ALPN)
}

/// The rustls configuration of the WebSocket-over-TLS listener: ALPN
/// `http/1.1`, the protocol of the WebSocket upgrade, which browsers offer.
///
/// # Errors
/// As [`tcp_server_config`].
pub(crate) fn websocket_server_config(id: &Identity) -> Result<Arc<rustls::ServerConfig>, String> {
    server_config(id, b"http/1.1")
}

fn server_config(id: &Identity, alpn: &[u8]) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| format!("certificate {}: {e}", id.cert_path.display()))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The quinn configuration of the QUIC listener (TLS 1.3, ALPN `confab/1`).
///
/// The client opens one bidirectional stream (the control stream) and no
/// unidirectional one; the server opens the event streams. `idle` is the
/// transport's idle timeout, above the protocol's own, so that the session
/// closes an idle connection with a `Goodbye` before QUIC drops it.
///
/// `hello_window` is the connection's receive window until the session
/// raises it at `Welcome`: before that the client may send one `Hello`,
/// so QUIC need not buffer more for it. QUIC
/// datagrams are off (the protocol does not use them, and unread ones
/// would be buffered).
///
/// # Errors
/// If the key does not match the certificate or is of an unsupported type.
pub(crate) fn quic_server_config(
    id: &Identity,
    idle: Duration,
    hello_window: u32,
) -> Result<quinn::ServerConfig, String> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| format!("certificate {}: {e}", id.cert_path.display()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("QUIC TLS configuration: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok())
        .receive_window(hello_window.into())
        .datagram_receive_buffer_size(None);
    config.transport_config(Arc::new(transport));
    // Connection migration (a phone moving from Wi-Fi to cellular keeps
    // its session) is on by default; say so explicitly.
    config.migration(true);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_is_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let first = load_or_generate(&config).expect("generated");
        assert_eq!(first.fingerprint.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |f: &str| {
                let meta = std::fs::metadata(dir.path().join("tls").join(f)).expect("file");
                meta.permissions().mode() & 0o777
            };
            assert_eq!(mode("key.pem"), 0o600, "the key is private");
            assert_eq!(mode("cert.pem") & 0o600, 0o600);
        }
        let again = load_or_generate(&config).expect("loaded");
        assert_eq!(first.fingerprint, again.fingerprint);
        assert!(tcp_server_config(&again).is_ok());
        assert!(quic_server_config(&again, Duration::from_secs(10), 1 << 16).is_ok());

        std::fs::remove_file(dir.path().join("tls/key.pem")).expect("remove");
        let e = load_or_generate(&config).expect_err("half a pair");
        assert!(e.contains("only one"), "{e}");
    }

    #[test]
    fn configured_paths_are_used_and_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.tls.cert_path = Some(dir.path().join("missing.pem"));
        config.tls.key_path = Some(dir.path().join("missing-key.pem"));
        let e = load_or_generate(&config).expect_err("missing");
        assert!(e.contains("missing.pem"), "{e}");
        assert!(!config.data_dir.join("tls").exists(), "nothing generated");
    }
}
