//! `sluice-bench`: Sluice's benchmark harness.
//!
//! Scenarios held against the machine's limits run the probe in the same run and report their
//! figures as ratios to it, because absolute numbers on a shared 2-core VM mean little on their
//! own. Scenarios: `probe` (the raw limits alone), `storage` (the partition log alone),
//! `metadata` (Raft), `hop` (the cross-shard hop), `produce` (a broker process over TCP), `e2e`
//! and `consume` (the client library), `failover` and `catchup` (replication on an embedded
//! cluster), `group` (consumer groups), `scrape` (the metrics endpoint); `report` regenerates
//! the results page. Options and the JSON result files: `docs/bench.md`.

mod e2e;
mod group;
mod hop;
mod kafka;
mod metadata;
mod modes;
mod network;
mod pace;
mod partitions;
mod plot;
mod probe;
mod progress;
mod record;
mod replication;
mod report;
mod rng;
mod scrape;
mod storage;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use hdrhistogram::Histogram;

/// The payload seed when `--seed` is not given (the value earlier storage runs used).
const DEFAULT_SEED: u64 = 42;
/// MiB written and read by the probe (the one that runs before the storage and produce
/// scenarios, and `probe`'s default).
const PROBE_MIB: u64 = 512;

#[derive(Debug, Parser)]
#[command(name = "sluice-bench", version, about = "Benchmarks for the Sluice broker", long_about = None)]
struct Cli {
    #[command(subcommand)]
    scenario: Option<Scenario>,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// The machine's limits: O_DIRECT write with fdatasync per MiB, O_DIRECT read, loopback TCP.
    Probe(ProbeArgs),
    /// The partition log alone: concurrent durable appends, then a sequential read from disk.
    Storage(StorageArgs),
    /// Cluster metadata on Raft: topic creation rate, commit latency, controller failover.
    Metadata(MetadataArgs),
    /// The cost of a cross-shard hop (what shard-aware clients avoid).
    Hop(HopArgs),
    /// Producers (and optionally a tail consumer) against a `sluice-broker` process over TCP,
    /// then a read-back of everything from the start.
    Produce(ProduceArgs),
    /// Producers and consumers built on `sluice-client` together: throughput, produce-to-ack and
    /// produce-to-consume latency (the default scenario: 20 s against an embedded broker).
    E2e(E2eArgs),
    /// Whether the broker's `--mode` matters: many producers' small batches with identical
    /// client settings in both modes, at full speed (MB/s) and paced (latency).
    Modes(ModesArgs),
    /// Consumers built on `sluice-client` reading a prefilled topic from the start (from disk),
    /// or at the tail of running producers (`--from tail`).
    Consume(ConsumeArgs),
    /// Consumer groups: settling after a join and after a member dies, a group's consumption
    /// against one consumer's, and commits per second on one coordinator.
    Group(GroupArgs),
    /// Unavailability after SIGKILL of a partition's leader: three brokers, replication factor
    /// 3, paced `acks=all` load; the time from the kill to the first acknowledgement of a
    /// record sent after it.
    Failover(FailoverArgs),
    /// Catch-up rate of a replica added to a full partition (two brokers: a reassignment adds a
    /// replica to a replication-factor-1 partition), against the raw read probe.
    Catchup(CatchupArgs),
    /// The metrics endpoint's cost: scrapes of a broker holding many partitions, idle and under
    /// producer load, producer throughput with and without scrapes, and the broker's own
    /// produce latency histogram beside the client's.
    Scrape(ScrapeArgs),
    /// What a broker's partition count costs it: produce over 4, 1,000 and 10,000 partitions
    /// (the same bytes), idle RSS with 10, 1,000 and 10,000 partitions, start-up time over
    /// 10,000 after a clean stop and after SIGKILL.
    Partitions(PartitionsArgs),
    /// A Kafka client (confluent-kafka) against the Kafka listener, beside the native client
    /// in the same run: produce and consume MB/s, and the broker's CPU per GiB fetched.
    Kafka(KafkaArgs),
    /// Regenerate the markdown results page from the JSON result files in a directory.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
struct PartitionsArgs {
    /// Partition counts of the produce runs (one topic each, the same bytes); ratios are to
    /// the first.
    #[arg(long, value_delimiter = ',', default_value = "4,1000,10000", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    produce_partitions: Vec<u32>,
    /// MiB produced in each produce run.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    mib: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    record_bytes: u64,
    /// Distinct keys the records carry (the partitioner spreads them over the partitions).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Partition counts of the idle brokers whose RSS is read; the last one is restarted.
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000", value_parser = clap::value_parser!(u32).range(0..=10_000))]
    idle_partitions: Vec<u32>,
    /// The brokers' default flush policy (`--flush`): `interval` (group commit, the default),
    /// `always` or `never` (no fdatasync: what durability costs at each partition count).
    #[arg(long, default_value = "interval", value_parser = ["interval", "always", "never"])]
    flush: String,
    /// The producer's linger in ms (the client's default: 5), the same for every count.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    linger_ms: u64,
    /// The producer's buffer in MiB (the client's default: 64): records buffered and not yet
    /// acknowledged. Over N partitions a batch holds at most about this / N.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    buffer_mib: u64,
    /// The brokers' group-commit window of the `interval` flush policy, in ms (the broker's
    /// default: 5).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    flush_interval_ms: u64,
    /// The producer's requests in flight per connection (the client's default: 16).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=32))]
    in_flight: u64,
    /// The embedded broker's mode: throughput or latency.
    #[arg(long, default_value = "throughput", value_parser = ["throughput", "latency"])]
    mode: String,
    /// Where the brokers keep their data (removed first); must support O_DIRECT.
    #[arg(long, default_value = "target/sluice-bench-partitions")]
    dir: PathBuf,
    /// Write the result as JSON here (schema: docs/bench.md).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct KafkaArgs {
    /// Directory for benchmark data (removed afterwards).
    #[arg(long, default_value = "target/sluice-bench-kafka")]
    dir: PathBuf,
    /// The virtualenv holding confluent-kafka (made and filled when missing).
    #[arg(long, default_value = "target/kafka-venv")]
    venv: PathBuf,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The embedded broker's `--mode`.
    #[arg(long, default_value = "throughput", value_parser = ["throughput", "latency"])]
    mode: String,
    /// MiB each client writes and reads back.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    mib: u64,
    /// Bytes per record.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    record_bytes: u64,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    partitions: u32,
}

#[derive(Debug, Args)]
struct GroupArgs {
    /// Directory for benchmark data (removed afterwards).
    #[arg(long, default_value = "./sluice-bench-data")]
    dir: PathBuf,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The embedded broker's `--mode`.
    #[arg(long, default_value = "throughput", value_parser = ["throughput", "latency"])]
    mode: String,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    partitions: u32,
    /// Members of the group that settles (one more joins, then one dies).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    members: u32,
    /// The members' session timeout, in ms.
    #[arg(long, default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(500..=600_000))]
    session_timeout_ms: u64,
    /// The broker's `--group-heartbeat-interval-ms`.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    heartbeat_interval_ms: u64,
    /// MiB written for the consumption comparison.
    #[arg(long, default_value_t = 512)]
    prefill_mib: u64,
    /// Bytes per record written.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    record_bytes: u64,
    /// Members of the group compared with one consumer.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    readers: u32,
    /// Concurrent committers.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    committers: u32,
    /// Partition offsets per commit request.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    commit_partitions: u32,
    /// Seconds of committing.
    #[arg(long, default_value_t = 10.0)]
    commit_seconds: f64,
}

#[derive(Debug, Args)]
struct ScrapeArgs {
    /// Partitions of the scraped topic, one record each (10,000 is a topic's maximum).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    partitions: u32,
    /// Scrapes timed with the broker idle.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    scrapes: u32,
    /// Seconds of each load phase (without scrapes, then with).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds between scrapes in the second load phase.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Bytes of each load record's value.
    #[arg(long, default_value_t = 256)]
    record_bytes: usize,
    /// The embedded broker's mode: throughput or latency.
    #[arg(long, default_value = "throughput", value_parser = ["throughput", "latency"])]
    mode: String,
    /// Where the broker keeps its data (removed first); must support O_DIRECT.
    #[arg(long, default_value = "target/sluice-bench-scrape")]
    dir: PathBuf,
    /// Write the result as JSON here (schema: docs/bench.md).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// Directory of JSON result files (written by the scenarios' `--json`).
    #[arg(long)]
    results: PathBuf,
    /// Markdown file to write.
    #[arg(long)]
    out: PathBuf,
    /// Hand-written preamble placed before the generated sections; default:
    /// `benchmarks-intro.md` next to the results directory, if it exists.
    #[arg(long)]
    intro: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ProduceArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    workload: Workload,
    /// Broker mode: throughput or latency.
    #[arg(long, default_value = "throughput", value_parser = ["throughput", "latency"])]
    mode: String,
    /// Partitions, one producer connection each (spread over the broker's shards).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Records per produce request.
    #[arg(long, default_value_t = 64)]
    batch_records: u32,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Total records per second (paced; latency from the intended send time); omit for full speed.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0, conflicts_with = "messages")]
    duration: f64,
    /// Instead of a duration: records sent in the measured phase (after the warm-up), over all
    /// producers; the run ends when the last one is acknowledged.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    messages: Option<u64>,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Run a tail consumer per partition and measure produce-to-consume latency.
    #[arg(long)]
    tail: bool,
    /// Skip reading everything back after producing.
    #[arg(long)]
    no_read_back: bool,
}

