//! Short runs of the network scenarios (`produce`, `e2e`, `consume`) against a real broker
//! process, checking that each JSON result file is complete and sane: every record sent is
//! counted, nothing is received twice, percentiles are ordered. Nothing is asserted about speed.
//!
//! The scenarios start their broker as a child process of `sluice-bench` itself (running
//! `sluice-broker`'s start-up), so nothing else needs building.

use std::process::Command;

use serde_json::Value;

/// Runs a scenario with a small probe in its own directory and returns its JSON report.
fn run(name: &str, args: &[&str]) -> Value {
    let dir = tempfile::Builder::new()
        .prefix(&format!("smoke-{name}"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let json = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args(args)
        .args(["--probe-mib", "16", "--dir"])
        .arg(dir.path().join("data"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run sluice-bench");
    assert!(
        output.status.success(),
        "{args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("report written");
    let report: Value = serde_json::from_str(&text).expect("valid JSON");
    for key in [
        "scenario",
        "git_revision",
        "machine",
        "params",
        "probe",
        "result",
        "ratios",
    ] {
        assert!(report.get(key).is_some(), "{name}: no {key} in {text}");
    }
    assert!(
        report["probe"]["disk_write_fdatasync_mb_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    report
}

fn count(report: &Value, key: &str) -> u64 {
    report["result"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("result.{key} in {report}"))
}

/// p50 ≤ p90 ≤ p99 ≤ p99.9 ≤ p99.99 ≤ max, and as many samples as expected.
fn assert_ordered(latency: &Value, samples: u64) {
    let keys = [
        "p50_us", "p90_us", "p99_us", "p999_us", "p9999_us", "max_us",
    ];
    let values: Vec<u64> = keys.iter().map(|k| latency[k].as_u64().unwrap()).collect();
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "{latency}");
    assert!(values[0] >= 1, "{latency}");
    assert_eq!(latency["count"].as_u64(), Some(samples), "{latency}");
}

#[test]
fn produce_reports_every_record() {
    let report = run(
        "produce",
        &[
            "produce",
            "--messages",
            "3200",
            "--warmup",
            "0",
            "--partitions",
            "2",
            "--batch-records",
            "16",
            "--tail",
        ],
    );
    assert_eq!(count(&report, "records_sent"), 3200);
    // One latency sample per request of 16 records.
    assert_ordered(&report["result"]["produce_to_ack"], 200);
    assert!(count(&report, "tail_records") >= 3200);
    assert!(report["result"]["read_back_mb_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn e2e_consumes_exactly_what_it_produced() {
    let report = run(
        "e2e",
        &[
            "e2e",
            "--messages",
            "5000",
            "--warmup",
            "0",
            "--producers",
            "2",
            "--consumers",
            "2",
        ],
    );
    assert_eq!(count(&report, "records_acked"), 5000);
    assert_eq!(count(&report, "total_acked"), 5000);
    assert_eq!(count(&report, "total_consumed"), 5000);
    assert_eq!(count(&report, "records_consumed"), 5000);
    assert_eq!(count(&report, "duplicates"), 0);
    assert_ordered(&report["result"]["produce_to_ack"], 5000);
    assert_ordered(&report["result"]["produce_to_consume"], 5000);
    assert_eq!(
        count(&report, "bytes_acked"),
        5000 * report["params"]["record_bytes"].as_u64().unwrap()
    );
}

#[test]
fn e2e_at_a_fixed_rate_counts_from_intended_times() {
    let report = run(
        "e2e-rate",
        &[
            "e2e",
            "--messages",
            "400",
            "--warmup",
            "0",
            "--rate",
            "2000",
            "--acks",
            "leader",
            "--compression",
            "lz4",
        ],
    );
    assert_eq!(count(&report, "total_consumed"), 400);
    assert_eq!(count(&report, "duplicates"), 0);
    assert!(report["ratios"]["produce_vs_raw_write"].is_null(), "paced");
    assert_ordered(&report["result"]["produce_to_consume"], 400);
}

#[test]
fn consume_reads_the_prefilled_topic_from_the_start() {
    let report = run(
        "consume",
        &[
            "consume",
            "--prefill-mib",
            "8",
            "--partitions",
            "3",
            "--consumers",
            "2",
        ],
    );
    let prefilled = count(&report, "records_acked");
    assert_eq!(prefilled, (8 << 20) / 1024);
    assert_eq!(count(&report, "records_consumed"), prefilled);
    assert_eq!(count(&report, "total_consumed"), prefilled);
    assert_eq!(count(&report, "duplicates"), 0);
    assert!(report["result"]["produce_to_consume"].is_null());
    assert!(report["ratios"]["consume_vs_raw_read"].as_f64().unwrap() > 0.0);
}
