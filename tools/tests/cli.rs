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
    // Placement uses the brokers registered when the topic is created: wait for all three, or
    // the victim may hold no replica at all.
    wait_until("three live brokers", Duration::from_secs(30), || {
        let output = sluice(b, &["cluster", "info", "--output", "json"]);
        output.status.success()
            && json(&stdout(&output))["brokers"]
                .as_array()
                .is_some_and(|all| all.iter().filter(|x| x["alive"] == true).count() == 3)
    });
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
        // The dead broker is marked before its partitions' in-sync sets shrink (a leader
        // drops a follower after `replica.lag.time.max.ms`): wait for both.
        let troubled = ["under_replicated_partitions", "offline_partitions"]
            .iter()
            .map(|k| last[k].as_array().map_or(0, Vec::len))
            .sum::<usize>();
        last["brokers_down"] == serde_json::json!([victim]) && troubled == 2
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

    // The operator's way out: move a partition off the dead broker, then hand its leadership
    // to the preferred replica.
    let stranded = d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["replicas"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(victim))
        })
        .unwrap_or_else(|| panic!("a partition on broker {victim}: {d}"))
        .clone();
    let partition = stranded["partition"].as_u64().unwrap().to_string();
    // The live brokers, the one not leading first, so the election has something to do.
    let mut target: Vec<u64> = (1..=3).filter(|b| *b != victim).collect();
    if stranded["leader"] == serde_json::json!(target[0]) {
        target.reverse();
    }
    let target_list = format!("{},{}", target[0], target[1]);
    let moved = json(&ok(
        sluice(
            b,
            &[
                "partition",
                "move",
                "replicated",
                &partition,
                "--replicas",
                &target_list,
                "--output",
                "json",
            ],
        ),
        "partition move",
    ));
    assert_eq!(moved["started"], true);
    assert_eq!(moved["target_replicas"], serde_json::json!(target));
    assert_eq!(moved["previous_replicas"], stranded["replicas"]);
    let described = |b: &str| {
        let d = json(&ok(
            sluice(b, &["topic", "describe", "replicated", "--output", "json"]),
            "describe during the move",
        ));
        d["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["partition"] == stranded["partition"])
            .unwrap()
            .clone()
    };
    wait_until("the move to finish", Duration::from_secs(30), || {
        let p = described(b);
        p["replicas"] == serde_json::json!(target) && p["in_sync"].as_array().unwrap().len() == 2
    });
    let table = ok(
        sluice(b, &["partition", "elect-leader", "replicated", &partition]),
        "elect leader",
    );
    assert!(
        table.starts_with(&format!("replicated/{partition}: leader {} ", target[0])),
        "{table}"
    );
    assert_eq!(described(b)["leader"], serde_json::json!(target[0]));
}

/// The sum of a per-partition field of `group describe --output json`'s offsets.
fn offsets_sum(describe: &Value, field: &str) -> u64 {
    describe["offsets"]
        .as_array()
        .unwrap_or_else(|| panic!("no offsets: {describe}"))
        .iter()
        .map(|o| o[field].as_u64().unwrap_or_else(|| panic!("{field}: {o}")))
        .sum()
}

fn describe_group(b: &str, group: &str) -> Value {
    json(&ok(
        sluice(b, &["group", "describe", group, "--output", "json"]),
        "group describe",
    ))
}

