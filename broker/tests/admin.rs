//! `confab admin` through the real binary: inspection, backup and restore
//! of a stopped broker's data directory and of a running one's.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use confab_broker::config::Config;
use confab_codec::*;

fn admin(data_dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_confab"))
        .env_clear()
        .stdin(Stdio::null())
        .args(["admin", "--data-dir", data_dir.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(stderr)
    }
}

fn config(dir: &Path) -> Config {
    let mut c = test_config(dir);
    c.listen.tls = None;
    c.listen.quic = None;
    c
}

async fn publish_n(broker: &confab_broker::BrokerHandle, r: &RoomId, from: u64, to: u64) {
    let mut c = Conn::open(broker.tcp_addr(), "alice", "phone").await;
    for i in from..=to {
        c.publish(r, i, format!("message {i}").as_bytes()).await;
    }
    c.send(Receipt {
        room: r.clone(),
        kind: ReceiptKind::Read,
        seq: Seq(to),
    })
    .await;
    c.send(Receipt {
        room: r.clone(),
        kind: ReceiptKind::Delivered,
        seq: Seq(to),
    })
    .await;
    // A round trip, so that the receipts are committed before we go on.
    c.history(r, Direction::Before, 0, 1).await;
    c.send(Goodbye {
        code: ErrorCode::Normal,
        message: String::new(),
    })
    .await;
    c.until_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_broker_backup_restore_and_inspection() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let r = room("archive");
    let broker = start(config(&data)).await;
    publish_n(&broker, &r, 1, 40).await;
    broker.shutdown().await;

    let tail = admin(&data, &["tail", "archive", "-n", "1000"]).unwrap();
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 40, "{tail}");
    assert!(
        lines[0].starts_with("1\t") && lines[0].ends_with("\tmessage 1"),
        "{tail}"
    );
    assert!(lines[39].contains("alice/phone"), "{tail}");
    let stats = admin(&data, &["room-stats", "archive"]).unwrap();
    assert!(
        stats.contains("head: 40\n") && stats.contains("managed: no"),
        "{stats}"
    );
    let cursors = admin(&data, &["cursors", "alice", "phone"]).unwrap();
    assert!(cursors.contains("archive\t40\t40"), "{cursors}");
    admin(&data, &["compact"]).unwrap();

    let backup = tmp.path().join("backup-1");
    admin(&data, &["backup", backup.to_str().unwrap()]).unwrap();
    assert!(
        admin(&data, &["backup", backup.to_str().unwrap()]).is_err(),
        "no overwrite"
    );

    // More traffic after the backup, then restore: the log is as it was.
    let broker = start(config(&data)).await;
    publish_n(&broker, &r, 41, 50).await;
    broker.shutdown().await;
    assert_eq!(
        admin(&data, &["tail", "archive", "-n", "1000"])
            .unwrap()
            .lines()
            .count(),
        50
    );
    let out = admin(&data, &["restore", backup.to_str().unwrap()]).unwrap();
    assert!(out.contains("previous data"), "{out}");
    assert_eq!(
        admin(&data, &["tail", "archive", "-n", "1000"]).unwrap(),
        tail
    );

    // The restored directory serves: history and new sequences continue.
    let broker = start(config(&data)).await;
    let mut c = Conn::open(broker.tcp_addr(), "bob", "phone").await;
    let page = c.history(&r, Direction::Before, 0, 100).await;
    assert_eq!(page.events.len(), 40);
    assert_eq!(c.publish(&r, 1, b"after restore").await.seq, Seq(41));
    broker.shutdown().await;

    let nothing = tmp.path().join("empty");
    assert!(admin(&nothing, &["tail", "archive"])
        .unwrap_err()
        .contains("no Confab database"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_broker_backup_through_its_admin_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let r = room("live");
    let mut c = config(&data);
    c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let broker = start(c).await;
    publish_n(&broker, &r, 1, 25).await;

    // Read-only commands work beside the running broker.
    let tail = admin(&data, &["tail", "live", "-n", "1000"]).unwrap();
    assert_eq!(tail.lines().count(), 25, "{tail}");
    // Backup needs the writer: without the endpoint it says so...
    let backup = tmp.path().join("backup-live");
    let err = admin(&data, &["backup", backup.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("running"), "{err}");
    // ...and through it, it works.
    let url = broker.metrics_addr().unwrap().to_string();
    admin(&data, &["backup", backup.to_str().unwrap(), "--url", &url]).unwrap();
    admin(&data, &["compact", "--url", &url]).unwrap();
    // Restoring over a running broker is refused.
    let err = admin(&data, &["restore", backup.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("stop it"), "{err}");
    broker.shutdown().await;

    // The backup restores into a fresh directory with the same log.
    let restored = tmp.path().join("restored");
    admin(&restored, &["restore", backup.to_str().unwrap()]).unwrap();
    assert_eq!(
        admin(&restored, &["tail", "live", "-n", "1000"]).unwrap(),
        tail
    );
}
