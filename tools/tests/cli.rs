//! The `sluice` command line against real brokers, on the broker's own process harness
//! (`broker/tests/common`): every online command's table and JSON output, and its errors
//! (unknown topic, broker down, bad flags). This binary is also the broker: the harness runs it
//! again as one (`common::run_broker_if_child`), so it needs no other crate's binary.
//!
//! Runs without libtest (`harness = false`): `main` runs each test, prints its outcome and a
//! closing `N passed, N failed` line, and exits non-zero if any failed.

#[path = "../../broker/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::cluster::{wait_until, Cluster};
use common::BrokerProcess;

/// Runs `sluice` with `args` against `brokers`, feeding `stdin`.
fn sluice_in(brokers: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_BROKERS", brokers)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("sluice output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "sluice {args:?} panicked: {stderr}"
    );
    output
}

fn sluice(brokers: &str, args: &[&str]) -> Output {
    sluice_in(brokers, args, "")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(output: Output, what: &str) -> String {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{what}: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Asserts exit code `code` with one line on stderr containing every `needles`.
fn fails(output: Output, code: i32, needles: &[&str], what: &str) {
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(code), "{what}: {err}");
    if code == 1 {
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
        assert!(err.starts_with("sluice: "), "{what}: {err}");
    }
    for needle in needles {
        assert!(err.contains(needle), "{what}: {needle:?} not in {err}");
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Creates a topic through the CLI, retrying while the broker's metadata is still starting.
fn create(brokers: &str, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = sluice(brokers, args);
        if output.status.success() || Instant::now() > deadline {
            return ok(output, "topic create");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn single_broker_commands_print_tables_and_json_and_name_their_errors() {
    let mut broker = BrokerProcess::start("cli", 2, &[]);
    let b = broker.listen.clone();
    let b = b.as_str();

    // cluster info
    let table = ok(sluice(b, &["cluster", "info"]), "cluster info");
    assert!(table.contains("controller: 1"), "{table}");
    assert!(
        table.contains("BROKER") && table.contains("SHARD-ADDRESSES"),
        "{table}"
    );
    assert!(
        table.contains(&broker.listen) && table.contains("alive"),
        "{table}"
    );
    let info = json(&ok(
        sluice(b, &["cluster", "info", "--output", "json"]),
        "info json",
    ));
    assert_eq!(info["controller"], 1);
    assert!(info["metadata_version"].as_u64().unwrap() >= 1);
    assert_eq!(info["brokers"][0]["id"], 1);
    assert_eq!(info["brokers"][0]["alive"], true);
    assert_eq!(info["brokers"][0]["shards"], 2);
    assert_eq!(info["brokers"][0]["address"], broker.listen.as_str());

    // topic create, with settings, and its errors
    let created = create(
        b,
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--config",
            "retention.ms=-1",
        ],
    );
    assert!(
        created.contains("created topic orders (3 partitions, 1 replicas)"),
        "{created}"
    );
    let created = json(&create(
        b,
        &[
            "topic",
            "create",
            "audit",
            "--output",
            "json",
            "--config",
            "segment.bytes=2097152",
        ],
    ));
    assert_eq!(created["topic"], "audit");
    assert_eq!(created["partitions"], 1);
    fails(
        sluice(b, &["topic", "create", "orders"]),
        1,
        &["TopicExists", "already exists"],
        "create twice",
    );
    fails(
        sluice(
            b,
            &["topic", "create", "x", "--config", "retention.hours=1"],
        ),
        1,
        &["retention.hours", "InvalidConfig"],
        "unknown setting",
    );
    fails(
        sluice(b, &["topic", "create", "x", "--replicas", "2"]),
        1,
        &["InvalidReplicationFactor", "live brokers"],
        "too many replicas",
    );
    fails(
        sluice(b, &["topic", "create", "bad name"]),
        1,
        &["InvalidTopic"],
        "bad name",
    );
    fails(
        sluice(b, &["topic", "create", "x", "--config", "novalue"]),
        2,
        &["key=value"],
        "setting",
    );

    // topic list
    let list = ok(sluice(b, &["topic", "list"]), "topic list");
    let row = list
        .lines()
        .find(|l| l.starts_with("orders"))
        .expect("orders row");
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["orders", "3", "1"]
    );
    let list = json(&ok(
        sluice(b, &["topic", "list", "--output", "json"]),
        "list json",
    ));
    let names: Vec<&str> = list["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["audit", "orders"]);

    // produce from stdin: keys split off, one record per line
    let lines: Vec<String> = (0..30).map(|i| format!("key{i}:value {i}")).collect();
    let input = lines.join("\n") + "\n";
    let produced = sluice_in(b, &["produce", "orders", "--key-separator", ":"], &input);
    ok(produced, "produce");
    let produced = json(&ok(
        sluice_in(
            b,
            &[
                "produce",
                "orders",
                "--partition",
                "2",
                "--acks",
                "leader",
                "--compression",
                "lz4",
                "--linger-ms",
                "1",
                "--output",
                "json",
            ],
            "plain one\nplain two\n",
        ),
        "produce json",
    ));
    assert_eq!(produced["records"], 2);
    assert_eq!(produced["partitions"][0]["partition"], 2);

    // consume: formats, JSON lines, counts, starting points
    let consumed = ok(
        sluice(
            b,
            &["consume", "orders", "--exit", "--format", "%k=%v@%p/%o"],
        ),
        "consume",
    );
    let mut got: Vec<&str> = consumed.lines().collect();
    assert_eq!(got.len(), 32, "{consumed}");
    got.sort();
    for i in 0..30 {
        let prefix = format!("key{i}=value {i}@");
        assert!(
            got.iter().any(|l| l.starts_with(&prefix)),
            "{prefix} in {consumed}"
        );
    }
    assert!(
        got.iter().any(|l| l.starts_with("=plain two@2/")),
        "{consumed}"
    );
    let records: Vec<Value> = ok(
        sluice(b, &["consume", "orders", "--exit", "--output", "json"]),
        "consume json",
    )
    .lines()
    .map(json)
    .collect();
    assert_eq!(records.len(), 32);
    for r in &records {
        for key in ["topic", "partition", "offset", "timestamp", "key", "value"] {
            assert!(r.get(key).is_some(), "{key} in {r}");
        }
    }
    let two = ok(sluice(b, &["consume", "orders", "--count", "2"]), "count");
    assert_eq!(two.lines().count(), 2);
    let from_one = ok(
        sluice(
            b,
            &[
                "consume",
                "orders",
                "--partition",
                "2",
                "--from",
                "offset:1",
                "--exit",
                "--format",
                "%o %v",
            ],
        ),
        "from offset",
    );
    assert!(from_one.lines().all(|l| !l.starts_with("0 ")), "{from_one}");
    assert!(from_one.ends_with("plain two\n"), "{from_one}");
    let from_end = ok(
        sluice(b, &["consume", "orders", "--from", "end", "--exit"]),
        "end",
    );
    assert_eq!(from_end, "");
    let from_time = ok(
        sluice(b, &["consume", "orders", "--from", "time:0", "--exit"]),
        "time",
    );
    assert_eq!(from_time.lines().count(), 32);

    // topic describe: per partition leader, replicas, in-sync, log start/end, high watermark,
    // size; the settings
    let described = ok(sluice(b, &["topic", "describe", "orders"]), "describe");
    assert!(described.contains("retention.ms=-1"), "{described}");
    assert!(described.contains("HIGH-WATERMARK"), "{described}");
    assert_eq!(
        described
            .lines()
            .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .count(),
        3,
        "{described}"
    );
    let d = json(&ok(
        sluice(b, &["topic", "describe", "orders", "--output", "json"]),
        "describe json",
    ));
    assert_eq!(d["name"], "orders");
    assert_eq!(d["config"]["retention.ms"], "-1");
    let partitions = d["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 3);
    let mut end_total = 0;
    for p in partitions {
        assert_eq!(p["leader"], 1);
        assert_eq!(p["in_sync"], serde_json::json!([1]));
        assert_eq!(p["replicas"], serde_json::json!([1]));
        assert_eq!(p["log_start"], 0);
        assert_eq!(p["high_watermark"], p["log_end"]);
        let end = p["log_end"].as_u64().unwrap();
        end_total += end;
        assert_eq!(end > 0, p["size_bytes"].as_u64().unwrap() > 0, "{p}");
        assert_eq!(p["replica_logs"][0]["broker"], 1);
        assert_eq!(p["replica_logs"][0]["durable_end"], p["log_end"]);
    }
    assert_eq!(end_total, 32);

    // topic alter-config: alterable settings change, the others are refused by name
    let altered = ok(
        sluice(
            b,
            &[
                "topic",
                "alter-config",
                "orders",
                "--config",
                "retention.ms=3600000",
            ],
        ),
        "alter",
    );
    assert!(
        altered.contains("altered topic orders: retention.ms=3600000"),
        "{altered}"
    );
    let altered = json(&ok(
        sluice(
            b,
            &[
                "topic",
                "alter-config",
                "orders",
                "--config",
                "retention.bytes=1048576",
                "--output",
                "json",
            ],
        ),
        "alter json",
    ));
    assert_eq!(altered["config"]["retention.bytes"], "1048576");
    assert_eq!(altered["config"]["retention.ms"], "3600000");
    let d = json(&ok(
        sluice(b, &["topic", "describe", "orders", "--output", "json"]),
        "describe",
    ));
    assert_eq!(d["config"]["retention.ms"], "3600000");
    fails(
        sluice(
            b,
            &[
                "topic",
                "alter-config",
                "orders",
                "--config",
                "segment.bytes=2097152",
            ],
        ),
        1,
        &["segment.bytes cannot be changed", "InvalidConfig"],
        "alter segment.bytes",
    );
    fails(
        sluice(
            b,
            &[
                "topic",
                "alter-config",
                "orders",
                "--config",
                "min.insync.replicas=2",
            ],
        ),
        1,
        &["replication factor"],
        "alter min.insync.replicas",
    );
    fails(
        sluice(
            b,
            &[
                "topic",
                "alter-config",
                "nope",
                "--config",
                "retention.ms=1",
            ],
        ),
        1,
        &["unknown topic \"nope\""],
        "alter nope",
    );
    fails(
        sluice(b, &["topic", "alter-config", "orders"]),
        2,
        &["--config"],
        "alter nothing",
    );

    // cluster health
    let health = ok(sluice(b, &["cluster", "health"]), "health");
    assert!(health.contains("healthy: yes"), "{health}");
    let health = json(&ok(
        sluice(b, &["cluster", "health", "--output", "json"]),
        "health json",
    ));
    assert_eq!(health["healthy"], true);
    assert_eq!(health["under_replicated_partitions"], serde_json::json!([]));

    // unknown topics and partitions
    for args in [
        &["topic", "describe", "nope"][..],
        &["topic", "delete", "nope"],
        &["consume", "nope", "--exit"],
    ] {
        fails(
            sluice(b, args),
            1,
            &["unknown topic \"nope\"", "sluice topic"],
            &format!("{args:?}"),
        );
    }
    fails(
        sluice_in(b, &["produce", "nope"], "x\n"),
        1,
        &["unknown topic"],
        "produce nope",
    );
    fails(
        sluice(b, &["consume", "orders", "--partition", "9"]),
        1,
        &["partitions 0..3", "--partition"],
        "partition 9",
    );

    // bad command lines: exit 2, clap's message
    fails(sluice(b, &["topic", "create"]), 2, &["NAME"], "no name");
    fails(
        sluice(b, &["consume", "orders", "--from", "middle"]),
        2,
        &["offset:N"],
        "from",
    );
    fails(
        sluice(b, &["topic", "list", "--output", "yaml"]),
        2,
        &["yaml"],
        "output",
    );
    fails(
        sluice(b, &["topic", "frobnicate"]),
        2,
        &["frobnicate"],
        "subcommand",
    );

    // completions
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(sluice(b, &["completions", shell]), shell);
        assert!(
            script.contains("sluice") && script.contains("consume"),
            "{shell}"
        );
    }

    // delete
    let deleted = ok(
        sluice(b, &["topic", "delete", "audit", "--output", "json"]),
        "delete",
    );
    assert_eq!(json(&deleted)["deleted"], true);
    let list = ok(sluice(b, &["topic", "list"]), "list after delete");
    assert!(!list.contains("audit"), "{list}");

    // the broker down: every online command names the address and what to do
    broker.kill();
    for args in [
        &["cluster", "info"][..],
        &["topic", "list"],
        &["consume", "orders", "--exit"],
    ] {
        fails(
            sluice(b, args),
            1,
            &["no broker reachable", b, "--brokers"],
            &format!("down: {args:?}"),
        );
    }
}

fn cluster_health_exits_3_while_a_partition_is_under_replicated() {
    let _serial = common::cluster::serial();
    // Three voters, so the metadata keeps a quorum (and marks the dead broker) with one gone.
    let mut cluster = Cluster::new(3, 1_000);
    let controller = cluster.wait_for_controller(&[1, 2, 3]);
    let victim = if controller == 3 { 2 } else { 3 };
    let brokers = cluster
        .brokers
        .iter()
        .map(|b| b.process.listen.clone())
        .collect::<Vec<_>>()
        .join(",");
    let b = brokers.as_str();
    create(
        b,
        &[
            "topic",
            "create",
            "replicated",
            "--partitions",
            "3",
            "--replicas",
            "2",
        ],
    );
    // A new partition's in-sync set is its leader alone until the follower catches up.
    wait_until("every replica in sync", Duration::from_secs(30), || {
        sluice(b, &["cluster", "health"]).status.code() == Some(0)
    });
    let healthy = json(&ok(
        sluice(b, &["cluster", "health", "--output", "json"]),
        "health",
    ));
    assert_eq!(healthy["healthy"], true);

    cluster.broker(victim).kill9();
    let mut last = Value::Null;
    wait_until("the dead broker reported", Duration::from_secs(30), || {
        let output = sluice(b, &["cluster", "health", "--output", "json"]);
        if output.status.code() != Some(3) {
            return false;
        }
        last = json(&stdout(&output));
        last["brokers_down"] == serde_json::json!([victim])
    });
    assert_eq!(last["healthy"], false);
    let troubled: Vec<&Value> = last["under_replicated_partitions"]
        .as_array()
        .unwrap()
        .iter()
        .chain(last["offline_partitions"].as_array().unwrap())
        .collect();
    // Each broker holds two of the six replicas.
    assert_eq!(troubled.len(), 2, "{last}");
    for p in troubled {
        assert!(
            p["replicas"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(victim)),
            "{p}"
        );
    }
    let table = sluice(b, &["cluster", "health"]);
    assert_eq!(table.status.code(), Some(3));
    let table = stdout(&table);
    assert!(table.contains("healthy: no"), "{table}");
    assert!(
        table.contains(&format!("brokers down: {victim}")),
        "{table}"
    );
    // Describe still answers, the dead replica's log unknown.
    let d = json(&ok(
        sluice(b, &["topic", "describe", "replicated", "--output", "json"]),
        "describe with a broker down",
    ));
    assert_eq!(d["partitions"].as_array().unwrap().len(), 3);
}

fn main() -> ExitCode {
    if let Some(code) = common::run_broker_if_child() {
        return code;
    }
    let tests: [(&str, fn()); 2] = [
        (
            "single_broker_commands_print_tables_and_json_and_name_their_errors",
            single_broker_commands_print_tables_and_json_and_name_their_errors,
        ),
        (
            "cluster_health_exits_3_while_a_partition_is_under_replicated",
            cluster_health_exits_3_while_a_partition_is_under_replicated,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let started = Instant::now();
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                passed += 1;
                println!(
                    "test {name} ... ok ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
