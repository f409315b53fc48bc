//! Ten thousand partitions on one broker process started with a low open-files limit (soft
//! 1,024, hard 13,000): the topic is created in one request, every partition takes writes
//! through the client until its first segment rolls, every record is read back from the start
//! (the sealed segments through the shards' descriptor caches: 20,000 segment files against
//! 13,000 descriptors), and the broker restarts cleanly over them all.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_client::{
    Admin, Consumer, ConsumerConfig, OffsetReset, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};

use common::clients::ClientOf;
use common::BrokerProcess as Broker;

const PARTITIONS: u32 = 10_000;
/// Records per partition, each its own batch: with 4 KiB segments and ~3 KiB batches the second
/// one rolls the first segment.
const ROUNDS: u32 = 2;
const VALUE_BYTES: usize = 3000;
const OPEN_FILES_SOFT: u64 = 1024;
const OPEN_FILES_HARD: u64 = 13_000;

fn value(partition: u32, round: u32) -> Vec<u8> {
    let mut value = format!("{partition}:{round}:").into_bytes();
    value.resize(VALUE_BYTES, b'a' + (partition % 26) as u8);
    value
}

/// The soft open-files limit of a running process, from `/proc/<pid>/limits`.
fn soft_open_files(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    line.split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .expect("a number")
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn ten_thousand_partitions_take_writes_under_a_low_open_files_limit() {
    let mut broker = Broker::start_with_open_files(
        "many-partitions",
        2,
        &["--log", "warn,sluice_broker::cli=info"],
        OPEN_FILES_SOFT,
        OPEN_FILES_HARD,
    );
    let pid = broker.pid().expect("running");
    assert_eq!(
        soft_open_files(pid),
        OPEN_FILES_HARD,
        "the broker raises its soft limit to the hard one"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        let admin = Admin::new(broker.config()).unwrap();
        let configs = [
            ("segment.bytes".to_string(), "4096".to_string()),
            ("max.message.bytes".to_string(), "4096".to_string()),
        ];
        admin
            .create_topic_with_config("many", PARTITIONS, 1, &configs)
            .await
            .expect("a topic of 10,000 partitions in one request");
        eprintln!("many: topic created in {:?}", started.elapsed());
        let producer = Producer::new(
            ProducerConfig::new(broker.config())
                .batch_bytes_max(4096)
                .linger(Duration::from_millis(5)),
        )
        .await
        .unwrap();
        for round in 0..ROUNDS {
            // One batch per partition and round: a flush between rounds.
            let mut deliveries = Vec::with_capacity(PARTITIONS as usize);
            for partition in 0..PARTITIONS {
                let record = ProducerRecord::new("many")
                    .partition(partition)
                    .value(value(partition, round));
                deliveries.push(producer.send(record).await.unwrap());
            }
            for (partition, delivery) in deliveries.into_iter().enumerate() {
                let delivery = delivery
                    .await
                    .unwrap_or_else(|e| panic!("round {round}, partition {partition}: {e}"));
                assert_eq!(
                    delivery.offset,
                    Some(u64::from(round)),
                    "partition {partition}"
                );
            }
            producer.flush().await.unwrap();
            eprintln!(
                "many: round {round} acknowledged at {:?}",
                started.elapsed()
            );
        }
        producer.close().await.unwrap();
        assert!(
            open_files(pid) as u64 <= OPEN_FILES_HARD,
            "within the limit, or the broker would have failed"
        );
        read_back(&broker).await;
        eprintln!("many: read back at {:?}", started.elapsed());
    });
    // A clean stop and a start over 10,000 partitions: the active segments are not scanned.
    let status = broker.terminate();
    assert!(status.success(), "clean stop: {status}");
    let restarted = Instant::now();
    broker.spawn(false);
    runtime.block_on(async {
        let admin = Admin::new(broker.config()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        for partition in [0, 1, PARTITIONS / 2, PARTITIONS - 1] {
            let tp = TopicPartition::new("many", partition);
            // Served once its shard has opened the log (the shards open them after start).
            let end = loop {
                match admin.offset(&tp, sluice_client::Seek::Latest).await {
                    Ok(end) => break end,
                    Err(e) => assert!(Instant::now() < deadline, "{partition} not served: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(
                end,
                Some(u64::from(ROUNDS)),
                "partition {partition} after a restart"
            );
        }
    });
    eprintln!("many: restart served in {:?}", restarted.elapsed());
    eprintln!("many: restarted at {:?}", started.elapsed());
}

/// Every record of every partition from offset 0, in order, with its value.
async fn read_back(broker: &Broker) {
    let mut consumer = Consumer::new(
        ConsumerConfig::new(broker.config())
            .auto_offset_reset(OffsetReset::Earliest)
            .fetch_wait_max(Duration::from_millis(50)),
    )
    .unwrap();
    consumer.assign((0..PARTITIONS).map(|p| TopicPartition::new("many", p)));
    let mut next: HashMap<u32, u64> = HashMap::new();
    let expected = (PARTITIONS * ROUNDS) as usize;
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while read < expected {
        assert!(
            Instant::now() < deadline,
            "read {read} of {expected} records"
        );
        for record in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            let at = next.entry(record.partition).or_default();
            assert_eq!(
                record.offset, *at,
                "partition {} in order",
                record.partition
            );
            let round = record.offset as u32;
            assert_eq!(
                record.value.as_deref(),
                Some(&value(record.partition, round)[..]),
                "partition {} offset {}",
                record.partition,
                record.offset
            );
            *at += 1;
            read += 1;
        }
    }
}
