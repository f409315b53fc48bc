//! The `partitions` scenario: what a broker's partition count costs it.
//!
//! 1. **Produce over many partitions.** One embedded broker; for each count in
//!    `--produce-partitions` (default 4, 1,000, 10,000) a topic of that many partitions is
//!    created and the same bytes (`--mib`) are produced to it through `sluice-client`, keyed
//!    (`--keys` distinct keys, so the partitioner spreads them over every partition), acks =
//!    leader. The figure is MB/s from the first send to the last acknowledgement, and the
//!    ratio of each count's MB/s to the first count's (targets: ≥ 0.7 for 1,000 and ≥ 0.5 for
//!    10,000 against 4).
//! 2. **Idle RSS.** For each count in `--idle-partitions` (default 10, 1,000, 10,000) a fresh
//!    broker creates a topic of that many partitions, writes one small record to each (so every
//!    log has its segment, index and producer state), waits until it is quiet and reads its
//!    RSS (target: RSS at 10,000 ≤ 2 × RSS at 10), then its CPU time over the next
//!    `IDLE_CPU_WINDOW` (an idle broker's periodic work should not grow with its partitions).
//! 3. **Start-up.** The last idle broker (10,000 partitions) is stopped with SIGTERM and started
//!    again: the time until every partition answers (its shard has opened its log; a clean
//!    stop's marker spares the active segments' scan); then it is killed with SIGKILL and
//!    started again (every active segment scanned).
//!
//! The 1-minute load average is recorded with each figure: the machine is shared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_client::{
    Acks, Admin, ClientConfig, Delivery, Producer, ProducerConfig, ProducerRecord, Seek,
    TopicPartition,
};

use crate::network::{process_cpu_seconds, Broker};
use crate::replication::load_avg_1m;

#[derive(Debug, Clone, Serialize)]
pub struct PartitionsParams {
    pub mode: String,
    pub produce_partitions: Vec<u32>,
    pub mib: u64,
    pub record_bytes: usize,
    pub keys: u64,
    pub idle_partitions: Vec<u32>,
    /// The brokers' default flush policy.
    pub flush: String,
    /// The producer's linger (the client's default is 5 ms).
    pub linger_ms: u64,
    /// The producer's buffer (the client's default is 64 MiB).
    pub buffer_mib: u64,
    /// The brokers' group-commit window (`--flush-interval-ms`; the broker's default is 5).
    pub flush_interval_ms: u64,
    /// The producer's requests in flight per connection (the client's default is 16).
    pub in_flight: usize,
}

impl Default for PartitionsParams {
    fn default() -> Self {
        PartitionsParams {
            mode: "throughput".into(),
            produce_partitions: vec![4, 1_000, 10_000],
            mib: 256,
            record_bytes: 1024,
            keys: 100_000,
            idle_partitions: vec![10, 1_000, 10_000],
            flush: "interval".into(),
            linger_ms: 5,
            buffer_mib: 64,
            flush_interval_ms: 5,
            in_flight: 16,
        }
    }
}

/// One produce run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProduceRun {
    pub partitions: u32,
    pub bytes: u64,
    pub mb_s: f64,
    /// MB/s over the first run's MB/s.
    pub ratio_to_first: f64,
    pub load_avg_1m: f64,
    /// Records per batch the broker appended (from its counters).
    pub records_per_batch: f64,
    /// Flushes made durable per sync round the shards ran: how many logs one sync served.
    pub flushes_per_sync_round: f64,
    /// The broker's flushes (each one direct write) per second of the run, to hold against
    /// the probe's `disk_small_writes_per_s`.
    pub flushes_per_s: f64,
    /// CPU seconds the producer's process (this one: the client and its record loop) spent per
    /// GB produced.
    pub client_cpu_s_per_gb: f64,
    /// CPU seconds the broker's process spent per GB produced.
    pub broker_cpu_s_per_gb: f64,
}

/// The broker's counters a produce run moves.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    appends: f64,
    flushes: f64,
    syncs: f64,
    rounds: f64,
}

