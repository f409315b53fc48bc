//! The network scenarios (`produce`, `e2e`): a real `sluice-broker` process driven over TCP.
//!
//! The broker runs as a child process (so its CPU time and RSS are measured apart from the
//! benchmark's) on a temporary data directory. One connection per partition goes straight to
//! the shard that owns it, as shard-aware clients do. Producers pipeline produce requests (a
//! bounded number in flight per connection) of batches of 1 KiB records with acks = leader,
//! either at full speed or at a fixed total rate; at a fixed rate, latency is measured from each
//! request's intended send time, so a stalled broker cannot hide (no coordinated omission; the
//! schedule is [`Pacer`]'s). The measured phase lasts a number of seconds or, with
//! `--messages`, until that many records were sent (the producers share one budget). Record
//! values are filled from the run's seed; the first record of each batch carries its send time,
//! so a tail consumer measures produce-to-consume latency.
//! After producing, a consumer reads everything back from the start (mostly from disk).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_protocol::native::{
    decode_control, encode_control, encode_request, split_response, Acks, ApiKey,
    CreateTopicRequest, DecodeControl, EncodeControl, ErrorCode, FetchPartition, FetchRequest,
    FetchResponse, MetadataRequest, MetadataResponse, ProducePartition, ProduceRequest,
    ProduceResponse, TopicResponse,
};
use sluice_protocol::{BatchBuilder, BatchIter, BatchOptions, RecordIter, BATCH_HEADER_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pace::{latency_micros, Pacer};
use crate::progress::{Goal, Monitor, MonitorConfig, Sample};
use crate::rng::SplitMix64;
use crate::storage::{new_histogram, Latency};

/// The longest warm-up or measured duration accepted, in seconds (a day).
pub const SECONDS_MAX: f64 = 86_400.0;
/// One point of the produce throughput series per second.
pub const SERIES_INTERVAL: Duration = Duration::from_secs(1);
/// How often the broker's RSS is sampled for its peak.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a producer waits for the acks of its last requests once it stopped sending.
const ACK_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The broker process must answer metadata requests within this long of starting.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped broker gets to exit after SIGTERM before it is killed.
const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkParams {
    pub mode: String,
    pub partitions: u32,
    pub record_bytes: usize,
    pub records_per_batch: u32,
    pub in_flight: usize,
    /// Records per second over all producers; `None` for full speed.
    pub rate: Option<u64>,
    /// Seconds measured; `None` when the run is bounded by `messages` instead.
    pub duration_s: Option<f64>,
    /// Records sent in the measured phase (`--messages`); `None` when bounded by `duration_s`.
    pub messages: Option<u64>,
    pub warmup_s: f64,
    pub tail_consumer: bool,
    pub read_back: bool,
    /// Seeds the record payloads (`--seed`).
    pub seed: u64,
}

impl NetworkParams {
    /// What ends the measured phase.
    pub fn goal(&self) -> Goal {
        match (self.messages, self.duration_s) {
            (Some(messages), _) => Goal::Messages(messages),
            (None, seconds) => Goal::Seconds(seconds.unwrap_or(0.0)),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkResult {
    pub records_sent: u64,
    pub bytes_sent: u64,
    pub produce_mb_s: f64,
    pub produce_records_s: f64,
    pub produce_to_ack: Latency,
    pub produce_to_consume: Option<Latency>,
    pub tail_records: u64,
    pub read_back_mb_s: Option<f64>,
    pub broker_cpu_s: f64,
    pub bench_cpu_s: f64,
    pub broker_rss_start_mb: f64,
    pub broker_rss_peak_mb: f64,
    pub broker_rss_end_mb: f64,
    /// Seconds from the start of the measured phase until every producer had its last ack.
    pub measured_s: f64,
    /// Acked MB/s over each `time_series_interval_s` of the measured phase.
    pub time_series_mb_s: Vec<f64>,
    pub time_series_interval_s: f64,
}

/// A finished run: the figures, and the produce-to-ack histogram for the percentile curve.
#[derive(Debug)]
pub struct NetworkRun {
    pub result: NetworkResult,
    pub produce_to_ack: Histogram<u64>,
}

/// The hidden first argument that makes `sluice-bench` run a broker instead of a scenario.
pub const BROKER_SUBCOMMAND: &str = "__broker";

/// A broker child process on a temporary data directory.
pub struct Broker {
    child: Child,
    pub listen: String,
    /// The broker's metrics endpoint (`--metrics-listen`).
    pub metrics: String,
    dir: PathBuf,
    /// Killed and reaped already: its pid may belong to another process now.
    reaped: bool,
    /// The arguments it was started with, to start it again on the same data and ports.
    args: Vec<std::ffi::OsString>,
}

fn spawn_broker(args: &[std::ffi::OsString]) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(&exe)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            format!(
                "start the broker ({} {BROKER_SUBCOMMAND}): {e}",
                exe.display()
            )
        })
}

/// A loopback address with a port nobody listens on right now.
pub fn free_address() -> Result<String, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .to_string())
}

