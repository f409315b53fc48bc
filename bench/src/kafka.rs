//! The `kafka` scenario: a Kafka client (confluent-kafka, on librdkafka) against the broker's
//! Kafka listener, held against the native client in the same run.
//!
//! One embedded broker with its Kafka listener on. The native producer writes `--mib` MiB to
//! one topic and confluent-kafka the same records to another (acks=all, idempotence on, 1 MiB
//! batches, 5 ms linger, no compression). The broker is then restarted, so both topics are read
//! from disk, and each topic is read back from offset 0: by the native consumer, and by a
//! confluent-kafka consumer. The broker's CPU time during each read, per GiB read, compares the
//! two fetch paths (both send stored batches with `sendfile`; target: within 10 %).
//!
//! confluent-kafka runs from a virtualenv (`--venv`), made and filled from the package
//! registry when missing, as the Kafka tests do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, OffsetReset, Producer, ProducerConfig,
    TopicPartition,
};

use crate::network::{free_address, Broker};

const NATIVE_TOPIC: &str = "native";
const KAFKA_TOPIC: &str = "kafka";
/// The confluent-kafka release the Kafka tests pin.
const CONFLUENT_KAFKA: &str = "confluent-kafka==2.16.1";

/// The Kafka side, run by the virtualenv's Python: `produce` or `consume`, then bootstrap,
/// topic, partitions, records, record bytes; prints one JSON line.
const SCRIPT: &str = r#"
import json, sys, time
from confluent_kafka import Consumer, Producer, TopicPartition
mode, bootstrap, topic = sys.argv[1], sys.argv[2], sys.argv[3]
partitions, count, size = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
if mode == "produce":
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 5, "batch.size": 1048576, "compression.type": "none",
                  "queue.buffering.max.kbytes": 1048576, "queue.buffering.max.messages": 1000000})
    value = b"k" * size
    failed = [0]
    def delivered(err, msg):
        if err is not None:
            failed[0] += 1
    start = time.monotonic()
    for i in range(count):
        while True:
            try:
                p.produce(topic, value=value, partition=i % partitions, on_delivery=delivered)
                break
            except BufferError:
                p.poll(0.005)
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(300)
    print(json.dumps({"seconds": time.monotonic() - start, "records": count - left - failed[0]}))
else:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "sluice-bench",
                  "enable.auto.commit": False, "fetch.max.bytes": 52428800,
                  "max.partition.fetch.bytes": 8388608, "fetch.wait.max.ms": 100,
                  "queued.max.messages.kbytes": 262144})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got, nbytes = 0, 0
    start = time.monotonic()
    while got < count and time.monotonic() - start < 600:
        for m in c.consume(num_messages=10000, timeout=1.0):
            if m.error() is None:
                got += 1
                nbytes += len(m.value() or b"")
    seconds = time.monotonic() - start
    c.close()
    print(json.dumps({"seconds": seconds, "records": got, "bytes": nbytes}))
"#;