fn counters(broker: &Broker) -> Result<Counters, String> {
    let (_, body) = crate::scrape::scrape(&broker.metrics)?;
    let sum = |name| sluice_broker::metrics::exposition::counter_sum(&body, name);
    Ok(Counters {
        appends: sum("sluice_log_appends_total"),
        flushes: sum("sluice_log_flushes_total"),
        syncs: sum("sluice_log_fdatasyncs_total"),
        rounds: sum("sluice_log_sync_rounds_total"),
    })
}

/// One idle broker's memory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleRss {
    pub partitions: u32,
    pub rss_mb: f64,
    /// RSS over the first idle broker's RSS.
    pub ratio_to_first: f64,
    /// The idle broker's CPU time (user + system) over `IDLE_CPU_WINDOW`, as a percentage of
    /// one core.
    pub cpu_percent: f64,
    pub load_avg_1m: f64,
}

/// The small-write probe: 8 KiB writes (a flush of a few 1 KiB records and its carried block),
/// 32 threads (queue depth 32), 1,000 files, 3 s.
const SMALL_WRITE_BYTES: usize = 8 << 10;
const SMALL_WRITE_THREADS: usize = 32;
const SMALL_WRITE_FILES: usize = 1_000;
const SMALL_WRITE_PROBE: Duration = Duration::from_secs(3);

/// How long an idle broker's CPU time is measured.
const IDLE_CPU_WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionsResult {
    /// The device's ceiling for small writes: `SMALL_WRITE_BYTES` `O_DIRECT` writes per second
    /// from `SMALL_WRITE_THREADS` threads over `SMALL_WRITE_FILES` files, no sync
    /// (`probe::small_writes_per_second`), measured before the produce runs.
    pub disk_small_writes_per_s: f64,
    pub produce: Vec<ProduceRun>,
    pub idle: Vec<IdleRss>,
    /// Partitions of the broker restarted.
    pub startup_partitions: u32,
    /// SIGTERM to exit.
    pub clean_stop_s: f64,
    /// Start to every partition answering, after a clean stop.
    pub startup_after_clean_stop_s: f64,
    pub startup_after_clean_stop_load_avg_1m: f64,
    /// The same after SIGKILL.
    pub startup_after_kill_s: f64,
    pub startup_after_kill_load_avg_1m: f64,
}

/// Starts the stopped broker again; the seconds until every partition of `idle` answers.
fn time_restart(
    runtime: &tokio::runtime::Runtime,
    broker: &mut Broker,
    partitions: u32,
) -> Result<f64, String> {
    let starting = Instant::now();
    broker.restart()?;
    runtime.block_on(wait_served(
        broker,
        "idle",
        partitions,
        Duration::from_secs(600),
    ))?;
    Ok(starting.elapsed().as_secs_f64())
}

fn flush_args(params: &PartitionsParams) -> Vec<String> {
    vec![
        "--flush".into(),
        params.flush.clone(),
        "--flush-interval-ms".into(),
        params.flush_interval_ms.to_string(),
    ]
}

fn client(broker: &Broker) -> ClientConfig {
    ClientConfig::new([broker.listen.clone()]).request_timeout(Duration::from_secs(120))
}

/// Creates `topic` (retrying while the broker starts) and waits until every partition answers.
async fn create_served(broker: &Broker, topic: &str, partitions: u32) -> Result<(), String> {
    let admin = Admin::new(client(broker)).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match admin.create_topic(topic, partitions, 1).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("create topic {topic}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("create topic {topic}: {e}")),
        }
    }
    wait_served(broker, topic, partitions, Duration::from_secs(600)).await
}

