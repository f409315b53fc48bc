//! Integration tests of `sluice-client` against a real `sluice-broker` process over TCP: key
//! placement, ordering, backpressure, exactly-once across a SIGKILL and restart, compression,
//! the consumer's positions, typed errors and the blocking facade.
//!
//! They live with the broker because they need its binary; the client crate itself has no
//! dependency on the broker.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_client::{
    key_partition, Acks, ClientConfig, Compression, Consumer, ConsumerConfig, ConsumerRecord,
    Error, OffsetReset, Producer, ProducerConfig, ProducerRecord, Seek, TopicPartition,
};
use sluice_protocol::native::{
    decode_control, encode_control, encode_request, split_response, ApiKey, FetchPartition,
    FetchRequest, FetchResponse, MetadataRequest, MetadataResponse,
};
use sluice_protocol::BatchIter;

use common::clients::{create_topic, ClientOf};
use common::BrokerProcess as Broker;

/// A broker process with two shards, as these tests use it.
fn start_broker() -> Broker {
    start_broker_with(&[])
}

fn start_broker_with(args: &[&str]) -> Broker {
    Broker::start("client", 2, args)
}

/// Reads every record of the partitions from the start until `expected` records arrived.
async fn read_all(
    broker: &Broker,
    topic: &str,
    partitions: u32,
    expected: usize,
) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(
        ConsumerConfig::new(broker.config())
            .auto_offset_reset(OffsetReset::Earliest)
            .fetch_wait_max(Duration::from_millis(100)),
    )
    .unwrap();
    consumer.assign((0..partitions).map(|p| TopicPartition::new(topic, p)));
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while all.len() < expected {
        assert!(
            Instant::now() < deadline,
            "read {} of {expected} records",
            all.len()
        );
        all.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    // Nothing more than expected.
    let extra = consumer.poll(Duration::from_millis(300)).await.unwrap();
    assert!(
        extra.is_empty(),
        "{} records more than expected",
        extra.len()
    );
    all
}

