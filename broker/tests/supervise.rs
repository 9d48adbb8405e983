//! A broker whose sequencer thread dies stops itself: it records why, stops
//! accepting, says Goodbye to its clients and acknowledges nothing more.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use confab_broker::storage::{CommitFault, FaultyLog, MemoryLog};
use confab_broker::Broker;
use confab_codec::*;

async fn start_on_faulty_log(dir: &Path, log: Arc<FaultyLog>) -> confab_broker::BrokerHandle {
    Broker::builder(test_config(dir))
        .storage(log)
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sequencer_stops_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(FaultyLog::new(Arc::new(MemoryLog::new())));
    let broker = start_on_faulty_log(dir.path(), log.clone()).await;
    let addr = broker.tcp_addr();
    let stopped = broker.shutdown_token();
    let r = room("fragile");

    let mut c = Conn::open(addr, "alice", "phone").await;
    assert_eq!(c.publish(&r, 1, b"fine").await.seq, Seq(1));
    assert!(broker.failure().is_none());

    // The next commit panics on the sequencer thread.
    log.set_commit_fault(CommitFault::Panic);
    let rid = c.request_id();
    c.send_frame(Conn::publish_frame(rid, &r, 2, b"boom")).await;
    tokio::time::timeout(WAIT, stopped.cancelled())
        .await
        .expect("the broker stops by itself");
    let why = broker.failure().expect("the failure is recorded");
    assert!(why.contains("confab-sequencer"), "{why}");

    // The client is told and nothing is acknowledged.
    let frames = tokio::time::timeout(WAIT, c.until_closed()).await.unwrap();
    assert!(
        !frames
            .iter()
            .any(|f| matches!(&f.body, Body::PublishAck(a) if a.client_msg_id == 2)),
        "the failed publish was acknowledged: {frames:?}"
    );
    assert!(
        frames.iter().any(|f| matches!(
            &f.body,
            Body::Goodbye(g) if g.code == ErrorCode::ShuttingDown
        )),
        "no Goodbye: {frames:?}"
    );

    // New clients are not let in.
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => true,
            // Accepted by the kernel's backlog at most: nobody answers.
            Ok(s) => {
                let mut buf = [0u8; 1];
                s.readable().await.is_ok() && s.try_read(&mut buf).map_or(true, |n| n == 0)
            }
        }
    })
    .await
    .unwrap_or(true);
    assert!(refused, "a new connection was served after the failure");

    // And shutdown completes.
    tokio::time::timeout(WAIT, broker.shutdown()).await.unwrap();
}