impl Broker {
    /// Starts the broker as a child process: this executable again, with the hidden
    /// [`BROKER_SUBCOMMAND`], which runs `sluice-broker`'s own start-up. So the benchmark needs no
    /// separately built binary, and the broker's CPU time and memory are measured apart.
    pub fn start(dir: &Path, mode: &str, extra: &[String]) -> Result<Broker, String> {
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::start_with(dir, mode, shards, &free_address()?, extra)
    }

    /// Starts member `node_id` of an embedded cluster, one shard (the members share this
    /// machine's cores), its metadata port at `metadata`; `extra` carries `--peers`.
    pub fn start_member(
        dir: &Path,
        mode: &str,
        node_id: u64,
        metadata: &str,
        extra: &[String],
    ) -> Result<Broker, String> {
        let mut args = vec!["--node-id".to_string(), node_id.to_string()];
        args.extend_from_slice(extra);
        Self::start_with(dir, mode, 1, metadata, &args)
    }

    fn start_with(
        dir: &Path,
        mode: &str,
        shards: usize,
        metadata: &str,
        extra: &[String],
    ) -> Result<Broker, String> {
        let _ = std::fs::remove_dir_all(dir);
        // Every port picked free and held together while picked, so no two are the same: the
        // main address, the metrics endpoint (never the default, which benchmarks and tests
        // running at once would share) and each shard's own port (the default, the --listen
        // port plus 10 plus the shard index, may be some other socket's ephemeral port).
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string());
        let address = |l: &std::net::TcpListener| {
            l.local_addr()
                .map(|a| a.to_string())
                .map_err(|e| e.to_string())
        };
        let (held_listen, held_metrics) = (bind()?, bind()?);
        let (listen, metrics) = (address(&held_listen)?, address(&held_metrics)?);
        let held = (0..shards)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, String>>()?;
        let shard_ports = held
            .iter()
            .map(|l| l.local_addr().map(|a| a.port().to_string()))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| e.to_string())?
            .join(",");
        drop((held, held_listen, held_metrics));
        let mut args: Vec<std::ffi::OsString> = vec![
            BROKER_SUBCOMMAND.into(),
            "--data-dir".into(),
            dir.as_os_str().to_owned(),
        ];
        args.extend(
            [
                "--listen",
                &listen,
                "--metadata-listen",
                metadata,
                "--mode",
                mode,
                "--shards",
                &shards.to_string(),
                "--shard-ports",
                &shard_ports,
                "--metrics-listen",
                &metrics,
                // No Kafka listener: its default port would collide with anything else here.
                "--kafka-listen",
                "none",
                // The broker's info lines would mix into the progress line.
                "--log",
                "warn",
            ]
            .iter()
            .map(|a| a.into()),
        );
        args.extend(extra.iter().map(|a| a.into()));
        let child = spawn_broker(&args)?;
        Ok(Broker {
            child,
            listen,
            metrics,
            dir: dir.to_owned(),
            reaped: false,
            args,
        })
    }

    /// Stops the process with SIGTERM (a clean stop: its logs flushed and closed) and waits.
    pub fn stop(&mut self) -> Result<(), String> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().map_err(|e| e.to_string())?;
        self.reaped = true;
        if status.success() {
            Ok(())
        } else {
            Err(format!("the broker stopped with {status}"))
        }
    }

    /// Starts the stopped (or killed) process again on the same data directory and ports.
    pub fn restart(&mut self) -> Result<(), String> {
        assert!(self.reaped, "restart a stopped broker");
        self.child = spawn_broker(&self.args)?;
        self.reaped = false;
        Ok(())
    }

    /// Kills the process with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// (CPU seconds, RSS in MB) from /proc.
    pub fn usage(&self) -> (f64, f64) {
        let pid = self.child.id();
        let ticks = 100.0; // USER_HZ on Linux.
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
                Some(
                    (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
                        / ticks,
                )
            })
            .unwrap_or(0.0);
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                line.split_whitespace().nth(1)?.parse::<f64>().ok()
            })
            .map_or(0.0, |kb| kb / 1024.0);
        (cpu, rss)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.reaped {
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + BROKER_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request frame.
fn request<T: EncodeControl>(api: ApiKey, id: u32, control: &T, data: &[u8]) -> Vec<u8> {
    let control = encode_control(control);
    let mut frame = encode_request(api, 0, id, &control, data.len());
    frame.extend_from_slice(data);
    frame
}

/// Reads one response frame: (correlation id, frame error, control, data).
async fn read_response(
    stream: &mut (impl AsyncReadExt + Unpin),
) -> Result<(u32, u16, Vec<u8>, Vec<u8>), String> {
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| e.to_string())?;
    let mut frame = vec![0u8; u32::from_le_bytes(len) as usize];
    stream
        .read_exact(&mut frame)
        .await
        .map_err(|e| e.to_string())?;
    let parsed = split_response(&frame).map_err(|e| e.to_string())?;
    Ok((
        parsed.correlation_id,
        parsed.frame_error,
        parsed.control.to_vec(),
        parsed.data.to_vec(),
    ))
}

