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
//! Ctrl-C) leaves after the last messages are acknowledged. Lines typed
//! here are not printed again when they come back from the room, live or
//! after a reconnect; everything else is, as `[seq] user: text`.
//!
//! The chat starts whether the broker is reachable or not
//! ([`Client::start`]): started offline, it says so, keeps what is typed,
//! and joins the room and sends it all once the broker answers. Stop and
//! restart the broker while chatting: the chat says it lost the
//! connection, comes back by itself, and nothing typed or sent by others
//! meanwhile is lost or shown twice.
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
//! Against a cluster (`scripts/cluster.sh`), give several nodes; the chat
//! connects to the first and moves to the next when it loses it:
//!
//! ```sh
//! cargo run --release -p confab-client --example chat -- \
//!     --url confab://127.0.0.1:7400,confab://127.0.0.1:7410 --user alice --room general
//! ```
//!
//! With `--cursors FILE`, the chat remembers the last message it showed and,
//! when started again, shows everything posted since instead of the last
//! `--history` messages.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use confab_client::confab_codec::{Direction, MessageKind, RoomId, Seq};
use confab_client::{
    Client, ClientConfig, ClientError, ConnectionEvent, CursorStore, FileCursorStore, Message,
    RoomEvent, Subscription, Trust,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

/// A terminal chat room on a Confab broker.
#[derive(Debug, Parser)]
struct Args {
    /// The broker: `confab://` (TCP), `confabs://` (TLS) or
    /// `confab+quic://` (QUIC); several nodes of a cluster separated by
    /// commas (the next is tried when one fails).
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
    let several = config.endpoints.len() > 1;
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
    // Returns at once, whether the broker is reachable or not (only a bad
    // configuration fails here): the chat works offline, queues what is
    // typed, and catches up once connected.
    let client = Client::start(config)?;
    let mut events = client.events();
    let mut me = Me {
        user: args.user.clone(),
        device: args.device.clone(),
        typed: HashSet::new(),
    };
    println!(
        "-- you are {} in {room}; type a message, /quit to leave --",
        args.user
    );

    // Join: from where this device stopped if it has a cursor (the broker
    // replays what was missed), else the last messages, then live from the
    // one after them. It needs the broker, so it runs alongside the rest.
    let cursor = store.as_ref().and_then(|s| s.get(&room));
    let join = join(&client, &room, cursor, args.history);
    tokio::pin!(join);
    let mut sub: Option<Subscription> = None;

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

    let mut link = Link::Starting;
    // The endpoint of the latest connection attempt.
    let mut trying = None;
    let result = loop {
        tokio::select! {
            joined = &mut join, if sub.is_none() => match joined {
                Ok((header, backlog, joined)) => {
                    println!("{header}");
                    for event in &backlog {
                        me.show(event);
                    }
                    sub = Some(joined);
                }
                Err(e) => break Err(e),
            },
            line = lines.recv() => match line.as_deref().map(str::trim) {
                None | Some("/quit") => break Ok(()),
                Some("") => {}
                Some(text) => {
                    // Waits only for room in the outbound queue; the SDK
                    // sends it once connected (again after a reconnection
                    // if needed).
                    let pending = client.enqueue(Message::new(room.clone(), text.to_owned())).await?;
                    me.typed.insert(pending.client_msg_id());
                    tokio::spawn(async move {
                        if let Err(e) = pending.await {
                            eprintln!("* not sent: {e}");
                        }
                    });
                }
            },
            event = next_event(&mut sub) => match event {
                Some(Ok(event)) => me.show(&event),
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            },
            event = events.recv() => match event {
                Ok(ConnectionEvent::Disconnected { reason }) => match link {
                    Link::Starting => {
                        link = Link::Unreachable;
                        eprintln!("* broker unreachable ({reason}); retrying in the background, and what you type is sent once connected");
                    }
                    Link::Up => {
                        link = Link::Lost;
                        eprintln!("* connection lost ({reason}); reconnecting...");
                    }
                    Link::Unreachable | Link::Lost => {}
                },
                Ok(ConnectionEvent::Connected { .. }) => {
                    if link == Link::Unreachable {
                        eprintln!("* connected");
                    }
                    link = Link::Up;
                }
                Ok(ConnectionEvent::Connecting { endpoint, .. }) => trying = Some(endpoint),
                Ok(ConnectionEvent::Reconnected { .. }) => {
                    link = Link::Up;
                    match &trying {
                        Some(endpoint) if several => eprintln!("* reconnected to {endpoint}"),
                        _ => eprintln!("* reconnected"),
                    }
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

/// Where the connection stands, for the messages about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No connection yet, no failure yet.
    Starting,
    /// Never connected; attempts fail.
    Unreachable,
    Up,
    /// Was up; reconnecting.
    Lost,
}

/// Follows the room: the header to print, the backlog to show first, and
/// the subscription.
async fn join(
    client: &Client,
    room: &RoomId,
    cursor: Option<Seq>,
    last: u16,
) -> Result<(String, Vec<RoomEvent>, Subscription), ClientError> {
    if let Some(cursor) = cursor {
        // Works offline: the broker replays what was missed once connected.
        let sub = client.subscribe(room).await?;
        return Ok((
            format!("-- {room}: new since #{cursor} --"),
            Vec::new(),
            sub,
        ));
    }
    // The history request waits for a connection and is sent again if the
    // connection drops before the answer; it only gives up (`Timeout`)
    // after the request timeout without a connection. Then ask again.
    let page = loop {
        match client
            .history_page(room, Direction::Before, Seq(0), last)
            .await
        {
            Ok(page) => break page,
            Err(ClientError::Timeout) => continue,
            Err(e) => return Err(e),
        }
    };
    let head = page.events.last().map_or(0, |e| e.seq.0);
    let header = format!("-- {room}: last {} messages --", page.events.len());
    let backlog = page
        .events
        .into_iter()
        .map(|record| RoomEvent::from_record(room.clone(), record, true))
        .collect();
    let sub = client.subscribe_from(room, Seq(head + 1)).await?;
    Ok((header, backlog, sub))
}

/// The next event of the subscription, once there is one.
async fn next_event(sub: &mut Option<Subscription>) -> Option<Result<RoomEvent, ClientError>> {
    match sub {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
    }
}

/// Who is chatting, and what they typed here that has not come back yet.
struct Me {
    user: String,
    device: String,
    /// Client message ids of the lines typed in this chat. The terminal
    /// already shows them, so they are not printed again when they come
    /// back from the room, live or replayed after a reconnect alike: one
    /// rule, by id. Everything else is printed, this user's messages from
    /// other devices or earlier runs included. Each id comes back once
    /// (exactly-once delivery) and is forgotten then.
    typed: HashSet<u64>,
}

impl Me {
    /// Prints one event as `[seq] user: text`, unless it is a line typed
    /// here.
    fn show(&mut self, event: &RoomEvent) {
        if event.sender.as_str() == self.user
            && event.device.as_str() == self.device
            && self.typed.remove(&event.client_msg_id)
        {
            return;
        }
        let text = String::from_utf8_lossy(&event.payload);
        let target = event.refers_to.map(|s| s.0).unwrap_or_default();
        match event.kind {
            MessageKind::MESSAGE => println!("[{}] {}: {text}", event.seq, event.sender),
            MessageKind::EDIT => {
                println!("[{}] {} edited #{target}: {text}", event.seq, event.sender)
            }
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
}
