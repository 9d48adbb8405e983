//! How the SDK authenticates a broker on `confabs://` and `confab+quic://`:
//! a CA file, or a pinned certificate fingerprint. There is deliberately no
//! way to accept any certificate.
//!
//! Every rustls configuration is built from the *ring* provider explicitly,
//! so the application needs no process-wide default provider.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::ClientError;

/// The ALPN protocol id of Confab protocol version 1.
pub const ALPN: &[u8] = b"confab/1";

/// How the SDK decides that it talks to the right broker over TLS or QUIC.
///
/// ```
/// use confab_client::{ClientConfig, Trust};
///
/// // The fingerprint the broker logs at start (`cert_fingerprint`).
/// let pin: Trust = "sha256:5f0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f80"
///     .parse()
///     .unwrap();
/// let config = ClientConfig::new("confab+quic://chat.example.com:7401", "alice:phone", "phone")
///     .unwrap()
///     .trust(pin);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trust {
    /// Certificates issued by a certificate of this PEM file (a CA, or the
    /// broker's own self-signed certificate), valid for the endpoint's
    /// host name (or [`ClientConfig::server_name`](crate::ClientConfig::server_name)).
    CaFile(PathBuf),
    /// Exactly the certificate with this SHA-256 fingerprint, whatever its
    /// names, issuer or dates, like an SSH host key. For brokers with a
    /// self-signed certificate.
    Fingerprint(Fingerprint),
}

impl FromStr for Trust {
    type Err = ClientError;

    /// `sha256:<64 hex digits>` (colons between bytes allowed) pins a
    /// fingerprint; anything else is a CA file path.
    fn from_str(s: &str) -> Result<Self, ClientError> {
        match s.strip_prefix("sha256:") {
            Some(hex) => Ok(Trust::Fingerprint(hex.parse()?)),
            None => Ok(Trust::CaFile(PathBuf::from(s))),
        }
    }
}

/// A SHA-256 certificate fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Fingerprint {
    type Err = ClientError;

    /// 64 hex digits, in either case, optionally with `:` between bytes.
    fn from_str(s: &str) -> Result<Self, ClientError> {
        let bad = || {
            ClientError::InvalidConfig(format!(
                "certificate fingerprint `{s}`: expected 64 hex digits (SHA-256)"
            ))
        };
        let digits: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for `trust`; TLS 1.3 only for QUIC.
///
/// # Errors
/// [`ClientError::InvalidConfig`] if the CA file cannot be read or holds no
/// usable certificate.
pub(crate) fn client_config(
    trust: &Trust,
    tls13_only: bool,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone());
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .map_err(|e| ClientError::InvalidConfig(format!("TLS: {e}")))?;
    let mut config = match trust {
        Trust::CaFile(path) => {
            let bad = |why: String| {
                ClientError::InvalidConfig(format!("CA file {}: {why}", path.display()))
            };
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(e.to_string()))?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad("no usable certificate".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Fingerprint(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                pin: *pin,
                provider,
            }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Accepts exactly one certificate, by fingerprint. The handshake
/// signatures are still verified, so the peer must hold its private key.
#[derive(Debug)]
struct Pinned {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Fingerprint::of(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn fingerprints_parse_and_print() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let f: Fingerprint = hex.parse().unwrap();
        assert_eq!(f.to_string(), hex.to_lowercase());
        let colons: Fingerprint = "00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff"
            .parse()
            .unwrap();
        assert_eq!(colons, f);
        assert!("abc".parse::<Fingerprint>().is_err());
        assert!(hex.replace('0', "g").parse::<Fingerprint>().is_err());
        assert_eq!(
            format!("sha256:{hex}").parse::<Trust>().unwrap(),
            Trust::Fingerprint(f)
        );
        assert_eq!(
            "/etc/ca.pem".parse::<Trust>().unwrap(),
            Trust::CaFile("/etc/ca.pem".into())
        );
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_a_config_error() {
        let e = client_config(&Trust::CaFile("/nonexistent/ca.pem".into()), false).unwrap_err();
        assert!(matches!(e, ClientError::InvalidConfig(m) if m.contains("/nonexistent/ca.pem")));
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(client_config(&Trust::CaFile(empty), true).is_err());
    }
}