async fn call<T: EncodeControl, R: DecodeControl>(
    address: &str,
    api: ApiKey,
    control: &T,
) -> Result<R, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(&request(api, 1, control, &[]))
        .await
        .map_err(|e| e.to_string())?;
    let (_, error, control, _) = read_response(&mut stream).await?;
    if error != 0 {
        return Err(format!("frame error {error}"));
    }
    decode_control(&control).map_err(|e| e.to_string())
}

/// Waits for the broker, creates the topic, and returns each partition's shard address.
async fn prepare(address: &str, partitions: u32) -> Result<Vec<String>, String> {
    let deadline = Instant::now() + BROKER_START_TIMEOUT;
    loop {
        let ready = call::<_, MetadataResponse>(
            address,
            ApiKey::Metadata,
            &MetadataRequest { topics: None },
        )
        .await
        .is_ok_and(|m| m.brokers.iter().any(|b| !b.shard_addresses.is_empty()));
        if ready {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the broker did not come up within {} s",
                BROKER_START_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created: TopicResponse = call(
        address,
        ApiKey::CreateTopic,
        &CreateTopicRequest {
            name: "bench".into(),
            partitions,
            replication_factor: 1,
        },
    )
    .await?;
    if created.error != ErrorCode::None {
        return Err(format!(
            "create topic: {:?} {}",
            created.error, created.message
        ));
    }
    let meta: MetadataResponse = call(
        address,
        ApiKey::Metadata,
        &MetadataRequest {
            topics: Some(vec!["bench".into()]),
        },
    )
    .await?;
    let broker = meta.brokers.first().ok_or("no broker in metadata")?;
    let addresses: Vec<String> = meta.topics[0]
        .partitions
        .iter()
        .map(|p| {
            broker
                .shard_addresses
                .get(p.shard as usize)
                .cloned()
                .ok_or_else(|| "no shard address".to_string())
        })
        .collect::<Result<_, _>>()?;
    // The owning shards open the new partitions' logs right after the creation commits.
    for (partition, address) in addresses.iter().enumerate() {
        loop {
            let fetch = FetchRequest {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 1,
                partitions: vec![FetchPartition {
                    topic: "bench".into(),
                    partition: partition as u32,
                    offset: 0,
                    max_bytes: 1,
                }],
            };
            let response: FetchResponse = call(address, ApiKey::Fetch, &fetch).await?;
            match response.partitions[0].error {
                ErrorCode::None => break,
                ErrorCode::NotLeaderOrWrongShard if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                other => return Err(format!("partition {partition} is not served: {other:?}")),
            }
        }
    }
    Ok(addresses)
}

/// A producer's batch, built once: each request only writes its send time into the first
/// record's value and recomputes the CRC, so the load generator spends its CPU on sending.
struct BatchTemplate {
    bytes: Vec<u8>,
    /// Where the first record's value (and so the send time) starts.
    time_at: usize,
    records: u32,
}

impl BatchTemplate {
    /// `records` records of `record_bytes` (at least 8) bytes each, filled from `rng`.
    fn new(
        records: u32,
        record_bytes: usize,
        rng: &mut SplitMix64,
    ) -> Result<BatchTemplate, String> {
        const MARK: [u8; 8] = *b"SLUICE!!";
        let mut value = vec![0u8; record_bytes.max(8)];
        let mut builder = BatchBuilder::with_capacity(
            BatchOptions::default(),
            (record_bytes + 16) * records as usize + 64,
        );
        for record in 0..records {
            rng.fill(&mut value);
            if record == 0 {
                // Found below, then overwritten by each request's send time.
                value[..8].copy_from_slice(&MARK);
            }
            builder.push(0, None, Some(&value), &[]);
        }
        let bytes = builder.finish();
        let time_at = bytes
            .windows(8)
            .position(|w| w == MARK)
            .ok_or("the batch template lost its marker")?;
        Ok(BatchTemplate {
            bytes,
            time_at,
            records,
        })
    }

    /// The batch stamped with `sent_ns` (ns since the run's epoch), with a valid CRC.
    fn stamp(&mut self, sent_ns: u64) -> &[u8] {
        self.bytes[self.time_at..self.time_at + 8].copy_from_slice(&sent_ns.to_le_bytes());
        sluice_protocol::batch::update_crc(&mut self.bytes);
        &self.bytes
    }
}

struct Shared {
    epoch: Instant,
    measure_from: Instant,
    stop: AtomicBool,
    /// Woken by each producer that ends, for whatever reason.
    producer_ended: tokio::sync::Notify,
    /// Records the measured phase may still send (`--messages`), shared by all producers.
    budget: Option<AtomicU64>,
    records: AtomicU64,
    bytes: AtomicU64,
    acks: Mutex<Histogram<u64>>,
    e2e: Mutex<Histogram<u64>>,
    tail_records: AtomicU64,
}

/// Takes up to `want` records from a shared budget: how many were granted, 0 once it is spent.
fn claim(budget: &AtomicU64, want: u64) -> u64 {
    let mut granted = 0;
    let _ = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
        granted = left.min(want);
        (granted > 0).then(|| left - granted)
    });
    granted
}

