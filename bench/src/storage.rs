//! The `storage` scenario: the partition log alone, no network.
//!
//! One partition per shard (one glommio executor pinned per core), several concurrent appenders
//! per partition appending batches of 1 KiB records with `append_durable`, then a sequential read
//! of everything back from disk after a reopen (so no byte comes from the tail cache).
//! Append-to-durable latency goes into an hdrhistogram per shard; the histograms are merged and
//! kept for the percentile curve. Each shard also counts its durable bytes on a [`Meter`] of its
//! own, which a monitor thread samples for the throughput series and the progress line.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use glommio::Placement;
use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_broker::storage::{FlushPolicy, LogConfig, LogStats, PartitionLog};
use sluice_protocol::{BatchBuilder, BatchOptions};

use crate::pace::latency_micros;
use crate::progress::{Goal, Meter, Monitor, MonitorConfig};
use crate::rng::SplitMix64;

/// The storage scenario's throughput series has a point every this often: a default run takes
/// only a second or two.
pub const SERIES_INTERVAL: Duration = Duration::from_millis(100);
/// Latency histograms cover 1 µs to 60 s at 3 significant figures.
pub const LATENCY_MAX_US: u64 = 60_000_000;
const LATENCY_SIGNIFICANT_FIGURES: u8 = 3;

/// An empty latency histogram in microseconds, as every scenario records them.
pub fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGNIFICANT_FIGURES)
        .map_err(|e| e.to_string())
}

/// Parameters of one storage run.
#[derive(Debug, Clone, Default, Serialize)]
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
    /// Seeds the record payloads (`--seed`).
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

#[derive(Debug, Clone, Default, Serialize)]
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
    /// Durable MB/s over each `time_series_interval_s` of the write phase.
    pub time_series_mb_s: Vec<f64>,
    pub time_series_interval_s: f64,
}

/// A finished run: the figures, and the merged append-to-durable histogram for the percentile
/// curve.
#[derive(Debug)]
pub struct StorageRun {
    pub result: StorageResult,
    pub append_to_durable: Histogram<u64>,
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

/// A batch of records filled from the seeded generator, so data is not trivially compressible
/// and differs between appenders, and the same seed gives the same bytes.
fn make_batch(params: &StorageParams, stream: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(params.seed, stream);
    let mut value = vec![0u8; params.record_bytes];
    let mut builder = BatchBuilder::with_capacity(
        BatchOptions::default(),
        (params.record_bytes + 32) * params.records_per_batch as usize,
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for _ in 0..params.records_per_batch {
        rng.fill(&mut value);
        builder.push(now_ms, None, Some(&value), &[]);
    }
    builder.finish()
}

async fn run_shard(
    params: StorageParams,
    dir: PathBuf,
    shard: usize,
    meter: Arc<[Meter]>,
    opened: Arc<Barrier>,
) -> Result<ShardOutcome, String> {
    let config = log_config(&params);
    let log = PartitionLog::open(&dir, config.clone()).await;
    // Every shard (and the monitor) starts the write phase together, once all logs are open;
    // a shard that failed to open still arrives, so no one waits forever.
    opened.wait();
    let (log, _) = log.map_err(|e| format!("open {}: {e}", dir.display()))?;
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
        let meter = Arc::clone(&meter);
        let records = u64::from(params.records_per_batch);
        tasks.push(glommio::spawn_local(async move {
            let meter = &meter[shard];
            let mut histogram = new_histogram()?;
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
                        let _ = histogram.record(latency_micros(t0, Instant::now()));
                        meter.add(records, batch_bytes);
                    }
                }
            }
            while let Some((t0, appended)) = pending.pop_front() {
                log.wait_durable(appended)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = histogram.record(latency_micros(t0, Instant::now()));
                meter.add(records, batch_bytes);
            }
            Ok::<_, String>(histogram)
        }));
    }
    let mut histogram = new_histogram()?;
    for task in tasks {
        histogram.add(task.await?).map_err(|e| e.to_string())?;
    }
    let write_seconds = started.elapsed().as_secs_f64();
    meter[shard].finish();
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

