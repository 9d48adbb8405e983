//! Failed-login back-off per address, through the real `confab` binary:
//! after the free failures, Hellos from the address are refused with
//! `RateLimited` and a growing `retry_after_ms` without their token being
//! looked at; waiting as told is enough; the refusals are counted in
//! `confab_login_backoff_refusals_total`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use confab_codec::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Kills the broker process when the test ends, however it ends.
struct Confab(std::process::Child);

impl Drop for Confab {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &std::path::Path, port: u16, metrics_port: u16) -> Confab {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args([
            "serve",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--listen-quic",
            "127.0.0.1:0",
            "--log-level",
            "error",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--set",
            "auth.login_backoff.free_failures=2",
            "--set",
            "auth.login_backoff.base_delay_ms=300",
            "--set",
            "auth.login_backoff.max_delay_ms=1000",
        ])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("the confab binary starts");
    Confab(child)
}

/// Sends a Hello with a dev token naming device `phone` from device
/// `device` (refused unless they match) and returns the frames until close
/// or the Welcome.
async fn hello(addr: SocketAddr, device: &str) -> Vec<Frame> {
    let mut c = Conn::raw(addr).await;
    c.send(Hello {
        min_version: 1,
        max_version: 1,
        token: "mallory:phone".into(),
        device: DeviceId::new(device).unwrap(),
        client_name: "backoff-test".into(),
        resume: vec![],
        features: Default::default(),
    })
    .await;
    let first = c.recv().await.unwrap();
    if matches!(first.body, Body::Welcome(_)) {
        return vec![first];
    }
    let mut frames = vec![first];
    frames.extend(c.until_closed().await);
    frames
}

fn refusal(frames: &[Frame]) -> &ErrorFrame {
    match &frames[0].body {
        Body::Error(e) => e,
        other => panic!("expected an Error, got {other:?}"),
    }
}

async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_back_off_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let _broker = spawn(dir.path(), port, metrics_port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    wait_listening(addr).await;
    wait_listening(metrics).await;

    // Two free failures: the token is checked and refused.
    for _ in 0..2 {
        let frames = hello(addr, "laptop").await;
        assert_eq!(refusal(&frames).code, ErrorCode::Unauthenticated);
    }
    // The third failure starts the back-off...
    let frames = hello(addr, "laptop").await;
    assert_eq!(refusal(&frames).code, ErrorCode::Unauthenticated);
    // ...so even a good token is refused now, with the Hello's request id,
    // a wait, and a Goodbye.
    let frames = hello(addr, "phone").await;
    let e = refusal(&frames);
    assert_eq!(e.code, ErrorCode::RateLimited, "{frames:?}");
    assert!((1..=300).contains(&e.retry_after_ms), "{e:?}");
    assert_eq!(frames[0].request_id, 1);
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.body, Body::Goodbye(g) if g.code == ErrorCode::RateLimited)),
        "{frames:?}"
    );
    // Waiting as told lets the next attempt through; another failure
    // doubles the wait.
    tokio::time::sleep(Duration::from_millis(u64::from(e.retry_after_ms) + 50)).await;
    let frames = hello(addr, "laptop").await;
    assert_eq!(refusal(&frames).code, ErrorCode::Unauthenticated);
    let frames = hello(addr, "phone").await;
    let e = refusal(&frames);
    assert_eq!(e.code, ErrorCode::RateLimited);
    assert!(e.retry_after_ms > 300 && e.retry_after_ms <= 600, "{e:?}");
    // After the wait, a good token gets in (and clears the address).
    tokio::time::sleep(Duration::from_millis(u64::from(e.retry_after_ms) + 50)).await;
    let frames = hello(addr, "phone").await;
    assert!(matches!(frames[0].body, Body::Welcome(_)), "{frames:?}");
    let frames = hello(addr, "laptop").await;
    assert_eq!(refusal(&frames).code, ErrorCode::Unauthenticated);

    assert_eq!(
        metric(metrics, "confab_login_backoff_refusals_total").await,
        2.0
    );
    assert!(metric(metrics, "confab_auth_failures_total").await >= 5.0);
}