/// One producer connection for one partition.
async fn produce_loop(
    shared: Arc<Shared>,
    address: String,
    partition: u32,
    params: NetworkParams,
) -> Result<(), String> {
    let outcome = produce(&shared, &address, partition, &params).await;
    shared.producer_ended.notify_one();
    outcome.map_err(|e| format!("producer for partition {partition} ({address}): {e}"))
}

async fn produce(
    shared: &Arc<Shared>,
    address: &str,
    partition: u32,
    params: &NetworkParams,
) -> Result<(), String> {
    let in_flight = u32::try_from(params.in_flight).map_err(|_| "too many requests in flight")?;
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut reader, mut writer) = stream.into_split();
    // (correlation id, intended or actual send time, records) of requests awaiting their ack.
    let pending: Arc<Mutex<VecDeque<(u32, Instant, u64)>>> = Arc::new(Mutex::new(VecDeque::new()));
    let slots = Arc::new(tokio::sync::Semaphore::new(params.in_flight));
    let mut acks = {
        let pending = Arc::clone(&pending);
        let slots = Arc::clone(&slots);
        let shared = Arc::clone(shared);
        let record_bytes = params.record_bytes as u64;
        // Ends only on a failure; once every request is acknowledged the producer aborts it.
        tokio::spawn(async move {
            let outcome: Result<(), String> = async {
                loop {
                    let (id, error, control, _) = read_response(&mut reader).await?;
                    let sent = {
                        let mut queue = pending.lock().map_err(|_| "poisoned")?;
                        queue.pop_front()
                    };
                    let Some((expected, sent, records)) = sent else {
                        return Err("unexpected response".to_string());
                    };
                    if id != expected || error != 0 {
                        return Err(format!(
                            "response {id} (frame error {error}) where {expected} was expected"
                        ));
                    }
                    let response: ProduceResponse =
                        decode_control(&control).map_err(|e| e.to_string())?;
                    if let Some(p) = response
                        .partitions
                        .iter()
                        .find(|p| p.error != ErrorCode::None)
                    {
                        return Err(format!("produce failed: {:?}", p.error));
                    }
                    // `sent` is the intended send time when paced: see `pace`.
                    if sent >= shared.measure_from {
                        let micros = latency_micros(sent, Instant::now());
                        if let Ok(mut h) = shared.acks.lock() {
                            let _ = h.record(micros);
                        }
                        shared.records.fetch_add(records, Ordering::Relaxed);
                        shared
                            .bytes
                            .fetch_add(records * record_bytes, Ordering::Relaxed);
                    }
                    slots.add_permits(1);
                }
            }
            .await;
            // Wake a producer waiting for a slot, so a failure ends the run instead of hanging it.
            slots.close();
            outcome
        })
    };
    let mut rng = SplitMix64::new(params.seed, u64::from(partition));
    let mut template = BatchTemplate::new(params.records_per_batch, params.record_bytes, &mut rng)?;
    // The one shorter batch a `--messages` budget may end with.
    let mut last: Option<BatchTemplate> = None;
    let pacer = params.rate.and_then(|rate| {
        Pacer::new(
            Instant::now(),
            rate,
            u64::from(params.records_per_batch),
            u64::from(params.partitions),
        )
    });
    let mut id = 0u32;
    let mut sends = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(wait) = pacer.and_then(|p| p.wait(sends, Instant::now())) {
            tokio::time::sleep(wait).await;
        }
        let Ok(permit) = slots.acquire().await else {
            break;
        };
        permit.forget();
        // Paced: the schedule's time, however late this send is; else now.
        let intended = pacer.map_or_else(Instant::now, |p| p.intended(sends));
        sends += 1;
        let mut records = params.records_per_batch;
        if let Some(budget) = shared
            .budget
            .as_ref()
            .filter(|_| intended >= shared.measure_from)
        {
            records = u32::try_from(claim(budget, u64::from(records))).unwrap_or(records);
            if records == 0 {
                slots.add_permits(1);
                break;
            }
        }
        let batch = if records == template.records {
            &mut template
        } else {
            if last.as_ref().is_none_or(|t| t.records != records) {
                last = Some(BatchTemplate::new(records, params.record_bytes, &mut rng)?);
            }
            last.as_mut().ok_or("no batch template")?
        };
        let sent_ns = intended.duration_since(shared.epoch).as_nanos() as u64;
        let bytes = batch.stamp(sent_ns);
        id = id.wrapping_add(1);
        let frame = request(
            ApiKey::Produce,
            id,
            &ProduceRequest {
                acks: Acks::Leader,
                timeout_ms: 30_000,
                partitions: vec![ProducePartition {
                    topic: "bench".into(),
                    partition,
                    batch_len: bytes.len() as u32,
                }],
            },
            bytes,
        );
        pending
            .lock()
            .map_err(|_| "poisoned")?
            .push_back((id, intended, u64::from(records)));
        writer.write_all(&frame).await.map_err(|e| e.to_string())?;
    }
    // Every slot back means every request sent was acknowledged; a closed semaphore means the
    // ack reader failed, and its error says why.
    let drained = tokio::time::timeout(ACK_DRAIN_TIMEOUT, slots.acquire_many(in_flight)).await;
    let outcome = match drained {
        Ok(Ok(_every_slot)) => Ok(()),
        Ok(Err(_closed)) => match (&mut acks).await {
            Ok(outcome) => outcome,
            Err(e) => Err(e.to_string()),
        },
        Err(_) => Err(format!(
            "acks did not drain within {} s",
            ACK_DRAIN_TIMEOUT.as_secs()
        )),
    };
    acks.abort();
    drop(writer);
    outcome
}

