//! The client scenarios (`e2e`, `consume`): producers and consumers built on `sluice-client`, as
//! applications use it, against an embedded broker process or a cluster given with `--brokers`.
//!
//! Every record's value starts with a 20-byte stamp: its intended send time (ns since the run's
//! epoch), its producer and its sequence number within that producer. The rest is payload from
//! `--seed`. Producers send at full speed or at a fixed total `--rate` (a thread per paced
//! producer sleeps to each record's intended time; latency counts from that time, so a stall
//! cannot hide). Each delivery's ack latency is recorded when it resolves; consumers record
//! produce-to-consume latency from the stamp, count what they receive and check that each
//! producer's sequence rises within a partition (a repeat is a duplicate).
//!
//! `consume` first fills the topic at full speed (not measured), then its consumers read
//! everything from the start, mostly from disk; with `--from tail` it measures consumers that
//! keep up with running producers instead.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_client::{
    Acks, Admin, ClientConfig, Compression, Consumer, ConsumerConfig, Delivery, ErrorCode,
    OffsetReset, Producer, ProducerConfig, ProducerRecord, TopicPartition,
};

use crate::network::{process_cpu_seconds, Broker};
use crate::pace::{latency_micros, Pacer};
use crate::progress::{Goal, Meter, Monitor, MonitorConfig, Sample};
use crate::rng::SplitMix64;
use crate::storage::Latency;

/// Bytes of the stamp at the front of every value.
pub const STAMP_BYTES: usize = 20;
/// Longest wait for consumers to receive every acknowledged record after producing stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a consumer's poll waits before it checks whether to stop.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// The time series' interval.
const SERIES_INTERVAL: Duration = Duration::from_secs(1);
/// Broker RSS sampling period.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Deliveries a producer may have waiting for its ack collector (beyond it the producer waits:
/// the collector only lags when the runtime is starved).
const DELIVERIES_QUEUED_MAX: usize = 1 << 16;
/// Topic used by the scenarios (created fresh in an embedded broker).
const TOPIC: &str = "bench";

#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientParams {
    /// The embedded broker's `--mode`; null against `--brokers`.
    pub mode: Option<String>,
    /// `--brokers` when given; null for the embedded broker.
    pub brokers: Option<String>,
    /// `--cluster`: brokers of the embedded cluster (the topic's replication factor); null for
    /// one embedded broker or `--brokers`.
    pub cluster: Option<u32>,
    pub partitions: u32,
    pub producers: u32,
    pub consumers: u32,
    pub record_bytes: usize,
    pub rate: Option<u64>,
    pub duration_s: Option<f64>,
    pub messages: Option<u64>,
    pub warmup_s: f64,
    pub acks: String,
    pub linger_ms: f64,
    pub batch_bytes: usize,
    pub compression: String,
    /// The embedded broker's segment size (`--segment-mib`); null for its default.
    pub segment_mib: Option<u64>,
    pub seed: u64,
    /// `consume` only: MiB written before reading from the start; null for `e2e` and tail reads.
    pub prefill_mib: Option<u64>,
}

impl ClientParams {
    pub fn goal(&self) -> Goal {
        match (self.messages, self.duration_s) {
            (Some(n), _) => Goal::Messages(n),
            (None, Some(s)) => Goal::Seconds(s),
            (None, None) => Goal::Seconds(0.0),
        }
    }

    fn client(&self, brokers: &str) -> ClientConfig {
        ClientConfig::new(brokers.split(',').map(str::trim))
    }

