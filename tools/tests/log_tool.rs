//! Tests of `sluice log dump` and `sluice log verify` on partitions written by the broker's own
//! partition log (real O_DIRECT segment and index files), then damaged on purpose.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sluice_broker::storage::{FlushPolicy, LogConfig, PartitionLog};
use sluice_protocol::{BatchBuilder, BatchOptions};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("run sluice")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Writes 60 batches into small segments; returns the partition directory.
fn partition(root: &Path) -> PathBuf {
    let dir = root.join("orders-0");
    let path = dir.clone();
    sluice_broker::shard::spawn_executor(
        glommio::LocalExecutorBuilder::default(),
        "writer",
        move || async move {
            let config = LogConfig {
                segment_bytes_max: 8 << 10,
                batch_bytes_max: 4 << 10,
                write_buffer_bytes: 16 << 10,
                index_interval_bytes: 1024,
                flush: FlushPolicy::Always,
                ..LogConfig::default()
            };
            let (log, _) = PartitionLog::open(&path, config).await.expect("open");
            for i in 0..60u32 {
                let mut builder = BatchBuilder::new(BatchOptions::default());
                builder.push(
                    1_000 + i64::from(i),
                    Some(format!("key-{i}").as_bytes()),
                    Some(format!("value-{i}").as_bytes()),
                    &[(b"h", Some(b"x"))],
                );
                builder.push(1_000 + i64::from(i), None, Some(&vec![b'z'; 400]), &[]);
                log.append_durable(&builder.finish(), 3)
                    .await
                    .expect("append");
            }
            log.close().await.expect("close");
        },
    )
    .expect("executor")
    .join()
    .expect("join");
    dir
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

fn root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("logtool")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

#[test]
fn clean_partitions_verify_and_dump_records() {
    let root = root();
    let dir = partition(root.path());
    let verify = sluice(&["log", "verify", dir.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert!(text(&verify).contains("ok:"), "{}", text(&verify));
    assert!(segments(&dir).len() > 2, "small segments rolled");
    let first = segments(&dir)[0].clone();
    let dump = sluice(&["log", "dump", first.to_str().unwrap(), "--records"]);
    assert_eq!(dump.status.code(), Some(0), "{}", text(&dump));
    let out = text(&dump);
    assert!(out.contains("position 0 base 0 last 1 count 2"), "{out}");
    assert!(out.contains("key \"key-0\" value \"value-0\""), "{out}");
    assert!(out.contains("\"h\"=\"x\""), "{out}");
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_named_with_its_position() {
    let root = root();
    let dir = partition(root.path());
    let sealed = segments(&dir)[1].clone();
    let mut bytes = std::fs::read(&sealed).unwrap();
    // Damage the second batch of the segment: find its position from the first one's length.
    let first_len = sluice_protocol::batch::declared_len(&bytes).unwrap();
    bytes[first_len + 100] ^= 0x20;
    std::fs::write(&sealed, &bytes).unwrap();
    let verify = sluice(&["log", "verify", dir.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    let out = text(&verify);
    assert!(
        out.contains(&format!(
            "damaged: {}: at byte {first_len}",
            sealed.display()
        )),
        "{out}"
    );
    assert!(out.contains("CRC"), "{out}");
    let dump = sluice(&["log", "dump", sealed.to_str().unwrap()]);
    assert_eq!(dump.status.code(), Some(1));
    assert!(text(&dump).contains(&format!("at byte {first_len}")));
}

#[test]
fn torn_tails_damaged_and_missing_indexes() {
    let root = root();
    let dir = partition(root.path());
    let logs = segments(&dir);
    // A torn tail in the active segment.
    let active = logs.last().unwrap().clone();
    let length = std::fs::metadata(&active).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap();
    file.set_len(length - 7).unwrap();
    let verify = sluice(&["log", "verify", dir.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(text(&verify).contains("torn"), "{}", text(&verify));
    drop(file);

    // A missing index is a warning: the broker rebuilds it.
    let root = self::root();
    let dir = partition(root.path());
    let index = segments(&dir)[0].with_extension("index");
    std::fs::remove_file(&index).unwrap();
    let verify = sluice(&["log", "verify", dir.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert!(text(&verify).contains("index files missing"));

    // A damaged index is reported.
    let index = segments(&dir)[1].with_extension("index");
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&index, bytes).unwrap();
    let verify = sluice(&["log", "verify", dir.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(
        text(&verify).contains(&format!("damaged: {}: index", index.display())),
        "{}",
        text(&verify)
    );
}

#[test]
fn bad_paths_exit_2() {
    let dump = sluice(&["log", "dump", "/nonexistent/00000000000000000000.log"]);
    assert_eq!(dump.status.code(), Some(2));
    assert!(text(&dump).starts_with("sluice: "));
    let verify = sluice(&["log", "verify", "/nonexistent"]);
    assert_eq!(verify.status.code(), Some(2));
    assert_eq!(sluice(&["log", "frobnicate"]).status.code(), Some(2));
}

#[test]
fn compacted_partitions_verify_and_dump_their_empty_batches() {
    let root = root();
    let dir = root.path().join("offsets-0");
    let path = dir.clone();
    sluice_broker::shard::spawn_executor(
        glommio::LocalExecutorBuilder::default(),
        "writer",
        move || async move {
            let config = LogConfig {
                segment_bytes_max: 8 << 10,
                batch_bytes_max: 4 << 10,
                write_buffer_bytes: 16 << 10,
                index_interval_bytes: 1024,
                flush: FlushPolicy::Never,
                cleanup_policy: sluice_broker::storage::CleanupPolicy::Compact,
                ..LogConfig::default()
            };
            let (log, _) = PartitionLog::open(&path, config).await.expect("open");
            for i in 0..400u32 {
                let mut builder = BatchBuilder::new(BatchOptions::default());
                let value = format!("value-{i}");
                builder.push(
                    1_000,
                    Some(format!("key-{}", i % 4).as_bytes()),
                    Some(value.as_bytes()),
                    &[],
                );
                log.append(&builder.finish(), 3).await.expect("append");
            }
            log.flush().await.expect("flush");
            let report = log.compact(2_000).await.expect("compact");
            assert!(report.records_removed > 0);
            log.close().await.expect("close");
        },
    )
    .expect("executor")
    .join()
    .expect("join");
    let verify = sluice(&["log", "verify", dir.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    let first = segments(&dir)[0].clone();
    let dump = sluice(&["log", "dump", first.to_str().unwrap(), "--records"]);
    assert_eq!(dump.status.code(), Some(0), "{}", text(&dump));
    let out = text(&dump);
    assert!(out.contains("count 0"), "{out}");
    assert!(
        out.contains("empty (records removed by compaction)"),
        "{out}"
    );
}
