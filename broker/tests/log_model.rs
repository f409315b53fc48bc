//! Model-based test of the partition log: proptest draws sequences of operations (appends,
//! concurrent appends, reads, truncations, reopens, retention, time lookups, flushes) and runs
//! them against a `PartitionLog` and a plain in-memory model (the list of stamped batches the
//! log should hold), checking after every step that the two agree.
//!
//! The seed is fixed, so a run is reproducible; `PROPTEST_RNG_SEED` picks another one and
//! `PROPTEST_CASES` raises the number of cases (default 24). A failure reports the seed and
//! the shrunk sequence of operations.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{batch, run, stamped, test_dir};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed, TestCaseError, TestRunner};
use sluice_broker::storage::{FlushPolicy, LogConfig, OffsetSpec, PartitionLog, StorageError};
use sluice_protocol::BatchIter;

const DEFAULT_SEED: u64 = 0x5105_1ce0_0d15_ea5e;
const DEFAULT_CASES: u32 = 24;
const SEGMENT_BYTES: u64 = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Always,
    Interval,
    Never,
}

impl Policy {
    fn flush(self) -> FlushPolicy {
        match self {
            Policy::Always => FlushPolicy::Always,
            Policy::Interval => FlushPolicy::Interval {
                interval: Duration::from_millis(1),
                bytes: 16 << 10,
            },
            Policy::Never => FlushPolicy::Never,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// One batch; `durable` waits for its flush.
    Append {
        records: u32,
        value_len: usize,
        ts_step: i64,
        durable: bool,
    },
    /// Batches appended by concurrent tasks, each waiting for durability, while another task
    /// reads (at `log_start + (hwm - log_start) * at / 1000`, with `max_bytes`).
    AppendMany {
        batches: Vec<(u32, usize)>,
        reads: Vec<(u16, usize)>,
    },
    /// A read at `log_start + (hwm - log_start) * at / 1000`.
    Read {
        at: u16,
        max_bytes: usize,
    },
    /// `truncate_to(log_start + (end - log_start) * at / 1000)`.
    Truncate {
        at: u16,
    },
    Reopen,
    /// Sets `retention_bytes` (reopening the log if it changes) and enforces it.
    Retention {
        limit: u64,
    },
    /// A time lookup near the timestamp of one of the readable records.
    ListOffsetTime {
        pick: u16,
        delta: i64,
    },
    Flush,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1u32..=5, 0usize..3000, -3i64..20, any::<bool>()).prop_map(
            |(records, value_len, ts_step, durable)| Op::Append {
                records,
                value_len,
                ts_step,
                durable
            }
        ),
        2 => (
            prop::collection::vec((1u32..=5, 0usize..3000), 2..6),
            prop::collection::vec((0u16..=1000, 1usize..40_000), 0..4)
        )
            .prop_map(|(batches, reads)| Op::AppendMany { batches, reads }),
        4 => (0u16..=1000, 1usize..40_000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => (0u16..=1000).prop_map(|at| Op::Truncate { at }),
        1 => Just(Op::Reopen),
        1 => prop_oneof![Just(0u64), Just(8 << 10), Just(24 << 10), Just(64 << 10)]
            .prop_map(|limit| Op::Retention { limit }),
        2 => (0u16..=1000, -2i64..=2).prop_map(|(pick, delta)| Op::ListOffsetTime { pick, delta }),
        1 => Just(Op::Flush),
    ]
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::Always),
        Just(Policy::Interval),
        Just(Policy::Never)
    ]
}

fn config(policy: Policy, retention_bytes: Option<u64>) -> LogConfig {
    LogConfig {
        segment_bytes_max: SEGMENT_BYTES,
        segment_age_max: None,
        retention_ms: None,
        retention_bytes,
        flush: policy.flush(),
        batch_bytes_max: 16 << 10,
        index_interval_bytes: 1024,
        write_buffer_bytes: 24 << 10,
        cache_bytes_max: 32 << 10,
        ..LogConfig::default()
    }
}

/// A batch as the log should hold it.
#[derive(Debug, Clone)]
struct Expected {
    base: u64,
    next: u64,
    bytes: Vec<u8>,
    timestamps: Vec<i64>,
    max_timestamp: i64,
}