/// Options of the client scenarios (`e2e`, `consume`).
#[derive(Debug, Args)]
struct ClientArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    workload: Workload,
    /// Run against these brokers (`host:port,...`) instead of an embedded broker process.
    #[arg(long, conflicts_with = "cluster")]
    brokers: Option<String>,
    /// Run against an embedded cluster of this many broker processes (one shard each), the
    /// topic replicated on all of them.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=5))]
    cluster: Option<u32>,
    /// The embedded broker's mode: throughput or latency.
    #[arg(long, default_value = "throughput", value_parser = ["throughput", "latency"])]
    mode: String,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    partitions: u32,
    /// Producers (each a `sluice_client::Producer` driven by one task or paced thread).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=64))]
    producers: u32,
    /// Consumers, the partitions dealt among them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=64))]
    consumers: u32,
    /// Bytes of each record's value (at least 20: the stamp).
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Total records per second over all producers (paced; latency from the intended send time);
    /// omit for full speed.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Producer acks: none, leader or all.
    #[arg(long, default_value = "all", value_parser = ["none", "leader", "all"])]
    acks: String,
    /// Producer linger in milliseconds (the client's default: 5).
    #[arg(long, default_value_t = 5.0)]
    linger_ms: f64,
    /// Producer batch size in KiB (the client's default: 1024).
    #[arg(long, default_value_t = 1024)]
    batch_kib: usize,
    /// Batch compression: none, lz4 or zstd.
    #[arg(long, default_value = "none", value_parser = ["none", "lz4", "zstd"])]
    compression: String,
    /// Segment size of the embedded broker's topic, in MiB (the broker's default: 1024).
    /// Smaller segments make reads from the start come from sealed segments, sent with
    /// `sendfile`; the active segment is read into memory.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4095))]
    segment_mib: Option<u64>,
}

#[derive(Debug, Args)]
struct E2eArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 20.0, conflicts_with = "messages")]
    duration: f64,
    /// Instead of a duration: records sent in the measured phase, over all producers.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    messages: Option<u64>,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// `start`: fill the topic, then read it all from offset 0 (mostly from disk). `tail`:
    /// consumers keep up with running producers (as `e2e`, reported as consume figures).
    #[arg(long, default_value = "start", value_parser = ["start", "tail"])]
    from: String,
    /// MiB written before reading from the start.
    #[arg(long, default_value_t = 2048)]
    prefill_mib: u64,
    /// Seconds measured with `--from tail` (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of warm-up with `--from tail`.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
}

impl ClientArgs {
    fn params(
        &self,
        duration_s: Option<f64>,
        messages: Option<u64>,
        warmup_s: f64,
    ) -> Result<e2e::ClientParams, String> {
        if self.record_bytes < e2e::STAMP_BYTES || self.record_bytes > (1 << 20) - 1024 {
            return Err(format!(
                "record-bytes must be {}..={}",
                e2e::STAMP_BYTES,
                (1 << 20) - 1024
            ));
        }
        if self.batch_kib == 0 || self.batch_kib > 16 << 10 {
            return Err("batch-kib must be 1..=16384".into());
        }
        if !(0.0..=10_000.0).contains(&self.linger_ms) {
            return Err("linger-ms must be 0..=10000".into());
        }
        let seconds = |s: f64| (0.0..=network::SECONDS_MAX).contains(&s);
        if !seconds(warmup_s) || duration_s.is_some_and(|d| !seconds(d) || d == 0.0) {
            return Err(format!(
                "duration must be positive and warmup not negative, both at most {} s",
                network::SECONDS_MAX
            ));
        }
        Ok(e2e::ClientParams {
            mode: self.brokers.is_none().then(|| self.mode.clone()),
            brokers: self.brokers.clone(),
            cluster: self.cluster,
            partitions: self.partitions,
            producers: self.producers,
            consumers: self.consumers,
            record_bytes: self.record_bytes,
            rate: self.rate,
            duration_s,
            messages,
            warmup_s,
            acks: self.acks.clone(),
            linger_ms: self.linger_ms,
            batch_bytes: self.batch_kib << 10,
            compression: self.compression.clone(),
            segment_mib: self.segment_mib,
            seed: self.workload.seed,
            prefill_mib: None,
        })
    }
}

