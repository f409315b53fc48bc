//! The `storage` scenario: the partition log alone, no network.
//!
//! One partition per shard (one glommio executor pinned per core), several concurrent appenders
//! per partition appending batches of 1 KiB records with `append_durable`, then a sequential read
//! of everything back from disk after a reopen (so no byte comes from the tail cache).
//! Append-to-durable latency goes into an hdrhistogram per shard; the histograms are merged.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use glommio::Placement;
use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_broker::storage::{FlushPolicy, LogConfig, LogStats, PartitionLog};
use sluice_protocol::{BatchBuilder, BatchOptions};

/// Parameters of one storage run.
#[derive(Debug, Clone, Serialize)]
pub struct StorageParams {
    pub shards: usize,
    pub appenders_per_shard: usize,
    /// Appends each appender keeps waiting for durability at once (pipelining, as a producer
    /// with several requests in flight does).
    pub in_flight: usize,
    pub record_bytes: usize,
    pub records_per_batch: u32,
    pub bytes_per_shard: u64,
    pub flush_interval_ms: u64,
    pub flush_bytes: u64,
    pub segment_bytes: u64,
    pub write_buffer_bytes: usize,
    pub read_bytes_max: usize,
    pub seed: u64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StorageResult {
    pub bytes_written: u64,
    pub records_written: u64,
    pub batches_written: u64,
    pub write_seconds: f64,
    pub append_mb_s: f64,
    pub append_records_s: f64,
    pub append_to_durable: Latency,
    pub fdatasyncs: u64,
    /// Share of the write phase the flushers spent in DMA writes and in fdatasync (summed over
    /// shards, so up to `shards`).
    pub flush_write_share: f64,
    pub flush_sync_share: f64,
    /// Share of the write phase appends were held by segment rolls (summed over shards).
    pub roll_share: f64,
    pub device_bytes_written: u64,
    pub segments: usize,
    pub bytes_read: u64,
    pub read_seconds: f64,
    pub read_mb_s: f64,
}

struct ShardOutcome {
    histogram: Histogram<u64>,
    bytes: u64,
    records: u64,
    batches: u64,
    write_seconds: f64,
    stats: LogStats,
    segments: usize,
    bytes_read: u64,
    read_seconds: f64,
}

fn log_config(params: &StorageParams) -> LogConfig {
    LogConfig {
        segment_bytes_max: params.segment_bytes,
        segment_age_max: None,
        retention_ms: None,
        retention_bytes: None,
        flush: FlushPolicy::Interval {
            interval: Duration::from_millis(params.flush_interval_ms),
            bytes: params.flush_bytes,
        },
        batch_bytes_max: 4 << 20,
        write_buffer_bytes: params.write_buffer_bytes,
        ..LogConfig::default()
    }
}

/// A batch of records filled from a seeded generator (xorshift), so data is not trivially
/// compressible and differs between appenders.
fn make_batch(params: &StorageParams, stream: u64) -> Vec<u8> {
    let mut state = params.seed ^ (stream.wrapping_add(1)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut value = vec![0u8; params.record_bytes];
    let mut builder = BatchBuilder::with_capacity(
        BatchOptions::default(),
        (params.record_bytes + 32) * params.records_per_batch as usize,
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for _ in 0..params.records_per_batch {
        for chunk in value.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        builder.push(now_ms, None, Some(&value), &[]);
    }
    builder.finish()
}

async fn run_shard(
    params: StorageParams,
    dir: PathBuf,
    shard: usize,
) -> Result<ShardOutcome, String> {
    let config = log_config(&params);
    let (log, _) = PartitionLog::open(&dir, config.clone())
        .await
        .map_err(|e| format!("open {}: {e}", dir.display()))?;
    let batch_bytes = make_batch(&params, 0).len() as u64;
    let batches_total = params.bytes_per_shard.div_ceil(batch_bytes);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for appender in 0..params.appenders_per_shard {
        let log = log.clone();
        let batch = make_batch(&params, (shard * 1000 + appender) as u64);
        let share = batches_total / params.appenders_per_shard as u64
            + u64::from((appender as u64) < batches_total % params.appenders_per_shard as u64);
        let in_flight = params.in_flight.max(1);
        tasks.push(glommio::spawn_local(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
            let mut pending = std::collections::VecDeque::with_capacity(in_flight);
            for _ in 0..share {
                let t0 = Instant::now();
                let appended = log.append(&batch, 0).await.map_err(|e| e.to_string())?;
                pending.push_back((t0, appended));
                if pending.len() >= in_flight {
                    if let Some((t0, appended)) = pending.pop_front() {
                        log.wait_durable(appended)
                            .await
                            .map_err(|e| e.to_string())?;
                        let _ = histogram.record((t0.elapsed().as_micros() as u64).max(1));
                    }
                }
            }
            while let Some((t0, appended)) = pending.pop_front() {
                log.wait_durable(appended)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = histogram.record((t0.elapsed().as_micros() as u64).max(1));
            }
            Ok::<_, String>(histogram)
        }));
    }
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    for task in tasks {
        histogram.add(task.await?).map_err(|e| e.to_string())?;
    }
    let write_seconds = started.elapsed().as_secs_f64();
    let stats = log.stats();
    let end = log.next_offset();
    let segments = log.segment_count();
    log.close().await.map_err(|e| e.to_string())?;

    // Read back from disk: a fresh open has an empty tail cache.
    let (log, _) = PartitionLog::open(&dir, config)
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut offset = 0;
    let mut bytes_read = 0u64;
    while offset < end {
        let read = log
            .read(offset, params.read_bytes_max)
            .await
            .map_err(|e| e.to_string())?;
        for chunk in &read.chunks {
            let bytes = chunk.as_bytes();
            bytes_read += bytes.len() as u64;
            // Walk the headers (no CRC: the log checked it) to find the next offset.
            let mut at = 0;
            while at < bytes.len() {
                let header =
                    sluice_protocol::BatchHeader::parse(&bytes[at..]).map_err(|e| e.to_string())?;
                offset = header.next_offset();
                at += header.batch_len as usize;
            }
        }
        if read.is_empty() {
            return Err(format!(
                "read at {offset} returned nothing before the end {end}"
            ));
        }
    }
    let read_seconds = started.elapsed().as_secs_f64();
    log.close().await.map_err(|e| e.to_string())?;
    let records = end;
    Ok(ShardOutcome {
        histogram,
        bytes: batches_total * batch_bytes,
        records,
        batches: batches_total,
        write_seconds,
        stats,
        segments,
        bytes_read,
        read_seconds,
    })
}

/// Runs the scenario in `root` (one sub-directory per shard, removed afterwards).
pub fn run(params: &StorageParams, root: &Path) -> Result<StorageResult, String> {
    let mut handles = Vec::new();
    for shard in 0..params.shards {
        let params = params.clone();
        let dir = root.join(format!("shard-{shard}")).join("bench-0");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let handle = sluice_broker::shard::executor_builder(
            Placement::Fixed(shard % cpus),
            &format!("shard-{shard}"),
        )
        .spawn(move || async move { run_shard(params, dir, shard).await })
        .map_err(|e| format!("start shard {shard}: {e}"))?;
        handles.push(handle);
    }
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(handle.join().map_err(|e| format!("shard thread: {e}"))??);
    }
    let _ = std::fs::remove_dir_all(root);
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut result = StorageResult {
        bytes_written: 0,
        records_written: 0,
        batches_written: 0,
        write_seconds: 0.0,
        append_mb_s: 0.0,
        append_records_s: 0.0,
        append_to_durable: Latency::default(),
        fdatasyncs: 0,
        flush_write_share: 0.0,
        flush_sync_share: 0.0,
        roll_share: 0.0,
        device_bytes_written: 0,
        segments: 0,
        bytes_read: 0,
        read_seconds: 0.0,
        read_mb_s: 0.0,
    };
    for outcome in &outcomes {
        histogram
            .add(&outcome.histogram)
            .map_err(|e| e.to_string())?;
        result.bytes_written += outcome.bytes;
        result.records_written += outcome.records;
        result.batches_written += outcome.batches;
        result.write_seconds = result.write_seconds.max(outcome.write_seconds);
        result.fdatasyncs += outcome.stats.syncs;
        result.flush_write_share +=
            outcome.stats.write_us as f64 / 1e6 / outcome.write_seconds.max(1e-9);
        result.roll_share += outcome.stats.roll_us as f64 / 1e6 / outcome.write_seconds.max(1e-9);
        result.flush_sync_share +=
            outcome.stats.sync_us as f64 / 1e6 / outcome.write_seconds.max(1e-9);
        result.device_bytes_written += outcome.stats.bytes_written;
        result.segments += outcome.segments;
        result.bytes_read += outcome.bytes_read;
        result.read_seconds = result.read_seconds.max(outcome.read_seconds);
    }
    result.append_mb_s = result.bytes_written as f64 / 1e6 / result.write_seconds.max(1e-9);
    result.append_records_s = result.records_written as f64 / result.write_seconds.max(1e-9);
    result.read_mb_s = result.bytes_read as f64 / 1e6 / result.read_seconds.max(1e-9);
    result.append_to_durable = Latency::from_histogram(&histogram);
    if result.bytes_read != result.bytes_written {
        return Err(format!(
            "read back {} bytes but wrote {}",
            result.bytes_read, result.bytes_written
        ));
    }
    Ok(result)
}