#[derive(Debug, Clone, Default, Serialize)]
pub struct KafkaParams {
    pub mib: u64,
    pub record_bytes: usize,
    pub partitions: u32,
    pub mode: String,
    pub kafka_client: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KafkaResult {
    pub native_produce_mb_s: f64,
    pub kafka_produce_mb_s: f64,
    pub native_consume_mb_s: f64,
    pub kafka_consume_mb_s: f64,
    /// Broker CPU seconds per GiB read back.
    pub native_fetch_cpu_s_per_gib: f64,
    pub kafka_fetch_cpu_s_per_gib: f64,
    /// Kafka's fetch CPU per GiB over the native one's (target ≤ 1.1).
    pub kafka_vs_native_fetch_cpu: f64,
}

/// The virtualenv's Python, after making the virtualenv and installing confluent-kafka if
/// needed.
fn python(venv: &Path) -> Result<PathBuf, String> {
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import confluent_kafka"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .map_err(|e| format!("python3 -m venv: {e}"))?;
    if !made.success() {
        return Err(format!("python3 -m venv {} failed", venv.display()));
    }
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", CONFLUENT_KAFKA])
        .status()
        .map_err(|e| format!("pip: {e}"))?;
    if !installed.success() || !ready(&python) {
        return Err(format!(
            "installing {CONFLUENT_KAFKA} into {} failed",
            venv.display()
        ));
    }
    Ok(python)
}

/// Runs the Kafka side; returns (seconds, records).
fn kafka_side(python: &Path, script: &Path, args: &[String]) -> Result<(f64, u64), String> {
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| format!("confluent-kafka: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "confluent-kafka {}: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|e| format!("confluent-kafka said {line:?}: {e}"))?;
    Ok((
        v["seconds"].as_f64().unwrap_or(0.0),
        v["records"].as_u64().unwrap_or(0),
    ))
}

pub fn run(params: &KafkaParams, dir: &Path, venv: &Path) -> Result<KafkaResult, String> {
    let python = python(venv)?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let script = dir.join("kafka_bench.py");
    std::fs::write(&script, SCRIPT).map_err(|e| e.to_string())?;
    let kafka = free_address()?;
    let extra = vec![
        "--kafka-listen".to_string(),
        kafka.clone(),
        "--kafka-shard-ports".to_string(),
        (0..std::thread::available_parallelism().map_or(1, |n| n.get()))
            .map(|_| free_address().map(|a| a.rsplit(':').next().unwrap_or("0").to_string()))
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
    ];
    let data = dir.join("broker");
    let mut broker = Broker::start(&data, &params.mode, &extra)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let records = (params.mib << 20) / params.record_bytes as u64;
    let bytes = records * params.record_bytes as u64;
    let mb = bytes as f64 / 1e6;
    let listen = broker.listen.clone();
    let native_produce_s = runtime.block_on(async {
        let admin = Admin::new(ClientConfig::new([listen.clone()])).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        for topic in [NATIVE_TOPIC, KAFKA_TOPIC] {
            loop {
                match admin.create_topic(topic, params.partitions, 1).await {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!("create topic: {e}"))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        native_produce(&listen, params, records).await
    })?;
    let (kafka_produce_s, produced) = kafka_side(
        &python,
        &script,
        &[
            "produce".into(),
            kafka.clone(),
            KAFKA_TOPIC.into(),
            params.partitions.to_string(),
            records.to_string(),
            params.record_bytes.to_string(),
        ],
    )?;
    if produced != records {
        return Err(format!(
            "confluent-kafka delivered {produced} of {records} records"
        ));
    }
    // Read from disk: stop the broker cleanly and start it again (same data, same ports).
    broker.stop()?;
    broker.restart()?;
    let listen = broker.listen.clone();
    let cpu_before = broker.usage().0;
    let native_consume_s = runtime.block_on(native_consume(&listen, params, records))?;
    let cpu_native = broker.usage().0 - cpu_before;
    let cpu_before = broker.usage().0;
    let (kafka_consume_s, consumed) = kafka_side(
        &python,
        &script,
        &[
            "consume".into(),
            kafka,
            KAFKA_TOPIC.into(),
            params.partitions.to_string(),
            records.to_string(),
            params.record_bytes.to_string(),
        ],
    )?;
    let cpu_kafka = broker.usage().0 - cpu_before;
    broker.kill();
    if consumed != records {
        return Err(format!(
            "confluent-kafka read {consumed} of {records} records"
        ));
    }
    let gib = bytes as f64 / f64::from(1u32 << 30);
    let native_cpu = cpu_native / gib;
    let kafka_cpu = cpu_kafka / gib;
    Ok(KafkaResult {
        native_produce_mb_s: mb / native_produce_s,
        kafka_produce_mb_s: mb / kafka_produce_s,
        native_consume_mb_s: mb / native_consume_s,
        kafka_consume_mb_s: mb / kafka_consume_s,
        native_fetch_cpu_s_per_gib: native_cpu,
        kafka_fetch_cpu_s_per_gib: kafka_cpu,
        kafka_vs_native_fetch_cpu: if native_cpu > 0.0 {
            kafka_cpu / native_cpu
        } else {
            0.0
        },
    })
}

async fn native_produce(listen: &str, params: &KafkaParams, records: u64) -> Result<f64, String> {
    let producer = Producer::new(
        ProducerConfig::new(ClientConfig::new([listen.to_string()]))
            .acks(Acks::All)
            .linger(Duration::from_millis(5)),
    )
    .await
    .map_err(|e| e.to_string())?;
    let value = vec![b'n'; params.record_bytes];
    let started = Instant::now();
    crate::network::send_all(&producer, NATIVE_TOPIC, params.partitions, records, &value).await?;
    let seconds = started.elapsed().as_secs_f64();
    producer.close().await.map_err(|e| e.to_string())?;
    Ok(seconds)
}

async fn native_consume(listen: &str, params: &KafkaParams, records: u64) -> Result<f64, String> {
    let mut consumer = Consumer::new(
        ConsumerConfig::new(ClientConfig::new([listen.to_string()]))
            .auto_offset_reset(OffsetReset::Earliest)
            .fetch_bytes_max(50 << 20),
    )
    .map_err(|e| e.to_string())?;
    consumer.assign((0..params.partitions).map(|p| TopicPartition::new(NATIVE_TOPIC, p)));
    let started = Instant::now();
    let mut read = 0u64;
    while read < records {
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!("read {read} of {records} records"));
        }
        read += consumer
            .poll(Duration::from_millis(100))
            .await
            .map_err(|e| e.to_string())?
            .len() as u64;
    }
    Ok(started.elapsed().as_secs_f64())
}