/// What the log should hold: its batches from the log start, in order.
#[derive(Debug)]
struct Model {
    batches: Vec<Expected>,
    log_start: u64,
    /// The offset the next append gets.
    end: u64,
    /// The high watermark may not fall below this (until a truncation).
    durable_floor: u64,
    next_tag: u64,
    clock: i64,
    epoch: u32,
}

impl Model {
    fn size_bytes(&self) -> u64 {
        self.batches.iter().map(|b| b.bytes.len() as u64).sum()
    }

    /// Index of the batch holding `offset`.
    fn batch_at(&self, offset: u64) -> Option<usize> {
        let at = self.batches.partition_point(|b| b.next <= offset);
        (at < self.batches.len() && self.batches[at].base <= offset).then_some(at)
    }

    fn is_boundary(&self, offset: u64) -> bool {
        offset == self.log_start
            || offset == self.end
            || self
                .batch_at(offset)
                .is_some_and(|i| self.batches[i].base == offset)
    }

    /// The answer of a time lookup when the log is readable up to `hwm`.
    fn offset_for_time(&self, ts: i64, hwm: u64) -> Option<u64> {
        self.batches
            .iter()
            .take_while(|b| b.next <= hwm)
            .find(|b| b.max_timestamp >= ts)
            .map(|b| {
                let i = b.timestamps.iter().position(|&t| t >= ts).unwrap_or(0);
                b.base + i as u64
            })
    }

    fn push(&mut self, base: u64, last: u64, raw: Vec<u8>, timestamps: Vec<i64>) -> Result<()> {
        check(
            base == self.end,
            format!("append got offset {base}, the model's end is {}", self.end),
        )?;
        check(
            last + 1 - base == timestamps.len() as u64,
            "offsets assigned do not match the record count",
        )?;
        let max_timestamp = timestamps.iter().copied().max().unwrap_or(i64::MIN);
        self.batches.push(Expected {
            base,
            next: last + 1,
            bytes: stamped(raw, base, self.epoch),
            timestamps,
            max_timestamp,
        });
        self.end = last + 1;
        count(&COVERAGE.appends, 1);
        Ok(())
    }

    /// A new batch with a unique tag and the model clock's timestamps.
    fn make(&mut self, records: u32, value_len: usize, ts_step: i64) -> (Vec<u8>, Vec<i64>) {
        let tag = self.next_tag;
        self.next_tag += 1;
        let ts = self.clock;
        self.clock += ts_step;
        let timestamps = (0..i64::from(records)).map(|i| ts + i).collect();
        (batch(tag, records, value_len, ts), timestamps)
    }
}

/// What the cases exercised, summed over all of them (printed at the end).
#[derive(Debug)]
struct Coverage {
    appends: AtomicU64,
    cache_reads: AtomicU64,
    disk_reads: AtomicU64,
    truncations_across_segments: AtomicU64,
    retention_deletions: AtomicU64,
    reopens: AtomicU64,
    time_lookups_found: AtomicU64,
    segments_max: AtomicU64,
}

static COVERAGE: Coverage = Coverage {
    appends: AtomicU64::new(0),
    cache_reads: AtomicU64::new(0),
    disk_reads: AtomicU64::new(0),
    truncations_across_segments: AtomicU64::new(0),
    retention_deletions: AtomicU64::new(0),
    reopens: AtomicU64::new(0),
    time_lookups_found: AtomicU64::new(0),
    segments_max: AtomicU64::new(0),
};

fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

type Result<T = (), E = String> = std::result::Result<T, E>;

fn check(condition: bool, what: impl Into<String>) -> Result {
    if condition {
        Ok(())
    } else {
        Err(what.into())
    }
}

fn storage<T>(what: &str, result: Result<T, StorageError>) -> Result<T> {
    result.map_err(|e| format!("{what}: {e}"))
}

