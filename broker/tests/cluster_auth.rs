//! Cluster mode on a nats-server that demands NATS's decentralized auth
//! (docs/cluster.md, "Running a cluster"; docs/operations.md, `[cluster]`):
//!
//! - `cluster.nkey_file`: a server that lists a user's public nkey; a node
//!   with the user's seed joins and serves a publish/subscribe round trip,
//!   `confab admin cluster` with the same setting lists it, and a node with
//!   another seed, a malformed seed or none is refused with a clear error;
//! - `cluster.creds_file`: a server in operator mode (operator, system
//!   account and account JWTs made and signed here, a memory resolver); a
//!   node with the user's `.creds` file joins and serves the same round
//!   trip; a user signed by an account the operator does not know is
//!   refused.
//!
//! Without a nats-server the tests print `SKIPPED` and pass (except under
//! `CI`, see cluster_support).
#![allow(clippy::unwrap_used)]

mod cluster_support;
mod common;
#[path = "cluster_support/nodes.rs"]
mod nodes;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use confab_codec::{ErrorCode, Seq, StartAt};
use nkeys::KeyPair;
use serde_json::{json, Value};

use cluster_support::{bounded, Nats};
use common::Conn;
use nodes::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_users_nkey_seed_joins_and_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let user = KeyPair::new_user();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let Some(nats) = Nats::start_with(&["-c", conf.to_str().unwrap()]) else {
        return;
    };
    let seed = write(
        dir.path(),
        "user.nk",
        &format!("{}\n", user.seed().unwrap()),
    );
    let set = format!("cluster.nkey_file={}", seed.display());
    bounded(120, async {
        let node = Node::spawn_with("a", &nats, &["--set", &set]);
        round_trip(&node).await;

        // `confab admin cluster` connects with the same settings.
        let (ok, out, err) = admin_cluster(&nats, &["--set", &set]).await;
        assert!(ok, "confab admin cluster: {err}");
        let row = out
            .lines()
            .find(|l| l.starts_with("a\t"))
            .unwrap_or_else(|| panic!("node a listed:\n{out}"));
        assert!(row.contains("alive"), "{row}");
        // Without the seed it is refused by the server.
        let (ok, _, err) = admin_cluster(&nats, &[]).await;
        assert!(!ok, "no seed, no answer");
        assert!(err.contains("connect to NATS"), "{err}");

        // Another user's seed: the server refuses the node, which exits.
        let other = KeyPair::new_user().seed().unwrap();
        let wrong = write(dir.path(), "other.nk", &other);
        let err = serve_fails(
            &nats,
            "b",
            &["--set", &format!("cluster.nkey_file={}", wrong.display())],
        )
        .await;
        assert!(err.contains("connect to NATS"), "{err}");
        assert!(err.to_lowercase().contains("authorization"), "{err}");
        assert!(!err.contains(&other), "the seed is never printed: {err}");

        // Not a seed at all (a public key): refused before connecting,
        // naming the setting and the file.
        let public = write(dir.path(), "public.nk", &user.public_key());
        let err = serve_fails(
            &nats,
            "c",
            &["--set", &format!("cluster.nkey_file={}", public.display())],
        )
        .await;
        assert!(err.contains("cluster.nkey_file"), "{err}");
        assert!(err.contains(&public.display().to_string()), "{err}");
        assert!(err.contains("not an nkey seed"), "{err}");

        // The node that joined still serves.
        round_trip(&node).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_creds_file_joins_an_operator_mode_server() {
    let dir = tempfile::tempdir().unwrap();
    let operator = KeyPair::new_operator();
    let system = KeyPair::new_account();
    let account = KeyPair::new_account();
    let user = KeyPair::new_user();

    let operator_jwt = sign(
        &operator,
        &operator.public_key(),
        "confab-test",
        json!({
            "type": "operator",
            "version": 2,
            "system_account": system.public_key(),
        }),
    );
    let unlimited = json!({
        "subs": -1, "data": -1, "payload": -1,
        "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
    });
    let system_jwt = sign(
        &operator,
        &system.public_key(),
        "SYS",
        json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    // JetStream is on for an account whose JWT grants it storage.
    let mut limits = unlimited.clone();
    for (k, v) in [
        ("mem_storage", -1),
        ("disk_storage", -1),
        ("streams", -1),
        ("consumer", -1),
    ] {
        limits[k] = json!(v);
    }
    let account_jwt = sign(
        &operator,
        &account.public_key(),
        "CONFAB",
        json!({"type": "account", "version": 2, "limits": limits}),
    );
    let user_claims = json!({
        "type": "user", "version": 2,
        "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
    });
    let user_jwt = sign(&account, &user.public_key(), "node", user_claims.clone());

    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "operator: {operator_jwt}\n\
             system_account: {sys}\n\
             resolver: MEMORY\n\
             resolver_preload: {{\n  {sys}: {system_jwt}\n  {acc}: {account_jwt}\n}}\n",
            sys = system.public_key(),
            acc = account.public_key(),
        ),
    )
    .unwrap();
    let Some(nats) = Nats::start_with(&["-c", conf.to_str().unwrap()]) else {
        return;
    };
    let creds = write(
        dir.path(),
        "node.creds",
        &creds_file(&user_jwt, &user.seed().unwrap()),
    );
    bounded(120, async {
        let set = format!("cluster.creds_file={}", creds.display());
        let node = Node::spawn_with("a", &nats, &["--set", &set]);
        round_trip(&node).await;

        // A user signed by an account the operator never signed: refused.
        let stranger = KeyPair::new_account();
        let user2 = KeyPair::new_user();
        let jwt2 = sign(&stranger, &user2.public_key(), "stranger", user_claims);
        let seed2 = user2.seed().unwrap();
        let unknown = write(dir.path(), "stranger.creds", &creds_file(&jwt2, &seed2));
        let err = serve_fails(
            &nats,
            "b",
            &[
                "--set",
                &format!("cluster.creds_file={}", unknown.display()),
            ],
        )
        .await;
        assert!(err.contains("connect to NATS"), "{err}");
        assert!(!err.contains(&seed2), "the seed is never printed: {err}");
        assert!(!err.contains(&jwt2), "the JWT is never printed: {err}");

        round_trip(&node).await;
    })
    .await;
}

/// A device on `node` subscribes to a fresh room, publishes to it and
/// gets its own message back, with the room's next sequence.
async fn round_trip(node: &Node) {
    common::wait_listening(node.addr).await;
    let mut c = Conn::open(node.addr, "alice", "phone").await;
    let room = common::room("auth-room");
    let ack = c
        .subscribe(vec![(room.clone(), StartAt::From(Seq(1)))])
        .await;
    assert_eq!(ack.results[0].code, ErrorCode::Normal, "{ack:?}");
    let head = ack.results[0].head.0;
    let sent = format!("hello {}", head + 1);
    let pub_ack = c.publish(&room, head + 1, sent.as_bytes()).await;
    assert_eq!(pub_ack.seq.0, head + 1);
    let (events, _) = c.events(head as usize + 1).await;
    let last = events.last().unwrap();
    assert_eq!((last.1, last.2.as_ref()), (head + 1, sent.as_bytes()));
}

/// Starts `confab serve --cluster` node `id` with `extra` arguments,
/// expects it to exit with an error within 30 s, and returns what it
/// printed on standard error.
async fn serve_fails(nats: &Nats, id: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let advertise = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--cluster",
        &url,
        "--node-id",
        id,
        "--advertise",
        &advertise,
    ];
    args.extend_from_slice(extra);
    let mut child: Child = common::confab_command(dir.path(), port, "wal", &args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node {id} did not exit");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    eprintln!("node {id} ({status}): {}", err.trim_end());
    assert!(!status.success(), "node {id} refused: {err}");
    err
}

/// Runs `confab admin --cluster <nats> [extra] cluster` (off the reactor):
/// whether it succeeded, its standard output and its standard error.
async fn admin_cluster(nats: &Nats, extra: &[&str]) -> (bool, String, String) {
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(["admin", "--cluster", &url])
            .args(&extra)
            .arg("cluster")
            .env_clear()
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A `.creds` file as `nsc` writes it.
fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

/// A NATS JWT (version 2) for `subject`, issued and signed by `issuer`:
/// `base64url(header).base64url(claims).base64url(ed25519 signature of
/// the two)`. The `jti` is, as in nats-io/jwt, the base32 SHA-512/256 of
/// the standard claims without it (the server does not check it).
fn sign(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let standard = json!({
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
    });
    let digest = ring::digest::digest(
        &ring::digest::SHA512_256,
        serde_json::to_vec(&standard).unwrap().as_slice(),
    );
    let mut claims = standard;
    claims["jti"] = json!(base32(digest.as_ref()));
    claims["nats"] = nats;
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let signed = format!("{header}.{body}");
    let sig = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// RFC 4648 base32, without padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = ((acc << 8) | u32::from(b)) & 0xFFFF;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}