#[derive(Debug, Args)]
struct ModesArgs {
    #[command(flatten)]
    common: Common,
    /// Seed for the record payloads.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Producers, each a `sluice_client::Producer` with its own connections.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=64))]
    producers: u32,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    partitions: u32,
    /// Producer batch size in bytes (the same in both modes).
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u64).range(1024..=16 << 20))]
    batch_bytes: u64,
    /// Producer linger in milliseconds (the same in both modes).
    #[arg(long, default_value_t = 1.0)]
    linger_ms: f64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Producer acks: none, leader or all.
    #[arg(long, default_value = "leader", value_parser = ["none", "leader", "all"])]
    acks: String,
    /// Total records per second of the paced runs.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    paced_rate: u64,
    /// Seconds measured per run (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of warm-up per run.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
}

#[derive(Debug, Args)]
struct FailoverArgs {
    /// Directory for the brokers' data (removed afterwards).
    #[arg(long, default_value = "./sluice-bench-data")]
    dir: PathBuf,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Clusters started, one kill each.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// The brokers' lease in ms; default: the broker's default.
    #[arg(long)]
    lease_ms: Option<u64>,
    /// The brokers' Raft election timeout in ms; default: the broker's default.
    #[arg(long)]
    election_timeout_ms: Option<u64>,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
}

#[derive(Debug, Args)]
struct CatchupArgs {
    #[command(flatten)]
    common: Common,
    /// MiB in the partition before the replica is added.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    fill_mib: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
}

#[derive(Debug, Args)]
struct HopArgs {
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Round trips measured.
    #[arg(long, default_value_t = 100_000)]
    round_trips: u64,
    /// Bytes forwarded per round trip (a produce batch).
    #[arg(long, default_value_t = 16 << 10)]
    batch_bytes: usize,
}

#[derive(Debug, Args)]
struct MetadataArgs {
    #[command(flatten)]
    common: Common,
    /// Brokers in the cluster (each a metadata node on its own thread and port).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=7))]
    brokers: u64,
    /// Topics created, one request after another.
    #[arg(long, default_value_t = 1000)]
    topics: u32,
    /// Partitions per topic.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Raft election timeout in milliseconds (a follower starts an election between 5/6 of it
    /// and all of it after the controller's last heartbeat).
    #[arg(long, default_value_t = 600)]
    election_timeout_ms: u64,
    /// Snapshot every this many Raft log entries.
    #[arg(long, default_value_t = 1000)]
    snapshot_logs: u64,
}

#[derive(Debug, Args)]
struct Common {
    /// Directory for benchmark data (must be on the disk under test; removed afterwards).
    #[arg(long, default_value = "./sluice-bench-data")]
    dir: PathBuf,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// MiB written and read by the probe that runs before the scenario (smaller is quicker and
    /// noisier).
    #[arg(long, default_value_t = PROBE_MIB, value_parser = clap::value_parser!(u64).range(1..))]
    probe_mib: u64,
}

/// Options of the scenarios that generate records.
#[derive(Debug, Args)]
struct Workload {
    /// Seed for the record payloads: the same seed writes the same bytes.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Also draw throughput over time and the latency percentile curve as an SVG to this file
    /// (name it like the JSON file, with `.svg`, for `report` to show it).
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ProbeArgs {
    #[command(flatten)]
    common: Common,
    /// MiB written and read by the disk probe.
    #[arg(long, default_value_t = PROBE_MIB)]
    disk_mib: u64,
}

#[derive(Debug, Args)]
struct StorageArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    workload: Workload,
    /// Shards (one partition each); default: the cores available.
    #[arg(long)]
    shards: Option<usize>,
    /// Concurrent appenders per partition.
    #[arg(long, default_value_t = 16)]
    appenders: usize,
    /// Appends each appender keeps in flight (waiting to be durable) at once. With closed-loop
    /// appenders, throughput is bytes in flight over latency: more in flight raises throughput
    /// until the disk saturates, then only adds queueing latency.
    #[arg(long, default_value_t = 12)]
    in_flight: usize,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 16)]
    batch_records: u32,
    /// MiB appended per partition.
    #[arg(long, default_value_t = 1024)]
    mib_per_shard: u64,
    /// Group-commit window in milliseconds (flush = interval).
    #[arg(long, default_value_t = 5)]
    flush_interval_ms: u64,
    /// Group-commit byte window in KiB: flush as soon as this much is waiting.
    #[arg(long, default_value_t = 1024)]
    flush_kib: u64,
    /// Segment size in MiB.
    #[arg(long, default_value_t = 128)]
    segment_mib: u64,
    /// Bytes per read request in the read phase, in KiB.
    #[arg(long, default_value_t = 1024)]
    read_kib: usize,
}

/// Writes the SVG chart of a run to `path`, if there is one: throughput over time from a
/// series of MB/s points `interval_s` apart, and the latency percentile curve.
fn write_plot(
    path: Option<&Path>,
    title: &str,
    series_mb_s: &[f64],
    interval_s: f64,
    latency: &Histogram<u64>,
) -> Result<(), String> {
    if let Some(path) = path {
        plot::write_svg(
            path,
            title,
            &plot::series_points(series_mb_s, interval_s),
            &plot::percentile_curve(latency),
        )
        .map_err(|e| format!("write {}: {e}", path.display()))?;
        println!("chart written to {}", path.display());
    }
    Ok(())
}

/// Runs the probe; `dsync_rate` paces its durable 4 KiB writes (a paced scenario's rate).
fn run_probe(
    dir: &std::path::Path,
    disk_mib: u64,
    dsync_rate: Option<u64>,
) -> Result<probe::ProbeResult, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let mut config = probe::ProbeConfig::quick(dir.to_path_buf());
    config.write_bytes = disk_mib << 20;
    config.read_bytes = disk_mib << 20;
    if let Some(rate) = dsync_rate {
        config.dsync_paced(rate);
    }
    eprintln!("probe: raw disk and loopback limits ({disk_mib} MiB) ...");
    probe::run(&config).map_err(|e| format!("probe: {e}"))
}