/// Checks one read's answer against the model.
fn check_read(
    model: &Model,
    offset: u64,
    max_bytes: usize,
    bytes: &[u8],
    hwm: u64,
) -> Result<(), String> {
    if offset == hwm {
        return check(
            bytes.is_empty(),
            "a read at the high watermark returns nothing",
        );
    }
    check(
        !bytes.is_empty(),
        format!("a read at {offset} below the hwm {hwm} returned nothing"),
    )?;
    let first = model
        .batch_at(offset)
        .ok_or(format!("the model has no batch at {offset}"))?;
    let mut total = 0usize;
    let mut count = 0usize;
    for (at, item) in (first..).zip(BatchIter::new(bytes)) {
        let (header, stored) = item.map_err(|e| format!("read at {offset}: bad batch: {e}"))?;
        let expected = model
            .batches
            .get(at)
            .ok_or(format!("read at {offset} returned more batches than exist"))?;
        check(
            header.base_offset == expected.base,
            format!(
                "read at {offset}: batch at {} where {} was expected",
                header.base_offset, expected.base
            ),
        )?;
        check(
            stored == &expected.bytes[..],
            format!("read at {offset}: batch {} differs", expected.base),
        )?;
        check(
            expected.next <= hwm,
            format!(
                "read at {offset}: batch {} runs past the hwm {hwm}",
                expected.base
            ),
        )?;
        total += stored.len();
        count += 1;
    }
    check(total == bytes.len(), "a read returned a partial batch")?;
    check(
        count == 1 || total <= max_bytes,
        format!("read at {offset}: {count} batches, {total} bytes > max_bytes {max_bytes}"),
    )
}

