//! Crash test, sled-style: a child process appends to a partition log with `FlushPolicy::Always`
//! and reports every acknowledged batch on stdout; the parent SIGKILLs it at a random moment,
//! recovers the log itself and checks that every acknowledged batch survived byte for byte, that
//! the log is a contiguous run of valid batches, and that the recovery report adds up. The next
//! round's child keeps appending to the same directory, so recovery runs again and again over a
//! growing log of many segments.
//!
//! Runs without the libtest harness (`harness = false`): `main` is the parent, or the child when
//! `SLUICE_CRASH_CHILD=<dir>` is set. Environment:
//! - `SLUICE_CRASH_ROUNDS`: rounds to run (default 50);
//! - `SLUICE_CRASH_SEED`: seed of every random choice (default: from the clock; printed).
//!
//! Every third round the child is not killed by the parent: it kills itself (SIGKILL) right
//! after a chosen step of a roll (`SealStep`, through the storage's seal failpoint), and these
//! rounds walk through every step in turn — the next segment created while the previous one
//! is unsealed, truncated, synced, each index file written — so recovery meets a log with two
//! unsealed segments, the earlier one padded, at every point of a background seal.
//!
//! Every batch's content derives from `(seed, round, task, seq)`, and the first record's key
//! carries `round:task:seq`, so the parent rebuilds the exact bytes of every batch it finds in
//! the log, acknowledged or not.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_broker::storage::segment::{set_seal_failpoint, SealStep};
use sluice_broker::storage::{FlushPolicy, LogConfig, PartitionLog, RecoveryReport};
use sluice_protocol::batch::stamp;
use sluice_protocol::{BatchBuilder, BatchIter, BatchOptions, RecordIter, BATCH_HEADER_BYTES};

const CHILD_ENV: &str = "SLUICE_CRASH_CHILD";
const SEED_ENV: &str = "SLUICE_CRASH_SEED";
const ROUND_ENV: &str = "SLUICE_CRASH_ROUND";
const ROUNDS_ENV: &str = "SLUICE_CRASH_ROUNDS";
/// Set for a round that dies inside a roll: the index in `SealStep::ALL` of the step after
/// which the child kills itself (the parent does not kill it).
const SEAL_STEP_ENV: &str = "SLUICE_CRASH_SEAL_STEP";
/// Every this many rounds, a round dies inside a roll; successive such rounds walk through
/// every step of a seal.
const SEAL_ROUND_EVERY: u32 = 3;
/// The step a seal-kill child dies at (`SealStep::ALL` index; `u8::MAX`: none).
static SEAL_KILL_STEP: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);
const DEFAULT_ROUNDS: u32 = 50;
/// Concurrent appending tasks in the child.
const TASKS: u32 = 3;
/// A child that was never killed gives up after this long (the parent is gone or stuck).
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(60);
/// How long the parent waits for a child to open its log.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 128 << 10,
        batch_bytes_max: 32 << 10,
        write_buffer_bytes: 64 << 10,
        index_interval_bytes: 4096,
        cache_bytes_max: 256 << 10,
        flush: FlushPolicy::Always,
        retention_ms: None,
        retention_bytes: None,
        ..LogConfig::default()
    }
}

/// A tiny deterministic RNG (xorshift64*), enough for test choices.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, n)` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Identifies a batch: which round's child, which of its tasks, which of the task's appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BatchKey {
    round: u32,
    task: u32,
    seq: u64,
}