fn print_probe(p: &probe::ProbeResult) {
    println!("raw limits (same run, {}):", p.fs_type);
    println!(
        "  O_DIRECT write + fdatasync/MiB   {:>9.0} MB/s   (p99 {} us per MiB)",
        p.disk_write_fdatasync_mb_s, p.disk_write_fdatasync_p99_us
    );
    println!(
        "  O_DIRECT sequential read         {:>9.0} MB/s",
        p.disk_read_mb_s
    );
    println!(
        "  loopback TCP, one stream         {:>9.0} MB/s",
        p.tcp_loopback_mb_s
    );
    println!(
        "  O_DSYNC 4 KiB write, depth 1     p50 {} p99 {} p99.9 {} us ({} writes, {})",
        p.disk_dsync_4k_p50_us,
        p.disk_dsync_4k_p99_us,
        p.disk_dsync_4k_p999_us,
        p.disk_dsync_4k_writes,
        p.disk_dsync_4k_rate
            .map_or("back to back".to_string(), |r| format!("{r}/s"))
    );
    if let (Some(p99), Some(p999)) = (
        p.disk_dsync_4k_open_loop_p99_us,
        p.disk_dsync_4k_open_loop_p999_us,
    ) {
        println!(
            "  O_DSYNC 4 KiB write, from due time  p99 {p99} p99.9 {p999} us (max single write {} us)",
            p.disk_dsync_4k_max_us
        );
    }
}

fn storage(args: StorageArgs) -> Result<(), String> {
    let shards = args
        .shards
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if shards == 0
        || args.appenders == 0
        || args.in_flight == 0
        || args.batch_records == 0
        || args.mib_per_shard == 0
    {
        return Err(
            "shards, appenders, in-flight, batch-records and mib-per-shard must be positive".into(),
        );
    }
    let params = storage::StorageParams {
        shards,
        appenders_per_shard: args.appenders,
        in_flight: args.in_flight,
        record_bytes: args.record_bytes,
        records_per_batch: args.batch_records,
        bytes_per_shard: args.mib_per_shard << 20,
        flush_interval_ms: args.flush_interval_ms,
        flush_bytes: args.flush_kib << 10,
        segment_bytes: args.segment_mib << 20,
        write_buffer_bytes: ((args.flush_kib << 10) as usize * 2).max(8 << 20),
        read_bytes_max: args.read_kib << 10,
        seed: args.workload.seed,
    };
    let probe = run_probe(&args.common.dir, args.common.probe_mib, None)?;
    eprintln!(
        "storage: {} shard(s) x {} appenders x {} in flight, {} MiB each, {}-record batches of {} B records ...",
        params.shards,
        params.appenders_per_shard,
        params.in_flight,
        args.mib_per_shard,
        params.records_per_batch,
        params.record_bytes
    );
    let run = storage::run(
        &params,
        &args.common.dir.join("storage"),
        progress::stderr_is_terminal(),
    )?;
    let report = record::storage(params, probe, run.result);
    let (params, probe, result) = (&report.params, &report.probe, &report.result);
    let ratios = report.ratios.clone().unwrap_or_default();
    let shown = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
    if let Some(probe) = probe {
        print_probe(probe);
    }
    let l = &result.append_to_durable;
    println!(
        "storage (flush = interval {} ms / {} KiB):",
        params.flush_interval_ms, args.flush_kib
    );
    println!("  append   {:>9.0} MB/s  {:>10.0} records/s   {}x raw write   ({} fdatasyncs, {} segments)",
        result.append_mb_s, result.append_records_s, shown(ratios.append_vs_raw_write), result.fdatasyncs, result.segments);
    println!(
        "  append-to-durable latency us: p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {} mean {:.0}",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us, l.mean_us
    );
    println!(
        "  p99 / flush interval = {} (target <= 2)",
        shown(ratios.p99_vs_flush_interval)
    );
    println!(
        "  flushers busy: {:.0}% writing, {:.0}% in fdatasync; appends held by rolls {:.0}% (per shard, summed)",
        result.flush_write_share * 100.0,
        result.flush_sync_share * 100.0,
        result.roll_share * 100.0
    );
    println!(
        "  read     {:>9.0} MB/s   {}x raw read",
        result.read_mb_s,
        shown(ratios.read_vs_raw_read)
    );
    report.write(args.common.json.as_deref())?;
    let title = format!(
        "storage: {} shard(s) × {} appenders × {} in flight; append-to-durable latency (rev {})",
        params.shards, params.appenders_per_shard, params.in_flight, report.git_revision
    );
    write_plot(
        args.workload.plot.as_deref(),
        &title,
        &result.time_series_mb_s,
        result.time_series_interval_s,
        &run.append_to_durable,
    )
}

fn metadata(args: MetadataArgs) -> Result<(), String> {
    let params = metadata::MetadataParams {
        brokers: args.brokers,
        topics: args.topics,
        partitions: args.partitions,
        election_timeout_ms: args.election_timeout_ms,
        snapshot_logs: args.snapshot_logs,
    };
    eprintln!(
        "metadata: {} broker(s), {} topics of {} partitions ...",
        params.brokers, params.topics, params.partitions
    );
    let result = metadata::run(&params, &args.common.dir.join("metadata"))?;
    let l = &result.commit_latency;
    println!(
        "metadata ({} broker(s), election timeout {} ms):",
        params.brokers, params.election_timeout_ms
    );
    println!(
        "  {} topics x {} partitions in {:.2} s ({:.0} topics/s)",
        params.topics, params.partitions, result.create_seconds, result.topics_per_second
    );
    println!(
        "  create-topic commit latency us: p50 {} p90 {} p99 {} p99.9 {} max {} mean {:.0}",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
    );
    if let Some(failover) = result.failover_ms {
        println!(
            "  controller killed -> new controller served a creation in {failover:.0} ms ({:.2}x the election timeout)",
            failover / params.election_timeout_ms as f64
        );
    }
    record::metadata(params, result).write(args.common.json.as_deref())
}

fn group_scenario(args: GroupArgs) -> Result<(), String> {
    let params = group::GroupParams {
        mode: args.mode,
        partitions: args.partitions,
        members: args.members,
        session_timeout_ms: args.session_timeout_ms,
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        prefill_mib: args.prefill_mib,
        record_bytes: args.record_bytes as usize,
        readers: args.readers,
        committers: args.committers,
        commit_partitions: args.commit_partitions,
        commit_seconds: args.commit_seconds,
    };
    let result = group::run(&params, &args.dir.join("group"))?;
    println!(
        "consumer groups ({} partitions, session timeout {} ms, heartbeat every {} ms):",
        params.partitions, params.session_timeout_ms, params.heartbeat_interval_ms
    );
    println!(
        "  group of {} settled {:.0} ms after a join, {:.0} ms after a member died",
        params.members + 1,
        result.settle_after_join_ms,
        result.settle_after_kill_ms
    );
    println!(
        "  {} MiB read by one consumer at {:.0} MB/s, by a group of {} at {:.0} MB/s ({:.2}x)",
        params.prefill_mib,
        result.solo_consume_mb_s,
        params.readers,
        result.group_consume_mb_s,
        result.group_vs_solo
    );
    let l = &result.commit_latency;
    println!(
        "  {:.0} commits/s ({:.0} requests/s of {} partitions, {} committers); request us p50 {} p99 {} max {}",
        result.commits_per_second,
        result.commit_requests_per_second,
        params.commit_partitions,
        params.committers,
        l.p50_us,
        l.p99_us,
        l.max_us
    );
    record::group(params, result).write(args.json.as_deref())
}