/// A tail consumer for one partition: long-polls from the end and records produce-to-consume.
async fn tail_loop(shared: Arc<Shared>, address: String, partition: u32) -> Result<(), String> {
    let mut stream = TcpStream::connect(&address)
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut offset = 0u64;
    let mut id = 0u32;
    loop {
        // Asked to stop (every record acknowledged, so durable and readable): drain to the end
        // first, so a fetch that had not been issued yet does not leave records unread.
        let draining = shared.stop.load(Ordering::Relaxed);
        id = id.wrapping_add(1);
        let frame = request(
            ApiKey::Fetch,
            id,
            &FetchRequest {
                max_wait_ms: 100,
                min_bytes: 1,
                max_bytes: 8 << 20,
                partitions: vec![FetchPartition {
                    topic: "bench".into(),
                    partition,
                    offset,
                    max_bytes: 4 << 20,
                }],
            },
            &[],
        );
        stream.write_all(&frame).await.map_err(|e| e.to_string())?;
        let (_, error, control, data) = read_response(&mut stream).await?;
        if error != 0 {
            return Err(format!("fetch frame error {error}"));
        }
        let response: FetchResponse = decode_control(&control).map_err(|e| e.to_string())?;
        if response.partitions[0].error != ErrorCode::None {
            return Err(format!("fetch: {:?}", response.partitions[0].error));
        }
        let now_ns = shared.epoch.elapsed().as_nanos() as u64;
        let measure_from = shared.measure_from.duration_since(shared.epoch).as_nanos() as u64;
        for item in BatchIter::new(&data) {
            let (header, bytes) = item.map_err(|e| e.to_string())?;
            // Only the first record carries the send time: decode just that one.
            if let Some(record) = RecordIter::new(&header, &bytes[BATCH_HEADER_BYTES..]).next() {
                let record = record.map_err(|e| e.to_string())?;
                let sent = record
                    .value
                    .and_then(|v| v.get(..8))
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
                if let Some(sent) = sent.filter(|&s| s >= measure_from) {
                    let micros = (now_ns.saturating_sub(sent) / 1000).max(1);
                    if let Ok(mut h) = shared.e2e.lock() {
                        let _ = h.record(micros);
                    }
                }
            }
            shared
                .tail_records
                .fetch_add(u64::from(header.record_count), Ordering::Relaxed);
            offset = header.next_offset();
        }
        if draining && data.is_empty() {
            return Ok(());
        }
    }
}

