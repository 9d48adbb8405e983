//! The `confab` binary: configuration commands and signal handling.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use confab_codec::*;

fn confab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_confab"));
    c.env_clear().stdin(Stdio::null());
    c
}

#[test]
fn config_prints_the_effective_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("confab.toml");
    std::fs::write(&file, "[limits]\nmax_connections = 123\n").unwrap();
    let out = confab()
        .args([
            "config",
            "--config",
            file.to_str().unwrap(),
            "--durability",
            "fsync",
        ])
        .env("CONFAB_DELIVERY__QUEUE_CAPACITY", "999")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("durability = \"fsync\""), "{text}");
    assert!(text.contains("max_connections = 123"), "{text}");
    assert!(text.contains("queue_capacity = 999"), "{text}");
    // The printed configuration is itself a valid config file.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &text).unwrap();
    let out = confab()
        .args(["config", "--config", again.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
}

#[test]
fn bad_configuration_is_a_clear_error_not_a_panic() {
    let cases: [&[&str]; 4] = [
        &["config", "--set", "storage.durabilty=fsync"],
        &["config", "--durability", "sometimes"],
        &["config", "--set", "limits.max_frame_len=10"],
        &["config", "--config", "/nonexistent/confab.toml"],
    ];
    for args in cases {
        let out = confab().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains("Error"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_says_goodbye_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = confab()
        .args([
            "serve",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen",
            &addr.to_string(),
            // Not the default fixed UDP port: tests run in parallel.
            "--listen-quic",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = Conn::open(addr, "alice", "phone").await;
    let r = room("r");
    c.publish(&r, 1, b"before").await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let frames = c.until_closed().await;
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.body, Body::Goodbye(g) if g.code == ErrorCode::ShuttingDown)),
        "{frames:?}"
    );
    let deadline = Instant::now() + WAIT;
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "broker did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(code.success(), "exit status {code:?}");
}