/// The batch `key` appends, before the log stamps it: same bytes in the child and the parent.
fn make_batch(seed: u64, key: BatchKey) -> Vec<u8> {
    let mut rng =
        Rng::new(seed ^ splitmix(u64::from(key.round) << 40 ^ u64::from(key.task) << 32 ^ key.seq));
    let records = 1 + rng.below(4) as u32;
    // Now and then a large batch, so the 64 KiB write buffer fills and appends wait for room.
    let big = rng.below(16) == 0;
    let timestamp = 1_700_000_000_000 + i64::from(key.round) * 1_000_000 + key.seq as i64;
    let mut builder = BatchBuilder::new(BatchOptions::default());
    for i in 0..records {
        let record_key = format!("{}:{}:{}:{i}", key.round, key.task, key.seq);
        let len = if big {
            rng.range(2000, 7000)
        } else {
            rng.below(3000)
        } as usize;
        let mut value = Vec::with_capacity(len + 8);
        while value.len() < len {
            value.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        value.truncate(len);
        builder.push(
            timestamp + i64::from(i),
            Some(record_key.as_bytes()),
            Some(&value),
            &[],
        );
    }
    builder.finish()
}

/// Reads the key back from a stored batch's first record.
fn batch_key(batch: &[u8]) -> Result<BatchKey, String> {
    let header = sluice_protocol::BatchHeader::parse(batch).map_err(|e| e.to_string())?;
    let record = RecordIter::new(&header, &batch[BATCH_HEADER_BYTES..])
        .next()
        .ok_or("batch has no records")?
        .map_err(|e| e.to_string())?;
    let key = record.key.ok_or("first record has no key")?;
    let text = std::str::from_utf8(key).map_err(|e| e.to_string())?;
    let parts: Vec<&str> = text.split(':').collect();
    let parse = |i: usize| -> Result<u64, String> {
        parts
            .get(i)
            .ok_or(format!("short key {text:?}"))?
            .parse::<u64>()
            .map_err(|e| format!("key {text:?}: {e}"))
    };
    if parts.len() != 4 || parse(3)? != 0 {
        return Err(format!("malformed key {text:?}"));
    }
    Ok(BatchKey {
        round: parse(0)? as u32,
        task: parse(1)? as u32,
        seq: parse(2)?,
    })
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.parse() {
        Ok(v) => Some(v),
        Err(_) => panic!("{name}={value:?} is not a number"),
    }
}

// ---------------------------------------------------------------------------------------------
// The child.

fn child(dir: PathBuf) {
    // Die with the parent, whatever happens to it.
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
    let seed = env_u64(SEED_ENV).expect("child needs a seed");
    let round = env_u64(ROUND_ENV).expect("child needs a round") as u32;
    if let Some(step) = env_u64(SEAL_STEP_ENV) {
        SEAL_KILL_STEP.store(step as u8, std::sync::atomic::Ordering::Relaxed);
    }
    let started = Instant::now();
    common::run(move || async move {
        let (log, report) = PartitionLog::open(&dir, config())
            .await
            .expect("child: open the log");
        say(&format!(
            "ready {} {} {}",
            report.log_start, report.log_end, report.segments
        ));
        // Installed once the log is open: recovery's own work is not a roll of this round.
        set_seal_failpoint(Some(kill_at_seal_step));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                for seq in 0u64.. {
                    if started.elapsed() > CHILD_LIFETIME_MAX {
                        eprintln!("crash child: never killed, giving up");
                        std::process::exit(3);
                    }
                    let key = BatchKey { round, task, seq };
                    let mut bytes = make_batch(seed, key);
                    let appended = log
                        .append_durable(&bytes, round)
                        .await
                        .expect("child: append");
                    stamp(&mut bytes, appended.base_offset, round);
                    say(&format!(
                        "ack {} {} {:08x} {round} {task} {seq}",
                        appended.base_offset,
                        appended.last_offset,
                        crc32c::crc32c(&bytes)
                    ));
                }
            }));
        }
        for task in tasks {
            task.await;
        }
    });
}

