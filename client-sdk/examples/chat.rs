//! A terminal chat on a Confab broker: join a room, see its recent history,
//! type messages, and see the others' messages live.
//!
//! ```sh
//! # A broker in development mode (the token `user:device` is believed):
//! scripts/serve.sh
//! # Then, in two terminals:
//! cargo run --release -p confab-client --example chat -- \
//!     --url confab://127.0.0.1:7400 --user alice --device laptop --room general
//! cargo run --release -p confab-client --example chat -- \
//!     --url confab://127.0.0.1:7400 --user bob --device phone --room general
//! ```
//!
//! Lines typed are published to the room; `/quit` (or end of input, or
//! Ctrl-C) leaves after the last messages are acknowledged. Stop and restart
//! the broker while chatting: the chat says it lost the connection, comes
//! back by itself, and nothing typed or sent by others meanwhile is lost or
//! shown twice.
//!
//! Over QUIC or TLS, give the broker's certificate: the fingerprint it logs
//! at start, or its certificate file (`confab-data/tls/cert.pem` for the
//! self-signed one):
//!
//! ```sh
//! cargo run --release -p confab-client --example chat -- \
//!     --url confab+quic://127.0.0.1:7401 --trust sha256:<fingerprint> --user carol
//! ```
//!
//! With `--cursors FILE`, the chat remembers the last message it showed and,
//! when started again, shows everything posted since instead of the last
//! `--history` messages.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use confab_client::confab_codec::{Direction, MessageKind, RoomId, Seq};
use confab_client::{
    Client, ClientConfig, ClientError, ConnectionEvent, CursorStore, FileCursorStore, Message,
    RoomEvent, Trust,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

/// A terminal chat room on a Confab broker.
#[derive(Debug, Parser)]
struct Args {
    /// The broker: `confab://` (TCP), `confabs://` (TLS) or
    /// `confab+quic://` (QUIC).
    #[arg(long, default_value = "confab://127.0.0.1:7400")]
    url: String,
    /// For TLS and QUIC: `sha256:<fingerprint>` of the broker's
    /// certificate, or a CA (or certificate) PEM file.
    #[arg(long)]
    trust: Option<Trust>,
    /// Your user name (the broker must run in development authentication).
    #[arg(long)]
    user: String,
    /// This device's name.
    #[arg(long, default_value = "terminal")]
    device: String,
    /// The room to join.
    #[arg(long, default_value = "general")]
    room: String,
    /// How many past messages to show on joining.
    #[arg(long, default_value_t = 20)]
    history: u16,
    /// A file to remember the last message shown, to resume from it.
    #[arg(long)]
    cursors: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), ClientError> {
    // In development authentication the token is `user:device`.
    let token = format!("{}:{}", args.user, args.device);
    let mut config = ClientConfig::new(&args.url, token, &args.device)?;
    config.trust = args.trust.clone();
    config.client_name = concat!("confab-chat-example/", env!("CARGO_PKG_VERSION")).into();
    let store = match &args.cursors {
        Some(path) => Some(FileCursorStore::open(path).await?),
        None => None,
    };
    if let Some(store) = &store {
        config = config.cursor_store(store.clone());
    }
    let room = RoomId::new(args.room.as_str())?;
    let client = Client::connect(config).await?;
    let me = (args.user.as_str(), args.device.as_str());

    // Join: from where this device stopped if it has a cursor (the broker
    // replays what was missed), else the last messages, then live from the
    // one after them (so nothing posted in between is skipped).
    let mut sub = match store.as_ref().and_then(|s| s.get(&room)) {
        Some(cursor) => {
            println!("-- {room}: new since #{cursor} --");
            client.subscribe(&room).await?
        }
        None => {
            let page = client
                .history_page(&room, Direction::Before, Seq(0), args.history)
                .await?;
            println!("-- {room}: last {} messages --", page.events.len());
            let head = page.events.last().map_or(0, |e| e.seq.0);
            for record in page.events {
                show(&RoomEvent::from_record(room.clone(), record, true), me);
            }
            client.subscribe_from(&room, Seq(head + 1)).await?
        }
    };
    println!(
        "-- you are {}; type a message, /quit to leave --",
        args.user
    );

    // Standard input is read on its own thread: reading it blocks.
    let (lines_tx, mut lines) = mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });

    let mut events = client.events();
    let mut online = true;
    let result = loop {
        tokio::select! {
            line = lines.recv() => match line.as_deref().map(str::trim) {
                None | Some("/quit") => break Ok(()),
                Some("") => {}
                Some(text) => {
                    // Waits only for room in the outbound queue; the SDK
                    // sends it (again after a reconnection if needed).
                    let pending = client.enqueue(Message::new(room.clone(), text.to_owned())).await?;
                    tokio::spawn(async move {
                        if let Err(e) = pending.await {
                            eprintln!("* not sent: {e}");
                        }
                    });
                }
            },
            event = sub.next() => match event {
                Some(Ok(event)) => show(&event, me),
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            },
            event = events.recv() => match event {
                Ok(ConnectionEvent::Disconnected { reason }) if online => {
                    online = false;
                    eprintln!("* connection lost ({reason}); reconnecting...");
                }
                Ok(ConnectionEvent::Reconnected { .. }) => {
                    online = true;
                    eprintln!("* reconnected");
                }
                Ok(ConnectionEvent::Closed { error: Some(e) }) => break Err(e),
                Err(RecvError::Closed) => break Ok(()),
                _ => {}
            },
            _ = tokio::signal::ctrl_c() => break Ok(()),
        }
    };
    // Give what was typed a moment to be acknowledged, then say goodbye.
    if tokio::time::timeout(Duration::from_secs(5), client.flush())
        .await
        .is_err()
    {
        eprintln!("* some messages were not acknowledged before leaving");
    }
    client.close().await;
    result
}

/// Prints one event as `[seq] user: text`. This device's own live messages
/// are not repeated: they were typed here.
fn show(event: &RoomEvent, (user, device): (&str, &str)) {
    if !event.replayed && event.sender.as_str() == user && event.device.as_str() == device {
        return;
    }
    let text = String::from_utf8_lossy(&event.payload);
    let target = event.refers_to.map(|s| s.0).unwrap_or_default();
    match event.kind {
        MessageKind::MESSAGE => println!("[{}] {}: {text}", event.seq, event.sender),
        MessageKind::EDIT => println!("[{}] {} edited #{target}: {text}", event.seq, event.sender),
        MessageKind::DELETE => println!("[{}] {} deleted #{target}", event.seq, event.sender),
        MessageKind::REACTION => {
            println!(
                "[{}] {} reacted {text} to #{target}",
                event.seq, event.sender
            )
        }
        other => println!("[{}] {} ({other:?}): {text}", event.seq, event.sender),
    }
}
