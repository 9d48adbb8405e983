//! Compression (protocol 3.6) through the SDK against the real broker on
//! 127.0.0.1, over TCP, TLS and QUIC (a context per stream): publish,
//! backlog from the log, live delivery and history all work with the
//! frames compressed both ways, and compressible chat payloads take fewer
//! bytes on the wire (measured by the broker's counters, not by timing).
//! A client told not to offer it gets none, and a broker with compression
//! off grants it to nobody.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod support;

use std::path::Path;

use confab_broker::config::Config;
use confab_broker::{Broker, BrokerHandle};
use confab_client::confab_codec::Seq;
use confab_client::{Client, ClientConfig, RoomEvent};
use support::in_process::{client_config, take, within, Transport};

over_transports!(
    compressed_chat_round_trips_and_takes_fewer_bytes,
    a_client_that_does_not_offer_it_gets_plain_frames,
);

async fn start_broker(dir: &Path, compression: bool) -> BrokerHandle {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    let any = "127.0.0.1:0".parse().unwrap();
    config.listen.tcp = any;
    config.listen.tls = Some(any);
    config.listen.quic = Some(any);
    config.compression.enabled = compression;
    Broker::builder(config).start().await.unwrap()
}

fn config(broker: &BrokerHandle, t: Transport, user: &str, device: &str) -> ClientConfig {
    // Off by default: these tests offer it.
    client_config(broker, t, user, device).compression(true)
}

/// A chat message as an app would send it: JSON, a few hundred bytes, much
/// like the one before.
fn chat(i: u64) -> String {
    format!(
        "{{\"type\":\"text\",\"body\":\"Message {i}: the train leaves at {}:{:02}, meet at the north entrance next to the bakery\",\"mentions\":[],\"client\":\"confab-test/1.0\",\"locale\":\"en-GB\"}}",
        8 + i % 12,
        i % 60
    )
}

async fn compressed_chat_round_trips_and_takes_fewer_bytes(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), true).await;
    let alice = within(Client::connect(config(&broker, t, "alice", "phone")))
        .await
        .unwrap();
    let bob = within(Client::connect(config(&broker, t, "bob", "laptop")))
        .await
        .unwrap();
    let before = broker.stats();
    // A backlog, published compressed.
    for i in 1..=40u64 {
        let ack = within(alice.publish("general", chat(i))).await.unwrap();
        assert_eq!(ack.seq, Seq(i));
    }
    // Backlog from the log, then live, compressed.
    let mut sub = within(bob.subscribe_from("general", Seq(1))).await.unwrap();
    let backlog = take(&mut sub, 40).await;
    for i in 41..=80u64 {
        within(alice.publish("general", chat(i))).await.unwrap();
    }
    let live = take(&mut sub, 40).await;
    let all: Vec<RoomEvent> = backlog.into_iter().chain(live).collect();
    assert_eq!(
        all.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        (1..=80).collect::<Vec<_>>()
    );
    for e in &all {
        assert_eq!(e.payload, chat(e.seq.0).as_bytes());
    }
    // History, compressed pages.
    let page = within(bob.history("general", 1..=80)).await.unwrap();
    assert_eq!(page.len(), 80);
    assert_eq!(page[79].payload, chat(80).as_bytes());

    let after = broker.stats();
    let sent_in = after.compressed_in - before.compressed_in;
    let sent_out = after.compressed_out - before.compressed_out;
    let got_in = after.inflated_in - before.inflated_in;
    let got_out = after.inflated_out - before.inflated_out;
    // Bob got 80 events and 80 history entries (and alice her own acks):
    // at least 160 x ~200 bytes went through the compressors.
    assert!(sent_in > 160 * 150, "{after:?}");
    assert!(
        sent_out * 3 < sent_in,
        "{sent_out} compressed bytes for {sent_in}: similar messages compress"
    );
    // Alice's publishes came compressed.
    assert!(got_out > 80 * 150, "{after:?}");
    assert!(got_in * 2 < got_out, "{got_in} for {got_out}");
    alice.close().await;
    bob.close().await;
    broker.shutdown().await;
}

async fn a_client_that_does_not_offer_it_gets_plain_frames(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), true).await;
    let alice = within(Client::connect(
        config(&broker, t, "alice", "phone").compression(false),
    ))
    .await
    .unwrap();
    let bob = within(Client::connect(
        config(&broker, t, "bob", "laptop").compression(false),
    ))
    .await
    .unwrap();
    let mut sub = within(bob.subscribe("general")).await.unwrap();
    for i in 1..=20u64 {
        within(alice.publish("general", chat(i))).await.unwrap();
    }
    let got = take(&mut sub, 20).await;
    assert_eq!(got[19].payload, chat(20).as_bytes());
    let s = broker.stats();
    assert_eq!(
        (s.compressed_in, s.inflated_in),
        (0, 0),
        "nothing compressed either way: {s:?}"
    );
    alice.close().await;
    bob.close().await;
    broker.shutdown().await;

    // A broker with compression off grants it to nobody.
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), false).await;
    let alice = within(Client::connect(config(&broker, t, "alice", "phone")))
        .await
        .unwrap();
    let bob = within(Client::connect(config(&broker, t, "bob", "laptop")))
        .await
        .unwrap();
    let mut sub = within(bob.subscribe("general")).await.unwrap();
    for i in 1..=20u64 {
        within(alice.publish("general", chat(i))).await.unwrap();
    }
    take(&mut sub, 20).await;
    let s = broker.stats();
    assert_eq!((s.compressed_in, s.inflated_in), (0, 0), "{s:?}");
    alice.close().await;
    bob.close().await;
    broker.shutdown().await;
}