/// Reads a partition from offset 0 to its end; returns the bytes read.
async fn read_back(address: String, partition: u32) -> Result<u64, String> {
    let mut stream = TcpStream::connect(&address)
        .await
        .map_err(|e| e.to_string())?;
    let (mut offset, mut total, mut id) = (0u64, 0u64, 0u32);
    loop {
        id = id.wrapping_add(1);
        let frame = request(
            ApiKey::Fetch,
            id,
            &FetchRequest {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 8 << 20,
                partitions: vec![FetchPartition {
                    topic: "bench".into(),
                    partition,
                    offset,
                    max_bytes: 4 << 20,
                }],
            },
            &[],
        );
        stream.write_all(&frame).await.map_err(|e| e.to_string())?;
        let (_, _, control, data) = read_response(&mut stream).await?;
        let response: FetchResponse = decode_control(&control).map_err(|e| e.to_string())?;
        if data.is_empty() || response.partitions[0].error != ErrorCode::None {
            return Ok(total);
        }
        total += data.len() as u64;
        let mut at = 0;
        while at < data.len() {
            let header =
                sluice_protocol::BatchHeader::parse(&data[at..]).map_err(|e| e.to_string())?;
            offset = header.next_offset();
            at += header.batch_len as usize;
        }
    }
}

