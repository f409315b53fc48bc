//! The `group` scenario: consumer groups of `sluice-client` against an embedded broker.
//!
//! - **Settling.** A group of `members` consumers (tasks of this process) subscribes to a topic
//!   of `partitions`; once balanced, one more member joins and the time until every member owns
//!   its even share is measured; then a member is killed (its task aborted: no leave, its
//!   heartbeats just stop, as when a process dies) and the time until the others own every
//!   partition again is measured. The second is bounded below by the session timeout.
//! - **Consumption.** The topic is filled with `prefill_mib`; one consumer in a group of its own
//!   reads it all, then a group of `readers` reads it all: MB/s of each, same run.
//! - **Commits.** `committers` tasks commit offsets of `commit_partitions` partitions per request
//!   to one group (one coordinator shard) for `commit_seconds`: commits (partition offsets) per
//!   second and the request latency; each answer waits until the records are durable.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, OffsetReset, Producer, ProducerConfig,
    TopicPartition,
};

use crate::network::Broker;
use crate::storage::Latency;

const TOPIC: &str = "group-bench";
/// Longest wait for a group to settle or a read to finish before the run fails.
const WAIT_MAX: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupParams {
    pub mode: String,
    pub partitions: u32,
    pub members: u32,
    pub session_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub prefill_mib: u64,
    pub record_bytes: usize,
    pub readers: u32,
    pub committers: u32,
    pub commit_partitions: u32,
    pub commit_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupResult {
    /// From the joining member's `subscribe` to every member owning its even share.
    pub settle_after_join_ms: f64,
    /// From a member's death to the others owning every partition.
    pub settle_after_kill_ms: f64,
    /// One consumer reading the whole topic.
    pub solo_consume_mb_s: f64,
    /// `readers` consumers of one group reading the whole topic.
    pub group_consume_mb_s: f64,
    pub group_vs_solo: f64,
    /// Partition offsets committed per second (`commit_partitions` per request).
    pub commits_per_second: f64,
    pub commit_requests_per_second: f64,
    pub commit_latency: Latency,
}

/// What each member task reports: its partition count, or `None` once it is gone.
type Shares = Arc<Mutex<HashMap<u32, usize>>>;

struct Member {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

fn consumer_config(brokers: &str, params: &GroupParams) -> ConsumerConfig {
    ConsumerConfig::new(ClientConfig::new([brokers.to_string()]))
        .auto_offset_reset(OffsetReset::Earliest)
        .fetch_wait_max(Duration::from_millis(100))
        .group_session_timeout(Duration::from_millis(params.session_timeout_ms))
}

fn spawn_member(brokers: &str, params: &GroupParams, id: u32, shares: &Shares) -> Member {
    let stop = Arc::new(AtomicBool::new(false));
    let config = consumer_config(brokers, params);
    let shares = Arc::clone(shares);
    let flag = Arc::clone(&stop);
    let task = tokio::spawn(async move {
        let mut consumer = Consumer::new(config).expect("consumer");
        consumer.subscribe("settlers", [TOPIC]).expect("subscribe");
        while !flag.load(Ordering::Relaxed) {
            if let Err(error) = consumer.poll(Duration::from_millis(20)).await {
                eprintln!("member {id}: {error}");
            }
            shares
                .lock()
                .unwrap()
                .insert(id, consumer.assignment().len());
        }
        let _ = consumer.close().await;
        shares.lock().unwrap().remove(&id);
    });
    Member { stop, task }
}

/// Waits until the members in `shares` hold every partition in even shares.
async fn settled(shares: &Shares, members: usize, partitions: u32) -> Result<(), String> {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        {
            let shares = shares.lock().unwrap();
            let total: usize = shares.values().sum();
            let low = partitions as usize / members;
            let high = low + usize::from(partitions as usize % members != 0);
            if shares.len() == members
                && total == partitions as usize
                && shares.values().all(|n| (low..=high).contains(n))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the group did not settle: {shares:?}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Creates the topic, retrying while the fresh broker elects its controller.
async fn create_topic(brokers: &str, partitions: u32) -> Result<(), String> {
    let admin = Admin::new(ClientConfig::new([brokers.to_string()])).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.create_topic(TOPIC, partitions, 1).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(format!("create topic: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn prefill(brokers: &str, params: &GroupParams) -> Result<u64, String> {
    let producer = Producer::new(ProducerConfig::new(ClientConfig::new(
        [brokers.to_string()],
    )))
    .await
    .map_err(|e| e.to_string())?;
    let records = (params.prefill_mib << 20) / params.record_bytes as u64;
    let value = vec![7u8; params.record_bytes];
    crate::network::send_all(&producer, TOPIC, params.partitions, records, &value).await?;
    producer.close().await.map_err(|e| e.to_string())?;
    Ok(records)
}

/// `readers` members of group `group` read `records` records; returns MB/s from the moment
/// every reader owns partitions (the rate once the group has formed; joining is measured
/// above) to the last record.
async fn read_all(
    brokers: &str,
    params: &GroupParams,
    group: &str,
    readers: u32,
    records: u64,
) -> Result<f64, String> {
    let read = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let owning = Arc::new(AtomicU64::new(0));
    let formed: Arc<Mutex<Option<(Instant, u64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let config = consumer_config(brokers, params).fetch_bytes_max(32 << 20);
        let (read, bytes, group) = (Arc::clone(&read), Arc::clone(&bytes), group.to_string());
        let (owning, formed) = (Arc::clone(&owning), Arc::clone(&formed));
        tasks.push(tokio::spawn(async move {
            let mut counted = false;
            let mut consumer = Consumer::new(config).map_err(|e| e.to_string())?;
            consumer
                .subscribe(&group, [TOPIC])
                .map_err(|e| e.to_string())?;
            let deadline = Instant::now() + WAIT_MAX;
            while read.load(Ordering::Relaxed) < records {
                if Instant::now() > deadline {
                    return Err(format!(
                        "read {} of {records}",
                        read.load(Ordering::Relaxed)
                    ));
                }
                let polled = consumer
                    .poll(Duration::from_millis(50))
                    .await
                    .map_err(|e| e.to_string())?;
                let n: u64 = polled
                    .iter()
                    .map(|r| r.value.as_ref().map_or(0, |v| v.len() as u64))
                    .sum();
                if !counted && !consumer.assignment().is_empty() {
                    counted = true;
                    if owning.fetch_add(1, Ordering::SeqCst) + 1 == u64::from(readers) {
                        *formed.lock().unwrap() =
                            Some((Instant::now(), bytes.load(Ordering::SeqCst)));
                    }
                }
                read.fetch_add(polled.len() as u64, Ordering::Relaxed);
                bytes.fetch_add(n, Ordering::SeqCst);
            }
            let _ = consumer.close().await;
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let (start, before) = formed
        .lock()
        .unwrap()
        .ok_or("the group never formed before the topic was read")?;
    let seconds = start.elapsed().as_secs_f64();
    Ok((bytes.load(Ordering::SeqCst) - before) as f64 / 1e6 / seconds)
}

async fn commits(brokers: &str, params: &GroupParams) -> Result<(f64, f64, Latency), String> {
    // One connection to the coordinator with as many requests in flight as committers.
    let config = ClientConfig::new([brokers.to_string()]).in_flight_max(
        (params.committers as usize).min(sluice_client::limits::IN_FLIGHT_PER_CONNECTION_MAX),
    );
    let admin = Admin::new(config).map_err(|e| e.to_string())?;
    let offsets: Vec<(TopicPartition, u64)> = (0..params.commit_partitions)
        .map(|p| (TopicPartition::new(TOPIC, p % params.partitions), 0))
        .collect();
    // Warm-up: the coordinator loads and the connection is made.
    admin
        .reset_offsets("committers", &offsets)
        .await
        .map_err(|e| e.to_string())?;
    let requests = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new(3).expect("histogram")));
    let end = Instant::now() + Duration::from_secs_f64(params.commit_seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..params.committers {
        let (admin, requests, latency) =
            (admin.clone(), Arc::clone(&requests), Arc::clone(&latency));
        let mut offsets = offsets.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                for (_, o) in offsets.iter_mut() {
                    *o = n * 1000 + u64::from(c);
                }
                let sent = Instant::now();
                admin
                    .reset_offsets("committers", &offsets)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = latency
                    .lock()
                    .unwrap()
                    .record(sent.elapsed().as_micros() as u64);
                requests.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let requests = requests.load(Ordering::Relaxed) as f64;
    let latency = Latency::from_histogram(&latency.lock().unwrap());
    Ok((
        requests * f64::from(params.commit_partitions) / seconds,
        requests / seconds,
        latency,
    ))
}

pub fn run(params: &GroupParams, dir: &Path) -> Result<GroupResult, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let extra = vec![
        "--group-heartbeat-interval-ms".to_string(),
        params.heartbeat_interval_ms.to_string(),
    ];
    let broker = Broker::start(dir, &params.mode, &extra)?;
    let brokers = broker.listen.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = runtime.block_on(async {
        create_topic(&brokers, params.partitions).await?;
        let shares: Shares = Arc::default();
        let mut members: Vec<Member> = (0..params.members)
            .map(|id| spawn_member(&brokers, params, id, &shares))
            .collect();
        settled(&shares, members.len(), params.partitions).await?;
        eprintln!("group: {} members settled; one joins", members.len());
        let joined = Instant::now();
        members.push(spawn_member(&brokers, params, params.members, &shares));
        settled(&shares, members.len(), params.partitions).await?;
        let settle_after_join_ms = joined.elapsed().as_secs_f64() * 1e3;
        eprintln!("group: settled {settle_after_join_ms:.0} ms after a join; one dies");
        let victim = members.remove(0);
        victim.task.abort();
        let _ = victim.task.await;
        shares.lock().unwrap().remove(&0);
        let killed = Instant::now();
        settled(&shares, members.len(), params.partitions).await?;
        let settle_after_kill_ms = killed.elapsed().as_secs_f64() * 1e3;
        eprintln!("group: settled {settle_after_kill_ms:.0} ms after a death");
        for m in &members {
            m.stop.store(true, Ordering::Relaxed);
        }
        for m in members {
            let _ = m.task.await;
        }

        eprintln!("group: writing {} MiB", params.prefill_mib);
        let records = prefill(&brokers, params).await?;
        let solo_consume_mb_s = read_all(&brokers, params, "solo", 1, records).await?;
        eprintln!("group: one consumer read it at {solo_consume_mb_s:.0} MB/s");
        let group_consume_mb_s =
            read_all(&brokers, params, "readers", params.readers, records).await?;
        eprintln!(
            "group: {} consumers of one group read it at {group_consume_mb_s:.0} MB/s",
            params.readers
        );
        let (commits_per_second, commit_requests_per_second, commit_latency) =
            commits(&brokers, params).await?;
        Ok::<GroupResult, String>(GroupResult {
            settle_after_join_ms,
            settle_after_kill_ms,
            solo_consume_mb_s,
            group_consume_mb_s,
            group_vs_solo: group_consume_mb_s / solo_consume_mb_s,
            commits_per_second,
            commit_requests_per_second,
            commit_latency,
        })
    });
    drop(broker);
    let _ = std::fs::remove_dir_all(dir);
    result
}