fn hop(args: HopArgs) -> Result<(), String> {
    let params = hop::HopParams {
        round_trips: args.round_trips,
        batch_bytes: args.batch_bytes,
    };
    let result = hop::run(&params)?;
    let l = &result.round_trip;
    println!(
        "cross-shard hop ({} B batch out, 8 B reply back, shared channels between pinned shards):",
        params.batch_bytes
    );
    println!(
        "  round trip us: p50 {} p90 {} p99 {} p99.9 {} max {} mean {:.1}; {:.0} round trips/s",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us, result.round_trips_per_second
    );
    record::hop(params, result).write(args.json.as_deref())
}

fn produce(args: ProduceArgs) -> Result<(), String> {
    if args.partitions == 0
        || args.batch_records == 0
        || args.in_flight == 0
        || args.record_bytes < 8
    {
        return Err(
            "partitions, batch-records and in-flight must be positive, record-bytes at least 8"
                .into(),
        );
    }
    let seconds = |s: f64| (0.0..=network::SECONDS_MAX).contains(&s);
    if !(seconds(args.warmup) && seconds(args.duration)) || args.duration == 0.0 {
        return Err(format!(
            "duration must be positive and warmup not negative, both at most {} s",
            network::SECONDS_MAX
        ));
    }
    let params = network::NetworkParams {
        mode: args.mode.clone(),
        partitions: args.partitions,
        record_bytes: args.record_bytes,
        records_per_batch: args.batch_records,
        in_flight: args.in_flight,
        rate: args.rate,
        duration_s: args.messages.is_none().then_some(args.duration),
        messages: args.messages,
        warmup_s: args.warmup,
        tail_consumer: args.tail,
        read_back: !args.no_read_back,
        seed: args.workload.seed,
    };
    let probe = run_probe(&args.common.dir, args.common.probe_mib, None)?;
    eprintln!(
        "produce: --mode {}, {} partitions, {} x {} B records per request, {} in flight, {} ...",
        params.mode,
        params.partitions,
        params.records_per_batch,
        params.record_bytes,
        params.in_flight,
        params
            .rate
            .map_or("full speed".to_string(), |r| format!("{r} records/s"))
    );
    let run = network::run(
        &params,
        &args.common.dir.join("broker"),
        progress::stderr_is_terminal(),
    )?;
    print_probe(&probe);
    let result = &run.result;
    let l = &result.produce_to_ack;
    println!("produce (--mode {}):", params.mode);
    println!(
        "  {:.0} MB/s, {:.0} records/s = {:.2}x raw write ({} records in {:.1} s); broker CPU {:.1} s, bench CPU {:.1} s",
        result.produce_mb_s,
        result.produce_records_s,
        result.produce_mb_s / probe.disk_write_fdatasync_mb_s,
        result.records_sent,
        result.measured_s,
        result.broker_cpu_s,
        result.bench_cpu_s
    );
    println!(
        "  produce-to-ack us: p50 {} p90 {} p99 {} p99.9 {} max {} mean {:.0}",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
    );
    if let Some(e2e) = &result.produce_to_consume {
        println!(
            "  produce-to-consume us: p50 {} p90 {} p99 {} p99.9 {} max {} mean {:.0} ({} records consumed at the tail)",
            e2e.p50_us, e2e.p90_us, e2e.p99_us, e2e.p999_us, e2e.max_us, e2e.mean_us, result.tail_records
        );
    }
    if let Some(read) = result.read_back_mb_s {
        println!(
            "  read back from the start: {read:.0} MB/s = {:.2}x raw read",
            read / probe.disk_read_mb_s
        );
    }
    println!(
        "  broker RSS: {:.0} MB at start, {:.0} MB peak, {:.0} MB at end",
        result.broker_rss_start_mb, result.broker_rss_peak_mb, result.broker_rss_end_mb
    );
    let report = record::produce(params, probe, run.result);
    report.write(args.common.json.as_deref())?;
    let title = format!(
        "produce --mode {}, {}; produce-to-ack latency (rev {})",
        report.params.mode,
        report
            .params
            .rate
            .map_or("full speed".to_string(), |r| format!("{r} records/s")),
        report.git_revision
    );
    write_plot(
        args.workload.plot.as_deref(),
        &title,
        &report.result.time_series_mb_s,
        report.result.time_series_interval_s,
        &run.produce_to_ack,
    )
}

