//! A TCP proxy on loopback that counts the bytes between clients and a
//! server, both ways: what a scenario's devices cost on the wire.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes through a proxy, each way.
#[derive(Debug, Default)]
struct Counted {
    up: AtomicU64,
    down: AtomicU64,
}

/// A TCP proxy on loopback in front of `to`, counting bytes; it serves
/// connections until dropped (its task is aborted).
pub(crate) struct Proxy {
    /// Where clients connect.
    pub(crate) addr: SocketAddr,
    counted: Arc<Counted>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts proxying to `to`.
    pub(crate) async fn start(to: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counted = Arc::new(Counted::default());
        let c = counted.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(to).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, c.clone(), true);
                    let down = pump(sr, cw, c, false);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(Proxy {
            addr,
            counted,
            task,
        })
    }

    /// Bytes so far: (client to server, server to client).
    pub(crate) fn bytes(&self) -> (u64, u64) {
        (
            self.counted.up.load(Ordering::Relaxed),
            self.counted.down.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counted: Arc<Counted>,
    up: bool,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let counter = if up { &counted.up } else { &counted.down };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
