//! JWT authentication: HS256, RS256 and EdDSA, with keys from files.
//!
//! The token's header names its algorithm; it is accepted only if a key for
//! exactly that algorithm is configured, and it is verified with that key
//! and that algorithm alone. So `alg: none` (which the parser does not even
//! know) and algorithm confusion (an HS256 token "signed" with an RSA public
//! key) are refused.
//!
//! Claims: `sub` (the user id, required), `exp` (required), optional `nbf`
//! (checked when present), `iss` and `aud` (required and checked when the
//! broker is configured with an issuer or an audience: a token without
//! them is refused), optional `devices` (the device ids this token may be
//! used from) and `rooms` (the only rooms it may use).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use confab_codec::{DeviceId, ErrorCode, RoomId, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{AuthError, Authenticator, Identity};
use crate::config::JwtConfig;

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    devices: Option<Vec<String>>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// Verifies JWTs with the configured keys.
pub struct JwtAuth {
    keys: Vec<(Algorithm, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<_> = self.keys.iter().map(|(a, _)| a).collect();
        f.debug_struct("JwtAuth")
            .field("algorithms", &algs)
            .finish_non_exhaustive()
    }
}

/// A key file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("JWT key {path}: {message}")]
pub struct KeyError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl JwtAuth {
    /// Loads the keys named in the configuration.
    ///
    /// # Errors
    /// If a key file cannot be read or parsed, or no key is configured.
    pub fn from_config(cfg: &JwtConfig) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        let bad = |path: &Path, e: jsonwebtoken::errors::Error| KeyError {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if !cfg.hs256_secret_file.as_os_str().is_empty() {
            let mut secret = read(&cfg.hs256_secret_file)?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            if secret.len() < 32 {
                return Err(KeyError {
                    path: cfg.hs256_secret_file.display().to_string(),
                    message: "an HS256 secret needs at least 32 bytes".into(),
                });
            }
            keys.push((Algorithm::HS256, DecodingKey::from_secret(&secret)));
        }
        if !cfg.rs256_public_key.as_os_str().is_empty() {
            let pem = read(&cfg.rs256_public_key)?;
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| bad(&cfg.rs256_public_key, e))?;
            keys.push((Algorithm::RS256, key));
        }
        if !cfg.ed25519_public_key.as_os_str().is_empty() {
            let pem = read(&cfg.ed25519_public_key)?;
            let key =
                DecodingKey::from_ed_pem(&pem).map_err(|e| bad(&cfg.ed25519_public_key, e))?;
            keys.push((Algorithm::EdDSA, key));
        }
        if keys.is_empty() {
            return Err(KeyError {
                path: "auth.jwt".into(),
                message: "no key configured".into(),
            });
        }
        Ok(Self {
            keys,
            issuer: (!cfg.issuer.is_empty()).then(|| cfg.issuer.clone()),
            audience: (!cfg.audience.is_empty()).then(|| cfg.audience.clone()),
            leeway_secs: cfg.leeway_secs,
        })
    }
}

