//! The fence on an R3 stream of a three-server NATS cluster across leader
//! changes (nats-server #4320 and #8469; docs/cluster.md).
#![allow(clippy::unwrap_used)]

mod cluster_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_support::*;
use confab_broker::cluster::RoomWriter;

/// The #4320 / #8469 case: two writers race on one room of an R3 stream
/// while its leader is stepped down again and again and once killed with
/// `kill -9` (and restarted). The fence must hold across every leader
/// change: no sequence acknowledged to two writers, the log 1..=head with
/// no gap or fork, every acknowledged record as acknowledged.
#[tokio::test]
async fn the_fence_holds_across_r3_leader_changes() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    bounded(240, async {
        const STREAM: &str = "R3RACE";
        let r = room("r3-race");
        let urls = cluster.lock().unwrap().urls(0);
        let admin = connect_all(urls).await;
        open_r3_log(admin.clone(), STREAM).await;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

        let mut writers = Vec::new();
        for (k, name) in ["A", "B"].into_iter().enumerate() {
            let urls = cluster.lock().unwrap().urls(k + 1);
            let client = connect_all(urls).await;
            let log = open_r3_log(client, STREAM).await;
            let (r, done) = (r.clone(), done.clone());
            writers.push(tokio::spawn(async move {
                let mut acked: Vec<(u64, String)> = Vec::new();
                let (mut takeovers, mut refusals, mut errors) = (0u32, 0u32, 0u32);
                'outer: loop {
                    takeovers += 1;
                    let token = format!("{name}{takeovers}");
                    let mut w = match RoomWriter::take_over(log.clone(), r.clone(), token.clone(), 4).await {
                        Ok(w) => w,
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    loop {
                        let seq = w.head().0 + 1;
                        if done.load(std::sync::atomic::Ordering::Relaxed) {
                            break 'outer;
                        }
                        let p = format!("{token}-{seq}");
                        let recs = vec![(seq, 0, record(seq, 0, &p))];
                        match w.append(&appends(&r, &recs)).await {
                            Ok(_) => acked.push((seq, p)),
                            Err(e) if e.is_fenced() => {
                                refusals += 1;
                                continue 'outer;
                            }
                            // An election in progress, a lost ack that
                            // could not be looked up: the same append
                            // again (fenced on the same chunk).
                            Err(_) => {
                                errors += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                }
                (acked, takeovers, refusals, errors)
            }));
        }

        // Leader changes for 12 s: a step-down request every 400 ms, and a
        // kill -9 of the leader's server after 2 s, restarted 3 s later.
        // Then the writers stop.
        let chaos = {
            let (cluster, done, admin) = (cluster.clone(), done.clone(), admin.clone());
            tokio::spawn(async move {
                let js = async_nats::jetstream::new(admin.clone());
                let (mut stepdowns, mut killed, mut leaders) = (0u32, None, Vec::new());
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(12) {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    let leader = match js.get_stream(STREAM).await {
                        Ok(mut s) => s
                            .info()
                            .await
                            .ok()
                            .and_then(|i| i.cluster.clone())
                            .and_then(|c| c.leader),
                        Err(_) => None,
                    };
                    if let Some(l) = &leader {
                        if leaders.last() != Some(l) {
                            leaders.push(l.clone());
                        }
                    }
                    if killed.is_none() && started.elapsed() > Duration::from_secs(2) {
                        let index = leader
                            .as_deref()
                            .and_then(|l| l.strip_prefix('s'))
                            .and_then(|i| i.parse::<usize>().ok());
                        if let Some(i) = index {
                            cluster.lock().unwrap().kill(i);
                            killed = Some((i, Instant::now()));
                            continue;
                        }
                    }
                    if let Some((i, at)) = killed {
                        let down = cluster.lock().unwrap().servers[i].is_none();
                        if down && at.elapsed() > Duration::from_secs(3) {
                            let c = cluster.clone();
                            tokio::task::spawn_blocking(move || {
                                let mut c = c.lock().unwrap();
                                c.spawn(i);
                                // Its ports were just freed; if another
                                // socket took one, the stream runs on two.
                                if !c.wait_listening(i) {
                                    eprintln!("s{i} did not come back");
                                }
                            })
                            .await
                            .unwrap();
                        }
                    }
                    let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}");
                    if admin.request(subject, Bytes::new()).await.is_ok() {
                        stepdowns += 1;
                    }
                }
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                (stepdowns, killed.map(|(i, _)| i), leaders)
            })
        };

        let mut by_seq: HashMap<u64, String> = HashMap::new();
        let (mut refusals, mut errors, mut takeovers) = (0, 0, 0);
        for w in writers {
            let (acked, took, refused, errs) = w.await.unwrap();
            takeovers += took;
            refusals += refused;
            errors += errs;
            for (seq, p) in acked {
                if let Some(prev) = by_seq.insert(seq, p.clone()) {
                    panic!("sequence {seq} acknowledged twice: {prev} and {p}");
                }
            }
        }
        let (stepdowns, killed, leaders) = chaos.await.unwrap();

        // Every server back, replicas caught up: read the log whole.
        let log = open_r3_log(admin.clone(), STREAM).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let all = loop {
            let all = read_all(&log, &r).await;
            match all {
                Ok(all) if all.len() >= by_seq.len() && !all.is_empty() => break all,
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                other => panic!("the log did not settle: {:?}", other.map(|a| a.len())),
            }
        };
        let head = all.last().unwrap().seq.0;
        assert_eq!(
            all.iter().map(|x| x.seq.0).collect::<Vec<_>>(),
            (1..=head).collect::<Vec<_>>(),
            "no gap, no fork"
        );
        for rec in &all {
            if let Some(acked) = by_seq.get(&rec.seq.0) {
                assert_eq!(&payload_of(rec), acked, "seq {} holds what was acknowledged", rec.seq.0);
            }
        }
        let acked = by_seq.len() as u64;
        let unacked = head - acked;
        eprintln!(
            "R3: {head} sequences, {acked} acknowledged, {unacked} stored without an ack reaching the writer; \
             {takeovers} takeovers, {refusals} refused appends, {errors} errors; \
             {stepdowns} step-downs, killed s{killed:?}, leaders {leaders:?}"
        );
        assert!(stepdowns >= 3 && killed.is_some(), "the leader did change");
        assert!(leaders.len() >= 3, "leaders seen: {leaders:?}");
        assert!(acked >= 50, "the writers made progress: {acked}");
    })
    .await;
}