fn text(bytes: &Option<bytes::Bytes>) -> String {
    String::from_utf8(bytes.as_ref().unwrap().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_on_stable_partitions_and_keyless_records_spread() {
    let broker = start_broker();
    create_topic(&broker, "placement", 6).await;
    let producer = Producer::new(
        ProducerConfig::new(broker.config())
            .batch_bytes_max(1024)
            .linger(Duration::from_millis(1)),
    )
    .await
    .unwrap();
    let mut deliveries = Vec::new();
    for round in 0..5 {
        for k in 0..40 {
            let key = format!("customer-{k}");
            let record = ProducerRecord::new("placement")
                .key(key.clone())
                .value(format!("{round}"));
            deliveries.push((key, producer.send(record).await.unwrap()));
        }
    }
    let mut placed: HashMap<String, u32> = HashMap::new();
    for (key, delivery) in deliveries {
        let metadata = delivery.await.unwrap();
        assert_eq!(
            metadata.partition,
            key_partition(key.as_bytes(), 6),
            "murmur2 placement, as Kafka's default partitioner"
        );
        assert_eq!(
            *placed.entry(key).or_insert(metadata.partition),
            metadata.partition
        );
    }
    let mut keyless = Vec::new();
    for i in 0..1000 {
        let record = ProducerRecord::new("placement").value(format!("keyless {i:0>90}"));
        keyless.push(producer.send(record).await.unwrap());
    }
    let mut used = HashSet::new();
    for delivery in keyless {
        used.insert(delivery.await.unwrap().partition);
    }
    assert_eq!(used.len(), 6, "keyless batches go to every partition");
    // An explicit partition overrides the key.
    let pinned = producer
        .send(
            ProducerRecord::new("placement")
                .key("customer-1")
                .partition(5)
                .value("p"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(pinned.partition, 5);
    producer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_key_holds_under_concurrent_senders() {
    let broker = start_broker();
    create_topic(&broker, "ordered", 4).await;
    let producer = Producer::new(ProducerConfig::new(broker.config()).batch_bytes_max(4096))
        .await
        .unwrap();
    const SENDERS: usize = 8;
    const PER_SENDER: usize = 500;
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let producer = producer.clone();
        tasks.push(tokio::spawn(async move {
            let mut deliveries = Vec::new();
            for i in 0..PER_SENDER {
                let record = ProducerRecord::new("ordered")
                    .key(format!("sender-{s}"))
                    .value(format!("{i}"));
                deliveries.push(producer.send(record).await.unwrap());
            }
            let mut offsets = Vec::new();
            for d in deliveries {
                offsets.push(d.await.unwrap().offset.unwrap());
            }
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "acknowledged offsets rise in send order"
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    producer.flush().await.unwrap();
    let records = read_all(&broker, "ordered", 4, SENDERS * PER_SENDER).await;
    let mut next: HashMap<String, usize> = HashMap::new();
    for r in &records {
        let key = text(&r.key);
        let expected = next.entry(key.clone()).or_default();
        assert_eq!(text(&r.value), expected.to_string(), "order of {key}");
        *expected += 1;
    }
    assert!(next.values().all(|&n| n == PER_SENDER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_makes_send_wait_or_fail() {
    let broker = start_broker();
    create_topic(&broker, "pressure", 1).await;
    const BUFFER: usize = 64 << 10;
    // A long linger keeps records buffered until a flush.
    let config = ProducerConfig::new(broker.config())
        .buffer_bytes_max(BUFFER)
        .linger(Duration::from_secs(30))
        .batch_bytes_max(1 << 20);
    let failing = Producer::new(config.clone().buffer_wait(false))
        .await
        .unwrap();
    let value = vec![7u8; 1000];
    let mut accepted = Vec::new();
    let error = loop {
        match failing
            .send(ProducerRecord::new("pressure").value(value.clone()))
            .await
        {
            Ok(d) => accepted.push(d),
            Err(e) => break e,
        }
        assert!(accepted.len() < 1000, "the buffer never filled");
    };
    assert!(matches!(error, Error::BufferFull { .. }), "{error}");
    assert!(failing.buffered_bytes() <= BUFFER);
    assert!(accepted.len() >= 50, "{} records fit", accepted.len());
    failing.flush().await.unwrap();
    for d in accepted {
        d.await.unwrap();
    }
    assert_eq!(failing.buffered_bytes(), 0);
    drop(
        failing
            .send(ProducerRecord::new("pressure").value(value.clone()))
            .await
            .expect("room again after the flush"),
    );

    // With waiting on, a send blocks until a flush frees room.
    let waiting = Producer::new(config).await.unwrap();
    let mut sent = 0;
    while waiting.buffered_bytes() + 1100 <= BUFFER {
        // Dropping a Delivery does not cancel the send.
        drop(
            waiting
                .send(ProducerRecord::new("pressure").value(value.clone()))
                .await
                .unwrap(),
        );
        sent += 1;
    }
    let blocked = {
        let waiting = waiting.clone();
        let value = value.clone();
        tokio::spawn(async move {
            waiting
                .send(ProducerRecord::new("pressure").value(value))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !blocked.is_finished(),
        "send waits while the buffer is full"
    );
    waiting.flush().await.unwrap();
    let delivery = blocked.await.unwrap().unwrap();
    waiting.close().await.unwrap();
    delivery.await.unwrap();
    assert!(sent > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_run_loses_and_duplicates_nothing() {
    let mut broker = start_broker();
    create_topic(&broker, "survive", 3).await;
    let producer = Producer::new(
        ProducerConfig::new(broker.config().request_timeout(Duration::from_secs(5)))
            .batch_bytes_max(8 << 10)
            .linger(Duration::from_millis(2))
            .delivery_timeout(Duration::from_secs(120)),
    )
    .await
    .unwrap();
    const RECORDS: usize = 30_000;
    const KEYS: usize = 12;
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let producer = producer.clone();
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let mut deliveries = Vec::with_capacity(RECORDS);
            for i in 0..RECORDS {
                let key = format!("key-{}", i % KEYS);
                let record = ProducerRecord::new("survive")
                    .key(key)
                    .value(format!("{i}"));
                deliveries.push((i, producer.send(record).await.unwrap()));
                sent.store(i + 1, Ordering::Relaxed);
                // Spread the sends over a few seconds so the kill lands in the middle.
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            deliveries
        })
    };
    // Let some records be acknowledged, then kill the broker hard and bring it back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    broker.kill();
    let at_kill = sent.load(Ordering::Relaxed);
    assert!(
        0 < at_kill && at_kill < RECORDS,
        "the kill lands mid-run ({at_kill} sent)"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.spawn(false);
    let deliveries = sender.await.unwrap();
    let mut acked: BTreeMap<(u32, u64), usize> = BTreeMap::new();
    for (i, delivery) in deliveries {
        let metadata = delivery.await.unwrap_or_else(|e| panic!("record {i}: {e}"));
        let previous = acked.insert((metadata.partition, metadata.offset.unwrap()), i);
        assert!(previous.is_none(), "two records acknowledged at one offset");
    }
    producer.close().await.unwrap();
    let records = read_all(&broker, "survive", 3, RECORDS).await;
    let mut seen = HashSet::new();
    let mut last_per_key: HashMap<String, usize> = HashMap::new();
    for r in &records {
        let i: usize = text(&r.value).parse().unwrap();
        assert!(seen.insert(i), "record {i} is in the log twice");
        assert_eq!(
            acked.get(&(r.partition, r.offset)),
            Some(&i),
            "record {i} is where its acknowledgement said"
        );
        let key = text(&r.key);
        if let Some(&prev) = last_per_key.get(&key) {
            assert!(prev < i, "{key}: {i} after {prev}");
        }
        last_per_key.insert(key, i);
    }
    assert_eq!(seen.len(), RECORDS);
}

/// Fetches partition 0 of `topic` from offset 0 with a bare protocol request, returning the
/// codec of every stored batch (the client would decompress them transparently).
fn stored_codecs(broker: &Broker, topic: &str) -> Vec<Option<sluice_protocol::Compression>> {
    let call = |address: &str, api: ApiKey, control: &[u8]| -> Vec<u8> {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .write_all(&encode_request(api, 0, 1, control, 0))
            .unwrap();
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).unwrap();
        let mut frame = vec![0u8; u32::from_le_bytes(len) as usize];
        stream.read_exact(&mut frame).unwrap();
        frame
    };
    // The partition's owning shard, from the metadata.
    let request = MetadataRequest {
        topics: Some(vec![topic.into()]),
    };
    let frame = call(&broker.listen, ApiKey::Metadata, &encode_control(&request));
    let metadata: MetadataResponse =
        decode_control(split_response(&frame).unwrap().control).unwrap();
    let shard = metadata.topics[0].partitions[0].shard as usize;
    let owner = metadata.brokers[0].shard_addresses[shard].clone();
    let request = FetchRequest {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 16 << 20,
        partitions: vec![FetchPartition {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            max_bytes: 16 << 20,
        }],
    };
    let frame = call(&owner, ApiKey::Fetch, &encode_control(&request));
    let parts = split_response(&frame).unwrap();
    let response: FetchResponse = decode_control(parts.control).unwrap();
    assert_eq!(response.partitions[0].bytes_len as usize, parts.data.len());
    BatchIter::new(parts.data)
        .map(|b| b.unwrap().0.compression())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_are_stored_compressed_and_read_back_intact() {
    let broker = start_broker();
    for (topic, codec) in [
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd { level: 3 }),
    ] {
        create_topic(&broker, topic, 1).await;
        let producer = Producer::new(ProducerConfig::new(broker.config()).compression(codec))
            .await
            .unwrap();
        let mut deliveries = Vec::new();
        for i in 0..2000 {
            let value = format!("{i} {}", "compressible ".repeat(20));
            let record = ProducerRecord::new(topic)
                .key(format!("{i}"))
                .value(value)
                .header("n", Some(format!("{i}")));
            deliveries.push(producer.send(record).await.unwrap());
        }
        for d in deliveries {
            d.await.unwrap();
        }
        producer.close().await.unwrap();
        let codecs = stored_codecs(&broker, topic);
        assert!(!codecs.is_empty());
        let wire = match codec {
            Compression::Lz4 => sluice_protocol::Compression::Lz4,
            _ => sluice_protocol::Compression::Zstd,
        };
        assert!(codecs.iter().all(|c| *c == Some(wire)), "{codecs:?}");
        let records = read_all(&broker, topic, 1, 2000).await;
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset, i as u64);
            assert_eq!(text(&r.key), i.to_string());
            assert_eq!(
                text(&r.value),
                format!("{i} {}", "compressible ".repeat(20))
            );
            assert_eq!(r.headers[0].0, "n");
            assert_eq!(text(&r.headers[0].1), i.to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_seeks_and_long_polls() {
    let broker = start_broker();
    create_topic(&broker, "seeking", 1).await;
    let producer = Producer::new(ProducerConfig::new(broker.config()))
        .await
        .unwrap();
    let base = 1_700_000_000_000i64;
    for i in 0..100 {
        let record = ProducerRecord::new("seeking")
            .value(format!("{i}"))
            .timestamp(base + i * 10);
        drop(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    let tp = TopicPartition::new("seeking", 0);
    // A seek waits for the connection's fetch in flight (responses come in order), which is
    // what bounds fetch_wait_max.
    let mut consumer = Consumer::new(
        ConsumerConfig::new(broker.config())
            .fetch_wait_max(Duration::from_millis(100))
            .poll_records_max(10),
    )
    .unwrap();
    consumer.assign([tp.clone()]);
    assert_eq!(
        consumer
            .seek(&tp, Seek::Timestamp(base + 505))
            .await
            .unwrap(),
        51
    );
    let first = consumer.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.len(), 10, "poll_records_max");
    assert_eq!(first[0].offset, 51);
    assert_eq!(first[0].timestamp, base + 510);
    assert_eq!(consumer.position(&tp).unwrap(), Some(61));
    assert_eq!(consumer.seek(&tp, Seek::Earliest).await.unwrap(), 0);
    assert_eq!(
        consumer.poll(Duration::from_secs(5)).await.unwrap()[0].offset,
        0
    );
    assert_eq!(consumer.seek(&tp, Seek::Offset(97)).await.unwrap(), 97);
    let tail: Vec<u64> = consumer
        .poll(Duration::from_secs(5))
        .await
        .unwrap()
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(tail, [97, 98, 99]);
    // A poll at the end waits on the broker and is woken by the next produce.
    let mut consumer =
        Consumer::new(ConsumerConfig::new(broker.config()).fetch_wait_max(Duration::from_secs(5)))
            .unwrap();
    consumer.assign([tp.clone()]);
    assert_eq!(consumer.seek(&tp, Seek::Latest).await.unwrap(), 100);
    let late = {
        let producer = producer.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            producer
                .send(ProducerRecord::new("seeking").value("late"))
                .await
                .unwrap()
                .await
                .unwrap()
        })
    };
    let started = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && started.elapsed() < Duration::from_secs(20) {
        got = consumer.poll(Duration::from_secs(20)).await.unwrap();
    }
    assert_eq!(text(&got[0].value), "late");
    assert_eq!(late.await.unwrap().offset, Some(100));
    // Out of range with auto_offset_reset = error is a typed error.
    let mut strict =
        Consumer::new(ConsumerConfig::new(broker.config()).auto_offset_reset(OffsetReset::Error))
            .unwrap();
    strict.assign([tp.clone()]);
    strict.seek(&tp, Seek::Offset(5000)).await.unwrap();
    let error = strict.poll(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::OffsetOutOfRange {
                offset: 5000,
                high_watermark: 101,
                ..
            }
        ),
        "{error}"
    );
    producer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_failures_are_typed_errors() {
    let mut broker = start_broker();
    create_topic(&broker, "typed", 2).await;
    let producer = Producer::new(
        ProducerConfig::new(broker.config().request_timeout(Duration::from_secs(1)))
            .delivery_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let error = producer
        .send(ProducerRecord::new("no-such-topic").value("v"))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        Error::UnknownTopic {
            topic: "no-such-topic".into()
        }
    );
    let error = producer
        .send(ProducerRecord::new("typed").value(vec![0u8; 2 << 20]))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::RecordTooLarge { .. }), "{error}");
    let error = producer
        .send(ProducerRecord::new("typed").partition(2).value("v"))
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        Error::UnknownPartition {
            partition: 2,
            partitions: 2,
            ..
        }
    ));
    let mut consumer = Consumer::new(ConsumerConfig::new(broker.config())).unwrap();
    let error = consumer
        .seek(&TopicPartition::new("typed", 0), Seek::Earliest)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NotAssigned { .. }), "{error}");
    // Ensure the producer knows the partition leaders before the broker goes away.
    producer
        .send(ProducerRecord::new("typed").value("before"))
        .await
        .unwrap()
        .await
        .unwrap();
    broker.kill();
    let delivery = producer
        .send(ProducerRecord::new("typed").value("after"))
        .await
        .unwrap();
    let error = delivery.await.unwrap_err();
    assert!(matches!(error, Error::DeliveryTimeout { .. }), "{error}");
    producer.close().await.unwrap();
    let error = producer
        .send(ProducerRecord::new("typed").value("closed"))
        .await
        .unwrap_err();
    assert_eq!(error, Error::ProducerClosed);
    let nobody = ClientConfig::new([format!("127.0.0.1:{}", common::free_port())]);
    let error = Producer::new(ProducerConfig::new(nobody))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NoBrokerReachable { .. }), "{error}");
    let error = Producer::new(ProducerConfig::new(broker.config()).batch_bytes_max(0))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error}");
}

#[test]
fn the_blocking_facade_produces_and_consumes() {
    let broker = start_broker();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(create_topic(&broker, "blocking", 1));
    drop(runtime);
    let producer = sluice_client::blocking::Producer::new(
        ProducerConfig::new(broker.config()).acks(Acks::Leader),
    )
    .unwrap();
    let handles: Vec<_> = (0..100)
        .map(|i| {
            producer
                .send(ProducerRecord::new("blocking").value(format!("{i}")))
                .unwrap()
        })
        .collect();
    let offsets: Vec<u64> = handles
        .into_iter()
        .map(|h| h.wait().unwrap().offset.unwrap())
        .collect();
    assert_eq!(offsets, (0..100).collect::<Vec<u64>>());
    producer.close().unwrap();
    let admin = sluice_client::blocking::Admin::new(broker.config()).unwrap();
    let tp = TopicPartition::new("blocking", 0);
    assert_eq!(admin.offset(&tp, Seek::Latest).unwrap(), Some(100));
    let mut consumer = sluice_client::blocking::Consumer::new(
        ConsumerConfig::new(broker.config()).auto_offset_reset(OffsetReset::Earliest),
    )
    .unwrap();
    consumer.assign([tp.clone()]);
    let mut values = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while values.len() < 100 && Instant::now() < deadline {
        for r in consumer.poll(Duration::from_millis(500)).unwrap() {
            values.push(text(&r.value));
        }
    }
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(values, expected);
    assert_eq!(consumer.position(&tp).unwrap(), Some(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_none_delivers_without_offsets() {
    let broker = start_broker();
    create_topic(&broker, "fire", 1).await;
    let producer = Producer::new(
        ProducerConfig::new(broker.config())
            .acks(Acks::None)
            .idempotence(false),
    )
    .await
    .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..300 {
        let record = ProducerRecord::new("fire").value(format!("{i}"));
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.close().await.unwrap();
    for d in deliveries {
        assert_eq!(d.await.unwrap().offset, None, "no offset without acks");
    }
    let records = read_all(&broker, "fire", 1, 300).await;
    let values: Vec<String> = records.iter().map(|r| text(&r.value)).collect();
    let expected: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    assert_eq!(values, expected);
}

/// Sealed segments are sent from their files (`sendfile`), not read into memory: after a
/// restart (an empty tail cache) a consumer from the start gets every record, in order, through
/// that path, its batches' CRCs checked by the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_segments_are_sent_from_their_files_intact() {
    let mut broker = start_broker_with(&["--segment-bytes", "1048576"]);
    create_topic(&broker, "cold", 2).await;
    let producer = Producer::new(ProducerConfig::new(broker.config()).batch_bytes_max(64 << 10))
        .await
        .unwrap();
    const RECORDS: usize = 12_000; // about 6 MiB: several 1 MiB segments per partition
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let record = ProducerRecord::new("cold")
            .key(format!("k{}", i % 7))
            .value(format!("{i:0>500}"));
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    producer.close().await.unwrap();
    broker.kill();
    broker.spawn(false);
    let records = read_all(&broker, "cold", 2, RECORDS).await;
    let mut seen = HashSet::new();
    let mut next_offset = [0u64; 2];
    for r in &records {
        let i: usize = text(&r.value).parse().unwrap();
        assert!(seen.insert(i), "record {i} twice");
        let p = r.partition as usize;
        assert_eq!(r.offset, next_offset[p], "partition {p} in order, no gaps");
        next_offset[p] += 1;
    }
    assert_eq!(seen.len(), RECORDS);
    let segments = std::fs::read_dir(broker.dir.path().join("topics"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert!(
        segments >= 6,
        "the data spans sealed segments ({segments} files)"
    );
}

/// A topic created with `cleanup.policy=compact` shows its policy, refuses records without a
/// key (Kafka's INVALID_RECORD), and once the broker's cleaner has run keeps the latest record
/// of every key: a consumer reading from the start sees fewer records than were written, and
/// every key's last value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_keeps_the_latest_record_of_every_key() {
    const KEYS: u32 = 50;
    const ROUNDS: u32 = 40;
    let broker = start_broker_with(&["--log-retention-check-interval-ms", "100"]);
    let admin = sluice_client::Admin::new(broker.config()).unwrap();
    let config = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    admin
        .create_topic_with_config(
            "compacted",
            1,
            1,
            &config(&[
                ("cleanup.policy", "compact"),
                ("segment.bytes", "65536"),
                ("max.message.bytes", "16384"),
            ]),
        )
        .await
        .unwrap();
    let shown = admin.describe_configs("compacted").await.unwrap();
    assert!(
        shown.contains(&("cleanup.policy".to_string(), "compact".to_string())),
        "{shown:?}"
    );
    let bad = admin
        .create_topic_with_config("bad-policy", 1, 1, &config(&[("cleanup.policy", "shred")]))
        .await;
    assert!(bad.is_err(), "an unknown policy is refused");

    let producer = Producer::new(
        ProducerConfig::new(broker.config())
            .acks(Acks::Leader)
            .linger(Duration::ZERO),
    )
    .await
    .unwrap();
    let keyless = producer
        .send(
            ProducerRecord::new("compacted")
                .partition(0)
                .value("no key"),
        )
        .await
        .unwrap()
        .await;
    assert!(
        matches!(&keyless, Err(Error::Broker { code, .. }) if *code == sluice_protocol::native::ErrorCode::InvalidBatch),
        "{keyless:?}"
    );
    for round in 0..ROUNDS {
        let mut sends = Vec::new();
        for k in 0..KEYS {
            let value = format!("{round:04}-{}", "v".repeat(100));
            sends.push(
                producer
                    .send(
                        ProducerRecord::new("compacted")
                            .partition(0)
                            .key(format!("key-{k}"))
                            .value(value),
                    )
                    .await
                    .unwrap(),
            );
        }
        for send in sends {
            send.await.unwrap();
        }
    }
    producer.close().await.unwrap();
    let written = u64::from(KEYS * ROUNDS);

    // Wait for the cleaner: reading from the start finds fewer records than were written.
    let deadline = Instant::now() + Duration::from_secs(60);
    let latest = loop {
        let mut consumer = Consumer::new(
            ConsumerConfig::new(broker.config())
                .auto_offset_reset(OffsetReset::Earliest)
                .fetch_wait_max(Duration::from_millis(50)),
        )
        .unwrap();
        let tp = TopicPartition::new("compacted", 0);
        consumer.assign([tp.clone()]);
        let mut latest: BTreeMap<String, String> = BTreeMap::new();
        let mut seen = 0u64;
        let mut last_offset = 0;
        while last_offset + 1 < written {
            for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
                seen += 1;
                last_offset = r.offset;
                latest.insert(text(&r.key), text(&r.value));
            }
            assert!(Instant::now() < deadline, "read up to {last_offset}");
        }
        if seen < written {
            break latest;
        }
        assert!(
            Instant::now() < deadline,
            "the cleaner did not compact the topic in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(latest.len(), KEYS as usize);
    for (key, value) in &latest {
        assert!(
            value.starts_with(&format!("{:04}-", ROUNDS - 1)),
            "{key} ends at {value}"
        );
    }
}

/// A lingered batch whose destination has no free request slot keeps taking records until one
/// frees (Kafka's accumulator does the same), rather than leaving as one small batch per
/// record: with one request in flight and no linger, 4,000 records leave in far fewer batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_grow_while_every_request_slot_is_busy() {
    let broker = start_broker();
    create_topic(&broker, "growing", 1).await;
    let appends = || common::shard_counter_sum(&broker.metrics, "sluice_log_appends_total");
    let before = appends();
    let producer =
        Producer::new(ProducerConfig::new(broker.config().in_flight_max(1)).linger(Duration::ZERO))
            .await
            .unwrap();
    const RECORDS: usize = 4_000;
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let record = ProducerRecord::new("growing").value(format!("record {i:0>50}"));
        deliveries.push(producer.send(record).await.unwrap());
    }
    let mut offsets = Vec::with_capacity(RECORDS);
    for delivery in deliveries {
        offsets.push(delivery.await.unwrap().offset.unwrap());
    }
    // Every record once, in order.
    assert_eq!(offsets, (0..RECORDS as u64).collect::<Vec<_>>());
    producer.close().await.unwrap();
    let batches = appends() - before;
    assert!(
        batches > 0.0 && batches * 10.0 <= RECORDS as f64,
        "{batches} batches for {RECORDS} records"
    );
    assert_eq!(
        read_all(&broker, "growing", 1, RECORDS).await.len(),
        RECORDS
    );
}