/// Waits until every partition of `topic` answers an offset request (its log is open), asking
/// from 32 tasks at once.
async fn wait_served(
    broker: &Broker,
    topic: &str,
    partitions: u32,
    timeout: Duration,
) -> Result<(), String> {
    let admin = Arc::new(Admin::new(client(broker)).map_err(|e| e.to_string())?);
    let deadline = Instant::now() + timeout;
    let tasks: Vec<_> = (0..32u32)
        .map(|task| {
            let admin = Arc::clone(&admin);
            let topic = topic.to_string();
            tokio::spawn(async move {
                let mut p = task;
                while p < partitions {
                    let tp = TopicPartition::new(topic.as_str(), p);
                    if let Err(e) = admin.offset(&tp, Seek::Latest).await {
                        if Instant::now() > deadline {
                            return Err(format!("{topic}/{p} not served: {e}"));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    p += 32;
                }
                Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Produces `bytes` of keyed records to `topic`; returns MB/s from first send to last ack.
async fn produce(
    broker: &Broker,
    topic: &str,
    params: &PartitionsParams,
    bytes: u64,
) -> Result<f64, String> {
    let producer = Producer::new(
        ProducerConfig::new(client(broker).in_flight_max(params.in_flight))
            .acks(Acks::Leader)
            .linger(Duration::from_millis(params.linger_ms))
            .buffer_bytes_max((params.buffer_mib << 20) as usize),
    )
    .await
    .map_err(|e| e.to_string())?;
    let value = bytes::Bytes::from(vec![b'v'; params.record_bytes]);
    let records = bytes / params.record_bytes as u64;
    // Deliveries awaited in order: room for every record the buffer can hold, so the channel is
    // never what holds the producer back.
    let pending = ((params.buffer_mib << 20) / params.record_bytes as u64).max(65_536);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Delivery>(pending as usize);
    let collector = tokio::spawn(async move {
        let mut failed = None;
        while let Some(delivery) = rx.recv().await {
            if let Err(e) = delivery.await {
                failed.get_or_insert(e.to_string());
            }
        }
        failed
    });
    let mut keys = crate::rng::SplitMix64::new(params.keys, 0);
    let started = Instant::now();
    for _ in 0..records {
        let key = format!("key-{}", keys.next_u64() % params.keys);
        let record = ProducerRecord::new(topic).key(key).value(value.clone());
        let delivery = producer.send(record).await.map_err(|e| e.to_string())?;
        tx.send(delivery).await.map_err(|e| e.to_string())?;
    }
    producer.flush().await.map_err(|e| e.to_string())?;
    drop(tx);
    if let Some(failed) = collector.await.map_err(|e| e.to_string())? {
        return Err(format!("a record to {topic} failed: {failed}"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    producer.close().await.map_err(|e| e.to_string())?;
    Ok(records as f64 * params.record_bytes as f64 / 1e6 / elapsed)
}

/// One small record in every partition of `topic`.
async fn touch_every_partition(
    broker: &Broker,
    topic: &str,
    partitions: u32,
) -> Result<(), String> {
    let producer = Producer::new(ProducerConfig::new(client(broker)).acks(Acks::Leader))
        .await
        .map_err(|e| e.to_string())?;
    let mut deliveries = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let record = ProducerRecord::new(topic).partition(p).value("x");
        deliveries.push(producer.send(record).await.map_err(|e| e.to_string())?);
    }
    for d in deliveries {
        d.await.map_err(|e| e.to_string())?;
    }
    producer.close().await.map_err(|e| e.to_string())
}

pub fn run(params: &PartitionsParams, dir: &std::path::Path) -> Result<PartitionsResult, String> {
    let runtime = crate::replication::runtime()?;
    let mut result = PartitionsResult::default();
    let bytes = params.mib << 20;

    // 0. The device's small-write ceiling, in the directory the brokers will use.
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    result.disk_small_writes_per_s = crate::probe::small_writes_per_second(
        dir,
        SMALL_WRITE_FILES,
        SMALL_WRITE_THREADS,
        SMALL_WRITE_BYTES,
        SMALL_WRITE_PROBE,
    )
    .map_err(|e| format!("small-write probe in {}: {e}", dir.display()))?;
    eprintln!(
        "probe: {:.0} direct {} KiB writes/s ({SMALL_WRITE_THREADS} threads, {SMALL_WRITE_FILES} files)",
        result.disk_small_writes_per_s,
        SMALL_WRITE_BYTES >> 10
    );

    // 1. Produce over growing partition counts, one broker.
    {
        let broker = Broker::start(dir, &params.mode, &flush_args(params))?;
        for &partitions in &params.produce_partitions {
            let topic = format!("produce-{partitions}");
            let (mb_s, before, after, (client_cpu, broker_cpu)) = runtime.block_on(async {
                create_served(&broker, &topic, partitions).await?;
                let before = counters(&broker)?;
                let cpu_before = (process_cpu_seconds(), broker.usage().0);
                let mb_s = produce(&broker, &topic, params, bytes).await?;
                let cpu = (
                    process_cpu_seconds() - cpu_before.0,
                    broker.usage().0 - cpu_before.1,
                );
                Ok::<_, String>((mb_s, before, counters(&broker)?, cpu))
            })?;
            let gb = bytes as f64 / 1e9;
            let first = result.produce.first().map_or(mb_s, |r| r.mb_s);
            let records = (bytes / params.record_bytes as u64) as f64;
            let run = ProduceRun {
                partitions,
                bytes,
                mb_s,
                ratio_to_first: mb_s / first,
                load_avg_1m: load_avg_1m(),
                records_per_batch: records / (after.appends - before.appends).max(1.0),
                flushes_per_sync_round: (after.syncs - before.syncs)
                    / (after.rounds - before.rounds).max(1.0),
                flushes_per_s: (after.flushes - before.flushes) * mb_s / (bytes as f64 / 1e6),
                client_cpu_s_per_gb: client_cpu / gb,
                broker_cpu_s_per_gb: broker_cpu / gb,
            };
            eprintln!(
                "produce over {partitions} partitions: {mb_s:.1} MB/s ({:.2} of the first), {:.1} records a batch, {:.1} flushes a sync, {:.0} flushes/s, CPU s/GB client {:.2} broker {:.2}, load {:.1}",
                run.ratio_to_first, run.records_per_batch, run.flushes_per_sync_round, run.flushes_per_s, run.client_cpu_s_per_gb, run.broker_cpu_s_per_gb, run.load_avg_1m
            );
            result.produce.push(run);
        }
    }

    // 2. Idle RSS, a fresh broker per count; 3. the last one restarts.
    let mut last: Option<(Broker, u32)> = None;
    for &partitions in &params.idle_partitions {
        drop(last.take());
        let broker = Broker::start(dir, &params.mode, &flush_args(params))?;
        runtime.block_on(async {
            create_served(&broker, "idle", partitions).await?;
            touch_every_partition(&broker, "idle", partitions).await
        })?;
        // Quiet: flushes done, write buffers returned.
        std::thread::sleep(Duration::from_secs(3));
        let (cpu_before, rss_mb) = broker.usage();
        std::thread::sleep(IDLE_CPU_WINDOW);
        let (cpu_after, _) = broker.usage();
        let first = result.idle.first().map_or(rss_mb, |r| r.rss_mb);
        let idle = IdleRss {
            partitions,
            rss_mb,
            ratio_to_first: rss_mb / first,
            cpu_percent: (cpu_after - cpu_before) / IDLE_CPU_WINDOW.as_secs_f64() * 100.0,
            load_avg_1m: load_avg_1m(),
        };
        eprintln!(
            "idle with {partitions} partitions: RSS {rss_mb:.1} MB ({:.2} of the first), CPU {:.1} % of a core, load {:.1}",
            idle.ratio_to_first, idle.cpu_percent, idle.load_avg_1m
        );
        result.idle.push(idle);
        last = Some((broker, partitions));
    }
    if let Some((mut broker, partitions)) = last {
        result.startup_partitions = partitions;
        let stopping = Instant::now();
        broker.stop()?;
        result.clean_stop_s = stopping.elapsed().as_secs_f64();
        result.startup_after_clean_stop_s = time_restart(&runtime, &mut broker, partitions)?;
        result.startup_after_clean_stop_load_avg_1m = load_avg_1m();
        eprintln!(
            "start-up of {partitions} partitions after a clean stop ({:.1} s): {:.1} s, load {:.1}",
            result.clean_stop_s,
            result.startup_after_clean_stop_s,
            result.startup_after_clean_stop_load_avg_1m
        );
        broker.kill();
        result.startup_after_kill_s = time_restart(&runtime, &mut broker, partitions)?;
        result.startup_after_kill_load_avg_1m = load_avg_1m();
        eprintln!(
            "start-up of {partitions} partitions after SIGKILL: {:.1} s, load {:.1}",
            result.startup_after_kill_s, result.startup_after_kill_load_avg_1m
        );
    }
    Ok(result)
}
