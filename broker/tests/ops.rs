//! The operations endpoint: Prometheus metrics scraped over HTTP, health
//! and readiness, and the admin endpoints' protection.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use confab_broker::config::Config;
use confab_codec::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(dir: &std::path::Path) -> Config {
    let mut c = test_config(dir);
    c.listen.tls = None;
    c.listen.quic = None;
    c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    c
}

/// One HTTP/1.1 request; returns the status code and the body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// The value of the first sample line of `series` (name and labels as
/// written, e.g. `confab_connections{transport="tcp"}`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_and_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(config(dir.path())).await;
    let ops = broker.metrics_addr().expect("metrics endpoint on");
    assert_eq!(
        http(ops, "GET", "/healthz", "", "").await,
        (200, "ok\n".into())
    );
    assert_eq!(
        http(ops, "GET", "/readyz", "", "").await,
        (200, "ready\n".into())
    );

    let r = room("metered");
    let mut alice = Conn::open(broker.tcp_addr(), "alice", "phone").await;
    let mut bob = Conn::open(broker.tcp_addr(), "bob", "phone").await;
    bob.subscribe(vec![(r.clone(), StartAt::Live)]).await;
    for i in 1..=5 {
        alice.publish(&r, i, b"hello").await;
    }
    bob.events(5).await;
    // A refused token and a disconnect, for their counters.
    let mut bad = Conn::connect(broker.tcp_addr()).await;
    bad.send(Hello {
        min_version: 1,
        max_version: 1,
        token: "mallory:laptop".into(),
        device: DeviceId::new("phone").unwrap(),
        client_name: "test".into(),
        resume: vec![],
        features: Default::default(),
    })
    .await;
    bad.until_closed().await;

    let (status, first) = http(ops, "GET", "/metrics", "", "").await;
    assert_eq!(status, 200, "{first}");
    for series in [
        "confab_connections{transport=\"tcp\"}",
        "confab_connections{transport=\"quic\"}",
        "confab_sessions",
        "confab_rooms",
        "confab_subscriptions",
        "confab_messages_in_total",
        "confab_messages_out_total",
        "confab_commits_total",
        "confab_lagging_devices",
        "confab_device_queue_depth_max",
        "confab_auth_failures_total",
        "confab_publish_ack_seconds_count",
        "confab_publish_deliver_seconds_count",
        "confab_commit_batch_size_count",
        "confab_commit_seconds_count",
        "confab_device_queue_depth_count",
    ] {
        assert!(
            sample(&first, series).is_some(),
            "{series} missing in\n{first}"
        );
    }
    assert!(
        first.contains("confab_publish_ack_seconds_bucket{le="),
        "{first}"
    );
    assert!(first.contains("# HELP confab_messages_in_total"), "{first}");
    assert!(sample(&first, "confab_sessions").unwrap() >= 2.0);
    assert!(sample(&first, "confab_subscriptions").unwrap() >= 1.0);
    assert!(sample(&first, "confab_auth_failures_total").unwrap() >= 1.0);
    let in_before = sample(&first, "confab_messages_in_total").unwrap();
    let out_before = sample(&first, "confab_messages_out_total").unwrap();
    let acks_before = sample(&first, "confab_publish_ack_seconds_count").unwrap();
    assert!(in_before >= 5.0 && out_before >= 5.0, "{first}");

    for i in 6..=15 {
        alice.publish(&r, i, b"more").await;
    }
    bob.events(10).await;
    bob.send(Goodbye {
        code: ErrorCode::Normal,
        message: String::new(),
    })
    .await;
    bob.until_closed().await;
    // The session's end is counted after its writer finishes.
    let mut second = String::new();
    for _ in 0..200 {
        second = http(ops, "GET", "/metrics", "", "").await.1;
        if second.contains("confab_disconnects_total{reason=\"goodbye\"}") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(sample(&second, "confab_messages_in_total").unwrap() >= in_before + 10.0);
    assert!(sample(&second, "confab_messages_out_total").unwrap() >= out_before + 10.0);
    assert!(sample(&second, "confab_publish_ack_seconds_count").unwrap() >= acks_before + 10.0);
    assert!(
        sample(&second, "confab_disconnects_total{reason=\"goodbye\"}").unwrap() >= 1.0,
        "{second}"
    );

    // Admin endpoints answer loopback peers when no token is configured.
    let (status, body) = http(ops, "POST", "/admin/compact", "", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(http(ops, "GET", "/nope", "", "").await.0, 404);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_require_the_configured_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let mut c = config(&dir.path().join("data"));
    c.admin.token_file = token_file;
    let broker = start(c).await;
    let ops = broker.metrics_addr().unwrap();
    let dest = dir.path().join("backup");
    let dest_text = dest.to_str().unwrap();
    let (status, _) = http(ops, "POST", "/admin/backup", "", dest_text).await;
    assert_eq!(status, 401);
    let wrong = "Authorization: Bearer nope\r\n";
    assert_eq!(
        http(ops, "POST", "/admin/backup", wrong, dest_text).await.0,
        401
    );
    assert!(!dest.exists());
    let right = "Authorization: Bearer s3cret\r\n";
    let (status, body) = http(ops, "POST", "/admin/backup", right, dest_text).await;
    assert_eq!(status, 200, "{body}");
    assert!(dest.join("CURRENT").is_file());
    // A second backup into the same place is refused, not merged.
    let (status, body) = http(ops, "POST", "/admin/backup", right, dest_text).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("exists"), "{body}");
    assert_eq!(
        http(ops, "POST", "/admin/backup", right, "relative/dir")
            .await
            .0,
        400
    );
    broker.shutdown().await;
}