fn group_and_partition_commands_print_tables_and_json_and_name_their_errors() {
    let broker = BrokerProcess::start("cli-groups", 2, &[]);
    let b = broker.listen.clone();
    let b = b.as_str();
    create(b, &["topic", "create", "events", "--partitions", "2"]);
    let lines: String = (0..10).map(|i| format!("e{i}\n")).collect();
    ok(
        sluice_in(b, &["produce", "events", "--partition", "0"], &lines[..15]),
        "produce p0",
    );
    ok(
        sluice_in(b, &["produce", "events", "--partition", "1"], &lines[15..]),
        "produce p1",
    );

    // consume --group: reads from the beginning, commits what it printed, leaves at exit.
    let read = ok(
        sluice(
            b,
            &[
                "consume", "events", "--group", "g1", "--count", "4", "--output", "json",
            ],
        ),
        "consume --group",
    );
    assert_eq!(read.lines().count(), 4, "{read}");
    for line in read.lines() {
        assert!(
            json(line)["value"].as_str().unwrap().starts_with('e'),
            "{line}"
        );
    }
    let d = describe_group(b, "g1");
    assert_eq!(d["group"], "g1");
    assert_eq!(d["members"].as_array().unwrap().len(), 0, "closed: {d}");
    assert!(d["group_epoch"].as_u64().unwrap() >= 1, "{d}");
    assert!(d["assignor"].as_str().is_some_and(|a| !a.is_empty()), "{d}");
    assert_eq!(offsets_sum(&d, "committed"), 4, "{d}");
    assert_eq!(offsets_sum(&d, "high_watermark"), 10, "{d}");
    assert_eq!(offsets_sum(&d, "lag"), 6, "{d}");
    let table = ok(sluice(b, &["group", "describe", "g1"]), "describe table");
    assert!(table.starts_with("group g1: "), "{table}");
    assert!(table.contains("0 members"), "{table}");
    for column in ["TOPIC", "PARTITION", "COMMITTED", "HIGH-WATERMARK", "LAG"] {
        assert!(table.contains(column), "{column}: {table}");
    }
    assert!(table.lines().any(|l| l.starts_with("events")), "{table}");

    // A second member resumes where the first stopped: nothing read twice.
    let rest = ok(
        sluice(b, &["consume", "events", "--group", "g1", "--count", "6"]),
        "consume the rest",
    );
    let mut all: Vec<String> = read
        .lines()
        .map(|l| json(l)["value"].as_str().unwrap().to_string())
        .chain(rest.lines().map(String::from))
        .collect();
    all.sort();
    let expected: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    assert_eq!(all, expected, "every record once");
    assert_eq!(offsets_sum(&describe_group(b, "g1"), "lag"), 0);

    // group list
    let list = json(&ok(
        sluice(b, &["group", "list", "--output", "json"]),
        "group list",
    ));
    let g1 = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "g1")
        .unwrap_or_else(|| panic!("g1 not listed: {list}"))
        .clone();
    assert_eq!(g1["members"], 0);
    assert!(g1["state"].is_string(), "{g1}");
    let table = ok(sluice(b, &["group", "list"]), "group list table");
    assert!(table.starts_with("GROUP"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("g1 ")), "{table}");

    // Unknown groups.
    for args in [
        &["group", "describe", "nope"][..],
        &["group", "delete", "nope"][..],
    ] {
        fails(
            sluice(b, args),
            1,
            &["\"nope\"", "GroupIdNotFound", "sluice group list"],
            &format!("{args:?}"),
        );
    }

    // reset-offsets: a dry run changes nothing, then each kind of target.
    let plan = json(&ok(
        sluice(
            b,
            &[
                "group",
                "reset-offsets",
                "g1",
                "--topic",
                "events",
                "--to",
                "earliest",
                "--dry-run",
                "--output",
                "json",
            ],
        ),
        "reset dry run",
    ));
    assert_eq!(plan["dry_run"], true);
    let planned = plan["offsets"].as_array().unwrap();
    assert_eq!(planned.len(), 2, "{plan}");
    assert!(planned.iter().all(|o| o["offset"] == 0), "{plan}");
    assert_eq!(
        planned
            .iter()
            .map(|o| o["previous"].as_u64().unwrap())
            .sum::<u64>(),
        10,
        "{plan}"
    );
    assert_eq!(offsets_sum(&describe_group(b, "g1"), "committed"), 10);
    let table = ok(
        sluice(
            b,
            &[
                "group",
                "reset-offsets",
                "g1",
                "--topic",
                "events",
                "--to",
                "earliest",
                "--dry-run",
            ],
        ),
        "reset dry run table",
    );
    assert!(table.contains("would reset (dry run)"), "{table}");
    assert_eq!(offsets_sum(&describe_group(b, "g1"), "committed"), 10);

    let table = ok(
        sluice(
            b,
            &[
                "group",
                "reset-offsets",
                "g1",
                "--topic",
                "events",
                "--to",
                "earliest",
            ],
        ),
        "reset to earliest",
    );
    assert!(
        table.contains("reset offsets of group g1 on events"),
        "{table}"
    );
    let d = describe_group(b, "g1");
    assert_eq!(offsets_sum(&d, "committed"), 0, "{d}");
    assert_eq!(offsets_sum(&d, "lag"), 10, "{d}");
    ok(
        sluice(
            b,
            &[
                "group",
                "reset-offsets",
                "g1",
                "--topic",
                "events",
                "--partition",
                "1",
                "--to",
                "offset:3",
            ],
        ),
        "reset one partition to an offset",
    );
    let d = describe_group(b, "g1");
    let p1 = d["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["partition"] == 1)
        .unwrap()
        .clone();
    assert_eq!(p1["committed"], 3, "{d}");
    assert_eq!(offsets_sum(&d, "committed"), 3, "{d}");
    ok(
        sluice(
            b,
            &[
                "group",
                "reset-offsets",
                "g1",
                "--topic",
                "events",
                "--to",
                "latest",
            ],
        ),
        "reset to latest",
    );
    assert_eq!(offsets_sum(&describe_group(b, "g1"), "lag"), 0);
    // Every record is newer than time 0: back to the start of each log.
    ok(
        sluice(
            b,
            &[
                "group",
                "reset-offsets",
                "g1",
                "--topic",
                "events",
                "--to",
                "time:0",
            ],
        ),
        "reset to a time",
    );
    assert_eq!(offsets_sum(&describe_group(b, "g1"), "committed"), 0);

    fails(
        sluice(
            b,
            &[
                "group",
                "reset-offsets",
                "g1",
                "--topic",
                "events",
                "--to",
                "middle",
            ],
        ),
        2,
        &["earliest, latest, offset:N or time:MS"],
        "bad --to",
    );
    fails(
        sluice(
            b,
            &[
                "group",
                "reset-offsets",
                "g1",
                "--topic",
                "nope",
                "--to",
                "earliest",
            ],
        ),
        1,
        &["unknown topic \"nope\""],
        "reset on an unknown topic",
    );
    fails(
        sluice(
            b,
            &[
                "group",
                "reset-offsets",
                "g1",
                "--topic",
                "events",
                "--partition",
                "7",
                "--to",
                "earliest",
            ],
        ),
        1,
        &["partitions 0..2, not 7"],
        "reset of an unknown partition",
    );
    fails(
        sluice(
            b,
            &["consume", "events", "--group", "g1", "--from", "offset:3"],
        ),
        2,
        &["sluice group reset-offsets"],
        "--group with --from offset",
    );

    // While a member is active, a reset is refused; Ctrl-C makes the member commit and leave.
    let member = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["consume", "events", "--group", "g1"])
        .env("SLUICE_BROKERS", b)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice consume");
    wait_until(
        "the member joined and read",
        Duration::from_secs(30),
        || {
            let d = describe_group(b, "g1");
            d["members"].as_array().unwrap().len() == 1 && offsets_sum(&d, "committed") == 10
        },
    );
    let d = describe_group(b, "g1");
    let assigned = d["members"][0]["assignment"].as_array().unwrap().len();
    assert_eq!(assigned, 2, "the only member owns both partitions: {d}");
    let table = ok(
        sluice(b, &["group", "describe", "g1"]),
        "describe with member",
    );
    assert!(
        table.contains("1 members") && table.contains("ASSIGNMENT"),
        "{table}"
    );
    assert!(table.contains("events/0,events/1"), "{table}");
    fails(
        sluice(
            b,
            &[
                "group",
                "reset-offsets",
                "g1",
                "--topic",
                "events",
                "--to",
                "earliest",
            ],
        ),
        1,
        &["refused", "1 active member", "sluice group describe g1"],
        "reset with a member",
    );
    fails(
        sluice(b, &["group", "delete", "g1"]),
        1,
        &["NonEmptyGroup"],
        "delete with a member",
    );
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(member.id() as i32, libc::SIGINT) };
    let exited = member.wait_with_output().expect("member output");
    assert_eq!(exited.status.code(), Some(0), "{}", stderr(&exited));
    assert_eq!(stdout(&exited).lines().count(), 10, "{}", stdout(&exited));
    let d = describe_group(b, "g1");
    assert_eq!(d["members"].as_array().unwrap().len(), 0, "left: {d}");
    assert_eq!(offsets_sum(&d, "lag"), 0, "{d}");

    // group delete
    let deleted = json(&ok(
        sluice(b, &["group", "delete", "g1", "--output", "json"]),
        "group delete",
    ));
    assert_eq!(deleted, serde_json::json!({"group": "g1", "deleted": true}));
    fails(
        sluice(b, &["group", "describe", "g1"]),
        1,
        &["GroupIdNotFound"],
        "describe after delete",
    );

    // topic add-partitions
    let table = ok(
        sluice(b, &["topic", "add-partitions", "events", "--count", "3"]),
        "add partitions",
    );
    assert!(table.contains("topic events: 2 -> 3 partitions"), "{table}");
    let grown = json(&ok(
        sluice(
            b,
            &[
                "topic",
                "add-partitions",
                "events",
                "--count",
                "4",
                "--output",
                "json",
            ],
        ),
        "add partitions json",
    ));
    assert_eq!(
        grown,
        serde_json::json!({"topic": "events", "previous_partitions": 3, "partitions": 4})
    );
    let d = json(&ok(
        sluice(b, &["topic", "describe", "events", "--output", "json"]),
        "describe grown",
    ));
    assert_eq!(d["partitions"].as_array().unwrap().len(), 4);
    fails(
        sluice(b, &["topic", "add-partitions", "events", "--count", "2"]),
        1,
        &["has 4 partitions already", "more than 4"],
        "shrink",
    );
    fails(
        sluice(b, &["topic", "add-partitions", "nope", "--count", "2"]),
        1,
        &["unknown topic \"nope\""],
        "add partitions to an unknown topic",
    );

    // partition elect-leader: on one broker the preferred replica leads already.
    let table = ok(
        sluice(b, &["partition", "elect-leader", "events", "0"]),
        "elect leader",
    );
    assert!(table.starts_with("events/0: leader 1 "), "{table}");
    let elected = json(&ok(
        sluice(
            b,
            &[
                "partition",
                "elect-leader",
                "events",
                "0",
                "--output",
                "json",
            ],
        ),
        "elect leader json",
    ));
    assert_eq!(elected["leader"], 1);
    assert_eq!(elected["replicas"], serde_json::json!([1]));
    fails(
        sluice(b, &["partition", "elect-leader", "events", "9"]),
        1,
        &["partitions 0..4, not 9"],
        "elect on an unknown partition",
    );
    fails(
        sluice(b, &["partition", "elect-leader", "nope", "0"]),
        1,
        &["unknown topic \"nope\""],
        "elect on an unknown topic",
    );

    // partition move: errors before anything is sent, and the broker's own refusal.
    fails(
        sluice(
            b,
            &["partition", "move", "events", "0", "--replicas", "1,1"],
        ),
        2,
        &["names a broker twice"],
        "move to a broker twice",
    );
    fails(
        sluice(b, &["partition", "move", "events", "9", "--replicas", "1"]),
        1,
        &["partitions 0..4, not 9"],
        "move an unknown partition",
    );
    fails(
        sluice(b, &["partition", "move", "events", "0", "--replicas", "7"]),
        1,
        &["moving events/0"],
        "move to an unknown broker",
    );
    fails(
        sluice(b, &["partition", "move", "events", "0"]),
        2,
        &["--replicas"],
        "move without replicas",
    );
}

fn main() -> ExitCode {
    if let Some(code) = common::run_broker_if_child() {
        return code;
    }
    let tests: [(&str, fn()); 3] = [
        (
            "group_and_partition_commands_print_tables_and_json_and_name_their_errors",
            group_and_partition_commands_print_tables_and_json_and_name_their_errors,
        ),
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