/// The invariants checked after every operation.
async fn check_invariants(log: &PartitionLog, model: &Model, policy: Policy) -> Result {
    check(
        log.next_offset() == model.end,
        format!(
            "next offset {} but the model ends at {}",
            log.next_offset(),
            model.end
        ),
    )?;
    check(
        log.log_start() == model.log_start,
        format!(
            "log start {} but the model starts at {}",
            log.log_start(),
            model.log_start
        ),
    )?;
    let hwm = log.high_watermark();
    check(
        model.log_start <= hwm && hwm <= model.end,
        format!("hwm {hwm} outside [{}, {}]", model.log_start, model.end),
    )?;
    check(
        model.is_boundary(hwm),
        format!("hwm {hwm} is not a batch boundary"),
    )?;
    if policy != Policy::Never {
        check(
            hwm >= model.durable_floor,
            format!(
                "hwm {hwm} is below {} which was acknowledged durable",
                model.durable_floor
            ),
        )?;
    }
    check(
        log.size_bytes() == model.size_bytes(),
        format!(
            "size {} but the model holds {} bytes",
            log.size_bytes(),
            model.size_bytes()
        ),
    )?;
    // Segments: contiguous, starting at the log start, each at a batch boundary, none too big.
    let bases = log.segment_bases();
    check(
        bases.first() == Some(&model.log_start),
        format!(
            "first segment {:?} is not the log start {}",
            bases.first(),
            model.log_start
        ),
    )?;
    check(
        log.segment_count() == bases.len(),
        "segment count disagrees with the bases",
    )?;
    for (i, &base) in bases.iter().enumerate() {
        let end = bases.get(i + 1).copied().unwrap_or(model.end);
        check(
            base < end || (i + 1 == bases.len() && base == end),
            format!("segments {bases:?} are not increasing (end {})", model.end),
        )?;
        check(
            model.is_boundary(base),
            format!("segment base {base} is not a batch boundary"),
        )?;
        let size: u64 = model
            .batches
            .iter()
            .filter(|b| b.base >= base && b.next <= end)
            .map(|b| b.bytes.len() as u64)
            .sum();
        let single = model
            .batches
            .iter()
            .filter(|b| b.base >= base && b.next <= end)
            .count()
            == 1;
        check(
            size <= SEGMENT_BYTES || single,
            format!("segment {base} holds {size} bytes"),
        )?;
    }
    // Out-of-range reads are typed errors.
    check(
        matches!(
            log.read(hwm + 1, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ),
        "a read past the hwm is not OffsetOutOfRange",
    )?;
    if model.log_start > 0 {
        check(
            matches!(
                log.read(model.log_start - 1, 100).await,
                Err(StorageError::OffsetOutOfRange { .. })
            ),
            "a read before the log start is not OffsetOutOfRange",
        )?;
    }
    Ok(())
}

/// Reads everything from the log start to the hwm, in reads of `max_bytes`.
async fn check_read_all(log: &PartitionLog, model: &Model, max_bytes: usize) -> Result {
    let mut offset = log.log_start();
    loop {
        let read = storage("read", log.read(offset, max_bytes).await)?;
        let bytes = read.to_vec();
        check_read(model, offset, max_bytes, &bytes, read.high_watermark)?;
        if bytes.is_empty() {
            return Ok(());
        }
        for item in BatchIter::new(&bytes) {
            offset = item.map_err(|e| e.to_string())?.0.next_offset();
        }
    }
}

async fn reopen(
    log: PartitionLog,
    dir: &std::path::Path,
    config: LogConfig,
    model: &mut Model,
) -> Result<PartitionLog> {
    let bases = log.segment_bases();
    storage("close", log.close().await)?;
    check(
        matches!(
            log.read(model.log_start, 1).await,
            Err(StorageError::Closed)
        ),
        "a closed log still reads",
    )?;
    let (log, report) = storage("reopen", PartitionLog::open(dir, config).await)?;
    check(
        report.log_start == model.log_start && report.log_end == model.end,
        format!(
            "reopened as [{}, {}), the model holds [{}, {})",
            report.log_start, report.log_end, model.log_start, model.end
        ),
    )?;
    check(
        report.tail.truncated_bytes == 0 && report.tail.padding_bytes == 0,
        format!("a cleanly closed log had a tail to cut: {:?}", report.tail),
    )?;
    check(
        log.segment_bases() == bases && report.segments == bases.len(),
        format!("segments {bases:?} came back as {:?}", log.segment_bases()),
    )?;
    check(
        log.high_watermark() == model.end,
        "a reopened log is durable to its end",
    )?;
    model.epoch += 1;
    model.durable_floor = model.end;
    count(&COVERAGE.reopens, 1);
    Ok(log)
}

async fn run_ops(dir: std::path::PathBuf, policy: Policy, ops: Vec<Op>) -> Result {
    let mut config = config(policy, None);
    let (mut log, report) = storage("open", PartitionLog::open(&dir, config.clone()).await)?;
    check(report.log_end == 0, "a new log is empty")?;
    let mut model = Model {
        batches: Vec::new(),
        log_start: 0,
        end: 0,
        durable_floor: 0,
        next_tag: 0,
        clock: 1_000_000,
        epoch: 1,
    };
    for (step, op) in ops.into_iter().enumerate() {
        let context = |e: String| format!("step {step} ({op:?}): {e}");
        match &op {
            Op::Append {
                records,
                value_len,
                ts_step,
                durable,
            } => {
                let (raw, timestamps) = model.make(*records, *value_len, *ts_step);
                let appended = if *durable {
                    log.append_durable(&raw, model.epoch).await
                } else {
                    log.append(&raw, model.epoch).await
                };
                let appended = storage("append", appended).map_err(context)?;
                model
                    .push(appended.base_offset, appended.last_offset, raw, timestamps)
                    .map_err(context)?;
                if *durable {
                    model.durable_floor = model.end;
                }
            }
            Op::AppendMany { batches, reads } => {
                let reader = {
                    let log = log.clone();
                    let reads = reads.clone();
                    glommio::spawn_local(async move {
                        let mut answers = Vec::new();
                        for (at, max_bytes) in reads {
                            futures_lite::future::yield_now().await;
                            let hwm = log.high_watermark();
                            let start = log.log_start();
                            let offset = start + (hwm - start) * u64::from(at) / 1000;
                            let read = log.read(offset, max_bytes).await;
                            answers.push((offset, max_bytes, read));
                        }
                        answers
                    })
                };
                let mut tasks = Vec::new();
                for &(records, value_len) in batches {
                    let (raw, timestamps) = model.make(records, value_len, 1);
                    let log = log.clone();
                    let epoch = model.epoch;
                    tasks.push(glommio::spawn_local(async move {
                        let appended = log.append_durable(&raw, epoch).await;
                        (appended, raw, timestamps)
                    }));
                }
                let mut done = Vec::new();
                for task in tasks {
                    let (appended, raw, timestamps) = task.await;
                    let appended = storage("append", appended).map_err(context)?;
                    done.push((appended, raw, timestamps));
                }
                done.sort_by_key(|(a, _, _)| a.base_offset);
                for (appended, raw, timestamps) in done {
                    model
                        .push(appended.base_offset, appended.last_offset, raw, timestamps)
                        .map_err(context)?;
                }
                model.durable_floor = model.end;
                // The reads made during the appends agree with the log after them.
                for (offset, max_bytes, read) in reader.await {
                    let read = storage("concurrent read", read).map_err(context)?;
                    check_read(
                        &model,
                        offset,
                        max_bytes,
                        &read.to_vec(),
                        read.high_watermark,
                    )
                    .map_err(|e| context(format!("concurrent read: {e}")))?;
                }
            }
            Op::Read { at, max_bytes } => {
                let before = log.high_watermark();
                let start = log.log_start();
                let offset = start + (before - start) * u64::from(*at) / 1000;
                let read = storage("read", log.read(offset, *max_bytes).await).map_err(context)?;
                let after = log.high_watermark();
                check(
                    before <= read.high_watermark && read.high_watermark <= after,
                    format!(
                        "read reports hwm {} outside [{before}, {after}]",
                        read.high_watermark
                    ),
                )
                .map_err(context)?;
                if !read.is_empty() {
                    count(
                        if read.from_cache {
                            &COVERAGE.cache_reads
                        } else {
                            &COVERAGE.disk_reads
                        },
                        1,
                    );
                }
                check(read.log_start == start, "read reports another log start")
                    .map_err(context)?;
                check_read(
                    &model,
                    offset,
                    *max_bytes,
                    &read.to_vec(),
                    read.high_watermark,
                )
                .map_err(context)?;
            }
            Op::Truncate { at } => {
                let start = model.log_start;
                let offset = start + (model.end - start) * u64::from(*at) / 1000;
                let expected_end = model
                    .batch_at(offset)
                    .map_or(model.end, |i| model.batches[i].base);
                let segments = log.segment_count();
                let end = storage("truncate", log.truncate_to(offset).await).map_err(context)?;
                if log.segment_count() < segments {
                    count(&COVERAGE.truncations_across_segments, 1);
                }
                check(
                    end == expected_end,
                    format!("truncate_to({offset}) ended the log at {end}, not {expected_end}"),
                )
                .map_err(context)?;
                model.batches.retain(|b| b.next <= expected_end);
                model.end = expected_end;
                model.durable_floor = expected_end;
                check(
                    log.high_watermark() == expected_end,
                    "after a truncation the log is durable to its end",
                )
                .map_err(context)?;
            }
            Op::Reopen => {
                log = reopen(log, &dir, config.clone(), &mut model)
                    .await
                    .map_err(context)?;
            }
            Op::Retention { limit } => {
                if config.retention_bytes != Some(*limit) {
                    config.retention_bytes = Some(*limit);
                    log = reopen(log, &dir, config.clone(), &mut model)
                        .await
                        .map_err(context)?;
                }
                // The model's answer: drop the oldest sealed segments while over the limit.
                let bases = log.segment_bases();
                let seg_size = |i: usize| -> u64 {
                    let end = bases.get(i + 1).copied().unwrap_or(u64::MAX);
                    model
                        .batches
                        .iter()
                        .filter(|b| b.base >= bases[i] && b.base < end)
                        .map(|b| b.bytes.len() as u64)
                        .sum()
                };
                let mut total = model.size_bytes();
                let mut deleted = 0usize;
                let mut bytes_deleted = 0u64;
                while deleted + 1 < bases.len() && total > *limit {
                    let size = seg_size(deleted);
                    total -= size;
                    bytes_deleted += size;
                    deleted += 1;
                }
                let expected_start = bases[deleted];
                let report = storage("retention", log.enforce_retention(i64::MAX / 2).await)
                    .map_err(context)?;
                check(
                    report.segments_deleted == deleted
                        && report.bytes_deleted == bytes_deleted
                        && report.log_start == expected_start,
                    format!(
                        "retention to {limit} over segments {bases:?}: {report:?}, expected {deleted} segments, {bytes_deleted} bytes, start {expected_start}"
                    ),
                )
                .map_err(context)?;
                count(&COVERAGE.retention_deletions, deleted as u64);
                model.batches.retain(|b| b.base >= expected_start);
                model.log_start = expected_start;
                model.durable_floor = model.durable_floor.max(expected_start);
            }
            Op::ListOffsetTime { pick, delta } => {
                let before = log.high_watermark();
                let visible: Vec<i64> = model
                    .batches
                    .iter()
                    .take_while(|b| b.next <= before)
                    .flat_map(|b| b.timestamps.iter().copied())
                    .collect();
                let ts = if visible.is_empty() {
                    model.clock + delta
                } else {
                    visible[usize::from(*pick) * visible.len() / 1001] + delta
                };
                let got = storage(
                    "list_offset",
                    log.list_offset(OffsetSpec::Timestamp(ts)).await,
                )
                .map_err(context)?;
                let after = log.high_watermark();
                let early = model.offset_for_time(ts, before);
                let late = model.offset_for_time(ts, after);
                check(
                    got == early || got == late,
                    format!("time lookup {ts}: got {got:?}, expected {early:?} (or {late:?})"),
                )
                .map_err(context)?;
                if got.is_some() {
                    count(&COVERAGE.time_lookups_found, 1);
                }
                check(
                    storage("earliest", log.list_offset(OffsetSpec::Earliest).await)?
                        == Some(model.log_start),
                    "earliest is not the log start",
                )
                .map_err(context)?;
            }
            Op::Flush => {
                storage("flush", log.flush().await).map_err(context)?;
                check(
                    log.high_watermark() == model.end,
                    "after a flush the log is durable to its end",
                )
                .map_err(context)?;
                model.durable_floor = model.end;
            }
        }
        COVERAGE
            .segments_max
            .fetch_max(log.segment_count() as u64, Ordering::Relaxed);
        check_invariants(&log, &model, policy)
            .await
            .map_err(context)?;
        if step % 8 == 7 {
            check_read_all(&log, &model, 1 + step * 997 % 20_000)
                .await
                .map_err(context)?;
        }
    }
    // Everything written survives a clean close.
    storage("flush", log.flush().await)?;
    check_read_all(&log, &model, 7000).await?;
    let log = reopen(log, &dir, config.clone(), &mut model).await?;
    check_read_all(&log, &model, 1).await?;
    check_read_all(&log, &model, 1 << 20).await?;
    storage("close", log.close().await)
}

fn run_case(policy: Policy, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = test_dir("model");
    let path = dir.path().join("t-0");
    run(move || run_ops(path, policy, ops)).map_err(TestCaseError::fail)
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

#[test]
fn log_agrees_with_its_model() {
    let seed = env_number::<u64>("PROPTEST_RNG_SEED").unwrap_or(DEFAULT_SEED);
    let cases = env_number::<u32>("PROPTEST_CASES").unwrap_or(DEFAULT_CASES);
    println!("log_model: {cases} cases, seed {seed} (PROPTEST_RNG_SEED={seed} reproduces)");
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        // Keep regressions out of the source tree; the fixed seed reproduces a failure.
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        policy_strategy(),
        prop::collection::vec(op_strategy(), 1..60),
    );
    if let Err(error) = runner.run(&strategy, |(policy, ops)| run_case(policy, ops)) {
        panic!("log_model failed with PROPTEST_RNG_SEED={seed}: {error}");
    }
    let c = &COVERAGE;
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    println!(
        "log_model: {} appends, {} cache reads, {} disk reads, {} truncations across segments, \
         {} segments deleted by retention, {} reopens, {} time lookups found, up to {} segments",
        get(&c.appends),
        get(&c.cache_reads),
        get(&c.disk_reads),
        get(&c.truncations_across_segments),
        get(&c.retention_deletions),
        get(&c.reopens),
        get(&c.time_lookups_found),
        get(&c.segments_max)
    );
}
