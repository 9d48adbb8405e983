//! A small service embedding Confab: it runs a broker in-process, manages a
//! room from the backend, exposes `POST /rooms/{room}/notice` to post a
//! system message into a room, follows the room in-process, and has an SDK
//! client on a real socket print what it receives.
//!
//! ```text
//! cargo run --release -p confab-broker --example embedded            # demo, then exit
//! cargo run --release -p confab-broker --example embedded -- --serve # keep serving
//! ```
//!
//! With `--serve`, post notices yourself (the address is printed):
//! `curl -d 'deploy at 5pm' http://127.0.0.1:PORT/rooms/announcements/notice`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use confab_broker::config::Config;
use confab_broker::{Broker, BrokerHandle, RoomChange, SystemMessage};
use confab_client::{Client, ClientConfig};
use confab_codec::{
    CreateRoom, JoinPolicy, MessageKind, Role, RoomId, RoomKind, RoomMeta, StartAt, UserId,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `POST /rooms/{room}/notice`: the body becomes a system message.
async fn notice(
    State(broker): State<Arc<BrokerHandle>>,
    Path(room): Path<String>,
    body: String,
) -> (StatusCode, String) {
    let Ok(room) = RoomId::new(room) else {
        return (StatusCode::BAD_REQUEST, "bad room id\n".into());
    };
    match broker.publish(SystemMessage::new(room, body)).await {
        Ok(p) => (StatusCode::OK, format!("posted as #{}\n", p.seq)),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
    }
}

/// One line for an event.
fn describe(sender: &UserId, kind: MessageKind, payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    match kind {
        MessageKind::MEMBER_JOINED => format!("({text} joined)"),
        MessageKind::SYSTEM => format!("[notice] {text}"),
        _ => format!("{sender}: {text}"),
    }
}

/// What the demo does in place of a user with curl.
async fn post_notice(addr: SocketAddr, room: &str, text: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "POST /rooms/{room}/notice HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out
        .split_once("\r\n\r\n")
        .map_or(out.clone(), |(_, b)| b.to_owned()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let serve = std::env::args().any(|a| a == "--serve");
    let data = tempfile::tempdir()?;
    let mut config = Config {
        data_dir: data.path().join("confab"),
        ..Config::default()
    };
    config.listen.tcp = "127.0.0.1:0".parse()?;
    config.listen.quic = None;
    config.metrics.listen = Some("127.0.0.1:0".parse()?);
    let broker = Arc::new(Broker::builder(config).start().await?);
    println!(
        "broker: confab://{}  operations: http://{}/metrics",
        broker.tcp_addr(),
        broker.metrics_addr().context("metrics endpoint")?
    );

    // The backend owns the room and decides who is in it.
    let room = RoomId::new("announcements")?;
    broker
        .create_room(CreateRoom {
            kind: RoomKind::Group,
            room: Some(room.clone()),
            peer: None,
            policy: JoinPolicy::InviteOnly,
            meta: RoomMeta {
                name: "Announcements".into(),
                topic: "Posted by the service".into(),
                avatar_url: String::new(),
            },
            invite: vec![],
        })
        .await?;
    broker
        .change_room(
            room.clone(),
            RoomChange::Add(UserId::new("alice")?, Role::Member),
        )
        .await?;

    // In-process: the service follows the room without a socket.
    let mut local = broker
        .subscribe(room.clone(), StartAt::From(confab_codec::Seq(1)))
        .await?;
    let (local_tx, mut local_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(ev) = local.next().await {
            println!(
                "[in-process] #{} {}",
                ev.seq,
                describe(&ev.sender, ev.kind, &ev.payload)
            );
            let _ = local_tx.send(ev.seq);
        }
    });

    // A client on a socket, through the SDK.
    let url = format!("confab://{}", broker.tcp_addr());
    let alice = Client::connect(ClientConfig::new(&url, "alice:laptop", "laptop")?).await?;
    let mut sub = alice.subscribe(room.clone()).await?;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(ev)) = sub.next().await {
            println!(
                "[sdk alice]  #{} {}",
                ev.seq,
                describe(&ev.sender, ev.kind, &ev.payload)
            );
            let _ = seen_tx.send(ev.seq);
        }
    });

    // The service's own HTTP API.
    let app = Router::new()
        .route("/rooms/{room}/notice", post(notice))
        .with_state(broker.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = listener.local_addr()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await
    });
    println!("service: curl -d 'hello' http://{http}/rooms/announcements/notice");

    if serve {
        tokio::signal::ctrl_c().await?;
    } else {
        print!(
            "POST notice -> {}",
            post_notice(http, "announcements", "maintenance tonight at 22:00").await?
        );
        alice
            .publish(room.clone(), "thanks for the heads-up")
            .await?;
        print!(
            "POST notice -> {}",
            post_notice(http, "announcements", "maintenance done").await?
        );
        // Both followers see up to #4: alice's join (the in-process one,
        // which started from #1), the two notices and alice's message.
        for rx in [&mut seen_rx, &mut local_rx] {
            let mut last = confab_codec::Seq(0);
            while last.0 < 4 {
                last = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .context("every message arrived in time")?
                    .context("a subscription ended")?;
            }
        }
    }

    stop.cancel();
    server.await??;
    alice.close().await;
    let broker = Arc::try_unwrap(broker).map_err(|_| anyhow::anyhow!("broker still shared"))?;
    broker.shutdown().await;
    println!("shut down cleanly");
    Ok(())
}