impl Authenticator for JwtAuth {
    fn authenticate(&self, token: &str, device: &DeviceId) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::unauthenticated("malformed token"))?;
        let Some((alg, key)) = self.keys.iter().find(|(a, _)| *a == header.alg) else {
            return Err(AuthError::unauthenticated(format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            )));
        };
        let mut validation = Validation::new(*alg);
        validation.algorithms = vec![*alg];
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        // A configured issuer or audience is required, not only checked
        // when present: the library skips the check of an absent claim
        // unless it is listed as required.
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => AuthError {
                code: ErrorCode::TokenExpired,
                message: "token expired".into(),
            },
            _ => AuthError::unauthenticated(format!("token refused: {e}")),
        })?;
        let claims = data.claims;
        let user = UserId::new(claims.sub)
            .map_err(|_| AuthError::unauthenticated("the token's `sub` is not a valid user id"))?;
        if let Some(devices) = &claims.devices {
            if !devices.iter().any(|d| d == device.as_str()) {
                return Err(AuthError::unauthenticated(format!(
                    "the token does not allow device `{device}`"
                )));
            }
        }
        let rooms = match claims.rooms {
            Some(list) => {
                let mut set = HashSet::with_capacity(list.len());
                for r in list {
                    let room = RoomId::new(r).map_err(|_| {
                        AuthError::unauthenticated("the token's `rooms` has an invalid room id")
                    })?;
                    set.insert(room);
                }
                Some(Arc::new(set))
            }
            None => None,
        };
        Ok(Identity {
            user,
            device: device.clone(),
            expires_at_us: Some(
                claims
                    .exp
                    .saturating_add(self.leeway_secs)
                    .saturating_mul(1_000_000),
            ),
            rooms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    fn now() -> u64 {
        crate::base::now_us() / 1_000_000
    }

    fn hs_auth() -> (tempfile::TempDir, JwtAuth) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, [SECRET, b"\n"].concat()).expect("write");
        let cfg = JwtConfig {
            hs256_secret_file: path,
            ..JwtConfig::default()
        };
        let auth = JwtAuth::from_config(&cfg).expect("loads");
        (dir, auth)
    }

    fn hs_token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encodes")
    }

    fn dev(d: &str) -> DeviceId {
        DeviceId::new(d).expect("id")
    }

    #[test]
    fn valid_hs256_token() {
        let (_d, auth) = hs_auth();
        let t = hs_token(
            json!({"sub": "alice", "exp": now() + 60, "devices": ["phone"], "rooms": ["r1"]}),
        );
        let id = auth.authenticate(&t, &dev("phone")).expect("accepted");
        assert_eq!(id.user.as_str(), "alice");
        assert!(id.may_use(&RoomId::new("r1").expect("id")));
        assert!(!id.may_use(&RoomId::new("r2").expect("id")));
        assert!(id.expires_at_us.is_some());
        let e = auth
            .authenticate(&t, &dev("laptop"))
            .expect_err("device not allowed");
        assert_eq!(e.code, ErrorCode::Unauthenticated);
    }

    #[test]
    fn expired_tokens_and_leeway() {
        let (_d, auth) = hs_auth();
        let t = hs_token(json!({"sub": "alice", "exp": now() - 10}));
        assert!(
            auth.authenticate(&t, &dev("p")).is_ok(),
            "within the 30 s leeway"
        );
        let t = hs_token(json!({"sub": "alice", "exp": now() - 120}));
        assert_eq!(
            auth.authenticate(&t, &dev("p")).expect_err("expired").code,
            ErrorCode::TokenExpired
        );
    }

    #[test]
    fn bad_tokens_are_refused() {
        let (_d, auth) = hs_auth();
        // Wrong secret.
        let t = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "alice", "exp": now() + 60}),
            &EncodingKey::from_secret(b"another secret, long enough.........."),
        )
        .expect("encodes");
        assert!(auth.authenticate(&t, &dev("p")).is_err());
        // alg: none, hand-made.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 60))
        );
        assert_eq!(
            auth.authenticate(&none, &dev("p")).expect_err("none").code,
            ErrorCode::Unauthenticated
        );
        // An algorithm without a configured key (HS384 with the same secret).
        let t = encode(
            &Header::new(Algorithm::HS384),
            &json!({"sub": "alice", "exp": now() + 60}),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encodes");
        assert!(auth.authenticate(&t, &dev("p")).is_err());
        // Missing exp, garbage, bad sub.
        assert!(auth
            .authenticate(&hs_token(json!({"sub": "alice"})), &dev("p"))
            .is_err());
        assert!(auth.authenticate("not.a.jwt", &dev("p")).is_err());
        assert!(auth
            .authenticate(&hs_token(json!({"sub": "", "exp": now() + 60})), &dev("p"))
            .is_err());
    }

    #[test]
    fn configured_issuer_and_audience_are_required() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, SECRET).expect("write");
        let cfg = JwtConfig {
            hs256_secret_file: path,
            issuer: "https://id.example".into(),
            audience: "confab".into(),
            ..JwtConfig::default()
        };
        let auth = JwtAuth::from_config(&cfg).expect("loads");
        let exp = now() + 60;
        let good = json!({"sub": "a", "exp": exp, "iss": "https://id.example", "aud": "confab"});
        assert!(auth.authenticate(&hs_token(good), &dev("p")).is_ok());
        for bad in [
            json!({"sub": "a", "exp": exp, "aud": "confab"}),
            json!({"sub": "a", "exp": exp, "iss": "https://id.example"}),
            json!({"sub": "a", "exp": exp}),
            json!({"sub": "a", "exp": exp, "iss": "https://evil.example", "aud": "confab"}),
            json!({"sub": "a", "exp": exp, "iss": "https://id.example", "aud": "other"}),
            json!({"sub": "a", "exp": exp, "iss": 7, "aud": "confab"}),
        ] {
            let e = auth
                .authenticate(&hs_token(bad.clone()), &dev("p"))
                .expect_err("refused");
            assert_eq!(e.code, ErrorCode::Unauthenticated, "{bad}");
        }
        // Without a configured issuer or audience, neither is needed.
        let (_d, plain) = hs_auth();
        let t = hs_token(json!({"sub": "a", "exp": exp}));
        assert!(plain.authenticate(&t, &dev("p")).is_ok());
    }

    #[test]
    fn eddsa_tokens_and_no_algorithm_confusion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("keypair");
        let public = dir.path().join("ed.pub.pem");
        std::fs::write(&public, pair.public_key_pem()).expect("write");
        let cfg = JwtConfig {
            ed25519_public_key: public.clone(),
            ..JwtConfig::default()
        };
        let auth = JwtAuth::from_config(&cfg).expect("loads");
        let signing =
            EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).expect("private key");
        let claims = json!({"sub": "bob", "exp": now() + 60});
        let t = encode(&Header::new(Algorithm::EdDSA), &claims, &signing).expect("encodes");
        assert_eq!(
            auth.authenticate(&t, &dev("p"))
                .expect("accepted")
                .user
                .as_str(),
            "bob"
        );
        // Confusion: an HS256 token whose "secret" is the public key.
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(pair.public_key_pem().as_bytes()),
        )
        .expect("encodes");
        assert!(auth.authenticate(&forged, &dev("p")).is_err());
    }

    #[test]
    fn short_secrets_and_missing_keys_are_config_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, b"short").expect("write");
        let cfg = JwtConfig {
            hs256_secret_file: path,
            ..JwtConfig::default()
        };
        assert!(JwtAuth::from_config(&cfg).is_err());
        assert!(JwtAuth::from_config(&JwtConfig::default()).is_err());
    }
}