/// The seal failpoint of a seal-kill round: SIGKILL to this process after the chosen step.
fn kill_at_seal_step(step: SealStep) {
    let chosen = SEAL_KILL_STEP.load(std::sync::atomic::Ordering::Relaxed);
    if SealStep::ALL.get(usize::from(chosen)) == Some(&step) {
        // SAFETY: kill(2) on this process's own id.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Writes one line to stdout at once; exits quietly when the parent stopped listening.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| out.flush());
    if written.is_err() {
        std::process::exit(0);
    }
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// One acknowledgement line.
#[derive(Debug, Clone, Copy)]
struct Ack {
    base_offset: u64,
    last_offset: u64,
    crc: u32,
    key: BatchKey,
}

fn parse_ack(line: &str) -> Result<Ack, String> {
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() != 7 || fields[0] != "ack" {
        return Err(format!("malformed ack line {line:?}"));
    }
    let num = |i: usize| {
        fields[i]
            .parse::<u64>()
            .map_err(|e| format!("ack line {line:?}: {e}"))
    };
    Ok(Ack {
        base_offset: num(1)?,
        last_offset: num(2)?,
        crc: u32::from_str_radix(fields[3], 16).map_err(|e| format!("{line:?}: {e}"))?,
        key: BatchKey {
            round: num(4)? as u32,
            task: num(5)? as u32,
            seq: num(6)?,
        },
    })
}

/// A batch found in the log and checked against its rebuilt bytes.
#[derive(Debug, Clone, Copy)]
struct Found {
    base_offset: u64,
    next_offset: u64,
    /// Where its bytes start in `Verifier::bytes`.
    start: usize,
    len: usize,
    key: BatchKey,
}

/// Everything verified so far: the log is append-only here, so each round's log must begin
/// with exactly these bytes.
#[derive(Debug, Default)]
struct Verifier {
    seed: u64,
    bytes: Vec<u8>,
    batches: Vec<Found>,
    by_base: HashMap<u64, usize>,
    keys: HashSet<BatchKey>,
    /// Highest seq found per (round, task): a task appends seq n+1 only once n is durable, so
    /// the seqs found must be exactly 0..=highest.
    highest_seq: HashMap<(u32, u32), u64>,
    /// `last_offset + 1` of the newest acknowledged batch.
    acked_end: u64,
    acks_verified: u64,
    truncated_bytes: u64,
    padding_bytes: u64,
    torn_rounds: u32,
    /// Rounds where the parent tore the tail itself.
    tears: u32,
}

/// What the parent saw when recovering the log after a kill.
#[derive(Debug)]
struct Recovered {
    report: RecoveryReport,
    /// All batches from offset 0 to the high watermark, as read through `PartitionLog::read`.
    bytes: Vec<u8>,
    high_watermark: u64,
    next_offset: u64,
    segment_count: usize,
    /// Size of the active segment file after recovery (before the parent closed the log).
    active_size_after_open: u64,
}

fn segment_files(dir: &Path) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    if !dir.exists() {
        // The child was killed before it created the log directory.
        return out;
    }
    for entry in std::fs::read_dir(dir).expect("list log dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(base) = stem.parse::<u64>() {
                out.push((base, entry.metadata().expect("stat").len()));
            }
        }
    }
    out.sort_unstable();
    out
}

/// Opens the log in a fresh executor, reads it all with reads of random sizes, and closes it.
fn recover(dir: &Path, read_seed: u64) -> Recovered {
    let dir = dir.to_owned();
    common::run(move || async move {
        let (log, report) = PartitionLog::open(&dir, config())
            .await
            .unwrap_or_else(|e| panic!("parent: recovery failed: {e}"));
        let high_watermark = log.high_watermark();
        let next_offset = log.next_offset();
        let segment_count = log.segment_count();
        let active_base = *log.segment_bases().last().expect("a segment");
        let active_size_after_open = std::fs::metadata(dir.join(format!("{active_base:020}.log")))
            .expect("stat active segment")
            .len();
        let mut rng = Rng::new(read_seed);
        let mut bytes = Vec::new();
        let mut offset = log.log_start();
        while offset < high_watermark {
            let max_bytes = rng.range(1, 96 << 10) as usize;
            let read = log
                .read(offset, max_bytes)
                .await
                .unwrap_or_else(|e| panic!("parent: read at {offset} failed: {e}"));
            assert_eq!(read.high_watermark, high_watermark);
            let chunk = read.to_vec();
            assert!(!chunk.is_empty(), "read at {offset} below the hwm is empty");
            let mut first = true;
            let mut total = 0usize;
            for item in BatchIter::new(&chunk) {
                let (header, batch) =
                    item.unwrap_or_else(|e| panic!("read at {offset} served a bad batch: {e}"));
                assert_eq!(
                    header.base_offset, offset,
                    "batches read are not contiguous"
                );
                assert!(
                    first || total + batch.len() <= max_bytes,
                    "read past max_bytes"
                );
                first = false;
                total += batch.len();
                offset = header.next_offset();
            }
            assert_eq!(total, chunk.len(), "read returned a partial batch");
            assert!(offset <= high_watermark, "read past the high watermark");
            bytes.extend_from_slice(&chunk);
        }
        log.close().await.expect("parent: close");
        Recovered {
            report,
            bytes,
            high_watermark,
            next_offset,
            segment_count,
            active_size_after_open,
        }
    })
}