/// Runs the scenario in `root` (one sub-directory per shard, removed afterwards); with
/// `show_progress`, a progress line on stderr during the write phase.
pub fn run(params: &StorageParams, root: &Path, show_progress: bool) -> Result<StorageRun, String> {
    let meters: Arc<[Meter]> = (0..params.shards).map(|_| Meter::default()).collect();
    let batch_bytes = make_batch(params, 0).len() as u64;
    let bytes_total =
        params.bytes_per_shard.div_ceil(batch_bytes.max(1)) * batch_bytes * params.shards as u64;
    let opened = Arc::new(Barrier::new(params.shards + 1));
    let mut handles = Vec::new();
    for shard in 0..params.shards {
        let params = params.clone();
        let meters = Arc::clone(&meters);
        let opened = Arc::clone(&opened);
        let dir = root.join(format!("shard-{shard}")).join("bench-0");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let handle = sluice_broker::shard::spawn_executor(
            sluice_broker::shard::executor_builder(Placement::Fixed(shard % cpus)),
            &format!("shard-{shard}"),
            move || async move { run_shard(params, dir, shard, meters, opened).await },
        )
        .map_err(|e| format!("start shard {shard}: {e}"))?;
        handles.push(handle);
    }
    opened.wait();
    let monitor = Monitor::start(
        MonitorConfig {
            label: "storage".into(),
            goal: Goal::Bytes(bytes_total),
            measure_from: Instant::now(),
            warmup: Duration::ZERO,
            series_interval: SERIES_INTERVAL,
            show: show_progress,
        },
        {
            let meters = Arc::clone(&meters);
            move || Meter::sum(&meters)
        },
    )?;
    let mut outcomes = Vec::new();
    let mut failure = None;
    for handle in handles {
        match handle.join().map_err(|e| format!("shard thread: {e}")) {
            Ok(Ok(outcome)) => outcomes.push(outcome),
            Ok(Err(e)) | Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    // A failed shard never finishes its meter: stop the monitor ourselves.
    let series = monitor.finish();
    let _ = std::fs::remove_dir_all(root);
    if let Some(e) = failure {
        return Err(e);
    }
    let mut histogram = new_histogram()?;
    let mut result = StorageResult {
        time_series_mb_s: series,
        time_series_interval_s: SERIES_INTERVAL.as_secs_f64(),
        ..StorageResult::default()
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
    Ok(StorageRun {
        result,
        append_to_durable: histogram,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_of(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = new_histogram().unwrap();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    fn assert_ordered(l: &Latency) {
        let chain = [
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us,
        ];
        assert!(chain.windows(2).all(|w| w[0] <= w[1]), "{l:?}");
    }

    #[test]
    fn percentiles_of_a_uniform_distribution_are_hdrhistograms() {
        // 1..=100,000 µs, once each.
        let h = histogram_of(1..=100_000);
        let l = Latency::from_histogram(&h);
        assert_eq!(l.count, 100_000);
        assert_ordered(&l);
        for (field, quantile) in [
            (l.p50_us, 0.5),
            (l.p90_us, 0.9),
            (l.p99_us, 0.99),
            (l.p999_us, 0.999),
            (l.p9999_us, 0.9999),
        ] {
            assert_eq!(field, h.value_at_quantile(quantile), "q{quantile}");
            // And hdrhistogram's value is the true one to its 3 significant figures.
            let exact = quantile * 100_000.0;
            assert!(
                (field as f64 - exact).abs() <= exact * 1e-3,
                "q{quantile}: {field} vs {exact}"
            );
        }
        assert_eq!(l.max_us, h.max());
        assert_eq!(l.mean_us, h.mean());
        assert!(
            (l.mean_us - 50_000.5).abs() <= 50_000.5 * 1e-3,
            "{}",
            l.mean_us
        );
    }

    #[test]
    fn mean_and_percentiles_of_a_small_known_set_are_exact() {
        // Below 2048 µs every value has a bucket of its own: no rounding at all.
        let l = Latency::from_histogram(&histogram_of([1, 2, 3, 4, 10]));
        assert_eq!(l.count, 5);
        assert_eq!(l.mean_us, 4.0);
        assert_eq!(l.p50_us, 3);
        assert_eq!(l.p90_us, 10);
        assert_eq!(l.max_us, 10);
        assert_ordered(&l);

        // A tail: 990 fast samples, 9 slow, 1 very slow.
        let mut values = vec![100; 990];
        values.extend([1000; 9]);
        values.push(2000);
        let l = Latency::from_histogram(&histogram_of(values));
        assert_eq!(l.count, 1000);
        assert_eq!((l.p50_us, l.p90_us, l.p99_us), (100, 100, 100));
        assert_eq!((l.p999_us, l.p9999_us, l.max_us), (1000, 2000, 2000));
        assert_eq!(l.mean_us, (990.0 * 100.0 + 9.0 * 1000.0 + 2000.0) / 1000.0);
        assert_ordered(&l);
    }

    #[test]
    fn a_single_sample_and_an_empty_histogram() {
        let one = Latency::from_histogram(&histogram_of([1234]));
        assert_eq!(one.count, 1);
        assert_eq!(
            [
                one.p50_us,
                one.p90_us,
                one.p99_us,
                one.p999_us,
                one.p9999_us,
                one.max_us
            ],
            [1234; 6]
        );
        assert_eq!(one.mean_us, 1234.0);
        let none = Latency::from_histogram(&new_histogram().unwrap());
        assert_eq!(none.count, 0);
        assert_eq!(none.max_us, 0);
        assert_eq!(none.mean_us, 0.0);
        assert_ordered(&none);
    }

    #[test]
    fn large_values_keep_three_significant_figures() {
        // Up to the histogram's 60 s bound.
        let l = Latency::from_histogram(&histogram_of([5_000_000, 59_000_000]));
        assert_ordered(&l);
        assert!(l.p50_us.abs_diff(5_000_000) <= 5_000, "{l:?}");
        assert!(l.max_us.abs_diff(59_000_000) <= 59_000, "{l:?}");
        assert!(new_histogram().unwrap().record(LATENCY_MAX_US * 2).is_err());
    }

    #[test]
    fn batches_are_seeded() {
        let params = StorageParams {
            record_bytes: 100,
            records_per_batch: 4,
            seed: 1,
            ..StorageParams::default()
        };
        // Timestamps differ between calls; compare the records' values, which follow the header.
        let values = |params: &StorageParams, stream| {
            make_batch(params, stream)[sluice_protocol::BATCH_HEADER_BYTES..].to_vec()
        };
        let a = values(&params, 3);
        assert_eq!(a, values(&params, 3));
        assert_ne!(a, values(&params, 4));
        let reseeded = StorageParams {
            seed: 2,
            ..params.clone()
        };
        assert_ne!(a, values(&reseeded, 3));
    }
}
