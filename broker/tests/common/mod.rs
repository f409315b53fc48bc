//! Helpers shared by the broker's integration tests: executors, batches, temp directories.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};

use sluice_protocol::batch::stamp;
use sluice_protocol::{BatchBuilder, BatchOptions};

/// Runs `future` on a fresh glommio executor thread, watched as a broker shard is.
pub fn run<F, Fut, T>(make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    sluice_broker::shard::spawn_watched(glommio::LocalExecutorBuilder::default(), "test", make)
        .expect("spawn executor")
        .join()
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Where a broker process's stderr goes: `path`, appended to across restarts, so a failed test
/// can show what the broker saw ([`print_log_tail`]).
pub fn broker_log(path: &Path) -> std::process::Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(std::process::Stdio::from)
        .unwrap_or_else(|e| panic!("broker log {}: {e}", path.display()))
}

/// Prints the end of a broker's log (from [`broker_log`]) to the test's output.
pub fn print_log_tail(label: &str, path: &Path) {
    const TAIL_BYTES_MAX: usize = 24 * 1024;
    let log = std::fs::read(path).unwrap_or_default();
    let tail = &log[log.len().saturating_sub(TAIL_BYTES_MAX)..];
    eprintln!(
        "----- {label} log (last {} bytes) -----\n{}",
        tail.len(),
        String::from_utf8_lossy(tail)
    );
}

/// A directory on the real disk (O_DIRECT does not work on tmpfs), removed on drop.
pub fn test_dir(name: &str) -> tempfile::TempDir {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).expect("target tmpdir");
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(root)
        .expect("tempdir")
}

/// A batch of `records` records with values of `value_len` bytes, tagged by `tag`.
pub fn batch(tag: u64, records: u32, value_len: usize, timestamp: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new(BatchOptions::default());
    for i in 0..records {
        let key = format!("k{tag}-{i}");
        let mut value = format!("v{tag}-{i}-").into_bytes();
        value.resize(value_len.max(value.len()), b'x' + (tag % 3) as u8);
        builder.push(
            timestamp + i64::from(i),
            Some(key.as_bytes()),
            Some(&value),
            &[],
        );
    }
    builder.finish()
}

/// `batch` as the log stores it: stamped with its offset and epoch.
pub fn stamped(mut bytes: Vec<u8>, base_offset: u64, epoch: u32) -> Vec<u8> {
    stamp(&mut bytes, base_offset, epoch);
    bytes
}