/// What the parent did to the active segment's unacknowledged tail before recovering, and what
/// recovery must make of it.
#[derive(Debug, Clone)]
struct Tear {
    what: String,
    /// The active segment's logical end after recovery.
    position: u64,
    /// Whether the cut must be reported as torn (`truncated_bytes`) rather than as padding.
    torn: bool,
}

/// Simulates a write in flight at the crash, which a SIGKILL alone cannot produce once the
/// write completed: truncates the active segment, or flips one byte, somewhere after `floor`
/// (the first offset neither acknowledged nor verified in an earlier round).
fn tear_tail(dir: &Path, floor: u64, rng: &mut Rng) -> Option<Tear> {
    use std::os::unix::fs::FileExt;
    let &(base, size) = segment_files(dir).last()?;
    let path = dir.join(format!("{base:020}.log"));
    let bytes = std::fs::read(&path).expect("read the active segment");
    assert_eq!(bytes.len() as u64, size);
    // Batch boundaries of the valid prefix: (position, base offset).
    let mut starts: Vec<(u64, u64)> = Vec::new();
    let mut position = 0usize;
    let mut next = base;
    while let Ok(header) = sluice_protocol::batch::validate_frame(&bytes[position..]) {
        if header.base_offset != next || header.record_count == 0 {
            break;
        }
        starts.push((position as u64, header.base_offset));
        position += header.batch_len as usize;
        next = header.next_offset();
    }
    let end = position as u64;
    let from = starts
        .iter()
        .find(|&&(_, offset)| offset >= floor)
        .map_or(end, |&(position, _)| position);
    if from >= size {
        return None;
    }
    let boundary_at_or_below = |at: u64| {
        starts
            .iter()
            .map(|&(position, _)| position)
            .chain(std::iter::once(end))
            .filter(|&position| position <= at)
            .max()
            .unwrap_or(0)
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open the active segment");
    let tear = if rng.below(2) == 0 {
        let cut = rng.range(from, size - 1);
        file.set_len(cut).expect("truncate");
        let position = boundary_at_or_below(cut.min(end));
        // Zeros after the last batch are padding; anything else is a torn write.
        let torn = if cut <= end {
            cut > position
        } else {
            bytes[end as usize..cut as usize].iter().any(|&b| b != 0)
        };
        Tear {
            what: format!("truncated {} to {cut} bytes (of {size})", path.display()),
            position,
            torn,
        }
    } else {
        let mut at = rng.range(from, size - 1);
        let start = boundary_at_or_below(at);
        if at < end && (start + 12..start + 16).contains(&at) {
            // The leader epoch is stamped by the broker and not covered by the CRC.
            at = start + 16;
        }
        let flipped = bytes[at as usize] ^ (1 << rng.below(8));
        file.write_at(&[flipped], at).expect("flip a byte");
        Tear {
            what: format!(
                "flipped the byte at {at} of {} ({size} bytes)",
                path.display()
            ),
            position: start,
            // Even in the padding after the last batch: zeros followed by data are torn.
            torn: true,
        }
    };
    file.sync_all().expect("sync the torn segment");
    Some(tear)
}

impl Verifier {
    /// Checks the recovered log against everything known so far and this round's acks.
    fn check_round(
        &mut self,
        round: u32,
        before: &[(u64, u64)],
        after_segments: &[(u64, u64)],
        recovered: &Recovered,
        acks: &[Ack],
        tear: Option<&Tear>,
    ) {
        let report = &recovered.report;
        if let Some(tear) = tear {
            assert_eq!(
                report.tail.position, tear.position,
                "after the parent {}: recovery kept the wrong tail: {:?}",
                tear.what, report.tail
            );
            assert_eq!(
                report.tail.truncated_bytes > 0,
                tear.torn,
                "after the parent {}: {:?}",
                tear.what,
                report.tail
            );
        }
        // The recovery report adds up.
        assert_eq!(report.log_start, 0, "nothing deletes segments here");
        assert_eq!(report.log_end, recovered.next_offset);
        assert_eq!(
            recovered.high_watermark, report.log_end,
            "a recovered log is durable to its end"
        );
        assert_eq!(report.segments, recovered.segment_count);
        assert_eq!(
            report.segments,
            after_segments.len(),
            "segment files after recovery: {after_segments:?}"
        );
        assert_eq!(
            report.tail.reason.is_some(),
            report.tail.truncated_bytes > 0,
            "a cut has a reason and a reason means a cut: {:?}",
            report.tail
        );
        assert!(
            report.tail.truncated_bytes == 0 || report.tail.padding_bytes == 0,
            "{:?}",
            report.tail
        );
        if let Some(&(_, size_before)) = before.last() {
            assert_eq!(
                report.tail.position + report.tail.truncated_bytes + report.tail.padding_bytes,
                size_before,
                "tail report does not account for the active file's {size_before} bytes: {:?}",
                report.tail
            );
        }
        assert_eq!(
            recovered.active_size_after_open, report.tail.position,
            "recovery left bytes after the last batch of the active segment"
        );
        self.truncated_bytes += report.tail.truncated_bytes;
        self.padding_bytes += report.tail.padding_bytes;
        if report.tail.truncated_bytes > 0 {
            self.torn_rounds += 1;
        }

        // Nothing verified before was lost or changed.
        let got = &recovered.bytes;
        assert!(
            got.len() >= self.bytes.len(),
            "the log shrank from {} to {} bytes",
            self.bytes.len(),
            got.len()
        );
        if got[..self.bytes.len()] != self.bytes[..] {
            let at = got
                .iter()
                .zip(&self.bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!("previously verified log bytes changed at byte {at}");
        }
        // Every new batch is exactly what some child appended, each appended once, in order.
        let mut next_offset = self.batches.last().map_or(0, |b| b.next_offset);
        for item in BatchIter::new(&got[self.bytes.len()..]) {
            let (header, stored) = item.unwrap_or_else(|e| panic!("bad batch in the log: {e}"));
            assert_eq!(header.base_offset, next_offset, "gap in the log");
            let key = batch_key(stored)
                .unwrap_or_else(|e| panic!("batch at {next_offset} is not ours: {e}"));
            assert!(
                key.round <= round,
                "batch at {next_offset} from a future round"
            );
            let mut expected = make_batch(self.seed, key);
            stamp(&mut expected, header.base_offset, key.round);
            assert!(
                stored == &expected[..],
                "batch at offset {next_offset} ({key:?}) differs from what was appended"
            );
            assert!(self.keys.insert(key), "{key:?} appears twice in the log");
            let expected_seq = self
                .highest_seq
                .get(&(key.round, key.task))
                .map_or(0, |s| s + 1);
            assert_eq!(
                key.seq, expected_seq,
                "round {} task {}: seq {} follows {expected_seq} - 1 (an append was lost or reordered)",
                key.round, key.task, key.seq
            );
            self.highest_seq.insert((key.round, key.task), key.seq);
            let found = Found {
                base_offset: header.base_offset,
                next_offset: header.next_offset(),
                start: self.bytes.len(),
                len: stored.len(),
                key,
            };
            self.by_base.insert(found.base_offset, self.batches.len());
            self.batches.push(found);
            self.bytes.extend_from_slice(stored);
            next_offset = header.next_offset();
        }
        assert_eq!(
            self.bytes.len(),
            got.len(),
            "trailing bytes after the batches"
        );
        assert_eq!(
            next_offset, report.log_end,
            "batches end before the log end"
        );

        // Every acknowledged batch is there, at its offsets, with its bytes.
        for ack in acks {
            assert_eq!(ack.key.round, round, "ack from another round");
            let Some(&at) = self.by_base.get(&ack.base_offset) else {
                panic!("acknowledged batch {ack:?} is missing from the log");
            };
            let found = self.batches[at];
            assert_eq!(found.key, ack.key, "another batch sits at the acked offset");
            assert_eq!(found.next_offset, ack.last_offset + 1, "{ack:?}");
            let crc = crc32c::crc32c(&self.bytes[found.start..found.start + found.len]);
            assert_eq!(crc, ack.crc, "acknowledged batch {ack:?} has other bytes");
            self.acked_end = self.acked_end.max(ack.last_offset + 1);
            self.acks_verified += 1;
        }
        assert!(
            report.log_end >= self.acked_end,
            "log ends at {} but offsets up to {} were acknowledged",
            report.log_end,
            self.acked_end
        );
    }
}

/// Kills the child on drop, so a failing parent never leaves it running.
#[derive(Debug)]
struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Waits for a seal-kill child to kill itself at its failpoint.
    fn wait_for_self_kill(&mut self, round: u32, step: SealStep) -> std::process::ExitStatus {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.0.as_mut().expect("a child");
            if let Some(status) = child.try_wait().expect("wait for the child") {
                self.0 = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the child never reached {step:?} of a roll in {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(&mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("child");
        // SAFETY: kill(2) on the pid of our own child, which we have not waited for yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
        }
        child.wait().expect("wait for the child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What one round of the child printed.
#[derive(Debug, Default)]
struct ChildOutput {
    ready: bool,
    acks: Vec<Ack>,
    /// The child ran, unkilled, to the end of the delay before the kill.
    killed_at: Duration,
}

fn run_child(
    dir: &Path,
    seed: u64,
    round: u32,
    seal_step: Option<usize>,
    rng: &mut Rng,
) -> ChildOutput {
    let exe = std::env::current_exe().expect("current exe");
    let mut command = Command::new(exe);
    if let Some(step) = seal_step {
        command.env(SEAL_STEP_ENV, step.to_string());
    }
    let child = command
        .env(CHILD_ENV, dir)
        .env(SEED_ENV, seed.to_string())
        .env(ROUND_ENV, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let spawned = Instant::now();
    let mut guard = ChildGuard(Some(child));
    let stdout = guard
        .0
        .as_mut()
        .and_then(|c| c.stdout.take())
        .expect("pipe");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            // A line cut by the kill is not an acknowledgement.
            if line.last() != Some(&b'\n') {
                return;
            }
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            if tx.send(text).is_err() {
                return;
            }
        }
    });
    // Most rounds kill while appending; some kill early, while the child may still be
    // recovering the log.
    let early = seal_step.is_none() && rng.below(6) == 0;
    let delay = if early {
        Duration::from_millis(rng.below(60))
    } else {
        Duration::from_millis(rng.range(5, 80))
    };
    let mut lines = Vec::new();
    let mut ready = false;
    if early {
        std::thread::sleep(delay);
    } else {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !ready {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    ready = line.starts_with("ready ");
                    lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("round {round}: the child did not open its log in {READY_TIMEOUT:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("round {round}: the child exited before opening its log")
                }
            }
        }
        if seal_step.is_none() {
            std::thread::sleep(delay);
        }
    }
    let killed_at = spawned.elapsed();
    let status = match seal_step {
        None => guard.kill(),
        Some(step) => guard.wait_for_self_kill(round, SealStep::ALL[step]),
    };
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "round {round}: the child ended on its own ({status}) before the kill"
    );
    reader.join().expect("reader thread");
    lines.extend(rx.try_iter());
    let mut output = ChildOutput {
        killed_at,
        ..ChildOutput::default()
    };
    for line in &lines {
        if line.starts_with("ready ") {
            output.ready = true;
        } else {
            let ack = parse_ack(line).unwrap_or_else(|e| panic!("round {round}: {e}"));
            output.acks.push(ack);
        }
    }
    output
}

fn parent(seed: u64, rounds: u32, dir: &Path) {
    let mut rng = Rng::new(seed);
    let mut verifier = Verifier {
        seed,
        ..Verifier::default()
    };
    let started = Instant::now();
    let mut seal_rounds = 0usize;
    for round in 1..=rounds {
        let seal_step = (round % SEAL_ROUND_EVERY == 0).then(|| {
            seal_rounds += 1;
            (seal_rounds - 1) % SealStep::ALL.len()
        });
        let output = run_child(dir, seed, round, seal_step, &mut rng);
        // Half the rounds also tear the unacknowledged tail (if any), as an interrupted write would.
        let acked_end = output
            .acks
            .iter()
            .map(|a| a.last_offset + 1)
            .fold(verifier.acked_end, u64::max);
        let verified_end = verifier.batches.last().map_or(0, |b| b.next_offset);
        let tear = if rng.below(2) == 0 {
            tear_tail(dir, acked_end.max(verified_end), &mut rng)
        } else {
            None
        };
        verifier.tears += u32::from(tear.is_some());
        let before = segment_files(dir);
        let recovered = recover(dir, rng.next_u64());
        let after = segment_files(dir);
        verifier.check_round(
            round,
            &before,
            &after,
            &recovered,
            &output.acks,
            tear.as_ref(),
        );
        if std::env::var_os("SLUICE_CRASH_VERBOSE").is_some() {
            println!(
                "crash: round {round}: killed {} after {:?} (ready: {}), {} acks, log end {}, {} segments, tail {:?}, tear {:?}",
                seal_step.map_or("by the parent".to_string(), |s| format!("at {:?}", SealStep::ALL[s])),
                output.killed_at,
                output.ready,
                output.acks.len(),
                recovered.report.log_end,
                recovered.report.segments,
                recovered.report.tail,
                tear.map(|t| t.what)
            );
        }
    }
    assert!(
        rounds < SEAL_ROUND_EVERY * SealStep::ALL.len() as u32
            || seal_rounds >= SealStep::ALL.len(),
        "every step of a seal was killed at"
    );
    println!(
        "crash: {rounds} rounds ({seal_rounds} killed inside a roll), {} acknowledged batches verified ({} batches, {} bytes in {} segments), \
         {} bytes cut from torn tails in {} rounds ({} tails torn by the test), {} bytes of padding, {:.1?}",
        verifier.acks_verified,
        verifier.batches.len(),
        verifier.bytes.len(),
        segment_files(dir).len(),
        verifier.truncated_bytes,
        verifier.torn_rounds,
        verifier.tears,
        verifier.padding_bytes,
        started.elapsed()
    );
}

/// The libtest command line, as far as a one-test binary needs it.
fn selected(args: &[String]) -> (bool, bool) {
    const NAME: &str = "crash";
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut list = false;
    let mut ignored_only = false;
    let mut exact = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        match arg {
            "--list" => list = true,
            "--ignored" => ignored_only = true,
            "--exact" => exact = true,
            "--skip" => {
                i += 1;
                skips.extend(args.get(i).cloned());
            }
            "--logfile" | "--test-threads" | "--color" | "--format" | "-Z" | "--shuffle-seed" => {
                i += 1;
            }
            _ if arg.starts_with('-') => {}
            _ => filters.push(arg.to_string()),
        }
        i += 1;
    }
    let matches = |pattern: &str| {
        if exact {
            pattern == NAME
        } else {
            NAME.contains(pattern)
        }
    };
    let run = !ignored_only
        && (filters.is_empty() || filters.iter().any(|f| matches(f)))
        && !skips.iter().any(|s| NAME.contains(s.as_str()));
    (run, list)
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(PathBuf::from(dir));
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (run, list) = selected(&args);
    if list {
        if run {
            println!("crash: test");
        }
        return;
    }
    if !run {
        println!("\nrunning 0 tests\n");
        println!("test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out");
        return;
    }
    let seed = env_u64(SEED_ENV).unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock");
        splitmix(now.as_nanos() as u64 ^ u64::from(std::process::id()))
    });
    let rounds = env_u64(ROUNDS_ENV).map_or(DEFAULT_ROUNDS, |r| r as u32);
    println!("\nrunning 1 test");
    println!("crash: seed {seed} ({SEED_ENV}={seed} reproduces the choices), {rounds} rounds");
    let root = common::test_dir("crash");
    let dir = root.path().join("t-0");
    let outcome = std::panic::catch_unwind(|| parent(seed, rounds, &dir));
    match outcome {
        Ok(()) => {
            println!("test crash ... ok\n");
            println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
        }
        Err(_) => {
            let kept = root.keep();
            eprintln!(
                "crash: FAILED with seed {seed} (rerun with {SEED_ENV}={seed}); log kept in {}",
                kept.display()
            );
            println!("test crash ... FAILED\n");
            println!(
                "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out"
            );
            std::process::exit(101);
        }
    }
}
