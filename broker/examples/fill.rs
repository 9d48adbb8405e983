//! Capacity planning: publishes N messages of a given size into a running
//! broker through the SDK, so that the data directory's growth can be
//! measured (`du -sb <data_dir>` before and after). docs/operations.md
//! reports what it measured.
//!
//! ```text
//! confab serve --data-dir /tmp/fill --durability wal &
//! cargo run --release -p confab-broker --example fill -- confab://127.0.0.1:7400 1000000 128 16
//! ```
//!
//! Arguments: URL, message count, payload bytes, rooms (round-robin).

use anyhow::Context;
use confab_client::{Client, ClientConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "confab://127.0.0.1:7400".into());
    let count: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let size: usize = args.next().map_or(Ok(128), |a| a.parse())?;
    let rooms: u64 = args.next().map_or(Ok(16), |a| a.parse())?;
    let client = Client::connect(ClientConfig::new(&url, "filler:fill", "fill")?)
        .await
        .context("connecting")?;
    let started = std::time::Instant::now();
    // Pseudo-random letters and digits: about as compressible as chat text
    // is not, so the measured size errs on the large side.
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..count {
        let payload: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ALPHABET[(x % ALPHABET.len() as u64) as usize]
            })
            .collect();
        client
            .publish_nowait(format!("fill-{}", i % rooms.max(1)), payload)
            .await?;
    }
    client.flush().await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{count} messages of {size} B in {secs:.1} s ({:.0}/s)",
        count as f64 / secs
    );
    client.close().await;
    Ok(())
}