fn print_client(
    params: &e2e::ClientParams,
    probe: &probe::ProbeResult,
    result: &e2e::ClientResult,
    consume_only: bool,
) {
    print_probe(probe);
    let target = params.mode.as_deref().map_or_else(
        || format!("brokers {}", params.brokers.as_deref().unwrap_or("?")),
        |mode| format!("embedded broker --mode {mode}"),
    );
    println!(
        "{} ({target}; {} partitions, {} producers, {} consumers, {} B records, acks {}, linger {} ms, batch {} KiB, compression {}):",
        if consume_only { "consume" } else { "e2e" },
        params.partitions,
        params.producers,
        params.consumers,
        params.record_bytes,
        params.acks,
        params.linger_ms,
        params.batch_bytes >> 10,
        params.compression
    );
    if !consume_only {
        let l = &result.produce_to_ack;
        println!(
            "  produce: {:.0} MB/s, {:.0} records/s = {:.2}x raw write ({} records in {:.1} s)",
            result.produce_mb_s,
            result.produce_records_s,
            result.produce_mb_s / probe.disk_write_fdatasync_mb_s,
            result.records_acked,
            result.measured_s
        );
        println!(
            "  produce-to-ack us: p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {} mean {:.0}",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us, l.mean_us
        );
    }
    if params.consumers > 0 {
        println!(
            "  consume: {:.0} MB/s, {:.0} records/s = {:.2}x raw read ({} records)",
            result.consume_mb_s,
            result.consume_records_s,
            result.consume_mb_s / probe.disk_read_mb_s,
            result.records_consumed
        );
    }
    if let Some(l) = &result.produce_to_consume {
        println!(
            "  produce-to-consume us: p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {} mean {:.0}",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us, l.mean_us
        );
    }
    if let Some(l) = &result.broker_produce {
        println!(
            "  broker's own produce us (frame in -> response out): p50 {} p90 {} p99 {} p99.9 {} max {} ({} requests); p99 - probe O_DSYNC 4 KiB p99 = {} us",
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            l.count,
            l.p99_us as i64 - probe.disk_dsync_4k_p99_us as i64
        );
        if let Some(open_loop) = probe.disk_dsync_4k_open_loop_p99_us {
            println!(
                "  broker's own produce p99 - probe O_DSYNC 4 KiB p99 from due time = {} us",
                l.p99_us as i64 - open_loop as i64
            );
        }
    }
    if let Some(l) = &result.broker_flush_device {
        println!(
            "  broker's flush device us: p50 {} p90 {} p99 {} p99.9 {} max {} ({} flushes)",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
        );
    }
    if let Some(l) = &result.send_lateness {
        println!(
            "  send lateness us (the harness's pacing, inside both latencies): p50 {} p99 {} p99.9 {} max {}",
            l.p50_us, l.p99_us, l.p999_us, l.max_us
        );
    }
    println!(
        "  records acknowledged {}, consumed {}, duplicates {}",
        result.total_acked, result.total_consumed, result.duplicates
    );
    let cpu_per_gb = result
        .client_cpu_s_per_gb
        .map_or("-".to_string(), |c| format!("{c:.2}"));
    let broker = match (
        result.broker_cpu_s,
        result.broker_rss_start_mb,
        result.broker_rss_peak_mb,
    ) {
        (Some(cpu), Some(start), Some(peak)) => {
            format!("broker CPU {cpu:.1} s, RSS {start:.0} -> peak {peak:.0} MB; ")
        }
        _ => String::new(),
    };
    println!(
        "  {broker}client CPU {:.1} s = {cpu_per_gb} CPU-s per GB moved",
        result.bench_cpu_s
    );
}

fn e2e_scenario(args: E2eArgs) -> Result<(), String> {
    let params = args.client.params(
        args.messages.is_none().then_some(args.duration),
        args.messages,
        args.warmup,
    )?;
    if params.producers == 0 {
        return Err("e2e needs at least one producer".into());
    }
    let probe = run_probe(
        &args.client.common.dir,
        args.client.common.probe_mib,
        args.client.rate,
    )?;
    let run = e2e::run_e2e(
        &params,
        &args.client.common.dir.join("broker"),
        progress::stderr_is_terminal(),
    )?;
    print_client(&params, &probe, &run.result, false);
    let report = record::e2e(params, probe, run.result);
    report.write(args.client.common.json.as_deref())?;
    let title = format!(
        "e2e, {}; {} latency (rev {})",
        report
            .params
            .rate
            .map_or("full speed".to_string(), |r| format!("{r} records/s")),
        if report.params.consumers > 0 {
            "produce-to-consume"
        } else {
            "produce-to-ack"
        },
        report.git_revision
    );
    write_plot(
        args.client.workload.plot.as_deref(),
        &title,
        &report.result.time_series_mb_s,
        report.result.time_series_interval_s,
        &run.curve,
    )
}

fn modes(args: ModesArgs) -> Result<(), String> {
    if args.record_bytes < e2e::STAMP_BYTES || args.record_bytes as u64 > args.batch_bytes {
        return Err(format!(
            "record-bytes must be {}..=batch-bytes",
            e2e::STAMP_BYTES
        ));
    }
    let seconds = |s: f64| (0.0..=network::SECONDS_MAX).contains(&s);
    if !seconds(args.warmup) || !seconds(args.duration) || args.duration == 0.0 {
        return Err("duration must be positive and warmup not negative".into());
    }
    if !(0.0..=10_000.0).contains(&args.linger_ms) {
        return Err("linger-ms must be 0..=10000".into());
    }
    let params = modes::ModesParams {
        client: e2e::ClientParams {
            mode: None,
            brokers: None,
            cluster: None,
            partitions: args.partitions,
            producers: args.producers,
            consumers: 0,
            record_bytes: args.record_bytes,
            rate: None,
            duration_s: Some(args.duration),
            messages: None,
            warmup_s: args.warmup,
            acks: args.acks.clone(),
            linger_ms: args.linger_ms,
            batch_bytes: args.batch_bytes as usize,
            compression: "none".into(),
            segment_mib: None,
            seed: args.seed,
            prefill_mib: None,
        },
        paced_rate: args.paced_rate,
    };
    let probe = run_probe(
        &args.common.dir,
        args.common.probe_mib,
        Some(args.paced_rate),
    )?;
    print_probe(&probe);
    let result = modes::run(
        &params,
        &args.common.dir.join("brokers"),
        progress::stderr_is_terminal(),
    )?;
    let report = record::modes(params, probe, result);
    let r = &report.result;
    for (name, run) in [
        ("throughput mode, full speed", &r.throughput_full_speed),
        ("latency mode, full speed", &r.latency_full_speed),
        ("throughput mode, paced", &r.throughput_paced),
        ("latency mode, paced", &r.latency_paced),
    ] {
        let l = &run.produce_to_ack;
        println!(
            "{name}: {:.0} MB/s, {:.0} records/s; produce-to-ack us p50 {} p99 {} p99.9 {}; broker CPU {:.1} s",
            run.produce_mb_s,
            run.produce_records_s,
            l.p50_us,
            l.p99_us,
            l.p999_us,
            run.broker_cpu_s.unwrap_or(0.0)
        );
    }
    if let Some(ratios) = &report.ratios {
        println!(
            "throughput mode / latency mode at full speed: {}; latency mode p99 / throughput mode p99 paced: {}",
            ratios
                .full_speed_throughput_vs_latency
                .map_or("-".into(), |v| format!("{v:.2}x")),
            ratios
                .paced_p99_latency_vs_throughput
                .map_or("-".into(), |v| format!("{v:.2}"))
        );
    }
    report.write(args.common.json.as_deref())
}

fn consume(args: ConsumeArgs) -> Result<(), String> {
    let tail = args.from == "tail";
    let mut params = args.client.params(
        Some(args.duration),
        None,
        if tail { args.warmup } else { 0.0 },
    )?;
    if params.consumers == 0 {
        return Err("consume needs at least one consumer".into());
    }
    if tail && params.producers == 0 {
        return Err("consume --from tail needs at least one producer".into());
    }
    if !tail {
        params.duration_s = None;
        params.prefill_mib = Some(args.prefill_mib.max(1));
        params.producers = params.producers.max(1);
    }
    let probe = run_probe(
        &args.client.common.dir,
        args.client.common.probe_mib,
        args.client.rate,
    )?;
    let dir = args.client.common.dir.join("broker");
    let show = progress::stderr_is_terminal();
    let run = if tail {
        e2e::run_e2e(&params, &dir, show)?
    } else {
        e2e::run_consume(&params, &dir, show)?
    };
    print_client(&params, &probe, &run.result, !tail);
    let report = record::consume(params, probe, run.result);
    report.write(args.client.common.json.as_deref())?;
    let title = format!(
        "consume from the {} (rev {})",
        args.from, report.git_revision
    );
    write_plot(
        args.client.workload.plot.as_deref(),
        &title,
        &report.result.time_series_mb_s,
        report.result.time_series_interval_s,
        &run.curve,
    )
}