pub fn process_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
            Some(
                (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
                    / 100.0,
            )
        })
        .unwrap_or(0.0)
}

/// Runs a network scenario against a broker started in `dir`; with `show_progress`, a progress
/// line on stderr during the warm-up and the measured phase.
pub fn run(params: &NetworkParams, dir: &Path, show_progress: bool) -> Result<NetworkRun, String> {
    let broker = Broker::start(dir, &params.mode, &[])?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let addresses = prepare(&broker.listen, params.partitions).await?;
        let (cpu_start, rss_start) = broker.usage();
        let bench_cpu_start = process_cpu_seconds();
        let epoch = Instant::now();
        let warmup = Duration::from_secs_f64(params.warmup_s);
        let shared = Arc::new(Shared {
            epoch,
            measure_from: epoch + warmup,
            stop: AtomicBool::new(false),
            producer_ended: tokio::sync::Notify::new(),
            budget: params.messages.map(AtomicU64::new),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            acks: Mutex::new(new_histogram()?),
            e2e: Mutex::new(new_histogram()?),
            tail_records: AtomicU64::new(0),
        });
        let monitor = Monitor::start(
            MonitorConfig {
                label: "produce".into(),
                goal: params.goal(),
                measure_from: shared.measure_from,
                warmup,
                series_interval: SERIES_INTERVAL,
                show: show_progress,
            },
            {
                let shared = Arc::clone(&shared);
                move || Sample {
                    messages: shared.records.load(Ordering::Relaxed),
                    bytes: shared.bytes.load(Ordering::Relaxed),
                    done: shared.stop.load(Ordering::Relaxed),
                }
            },
        )?;
        let mut tasks = Vec::new();
        for (partition, address) in addresses.iter().enumerate() {
            tasks.push(tokio::spawn(produce_loop(
                Arc::clone(&shared),
                address.clone(),
                partition as u32,
                params.clone(),
            )));
        }
        let mut tails = Vec::new();
        if params.tail_consumer {
            for (partition, address) in addresses.iter().enumerate() {
                tails.push(tokio::spawn(tail_loop(
                    Arc::clone(&shared),
                    address.clone(),
                    partition as u32,
                )));
            }
        }
        // Until the measured time is up or a producer ends (its `--messages` budget is spent,
        // or it failed), sampling the broker's RSS; the monitor samples the throughput.
        let end = match params.goal() {
            Goal::Seconds(seconds) => Some(shared.measure_from + Duration::from_secs_f64(seconds)),
            Goal::Messages(_) | Goal::Bytes(_) => None,
        };
        let deadline = async {
            match end {
                Some(end) => tokio::time::sleep_until(end.into()).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(deadline);
        let mut rss_peak = rss_start;
        let mut rss_tick = tokio::time::interval(RSS_SAMPLE_INTERVAL);
        loop {
            tokio::select! {
                () = &mut deadline => break,
                () = shared.producer_ended.notified() => break,
                _ = rss_tick.tick() => rss_peak = rss_peak.max(broker.usage().1),
            }
        }
        shared.stop.store(true, Ordering::Relaxed);
        let mut failure = None;
        for task in tasks {
            if let Err(e) = task.await.map_err(|e| e.to_string()).and_then(|r| r) {
                failure.get_or_insert(e);
            }
        }
        let measured = shared.measure_from.elapsed().as_secs_f64().max(1e-9);
        let series = monitor.finish();
        for tail in tails {
            if let Err(e) = tail.await.map_err(|e| e.to_string()).and_then(|r| r) {
                failure.get_or_insert(e);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let (cpu_end, rss_end) = broker.usage();
        let mut result = NetworkResult {
            records_sent: shared.records.load(Ordering::Relaxed),
            bytes_sent: shared.bytes.load(Ordering::Relaxed),
            produce_to_ack: Latency::from_histogram(&*shared.acks.lock().map_err(|_| "poisoned")?),
            produce_to_consume: params
                .tail_consumer
                .then(|| shared.e2e.lock().map(|h| Latency::from_histogram(&h)).ok())
                .flatten(),
            tail_records: shared.tail_records.load(Ordering::Relaxed),
            broker_cpu_s: cpu_end - cpu_start,
            bench_cpu_s: process_cpu_seconds() - bench_cpu_start,
            broker_rss_start_mb: rss_start,
            broker_rss_peak_mb: rss_peak.max(rss_end),
            broker_rss_end_mb: rss_end,
            measured_s: measured,
            time_series_mb_s: series,
            time_series_interval_s: SERIES_INTERVAL.as_secs_f64(),
            ..NetworkResult::default()
        };
        result.produce_mb_s = result.bytes_sent as f64 / 1e6 / measured;
        result.produce_records_s = result.records_sent as f64 / measured;
        if params.read_back {
            let started = Instant::now();
            let mut readers = Vec::new();
            for (partition, address) in addresses.iter().enumerate() {
                readers.push(tokio::spawn(read_back(address.clone(), partition as u32)));
            }
            let mut bytes = 0u64;
            for reader in readers {
                bytes += reader.await.map_err(|e| e.to_string())??;
            }
            result.read_back_mb_s =
                Some(bytes as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-9));
        }
        let produce_to_ack = shared.acks.lock().map_err(|_| "poisoned")?.clone();
        Ok(NetworkRun {
            result,
            produce_to_ack,
        })
    })
}

/// Sends `records` records of `value` round-robin over `partitions` partitions of `topic` and
/// waits for every acknowledgement (at most 4,096 awaited at once).
pub async fn send_all(
    producer: &sluice_client::Producer,
    topic: &str,
    partitions: u32,
    records: u64,
    value: &[u8],
) -> Result<(), String> {
    let mut deliveries = Vec::new();
    for i in 0..records {
        let record = sluice_client::ProducerRecord::new(topic)
            .partition((i % u64::from(partitions)) as u32)
            .value(value.to_vec());
        deliveries.push(producer.send(record).await.map_err(|e| e.to_string())?);
        if deliveries.len() >= 4096 {
            for d in deliveries.drain(..) {
                d.await.map_err(|e| e.to_string())?;
            }
        }
    }
    for d in deliveries {
        d.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_claimed_whole_then_in_part_then_not_at_all() {
        let budget = AtomicU64::new(150);
        assert_eq!(claim(&budget, 64), 64);
        assert_eq!(claim(&budget, 64), 64);
        assert_eq!(claim(&budget, 64), 22);
        assert_eq!(claim(&budget, 64), 0);
        assert_eq!(budget.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn batch_templates_are_seeded_and_stamped() {
        let template = |seed, partition| {
            BatchTemplate::new(4, 100, &mut SplitMix64::new(seed, partition)).unwrap()
        };
        let mut a = template(1, 0);
        assert_eq!(a.bytes, template(1, 0).bytes);
        assert_ne!(a.bytes, template(2, 0).bytes);
        assert_ne!(a.bytes, template(1, 1).bytes);
        let stamped = a.stamp(0x0102_0304_0506_0708).to_vec();
        let (header, bytes) = BatchIter::new(&stamped).next().unwrap().unwrap();
        assert_eq!(header.record_count, 4);
        let values: Vec<Vec<u8>> = RecordIter::new(&header, &bytes[BATCH_HEADER_BYTES..])
            .map(|r| r.unwrap().value.unwrap().to_vec())
            .collect();
        assert_eq!(values[0][..8], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert!(values.iter().all(|v| v.len() == 100));
        // The other records are filled, and differ from one another.
        assert_ne!(values[1], values[2]);
        assert!(values[1].iter().any(|&b| b != 0));
    }
}
