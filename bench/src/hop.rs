//! The `hop` scenario: what forwarding a request to another shard would cost.
//!
//! Two executors, set up exactly like broker shards and pinned to different cores, pass a
//! produce-sized batch over glommio's bounded shared channels and get a small reply back, one
//! round trip at a time: the cross-shard hop a broker pays when a request reaches a shard that
//! does not own its partition. Sluice's clients connect to the owning shard instead (see
//! `ARCHITECTURE.md`); this measures what that avoids.

use std::time::Instant;

use glommio::channels::shared_channel;
use glommio::Placement;
use serde::Serialize;

use crate::storage::{new_histogram, Latency};

#[derive(Debug, Clone, Default, Serialize)]
pub struct HopParams {
    pub round_trips: u64,
    pub batch_bytes: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HopResult {
    pub round_trip: Latency,
    pub round_trips_per_second: f64,
}

pub fn run(params: &HopParams) -> Result<HopResult, String> {
    let (to_owner, owner_inbox) = shared_channel::new_bounded::<Vec<u8>>(64);
    let (to_caller, caller_inbox) = shared_channel::new_bounded::<u64>(64);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rounds = params.round_trips;
    let owner = sluice_broker::shard::spawn_executor(
        sluice_broker::shard::executor_builder(Placement::Fixed(1 % cpus)),
        "hop-owner",
        move || async move {
            let inbox = owner_inbox.connect().await;
            let reply = to_caller.connect().await;
            let mut received = 0u64;
            while let Some(batch) = inbox.recv().await {
                received += batch.len() as u64;
                if reply.send(batch.len() as u64).await.is_err() {
                    break;
                }
            }
            received
        },
    )
    .map_err(|e| e.to_string())?;
    let batch_bytes = params.batch_bytes;
    let caller = sluice_broker::shard::spawn_executor(
        sluice_broker::shard::executor_builder(Placement::Fixed(0)),
        "hop-caller",
        move || async move {
            let send = to_owner.connect().await;
            let replies = caller_inbox.connect().await;
            let batch = vec![7u8; batch_bytes];
            let mut histogram = new_histogram()?;
            let started = Instant::now();
            for _ in 0..rounds {
                let t0 = Instant::now();
                // Forwarding moves the request's bytes to the other core: a copy, as a real
                // forward of a batch read off this shard's socket buffer would need.
                send.send(batch.clone())
                    .await
                    .map_err(|_| "owner gone".to_string())?;
                replies.recv().await.ok_or("owner gone")?;
                let _ = histogram.record((t0.elapsed().as_nanos() as u64 / 1000).max(1));
            }
            Ok::<_, String>((histogram, started.elapsed().as_secs_f64()))
        },
    )
    .map_err(|e| e.to_string())?;
    let (histogram, seconds) = caller.join()??;
    owner.join()?;
    Ok(HopResult {
        round_trip: Latency::from_histogram(&histogram),
        round_trips_per_second: rounds as f64 / seconds.max(1e-9),
    })
}