fn failover(args: FailoverArgs) -> Result<(), String> {
    if args.record_bytes == 0 || args.record_bytes > 1 << 20 {
        return Err("record-bytes must be 1..=1048576".into());
    }
    let defaults = sluice_broker::metadata::MetadataConfig::new(0, PathBuf::new(), String::new());
    let mut extra = Vec::new();
    if let Some(ms) = args.lease_ms {
        extra.extend(["--lease-ms".to_string(), ms.to_string()]);
    }
    if let Some(ms) = args.election_timeout_ms {
        extra.extend(["--election-timeout-ms".to_string(), ms.to_string()]);
    }
    let params = replication::FailoverParams {
        runs: args.runs,
        lease_ms: args.lease_ms.unwrap_or(defaults.lease_ms),
        election_timeout_ms: args
            .election_timeout_ms
            .unwrap_or(defaults.election_timeout_ms),
        defaults: args.lease_ms.is_none() && args.election_timeout_ms.is_none(),
        record_bytes: args.record_bytes,
    };
    eprintln!(
        "failover: {} runs, lease {} ms, election timeout {} ms ...",
        params.runs, params.lease_ms, params.election_timeout_ms
    );
    let result = replication::run_failover(&params, &args.dir, &extra)?;
    let _ = std::fs::remove_dir_all(&args.dir);
    println!(
        "failover (3 brokers, rf 3, acks=all; lease {} ms, election timeout {} ms{}):",
        params.lease_ms,
        params.election_timeout_ms,
        if params.defaults {
            ", the defaults"
        } else {
            ""
        }
    );
    println!(
        "  SIGKILL of the leader -> first acks=all acknowledgement: min {:.0} ms, median {:.0} ms, max {:.0} ms (target <= 2000)",
        result.unavailable_ms_min, result.unavailable_ms_median, result.unavailable_ms_max
    );
    println!(
        "  load average (1 min): {:.2} before, {:.2} after",
        result.load_avg_1m_start, result.load_avg_1m_end
    );
    record::failover(params, result).write(args.json.as_deref())
}

fn catchup(args: CatchupArgs) -> Result<(), String> {
    if args.record_bytes == 0 || args.record_bytes > (1 << 20) - 1024 {
        return Err("record-bytes must be 1..=1047552".into());
    }
    let params = replication::CatchupParams {
        fill_mib: args.fill_mib,
        record_bytes: args.record_bytes,
    };
    let probe = run_probe(&args.common.dir, args.common.probe_mib, None)?;
    eprintln!("catchup: filling {} MiB ...", params.fill_mib);
    let result = replication::run_catchup(&params, &args.common.dir.join("cluster"));
    let _ = std::fs::remove_dir_all(args.common.dir.join("cluster"));
    let result = result?;
    let report = record::catchup(params, probe, result);
    print_probe(report.probe.as_ref().expect("probe"));
    let r = &report.result;
    println!(
        "catchup: {:.0} MiB caught up in {:.2} s = {:.0} MB/s ({} x the raw read; target >= 0.5)",
        r.partition_bytes as f64 / (1 << 20) as f64,
        r.catch_up_s,
        r.catch_up_mb_s,
        report
            .ratios
            .as_ref()
            .and_then(|q| q.catch_up_vs_raw_read)
            .map_or("-".into(), |x| format!("{x:.2}"))
    );
    println!(
        "  fill {:.0} MB/s; load average (1 min): {:.2} before, {:.2} after",
        r.fill_mb_s, r.load_avg_1m_start, r.load_avg_1m_end
    );
    report.write(args.common.json.as_deref())
}

fn probe_only(args: ProbeArgs) -> Result<(), String> {
    let probe = run_probe(&args.common.dir, args.disk_mib, None)?;
    print_probe(&probe);
    let params = record::ProbeParams {
        disk_mib: args.disk_mib,
    };
    record::probe(params, probe).write(args.common.json.as_deref())
}

fn report(args: ReportArgs) -> Result<(), String> {
    let mut command = format!(
        "sluice-bench report --results {} --out {}",
        args.results.display(),
        args.out.display()
    );
    if let Some(intro) = &args.intro {
        command.push_str(&format!(" --intro {}", intro.display()));
    }
    let files = report::generate(&args.results, &args.out, args.intro.as_deref(), &command)
        .map_err(|e| e.to_string())?;
    println!(
        "{} written from {files} result file(s) in {}",
        args.out.display(),
        args.results.display()
    );
    Ok(())
}

/// A command-line error as one line: clap's message (and its "similar argument" tip, if any),
/// then which `--help` to read. `args` are the process's arguments, program name first.
fn usage_error_line(error: &clap::Error, args: &[String]) -> String {
    let rendered = error.render().to_string();
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let message = lines
        .next()
        .map(|first| first.strip_prefix("error: ").unwrap_or(first))
        .unwrap_or("invalid arguments");
    let mut line = message.to_string();
    for tip in lines.filter(|l| l.starts_with("tip:") && l.contains("similar")) {
        line.push_str(&format!(" ({tip})"));
    }
    // The scenario is the first argument that is not an option, if it names one.
    let command = Cli::command();
    let scenario = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .filter(|a| command.find_subcommand(a.as_str()).is_some());
    let help = match scenario {
        Some(scenario) => format!("sluice-bench {scenario} --help"),
        None => "sluice-bench --help".to_string(),
    };
    format!("sluice-bench: {line}; see `{help}`")
}

/// The parsed command line, or the exit code after printing help, the version, or a one-line
/// error (exit status 2).
fn parse_args() -> Result<Cli, ExitCode> {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Cli::try_parse_from(&args).map_err(|error| {
        let code = u8::try_from(error.exit_code()).unwrap_or(u8::MAX);
        match error.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = error.print();
            }
            _ => eprintln!("{}", usage_error_line(&error, &args)),
        }
        ExitCode::from(code)
    })
}

