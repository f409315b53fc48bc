//! `sluice-bench`: Sluice's benchmark harness.
//!
//! Every scenario runs the machine-limits probe in the same run and reports its figures as
//! ratios to it, because absolute numbers on a shared 2-core VM mean little on their own.
//! Today's scenarios: `probe` (the raw limits alone) and `storage` (the partition log alone).

mod hop;
mod metadata;
mod network;
// Not yet called by a scenario (they will write `<json>.svg` charts next to their JSON).
#[cfg_attr(not(test), allow(dead_code))]
mod plot;
mod probe;
mod report;
mod storage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

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
    /// Regenerate the markdown results page from the JSON result files in a directory.
    Report(ReportArgs),
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
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
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
}

#[derive(Debug, Args)]
struct ProbeArgs {
    #[command(flatten)]
    common: Common,
    /// MiB written and read by the disk probe.
    #[arg(long, default_value_t = 512)]
    disk_mib: u64,
}

#[derive(Debug, Args)]
struct StorageArgs {
    #[command(flatten)]
    common: Common,
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
    /// Seed for record payloads.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Debug, Serialize)]
struct Report<P: Serialize, R: Serialize> {
    scenario: &'static str,
    git_revision: String,
    machine: Machine,
    params: P,
    probe: probe::ProbeResult,
    result: R,
    ratios: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    kernel: String,
}

fn machine() -> Machine {
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn write_json<T: Serialize>(path: &Option<PathBuf>, report: &T) -> Result<(), String> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

fn run_probe(dir: &std::path::Path, disk_mib: u64) -> Result<probe::ProbeResult, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let mut config = probe::ProbeConfig::quick(dir.to_path_buf());
    config.write_bytes = disk_mib << 20;
    config.read_bytes = disk_mib << 20;
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
        seed: args.seed,
    };
    let probe = run_probe(&args.common.dir, 512)?;
    eprintln!(
        "storage: {} shard(s) x {} appenders x {} in flight, {} MiB each, {}-record batches of {} B records ...",
        params.shards,
        params.appenders_per_shard,
        params.in_flight,
        args.mib_per_shard,
        params.records_per_batch,
        params.record_bytes
    );
    let result = storage::run(&params, &args.common.dir.join("storage"))?;
    let append_ratio = result.append_mb_s / probe.disk_write_fdatasync_mb_s;
    let read_ratio = result.read_mb_s / probe.disk_read_mb_s;
    let p99_ratio =
        result.append_to_durable.p99_us as f64 / (params.flush_interval_ms as f64 * 1000.0);
    print_probe(&probe);
    let l = &result.append_to_durable;
    println!(
        "storage (flush = interval {} ms / {} KiB):",
        params.flush_interval_ms, args.flush_kib
    );
    println!("  append   {:>9.0} MB/s  {:>10.0} records/s   {:.2}x raw write   ({} fdatasyncs, {} segments)",
        result.append_mb_s, result.append_records_s, append_ratio, result.fdatasyncs, result.segments);
    println!(
        "  append-to-durable latency us: p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {} mean {:.0}",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us, l.mean_us
    );
    println!("  p99 / flush interval = {p99_ratio:.2} (target <= 2)");
    println!(
        "  flushers busy: {:.0}% writing, {:.0}% in fdatasync; appends held by rolls {:.0}% (per shard, summed)",
        result.flush_write_share * 100.0,
        result.flush_sync_share * 100.0,
        result.roll_share * 100.0
    );
    println!(
        "  read     {:>9.0} MB/s   {:.2}x raw read",
        result.read_mb_s, read_ratio
    );
    let report = Report {
        scenario: "storage",
        git_revision: git_revision(),
        machine: machine(),
        params,
        probe,
        ratios: serde_json::json!({
            "append_vs_raw_write": append_ratio,
            "read_vs_raw_read": read_ratio,
            "p99_vs_flush_interval": p99_ratio,
        }),
        result,
    };
    write_json(&args.common.json, &report)
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
    let report = serde_json::json!({
        "scenario": "metadata",
        "git_revision": git_revision(),
        "machine": machine(),
        "params": params,
        "result": result,
    });
    write_json(&args.common.json, &report)
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
    let report = serde_json::json!({
        "scenario": "hop",
        "git_revision": git_revision(),
        "machine": machine(),
        "params": params,
        "result": result,
    });
    write_json(&args.json, &report)
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
    let params = network::NetworkParams {
        mode: args.mode.clone(),
        partitions: args.partitions,
        record_bytes: args.record_bytes,
        records_per_batch: args.batch_records,
        in_flight: args.in_flight,
        rate: args.rate,
        duration_s: args.duration,
        warmup_s: args.warmup,
        tail_consumer: args.tail,
        read_back: !args.no_read_back,
    };
    let probe = run_probe(&args.common.dir, 512)?;
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
    let result = network::run(&params, &args.common.dir.join("broker"))?;
    print_probe(&probe);
    let l = &result.produce_to_ack;
    println!("produce (--mode {}):", params.mode);
    println!(
        "  {:.0} MB/s, {:.0} records/s = {:.2}x raw write; broker CPU {:.1} s, bench CPU {:.1} s",
        result.produce_mb_s,
        result.produce_records_s,
        result.produce_mb_s / probe.disk_write_fdatasync_mb_s,
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
    let report = serde_json::json!({
        "scenario": "produce",
        "git_revision": git_revision(),
        "machine": machine(),
        "params": params,
        "probe": probe,
        "result": result,
    });
    write_json(&args.common.json, &report)
}

fn probe_only(args: ProbeArgs) -> Result<(), String> {
    let probe = run_probe(&args.common.dir, args.disk_mib)?;
    print_probe(&probe);
    let report = Report {
        scenario: "probe",
        git_revision: git_revision(),
        machine: machine(),
        params: serde_json::json!({ "disk_mib": args.disk_mib }),
        probe,
        result: serde_json::Value::Null,
        ratios: serde_json::Value::Null,
    };
    write_json(&args.common.json, &report)
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.scenario {
        Some(Scenario::Probe(args)) => probe_only(args),
        Some(Scenario::Storage(args)) => storage(args),
        Some(Scenario::Metadata(args)) => metadata(args),
        Some(Scenario::Hop(args)) => hop(args),
        Some(Scenario::Produce(args)) => produce(args),
        Some(Scenario::Report(args)) => report(args),
        None => match Cli::parse_from(["sluice-bench", "storage"]).scenario {
            Some(Scenario::Storage(args)) => storage(args),
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