    fn producer_config(&self, brokers: &str) -> Result<ProducerConfig, String> {
        let acks = match self.acks.as_str() {
            "none" => Acks::None,
            "leader" => Acks::Leader,
            "all" => Acks::All,
            other => return Err(format!("unknown acks {other}")),
        };
        let compression = match self.compression.as_str() {
            "none" => Compression::None,
            "lz4" => Compression::Lz4,
            "zstd" => Compression::Zstd { level: 3 },
            other => return Err(format!("unknown compression {other}")),
        };
        Ok(ProducerConfig::new(self.client(brokers))
            .acks(acks)
            .linger(Duration::from_secs_f64(self.linger_ms / 1000.0))
            .batch_bytes_max(self.batch_bytes)
            .compression(compression))
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientResult {
    /// Records whose send was measured (intended time in the measured phase) and acknowledged.
    pub records_acked: u64,
    /// Their values' bytes.
    pub bytes_acked: u64,
    pub produce_mb_s: f64,
    pub produce_records_s: f64,
    pub produce_to_ack: Latency,
    /// Records the consumers received in the measured phase (for `consume` from the start: all).
    pub records_consumed: u64,
    pub bytes_consumed: u64,
    pub consume_mb_s: f64,
    pub consume_records_s: f64,
    /// Null when no consumer ran or (`consume` from the start) latency is not meaningful.
    pub produce_to_consume: Option<Latency>,
    /// Paced runs: how late each measured send started after its intended time (the harness's
    /// own delay, part of both latencies above). Null at full speed.
    pub send_lateness: Option<Latency>,
    /// The brokers' own view of the measured phase (every shard, from DescribeLatency): each
    /// produce request from its frame's first byte read to its response's last byte written,
    /// and each flush's device time. Null when the brokers could not say.
    pub broker_produce: Option<Latency>,
    pub broker_flush_device: Option<Latency>,
    /// Every record sent (warm-up included) and acknowledged, and how many of them the consumers
    /// received, at least once and more than once.
    pub total_acked: u64,
    pub total_consumed: u64,
    pub duplicates: u64,
    /// Null against `--brokers` (the broker's process is not ours to measure).
    pub broker_cpu_s: Option<f64>,
    /// The benchmark process: the client library's producers and consumers.
    pub bench_cpu_s: f64,
    /// `bench_cpu_s` per GB produced and consumed (10⁹ bytes of values).
    pub client_cpu_s_per_gb: Option<f64>,
    pub broker_rss_start_mb: Option<f64>,
    pub broker_rss_peak_mb: Option<f64>,
    pub broker_rss_end_mb: Option<f64>,
    pub measured_s: f64,
    pub time_series_mb_s: Vec<f64>,
    pub time_series_interval_s: f64,
}

/// A finished run: the figures and the histogram for the percentile curve.
#[derive(Debug)]
pub struct ClientRun {
    pub result: ClientResult,
    /// Produce-to-consume when consumers measured it, else produce-to-ack.
    pub curve: Histogram<u64>,
}

/// What the scenario's tasks share.
struct Shared {
    epoch: Instant,
    measure_from: Instant,
    stop_producing: AtomicBool,
    stop_consuming: AtomicBool,
    /// Records left in a `--messages` budget.
    budget: Option<AtomicU64>,
    acked: Meter,
    consumed: Meter,
    total_acked: AtomicU64,
    total_consumed: AtomicU64,
    duplicates: AtomicU64,
    acks: Mutex<Histogram<u64>>,
    e2e: Mutex<Histogram<u64>>,
    lateness: Mutex<Histogram<u64>>,
    record_bytes: usize,
}

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

impl Shared {
    fn new(
        epoch: Instant,
        measure_from: Instant,
        budget: Option<AtomicU64>,
        record_bytes: usize,
    ) -> Result<Shared, String> {
        Ok(Shared {
            epoch,
            measure_from,
            stop_producing: AtomicBool::new(false),
            stop_consuming: AtomicBool::new(false),
            budget,
            acked: Meter::default(),
            consumed: Meter::default(),
            total_acked: AtomicU64::new(0),
            total_consumed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            acks: Mutex::new(histogram()?),
            e2e: Mutex::new(histogram()?),
            lateness: Mutex::new(histogram()?),
            record_bytes,
        })
    }

    fn take_budget(&self) -> bool {
        match &self.budget {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }

    fn stamp(&self, value: &mut [u8], intended: Instant, producer: u32, sequence: u64) {
        let nanos = intended.saturating_duration_since(self.epoch).as_nanos() as u64;
        value[0..8].copy_from_slice(&nanos.to_le_bytes());
        value[8..12].copy_from_slice(&producer.to_le_bytes());
        value[12..20].copy_from_slice(&sequence.to_le_bytes());
    }

    fn unstamp(&self, value: &[u8]) -> Option<(Instant, u32, u64)> {
        let nanos = u64::from_le_bytes(value.get(0..8)?.try_into().ok()?);
        let producer = u32::from_le_bytes(value.get(8..12)?.try_into().ok()?);
        let sequence = u64::from_le_bytes(value.get(12..20)?.try_into().ok()?);
        Some((self.epoch + Duration::from_nanos(nanos), producer, sequence))
    }

    /// Counts one acknowledged record into `local` (merged into the shared histogram at the end,
    /// so the hot path takes no lock).
    fn record_ack(&self, local: &mut Histogram<u64>, intended: Instant, done: Instant) {
        self.total_acked.fetch_add(1, Ordering::Relaxed);
        if intended >= self.measure_from {
            self.acked.add(1, self.record_bytes as u64);
            local.saturating_record(latency_micros(intended, done));
        }
    }

    fn merge(&self, into: &Mutex<Histogram<u64>>, local: &Histogram<u64>) -> Result<(), String> {
        into.lock()
            .map_err(|e| e.to_string())?
            .add(local)
            .map_err(|e| e.to_string())
    }
}

/// The payload every producer's values are cut from (after the stamp).
fn payload(seed: u64, bytes: usize) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed, 0);
    let mut out = vec![0u8; bytes];
    rng.fill(&mut out);
    out
}

/// The brokers the scenario talks to: embedded (child processes: one broker or a cluster) or
/// external.
struct Target {
    embedded: Vec<Broker>,
    brokers: String,
    replication_factor: u32,
}

impl Target {
    fn start(params: &ClientParams, dir: &Path) -> Result<Target, String> {
        if let Some(brokers) = &params.brokers {
            return Ok(Target {
                embedded: Vec::new(),
                brokers: brokers.clone(),
                replication_factor: 1,
            });
        }
        let mode = params.mode.as_deref().unwrap_or("throughput");
        let mut extra: Vec<String> = params
            .segment_mib
            .map(|mib| vec!["--segment-bytes".into(), (mib << 20).to_string()])
            .unwrap_or_default();
        let embedded = match params.cluster {
            None => vec![Broker::start(dir, mode, &extra)?],
            Some(size) => {
                let metadata: Vec<String> = (0..size)
                    .map(|_| crate::network::free_address())
                    .collect::<Result<_, _>>()?;
                let peers = metadata
                    .iter()
                    .enumerate()
                    .map(|(i, a)| format!("{}={a}", i + 1))
                    .collect::<Vec<_>>()
                    .join(",");
                extra.extend(["--peers".to_string(), peers]);
                (0..size as usize)
                    .map(|i| {
                        Broker::start_member(
                            &dir.join(format!("broker-{}", i + 1)),
                            mode,
                            i as u64 + 1,
                            &metadata[i],
                            &extra,
                        )
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        let brokers = embedded
            .iter()
            .map(|b| b.listen.clone())
            .collect::<Vec<_>>()
            .join(",");
        Ok(Target {
            embedded,
            brokers,
            replication_factor: params.cluster.unwrap_or(1),
        })
    }

    /// (CPU seconds, RSS in MB) of the embedded brokers, summed.
    fn usage(&self) -> Option<(f64, f64)> {
        (!self.embedded.is_empty()).then(|| {
            self.embedded
                .iter()
                .map(Broker::usage)
                .fold((0.0, 0.0), |(c, r), (bc, br)| (c + bc, r + br))
        })
    }
}

/// The brokers' own latency distributions (every shard of every broker, from DescribeLatency),
/// cumulative since they started; [`BrokerLatency::since`] makes one interval of two readings.
struct BrokerLatency {
    produce: Histogram<u64>,
    flush_device: Histogram<u64>,
}

impl BrokerLatency {
    async fn read(brokers: &str) -> Result<BrokerLatency, String> {
        let admin = Admin::new(ClientConfig::new(brokers.split(',').map(str::trim)))
            .map_err(|e| e.to_string())?;
        let cluster = admin
            .describe_cluster(Some(&[]))
            .await
            .map_err(|e| e.to_string())?;
        let mut out = BrokerLatency {
            produce: histogram()?,
            flush_device: histogram()?,
        };
        for address in cluster.brokers.iter().flat_map(|b| &b.shard_addresses) {
            let shard = admin
                .describe_latency(address)
                .await
                .map_err(|e| format!("{address}: {e}"))?;
            for (into, buckets) in [
                (&mut out.produce, &shard.produce),
                (&mut out.flush_device, &shard.flush_device),
            ] {
                for b in buckets {
                    into.record_n(b.value_us.max(1), b.count)
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(out)
    }

    /// What was recorded after `earlier` (a reading of the same brokers).
    fn since(mut self, earlier: &BrokerLatency) -> Result<BrokerLatency, String> {
        self.produce
            .subtract(&earlier.produce)
            .map_err(|e| format!("produce latencies went back: {e:?}"))?;
        self.flush_device
            .subtract(&earlier.flush_device)
            .map_err(|e| format!("flush latencies went back: {e:?}"))?;
        Ok(self)
    }
}

/// Creates the topic (retrying while a fresh broker elects its controller); an existing topic of
/// another partition count is an error.
async fn prepare_topic(
    brokers: &str,
    partitions: u32,
    replication_factor: u32,
) -> Result<(), String> {
    let admin = Admin::new(ClientConfig::new(brokers.split(',').map(str::trim)))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin
            .create_topic(TOPIC, partitions, replication_factor)
            .await
        {
            Ok(()) => return Ok(()),
            Err(sluice_client::Error::Broker {
                code: ErrorCode::TopicExists,
                ..
            }) => {
                let existing = admin
                    .partition_count(TOPIC)
                    .await
                    .map_err(|e| e.to_string())?;
                if existing != partitions {
                    return Err(format!(
                        "topic {TOPIC} exists with {existing} partitions, not {partitions}"
                    ));
                }
                return Ok(());
            }
            Err(e) if Instant::now() < deadline => {
                tracing_free_wait(&e).await;
            }
            Err(e) => return Err(format!("create topic {TOPIC}: {e}")),
        }
    }
}

async fn tracing_free_wait(_error: &sluice_client::Error) {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One full-speed producer: sends until told to stop; a task per producer awaits deliveries in
/// order and records their latency.
async fn full_speed_producer(
    shared: Arc<Shared>,
    producer: Producer,
    id: u32,
    payload: Arc<Vec<u8>>,
) -> Result<(), String> {
    let (tx, rx) = tokio::sync::mpsc::channel(DELIVERIES_QUEUED_MAX);
    let acks = tokio::spawn(collect_acks(Arc::clone(&shared), rx));
    let mut sequence = 0u64;
    while !shared.stop_producing.load(Ordering::Relaxed) && shared.take_budget() {
        let now = Instant::now();
        let record =
            ProducerRecord::new(TOPIC).value(make_value(&shared, &payload, now, id, sequence));
        let delivery = producer.send(record).await.map_err(|e| e.to_string())?;
        if tx.send((delivery, now)).await.is_err() {
            break; // The collector failed; its error is returned below.
        }
        sequence += 1;
    }
    drop(tx);
    acks.await.map_err(|e| e.to_string())?
}

fn make_value(shared: &Shared, payload: &[u8], intended: Instant, id: u32, sequence: u64) -> Bytes {
    let mut value = Vec::with_capacity(shared.record_bytes);
    value.extend_from_slice(&[0u8; STAMP_BYTES]);
    value.extend_from_slice(&payload[..shared.record_bytes - STAMP_BYTES]);
    shared.stamp(&mut value, intended, id, sequence);
    Bytes::from(value)
}

async fn collect_acks(
    shared: Arc<Shared>,
    mut deliveries: tokio::sync::mpsc::Receiver<(Delivery, Instant)>,
) -> Result<(), String> {
    let mut local = histogram()?;
    while let Some((delivery, intended)) = deliveries.recv().await {
        delivery
            .await
            .map_err(|e| format!("delivery failed: {e}"))?;
        shared.record_ack(&mut local, intended, Instant::now());
    }
    shared.merge(&shared.acks, &local)
}

/// One paced producer on a thread of its own (thread sleeps are finer than tokio's 1 ms timer).
fn paced_producer(
    shared: Arc<Shared>,
    producer: Producer,
    runtime: tokio::runtime::Handle,
    id: u32,
    pacer: Pacer,
    payload: Arc<Vec<u8>>,
) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        // Sleep as exactly as the kernel can: the default 50 µs timer slack would be counted
        // into every latency (they run from the intended send time).
        // SAFETY: sets this thread's own timer slack; no pointers involved.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
        let (tx, rx) = tokio::sync::mpsc::channel(DELIVERIES_QUEUED_MAX);
        let acks = runtime.spawn(collect_acks(Arc::clone(&shared), rx));
        let mut lateness = histogram()?;
        let mut sequence = 0u64;
        while !shared.stop_producing.load(Ordering::Relaxed) && shared.take_budget() {
            if let Some(wait) = pacer.wait(sequence, Instant::now()) {
                std::thread::sleep(wait);
            }
            let intended = pacer.intended(sequence);
            if intended >= shared.measure_from {
                lateness.saturating_record(latency_micros(intended, Instant::now()));
            }
            let record = ProducerRecord::new(TOPIC)
                .value(make_value(&shared, &payload, intended, id, sequence));
            let delivery = runtime
                .block_on(producer.send(record))
                .map_err(|e| e.to_string())?;
            if tx.blocking_send((delivery, intended)).is_err() {
                break;
            }
            sequence += 1;
        }
        drop(tx);
        shared.merge(&shared.lateness, &lateness)?;
        runtime.block_on(acks).map_err(|e| e.to_string())?
    })
}

/// One consumer of some partitions: records what arrives until told to stop.
async fn consumer_loop(
    shared: Arc<Shared>,
    mut consumer: Consumer,
    measure_latency: bool,
) -> Result<(), String> {
    let mut last: HashMap<(u32, u32), u64> = HashMap::new();
    let mut local = histogram()?;
    while !shared.stop_consuming.load(Ordering::Relaxed) {
        let records = consumer.poll(POLL_WAIT).await.map_err(|e| e.to_string())?;
        let now = Instant::now();
        let mut counted = 0u64;
        let mut bytes = 0u64;
        for r in &records {
            let Some((intended, producer, sequence)) =
                r.value.as_deref().and_then(|v| shared.unstamp(v))
            else {
                return Err(format!("record {}/{} has no stamp", r.partition, r.offset));
            };
            match last.insert((r.partition, producer), sequence) {
                Some(previous) if previous >= sequence => {
                    shared.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                _ => {}
            }
            shared.total_consumed.fetch_add(1, Ordering::Relaxed);
            if intended >= shared.measure_from || !measure_latency {
                counted += 1;
                bytes += r.value.as_ref().map_or(0, |v| v.len() as u64);
                if measure_latency {
                    local.saturating_record(latency_micros(intended, now));
                }
            }
        }
        shared.consumed.add(counted, bytes);
    }
    shared.merge(&shared.e2e, &local)
}

fn consumers(
    params: &ClientParams,
    brokers: &str,
    reset: OffsetReset,
) -> Result<Vec<Consumer>, String> {
    (0..params.consumers)
        .map(|c| {
            let mut consumer =
                Consumer::new(ConsumerConfig::new(params.client(brokers)).auto_offset_reset(reset))
                    .map_err(|e| e.to_string())?;
            consumer.assign(
                (0..params.partitions)
                    .filter(|p| p % params.consumers == c)
                    .map(|p| TopicPartition::new(TOPIC, p)),
            );
            Ok(consumer)
        })
        .collect()
}

/// Runs `e2e` (or `consume --from tail`): producers and consumers together.
pub fn run_e2e(
    params: &ClientParams,
    dir: &Path,
    show_progress: bool,
) -> Result<ClientRun, String> {
    let target = Target::start(params, dir)?;
    let runtime = runtime()?;
    let handle = runtime.handle().clone();
    runtime.block_on(async {
        prepare_topic(
            &target.brokers,
            params.partitions,
            target.replication_factor,
        )
        .await?;
        let mut producers = Vec::new();
        for _ in 0..params.producers {
            producers.push(
                Producer::new(params.producer_config(&target.brokers)?)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let consumers = consumers(params, &target.brokers, OffsetReset::Earliest)?;
        let usage_start = target.usage();
        let bench_cpu_start = process_cpu_seconds();
        let epoch = Instant::now();
        let warmup = Duration::from_secs_f64(params.warmup_s);
        let shared = Arc::new(Shared::new(
            epoch,
            epoch + warmup,
            params.messages.map(AtomicU64::new),
            params.record_bytes,
        )?);
        let monitor = Monitor::start(
            MonitorConfig {
                label: "e2e".into(),
                goal: params.goal(),
                measure_from: shared.measure_from,
                warmup,
                series_interval: SERIES_INTERVAL,
                show: show_progress,
            },
            {
                let shared = Arc::clone(&shared);
                move || {
                    let mut sample = Meter::sum(std::slice::from_ref(&shared.acked));
                    sample.done = shared.stop_producing.load(Ordering::Relaxed);
                    sample
                }
            },
        )?;
        let consumer_tasks: Vec<_> = consumers
            .into_iter()
            .map(|c| tokio::spawn(consumer_loop(Arc::clone(&shared), c, true)))
            .collect();
        let payload = Arc::new(payload(params.seed, params.record_bytes));
        let mut full_speed = Vec::new();
        let mut paced = Vec::new();
        for (id, producer) in producers.iter().enumerate() {
            let id = id as u32;
            match params.rate {
                None => full_speed.push(tokio::spawn(full_speed_producer(
                    Arc::clone(&shared),
                    producer.clone(),
                    id,
                    Arc::clone(&payload),
                ))),
                Some(rate) => {
                    let pacer = Pacer::new(epoch, rate, 1, u64::from(params.producers))
                        .ok_or("rate must be positive")?;
                    paced.push(paced_producer(
                        Arc::clone(&shared),
                        producer.clone(),
                        handle.clone(),
                        id,
                        pacer,
                        Arc::clone(&payload),
                    ));
                }
            }
        }
        let latency_at_start = tokio::spawn({
            let brokers = target.brokers.clone();
            let measure_from = shared.measure_from;
            async move {
                tokio::time::sleep_until(measure_from.into()).await;
                BrokerLatency::read(&brokers).await
            }
        });
        let mut rss_peak = usage_start.map(|u| u.1);
        let end = match params.goal() {
            Goal::Seconds(s) => Some(shared.measure_from + Duration::from_secs_f64(s)),
            _ => None,
        };
        let mut tick = tokio::time::interval(RSS_SAMPLE_INTERVAL);
        loop {
            tick.tick().await;
            if let Some(u) = target.usage() {
                rss_peak = rss_peak.map(|p| p.max(u.1));
            }
            let budget_spent = shared
                .budget
                .as_ref()
                .is_some_and(|b| b.load(Ordering::Relaxed) == 0);
            if end.is_some_and(|e| Instant::now() >= e) || budget_spent {
                break;
            }
            if full_speed.iter().any(|t| t.is_finished()) || paced.iter().any(|t| t.is_finished()) {
                break; // A producer failed.
            }
        }
        shared.stop_producing.store(true, Ordering::Relaxed);
        let mut failure = None;
        for t in full_speed {
            if let Err(e) = t.await.map_err(|e| e.to_string()).and_then(|r| r) {
                failure.get_or_insert(e);
            }
        }
        for t in paced {
            let joined = tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(|e| e.to_string())?;
            if let Err(e) = joined
                .map_err(|_| "producer thread panicked".to_string())
                .and_then(|r| r)
            {
                failure.get_or_insert(e);
            }
        }
        let measured = shared.measure_from.elapsed().as_secs_f64().max(1e-9);
        let broker_latency = match (
            latency_at_start.await,
            BrokerLatency::read(&target.brokers).await,
        ) {
            (Ok(Ok(start)), Ok(end)) => end.since(&start),
            (Ok(Err(e)), _) | (_, Err(e)) => Err(e),
            (Err(e), _) => Err(e.to_string()),
        }
        .map_err(|e| eprintln!("e2e: the brokers' own latencies are not available: {e}"))
        .ok();
        let series = monitor.finish();
        for p in &producers {
            p.close().await.map_err(|e| e.to_string())?;
        }
        // Let the consumers receive everything acknowledged.
        let drained_by = Instant::now() + DRAIN_TIMEOUT;
        while params.consumers > 0
            && shared.total_consumed.load(Ordering::Relaxed)
                < shared.total_acked.load(Ordering::Relaxed)
            && Instant::now() < drained_by
            && !consumer_tasks.iter().any(|t| t.is_finished())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shared.stop_consuming.store(true, Ordering::Relaxed);
        for t in consumer_tasks {
            if let Err(e) = t.await.map_err(|e| e.to_string()).and_then(|r| r) {
                failure.get_or_insert(e);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let usage_end = target.usage();
        let bench_cpu = process_cpu_seconds() - bench_cpu_start;
        let acked = Meter::sum(std::slice::from_ref(&shared.acked));
        let consumed = Meter::sum(std::slice::from_ref(&shared.consumed));
        let acks = shared.acks.lock().map_err(|e| e.to_string())?.clone();
        let e2e = shared.e2e.lock().map_err(|e| e.to_string())?.clone();
        let lateness = shared.lateness.lock().map_err(|e| e.to_string())?.clone();
        let gb = (acked.bytes + consumed.bytes) as f64 / 1e9;
        let result = ClientResult {
            records_acked: acked.messages,
            bytes_acked: acked.bytes,
            produce_mb_s: acked.bytes as f64 / 1e6 / measured,
            produce_records_s: acked.messages as f64 / measured,
            produce_to_ack: Latency::from_histogram(&acks),
            records_consumed: consumed.messages,
            bytes_consumed: consumed.bytes,
            consume_mb_s: consumed.bytes as f64 / 1e6 / measured,
            consume_records_s: consumed.messages as f64 / measured,
            produce_to_consume: (params.consumers > 0).then(|| Latency::from_histogram(&e2e)),
            send_lateness: params.rate.map(|_| Latency::from_histogram(&lateness)),
            broker_produce: broker_latency
                .as_ref()
                .map(|b| Latency::from_histogram(&b.produce)),
            broker_flush_device: broker_latency
                .as_ref()
                .map(|b| Latency::from_histogram(&b.flush_device)),
            total_acked: shared.total_acked.load(Ordering::Relaxed),
            total_consumed: shared.total_consumed.load(Ordering::Relaxed),
            duplicates: shared.duplicates.load(Ordering::Relaxed),
            broker_cpu_s: usage_start.zip(usage_end).map(|(s, e)| e.0 - s.0),
            bench_cpu_s: bench_cpu,
            client_cpu_s_per_gb: (gb > 0.0).then(|| bench_cpu / gb),
            broker_rss_start_mb: usage_start.map(|u| u.1),
            broker_rss_peak_mb: rss_peak,
            broker_rss_end_mb: usage_end.map(|u| u.1),
            measured_s: measured,
            time_series_mb_s: series,
            time_series_interval_s: SERIES_INTERVAL.as_secs_f64(),
        };
        let curve = if params.consumers > 0 { e2e } else { acks };
        Ok(ClientRun { result, curve })
    })
}

/// Runs `consume` from the start: fills the topic, then reads it all back.
pub fn run_consume(
    params: &ClientParams,
    dir: &Path,
    show_progress: bool,
) -> Result<ClientRun, String> {
    let target = Target::start(params, dir)?;
    let runtime = runtime()?;
    runtime.block_on(async {
        prepare_topic(
            &target.brokers,
            params.partitions,
            target.replication_factor,
        )
        .await?;
        let prefill_bytes = params.prefill_mib.unwrap_or(0) << 20;
        let records = (prefill_bytes / params.record_bytes as u64).max(1);
        let epoch = Instant::now();
        let shared = Arc::new(Shared::new(
            epoch,
            epoch,
            Some(AtomicU64::new(records)),
            params.record_bytes,
        )?);
        // Fill at full speed with every producer.
        let payload = Arc::new(payload(params.seed, params.record_bytes));
        let mut fills = Vec::new();
        for id in 0..params.producers.max(1) {
            let producer = Producer::new(params.producer_config(&target.brokers)?)
                .await
                .map_err(|e| e.to_string())?;
            let shared = Arc::clone(&shared);
            let payload = Arc::clone(&payload);
            fills.push(tokio::spawn(async move {
                full_speed_producer(shared, producer.clone(), id, payload).await?;
                producer.close().await.map_err(|e| e.to_string())
            }));
        }
        for f in fills {
            f.await.map_err(|e| e.to_string())??;
        }
        let filled = shared.total_acked.load(Ordering::Relaxed);
        eprintln!("consume: {filled} records written; reading them from the start");
        let usage_start = target.usage();
        let bench_cpu_start = process_cpu_seconds();
        let start = Instant::now();
        let monitor = Monitor::start(
            MonitorConfig {
                label: "consume".into(),
                goal: Goal::Messages(filled),
                measure_from: start,
                warmup: Duration::ZERO,
                series_interval: SERIES_INTERVAL,
                show: show_progress,
            },
            {
                let shared = Arc::clone(&shared);
                move || Sample {
                    done: shared.stop_consuming.load(Ordering::Relaxed),
                    ..Meter::sum(std::slice::from_ref(&shared.consumed))
                }
            },
        )?;
        let tasks: Vec<_> = consumers(params, &target.brokers, OffsetReset::Earliest)?
            .into_iter()
            .map(|c| tokio::spawn(consumer_loop(Arc::clone(&shared), c, false)))
            .collect();
        let mut rss_peak = usage_start.map(|u| u.1);
        let mut last_rss = Instant::now();
        let deadline = Instant::now() + DRAIN_TIMEOUT.max(Duration::from_secs(600));
        while shared.total_consumed.load(Ordering::Relaxed) < filled
            && Instant::now() < deadline
            && !tasks.iter().any(|t| t.is_finished())
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if last_rss.elapsed() >= RSS_SAMPLE_INTERVAL {
                last_rss = Instant::now();
                if let Some(u) = target.usage() {
                    rss_peak = rss_peak.map(|p| p.max(u.1));
                }
            }
        }
        let measured = start.elapsed().as_secs_f64().max(1e-9);
        shared.stop_consuming.store(true, Ordering::Relaxed);
        let series = monitor.finish();
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        let consumed = Meter::sum(std::slice::from_ref(&shared.consumed));
        if consumed.messages < filled {
            return Err(format!("read {} of {filled} records", consumed.messages));
        }
        let usage_end = target.usage();
        let bench_cpu = process_cpu_seconds() - bench_cpu_start;
        let gb = consumed.bytes as f64 / 1e9;
        let acks = shared.acks.lock().map_err(|e| e.to_string())?.clone();
        let result = ClientResult {
            records_acked: filled,
            bytes_acked: filled * params.record_bytes as u64,
            produce_mb_s: 0.0,
            produce_records_s: 0.0,
            produce_to_ack: Latency::from_histogram(&acks),
            records_consumed: consumed.messages,
            bytes_consumed: consumed.bytes,
            consume_mb_s: consumed.bytes as f64 / 1e6 / measured,
            consume_records_s: consumed.messages as f64 / measured,
            produce_to_consume: None,
            send_lateness: None,
            broker_produce: None,
            broker_flush_device: None,
            total_acked: filled,
            total_consumed: shared.total_consumed.load(Ordering::Relaxed),
            duplicates: shared.duplicates.load(Ordering::Relaxed),
            broker_cpu_s: usage_start.zip(usage_end).map(|(s, e)| e.0 - s.0),
            bench_cpu_s: bench_cpu,
            client_cpu_s_per_gb: (gb > 0.0).then(|| bench_cpu / gb),
            broker_rss_start_mb: usage_start.map(|u| u.1),
            broker_rss_peak_mb: rss_peak,
            broker_rss_end_mb: usage_end.map(|u| u.1),
            measured_s: measured,
            time_series_mb_s: series,
            time_series_interval_s: SERIES_INTERVAL.as_secs_f64(),
        };
        Ok(ClientRun {
            result,
            curve: acks,
        })
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let epoch = Instant::now();
        let shared = Shared::new(epoch, epoch, Some(AtomicU64::new(2)), 64).unwrap();
        let at = epoch + Duration::from_micros(1234);
        let value = make_value(&shared, &payload(1, 64), at, 7, 99);
        assert_eq!(value.len(), 64);
        assert_eq!(shared.unstamp(&value), Some((at, 7, 99)));
        assert_eq!(&value[STAMP_BYTES..], &payload(1, 64)[..64 - STAMP_BYTES]);
        assert!(shared.unstamp(&value[..10]).is_none());
        assert!(shared.take_budget() && shared.take_budget());
        assert!(!shared.take_budget(), "the budget runs out");
    }
}