fn partitions_scenario(args: PartitionsArgs) -> Result<(), String> {
    let params = partitions::PartitionsParams {
        mode: args.mode,
        produce_partitions: args.produce_partitions,
        mib: args.mib,
        record_bytes: args.record_bytes as usize,
        keys: args.keys,
        idle_partitions: args
            .idle_partitions
            .into_iter()
            .filter(|&n| n > 0)
            .collect(),
        flush: args.flush,
        linger_ms: args.linger_ms,
        buffer_mib: args.buffer_mib,
        flush_interval_ms: args.flush_interval_ms,
        in_flight: args.in_flight as usize,
    };
    let result = partitions::run(&params, &args.dir)?;
    println!(
        "probe: {:.0} small direct writes/s (the device's ceiling for one write per flush)",
        result.disk_small_writes_per_s
    );
    for run in &result.produce {
        println!(
            "produce over {:>5} partitions: {:>7.1} MB/s, {:.2} of the first, {:.1} records a batch, {:.1} flushes a sync, {:.0} flushes/s, CPU s/GB client {:.2} broker {:.2} (load {:.1})",
            run.partitions, run.mb_s, run.ratio_to_first, run.records_per_batch, run.flushes_per_sync_round, run.flushes_per_s, run.client_cpu_s_per_gb, run.broker_cpu_s_per_gb, run.load_avg_1m
        );
    }
    for idle in &result.idle {
        println!(
            "idle RSS with {:>5} partitions: {:>7.1} MB, {:.2} of the first; CPU {:.1} % of a core (load {:.1})",
            idle.partitions, idle.rss_mb, idle.ratio_to_first, idle.cpu_percent, idle.load_avg_1m
        );
    }
    println!(
        "start-up of {} partitions: {:.1} s after a clean stop (load {:.1}), {:.1} s after SIGKILL (load {:.1})",
        result.startup_partitions,
        result.startup_after_clean_stop_s,
        result.startup_after_clean_stop_load_avg_1m,
        result.startup_after_kill_s,
        result.startup_after_kill_load_avg_1m
    );
    record::partitions(params, result).write(args.json.as_deref())
}

fn kafka(args: KafkaArgs) -> Result<(), String> {
    let params = kafka::KafkaParams {
        mib: args.mib,
        record_bytes: args.record_bytes as usize,
        partitions: args.partitions,
        mode: args.mode.clone(),
        kafka_client: "confluent-kafka 2.16.1 (librdkafka)".into(),
    };
    let result = kafka::run(&params, &args.dir, &args.venv);
    let _ = std::fs::remove_dir_all(&args.dir);
    let result = result?;
    eprintln!(
        "produce: native {:.0} MB/s, confluent-kafka {:.0} MB/s",
        result.native_produce_mb_s, result.kafka_produce_mb_s
    );
    eprintln!(
        "consume from disk: native {:.0} MB/s, confluent-kafka {:.0} MB/s",
        result.native_consume_mb_s, result.kafka_consume_mb_s
    );
    eprintln!(
        "broker CPU per GiB fetched: native {:.2} s, Kafka {:.2} s (Kafka / native {:.2}, target ≤ 1.10)",
        result.native_fetch_cpu_s_per_gib,
        result.kafka_fetch_cpu_s_per_gib,
        result.kafka_vs_native_fetch_cpu
    );
    record::kafka(params, result).write(args.json.as_deref())
}

fn scrape(args: ScrapeArgs) -> Result<(), String> {
    if !(args.duration > 0.0 && args.interval > 0.0) {
        return Err("--duration and --interval must be positive".into());
    }
    let params = scrape::ScrapeParams {
        partitions: args.partitions,
        scrapes: args.scrapes,
        duration_s: args.duration,
        interval_s: args.interval,
        record_bytes: args.record_bytes,
        mode: args.mode,
    };
    let result = scrape::run(&params, &args.dir)?;
    let ms = |us: u64| us as f64 / 1e3;
    println!(
        "scrape of {} partitions: {} series, {:.1} MiB",
        params.partitions,
        result.series,
        result.exposition_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "  idle:       p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(result.scrape_idle.p50_us),
        ms(result.scrape_idle.p99_us),
        ms(result.scrape_idle.max_us)
    );
    println!(
        "  under load: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(result.scrape_under_load.p50_us),
        ms(result.scrape_under_load.p99_us),
        ms(result.scrape_under_load.max_us)
    );
    println!(
        "produce: {:.0} records/s without scrapes, {:.0} with a scrape every {:.1} s",
        result.produce_records_per_second_unscraped,
        result.produce_records_per_second_scraped,
        params.interval_s
    );
    let broker = |v: Option<f64>| v.map_or("?".to_string(), |us| format!("<= {:.2} ms", us / 1e3));
    println!(
        "produce to ack: client p50 {:.2} ms, p99 {:.2} ms; broker (frame in to ack out, \
         bucket bound) p50 {}, p99 {} over {} requests",
        ms(result.client_produce_to_ack.p50_us),
        ms(result.client_produce_to_ack.p99_us),
        broker(result.broker_produce_p50_us),
        broker(result.broker_produce_p99_us),
        result.broker_produce_requests
    );
    record::scrape(params, result).write(args.json.as_deref())
}

fn main() -> ExitCode {
    // The embedded broker: this executable started again as `sluice-bench __broker <flags>`
    // (see `network::Broker`), running exactly what `sluice-broker <flags>` runs.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == network::BROKER_SUBCOMMAND)
    {
        let args = std::iter::once(std::ffi::OsString::from("sluice-broker"))
            .chain(std::env::args_os().skip(2))
            .collect();
        return sluice_broker::cli::run(args);
    }
    // Quiet unless RUST_LOG asks (e.g. RUST_LOG=sluice_client=debug).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let outcome = match cli.scenario {
        Some(Scenario::Probe(args)) => probe_only(args),
        Some(Scenario::Storage(args)) => storage(args),
        Some(Scenario::Metadata(args)) => metadata(args),
        Some(Scenario::Hop(args)) => hop(args),
        Some(Scenario::Group(args)) => group_scenario(args),
        Some(Scenario::Produce(args)) => produce(args),
        Some(Scenario::E2e(args)) => e2e_scenario(args),
        Some(Scenario::Modes(args)) => modes(args),
        Some(Scenario::Consume(args)) => consume(args),
        Some(Scenario::Failover(args)) => failover(args),
        Some(Scenario::Catchup(args)) => catchup(args),
        Some(Scenario::Scrape(args)) => scrape(args),
        Some(Scenario::Partitions(args)) => partitions_scenario(args),
        Some(Scenario::Kafka(args)) => kafka(args),
        Some(Scenario::Report(args)) => report(args),
        None => match Cli::parse_from(["sluice-bench", "e2e"]).scenario {
            Some(Scenario::E2e(args)) => e2e_scenario(args),
            _ => Err("the default scenario could not be parsed".into()),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sluice-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
